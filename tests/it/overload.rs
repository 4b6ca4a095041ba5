//! Overload: the outbox grows far faster than the partner takes events (it refuses the
//! first thousands with 503). The daemon's memory stays bounded whatever the backlog,
//! each claim walks an index rather than the backlog, and once the partner recovers the
//! backlog drains until every event is delivered. A partner held back (its circuit open)
//! with a long backlog costs the claims for the other partners nothing, and a claim reads
//! the batch it takes, never the backlog behind it or the ended deliveries kept for
//! support.
//!
//! 30,000 events by default (well under a minute in CI); `DISPATCHER_SOAK=1` makes it
//! 1,000,000 (run by hand: it takes many minutes). Both print what they measured (see
//! `--nocapture`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use dispatcher::config::Config;
use dispatcher::delivery::state::DeliveryState;
use dispatcher::store::db;
use dispatcher::store::queue::{self, PartnerRoom};
use dispatcher::store::support;
use dispatcher::store::support::search::{self, Reading};
use serde_json::Value;

/// Generous: the daemon idles at ~20 MiB. Memory that grew with the backlog would pass
/// it long before a million events.
const MEMORY_BOUND: u64 = 150 * MIB;

fn soak() -> bool {
    std::env::var("DISPATCHER_SOAK").is_ok_and(|value| value == "1")
}

/// The plan of the claim as the daemon would run it now; fails if it reads the backlog
/// tables whole. Returns the plan.
async fn claim_plan(client: &mut deadpool_postgres::Client, when: &str) -> String {
    let plan = queue::explain_claim_due(client, 100, Duration::from_secs(60))
        .await
        .expect("explain the claim")
        .join("\n");
    eprintln!("claim plan {when}:\n{plan}");
    for table in ["deliveries", "outbox"] {
        assert!(
            !plan.contains(&format!("Seq Scan on {table}")),
            "{when}: the claim reads all of {table}:\n{plan}"
        );
    }
    assert!(
        plan.contains("Index Scan using deliveries_pending")
            || plan.contains("Bitmap Index Scan on deliveries_pending"),
        "{when}: the claim does not find due deliveries by their index:\n{plan}"
    );
    plan
}

/// The part of a claim's plan that reads a partner's due deliveries: its index scan on
/// `deliveries_pending` by partner and everything under it. Fails unless a `Limit` stops
/// it.
fn candidates_plan(plan: &str) -> String {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = plan.lines().collect();
    let Some(at) = lines.iter().enumerate().position(|(i, line)| {
        line.contains("Index Scan using deliveries_pending on deliveries")
            && lines
                .get(i + 1)
                .is_some_and(|next| next.contains("Index Cond: ((partner ="))
    }) else {
        panic!("no read of a partner's due deliveries in the claim's plan:\n{plan}")
    };
    assert!(
        at > 0 && lines[at - 1].trim_start().starts_with("->  Limit"),
        "a partner's due deliveries are read without a limit:\n{plan}"
    );
    let head = lines[at];
    std::iter::once(head)
        .chain(
            lines[at + 1..]
                .iter()
                .copied()
                .take_while(|line| indent(line) > indent(head)),
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// A claim of 100 against the backlog, in a transaction rolled back so the daemon's work
/// is untouched. How long it took, for the record (not asserted: speed is for benchmarks).
async fn timed_claim(client: &mut deadpool_postgres::Client) -> (usize, Duration) {
    let mut transaction = client.transaction().await.expect("begin");
    let started = Instant::now();
    let claimed = queue::claim_due(&mut transaction, 100, Duration::from_secs(60), &[])
        .await
        .expect("claim");
    let took = started.elapsed();
    transaction.rollback().await.expect("roll back");
    (claimed.deliveries.len(), took)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_far_larger_than_the_partner_takes_drains_in_bounded_memory() {
    let backlog: i64 = if soak() { 1_000_000 } else { 30_000 };
    let drain_deadline = Duration::from_secs(if soak() { 3600 } else { 300 });

    // The partner is down (503) until the whole backlog is routed, then recovers.
    let recovered = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let partner = TestPartner::counting("acme", {
        let (recovered, refused) = (recovered.clone(), refused.clone());
        move |request| {
            if recovered.load(Ordering::SeqCst) {
                Reply::accepted(request)
            } else {
                refused.fetch_add(1, Ordering::SeqCst);
                Reply::status(503, "")
            }
        }
    })
    .await;
    // The shipped defaults for concurrency, batches, lease and timeouts; quick retries
    // that never run out, so every event can end delivered. The circuit opens while the
    // partner is down; a short cool-down lets its probe find the recovery soon.
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .circuit_breaker_cool_down("acme", Duration::from_millis(500))
        .dispatch(Dispatch::default())
        .poll_interval(Duration::from_millis(200))
        .max_attempts(100)
        .retry_delays(Duration::from_millis(100), Duration::from_secs(1));
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let mut client = daemon_connection(&config, &db).await;

    // What a burst of enrollments would leave: one statement, `backlog` realistic events.
    let started = Instant::now();
    let template: Value = enrollment_event("template");
    db.client
        .execute(
            "INSERT INTO dispatcher.outbox (event_name, event)
             SELECT $1, jsonb_set($2::jsonb, '{patient,id}', to_jsonb('overload-' || g))
             FROM generate_series(1, $3::int8) AS g",
            &[&ENROLLMENT, &template, &backlog],
        )
        .await
        .expect("insert the backlog");
    let inserted_in = started.elapsed();

    claim_plan(&mut client, "as the backlog is routed").await;
    db.wait_for_count_within("SELECT dispatcher.unrouted_events()", 0, drain_deadline)
        .await;
    let routed_in = started.elapsed();
    let pending = db.count_deliveries(&Deliveries::all().unfinished()).await;
    // A claim reads the due deliveries in order and stops at its limit: no sort or hash
    // of the whole backlog, even right after a burst, before autovacuum has looked.
    let plan = claim_plan(
        &mut client,
        &format!("with {pending} deliveries unfinished"),
    )
    .await;
    // Only the read of each partner's due deliveries walks the backlog, stopped by its
    // limit; what it feeds (the earliest of at most 100 per partner) may sort.
    let choice = candidates_plan(&plan);
    for reads_everything in ["Sort", "Hash"] {
        assert!(
            !choice.contains(reads_everything),
            "the claim reads the whole backlog ({reads_everything}):\n{plan}"
        );
    }
    let (claimed, claim_took) = timed_claim(&mut client).await;
    // The daemon's circuit probe may be taking one of the first 100 at that moment (a
    // claim reads as many of a partner's as it has room for, and skips a locked one).
    assert!(
        (99..=100).contains(&claimed),
        "a claim takes its whole batch from the backlog: it took {claimed}"
    );

    recovered.store(true, Ordering::SeqCst);
    db.wait_for_deliveries_within(
        &Deliveries::all().in_state("delivered"),
        backlog,
        drain_deadline,
    )
    .await;
    let drained_in = started.elapsed();

    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.deliveries WHERE state <> 'delivered'")
            .await,
        0
    );
    let requests = partner.request_count();
    let refused = refused.load(Ordering::SeqCst);
    assert!(refused > 0, "the partner was never asked while it was down");
    assert_eq!(
        requests,
        backlog as usize + refused,
        "every event was accepted once, besides the requests refused while the partner was down"
    );
    let peak = daemon.peak_memory();
    eprintln!(
        "overload: {backlog} events inserted in {inserted_in:.1?}, routed by {routed_in:.1?} \
         ({pending} unfinished then; a claim of 100 took {claim_took:.1?}), all delivered by \
         {drained_in:.1?} \
         ({:.0} events/s overall); {requests} requests; daemon peak RSS {} MiB",
        backlog as f64 / drained_in.as_secs_f64(),
        peak / MIB
    );
    assert!(
        peak < MEMORY_BOUND,
        "the daemon's peak memory reached {} MiB",
        peak / MIB
    );
}

/// A claim of 100 with `room`, in a transaction rolled back so nothing changes, and how
/// many rows and index entries of the deliveries it read.
async fn claim_read(
    db: &TestDb,
    client: &mut deadpool_postgres::Client,
    room: &[PartnerRoom],
) -> (queue::Claim, i64) {
    let before = db.delivery_entries_read().await;
    let mut transaction = client.transaction().await.expect("begin");
    let claim = queue::claim_due(&mut transaction, 100, Duration::from_secs(60), room)
        .await
        .expect("claim");
    transaction.rollback().await.expect("roll back");
    (claim, db.delivery_entries_read_since(client, before).await)
}

/// A pooled connection of the daemon's own kind (its session settings and statement
/// cache), for its claim's SQL.
async fn daemon_connection(config: &TestConfig, db: &TestDb) -> deadpool_postgres::Client {
    let loaded = Config::parse(&config.text(db), "overload", None, |_| None).expect("config");
    db::daemon_pool(&loaded.database)
        .expect("pool")
        .get()
        .await
        .expect("a pooled connection")
}

fn room(partners: &[(&str, usize)]) -> Vec<PartnerRoom> {
    partners
        .iter()
        .map(|(partner, free)| PartnerRoom {
            partner: partner.to_string(),
            free: *free,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_held_with_a_long_backlog_is_not_walked_by_the_claims_for_the_others() {
    // "held"'s circuit opened an hour ago: its deliveries have been due since, before
    // anything the healthy partner has.
    const HELD_BACKLOG: i64 = 20_000;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.seed_due_deliveries(&[
        ("held", HELD_BACKLOG, Duration::from_secs(3600)),
        ("acme", 100, Duration::ZERO),
    ])
    .await;
    let mut client = daemon_connection(&config, &db).await;
    let room = room(&[("held", 0), ("acme", 100)]);

    let (claim, read) = claim_read(&db, &mut client, &room).await;

    assert_eq!(claim.deliveries.len(), 100, "the healthy partner's batch");
    assert!(
        claim.deliveries.iter().all(|d| d.partner == "acme"),
        "nothing of the held partner is claimed"
    );
    assert!(
        read < HELD_BACKLOG / 10,
        "a claim of 100 read {read} rows and index entries of the deliveries: it walked \
         the held partner's backlog of {HELD_BACKLOG}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_reads_the_batch_it_takes_not_the_backlog_or_the_history() {
    // A month of history, and the backlog of an outage that just ended, all due: each
    // claim reads the batch it takes, not the history, however long support keeps it.
    const HISTORY: i64 = 30_000;
    const BACKLOG: i64 = 30_000;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.seed_ended_deliveries("acme", HISTORY).await;
    db.seed_due_deliveries(&[("acme", BACKLOG, Duration::ZERO)])
        .await;
    let mut client = daemon_connection(&config, &db).await;
    claim_plan(&mut client, "beside a month of history").await;

    let (claim, read) = claim_read(&db, &mut client, &[]).await;

    assert_eq!(claim.deliveries.len(), 100, "a batch of the backlog");
    assert!(
        read < HISTORY / 10,
        "a claim of 100 read {read} rows and index entries of the deliveries: it walked \
         the backlog ({BACKLOG}) or the history ({HISTORY})"
    );
}

/// The rescuer's tick, as `daemon/rescuer.rs` makes it: the leases that ran out returned
/// to the queue, then a look at when the next one runs out.
async fn rescuer_tick(router: &mut Router) -> Vec<queue::ExpiredLease> {
    let rescued = queue::rescue_expired(&mut router.client, Duration::from_secs(60), 5, 100)
        .await
        .expect("rescue");
    queue::until_next_lease_end(&router.client)
        .await
        .expect("the next lease's end");
    rescued
}

/// After a day of sending, before autovacuum came by, and beside a held partner's backlog,
/// routing an event, claiming a batch, recording a result and the rescuer's tick each read
/// what they take, whenever the daemon made its plans: on a new database, or beside the
/// day's first few hundred deliveries. Generic plans made while the table was small, and
/// kept as it grew (a stream never triggers the router's ANALYZE, and a backlog smaller
/// than a tenth of the history never triggers autovacuum's), chose a partial index by its
/// stale estimate of one row and read it whole at each call:
/// - routing's look for partners with deliveries due read every due delivery, the held
///   partner's backlog included, and its look for a patient's waiting deliveries every
///   waiting one;
/// - the claim's lock of the rows it chose walked the whole due backlog in due order;
/// - the record's lock found the rows to lock by joins (half of PostgreSQL's time in the
///   `stream-1000` bench), then the patients of the results on the patient index;
/// - the record's write read the in-flight index, with the dead entry every delivery sent
///   since the last vacuum left there;
/// - the rescuer's look for expired leases and for the next lease's end went through the
///   order's index, every pending delivery, at every tick.
#[tokio::test(flavor = "multi_thread")]
async fn routing_claiming_and_recording_after_a_day_of_sending_read_what_they_take() {
    const SENT: i64 = 30_000;
    const BACKLOG: i64 = 30_000;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.client
        .batch_execute("ALTER TABLE dispatcher.deliveries SET (autovacuum_enabled = off)")
        .await
        .expect("no vacuum until the test ends");
    // A daemon's connection per moment its plans were made: each routes, claims and
    // records once then, and keeps the plans.
    let mut routers = Vec::new();
    for (moment, already_sent) in [("new", 0), ("morning", 10), ("noon", 300)] {
        if already_sent > 0 {
            db.seed_ended_deliveries("acme", already_sent).await;
        }
        let mut router = Router::of(&config, &db).await;
        router
            .client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .await
            .expect("generic plans");
        db.insert_due_deliveries(&[("held", 1, Duration::ZERO)])
            .await;
        let held = router.claim(&["held"]).await;
        router.record(&held[0], DeliveryState::Delivered).await;
        rescuer_tick(&mut router).await;
        db.insert_event(ENROLLMENT, &enrollment_event(moment)).await;
        let first = router.route_and_claim().await.claimed;
        router.record(&first[0], DeliveryState::Delivered).await;
        routers.push((moment, router));
    }
    // The rest of the day: each delivery claimed, then its result recorded.
    db.insert_ended_deliveries("acme", SENT).await;
    db.client
        .execute(
            "UPDATE dispatcher.deliveries SET state = 'pending', ended_at = NULL,
                 due_at = now() - interval '1 minute', claim_token = gen_random_uuid(),
                 leased_until = now() + interval '1 minute'
             WHERE patient_id LIKE 'past-%'",
            &[],
        )
        .await
        .expect("the day's claims");
    db.client
        .execute(
            "UPDATE dispatcher.deliveries SET state = 'delivered', due_at = NULL,
                 ended_at = now(), claim_token = NULL, leased_until = NULL
             WHERE patient_id LIKE 'past-%'",
            &[],
        )
        .await
        .expect("the day's results");
    // And the held partner's outage: each patient's event due, and the next one waiting
    // behind it.
    db.insert_due_deliveries(&[("held", BACKLOG, Duration::from_secs(3600))])
        .await;
    db.client
        .execute(
            "INSERT INTO dispatcher.deliveries
                 (id, event_id, partner, event_name, patient_id, state)
             SELECT gen_random_uuid(), event_id + 1000000000, partner, event_name, patient_id,
                    'waiting'
             FROM dispatcher.deliveries WHERE partner = 'held' AND state = 'pending'",
            &[],
        )
        .await
        .expect("the held partner's waiting deliveries");
    // What those statements read is reported now, not during a step below.
    db.client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush the statistics");

    // The day's first look at the queue passes, once, the dead entry each delivery sent
    // since the last vacuum left in `deliveries_pending` (the first one's due order is
    // the day's), and marks them for every look after it; what each step reads after that
    // is measured.
    if let Some((_, router)) = routers.first_mut() {
        db.insert_event(ENROLLMENT, &enrollment_event("the day's first look"))
            .await;
        let first = router.route_and_claim().await.claimed;
        router.record(&first[0], DeliveryState::Delivered).await;
    }
    for (moment, mut router) in routers {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("{moment} again")))
            .await;
        let before = db.delivery_entries_read().await;
        let today = router.route_and_claim().await.claimed;
        let routing = db.delivery_entries_read_since(&router.client, before).await;
        let before = db.delivery_entries_read().await;
        let batch = router.claim(&["held"]).await;
        let claim = db.delivery_entries_read_since(&router.client, before).await;
        assert_eq!((today.len(), batch.len()), (1, 100));
        let before = db.delivery_entries_read().await;
        router.record(&today[0], DeliveryState::Delivered).await;
        let record = db.delivery_entries_read_since(&router.client, before).await;
        // The rescuer's tick, once the batch's lease has run out.
        db.client
            .batch_execute(&format!(
                "UPDATE dispatcher.deliveries SET leased_until = now() - interval '1 second'
                 WHERE claim_token = '{token}';
                 UPDATE dispatcher.leases SET lease_end = now() - interval '1 second'
                 WHERE claim_token = '{token}'",
                token = batch[0].claim_token
            ))
            .await
            .expect("the batch's lease runs out");
        let before = db.delivery_entries_read().await;
        let rescued = rescuer_tick(&mut router).await;
        let rescue = db.delivery_entries_read_since(&router.client, before).await;
        assert_eq!(rescued.len(), 100, "the batch whose lease ran out");
        assert!(
            [routing, claim, record, rescue]
                .iter()
                .all(|read| *read < SENT / 10),
            "with plans made at {moment}, routing one event read {routing} rows and index \
             entries of the deliveries, claiming 100 read {claim}, recording one result \
             {record} and the rescuer's tick {rescue}: the day's {SENT} or the backlog of \
             {BACKLOG} were walked"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_writes_no_index_entry() {
    // Ten new deliveries, on a page with room for their claimed versions: the claim
    // changes no indexed column, so each is updated in place (HOT), and none of the
    // table's indexes gets an entry. Before, the claim wrote one in five of them.
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    for n in 0..10 {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("patient-{n}")))
            .await;
    }
    let mut router = Router::of(&config, &db).await;
    router.route().await;
    let (updates, hot) = db.delivery_updates(&router.client).await;

    let claimed = router.claim(&[]).await;

    let (updates_after, hot_after) = db.delivery_updates(&router.client).await;
    assert_eq!(claimed.len(), 10);
    assert_eq!(
        (updates_after - updates, hot_after - hot),
        (10, 10),
        "(updates, of them HOT) of the claim of 10"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_locks_only_the_deliveries_it_takes() {
    // Three partners with work due and room for a whole batch each: one claim of 100
    // takes the earliest 100 of the 300, and the 200 others stay free for the next claim
    // (or another daemon's) while this one is still open.
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.seed_due_deliveries(&[
        ("acme", 100, Duration::from_secs(30)),
        ("globex", 100, Duration::from_secs(20)),
        ("initech", 100, Duration::from_secs(10)),
    ])
    .await;
    let mut client = daemon_connection(&config, &db).await;
    let room = room(&[("acme", 100), ("globex", 100), ("initech", 100)]);

    let mut transaction = client.transaction().await.expect("begin");
    let claim = queue::claim_due(&mut transaction, 100, Duration::from_secs(60), &room)
        .await
        .expect("claim");
    // While the claim's transaction is open: what another daemon could still take.
    let free = db
        .count(
            "SELECT count(*) FROM (
                 SELECT 1 FROM dispatcher.deliveries WHERE state = 'pending'
                 FOR UPDATE SKIP LOCKED) AS lockable",
        )
        .await;
    transaction.rollback().await.expect("roll back");

    assert_eq!(claim.deliveries.len(), 100);
    assert!(
        claim.deliveries.iter().all(|d| d.partner == "acme"),
        "the earliest due are taken first"
    );
    assert_eq!(
        free,
        200,
        "a claim of 100 held locks on {} deliveries it did not take",
        200 - free
    );
}

/// Support opens a delivery while a table its page reads is locked (a migration, a
/// stray session holding a lock): each of support's statements waits for its
/// `statement_timeout`, holding its connection. However many support asks for at once,
/// the daemon keeps its own connections: events committed meanwhile are all delivered,
/// and no lease runs out for want of a connection to record a result.
#[tokio::test(flavor = "multi_thread")]
async fn support_stuck_on_a_lock_cannot_starve_the_daemon() {
    const EVENTS: i64 = 300;
    // Slow enough that claims are in flight when support's requests pile up.
    let partner = TestPartner::start("acme", |request| {
        Reply::accepted(request).after(Duration::from_millis(200))
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let admin = Arc::new(AdminClient::of(&daemon, None).await);
    db.insert_event(ENROLLMENT, &enrollment_event("looked-at"))
        .await;
    db.wait_for_state("delivered", 1).await;
    let looked_at = db.ids_in_state("delivered").await.remove(0);
    let detail = format!("/api/deliveries/{looked_at}");

    // The test's own session locks what a delivery's page reads and the daemon does not.
    let mut locker = db.connect().await;
    let lock = locker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE dispatcher.support_actions IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock support's table");
    // Support keeps 16 requests open, each asked again as soon as it is answered.
    let stop = Arc::new(AtomicBool::new(false));
    let askers: Vec<_> = (0..16)
        .map(|_| {
            let (admin, detail, stop) = (admin.clone(), detail.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    admin.get(&detail).await;
                }
            })
        })
        .collect();
    // Support's statements hold connections, waiting on the lock.
    db.wait_for_count(
        "SELECT least(count(*), 2) FROM pg_locks
         WHERE relation = 'dispatcher.support_actions'::regclass AND NOT granted",
        2,
    )
    .await;

    db.client
        .execute(
            "INSERT INTO dispatcher.outbox (event_name, event)
             SELECT $1, jsonb_set($2::jsonb, '{patient,id}', to_jsonb('busy-day-' || g))
             FROM generate_series(1, $3::int8) AS g",
            &[&ENROLLMENT, &enrollment_event("template"), &EVENTS],
        )
        .await
        .expect("events committed while support waits");
    db.wait_for_deliveries_within(
        &Deliveries::all().in_state("delivered"),
        EVENTS + 1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(db.count_attempts_failed_with("lease_expired").await, 0);

    lock.rollback().await.expect("release the lock");
    stop.store(true, Ordering::SeqCst);
    for asker in askers {
        asker.await.expect("support's requests end");
    }
    let (status, shown) = admin.get(&detail).await;
    assert_eq!(
        status, 200,
        "support reads again once the lock is gone: {shown}"
    );
}

/// Support's search finds each kind of query by an index, never by reading a table
/// whole: a patient id whole or by its first characters, the partner's own id for a
/// patient, a support program, an event, a delivery. Among 20,000 patients' deliveries,
/// each plan is read as PostgreSQL makes it for the search's own statement.
#[tokio::test(flavor = "multi_thread")]
async fn every_search_support_makes_is_found_by_an_index() {
    const PATIENTS: i64 = 20_000;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    // One event a patient, of 2,000 programs, delivered to acme, which answered with its
    // own id for the patient.
    db.client
        .execute(
            "WITH events AS (
                 INSERT INTO dispatcher.outbox (event_name, event, routed_at, xid)
                 SELECT $1, jsonb_set(jsonb_set($2::jsonb, '{patient,id}',
                                                to_jsonb('ha' || md5(g::text))),
                                      '{supportProgramId}', to_jsonb('program-' || g % 2000)),
                        now(), NULL
                 FROM generate_series(1, $3::int8) AS g
                 RETURNING id, event_name, event -> 'patient' ->> 'id' AS patient_id
             ),
             delivered AS (
                 INSERT INTO dispatcher.deliveries
                     (id, event_id, partner, event_name, patient_id, state, ended_at)
                 SELECT gen_random_uuid(), id, 'acme', event_name, patient_id, 'delivered', now()
                 FROM events
             )
             INSERT INTO dispatcher.partner_patients (partner, patient_id, external_id)
             SELECT 'acme', patient_id, 'crm-' || id FROM events",
            &[&ENROLLMENT, &enrollment_event("template"), &PATIENTS],
        )
        .await
        .expect("seed delivered events");
    db.client
        .batch_execute(
            "ANALYZE dispatcher.outbox, dispatcher.deliveries, dispatcher.partner_patients",
        )
        .await
        .expect("analyze");
    let row = db
        .client
        .query_one(
            "SELECT d.id, d.event_id, d.patient_id, p.external_id, o.event ->> 'supportProgramId'
             FROM dispatcher.deliveries d
             JOIN dispatcher.partner_patients p USING (partner, patient_id)
             JOIN dispatcher.outbox o ON o.id = d.event_id
             ORDER BY d.event_id LIMIT 1",
            &[],
        )
        .await
        .expect("a patient to look for");
    let patient: String = row.get(2);
    let client = daemon_connection(&config, &db).await;

    let searches = [
        (Reading::Delivery(row.get(0)), "deliveries_pkey"),
        (
            Reading::Event(row.get(1)),
            "deliveries_event_id_partner_key",
        ),
        (Reading::Patient(patient.clone()), "deliveries_by_patient"),
        (
            Reading::PatientPrefix(patient[..6].to_string()),
            "deliveries_by_patient",
        ),
        (
            Reading::ExternalId(row.get(3)),
            "partner_patients_by_external_id",
        ),
        (
            Reading::SupportProgram(row.get(4)),
            "outbox_by_support_program",
        ),
    ];
    for (reading, index) in searches {
        let plan = search::explain(&client, &reading, 50)
            .await
            .expect("explain the search")
            .join("\n");
        for table in ["deliveries", "outbox", "partner_patients"] {
            assert!(
                !plan.contains(&format!("Seq Scan on {table}")),
                "{reading:?} reads all of {table}:\n{plan}"
            );
        }
        assert!(
            plan.contains(&format!("Index Scan using {index}"))
                || plan.contains(&format!("Index Scan Backward using {index}"))
                || plan.contains(&format!("Index Only Scan using {index}"))
                || plan.contains(&format!("Bitmap Index Scan on {index}")),
            "{reading:?} is not found by {index}:\n{plan}"
        );
        let found = search::find(&client, reading.clone(), 50)
            .await
            .expect("search");
        assert!(
            found
                .deliveries
                .iter()
                .any(|delivery| delivery.patient_id.as_deref() == Some(patient.as_str())),
            "{reading:?} does not find the patient's delivery"
        );
    }
}

/// Support's lists of what is stuck and of what failed, beside a month of delivered
/// deliveries: the stuck by the queue's own indexes (one per state), the failed by
/// `deliveries_ended_by_state`, never by reading the delivered ones, however long
/// support keeps them.
#[tokio::test(flavor = "multi_thread")]
async fn support_lists_what_is_stuck_or_failed_without_reading_what_was_delivered() {
    const HISTORY: i64 = 30_000;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.seed_ended_deliveries("acme", HISTORY).await;
    // The month's first ten gave up, and ten are due now.
    db.client
        .execute(
            "UPDATE dispatcher.deliveries SET state = 'dead'
             WHERE id IN (SELECT id FROM dispatcher.deliveries ORDER BY id LIMIT 10)",
            &[],
        )
        .await
        .expect("ten dead");
    db.seed_due_deliveries(&[("acme", 10, Duration::ZERO)])
        .await;
    // Three of those are on the wire: "pending" lists them too.
    db.client
        .execute(
            "UPDATE dispatcher.deliveries SET claim_token = gen_random_uuid(),
                 leased_until = now() + interval '1 minute'
             WHERE id IN (SELECT id FROM dispatcher.deliveries WHERE state = 'pending' LIMIT 3)",
            &[],
        )
        .await
        .expect("three in flight");
    let client = daemon_connection(&config, &db).await;

    for state in ["pending", "failed"] {
        let selection = support::Selection {
            state: Some(state.to_string()),
            ..support::Selection::default()
        };
        let before = db.delivery_entries_read().await;
        let listed = support::list(&client, &selection, None, 50)
            .await
            .expect("list");
        let read = db.delivery_entries_read_since(&client, before).await;

        assert_eq!(listed.len(), 10, "the {state} ones");
        assert!(
            read < HISTORY / 10,
            "the list of {state} deliveries read {read} rows and index entries: it walked \
             the {HISTORY} delivered ones"
        );
    }
}

/// The overview, beside a month of delivered deliveries: each partner's last day and its
/// queue, and its chart of the day's hours, are counted from what ended in the day and
/// what is unfinished, never by reading the month. It is on every page support opens.
#[tokio::test(flavor = "multi_thread")]
async fn the_overview_of_the_last_day_does_not_read_the_month_before_it() {
    const HISTORY: i64 = 30_000;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.seed_ended_deliveries("acme", HISTORY).await;
    // Today: ten due, and the last ten of the month delivered again (resent) an hour ago.
    db.seed_due_deliveries(&[("acme", 10, Duration::ZERO)])
        .await;
    db.client
        .execute(
            "UPDATE dispatcher.deliveries SET ended_at = now() - interval '1 hour'
             WHERE id IN (SELECT id FROM dispatcher.deliveries
                          WHERE state = 'delivered' ORDER BY id DESC LIMIT 10)",
            &[],
        )
        .await
        .expect("ten delivered today");
    let client = daemon_connection(&config, &db).await;

    let before = db.delivery_entries_read().await;
    let summaries = support::partner_summaries(&client)
        .await
        .expect("the overview");
    let read = db.delivery_entries_read_since(&client, before).await;

    assert!(
        read < HISTORY / 10,
        "the overview read {read} rows and index entries: it walked the month's {HISTORY} \
         deliveries"
    );
    let acme = summaries
        .iter()
        .find(|summary| summary.partner.as_deref() == Some("acme"))
        .expect("acme's summary");
    assert_eq!(
        (acme.delivered, acme.pending),
        (10, 10),
        "delivered in the last day, and due"
    );

    let before = db.delivery_entries_read().await;
    support::chart::last_day(&client).await.expect("the chart");
    let read = db.delivery_entries_read_since(&client, before).await;

    assert!(
        read < HISTORY / 10,
        "the chart read {read} rows and index entries: it walked the month's {HISTORY} \
         deliveries"
    );
}

/// The rescuer's look for waiting deliveries with nothing unfinished ahead of them,
/// beside a month of delivered deliveries and a held partner's backlog: it reads what
/// waits and what is ahead of it, never the month or the backlog.
#[tokio::test(flavor = "multi_thread")]
async fn the_look_for_stranded_waiting_deliveries_does_not_read_the_month() {
    const HISTORY: i64 = 30_000;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.seed_ended_deliveries("acme", HISTORY).await;
    // Ten due, one for each of acme-1 to acme-10; a later event of acme-1 waits behind
    // its due one, and one of a patient with nothing ahead waits for nothing (stranded).
    // And a held partner's backlog, which the look must not walk either.
    db.insert_due_deliveries(&[
        ("acme", 10, Duration::ZERO),
        ("held", HISTORY, Duration::from_secs(3600)),
    ])
    .await;
    db.client
        .execute(
            "WITH events AS (
                 INSERT INTO dispatcher.outbox (event_name, event, routed_at, xid)
                 SELECT $1, jsonb_set($2::jsonb, '{patient,id}', to_jsonb(patient)), now(), NULL
                 FROM unnest(ARRAY['acme-1', 'stranded']) AS patient
                 RETURNING id, event_name, event -> 'patient' ->> 'id' AS patient_id
             )
             INSERT INTO dispatcher.deliveries (id, event_id, partner, event_name, patient_id, state)
             SELECT gen_random_uuid(), id, 'acme', event_name, patient_id, 'waiting' FROM events",
            &[&ENROLLMENT, &enrollment_event("template")],
        )
        .await
        .expect("seed waiting deliveries");
    db.client
        .batch_execute("ANALYZE dispatcher.deliveries")
        .await
        .expect("analyze");
    let mut client = daemon_connection(&config, &db).await;

    let before = db.delivery_entries_read().await;
    let released = queue::release_stranded(&mut client, 100)
        .await
        .expect("release the stranded");
    let read = db.delivery_entries_read_since(&client, before).await;

    assert_eq!(
        db.count(
            "SELECT count(*) FROM dispatcher.deliveries
             WHERE patient_id = 'stranded' AND state = 'pending'"
        )
        .await,
        1,
        "the stranded one is released"
    );
    assert_eq!(released.len(), 1, "only the stranded one: {released:?}");
    assert!(
        read < HISTORY / 10,
        "the look for stranded deliveries read {read} rows and index entries: it walked \
         the month's {HISTORY} deliveries or the backlog of {HISTORY}"
    );
}

/// A month of deliveries to `partner` delivered a second after they were made, `per_day`
/// of them each day from 30 days ago to a day ago, each of an event of its own, with ids
/// as the router makes them (a UUIDv7 of their `created_at`'s millisecond,
/// `delivery/id.rs`); then ANALYZE.
async fn seed_a_month_delivered(db: &TestDb, partner: &str, per_day: i64) {
    db.client
        .execute(
            "WITH events AS (
                 INSERT INTO dispatcher.outbox (event_name, event, routed_at, xid)
                 SELECT $1, jsonb_set($2::jsonb, '{patient,id}', to_jsonb('month-' || g)),
                        now(), NULL
                 FROM generate_series(1, 29 * $4::int8) AS g
                 RETURNING id, event_name, event -> 'patient' ->> 'id' AS patient_id
             ),
             made AS (
                 SELECT events.*,
                        now() - interval '30 days'
                            + (row_number() OVER (ORDER BY id) - 1)
                              * (interval '1 day' / $4::float8) AS made
                 FROM events
             )
             INSERT INTO dispatcher.deliveries
                 (id, event_id, partner, event_name, patient_id, state, attempt_count,
                  created_at, ended_at)
             SELECT (lpad(to_hex(floor(extract(epoch FROM made) * 1000)::int8), 12, '0')
                     || '70008000' || lpad(to_hex(id), 12, '0'))::uuid,
                    id, $3, event_name, patient_id, 'delivered', 1,
                    made, made + interval '1 second'
             FROM made",
            &[
                &ENROLLMENT,
                &enrollment_event("template"),
                &partner,
                &per_day,
            ],
        )
        .await
        .expect("seed a month delivered");
    db.client
        .batch_execute("ANALYZE dispatcher.deliveries")
        .await
        .expect("analyze");
}

/// Support's list of what was delivered, newest first, beside a month of it and a
/// queue: the newest by the primary key (ids are ordered by time), never the month.
#[tokio::test(flavor = "multi_thread")]
async fn support_lists_the_newest_delivered_without_reading_the_month() {
    const PER_DAY: i64 = 1_000;
    const HISTORY: i64 = 29 * PER_DAY;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    seed_a_month_delivered(&db, "acme", PER_DAY).await;
    db.seed_due_deliveries(&[("acme", 10, Duration::ZERO)])
        .await;
    let newest: Vec<uuid::Uuid> = db
        .client
        .query(
            "SELECT id FROM dispatcher.deliveries WHERE state = 'delivered'
             ORDER BY created_at DESC LIMIT 50",
            &[],
        )
        .await
        .expect("the newest delivered")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let client = support_connection(&config, &db).await;
    let selection = support::Selection {
        state: Some("delivered".to_string()),
        ..support::Selection::default()
    };

    let before = db.delivery_entries_read().await;
    let listed = support::list(&client, &selection, None, 50)
        .await
        .expect("list");
    let read = db.delivery_entries_read_since(&client, before).await;

    let ids: Vec<uuid::Uuid> = listed.iter().map(|delivery| delivery.id).collect();
    assert_eq!(ids, newest, "the 50 delivered last, newest first");
    assert!(
        read < HISTORY / 10,
        "the list of delivered deliveries read {read} rows and index entries: it walked \
         the month's {HISTORY}"
    );
}

/// Support's time window of delivered deliveries a week ago (`deliveries list --state
/// delivered --since ... --until ...`, the API's and the page's list, the bulk resend's
/// preview), beside a month of them and a queue: the window's, exactly, read by the range
/// of their ids (migration 0023: no other index holds them), never the month. One in ten
/// has an id an hour ahead of its `created_at`, and one in ten an hour behind, as daemons
/// whose clocks were off made them before 0023: those in the half-hour window, whose ids
/// are outside its range, are found; those beside it, whose ids fall in its range, are
/// not.
#[tokio::test(flavor = "multi_thread")]
async fn support_reads_a_window_of_delivered_a_week_ago_without_reading_the_month() {
    const PER_DAY: i64 = 1_000;
    const HISTORY: i64 = 29 * PER_DAY;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    seed_a_month_delivered(&db, "acme", PER_DAY).await;
    db.client
        .batch_execute(
            "UPDATE dispatcher.deliveries
             SET id = (lpad(to_hex(floor(extract(epoch FROM created_at + interval '1 hour')
                                         * 1000)::int8), 12, '0')
                       || '70009000' || lpad(to_hex(event_id), 12, '0'))::uuid
             WHERE event_id % 10 = 0;
             UPDATE dispatcher.deliveries
             SET id = (lpad(to_hex(floor(extract(epoch FROM created_at - interval '1 hour')
                                         * 1000)::int8), 12, '0')
                       || '7000a000' || lpad(to_hex(event_id), 12, '0'))::uuid
             WHERE event_id % 10 = 5;
             ANALYZE dispatcher.deliveries",
        )
        .await
        .expect("ids an hour ahead, and an hour behind");
    db.seed_due_deliveries(&[("acme", 10, Duration::ZERO)])
        .await;
    let window = db
        .client
        .query_one(
            "SELECT now() - interval '7 days', now() - interval '7 days' + interval '30 minutes'",
            &[],
        )
        .await
        .expect("the window");
    let (since, until): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        (window.get(0), window.get(1));
    let in_window = |extra: &str| {
        format!(
            "SELECT count(*) FROM dispatcher.deliveries
             WHERE state = 'delivered' AND created_at >= '{since:?}' AND created_at < '{until:?}'
               {extra}"
        )
    };
    let past_the_window = format!(
        "AND id >= dispatcher.first_uuid_of_millis(dispatcher.unix_millis('{until:?}') + 1)"
    );
    assert!(
        db.count(&in_window(&past_the_window)).await > 0,
        "an old id in the window, past its range"
    );
    let before_the_window =
        format!("AND id < dispatcher.first_uuid_of_millis(dispatcher.unix_millis('{since:?}'))");
    assert!(
        db.count(&in_window(&before_the_window)).await > 0,
        "an old id in the window, before its range"
    );
    let beside = format!(
        "SELECT count(*) FROM dispatcher.deliveries
         WHERE created_at < '{since:?}'
           AND id >= dispatcher.first_uuid_of_millis(dispatcher.unix_millis('{since:?}'))"
    );
    assert!(
        db.count(&beside).await > 0,
        "an old id beside it, in its range"
    );
    let expected: Vec<uuid::Uuid> = db
        .client
        .query(
            "SELECT id FROM dispatcher.deliveries
             WHERE state = 'delivered' AND created_at >= $1 AND created_at < $2
             ORDER BY id DESC",
            &[&since, &until],
        )
        .await
        .expect("the window's deliveries")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let client = support_connection(&config, &db).await;
    let selection = support::Selection {
        state: Some("delivered".to_string()),
        since: Some(since),
        until: Some(until),
        ..support::Selection::default()
    };

    let before = db.delivery_entries_read().await;
    let listed = support::list(&client, &selection, None, 1_000)
        .await
        .expect("list");
    let list_read = db.delivery_entries_read_since(&client, before).await;
    let before = db.delivery_entries_read().await;
    let preview = support::preview::preview(&client, &selection)
        .await
        .expect("preview");
    let preview_read = db.delivery_entries_read_since(&client, before).await;

    let ids: Vec<uuid::Uuid> = listed.iter().map(|delivery| delivery.id).collect();
    assert_eq!(ids, expected, "the window's delivered, newest first");
    assert_eq!(preview.count, expected.len() as i64, "the preview's count");
    for (what, read) in [("list", list_read), ("preview", preview_read)] {
        assert!(
            read < HISTORY / 10,
            "the {what} of a window of {} delivered deliveries read {read} rows and index \
             entries: it walked the month's {HISTORY}",
            expected.len()
        );
    }
}

/// Support asks what a partner received for one delivery, beside a month of deliveries:
/// the partner's id for the patient was in it if some 200 of that patient's came before,
/// which the look checks on that patient's deliveries and their attempts, each by key,
/// never every delivery's first attempt (`every_attempt` read otherwise than by a
/// delivery's id).
#[tokio::test(flavor = "multi_thread")]
async fn support_sees_what_a_partner_received_without_reading_the_month() {
    const HISTORY: i64 = 30_000;
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_state("delivered", 1).await;
    drop(daemon);
    let [delivered] = &db.ids_in_state("delivered").await[..] else {
        panic!("one delivery, delivered")
    };
    db.seed_ended_deliveries("acme", HISTORY).await;
    let support = support_connection(&config, &db).await;

    let before = db.delivery_entries_read().await;
    let request =
        support::received::stored_request(&support, delivered.parse().expect("a delivery id"))
            .await
            .expect("support's look")
            .expect("the delivery");

    let read = db.delivery_entries_read_since(&support, before).await;
    // The partner's id was learned from this delivery's own answer, so it was not in
    // what the partner received: the look went through that patient's attempts.
    assert_eq!(request.external_id, None);
    assert!(read < 100, "read {read} rows and entries beside {HISTORY}");
}

/// A window of delivered deliveries from before 1970 (a typo, a zero date) holds
/// everything up to its end: its start is the first id there is, not a millisecond before
/// 1970 written as a UUID's.
#[tokio::test(flavor = "multi_thread")]
async fn a_window_of_delivered_from_before_1970_holds_everything_up_to_its_end() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    seed_a_month_delivered(&db, "acme", 100).await;
    let client = support_connection(&config, &db).await;
    let from_1969 = support::Selection {
        state: Some("delivered".to_string()),
        since: Some(chrono::DateTime::UNIX_EPOCH - chrono::Duration::seconds(1)),
        until: Some(chrono::Utc::now()),
        ..support::Selection::default()
    };

    let preview = support::preview::preview(&client, &from_1969)
        .await
        .expect("preview");

    assert_eq!(preview.count, 29 * 100);
}
