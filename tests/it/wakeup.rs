//! The outbox's wake-up (migration 0006, `daemon::router`): producers send a NOTIFY only
//! while a router says it waits, and no committed event is ever stranded. Every daemon
//! here polls once an hour, so an event is delivered within a test only if a wake-up or
//! the router's own looking brings it.

use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const INSERT: &str =
    "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2) RETURNING id";

/// A daemon that never polls within a test.
fn config_polling_hourly(partner: &TestPartner) -> TestConfig {
    TestConfig::new()
        .partner(partner, &[PROGRAM])
        .poll_interval(Duration::from_secs(3600))
}

/// Waits until the daemon's router sleeps on NOTIFY with no wake-up pending: it listens
/// (and has woken itself once for what arrived before), and went to sleep after that.
async fn wait_until_asleep(daemon: &Daemon) {
    daemon.wait_for_log("listening for new events", 1).await;
    daemon.wait_for_log("waiting for new events", 2).await;
}

/// A partner, a database, and one daemon polling hourly whose router sleeps on NOTIFY:
/// where each scenario below starts. The partner and the configuration are returned to
/// be kept: the partner listens while it lives, and the daemon's files (its log among
/// them) live in the configuration's directory.
async fn a_daemon_asleep() -> (TestPartner, TestConfig, TestDb, Daemon) {
    let partner = TestPartner::accepting("acme").await;
    let config = config_polling_hourly(&partner);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    wait_until_asleep(&daemon).await;
    (partner, config, db, daemon)
}

async fn wait_until_delivered(db: &TestDb, event_id: i64) {
    db.wait_for_deliveries(
        &Deliveries::all().of_event(event_id).in_state("delivered"),
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_committed_while_the_daemon_sleeps_wakes_it() {
    let partner = TestPartner::accepting("acme").await;
    let config = config_polling_hourly(&partner);
    let db = TestDb::migrated(&config).await;
    // As a daemon killed while it was busy leaves the flag: a daemon that starts must not
    // trust it, and says it waits once it is idle.
    db.mark_router_busy().await;
    let daemon = Daemon::start(&config, &db);
    wait_until_asleep(&daemon).await;
    assert!(db.router_waiting().await, "an idle router says it waits");

    let id = db
        .insert_event(ENROLLMENT, &enrollment_event("wake-1"))
        .await;

    wait_until_delivered(&db, id).await;
}

/// The race the advisory lock closes: a producer read "busy" and commits only after the
/// router found the outbox empty and said it waits. Its trigger runs at its INSERT here
/// (SET CONSTRAINTS ALL IMMEDIATE), so the read and the commit are far apart.
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_that_saw_the_router_busy_and_commits_after_it_went_idle_is_delivered() {
    let (_partner, _config, db, _daemon) = a_daemon_asleep().await;

    // As a busy router would: producers stop notifying.
    db.mark_router_busy().await;
    let mut producer = db.connect().await;
    let late = producer.transaction().await.expect("begin");
    late.batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
        .await
        .expect("immediate triggers");
    let late_id: i64 = late
        .query_one(INSERT, &[&ENROLLMENT, &enrollment_event("late-1")])
        .await
        .expect("insert")
        .get(0);

    // Another event, and a wake-up by hand (the flag says busy, so its trigger sent none):
    // the router routes it, finds the outbox empty and says it waits.
    let early_id = db
        .insert_event(ENROLLMENT, &enrollment_event("early-1"))
        .await;
    db.client
        .batch_execute("NOTIFY dispatcher_outbox")
        .await
        .expect("notify");
    wait_until_delivered(&db, early_id).await;
    db.wait_for_router_waiting().await;

    late.commit().await.expect("commit");

    wait_until_delivered(&db, late_id).await;
}

/// The flag is no MVCC row: a REPEATABLE READ producer whose snapshot is older than the
/// router's going to sleep still reads "waiting" at its commit, and notifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeatable_read_producer_with_an_older_snapshot_wakes_the_router() {
    let (_partner, _config, db, daemon) = a_daemon_asleep().await;

    // As a busy router would: producers stop notifying.
    db.mark_router_busy().await;
    let mut producer = db.connect().await;
    let producing = producer
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .expect("begin");
    // The snapshot is taken here, while the flag says busy.
    let busy: i64 = producing
        .query_one("SELECT last_value FROM dispatcher.router_waiting", &[])
        .await
        .expect("read the flag")
        .get(0);
    assert_eq!(busy, 0);

    // Another event and a wake-up by hand: the router routes it, finds the outbox empty,
    // says it waits and sleeps.
    let early_id = db.insert_event(ENROLLMENT, &enrollment_event("rr-0")).await;
    db.client
        .batch_execute("NOTIFY dispatcher_outbox")
        .await
        .expect("notify");
    wait_until_delivered(&db, early_id).await;
    db.wait_for_router_waiting().await;
    daemon.wait_for_log("waiting for new events", 3).await;

    let id: i64 = producing
        .query_one(INSERT, &[&ENROLLMENT, &enrollment_event("rr-1")])
        .await
        .expect("insert")
        .get(0);
    producing.commit().await.expect("commit");

    wait_until_delivered(&db, id).await;
}

/// Two daemons, one routing lock: the one locked out does not say it waits for the other,
/// and however the two take turns, every event of bursts from several producers, and a
/// lone one after them, is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_strand_no_event() {
    let partner = TestPartner::accepting("acme").await;
    let config = config_polling_hourly(&partner);
    let db = TestDb::migrated(&config).await;
    let first = Daemon::start(&config, &db);
    let second = Daemon::start(&config, &db);
    wait_until_asleep(&first).await;
    wait_until_asleep(&second).await;

    const PRODUCERS: usize = 4;
    const EVENTS_EACH: usize = 50;
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let client = db.connect().await;
        producers.push(tokio::spawn(async move {
            for event in 0..EVENTS_EACH {
                let body: Value = enrollment_event(&format!("p{producer}-{event}"));
                client
                    .execute(INSERT, &[&ENROLLMENT, &body])
                    .await
                    .expect("insert");
                if event % 10 == 9 {
                    // A gap, so the routers go idle and wake again between bursts.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        }));
    }
    for producer in producers {
        producer.await.expect("producer");
    }
    let burst = i64::try_from(PRODUCERS * EVENTS_EACH).expect("count");
    db.wait_for_state("delivered", burst).await;
    first.wait_for_log("waiting for new events", 3).await;
    second.wait_for_log("waiting for new events", 3).await;
    db.wait_for_router_waiting().await;

    let lone = db
        .insert_event(ENROLLMENT, &enrollment_event("lone-1"))
        .await;

    wait_until_delivered(&db, lone).await;
    db.wait_for_state("delivered", burst + 1).await;
}

/// The trigger runs with the producer's rights: an enrollment flow whose role may only
/// insert into the outbox must still commit (it reads the flag, which everyone may).
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_that_may_only_insert_can_commit_and_wakes_the_router() {
    let (_partner, _config, db, _daemon) = a_daemon_asleep().await;
    let role = format!("enrollment_{}", uuid::Uuid::new_v4().simple());
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA dispatcher TO {role};
             GRANT INSERT ON dispatcher.outbox TO {role};"
        ))
        .await
        .expect("create the enrollment flow's role");
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let (producer, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect as the enrollment flow");
    tokio::spawn(connection);

    producer
        .execute(
            "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2)",
            &[&ENROLLMENT, &enrollment_event("least-1")],
        )
        .await
        .expect("the enrollment flow's insert commits");

    db.wait_for_state("delivered", 1).await;
}
