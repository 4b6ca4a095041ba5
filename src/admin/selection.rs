//! A [`Selection`] in the admin server's words: the API's query string and bulk-resend
//! body, and the support page's filters, which use the same names. The store's
//! `Selection` knows none of them; this is the one place they are read into it.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::Uri;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::input;
use crate::store::support::Selection;

/// A selection as a request names it. As the API's body an unknown field is refused
/// rather than ignored, so a typo cannot widen the selection (and ids cannot be given: a
/// bulk resend selects by what deliveries are); in a query string other parameters (the
/// page, a notice) sit beside it, so it is read from there by [`QuerySelection`], which
/// takes only its own.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
#[schema(
    as = BulkRetry,
    description = "The deliveries to resend in bulk: the fields of the list's filter, at least one of\nthem (none of them null). An unknown field is refused rather than ignored, so a typo\ncannot widen the selection."
)]
pub(crate) struct SelectionIn {
    /// pending (with in_flight), in_flight, delivered, rejected, dead, invalid,
    /// cancelled, unrouted, or failed (rejected, dead, invalid, unrouted).
    #[param(value_type = Option<StateFilter>)]
    #[schema(value_type = Option<StateFilter>, nullable = false)]
    #[serde(default, deserialize_with = "input::text")]
    pub state: Option<String>,
    #[param(pattern = "^[^\\x00]*$")]
    #[schema(nullable = false, pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "input::text")]
    pub partner: Option<String>,
    #[param(pattern = "^[^\\x00]*$")]
    #[schema(nullable = false, pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "input::text")]
    pub event_name: Option<String>,
    #[param(pattern = "^[^\\x00]*$")]
    #[schema(nullable = false, pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "input::text")]
    pub patient_id: Option<String>,
    /// The outbox id of the event the deliveries carry.
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "input::whole")]
    pub event_id: Option<i64>,
    /// Created at or after this time (RFC 3339).
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "input::present")]
    pub since: Option<DateTime<Utc>>,
    /// Created before this time (RFC 3339).
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "input::present")]
    pub until: Option<DateTime<Utc>>,
}

/// The states a selection names, as the OpenAPI document lists them (the store reads the
/// text: `Selection::states`).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum StateFilter {
    Pending,
    InFlight,
    Delivered,
    Rejected,
    Dead,
    Invalid,
    Cancelled,
    Unrouted,
    Failed,
}

impl SelectionIn {
    /// The names it is given by in a query string or a body (a test holds them to the
    /// fields).
    pub const FIELDS: [&'static str; 7] = [
        "state",
        "partner",
        "event_name",
        "patient_id",
        "event_id",
        "since",
        "until",
    ];
}

/// `selection` as the query string [`SelectionIn`] reads, with `state` as given (the
/// overview shows `failed` when none is chosen): the one way a selection is written
/// back, for the overview's links and for the audit trail.
pub(crate) fn query_string(selection: &Selection, state: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let texts = [
        ("state", state),
        ("partner", selection.partner.as_deref()),
        ("event_name", selection.event_name.as_deref()),
        ("patient_id", selection.patient_id.as_deref()),
    ];
    for (name, value) in texts {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    if let Some(event_id) = selection.event_id {
        query.append_pair("event_id", &event_id.to_string());
    }
    for (name, at) in [("since", selection.since), ("until", selection.until)] {
        if let Some(at) = at {
            query.append_pair(name, &at.to_rfc3339());
        }
    }
    query.finish()
}

impl From<SelectionIn> for Selection {
    fn from(selection: SelectionIn) -> Selection {
        let SelectionIn {
            state,
            partner,
            event_name,
            patient_id,
            event_id,
            since,
            until,
        } = selection;
        Selection {
            ids: None,
            state,
            partner,
            event_name,
            patient_id,
            event_id,
            since,
            until,
        }
    }
}

/// A [`Selection`] read from a query string that carries other parameters beside it (a
/// page, a notice). As a body a selection refuses an unknown field, so here its own
/// parameters are picked out first, then read as `Query` reads them (same errors).
pub(crate) struct QuerySelection(pub(crate) Selection);

impl QuerySelection {
    /// The selection in `query` (the part of an address after `?`), or the answer that
    /// refuses it.
    pub(crate) fn read(query: &str) -> Result<Selection, ApiError> {
        let own = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                url::form_urlencoded::parse(query.as_bytes())
                    .filter(|(name, _)| SelectionIn::FIELDS.contains(&name.as_ref())),
            )
            .finish();
        // Re-encoded pairs always make a valid URI; refuse rather than widen if not.
        let uri: Uri = format!("/?{own}")
            .parse()
            .map_err(|_| ApiError::BadRequest("the query string cannot be read".into()))?;
        Query::<SelectionIn>::try_from_uri(&uri)
            .map(|Query(selection)| selection.into())
            .map_err(ApiError::from)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QuerySelection {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        QuerySelection::read(parts.uri.query().unwrap_or_default()).map(QuerySelection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(query: &str) -> Result<Selection, String> {
        let uri: axum::http::Uri = format!("/api/deliveries?{query}").parse().expect("uri");
        let (mut parts, ()) = axum::http::Request::builder()
            .uri(uri)
            .body(())
            .expect("request")
            .into_parts();
        let read = QuerySelection::from_request_parts(&mut parts, &());
        match futures_util::FutureExt::now_or_never(read).expect("ready") {
            Ok(QuerySelection(selection)) => Ok(selection),
            Err(error) => Err(error.status().to_string()),
        }
    }

    #[test]
    fn a_query_selects_beside_the_page_and_a_body_refuses_a_stranger() {
        let beside_the_page = selection("state=failed&partner=acme&after=x&limit=3&notice=resent")
            .expect("a selection among other parameters");
        assert_eq!(beside_the_page.state.as_deref(), Some("failed"));
        assert_eq!(beside_the_page.partner.as_deref(), Some("acme"));
        assert!(selection("since=yesterday").is_err(), "a time is RFC 3339");
        let odd = selection("state=%zz&notice=%").expect("odd bytes are passed on as they are");
        assert_eq!(odd.state.as_deref(), Some("%zz"));
        let typo = serde_json::from_str::<SelectionIn>(r#"{"partnr": "acme"}"#);
        assert!(typo.is_err_and(|error| error.to_string().contains("unknown field `partnr`")));
        let ids = serde_json::from_str::<SelectionIn>(
            r#"{"ids": ["00000000-0000-0000-0000-000000000000"]}"#,
        );
        assert!(
            ids.is_err(),
            "a bulk resend selects by what deliveries are, not by id"
        );
    }

    #[test]
    fn its_names_are_its_fields() {
        let stranger = serde_json::from_str::<SelectionIn>(r#"{"stranger": 1}"#)
            .expect_err("an unknown field is refused");
        let names: Vec<String> = SelectionIn::FIELDS
            .iter()
            .map(|name| format!("`{name}`"))
            .collect();
        let expected = format!("expected one of {}", names.join(", "));
        assert!(stranger.to_string().contains(&expected), "{stranger}");
    }
}
