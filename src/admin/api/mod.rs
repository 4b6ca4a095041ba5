//! The JSON API under `/api/`: the same data and actions as `dispatcher deliveries`,
//! described by the OpenAPI document at `/api/openapi.json` (generated from these
//! handlers by utoipa). What it says in JSON is its own ([`wire`]), made from the store's
//! plain types, and what it reads is [`SelectionIn`] and [`Page`].

mod idempotent;
mod received;
pub(crate) mod wire;

use axum::extract::State;
use std::sync::Arc;

use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::access::{json_post, Access};
use super::allowed::{Allowed, Operator, Support, Viewer};
use super::error::{ApiError, ErrorBody};
use super::rejection::{ApiJson, ApiPath, ApiQuery};
use super::selection::{QuerySelection, SelectionIn, StateFilter};
use super::state::{AdminState, Page};
use crate::store::audit::action;
use crate::store::idempotency::{self, Answer, Keyed};
use crate::store::support::{self, ResendReport, Selection};
use idempotent::IdempotencyKey;
use wire::{
    AttemptOut, CircuitOut, CircuitStateOut, DeliveryDetailOut, DeliveryOut, DeliveryPageOut,
    DeliveryStateOut, ErasedBodyOut, PartnerOut, ResendOut, SupportActionOut,
};

/// The API's routes; every post takes JSON only and none from another site
/// ([`json_post`]).
pub(crate) fn routes(access: &Arc<Access>) -> Router<AdminState> {
    Router::new()
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/retry", json_post(access, retry_matching))
        .route("/deliveries/{id}", get(show_delivery))
        .route("/deliveries/{id}/retry", json_post(access, retry_delivery))
        .route(
            "/deliveries/{id}/cancel",
            json_post(access, cancel_delivery),
        )
        .route("/partners", get(partner_summaries))
        .merge(super::api_access::routes(access))
        .merge(received::routes(access))
        .fallback(no_endpoint)
}

/// Under `/api/`, an address no operation has is refused in JSON like every error.
async fn no_endpoint() -> ApiError {
    ApiError::NoEndpoint
}

/// Served without the token, like any API description.
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    let mut document = ApiDoc::openapi();
    document.merge(super::api_access::AccessDoc::openapi());
    document.merge(received::ReceivedDoc::openapi());
    Json(document)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "HelpAround dispatcher admin API",
        description = "Review deliveries to partners, see what each partner answered, and resend or cancel. \
            Every POST must be sent with `Content-Type: application/json` (415 otherwise), even one without a body, \
            and is refused (403) if it carries an `Origin` other than the admin server's own."
    ),
    paths(
        list_deliveries,
        show_delivery,
        retry_delivery,
        cancel_delivery,
        retry_matching,
        partner_summaries
    ),
    components(schemas(
        DeliveryPageOut,
        DeliveryOut,
        DeliveryDetailOut,
        AttemptOut,
        SupportActionOut,
        DeliveryStateOut,
        PartnerOut,
        CircuitOut,
        CircuitStateOut,
        ResendOut,
        ErasedBodyOut,
        Cancelled,
        SelectionIn,
        StateFilter,
        BulkRetried,
        ErrorBody
    )),
    modifiers(&BearerToken, &BulkRetryNamesOne),
    security(("bearer" = []))
)]
pub(crate) struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A personal API token (`dispatcher tokens create`), or the break-glass `[admin] token`",
                    ))
                    .build(),
            ),
        );
    }
}

/// `BulkRetry` names at least one field (`minProperties: 1`): the server refuses an empty
/// selection, which would resend everything that failed. Said here because utoipa 5.5's
/// `min_properties` attribute writes `maxProperties`.
struct BulkRetryNamesOne;

impl utoipa::Modify for BulkRetryNamesOne {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{schema::Schema, RefOr};
        let schema = openapi
            .components
            .as_mut()
            .and_then(|components| components.schemas.get_mut("BulkRetry"));
        if let Some(RefOr::T(Schema::Object(object))) = schema {
            object.min_properties = Some(1);
        }
    }
}

/// Lists deliveries, newest first, a page at a time.
///
/// Pages are keyed by delivery id, so rows inserted or changed while paging are never
/// repeated or skipped.
#[utoipa::path(
    get,
    path = "/api/deliveries",
    params(SelectionIn, Page),
    responses(
        (status = 200, body = DeliveryPageOut),
        (status = 400, description = "A parameter cannot be read", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn list_deliveries(
    Allowed(caller, ..): Allowed<Viewer>,
    State(state): State<AdminState>,
    QuerySelection(selection): QuerySelection,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<DeliveryPageOut>, ApiError> {
    Ok(Json(
        state.page_for(&caller, &selection, page).await?.into(),
    ))
}

/// One delivery with every attempt, the partner's answers and support's actions.
#[utoipa::path(
    get,
    path = "/api/deliveries/{id}",
    params(("id" = Uuid, Path, description = "The delivery id (the webhook-id the partner saw)")),
    responses(
        (status = 200, body = DeliveryDetailOut),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such delivery (or, for an unrouted placeholder support re-routed, its event's deliveries now)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn show_delivery(
    Allowed(caller, ..): Allowed<Viewer>,
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<DeliveryDetailOut>, ApiError> {
    Ok(Json(state.detail_for(&caller, id).await?.into()))
}

/// Sends an ended delivery again, with a fresh set of attempts; an unrouted event is
/// routed again.
#[utoipa::path(
    post,
    path = "/api/deliveries/{id}/retry",
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "Ignored: send `{}`. Only the `Content-Type: application/json` matters (the API's guard against other sites' pages)."
    ),
    params(
        ("id" = Uuid, Path, description = "The delivery id"),
        ("X-Actor" = Option<String>, Header, description = "Who is asking, with the break-glass token only")
    ),
    responses(
        (status = 200, body = ResendOut),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "Sent from another site's page, or the caller's role is not support or operator", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "Still pending or in flight, or its body was erased", body = ErrorBody),
        (status = 415, description = "Not sent as application/json", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn retry_delivery(
    Allowed(caller, ..): Allowed<Support>,
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ResendOut>, ApiError> {
    Ok(Json(state.resend_one(&caller, id).await?.into()))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Cancelled {
    pub cancelled: Uuid,
}

/// Stops a pending or failed delivery for good.
#[utoipa::path(
    post,
    path = "/api/deliveries/{id}/cancel",
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "Ignored: send `{}`. Only the `Content-Type: application/json` matters (the API's guard against other sites' pages)."
    ),
    params(
        ("id" = Uuid, Path, description = "The delivery id"),
        ("X-Actor" = Option<String>, Header, description = "Who is asking, with the break-glass token only")
    ),
    responses(
        (status = 200, body = Cancelled),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "Sent from another site's page, or the caller's role is not support or operator", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "Delivered, cancelled, or in flight right now: the one that applies", body = ErrorBody),
        (status = 415, description = "Not sent as application/json", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn cancel_delivery(
    Allowed(caller, ..): Allowed<Support>,
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Cancelled>, ApiError> {
    state.cancel_one(&caller, id).await?;
    Ok(Json(Cancelled { cancelled: id }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BulkRetried {
    /// How many deliveries this request touched: 0 when repeated (with the same
    /// `Idempotency-Key`, a repeat gets the first answer instead).
    pub touched: usize,
    #[serde(flatten)]
    pub report: ResendOut,
}

/// Resends every ended delivery the selection matches: failed ones (rejected, dead,
/// invalid, unrouted) unless `state` says otherwise. A delivery already pending again is
/// not touched twice; with an `Idempotency-Key`, a repeat of the request touches nothing
/// at all and gets the first answer.
#[utoipa::path(
    post,
    path = "/api/deliveries/retry",
    request_body = SelectionIn,
    params(
        ("X-Actor" = Option<String>, Header, description = "Who is asking, with the break-glass token only"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "A key of the caller's choosing (a UUID, say), new for each new request. The first answer to a request with the key is kept for 24 hours, per caller; a repeat of the same request with the key gets that answer again (status and body) and touches nothing, and one sent while the first is still running waits for it. The same key with another request is refused (422).")
    ),
    responses(
        (status = 200, body = BulkRetried),
        (status = 400, description = "No selection, a wrong state, a body that is not JSON, or an Idempotency-Key that is not 1 to 255 visible ASCII characters", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "Sent from another site's page, or the caller's role is not operator", body = ErrorBody),
        (status = 415, description = "Not sent as application/json", body = ErrorBody),
        (status = 422, description = "A field of the wrong type, null or unknown; or an Idempotency-Key used for another request", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn retry_matching(
    Allowed(caller, ..): Allowed<Operator>,
    State(state): State<AdminState>,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(selection): ApiJson<SelectionIn>,
) -> Result<Response, ApiError> {
    let selection = Selection::from(selection);
    if selection.names_nothing() {
        return Err(ApiError::BadRequest(
            "select the deliveries with at least one of state, partner, event_name, patient_id, event_id, since, until"
                .to_string(),
        ));
    }
    selection.states().map_err(support::SupportError::from)?;
    let selection = selection.failed_unless_stated();
    let described = state.described(&selection);
    let actor = caller.support_actor();
    let keyed = key.map(|key| {
        idempotent::Keyed::new(
            &caller,
            key,
            &format!("POST /api/deliveries/retry {described}"),
        )
    });
    // The connection goes back before the audit takes one: two requests each holding one
    // and waiting for a second would empty a small pool.
    let result = async {
        let mut client = state.client().await?;
        match &keyed {
            None => support::resend(&mut client, &selection, &actor)
                .await
                .map(Keyed::Done),
            Some(keyed) => {
                idempotency::resend_once(&mut client, keyed.as_key(), &selection, &actor, answer)
                    .await
            }
        }
        .map_err(ApiError::from)
    }
    .await;
    let result = match result {
        Ok(Keyed::Reused) => Err(idempotent::reused()),
        other => other,
    };
    let target = match &result {
        Ok(Keyed::Done(report)) => format!("{described} (touched {})", report.touched()),
        Ok(_) => format!("{described} (repeated {}: touched 0)", idempotent::HEADER),
        Err(_) => described,
    };
    state
        .audited(&caller, action::BULK_RESEND, &target, &result)
        .await?;
    match result? {
        Keyed::Done(report) => {
            tracing::info!(touched = report.touched(), "bulk resend by support");
            Ok(idempotent::respond(answer(&report)))
        }
        Keyed::Replayed(kept) => Ok(idempotent::respond(kept)),
        Keyed::Reused => Err(idempotent::reused()),
    }
}

/// A bulk resend's answer, as sent and as kept under an `Idempotency-Key`.
fn answer(report: &ResendReport) -> Answer {
    let body = BulkRetried {
        touched: report.touched(),
        report: ResendOut {
            resent: report.resent.clone(),
            rerouted: report.rerouted.clone(),
            erased: report
                .erased
                .iter()
                .map(|erased| ErasedBodyOut {
                    id: erased.id,
                    erased_at: erased.erased_at,
                })
                .collect(),
        },
    };
    Answer {
        status: 200,
        body: serde_json::to_string(&body).expect("a BulkRetried is always JSON"),
    }
}

/// Each partner's deliveries at a glance, and its circuit breaker: `circuit.state` is
/// `open` while its deliveries are held after failures in a row (until `retry_at`, when
/// one probe request goes out), `half_open` while that probe is out.
#[utoipa::path(
    get,
    path = "/api/partners",
    responses(
        (status = 200, body = [PartnerOut]),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn partner_summaries(
    _viewer: Allowed<Viewer>,
    State(state): State<AdminState>,
) -> Result<Json<Vec<PartnerOut>>, ApiError> {
    let summaries = state.partner_summaries().await?;
    Ok(Json(summaries.into_iter().map(PartnerOut::from).collect()))
}
