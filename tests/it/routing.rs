//! Routing keeps its own position in the outbox (migration 0013): it never rewrites an
//! event's row, takes an event whose producer committed late, is not held up by a
//! transaction that stays open, and still routes the events written before the migration.
//! A delivery a claim would take at once is claimed by the routing that inserts it, and
//! only such a one: never ahead of its partner's queue or its patient's earlier event.

use crate::support::*;
use dispatcher::delivery::state::DeliveryState;

/// The rows of the dispatcher's `table` updated so far, by PostgreSQL's statistics, once
/// the session `writer` reported its own.
async fn rows_updated(db: &TestDb, writer: &tokio_postgres::Client, table: &str) -> i64 {
    writer
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush the writer's statistics");
    db.count(&format!(
        "SELECT n_tup_upd + n_tup_hot_upd FROM pg_stat_user_tables
         WHERE schemaname = 'dispatcher' AND relname = '{table}'"
    ))
    .await
}

/// Each routed event used to be marked in its own row, rewriting its whole body (about
/// 1.2 KB of WAL, and an entry in every outbox index): now nothing of it is written.
#[tokio::test(flavor = "multi_thread")]
async fn routing_writes_nothing_into_the_events_it_routes() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let mut daemon = Daemon::start(&config, &db);
    for patient in 0..50 {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("quiet-{patient}")))
            .await;
    }
    db.wait_for_state("delivered", 50).await;
    assert_eq!(db.count("SELECT dispatcher.unrouted_events()").await, 0);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit().await;
    // The daemon's backends reported what they did as they exited.
    assert_eq!(
        rows_updated(&db, &db.client, "outbox").await,
        0,
        "an outbox row was updated"
    );
}

/// A session that opened a transaction long ago and keeps it open (a report, a stuck
/// migration, a producer that never commits) holds back the oldest running transaction
/// id; routing must not wait for it to end.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_left_open_holds_up_no_event() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);

    let stuck = db.connect().await;
    stuck
        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .await
        .expect("a transaction with an id, left open");
    // An enrollment of its own, not committed: it must not be routed, nor hold others.
    stuck
        .execute(
            "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2)",
            &[&ENROLLMENT, &enrollment_event("never-committed")],
        )
        .await
        .expect("insert");
    for patient in 0..20 {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("beside-{patient}")))
            .await;
    }
    db.wait_for_state("delivered", 20).await;

    // When it commits at last, its event is routed too.
    stuck.batch_execute("COMMIT").await.expect("commit at last");
    db.wait_for_state("delivered", 21).await;
    assert_eq!(db.count("SELECT dispatcher.unrouted_events()").await, 0);
    drop(daemon);
}

/// Events written before migration 0013 carry no transaction id and are marked routed in
/// their row, the old way: the new daemon routes those still unrouted, once.
#[tokio::test(flavor = "multi_thread")]
async fn events_written_before_the_routing_position_are_routed_the_old_way() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    for patient in 0..10 {
        db.client
            .execute(
                "INSERT INTO dispatcher.outbox (event_name, event, xid) VALUES ($1, $2, NULL)",
                &[&ENROLLMENT, &enrollment_event(&format!("old-{patient}"))],
            )
            .await
            .expect("an event as the old schema wrote it");
    }
    db.client
        .execute(
            "INSERT INTO dispatcher.outbox (event_name, event, xid, routed_at)
             VALUES ($1, $2, NULL, now())",
            &[&ENROLLMENT, &enrollment_event("old-and-routed")],
        )
        .await
        .expect("an event routed before the upgrade");
    assert_eq!(db.count("SELECT dispatcher.unrouted_events()").await, 10);

    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("new-1"))
        .await;
    db.wait_for_state("delivered", 11).await;
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.outbox WHERE xid IS NULL AND routed_at IS NULL")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.deliveries WHERE patient_id = 'old-and-routed'")
            .await,
        0,
        "an event routed before is not routed again"
    );
    assert_eq!(partner.request_count(), 11, "each event sent once");
    drop(daemon);
}

/// An enrollment to a partner with nothing queued goes out without waiting for a claim:
/// the routing that inserts it claims it, so its row is written once (in flight, with
/// the routing's claim token), not inserted pending and then updated by a claim.
#[tokio::test(flavor = "multi_thread")]
async fn an_enrollment_to_a_partner_with_nothing_queued_is_claimed_as_it_is_routed() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let mut router = Router::of(&config, &db).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p")).await;

    let round = router.route_and_claim().await;
    assert_eq!(round.claimed.len(), 1, "claimed as routed: {round:?}");
    let claimed = &round.claimed[0];
    assert_eq!(claimed.partner, "acme");
    assert!(
        claimed.event.contains("\"p\""),
        "the event's body comes with it"
    );
    assert_eq!(round.pending, 0, "nothing left for a claim");
    assert_eq!(
        db.states_of("p").await,
        ["in_flight"],
        "in flight under the routing's claim"
    );
    assert!(
        router.claim(&["acme"]).await.is_empty(),
        "a claim finds nothing"
    );
    assert_eq!(
        rows_updated(&db, &router.client, "deliveries").await,
        0,
        "the delivery was updated after its insert"
    );
    // Its result is recorded as any claim's.
    router.record(claimed, DeliveryState::Delivered).await;
}

/// A partner back from an outage has deliveries due: a claim takes those first, in due
/// order, so a new one of its events is left pending behind them, not claimed ahead.
#[tokio::test(flavor = "multi_thread")]
async fn a_partner_with_deliveries_due_gets_new_ones_in_turn() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let mut router = Router::of(&config, &db).await;
    db.insert_event(ENROLLMENT, &enrollment_event("waited-long"))
        .await;
    router.route().await;
    db.insert_event(ENROLLMENT, &enrollment_event("new")).await;

    let round = router.route_and_claim().await;
    assert!(
        round.claimed.is_empty(),
        "claimed ahead of the queue: {round:?}"
    );
    assert_eq!(round.pending, 1);
    let claimed = router.claim(&["acme"]).await;
    let patients: Vec<&str> = claimed
        .iter()
        .map(|delivery| {
            if delivery.event.contains("waited-long") {
                "waited-long"
            } else {
                "new"
            }
        })
        .collect();
    assert_eq!(
        patients,
        ["waited-long", "new"],
        "the claim takes them in due order"
    );
}

/// A tracker view routed while the patient's enrollment is in flight waits for it, even
/// when the routing could claim it: per-patient order comes first.
#[tokio::test(flavor = "multi_thread")]
async fn a_tracker_view_behind_an_enrollment_in_flight_is_not_claimed_as_routed() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let mut router = Router::of(&config, &db).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p")).await;
    let enrollment = router.route_and_claim().await.claimed;
    assert_eq!(enrollment.len(), 1);
    db.insert_event(VIEWED_TRACKER, &viewed_tracker_event("p"))
        .await;

    let round = router.route_and_claim().await;
    assert!(round.claimed.is_empty(), "claimed out of order: {round:?}");
    assert_eq!(db.states_of("p").await, ["in_flight", "waiting"]);
    router
        .record(&enrollment[0], DeliveryState::Delivered)
        .await;
    let next = router.claim(&["acme"]).await;
    assert_eq!(
        next.len(),
        1,
        "the tracker view is due once the enrollment is answered"
    );
    assert_eq!(next[0].event_name, VIEWED_TRACKER);
}
