//! Personal API tokens (`dispatcher.api_tokens`): what scripts use instead of the shared
//! break-glass token. A token is 256 random bits, shown once when created; only its
//! SHA-256 is kept, so a copy of the table lets nobody in. Each has a name, a role, an
//! expiry, and who created it; revoking keeps the row for the record.
//!
//! The same random-and-hashed secret serves the page's sessions and sign-in `state`
//! (`store::sessions`): [`new_secret`] and [`digest`] are the one way to make and keep one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::db::DbError;
use crate::config::identity::Role;

/// What every personal token starts with, so a leaked one is recognisable (secret
/// scanners) and never mistaken for the break-glass token.
pub const TOKEN_PREFIX: &str = "hadt_";

/// A fresh secret: `prefix` and 256 random bits, base64url.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// How a secret is kept: its SHA-256. The secrets are random and long, so a fast hash
/// is enough (nothing to guess from), and a lookup by digest is an index lookup.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A token as listed: everything but the secret, which is not kept.
#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiToken {
    fn from_row(row: &tokio_postgres::Row) -> ApiToken {
        ApiToken {
            id: row.get(0),
            name: row.get(1),
            // The CHECK constraint keeps the column to known roles; the least if not.
            role: row.get::<_, &str>(2).parse().unwrap_or(Role::Viewer),
            created_by: row.get(3),
            created_at: row.get(4),
            expires_at: row.get(5),
            revoked_at: row.get(6),
            revoked_by: row.get(7),
            last_used_at: row.get(8),
        }
    }

    /// `live`, `expired` or `revoked`.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "live"
        }
    }
}

const TOKEN_COLUMNS: &str =
    "id, name, role, created_by, created_at, expires_at, revoked_at, revoked_by, last_used_at";

/// A token just created: the secret, to be shown once, and what was stored.
pub struct CreatedToken {
    pub secret: String,
    pub token: ApiToken,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a live token named `{0}` exists already; revoke it first or pick another name")]
    NameTaken(String),
    #[error("a token's name must be 1 to 64 printable characters")]
    BadName,
    #[error("expires: a duration of at most a year, such as \"90d\" or \"12h\"")]
    BadExpiry,
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<tokio_postgres::Error> for TokenError {
    fn from(error: tokio_postgres::Error) -> TokenError {
        TokenError::Database(error.into())
    }
}

/// A token lives a year at most: scripts get a new one, and a forgotten one dies.
const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 60 * 60);

/// When a token given `lifetime` ("90d", "12h") now expires.
pub fn expires_at(lifetime: &str) -> Result<DateTime<Utc>, TokenError> {
    let lifetime = humantime::parse_duration(lifetime).map_err(|_| TokenError::BadExpiry)?;
    if lifetime.is_zero() || lifetime > MAX_LIFETIME {
        return Err(TokenError::BadExpiry);
    }
    let lifetime = chrono::Duration::from_std(lifetime).map_err(|_| TokenError::BadExpiry)?;
    Utc::now()
        .checked_add_signed(lifetime)
        .ok_or(TokenError::BadExpiry)
}

/// Whether `name` can name a token: printable, not empty, bounded.
pub fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 64 && !name.chars().any(char::is_control)
}

/// Creates a token; its secret is in the answer and nowhere else.
pub async fn create(
    client: &impl GenericClient,
    name: &str,
    role: Role,
    expires_at: DateTime<Utc>,
    created_by: &str,
) -> Result<CreatedToken, TokenError> {
    if !valid_name(name) {
        return Err(TokenError::BadName);
    }
    let secret = new_secret(TOKEN_PREFIX);
    let row = client
        .query_one(
            &format!(
                "INSERT INTO dispatcher.api_tokens (id, name, role, token_hash, created_by, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 RETURNING {TOKEN_COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &name,
                &role.as_str(),
                &digest(&secret),
                &created_by,
                &expires_at,
            ],
        )
        .await
        .map_err(|error| match error.code() {
            Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                TokenError::NameTaken(name.to_string())
            }
            _ => TokenError::Database(error.into()),
        })?;
    Ok(CreatedToken {
        secret,
        token: ApiToken::from_row(&row),
    })
}

/// Every token, live, expired or revoked, newest first.
pub async fn list(client: &impl GenericClient) -> Result<Vec<ApiToken>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!("SELECT {TOKEN_COLUMNS} FROM dispatcher.api_tokens ORDER BY created_at DESC, id DESC"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(ApiToken::from_row).collect())
}

/// Revokes the live token with this name or id; `None` if there is none.
pub async fn revoke(
    client: &impl GenericClient,
    name_or_id: &str,
    revoked_by: &str,
) -> Result<Option<ApiToken>, tokio_postgres::Error> {
    let id = Uuid::parse_str(name_or_id).ok();
    let row = client
        .query_opt(
            &format!(
                "UPDATE dispatcher.api_tokens SET revoked_at = now(), revoked_by = $3
                 WHERE revoked_at IS NULL AND (id = $1 OR name = $2)
                 RETURNING {TOKEN_COLUMNS}"
            ),
            &[&id, &name_or_id, &revoked_by],
        )
        .await?;
    Ok(row.as_ref().map(ApiToken::from_row))
}

/// Who a presented token is: a live, unexpired token's id, name and role. Notes when it
/// was used (at most once a minute per token, so a busy script writes little).
pub async fn authenticate(
    client: &impl GenericClient,
    secret: &str,
) -> Result<Option<ApiToken>, tokio_postgres::Error> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT {TOKEN_COLUMNS} FROM dispatcher.api_tokens
                 WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()"
            ),
            &[&digest(secret)],
        )
        .await?;
    let Some(token) = row.as_ref().map(ApiToken::from_row) else {
        return Ok(None);
    };
    client
        .execute(
            "UPDATE dispatcher.api_tokens SET last_used_at = now()
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            &[&token.id],
        )
        .await?;
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_new_each_time_and_kept_only_as_its_digest() {
        let one = new_secret(TOKEN_PREFIX);
        let two = new_secret(TOKEN_PREFIX);
        assert_ne!(one, two);
        assert!(one.starts_with(TOKEN_PREFIX));
        // 256 bits in base64url without padding.
        assert_eq!(one.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(digest(&one).len(), 32);
        assert_ne!(digest(&one), digest(&two));
    }

    #[test]
    fn a_token_lives_at_most_a_year() {
        assert!(expires_at("90d").is_ok());
        assert!(expires_at("12h").is_ok());
        for wrong in ["0s", "400d", "forever", ""] {
            assert!(expires_at(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn a_token_name_is_printable_and_bounded() {
        assert!(valid_name("deploy-script"));
        assert!(!valid_name(" "));
        assert!(!valid_name("a\nb"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
