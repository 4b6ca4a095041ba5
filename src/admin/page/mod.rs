//! The support page: server-rendered HTML a support person can read without training.
//!
//! `/` shows each partner at a glance and over its last 24 hours, and the deliveries that
//! failed, with the partner's answer and buttons to resend or cancel; `/search` finds
//! deliveries from one box by whatever the caller quoted (`search.rs`); `/deliveries/{id}` shows the
//! delivery's attempts as a timeline, with the next one's schedule, every partner's
//! answer in full, who resent or cancelled it, and for support what the partner received
//! (`received.rs`). The event body (the patient's name, birth date, insurance) is shown
//! only there, on its own answer, for a reason the audit trail records: elsewhere the page
//! names patients by id. The partners' answers are shown verbatim, though, and a partner may repeat in its
//! answer what it was sent (a name, a birth date): so the page can show health data, and
//! is for staff allowed to see it. Retention erases those answers with the bodies.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

mod audit;
mod bulk;
mod chart;
mod read_from;
mod received;
mod search;
mod sign_in;
mod timeline;
mod views;
mod when;

use super::allowed::{Allowed, Support, Viewer};
use super::error::ApiError;
use super::selection::QuerySelection;
use super::state::{AdminState, Page};
use crate::store::support::{Resent, Selection};
/// For the test that holds the CLI, the API and the page to one meaning of a selection.
#[cfg(test)]
pub(crate) use views::overview_address;
use views::{layout, Listing, Notice};

pub(crate) use sign_in::routes as sign_in_routes;

const PAGE_ROWS: i64 = 50;

/// The pages behind sign-in; each handler names the role it needs (`Allowed<…>`).
pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/", get(overview))
        .route("/search", get(search::search))
        .route("/deliveries/{id}", get(delivery))
        .route("/deliveries/{id}/resend", post(resend))
        .route("/deliveries/{id}/cancel", post(cancel))
        .route("/deliveries/{id}/received", post(received::show))
        .route("/audit", get(audit::trail))
        .merge(bulk::routes())
}

/// The overview: partners at a glance, then the selected deliveries (failed by default).
async fn overview(
    Allowed(caller, ..): Allowed<Viewer>,
    State(state): State<AdminState>,
    Query(notice): Query<Notice>,
    QuerySelection(selection): QuerySelection,
    Query(page): Query<Page>,
) -> Result<Markup, PageError> {
    let (selection, shown_state) = listed(selection);
    let (state, from) = state.reading().await;
    // The rows first: they refuse a wrong state before the database is asked anything.
    let rows = state
        .page_for(
            &caller,
            &selection,
            Page {
                after: page.after,
                before: page.before,
                limit: Some(PAGE_ROWS),
            },
        )
        .await?;
    let summaries = state.partner_summaries().await?;
    let days = state.last_day().await?;
    let listing = Listing {
        selection: &selection,
        shown_state: &shown_state,
        page: &page,
    };
    let body = views::overview(&notice, &summaries, &days, &rows, &listing, &caller);
    let body = html! { (read_from::note(&from)) (body) };
    Ok(layout("Deliveries", Some(&caller), body))
}

/// What the overview lists for the selection in its address: failed deliveries unless
/// `state` says otherwise, and every state for `all`; with the state as the page shows it.
pub(crate) fn listed(mut selection: Selection) -> (Selection, String) {
    let shown_state = selection.state.clone().unwrap_or_else(|| "failed".into());
    selection.state = (shown_state != "all").then(|| shown_state.clone());
    (selection, shown_state)
}

async fn delivery(
    Allowed(caller, ..): Allowed<Viewer>,
    State(state): State<AdminState>,
    Path(id): Path<Uuid>,
    Query(notice): Query<Notice>,
) -> Result<Markup, PageError> {
    let (state, from) = state.reading().await;
    let detail = match state.detail_for(&caller, id).await {
        Ok(detail) => detail,
        // A placeholder support re-routed: its old id leads to the event's deliveries.
        Err(ApiError::Rerouted(rerouted)) => {
            let body = html! { (read_from::note(&from)) (views::rerouted(&rerouted)) };
            return Ok(layout("Delivery", Some(&caller), body));
        }
        Err(error) => return Err(error.into()),
    };
    let body = views::delivery(&notice, &detail, &caller);
    // What the partner received, for support: URL and masked headers, the body on request.
    let received = if caller.sees_answers() {
        received::section(id, state.received_headers(id).await)?
    } else {
        html! {}
    };
    let body = html! { (read_from::note(&from)) (body) (received) };
    Ok(layout("Delivery", Some(&caller), body))
}

#[derive(Deserialize)]
struct ActionForm {
    back: Option<String>,
}

impl ActionForm {
    /// Where to go after the action: only a path on this server.
    fn back(&self, notice: &str, delivery: Uuid) -> Redirect {
        let back = self
            .back
            .as_deref()
            .filter(|back| is_path_on_this_server(back))
            .unwrap_or("/");
        let separator = if back.contains('?') { '&' } else { '?' };
        Redirect::to(&format!(
            "{back}{separator}notice={notice}&delivery={delivery}"
        ))
    }
}

/// Browsers read `//host` and `/\host` as another site, and drop tabs and line breaks
/// from a URL before reading it (`/<tab>/host` is `//host`). A control character has no
/// place in a path of ours anyway, and cannot go in a `Location` header.
fn is_path_on_this_server(back: &str) -> bool {
    back.starts_with('/')
        && !back.starts_with("//")
        && !back.contains('\\')
        && !back.chars().any(char::is_control)
}

async fn resend(
    Allowed(caller, ..): Allowed<Support>,
    State(state): State<AdminState>,
    Path(id): Path<Uuid>,
    Form(form): Form<ActionForm>,
) -> Result<Redirect, PageError> {
    match state.resend_one(&caller, id).await {
        Ok(report) => Ok(form.back(Notice::resent(report.of(id)), id)),
        Err(ApiError::Conflict(_)) => Ok(form.back(Notice::resent(Resent::Untouched), id)),
        Err(error) => Err(error.into()),
    }
}

async fn cancel(
    Allowed(caller, ..): Allowed<Support>,
    State(state): State<AdminState>,
    Path(id): Path<Uuid>,
    Form(form): Form<ActionForm>,
) -> Result<Redirect, PageError> {
    match state.cancel_one(&caller, id).await {
        Ok(()) => Ok(form.back("cancelled", id)),
        Err(ApiError::NotCancelled(refused)) => Ok(form.back(Notice::not_cancelled(refused), id)),
        Err(error) => Err(error.into()),
    }
}

/// An API error shown as a page.
pub(crate) struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        PageError(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body = layout(
            "Error",
            None,
            html! { h1 { "Something is wrong" } p.notice.bad { (self.0.to_string()) } p { a href="/" { "Back to the overview" } } },
        );
        (status, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_page_carries_the_status_the_api_would() {
        let status = |error| PageError(error).into_response().status().as_u16();
        assert_eq!(status(ApiError::Unauthorized), 401);
        assert_eq!(status(ApiError::ForeignOrigin), 403);
        assert_eq!(status(ApiError::NotFound(Uuid::nil())), 404);
        assert_eq!(status(ApiError::Conflict("ended".into())), 409);
    }

    fn location(back: &str) -> String {
        let form = ActionForm {
            back: Some(back.to_string()),
        };
        let response = form.back("resent", Uuid::nil()).into_response();
        response.headers()["location"]
            .to_str()
            .expect("location")
            .to_string()
    }

    #[test]
    fn after_an_action_the_page_only_goes_back_to_itself() {
        assert!(location("/?state=failed").starts_with("/?state=failed&notice=resent"));
        for elsewhere in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example/",
            "/\t/evil.example/",
            "/\n/evil.example/",
            "/\r/evil.example/",
            "/deliveries/\\/evil.example",
            "/\u{0}",
            "/\u{7f}",
            "/\u{85}",
        ] {
            assert!(
                location(elsewhere).starts_with("/?notice=resent"),
                "{elsewhere}"
            );
        }
    }
}
