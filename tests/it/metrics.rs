//! What ops see on `/metrics`: known traffic driven through the real dispatcher, in
//! process, and the exact counts it must produce. (The admin server serves this text.)

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use dispatcher::config::live::LiveConfig;
use dispatcher::config::Config;
use dispatcher::daemon::Dispatcher;
use dispatcher::observe::metrics::Metrics;
use dispatcher::shutdown::Shutdown;
use dispatcher::store::{db, outbox};

/// Patient ids of this test share a prefix the metrics must never show.
const PATIENT: &str = "pid-7f3a";

/// One sample line of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{label="value",…} number` lines; comments are skipped.
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").expect("label is key=\"value\"");
                    (key.to_string(), value.trim_end_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("sample value is a number"),
            }
        })
        .collect()
}

/// The value of the one series with exactly these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == wanted)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} appears twice");
    found.first().map(|s| s.value)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_known_traffic_exactly_and_never_show_a_patient() {
    // acme accepts every patient but the fourth, which it rejects; beta is down.
    let acme = TestPartner::start("acme", |request| {
        if request.patient_id().ends_with("-4") {
            Reply::status(400, r#"{"success":false,"errorMessage":"bad patient"}"#)
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let beta = TestPartner::start("beta", |_| Reply::status(503, "{}")).await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&beta, &[OTHER_PROGRAM])
        .max_attempts(2)
        .retry_delays(Duration::from_millis(100), Duration::from_secs(1));
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let loaded = Config::parse(&config.text(&db), "test", None, |_| None).expect("valid config");
    let live = LiveConfig::new(loaded, &path);
    let pool = db::pool(
        &live.snapshot().database,
        live.snapshot().database.pool_limits(),
    )
    .expect("pool");
    let metrics = Metrics::new(live.clone());

    for n in 1..=4 {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("{PATIENT}-{n}")))
            .await;
    }
    let mut broken = enrollment_event(&format!("{PATIENT}-5"));
    broken["patient"]
        .as_object_mut()
        .expect("patient")
        .remove("lastName");
    db.insert_event(ENROLLMENT, &broken).await;
    let mut for_beta = enrollment_event(&format!("{PATIENT}-6"));
    for_beta["supportProgramId"] = OTHER_PROGRAM.into();
    db.insert_event(ENROLLMENT, &for_beta).await;

    // A backlog, before any daemon sends: routed, not yet claimed.
    let mut client = pool.get().await.expect("connection");
    outbox::route_new_events(&mut client, &live.snapshot(), 100)
        .await
        .expect("route");
    drop(client);
    let backlog = parse(&metrics.render(&pool).await.expect("render"));
    let acme_only = [("partner", "acme")];
    assert_eq!(
        value(&backlog, "dispatcher_deliveries_pending", &acme_only),
        Some(5.0)
    );
    assert_eq!(
        value(
            &backlog,
            "dispatcher_deliveries_pending",
            &[("partner", "beta")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&backlog, "dispatcher_deliveries_in_flight", &acme_only),
        Some(0.0)
    );
    let oldest = value(
        &backlog,
        "dispatcher_oldest_due_delivery_age_seconds",
        &acme_only,
    )
    .expect("oldest due age");
    assert!(oldest >= 0.0, "{oldest}");
    assert_eq!(value(&backlog, "dispatcher_database_up", &[]), Some(1.0));

    let shutdown = Shutdown::new();
    let dispatcher =
        Dispatcher::new(live, pool.clone(), shutdown.clone(), metrics.clone()).expect("dispatcher");
    let running = tokio::spawn(dispatcher.run());
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries
         WHERE state IN ('delivered', 'rejected', 'dead', 'invalid')",
        6,
    )
    .await;
    shutdown.begin(Duration::from_secs(5));
    running
        .await
        .expect("dispatcher task")
        .expect("dispatcher ran");

    let text = metrics.render(&pool).await.expect("render");
    let samples = parse(&text);
    let ended = |partner: &str, outcome: &str| {
        value(
            &samples,
            "dispatcher_deliveries_ended_total",
            &[
                ("partner", partner),
                ("event_name", ENROLLMENT),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(ended("acme", "delivered"), Some(3.0));
    assert_eq!(ended("acme", "rejected"), Some(1.0));
    assert_eq!(ended("acme", "invalid"), Some(1.0));
    assert_eq!(ended("acme", "dead"), None);
    assert_eq!(ended("beta", "dead"), Some(1.0));
    assert_eq!(ended("beta", "delivered"), None);

    let attempts = |partner: &str, class: &str| {
        value(
            &samples,
            "dispatcher_attempts_total",
            &[
                ("partner", partner),
                ("event_name", ENROLLMENT),
                ("status_class", class),
            ],
        )
    };
    assert_eq!(attempts("acme", "2xx"), Some(3.0));
    assert_eq!(attempts("acme", "4xx"), Some(1.0));
    assert_eq!(attempts("beta", "5xx"), Some(2.0));
    assert_eq!(
        value(
            &samples,
            "dispatcher_attempt_duration_seconds_count",
            &acme_only
        ),
        Some(4.0),
        "the invalid event was never sent, so it took no time"
    );
    assert_eq!(
        value(&samples, "dispatcher_claim_batch_size_sum", &[]),
        Some(7.0),
        "6 deliveries claimed, and beta's once more for its retry"
    );
    for gauge in [
        "dispatcher_deliveries_pending",
        "dispatcher_deliveries_in_flight",
    ] {
        assert_eq!(value(&samples, gauge, &acme_only), Some(0.0), "{gauge}");
    }
    let size = value(&samples, "dispatcher_db_pool_size", &[]).expect("pool size");
    let available = value(&samples, "dispatcher_db_pool_available", &[]).expect("available");
    assert!(available <= size);
    assert_eq!(
        value(&samples, "dispatcher_db_pool_waiting", &[]),
        Some(0.0)
    );

    assert!(
        !text.contains(PATIENT),
        "a patient id in the metrics:\n{text}"
    );
    for value in ["John", "Doe", "+12027953213", "bad patient"] {
        assert!(!text.contains(value), "`{value}` in the metrics:\n{text}");
    }
}
