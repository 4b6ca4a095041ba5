//! Faults injected for real, as ops meet them: the database stopped under load, results
//! that cannot be written, a daemon killed or frozen, partners failing every way at once.
//! Whatever happens, no event is lost, none is marked wrongly, and every delivery ends.
//!
//! Tests that stop the database run a PostgreSQL cluster of their own ([`Cluster`]).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::cluster::Cluster;
use common::*;
use serde_json::Value;

const DELIVERED: &str = "SELECT count(*) FROM dispatcher.deliveries WHERE state = 'delivered'";

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
             FROM dispatcher.deliveries d JOIN dispatcher.attempts a ON a.delivery_id = d.id
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

/// The enrollment flow: inserts one enrollment per patient, one transaction each, a few
/// milliseconds apart. While the database is down its inserts fail and it tries again (an
/// insert whose answer was lost is not repeated: the retry checks for the patient first).
fn enrollment_flow(url: String, patients: Vec<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = None;
        for patient in patients {
            let event = enrollment_event(&patient);
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
                                 WHERE event -> 'patient' ->> 'id' = $3)",
                            &[&ENROLLMENT, &event, &patient],
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
    let config = TestConfig::new().partner(&partner, &[PROGRAM]).dispatch(
        "concurrency = 64\nbatch_size = 8\nlease = \"10s\"\npoll_interval = \"1h\"\n\
         request_timeout = \"2s\"\nshutdown_grace = \"2s\"",
    );
    let mut db = TestDb::migrated_on(&config, &cluster.admin_url()).await;
    let mut daemon = Daemon::start(&config, &db);
    let admin = AdminClient::of(&daemon, None).await;
    wait_for_readiness(&admin, 200).await;
    let flow = enrollment_flow(
        db.url.clone(),
        (0..EVENTS).map(|i| format!("patient-{i}")).collect(),
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
    db.wait_for_count(DELIVERED, EVENTS as i64).await;
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
    println!(
        "outage: {delivered_before} requests before the stop, {} after; {duplicates} sent twice (same webhook-id)",
        received.len() - delivered_before
    );

    // LISTEN is back: with an hour between polls, only a notification can bring this event
    // out promptly.
    daemon.wait_for_log("listening for new events", 2).await;
    db.insert_event(ENROLLMENT, &enrollment_event("after-the-outage"))
        .await;
    db.wait_for_count(DELIVERED, EVENTS as i64 + 1).await;
    assert!(partner
        .received()
        .iter()
        .any(|r| r.patient_id() == "after-the-outage"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_whose_notification_never_came_is_found_by_polling() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]).dispatch(
        "concurrency = 8\nbatch_size = 8\nlease = \"10s\"\npoll_interval = \"300ms\"\n\
         request_timeout = \"2s\"\nshutdown_grace = \"2s\"",
    );
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
    db.wait_for_count(DELIVERED, 1).await;
    assert_eq!(partner.received()[0].patient_id(), "p-unnoticed");
}
