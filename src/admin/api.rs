//! The JSON API under `/api/`: the same data and actions as `dispatcher deliveries`,
//! described by the OpenAPI document at `/api/openapi.json` (generated from these
//! handlers by utoipa).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::access::ApiActor;
use super::AdminState;
use crate::delivery::breaker::{CircuitState, PartnerCircuit};
use crate::delivery::state::{self, DeliveryState};
use crate::store::circuits;
use crate::store::resend::{self, ErasedBody, ResendReport};
use crate::store::support::{
    self, AttemptSummary, DeliveryDetail, DeliveryFilter, DeliverySummary, PartnerSummary,
    SupportAction,
};

/// Rows per page when the client does not say.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/retry", post(retry_matching))
        .route("/deliveries/{id}", get(show_delivery))
        .route("/deliveries/{id}/retry", post(retry_delivery))
        .route("/deliveries/{id}/cancel", post(cancel_delivery))
        .route("/partners", get(partner_summaries))
}

/// Served without the token, like any API description.
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
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
        DeliveryPage,
        DeliverySummary,
        DeliveryDetail,
        AttemptSummary,
        SupportAction,
        DeliveryState,
        PartnerSummary,
        PartnerCircuit,
        CircuitState,
        ResendReport,
        ErasedBody,
        Cancelled,
        BulkRetry,
        BulkRetried,
        ErrorBody
    )),
    modifiers(&BearerToken),
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
                    .description(Some("The `[admin] token` of dispatcher.toml"))
                    .build(),
            ),
        );
    }
}

/// What an API error looks like.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("no delivery with id {0}")]
    NotFound(Uuid),
    #[error("{0}")]
    Conflict(String),
    #[error("the database is unavailable; try again")]
    Database(#[from] DatabaseUnavailable),
    #[error("send this request with Content-Type: application/json")]
    NotJson,
    #[error("refused: this request was sent from another site's page")]
    ForeignOrigin,
}

/// The database failed a request; the cause is logged, not sent.
#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
pub(crate) struct DatabaseUnavailable;

impl DatabaseUnavailable {
    pub(crate) fn logged(error: impl std::fmt::Display) -> DatabaseUnavailable {
        tracing::warn!(%error, "admin request failed on the database");
        DatabaseUnavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::ForeignOrigin => StatusCode::FORBIDDEN,
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Which deliveries: every field narrows the selection.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Selection {
    /// pending (with in_flight), in_flight, delivered, rejected, dead, invalid,
    /// cancelled, unrouted, or failed (rejected, dead, invalid, unrouted).
    pub state: Option<String>,
    pub partner: Option<String>,
    pub event_name: Option<String>,
    pub patient_id: Option<String>,
    /// Created at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Created before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

impl Selection {
    pub(crate) fn filter(self) -> Result<DeliveryFilter, ApiError> {
        Ok(DeliveryFilter {
            ids: None,
            states: self
                .state
                .as_deref()
                .map(state::parse_states)
                .transpose()
                .map_err(|error| ApiError::BadRequest(format!("state: {error}")))?,
            partner: self.partner,
            event_name: self.event_name,
            patient_id: self.patient_id,
            since: self.since,
            until: self.until,
        })
    }

    fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.partner.is_none()
            && self.event_name.is_none()
            && self.patient_id.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// The `next_after` of the previous page.
    pub after: Option<Uuid>,
    /// Rows per page, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// Deliveries newest first, and where the next page starts.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryPage {
    pub deliveries: Vec<DeliverySummary>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<Uuid>,
}

/// Lists deliveries, newest first, a page at a time.
///
/// Pages are keyed by delivery id, so rows inserted or changed while paging are never
/// repeated or skipped.
#[utoipa::path(
    get,
    path = "/api/deliveries",
    params(Selection, Page),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)
    )
)]
pub(crate) async fn list_deliveries(
    State(state): State<AdminState>,
    Query(selection): Query<Selection>,
    Query(page): Query<Page>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let filter = selection.filter()?;
    Ok(Json(state.page_of(&filter, page).await?))
}

impl AdminState {
    /// One page of deliveries; shared with the support page.
    pub(crate) async fn page_of(
        &self,
        filter: &DeliveryFilter,
        page: Page,
    ) -> Result<DeliveryPage, ApiError> {
        let limit = page.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        let client = self.client().await?;
        let deliveries = support::list(&client, filter, page.after, limit)
            .await
            .map_err(DatabaseUnavailable::logged)?;
        let next_after = deliveries
            .last()
            .filter(|_| deliveries.len() as i64 == limit)
            .map(|last| last.id);
        Ok(DeliveryPage {
            deliveries,
            next_after,
        })
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, DatabaseUnavailable> {
        self.pool.get().await.map_err(DatabaseUnavailable::logged)
    }

    /// Each partner at a glance, with its circuit breaker; shared with the support page.
    pub(crate) async fn partner_summaries(&self) -> Result<Vec<PartnerSummary>, ApiError> {
        let client = self.client().await?;
        let mut summaries = support::partner_summaries(&client)
            .await
            .map_err(DatabaseUnavailable::logged)?;
        let circuits = circuits::recorded(&client)
            .await
            .map_err(DatabaseUnavailable::logged)?;
        for circuit in circuits {
            if let Some(summary) = summaries
                .iter_mut()
                .find(|summary| summary.partner.as_deref() == Some(circuit.partner.as_str()))
            {
                summary.circuit = Some(circuit);
            }
        }
        Ok(summaries)
    }

    pub(crate) async fn detail(&self, id: Uuid) -> Result<DeliveryDetail, ApiError> {
        let client = self.client().await?;
        support::show(&client, id)
            .await
            .map_err(DatabaseUnavailable::logged)?
            .ok_or(ApiError::NotFound(id))
    }

    /// Resends one delivery; a conflict if it has not ended.
    pub(crate) async fn resend_one(&self, id: Uuid, actor: &str) -> Result<ResendReport, ApiError> {
        let mut client = self.client().await?;
        let report = resend::resend(&mut client, &DeliveryFilter::ids(&[id]), actor)
            .await
            .map_err(DatabaseUnavailable::logged)?;
        if report.touched() > 0 {
            tracing::info!(delivery_id = %id, %actor, "resent by support");
            return Ok(report);
        }
        if let Some(erased) = report.erased.first() {
            return Err(ApiError::Conflict(format!(
                "the event body was erased on {}; delivery {id} cannot be sent again",
                erased.erased_at.format("%Y-%m-%d")
            )));
        }
        Err(self.why_untouched(&client, id, "resent").await)
    }

    /// Cancels one delivery; a conflict if it is delivered, cancelled or in flight.
    pub(crate) async fn cancel_one(&self, id: Uuid, actor: &str) -> Result<(), ApiError> {
        let client = self.client().await?;
        let cancelled = support::cancel(&client, &[id], actor)
            .await
            .map_err(DatabaseUnavailable::logged)?;
        if !cancelled.is_empty() {
            tracing::info!(delivery_id = %id, %actor, "cancelled by support");
            return Ok(());
        }
        Err(self.why_untouched(&client, id, "cancelled").await)
    }

    async fn why_untouched(
        &self,
        client: &deadpool_postgres::Client,
        id: Uuid,
        action: &str,
    ) -> ApiError {
        match support::show(client, id).await {
            Ok(Some(detail)) => ApiError::Conflict(format!(
                "delivery {id} is {} and cannot be {action} now",
                detail.summary.state
            )),
            Ok(None) => ApiError::NotFound(id),
            Err(error) => DatabaseUnavailable::logged(error).into(),
        }
    }
}

/// One delivery with every attempt, the partner's answers and support's actions.
#[utoipa::path(
    get,
    path = "/api/deliveries/{id}",
    params(("id" = Uuid, Path, description = "The delivery id (the webhook-id the partner saw)")),
    responses(
        (status = 200, body = DeliveryDetail),
        (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody)
    )
)]
pub(crate) async fn show_delivery(
    State(state): State<AdminState>,
    Path(id): Path<Uuid>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    Ok(Json(state.detail(id).await?))
}

/// Sends an ended delivery again, with a fresh set of attempts; an unrouted event is
/// routed again.
#[utoipa::path(
    post,
    path = "/api/deliveries/{id}/retry",
    params(
        ("id" = Uuid, Path, description = "The delivery id"),
        ("X-Actor" = Option<String>, Header, description = "Who is asking, for the record")
    ),
    responses(
        (status = 200, body = ResendReport),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Still pending or in flight", body = ErrorBody),
        (status = 401, body = ErrorBody)
    )
)]
pub(crate) async fn retry_delivery(
    State(state): State<AdminState>,
    Path(id): Path<Uuid>,
    ApiActor(actor): ApiActor,
) -> Result<Json<ResendReport>, ApiError> {
    Ok(Json(state.resend_one(id, &actor).await?))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Cancelled {
    pub cancelled: Uuid,
}

/// Stops a pending or failed delivery for good.
#[utoipa::path(
    post,
    path = "/api/deliveries/{id}/cancel",
    params(
        ("id" = Uuid, Path, description = "The delivery id"),
        ("X-Actor" = Option<String>, Header, description = "Who is asking, for the record")
    ),
    responses(
        (status = 200, body = Cancelled),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Delivered, cancelled, or in flight right now", body = ErrorBody),
        (status = 401, body = ErrorBody)
    )
)]
pub(crate) async fn cancel_delivery(
    State(state): State<AdminState>,
    Path(id): Path<Uuid>,
    ApiActor(actor): ApiActor,
) -> Result<Json<Cancelled>, ApiError> {
    state.cancel_one(id, &actor).await?;
    Ok(Json(Cancelled { cancelled: id }))
}

/// The deliveries to resend in bulk: the fields of the list's filter, at least one of
/// them. An unknown field is refused rather than ignored, so a typo cannot widen the
/// selection.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkRetry {
    /// As in the list; failed (rejected, dead, invalid, unrouted) when absent.
    pub state: Option<String>,
    pub partner: Option<String>,
    pub event_name: Option<String>,
    pub patient_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl From<BulkRetry> for Selection {
    fn from(bulk: BulkRetry) -> Selection {
        Selection {
            state: bulk.state,
            partner: bulk.partner,
            event_name: bulk.event_name,
            patient_id: bulk.patient_id,
            since: bulk.since,
            until: bulk.until,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BulkRetried {
    /// How many deliveries this request touched: 0 when repeated.
    pub touched: usize,
    #[serde(flatten)]
    pub report: ResendReport,
}

/// Resends every ended delivery the selection matches: failed ones (rejected, dead,
/// invalid, unrouted) unless `state` says otherwise. Safe to repeat: a delivery already
/// pending again is not touched twice.
#[utoipa::path(
    post,
    path = "/api/deliveries/retry",
    request_body = BulkRetry,
    params(("X-Actor" = Option<String>, Header, description = "Who is asking, for the record")),
    responses(
        (status = 200, body = BulkRetried),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)
    )
)]
pub(crate) async fn retry_matching(
    State(state): State<AdminState>,
    ApiActor(actor): ApiActor,
    Json(bulk): Json<BulkRetry>,
) -> Result<Json<BulkRetried>, ApiError> {
    let selection = Selection::from(bulk);
    if selection.is_empty() {
        return Err(ApiError::BadRequest(
            "select the deliveries with at least one of state, partner, event_name, patient_id, since, until"
                .to_string(),
        ));
    }
    let filter = resend::failed_unless_stated(selection.filter()?);
    let mut client = state.client().await?;
    let report = resend::resend(&mut client, &filter, &actor)
        .await
        .map_err(DatabaseUnavailable::logged)?;
    tracing::info!(touched = report.touched(), %actor, "bulk resend by support");
    Ok(Json(BulkRetried {
        touched: report.touched(),
        report,
    }))
}

/// Each partner's deliveries at a glance, and its circuit breaker: `circuit.state` is
/// `open` while its deliveries are held after failures in a row (until `retry_at`, when
/// one probe request goes out), `half_open` while that probe is out.
#[utoipa::path(
    get,
    path = "/api/partners",
    responses((status = 200, body = [PartnerSummary]), (status = 401, body = ErrorBody))
)]
pub(crate) async fn partner_summaries(
    State(state): State<AdminState>,
) -> Result<Json<Vec<PartnerSummary>>, ApiError> {
    Ok(Json(state.partner_summaries().await?))
}
