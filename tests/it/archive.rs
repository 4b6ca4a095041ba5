//! The archive (migration 0025): once an event's body is erased, its deliveries keep only
//! what support needs, in a week of the archive that retention drops whole at
//! `metadata_days`. Support still reads them as before, and they no longer change.

use std::time::Duration;

use crate::support::*;
use dispatcher::delivery::state::DeliveryState;
use dispatcher::store::retention::archive;
use dispatcher::store::support;
use dispatcher::store::support::received::stored_request;
use dispatcher::store::support::search::{self, Reading};
use serde_json::{json, Value};
use uuid::Uuid;

/// What the partner says when it cannot take a patient for now: a retried delivery's
/// first answer, which must not outlive `payload_days`.
const BUSY: &str = "busy with patient p-retried, try later";

/// Two patients delivered, one at once and one on its second try, then a month passes
/// with the daemon stopped: both are due for the archive.
async fn delivered_a_month_ago() -> (TestDb, TestConfig, std::path::PathBuf) {
    let acme = TestPartner::start("acme", |request| {
        if request.patient_id() == "p-retried" && request.try_number == 1 {
            Reply::status(503, BUSY)
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .retry_delays(Duration::from_millis(100), Duration::from_millis(200));
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let daemon = Daemon::start(&config, &db);
    for patient in ["p-once", "p-retried"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    db.wait_for_state("delivered", 2).await;
    drop(daemon);
    db.a_month_passes().await;
    (db, config, path)
}

/// The archived delivery of this patient's event.
async fn archived_id(db: &TestDb, patient: &str) -> String {
    db.client
        .query_one(
            "SELECT id::text FROM dispatcher.archived_deliveries WHERE patient_id = $1",
            &[&patient],
        )
        .await
        .expect("the archived delivery")
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_past_payload_days_is_archived_without_what_anyone_said_and_support_still_reads_it(
) {
    let (db, config, path) = delivered_a_month_ago().await;

    let output = cli_ok(&path, &["prune"]).await;

    assert!(
        output.stdout.contains("erased 2 event bodies")
            && output
                .stdout
                .contains("archived 2 deliveries and dropped 0 archived weeks"),
        "{output}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.deliveries").await,
        0
    );
    assert_eq!(
        db.count_events().await,
        0,
        "the outbox rows go, their marks are kept"
    );
    // Neither the body nor the partner's words: the retried delivery's 503 said who.
    let said = db
        .count(&format!(
            "SELECT count(*) FROM dispatcher.every_attempt
             WHERE response_body IS NOT NULL OR error LIKE '%{BUSY}%'"
        ))
        .await;
    assert_eq!(said, 0, "no answer is archived");

    // Support sees the retried one as before: both tries, the answers erased, the body
    // erased, and its patient's search finds it.
    let retried = archived_id(&db, "p-retried").await;
    let shown = cli_ok(&path, &["deliveries", "show", &retried, "--json"]).await;
    let detail: Value = serde_json::from_str(&shown.stdout).expect("show --json");
    assert_eq!(detail["state"], "delivered", "{detail}");
    assert!(detail["event_erased_at"].is_string(), "{detail}");
    assert!(detail["answers_erased_at"].is_string(), "{detail}");
    let statuses: Vec<&Value> = detail["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|attempt| &attempt["http_status"])
        .collect();
    assert_eq!(statuses, [503, 200], "{detail}");
    assert!(
        detail["attempts"][0]["answer_erased_at"].is_string(),
        "{detail}"
    );
    let listed = cli_ok(&path, &["deliveries", "list", "--patient", "p-retried"]).await;
    assert!(listed.stdout.contains(&retried), "{listed}");
    let support = support_connection(&config, &db).await;
    // A window of delivered deliveries over the month before finds both.
    let since = (chrono::Utc::now() - chrono::Duration::days(32)).to_rfc3339();
    let until = (chrono::Utc::now() - chrono::Duration::days(30)).to_rfc3339();
    let listed = cli_ok(
        &path,
        &[
            "deliveries",
            "list",
            "--state",
            "delivered",
            "--since",
            &since,
            "--until",
            &until,
        ],
    )
    .await;
    assert!(listed.stdout.contains("(2 deliveries)"), "{listed}");
    let found = search::find(&support, Reading::Patient("p-once".into()), 10)
        .await
        .expect("search");
    assert_eq!(found.deliveries.len(), 1, "the search box finds it");

    // It no longer changes: a resend needs the body, a cancel is refused.
    let refused = cli(&path, &["deliveries", "retry", &retried]).await;
    assert!(
        !refused.status.success() && refused.stderr.contains("the event body was erased on"),
        "{refused}"
    );
    let refused = cli(&path, &["deliveries", "cancel", &retried]).await;
    assert!(
        !refused.status.success()
            && refused
                .stderr
                .contains("it is archived and no longer changes"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_week_of_the_archive_is_dropped_whole_once_its_last_delivery_ended_metadata_days_ago() {
    let (db, _config, path) = delivered_a_month_ago().await;
    cli_ok(&path, &["prune"]).await;
    let week: String = db
        .client
        .query_one("SELECT week::text FROM dispatcher.archive_weeks", &[])
        .await
        .expect("both deliveries were made in one week")
        .get(0);
    let partition = format!("dispatcher.archived_deliveries_{}", week.replace('-', ""));
    let attempts = db
        .count("SELECT count(*) FROM dispatcher.archived_attempts")
        .await;
    assert_eq!(
        attempts, 2,
        "the retried delivery's tries, rows of their own"
    );

    // One of the day's deliveries is past metadata_days, the other not: the day stays.
    db.archived_ended_days_ago("p-once", 401).await;
    let kept = cli_ok(&path, &["prune"]).await;
    assert!(kept.stdout.contains("dropped 0 archived weeks"), "{kept}");
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.archived_deliveries")
            .await,
        2
    );

    // Then the other: the week goes, its attempts with it, in two drops.
    db.archived_ended_days_ago("p-retried", 401).await;
    let dropped = cli_ok(&path, &["prune"]).await;

    assert!(
        dropped.stdout.contains("dropped 1 archived weeks"),
        "{dropped}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.every_attempt")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.every_delivery")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.archive_weeks")
            .await,
        0
    );
    let table: Option<String> = db
        .client
        .query_one("SELECT to_regclass($1)::text", &[&partition])
        .await
        .expect("look for the week's table")
        .get(0);
    assert_eq!(table, None, "{partition} is dropped, not emptied");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_week_support_is_reading_is_dropped_by_the_next_pass_and_the_pass_goes_on() {
    let (db, _config, path) = delivered_a_month_ago().await;
    cli_ok(&path, &["prune"]).await;
    db.archived_ended_days_ago("p-once", 401).await;
    db.archived_ended_days_ago("p-retried", 401).await;
    // Support is in the middle of a long read of the archive.
    let reader = db.connect().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM dispatcher.every_delivery")
        .await
        .expect("support reads");

    let waited = cli_ok(&path, &["prune"]).await;

    assert!(
        waited.stdout.contains("dropped 0 archived weeks")
            && waited.stdout.contains("deleted 0 audit entries"),
        "the pass leaves the week and does the rest: {waited}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.archive_weeks")
            .await,
        1
    );
    reader.batch_execute("COMMIT").await.expect("the read ends");
    let dropped = cli_ok(&path, &["prune"]).await;
    assert!(
        dropped.stdout.contains("dropped 1 archived weeks"),
        "{dropped}"
    );
}

/// One delivery rejected a month ago, its event's body erased in place (as a daemon from
/// before 0025 did) and not archived yet; the daemon's side of the database, without the
/// daemon.
async fn rejected_a_month_ago_its_body_erased() -> (TestDb, TestConfig, Router, Uuid) {
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let mut router = Router::of(&config, &db).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-rejected"))
        .await;
    router.route().await;
    let [claimed] = &router.claim(&["acme"]).await[..] else {
        panic!("one delivery claimed")
    };
    router.record(claimed, DeliveryState::Rejected).await;
    db.a_month_passes().await;
    assert_eq!(erased(&mut router).await, 1);
    let id = claimed.id;
    (db, config, router, id)
}

/// Erases the bodies past `payload_days` (30) in place, as a daemon from before 0025 did,
/// and moves nothing; how many.
async fn erased(router: &mut Router) -> u64 {
    router
        .client
        .execute(
            "UPDATE dispatcher.outbox SET event = NULL, event_erased_at = now()
             WHERE created_at < now() - interval '30 days'",
            &[],
        )
        .await
        .expect("erase")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_support_cancels_as_it_moves_keeps_its_week_for_metadata_days_after_the_cancel()
{
    let (db, config, router, id) = rejected_a_month_ago_its_body_erased().await;
    // Support cancels the rejected delivery (which it may until it is archived), and has
    // not committed yet...
    let mut support = support_connection(&config, &db).await;
    let mut cancelling = support.transaction().await.expect("begin");
    let report = support::cancel(&mut cancelling, &[id], "support@helparound.test")
        .await
        .expect("cancel");
    assert_eq!(report.cancelled, [id]);
    // ...when the pruner moves its event: it waits for the cancel's row.
    let mut pruner = router.another_connection().await;
    let pid = backend_pid(&pruner).await;
    let moving =
        tokio::spawn(async move { archive::archive_erased_events(&mut pruner, 30, 1000).await });
    assert!(
        db.blocked_before_done(pid, &moving).await,
        "the move waited for the cancel"
    );
    cancelling.commit().await.expect("the cancel commits");
    let moved = moving.await.expect("archive task").expect("archive");
    assert_eq!(moved.deliveries, 1);

    // It ended just now, cancelled: its week is kept `metadata_days` (30 here) from now,
    // not from its rejection a month ago.
    let ends = db
        .client
        .query_one(
            "SELECT d.state, d.ended_at > now() - interval '1 day',
                    k.last_ended_at >= d.ended_at
             FROM dispatcher.archived_deliveries d
             JOIN dispatcher.archive_weeks k ON k.week = dispatcher.archive_week_of(d.id)",
            &[],
        )
        .await
        .expect("the archived delivery and its week");
    let (state, ended_now, week_covers_it): (String, bool, bool) =
        (ends.get(0), ends.get(1), ends.get(2));
    assert_eq!((state.as_str(), ended_now), ("cancelled", true));
    assert!(
        week_covers_it,
        "the week's last end is before its delivery's"
    );
    let dropped = archive::drop_archived_week(&router.client, 30)
        .await
        .expect("drop");
    assert!(
        !dropped,
        "a week was dropped with a delivery that ended today"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_without_a_right_to_the_schema_cannot_hold_up_the_archive() {
    let (db, config, _path) = delivered_a_month_ago().await;
    let mut router = Router::of(&config, &db).await;
    assert_eq!(erased(&mut router).await, 2);
    // Any role that may connect can take any advisory key; this one holds the key of
    // the text the archive's lock would be named by.
    let stranger = db.connect().await;
    let role = format!("stranger_{}", &Uuid::new_v4().simple().to_string()[..8]);
    stranger
        .batch_execute(&format!(
            "CREATE ROLE {role}; SET ROLE {role};
             SELECT pg_advisory_lock(hashtext('dispatcher.archive'))"
        ))
        .await
        .expect("a stranger holds an advisory key");
    let refused = stranger
        .batch_execute("BEGIN; LOCK TABLE dispatcher.archive_weeks IN SHARE ROW EXCLUSIVE MODE")
        .await;
    assert!(refused.is_err(), "a stranger locked the archive's table");
    stranger.batch_execute("ROLLBACK").await.expect("roll back");

    let mut pruner = router.another_connection().await;
    let pid = backend_pid(&pruner).await;
    let moving =
        tokio::spawn(async move { archive::archive_erased_events(&mut pruner, 30, 1000).await });
    let waited = db.blocked_before_done(pid, &moving).await;
    stranger
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .expect("the stranger lets go");
    assert!(!waited, "the archive waited for a stranger's lock");
    let moved = moving.await.expect("archive task").expect("archive");
    assert_eq!(moved.deliveries, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pruners_moving_events_into_one_new_week_both_move_theirs() {
    let (db, config, _path) = delivered_a_month_ago().await;
    let mut router = Router::of(&config, &db).await;
    assert_eq!(erased(&mut router).await, 2);
    // A drop in progress holds the archive's lock: each pruner takes one event (made
    // today, as the other: the week has no partition yet) and waits for the lock.
    let drop_in_progress = db.connect().await;
    drop_in_progress
        .batch_execute("BEGIN; SELECT dispatcher.drop_archived_week(400)")
        .await
        .expect("a drop in progress");
    let mut pruners = Vec::new();
    for _ in 0..2 {
        let mut pruner = router.another_connection().await;
        let pid = backend_pid(&pruner).await;
        let moving =
            tokio::spawn(async move { archive::archive_erased_events(&mut pruner, 30, 1).await });
        assert!(
            db.blocked_before_done(pid, &moving).await,
            "the pruner waits for the drop"
        );
        pruners.push(moving);
    }
    drop_in_progress
        .batch_execute("COMMIT")
        .await
        .expect("the drop ends");

    // The second to make the week's partitions finds them made by the first.
    for moving in pruners {
        let moved = moving.await.expect("archive task").expect("archive");
        assert_eq!(moved.deliveries, 1);
    }
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.archived_deliveries")
            .await,
        2
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.archive_weeks")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drop_in_a_deadlock_with_support_reading_leaves_the_week_to_the_next_pass() {
    let (db, config, path) = delivered_a_month_ago().await;
    cli_ok(&path, &["prune"]).await;
    db.archived_ended_days_ago("p-once", 401).await;
    db.archived_ended_days_ago("p-retried", 401).await;
    let router = Router::of(&config, &db).await;
    // Support reads the archive's deliveries, then their attempts, in one transaction.
    let reader = db.connect().await;
    reader
        .batch_execute(
            "SET deadlock_timeout = '1min';
             BEGIN; SELECT count(*) FROM dispatcher.every_delivery",
        )
        .await
        .expect("support reads the deliveries");
    // A server that looks for deadlocks sooner than the drop gives up on a lock (1s):
    // the drop takes the attempts' table, waits for the deliveries'...
    let pruner = router.another_connection().await;
    pruner
        .batch_execute("SET deadlock_timeout = '500ms'")
        .await
        .expect("deadlock_timeout");
    let pid = backend_pid(&pruner).await;
    let dropping = tokio::spawn(async move { archive::drop_archived_week(&pruner, 400).await });
    assert!(db.blocked_before_done(pid, &dropping).await);
    // ...and support's next read waits for the drop's: the drop is the one to give way.
    reader
        .batch_execute("SELECT count(*) FROM dispatcher.every_attempt")
        .await
        .expect("support reads the attempts");
    let dropped = dropping
        .await
        .expect("drop task")
        .expect("the drop gives way without failing the pass");
    assert!(!dropped);
    reader.batch_execute("COMMIT").await.expect("the read ends");
    assert!(archive::drop_archived_week(&router.client, 400)
        .await
        .expect("the next pass's drop"));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_partner_received_reads_the_same_once_the_patients_earlier_event_is_archived() {
    // The partner gives the patient its id at enrollment, and another at a tracker view.
    let acme = TestPartner::start("acme", |request| {
        let external_id = if request.path.ends_with("user-action") {
            "crm-second"
        } else {
            "crm-first"
        };
        Reply::status(
            200,
            json!({"success": true, "data": {"supportProgramId": PROGRAM,
                   "patientId": request.patient_id(), "externalId": external_id}})
            .to_string(),
        )
    })
    .await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let daemon = Daemon::start(&config, &db);
    let enrolled = db
        .insert_event(ENROLLMENT, &enrollment_event("p-renamed"))
        .await;
    db.wait_for_state("delivered", 1).await;
    let viewed = db
        .insert_event(VIEWED_TRACKER, &viewed_tracker_event("p-renamed"))
        .await;
    db.wait_for_state("delivered", 2).await;
    drop(daemon);
    let support = support_connection(&config, &db).await;
    let tracker_view: Uuid = db
        .client
        .query_one(
            "SELECT id FROM dispatcher.deliveries WHERE event_id = $1",
            &[&viewed],
        )
        .await
        .expect("the tracker view's delivery")
        .get(0);
    let before = external_id_received(&support, tracker_view).await;
    assert!(before.is_some(), "the partner knew the patient");

    // The enrollment ended a month ago: it is archived, the tracker view kept.
    db.client
        .batch_execute(&format!(
            "UPDATE dispatcher.outbox SET created_at = now() - interval '31 days'
             WHERE id = {enrolled};
             UPDATE dispatcher.deliveries SET ended_at = now() - interval '31 days'
             WHERE event_id = {enrolled}"
        ))
        .await
        .expect("a month passes for the enrollment");
    let pruned = cli_ok(&path, &["prune"]).await;
    assert!(pruned.stdout.contains("archived 1 deliveries"), "{pruned}");

    assert_eq!(external_id_received(&support, tracker_view).await, before);
}

/// The partner's own id for the patient in what support is shown the partner received.
async fn external_id_received(support: &deadpool_postgres::Client, id: Uuid) -> Option<String> {
    stored_request(support, id)
        .await
        .expect("what the partner received")
        .expect("the delivery's request")
        .external_id
}
