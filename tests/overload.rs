//! Overload: the outbox grows far faster than the partner takes events (it refuses the
//! first thousands with 503). The daemon's memory stays bounded whatever the backlog,
//! each claim walks an index rather than the backlog, and once the partner recovers the
//! backlog drains until every event is delivered. A partner held back (its circuit open)
//! with a long backlog costs the claims for the other partners nothing.
//!
//! 30,000 events by default (well under a minute in CI); `DISPATCHER_SOAK=1` makes it
//! 1,000,000 (run by hand: it takes many minutes). Both print what they measured (see
//! `--nocapture`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dispatcher::config::Config;
use dispatcher::store::db;
use dispatcher::store::queue::{self, PartnerRoom};
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

/// The part of a claim's plan that chooses a partner's candidates: the `candidate`
/// subquery and everything under it.
fn candidates_plan(plan: &str) -> String {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut lines = plan.lines().skip_while(|line| {
        !line
            .trim_start()
            .starts_with("->  Subquery Scan on candidate")
    });
    let Some(head) = lines.next() else {
        panic!("no candidate subquery in the claim's plan:\n{plan}")
    };
    lines
        .take_while(|line| indent(line) > indent(head))
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
    // The daemon's own way to the database, for its claim's SQL.
    let loaded = Config::parse(&config.text(&db), "overload", None, |_| None).expect("config");
    let mut client = db::pool(&loaded.database)
        .expect("pool")
        .get()
        .await
        .expect("a pooled connection");

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
    db.wait_for_count_within(
        "SELECT count(*) FROM dispatcher.outbox WHERE routed_at IS NULL",
        0,
        drain_deadline,
    )
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
    // Only the choice of each partner's candidates reads the backlog; what it feeds (the
    // earliest of at most 100 candidates per partner) may sort.
    let choice = candidates_plan(&plan);
    for reads_everything in ["Sort", "Hash"] {
        assert!(
            !choice.contains(reads_everything),
            "the claim reads the whole backlog ({reads_everything}):\n{plan}"
        );
    }
    let (claimed, claim_took) = timed_claim(&mut client).await;
    assert_eq!(
        claimed, 100,
        "a claim takes its whole batch from the backlog"
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

/// How many rows and index entries of `dispatcher.deliveries` PostgreSQL has read so far
/// (sequential scans and index scans), by the statistics every backend reports.
async fn delivery_entries_read(db: &TestDb) -> i64 {
    db.count(
        "SELECT (SELECT COALESCE(seq_tup_read, 0) FROM pg_stat_user_tables
                 WHERE schemaname = 'dispatcher' AND relname = 'deliveries')
              + (SELECT COALESCE(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
                 WHERE schemaname = 'dispatcher' AND relname = 'deliveries')::int8",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_held_with_a_long_backlog_is_not_walked_by_the_claims_for_the_others() {
    // "held"'s circuit opened an hour ago: its deliveries have been due since, before
    // anything the healthy partner has.
    const HELD_BACKLOG: i64 = 20_000;
    const HEALTHY: i64 = 100;
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.client
        .execute(
            "INSERT INTO dispatcher.outbox (event_name, event, routed_at)
             SELECT $1, jsonb_set($2::jsonb, '{patient,id}', to_jsonb('held-' || g)), now()
             FROM generate_series(1, $3::int8 + $4::int8) AS g",
            &[
                &ENROLLMENT,
                &enrollment_event("template"),
                &HELD_BACKLOG,
                &HEALTHY,
            ],
        )
        .await
        .expect("insert the events");
    db.client
        .execute(
            "INSERT INTO dispatcher.deliveries
                 (id, event_id, partner, event_name, patient_id, state, due_at)
             SELECT gen_random_uuid(), id, CASE WHEN id <= $1 THEN 'held' ELSE 'acme' END,
                    event_name, event -> 'patient' ->> 'id', 'pending',
                    CASE WHEN id <= $1 THEN now() - interval '1 hour' ELSE now() END
             FROM dispatcher.outbox",
            &[&HELD_BACKLOG],
        )
        .await
        .expect("route them, as the router would have");
    db.client
        .batch_execute("ANALYZE dispatcher.deliveries")
        .await
        .expect("analyze");
    let loaded = Config::parse(&config.text(&db), "overload", None, |_| None).expect("config");
    let mut client = db::pool(&loaded.database)
        .expect("pool")
        .get()
        .await
        .expect("a pooled connection");
    let room = [
        PartnerRoom {
            partner: "held".to_string(),
            free: 0,
        },
        PartnerRoom {
            partner: "acme".to_string(),
            free: 100,
        },
    ];

    let before = delivery_entries_read(&db).await;
    let mut transaction = client.transaction().await.expect("begin");
    let claim = queue::claim_due(&mut transaction, 100, Duration::from_secs(60), &room)
        .await
        .expect("claim");
    transaction.rollback().await.expect("roll back");
    // The claim's backend reports what it read before it answers this.
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush the claim's statistics");
    let read = delivery_entries_read(&db).await - before;

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
