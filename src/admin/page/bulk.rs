//! Bulk recovery on the page, for operators: pick a partner, a failed state and a time
//! window, see how many deliveries that would resend, confirm, and see how many were.
//!
//! The confirmation resends exactly the set the preview counted (`store::support::
//! preview`): if deliveries failed or were resent in between, nothing is touched and the
//! new count is shown to confirm again. Support and viewers get no form, and their post
//! is refused (403) by `Allowed<Operator>` like every operator's action.

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::views::layout;
use super::PageError;
use crate::admin::allowed::{Allowed, Operator};
use crate::admin::error::ApiError;
use crate::admin::state::AdminState;
use crate::store::audit::{action, Outcome};
use crate::store::support::preview::{self, Confirmed, Preview};
use crate::store::support::{ResendReport, Selection};

/// The states the form offers: those a bulk resend is for.
const FAILED_STATES: [(&str, &str); 5] = [
    ("failed", "any failed state"),
    ("rejected", "rejected by the partner"),
    ("dead", "out of attempts"),
    ("invalid", "invalid event"),
    ("unrouted", "unrouted"),
];

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/bulk", get(form))
        .route("/bulk/resend", post(confirm))
}

const CHANGED: &str = "The selection changed since the preview: nothing was resent. \
                       Here is what it would resend now.";

/// The form's fields, as the browser sends them (empty means "any").
#[derive(Debug, Default, Deserialize)]
pub(super) struct BulkFields {
    #[serde(default)]
    partner: String,
    #[serde(default)]
    state: String,
    /// `YYYY-MM-DDTHH:MM` (a `datetime-local` input, read as UTC) or RFC 3339.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Whether the form was sent (then a preview is shown).
    preview: Option<String>,
}

impl BulkFields {
    /// The selection the fields name: failed deliveries unless a failed state is chosen.
    fn selection(&self) -> Result<Selection, ApiError> {
        let state = given(&self.state).unwrap_or("failed");
        if !FAILED_STATES.iter().any(|(name, _)| *name == state) {
            return Err(ApiError::BadRequest(format!(
                "state: one of {}",
                FAILED_STATES.map(|(name, _)| name).join(", ")
            )));
        }
        Ok(Selection {
            state: Some(state.to_string()),
            partner: given(&self.partner).map(str::to_string),
            since: moment("since", &self.since)?,
            until: moment("until", &self.until)?,
            ..Selection::default()
        })
    }
}

fn given(text: &str) -> Option<&str> {
    Some(text.trim()).filter(|text| !text.is_empty())
}

/// A time from the form: a `datetime-local` value (UTC, as the form says) or RFC 3339.
fn moment(name: &str, text: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(text) = given(text) else {
        return Ok(None);
    };
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(at.with_timezone(&Utc)));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|at| Some(at.and_utc()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!("{name}: a time such as 2026-11-25T09:00 (UTC)"))
        })
}

/// The confirmation's fields: the selection again, and the set the preview counted.
#[derive(Deserialize)]
pub(super) struct Confirmation {
    #[serde(flatten)]
    fields: BulkFields,
    digest: String,
}

/// The form, and with it filled in, the preview and the button that confirms it.
async fn form(
    Allowed(caller, ..): Allowed<Operator>,
    State(state): State<AdminState>,
    Query(fields): Query<BulkFields>,
) -> Result<Markup, PageError> {
    let partners = state.partner_summaries().await?;
    let partners: Vec<String> = partners
        .into_iter()
        .filter_map(|summary| summary.partner)
        .collect();
    let preview = match fields.preview {
        Some(_) => {
            let selection = fields.selection()?;
            Some(preview_of(&state, &selection).await?)
        }
        None => None,
    };
    let body = html! {
        h1 { "Resend in bulk" }
        (choice(&fields, &partners))
        @if let Some(preview) = &preview { (confirm_form(&fields, preview, None)) }
    };
    Ok(layout("Resend in bulk", Some(&caller), body))
}

async fn preview_of(state: &AdminState, selection: &Selection) -> Result<Preview, ApiError> {
    let client = state.client().await?;
    Ok(preview::preview(&client, selection).await?)
}

/// Resends what the preview counted, or shows the new count when it changed.
async fn confirm(
    Allowed(caller, ..): Allowed<Operator>,
    State(state): State<AdminState>,
    Form(confirmation): Form<Confirmation>,
) -> Result<Markup, PageError> {
    let fields = &confirmation.fields;
    let selection = fields.selection()?;
    let described = state.described(&selection);
    let result = async {
        let mut client = state.client().await?;
        Ok::<_, ApiError>(
            preview::resend_as_previewed(
                &mut client,
                &selection,
                &confirmation.digest,
                &caller.support_actor(),
            )
            .await?,
        )
    }
    .await;
    let (target, outcome, reason) = match &result {
        Ok(Confirmed::Resent(report)) => (
            format!(
                "{described} (touched {}, as previewed on the page)",
                report.touched()
            ),
            Outcome::Ok,
            None,
        ),
        Ok(Confirmed::Changed(_)) => (described, Outcome::Failed, Some(CHANGED.to_string())),
        Err(error) => (described, Outcome::Failed, Some(error.to_string())),
    };
    state
        .audit(
            &caller,
            action::BULK_RESEND,
            Some(&target),
            outcome,
            reason.as_deref(),
        )
        .await?;
    let body = match result? {
        Confirmed::Resent(report) => resent(&report),
        Confirmed::Changed(preview) => html! {
            h1 { "Resend in bulk" }
            (confirm_form(fields, &preview, Some(CHANGED)))
        },
    };
    Ok(layout("Resend in bulk", Some(&caller), body))
}

fn deliveries(count: impl Into<i64>) -> String {
    match count.into() {
        1 => "1 delivery".to_string(),
        count => format!("{count} deliveries"),
    }
}

/// The form that chooses the deliveries.
fn choice(fields: &BulkFields, partners: &[String]) -> Markup {
    let chosen_state = given(&fields.state).unwrap_or("failed");
    html! {
        form.filters #bulk method="get" action="/bulk" {
            input type="hidden" name="preview" value="1";
            label { "Partner"
                select name="partner" {
                    option value="" { "any partner" }
                    @for partner in partners {
                        option value=(partner) selected[given(&fields.partner) == Some(partner.as_str())] { (partner) }
                    }
                }
            }
            label { "State"
                select name="state" {
                    @for (name, words) in FAILED_STATES {
                        option value=(name) selected[chosen_state == name] { (words) }
                    }
                }
            }
            label { "Created from (UTC)" input type="datetime-local" name="since" value=(fields.since); }
            label { "until (UTC)" input type="datetime-local" name="until" value=(fields.until); }
            button type="submit" { "Preview" }
        }
    }
}

/// The preview's count and the button that resends what it counted.
fn confirm_form(fields: &BulkFields, preview: &Preview, changed: Option<&str>) -> Markup {
    html! {
        @if let Some(changed) = changed { p.notice.bad role="status" { (changed) } }
        p #bulk-preview { (deliveries(preview.count)) " would be resent." }
        @if preview.count > 0 {
            form #bulk-confirm method="post" action="/bulk/resend" {
                input type="hidden" name="partner" value=(fields.partner);
                input type="hidden" name="state" value=(fields.state);
                input type="hidden" name="since" value=(fields.since);
                input type="hidden" name="until" value=(fields.until);
                input type="hidden" name="digest" value=(preview.digest);
                button type="submit" { "Resend " (deliveries(preview.count)) }
            }
        }
    }
}

fn resent(report: &ResendReport) -> Markup {
    let touched = i64::try_from(report.touched()).unwrap_or(i64::MAX);
    html! {
        h1 { "Resend in bulk" }
        p.notice.ok #bulk-resent role="status" { (deliveries(touched)) " resent." }
        p { a href="/?state=pending" { "See the pending deliveries" } }
    }
}
