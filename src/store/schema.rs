//! The database schema, versioned by the files in `migrations/`.

use deadpool_postgres::GenericClient;

/// Every migration, in order. A version is never edited once released; add a new one.
const MIGRATIONS: &[(i32, &str)] = &[
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
    (
        7,
        include_str!("../../migrations/0007_claim_by_partner.sql"),
    ),
    (11, include_str!("../../migrations/0011_support_search.sql")),
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
    #[error("the database schema lacks migrations {missing:?} that this dispatcher needs; run `dispatcher migrate`")]
    Behind { missing: Vec<i32> },
    #[error("the database schema has migrations {unknown:?}, newer than this dispatcher knows (up to {expected}); upgrade the dispatcher")]
    Newer { unknown: Vec<i32>, expected: i32 },
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// The versions applied to the database; `None` when it has no dispatcher schema.
async fn applied_versions(
    client: &impl GenericClient,
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
pub async fn ensure_current(client: &impl GenericClient) -> Result<(), SchemaError> {
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

/// Applies the migrations the database lacks, all in one transaction. Returns the
/// versions applied.
pub async fn migrate(client: &mut deadpool_postgres::Client) -> Result<Vec<i32>, SchemaError> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let applied = applied_versions(&transaction).await?.unwrap_or_default();
    let unknown = unknown_versions(&applied);
    if !unknown.is_empty() {
        return Err(SchemaError::Newer {
            unknown,
            expected: latest_version(),
        });
    }
    let mut newly_applied = Vec::new();
    for (version, sql) in MIGRATIONS
        .iter()
        .filter(|(version, _)| !applied.contains(version))
    {
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO dispatcher.schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        newly_applied.push(*version);
    }
    transaction.commit().await?;
    Ok(newly_applied)
}
