//! The support page's sessions (`dispatcher.admin_sessions`) and the sign-ins on their way
//! through the identity provider (`dispatcher.sign_in_requests`). The browser holds a
//! random value; the table only its digest ([`super::tokens::digest`]). Signing out
//! deletes the session; the pruner deletes expired ones.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::tokens::digest;
use crate::config::identity::Role;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIdentity {
    pub actor: String,
    pub subject: Option<String>,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Opens a session for the holder of `secret`, for `lifetime`.
pub async fn open(
    client: &impl GenericClient,
    secret: &str,
    actor: &str,
    subject: Option<&str>,
    role: Role,
    lifetime: Duration,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO dispatcher.admin_sessions (id_hash, actor, subject, role, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
            &[
                &digest(secret),
                &actor,
                &subject,
                &role.as_str(),
                &seconds(lifetime),
            ],
        )
        .await?;
    Ok(())
}

fn identity(row: &tokio_postgres::Row) -> SessionIdentity {
    SessionIdentity {
        actor: row.get(0),
        subject: row.get(1),
        // The CHECK constraint keeps the column to known roles; the least if not.
        role: row.get::<_, &str>(2).parse().unwrap_or(Role::Viewer),
        expires_at: row.get(3),
    }
}

/// The live session of `secret`, if any.
pub async fn find(
    client: &impl GenericClient,
    secret: &str,
) -> Result<Option<SessionIdentity>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT actor, subject, role, expires_at FROM dispatcher.admin_sessions
             WHERE id_hash = $1 AND expires_at > now()",
            &[&digest(secret)],
        )
        .await?;
    Ok(row.as_ref().map(identity))
}

/// Ends the session of `secret`: after this the cookie is worth nothing, wherever a copy
/// of it is.
pub async fn close(
    client: &impl GenericClient,
    secret: &str,
) -> Result<Option<SessionIdentity>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "DELETE FROM dispatcher.admin_sessions WHERE id_hash = $1
             RETURNING actor, subject, role, expires_at",
            &[&digest(secret)],
        )
        .await?;
    Ok(row.as_ref().map(identity))
}

/// What the callback needs to finish a sign-in it started.
#[derive(Debug)]
pub struct SignInRequest {
    pub nonce: String,
    pub pkce_verifier: String,
}

/// Remembers a sign-in sent to the identity provider under its `state`.
pub async fn start_sign_in(
    client: &impl GenericClient,
    state: &str,
    request: &SignInRequest,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO dispatcher.sign_in_requests (state_hash, nonce, pkce_verifier)
             VALUES ($1, $2, $3)",
            &[&digest(state), &request.nonce, &request.pkce_verifier],
        )
        .await?;
    Ok(())
}

/// Takes the sign-in started under `state`, if it is younger than `max_age`: a `state`
/// works once, so a replayed callback finds nothing.
pub async fn take_sign_in(
    client: &impl GenericClient,
    state: &str,
    max_age: Duration,
) -> Result<Option<SignInRequest>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "DELETE FROM dispatcher.sign_in_requests WHERE state_hash = $1
             RETURNING nonce, pkce_verifier,
                       created_at > now() - make_interval(secs => $2)",
            &[&digest(state), &seconds(max_age)],
        )
        .await?;
    Ok(row
        .filter(|row| row.get::<_, bool>(2))
        .map(|row| SignInRequest {
            nonce: row.get(0),
            pkce_verifier: row.get(1),
        }))
}

/// Deletes expired sessions and sign-ins abandoned for longer than `max_sign_in`.
pub async fn prune(
    client: &impl GenericClient,
    max_sign_in: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let sessions = client
        .execute(
            "DELETE FROM dispatcher.admin_sessions WHERE expires_at <= now()",
            &[],
        )
        .await?;
    let sign_ins = client
        .execute(
            "DELETE FROM dispatcher.sign_in_requests
             WHERE created_at <= now() - make_interval(secs => $1)",
            &[&seconds(max_sign_in)],
        )
        .await?;
    Ok(sessions + sign_ins)
}
