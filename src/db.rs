//! Connections to PostgreSQL.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
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

pub fn connection_config(database: &DatabaseConfig) -> Result<tokio_postgres::Config, DbError> {
    database
        .url
        .expose_secret()
        .parse()
        .map_err(|_| DbError::BadUrl)
}

/// The pool every statement but LISTEN goes through.
pub fn pool(database: &DatabaseConfig) -> Result<Pool, DbError> {
    let mut config = connection_config(database)?;
    config.application_name("helparound-dispatcher");
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
        .build()
        .map_err(|error| DbError::Pool(error.to_string()))
}
