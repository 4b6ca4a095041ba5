//! A sample partner CRM for trying the dispatcher locally: answers every webhook with the
//! contract's 200 answer, giving each patient a partner-side id.
//!
//! `cargo run -p sample-partner -- 127.0.0.1:8088`; `scripts/demo` runs it. Only the
//! daemon's own dependencies, so building it compiles no test-only crate.

use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8088".to_string());
    let app = axum::Router::new().fallback(accept);
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!(
        "sample partner listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

async fn accept(Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let event = &body["event"];
    let patient = event["patient"]["id"].as_str().unwrap_or_default();
    (
        StatusCode::OK,
        Json(json!({
            "success": true,
            "data": {
                "supportProgramId": event["supportProgramId"],
                "patientId": patient,
                "externalId": format!("crm-{patient}"),
            }
        })),
    )
}
