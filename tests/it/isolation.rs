//! Partner isolation: a partner that hangs or fails everything costs the other partners
//! nothing. It gets no more requests at once than its `max_in_flight`, the claimer takes
//! none of its deliveries it cannot send (so they hold no capacity or lease), and after
//! failures in a row its circuit breaker holds its deliveries for a cool-down, then probes
//! with one request.
//!
//! These tests assert the mechanism; how close the healthy partner's throughput stays to
//! its throughput alone is a speed figure, measured by the benchmark.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

/// An enrollment of `patient` in [`OTHER_PROGRAM`], whose events go to the misbehaving
/// partner only.
fn other_program_event(patient: &str) -> Value {
    let mut event = enrollment_event(patient);
    event["supportProgramId"] = OTHER_PROGRAM.into();
    event
}

/// A partner that never answers: each request stays open until the dispatcher gives up.
async fn hanging_partner(name: &str) -> TestPartner {
    TestPartner::start(name, |request| {
        Reply::accepted(request).after(Duration::from_secs(3600))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_partner_holds_only_its_own_slots_and_the_other_partner_is_delivered() {
    const HANGING_EVENTS: usize = 6;
    const HEALTHY_EVENTS: usize = 20;
    let hanging = hanging_partner("hanging").await;
    let healthy = TestPartner::accepting("healthy").await;
    // Three deliveries in flight in all, two of them the hanging partner's at most. It
    // hangs for longer than this test runs (the request timeout is an hour): if anything
    // of the healthy partner's had to wait behind it, it would wait past the test's
    // deadline.
    let config = TestConfig::new()
        .partner(&hanging, &[OTHER_PROGRAM])
        .partner(&healthy, &[PROGRAM])
        .max_in_flight("hanging", 2)
        .concurrency(3)
        .lease(Duration::from_secs(2 * 60 * 60))
        .request_timeout(Duration::from_secs(60 * 60))
        .shutdown_grace(Duration::from_secs(2));
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    for n in 0..HANGING_EVENTS {
        db.insert_event(ENROLLMENT, &other_program_event(&format!("h-{n}")))
            .await;
    }
    hanging.wait_for_open_requests(2).await;
    // Claimed only what it can send: the rest wait unclaimed, with no attempt spent
    // (waited for: the router may still be routing the last events).
    db.wait_for_deliveries(
        &Deliveries::of("hanging")
            .in_state("pending")
            .with_attempts(0),
        (HANGING_EVENTS - 2) as i64,
    )
    .await;
    assert_eq!(
        db.count_deliveries(&Deliveries::of("hanging").in_state("in_flight"))
            .await,
        2
    );

    for n in 0..HEALTHY_EVENTS {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("ok-{n}")))
            .await;
    }
    db.wait_for_deliveries(
        &Deliveries::of("healthy")
            .in_state("delivered")
            .with_attempts(1),
        HEALTHY_EVENTS as i64,
    )
    .await;
    assert_eq!(healthy.received().len(), HEALTHY_EVENTS, "each sent once");

    // All the while the hanging partner held its two requests, and got no third.
    assert_eq!(hanging.open_requests(), 2);
    assert_eq!(hanging.most_open_at_once(), 2);
    assert_eq!(hanging.received().len(), 2);
    assert_eq!(
        db.count_deliveries(&Deliveries::of("hanging").in_state("in_flight"))
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_that_times_out_never_has_more_than_max_in_flight_requests_open() {
    const EVENTS: usize = 6;
    let hanging = hanging_partner("hanging").await;
    let healthy = TestPartner::accepting("healthy").await;
    // Every request times out after a second and is retried; the breaker is left out of
    // it (it would hold the partner after ten timeouts in a row).
    let config = TestConfig::new()
        .partner(&hanging, &[OTHER_PROGRAM])
        .partner(&healthy, &[PROGRAM])
        .max_in_flight("hanging", 2)
        .circuit_breaker_failures("hanging", 1000)
        .concurrency(8)
        .request_timeout(Duration::from_secs(1))
        .shutdown_grace(Duration::from_secs(2))
        .max_attempts(100)
        .retry_delays(Duration::from_millis(100), Duration::from_millis(200));
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);
    for n in 0..EVENTS {
        db.insert_event(ENROLLMENT, &other_program_event(&format!("h-{n}")))
            .await;
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("ok-{n}")))
            .await;
    }

    // Every hanging delivery tried: three rounds of two requests, each freeing its slots
    // by timing out.
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries WHERE partner = 'hanging' AND attempt_count >= 1",
        EVENTS as i64,
    )
    .await;
    assert_eq!(
        hanging.most_open_at_once(),
        2,
        "the partner saw at most its max_in_flight requests at once, through every timeout"
    );
    assert!(hanging.open_requests() <= 2);
    let timeouts = db
        .count(
            "SELECT count(*) FROM dispatcher.every_attempt a JOIN dispatcher.deliveries d ON d.id = a.delivery_id
             WHERE d.partner = 'hanging' AND a.error_kind = 'timeout' AND a.http_status IS NULL",
        )
        .await;
    assert!(
        timeouts >= EVENTS as i64,
        "each attempt recorded as a timeout: {timeouts}"
    );
    db.wait_for_deliveries(
        &Deliveries::of("healthy").in_state("delivered"),
        EVENTS as i64,
    )
    .await;
}

/// `dispatcher deliveries list` as support runs it.
async fn deliveries_list(config: &TestConfig, db: &TestDb) -> String {
    let mut command = dispatcher(&config.write(db));
    command.args(["deliveries", "list"]);
    let output = finish(command).await;
    assert!(output.status.success(), "{output}");
    output.stdout
}

/// The value of `dispatcher_partner_circuit_open` for the partner, from `/metrics`.
async fn circuit_open_metric(admin: &AdminClient, partner: &str) -> Option<f64> {
    let text = admin
        .raw(admin.http().get(format!("{}/metrics", admin.base)))
        .await
        .text()
        .await
        .expect("metrics text");
    let series = format!("dispatcher_partner_circuit_open{{partner=\"{partner}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|value| value.parse().expect("a number"))
}

/// The partner's `circuit` in `/api/partners`.
async fn api_circuit(admin: &AdminClient, partner: &str) -> Value {
    let (status, partners) = admin.get("/api/partners").await;
    assert_eq!(status, 200, "{partners}");
    partners
        .as_array()
        .expect("a list of partners")
        .iter()
        .find(|summary| summary["partner"] == partner)
        .unwrap_or_else(|| panic!("{partner} not in {partners}"))["circuit"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_failing_everything_is_held_after_n_failures_then_probed_until_it_recovers() {
    const FAILURES: usize = 3;
    const COOL_DOWN: Duration = Duration::from_secs(2);
    let recovered = Arc::new(AtomicBool::new(false));
    let partner_recovered = recovered.clone();
    let failing = TestPartner::start("failing", move |request| {
        if partner_recovered.load(Ordering::SeqCst) {
            Reply::accepted(request)
        } else {
            Reply::status(500, r#"{"error":"internal"}"#)
        }
    })
    .await;
    // Room for eight requests at once: only the breaker keeps the probe alone.
    let config = TestConfig::new()
        .partner(&failing, &[PROGRAM])
        .max_in_flight("failing", 8)
        .circuit_breaker("failing", 3, Duration::from_secs(2))
        .max_attempts(20)
        .retry_delays(Duration::from_millis(100), Duration::from_millis(500));
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let admin = AdminClient::of(&daemon, None).await;

    // One delivery fails three times in a row: the circuit opens.
    db.insert_event(ENROLLMENT, &enrollment_event("p-0")).await;
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.partner_circuits
         WHERE partner = 'failing' AND state = 'open' AND consecutive_failures >= 3",
        1,
    )
    .await;
    daemon
        .wait_for_log("circuit open: holding this partner's deliveries", 1)
        .await;
    // A backlog builds up while it is open: held, not attempted.
    for n in 1..=4 {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("p-{n}")))
            .await;
    }
    db.wait_for_deliveries(&Deliveries::of("failing"), 5).await;

    // Support, ops and scripts see the partner held. (A probe may be out by now; it
    // is held all the same.)
    let list = deliveries_list(&config, &db).await;
    let line = list
        .lines()
        .find(|line| line.contains("for partner failing"))
        .unwrap_or_else(|| panic!("no circuit line:\n{list}"));
    assert!(
        line.starts_with("circuit open for partner failing since ")
            && line.contains("failed attempts in a row: its deliveries are held")
            || line.starts_with("circuit half-open for partner failing"),
        "{line}"
    );
    assert_eq!(circuit_open_metric(&admin, "failing").await, Some(1.0));
    let circuit = api_circuit(&admin, "failing").await;
    assert!(
        circuit["state"] == "open" || circuit["state"] == "half_open",
        "{circuit}"
    );
    assert!(
        circuit["consecutive_failures"].as_i64() >= Some(FAILURES as i64),
        "{circuit}"
    );
    assert!(circuit["retry_at"].is_string(), "{circuit}");

    // Two probes fail, one at a time, each a cool-down after the last failure; then the
    // partner recovers and the next probe closes the circuit.
    failing.wait_for_requests(FAILURES + 2).await;
    recovered.store(true, Ordering::SeqCst);
    db.wait_for_deliveries(&Deliveries::of("failing").in_state("delivered"), 5)
        .await;
    let received = failing.received();
    let gaps: Vec<Duration> = received
        .windows(2)
        .map(|pair| {
            (pair[1].received_at - pair[0].received_at)
                .to_std()
                .unwrap_or_default()
        })
        .collect();
    for probe in FAILURES..FAILURES + 3 {
        assert!(
            gaps[probe - 1] >= COOL_DOWN,
            "request {} (a probe) came {:?} after the failure before it, within the cool-down",
            probe + 1,
            gaps[probe - 1]
        );
    }
    // 3 failures, 2 failed probes, 1 answered probe, then the other 4 once each.
    assert_eq!(received.len(), 10, "{gaps:?}");
    assert_eq!(
        db.count(
            "SELECT sum(attempt_count)::int8 FROM dispatcher.deliveries WHERE partner = 'failing'"
        )
        .await,
        10
    );
    daemon
        .wait_for_log("probe failed: circuit open again", 2)
        .await;
    daemon
        .wait_for_log("circuit closed: the partner answers again", 1)
        .await;

    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.partner_circuits
         WHERE partner = 'failing' AND state = 'closed' AND consecutive_failures = 0",
        1,
    )
    .await;
    let list = deliveries_list(&config, &db).await;
    assert!(!list.contains("circuit"), "{list}");
    assert_eq!(circuit_open_metric(&admin, "failing").await, Some(0.0));
    let circuit = api_circuit(&admin, "failing").await;
    assert_eq!(circuit["state"], "closed", "{circuit}");
    assert!(circuit["retry_at"].is_null(), "{circuit}");
}
