//! Traces that follow an event (`[telemetry]`): an OTLP/HTTP receiver on 127.0.0.1 decodes
//! what the daemon exports, and a partner checks the `traceparent` it is sent. One trace
//! runs from the enrollment flow's transaction to the partner's answer; spans carry ids,
//! never a body; without `[telemetry]` nothing is exported and no trace header is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use axum::routing::post;
use serde_json::Value;

const FIRST_NAME: &str = "Zqxtracefirstname";
const LAST_NAME: &str = "Zqxtracelastname";
/// The enrollment flow's trace and span, as it would store them (sampled).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ENROLLMENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector: keeps every request's path, `x-api-key` and JSON body.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<(String, String, Value)>>>,
    url: String,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let collector = Collector {
            url,
            ..Collector::default()
        };
        let received = collector.received.clone();
        let app = axum::Router::new().route(
            "/otlp/v1/traces",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let received = received.clone();
                async move {
                    let key = headers
                        .get("x-api-key")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let json = serde_json::from_str(&body).expect("OTLP JSON");
                    received
                        .lock()
                        .expect("collector lock")
                        .push((body, key, json));
                    "{}"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        collector
    }

    fn requests(&self) -> Vec<(String, String, Value)> {
        self.received.lock().expect("collector lock").clone()
    }

    /// Every span received, across requests.
    fn spans(&self) -> Vec<Value> {
        let mut spans = Vec::new();
        for (_, _, request) in self.requests() {
            for resource in request["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    spans.extend(scope["spans"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        spans
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|pair| pair["key"] == key)
        .map(|pair| &pair["value"])
}

fn patient_event(patient_id: &str) -> Value {
    let mut event = enrollment_event(patient_id);
    event["patient"]["firstName"] = FIRST_NAME.into();
    event["patient"]["lastName"] = LAST_NAME.into();
    event
}

/// What the enrollment flow does when it traces: the event with its trace context.
async fn insert_traced_event(db: &TestDb, event: &Value, traceparent: &str) -> i64 {
    db.client
        .query_one(
            "INSERT INTO dispatcher.outbox (event_name, event, traceparent)
             VALUES ($1, $2, $3) RETURNING id",
            &[&ENROLLMENT, event, &traceparent],
        )
        .await
        .expect("insert outbox event")
        .get(0)
}

/// `traceparent`'s parts: version, trace id, parent span id, flags.
fn traceparent_parts(header: &str) -> Vec<String> {
    header.split('-').map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_runs_from_the_enrollment_to_the_partners_answer() {
    let collector = Collector::start().await;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let text = format!(
        "{}\n[telemetry]\notlp_endpoint = \"{}/otlp\"\nservice_name = \"dispatcher-under-test\"\n\
         headers = {{ \"x-api-key\" = \"collector-key\" }}\n",
        config.text(&db),
        collector.url
    );
    let mut daemon = Daemon::start_with_text(&text, config.dir.path());

    insert_traced_event(
        &db,
        &patient_event("p-traced"),
        &format!("00-{TRACE_ID}-{ENROLLMENT_SPAN_ID}-01"),
    )
    .await;
    // A malformed context is ignored: that delivery starts a trace of its own.
    insert_traced_event(&db, &patient_event("p-malformed"), "00-not-a-trace-context").await;
    let received = partner.wait_for_requests(2).await;
    db.wait_for_state("delivered", 2).await;
    // Batches go out every few seconds while the daemon runs...
    for _ in 0..300 {
        if !collector.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !collector.requests().is_empty(),
        "nothing exported while running"
    );
    // ...and on SIGTERM it exports what is still queued before it exits.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait_exit().await.success(), "{}", daemon.log_text());

    let requests = collector.requests();
    assert!(
        !requests.is_empty(),
        "nothing exported; log:\n{}",
        daemon.log_text()
    );
    for (body, key, json) in &requests {
        assert_eq!(key, "collector-key", "the configured header is sent");
        assert_eq!(
            json["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "dispatcher-under-test"
        );
        for value in [
            FIRST_NAME,
            LAST_NAME,
            "2027953213",
            "supportProgramId",
            "\"event\"",
        ] {
            assert!(!body.contains(value), "an export carries {value}: {body}");
        }
    }
    let spans = collector.spans();
    let attempts: Vec<&Value> = spans
        .iter()
        .filter(|span| span["name"] == "attempt")
        .collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for name in ["route", "record"] {
        assert!(
            spans.iter().any(|span| span["name"] == name),
            "no {name} span: {spans:#?}"
        );
    }
    // Each attempt's delivery was claimed once: by a claim, or by the routing that
    // inserted it (its `deliveries_claimed`).
    let claimed: i64 = spans
        .iter()
        .filter_map(|span| match span["name"].as_str() {
            Some("claim") => attribute(span, "deliveries"),
            Some("route") => attribute(span, "deliveries_claimed"),
            _ => None,
        })
        .filter_map(|count| count["intValue"].as_str()?.parse::<i64>().ok())
        .sum();
    assert_eq!(claimed, 2, "{spans:#?}");
    // Routing and claiming that found nothing (every poll interval) send no span. A
    // batch that failed (a connection not had in time, on a loaded machine) keeps its
    // span without a count, as traces.rs says.
    for (name, count) in [("route", "events"), ("claim", "deliveries")] {
        for span in spans.iter().filter(|span| span["name"] == name) {
            if let Some(count) = attribute(span, count) {
                assert_ne!(count["intValue"], "0", "an idle {name} span: {span:#}");
            }
        }
    }

    let by_patient = |patient: &str| {
        received
            .iter()
            .find(|request| request.patient_id() == patient)
            .expect("request of the patient")
    };
    let attempt_for = |request: &Received| {
        let delivery_id = request.webhook_id();
        *attempts
            .iter()
            .find(|span| {
                attribute(span, "delivery_id").and_then(|value| value["stringValue"].as_str())
                    == Some(delivery_id.as_str())
            })
            .unwrap_or_else(|| panic!("no attempt span for {delivery_id}: {attempts:#?}"))
    };

    // The traced event: the attempt continues the enrollment's trace, and the partner is
    // told the attempt's own span as its parent.
    let traced = by_patient("p-traced");
    let attempt = attempt_for(traced);
    assert_eq!(attempt["traceId"], TRACE_ID);
    assert_eq!(attempt["parentSpanId"], ENROLLMENT_SPAN_ID);
    let sent = traceparent_parts(&traced.header("traceparent"));
    assert_eq!(sent.len(), 4, "{}", traced.header("traceparent"));
    assert_eq!(sent[0], "00");
    assert_eq!(sent[1], TRACE_ID);
    assert_eq!(attempt["spanId"], sent[2].as_str());
    assert_eq!(sent[3], "01", "sampled, as the enrollment's trace was");
    assert_eq!(
        attribute(attempt, "partner").expect("partner")["stringValue"],
        "acme"
    );
    assert_eq!(
        attribute(attempt, "outcome").expect("outcome")["stringValue"],
        "delivered"
    );
    // Integers, as the daemon records them (i64), never their text.
    assert_eq!(
        attribute(attempt, "http_status").expect("status")["intValue"],
        "200"
    );
    assert_eq!(
        attribute(attempt, "attempt").expect("attempt")["intValue"],
        "1"
    );
    assert!(
        attribute(attempt, "duration_ms").expect("duration")["intValue"].is_string(),
        "{attempt:#}"
    );

    // The malformed one: a root span of a new trace, which the partner is told.
    let malformed = by_patient("p-malformed");
    let attempt = attempt_for(malformed);
    assert_ne!(attempt["traceId"], TRACE_ID);
    assert!(attempt.get("parentSpanId").is_none(), "{attempt:#}");
    let sent = traceparent_parts(&malformed.header("traceparent"));
    assert_eq!(attempt["traceId"], sent[1].as_str());
    assert_eq!(attempt["spanId"], sent[2].as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_telemetry_nothing_is_exported_and_no_trace_header_is_sent() {
    let collector = Collector::start().await;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let mut daemon = Daemon::start(&config, &db);

    insert_traced_event(
        &db,
        &patient_event("p-traced"),
        &format!("00-{TRACE_ID}-{ENROLLMENT_SPAN_ID}-01"),
    )
    .await;
    let received = partner.wait_for_requests(1).await;
    db.wait_for_state("delivered", 1).await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait_exit().await.success(), "{}", daemon.log_text());
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(received[0].headers.get("traceparent").is_none());
    assert!(received[0].headers.get("tracestate").is_none());
    assert!(collector.requests().is_empty());
}
