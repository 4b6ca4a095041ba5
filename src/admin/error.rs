//! What can go wrong in an admin request, and the status each answer carries. Below the
//! API, the page and the access checks, which all answer with it, so none of them imports
//! another for its errors.

use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::db::DbError;
use crate::store::support::{CancelRefused, Rerouted, SupportError};

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
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no delivery with id {0}")]
    NotFound(Uuid),
    /// The id of an unrouted placeholder that support re-routed: where it went.
    #[error("{0}")]
    Rerouted(Rerouted),
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotCancelled(CancelRefused),
    #[error("the database is unavailable; try again")]
    Database(#[from] DatabaseUnavailable),
    #[error("send this request with Content-Type: application/json")]
    NotJson,
    #[error("refused: this request was sent from another site's page")]
    ForeignOrigin,
    /// A query string, path or body axum could not read (`rejection.rs`), with its status.
    #[error("{1}")]
    Rejected(StatusCode, String),
    #[error("no such endpoint; see /api/openapi.json")]
    NoEndpoint,
}

impl ApiError {
    /// The status it is answered with, on the API and the page alike.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::Missing(_) | ApiError::Rerouted(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Conflict(_) | ApiError::NotCancelled(_) => StatusCode::CONFLICT,
            ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::ForeignOrigin => StatusCode::FORBIDDEN,
            ApiError::Rejected(status, _) => *status,
            ApiError::NoEndpoint => StatusCode::NOT_FOUND,
        }
    }
}

/// A wrong state is the asker's mistake, named by the API's parameter; a database
/// failure is logged and not described.
impl From<SupportError> for ApiError {
    fn from(error: SupportError) -> Self {
        match error {
            SupportError::UnknownState(error) => ApiError::BadRequest(format!("state: {error}")),
            SupportError::Database(error) => DatabaseUnavailable::logged(error).into(),
        }
    }
}

/// The database failed a request; the cause is logged, not sent.
#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
pub(crate) struct DatabaseUnavailable;

impl DatabaseUnavailable {
    pub(crate) fn logged(error: impl Into<DbError>) -> DatabaseUnavailable {
        let error: DbError = error.into();
        tracing::warn!(%error, "admin request failed on the database");
        DatabaseUnavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
