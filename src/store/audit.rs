//! The audit trail (`dispatcher.audit_log`): who signed in or was refused, who read
//! partners' answers or a body, who resent, cancelled, created or revoked what, and how it
//! ended. Append-only: the table's trigger refuses UPDATE, DELETE and TRUNCATE, stamps the
//! time and the database role itself, and only `dispatcher.prune_audit_log` (retention,
//! `[retention] audit_days`) deletes. Nothing here writes a secret or a body: a target is
//! an id, a name or a list's filters.

use std::fmt;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;

use crate::config::identity::Role;

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Page,
    Api,
    Cli,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Page => "page",
            Via::Api => "api",
            Via::Cli => "cli",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Not allowed: a wrong token, a user in none of the groups, a role too low.
    Refused,
    /// Allowed, but it did not work (the provider failed, the delivery could not be resent).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The actions the trail records, in one place so the page, the API and the CLI name
/// them alike.
pub mod action {
    pub const SIGN_IN: &str = "sign_in";
    pub const SIGN_OUT: &str = "sign_out";
    pub const BREAK_GLASS: &str = "break_glass";
    pub const API_AUTHENTICATE: &str = "api_authenticate";
    pub const ROLE_CHECK: &str = "role_check";
    pub const DELIVERIES_READ: &str = "deliveries_read";
    pub const DELIVERY_READ: &str = "delivery_read";
    /// What a partner received, its body included (with the reason support gave).
    pub const BODY_READ: &str = "body_read";
    pub const RESEND: &str = "resend";
    pub const CANCEL: &str = "cancel";
    pub const BULK_RESEND: &str = "bulk_resend";
    pub const TOKEN_CREATE: &str = "token_create";
    pub const TOKEN_REVOKE: &str = "token_revoke";
    pub const TOKENS_READ: &str = "tokens_read";
    pub const AUDIT_READ: &str = "audit_read";
}

/// One entry to append.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub actor: &'a str,
    pub subject: Option<&'a str>,
    pub role: Option<Role>,
    pub via: Via,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub outcome: Outcome,
    pub reason: Option<&'a str>,
}

/// Appends one entry. A NUL character, which PostgreSQL's text cannot hold, is kept as
/// U+FFFD: a caller's odd text must not keep their request out of the trail.
pub async fn record(
    client: &impl GenericClient,
    entry: &Entry<'_>,
) -> Result<(), tokio_postgres::Error> {
    let storable = |text: &str| text.replace('\0', "\u{FFFD}");
    let (actor, target, reason) = (
        storable(entry.actor),
        entry.target.map(storable),
        entry.reason.map(storable),
    );
    client
        .execute(
            "INSERT INTO dispatcher.audit_log
                 (actor, subject, role, via, action, target, outcome, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &actor,
                &entry.subject,
                &entry.role.map(Role::as_str),
                &entry.via.as_str(),
                &entry.action,
                &target,
                &entry.outcome.as_str(),
                &reason,
            ],
        )
        .await?;
    Ok(())
}

/// One entry as read back.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub subject: Option<String>,
    pub role: Option<String>,
    pub via: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub db_role: String,
}

/// Which entries to read; `None` selects any.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Entries older than this id (the last of the previous page).
    pub before: Option<i64>,
    pub limit: i64,
}

/// Entries newest first, a page at a time.
pub async fn read(
    client: &impl GenericClient,
    filter: &Filter,
) -> Result<Vec<Recorded>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, at, actor, subject, role, via, action, target, outcome, reason, db_role
             FROM dispatcher.audit_log
             WHERE ($1::text IS NULL OR actor = $1)
               AND ($2::text IS NULL OR action = $2)
               AND ($3::text IS NULL OR target = $3)
               AND ($4::timestamptz IS NULL OR at >= $4)
               AND ($5::timestamptz IS NULL OR at < $5)
               AND ($6::bigint IS NULL OR id < $6)
             ORDER BY id DESC
             LIMIT $7",
            &[
                &filter.actor,
                &filter.action,
                &filter.target,
                &filter.since,
                &filter.until,
                &filter.before,
                &filter.limit,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Recorded {
            id: row.get(0),
            at: row.get(1),
            actor: row.get(2),
            subject: row.get(3),
            role: row.get(4),
            via: row.get(5),
            action: row.get(6),
            target: row.get(7),
            outcome: row.get(8),
            reason: row.get(9),
            db_role: row.get(10),
        })
        .collect())
}

/// Deletes up to `limit` entries older than `audit_days` (the database keeps a year
/// whatever it is asked), through the one function allowed to.
pub async fn prune(
    client: &impl GenericClient,
    audit_days: u32,
    limit: i64,
) -> Result<u64, tokio_postgres::Error> {
    let days = i32::try_from(audit_days).unwrap_or(i32::MAX);
    let limit = i32::try_from(limit).unwrap_or(i32::MAX);
    let deleted: i64 = client
        .query_one(
            "SELECT dispatcher.prune_audit_log($1, $2)",
            &[&days, &limit],
        )
        .await?
        .get(0);
    Ok(u64::try_from(deleted).unwrap_or(0))
}
