//! Connections to PostgreSQL: the pool, and the LISTEN connection beside it, both over TLS
//! (rustls) as the URL's `sslmode` and `[database] ca_file` say ([`tls`]).

pub mod tls;

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Timeouts};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;

use crate::config::{DatabaseConfig, PoolLimits};

use tls::DatabaseTls;

/// The driver's types that the layers above hold without naming the driver: the pool,
/// one of its connections, and what every statement function here takes.
pub use deadpool_postgres::{Client, GenericClient, Pool};

/// A database failure, as everything above the store holds, words and logs it: its
/// `Display` carries PostgreSQL's severity, message and SQLSTATE, never its DETAIL or
/// HINT, which can quote a row ("Failing row contains (…)") and so a partner's answer or
/// a patient's id. For the same reason it hands no driver error on as its `source`
/// (whose chain would print the DETAIL): a failure that is not PostgreSQL's answer
/// carries its causes in its own words instead.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot set up TLS to the database: {0}")]
    TlsSetup(String),
    #[error("cannot create the connection pool: {0}")]
    Pool(String),
    #[error("cannot connect to the database: {}", pool_without_detail(.0))]
    Connect(deadpool_postgres::PoolError),
    #[error("database error: {}", without_detail(.0))]
    Query(tokio_postgres::Error),
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(error: deadpool_postgres::PoolError) -> DbError {
        DbError::Connect(error)
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(error: tokio_postgres::Error) -> DbError {
        DbError::Query(error)
    }
}

impl DbError {
    /// PostgreSQL's answer, when it gave one (a statement it failed, or a connection it
    /// refused): the SQLSTATE and the message, never DETAIL or HINT.
    pub fn answer(&self) -> Option<(&str, &str)> {
        self.server_error()
            .map(|db| (db.code().code(), db.message()))
    }

    /// Whether the failure says nothing about the rows, so the same statement may well
    /// succeed when run again: no connection, or PostgreSQL failed it for a passing
    /// reason (by its SQLSTATE class, see `passes`). False when PostgreSQL refused it for
    /// what it holds (a value it cannot store, a broken constraint), or the pool or TLS
    /// cannot be set up at all.
    pub fn is_passing(&self) -> bool {
        match self {
            DbError::TlsSetup(_) | DbError::Pool(_) => false,
            DbError::Connect(_) | DbError::Query(_) => self
                .server_error()
                .is_none_or(|db| passes(db.code().code())),
        }
    }

    fn server_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            DbError::Connect(deadpool_postgres::PoolError::Backend(error))
            | DbError::Query(error) => error.as_db_error(),
            _ => None,
        }
    }
}

/// Whether a SQLSTATE says the failure passes, by its class (the first two characters,
/// which PostgreSQL keeps stable as it adds codes): 08 the connection, 40 the transaction
/// rolled back (serialization, deadlock), 53 resources (disk, memory, connections), 55 an
/// object not ready (a lock not available, an object in use), 57 an operator or the server
/// (a cancel or `statement_timeout`, a shutdown, a restart), 58 the system (I/O). Of class
/// 25 only what a moment ends: a read-only transaction (a failover left the pool on a
/// standby) and the session and transaction timeouts. Every other class is about what the
/// statement holds or asks; so are the few codes of the passing classes that a second try
/// meets again (a protocol violation, a setting or object that is not there), which are
/// left out of them.
fn passes(sqlstate: &str) -> bool {
    const PASSING_CLASSES: [&str; 6] = ["08", "40", "53", "55", "57", "58"];
    const PASSING_CODES: [&str; 3] = [
        "25006", // read_only_sql_transaction
        "25P03", // idle_in_transaction_session_timeout
        "25P04", // transaction_timeout
    ];
    const FIXED_CODES: [&str; 6] = [
        "08P01", // protocol_violation
        "55000", // object_not_in_prerequisite_state
        "55P02", // cant_change_runtime_param
        "55P04", // unsafe_new_enum_value_usage
        "58P01", // undefined_file
        "58P02", // duplicate_file
    ];
    PASSING_CODES.contains(&sqlstate)
        || (!FIXED_CODES.contains(&sqlstate)
            && sqlstate
                .get(..2)
                .is_some_and(|class| PASSING_CLASSES.contains(&class)))
}

/// PostgreSQL's refusal of a statement for the values in it, as support may read it:
/// the SQLSTATE and the message, never the DETAIL or HINT (which can quote the row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)
    }
}

/// The refusal in `error` when PostgreSQL failed the statement for what the rows hold
/// ([`is_refusal_of_content`]); `None` for any other error.
pub fn refused_for_content(error: &tokio_postgres::Error) -> Option<Refusal> {
    let db = error.as_db_error()?;
    is_refusal_of_content(db.code()).then(|| Refusal {
        code: db.code().code().to_string(),
        message: db.message().to_string(),
    })
}

/// Whether a SQLSTATE says PostgreSQL refused the values in the statement, by class: a
/// data exception (22: a value it cannot store or convert), an integrity constraint (23)
/// or a program limit (54: a value too large to index). Not a lost connection, a
/// timeout, a lock, a conflict, a privilege or a syntax error: those say nothing about
/// the rows, and the same statement may well succeed when tried again.
pub fn is_refusal_of_content(code: &tokio_postgres::error::SqlState) -> bool {
    const CONTENT_CLASSES: [&str; 3] = ["22", "23", "54"];
    CONTENT_CLASSES
        .iter()
        .any(|class| code.code().starts_with(class))
}

/// A driver error in words logs may carry: PostgreSQL's severity, message and SQLSTATE
/// without DETAIL and HINT; any other failure with its causes (tokio-postgres leaves the
/// cause out of its own message).
fn without_detail(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => WithCauses(error).to_string(),
    }
}

fn pool_without_detail(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(error) => without_detail(error),
        other => WithCauses(other).to_string(),
    }
}

/// An error and its causes, for a log line: tokio-postgres leaves the cause out of its
/// message ("error performing TLS handshake"), and the cause is what ops need.
struct WithCauses<'a>(&'a dyn std::error::Error);

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

/// The daemon's connections' settings beside those (see [`daemon_pool`]).
const DAEMON_SETTINGS: &str = "-c enable_seqscan=off";

/// A connection of its own, outside the pool (the LISTEN one): what must be driven for
/// its client's statements to complete, and what its notifications arrive on.
pub type ListenConnection =
    tokio_postgres::Connection<Socket, <DatabaseTls as MakeTlsConnect<Socket>>::Stream>;

/// How to open one connection: tokio-postgres's settings and the TLS that goes with them.
#[derive(Clone)]
pub struct ConnectionConfig {
    pub postgres: tokio_postgres::Config,
    pub tls: DatabaseTls,
}

impl ConnectionConfig {
    pub async fn connect(&self) -> Result<(tokio_postgres::Client, ListenConnection), DbError> {
        Ok(self.postgres.connect(self.tls.clone()).await?)
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
pub async fn on_client<T, E: Into<DbError>>(
    pool: &Pool,
    query: impl AsyncFnOnce(&Client) -> Result<T, E>,
) -> Result<T, DbError> {
    let client = pool.get().await?;
    query(&client).await.map_err(Into::into)
}

/// [`on_client`] for a query that opens a transaction of its own.
pub async fn on_client_mut<T, E: Into<DbError>>(
    pool: &Pool,
    query: impl AsyncFnOnce(&mut Client) -> Result<T, E>,
) -> Result<T, DbError> {
    let mut client = pool.get().await?;
    query(&mut client).await.map_err(Into::into)
}

/// A pool for every statement but LISTEN: the daemon's, or the admin server's own.
pub fn pool(database: &DatabaseConfig, limits: PoolLimits) -> Result<Pool, DbError> {
    builder(database, limits, "")?
        .build()
        .map_err(|error| DbError::Pool(error.to_string()))
}

/// The daemon's own pool: [`pool`] with its limits, whose connections plan without
/// sequential scans wherever an index serves.
///
/// The daemon's statements are prepared once per connection, and PostgreSQL soon runs
/// each on a generic plan, made from the table as it was then and kept until the next
/// ANALYZE of it. Made beside a small table (a daemon started on a new database, a stream
/// of new patients that never triggers the router's ANALYZE), that plan reads the table
/// whole to find a few rows by id, and goes on doing so as the table grows: the record's
/// lock of a patient's order read every delivery ever made at each result, half of
/// PostgreSQL's time in the `stream-1000` bench. Every statement the daemon runs finds its
/// rows by an index by design (`tests/it/overload.rs` holds routing, the claim, the record
/// and the rescuer to it), so its connections leave the planner no sequential scan where
/// an index serves.
/// Support's and the commands' pools plan as PostgreSQL chooses: their questions are not
/// all index-shaped.
pub fn daemon_pool(database: &DatabaseConfig) -> Result<Pool, DbError> {
    builder(database, database.pool_limits(), DAEMON_SETTINGS)?
        .build()
        .map_err(|error| DbError::Pool(error.to_string()))
}

/// Why a server named as the standby is not read.
pub(crate) const NOT_A_STANDBY: &str = "it is not in recovery, so not a standby of the primary";

/// A pool on the standby support reads (`[support] database_url`): a connection to a
/// server that is not in recovery (a standby since promoted, a URL naming another server)
/// is refused as it opens, so nothing is read from it as if it were a copy of the primary.
pub fn standby_pool(standby: &DatabaseConfig, limits: PoolLimits) -> Result<Pool, DbError> {
    use deadpool_postgres::{Hook, HookError};
    builder(standby, limits, "")?
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move {
                let row = client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .map_err(HookError::Backend)?;
                match row.get::<_, bool>(0) {
                    true => Ok(()),
                    false => Err(HookError::message(NOT_A_STANDBY)),
                }
            })
        }))
        .build()
        .map_err(|error| DbError::Pool(error.to_string()))
}

/// A pool's builder: `limits`, and `settings` (`-c name=value ...`) after the session's.
fn builder(
    database: &DatabaseConfig,
    limits: PoolLimits,
    settings: &str,
) -> Result<deadpool_postgres::PoolBuilder, DbError> {
    let ConnectionConfig { mut postgres, tls } = connection_config(database)?;
    // After the session settings, so this pool's own timeout is the one that holds.
    let options = format!(
        "{} -c statement_timeout={}ms {settings}",
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
    Ok(Pool::builder(manager)
        .max_size(limits.size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(CONNECT_TIMEOUT),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        }))
}

#[cfg(test)]
mod tests {
    use tokio_postgres::error::SqlState;

    use super::{is_refusal_of_content, passes};

    #[test]
    fn a_failure_of_the_connection_the_transaction_the_resources_or_the_server_passes() {
        for passing in [
            SqlState::CONNECTION_EXCEPTION,         // 08000
            SqlState::CONNECTION_FAILURE,           // 08006
            SqlState::T_R_SERIALIZATION_FAILURE,    // 40001
            SqlState::T_R_DEADLOCK_DETECTED,        // 40P01
            SqlState::INSUFFICIENT_RESOURCES,       // 53000
            SqlState::DISK_FULL,                    // 53100
            SqlState::OUT_OF_MEMORY,                // 53200
            SqlState::TOO_MANY_CONNECTIONS,         // 53300
            SqlState::CONFIGURATION_LIMIT_EXCEEDED, // 53400
            SqlState::LOCK_NOT_AVAILABLE,           // 55P03
            SqlState::OBJECT_IN_USE,                // 55006
            SqlState::QUERY_CANCELED,               // 57014: statement_timeout
            SqlState::ADMIN_SHUTDOWN,               // 57P01
            SqlState::CRASH_SHUTDOWN,               // 57P02
            SqlState::CANNOT_CONNECT_NOW,           // 57P03
            SqlState::DATABASE_DROPPED,             // 57P04
            SqlState::SYSTEM_ERROR,                 // 58000
            SqlState::IO_ERROR,                     // 58030
        ] {
            assert!(passes(passing.code()), "{} passes", passing.code());
        }
    }

    #[test]
    fn a_new_code_in_a_passing_class_passes_too() {
        // Codes PostgreSQL may add later are judged by their class.
        for passing in ["08P99", "40999", "53999", "55P99", "57P99", "58P99"] {
            assert!(passes(passing), "{passing} passes");
        }
    }

    #[test]
    fn of_the_invalid_transaction_states_only_a_standby_and_the_timeouts_pass() {
        assert!(passes(SqlState::READ_ONLY_SQL_TRANSACTION.code())); // a failover
        assert!(passes(SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT.code()));
        assert!(passes("25P04")); // transaction_timeout (PostgreSQL 17)
        assert!(!passes(SqlState::ACTIVE_SQL_TRANSACTION.code()));
        assert!(!passes(SqlState::IN_FAILED_SQL_TRANSACTION.code()));
    }

    #[test]
    fn a_refusal_of_what_the_statement_holds_does_not_pass() {
        for refusal in [
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,  // 22021
            SqlState::UNTRANSLATABLE_CHARACTER,     // 22P05
            SqlState::STRING_DATA_RIGHT_TRUNCATION, // 22001
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,   // 22003
            SqlState::PROGRAM_LIMIT_EXCEEDED,       // 54000: an index row too large
            SqlState::CHECK_VIOLATION,              // 23514
            SqlState::FOREIGN_KEY_VIOLATION,        // 23503
            SqlState::UNIQUE_VIOLATION,             // 23505
            SqlState::UNDEFINED_TABLE,              // 42P01
            SqlState::INSUFFICIENT_PRIVILEGE,       // 42501
            SqlState::INVALID_PASSWORD,             // 28P01
            SqlState::INTERNAL_ERROR,               // XX000
        ] {
            assert!(!passes(refusal.code()), "{} is a refusal", refusal.code());
        }
        assert!(!passes(""), "no code is no reason to retry");
    }

    #[test]
    fn a_code_of_a_passing_class_that_a_second_try_meets_again_does_not_pass() {
        for fixed in [
            SqlState::PROTOCOL_VIOLATION,               // 08P01
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            SqlState::CANT_CHANGE_RUNTIME_PARAM,        // 55P02
            SqlState::UNSAFE_NEW_ENUM_VALUE_USAGE,      // 55P04
            SqlState::UNDEFINED_FILE,                   // 58P01
            SqlState::DUPLICATE_FILE,                   // 58P02
        ] {
            assert!(!passes(fixed.code()), "{} does not pass", fixed.code());
        }
    }

    #[test]
    fn a_row_is_refused_for_what_it_holds_only_by_the_data_integrity_and_limit_classes() {
        for content in [
            SqlState::PROGRAM_LIMIT_EXCEEDED, // index row size exceeds btree maximum
            SqlState::STRING_DATA_RIGHT_TRUNCATION,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::CHECK_VIOLATION,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::FOREIGN_KEY_VIOLATION,
        ] {
            assert!(is_refusal_of_content(&content), "{}", content.code());
        }
        for passing in [
            SqlState::QUERY_CANCELED, // statement_timeout
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CONNECTION_FAILURE,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::DISK_FULL,
            SqlState::OUT_OF_MEMORY,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_TABLE,
        ] {
            assert!(!is_refusal_of_content(&passing), "{}", passing.code());
        }
    }
}
