//! `/metrics`: the Prometheus scrape (see [`crate::observe::metrics`] for what is measured).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::state::AdminState;
use crate::observe::metrics;

pub(crate) async fn scrape(State(state): State<AdminState>) -> Response {
    match state.metrics.render(&state.daemon_pool).await {
        Ok(text) => ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot render metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
