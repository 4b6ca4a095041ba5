//! Traces that follow an event (`[telemetry]`): the daemon's spans (`route`, `claim`,
//! each `attempt`, `record`) exported as OpenTelemetry spans through
//! tracing-opentelemetry, and the W3C trace context carried across: an attempt continues
//! the trace the enrollment flow stored in the outbox (`traceparent`), and its request
//! tells the partner its own context, so one trace runs from the enrollment to the
//! partner's answer.
//!
//! Spans, and the events logged inside them, carry what the log lines carry (ids,
//! partner, status, outcome, duration, errors without PostgreSQL's DETAIL), never a body:
//! they are the same tracing spans and events, exported.
//!
//! Without `[telemetry]` nothing is installed: no layer, no exporter, no thread, and
//! [`continue_trace`] and [`trace_headers`] return after one flag check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use reqwest::header::HeaderValue;
use tracing::level_filters::LevelFilter;
use tracing::{Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::OWN_TARGET;
use crate::config::telemetry::TelemetryConfig;
use crate::http::headers::TraceHeaders;
use crate::observe::otlp::{OtlpExporter, SCOPE};

pub use crate::observe::otlp::ExporterError;

/// Set once [`Traces::start`] ran: spans are exported and trace context travels.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The running export of `[telemetry]`. [`Traces::stop`] sends what is still queued.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the exporter; must be called within the daemon's tokio runtime.
    pub fn start(config: &TelemetryConfig) -> Result<Traces, ExporterError> {
        let exporter = OtlpExporter::new(config)?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(WithoutIdleBatches(
                BatchSpanProcessor::builder(exporter).build(),
            ))
            // A trace continued from the enrollment flow keeps the flow's decision.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sampling_ratio,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Traces { provider })
    }

    /// The layer that turns the dispatcher's own spans (at `info` and above) into
    /// OpenTelemetry spans; dependencies' spans stay out.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer(SCOPE))
            .with_location(false)
            .with_threads(false)
            .with_filter(Targets::new().with_target(OWN_TARGET, LevelFilter::INFO))
    }

    /// Exports what is still queued, then stops. The flush blocks this thread while the
    /// runtime's workers send it, so it must not run on a current-thread runtime.
    pub fn stop(self) {
        if let Err(error) = tokio::task::block_in_place(|| self.provider.shutdown()) {
            tracing::warn!(%error, "the last spans could not be exported");
        }
    }
}

/// The batch processor, less the spans of routing and claiming that found nothing: the
/// router and the claimer look at every poll interval (1s by default), and two empty
/// spans a second would bury the ones that did work. A batch that failed keeps its span
/// (its count was never recorded).
#[derive(Debug)]
struct WithoutIdleBatches(BatchSpanProcessor);

impl WithoutIdleBatches {
    fn is_idle(span: &SpanData) -> bool {
        let count = match span.name.as_ref() {
            "route" => "events",
            "claim" => "deliveries",
            _ => return false,
        };
        span.attributes
            .iter()
            .any(|pair| pair.key.as_str() == count && pair.value == Value::I64(0))
    }
}

impl SpanProcessor for WithoutIdleBatches {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !Self::is_idle(&span) {
            self.0.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Makes `span` continue the trace of `traceparent` (the outbox's column), when spans
/// are exported. A malformed value is ignored: the span starts a trace of its own.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| EXPORTING.load(Ordering::Relaxed)) else {
        return;
    };
    let parent = TraceContextPropagator::new().extract(&Traceparent(traceparent));
    if parent.span().span_context().is_valid() {
        // Fails only for a span already started, and this one is new.
        let _ = span.set_parent(parent);
    }
}

/// The W3C trace context of `span`, for the partner's request; `None` when spans are
/// not exported.
pub fn trace_headers(span: &Span) -> Option<TraceHeaders> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    let header = |name: &str| {
        carrier
            .get(name)
            .and_then(|value| HeaderValue::from_str(value).ok())
    };
    Some(TraceHeaders {
        traceparent: header("traceparent")?,
        tracestate: header("tracestate"),
    })
}

/// One stored `traceparent`, read as the propagator reads a request's headers.
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}
