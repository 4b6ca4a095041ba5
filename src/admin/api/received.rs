//! `POST /api/deliveries/{id}/received`: what the partner received for a delivery, its
//! body included, for a reason recorded in the audit trail (support and operators).
//! A POST, not a GET: it carries the reason, and its answer is patient data that no cache,
//! proxy log or browser history should keep (every answer is `Cache-Control: no-store`).

use std::sync::Arc;

use axum::extract::State;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::admin::access::{json_post, Access};
use crate::admin::allowed::{Allowed, Support};
use crate::admin::error::{ApiError, ErrorBody};
use crate::admin::received::{ReceivedView, ShownBody};
use crate::admin::rejection::{ApiJson, ApiPath};
use crate::admin::state::AdminState;

pub(crate) fn routes(access: &Arc<Access>) -> Router<AdminState> {
    Router::new().route(
        "/deliveries/{id}/received",
        json_post(access, show_received),
    )
}

#[derive(OpenApi)]
#[openapi(
    paths(show_received),
    components(schemas(ReasonIn, ReceivedOut, SentHeaderOut))
)]
pub(crate) struct ReceivedDoc;

/// Why support needs to see the patient data; kept in the audit trail, nowhere else.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Reason)]
pub(crate) struct ReasonIn {
    /// A sentence or a ticket number: 1 to 500 characters, not only spaces, no control
    /// characters but line breaks and tabs (the pattern is `checked_reason`'s rule).
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]*$"
    )]
    reason: String,
}

/// What the partner received: the URL and headers of the request (secret values shown as
/// `••••`), and the body as sent, or when retention erased it.
#[derive(Serialize, ToSchema)]
#[schema(as = Received)]
pub(crate) struct ReceivedOut {
    url: String,
    /// In the order the dispatcher sets them; the HTTP client adds `Host`,
    /// `Content-Length` and `Accept`.
    headers: Vec<SentHeaderOut>,
    /// When the latest attempt was sent (the body's `sendDate`); `null` before the first
    /// attempt, when the request is shown as it would be sent now.
    sent_at: Option<DateTime<Utc>>,
    /// The body as sent (JSON); `null` once erased.
    #[schema(value_type = Option<Object>)]
    body: Option<serde_json::Value>,
    /// When retention erased the body; `null` while it is kept.
    erased_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = SentHeader)]
pub(crate) struct SentHeaderOut {
    name: String,
    /// `••••` for a secret: the partner's configured headers, `Authorization`, the
    /// signature.
    value: String,
}

impl From<ReceivedView> for ReceivedOut {
    fn from(view: ReceivedView) -> ReceivedOut {
        let (body, erased_at) = match view.body {
            // The sender's bytes are JSON it wrote itself.
            ShownBody::Sent(body) => (serde_json::from_slice(&body.bytes()).ok(), None),
            ShownBody::Erased(at) => (None, Some(at)),
            ShownBody::Withheld => (None, None),
        };
        ReceivedOut {
            url: view.url,
            headers: view
                .headers
                .into_iter()
                .map(|(name, value)| SentHeaderOut { name, value })
                .collect(),
            sent_at: view.sent_at,
            body,
            erased_at,
        }
    }
}

/// What the partner received for a delivery, body included: patient data, shown for a
/// reason, which the audit trail records with who asked before the answer is sent.
#[utoipa::path(
    post,
    path = "/api/deliveries/{id}/received",
    request_body = ReasonIn,
    params(
        ("id" = Uuid, Path, description = "The delivery id"),
        ("X-Actor" = Option<String>, Header, description = "Who is asking, with the break-glass token only")
    ),
    responses(
        (status = 200, body = ReceivedOut),
        (status = 400, description = "The id is not a UUID, the body is not JSON, or the reason is empty, too long or holds a control character", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "Sent from another site's page, or the caller's role is not support or operator", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "Nothing to show: the delivery reached no partner, its partner is no longer configured, or its event breaks the contract", body = ErrorBody),
        (status = 415, description = "Not sent as application/json", body = ErrorBody),
        (status = 422, description = "No reason, a field of the wrong type, or unknown", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn show_received(
    Allowed(caller, ..): Allowed<Support>,
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(asked): ApiJson<ReasonIn>,
) -> Result<Json<ReceivedOut>, ApiError> {
    let view = state.received_body(&caller, id, &asked.reason).await?;
    Ok(Json(view.into()))
}
