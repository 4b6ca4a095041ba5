//! The PostgreSQL roles the dispatcher is run with, least privilege each, as the SQL
//! `dispatcher db grants` prints (README, "Setting up PostgreSQL"). The owner owns the
//! schema and migrates; these grants give the others only what their statements need:
//!
//! - the daemon: reads and writes the queue, reads the outbox and marks it routed or
//!   erased, and may only read and append the audit trail (never UPDATE or DELETE it;
//!   the table's trigger refuses that to everyone, and retention goes through
//!   `dispatcher.prune_audit_log`);
//! - the enrollment flow (producer): USAGE on the schema and INSERT of the outbox's own
//!   columns, nothing else (the wake-up trigger reads the flag PUBLIC may read);
//! - support's command line: reads deliveries, attempts and support actions, the outbox
//!   without its `event` column (never a body), and appends its own audit entries.
//!
//! Run it as the owner after every `dispatcher migrate`: it names each table, so a table a
//! new migration adds gets its grant then. It is idempotent.

use std::fmt::Write;

/// The role names, as given on the command line.
pub struct DbRoles<'a> {
    pub owner: &'a str,
    pub daemon: &'a str,
    pub producer: &'a str,
    pub support: &'a str,
}

#[derive(Debug, thiserror::Error)]
#[error("--{flag}: a PostgreSQL role name is 1 to 63 bytes without NUL")]
pub struct BadRoleName {
    pub flag: &'static str,
}

/// A role name as an SQL identifier, quoted, whatever it holds.
fn quoted(flag: &'static str, name: &str) -> Result<String, BadRoleName> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(BadRoleName { flag });
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// The daemon's tables it reads and writes whole.
const DAEMON_READ_WRITE: &[&str] = &[
    "deliveries",
    "attempts",
    "partner_patients",
    "partner_circuits",
    "admin_sessions",
    "sign_in_requests",
    "api_tokens",
    "routing_position",
    "outbox_route_again",
    "idempotency_keys",
    "leases",
    "retention_position",
];

/// Every table of the schema, so a test can tell one that the grants forget.
pub const TABLES: &[&str] = &[
    "schema_migrations",
    "outbox",
    "deliveries",
    "attempts",
    "partner_patients",
    "support_actions",
    "partner_circuits",
    "admin_sessions",
    "sign_in_requests",
    "api_tokens",
    "audit_log",
    "routing_position",
    "outbox_route_again",
    "idempotency_keys",
    "leases",
    "retention_position",
    "archived_deliveries",
    "archived_attempts",
    "archive_weeks",
];

/// The SQL that gives each role what it needs and nothing else.
pub fn grants(roles: &DbRoles<'_>) -> Result<String, BadRoleName> {
    let owner = quoted("owner", roles.owner)?;
    let daemon = quoted("daemon", roles.daemon)?;
    let producer = quoted("producer", roles.producer)?;
    let support = quoted("support", roles.support)?;
    let mut sql = String::new();
    let tables = |names: &[&str]| {
        names
            .iter()
            .map(|name| format!("dispatcher.{name}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Writing to a String cannot fail.
    let _ = write!(
        sql,
        "-- Least-privilege grants for the HelpAround dispatcher (`dispatcher db grants`).
-- Run as {owner}, the owner of schema dispatcher, after every `dispatcher migrate`.
BEGIN;
SET LOCAL ROLE {owner};
GRANT USAGE ON SCHEMA dispatcher TO {daemon}, {producer}, {support};

-- The daemon: the queue, the outbox (routed, erased, deleted; never inserted), sessions
-- and tokens; the audit trail read and appended only.
GRANT SELECT ON dispatcher.schema_migrations, dispatcher.every_attempt,
    dispatcher.every_delivery TO {daemon};
GRANT SELECT, UPDATE, DELETE ON dispatcher.outbox TO {daemon};
GRANT SELECT, INSERT, UPDATE, DELETE ON {read_write} TO {daemon};
GRANT SELECT, INSERT, DELETE ON dispatcher.support_actions TO {daemon};
GRANT SELECT, INSERT ON dispatcher.audit_log TO {daemon};
GRANT SELECT, UPDATE ON SEQUENCE dispatcher.router_waiting TO {daemon};
-- The router's sleep check: it sets the flag and tries the wake-up lock (SHARE mode,
-- which LOCK TABLE allows only with UPDATE; the table holds no rows).
GRANT EXECUTE ON FUNCTION dispatcher.router_may_sleep() TO {daemon};
GRANT UPDATE ON dispatcher.outbox_wakeup TO {daemon};
GRANT EXECUTE ON FUNCTION dispatcher.prune_audit_log(integer, integer) TO {daemon};
-- The archive (migration 0025): rows moved in, and each week's partitions made and
-- dropped with the owner's rights (the daemon's role creates and drops no table).
GRANT SELECT, INSERT ON dispatcher.archived_deliveries, dispatcher.archived_attempts TO {daemon};
GRANT SELECT ON dispatcher.archive_weeks TO {daemon}, {support};
GRANT EXECUTE ON FUNCTION dispatcher.archive_week_of(uuid),
    dispatcher.archive_week(date, timestamptz),
    dispatcher.drop_archived_week(integer) TO {daemon};

-- The enrollment flow: one INSERT of its own columns, nothing else.
GRANT INSERT (event_name, event, traceparent) ON dispatcher.outbox TO {producer};

-- Support's command line: reads, never a body; appends its own audit entries.
GRANT SELECT ON dispatcher.schema_migrations, dispatcher.deliveries, dispatcher.attempts,
    dispatcher.every_attempt, dispatcher.support_actions, dispatcher.partner_circuits,
    dispatcher.leases, dispatcher.every_delivery, dispatcher.archived_deliveries,
    dispatcher.archived_attempts TO {support};
GRANT SELECT (id, event_name, created_at, routed_at, event_erased_at)
    ON dispatcher.outbox TO {support};
GRANT EXECUTE ON FUNCTION dispatcher.unrouted_events() TO {daemon}, {support};
-- `deliveries_ended_by_state`'s predicate, evaluated by every write of a delivery, and
-- support's window of delivered deliveries (migration 0023 grants them to PUBLIC too;
-- named here so a site that revoked PUBLIC's gets them back).
GRANT EXECUTE ON FUNCTION dispatcher.unix_millis(timestamptz),
    dispatcher.first_uuid_of_millis(int8),
    dispatcher.delivery_id_off_clock(uuid, timestamptz) TO {daemon}, {support};
GRANT SELECT, INSERT ON dispatcher.audit_log TO {support};

-- Nobody but the owner changes the trail (its trigger refuses even the owner).
REVOKE UPDATE, DELETE, TRUNCATE ON dispatcher.audit_log FROM {daemon}, {producer}, {support};
COMMIT;
",
        read_write = tables(DAEMON_READ_WRITE),
    );
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_quoted_whatever_they_hold() {
        let sql = grants(&DbRoles {
            owner: "dispatcher_owner",
            daemon: "dispatcher",
            producer: "enroll\"; DROP TABLE x; --",
            support: "Support Desk",
        })
        .expect("grants");
        assert!(sql.contains("TO \"enroll\"\"; DROP TABLE x; --\""), "{sql}");
        assert!(sql.contains("\"Support Desk\""));
        let error = grants(&DbRoles {
            owner: "",
            daemon: "d",
            producer: "p",
            support: "s",
        })
        .map(|_| ())
        .unwrap_err();
        assert_eq!(error.flag, "owner");
    }
}
