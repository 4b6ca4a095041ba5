//! Health data never reaches the logs: the real binary, run with `RUST_LOG=trace`, through
//! every outcome a delivery can have and every support command, prints no name, phone
//! number, birth date, address, insurance number or secret of the events it carried.

use std::path::Path;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const FIRST_NAME: &str = "Zqxwvfirstname";
const LAST_NAME: &str = "Zqxwvlastname";
/// Both numbers are checked without their `+`, so either rendering is caught.
const PHONE: &str = "+12025550143";
const CAREGIVER_PHONE: &str = "+12025550178";
const EMAIL: &str = "zqxwv.patient@example.org";
const CAREGIVER_NAME: &str = "Zqxwvcaregiver";
const CAREGIVER_EMAIL: &str = "zqxwv.caregiver@example.org";
const STREET: &str = "4471 Zqxwvstreet Avenue";
const APT: &str = "Zqxapt-9";
const CITY: &str = "Zqxwvcity";
const ZIP: &str = "98765-4321";
const CARRIER: &str = "Zqxwvcarrier";
const CARD_NAME: &str = "Zqxwvcardname";
const MEMBER_ID: &str = "ZQXMEMBER4471";
const GROUP_NUMBER: &str = "ZQXGROUP9921";
const SECONDARY_MEMBER_ID: &str = "ZQXMEMBER8830";
const SECONDARY_GROUP_NUMBER: &str = "ZQXGROUP6612";
/// The birth date, stored as milliseconds (R5); its ISO rendering is scanned for too.
const BIRTH_DATE: &str = "1987-03-14";
const API_KEY_PREFIX: &str = "Zqxapikey-";
const DB_PASSWORD: &str = "Zqxdbpassword-5520";

fn birth_date_millis() -> i64 {
    chrono::NaiveDate::parse_from_str(BIRTH_DATE, "%Y-%m-%d")
        .expect("birth date")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp_millis()
}

/// Every value of the test patient that must never be printed, with what it is.
fn secrets_and_health_data() -> Vec<(&'static str, String)> {
    let base64_key = SIGNING_SECRET.trim_start_matches("whsec_");
    vec![
        ("first name", FIRST_NAME.into()),
        ("last name", LAST_NAME.into()),
        ("phone number", PHONE.trim_start_matches('+').into()),
        (
            "caregiver phone",
            CAREGIVER_PHONE.trim_start_matches('+').into(),
        ),
        ("email", EMAIL.into()),
        ("caregiver name", CAREGIVER_NAME.into()),
        ("caregiver email", CAREGIVER_EMAIL.into()),
        ("street", STREET.into()),
        ("apartment", APT.into()),
        ("city", CITY.into()),
        ("zip code", ZIP.into()),
        ("insurance carrier", CARRIER.into()),
        ("insurance card name", CARD_NAME.into()),
        ("member id", MEMBER_ID.into()),
        ("group number", GROUP_NUMBER.into()),
        ("secondary member id", SECONDARY_MEMBER_ID.into()),
        ("secondary group number", SECONDARY_GROUP_NUMBER.into()),
        ("birth date (ISO)", BIRTH_DATE.into()),
        ("birth date (millis)", birth_date_millis().to_string()),
        ("signing secret", base64_key.into()),
        ("API key", API_KEY_PREFIX.into()),
        ("database password", DB_PASSWORD.into()),
    ]
}

/// The contract's full enrollment, filled with the marker values above.
fn enrollment_of(patient_id: &str) -> Value {
    let mut event = enrollment_event(patient_id);
    let dob = birth_date_millis();
    let patient = &mut event["patient"];
    patient["firstName"] = json!(FIRST_NAME);
    patient["lastName"] = json!(LAST_NAME);
    patient["phoneNumber"] = json!(PHONE);
    patient["email"] = json!(EMAIL);
    patient["dob"] = json!(dob);
    patient["caregiver"] = json!({"name": CAREGIVER_NAME, "relationship": "Parent",
                                  "phone": CAREGIVER_PHONE, "email": CAREGIVER_EMAIL});
    patient["address"] =
        json!({"street": STREET, "apt": APT, "city": CITY, "state": "AL", "zip": ZIP});
    let primary = &mut patient["insurance"]["primaryInsurance"];
    primary["carrier"] = json!(CARRIER);
    primary["cardname"] = json!(CARD_NAME);
    primary["member_id"] = json!(MEMBER_ID);
    primary["group_num"] = json!(GROUP_NUMBER);
    primary["card_dob"] = json!(dob);
    let secondary = &mut patient["insurance"]["secondaryInsurance"];
    secondary["carrier"] = json!(CARRIER);
    secondary["cardname"] = json!(CARD_NAME);
    secondary["member_id"] = json!(SECONDARY_MEMBER_ID);
    secondary["group_num"] = json!(SECONDARY_GROUP_NUMBER);
    secondary["card_dob"] = json!(dob);
    event
}

fn viewed_tracker_of(patient_id: &str) -> Value {
    let mut event = viewed_tracker_event(patient_id);
    event["patient"]["phoneNumber"] = json!(PHONE);
    event
}

/// The bench's database URL, logging in as a role of its own with a password.
async fn url_with_password(db: &TestDb) -> String {
    let role = format!("phi_{}", uuid::Uuid::new_v4().simple());
    // The throwaway cluster trusts local logins, so the password only has to be sent.
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{DB_PASSWORD}'"
        ))
        .await
        .expect("create a role with a password");
    let mut url = url::Url::parse(&db.url).expect("test database URL");
    url.set_username(&role).expect("set user");
    url.set_password(Some(DB_PASSWORD)).expect("set password");
    url.to_string()
}

/// Runs `dispatcher ARGS…` with `RUST_LOG=trace`; returns what it printed.
async fn traced_cli(config: &Path, args: &[&str]) -> Output {
    let mut command = dispatcher(config);
    command.args(args).env("RUST_LOG", "trace");
    finish(command).await
}

#[tokio::test(flavor = "multi_thread")]
async fn no_health_data_or_secret_is_printed_even_at_trace_level() {
    // acme plays every outcome, by patient; globex takes everything too (fan-out).
    let acme = TestPartner::start("acme", |request| {
        let first_try = request.try_number == 1;
        match request.patient_id().as_str() {
            "p-rejected" if first_try => Reply::status(
                400,
                json!({"errorMessage": "consent form missing"}).to_string(),
            ),
            "p-500" if first_try => Reply::status(500, "internal error"),
            "p-timeout" if first_try => Reply::accepted(request).after(Duration::from_secs(3)),
            "p-dead" => Reply::status(503, "maintenance"),
            _ => Reply::accepted(request),
        }
    })
    .await;
    // globex answers like many CRMs do: echoing the patient back.
    let globex = TestPartner::start("globex", |request| {
        Reply::status(200, echoing_answer(&request.patient_id()))
    })
    .await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&globex, &[PROGRAM])
        .max_attempts(3)
        .retry_delays(Duration::from_millis(300), Duration::from_secs(1));
    let db = TestDb::migrated(&config).await;
    let password_url = url_with_password(&db).await;
    let text = config
        .clone()
        .database_url(&password_url)
        .text(&db)
        .replace("\"key-", &format!("\"{API_KEY_PREFIX}"));
    assert!(text.contains(DB_PASSWORD) && text.contains(API_KEY_PREFIX));
    let path = config.dir.path().join("traced.toml");
    std::fs::write(&path, &text).expect("write config");

    let mut printed = Vec::new();
    printed.push(traced_cli(&path, &["migrate"]).await);
    let mut daemon = Daemon::start_logging(&text, config.dir.path(), "trace");

    for patient in ["p-delivered", "p-rejected", "p-500", "p-timeout", "p-dead"] {
        db.insert_event(ENROLLMENT, &enrollment_of(patient)).await;
    }
    db.insert_event(VIEWED_TRACKER, &viewed_tracker_of("p-delivered"))
        .await;
    let mut malformed = enrollment_of("p-invalid");
    malformed["patient"]["dob"] = json!(BIRTH_DATE);
    db.insert_event(ENROLLMENT, &malformed).await;
    let mut unrouted = enrollment_of("p-unrouted");
    unrouted["supportProgramId"] = json!(UNSERVED_PROGRAM);
    db.insert_event(ENROLLMENT, &unrouted).await;

    // 6 events × 2 partners, the malformed one's 2 and the unrouted one's placeholder.
    db.wait_for_deliveries(&Deliveries::all().finished(), 15)
        .await;
    for (state, count) in [
        ("delivered", 10),
        ("rejected", 1),
        ("dead", 1),
        ("invalid", 2),
        ("unrouted", 1),
    ] {
        assert_eq!(
            db.count_in_state(state).await,
            count,
            "{state}: {:#?}",
            db.deliveries().await
        );
    }
    let timed_out = db.count_attempts_failed_with("timeout").await;
    assert_eq!(timed_out, 1, "one attempt timed out");
    assert!(
        db.count_partner_patients().await > 0,
        "a 200 answer gave an externalId"
    );

    // Support's whole tool box, at trace level too.
    let ids: Vec<(String, String)> = db
        .client
        .query(
            "SELECT id::text, state FROM dispatcher.deliveries ORDER BY event_id, partner",
            &[],
        )
        .await
        .expect("delivery ids")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    printed.push(traced_cli(&path, &["deliveries", "list"]).await);
    printed.push(traced_cli(&path, &["deliveries", "list", "--json"]).await);
    for (id, _) in &ids {
        for args in [
            &["deliveries", "show", id][..],
            &["deliveries", "show", id, "--json"],
        ] {
            // Showing the partner's answer is what `show` is for, echoed health data and
            // all: only that answer is left out of the scan, in both renderings.
            let mut output = traced_cli(&path, args).await;
            for patient in ["p-delivered", "p-rejected", "p-500", "p-timeout", "p-dead"] {
                let answer = echoing_answer(patient);
                let quoted = Value::String(answer.clone()).to_string();
                output.stdout = output
                    .stdout
                    .replace(&quoted, "\"<answer>\"")
                    .replace(&answer, "<answer>");
            }
            printed.push(output);
        }
    }
    let id_in = |wanted: &str| {
        ids.iter()
            .find(|(_, state)| state == wanted)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("no {wanted} delivery"))
    };
    let retried = traced_cli(&path, &["deliveries", "retry", &id_in("rejected")]).await;
    assert!(retried.status.success(), "{retried}");
    printed.push(retried);
    let cancelled = traced_cli(&path, &["deliveries", "cancel", &id_in("dead")]).await;
    assert!(cancelled.status.success(), "{cancelled}");
    printed.push(cancelled);
    db.wait_for_state("delivered", 11).await;

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait_exit().await.success(), "the daemon stopped");

    // Retention, a month on: the pass, and support's view of what it erased.
    db.client
        .batch_execute(
            "UPDATE dispatcher.outbox SET created_at = now() - interval '31 days';
             UPDATE dispatcher.deliveries SET ended_at = now() - interval '31 days';
             UPDATE dispatcher.retention_position
             SET answers_erased_through = now() - interval '32 days'",
        )
        .await
        .expect("backdate everything");
    let pruned = traced_cli(&path, &["prune"]).await;
    assert!(pruned.stdout.contains("erased 8 event bodies"), "{pruned}");
    printed.push(pruned);
    printed.push(traced_cli(&path, &["deliveries", "show", &id_in("delivered")]).await);

    // The marker values did pass through the process: the partners got them.
    let enrollment = acme
        .received()
        .into_iter()
        .find(|r| r.patient_id() == "p-delivered" && r.path.ends_with("user-enrollment"))
        .expect("the enrollment reached acme");
    let sent = String::from_utf8_lossy(&enrollment.body).into_owned();
    for (what, value) in secrets_and_health_data() {
        // (The ISO birth date is only in the malformed event, which is never sent.)
        if ![
            "birth date (ISO)",
            "signing secret",
            "API key",
            "database password",
        ]
        .contains(&what)
        {
            assert!(
                sent.to_lowercase().contains(&value.to_lowercase()),
                "the test event lacks its {what}: {sent}"
            );
        }
    }

    let daemon_log = daemon.log_text();
    // The scan has something to look at: the daemon logged every attempted delivery, at
    // debug level too (so RUST_LOG=trace was in force).
    for (id, state) in &ids {
        assert!(
            state == "unrouted" || daemon_log.contains(id.as_str()),
            "the daemon did not log delivery {id} ({state}):\n{daemon_log}"
        );
    }
    assert!(daemon_log.contains("DEBUG"), "{daemon_log}");
    let mut everything = daemon_log;
    for output in &printed {
        everything.push_str(&output.stdout);
        everything.push_str(&output.stderr);
    }
    assert_no_health_data(&everything);
}

/// A 200 answer that repeats the patient's name and phone number back.
fn echoing_answer(patient_id: &str) -> String {
    json!({"success": true, "data": {"supportProgramId": PROGRAM, "patientId": patient_id,
           "externalId": format!("gx-{patient_id}"),
           "message": format!("Welcome {FIRST_NAME} {LAST_NAME}, we will call {PHONE}")}})
    .to_string()
}

/// Fails naming every marker value found, with the lines that hold it.
fn assert_no_health_data(printed: &str) {
    let lowercase = printed.to_lowercase();
    let mut leaks = Vec::new();
    for (what, value) in secrets_and_health_data() {
        let value = value.to_lowercase();
        if lowercase.contains(&value) {
            let lines: Vec<&str> = printed
                .lines()
                .filter(|line| line.to_lowercase().contains(&value))
                .take(3)
                .collect();
            leaks.push(format!("{what} `{value}` in:\n  {}", lines.join("\n  ")));
        }
    }
    assert!(
        leaks.is_empty(),
        "health data or secrets were printed:\n{}",
        leaks.join("\n")
    );
}

/// PostgreSQL's DETAIL can quote the row a statement failed on ("Failing row contains
/// (…)"): a database error, as the daemon logs and exports it, leaves it out and says
/// what ops act on (the message and the SQLSTATE, where tokio-postgres alone says only
/// "db error").
#[tokio::test(flavor = "multi_thread")]
async fn a_database_error_quoting_a_row_is_logged_without_the_row() {
    let db = TestDb::unmigrated().await;
    db.client
        .batch_execute("CREATE TABLE answers (body text CHECK (length(body) < 5))")
        .await
        .expect("create a table");
    let refused = db
        .client
        .execute("INSERT INTO answers VALUES ($1)", &[&LAST_NAME])
        .await
        .expect_err("the check refuses the row");
    let detail = refused.as_db_error().and_then(|error| error.detail());
    assert!(
        detail.is_some_and(|detail| detail.contains(LAST_NAME)),
        "PostgreSQL quotes the row: {detail:?}"
    );

    let logged = ::dispatcher::store::db::DbError::from(refused).to_string();

    assert!(!logged.contains(LAST_NAME), "{logged}");
    assert!(!logged.contains("DETAIL"), "{logged}");
    assert!(logged.contains("violates check constraint"), "{logged}");
    assert!(logged.contains("23514"), "{logged}");
}

/// A pruning pass the database refuses is logged as the daemon's other database errors
/// are: with PostgreSQL's message and SQLSTATE, so ops know what to fix, and without its
/// DETAIL or HINT, which can quote a row (where it once said only "db error").
#[tokio::test(flavor = "multi_thread")]
async fn a_pruning_pass_the_database_refuses_is_logged_with_its_sqlstate_and_without_the_row() {
    let config = TestConfig::new();
    let db = TestDb::migrated(&config).await;
    // Every pass ends by deleting old support actions; this refuses it, quoting a row.
    db.client
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_pruning() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 RAISE EXCEPTION 'pruning refused by a test trigger'
                     USING ERRCODE = 'P0001',
                           DETAIL = 'Failing row contains ({LAST_NAME})',
                           HINT = 'the patient is {FIRST_NAME}';
             END $$;
             CREATE TRIGGER refuse_pruning BEFORE DELETE ON dispatcher.support_actions
                 FOR EACH STATEMENT EXECUTE FUNCTION refuse_pruning();"
        ))
        .await
        .expect("a trigger that refuses pruning");

    let daemon = Daemon::start(&config, &db);
    let log = daemon.wait_for_log("pruning failed", 1).await;

    let line = log
        .lines()
        .find(|line| line.contains("pruning failed"))
        .expect("the pruner's line");
    assert!(line.contains("pruning refused by a test trigger"), "{line}");
    assert!(line.contains("P0001"), "{line}");
    assert!(!line.contains("DETAIL") && !line.contains("HINT"), "{line}");
    assert!(
        !log.contains(LAST_NAME) && !log.contains(FIRST_NAME),
        "{log}"
    );
}
