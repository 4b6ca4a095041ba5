//! Ops' view of the daemon's life: crashes, restarts, graceful stops and several daemons
//! on one database. Nothing may be lost, and nothing confirmed may be sent twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

async fn all_delivery_ids(db: &TestDb) -> Vec<String> {
    db.deliveries()
        .await
        .iter()
        .map(|d| d["id"].as_str().expect("delivery id").to_string())
        .collect()
}

fn assert_sent_at_most_once(received: &[Received]) {
    let twice: Vec<(String, usize)> = per_webhook_id(received)
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "{} deliveries were sent more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_batch_loses_nothing() {
    const EVENTS: usize = 300;
    let partner = TestPartner::start("acme", |request| {
        Reply::accepted(request).after(Duration::from_millis(100))
    })
    .await;
    // A short lease, so the claims the crashed daemon held are taken back soon after.
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .concurrency(32)
        .batch_size(16)
        .lease(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(1))
        .shutdown_grace(Duration::from_secs(1));
    let db = TestDb::migrated(&config).await;
    for i in 0..EVENTS {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("patient-{i}")))
            .await;
    }

    let first = Daemon::start(&config, &db);
    partner.wait_for_requests(50).await;
    first.crash();

    let confirmed_before_crash = db.ids_in_state("delivered").await;
    let claimed_at_crash = db.count_in_state("in_flight").await;
    assert!(
        claimed_at_crash > 0 && confirmed_before_crash.len() < EVENTS,
        "the crash should leave claimed work behind ({claimed_at_crash} in flight, {} delivered)",
        confirmed_before_crash.len()
    );

    let second = Daemon::start(&config, &db);
    db.wait_for_state("delivered", EVENTS as i64).await;

    let received = partner.received();
    let counts = per_webhook_id(&received);
    let ids = all_delivery_ids(&db).await;
    assert_eq!(ids.len(), EVENTS, "one delivery per event");
    let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} deliveries marked delivered never reached the partner, e.g. {:?}\nlog:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        second.log_text()
    );
    let patients: HashSet<String> = received.iter().map(Received::patient_id).collect();
    assert_eq!(
        patients.len(),
        EVENTS,
        "every patient's enrollment reached the partner"
    );
    let resent_after_confirmation: Vec<(&String, usize)> = confirmed_before_crash
        .iter()
        .map(|id| (id, counts.get(id).copied().unwrap_or(0)))
        .filter(|(_, count)| *count != 1)
        .collect();
    assert!(
        resent_after_confirmation.is_empty(),
        "deliveries confirmed before the crash were sent again after it: {resent_after_confirmation:?}"
    );
    assert_eq!(
        db.count_deliveries(&Deliveries::all().unfinished()).await,
        0
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM dispatcher.deliveries WHERE last_status IS DISTINCT FROM 200"
        )
        .await,
        0,
        "every delivery ends with the partner's 200"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
    let partner = TestPartner::start("acme", |request| {
        Reply::accepted(request).after(Duration::from_secs(2))
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .concurrency(8)
        .batch_size(8)
        .lease(Duration::from_secs(30))
        .request_timeout(Duration::from_secs(10))
        .shutdown_grace(Duration::from_secs(10));
    let db = TestDb::migrated(&config).await;
    let mut daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    partner.wait_for_requests(1).await;

    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit().await;
    assert!(
        status.success(),
        "dispatcher exited with {status} after SIGTERM; log:\n{}",
        daemon.log_text()
    );

    let deliveries = db.deliveries().await;
    assert_eq!(deliveries.len(), 1);
    let delivery = &deliveries[0];
    assert_eq!(
        delivery["state"], "delivered",
        "the answer that came during the grace period is recorded: {delivery}"
    );
    let id = delivery["id"].as_str().expect("delivery id");
    let attempts = db.attempts(id).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["http_status"], 200);
    assert_eq!(partner.received().len(), 1, "sent exactly once");
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.partner_patients WHERE patient_id = 'p-1' AND external_id = 'crm-p-1'")
            .await,
        1,
        "the partner's id from the answer is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_does_not_wait_forever_for_a_hung_partner_and_the_delivery_is_sent_again() {
    // The partner hangs on the first try far longer than the grace period (and than the
    // bench's 60s deadline for the daemon to exit), then answers normally.
    let partner = TestPartner::start("acme", |request| {
        if request.try_number == 1 {
            Reply::accepted(request).after(Duration::from_secs(300))
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .concurrency(8)
        .batch_size(8)
        .lease(Duration::from_secs(600))
        .request_timeout(Duration::from_secs(400))
        .shutdown_grace(Duration::from_secs(1));
    let db = TestDb::migrated(&config).await;
    let mut daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let first = partner.wait_for_requests(1).await;

    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit().await;
    assert!(
        status.success(),
        "dispatcher exited with {status} after SIGTERM; log:\n{}",
        daemon.log_text()
    );
    let deliveries = db.deliveries().await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        deliveries[0]["state"], "pending",
        "the abandoned request is handed back, not left in flight until its lease runs out: {}",
        deliveries[0]
    );
    assert_eq!(
        db.count_deliveries(&Deliveries::all().unfinished().due())
            .await,
        1,
        "and is due again at once"
    );

    let _next = Daemon::start(&config, &db);
    db.wait_for_state("delivered", 1).await;
    let received = partner.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[1].webhook_id(),
        first[0].webhook_id(),
        "the resend carries the same webhook-id, so the partner can drop the duplicate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_share_the_work_without_sending_twice() {
    const EVENTS: usize = 400;
    let partner = TestPartner::start("acme", |request| {
        Reply::accepted(request).after(Duration::from_millis(5))
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .concurrency(32)
        .batch_size(10)
        .lease(Duration::from_secs(30))
        .shutdown_grace(Duration::from_secs(2));
    let db = TestDb::migrated(&config).await;
    // Each daemon labels its requests, so the partner can tell who sent what.
    let _a = Daemon::start(
        &config
            .clone()
            .partner_header("acme", "x-sent-by", "daemon-a"),
        &db,
    );
    let _b = Daemon::start(
        &config
            .clone()
            .partner_header("acme", "x-sent-by", "daemon-b"),
        &db,
    );

    for i in 0..EVENTS {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("patient-{i}")))
            .await;
    }
    db.wait_for_state("delivered", EVENTS as i64).await;

    let received = partner.received();
    let counts = per_webhook_id(&received);
    assert_sent_at_most_once(&received);
    let ids = all_delivery_ids(&db).await;
    assert_eq!(
        ids.len(),
        EVENTS,
        "one delivery per event, though both daemons route"
    );
    assert!(
        ids.iter().all(|id| counts.contains_key(id)),
        "every delivery reached the partner"
    );
    assert_eq!(received.len(), EVENTS);
    assert_eq!(
        db.count_attempts().await,
        EVENTS as i64,
        "one attempt recorded per delivery"
    );
    for daemon in ["daemon-a", "daemon-b"] {
        assert!(
            received.iter().any(|r| r.header("x-sent-by") == daemon),
            "{daemon} sent nothing: the work was not shared"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_back_unstarted_claims() {
    const EVENTS: usize = 20;
    let slow = Arc::new(AtomicBool::new(true));
    let partner_slow = slow.clone();
    let partner = TestPartner::start("acme", move |request| {
        if partner_slow.load(Ordering::SeqCst) {
            Reply::accepted(request).after(Duration::from_secs(3))
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .lease(Duration::from_secs(30))
        .request_timeout(Duration::from_secs(10))
        .shutdown_grace(Duration::from_secs(10));
    let db = TestDb::migrated(&config).await;
    for i in 0..EVENTS {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("patient-{i}")))
            .await;
    }
    // The partner takes two requests at a time: the rest wait for a slot, unclaimed.
    let mut daemon = Daemon::start(&config.clone().max_in_flight("acme", 2), &db);
    partner.wait_for_requests(2).await;
    db.wait_for_state("in_flight", 2).await;

    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit().await;
    assert!(
        status.success(),
        "dispatcher exited with {status} after SIGTERM; log:\n{}",
        daemon.log_text()
    );

    let sent: HashSet<String> = partner
        .received()
        .iter()
        .map(Received::webhook_id)
        .collect();
    assert_eq!(
        sent.len(),
        2,
        "only the two requests already on the wire were sent"
    );
    assert_eq!(partner.received().len(), 2);
    for delivery in db.deliveries().await {
        let id = delivery["id"].as_str().expect("delivery id");
        if sent.contains(id) {
            assert_eq!(delivery["state"], "delivered", "{delivery}");
            assert_eq!(delivery["attempt_count"], 1, "{delivery}");
        } else {
            assert_eq!(
                delivery["state"], "pending",
                "an unsent claim is handed back: {delivery}"
            );
            assert_eq!(delivery["attempt_count"], 0, "{delivery}");
            assert!(
                db.attempts(id).await.is_empty(),
                "no attempt recorded for {id}"
            );
        }
    }
    assert_eq!(
        db.count_deliveries(&Deliveries::all().in_state("pending").due())
            .await,
        (EVENTS - 2) as i64,
        "handed-back deliveries are due at once, not after the lease"
    );

    slow.store(false, Ordering::SeqCst);
    let _next = Daemon::start(&config, &db);
    db.wait_for_state("delivered", EVENTS as i64).await;
    let received = partner.received();
    assert_eq!(per_webhook_id(&received).len(), EVENTS);
    assert_sent_at_most_once(&received);
}
