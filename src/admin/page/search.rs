//! The search box's answer (`/search?q=`): what support typed, read every way it can
//! match (`store::support::search`), each reading's deliveries in a table of their own,
//! first on the page, above the partners at a glance; the box keeps the text. A delivery
//! id that names one opens that delivery.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::read_from;
use super::views::{
    self, delivery_headings, delivery_row, layout_searched, url_encode, Notice, REFRESH_SECONDS,
};
use super::{PageError, PAGE_ROWS};
use crate::admin::allowed::{Allowed, Viewer};
use crate::admin::caller::Caller;
use crate::admin::state::AdminState;
use crate::store::support::search::{Found, Reading, MIN_PREFIX};

#[derive(Deserialize)]
pub(super) struct SearchQuery {
    #[serde(default)]
    q: String,
}

pub(super) async fn search(
    Allowed(caller, ..): Allowed<Viewer>,
    State(state): State<AdminState>,
    Query(query): Query<SearchQuery>,
    Query(notice): Query<Notice>,
) -> Result<Response, PageError> {
    let text = query.q.trim();
    if text.is_empty() {
        return Ok(Redirect::to("/").into_response());
    }
    let (state, from) = state.reading().await;
    let found = state.search_for(&caller, text, PAGE_ROWS).await?;
    let delivery = found
        .iter()
        .filter(|found| matches!(found.reading, Reading::Delivery(_)))
        .find_map(|found| found.deliveries.first());
    if let Some(delivery) = delivery {
        return Ok(Redirect::to(&format!("/deliveries/{}", delivery.id)).into_response());
    }
    let summaries = state.partner_summaries().await?;
    let days = state.last_day().await?;
    let body = html! {
        (read_from::note(&from))
        (notice.render())
        (results(text, &found, &caller))
        (views::partners_at_a_glance(&summaries, &days))
    };
    Ok(layout_searched("Search", Some(&caller), Some(text), body).into_response())
}

/// Each reading that found deliveries, under a heading saying what matched.
fn results(text: &str, found: &[Found], caller: &Caller) -> Markup {
    let back = format!("/search?q={}", url_encode(text));
    let matched: Vec<&Found> = found
        .iter()
        .filter(|found| !found.deliveries.is_empty())
        .collect();
    let whole_ids_only = text.chars().count() < MIN_PREFIX;
    html! {
        section #results aria-label="Search results" data-refresh=(REFRESH_SECONDS) {
            h1 { "Search: " (text) }
            @if whole_ids_only {
                p.notice.bad #prefix-too-short role="status" {
                    "Patient ids are looked up whole for " (text.chars().count())
                    " characters: to find the patient ids that start with them, type at least "
                    (MIN_PREFIX) "."
                }
            }
            @for found in &matched {
                section.found data-reading=(kind(&found.reading)) {
                    h2 { (heading(&found.reading)) }
                    table.results {
                        (delivery_headings())
                        tbody { @for delivery in &found.deliveries { (delivery_row(delivery, &back, caller)) } }
                    }
                    @if found.more { p.muted { (more(&found.reading)) } }
                }
            }
            @if matched.is_empty() {
                p #nothing-found {
                    "Nothing found for " strong { (text) } ": no delivery or event with this id, no patient id "
                    @if whole_ids_only { "like it" } @else { "starting with it" }
                    ", no partner's id for a patient and no support program by this name."
                }
            }
        }
    }
}

/// The reading's name, for tests and styles.
fn kind(reading: &Reading) -> &'static str {
    match reading {
        Reading::Delivery(_) => "delivery",
        Reading::Event(_) => "event",
        Reading::Patient(_) => "patient",
        Reading::PatientPrefix(_) => "patient-prefix",
        Reading::ExternalId(_) => "external-id",
        Reading::SupportProgram(_) => "support-program",
    }
}

fn heading(reading: &Reading) -> Markup {
    html! {
        @match reading {
            Reading::Delivery(id) => { "Delivery " (id) },
            Reading::Event(id) => { "Event (outbox id) " (id) },
            Reading::Patient(patient) => { "Patient id " strong { (patient) } },
            Reading::PatientPrefix(prefix) => { "Patient ids starting with " strong { (prefix) } },
            Reading::ExternalId(external_id) => {
                "The partner's own id for a patient: " strong { (external_id) }
                " (its externalId)"
            },
            Reading::SupportProgram(program) => {
                "Support program " strong { (program) }
                span.muted { " (its events whose body is kept)" }
            },
        }
    }
}

/// What to do when a reading matches more than a page.
fn more(reading: &Reading) -> Markup {
    html! {
        "More match than these " (PAGE_ROWS) ". "
        @match reading {
            Reading::Event(id) => {
                a href={ "/?state=all&event_id=" (id) } { "All of this event's deliveries" }
            },
            Reading::Patient(patient) => {
                a href={ "/?state=all&patient_id=" (url_encode(patient)) } { "All of this patient's deliveries" }
            },
            Reading::PatientPrefix(_) => { "Type more of the patient id." },
            _ => { "These are the newest." },
        }
    }
}
