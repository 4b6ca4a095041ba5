//! The outbox's wake-up (migrations 0006 and 0008, `daemon::router`): producers send a
//! NOTIFY only while a router says it waits, no committed event is ever stranded, and
//! nothing outside the dispatcher (a stranger's lock, a slow disk or replica) can make an
//! enrollment's commit wait on it. Every daemon
//! here polls once an hour, so an event is delivered within a test only if a wake-up or
//! the router's own looking brings it.

use std::time::Duration;

use crate::support::cluster::Cluster;
use crate::support::*;
use dispatcher::store::outbox::Routed;
use serde_json::Value;
use tokio_postgres::error::SqlState;

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

/// The race the wake-up lock closes: a producer read "busy" and commits only after the
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

/// A burst after a quiet spell (issue 22): the first commit that finds the router waiting
/// marks it woken and notifies; the commits after it find it woken and send no NOTIFY,
/// each of which would take PostgreSQL's global notify lock in turn at its commit. The
/// daemon is stopped once asleep, so only the producers touch the flag; a daemon started
/// afterwards delivers the whole burst.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_commits_after_the_router_fell_asleep_sends_one_notify() {
    const BURST: usize = 20;
    let (_partner, config, db, mut daemon) = a_daemon_asleep().await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait_exit().await.success(), "{}", daemon.log_text());
    assert!(db.router_waiting().await, "the router fell asleep waiting");
    let mut listener = OutboxListener::start(&db).await;

    for event in 0..BURST {
        // A connection each, as the enrollment flow's many are.
        let producer = db.connect().await;
        producer
            .execute(
                INSERT,
                &[&ENROLLMENT, &enrollment_event(&format!("burst-{event}"))],
            )
            .await
            .expect("the producer commits");
    }

    assert_eq!(listener.count_heard().await, 1, "NOTIFYs sent by the burst");
    let _daemon = Daemon::start(&config, &db);
    db.wait_for_state("delivered", i64::try_from(BURST).expect("count"))
        .await;
}

/// The window the one NOTIFY per sleep opens: a producer reads "busy" set not by a router
/// but by the producer that woke it, and commits only after the woken router's look. The
/// router that routed the waking event owes a sleep check, which fails while this
/// producer holds the wake-up lock and, once it has committed, is followed by a look that
/// finds its event. Both triggers run at their inserts here (SET CONSTRAINTS ALL
/// IMMEDIATE), so the second reads the flag before the first commits, every time.
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_that_saw_another_wake_the_router_and_commits_after_its_look_is_delivered() {
    let (_partner, _config, db, _daemon) = a_daemon_asleep().await;
    let mut listener = OutboxListener::start(&db).await;
    let mut connections = [db.connect().await, db.connect().await];
    let [waking, late] = &mut connections;
    let waking = waking.transaction().await.expect("begin");
    let late = late.transaction().await.expect("begin");
    let mut ids = Vec::new();
    for (producer, patient) in [(&waking, "woke-1"), (&late, "after-woke-1")] {
        producer
            .batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
            .await
            .expect("immediate triggers");
        let id: i64 = producer
            .query_one(INSERT, &[&ENROLLMENT, &enrollment_event(patient)])
            .await
            .expect("insert")
            .get(0);
        ids.push(id);
    }
    assert!(
        !db.router_waiting().await,
        "the first producer marked the router woken"
    );

    waking.commit().await.expect("commit");
    wait_until_delivered(&db, ids[0]).await;
    late.commit().await.expect("commit");

    wait_until_delivered(&db, ids[1]).await;
    assert_eq!(
        listener.count_heard().await,
        1,
        "only the first producer notified"
    );
}

/// A producer that found the router waiting marks it woken at its commit, before its
/// NOTIFY, which PostgreSQL sends only if the transaction commits. One that rolls back
/// after its trigger ran (here its own deferred constraint fails at commit) leaves the
/// flag saying "woken" and no router woken: the commits after it send no NOTIFY, and the
/// poll interval covers them. A router woken by its poll interval says it waits again,
/// even when it finds nothing, so the flag is right again after one poll.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_producer_rolls_back_its_wake_up_the_next_poll_makes_the_router_wait_again() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .poll_interval(Duration::from_millis(500));
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    wait_until_asleep(&daemon).await;
    db.wait_for_router_waiting().await;
    db.client
        .batch_execute(
            "CREATE TABLE enrollment_checks (patient text UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        )
        .await
        .expect("the enrollment flow's own deferred constraint");
    let mut listener = OutboxListener::start(&db).await;

    // The outbox's trigger runs first at the commit (its event was queued first), then
    // the enrollment flow's own check fails and the transaction rolls back.
    let mut producer = db.connect().await;
    let failing = producer.transaction().await.expect("begin");
    failing
        .execute(INSERT, &[&ENROLLMENT, &enrollment_event("rolled-back-1")])
        .await
        .expect("insert");
    failing
        .batch_execute("INSERT INTO enrollment_checks VALUES ('twice'), ('twice')")
        .await
        .expect("the duplicate is checked at commit");
    let error = failing.commit().await.expect_err("the commit fails");
    assert_eq!(error.code(), Some(&SqlState::UNIQUE_VIOLATION), "{error}");
    assert_eq!(
        listener.count_heard().await,
        0,
        "a rolled-back NOTIFY is not sent"
    );

    db.wait_for_router_waiting().await;
    let id = db
        .insert_event(ENROLLMENT, &enrollment_event("after-1"))
        .await;
    assert_eq!(
        listener.count_heard().await,
        1,
        "the next commit wakes the router"
    );
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

/// Every advisory lock key the dispatcher has used: the wake-up's up to migration 0007
/// ("helpwake", which each producer's commit took shared), the routing lock up to
/// migration 0013 ("helprout", now the routing position's row) and the migrations'
/// ("helpmigr", `store::schema`).
const DISPATCHER_ADVISORY_KEYS: [i64; 3] = [
    0x6865_6c70_7761_6b65,
    0x6865_6c70_726f_7574,
    0x6865_6c70_6d69_6772,
];

/// A login role with no right on the dispatcher's schema; returns a connection as it.
async fn a_stranger(db: &TestDb) -> tokio_postgres::Client {
    let role = format!("stranger_{}", uuid::Uuid::new_v4().simple());
    db.client
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .expect("create the stranger's role");
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let (stranger, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect as the stranger");
    tokio::spawn(connection);
    stranger
}

/// An enrollment flow that gives up on any lock it waits for over 100 ms.
async fn an_impatient_producer(db: &TestDb) -> tokio_postgres::Client {
    let producer = db.connect().await;
    producer
        .batch_execute("SET lock_timeout = '100ms'")
        .await
        .expect("set the producer's lock_timeout");
    producer
}

/// Any role that may connect could take the old wake-up lock, an advisory key, and hold
/// up every enrollment's commit. The wake-up's lock is now the dispatcher's own: a
/// stranger holding every advisory key the dispatcher ever used, who cannot lock any of
/// its tables, delays no enrollment, whether the router waits or is busy.
#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_holding_every_lock_it_can_take_does_not_hold_up_an_enrollment() {
    let (_partner, _config, db, _daemon) = a_daemon_asleep().await;
    let stranger = a_stranger(&db).await;
    for key in DISPATCHER_ADVISORY_KEYS {
        let (high, low) = ((key >> 32) as i32, key as i32);
        stranger
            .batch_execute(&format!(
                "SELECT pg_advisory_lock({key}); SELECT pg_advisory_lock({high}, {low});"
            ))
            .await
            .expect("any role may take an advisory lock");
    }
    let relations: Vec<String> = stranger
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'dispatcher' AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await
        .expect("the catalog is readable by all")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(relations.len() > 3, "{relations:?}");
    for relation in relations {
        let locked = stranger
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {relation} IN ACCESS SHARE MODE NOWAIT;"
            ))
            .await;
        let error = locked.expect_err("the stranger may not lock the dispatcher's tables");
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{relation}: {error}"
        );
        stranger.batch_execute("ROLLBACK").await.expect("rollback");
    }

    let producer = an_impatient_producer(&db).await;
    assert!(db.router_waiting().await);
    producer
        .execute(INSERT, &[&ENROLLMENT, &enrollment_event("beside-1")])
        .await
        .expect("an enrollment commits while the router waits");
    db.mark_router_busy().await;
    producer
        .execute(INSERT, &[&ENROLLMENT, &enrollment_event("beside-2")])
        .await
        .expect("an enrollment commits while the router is busy");
}

/// The router's sleep check ran inside its exclusive wake-up lock and wrote WAL under a
/// transaction id, so it waited for the WAL flush and for a synchronous replica while
/// every producer's commit queued behind it. Here the cluster has a synchronous replica
/// that answers each commit after [`REPLICA_DELAY`]; the enrollment flow, which gives up
/// on a lock after 100 ms, commits 5,000 events in bursts, and between bursts waits for
/// the daemon to go to sleep, so it sleeps and wakes throughout. Not one commit fails.
#[tokio::test(flavor = "multi_thread")]
async fn an_impatient_producer_commits_every_time_beside_a_router_that_sleeps_and_wakes() {
    const BURSTS: usize = 10;
    const EVENTS_EACH: usize = 500;
    let cluster = Cluster::new();
    let partner = TestPartner::accepting("acme").await;
    let config = config_polling_hourly(&partner);
    let db = TestDb::migrated_on(&config, &cluster.admin_url()).await;
    let daemon = Daemon::start(&config, &db);
    wait_until_asleep(&daemon).await;
    let replica = a_synchronous_replica_answering_after(&cluster, REPLICA_DELAY).await;

    let producer = an_impatient_producer(&db).await;
    // The enrollment flow's own commits wait for no WAL flush and no replica here (those
    // waits are not on a lock): that keeps 5,000 of them to seconds.
    producer
        .batch_execute("SET synchronous_commit = off")
        .await
        .expect("commit asynchronously");
    let mut failures = Vec::new();
    for burst in 0..BURSTS {
        let asleep = daemon.log_text().matches(ASLEEP).count();
        for event in 0..EVENTS_EACH {
            let body = enrollment_event(&format!("impatient-{burst}-{event}"));
            if let Err(error) = producer.execute(INSERT, &[&ENROLLMENT, &body]).await {
                failures.push(error.as_db_error().map_or(error.to_string(), |e| {
                    format!("{}: {}", e.code().code(), e.message())
                }));
            }
        }
        daemon.wait_for_log(ASLEEP, asleep + 1).await;
    }
    replica.abort();

    assert_eq!(
        failures.len(),
        0,
        "{} commits failed; the first: {:?}",
        failures.len(),
        failures.first()
    );
    let events = i64::try_from(BURSTS * EVENTS_EACH).expect("count");
    db.wait_for_count(
        "SELECT count(*) - dispatcher.unrouted_events() FROM dispatcher.outbox",
        events,
    )
    .await;
}

/// What the router logs as it goes to sleep on NOTIFY.
const ASLEEP: &str = "waiting for new events";

/// How long the synchronous replica of [`a_synchronous_replica_answering_after`] takes
/// to answer: well over the impatient producer's lock_timeout.
const REPLICA_DELAY: Duration = Duration::from_millis(300);

/// Makes `cluster` wait for a synchronous replica at every commit that wrote WAL under a
/// transaction id (with `synchronous_commit` on), and plays that replica: the standby it
/// waits for never connects, and the returned task ends each wait once it has lasted
/// `delay` (PostgreSQL then completes the commit locally, with a warning), as a replica
/// answering that slowly would.
async fn a_synchronous_replica_answering_after(
    cluster: &Cluster,
    delay: Duration,
) -> tokio::task::JoinHandle<()> {
    let (admin, connection) = tokio_postgres::connect(&cluster.admin_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the cluster");
    tokio::spawn(connection);
    for setting in [
        "ALTER SYSTEM SET synchronous_standby_names = 'a_replica_far_away'",
        "SELECT pg_reload_conf()",
    ] {
        admin
            .batch_execute(setting)
            .await
            .expect("require a synchronous replica");
    }
    let delay = format!("{} milliseconds", delay.as_millis());
    tokio::spawn(async move {
        loop {
            admin
                .execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
                     WHERE wait_event = 'SyncRep'
                       AND state_change < clock_timestamp() - $1::text::interval",
                    &[&delay],
                )
                .await
                .expect("answer for the replica");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// The routing lock (`store/outbox/position.rs`): the routing position's row, held by a
/// daemon while it routes a batch.
const ROUTING_LOCK: &str = "SELECT 1 FROM dispatcher.routing_position FOR UPDATE";

/// A daemon's own look that found nothing held the routing lock until its transaction
/// ended, and the look returned before that end reached the server. Its next look, on
/// another of its pool's connections, could then find the lock taken, take it for another
/// daemon routing, and go back to sleep: the event whose NOTIFY had woken it waited for
/// the poll interval (full suites saw the router woken, looking and asleep again within
/// 0.3 ms, here and in the outage and TLS scenarios). Here nothing the look's connection
/// still has to send can go once the look returns (this test's one thread runs every task
/// of it, and is held while another thread looks), so a lock still held is seen every time.
#[tokio::test(flavor = "current_thread")]
async fn a_look_that_found_nothing_has_let_go_of_the_routing_lock_when_it_returns() {
    let partner = TestPartner::accepting("acme").await;
    let config = config_polling_hourly(&partner);
    let db = TestDb::migrated(&config).await;
    let mut router = Router::of(&config, &db).await;

    let round = router.route_and_claim().await;

    assert_eq!(round.routed, Routed::Events(0));
    assert!(
        routing_lock_is_free(&db),
        "the next look would find the routing lock taken by the look that just returned"
    );
}

/// Whether another look, now, would find the routing lock free: from a thread, runtime
/// and connection of its own, so that the calling thread's tasks stay held meanwhile.
fn routing_lock_is_free(db: &TestDb) -> bool {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    let mut client = db.connect().await;
                    let look = client.transaction().await.expect("begin");
                    let rows = look
                        .query(&format!("{ROUTING_LOCK} SKIP LOCKED"), &[])
                        .await
                        .expect("the routing lock");
                    !rows.is_empty()
                })
            })
            .join()
            .expect("the other look")
    })
}

/// Two daemons: one has said it waits and is on its last look before sleeping when the
/// other holds the routing lock. An event committed just before, by a producer that saw
/// the flag busy, sent no NOTIFY; the other daemon's look may have been taken before it.
/// The last look must still be made, once the routing lock is free, or the event waits
/// for the poll interval (an hour here). The test plays the other daemon and the producer,
/// and holds the sleeping daemon at each step with locks, so the window is hit every time.
#[tokio::test(flavor = "multi_thread")]
async fn the_last_look_before_sleeping_is_made_even_when_another_daemon_routes_at_that_moment() {
    let (_partner, _config, db, daemon) = a_daemon_asleep().await;

    // As the other daemon, mid-burst, would: producers stop notifying.
    db.mark_router_busy().await;
    // A producer reads "busy" and holds the wake-up until it commits.
    let mut producer = db.connect().await;
    let late = producer.transaction().await.expect("begin");
    late.batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
        .await
        .expect("immediate triggers");
    let late_id: i64 = late
        .query_one(INSERT, &[&ENROLLMENT, &enrollment_event("window-1")])
        .await
        .expect("insert")
        .get(0);
    // Another event and a wake-up by hand: the daemon routes it, then finds the outbox
    // empty, says it waits, and looks again and again while the producer is mid-commit.
    let early_id = db
        .insert_event(ENROLLMENT, &enrollment_event("window-0"))
        .await;
    db.client
        .batch_execute("NOTIFY dispatcher_outbox")
        .await
        .expect("notify");
    wait_until_delivered(&db, early_id).await;
    db.wait_for_router_waiting().await;

    // Hold the daemon's next sleep check at its start: its setval waits for this lock.
    // Its look before it has found nothing, as the producer has not committed yet.
    let mut holder = db.connect().await;
    let hold = holder.transaction().await.expect("begin");
    hold.batch_execute("ALTER SEQUENCE dispatcher.router_waiting NO CYCLE")
        .await
        .expect("hold the flag");
    db.wait_for_count(
        "SELECT count(*) FROM pg_locks
         WHERE relation = 'dispatcher.router_waiting'::regclass AND NOT granted",
        1,
    )
    .await;
    late.commit().await.expect("commit");
    // The other daemon takes the routing lock; then the sleep check goes on, says yes
    // (the producer has committed), and the last look finds the routing lock taken.
    let mut other_daemon = db.connect().await;
    let routing = other_daemon.transaction().await.expect("begin");
    routing
        .batch_execute(ROUTING_LOCK)
        .await
        .expect("take the routing lock");
    hold.rollback().await.expect("release the flag");
    daemon.wait_for_log(LOCKED_OUT_OF_THE_LAST_LOOK, 1).await;

    // The other daemon's batch ends: it found nothing (its look was taken too early).
    routing.rollback().await.expect("release the routing lock");

    wait_until_delivered(&db, late_id).await;
}

/// What the router logs when another daemon holds the routing lock at its last look.
const LOCKED_OUT_OF_THE_LAST_LOOK: &str = "another daemon holds the routing lock at the last look";

/// A cluster of the test's own that allows prepared transactions (PostgreSQL's default
/// is 0, which refuses every PREPARE TRANSACTION before the dispatcher has a say).
async fn a_cluster_allowing_two_phase_commit() -> Cluster {
    let cluster = Cluster::new();
    let (admin, connection) = tokio_postgres::connect(&cluster.admin_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the cluster");
    let connected = tokio::spawn(connection);
    admin
        .batch_execute("ALTER SYSTEM SET max_prepared_transactions = 4")
        .await
        .expect("allow prepared transactions");
    drop(admin);
    let _ = connected.await;
    cluster.stop_immediately();
    cluster.start();
    cluster
}

/// PostgreSQL's refusal of a PREPARE TRANSACTION that queued a NOTIFY, LISTEN or
/// UNLISTEN (SQLSTATE 0A000, feature not supported).
const REFUSED_PREPARE: &str =
    "cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY";

/// An enrollment flow using two-phase commit (PREPARE TRANSACTION) is refused, with the
/// same error whether the router waits or is busy, and whether its trigger runs at the
/// insert or at the PREPARE: nothing is prepared and nothing inserted. (It used to fail
/// only while the router waited, on the NOTIFY, and be prepared while it was busy.)
#[tokio::test(flavor = "multi_thread")]
async fn two_phase_commit_is_refused_whether_the_router_waits_or_is_busy() {
    let cluster = a_cluster_allowing_two_phase_commit().await;
    let partner = TestPartner::accepting("acme").await;
    let config = config_polling_hourly(&partner);
    let db = TestDb::migrated_on(&config, &cluster.admin_url()).await;
    let daemon = Daemon::start(&config, &db);
    wait_until_asleep(&daemon).await;

    for router in ["waiting", "busy"] {
        for trigger in ["at the PREPARE", "at the insert"] {
            // A refused PREPARE that found the router waiting has marked it woken (and
            // sent nothing): each case sets the state it names.
            match router {
                "waiting" => db.mark_router_waiting().await,
                _ => db.mark_router_busy().await,
            }
            assert_eq!(db.router_waiting().await, router == "waiting");
            let producer = db.connect().await;
            let immediate = match trigger {
                "at the insert" => "SET CONSTRAINTS ALL IMMEDIATE;",
                _ => "",
            };
            producer
                .batch_execute(&format!("BEGIN; {immediate}"))
                .await
                .expect("begin");
            producer
                .execute(INSERT, &[&ENROLLMENT, &enrollment_event("two-phase-1")])
                .await
                .expect("insert");
            // A name of its own each time: PostgreSQL sends the previous refusal before
            // its backend has released the name, so a reused one can be "in use".
            let gid = format!("enrollment-{router}-{}", trigger.replace(' ', "-"));
            let prepared = producer
                .batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
                .await;
            let error = prepared.expect_err(&format!(
                "PREPARE TRANSACTION is refused while the router is {router}, trigger {trigger}"
            ));
            let refused = error.as_db_error().map(|e| (e.code().clone(), e.message()));
            assert_eq!(
                refused,
                Some((SqlState::FEATURE_NOT_SUPPORTED, REFUSED_PREPARE)),
                "router {router}, trigger {trigger}: {error:?}"
            );
        }
    }
    assert_eq!(db.count("SELECT count(*) FROM pg_prepared_xacts").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM dispatcher.outbox").await, 0);
}

/// The flag is not crash-safe, on purpose (it writes no WAL): after a crash it reads
/// "waiting", so producers notify until a router says it is busy. A flag that came back
/// "busy" would leave a sleeping router unwoken.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_crash_the_flag_says_the_router_waits() {
    let cluster = Cluster::new();
    let partner = TestPartner::accepting("acme").await;
    let config = config_polling_hourly(&partner);
    let mut db = TestDb::migrated_on(&config, &cluster.admin_url()).await;
    db.mark_router_busy().await;
    assert!(!db.router_waiting().await);

    cluster.stop_immediately();
    cluster.start();
    db.reconnect().await;

    assert!(db.router_waiting().await, "the flag came back busy");
}
