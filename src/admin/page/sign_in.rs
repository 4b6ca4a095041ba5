//! Signing in and out of the support page: through the company's identity provider
//! (`/auth/login`, then the provider, then `/auth/callback`), or with the break-glass
//! token (`POST /login`). Each sign-in, refusal and sign-out is audited. The provider's
//! side is `admin/oidc.rs`; sessions are `admin/session.rs` and `store::sessions`.

use axum::extract::{Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup};
use serde::Deserialize;

use super::views::{layout, login_page};
use crate::admin::access::{clean_actor, cookie};
use crate::admin::caller::Caller;
use crate::admin::error::{ApiError, DatabaseUnavailable};
use crate::admin::session::{
    break_glass_used, session_cookie, BREAK_GLASS_SESSION, SESSION_COOKIE, SESSION_PREFIX,
    SIGN_IN_COOKIE,
};
use crate::admin::state::AdminState;
use crate::config::identity::Role;
use crate::store::audit::{action, Outcome, Via};
use crate::store::retention::SIGN_IN_MAX_AGE;
use crate::store::{sessions, tokens};

/// The pages anyone may open: the sign-in page, the way to the provider and back, and
/// signing out.
pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/login", get(login_form).post(break_glass))
        .route("/auth/login", post(start))
        .route("/auth/callback", get(callback))
        .route("/logout", post(sign_out))
}

#[derive(Deserialize)]
struct LoginQuery {
    failed: Option<String>,
}

async fn login_form(State(state): State<AdminState>, Query(query): Query<LoginQuery>) -> Markup {
    login_page(
        query.failed.is_some(),
        state.oidc.is_some(),
        state.access.has_token(),
    )
}

/// Someone not (yet) known, for the record of a refused sign-in.
fn stranger(actor: &str) -> Caller {
    Caller {
        actor: actor.to_string(),
        subject: None,
        role: Role::Viewer,
        via: Via::Page,
    }
}

/// A sign-in that did not happen: audited, logged without detail, and said on a page.
async fn refused(state: &AdminState, who: &Caller, status: StatusCode, reason: &str) -> Response {
    let outcome = if status.is_server_error() {
        Outcome::Failed
    } else {
        Outcome::Refused
    };
    if let Err(error) = state
        .audit_sign_in(who, outcome, Some(reason), action::SIGN_IN)
        .await
    {
        return error.into_response();
    }
    tracing::warn!(%status, "support page: sign-in refused");
    let body = layout(
        "Sign-in refused",
        None,
        html! {
            h1 { "Sign-in refused" }
            p.notice.bad role="alert" { (reason) }
            p { a href="/login" { "Try again" } }
        },
    );
    (
        status,
        [(SET_COOKIE, clear(SIGN_IN_COOKIE, "/auth", state))],
        body,
    )
        .into_response()
}

fn clear(name: &str, path: &str, state: &AdminState) -> String {
    let secure = if state.access.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    format!("{name}=; Path={path}; HttpOnly; SameSite=Lax; Max-Age=0{secure}")
}

/// Sends the browser to the identity provider, with a fresh `state`, nonce and PKCE
/// challenge; the state also goes into a cookie, so only this browser can finish it.
async fn start(State(state): State<AdminState>) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return Redirect::to("/login").into_response();
    };
    let (url, sign_in_state, request) = match oidc.start().await {
        Ok(started) => started,
        Err(error) => {
            return refused(
                &state,
                &stranger("unknown"),
                StatusCode::BAD_GATEWAY,
                &error.to_string(),
            )
            .await
        }
    };
    let saved = async {
        let client = state.client().await?;
        sessions::start_sign_in(&client, &sign_in_state, &request)
            .await
            .map_err(DatabaseUnavailable::logged)?;
        Ok::<_, ApiError>(())
    }
    .await;
    if let Err(error) = saved {
        return error.into_response();
    }
    let secure = if state.access.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    // Lax: the provider sends the browser back with a top-level GET from its own site.
    let cookie = format!(
        "{SIGN_IN_COOKIE}={sign_in_state}; Path=/auth; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        SIGN_IN_MAX_AGE.as_secs()
    );
    (
        StatusCode::SEE_OTHER,
        [(SET_COOKIE, cookie), (LOCATION, url.to_string())],
    )
        .into_response()
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The provider sends the browser back here: the state must be this browser's and
/// unused, the code is exchanged, the ID token checked, the groups mapped to a role.
async fn callback(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(callback): Query<Callback>,
) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return Redirect::to("/login").into_response();
    };
    let nobody = stranger("unknown");
    if let Some(error) = callback.error.as_deref() {
        let reason = format!(
            "the identity provider answered `{}`",
            clean_actor(error).unwrap_or_default()
        );
        return refused(&state, &nobody, StatusCode::FORBIDDEN, &reason).await;
    }
    let (Some(code), Some(sign_in_state)) = (callback.code, callback.state) else {
        return refused(
            &state,
            &nobody,
            StatusCode::BAD_REQUEST,
            "the callback carries no code or state",
        )
        .await;
    };
    if cookie(&headers, SIGN_IN_COOKIE) != Some(sign_in_state.as_str()) {
        return refused(
            &state,
            &nobody,
            StatusCode::FORBIDDEN,
            "this sign-in was not started in this browser (state does not match)",
        )
        .await;
    }
    let taken = async {
        let client = state.client().await?;
        sessions::take_sign_in(&client, &sign_in_state, SIGN_IN_MAX_AGE)
            .await
            .map_err(|error| ApiError::from(DatabaseUnavailable::logged(error)))
    }
    .await;
    let request = match taken {
        Ok(Some(request)) => request,
        Ok(None) => {
            return refused(
                &state,
                &nobody,
                StatusCode::FORBIDDEN,
                "this sign-in is unknown, was used already, or is older than 10 minutes (state refused)",
            )
            .await
        }
        Err(error) => return error.into_response(),
    };
    let signed_in = match oidc.finish(&code, request).await {
        Ok(signed_in) => signed_in,
        Err(error) => {
            let status = match error {
                crate::admin::oidc::SignInError::ProviderUnavailable(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::FORBIDDEN,
            };
            return refused(&state, &nobody, status, &error.to_string()).await;
        }
    };
    let who = Caller {
        actor: signed_in.actor.clone(),
        subject: Some(signed_in.subject.clone()),
        role: Role::Viewer,
        via: Via::Page,
    };
    let Some(role) = oidc.role_of(&signed_in) else {
        let reason = format!(
            "{} is in none of the groups [admin.oidc] maps to a role",
            signed_in.actor
        );
        return refused(&state, &who, StatusCode::FORBIDDEN, &reason).await;
    };
    let who = Caller { role, ..who };
    let lifetime = oidc.config.session_lifetime;
    match open_session(&state, &who, lifetime).await {
        Ok(cookie) => signed_in_page(&state, cookie),
        Err(error) => error.into_response(),
    }
}

/// Opens a session for `who` and audits the sign-in; the session cookie to set.
async fn open_session(
    state: &AdminState,
    who: &Caller,
    lifetime: std::time::Duration,
) -> Result<String, ApiError> {
    let secret = tokens::new_secret(SESSION_PREFIX);
    let client = state.client().await?;
    sessions::open(
        &client,
        &secret,
        &who.actor,
        who.subject.as_deref(),
        who.role,
        lifetime,
    )
    .await
    .map_err(DatabaseUnavailable::logged)?;
    state
        .audit_sign_in(who, Outcome::Ok, None, action::SIGN_IN)
        .await?;
    tracing::info!(role = %who.role, "support page: signed in");
    Ok(session_cookie(state, &secret, Some(lifetime)))
}

/// Signed in: the session cookie, and a page that goes on to the overview by itself. Not
/// a redirect: after a round trip through the provider's site the browser would not send
/// a `SameSite=Strict` cookie along a redirect chain that started there; a navigation
/// this page starts is the admin server's own.
fn signed_in_page(state: &AdminState, cookie: String) -> Response {
    let body = layout(
        "Signed in",
        None,
        html! {
            meta http-equiv="refresh" content="0;url=/";
            h1 { "Signed in" }
            p { a #continue href="/" { "Continue to the overview" } }
        },
    );
    // Appended, not inserted: two cookies, two headers.
    (
        AppendHeaders([
            (SET_COOKIE, cookie),
            (SET_COOKIE, clear(SIGN_IN_COOKIE, "/auth", state)),
        ]),
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct BreakGlassForm {
    name: String,
    token: String,
}

/// The break-glass sign-in: the shared token and a name, for when the identity provider
/// is down. An operator's session for an hour; a warning in the log and the audit trail.
async fn break_glass(
    State(state): State<AdminState>,
    Form(form): Form<BreakGlassForm>,
) -> Response {
    let name = clean_actor(&form.name);
    let Some(name) = name.filter(|_| state.access.token_matches(&form.token)) else {
        let _ = state
            .audit_sign_in(
                &stranger("unknown"),
                Outcome::Refused,
                Some("wrong break-glass token, or no name given"),
                action::SIGN_IN,
            )
            .await;
        tracing::warn!("support page: break-glass sign-in refused");
        return Redirect::to("/login?failed=1").into_response();
    };
    let who = Caller {
        actor: format!("{name} (break-glass)"),
        subject: None,
        role: Role::Operator,
        via: Via::Page,
    };
    if let Err(error) = break_glass_used(&state, &who).await {
        return error.into_response();
    }
    match open_session(&state, &who, BREAK_GLASS_SESSION).await {
        Ok(cookie) => ([(SET_COOKIE, cookie)], Redirect::to("/")).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Ends the session on the server (the cookie is then worth nothing anywhere) and in the
/// browser.
async fn sign_out(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        let closed = async {
            let client = state.client().await?;
            sessions::close(&client, secret)
                .await
                .map_err(|error| ApiError::from(DatabaseUnavailable::logged(error)))
        }
        .await;
        match closed {
            Ok(Some(session)) => {
                let who = Caller {
                    actor: session.actor,
                    subject: session.subject,
                    role: session.role,
                    via: Via::Page,
                };
                if let Err(error) = state
                    .audit_sign_in(&who, Outcome::Ok, None, action::SIGN_OUT)
                    .await
                {
                    return error.into_response();
                }
            }
            Ok(None) => {}
            Err(error) => return error.into_response(),
        }
    }
    (
        [(
            SET_COOKIE,
            session_cookie(&state, "", Some(std::time::Duration::ZERO)),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}
