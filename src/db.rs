//! Connections to PostgreSQL.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use secrecy::ExposeSecret;

use crate::config::DatabaseConfig;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url is not a valid PostgreSQL connection URL")]
    BadUrl,
    #[error("cannot create the connection pool: {0}")]
    Pool(String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// Nothing may wait on the database for ever: a connect that hangs (a dead host, or a
/// loopback socket that connected to itself) fails after this and is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed database call, the longest wait before trying again, however long
/// `poll_interval` is: an outage must not leave the daemon idle for a poll interval.
pub(crate) const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// No statement of the dispatcher's takes long; one that hangs is cut off and retried.
const STATEMENT_TIMEOUT: &str = "-c statement_timeout=60s";

pub fn connection_config(database: &DatabaseConfig) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = database
        .url
        .expose_secret()
        .parse()
        .map_err(|_| DbError::BadUrl)?;
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
    Ok(config)
}

/// The pool every statement but LISTEN goes through.
pub fn pool(database: &DatabaseConfig) -> Result<Pool, DbError> {
    let config = connection_config(database)?;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
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
