//! Connections to PostgreSQL: the pool, and the LISTEN connection beside it, both over TLS
//! (rustls) as the URL's `sslmode` and `[database] ca_file` say ([`tls`]).

pub mod tls;

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;

use crate::config::DatabaseConfig;

use tls::DatabaseTls;

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

/// The pool every statement but LISTEN goes through.
pub fn pool(database: &DatabaseConfig) -> Result<Pool, DbError> {
    let ConnectionConfig { postgres, tls } = connection_config(database)?;
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
