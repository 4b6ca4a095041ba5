//! `/healthz` and `/readyz`, for load balancers and orchestrators: cheap, no token.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::state::AdminState;
use crate::store::schema;

/// A probe must answer quickly even when the database hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The process is up and serving.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers and its schema is the one this build needs.
pub(crate) async fn readyz(State(state): State<AdminState>) -> (StatusCode, Json<Value>) {
    let check = async {
        let client = state
            .daemon_pool
            .get()
            .await
            .map_err(|error| format!("database unreachable: {error}"))?;
        schema::ensure_current(&client)
            .await
            .map_err(|error| error.to_string())
    };
    let verdict = match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(verdict) => verdict,
        Err(_) => Err(format!(
            "database did not answer within {}s",
            READY_TIMEOUT.as_secs()
        )),
    };
    match verdict {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason})),
        ),
    }
}
