//! A partner's view of the dispatcher: what arrives, in what shape, how often, in what order.

use std::time::Duration;

use crate::support::*;
use base64::Engine;
use hmac::Mac;
use serde_json::{json, Value};

fn contains_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().any(contains_null),
        Value::Object(fields) => fields.values().any(contains_null),
        _ => false,
    }
}

/// Checks a Standard Webhooks signature with hmac/sha2 directly, not the dispatcher's code.
fn signature_is_valid(request: &Received) -> bool {
    signature_is_valid_with(request, SIGNING_SECRET)
}

/// Whether one of the request's signatures verifies with `secret`, as the partner checks.
fn signature_is_valid_with(request: &Received, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("test secret is base64");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("hmac key");
    mac.update(
        format!(
            "{}.{}.",
            request.webhook_id(),
            request.header("webhook-timestamp")
        )
        .as_bytes(),
    );
    mac.update(&request.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    request
        .header("webhook-signature")
        .split(' ')
        .any(|signature| signature == expected)
}

#[tokio::test(flavor = "multi_thread")]
async fn partners_receive_contract_valid_signed_bodies() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("ha61236024160af"))
        .await;
    // A minimal enrollment: everything optional left out.
    db.insert_event(
        ENROLLMENT,
        &json!({"supportProgramId": PROGRAM, "patient": {"id": "minimal-1", "phoneNumber": "+447700900123",
                "firstName": "Ann", "lastName": "Lee"}}),
    )
    .await;
    db.insert_event(VIEWED_TRACKER, &viewed_tracker_event("ha61236024160af"))
        .await;
    let received = partner.wait_for_requests(3).await;
    db.wait_for_state("delivered", 3).await;

    let deliveries = db.deliveries().await;
    for request in &received {
        let (schema, path) = match request.json["event"]["eventName"].as_str() {
            Some(ENROLLMENT) => ("enrollment.schema.json", "/webhook/user-enrollment"),
            Some(VIEWED_TRACKER) => ("viewed-tracker.schema.json", "/webhook/user-action"),
            other => panic!("unexpected eventName {other:?}"),
        };
        assert_eq!(
            schema_errors(schema, &request.json),
            Vec::<String>::new(),
            "body breaks {schema}"
        );
        assert_eq!(request.path, path);
        assert!(
            !contains_null(&request.json),
            "a null was sent: {}",
            request.json
        );
        assert_eq!(request.header("content-type"), "application/json");
        assert!(request
            .header("user-agent")
            .starts_with("HelpAround-Dispatcher/"));
        assert_eq!(request.header("x-api-key"), "key-acme");
        assert!(
            signature_is_valid(request),
            "bad signature on {}",
            request.webhook_id()
        );
        assert!(
            deliveries
                .iter()
                .any(|d| d["id"] == json!(request.webhook_id())),
            "webhook-id is the delivery id"
        );
        let send_date = request.json["event"]["sendDate"]
            .as_str()
            .expect("sendDate");
        let sent =
            chrono::DateTime::parse_from_rfc3339(send_date).expect("sendDate is a timestamp");
        assert!(
            (request.received_at - sent.with_timezone(&chrono::Utc))
                .num_seconds()
                .abs()
                < 60
        );
    }
    let minimal = received
        .iter()
        .find(|r| r.patient_id() == "minimal-1")
        .expect("minimal enrollment arrived");
    assert_eq!(
        minimal.json["event"]["patient"],
        json!({"id": "minimal-1", "phoneNumber": "+447700900123", "firstName": "Ann", "lastName": "Lee"})
    );
    // Every attempt is recorded with the partner's answer.
    let attempts = db.attempts(deliveries[0]["id"].as_str().expect("id")).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["http_status"], json!(200));
    assert!(attempts[0]["response_body"]
        .as_str()
        .unwrap_or("")
        .contains("externalId"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patient_born_in_1950_is_enrolled_with_the_partner() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    // 1950-03-14: before 1970, so a negative number of milliseconds (ruling R12).
    let born_1950 = -624_240_000_000_i64;
    let mut event = enrollment_event("p-1950");
    event["patient"]["dob"] = json!(born_1950);
    event["patient"]["insurance"]["primaryInsurance"]["card_dob"] = json!(born_1950);
    db.insert_event(ENROLLMENT, &event).await;

    let received = partner.wait_for_requests(1).await;
    db.wait_for_state("delivered", 1).await;
    let body = &received[0].json;
    assert_eq!(body["event"]["patient"]["dob"], json!(born_1950));
    assert_eq!(
        body["event"]["patient"]["insurance"]["primaryInsurance"]["card_dob"],
        json!(born_1950)
    );
    assert_eq!(
        schema_errors("enrollment.schema.json", body),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_rotating_its_signing_secret_can_verify_with_either_secret() {
    const NEXT_SECRET: &str = "whsec_bmV4dC1zZWNyZXQtZm9yLWFjbWUtcm90YXRpb24=";
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .partner_keys(
            "acme",
            &format!("signing_secrets = [\"{SIGNING_SECRET}\", \"{NEXT_SECRET}\"]"),
        );
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let received = partner.wait_for_requests(1).await;

    let request = &received[0];
    let signatures: Vec<String> = request
        .header("webhook-signature")
        .split(' ')
        .map(str::to_string)
        .collect();
    assert_eq!(signatures.len(), 2, "one signature per secret");
    assert!(signatures.iter().all(|s| s.starts_with("v1,")));
    assert!(
        signature_is_valid_with(request, SIGNING_SECRET),
        "a partner still on the old secret verifies"
    );
    assert!(
        signature_is_valid_with(request, NEXT_SECRET),
        "a partner already on the new secret verifies"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_event_carries_the_partner_id_learned_from_the_enrollment_answer() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-42")).await;
    db.insert_event(VIEWED_TRACKER, &viewed_tracker_event("p-42"))
        .await;
    let received = partner.wait_for_requests(2).await;

    let tracker = received
        .iter()
        .find(|r| r.path == "/webhook/user-action")
        .expect("tracker sent");
    assert_eq!(
        tracker.json["event"]["patient"]["externalIds"],
        json!([{"source": "acme", "sourceId": "crm-p-42"}])
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.partner_patients WHERE partner = 'acme' AND patient_id = 'p-42' AND external_id = 'crm-p-42'").await,
        1
    );
}

/// A known patient's tracker view answered with the id the partner gave at enrollment:
/// nothing to learn, so nothing is written (each such 200 wrote the patient's id again).
#[tokio::test(flavor = "multi_thread")]
async fn a_partner_id_given_again_is_not_written_again() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-42")).await;
    let viewed = db
        .insert_event(VIEWED_TRACKER, &viewed_tracker_event("p-42"))
        .await;
    db.wait_for_state("delivered", 2).await;

    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM dispatcher.partner_patients known
             WHERE known.partner = 'acme' AND known.patient_id = 'p-42'
               AND known.learned_at < (
                   SELECT a.started_at FROM dispatcher.every_attempt a
                   JOIN dispatcher.deliveries d ON d.id = a.delivery_id
                   WHERE d.event_id = {viewed})"
        ))
        .await,
        1,
        "the id is as learned from the enrollment's answer, not written again"
    );
}

/// R13 for the partner's answer: an `externalId` over 255 characters could not be sent
/// in a later body, so it is not remembered; the attempt says why (not what), the
/// delivery is delivered all the same, and the later event goes without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_partner_id_over_255_characters_is_not_remembered_and_the_attempt_says_why() {
    let overlong = format!("crm-{}", "7".repeat(3_004));
    let partner = TestPartner::start("acme", {
        let overlong = overlong.clone();
        move |_| {
            Reply::status(
                200,
                json!({"success": true, "data": {"externalId": overlong}}).to_string(),
            )
        }
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    let enrolled = db.insert_event(ENROLLMENT, &enrollment_event("p-42")).await;
    db.insert_event(VIEWED_TRACKER, &viewed_tracker_event("p-42"))
        .await;
    let received = partner.wait_for_requests(2).await;
    db.wait_for_state("delivered", 2).await;

    let tracker = received
        .iter()
        .find(|r| r.path == "/webhook/user-action")
        .expect("tracker sent");
    assert_eq!(tracker.json["event"]["patient"].get("externalIds"), None);
    assert_eq!(db.count_partner_patients().await, 0);
    let error: Option<String> = db
        .client
        .query_one(
            "SELECT a.error FROM dispatcher.every_attempt a
             JOIN dispatcher.deliveries d ON d.id = a.delivery_id WHERE d.event_id = $1",
            &[&enrolled],
        )
        .await
        .expect("the enrollment's attempt")
        .get(0);
    assert_eq!(
        error.as_deref(),
        Some("data.externalId is over 255 characters (R13): not remembered for this patient")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_goes_to_every_partner_of_its_program_and_unrouted_ones_are_kept() {
    let acme = TestPartner::accepting("acme").await;
    let globex = TestPartner::accepting("globex").await;
    let initech = TestPartner::accepting("initech").await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&globex, &[PROGRAM, "other-program"])
        .partner(&initech, &["other-program"]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let mut orphan = enrollment_event("p-2");
    orphan["supportProgramId"] = json!("no-such-program");
    let orphan_id = db.insert_event(ENROLLMENT, &orphan).await;

    let to_acme = acme.wait_for_requests(1).await;
    let to_globex = globex.wait_for_requests(1).await;
    assert_ne!(
        to_acme[0].webhook_id(),
        to_globex[0].webhook_id(),
        "each delivery has its own id"
    );
    db.wait_for_state("delivered", 2).await;
    db.wait_for_count(
        &format!("SELECT count(*) FROM dispatcher.deliveries WHERE state = 'unrouted' AND event_id = {orphan_id} AND partner IS NULL"),
        1,
    )
    .await;
    assert!(initech.received().is_empty());
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM dispatcher.outbox WHERE id = {orphan_id}"
        ))
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_that_breaks_the_contract_is_never_sent_and_holds_nothing_up() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    let mut no_last_name = enrollment_event("p-1");
    no_last_name["patient"]
        .as_object_mut()
        .expect("patient")
        .remove("lastName");
    let mut bad_phone = enrollment_event("p-2");
    bad_phone["patient"]["phoneNumber"] = json!("202-795-3213");
    let mut no_program = enrollment_event("p-3");
    no_program
        .as_object_mut()
        .expect("event")
        .remove("supportProgramId");
    db.insert_event(ENROLLMENT, &no_last_name).await;
    db.insert_event(ENROLLMENT, &bad_phone).await;
    db.insert_event(ENROLLMENT, &no_program).await;
    db.insert_event(
        "HelpAround.Patient.Unknown",
        &json!({"supportProgramId": PROGRAM}),
    )
    .await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-ok")).await;

    db.wait_for_state("delivered", 1).await;
    db.wait_for_state("invalid", 4).await;
    let errors: Vec<String> = db
        .client
        .query("SELECT last_error FROM dispatcher.deliveries WHERE state = 'invalid' ORDER BY event_id", &[])
        .await
        .expect("read errors")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(errors[0], "patient.lastName is required");
    assert!(
        errors[1].starts_with("patient.phoneNumber must be E.164"),
        "{}",
        errors[1]
    );
    assert_eq!(errors[2], "supportProgramId is required");
    assert!(
        errors[3].contains("HelpAround.Patient.Unknown"),
        "{}",
        errors[3]
    );
    assert!(
        !errors[1].contains("202-795-3213"),
        "the message must not quote the value"
    );

    let received = partner.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].patient_id(), "p-ok");
    assert_eq!(
        db.count_attempts().await,
        1,
        "invalid events make no attempt"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_400_is_rejected_with_the_partner_message_and_not_retried() {
    let partner = TestPartner::start("acme", |_| {
        Reply::status(
            400,
            r#"{"errorMessage": "request has bad syntax Foo Foo", "data": {"patientId": "p-1"}}"#,
        )
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-after"))
        .await;
    // Both end; the second one's end means the daemon has moved on past the first.
    db.wait_for_state("rejected", 2).await;
    let delivery = &db.deliveries().await[0];
    assert_eq!(delivery["last_status"], json!(400));
    assert_eq!(
        delivery["last_error"],
        json!("HTTP 400: request has bad syntax Foo Foo")
    );
    assert_eq!(delivery["attempt_count"], json!(1));
    let attempts = db.attempts(delivery["id"].as_str().expect("id")).await;
    assert!(attempts[0]["response_body"]
        .as_str()
        .unwrap_or("")
        .contains("\"patientId\""));
    assert_eq!(
        delivery["due_at"],
        Value::Null,
        "a rejected delivery is never due again"
    );
    assert_eq!(
        partner.received().len(),
        2,
        "a 400 is never retried automatically"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_is_timed_by_the_database_clock_when_the_daemon_clock_runs_ahead() {
    let partner = TestPartner::start("acme", |request| match request.try_number {
        1 => Reply::status(503, ""),
        _ => Reply::accepted(request),
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    // An hour ahead: a retry timed by the daemon's clock would be an hour late by the
    // database's, which is the clock the claim goes by.
    let _daemon = Daemon::start_with_clock_ahead(&config, &db, "+1h");

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_state("delivered", 1).await;
    assert_eq!(partner.received().len(), 2, "a 503, then the retry");
}

/// A delivery's id is a UUIDv7 of its `created_at`'s millisecond, PostgreSQL's clock,
/// whatever the daemon's says (`delivery/id.rs`): support reads a window of delivered
/// deliveries as a range of ids (migration 0023). The daemon runs an hour ahead; its
/// deliveries to a partner (claimed by routing as it inserts them, or left for a claim),
/// an unrouted event's placeholder and an invalid event's all carry the database's time.
#[tokio::test(flavor = "multi_thread")]
async fn delivery_ids_are_of_the_database_clock_when_the_daemon_clock_runs_ahead() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start_with_clock_ahead(&config, &db, "+1h");

    for patient in 0..20 {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("p-{patient}")))
            .await;
    }
    let mut orphan = enrollment_event("p-orphan");
    orphan["supportProgramId"] = json!("no-such-program");
    db.insert_event(ENROLLMENT, &orphan).await;
    db.insert_event("HelpAround.Patient.NoSuchEvent", &enrollment_event("p-x"))
        .await;
    db.wait_for_state("delivered", 20).await;

    let rows = db
        .client
        .query(
            "SELECT d.id, d.state, d.created_at,
                    (SELECT min(a.started_at) FROM dispatcher.every_attempt a
                     WHERE a.delivery_id = d.id) AS sent_at
             FROM dispatcher.deliveries d ORDER BY d.id",
            &[],
        )
        .await
        .expect("the deliveries");
    let states: Vec<&str> = rows.iter().map(|row| row.get("state")).collect();
    assert_eq!(states.len(), 22, "{states:?}");
    assert!(states.contains(&"unrouted") && states.contains(&"invalid"));
    let delivered = rows
        .iter()
        .find(|row| row.get::<_, &str>("state") == "delivered")
        .expect("a delivered one");
    let sent_at: chrono::DateTime<chrono::Utc> = delivered.get("sent_at");
    let created_at: chrono::DateTime<chrono::Utc> = delivered.get("created_at");
    assert!(
        sent_at - created_at > chrono::Duration::minutes(50),
        "the daemon's clock (its attempts' start) runs an hour ahead"
    );
    for row in &rows {
        let id: uuid::Uuid = row.get("id");
        let created_at: chrono::DateTime<chrono::Utc> = row.get("created_at");
        let millisecond = chrono::DateTime::from_timestamp_millis(created_at.timestamp_millis());
        assert_eq!(
            dispatcher::delivery::id::made_at(id),
            millisecond,
            "the id of a {} delivery is of its created_at",
            row.get::<_, &str>("state")
        );
    }
}

/// Most deliveries end at their first try, accepted or refused. That attempt is kept in
/// the delivery's own row (migration 0024) instead of a row of `attempts` (a tuple and an
/// index entry more, about 130 B of WAL); a retried delivery's attempts are rows as
/// before, so its row carries no answer through its retries. Support's timeline shows
/// every try, in order, with what the partner answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_try_is_kept_with_its_delivery_and_support_sees_every_try() {
    let partner = TestPartner::start("acme", |request| {
        match (request.patient_id().as_str(), request.try_number) {
            ("p-retried", 1) => Reply::status(503, "busy, try later"),
            ("p-refused", _) => Reply::status(400, r#"{"errorMessage": "unknown program"}"#),
            _ => Reply::accepted(request),
        }
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    for patient in ["p-first", "p-refused", "p-retried"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    db.wait_for_deliveries(&Deliveries::all().ended(), 3).await;

    let support = support_connection(&config, &db).await;
    let (db, support) = (&db, &support);
    let tries = |patient: &'static str| async move {
        let delivery = db
            .client
            .query_one(
                "SELECT d.id, (SELECT count(*) FROM dispatcher.attempts a
                               WHERE a.delivery_id = d.id) AS rows
                 FROM dispatcher.deliveries d WHERE d.patient_id = $1",
                &[&patient],
            )
            .await
            .expect("the patient's delivery");
        let shown = dispatcher::store::support::show(support, delivery.get("id"))
            .await
            .expect("support's look")
            .expect("the delivery");
        let tries: Vec<(i32, Option<i32>, Option<String>, bool)> = shown
            .attempts
            .iter()
            .map(|a| {
                (
                    a.number,
                    a.http_status,
                    a.error.clone(),
                    a.response_body.is_some(),
                )
            })
            .collect();
        (delivery.get::<_, i64>("rows"), tries)
    };
    assert_eq!(
        tries("p-first").await,
        (0, vec![(1, Some(200), None, true)])
    );
    let (rows, refused) = tries("p-refused").await;
    assert_eq!(rows, 0, "{refused:?}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        (refused[0].0, refused[0].1, refused[0].3),
        (1, Some(400), true)
    );
    assert!(
        refused[0]
            .2
            .as_deref()
            .is_some_and(|error| error.contains("unknown program")),
        "the partner's message: {refused:?}"
    );
    let (rows, retried) = tries("p-retried").await;
    assert_eq!(rows, 2, "a retried delivery's tries are rows: {retried:?}");
    assert_eq!(
        retried
            .iter()
            .map(|(number, status, _, body)| (*number, *status, *body))
            .collect::<Vec<_>>(),
        [(1, Some(503), true), (2, Some(200), true)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_timeouts_are_retried_with_growing_spacing() {
    // First try: a 500; second: no answer within the request timeout; third: a 502; then accepted.
    let partner = TestPartner::start("acme", |request| match request.try_number {
        1 => Reply::status(500, "oops"),
        2 => Reply::accepted(request).after(Duration::from_secs(3)),
        3 => Reply::status(502, ""),
        _ => Reply::accepted(request),
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .dispatch(Dispatch::default())
        .lease(Duration::from_secs(10))
        .poll_interval(Duration::from_millis(100))
        .request_timeout(Duration::from_secs(1))
        .shutdown_grace(Duration::from_secs(1));
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_state("delivered", 1).await;

    let delivery = &db.deliveries().await[0];
    let attempts = db.attempts(delivery["id"].as_str().expect("id")).await;
    let statuses: Vec<Value> = attempts.iter().map(|a| a["http_status"].clone()).collect();
    assert_eq!(statuses, [json!(500), Value::Null, json!(502), json!(200)]);
    assert_eq!(attempts[1]["error_kind"], json!("timeout"));
    let received = partner.received();
    assert!(
        received
            .iter()
            .all(|r| r.webhook_id() == received[0].webhook_id()),
        "same webhook-id on every try"
    );
    // base_delay 300ms doubling: no retry may come before its scheduled time.
    let started: Vec<chrono::DateTime<chrono::Utc>> = attempts
        .iter()
        .map(|a| serde_json::from_value(a["started_at"].clone()).expect("started_at"))
        .collect();
    let ended_first = started[0]
        + chrono::Duration::milliseconds(attempts[0]["duration_ms"].as_i64().unwrap_or(0));
    assert!(
        started[1] - ended_first >= chrono::Duration::milliseconds(300),
        "retry 1 came early"
    );
    let ended_second = started[1]
        + chrono::Duration::milliseconds(attempts[1]["duration_ms"].as_i64().unwrap_or(0));
    assert!(
        started[2] - ended_second >= chrono::Duration::milliseconds(600),
        "retry 2 came early"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_that_keeps_failing_makes_the_delivery_dead_after_max_attempts() {
    let partner = TestPartner::start("acme", |_| Reply::status(503, "down for maintenance")).await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .max_attempts(3)
        .retry_delays(Duration::from_millis(100), Duration::from_millis(200));
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_state("dead", 1).await;
    let delivery = &db.deliveries().await[0];
    assert_eq!(delivery["attempt_count"], json!(3));
    assert_eq!(partner.received().len(), 3);
    assert!(delivery["last_error"]
        .as_str()
        .unwrap_or("")
        .contains("HTTP 503"));
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured_and_redirects_are_not_followed() {
    let partner = TestPartner::start("acme", |request| {
        match (request.patient_id().as_str(), request.try_number) {
            ("throttled", 1) => Reply::status(429, "").header("retry-after", "2"),
            ("moved", 1) => {
                Reply::status(302, "").header("location", "http://127.0.0.1:9/elsewhere")
            }
            _ => Reply::accepted(request),
        }
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("throttled"))
        .await;
    db.insert_event(ENROLLMENT, &enrollment_event("moved"))
        .await;
    db.wait_for_state("delivered", 2).await;

    let received = partner.received();
    let throttled: Vec<&Received> = received
        .iter()
        .filter(|r| r.patient_id() == "throttled")
        .collect();
    assert_eq!(throttled.len(), 2);
    assert!(
        throttled[1].received_at - throttled[0].received_at >= chrono::Duration::seconds(2),
        "the retry came before Retry-After"
    );
    let moved: Vec<&Received> = received
        .iter()
        .filter(|r| r.patient_id() == "moved")
        .collect();
    assert_eq!(
        moved.len(),
        2,
        "the 302 counted as a failed attempt and was retried at the same URL"
    );
    assert!(moved.iter().all(|r| r.path == "/webhook/user-enrollment"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewed_tracker_never_reaches_the_partner_before_the_enrollment_is_accepted() {
    // The enrollment needs three tries; the tracker event is written right after it.
    let partner = TestPartner::start("acme", |request| {
        if request.path == "/webhook/user-enrollment" && request.try_number < 3 {
            Reply::status(503, "")
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    for patient in ["p-1", "p-2", "p-3"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
        db.insert_event(VIEWED_TRACKER, &viewed_tracker_event(patient))
            .await;
    }
    db.wait_for_state("delivered", 6).await;

    let received = partner.received();
    for patient in ["p-1", "p-2", "p-3"] {
        let for_patient: Vec<&Received> = received
            .iter()
            .filter(|r| r.patient_id() == patient)
            .collect();
        let paths: Vec<&str> = for_patient.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/webhook/user-enrollment",
                "/webhook/user-enrollment",
                "/webhook/user-enrollment",
                "/webhook/user-action"
            ],
            "order seen by the partner for {patient}"
        );
    }
}

/// `contract/` is a copy of the shared spec, so the tests run from any clone; it must not
/// drift from the original where that is present. Where it is absent the test says so on
/// stderr, and fails if DISPATCHER_REQUIRE_SHARED_SPEC=1 (a machine that has the spec).
#[test]
fn the_vendored_contract_matches_the_shared_spec() {
    // `../shared/spec` beside the repository; from a git worktree, beside the repository
    // it belongs to (the rule scripts/supply-chain follows for `../shared`).
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let main_repository = std::process::Command::new("git")
        .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .current_dir(repository)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|git_dir| Some(std::path::Path::new(git_dir.trim()).parent()?.to_owned()));
    let Some(shared) = [Some(repository.to_owned()), main_repository]
        .into_iter()
        .flatten()
        .map(|beside| beside.join("../shared/spec"))
        .find(|spec| spec.is_dir())
    else {
        let absent = "contract/ was NOT compared with the shared spec: \
                      no ../shared/spec beside this repository";
        assert!(
            std::env::var("DISPATCHER_REQUIRE_SHARED_SPEC").as_deref() != Ok("1"),
            "{absent}, and DISPATCHER_REQUIRE_SHARED_SPEC=1 requires the comparison"
        );
        // Written to stderr itself: libtest hides what a passing test prints with eprintln!.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "warning: {absent}");
        return;
    };
    for file in [
        "README.md",
        "helparound-partner-api.txt",
        "enrollment.schema.json",
        "viewed-tracker.schema.json",
        "examples/enrollment.json",
        "examples/viewed-tracker.json",
    ] {
        let original = std::fs::read(shared.join(file)).expect("read shared spec");
        let copy = std::fs::read(spec_dir().join(file)).expect("read contract/");
        assert!(
            original == copy,
            "contract/{file} differs from ../shared/spec/{file}: copy it again"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_with_nul_bytes_is_recorded_and_holds_nothing_up() {
    // PostgreSQL text cannot hold NUL; the partner's answer is still recorded (NUL replaced).
    let partner = TestPartner::start("acme", |request| match request.patient_id().as_str() {
        "p-nul-json" => Reply::status(400, r#"{"errorMessage": "bad\u0000field"}"#),
        "p-nul-raw" => Reply::status(400, "bad\u{0}answer"),
        _ => Reply::accepted(request),
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-nul-json"))
        .await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-nul-raw"))
        .await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-ok")).await;
    db.wait_for_state("rejected", 2).await;
    db.wait_for_state("delivered", 1).await;
    let deliveries = db.deliveries().await;
    assert_eq!(
        deliveries[0]["last_error"],
        json!("HTTP 400: bad\u{FFFD}field")
    );
    let attempts = db.attempts(deliveries[1]["id"].as_str().expect("id")).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["response_body"], json!("bad\u{FFFD}answer"));
}
