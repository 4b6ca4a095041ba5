//! Routing keeps its own position in the outbox (migration 0013): it never rewrites an
//! event's row, takes an event whose producer committed late, is not held up by a
//! transaction that stays open, and still routes the events written before the migration.

use crate::support::*;

/// The outbox's rows updated so far, by PostgreSQL's statistics.
async fn outbox_rows_updated(db: &TestDb) -> i64 {
    db.client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush this session's statistics");
    db.count(
        "SELECT n_tup_upd + n_tup_hot_upd FROM pg_stat_user_tables
         WHERE schemaname = 'dispatcher' AND relname = 'outbox'",
    )
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
        outbox_rows_updated(&db).await,
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
