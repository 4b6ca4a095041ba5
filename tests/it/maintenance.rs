//! Maintenance beside a running daemon: a VACUUM of the deliveries (autovacuum's, an
//! anti-wraparound one included) holds a lock on the table for as long as it runs, and
//! nothing of the daemon's may wait for it. The router asks for fresh statistics after a
//! burst; that ANALYZE runs beside it and skips a table it cannot lock at once.

use std::time::Duration;

use crate::support::*;

/// Events the burst holds: past the 10,000 after which the router asks for an ANALYZE.
const BURST: i64 = 12_000;

/// Sessions of the daemon's that wait for a lock on the deliveries, as SQL.
const DAEMON_WAITING_ON_DELIVERIES: &str = "SELECT count(*) FROM pg_locks l
     JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE NOT l.granted AND l.relation = 'dispatcher.deliveries'::regclass
       AND a.application_name = 'helparound-dispatcher'";

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_is_routed_while_a_vacuum_holds_the_deliveries() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    // The lock a VACUUM takes, held by another session for as long as the test runs.
    let vacuum = db.connect().await;
    vacuum
        .batch_execute("BEGIN; LOCK TABLE dispatcher.deliveries IN SHARE UPDATE EXCLUSIVE MODE")
        .await
        .expect("lock as VACUUM does");
    // A program no partner serves: each event is routed (`unrouted`), none is sent.
    let mut event = enrollment_event("p");
    event["supportProgramId"] = UNSERVED_PROGRAM.into();
    db.client
        .execute(
            "INSERT INTO dispatcher.outbox (event_name, event)
             SELECT $1, jsonb_set($2, '{patient,id}', to_jsonb('p-' || n))
             FROM generate_series(1, $3::int8) AS n",
            &[&ENROLLMENT, &event, &BURST],
        )
        .await
        .expect("a burst of events");
    let daemon = Daemon::start(&config, &db);

    let unrouted = "SELECT dispatcher.unrouted_events()";
    let started = std::time::Instant::now();
    while db.count(unrouted).await > 0 {
        assert_eq!(
            db.count(DAEMON_WAITING_ON_DELIVERIES).await,
            0,
            "the daemon waits behind the VACUUM's lock"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not routed within 60s:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.wait_for_state("unrouted", BURST).await;
    // The ANALYZE was asked for, and skipped the locked table instead of waiting.
    daemon.wait_for_log("skipping analyze", 1).await;
    assert_eq!(db.count(DAEMON_WAITING_ON_DELIVERIES).await, 0);
}
