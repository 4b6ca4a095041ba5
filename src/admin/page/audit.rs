//! The audit trail as a page, for operators: the newest entries first, filtered by who,
//! what and which target, a page at a time. Reading it is itself recorded.

use axum::extract::{Query, State};
use maud::{html, Markup};
use serde::Deserialize;

use super::views::layout;
use super::when::time;
use super::PageError;
use crate::admin::allowed::{Allowed, Operator};
use crate::admin::error::{ApiError, DatabaseUnavailable};
use crate::admin::state::AdminState;
use crate::store::audit::{self, action, Outcome};

const ENTRIES: i64 = 100;

#[derive(Deserialize)]
pub(super) struct TrailQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    before: Option<i64>,
}

fn given(text: Option<String>) -> Option<String> {
    text.map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

pub(super) async fn trail(
    Allowed(caller, ..): Allowed<Operator>,
    State(state): State<AdminState>,
    Query(query): Query<TrailQuery>,
) -> Result<Markup, PageError> {
    state
        .audit(&caller, action::AUDIT_READ, None, Outcome::Ok, None)
        .await?;
    let filter = audit::Filter {
        actor: given(query.actor),
        action: given(query.action),
        target: given(query.target),
        before: query.before,
        limit: ENTRIES,
        ..audit::Filter::default()
    };
    let client = state.client().await.map_err(ApiError::from)?;
    let entries = audit::read(&client, &filter)
        .await
        .map_err(|error| ApiError::from(DatabaseUnavailable::logged(error)))?;
    let older = entries
        .last()
        .filter(|_| entries.len() as i64 == ENTRIES)
        .map(|last| last.id);
    let body = html! {
        h1 { "Audit trail" }
        form.filters method="get" action="/audit" {
            label { "Who" input type="text" name="actor" value=[filter.actor.as_deref()]; }
            label { "Action" input type="text" name="action" value=[filter.action.as_deref()]; }
            label { "Target" input type="text" name="target" value=[filter.target.as_deref()]; }
            button type="submit" { "Show" }
        }
        table #audit {
            thead { tr {
                th { "When" } th { "Who" } th { "Role" } th { "Via" } th { "Action" }
                th { "Target" } th { "Outcome" } th { "Why" } th { "Database role" }
            } }
            tbody {
                @for entry in &entries {
                    tr {
                        td.when { (time(entry.at)) }
                        td { (entry.actor) }
                        td { (entry.role.as_deref().unwrap_or("–")) }
                        td { (entry.via) }
                        td { (entry.action) }
                        td { (entry.target.as_deref().unwrap_or("")) }
                        td { (entry.outcome) }
                        td { (entry.reason.as_deref().unwrap_or("")) }
                        td { (entry.db_role) }
                    }
                }
                @if entries.is_empty() { tr { td colspan="9" { "Nothing here." } } }
            }
        }
        @if let Some(before) = older {
            nav.pages { a rel="next" href={ "/audit?before=" (before) } { "Older entries →" } }
        }
    };
    Ok(layout("Audit trail", Some(&caller), body))
}
