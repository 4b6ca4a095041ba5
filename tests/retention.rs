//! Retention: event bodies and partners' answers are erased `payload_days` after the
//! deliveries ended, the records themselves go after `metadata_days`, and support sees
//! what was erased and when.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// Moves everything of this patient `days` into the past, as if it had happened then:
/// the event, its deliveries and, for those that ended, their end.
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
                 ended_at = CASE WHEN ended_at IS NOT NULL THEN now() - make_interval(days => $2) END
             WHERE patient_id = $1",
            &[&patient, &days],
        )
        .await
        .expect("backdate the deliveries");
}

async fn ok(config: &Path, args: &[&str]) -> Output {
    let mut command = dispatcher(config);
    command.args(args);
    let output = finish(command).await;
    assert!(output.status.success(), "dispatcher {args:?}:\n{output}");
    output
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

async fn answers_kept(db: &TestDb, delivery_id: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM dispatcher.attempts
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
        .retry("max_attempts = 5\nbase_delay = \"1h\"\nmax_delay = \"2h\"");
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let daemon = Daemon::start(&config, &db);

    for patient in ["p-last-month", "p-half-done", "p-last-year", "p-today"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries WHERE state = 'delivered'",
        7,
    )
    .await;
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries WHERE state = 'pending' AND attempt_count = 1",
        1,
    )
    .await;
    drop(daemon);
    let last_month = delivery_ids(&db, "p-last-month").await;
    let half_done = delivery_ids(&db, "p-half-done").await;
    let last_year = delivery_ids(&db, "p-last-year").await;
    let today = delivery_ids(&db, "p-today").await;
    let known_patients = db
        .count("SELECT count(*) FROM dispatcher.partner_patients")
        .await;
    assert_eq!(known_patients, 7, "each 200 answer gave an externalId");

    backdate(&db, "p-last-month", 31).await;
    backdate(&db, "p-half-done", 31).await;
    backdate(&db, "p-last-year", 401).await;

    // Last year's body and answers are erased on the way to deleting them.
    let output = ok(&path, &["prune"]).await;
    assert!(
        output.stdout.contains("erased 2 event bodies")
            && output.stdout.contains("answers to 5 deliveries")
            && output.stdout.contains("deleted 2 deliveries")
            && output.stdout.contains("and 1 events"),
        "{output}"
    );

    // Last month: body and answers erased, the records stay for support.
    assert!(!body_kept(&db, "p-last-month").await);
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
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.deliveries WHERE patient_id = 'p-last-year'")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.outbox").await,
        3,
        "the event of last year is deleted"
    );
    // Today: untouched.
    assert!(body_kept(&db, "p-today").await);
    for id in &today {
        assert_eq!(answers_kept(&db, id).await, 1, "{id}");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.partner_patients")
            .await,
        known_patients,
        "the partners' patient ids are kept"
    );

    // Support sees what was erased, and cannot resend it.
    let id = &last_month[0];
    let shown = ok(&path, &["deliveries", "show", id]).await.stdout;
    assert!(
        shown.contains("event body   erased on") && shown.contains("answer: erased on"),
        "{shown}"
    );
    let detail: Value = serde_json::from_str(
        &ok(&path, &["deliveries", "show", id, "--json"])
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

    let mut retry = dispatcher(&path);
    retry.args(["deliveries", "retry", id]);
    let refused = finish(retry).await;
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
            "SELECT count(*) FROM dispatcher.deliveries WHERE id = '{id}' AND state = 'delivered'"
        ))
        .await,
        1,
        "the refused delivery is unchanged"
    );

    // A second pass finds nothing more to do.
    let again = ok(&path, &["prune"]).await;
    assert!(
        again.stdout.contains("erased 0 event bodies")
            && again.stdout.contains("deleted 0 deliveries"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_running_daemon_prunes_by_itself() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let text = format!(
        "{}\n[retention]\npayload_days = 30\nmetadata_days = 400\nprune_interval = \"200ms\"\n",
        config.text(&db)
    );
    let _daemon = Daemon::start_with_text(&text, config.dir.path());

    db.insert_event(ENROLLMENT, &enrollment_event("p-old"))
        .await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-new"))
        .await;
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries WHERE state = 'delivered'",
        2,
    )
    .await;
    backdate(&db, "p-old", 31).await;

    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.outbox WHERE event_erased_at IS NOT NULL",
        1,
    )
    .await;
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries WHERE answers_erased_at IS NOT NULL",
        1,
    )
    .await;
    assert!(!body_kept(&db, "p-old").await);
    assert!(body_kept(&db, "p-new").await);

    // Later, the daemon deletes the records too.
    backdate(&db, "p-old", 401).await;
    db.wait_for_count("SELECT count(*) FROM dispatcher.outbox", 1)
        .await;
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.deliveries WHERE patient_id = 'p-old'")
            .await,
        0
    );
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
    let migrated = ok(&path, &["migrate"]).await;
    assert!(migrated.stdout.contains("[2, 3, 4]"), "{migrated}");

    let _daemon = Daemon::start(&config, &db);
    acme.wait_for_requests(1).await;
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries WHERE state = 'delivered'",
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_whose_body_is_gone_is_never_claimed() {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-erased"))
        .await;
    acme.wait_for_requests(1).await;
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries WHERE state = 'delivered'",
        1,
    )
    .await;
    let [erased] = &delivery_ids(&db, "p-erased").await[..] else {
        panic!("one delivery")
    };

    // What retention never does, forced: the body erased under a delivery made due again.
    db.client
        .batch_execute(&format!(
            "UPDATE dispatcher.outbox SET event = NULL, event_erased_at = now();
             UPDATE dispatcher.deliveries
             SET state = 'pending', due_at = now() - interval '1 minute', ended_at = NULL
             WHERE id = '{erased}'"
        ))
        .await
        .expect("erase under a pending delivery");
    // A later event is claimed and sent; the earlier-due one was passed over, not sent.
    db.insert_event(ENROLLMENT, &enrollment_event("p-later"))
        .await;
    acme.wait_for_requests(2).await;
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries WHERE state = 'delivered' AND patient_id = 'p-later'",
        1,
    )
    .await;
    let counts = per_webhook_id(&acme.received());
    assert_eq!(counts.get(erased.as_str()), Some(&1), "{counts:?}");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM dispatcher.deliveries WHERE id = '{erased}' AND state = 'pending'"
        ))
        .await,
        1
    );
}
