//! Support's and ops' view: the `dispatcher deliveries …` commands, and how the program
//! refuses a database or a config it cannot work with.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

async fn cli_json(config: &Path, args: &[&str]) -> Value {
    let output = cli_ok(config, args).await;
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("dispatcher {args:?} printed no JSON ({e}):\n{output}"))
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn sorted(keys: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    keys.sort();
    keys
}

fn timestamp(value: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("not an RFC 3339 timestamp: {text}: {e}"))
        .with_timezone(&chrono::Utc)
}

async fn delivery_id_of_patient(db: &TestDb, patient: &str) -> String {
    db.client
        .query_one(
            "SELECT id::text FROM dispatcher.deliveries WHERE patient_id = $1 ORDER BY event_id LIMIT 1",
            &[&patient],
        )
        .await
        .expect("find the patient's delivery")
        .get(0)
}

const SUMMARY_FIELDS: [&str; 12] = [
    "id",
    "event_id",
    "partner",
    "event_name",
    "patient_id",
    "state",
    "attempt_count",
    "attempts_since_resend",
    "last_status",
    "last_error",
    "created_at",
    "next_attempt_at",
];

const PARTNER_MESSAGE: &str = "patient phone number +12027953213 is on our do-not-call list";

#[tokio::test(flavor = "multi_thread")]
async fn support_lists_failed_deliveries_and_resends_them() {
    // The partner refuses the first try of each webhook for one patient, then fixes its side.
    let partner = TestPartner::start("acme", |request| {
        if request.patient_id() == "p-refused" && request.try_number == 1 {
            Reply::status(
                400,
                json!({"errorMessage": PARTNER_MESSAGE, "data": {"patientId": request.patient_id()}})
                    .to_string(),
            )
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-fine"))
        .await;
    let event_id = db
        .insert_event(ENROLLMENT, &enrollment_event("p-refused"))
        .await;
    db.wait_for_state("rejected", 1).await;
    db.wait_for_state("delivered", 1).await;
    let id = delivery_id_of_patient(&db, "p-refused").await;

    let failed = cli_json(
        &path,
        &["deliveries", "list", "--state", "failed", "--json"],
    )
    .await;
    let failed = failed.as_array().expect("a JSON array of deliveries");
    assert_eq!(
        failed.len(),
        1,
        "only the refused delivery is failed: {failed:?}"
    );
    let row = &failed[0];
    assert_eq!(keys(row), sorted(&SUMMARY_FIELDS), "{row}");
    assert_eq!(row["id"], json!(id));
    assert_eq!(row["event_id"], json!(event_id));
    assert_eq!(row["partner"], "acme");
    assert_eq!(row["event_name"], ENROLLMENT);
    assert_eq!(row["patient_id"], "p-refused");
    assert_eq!(row["state"], "rejected");
    assert_eq!(row["attempt_count"], 1);
    assert_eq!(row["last_status"], 400);
    let last_error = row["last_error"].as_str().expect("last_error");
    assert!(
        last_error.contains(PARTNER_MESSAGE),
        "last_error: {last_error}"
    );
    timestamp(&row["created_at"]);
    assert_eq!(
        row["next_attempt_at"],
        Value::Null,
        "a rejected delivery is not retried by itself"
    );

    let detail = cli_json(&path, &["deliveries", "show", &id, "--json"]).await;
    assert_eq!(detail["id"], json!(id));
    assert_eq!(detail["state"], "rejected");
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{detail}");
    let attempt = &attempts[0];
    assert_eq!(
        keys(attempt),
        sorted(&[
            "number",
            "started_at",
            "duration_ms",
            "http_status",
            "error",
            "response_body",
            "answer_erased_at"
        ]),
        "{attempt}"
    );
    assert_eq!(attempt["number"], 1);
    assert_eq!(attempt["http_status"], 400);
    assert!(attempt["duration_ms"].is_u64(), "{attempt}");
    timestamp(&attempt["started_at"]);
    let answer = attempt["response_body"]
        .as_str()
        .expect("the partner's answer is kept");
    assert!(answer.contains(PARTNER_MESSAGE), "response_body: {answer}");

    let table = cli_ok(&path, &["deliveries", "list"]).await.stdout;
    let line = table
        .lines()
        .find(|line| line.contains(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{table}"));
    assert!(
        line.contains("rejected") && line.contains("p-refused"),
        "{line}"
    );
    assert!(
        table.contains("delivered"),
        "the delivered one is listed too:\n{table}"
    );
    let human = cli_ok(&path, &["deliveries", "show", &id]).await.stdout;
    assert!(
        human.contains(PARTNER_MESSAGE) && human.contains("400"),
        "{human}"
    );

    let resent = cli_ok(&path, &["deliveries", "retry", &id]).await;
    assert!(resent.stdout.contains(&id), "{resent}");
    db.wait_for_state("delivered", 2).await;

    let detail = cli_json(&path, &["deliveries", "show", &id, "--json"]).await;
    assert_eq!(detail["state"], "delivered");
    assert_eq!(detail["attempt_count"], 2);
    assert_eq!(detail["last_status"], 200);
    let statuses: Vec<&Value> = detail["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| &a["http_status"])
        .collect();
    assert_eq!(
        statuses,
        [&json!(400), &json!(200)],
        "the refused attempt stays in the history: {detail}"
    );
    let sent = partner
        .received()
        .into_iter()
        .filter(|r| r.webhook_id() == id)
        .count();
    assert_eq!(sent, 2, "sent once, then once more on support's request");
    let failed = cli_json(
        &path,
        &["deliveries", "list", "--state", "failed", "--json"],
    )
    .await;
    assert_eq!(failed, json!([]), "nothing is left failed");

    let typo = cli(&path, &["deliveries", "list", "--state", "failled"]).await;
    assert!(
        !typo.status.success()
            && typo.stderr.contains("failed")
            && typo.stderr.contains("unrouted"),
        "a mistyped state is refused, listing the valid ones:\n{typo}"
    );

    let unknown = uuid::Uuid::new_v4().to_string();
    let output = cli(&path, &["deliveries", "retry", &unknown]).await;
    assert!(
        !output.status.success() && output.stderr.contains(&unknown),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn support_cancels_a_pending_delivery() {
    let down = Arc::new(AtomicBool::new(true));
    let partner_down = down.clone();
    let partner = TestPartner::start("acme", move |request| {
        if partner_down.load(Ordering::SeqCst) {
            Reply::status(503, "down for maintenance")
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    // The next try would only come in an hour: long enough to stay pending during the test.
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .max_attempts(5)
        .retry_delays(
            Duration::from_secs(60 * 60),
            Duration::from_secs(2 * 60 * 60),
        );
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_deliveries(&Deliveries::all().in_state("pending").with_attempts(1), 1)
        .await;
    let stuck = delivery_id_of_patient(&db, "p-1").await;

    let pending = cli_json(
        &path,
        &["deliveries", "list", "--state", "pending", "--json"],
    )
    .await;
    assert_eq!(pending[0]["id"], json!(stuck), "{pending}");
    assert_eq!(pending[0]["last_status"], 503);
    let next = timestamp(&pending[0]["next_attempt_at"]);
    assert!(
        next > timestamp(&pending[0]["created_at"]) + chrono::Duration::minutes(30),
        "the next try is about an hour away: {pending}"
    );

    let output = cli_ok(&path, &["deliveries", "cancel", &stuck]).await;
    assert!(
        output.stdout.contains(&stuck) && output.stdout.contains("cancelled"),
        "{output}"
    );
    let cancelled = cli_json(
        &path,
        &["deliveries", "list", "--state", "cancelled", "--json"],
    )
    .await;
    assert_eq!(cancelled.as_array().map(Vec::len), Some(1), "{cancelled}");
    assert_eq!(cancelled[0]["id"], json!(stuck));
    assert_eq!(cancelled[0]["next_attempt_at"], Value::Null);
    // Cancelling twice, and an id that is no delivery: each says the one reason.
    let nobody = "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b";
    let again = cli(&path, &["deliveries", "cancel", &stuck, nobody]).await;
    assert!(!again.status.success(), "{again}");
    assert!(
        again
            .stderr
            .contains(&format!("{stuck}: not cancelled: it is already cancelled")),
        "cancelling twice is reported:\n{again}"
    );
    assert!(
        again
            .stderr
            .contains(&format!("{nobody}: not cancelled: no delivery has this id")),
        "{again}"
    );
    assert!(
        !again.stderr.contains("delivered"),
        "only the reason that applies: {again}"
    );

    // The partner is back; the patient enrolls again. Had the cancelled delivery stayed
    // pending, it would go first (and hold this one back).
    down.store(false, Ordering::SeqCst);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_state("delivered", 1).await;

    let counts = per_webhook_id(&partner.received());
    assert_eq!(
        counts.get(&stuck),
        Some(&1),
        "the cancelled delivery was sent again: {counts:?}"
    );
    assert_eq!(counts.len(), 2);
    let detail = cli_json(&path, &["deliveries", "show", &stuck, "--json"]).await;
    assert_eq!(detail["state"], "cancelled");
    assert_eq!(detail["attempt_count"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_in_flight_cannot_be_cancelled_so_its_answer_is_never_lost() {
    let partner = TestPartner::start("acme", |request| {
        Reply::accepted(request).after(Duration::from_millis(1500))
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    // (The bench's request_timeout is 2s; the partner answers within it.)
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let _daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let received = partner.wait_for_requests(1).await;
    let id = received[0].webhook_id();

    // Support tries to cancel while the request is on the wire: refused, with the reason.
    let refused = cli(&path, &["deliveries", "cancel", &id]).await;
    assert!(!refused.status.success());
    let stderr = &refused.stderr;
    assert!(
        stderr.contains(&format!("{id}: not cancelled: it is in flight right now")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("delivered"),
        "only the reason that applies: {stderr}"
    );

    db.wait_for_state("delivered", 1).await;
    let detail = cli_json(&path, &["deliveries", "show", &id, "--json"]).await;
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{detail}");
    assert_eq!(attempts[0]["http_status"], 200, "{detail}");
}

/// Since the claim became a HOT update (migration 0020) a claimed delivery is stored
/// `pending` with its claim token and lease. Support still sees it in flight: listed as
/// in flight and never as pending, with no next attempt (its request is on the wire), and
/// refused a cancel, so the partner's answer is never lost.
#[tokio::test(flavor = "multi_thread")]
async fn support_sees_a_claimed_delivery_in_flight_and_cannot_cancel_it() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    // Routed by the router's own code; no daemon runs, so nothing is sent.
    for patient in ["p-claimed", "p-due"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    Router::of(&config, &db).await.route().await;
    let claimed = delivery_id_of_patient(&db, "p-claimed").await;
    let due = delivery_id_of_patient(&db, "p-due").await;
    db.claim_by_hand(&[&claimed], Duration::from_secs(300))
        .await;

    let in_flight = cli_json(
        &path,
        &["deliveries", "list", "--state", "in_flight", "--json"],
    )
    .await;
    let in_flight = in_flight.as_array().expect("a JSON array");
    assert_eq!(in_flight.len(), 1, "{in_flight:?}");
    assert_eq!(in_flight[0]["id"], claimed.as_str());
    assert_eq!(in_flight[0]["state"], "in_flight");
    // Support's "pending" is every unfinished delivery: each is shown as what it is.
    let unfinished = cli_json(
        &path,
        &["deliveries", "list", "--state", "pending", "--json"],
    )
    .await;
    let shown: std::collections::BTreeMap<&str, (&str, bool)> = unfinished
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|row| {
            let id = row["id"].as_str().expect("id");
            let state = row["state"].as_str().expect("state");
            (id, (state, row["next_attempt_at"].is_null()))
        })
        .collect();
    assert_eq!(
        shown,
        [
            (due.as_str(), ("pending", false)),
            (claimed.as_str(), ("in_flight", true)),
        ]
        .into(),
        "the due one with its next attempt, the claimed one in flight with none"
    );
    let detail = cli_json(&path, &["deliveries", "show", &claimed, "--json"]).await;
    assert_eq!(detail["state"], "in_flight", "{detail}");
    assert!(detail["next_attempt_at"].is_null(), "{detail}");

    let refused = cli(&path, &["deliveries", "cancel", &claimed]).await;
    assert!(!refused.status.success(), "{refused}");
    assert!(
        refused.stderr.contains(&format!(
            "{claimed}: not cancelled: it is in flight right now"
        )),
        "{refused}"
    );
    assert_eq!(
        db.count_deliveries(&Deliveries::all().with_id(&claimed).in_state("in_flight"))
            .await,
        1,
        "still claimed, its answer still to be recorded"
    );
    // The pending one beside it is cancelled as ever.
    cli_ok(&path, &["deliveries", "cancel", &due]).await;
    assert_eq!(
        db.count_deliveries(&Deliveries::all().with_id(&due).in_state("cancelled"))
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unrouted_events_are_listed_for_support() {
    let acme = TestPartner::accepting("acme").await;
    let globex = TestPartner::accepting("globex").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    let mut daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-routed"))
        .await;
    let mut orphan = enrollment_event("p-orphan");
    orphan["supportProgramId"] = json!(UNSERVED_PROGRAM);
    let orphan_event = db.insert_event(ENROLLMENT, &orphan).await;
    db.wait_for_state("unrouted", 1).await;
    db.wait_for_state("delivered", 1).await;

    let unrouted = cli_json(
        &path,
        &["deliveries", "list", "--state", "unrouted", "--json"],
    )
    .await;
    let unrouted = unrouted.as_array().expect("a JSON array");
    assert_eq!(unrouted.len(), 1, "{unrouted:?}");
    let row = &unrouted[0];
    assert_eq!(keys(row), sorted(&SUMMARY_FIELDS), "{row}");
    assert_eq!(row["event_id"], json!(orphan_event));
    assert_eq!(row["partner"], Value::Null);
    assert_eq!(row["patient_id"], "p-orphan");
    assert_eq!(row["state"], "unrouted");
    assert_eq!(row["attempt_count"], 0);
    let reason = row["last_error"].as_str().expect("a reason for support");
    assert!(reason.contains("no partner"), "{reason}");
    let placeholder = row["id"].as_str().expect("id").to_string();
    let failed = cli_json(
        &path,
        &["deliveries", "list", "--state", "failed", "--json"],
    )
    .await;
    assert!(
        failed
            .as_array()
            .expect("array")
            .iter()
            .any(|d| d["id"] == json!(placeholder)),
        "unrouted events count as failed for support: {failed}"
    );
    let table = cli_ok(&path, &["deliveries", "list", "--state", "unrouted"])
        .await
        .stdout;
    assert!(
        table.contains(&placeholder) && table.contains("unrouted"),
        "{table}"
    );
    assert!(globex.received().is_empty());

    // Ops configure the program's partner and restart; support routes the event again.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        daemon.wait_exit().await.success(),
        "log:\n{}",
        daemon.log_text()
    );
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&globex, &[UNSERVED_PROGRAM]);
    let path = config.write(&db);
    let _daemon = Daemon::start(&config, &db);
    let output = cli_ok(&path, &["deliveries", "retry", &placeholder]).await;
    assert!(output.stdout.contains(&placeholder), "{output}");

    let received = globex.wait_for_requests(1).await;
    assert_eq!(received[0].patient_id(), "p-orphan");
    db.wait_for_deliveries(
        &Deliveries::of("globex")
            .of_event(orphan_event)
            .in_state("delivered"),
        1,
    )
    .await;
    let unrouted = cli_json(
        &path,
        &["deliveries", "list", "--state", "unrouted", "--json"],
    )
    .await;
    assert_eq!(unrouted, json!([]), "the event is no longer unrouted");
    assert_eq!(acme.received().len(), 1, "acme only got its own event");

    // The placeholder's id, which support may have noted, leads to the new delivery.
    let delivered = received[0].webhook_id();
    let old = cli(&path, &["deliveries", "show", &placeholder]).await;
    assert!(
        old.stderr.contains("reached no partner") && old.stderr.contains(&delivered),
        "{old}"
    );
    let admin = AdminClient::of(&_daemon, None).await;
    let (status, body) = admin.get(&format!("/api/deliveries/{placeholder}")).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&delivered),
        "{body}"
    );
    let page = admin
        .raw(
            admin
                .http()
                .get(format!("{}/deliveries/{placeholder}", admin.base)),
        )
        .await
        .text()
        .await
        .expect("page");
    assert!(
        page.contains(&format!("href=\"/deliveries/{delivered}\"")),
        "{page}"
    );
}

/// A delivery that gave up, resent by support: while pending again it shows no stale
/// error, and once it gives up again its tries are this round's beside "gave up after".
#[tokio::test(flavor = "multi_thread")]
async fn after_a_resend_the_words_are_about_the_new_round() {
    let partner = TestPartner::start("acme", |_| Reply::status(503, "")).await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .circuit_breaker_failures("acme", 100)
        .max_attempts(2)
        .retry_delays(Duration::from_millis(10), Duration::from_millis(10));
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().in_state("dead").with_attempts(2), 1)
        .await;
    drop(daemon);
    let id = delivery_id_of_patient(&db, "p-1").await;

    cli_ok(&path, &["deliveries", "retry", &id]).await;
    let shown = cli_json(&path, &["deliveries", "show", &id, "--json"]).await;
    assert_eq!(shown["state"], "pending", "{shown}");
    assert_eq!(shown["last_error"], Value::Null, "{shown}");
    assert_eq!(shown["last_status"], Value::Null, "{shown}");
    assert_eq!(
        (&shown["attempt_count"], &shown["attempts_since_resend"]),
        (&json!(2), &json!(0))
    );
    let text = cli_ok(&path, &["deliveries", "show", &id]).await.stdout;
    assert!(!text.contains("last error"), "{text}");

    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().in_state("dead").with_attempts(4), 1)
        .await;
    let table = cli_ok(&path, &["deliveries", "list", "--state", "dead"])
        .await
        .stdout;
    let row = table
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
    assert!(
        row.contains("2 (4 in all)") && row.contains("gave up after 2 attempts"),
        "{row}"
    );
    assert!(table.contains("(1 delivery)"), "{table}");
    let admin = AdminClient::of(&daemon, None).await;
    let overview = admin
        .raw(admin.http().get(format!("{}/?state=dead", admin.base)))
        .await
        .text()
        .await
        .expect("overview");
    assert!(overview.contains(">2 (4 in all)<"), "{overview}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_an_unmigrated_database() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::unmigrated().await;
    let path = config.write(&db);

    for args in [&["run"][..], &["deliveries", "list"][..]] {
        let output = cli(&path, args).await;
        assert!(
            !output.status.success(),
            "{args:?} ran on an unmigrated database:\n{output}"
        );
        assert!(
            output.stderr.contains("dispatcher migrate"),
            "{args:?} should tell ops what to do:\n{output}"
        );
    }
    assert_eq!(
        db.count("SELECT count(*) FROM pg_namespace WHERE nspname = 'dispatcher'")
            .await,
        0,
        "run must not create the schema by itself"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_a_newer_schema() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    db.client
        .execute(
            "INSERT INTO dispatcher.schema_migrations (version) VALUES (999)",
            &[],
        )
        .await
        .expect("pretend a newer dispatcher migrated");
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;

    let output = cli(&path, &["run"]).await;
    assert!(
        !output.status.success(),
        "run accepted a newer schema:\n{output}"
    );
    assert!(output.stderr.contains("newer"), "{output}");
    let output = cli(&path, &["migrate"]).await;
    assert!(
        !output.status.success(),
        "an old dispatcher must not migrate a newer schema:\n{output}"
    );
    assert!(output.stderr.contains("newer"), "{output}");
    assert!(partner.received().is_empty(), "nothing was sent");
    assert_eq!(db.count_deliveries(&Deliveries::all()).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_config_stops_the_program_naming_the_key() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let good = config.text(&db);
    let enrollment_url = format!("{}/webhook/user-enrollment", partner.base_url);
    let user_action_line = format!(
        "user_action_url = \"{}/webhook/user-action\"\n",
        partner.base_url
    );
    assert!(
        good.contains(&enrollment_url)
            && good.contains(&user_action_line)
            && good.contains("allow_insecure = true\n")
    );

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown key",
            good.replace(
                "allow_insecure = true\n",
                "allow_insecure = true\ncolour = \"red\"\n",
            ),
            vec!["partners[0]", "colour"],
        ),
        (
            "malformed URL",
            good.replace(&enrollment_url, "crm.example.com/webhook/user-enrollment"),
            vec!["partners[0].enrollment_url"],
        ),
        (
            "missing required key",
            good.replace(&user_action_line, ""),
            vec!["partners[0]", "user_action_url"],
        ),
        (
            "http without allow_insecure",
            good.replace("allow_insecure = true\n", ""),
            vec!["partners[0].enrollment_url", "https"],
        ),
        (
            "lease shorter than a request plus the grace period",
            config.clone().lease(Duration::from_secs(3)).text(&db),
            vec!["dispatch.lease"],
        ),
    ];
    for (index, (case, text, expected)) in cases.iter().enumerate() {
        assert_ne!(text, &good, "{case}: the config was not changed");
        let path = config.dir.path().join(format!("broken-{index}.toml"));
        std::fs::write(&path, text).expect("write config");
        let output = cli(&path, &["run"]).await;
        assert!(
            !output.status.success(),
            "{case}: the daemon started anyway:\n{output}"
        );
        for needle in expected {
            assert!(
                output.stderr.contains(needle),
                "{case}: stderr does not name `{needle}`:\n{output}"
            );
        }
        assert!(
            output.stderr.contains(&path.display().to_string()),
            "{case}: stderr does not name the file:\n{output}"
        );
    }

    // The unchanged text is fine, so each failure above is down to its one change.
    let path = config.dir.path().join("good.toml");
    std::fs::write(&path, &good).expect("write config");
    cli_ok(&path, &["deliveries", "list"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_is_idempotent() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);

    let db = TestDb::migrated(&config).await;
    let path = config.write(&db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let output = cli_ok(&path, &["migrate"]).await;
    assert!(output.stdout.contains("up to date"), "{output}");
    let migrations = migration_files();
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.schema_migrations")
            .await,
        migrations
    );
    assert_eq!(db.count_events().await, 1, "data survives a second migrate");

    // Two deployments migrating a fresh database at once.
    let fresh = TestDb::unmigrated().await;
    let fresh_config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let fresh_path = fresh_config.write(&fresh);
    let (first, second) = tokio::join!(
        cli(&fresh_path, &["migrate"]),
        cli(&fresh_path, &["migrate"])
    );
    assert!(first.status.success(), "{first}");
    assert!(second.status.success(), "{second}");
    assert_eq!(
        fresh
            .count("SELECT count(*) FROM dispatcher.schema_migrations")
            .await,
        migrations
    );

    let _daemon = Daemon::start(&fresh_config, &fresh);
    fresh
        .insert_event(ENROLLMENT, &enrollment_event("p-2"))
        .await;
    partner.wait_for_requests(1).await;
    fresh.wait_for_state("delivered", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_prints_each_partners_routes_with_credentials_hidden_and_needs_no_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dispatcher.toml");
    // Nothing listens on port 1: `check` must not try.
    let text = format!(
        r#"
[database]
url = "postgres://dispatcher:db-password@127.0.0.1:1/nowhere"

[[partners]]
name = "acme"
support_programs = ["{PROGRAM}", "prog-2"]
enrollment_url = "https://crm-user:crm-password@acme.example/hooks/enroll?api_key=acme-query-key"
user_action_url = "https://acme.example/hooks/action"
signing_secret = "{SIGNING_SECRET}"
headers = {{ "x-api-key" = "acme-header-key" }}
max_in_flight = 7

[[partners]]
name = "beta"
support_programs = ["prog-3"]
enrollment_url = "https://beta.example/enroll"
user_action_url = "https://beta.example/action"
"#
    );
    std::fs::write(&path, text).expect("write config");

    let output = cli_ok(&path, &["check"]).await;

    let stdout = &output.stdout;
    for expected in [
        "partner acme: max_in_flight 7, signed, headers [x-api-key]",
        &format!("support program {PROGRAM}"),
        "support program prog-2",
        "enrollment  -> https://redacted:redacted@acme.example/hooks/enroll?redacted",
        "user action -> https://acme.example/hooks/action",
        "partner beta: max_in_flight 64, unsigned, headers []",
        "support program prog-3",
        "enrollment  -> https://beta.example/enroll",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}`:\n{output}");
    }
    for secret in [
        "db-password",
        "crm-user",
        "crm-password",
        "acme-query-key",
        "acme-header-key",
        SIGNING_SECRET,
    ] {
        assert!(
            !output.stdout.contains(secret) && !output.stderr.contains(secret),
            "`{secret}` was printed:\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_when_a_partner_url_leads_to_an_address_the_guard_refuses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dispatcher.toml");
    std::fs::write(
        &path,
        r#"
[database]
url = "postgres://dispatcher@127.0.0.1:1/nowhere"

[[partners]]
name = "metadata-thief"
support_programs = ["prog-1"]
enrollment_url = "https://169.254.169.254/latest/meta-data"
user_action_url = "https://169.254.169.254/latest/meta-data"

[[partners]]
name = "loopback"
support_programs = ["prog-1"]
enrollment_url = "https://localhost/enroll"
user_action_url = "https://localhost/action"
"#,
    )
    .expect("write config");

    let output = cli_ok(&path, &["check"]).await;

    let warnings: Vec<&str> = output
        .stdout
        .lines()
        .filter(|line| line.contains("warning: destination refused"))
        .collect();
    assert_eq!(warnings.len(), 2, "{output}");
    assert!(
        warnings[0].contains("169.254.169.254") && warnings[0].contains("link-local"),
        "{output}"
    );
    assert!(
        warnings[1].contains("localhost") && warnings[1].contains("loopback"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_an_invalid_config_with_exit_1_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dispatcher.toml");
    std::fs::write(
        &path,
        r#"
[database]
url = "postgres://dispatcher@127.0.0.1:1/nowhere"

[[partners]]
name = "acme"
support_programs = ["prog-1"]
enrollment_url = "http://acme.example/enroll"
user_action_url = "https://acme.example/action"
"#,
    )
    .expect("write config");

    let output = cli(&path, &["check"]).await;

    assert_eq!(output.status.code(), Some(1), "{output}");
    assert!(
        output.stderr.contains("partners[0].enrollment_url") && output.stderr.contains("https"),
        "{output}"
    );
    assert!(output.stdout.is_empty(), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_every_problem_of_a_file_in_one_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The sample copied as the README says, before any of its variables is set.
    let path = dir.path().join("dispatcher.toml");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("dispatcher.sample.toml");
    std::fs::copy(sample, &path).expect("copy the sample");
    let variables = [
        ("admin.token", "DISPATCHER_ADMIN_TOKEN"),
        ("database.url", "DISPATCHER_DATABASE_URL"),
        ("partners[0].headers.x-api-key", "ACME_API_KEY"),
        ("partners[0].signing_secret", "ACME_SIGNING_SECRET"),
        ("partners[1].auth.client_secret", "GLOBEX_CLIENT_SECRET"),
        ("partners[1].signing_secret", "GLOBEX_SIGNING_SECRET"),
    ];
    let mut command = dispatcher(&path);
    command.arg("check");
    for (_, variable) in variables {
        command.env_remove(variable);
    }

    let output = finish(command).await;

    assert_eq!(output.status.code(), Some(1), "{output}");
    assert!(
        output
            .stderr
            .contains(&format!("6 problems in {}:", path.display())),
        "{output}"
    );
    for (key, variable) in variables {
        assert!(
            output.stderr.contains(&format!(
                "config key `{key}`: environment variable {variable} is not set"
            )),
            "`{variable}` in `{key}` is not named:\n{output}"
        );
    }

    // Two partners wrong, each in its own way: both named.
    std::fs::write(
        &path,
        r#"
[database]
url = "postgres://dispatcher@127.0.0.1:1/nowhere"

[[partners]]
name = "acme"
support_programs = ["prog-1"]
enrollment_url = "http://acme.example/enroll"
user_action_url = "https://acme.example/action"

[[partners]]
name = "beta"
support_programs = ["prog-1"]
enrollment_url = "https://beta.example/enroll"
user_action_url = "https://beta.example/action"
allow_networks = ["localhost"]
"#,
    )
    .expect("write config");

    let output = cli(&path, &["check"]).await;

    assert_eq!(output.status.code(), Some(1), "{output}");
    for expected in [
        &format!("2 problems in {}:", path.display()),
        "config key `partners[0].enrollment_url`: must be https://",
        "config key `partners[1].allow_networks`: `localhost` is not a network",
    ] {
        assert!(
            output.stderr.contains(expected),
            "missing `{expected}`:\n{output}"
        );
    }
    assert!(output.stdout.is_empty(), "{output}");
}

/// How many migrations the dispatcher ships: the versions of `migrations/NNNN_*.sql` (a
/// migration applied online has a second file, `NNNN_name.online.sql`).
fn migration_files() -> i64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let versions: std::collections::BTreeSet<String> = std::fs::read_dir(dir)
        .expect("migrations/")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.ends_with(".sql").then(|| name[..4].to_string())
        })
        .collect();
    versions.len() as i64
}

/// Support reads deliveries with the database alone: a partner's secret that lives only
/// in the daemon's environment, unset in support's shell, does not stop `deliveries`.
#[tokio::test(flavor = "multi_thread")]
async fn support_reads_deliveries_without_the_partners_secrets() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_state("delivered", 1).await;

    let unset = "ACME_API_KEY_NOT_IN_SUPPORTS_SHELL";
    let text = config
        .text(&db)
        .replace("\"key-acme\"", &format!("\"${{{unset}}}\""));
    assert!(text.contains(unset), "{text}");
    let path = write_file(config.dir.path(), "support.toml", &text);
    let check = cli(&path, &["check"]).await;
    assert!(
        !check.status.success() && check.stderr.contains(unset),
        "the file does lack the secret:\n{check}"
    );

    let listed = cli_json(&path, &["deliveries", "list", "--json"]).await;
    assert_eq!(listed[0]["state"], "delivered", "{listed}");
    let id = listed[0]["id"].as_str().expect("id").to_string();
    cli_ok(&path, &["deliveries", "show", &id]).await;

    // Or no file at all: the database URL on the command line.
    let nowhere = config.dir.path().join("no-such.toml");
    let listed = cli_json(
        &nowhere,
        &["deliveries", "list", "--json", "--database-url", &db.url],
    )
    .await;
    assert_eq!(listed[0]["id"], json!(id), "{listed}");
    let without = cli(&nowhere, &["deliveries", "list"]).await;
    assert!(
        !without.status.success() && without.stderr.contains("no-such.toml"),
        "{without}"
    );
}

/// An admin server other machines can reach does not speak plain http unless ops say a
/// proxy in front does; `check` names the keys. (Nothing here serves on 0.0.0.0.)
#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_an_admin_server_beyond_loopback_without_tls_naming_the_keys() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .admin_listen("0.0.0.0:9187")
        .admin_token("a-token-of-at-least-24-characters");
    let db = TestDb::unmigrated().await;
    let path = config.write(&db);
    let refused = cli(&path, &["check"]).await;
    assert!(!refused.status.success(), "{refused}");
    for key in [
        "admin.listen",
        "admin.tls_cert",
        "admin.allow_plain_http = true",
    ] {
        assert!(refused.stderr.contains(key), "{key}:\n{refused}");
    }
    let behind_proxy = config.text(&db).replace(
        "[admin]\n",
        "[admin]\nallow_plain_http = true\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let path = write_file(config.dir.path(), "behind-proxy.toml", &behind_proxy);
    cli_ok(&path, &["check"]).await;
}
