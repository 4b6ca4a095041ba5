//! Connections to PostgreSQL: the pool, and the LISTEN connection beside it, both over TLS
//! (rustls) as the URL's `sslmode` and `[database] ca_file` say.
//!
//! `sslmode` takes libpq's values. tokio-postgres knows only `disable`, `prefer` and
//! `require` (and refuses the URL otherwise), so it is read when the configuration is
//! validated (`config::database`), tokio-postgres is told only whether to insist on TLS,
//! and the rest is carried out here, by the certificate verifier given to rustls:
//!
//! | sslmode | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (the default, as libpq's) | when the server offers it, else plain text | not checked |
//! | `require` | always | not checked: no protection against an active attacker |
//! | `verify-ca` | always | chains to `ca_file` (or the web PKI roots) |
//! | `verify-full` | always | chains, and names the host the URL names |

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::database::{DatabaseCa, SslMode};
use crate::config::{DatabaseConfig, PoolLimits};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot set up TLS to the database: {0}")]
    TlsSetup(String),
    #[error("cannot create the connection pool: {0}")]
    Pool(String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] deadpool_postgres::PoolError),
    #[error("database error: {}", without_detail(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// A database error as logs and traces may carry it: severity, message and SQLSTATE,
/// without PostgreSQL's DETAIL and HINT, which can quote a row ("Failing row contains
/// (…)") and so a partner's answer or a patient's id.
fn without_detail(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// An error and its causes, for a log line: tokio-postgres leaves the cause out of its
/// message ("error performing TLS handshake"), and the cause is what ops need.
pub struct WithCauses<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Nothing may wait on the database for ever: a connect that hangs (a dead host, or a
/// loopback socket that connected to itself) fails after this and is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed database call, the longest wait before trying again, however long
/// `poll_interval` is: an outage must not leave the daemon idle for a poll interval.
pub(crate) const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// The session settings of every connection the dispatcher opens:
/// - no statement of the dispatcher's takes long; one that hangs is cut off and retried;
/// - no JIT: the claim's estimated cost (a per-partner LIMIT PostgreSQL cannot see
///   through) passes `jit_above_cost`, and compiling it took 50-90 ms of a claim that
///   runs in 3-5; every statement here is short, so JIT never pays for itself.
const SESSION_SETTINGS: &str = "-c statement_timeout=60s -c jit=off";

/// How to open one connection: tokio-postgres's settings and the TLS that goes with them.
#[derive(Clone)]
pub struct ConnectionConfig {
    pub postgres: tokio_postgres::Config,
    pub tls: DatabaseTls,
}

impl ConnectionConfig {
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<Socket, <DatabaseTls as MakeTlsConnect<Socket>>::Stream>,
        ),
        tokio_postgres::Error,
    > {
        self.postgres.connect(self.tls.clone()).await
    }
}

pub fn connection_config(database: &DatabaseConfig) -> Result<ConnectionConfig, DbError> {
    let mut config = database.connection.postgres.clone();
    // Kept beside any options the URL sets.
    let options = match config.get_options() {
        Some(options) => format!("{options} {SESSION_SETTINGS}"),
        None => SESSION_SETTINGS.to_string(),
    };
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        // A connection cut mid-query fails within a minute instead of TCP's ~15.
        .tcp_user_timeout(Duration::from_secs(60))
        .options(&options)
        .application_name("helparound-dispatcher");
    Ok(ConnectionConfig {
        postgres: config,
        tls: DatabaseTls::new(database.connection.ssl_mode, database.ca.as_ref())?,
    })
}

/// Runs `query` on a pooled connection: how the daemon's loops reach the database, with
/// both ways it can fail (no connection, a failed statement) told apart in a [`DbError`].
pub async fn on_client<T>(
    pool: &Pool,
    query: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> Result<T, DbError> {
    let client = pool.get().await?;
    Ok(query(&client).await?)
}

/// A pool for every statement but LISTEN: the daemon's, or the admin server's own.
pub fn pool(database: &DatabaseConfig, limits: PoolLimits) -> Result<Pool, DbError> {
    let ConnectionConfig { mut postgres, tls } = connection_config(database)?;
    // After the session settings, so this pool's own timeout is the one that holds.
    let options = format!(
        "{} -c statement_timeout={}ms",
        postgres.get_options().unwrap_or_default(),
        limits.statement_timeout.as_millis()
    );
    postgres.options(&options);
    if !database.connection.unverified_remote_hosts().is_empty() {
        tracing::warn!(
            sslmode = %database.connection.ssl_mode,
            "the database is on another host and its certificate is not verified; set sslmode=verify-full"
        );
    }
    let manager = Manager::from_config(
        postgres,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(limits.size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(CONNECT_TIMEOUT),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        })
        .build()
        .map_err(|error| DbError::Pool(error.to_string()))
}

/// What a verified certificate must chain to; named in the error when it does not.
#[derive(Debug, Clone)]
pub enum Trust {
    CaFile(PathBuf),
    WebRoots,
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::CaFile(path) => write!(f, "database.ca_file ({})", path.display()),
            Trust::WebRoots => {
                f.write_str("the public web PKI roots (set database.ca_file for a private CA)")
            }
        }
    }
}

/// The TLS side of every database connection, pool and LISTEN alike.
#[derive(Clone)]
pub struct DatabaseTls {
    rustls: MakeRustlsConnect,
    trust: Trust,
}

impl DatabaseTls {
    fn new(ssl_mode: SslMode, ca: Option<&DatabaseCa>) -> Result<DatabaseTls, DbError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (roots, trust) = match ca {
            Some(ca) => (ca.roots.clone(), Trust::CaFile(ca.path.clone())),
            None => (
                RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                Trust::WebRoots,
            ),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match ssl_mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(EncryptOnly(provider.clone()))
            }
            SslMode::VerifyCa => Arc::new(ChainOnly(webpki_verifier(roots, &provider)?)),
            SslMode::VerifyFull => webpki_verifier(roots, &provider)?,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| DbError::TlsSetup(error.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(DatabaseTls {
            rustls: MakeRustlsConnect::new(config),
            trust,
        })
    }
}

fn webpki_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, DbError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|error| DbError::TlsSetup(error.to_string()))
}

type RustlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;

impl MakeTlsConnect<Socket> for DatabaseTls {
    type Stream = <RustlsConnect as TlsConnect<Socket>>::Stream;
    type TlsConnect = Handshake;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Handshake, Self::Error> {
        Ok(Handshake {
            rustls: MakeTlsConnect::<Socket>::make_tls_connect(&mut self.rustls, host)?,
            host: host.to_string(),
            trust: self.trust.clone(),
        })
    }
}

/// One TLS handshake with the database; its failure says what was wrong with the
/// certificate in the words of the configuration.
pub struct Handshake {
    rustls: RustlsConnect,
    host: String,
    trust: Trust,
}

impl TlsConnect<Socket> for Handshake {
    type Stream = <RustlsConnect as TlsConnect<Socket>>::Stream;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, TlsError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let Handshake {
            rustls,
            host,
            trust,
        } = self;
        Box::pin(async move {
            rustls
                .connect(stream)
                .await
                .map_err(|error| TlsError::new(error, host, trust))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the database's certificate is not trusted by {trust}: {reason}")]
    Untrusted { trust: Trust, reason: rustls::Error },
    #[error(
        "the database's certificate is not valid for {host}, the host database.url names \
         (sslmode=verify-full checks the name; verify-ca does not)"
    )]
    WrongHost { host: String },
    #[error("the database's certificate is refused: {0}")]
    Refused(rustls::Error),
    #[error("the TLS handshake with the database failed: {0}")]
    Handshake(std::io::Error),
}

impl TlsError {
    fn new(error: std::io::Error, host: String, trust: Trust) -> TlsError {
        let Some(rustls_error) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return TlsError::Handshake(error);
        };
        match rustls_error {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => TlsError::WrongHost { host },
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                TlsError::Untrusted {
                    trust,
                    reason: rustls_error.clone(),
                }
            }
            rustls::Error::InvalidCertificate(_) => TlsError::Refused(rustls_error.clone()),
            _ => TlsError::Handshake(error),
        }
    }
}

/// `prefer` and `require`: the link is encrypted, and the handshake's signatures are
/// checked, but the certificate may be anyone's (libpq does the same).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the certificate must chain to the trusted roots; whatever host name it
/// carries. (webpki checks the name only once the chain is good, so a name error means
/// the chain passed.)
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
