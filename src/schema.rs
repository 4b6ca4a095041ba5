//! The database schema, versioned by the files in `migrations/`.

use deadpool_postgres::GenericClient;

/// Every migration, in order. A version is never edited once released; add a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_initial.sql")),
    (2, include_str!("../migrations/0002_support_actions.sql")),
];

/// Serialises concurrent `dispatcher migrate` runs.
const MIGRATION_LOCK: i64 = 0x6865_6c70_6d69_6772; // "helpmigr"

pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database has no dispatcher schema; run `dispatcher migrate` first")]
    NotMigrated,
    #[error("the database schema is at version {found}, this dispatcher needs {expected}; run `dispatcher migrate`")]
    Behind { found: i32, expected: i32 },
    #[error("the database schema is at version {found}, newer than this dispatcher knows ({expected}); upgrade the dispatcher")]
    Newer { found: i32, expected: i32 },
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
}

async fn current_version(
    client: &impl GenericClient,
) -> Result<Option<i32>, tokio_postgres::Error> {
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
    let row = client
        .query_one("SELECT max(version) FROM dispatcher.schema_migrations", &[])
        .await?;
    Ok(row.get(0))
}

/// Refuses to run against a schema this build does not match.
pub async fn ensure_current(client: &impl GenericClient) -> Result<(), SchemaError> {
    let expected = latest_version();
    match current_version(client).await? {
        None => Err(SchemaError::NotMigrated),
        Some(found) if found < expected => Err(SchemaError::Behind { found, expected }),
        Some(found) if found > expected => Err(SchemaError::Newer { found, expected }),
        Some(_) => Ok(()),
    }
}

/// Applies the migrations the database lacks, all in one transaction. Returns the
/// versions applied.
pub async fn migrate(client: &mut deadpool_postgres::Client) -> Result<Vec<i32>, SchemaError> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let found = current_version(&transaction).await?.unwrap_or(0);
    if found > latest_version() {
        return Err(SchemaError::Newer {
            found,
            expected: latest_version(),
        });
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > found) {
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO dispatcher.schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        applied.push(*version);
    }
    transaction.commit().await?;
    Ok(applied)
}
