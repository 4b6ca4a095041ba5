//! Faults injected for real, as ops meet them: the database stopped under load, results
//! that cannot be written, a daemon killed or frozen, partners failing every way at once.
//! Whatever happens, no event is lost, none is marked wrongly, and every delivery ends.
//!
//! Tests that stop the database run a PostgreSQL cluster of their own ([`Cluster`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::cluster::Cluster;
use crate::support::*;
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// Polls `/readyz` until it answers `status`; returns its body.
async fn wait_for_readiness(admin: &AdminClient, status: u16) -> Value {
    let mut last = (0, Value::Null);
    for _ in 0..600 {
        last = admin.get("/readyz").await;
        if last.0 == status {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz did not answer {status} within 60s; last answer: {last:?}");
}

/// Each delivery's attempts as recorded: (http status, error kind) in order, by delivery id.
async fn recorded_attempts(db: &TestDb) -> HashMap<String, Vec<(Option<i32>, Option<String>)>> {
    let mut attempts: HashMap<String, Vec<_>> = HashMap::new();
    for row in db
        .client
        .query(
            "SELECT d.id::text, a.http_status, a.error_kind
             FROM dispatcher.deliveries d JOIN dispatcher.every_attempt a ON a.delivery_id = d.id
             ORDER BY d.id, a.number",
            &[],
        )
        .await
        .expect("read attempts")
    {
        attempts
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    attempts
}

/// The enrollment flow: inserts its events one transaction each, a few milliseconds
/// apart. While the database is down its inserts fail and it tries again (an insert whose
/// answer was lost is not repeated: the retry checks for the patient's event first).
fn enrollment_flow(url: String, events: Vec<(&'static str, Value)>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = None;
        for (event_name, event) in events {
            let patient = event["patient"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            loop {
                if client.is_none() {
                    client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        Ok((new, connection)) => {
                            tokio::spawn(connection);
                            Some(new)
                        }
                        Err(_) => None,
                    };
                }
                let inserted = match &client {
                    Some(c) => c
                        .execute(
                            "INSERT INTO dispatcher.outbox (event_name, event)
                             SELECT $1, $2 WHERE NOT EXISTS (
                                 SELECT 1 FROM dispatcher.outbox
                                 WHERE event_name = $1 AND event -> 'patient' ->> 'id' = $3)",
                            &[&event_name, &event, &patient],
                        )
                        .await
                        .is_ok(),
                    None => false,
                };
                if inserted {
                    break;
                }
                client = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_under_load_loses_nothing_and_delivery_resumes_by_itself() {
    const EVENTS: usize = 300;
    let cluster = Cluster::new();
    let partner = TestPartner::start("acme", |request| {
        Reply::accepted(request).after(Duration::from_millis(50))
    })
    .await;
    // An hour between polls: after the outage, only the daemon's own reconnection (and
    // the notifications of a re-established LISTEN) can bring delivery back within the
    // test's deadlines.
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .batch_size(8)
        .poll_interval(Duration::from_secs(60 * 60))
        .shutdown_grace(Duration::from_secs(2));
    let mut db = TestDb::migrated_on(&config, &cluster.admin_url()).await;
    let mut daemon = Daemon::start(&config, &db);
    let admin = AdminClient::of(&daemon, None).await;
    wait_for_readiness(&admin, 200).await;
    let flow = enrollment_flow(
        db.url.clone(),
        (0..EVENTS)
            .map(|i| (ENROLLMENT, enrollment_event(&format!("patient-{i}"))))
            .collect(),
    );
    partner.wait_for_requests(40).await;

    // The database dies mid-stream, its connections cut without a goodbye.
    cluster.stop_immediately();
    let delivered_before = partner.received().len();
    let not_ready = wait_for_readiness(&admin, 503).await;
    assert!(
        not_ready["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("database")),
        "/readyz says why it is not ready: {not_ready}"
    );
    daemon
        .wait_for_log("cannot reach the database to listen for new events", 1)
        .await;
    assert!(
        daemon.is_running(),
        "the daemon died with the database; log:\n{}",
        daemon.log_text()
    );

    cluster.start();
    wait_for_readiness(&admin, 200).await;
    db.reconnect().await;
    flow.await.expect("the enrollment flow");
    db.wait_for_state("delivered", EVENTS as i64).await;
    assert!(daemon.is_running(), "log:\n{}", daemon.log_text());

    // None lost, none marked wrongly: what the database says was delivered is what the
    // partner received, and every answer recorded is the partner's 200.
    let received = partner.received();
    let per_id = per_webhook_id(&received);
    let deliveries = db.deliveries().await;
    assert_eq!(deliveries.len(), EVENTS, "one delivery per event");
    let ids: HashSet<String> = deliveries
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_string())
        .collect();
    assert!(
        per_id.keys().all(|id| ids.contains(id)),
        "the partner received a webhook-id that is no delivery"
    );
    let patients: HashSet<String> = received.iter().map(Received::patient_id).collect();
    assert_eq!(patients.len(), EVENTS, "every patient's enrollment arrived");
    let attempts = recorded_attempts(&db).await;
    for delivery in &deliveries {
        let id = delivery["id"].as_str().expect("id");
        let sent = per_id.get(id).copied().unwrap_or(0);
        let recorded = attempts.get(id).cloned().unwrap_or_default();
        assert!(sent >= 1, "delivered but never received: {delivery}");
        assert_eq!(
            recorded.last(),
            Some(&(Some(200), None)),
            "the last recorded attempt is the partner's 200: {delivery}"
        );
        // An attempt is only recorded for a request the partner got; a resend after a
        // lost result is the only way to be sent more often than recorded.
        let answered = recorded
            .iter()
            .filter(|(status, _)| status.is_some())
            .count();
        assert!(
            answered <= sent,
            "{answered} answers recorded for {sent} requests: {delivery}"
        );
        assert_eq!(delivery["attempt_count"], recorded.len(), "{delivery}");
        assert!(delivery["claim_token"].is_null(), "{delivery}");
    }
    let duplicates = received.len() - per_id.len();
    let log = daemon.log_text();
    println!(
        "outage: {delivered_before} requests before the stop, {} after; {duplicates} sent twice \
         (same webhook-id); /readyz said {}; the daemon logged {} failed claims, {} failed \
         routings, {} failed writes of results",
        received.len() - delivered_before,
        not_ready["reason"],
        log.matches("claiming deliveries failed").count(),
        log.matches("routing new events failed").count(),
        log.matches("recording results failed").count(),
    );

    // LISTEN is back: with an hour between polls, only a notification can bring this event
    // out promptly (the router has routed successfully since the restart, so it waits for
    // a notification or the hour, not for a retry after an error).
    daemon.wait_for_log("listening for new events", 2).await;
    db.insert_event(ENROLLMENT, &enrollment_event("after-the-outage"))
        .await;
    db.wait_for_state("delivered", EVENTS as i64 + 1).await;
    assert!(partner
        .received()
        .iter()
        .any(|r| r.patient_id() == "after-the-outage"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_whose_notification_never_came_is_found_by_polling() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .concurrency(8)
        .batch_size(8)
        .poll_interval(Duration::from_millis(300))
        .shutdown_grace(Duration::from_secs(2));
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    daemon.wait_for_log("listening for new events", 1).await;
    // The outbox's notification is lost, as one sent while the listener reconnects is.
    db.client
        .batch_execute("ALTER TABLE dispatcher.outbox DISABLE TRIGGER outbox_notify")
        .await
        .expect("disable the notification");
    db.insert_event(ENROLLMENT, &enrollment_event("p-unnoticed"))
        .await;
    db.wait_for_state("delivered", 1).await;
    assert_eq!(partner.received()[0].patient_id(), "p-unnoticed");
}

/// The config for the result tests: a short lease (3s), so a lost result is sent again soon.
fn short_lease(partner: &TestPartner) -> TestConfig {
    TestConfig::new()
        .partner(partner, &[PROGRAM])
        .concurrency(8)
        .batch_size(8)
        .lease(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(1))
        .shutdown_grace(Duration::from_secs(1))
}

/// A partner that, on its first request, takes the database down (`cluster`) before it
/// answers 200: the dispatcher holds a 200 it cannot write. Later requests are answered
/// by `later`.
async fn partner_outliving_the_database(
    cluster: &Arc<Cluster>,
    later: impl Fn(&Received) -> Reply + Send + Sync + 'static,
) -> TestPartner {
    let cluster = cluster.clone();
    TestPartner::start("acme", move |request| {
        if request.try_number == 1 {
            cluster.stop_immediately();
            Reply::accepted(request)
        } else {
            later(request)
        }
    })
    .await
}

/// Attempts as support reads them: the HTTP status, or the error kind.
fn attempt_summary(attempts: &[Value]) -> Vec<String> {
    attempts
        .iter()
        .map(|a| match (&a["http_status"], &a["error_kind"]) {
            (Value::Number(status), _) => status.to_string(),
            (_, Value::String(kind)) => kind.clone(),
            _ => "?".to_string(),
        })
        .collect()
}

async fn single_delivery(db: &TestDb) -> Value {
    let deliveries = db.deliveries().await;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    deliveries[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_the_database_could_not_take_is_recorded_once_it_is_back_and_not_sent_twice() {
    let cluster = Arc::new(Cluster::new());
    let partner = partner_outliving_the_database(&cluster, Reply::accepted).await;
    // The outage lasts seconds; the lease, a minute: the claim is still ours when the
    // database returns.
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .concurrency(8)
        .batch_size(8)
        .lease(Duration::from_secs(60))
        .shutdown_grace(Duration::from_secs(2));
    let mut db = TestDb::migrated_on(&config, &cluster.admin_url()).await;
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    partner.wait_for_requests(1).await;
    daemon
        .wait_for_log("recording results failed; retrying", 1)
        .await;

    cluster.start();
    db.reconnect().await;
    db.wait_for_state("delivered", 1).await;
    let delivery = single_delivery(&db).await;
    assert_eq!(partner.received().len(), 1, "sent once: {delivery}");
    let id = delivery["id"].as_str().expect("id");
    let attempts = db.attempts(id).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["http_status"], 200);
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.partner_patients WHERE external_id = 'crm-p-1'")
            .await,
        1,
        "the partner's id for the patient, from that 200, was kept"
    );
    println!(
        "200 held through an outage: sent once; attempts recorded: {:?}",
        attempt_summary(&attempts)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_lost_with_its_daemon_is_sent_again_after_the_lease_with_the_same_webhook_id() {
    let cluster = Arc::new(Cluster::new());
    let partner = partner_outliving_the_database(&cluster, Reply::accepted).await;
    let config = short_lease(&partner);
    let mut db = TestDb::migrated_on(&config, &cluster.admin_url()).await;
    let mut first = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    partner.wait_for_requests(1).await;
    first
        .wait_for_log("recording results failed; retrying", 1)
        .await;

    // Ops restart the daemon while the database is still down: the 200 it holds is lost.
    first.signal(nix::sys::signal::Signal::SIGTERM);
    let status = first.wait_exit().await;
    assert!(
        status.success(),
        "exit {status}; log:\n{}",
        first.log_text()
    );
    first
        .wait_for_log("cannot record results before exiting", 1)
        .await;

    cluster.start();
    db.reconnect().await;
    let second = Daemon::start(&config, &db);
    db.wait_for_state("delivered", 1).await;

    let delivery = single_delivery(&db).await;
    let id = delivery["id"].as_str().expect("id");
    let received = partner.received();
    assert_eq!(received.len(), 2, "{delivery}");
    assert!(
        received.iter().all(|r| r.webhook_id() == id),
        "both requests carry the delivery's webhook-id, so the partner can drop the second"
    );
    let attempts = db.attempts(id).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["error_kind"], "lease_expired", "{attempts:?}");
    assert!(attempts[0]["http_status"].is_null());
    assert_eq!(attempts[1]["http_status"], 200, "{attempts:?}");
    assert!(delivery["claim_token"].is_null(), "{delivery}");
    let log = second
        .wait_for_log("lease expired with no result recorded; sending again", 1)
        .await;
    assert!(
        log.lines()
            .any(|line| line.contains("lease expired") && line.contains(id)),
        "the rescue is logged with the delivery's id:\n{log}"
    );
    let (_, metrics) = {
        let admin = AdminClient::of(&second, None).await;
        let response = admin
            .raw(admin.http().get(format!("{}/metrics", admin.base)))
            .await;
        (response.status(), response.text().await.expect("metrics"))
    };
    assert!(
        metrics.contains("dispatcher_leases_expired_total{partner=\"acme\"} 1"),
        "{metrics}"
    );
    println!(
        "200 lost with its daemon: sent {} times as webhook-id {id}; attempts recorded: {:?}",
        received.len(),
        attempt_summary(&attempts)
    );
}

/// Daemon A sends p-1, gets its 200 but cannot write it (the partner took the database
/// down), and is frozen (SIGSTOP) with that 200 in memory; the database comes back and
/// daemon B takes over. Returns A, frozen, and B.
async fn a_frozen_daemon_holding_a_200(
    cluster: &Cluster,
    config: &TestConfig,
    db: &mut TestDb,
    partner: &TestPartner,
) -> (Daemon, Daemon) {
    let a = Daemon::start(config, db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    partner.wait_for_requests(1).await;
    a.wait_for_log("recording results failed; retrying", 1)
        .await;
    a.signal(nix::sys::signal::Signal::SIGSTOP);
    cluster.start();
    db.reconnect().await;
    let b = Daemon::start(config, db);
    (a, b)
}

/// Waits until the thawed daemon has tried to write its late result: it logs that it was
/// discarded, or the delivery changes. Returns the delivery as it is then.
async fn wait_for_the_late_write(daemon: &Daemon, db: &TestDb, before: &Value) -> Value {
    for _ in 0..600 {
        let now = single_delivery(db).await;
        if &now != before
            || daemon
                .log_text()
                .contains("result discarded: the claim was no longer current")
        {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the thawed daemon neither wrote nor discarded its result within 60s; log:\n{}",
        daemon.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_200_from_a_frozen_daemon_does_not_overwrite_the_resend_that_delivered() {
    let cluster = Arc::new(Cluster::new());
    let partner = partner_outliving_the_database(&cluster, |request| {
        Reply::accepted(request).header("x-answered", "resend")
    })
    .await;
    let config = short_lease(&partner);
    let mut db = TestDb::migrated_on(&config, &cluster.admin_url()).await;
    let (a, _b) = a_frozen_daemon_holding_a_200(&cluster, &config, &mut db, &partner).await;
    db.wait_for_state("delivered", 1).await;
    let delivery = single_delivery(&db).await;
    let id = delivery["id"].as_str().expect("id");
    let before = db.attempts(id).await;

    // A wakes up and writes what it held: discarded, the claim it was for is gone.
    a.signal(nix::sys::signal::Signal::SIGCONT);
    let after = wait_for_the_late_write(&a, &db, &delivery).await;
    assert_eq!(after, delivery, "the late 200 changed the delivery");
    let attempts = db.attempts(id).await;
    assert_eq!(attempts, before);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["error_kind"], "lease_expired");
    assert_eq!(attempts[1]["http_status"], 200);
    let received = partner.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r.webhook_id() == id));
    println!(
        "late 200 after the resend delivered: discarded; attempts recorded: {:?}",
        attempt_summary(&attempts)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_200_from_a_frozen_daemon_does_not_revive_a_delivery_support_cancelled() {
    let cluster = Arc::new(Cluster::new());
    // The resend fails, and its retry is far off: the delivery waits, pending.
    let partner = partner_outliving_the_database(&cluster, |_| {
        Reply::status(503, r#"{"success": false, "errorMessage": "maintenance"}"#)
    })
    .await;
    let config = short_lease(&partner)
        .max_attempts(5)
        .retry_delays(Duration::from_secs(60 * 60), Duration::from_secs(60 * 60));
    let mut db = TestDb::migrated_on(&config, &cluster.admin_url()).await;
    let (a, _b) = a_frozen_daemon_holding_a_200(&cluster, &config, &mut db, &partner).await;
    partner.wait_for_requests(2).await;
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries
         WHERE state = 'pending' AND claim_token IS NULL AND last_status = 503",
        1,
    )
    .await;
    let id = single_delivery(&db).await["id"]
        .as_str()
        .expect("id")
        .to_string();

    // Support gives up on it.
    let cancelled = finish({
        let mut command = dispatcher(&config.write(&db));
        command.args(["deliveries", "cancel", &id]);
        command
    })
    .await;
    assert!(cancelled.status.success(), "{cancelled}");

    let delivery = single_delivery(&db).await;
    assert_eq!(delivery["state"], "cancelled", "{delivery}");
    a.signal(nix::sys::signal::Signal::SIGCONT);
    let after = wait_for_the_late_write(&a, &db, &delivery).await;
    assert_eq!(after, delivery, "the late 200 changed the delivery");
    let attempts = db.attempts(&id).await;
    let kinds: Vec<(Value, Value)> = attempts
        .iter()
        .map(|a| (a["error_kind"].clone(), a["http_status"].clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Value::from("lease_expired"), Value::Null),
            (Value::Null, Value::from(503))
        ],
        "A's late 200 is not among them"
    );
    println!(
        "late 200 after support cancelled: discarded, still cancelled; attempts recorded: {:?}",
        attempt_summary(&attempts)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_that_takes_its_daemon_down_every_time_ends_dead_after_max_attempts() {
    // Whenever this delivery is sent, its daemon dies (a crash it triggers, say) before
    // the answer is recorded.
    let running: Arc<Mutex<Option<nix::unistd::Pid>>> = Arc::default();
    let partner = TestPartner::start("acme", {
        let running = running.clone();
        move |request| {
            if let Some(pid) = *running.lock().expect("pid") {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            Reply::accepted(request)
        }
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .concurrency(8)
        .batch_size(8)
        .lease(Duration::from_secs(2))
        .request_timeout(Duration::from_millis(500))
        .shutdown_grace(Duration::from_millis(500))
        .max_attempts(3)
        .retry_delays(Duration::from_millis(100), Duration::from_millis(100));
    let db = TestDb::migrated(&config).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;

    // Ops (or systemd) restart it each time.
    let mut restarts = 0;
    loop {
        let mut daemon = Daemon::start(&config, &db);
        *running.lock().expect("pid") = Some(daemon.pid());
        let mut ended = false;
        for _ in 0..600 {
            ended = db.count_in_state("dead").await == 1;
            if ended || !daemon.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if ended {
            assert!(daemon.is_running(), "the daemon that ended it lives on");
            break;
        }
        assert!(!daemon.is_running(), "neither dead nor crashed within 60s");
        restarts += 1;
        assert!(
            restarts <= 6,
            "sent {} times and still not ended: {}",
            partner.received().len(),
            single_delivery(&db).await
        );
    }

    let delivery = single_delivery(&db).await;
    let id = delivery["id"].as_str().expect("id");
    assert!(
        delivery["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("gave up after 3 attempts")),
        "{delivery}"
    );
    let attempts = db.attempts(id).await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(
        attempts.iter().all(|a| a["error_kind"] == "lease_expired"),
        "{attempts:?}"
    );
    let received = partner.received();
    assert_eq!(received.len(), 3, "sent max_attempts times, no more");
    assert!(received.iter().all(|r| r.webhook_id() == id));
    println!(
        "a delivery that kills its daemon: {restarts} crashes, sent {} times, then dead: {}",
        received.len(),
        delivery["last_error"]
    );
}

/// A partner whose server resets every connection once the request has arrived.
async fn resetting_partner() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind partner");
    let base_url = format!("http://{}", listener.local_addr().expect("address"));
    let resets = Arc::new(AtomicUsize::new(0));
    let counted = resets.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if stream.read(&mut first).await.is_ok() {
                    // Closing with unread data and a zero linger sends RST, not FIN.
                    let _ = stream.set_zero_linger();
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (base_url, resets)
}

/// Every delivery that is neither in a final state, consistently recorded, nor pending
/// with its next attempt in the future, with what is wrong with it: the one query that
/// says whether faults left anything behind.
const NOT_SETTLED: &str = "
    SELECT id, partner, state, wrong FROM (
        SELECT d.id::text, d.partner, d.state,
               CASE
                   WHEN d.state = 'pending' AND d.due_at > now() AND d.claim_token IS NULL
                       THEN NULL
                   WHEN d.claim_token IS NOT NULL AND d.leased_until <= now()
                       THEN 'in flight with an expired lease'
                   WHEN d.claim_token IS NOT NULL THEN 'still in flight'
                   WHEN d.state = 'pending' THEN 'pending, with no next attempt in the future'
                   WHEN d.state NOT IN ('delivered', 'rejected', 'dead', 'invalid', 'cancelled')
                       THEN 'not a final state'
                   WHEN d.ended_at IS NULL OR d.due_at IS NOT NULL OR d.claim_token IS NOT NULL
                       THEN 'ended, but with no end time, or a due time or a claim left'
                   WHEN d.attempt_count <> (SELECT count(*) FROM dispatcher.every_attempt a
                                            WHERE a.delivery_id = d.id)
                       THEN 'attempt_count disagrees with the attempts recorded'
                   -- A delivery that ends at its first attempt keeps it in its row, a
                   -- retried one's are rows of attempts (migration 0024).
                   WHEN d.state = 'delivered' AND d.attempt_count = 1
                        AND d.first_attempt_started_at IS NULL
                       THEN 'delivered at its first attempt, which is not in its row'
                   WHEN d.attempt_count - d.attempts_before_resend > 1
                        AND d.attempts_before_resend = 0
                        AND d.first_attempt_started_at IS NOT NULL
                       THEN 'retried, yet its first attempt is in its row'
                   WHEN d.state = 'delivered' AND last.http_status NOT BETWEEN 200 AND 299
                       THEN 'delivered, but the last answer recorded is no 2xx'
                   WHEN d.state = 'rejected' AND last.http_status IS DISTINCT FROM 400
                       THEN 'rejected, but the last answer recorded is not the 400'
                   WHEN d.state = 'dead' AND d.attempt_count - d.attempts_before_resend <> $1
                       THEN 'dead before max_attempts'
                   -- A claim lost with a killed daemon counts as an attempt (`lease_expired`)
                   -- even for an event that was never going to be sent.
                   WHEN d.state = 'invalid' AND EXISTS (
                            SELECT 1 FROM dispatcher.every_attempt a
                            WHERE a.delivery_id = d.id
                              AND a.error_kind IS DISTINCT FROM 'lease_expired')
                       THEN 'invalid, yet sent'
               END AS wrong
        FROM dispatcher.deliveries d
        LEFT JOIN LATERAL (
            SELECT http_status FROM dispatcher.every_attempt a
            WHERE a.delivery_id = d.id ORDER BY number DESC LIMIT 1) last ON true
    ) checked
    WHERE wrong IS NOT NULL";

#[tokio::test(flavor = "multi_thread")]
async fn after_mixed_faults_every_delivery_reaches_a_final_state() {
    const MAX_ATTEMPTS: i32 = 4;
    const FLAKY_PROGRAM: &str = "a1f3c0de-0000-4000-8000-000000000001";
    const STRICT_PROGRAM: &str = "a1f3c0de-0000-4000-8000-000000000002";
    const SLOW_PROGRAM: &str = "a1f3c0de-0000-4000-8000-000000000003";
    const RESET_PROGRAM: &str = "a1f3c0de-0000-4000-8000-000000000004";
    let cluster = Cluster::new();
    // 500 on the first try, then 200.
    let flaky = TestPartner::start("flaky", |request| {
        if request.try_number == 1 {
            Reply::status(500, "")
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    // 400: the request itself is wrong.
    let strict = TestPartner::start("strict", |_| {
        Reply::status(
            400,
            r#"{"success": false, "errorMessage": "Patient is already enrolled in program"}"#,
        )
    })
    .await;
    // Longer than request_timeout on the first try, then 200.
    let slow = TestPartner::start("slow", |request| {
        let reply = Reply::accepted(request);
        if request.try_number == 1 {
            reply.after(Duration::from_secs(2))
        } else {
            reply
        }
    })
    .await;
    let (reset_url, resets) = resetting_partner().await;
    let mut config = TestConfig::new()
        .partner(&flaky, &[FLAKY_PROGRAM])
        .partner(&strict, &[STRICT_PROGRAM])
        .partner(&slow, &[SLOW_PROGRAM])
        .concurrency(32)
        .batch_size(8)
        .lease(Duration::from_secs(2))
        .request_timeout(Duration::from_millis(500))
        .shutdown_grace(Duration::from_millis(500))
        .max_attempts(MAX_ATTEMPTS as u32)
        .retry_delays(Duration::from_millis(50), Duration::from_millis(200));
    config
        .partners
        .push(("resetting".into(), reset_url, vec![RESET_PROGRAM.into()]));
    // Circuits open too (after 3 failures in a row): held deliveries must still end,
    // probe by probe.
    for partner in ["flaky", "strict", "slow", "resetting"] {
        config = config.circuit_breaker(partner, 3, Duration::from_millis(50));
    }
    let mut db = TestDb::migrated_on(&config, &cluster.admin_url()).await;

    // Each partner's patients enrol, and some view their tracker; a few events break the
    // contract (a phone number that is no E.164, no support program at all).
    let mut events = Vec::new();
    for i in 0..30 {
        for program in [FLAKY_PROGRAM, STRICT_PROGRAM, SLOW_PROGRAM, RESET_PROGRAM] {
            let patient = format!("{}-{i}", &program[program.len() - 1..]);
            let mut enrollment = enrollment_event(&patient);
            enrollment["supportProgramId"] = program.into();
            if i % 10 == 7 {
                enrollment["patient"]["phoneNumber"] = "202-795-3213".into();
            }
            if i % 10 == 9 {
                enrollment
                    .as_object_mut()
                    .expect("event")
                    .remove("supportProgramId");
            }
            events.push((ENROLLMENT, enrollment));
            if i % 3 == 0 {
                let mut tracker = viewed_tracker_event(&patient);
                tracker["supportProgramId"] = program.into();
                events.push((VIEWED_TRACKER, tracker));
            }
        }
    }
    let event_count = events.len() as i64;
    let requests = || {
        flaky.received().len()
            + strict.received().len()
            + slow.received().len()
            + resets.load(Ordering::SeqCst)
    };
    let wait_for_requests = |count: usize| async move {
        for _ in 0..600 {
            if requests() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the partners got {} requests in 60s, expected {count}",
            requests()
        );
    };

    let first = Daemon::start(&config, &db);
    let flow = enrollment_flow(db.url.clone(), events);
    wait_for_requests(30).await;

    // The database restarts under the daemon.
    cluster.stop_immediately();
    let at_db_stop = requests();
    cluster.start();
    db.reconnect().await;
    wait_for_requests(at_db_stop + 30).await;

    // The daemon crashes; ops start another.
    first.crash();
    let at_crash = requests();
    let second = Daemon::start(&config, &db);
    flow.await.expect("the enrollment flow");
    db.wait_for_count(
        "SELECT count(*) - dispatcher.unrouted_events() FROM dispatcher.outbox",
        event_count,
    )
    .await;

    // Settled: nothing left to do (with 4 attempts, 50-200ms apart, everything ends).
    let mut unfinished = -1;
    for _ in 0..600 {
        unfinished = db.count_deliveries(&Deliveries::all().unfinished()).await;
        if unfinished == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let not_settled: Vec<(String, Option<String>, String, Option<String>)> = db
        .client
        .query(NOT_SETTLED, &[&MAX_ATTEMPTS])
        .await
        .expect("the final-state query")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    assert!(
        not_settled.is_empty() && unfinished == 0,
        "{} deliveries did not reach a final state within 60s, e.g. {:?}\nlog:\n{}",
        not_settled.len(),
        &not_settled[..not_settled.len().min(10)],
        second.log_text()
    );

    // What the partners saw agrees with what the database says.
    let states: HashMap<String, String> = db
        .deliveries()
        .await
        .iter()
        .map(|d| {
            (
                d["id"].as_str().expect("id").to_string(),
                d["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    for (partner, ended) in [
        (&flaky, "delivered"),
        (&slow, "delivered"),
        (&strict, "rejected"),
    ] {
        for id in per_webhook_id(&partner.received()).keys() {
            let state = states.get(id).map(String::as_str);
            assert!(
                state == Some(ended) || state == Some("dead"),
                "{}: {id} was received and is {state:?}",
                partner.name
            );
        }
    }
    let by_state: Vec<(String, String, i64)> = db
        .client
        .query(
            "SELECT coalesce(partner, '(none)'), state, count(*) FROM dispatcher.deliveries
             GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("count states")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let lost_claims = db.count_attempts_failed_with("lease_expired").await;
    println!(
        "mixed faults: {event_count} events; database stopped after {at_db_stop} requests, \
         daemon killed after {at_crash}; {} requests in all ({} resets); \
         {lost_claims} claims lost and sent again; states: {by_state:?}",
        requests(),
        resets.load(Ordering::SeqCst)
    );
}

/// The dispatcher's recording statement as PostgreSQL shows it, waiting on a lock in this
/// test's database, started after `since`. Returns its backend's pid and start.
async fn wait_for_the_blocked_recorder(
    db: &TestDb,
    since: chrono::DateTime<chrono::Utc>,
) -> (i32, chrono::DateTime<chrono::Utc>) {
    for _ in 0..1200 {
        let blocked = db
            .client
            .query_opt(
                "SELECT pid, query_start FROM pg_stat_activity
                 WHERE datname = current_database()
                   AND application_name = 'helparound-dispatcher'
                   AND wait_event_type = 'Lock'
                   -- The recording statement's opening (the text shown is cut at 1 kB).
                   AND query LIKE 'WITH result AS%'
                   AND query_start > $1",
                &[&since],
            )
            .await
            .expect("read pg_stat_activity");
        if let Some(row) = blocked {
            return (row.get(0), row.get(1));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the dispatcher did not try to record the result (again) within 60s");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_is_recorded_through_a_cancelled_statement_and_a_killed_connection() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    // Something ops run holds up the recorder: a long report, a migration.
    let (report, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    report
        .batch_execute("BEGIN; LOCK TABLE dispatcher.attempts IN EXCLUSIVE MODE")
        .await
        .expect("lock the attempts");
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    partner.wait_for_requests(1).await;

    // What a statement_timeout does (57014), then what a server shutting down does (57P01).
    let (recorder, started) =
        wait_for_the_blocked_recorder(&db, chrono::DateTime::UNIX_EPOCH).await;
    db.client
        .execute("SELECT pg_cancel_backend($1)", &[&recorder])
        .await
        .expect("cancel");
    let (recorder, started) = wait_for_the_blocked_recorder(&db, started).await;
    db.client
        .execute("SELECT pg_terminate_backend($1)", &[&recorder])
        .await
        .expect("terminate");
    wait_for_the_blocked_recorder(&db, started).await;
    report.batch_execute("COMMIT").await.expect("unlock");

    db.wait_for_state("delivered", 1).await;
    let delivery = single_delivery(&db).await;
    assert_eq!(partner.received().len(), 1, "sent once: {delivery}");
    let attempts = db.attempts(delivery["id"].as_str().expect("id")).await;
    assert_eq!(attempt_summary(&attempts), ["200"]);
    assert!(
        !daemon.log_text().contains("refused this result"),
        "{}",
        daemon.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs `--features failpoints` (scripts/test sets it)"
)]
async fn a_panic_in_an_attempt_costs_an_attempt_and_counts_against_the_partner_circuit() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .circuit_breaker("acme", 1, Duration::from_secs(1));
    let db = TestDb::migrated(&config).await;
    // A bug meets the first attempt, and no other.
    let daemon = Daemon::start_with_env(&config, &db, &[("FAILPOINTS", "attempt=1*panic->off")]);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;

    db.wait_for_state("delivered", 1).await;
    let delivery = single_delivery(&db).await;
    let id = delivery["id"].as_str().expect("id");
    let attempts = db.attempts(id).await;
    assert_eq!(attempt_summary(&attempts), ["internal", "200"]);
    assert_eq!(partner.received().len(), 1);
    let log = daemon.log_text();
    let panic_line = log
        .lines()
        .find(|line| line.contains("internal error in the attempt"))
        .unwrap_or_else(|| panic!("the panic was not logged:\n{log}"));
    assert!(panic_line.contains(id), "logged with its ids: {panic_line}");
    assert!(
        log.contains("circuit open"),
        "the breaker counted it as a failure:\n{log}"
    );
}

/// The record stores a patient's first partner id with a plain insert: two records that
/// teach one (partner, patient) lock that patient's unfinished deliveries and run one
/// after the other, so the second sees the first's row. Should another write of the id
/// ever come in between anyway (here, one made by hand and held open), the key refuses
/// the record, and nothing is lost: the delivery is sent again after its lease, with the
/// same webhook-id, recorded, and the partner's id is the one it answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_partner_id_written_beside_the_record_costs_a_lease_not_the_delivery() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .request_timeout(Duration::from_secs(1))
        .shutdown_grace(Duration::from_secs(1))
        .lease(Duration::from_secs(3));
    let db = TestDb::migrated(&config).await;
    let by_hand = db.connect().await;
    by_hand
        .batch_execute(
            "BEGIN; INSERT INTO dispatcher.partner_patients (partner, patient_id, external_id)
             VALUES ('acme', 'p-1', 'crm-by-hand')",
        )
        .await
        .expect("an id written by hand, not committed yet");
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    partner.wait_for_requests(1).await;

    wait_for_the_blocked_recorder(&db, chrono::DateTime::UNIX_EPOCH).await;
    by_hand.batch_execute("COMMIT").await.expect("commit");

    db.wait_for_state("delivered", 1).await;
    let received = partner.received();
    assert_eq!(received.len(), 2, "sent again after its lease");
    assert_eq!(
        received[0].webhook_id(),
        received[1].webhook_id(),
        "the same webhook-id, so the partner knows it"
    );
    let known = db
        .client
        .query_one(
            "SELECT external_id FROM dispatcher.partner_patients
             WHERE partner = 'acme' AND patient_id = 'p-1'",
            &[],
        )
        .await
        .expect("the partner's id");
    assert_eq!(
        known.get::<_, &str>(0),
        "crm-p-1",
        "what the partner answered"
    );
    drop(daemon);
}
