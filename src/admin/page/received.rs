//! "What the partner received" on a delivery's page, for support: the URL and headers
//! (secrets masked) under the timeline, and a "Show patient data" form that asks for a
//! reason and posts it (the page's forms are same-origin only, `access.rs`); its answer
//! shows the body as sent, indented, after the audit trail recorded the reason. The body
//! is shown on that answer only, never in a list.

use axum::extract::{Path, State};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::views::layout;
use super::when::time;
use super::PageError;
use crate::admin::allowed::{Allowed, Support};
use crate::admin::error::ApiError;
use crate::admin::received::{ReceivedView, ShownBody, REASON_MAX_CHARS};
use crate::admin::state::AdminState;

/// The section on a delivery's page: what the partner received, or why nothing can be
/// shown (a conflict's words); any other failure is the page's.
pub(super) fn section(
    id: Uuid,
    received: Result<ReceivedView, ApiError>,
) -> Result<Markup, ApiError> {
    let shown = match received {
        Ok(view) => html! {
            (request(&view))
            form #show-body method="post" action={ "/deliveries/" (id) "/received" } {
                label for="reason" { "Why do you need to see the patient data? (recorded in the audit trail)" }
                input #reason type="text" name="reason" required maxlength=(REASON_MAX_CHARS)
                    placeholder="e.g. ticket 4711: partner says member_id unknown";
                button type="submit" { "Show patient data" }
            }
        },
        Err(ApiError::Conflict(why)) => html! { p #received-none { (why) } },
        Err(error) => return Err(error),
    };
    Ok(html! {
        section #received {
            h2 { "What the partner received" }
            (shown)
        }
    })
}

/// URL, when, and the headers; no body.
fn request(view: &ReceivedView) -> Markup {
    html! {
        dl {
            dt { "URL" } dd #received-url { "POST " (view.url) }
            dt { "Sent" } dd {
                @if let Some(at) = view.sent_at { (time(at)) " (the latest attempt)" }
                @else { "not yet: shown as it would be sent now" }
            }
        }
        table #received-headers {
            thead { tr { th { "Header" } th { "Value" } } }
            tbody {
                @for (name, value) in &view.headers {
                    tr { td { (name) } td { (value) } }
                }
            }
        }
        p.muted { "Secret values are shown as ••••. The partner's settings are today's." }
    }
}

#[derive(Deserialize)]
pub(super) struct ReasonForm {
    #[serde(default)]
    reason: String,
}

/// The answer to "Show patient data": the request and its body, recorded first.
pub(super) async fn show(
    Allowed(caller, ..): Allowed<Support>,
    State(state): State<AdminState>,
    Path(id): Path<Uuid>,
    Form(form): Form<ReasonForm>,
) -> Result<Markup, PageError> {
    let view = state.received_body(&caller, id, &form.reason).await?;
    let body = html! {
        h1 { "What the partner received" }
        p { "Delivery " a href={ "/deliveries/" (id) } { (id) } ". Your reason is in the audit trail." }
        (request(&view))
        h2 { "Body" }
        @match &view.body {
            ShownBody::Sent(body) => pre #received-body { (body.pretty()) },
            ShownBody::Erased(at) => p #received-body { "The body was erased on " (at.format("%Y-%m-%d")) " (retention)." },
            ShownBody::Withheld => p #received-body { "Not kept." },
        }
    };
    Ok(layout("What the partner received", Some(&caller), body))
}
