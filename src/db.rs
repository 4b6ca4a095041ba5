//! Connections to PostgreSQL: the pool, and the LISTEN connection beside it, both over TLS
//! (rustls) as the URL's `sslmode` and `[database] ca_file` say.
//!
//! `sslmode` takes libpq's values. tokio-postgres knows only `disable`, `prefer` and
//! `require` (and refuses the URL otherwise), so it is taken out of the URL here and
//! carried out by the certificate verifier given to rustls:
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
use std::net::IpAddr;
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
use secrecy::ExposeSecret;
use tokio_postgres::config::Host;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::DatabaseConfig;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url: {0}")]
    BadUrl(#[from] UrlError),
    #[error("cannot set up TLS to the database: {0}")]
    TlsSetup(String),
    #[error("cannot create the connection pool: {0}")]
    Pool(String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// What is wrong with `database.url`. Never quotes the URL: it may hold the password.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UrlError {
    #[error("not a valid PostgreSQL connection URL")]
    Invalid,
    #[error("sslmode must be one of disable, prefer, require, verify-ca, verify-full")]
    UnknownSslMode,
    #[error("sslrootcert is not read: give the CA's certificate in database.ca_file")]
    SslRootCert,
}

/// libpq's `sslmode`, see the module's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, UrlError> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(UrlError::UnknownSslMode),
        }
    }

    /// Whether the server's certificate is checked against a CA: only then is an
    /// attacker in the middle of the link kept out.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to insist.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// `database.url`, read: tokio-postgres's settings, and the `sslmode` it cannot hold.
pub struct ConnectionUrl {
    pub postgres: tokio_postgres::Config,
    pub ssl_mode: SslMode,
}

impl ConnectionUrl {
    /// Reads a `postgres://` URL or a `key=value` connection string.
    pub fn parse(url: &str) -> Result<ConnectionUrl, UrlError> {
        let (rest, params) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            take_url_params(url)
        } else {
            take_key_value_params(url).ok_or(UrlError::Invalid)?
        };
        let mut ssl_mode = SslMode::default();
        for (key, value) in params {
            match key.as_str() {
                "sslmode" => ssl_mode = SslMode::parse(&value)?,
                _ => return Err(UrlError::SslRootCert),
            }
        }
        let mut postgres: tokio_postgres::Config = rest.parse().map_err(|_| UrlError::Invalid)?;
        postgres.ssl_mode(ssl_mode.negotiation());
        Ok(ConnectionUrl { postgres, ssl_mode })
    }

    /// The TCP hosts this URL reaches on another machine.
    pub fn remote_hosts(&self) -> Vec<String> {
        remote_hosts(&self.postgres)
    }
}

/// The TCP hosts `postgres` reaches on another machine (a unix socket, `localhost` or a
/// loopback address does not leave this one). A `hostaddr` decides over the name.
fn remote_hosts(postgres: &tokio_postgres::Config) -> Vec<String> {
    let addrs = postgres.get_hostaddrs();
    let hosts = postgres.get_hosts();
    let count = hosts.len().max(addrs.len());
    (0..count)
        .filter_map(|index| {
            let addr = addrs.get(index);
            let remote = match (hosts.get(index), addr) {
                (_, Some(addr)) => !addr.is_loopback(),
                (Some(Host::Tcp(name)), None) => !is_loopback_name(name),
                (Some(Host::Unix(_)), None) | (None, None) => false,
            };
            let shown = match (hosts.get(index), addr) {
                (Some(Host::Tcp(name)), _) => name.clone(),
                (_, Some(addr)) => addr.to_string(),
                _ => String::new(),
            };
            remote.then_some(shown)
        })
        .collect()
}

fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The URL parameters this module reads itself.
const OWN_PARAMS: [&str; 2] = ["sslmode", "sslrootcert"];

type Params = Vec<(String, String)>;

/// Takes [`OWN_PARAMS`] out of a URL's query.
fn take_url_params(url: &str) -> (String, Params) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if OWN_PARAMS.contains(&key) {
            taken.push((key.to_string(), value.to_string()));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, taken)
}

/// Takes [`OWN_PARAMS`] out of a `key=value key='quoted value'` string, read as
/// tokio-postgres reads it; None when it is not of that form.
fn take_key_value_params(text: &str) -> Option<(String, Params)> {
    let mut chars = text.char_indices().peekable();
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next()? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(chars.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?.1);
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(text.len(), |&(index, _)| index);
        if OWN_PARAMS.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            kept.push(text.get(start..end)?);
        }
    }
    Some((kept.join(" "), taken))
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

/// No statement of the dispatcher's takes long; one that hangs is cut off and retried.
const STATEMENT_TIMEOUT: &str = "-c statement_timeout=60s";

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
    let ConnectionUrl {
        postgres: mut config,
        ssl_mode,
    } = ConnectionUrl::parse(database.url.expose_secret())?;
    // Kept beside any options the URL sets.
    let options = match config.get_options() {
        Some(options) => format!("{options} {STATEMENT_TIMEOUT}"),
        None => STATEMENT_TIMEOUT.to_string(),
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
        tls: DatabaseTls::new(ssl_mode, database.ca.as_ref())?,
    })
}

/// The pool every statement but LISTEN goes through.
pub fn pool(database: &DatabaseConfig) -> Result<Pool, DbError> {
    let ConnectionConfig { postgres, tls } = connection_config(database)?;
    if !tls.ssl_mode.verifies() && !remote_hosts(&postgres).is_empty() {
        tracing::warn!(
            sslmode = %tls.ssl_mode,
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
        .max_size(database.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(CONNECT_TIMEOUT),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        })
        .build()
        .map_err(|error| DbError::Pool(error.to_string()))
}

/// `database.ca_file`, read: the CA that `verify-ca` and `verify-full` trust instead of
/// the public web PKI roots.
#[derive(Debug, Clone)]
pub struct DatabaseCa {
    pub path: PathBuf,
    pub roots: RootCertStore,
}

impl PartialEq for DatabaseCa {
    fn eq(&self, other: &DatabaseCa) -> bool {
        self.path == other.path && self.roots.roots == other.roots.roots
    }
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
    ssl_mode: SslMode,
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
            ssl_mode,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> ConnectionUrl {
        ConnectionUrl::parse(url).unwrap_or_else(|error| panic!("{url}: {error}"))
    }

    #[test]
    fn sslmode_is_read_from_the_url_and_left_out_of_what_tokio_postgres_sees() {
        for (url, mode) in [
            ("postgres://u@db.example/x", SslMode::Prefer),
            (
                "postgres://u@db.example/x?sslmode=disable",
                SslMode::Disable,
            ),
            (
                "postgresql://u@db.example/x?application_name=a&sslmode=verify-full",
                SslMode::VerifyFull,
            ),
            (
                "postgres://u@db.example/x?sslmode=verify-ca&connect_timeout=3",
                SslMode::VerifyCa,
            ),
            ("host=db.example user=u sslmode=require", SslMode::Require),
            (
                "host=db.example password='a \\' b' sslmode = verify-full dbname=x",
                SslMode::VerifyFull,
            ),
        ] {
            let url = parsed(url);
            assert_eq!(url.ssl_mode, mode);
            let expected = match mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            };
            assert_eq!(url.postgres.get_ssl_mode(), expected);
        }
        let quoted = parsed("host=db.example password='a \\' b' sslmode=verify-full dbname=x");
        assert_eq!(quoted.postgres.get_password(), Some(&b"a ' b"[..]));
        assert_eq!(quoted.postgres.get_dbname(), Some("x"));
    }

    #[test]
    fn an_unknown_sslmode_or_an_sslrootcert_is_refused_by_name() {
        for (url, error) in [
            ("postgres://u@db/x?sslmode=allow", UrlError::UnknownSslMode),
            (
                "postgres://u@db/x?sslmode=verify_full",
                UrlError::UnknownSslMode,
            ),
            ("host=db sslmode=strict", UrlError::UnknownSslMode),
            (
                "postgres://u@db/x?sslrootcert=/ca.pem",
                UrlError::SslRootCert,
            ),
            ("host=db sslrootcert=/ca.pem", UrlError::SslRootCert),
            ("mysql://u@db/x", UrlError::Invalid),
            ("host='db", UrlError::Invalid),
        ] {
            assert_eq!(ConnectionUrl::parse(url).err(), Some(error), "{url}");
        }
    }

    #[test]
    fn only_hosts_on_other_machines_are_remote() {
        for (url, remote) in [
            ("postgres://u@127.0.0.1/x", vec![]),
            ("postgres://u@localhost:5433/x", vec![]),
            ("postgres://u@[::1]/x", vec![]),
            ("postgres://u@%2Fvar%2Frun%2Fpostgresql/x", vec![]),
            ("postgres://u@db.internal/x", vec!["db.internal"]),
            ("postgres://u@10.0.0.5/x", vec!["10.0.0.5"]),
            ("postgres://u@db.internal/x?hostaddr=127.0.0.1", vec![]),
            (
                "postgres://u@localhost/x?hostaddr=10.0.0.5",
                vec!["localhost"],
            ),
            ("host=127.0.0.1,db2.internal user=u", vec!["db2.internal"]),
        ] {
            assert_eq!(parsed(url).remote_hosts(), remote, "{url}");
        }
    }
}
