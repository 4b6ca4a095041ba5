//! `dispatcher tokens …`: personal API tokens for scripts (the statements are
//! `store::tokens`'s), and `dispatcher audit`, the audit trail. Every token created or
//! revoked here is audited as `cli:$USER`, with the database role that did it.

use std::io::Write;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::config::identity::Role;
use crate::store::audit::{self, action, Outcome, Via};
use crate::store::db::{DbError, GenericClient};
use crate::store::tokens::{self, TokenError};

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Create a token; it is printed once, and kept only as its SHA-256.
    Create {
        /// Unique among live tokens, e.g. the script's name.
        #[arg(long)]
        name: String,
        /// viewer, support or operator.
        #[arg(long)]
        role: Role,
        /// How long it lives, at most a year: 90d, 12h.
        #[arg(long)]
        expires: String,
    },
    /// List every token (live, expired, revoked); never a secret.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke the live token with this name or id.
    Revoke { token: String },
}

impl clap::ValueEnum for Role {
    fn value_variants<'a>() -> &'a [Self] {
        &Role::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// Who is acting from the command line, for the record.
pub fn cli_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_string());
    format!("cli:{user}")
}

/// Appends what the command line did to the audit trail.
pub async fn audited(
    client: &impl GenericClient,
    action: &str,
    target: Option<&str>,
    outcome: Outcome,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    audit::record(
        client,
        &audit::Entry {
            actor: &cli_actor(),
            subject: None,
            role: None,
            via: Via::Cli,
            action,
            target,
            outcome,
            reason,
        },
    )
    .await
    .map_err(DbError::from)
    .context("writing the audit trail")
}

pub async fn run(
    command: TokensCommand,
    client: &impl GenericClient,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create {
            name,
            role,
            expires,
        } => {
            let created = async {
                let expires_at = tokens::expires_at(&expires)?;
                tokens::create(client, &name, role, expires_at, &cli_actor()).await
            }
            .await;
            let (outcome, reason) = match &created {
                Ok(_) => (Outcome::Ok, None),
                Err(error) => (Outcome::Failed, Some(error.to_string())),
            };
            audited(
                client,
                action::TOKEN_CREATE,
                Some(&name),
                outcome,
                reason.as_deref(),
            )
            .await?;
            let created = created.map_err(|error| match error {
                TokenError::BadExpiry => anyhow::Error::new(error).context("--expires"),
                TokenError::BadName => anyhow::Error::new(error).context("--name"),
                other => anyhow::Error::new(other).context("creating the token"),
            })?;
            writeln!(out, "{}", created.secret)?;
            eprintln!(
                "token `{}` ({}) created, expires {}: the line above is its only copy; \
                 give it to the script as `Authorization: Bearer <token>`",
                created.token.name,
                created.token.role,
                created.token.expires_at.to_rfc3339()
            );
            Ok(())
        }
        TokensCommand::List { json } => {
            let all = tokens::list(client)
                .await
                .map_err(DbError::from)
                .context("listing tokens")?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &all)?;
                writeln!(out)?;
                return Ok(());
            }
            let now = Utc::now();
            writeln!(
                out,
                "{:<36}  {:<24}  {:<8}  {:<7}  {:<25}  CREATED BY",
                "ID", "NAME", "ROLE", "STATUS", "EXPIRES"
            )?;
            for token in &all {
                writeln!(
                    out,
                    "{:<36}  {:<24}  {:<8}  {:<7}  {:<25}  {}",
                    token.id,
                    token.name,
                    token.role,
                    token.status(now),
                    token.expires_at.to_rfc3339(),
                    token.created_by
                )?;
            }
            Ok(())
        }
        TokensCommand::Revoke { token } => {
            let revoked = tokens::revoke(client, &token, &cli_actor())
                .await
                .map_err(DbError::from)
                .context("revoking the token")?;
            let outcome = if revoked.is_some() {
                Outcome::Ok
            } else {
                Outcome::Failed
            };
            audited(
                client,
                action::TOKEN_REVOKE,
                Some(&token),
                outcome,
                revoked
                    .is_none()
                    .then_some("no live token has this name or id"),
            )
            .await?;
            match revoked {
                Some(revoked) => {
                    writeln!(out, "token `{}` ({}) revoked", revoked.name, revoked.id)?
                }
                None => bail!("no live token is named `{token}` or has that id"),
            }
            Ok(())
        }
    }
}

/// `dispatcher audit`: the audit trail, newest first.
#[derive(Args)]
pub struct AuditCommand {
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    action: Option<String>,
    /// A delivery id, a token name...
    #[arg(long)]
    target: Option<String>,
    /// At or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Entries older than this id (the last of the previous page).
    #[arg(long)]
    before: Option<i64>,
    #[arg(long, default_value_t = 100)]
    limit: i64,
    #[arg(long)]
    json: bool,
}

pub async fn audit(
    command: AuditCommand,
    client: &impl GenericClient,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if !(1..=10_000).contains(&command.limit) {
        bail!("--limit must be between 1 and 10000");
    }
    audited(client, action::AUDIT_READ, None, Outcome::Ok, None).await?;
    let entries = audit::read(
        client,
        &audit::Filter {
            actor: command.actor,
            action: command.action,
            target: command.target,
            since: command.since,
            until: command.until,
            before: command.before,
            limit: command.limit,
        },
    )
    .await
    .map_err(DbError::from)
    .context("reading the audit trail")?;
    if command.json {
        serde_json::to_writer_pretty(&mut *out, &entries)?;
        writeln!(out)?;
        return Ok(());
    }
    for entry in &entries {
        writeln!(
            out,
            "{}  {}  {}  {}{}  {}  {}  {}{}  (db role {})",
            entry.id,
            entry.at.to_rfc3339(),
            entry.via,
            entry.actor,
            entry
                .role
                .as_deref()
                .map_or(String::new(), |role| format!(" [{role}]")),
            entry.action,
            entry.target.as_deref().unwrap_or("-"),
            entry.outcome,
            entry
                .reason
                .as_deref()
                .map_or(String::new(), |reason| format!(": {reason}")),
            entry.db_role
        )?;
    }
    if let Some(last) = entries
        .last()
        .filter(|_| entries.len() as i64 == command.limit)
    {
        writeln!(out, "more: --before {}", last.id)?;
    }
    Ok(())
}
