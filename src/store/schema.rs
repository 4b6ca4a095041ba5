//! The database schema, versioned by the files in `migrations/`, and `dispatcher
//! migrate`, which applies them one transaction per migration (the recorded version
//! advances with each), with the steps a file runs outside a transaction
//! (`store::migration`) in between.

use std::convert::Infallible;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::error::SqlState;

use super::db::DbError;
use super::migration::{self, MigrationFileError, Step};

/// Every migration, in order. A version is never edited once released; add a new one.
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_initial.sql")),
    (2, include_str!("../../migrations/0002_support_actions.sql")),
    (3, include_str!("../../migrations/0003_retention.sql")),
    (
        4,
        include_str!("../../migrations/0004_partner_circuits.sql"),
    ),
    (
        5,
        include_str!("../../migrations/0005_outbox_traceparent.sql"),
    ),
    (6, include_str!("../../migrations/0006_outbox_wakeup.sql")),
    // 0007_claim_by_partner.sql as shipped built its indexes in the migration's
    // transaction, stopping every write to `deliveries` meanwhile; a database that does
    // not have it yet gets the same indexes built concurrently.
    (
        7,
        include_str!("../../migrations/0007_claim_by_partner.online.sql"),
    ),
    (8, include_str!("../../migrations/0008_wakeup_hardened.sql")),
    (9, include_str!("../../migrations/0009_identity_audit.sql")),
    (
        10,
        include_str!("../../migrations/0010_attempt_resent_after.sql"),
    ),
    (11, include_str!("../../migrations/0011_support_search.sql")),
    (12, include_str!("../../migrations/0012_waiting.sql")),
    (
        13,
        include_str!("../../migrations/0013_routing_position.sql"),
    ),
    (
        14,
        include_str!("../../migrations/0014_idempotency_keys.sql"),
    ),
    (15, include_str!("../../migrations/0015_wakeup_once.sql")),
    (
        16,
        include_str!("../../migrations/0016_deliveries_event_key.sql"),
    ),
    (
        17,
        include_str!("../../migrations/0017_claim_token_in_flight.sql"),
    ),
    (
        18,
        include_str!("../../migrations/0018_deliveries_ended_by_state.sql"),
    ),
    (
        19,
        include_str!("../../migrations/0019_order_index_of_patients.sql"),
    ),
    (20, include_str!("../../migrations/0020_claim_in_place.sql")),
    (
        21,
        include_str!("../../migrations/0021_answers_erased_in_order.sql"),
    ),
    (
        22,
        include_str!("../../migrations/0022_deliveries_fillfactor_40.sql"),
    ),
    (
        23,
        include_str!("../../migrations/0023_delivered_out_of_ended_by_state.sql"),
    ),
    (
        24,
        include_str!("../../migrations/0024_first_attempt_in_row.sql"),
    ),
    (
        25,
        include_str!("../../migrations/0025_archive_by_week.sql"),
    ),
];

/// Serialises concurrent `dispatcher migrate` runs. Held by the session, across the
/// migrations' transactions and concurrent index builds.
const MIGRATION_LOCK: i64 = 0x6865_6c70_6d69_6772; // "helpmigr"

/// How often a `migrate` that found another one running tries the lock again. It never
/// waits inside a statement: a session waiting there holds a snapshot that the other's
/// `CREATE INDEX CONCURRENTLY` would wait for, and neither would ever finish.
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(200);

/// `migrate`'s own session: no statement timeout (an index on a large table takes as
/// long as it takes), no lock timeout but the one each migration's transaction sets (see
/// [`MigrateOptions`]), and a name that tells it apart in `pg_stat_activity`.
const MIGRATE_SESSION: &str = "SET statement_timeout = 0; SET lock_timeout = 0; \
     SET application_name = 'helparound-dispatcher migrate'";

pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// How `dispatcher migrate` treats the locks a migration's transaction takes.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The longest a migration's transaction waits for a lock (the enrollment flow's
    /// inserts queue behind a waiting ACCESS EXCLUSIVE request, so this is also the
    /// longest they wait for it); then it rolls back and is tried again.
    pub lock_timeout: Duration,
    /// How many times a migration that could not take its lock (or that PostgreSQL
    /// rolled back to end a deadlock) is tried again, after pauses of 1s, 2s, 4s and so
    /// on, before `migrate` gives up.
    pub lock_retries: usize,
}

impl Default for MigrateOptions {
    fn default() -> MigrateOptions {
        MigrateOptions {
            lock_timeout: Duration::from_secs(5),
            lock_retries: 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database has no dispatcher schema; run `dispatcher migrate` first")]
    NotMigrated,
    #[error("the database schema lacks migrations {missing:?} that this dispatcher needs; run `dispatcher migrate`")]
    Behind { missing: Vec<i32> },
    #[error("the database schema has migrations {unknown:?}, newer than this dispatcher knows (up to {expected}); upgrade the dispatcher")]
    Newer { unknown: Vec<i32>, expected: i32 },
    #[error(
        "migration {version:04} could not take its lock on {} within {} ({tries} tries): \
         a long transaction holds it{}; try again",
        waited.relation.as_deref().unwrap_or("a table"),
        humantime::format_duration(*timeout),
        holders(&waited.holders)
    )]
    LockTimeout {
        version: i32,
        timeout: Duration,
        tries: usize,
        waited: LockWait,
    },
    #[error(
        "migration {version:04} was rolled back to end a deadlock ({tries} tries): it waited \
         for {}{}, whose transaction waited for a lock the migration held; try again",
        waited.relation.as_deref().unwrap_or("a table"),
        holders(&waited.holders)
    )]
    Deadlock {
        version: i32,
        tries: usize,
        waited: LockWait,
    },
    #[error("migration {version:04} cannot be applied as written: {error}")]
    Malformed {
        version: i32,
        error: MigrationFileError,
    },
    #[error("migration {version:04} failed: {error}")]
    Migration { version: i32, error: DbError },
    /// Worded by [`DbError`] ("cannot connect to the database: …"), which hands no
    /// driver error on as its source: the driver's would print PostgreSQL's DETAIL.
    #[error("{0}")]
    Connect(DbError),
    #[error("{0}")]
    Query(DbError),
}

impl From<deadpool_postgres::PoolError> for SchemaError {
    fn from(error: deadpool_postgres::PoolError) -> SchemaError {
        SchemaError::Connect(DbError::from(error))
    }
}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(error: tokio_postgres::Error) -> SchemaError {
        SchemaError::Query(error.into())
    }
}

/// The lock a migration's transaction was last seen waiting for.
#[derive(Debug, Clone, Default)]
pub struct LockWait {
    /// The table (or index), e.g. `dispatcher.outbox`; unknown if the wait was too short
    /// to be seen.
    pub relation: Option<String>,
    /// The backends that held it or were ahead in the queue: `pg_stat_activity.pid`.
    pub holders: Vec<i32>,
}

fn holders(pids: &[i32]) -> String {
    match pids {
        [] => String::new(),
        [pid] => format!(" (backend pid {pid} in pg_stat_activity)"),
        pids => format!(" (backend pids {pids:?} in pg_stat_activity)"),
    }
}

/// The versions applied to the database; `None` when it has no dispatcher schema.
async fn applied_versions(
    client: &tokio_postgres::Client,
) -> Result<Option<Vec<i32>>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('dispatcher.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT version FROM dispatcher.schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    Ok(Some(rows.iter().map(|row| row.get(0)).collect()))
}

/// Versions applied that this build does not know: a newer dispatcher migrated.
fn unknown_versions(applied: &[i32]) -> Vec<i32> {
    applied
        .iter()
        .copied()
        .filter(|version| !MIGRATIONS.iter().any(|(known, _)| known == version))
        .collect()
}

/// Refuses to run against a schema this build does not match.
pub async fn ensure_current(client: &tokio_postgres::Client) -> Result<(), SchemaError> {
    let Some(applied) = applied_versions(client).await? else {
        return Err(SchemaError::NotMigrated);
    };
    let unknown = unknown_versions(&applied);
    if !unknown.is_empty() {
        return Err(SchemaError::Newer {
            unknown,
            expected: latest_version(),
        });
    }
    let missing: Vec<i32> = MIGRATIONS
        .iter()
        .map(|(version, _)| *version)
        .filter(|version| !applied.contains(version))
        .collect();
    match missing.len() {
        0 => Ok(()),
        _ if applied.is_empty() => Err(SchemaError::NotMigrated),
        _ => Err(SchemaError::Behind { missing }),
    }
}

/// Applies the migrations the database lacks, in order, each recorded as soon as it is
/// complete: a migration's transaction commits with its version, and the statements it
/// runs outside a transaction (`store::migration`) are followed by its version. A run
/// that stops half-way leaves every migration before the current one recorded, and the
/// next run takes up the current one again. Returns the versions applied.
///
/// It runs on a connection of its own, taken out of `pool` with its own session settings
/// (`MIGRATE_SESSION`); a second one from `pool` watches which lock a migration waits
/// for, to name it if the wait times out.
pub async fn migrate(pool: &Pool, options: &MigrateOptions) -> Result<Vec<i32>, SchemaError> {
    let client = deadpool_postgres::Object::take(pool.get().await?);
    client.batch_execute(MIGRATE_SESSION).await?;
    take_migration_lock(&client).await?;
    let applied = applied_versions(&client).await?.unwrap_or_default();
    let unknown = unknown_versions(&applied);
    if !unknown.is_empty() {
        return Err(SchemaError::Newer {
            unknown,
            expected: latest_version(),
        });
    }
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let watcher = pool.get().await?;
    let mut newly_applied = Vec::new();
    for (version, file) in MIGRATIONS
        .iter()
        .filter(|(version, _)| !applied.contains(version))
    {
        let version = *version;
        let steps =
            migration::steps(file).map_err(|error| SchemaError::Malformed { version, error })?;
        let migration = Migration {
            client: &client,
            watcher: &watcher,
            pid,
            version,
            options,
        };
        migration.apply(&steps).await?;
        tracing::info!(version, "migration applied");
        newly_applied.push(version);
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    Ok(newly_applied)
}

/// Takes [`MIGRATION_LOCK`] for the session, waiting while another `migrate` holds it.
async fn take_migration_lock(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let mut said = false;
    loop {
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?
            .get(0);
        if locked {
            return Ok(());
        }
        if !said {
            tracing::info!("another `dispatcher migrate` is running; waiting for it to finish");
            said = true;
        }
        tokio::time::sleep(MIGRATION_LOCK_POLL).await;
    }
}

/// One migration being applied.
struct Migration<'a> {
    client: &'a tokio_postgres::Client,
    watcher: &'a deadpool_postgres::Client,
    /// The backend of `client`, whose lock waits `watcher` looks at.
    pid: i32,
    version: i32,
    options: &'a MigrateOptions,
}

/// Why one try of a migration's transaction failed.
enum TransactionError {
    /// Another transaction's locks stopped it: worth another try.
    Contended(Contention),
    Failed(tokio_postgres::Error),
}

/// How another transaction's locks stopped a migration's transaction. Either way
/// PostgreSQL rolled it back and nothing of it is left, and the other transaction, once
/// it ends, no longer stands in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contention {
    /// It could not take a lock within `lock_timeout` (55P03).
    LockTimeout,
    /// It held a lock another transaction waited for while it waited for one of that
    /// transaction's, and PostgreSQL chose it to end the deadlock (40P01): e.g. 0003
    /// holds ACCESS EXCLUSIVE on `outbox` and asks for `deliveries`, while a claim has
    /// updated `deliveries` and waits to read `outbox`.
    Deadlock,
}

impl Contention {
    /// The contention a failure's SQLSTATE says, if any.
    fn of(code: Option<&SqlState>) -> Option<Contention> {
        match code {
            Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE => Some(Contention::LockTimeout),
            Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED => Some(Contention::Deadlock),
            _ => None,
        }
    }
}

impl Migration<'_> {
    async fn apply(&self, steps: &[Step<'_>]) -> Result<(), SchemaError> {
        let failed = |error: tokio_postgres::Error| SchemaError::Migration {
            version: self.version,
            error: error.into(),
        };
        let recorded_in_transaction = matches!(steps.last(), Some(Step::Transaction(_)));
        for (at, step) in steps.iter().enumerate() {
            match step {
                Step::Transaction(sql) => {
                    let last = at + 1 == steps.len();
                    self.in_transaction(sql, last).await?;
                }
                Step::BuildIndex { index, sql } => {
                    if self.drop_if_invalid(index).await.map_err(failed)? {
                        tracing::warn!(
                            version = self.version,
                            index = index.as_str(),
                            "an earlier migrate left this index INVALID (its build was interrupted); dropped it to build it again"
                        );
                    }
                    tracing::info!(
                        version = self.version,
                        index = index.as_str(),
                        "building an index concurrently (inserts and updates go on)"
                    );
                    self.client.batch_execute(sql).await.map_err(failed)?;
                }
                Step::Alone(sql) => self.client.batch_execute(sql).await.map_err(failed)?,
            }
        }
        if !recorded_in_transaction {
            record_version(self.client, self.version)
                .await
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Runs `sql` in one transaction under `lock_timeout`, with the version when it is
    /// the migration's `last` step; a try that times out waiting for a lock, or that
    /// PostgreSQL rolls back to end a deadlock, is tried again after a pause, as often as
    /// `lock_retries` says.
    async fn in_transaction(&self, sql: &str, last: bool) -> Result<(), SchemaError> {
        let tries = std::sync::atomic::AtomicUsize::new(0);
        // Kept across tries: a wait seen in an earlier try still names the lock if the
        // last one ended before the watcher looked.
        let seen = std::sync::Mutex::new(None);
        let waited = || {
            seen.lock()
                .ok()
                .and_then(|seen| seen.clone())
                .unwrap_or_default()
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_times(self.options.lock_retries);
        let outcome = (|| {
            tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.transaction_once(sql, last, &seen)
        })
        .retry(backoff)
        .when(|error| matches!(error, TransactionError::Contended(_)))
        .notify(|error, pause| {
            let TransactionError::Contended(contention) = error else {
                return;
            };
            let waited = waited();
            let relation = waited.relation.as_deref().unwrap_or("unknown");
            match contention {
                Contention::LockTimeout => tracing::warn!(
                    version = self.version,
                    relation,
                    holders = ?waited.holders,
                    lock_timeout = %humantime::format_duration(self.options.lock_timeout),
                    ?pause,
                    "the migration could not take its lock in time (a long transaction holds it); rolled back, trying again"
                ),
                Contention::Deadlock => tracing::warn!(
                    version = self.version,
                    relation,
                    holders = ?waited.holders,
                    ?pause,
                    "PostgreSQL rolled the migration back to end a deadlock with another transaction; trying again"
                ),
            }
        })
        .await;
        let tries = tries.load(std::sync::atomic::Ordering::Relaxed);
        match outcome {
            Ok(()) => Ok(()),
            Err(TransactionError::Contended(Contention::LockTimeout)) => {
                Err(SchemaError::LockTimeout {
                    version: self.version,
                    timeout: self.options.lock_timeout,
                    tries,
                    waited: waited(),
                })
            }
            Err(TransactionError::Contended(Contention::Deadlock)) => Err(SchemaError::Deadlock {
                version: self.version,
                tries,
                waited: waited(),
            }),
            Err(TransactionError::Failed(error)) => Err(SchemaError::Migration {
                version: self.version,
                error: error.into(),
            }),
        }
    }

    /// One try of [`Migration::in_transaction`]; `seen` is where the lock it waits for is
    /// noted.
    async fn transaction_once(
        &self,
        sql: &str,
        record: bool,
        seen: &std::sync::Mutex<Option<LockWait>>,
    ) -> Result<(), TransactionError> {
        let run = async {
            self.client.batch_execute("BEGIN").await?;
            let result = async {
                let lock_timeout = format!("{}ms", self.options.lock_timeout.as_millis());
                self.client
                    .execute(
                        "SELECT set_config('lock_timeout', $1, true)",
                        &[&lock_timeout],
                    )
                    .await?;
                self.client.batch_execute(sql).await?;
                if record {
                    record_version(self.client, self.version).await?;
                }
                self.client.batch_execute("COMMIT").await
            }
            .await;
            if result.is_err() {
                // Ends the failed transaction; its own failure (no transaction left) is moot.
                let _ = self.client.batch_execute("ROLLBACK").await;
            }
            result
        };
        let outcome = tokio::select! {
            outcome = run => outcome,
            never = watch_lock_waits(self.watcher, self.pid, self.options.lock_timeout, seen) => match never {},
        };
        outcome.map_err(|error| match Contention::of(error.code()) {
            Some(contention) => TransactionError::Contended(contention),
            None => TransactionError::Failed(error),
        })
    }

    /// Drops `index` (in the `dispatcher` schema, where every table of ours is) if an
    /// interrupted `CREATE INDEX CONCURRENTLY` left it INVALID: `IF NOT EXISTS` would take
    /// it for built. True if it did.
    async fn drop_if_invalid(&self, index: &str) -> Result<bool, tokio_postgres::Error> {
        let invalid: bool = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                                WHERE c.relnamespace = 'dispatcher'::regnamespace
                                  AND c.relname = $1 AND NOT i.indisvalid)",
                &[&index],
            )
            .await?
            .get(0);
        if invalid {
            let quoted = index.replace('"', "\"\"");
            self.client
                .batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS dispatcher.\"{quoted}\""
                ))
                .await?;
        }
        Ok(invalid)
    }
}

async fn record_version(
    client: &tokio_postgres::Client,
    version: i32,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO dispatcher.schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map(drop)
}

/// Notes, while a migration's transaction runs, which lock backend `pid` waits for and
/// who holds it: after a lock timeout PostgreSQL says only that it timed out. It looks at
/// once, then every tenth of `lock_timeout` (within 10-100 ms), so a wait that lasts
/// the whole `lock_timeout` is seen about ten times over, even on a busy machine.
async fn watch_lock_waits(
    watcher: &deadpool_postgres::Client,
    pid: i32,
    lock_timeout: Duration,
    seen: &std::sync::Mutex<Option<LockWait>>,
) -> Infallible {
    const SLOWEST: Duration = Duration::from_millis(100);
    let every = match lock_timeout.is_zero() {
        // No lock timeout: only a deadlock ends a wait, after PostgreSQL's 1s
        // `deadlock_timeout`.
        true => SLOWEST,
        false => (lock_timeout / 10).clamp(Duration::from_millis(10), SLOWEST),
    };
    loop {
        let waiting = watcher
            .query_opt(
                "SELECT l.relation::regclass::text AS relation,
                        pg_blocking_pids(l.pid) AS holders
                 FROM pg_locks l
                 WHERE l.pid = $1 AND NOT l.granted AND l.locktype = 'relation'
                 LIMIT 1",
                &[&pid],
            )
            .await;
        if let (Ok(Some(row)), Ok(mut seen)) = (waiting, seen.lock()) {
            *seen = Some(LockWait {
                relation: row.get("relation"),
                holders: row.get("holders"),
            });
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use deadpool_postgres::{PoolError, TimeoutType};
    use tokio_postgres::error::SqlState;

    use super::{Contention, SchemaError};

    #[test]
    fn a_migration_stopped_by_a_lock_timeout_or_chosen_to_end_a_deadlock_is_tried_again() {
        assert_eq!(
            Contention::of(Some(&SqlState::LOCK_NOT_AVAILABLE)),
            Some(Contention::LockTimeout)
        );
        assert_eq!(
            Contention::of(Some(&SqlState::T_R_DEADLOCK_DETECTED)),
            Some(Contention::Deadlock)
        );
        // A migration that fails for what it says fails the same way the next time.
        for failed in [
            SqlState::UNDEFINED_TABLE,
            SqlState::CHECK_VIOLATION,
            SqlState::QUERY_CANCELED,
            SqlState::T_R_SERIALIZATION_FAILURE,
        ] {
            assert_eq!(Contention::of(Some(&failed)), None, "{}", failed.code());
        }
        assert_eq!(Contention::of(None), None, "no SQLSTATE: a lost connection");
    }

    #[test]
    fn a_migrate_that_cannot_connect_says_so_without_handing_on_the_driver_error() {
        let error = SchemaError::from(PoolError::Timeout(TimeoutType::Create));
        assert_eq!(
            error.to_string(),
            "cannot connect to the database: Timeout occurred while creating a new object"
        );
        // A driver error as the source would print PostgreSQL's DETAIL and HINT in the
        // chain `main` prints (`{error:?}`), and those can quote a row.
        assert!(error.source().is_none(), "{error:?}");
        let printed = format!("{:?}", anyhow::Error::from(error));
        assert!(!printed.contains("Caused by"), "{printed}");
    }
}
