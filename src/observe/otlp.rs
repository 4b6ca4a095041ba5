//! The OTLP/HTTP exporter of `[telemetry]`: each batch of finished spans posted as OTLP
//! JSON (`/v1/traces`) over our own reqwest and rustls. Written here rather than taken
//! from opentelemetry-otlp, which brings a second reqwest (0.13, with its own TLS
//! choices) and prost; the JSON form of a span is small and fixed by the OTLP spec.
//!
//! The SDK's batch processor calls [`SpanExporter::export`] from a thread of its own, with
//! no tokio runtime; the request is polled there within the daemon's runtime
//! ([`InRuntime`]), whose workers drive its sockets and timers. Nothing is spawned here:
//! tasks are the daemon's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use secrecy::ExposeSecret;
use serde_json::{json, Value as Json};
use url::Url;

use crate::config::telemetry::TelemetryConfig;

/// One export may take this long; the batch processor then drops the batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The instrumentation scope every span is reported under.
pub(super) const SCOPE: &str = "dispatcher";

#[derive(Debug)]
pub(super) struct OtlpExporter {
    http: reqwest::Client,
    url: Url,
    /// `[telemetry] headers`, marked sensitive so no `Debug` prints them.
    headers: HeaderMap,
    service_name: String,
    runtime: tokio::runtime::Handle,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the trace exporter's HTTP client: {0}")]
pub struct ExporterError(String);

impl OtlpExporter {
    /// Must be called within the daemon's tokio runtime, which sends every export.
    pub(super) fn new(config: &TelemetryConfig) -> Result<OtlpExporter, ExporterError> {
        let http = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .use_rustls_tls()
            // A proxy from the environment would carry an http:// export (allowed to a
            // loopback collector only) off the machine in clear text.
            .no_proxy()
            .build()
            .map_err(|error| ExporterError(error.to_string()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            // Checked when the config was loaded.
            if let Ok(mut value) = HeaderValue::from_str(value.expose_secret()) {
                value.set_sensitive(true);
                headers.insert(name.clone(), value);
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(OtlpExporter {
            http,
            url: config.traces_url.clone(),
            headers,
            service_name: config.service_name.clone(),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl SpanExporter for OtlpExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let body = encode(&self.service_name, &batch).to_string();
        let request = self
            .http
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body);
        let sent = async move {
            let failure = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => format!("the collector answered {}", response.status()),
                // Without the URL: a collector's address may carry credentials.
                Err(error) => error.without_url().to_string(),
            };
            tracing::warn!(reason = %failure, "exporting traces failed; those spans are lost");
            Err(OTelSdkError::InternalFailure(failure))
        };
        InRuntime {
            runtime: self.runtime.clone(),
            future: Box::pin(sent),
        }
    }
}

/// A future polled within `runtime` from a thread that is not one of its own: reqwest's
/// sockets and timers register with that runtime, and its workers wake this thread.
struct InRuntime<F> {
    runtime: tokio::runtime::Handle,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _within = this.runtime.enter();
        this.future.as_mut().poll(cx)
    }
}

/// An `ExportTraceServiceRequest` in OTLP's JSON encoding: ids in hex, 64-bit integers
/// and times (nanoseconds since the epoch) as strings, enums as numbers.
fn encode(service_name: &str, batch: &[SpanData]) -> Json {
    json!({"resourceSpans": [{
        "resource": {"attributes": [attribute("service.name", &Value::from(service_name.to_string()))]},
        "scopeSpans": [{
            "scope": {"name": SCOPE, "version": env!("CARGO_PKG_VERSION")},
            "spans": batch.iter().map(span).collect::<Vec<_>>(),
        }],
    }]})
}

fn span(span: &SpanData) -> Json {
    let context = &span.span_context;
    let mut encoded = json!({
        "traceId": context.trace_id().to_string(),
        "spanId": context.span_id().to_string(),
        "name": span.name,
        "kind": kind(&span.span_kind),
        "startTimeUnixNano": nanos(span.start_time),
        "endTimeUnixNano": nanos(span.end_time),
        "attributes": attributes(&span.attributes),
        "events": span.events.iter().map(|event| json!({
            "timeUnixNano": nanos(event.timestamp),
            "name": event.name,
            "attributes": attributes(&event.attributes),
        })).collect::<Vec<_>>(),
        "status": match &span.status {
            Status::Unset => json!({}),
            Status::Ok => json!({"code": 1}),
            Status::Error { description } => json!({"code": 2, "message": description}),
        },
    });
    if span.parent_span_id != SpanId::INVALID {
        encoded["parentSpanId"] = json!(span.parent_span_id.to_string());
    }
    if !context.trace_state().header().is_empty() {
        encoded["traceState"] = json!(context.trace_state().header());
    }
    encoded
}

fn kind(kind: &SpanKind) -> u8 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn nanos(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

fn attributes(attributes: &[KeyValue]) -> Vec<Json> {
    attributes
        .iter()
        .map(|pair| attribute(pair.key.as_str(), &pair.value))
        .collect()
}

fn attribute(key: &str, value: &Value) -> Json {
    json!({"key": key, "value": any_value(value)})
}

fn any_value(value: &Value) -> Json {
    match value {
        Value::Bool(value) => json!({"boolValue": value}),
        Value::I64(value) => json!({"intValue": value.to_string()}),
        Value::F64(value) => json!({"doubleValue": value}),
        Value::Array(array) => {
            let values: Vec<Json> = match array {
                Array::Bool(values) => values.iter().map(|v| json!({"boolValue": v})).collect(),
                Array::I64(values) => values
                    .iter()
                    .map(|v| json!({"intValue": v.to_string()}))
                    .collect(),
                Array::F64(values) => values.iter().map(|v| json!({"doubleValue": v})).collect(),
                Array::String(values) => values
                    .iter()
                    .map(|v| json!({"stringValue": v.as_str()}))
                    .collect(),
                _ => Vec::new(),
            };
            json!({"arrayValue": {"values": values}})
        }
        _ => json!({"stringValue": value.as_str()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_their_otlp_json_form() {
        assert_eq!(any_value(&Value::I64(7)), json!({"intValue": "7"}));
        assert_eq!(
            any_value(&Value::from("acme")),
            json!({"stringValue": "acme"})
        );
        assert_eq!(any_value(&Value::Bool(true)), json!({"boolValue": true}));
        assert_eq!(
            nanos(UNIX_EPOCH + Duration::from_millis(1500)),
            "1500000000"
        );
    }
}
