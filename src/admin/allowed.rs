//! Whether a caller's role allows what a handler does: a handler names the role it needs
//! by taking [`Allowed<Viewer>`], [`Allowed<Support>`] or [`Allowed<Operator>`], so it
//! cannot run without saying who may run it. A role that falls short is refused (403)
//! and the refusal is audited.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::caller::Caller;
use super::error::ApiError;
use super::state::AdminState;
use crate::config::identity::Role;
use crate::store::audit::{action, Outcome, Via};

/// The role a handler needs.
pub(crate) trait Needs: Send + Sync {
    const ROLE: Role;
}

pub(crate) struct Viewer;
pub(crate) struct Support;
pub(crate) struct Operator;

impl Needs for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl Needs for Support {
    const ROLE: Role = Role::Support;
}
impl Needs for Operator {
    const ROLE: Role = Role::Operator;
}

/// A caller whose role allows what the handler does.
pub(crate) struct Allowed<R: Needs>(pub Caller, pub PhantomData<R>);

impl<R: Needs> FromRequestParts<AdminState> for Allowed<R> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Response> {
        let Some(caller) = parts.extensions.get::<Caller>().cloned() else {
            // Only routes behind the authentication take this: a route wired without it
            // is refused rather than served to anyone.
            tracing::error!("admin route without authentication refused");
            return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        };
        if caller.role.allows(R::ROLE) {
            return Ok(Allowed(caller, PhantomData));
        }
        let reason = format!("needs the {} role; has {}", R::ROLE, caller.role);
        let _ = State(state)
            .0
            .audit(
                &caller,
                action::ROLE_CHECK,
                Some(parts.uri.path()),
                Outcome::Refused,
                Some(&reason),
            )
            .await;
        tracing::warn!(role = %caller.role, needed = %R::ROLE, "admin request refused: role too low");
        let error = ApiError::Forbidden(format!(
            "your role ({}) does not allow this; it needs {}",
            caller.role,
            R::ROLE
        ));
        Err(match caller.via {
            Via::Page => refused_page(&error),
            _ => error.into_response(),
        })
    }
}

/// The page's refusal: plain HTML that says which role is needed (the page's own layout
/// is above this module).
fn refused_page(error: &ApiError) -> Response {
    let body = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Not allowed · HelpAround dispatcher" } }
            body {
                h1 { "Not allowed" }
                p.notice.bad { (error.to_string()) }
                p { a href="/" { "Back to the overview" } }
            }
        }
    };
    (error.status(), body).into_response()
}
