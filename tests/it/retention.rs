//! Retention: event bodies and partners' answers are erased `payload_days` after the
//! deliveries ended, the records themselves go after `metadata_days`, and support sees
//! what was erased and when.

use std::path::Path;
use std::time::Duration;

use crate::support::*;
use dispatcher::config::Config;
use dispatcher::store::db;
use dispatcher::store::retention::archive;
use dispatcher::store::support::{resend, Selection as DeliveryFilter};
use serde_json::Value;

/// Moves everything of this patient `days` into the past, as if it had happened then:
/// the event, its deliveries and, for those that ended, their end; and the id of each
/// delivery with no attempt in `attempts`, which is of the time it was made (the day of
/// the archive it goes to).
async fn backdate(db: &TestDb, patient: &str, days: i32) {
    db.client
        .execute(
            "UPDATE dispatcher.outbox SET created_at = now() - make_interval(days => $2)
             WHERE id IN (SELECT event_id FROM dispatcher.deliveries WHERE patient_id = $1)",
            &[&patient, &days],
        )
        .await
        .expect("backdate the event");
    db.client
        .execute(
            "UPDATE dispatcher.deliveries
             SET created_at = now() - make_interval(days => $2),
                 ended_at = CASE WHEN ended_at IS NOT NULL THEN now() - make_interval(days => $2) END,
                 id = CASE WHEN EXISTS (SELECT 1 FROM dispatcher.attempts a WHERE a.delivery_id = id)
                           THEN id
                           ELSE (lpad(to_hex(dispatcher.unix_millis(
                                         now() - make_interval(days => $2))), 12, '0')
                                 || substr(replace(id::text, '-', ''), 13))::uuid END
             WHERE patient_id = $1",
            &[&patient, &days],
        )
        .await
        .expect("backdate the deliveries");
    // Where the answers' erase has got to, as its passes would have left it had these
    // deliveries ended then (it moves only forward, in the order deliveries end).
    db.client
        .execute(
            "UPDATE dispatcher.retention_position
             SET answers_erased_through = least(answers_erased_through,
                                                now() - make_interval(days => $1 + 1))",
            &[&days],
        )
        .await
        .expect("backdate the answers' erase");
}

async fn delivery_ids(db: &TestDb, patient: &str) -> Vec<String> {
    db.client
        .query(
            "SELECT id::text FROM dispatcher.deliveries WHERE patient_id = $1 ORDER BY partner",
            &[&patient],
        )
        .await
        .expect("delivery ids")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// How many of this patient's deliveries are in the archive.
async fn archived(db: &TestDb, patient: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM dispatcher.archived_deliveries WHERE patient_id = '{patient}'"
    ))
    .await
}

async fn body_kept(db: &TestDb, patient: &str) -> bool {
    db.count(&format!(
        "SELECT count(*) FROM dispatcher.outbox o
         WHERE o.event IS NOT NULL AND o.event_erased_at IS NULL
           AND EXISTS (SELECT 1 FROM dispatcher.deliveries d
                       WHERE d.event_id = o.id AND d.patient_id = '{patient}')"
    ))
    .await
        == 1
}

/// A session whose open transaction holds the delivery (as support's resend does while
/// it works), until it rolls back.
async fn hold(db: &TestDb, delivery_id: &str) -> tokio_postgres::Client {
    let holder = db.connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM dispatcher.deliveries WHERE id = '{delivery_id}' FOR UPDATE"
        ))
        .await
        .expect("hold the delivery");
    holder
}

async fn answers_kept(db: &TestDb, delivery_id: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM dispatcher.every_attempt
         WHERE delivery_id = '{delivery_id}' AND response_body IS NOT NULL"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_erases_what_is_past_retention_and_keeps_the_rest() {
    // globex is down for one patient: that delivery stays pending (next try in an hour).
    let acme = TestPartner::accepting("acme").await;
    let globex = TestPartner::start("globex", |request| {
        if request.patient_id() == "p-half-done" {
            Reply::status(503, "maintenance")
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&globex, &[PROGRAM])
        .max_attempts(5)
        .retry_delays(
            Duration::from_secs(60 * 60),
            Duration::from_secs(2 * 60 * 60),
        );
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let daemon = Daemon::start(&config, &db);

    for patient in ["p-last-month", "p-half-done", "p-last-year", "p-today"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    db.wait_for_state("delivered", 7).await;
    db.wait_for_deliveries(&Deliveries::all().in_state("pending").with_attempts(1), 1)
        .await;
    drop(daemon);
    let known_patients = db.count_partner_patients().await;
    assert_eq!(known_patients, 7, "each 200 answer gave an externalId");

    backdate(&db, "p-last-month", 31).await;
    backdate(&db, "p-half-done", 31).await;
    backdate(&db, "p-last-year", 401).await;
    let last_month = delivery_ids(&db, "p-last-month").await;
    let half_done = delivery_ids(&db, "p-half-done").await;
    let last_year = delivery_ids(&db, "p-last-year").await;
    let today = delivery_ids(&db, "p-today").await;

    // Last month's and last year's bodies are erased and their deliveries archived
    // (their answers erased on the way); last year's week of the archive is dropped. Of
    // the half-done event, whose body is kept, the answer of the ended delivery is erased.
    let output = cli_ok(&path, &["prune"]).await;
    assert!(
        output.stdout.contains("erased 2 event bodies")
            && output.stdout.contains("answers to 1 deliveries")
            && output
                .stdout
                .contains("archived 4 deliveries and dropped 1 archived weeks")
            && output.stdout.contains("deleted 0 deliveries")
            && output.stdout.contains("and 0 events"),
        "{output}"
    );

    // Last month: body and answers erased, the records stay for support, archived.
    assert_eq!(archived(&db, "p-last-month").await, 2);
    for id in &last_month {
        assert_eq!(answers_kept(&db, id).await, 0, "{id}");
        assert_eq!(db.attempts(id).await.len(), 1, "the attempt stays");
    }
    // Half done: its pending delivery keeps the body it still needs; the delivery that
    // ended a month ago loses the partner's answer.
    assert!(body_kept(&db, "p-half-done").await);
    let [acme_half, globex_half] = &half_done[..] else {
        panic!("{half_done:?}")
    };
    assert_eq!(answers_kept(&db, acme_half).await, 0);
    assert_eq!(answers_kept(&db, globex_half).await, 1);
    // Last year: gone, attempts and event included.
    for id in &last_year {
        assert!(db.attempts(id).await.is_empty(), "{id}");
    }
    assert_eq!(archived(&db, "p-last-year").await, 0);
    assert_eq!(
        db.count_deliveries(&Deliveries::all().of_patient("p-last-year"))
            .await,
        0
    );
    assert_eq!(
        db.count_events().await,
        2,
        "the events of last month and last year are deleted, their marks archived"
    );
    // Today: untouched.
    assert!(body_kept(&db, "p-today").await);
    for id in &today {
        assert_eq!(answers_kept(&db, id).await, 1, "{id}");
    }
    assert_eq!(
        db.count_partner_patients().await,
        known_patients,
        "the partners' patient ids are kept"
    );

    // Support sees what was erased, and cannot resend it.
    let id = &last_month[0];
    let shown = cli_ok(&path, &["deliveries", "show", id]).await.stdout;
    assert!(
        shown.contains("event body   erased on") && shown.contains("answer: erased on"),
        "{shown}"
    );
    let detail: Value = serde_json::from_str(
        &cli_ok(&path, &["deliveries", "show", id, "--json"])
            .await
            .stdout,
    )
    .expect("show --json");
    assert!(detail["event_erased_at"].is_string(), "{detail}");
    assert!(detail["answers_erased_at"].is_string(), "{detail}");
    assert!(
        detail["attempts"][0]["answer_erased_at"].is_string(),
        "{detail}"
    );
    assert_eq!(detail["attempts"][0]["response_body"], Value::Null);
    assert_eq!(detail["attempts"][0]["http_status"], 200, "metadata stays");

    let refused = cli(&path, &["deliveries", "retry", id]).await;
    let today_date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        !refused.status.success()
            && refused.stderr.contains(&format!(
                "{id}: the event body was erased on {today_date}; it cannot be sent again"
            )),
        "{refused}"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM dispatcher.every_delivery
             WHERE id = '{id}' AND state = 'delivered' AND archived"
        ))
        .await,
        1,
        "the refused delivery is unchanged"
    );

    // A second pass finds nothing more to do.
    let again = cli_ok(&path, &["prune"]).await;
    assert!(
        again.stdout.contains("erased 0 event bodies")
            && again.stdout.contains("deleted 0 deliveries"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_running_daemon_prunes_by_itself() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .retention(Retention {
            payload_days: 30,
            metadata_days: 400,
            prune_interval: Duration::from_millis(200),
        });
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-old"))
        .await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-new"))
        .await;
    db.wait_for_state("delivered", 2).await;
    backdate(&db, "p-old", 31).await;

    // Its body erased, the old delivery goes to the archive with its answers erased.
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.every_delivery
         WHERE answers_erased_at IS NOT NULL AND event_erased_at IS NOT NULL AND archived",
        1,
    )
    .await;
    db.wait_for_events(1).await;
    assert!(body_kept(&db, "p-new").await);

    // A year later, the daemon drops its week of the archive.
    db.archived_ended_days_ago("p-old", 401).await;
    db.wait_for_count("SELECT count(*) FROM dispatcher.archive_weeks", 0)
        .await;
    assert_eq!(archived(&db, "p-old").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_before_retention_is_upgraded_with_its_events() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::unmigrated().await;
    let path = config.write(&db);
    // What the first release's `dispatcher migrate` left, with an event waiting.
    let initial = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/0001_initial.sql"),
    )
    .expect("the first migration");
    db.client
        .batch_execute(&initial)
        .await
        .expect("apply version 1");
    db.client
        .batch_execute("INSERT INTO dispatcher.schema_migrations (version) VALUES (1)")
        .await
        .expect("record version 1");
    db.insert_event(ENROLLMENT, &enrollment_event("p-waiting"))
        .await;

    let mut run = dispatcher(&path);
    run.arg("run");
    let refused = finish(run).await;
    assert!(
        !refused.status.success() && refused.stderr.contains("dispatcher migrate"),
        "{refused}"
    );
    let migrated = cli_ok(&path, &["migrate"]).await;
    assert!(migrated.stdout.contains("[2, 3, 4"), "{migrated}");

    let _daemon = Daemon::start(&config, &db);
    acme.wait_for_requests(1).await;
    db.wait_for_state("delivered", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_delivery_whose_body_is_gone_ends_dead_and_the_patients_next_event_goes_out() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-erased"))
        .await;
    acme.wait_for_requests(1).await;
    db.wait_for_state("delivered", 1).await;
    let [erased] = &delivery_ids(&db, "p-erased").await[..] else {
        panic!("one delivery")
    };

    // What retention must never leave, forced: the body erased under a delivery made due
    // again. It is the patient's earliest unfinished event for acme, so it holds back
    // every later one until it ends.
    db.client
        .batch_execute(&format!(
            "UPDATE dispatcher.outbox SET event = NULL, event_erased_at = now();
             UPDATE dispatcher.deliveries
             SET state = 'pending', due_at = now() - interval '1 minute', ended_at = NULL
             WHERE id = '{erased}'"
        ))
        .await
        .expect("erase under a pending delivery");
    let later = db
        .insert_event(VIEWED_TRACKER, &viewed_tracker_event("p-erased"))
        .await;

    // The patient's next event goes out; the one without a body ends, never sent again.
    db.wait_for_deliveries(&Deliveries::all().of_event(later).in_state("delivered"), 1)
        .await;
    let counts = per_webhook_id(&acme.received());
    assert_eq!(counts.get(erased.as_str()), Some(&1), "{counts:?}");
    assert_eq!(acme.request_count(), 2, "{counts:?}");

    // Support sees why it ended.
    let shown = cli_ok(&path, &["deliveries", "show", erased]).await.stdout;
    assert!(
        shown.contains("state        dead")
            && shown.contains(
                "last error   ended without sending: the event body was erased by retention \
                 while this delivery waited to be sent; it cannot be sent again"
            )
            && shown.contains("attempts     1")
            && shown.contains("event body   erased on"),
        "{shown}"
    );
    let log = daemon
        .wait_for_log("the event body was erased while it waited", 1)
        .await;
    let line = log
        .lines()
        .find(|line| line.contains("the event body was erased while it waited"))
        .unwrap_or_default();
    assert!(line.contains(erased.as_str()), "{line}");
}

/// The advisory lock a test holds to keep the pruner's erase waiting (see
/// [`hold_outbox_deletes`]).
const ERASE_HELD: i64 = 7305;

/// Holds every DELETE of the outbox at its start (PostgreSQL has taken the statement's
/// snapshot) until [`release_outbox_deletes`]: a
/// statement-level BEFORE trigger waits for an advisory lock the test holds. This is how
/// a test puts another transaction's commit inside the pruner's statement, where a real
/// one only lands by bad luck.
async fn hold_outbox_deletes(db: &TestDb) {
    db.client
        .batch_execute(&format!(
            "CREATE FUNCTION public.wait_for_the_test() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_advisory_xact_lock_shared({ERASE_HELD});
                 RETURN NULL;
             END $$;
             CREATE TRIGGER held_by_the_test BEFORE DELETE ON dispatcher.outbox
                 FOR EACH STATEMENT EXECUTE FUNCTION public.wait_for_the_test();
             SELECT pg_advisory_lock({ERASE_HELD});"
        ))
        .await
        .expect("hold deletes of the outbox");
}

/// Waits until a DELETE of the outbox is held by [`hold_outbox_deletes`].
async fn wait_for_held_delete(db: &TestDb) {
    db.wait_for_count(
        &format!(
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND objid = {ERASE_HELD} AND NOT granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        1,
    )
    .await;
}

async fn release_outbox_deletes(db: &TestDb) {
    db.client
        .batch_execute(&format!("SELECT pg_advisory_unlock({ERASE_HELD})"))
        .await
        .expect("release deletes of the outbox");
}

async fn remove_hold(db: &TestDb) {
    db.client
        .batch_execute(
            "DROP TRIGGER held_by_the_test ON dispatcher.outbox;
             DROP FUNCTION public.wait_for_the_test();",
        )
        .await
        .expect("remove the hold");
}

#[tokio::test(flavor = "multi_thread")]
async fn support_resending_while_retention_erases_the_body_never_strands_the_patient() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-race"))
        .await;
    acme.wait_for_requests(1).await;
    db.wait_for_state("delivered", 1).await;
    // No daemon while the two race: it would claim the resent delivery at once.
    drop(daemon);
    // Delivered a month ago: past retention, its body is due to be erased.
    backdate(&db, "p-race", 31).await;
    let [delivery] = &delivery_ids(&db, "p-race").await[..] else {
        panic!("one delivery")
    };
    let delivery_id: uuid::Uuid = delivery.parse().expect("a delivery id");

    let loaded = Config::parse(&config.text(&db), "retention", None, |_| None).expect("config");
    let pool = db::pool(&loaded.database, loaded.database.pool_limits()).expect("pool");
    let mut pruner = pool.get().await.expect("the pruner's connection");
    let mut support = pool.get().await.expect("support's connection");
    let support_pid: i32 = support
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("support's backend")
        .get(0);

    // The pruner starts archiving the event, which erases its body, and is held inside
    // its DELETE of the outbox row...
    hold_outbox_deletes(&db).await;
    let erase = tokio::spawn(async move {
        archive::archive_due_events(&mut pruner, 30, 1000)
            .await
            .map(|archived| archived.events)
    });
    wait_for_held_delete(&db).await;
    // ...while support resends the delivery: it either commits, or waits for a row the
    // pruner locked.
    let resend = tokio::spawn(async move {
        resend::resend(
            &mut support,
            &DeliveryFilter::ids(&[delivery_id]),
            "support@helparound.test",
        )
        .await
    });
    let resend_waited = db.blocked_before_done(support_pid, &resend).await;
    release_outbox_deletes(&db).await;
    let erased = erase.await.expect("erase task").expect("erase");
    let resent = resend.await.expect("resend task").expect("resend").resent;
    remove_hold(&db).await;

    let state = db
        .client
        .query_one(
            "SELECT d.state, o.event IS NULL
             FROM dispatcher.every_delivery d LEFT JOIN dispatcher.outbox o ON o.id = d.event_id
             WHERE d.id = $1",
            &[&delivery_id],
        )
        .await
        .expect("the delivery");
    // An archived delivery's event has no row left: its body is gone with it.
    let (state, body_erased): (String, bool) = (
        state.get(0),
        state.get::<_, Option<bool>>(1).unwrap_or(true),
    );
    let outcome = format!(
        "erased {erased} bodies, resent {resent:?}; the delivery is {state} with its body {}",
        if body_erased { "erased" } else { "kept" }
    );
    if resend_waited {
        // The pruner held the event first: the resend found the body gone and left the
        // delivery as it was.
        assert!(
            erased == 1 && resent.is_empty() && state == "delivered" && body_erased,
            "the resend waited for the pruner, yet {outcome}"
        );
    } else {
        // The resend committed first: the body stays for the delivery to be sent.
        assert!(
            erased == 0 && resent == [delivery_id] && state == "pending" && !body_erased,
            "the resend committed while the pruner was erasing, yet {outcome}"
        );
    }

    // The patient's next event still reaches acme.
    let _daemon = Daemon::start(&config, &db);
    let next = db
        .insert_event(VIEWED_TRACKER, &viewed_tracker_event("p-race"))
        .await;
    db.wait_for_deliveries(&Deliveries::all().of_event(next).in_state("delivered"), 1)
        .await;
}

/// The archive's second look at the deliveries, made after it locked the event. The
/// resend is simulated (a real one would wait for the pruner's row lock): the delivery
/// is made pending while the pruner waits between its first statement and the lock of
/// the deliveries. An archive that trusted its first look would take the event, body and
/// all, from under a pending delivery.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_resent_as_retention_picks_its_event_keeps_the_body() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-late"))
        .await;
    db.wait_for_state("delivered", 1).await;
    drop(daemon);
    backdate(&db, "p-late", 31).await;
    let loaded = Config::parse(&config.text(&db), "retention", None, |_| None).expect("config");
    let pool = db::pool(&loaded.database, loaded.database.pool_limits()).expect("pool");
    let mut pruner = pool.get().await.expect("the pruner's connection");

    // Ops hold the deliveries against writes and row locks (EXCLUSIVE): the pruner picks
    // and locks its event, then waits to lock the event's deliveries.
    let ops = pool.get().await.expect("ops' connection");
    ops.batch_execute("BEGIN; LOCK TABLE dispatcher.deliveries IN EXCLUSIVE MODE")
        .await
        .expect("hold the deliveries");
    let archive = tokio::spawn(async move {
        archive::archive_due_events(&mut pruner, 30, 1000)
            .await
            .map(|archived| archived.events)
    });
    db.wait_for_count(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND query LIKE '%dispatcher.archive_week(%'",
        1,
    )
    .await;
    // Meanwhile the delivery is pending again, as a resend that committed just after the
    // pruner had looked at the deliveries would have left it.
    ops.execute(
        "UPDATE dispatcher.deliveries SET state = 'pending', due_at = now(), ended_at = NULL
         WHERE patient_id = 'p-late'",
        &[],
    )
    .await
    .expect("resend");
    ops.batch_execute("COMMIT")
        .await
        .expect("release the deliveries");

    let archived = archive.await.expect("archive task").expect("archive");
    assert_eq!(archived, 0, "the pruner looked at the deliveries again");
    assert!(
        body_kept(&db, "p-late").await,
        "the pending delivery has its body"
    );
}

/// Three patients delivered a month ago, the daemon stopped: what a pass finds past
/// `payload_days`, of events whose bodies are kept.
async fn delivered_a_month_ago(patients: &[&str]) -> (TestDb, TestConfig, std::path::PathBuf) {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let daemon = Daemon::start(&config, &db);
    for patient in patients {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    db.wait_for_state("delivered", patients.len() as i64).await;
    drop(daemon);
    for patient in patients {
        backdate(&db, patient, 31).await;
    }
    // The events stay new, so their bodies are kept (as while another delivery of the
    // event still needs one), and the deliveries are not archived: their answers are
    // erased where they are.
    db.client
        .batch_execute("UPDATE dispatcher.outbox SET created_at = now()")
        .await
        .expect("the events stay new");
    (db, config, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn erasing_the_answers_writes_no_index_entry() {
    // The erase marks each delivery (`answers_erased_at`, its last error): no index names
    // either, so each is updated in place, with no entry in any of the table's indexes.
    let (db, _config, path) = delivered_a_month_ago(&["p-1", "p-2", "p-3"]).await;
    let (updates, hot) = db.delivery_updates(&db.client).await;

    let output = cli_ok(&path, &["prune"]).await;

    assert!(
        output.stdout.contains("answers to 3 deliveries"),
        "{output}"
    );
    let (updates_after, hot_after) = db.delivery_updates(&db.client).await;
    assert_eq!(
        (updates_after - updates, hot_after - hot),
        (3, 3),
        "(updates, of them HOT) of the erase of 3"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_a_pass_could_not_take_are_erased_by_the_next() {
    // A transaction holds one delivery while the pass runs (support resending it, which
    // it then gave up): the pass erases the others, and the next erases that one too,
    // though the others, which ended after it, were erased before.
    let (db, _config, path) = delivered_a_month_ago(&["p-held", "p-2", "p-3"]).await;
    db.client
        .execute(
            "UPDATE dispatcher.deliveries SET ended_at = ended_at - interval '1 hour'
             WHERE patient_id = 'p-held'",
            &[],
        )
        .await
        .expect("the held one ended first");
    let held = delivery_ids(&db, "p-held").await.remove(0);
    let holder = hold(&db, &held).await;

    let first = cli_ok(&path, &["prune"]).await;
    assert!(first.stdout.contains("answers to 2 deliveries"), "{first}");
    assert_eq!(answers_kept(&db, &held).await, 1);
    holder.batch_execute("ROLLBACK").await.expect("let it go");
    let second = cli_ok(&path, &["prune"]).await;

    assert!(
        second.stdout.contains("answers to 1 deliveries"),
        "{second}"
    );
    assert_eq!(answers_kept(&db, &held).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_pass_after_the_archive_erases_the_answers_due_before_it_moves_the_old_history() {
    // After the upgrade to 0025, the first pass archives every delivery whose event's body
    // a daemon from before erased in place: on a large site, hours. While it does (here,
    // it waits for a delivery a transaction holds), the answers due are already erased.
    let (db, _config, path) = delivered_a_month_ago(&["p-answered", "p-erased"]).await;
    db.client
        .batch_execute(
            "UPDATE dispatcher.outbox SET event = NULL, event_erased_at = now() - interval '1 day'
             WHERE id IN (SELECT event_id FROM dispatcher.deliveries WHERE patient_id = 'p-erased')",
        )
        .await
        .expect("the body erased in place, before 0025");
    let answered = delivery_ids(&db, "p-answered").await.remove(0);
    let held = delivery_ids(&db, "p-erased").await.remove(0);
    let holder = hold(&db, &held).await;

    let pruning = tokio::spawn(async move { cli(&path, &["prune"]).await });
    assert!(
        db.a_session_blocked_before_done(&pruning).await,
        "the archive waited for the held delivery"
    );
    assert_eq!(
        answers_kept(&db, &answered).await,
        0,
        "the answers due waited behind the old history's move"
    );
    holder.batch_execute("ROLLBACK").await.expect("let it go");
    let pruned = pruning.await.expect("the prune task");

    assert!(
        pruned.status.success() && pruned.stdout.contains("archived 1 deliveries"),
        "{pruned}"
    );
    assert_eq!(archived(&db, "p-erased").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_erase_position_the_answers_are_still_erased() {
    // Someone deleted the position's row by hand: the pass starts from the beginning
    // rather than erasing nothing.
    let (db, _config, path) = delivered_a_month_ago(&["p-1", "p-2"]).await;
    db.client
        .batch_execute("DELETE FROM dispatcher.retention_position")
        .await
        .expect("lose the position");

    let output = cli_ok(&path, &["prune"]).await;

    assert!(
        output.stdout.contains("answers to 2 deliveries"),
        "{output}"
    );
}

/// A daemon from before migration 0024, still running beside this one during an upgrade,
/// erases the answers with its own statement, which knows nothing of the first attempt
/// kept in the delivery's row: that answer is erased with the rest all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_from_before_0024_erasing_the_answers_erases_the_first_attempts_too() {
    let (db, _config, _path) = delivered_a_month_ago(&["p-1"]).await;
    let delivery = delivery_ids(&db, "p-1").await.remove(0);
    assert_eq!(answers_kept(&db, &delivery).await, 1);

    // 0021's erase of a delivery as released (its update of `attempts` finds nothing).
    db.client
        .execute(
            "UPDATE dispatcher.deliveries d
             SET answers_erased_at = now(),
                 last_error = CASE WHEN d.last_status IS NULL THEN d.last_error END
             WHERE d.id = $1::text::uuid",
            &[&delivery],
        )
        .await
        .expect("the old daemon's erase");

    assert_eq!(answers_kept(&db, &delivery).await, 0);
    let attempts = db.attempts(&delivery).await;
    assert!(
        !attempts[0]["answer_erased_at"].is_null(),
        "the erase is marked: {attempts:?}"
    );
}

/// The erase of the answers erases a first attempt kept in the delivery's row by itself:
/// migration 0024's trigger, which does it for a daemon from before 0024, will go.
#[tokio::test(flavor = "multi_thread")]
async fn erasing_the_answers_erases_the_first_attempts_in_the_rows() {
    let (db, _config, path) = delivered_a_month_ago(&["p-1", "p-2"]).await;
    db.client
        .batch_execute(
            "ALTER TABLE dispatcher.deliveries DISABLE TRIGGER deliveries_first_attempt_before_0024",
        )
        .await
        .expect("without the upgrade's trigger");

    let output = cli_ok(&path, &["prune"]).await;

    assert!(
        output.stdout.contains("answers to 2 deliveries"),
        "{output}"
    );
    for delivery in [
        delivery_ids(&db, "p-1").await,
        delivery_ids(&db, "p-2").await,
    ]
    .concat()
    {
        assert_eq!(answers_kept(&db, &delivery).await, 0);
    }
}
