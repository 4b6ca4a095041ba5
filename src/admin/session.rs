//! Who is calling: the support page's sessions and the API's bearer tokens, turned into
//! a [`Caller`] for the handlers (`caller.rs` checks its role).
//!
//! - The page: a session cookie holding a random value, looked up in
//!   `dispatcher.admin_sessions` (`store::sessions`), opened by a sign-in through the
//!   identity provider or with the break-glass token (`page/sign_in.rs`); signing out
//!   deletes it, so the cookie is then worth nothing wherever a copy of it is.
//! - The API: `Authorization: Bearer` with a personal API token (`store::tokens`), or the
//!   break-glass `[admin] token`, each use of which is logged as a warning and audited.
//! - A server with neither `[admin.oidc]` nor a token listens on loopback only and lets
//!   every local caller in as an operator, named `loopback` (the page) or by `X-Actor`
//!   (the API), as before roles existed.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::access::{clean_actor, cookie};
use super::caller::Caller;
use super::error::{ApiError, DatabaseUnavailable};
use super::state::AdminState;
use crate::config::identity::Role;
use crate::store::audit::{action, Outcome, Via};
use crate::store::{sessions, tokens};

pub(crate) const SESSION_COOKIE: &str = "dispatcher_session";
/// Holds the `state` of a sign-in on its way through the identity provider, so that the
/// callback only finishes a sign-in this browser started.
pub(crate) const SIGN_IN_COOKIE: &str = "dispatcher_sign_in";
/// What the session secret starts with (it is never shown; the prefix tells it apart).
pub(crate) const SESSION_PREFIX: &str = "hads_";
/// A break-glass sign-in lasts an hour: it is for an outage of the provider, not a day's
/// work.
pub(crate) const BREAK_GLASS_SESSION: Duration = Duration::from_secs(60 * 60);

/// The cookie attributes of a session: script cannot read it, other sites' requests do
/// not carry it, and once served over https it is never sent over plain http.
pub(crate) fn session_cookie(state: &AdminState, value: &str, max_age: Option<Duration>) -> String {
    let secure = if state.access.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let max_age = max_age.map_or(String::new(), |age| format!("; Max-Age={}", age.as_secs()));
    format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{max_age}")
}

/// Lets a page request through with the caller of its session; sends everyone else to
/// the sign-in page.
pub(crate) async fn page_caller(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    match caller_of_page(&state, request.headers()).await {
        Ok(Some(caller)) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Ok(None) => Redirect::to("/login").into_response(),
        Err(error) => error.into_response(),
    }
}

async fn caller_of_page(
    state: &AdminState,
    headers: &HeaderMap,
) -> Result<Option<Caller>, ApiError> {
    if state.access.is_open() {
        return Ok(Some(Caller {
            actor: "loopback".to_string(),
            subject: None,
            role: Role::Operator,
            via: Via::Page,
        }));
    }
    let Some(secret) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let client = state.client().await?;
    let session = sessions::find(&client, secret)
        .await
        .map_err(DatabaseUnavailable::logged)?;
    Ok(session.map(|session| Caller {
        actor: session.actor,
        subject: session.subject,
        role: session.role,
        via: Via::Page,
    }))
}

/// Lets an API request through with the caller its bearer token names.
pub(crate) async fn api_caller(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    match caller_of_api(&state, request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// `X-Actor`, cleaned: who is asking, in the caller's own words (an open server's and the
/// break-glass token's only way to say it).
fn said_actor(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-actor")
        .and_then(|value| value.to_str().ok())
        .and_then(clean_actor)
}

async fn caller_of_api(state: &AdminState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if state.access.is_open() {
        return Ok(Caller {
            actor: said_actor(headers).unwrap_or_else(|| "api".to_string()),
            subject: None,
            role: Role::Operator,
            via: Via::Api,
        });
    }
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let refused = |reason: &'static str| async move {
        let unknown = Caller {
            actor: "unknown".to_string(),
            subject: None,
            role: Role::Viewer,
            via: Via::Api,
        };
        let _ = state
            .audit_sign_in(
                &unknown,
                Outcome::Refused,
                Some(reason),
                action::API_AUTHENTICATE,
            )
            .await;
        tracing::warn!(reason, "admin API: request refused");
        ApiError::Unauthorized
    };
    let Some(given) = given else {
        return Err(refused("no bearer token").await);
    };
    if state.access.token_matches(given) {
        let caller = Caller {
            actor: format!(
                "{} (break-glass)",
                said_actor(headers).unwrap_or_else(|| "api".to_string())
            ),
            subject: None,
            role: Role::Operator,
            via: Via::Api,
        };
        break_glass_used(state, &caller).await?;
        return Ok(caller);
    }
    let client = state.client().await?;
    match tokens::authenticate(&client, given)
        .await
        .map_err(DatabaseUnavailable::logged)?
    {
        Some(token) => Ok(Caller {
            actor: format!("token:{}", token.name),
            subject: Some(token.id.to_string()),
            role: token.role,
            via: Via::Api,
        }),
        None => Err(refused("unknown, expired or revoked bearer token").await),
    }
}

/// The break-glass token was used: a warning in the log (never the token) and an entry
/// in the audit trail, every time. Refused if it cannot be audited.
pub(crate) async fn break_glass_used(state: &AdminState, caller: &Caller) -> Result<(), ApiError> {
    tracing::warn!(
        via = caller.via.as_str(),
        "BREAK-GLASS: the shared [admin] token was used; every use is in the audit trail. \
         Sign in through the identity provider or use a personal API token instead."
    );
    state
        .audit_sign_in(caller, Outcome::Ok, None, action::BREAK_GLASS)
        .await
}
