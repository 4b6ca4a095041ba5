//! The admin server as ops and support use it: health probes, the JSON API (filters,
//! pages, resend and cancel, bulk resend), its OpenAPI document, the token, and the
//! support page's HTML.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const TOKEN: &str = "support-token-for-the-admin-tests";

/// A partner that refuses the given patients with the contract's 400 and takes the rest.
async fn partner_refusing(name: &str, refused: &'static [&'static str]) -> TestPartner {
    TestPartner::refusing(name, refused, ALREADY_ENROLLED).await
}

fn ids(page: &Value) -> Vec<String> {
    page["deliveries"]
        .as_array()
        .expect("a page of deliveries")
        .iter()
        .map(|delivery| delivery["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn ops_probe_health_and_readiness() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let admin = AdminClient::of(&daemon, None).await;

    assert_eq!(admin.get("/healthz").await.0, 200);
    let (status, body) = admin.get("/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

    // A newer dispatcher migrated the database under this one: not ready, and why.
    db.client
        .execute(
            "INSERT INTO dispatcher.schema_migrations (version) VALUES (999)",
            &[],
        )
        .await
        .expect("pretend a newer migration");
    let (status, body) = admin.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("newer"),
        "{body}"
    );
    assert_eq!(admin.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn support_finds_failed_deliveries_by_partner_patient_event_and_time() {
    let acme = partner_refusing("acme", &["p-refused-1", "p-refused-2"]).await;
    let globex = TestPartner::accepting("globex").await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&globex, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    for patient in ["p-ok-1", "p-refused-1", "p-ok-2", "p-refused-2"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    db.insert_event(VIEWED_TRACKER, &viewed_tracker_event("p-refused-1"))
        .await;
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 10).await;
    let admin = AdminClient::of(&daemon, None).await;

    let (status, failed) = admin.get("/api/deliveries?state=failed&partner=acme").await;
    assert_eq!(status, 200, "{failed}");
    let failed = failed["deliveries"].as_array().expect("deliveries").clone();
    let patients: HashSet<&str> = failed
        .iter()
        .map(|d| d["patient_id"].as_str().expect("patient"))
        .collect();
    assert_eq!(patients, HashSet::from(["p-refused-1", "p-refused-2"]));
    assert!(failed.iter().all(|d| d["state"] == "rejected"
        && d["last_status"] == 400
        && d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Patient is already enrolled in program"))));

    let (_, of_patient) = admin
        .get("/api/deliveries?patient_id=p-refused-1&event_name=HelpAround.Patient.CompleteEnrollment")
        .await;
    assert_eq!(ids(&of_patient).len(), 2, "one per partner: {of_patient}");

    let (_, future) = admin
        .get("/api/deliveries?since=2999-01-01T00:00:00Z")
        .await;
    assert!(ids(&future).is_empty());
    let (_, past) = admin
        .get("/api/deliveries?until=2999-01-01T00:00:00Z&state=delivered")
        .await;
    assert_eq!(ids(&past).len(), 7);

    let (status, error) = admin.get("/api/deliveries?state=lost").await;
    assert_eq!(status, 400);
    assert!(error["error"].as_str().unwrap_or_default().contains("lost"));

    let one = &failed[0]["id"].as_str().expect("id");
    let (status, detail) = admin.get(&format!("/api/deliveries/{one}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["attempts"][0]["http_status"], 400);
    assert!(detail["attempts"][0]["response_body"]
        .as_str()
        .is_some_and(|body| body.contains("errorMessage")));
    let (status, _) = admin
        .get("/api/deliveries/0190f7a0-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn pages_neither_repeat_nor_skip_while_new_events_arrive() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    for i in 0..40 {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("early-{i}")))
            .await;
    }
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 40).await;
    let admin = AdminClient::of(&daemon, None).await;
    let existing: HashSet<String> = {
        let (_, all) = admin.get("/api/deliveries?limit=1000").await;
        ids(&all).into_iter().collect()
    };
    assert_eq!(existing.len(), 40);

    let mut seen = Vec::new();
    let mut path = "/api/deliveries?limit=7".to_string();
    let mut page_number = 0;
    loop {
        let (status, page) = admin.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        // Between pages the enrollment flow keeps inserting, and deliveries keep changing.
        for i in 0..3 {
            db.insert_event(
                ENROLLMENT,
                &enrollment_event(&format!("late-{page_number}-{i}")),
            )
            .await;
        }
        page_number += 1;
        match page["next_after"].as_str() {
            Some(after) => path = format!("/api/deliveries?limit=7&after={after}"),
            None => break,
        }
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a delivery was listed twice");
    let missed: Vec<&String> = existing.difference(&unique).collect();
    assert!(missed.is_empty(), "pages skipped {missed:?}");
}

#[tokio::test]
async fn support_resends_everything_that_failed_for_a_partner_and_can_repeat_it_safely() {
    // The partner refuses every first request, and takes the resend.
    let acme = TestPartner::start("acme", |request| {
        if request.try_number == 1 {
            Reply::status(
                400,
                json!({"success": false, "errorMessage": "CRM in maintenance"}).to_string(),
            )
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let globex = partner_refusing("globex", &["p-1"]).await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&globex, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    for i in 0..5 {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("p-{i}")))
            .await;
    }
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 10).await;
    let admin = AdminClient::of(&daemon, None).await;

    let (status, error) = admin.post("/api/deliveries/retry", &json!({})).await;
    assert_eq!(
        status, 400,
        "an empty selection would resend everything: {error}"
    );
    let (status, error) = admin
        .post("/api/deliveries/retry", &json!({"partnr": "acme"}))
        .await;
    assert_eq!(
        status, 422,
        "a misspelt field must not widen the selection: {error}"
    );

    let selection = json!({"partner": "acme", "since": "2020-01-01T09:00:00Z"});
    let (status, report) = admin.post("/api/deliveries/retry", &selection).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["touched"], 5);
    let (_, again) = admin.post("/api/deliveries/retry", &selection).await;
    assert_eq!(
        again["touched"], 0,
        "repeating touched deliveries twice: {again}"
    );

    db.wait_for_deliveries(&Deliveries::of("acme").in_state("delivered"), 5)
        .await;
    // Globex's refusal was not part of the selection.
    assert_eq!(
        db.count_deliveries(&Deliveries::of("globex").in_state("rejected"))
            .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM dispatcher.support_actions
             WHERE action = 'resend' AND actor = 'api:alice'"
        )
        .await,
        5
    );
    let (_, resent) = admin.get("/api/deliveries?partner=acme&limit=1").await;
    let id = resent["deliveries"][0]["id"].as_str().expect("id");
    let (_, detail) = admin.get(&format!("/api/deliveries/{id}")).await;
    assert_eq!(detail["support_actions"][0]["actor"], "api:alice");
    assert_eq!(detail["attempts"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn support_cancels_and_resends_one_delivery_and_is_told_when_it_cannot() {
    // The partner is down for good: its deliveries wait for their next attempt.
    let partner = TestPartner::start("acme", |_| Reply::status(503, "")).await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .max_attempts(5)
        .retry_delays(
            Duration::from_secs(60 * 60),
            Duration::from_secs(2 * 60 * 60),
        );
    let db = TestDb::migrated(&config).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().in_state("pending").with_attempts(1), 1)
        .await;
    let admin = AdminClient::of(&daemon, None).await;
    let (_, page) = admin.get("/api/deliveries").await;
    let id = ids(&page).remove(0);

    let (status, error) = admin
        .post(&format!("/api/deliveries/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 409, "a pending delivery cannot be resent: {error}");
    assert!(error["error"]
        .as_str()
        .unwrap_or_default()
        .contains("pending"));

    let (status, cancelled) = admin
        .post(&format!("/api/deliveries/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, cancelled["cancelled"].as_str()),
        (200, Some(id.as_str()))
    );
    let (status, _) = admin
        .post(&format!("/api/deliveries/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "cancelled twice");

    let (status, report) = admin
        .post(&format!("/api/deliveries/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["resent"], json!([id]));
    let (_, detail) = admin.get(&format!("/api/deliveries/{id}")).await;
    let actions: Vec<&str> = detail["support_actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, ["cancel", "resend"]);
}

#[tokio::test]
async fn the_api_and_the_page_want_the_token_and_health_does_not() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let anonymous = AdminClient::of(&daemon, None).await;
    let wrong = AdminClient::of(&daemon, Some("not-the-token-at-all-not-it")).await;
    let support = AdminClient::of(&daemon, Some(TOKEN)).await;

    assert_eq!(anonymous.get("/api/deliveries").await.0, 401);
    assert_eq!(wrong.get("/api/deliveries").await.0, 401);
    assert_eq!(
        anonymous
            .post("/api/deliveries/retry", &json!({"partner": "acme"}))
            .await
            .0,
        401
    );
    assert_eq!(support.get("/api/deliveries").await.0, 200);
    assert_eq!(anonymous.get("/healthz").await.0, 200);
    assert_eq!(anonymous.get("/readyz").await.0, 200);

    // The page sends a stranger to the login form, and lets a signed-in person in.
    let page = anonymous
        .raw(anonymous.http().get(format!("{}/", anonymous.base)))
        .await;
    assert_eq!(page.status().as_u16(), 303);
    assert_eq!(page.headers()["location"], "/login");
    let refused = anonymous
        .raw(
            anonymous
                .http()
                .post(format!("{}/login", anonymous.base))
                .form(&[("name", "Dana"), ("token", "guess-guess-guess-guess")]),
        )
        .await;
    assert!(refused.headers().get("set-cookie").is_none());
    let signed_in = anonymous
        .raw(
            anonymous
                .http()
                .post(format!("{}/login", anonymous.base))
                .form(&[("name", "Dana"), ("token", TOKEN)]),
        )
        .await;
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie value")
        .to_string();
    let page = anonymous
        .raw(
            anonymous
                .http()
                .get(format!("{}/", anonymous.base))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(page.status().as_u16(), 200);
    assert!(page
        .text()
        .await
        .expect("page")
        .contains("Signed in as Dana"));
}

#[tokio::test]
async fn the_support_page_shows_why_a_delivery_failed_but_not_the_event_it_sent() {
    let acme = partner_refusing("acme", &["p-refused"]).await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let event = enrollment_event("p-refused");
    db.insert_event(ENROLLMENT, &event).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-fine"))
        .await;
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 2).await;
    let admin = AdminClient::of(&daemon, None).await;

    let overview = admin
        .raw(admin.http().get(format!("{}/", admin.base)))
        .await
        .text()
        .await
        .expect("overview");
    assert!(overview.contains("p-refused"), "{overview}");
    assert!(overview.contains("Patient is already enrolled in program"));
    assert!(
        !overview.contains("p-fine"),
        "failed deliveries only by default"
    );

    let (_, page) = admin.get("/api/deliveries?patient_id=p-refused").await;
    let id = ids(&page).remove(0);
    let detail = admin
        .raw(admin.http().get(format!("{}/deliveries/{id}", admin.base)))
        .await
        .text()
        .await
        .expect("delivery page");
    assert!(
        detail.contains("errorMessage"),
        "the partner's whole answer"
    );

    // The page never reads the event body (a partner's answer, shown verbatim, may still
    // repeat what it was sent: this partner's does not).
    let patient = &event["patient"];
    for field in ["firstName", "lastName", "phoneNumber", "email"] {
        if let Some(value) = patient[field].as_str() {
            assert!(!overview.contains(value), "{field} on the overview");
            assert!(!detail.contains(value), "{field} on the delivery page");
        }
    }

    // A form posted from another site's page is refused; the same form from ours works.
    let forged = admin
        .raw(
            admin
                .http()
                .post(format!("{}/deliveries/{id}/resend", admin.base))
                .header("origin", "https://evil.example")
                .form(&[("back", "/")]),
        )
        .await;
    assert_eq!(forged.status().as_u16(), 403);
    let ours = admin
        .raw(
            admin
                .http()
                .post(format!("{}/deliveries/{id}/resend", admin.base))
                .header("origin", &admin.base)
                .form(&[("back", "/")]),
        )
        .await;
    assert_eq!(ours.status().as_u16(), 303);
    assert_eq!(
        ours.headers()["location"],
        format!("/?notice=resent&delivery={id}").as_str()
    );
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.support_actions WHERE actor = 'page:loopback'",
        1,
    )
    .await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let admin = AdminClient::of(&daemon, None).await;
    let (status, document) = admin.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(document["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/api/deliveries",
        "/api/deliveries/{id}",
        "/api/deliveries/{id}/retry",
        "/api/deliveries/{id}/cancel",
        "/api/deliveries/retry",
        "/api/partners",
    ] {
        assert!(
            document["paths"][path].is_object(),
            "{path} is not described"
        );
    }
    let (status, partners) = admin.get("/api/partners").await;
    assert_eq!(status, 200, "{partners}");
}

#[tokio::test]
async fn prometheus_scrapes_what_the_daemon_did() {
    let acme = partner_refusing("acme", &["p-refused"]).await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    for patient in ["p-1", "p-2", "p-refused"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 3).await;
    let admin = AdminClient::of(&daemon, None).await;

    let scrape = admin
        .raw(admin.http().get(format!("{}/metrics", admin.base)))
        .await;
    assert_eq!(scrape.status().as_u16(), 200);
    let text = scrape.text().await.expect("metrics text");
    // One sample line: its name, the labels it must carry, and its value.
    let sample = |name: &str, labels: &[&str]| -> Option<f64> {
        text.lines()
            .filter(|line| {
                line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
            })
            .find(|line| labels.iter().all(|label| line.contains(label)))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    };
    let acme = "partner=\"acme\"";
    assert_eq!(
        sample(
            "dispatcher_deliveries_ended_total",
            &[acme, "outcome=\"delivered\""]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            "dispatcher_deliveries_ended_total",
            &[acme, "outcome=\"rejected\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample("dispatcher_attempts_total", &[acme, "status_class=\"4xx\""]),
        Some(1.0)
    );
    assert_eq!(sample("dispatcher_deliveries_pending", &[acme]), Some(0.0));
    assert_eq!(sample("dispatcher_database_up", &[]), Some(1.0));
    assert!(
        !text.contains("p-refused") && !text.contains("p-1"),
        "a patient id in metrics"
    );
}

#[tokio::test]
async fn a_delivery_whose_body_retention_erased_cannot_be_resent_and_support_is_told_why() {
    let acme = partner_refusing("acme", &["p-old"]).await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-old"))
        .await;
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 1).await;
    // What `dispatcher prune` does to a body past `payload_days`.
    db.client
        .execute(
            "UPDATE dispatcher.outbox SET event = NULL, event_erased_at = now()",
            &[],
        )
        .await
        .expect("erase the body");
    let admin = AdminClient::of(&daemon, None).await;
    let (_, page) = admin.get("/api/deliveries").await;
    let id = ids(&page).remove(0);

    let (status, error) = admin
        .post(&format!("/api/deliveries/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 409, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap_or_default()
            .contains("erased"),
        "{error}"
    );
    let (_, detail) = admin.get(&format!("/api/deliveries/{id}")).await;
    assert!(detail["event_erased_at"].is_string(), "{detail}");
}

#[tokio::test]
async fn without_a_token_the_admin_server_stays_on_loopback_and_says_so() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .admin_listen("0.0.0.0:0");
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let admin = AdminClient::of(&daemon, None).await;
    assert!(
        admin.base.starts_with("http://127.0.0.1:"),
        "{}",
        admin.base
    );
    assert!(daemon
        .log_text()
        .contains("no [admin] token is set: the admin server listens on loopback only"));
    assert_eq!(admin.get("/healthz").await.0, 200);
}

/// The admin server's port, from its base URL.
fn port_of(admin: &AdminClient) -> u16 {
    admin
        .base
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the admin server's port")
}

/// What a browser sends to our address once a web page's name was rebound to it: the
/// connection goes to 127.0.0.1, the `Host` header names the other site.
async fn status_for_host(admin: &AdminClient, request: reqwest::RequestBuilder, host: &str) -> u16 {
    admin
        .raw(request.header("host", host))
        .await
        .status()
        .as_u16()
}

/// Sends a hand-written request to the admin server on 127.0.0.1; returns the status.
async fn raw_status(port: u16, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the admin server");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

/// A rejected delivery nobody has touched yet, and its id.
async fn one_rejected_delivery(config: &TestConfig, db: &TestDb) -> (Daemon, String) {
    db.insert_event(ENROLLMENT, &enrollment_event("p-refused"))
        .await;
    let daemon = Daemon::start(config, db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 1).await;
    let id = db.deliveries().await[0]["id"]
        .as_str()
        .expect("delivery id")
        .to_string();
    (daemon, id)
}

const SUPPORT_ACTIONS: &str = "SELECT count(*) FROM dispatcher.support_actions";
/// The rejected delivery, untouched: no resend spent a second attempt on it.
fn still_rejected() -> Deliveries {
    Deliveries::all().in_state("rejected").with_attempts(1)
}

#[tokio::test]
async fn a_web_page_whose_name_was_rebound_to_loopback_can_neither_read_nor_resend() {
    let acme = partner_refusing("acme", &["p-refused"]).await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let (daemon, id) = one_rejected_delivery(&config, &db).await;
    let admin = AdminClient::of(&daemon, None).await;
    let port = port_of(&admin);
    let http = admin.http();
    let evil = format!("evil.example:{port}");

    let list = || http.get(format!("{}/api/deliveries", admin.base));
    assert_eq!(status_for_host(&admin, list(), &evil).await, 421);
    let resend = http
        .post(format!("{}/api/deliveries/{id}/retry", admin.base))
        .header("content-type", "application/json")
        .body("{}");
    assert_eq!(status_for_host(&admin, resend, &evil).await, 421);
    let page = http.get(format!("{}/deliveries/{id}", admin.base));
    assert_eq!(status_for_host(&admin, page, &evil).await, 421);
    let page_resend = http
        .post(format!("{}/deliveries/{id}/resend", admin.base))
        .form(&[("back", "/")]);
    assert_eq!(status_for_host(&admin, page_resend, &evil).await, 421);
    // HTTP lets a request name its host in the request line too, and then that wins; and
    // an HTTP/1.0 request may name none.
    let absolute = format!(
        "POST http://evil.example:{port}/api/deliveries/{id}/retry HTTP/1.1\r\n\
         Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    assert_eq!(raw_status(port, &absolute).await, 421);
    let nameless = format!("GET /api/deliveries/{id} HTTP/1.0\r\n\r\n");
    assert_eq!(raw_status(port, &nameless).await, 421);
    assert_eq!(db.count(SUPPORT_ACTIONS).await, 0, "something was resent");
    assert_eq!(db.count_deliveries(&still_rejected()).await, 1);

    // Load balancers and Prometheus reach the probes by address or service name.
    let healthz = http.get(format!("{}/healthz", admin.base));
    assert_eq!(status_for_host(&admin, healthz, &evil).await, 200);
    let metrics = http.get(format!("{}/metrics", admin.base));
    assert_eq!(
        status_for_host(&admin, metrics, "dispatcher-metrics:9187").await,
        200
    );

    // Ops on the machine itself, by any loopback name with the port.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(status_for_host(&admin, list(), &host).await, 200, "{host}");
    }
    for host in [
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        assert_eq!(status_for_host(&admin, list(), &host).await, 421, "{host}");
    }
}

#[tokio::test]
async fn with_a_token_the_admin_server_answers_only_to_the_names_ops_published() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .admin_token(TOKEN)
        .admin_allowed_hosts(&["dispatcher-admin.example.org", "10.1.2.3:9187"]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let support = AdminClient::of(&daemon, Some(TOKEN)).await;
    let port = port_of(&support);
    let list = || {
        support
            .http()
            .get(format!("{}/api/deliveries", support.base))
            .bearer_auth(TOKEN)
    };
    let login = || support.http().get(format!("{}/login", support.base));

    for host in [
        "dispatcher-admin.example.org".to_string(),
        format!("dispatcher-admin.example.org:{port}"),
        "DISPATCHER-ADMIN.example.org:443".to_string(),
        "10.1.2.3:9187".to_string(),
    ] {
        assert_eq!(
            status_for_host(&support, list(), &host).await,
            200,
            "{host}"
        );
        assert_eq!(
            status_for_host(&support, login(), &host).await,
            200,
            "{host}"
        );
    }
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1:{port}"),
        "10.1.2.3:80".to_string(),
        "dispatcher-admin.example.org.evil.example".to_string(),
    ] {
        assert_eq!(
            status_for_host(&support, list(), &host).await,
            421,
            "{host}"
        );
        assert_eq!(
            status_for_host(&support, login(), &host).await,
            421,
            "{host}"
        );
    }
    let readyz = support.http().get(format!("{}/readyz", support.base));
    assert_eq!(
        status_for_host(&support, readyz, "10.0.0.7:9187").await,
        200
    );
}

#[tokio::test]
async fn the_api_takes_only_json_posts_and_none_from_another_site() {
    let acme = partner_refusing("acme", &["p-refused"]).await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let (daemon, id) = one_rejected_delivery(&config, &db).await;
    let admin = AdminClient::of(&daemon, None).await;
    let retry = || {
        admin
            .http()
            .post(format!("{}/api/deliveries/{id}/retry", admin.base))
    };

    // What another site's page can send without the browser asking first.
    let text = admin
        .send(retry().header("content-type", "text/plain").body("{}"))
        .await;
    assert_eq!(text.0, 415, "{}", text.1);
    assert!(
        text.1["error"]
            .as_str()
            .is_some_and(|error| error.contains("application/json")),
        "{}",
        text.1
    );
    let form = admin.send(retry().form(&[("state", "failed")])).await;
    assert_eq!(form.0, 415, "{}", form.1);
    let bare = admin.send(retry()).await;
    assert_eq!(bare.0, 415, "{}", bare.1);
    let foreign = admin
        .send(
            retry()
                .header("content-type", "application/json")
                .header("origin", "https://evil.example")
                .body("{}"),
        )
        .await;
    assert_eq!(foreign.0, 403, "{}", foreign.1);
    let cancel = admin
        .send(
            admin
                .http()
                .post(format!("{}/api/deliveries/{id}/cancel", admin.base))
                .header("content-type", "text/plain"),
        )
        .await;
    assert_eq!(cancel.0, 415, "{}", cancel.1);
    assert_eq!(db.count(SUPPORT_ACTIONS).await, 0, "something was changed");
    assert_eq!(db.count_deliveries(&still_rejected()).await, 1);

    // A script's JSON post, or one from the admin server's own origin, goes through.
    let ours = admin
        .send(
            retry()
                .header("content-type", "application/json; charset=utf-8")
                .header("origin", &admin.base)
                .body("{}"),
        )
        .await;
    assert_eq!(ours.0, 200, "{}", ours.1);
    assert_eq!(db.count(SUPPORT_ACTIONS).await, 1);
}

#[tokio::test]
async fn after_a_button_press_the_page_goes_back_only_to_itself() {
    let acme = partner_refusing("acme", &["p-refused"]).await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let (daemon, id) = one_rejected_delivery(&config, &db).await;
    let admin = AdminClient::of(&daemon, None).await;

    // Browsers drop tabs and line breaks from a URL, so `/\t/evil.example` is
    // `//evil.example`: another site.
    for back in [
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r\n/evil.example",
        "/\u{1}",
        "/deliveries\u{7f}",
        "/\\evil.example",
    ] {
        let pressed = admin
            .raw(
                admin
                    .http()
                    .post(format!("{}/deliveries/{id}/cancel", admin.base))
                    .form(&[("back", back)]),
            )
            .await;
        assert_eq!(pressed.status().as_u16(), 303, "{back:?}");
        let location = pressed.headers()["location"].to_str().expect("location");
        assert!(
            location.starts_with("/?notice="),
            "{back:?} went to {location:?}"
        );
    }
    let pressed = admin
        .raw(
            admin
                .http()
                .post(format!("{}/deliveries/{id}/resend", admin.base))
                .form(&[("back", format!("/deliveries/{id}"))]),
        )
        .await;
    assert_eq!(
        pressed.headers()["location"],
        format!("/deliveries/{id}?notice=resent&delivery={id}").as_str()
    );
}

/// A client that trusts only the test's CA.
fn trusting(ca: &tls::TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).expect("CA certificate"),
        )
        .build()
        .expect("https client")
}

/// The session cookie a sign-in sets, whole (with its attributes).
async fn sign_in_cookie(http: &reqwest::Client, base: &str) -> String {
    let signed_in = http
        .post(format!("{base}/login"))
        .form(&[("name", "Dana"), ("token", TOKEN)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed_in.status().as_u16(), 303);
    signed_in.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string()
}

#[tokio::test]
async fn over_tls_the_admin_server_answers_on_https_and_the_session_cookie_is_secure() {
    let ca = tls::TestCa::new("HelpAround ops test CA");
    let certificate = ca.server_certificate();
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    write_file(config.dir.path(), "admin-cert.pem", &certificate.cert_pem);
    write_file(config.dir.path(), "admin-key.pem", &certificate.key_pem);
    let config = config
        .admin_token(TOKEN)
        .admin_tls("admin-cert.pem", "admin-key.pem");
    let db = TestDb::migrated(&config).await;
    let mut daemon = Daemon::start(&config, &db);
    let address = daemon.admin_url().await;
    let base = address.replacen("http://", "https://", 1);
    let https = trusting(&ca);
    // Connections that never begin their handshake hold up no one else.
    let host = address.trim_start_matches("http://").to_string();
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(
            tokio::net::TcpStream::connect(&host)
                .await
                .expect("connect"),
        );
    }

    let request = https
        .get(format!("{base}/api/deliveries"))
        .bearer_auth(TOKEN)
        .send();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), request)
        .await
        .expect("answered while ten other connections stay silent")
        .expect("the API answers over https");
    assert_eq!(answer.status().as_u16(), 200);
    let cookie = sign_in_cookie(&https, &base).await;
    assert!(
        cookie.split(';').any(|part| part.trim() == "Secure"),
        "{cookie}"
    );
    let signed_out = https
        .post(format!("{base}/logout"))
        .send()
        .await
        .expect("sign out");
    let cleared = signed_out.headers()["set-cookie"].to_str().expect("cookie");
    assert!(cleared.contains("Secure"), "{cleared}");
    // Plain HTTP on the TLS port gets no page.
    assert!(admin_plain_http_fails(&address).await);

    drop(silent);

    // The daemon still stops gracefully, TLS listener and all.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait_exit().await.success(), "{}", daemon.log_text());
}

async fn admin_plain_http_fails(address: &str) -> bool {
    let plain = reqwest::Client::new();
    match plain.get(format!("{address}/login")).send().await {
        Err(_) => true,
        Ok(response) => !response.status().is_success(),
    }
}

#[tokio::test]
async fn over_plain_http_the_session_cookie_is_not_marked_secure() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let admin = AdminClient::of(&daemon, None).await;
    // A Secure cookie is never sent back over http: support could not stay signed in.
    let cookie = sign_in_cookie(admin.http(), &admin.base).await;
    assert!(
        !cookie.split(';').any(|part| part.trim() == "Secure"),
        "{cookie}"
    );
}

#[tokio::test]
async fn ops_who_change_the_published_names_or_the_certificate_are_told_it_takes_a_restart() {
    let ca = tls::TestCa::new("HelpAround ops test CA");
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let first = ca.server_certificate();
    write_file(config.dir.path(), "admin-cert.pem", &first.cert_pem);
    write_file(config.dir.path(), "admin-key.pem", &first.key_pem);
    let config = config
        .admin_token(TOKEN)
        .admin_tls("admin-cert.pem", "admin-key.pem")
        .admin_allowed_hosts(&["published.example.org"]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let base = daemon.admin_url().await.replacen("http://", "https://", 1);
    // Before its handlers are installed, a SIGHUP would end the process.
    daemon.wait_for_log("dispatcher running", 1).await;

    // A renewed certificate, and a name someone typed over the published one.
    let renewed = ca.server_certificate();
    write_file(config.dir.path(), "admin-cert.pem", &renewed.cert_pem);
    write_file(config.dir.path(), "admin-key.pem", &renewed.key_pem);
    let changed = config.clone().admin_allowed_hosts(&["typo.example.org"]);
    daemon.reload_with(&changed.text(&db));
    let log = daemon.wait_for_log("configuration reloaded", 1).await;
    for key in ["admin.allowed_hosts", "admin.tls_cert"] {
        assert!(
            log.lines()
                .any(|line| line.contains(key) && line.contains("restart")),
            "{key} is not reported as needing a restart:\n{log}"
        );
    }

    // Until the restart, the server answers as it did.
    let https = trusting(&ca);
    let status = |host: &'static str| {
        let request = https
            .get(format!("{base}/api/deliveries"))
            .bearer_auth(TOKEN)
            .header("host", host);
        async move { request.send().await.expect("answer").status().as_u16() }
    };
    assert_eq!(status("published.example.org").await, 200);
    assert_eq!(status("typo.example.org").await, 421);
}

/// The numbers of one partner's chart on the overview, by series.
fn chart_totals(overview: &str, partner: &str) -> Vec<(String, i64)> {
    let start = overview
        .find(&format!(
            "<figure class=\"chart\" data-partner=\"{partner}\">"
        ))
        .unwrap_or_else(|| panic!("no chart for {partner}: {overview}"));
    let figure = &overview[start..];
    let figure = &figure[..figure.find("</figure>").expect("the chart ends")];
    ["delivered", "rejected", "retried", "dead"]
        .into_iter()
        .map(|series| {
            let cell = format!("data-series=\"{series}\">");
            let at = figure
                .find(&cell)
                .unwrap_or_else(|| panic!("no {series} total: {figure}"));
            let number = &figure[at + cell.len()..];
            let number = &number[..number.find('<').expect("the cell ends")];
            (series.to_string(), number.parse().expect("a count"))
        })
        .collect()
}

fn totals(delivered: i64, rejected: i64, retried: i64, dead: i64) -> Vec<(String, i64)> {
    [
        ("delivered", delivered),
        ("rejected", rejected),
        ("retried", retried),
        ("dead", dead),
    ]
    .into_iter()
    .map(|(series, count)| (series.to_string(), count))
    .collect()
}

#[tokio::test]
async fn the_overview_charts_each_partners_day_counting_retries_but_not_resends() {
    let acme = TestPartner::start("acme", |request| match request.patient_id().as_str() {
        "p-refused" => Reply::status(400, r#"{"success": false, "errorMessage": "no"}"#),
        "p-flaky" if request.try_number == 1 => Reply::status(503, ""),
        _ => Reply::accepted(request),
    })
    .await;
    let down = TestPartner::start("down", |_| Reply::status(503, "")).await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&down, &[PROGRAM])
        .circuit_breaker_failures("down", 100)
        .max_attempts(2);
    let db = TestDb::migrated(&config).await;
    for patient in ["p-ok", "p-refused", "p-flaky"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 6).await;
    let admin = AdminClient::of(&daemon, None).await;
    // A resend is support's, not a retry: the rejected first try is not counted as one.
    let (_, refused) = admin
        .get("/api/deliveries?patient_id=p-refused&partner=acme")
        .await;
    let refused = ids(&refused).remove(0);
    // Resent twice: neither attempt before a resend is a retry.
    for attempts in [2, 3] {
        let (status, _) = admin
            .post(&format!("/api/deliveries/{refused}/retry"), &json!({}))
            .await;
        assert_eq!(status, 200);
        db.wait_for_deliveries(
            &Deliveries::all()
                .with_id(&refused)
                .with_attempts(attempts)
                .in_state("rejected"),
            1,
        )
        .await;
    }
    // The timeline says the same of each: the attempt ended the delivery, support resent it.
    let timeline = admin
        .raw(
            admin
                .http()
                .get(format!("{}/deliveries/{refused}", admin.base)),
        )
        .await
        .text()
        .await
        .expect("delivery page");
    assert_eq!(
        timeline
            .matches("the delivery ended; support resent it")
            .count(),
        2,
        "{timeline}"
    );

    let overview = admin
        .raw(admin.http().get(format!("{}/?state=all", admin.base)))
        .await
        .text()
        .await
        .expect("overview");
    assert_eq!(chart_totals(&overview, "acme"), totals(2, 1, 1, 0));
    assert_eq!(
        chart_totals(&overview, "down"),
        totals(0, 0, 3, 3),
        "each first try was retried, each second one was the last"
    );
    assert!(
        overview.contains("<svg class=\"bars\""),
        "drawn on the server"
    );
    assert_eq!(
        overview.matches("<script").count(),
        1,
        "the chart has no script: the page's one script asks before a cancel"
    );
}

/// The nonce of a Content-Security-Policy: the one script and style it lets run.
/// A delivery whose first try failed, claimed again as the claim stores it since
/// migration 0020 (`pending`, with a claim token): the overview counts it in its
/// partner's queue (pending, waiting or in flight) and the chart that first try as
/// retried (another is on the wire). Neither reads a month of delivered deliveries to
/// find it: the claimed one is found among the pending, on their index.
#[tokio::test(flavor = "multi_thread")]
async fn the_overview_counts_a_claimed_delivery_in_flight_without_reading_the_history() {
    const HISTORY: i64 = 3_000;
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-claimed"))
        .await;
    let mut router = Router::of(&config, &db).await;
    router.route().await;
    let [claimed] = &db.ids_in_state("pending").await[..] else {
        panic!("one delivery, pending")
    };
    db.client
        .execute(
            "WITH tried AS (
                 INSERT INTO dispatcher.attempts
                     (delivery_id, number, started_at, duration_ms, http_status)
                 VALUES ($1::text::uuid, 1, now(), 20, 503)
             )
             UPDATE dispatcher.deliveries SET attempt_count = 1, last_status = 503
             WHERE id = $1::text::uuid",
            &[claimed],
        )
        .await
        .expect("a first try that failed");
    db.claim_by_hand(&[claimed.as_str()], Duration::from_secs(300))
        .await;
    db.seed_ended_deliveries("acme", HISTORY).await;
    let client = &router.client;

    let before = db.delivery_entries_read().await;
    let summaries = dispatcher::store::support::partner_summaries(client)
        .await
        .expect("the overview");
    let read = db.delivery_entries_read_since(client, before).await;
    let acme_today = summaries
        .iter()
        .find(|summary| summary.partner.as_deref() == Some("acme"))
        .expect("acme's summary");
    assert_eq!(
        (acme_today.delivered, acme_today.failed, acme_today.pending),
        (0, 0, 1),
        "the claimed one is in acme's queue; the month's are not today's"
    );
    assert!(acme_today.oldest_pending_since.is_some());
    assert!(
        read < HISTORY / 10,
        "the overview read {read} rows and index entries: it walked the {HISTORY} delivered"
    );

    let before = db.delivery_entries_read().await;
    let days = dispatcher::store::support::chart::last_day(client)
        .await
        .expect("the chart");
    let read = db.delivery_entries_read_since(client, before).await;
    let acme_day = days
        .iter()
        .find(|day| day.partner == "acme")
        .expect("acme's day");
    assert_eq!(
        (acme_day.total().retried, acme_day.total().delivered),
        (1, 0),
        "its first try is retried: the claim is on the wire"
    );
    assert!(
        read < HISTORY / 10,
        "the chart read {read} rows and index entries: it walked the {HISTORY} delivered"
    );
}

/// Support's list of what is in flight, beside a held partner's backlog of due
/// deliveries and a month of delivered ones. Claimed deliveries are stored `pending`
/// (migration 0020), in the backlog's own index: support finds them through their leases,
/// never by reading the backlog or the history; and a delivery of a lease still open that
/// was recorded since is not in flight.
#[tokio::test(flavor = "multi_thread")]
async fn support_lists_what_is_in_flight_without_reading_the_backlog() {
    const BACKLOG: i64 = 3_000;
    let acme = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.seed_due_deliveries(&[("acme", BACKLOG, Duration::from_secs(3600))])
        .await;
    db.seed_ended_deliveries("acme", BACKLOG).await;
    let mut first_due: Vec<String> = db
        .client
        .query(
            "SELECT id::text FROM dispatcher.deliveries WHERE state = 'pending'
             ORDER BY due_at, id LIMIT 4",
            &[],
        )
        .await
        .expect("the first due")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let claim: Vec<&str> = first_due.iter().map(String::as_str).collect();
    db.claim_by_hand(&claim, Duration::from_secs(300)).await;
    let recorded = first_due.pop().expect("four claimed");
    db.client
        .execute(
            "UPDATE dispatcher.deliveries
             SET state = 'delivered', claim_token = NULL, leased_until = NULL, due_at = NULL,
                 ended_at = now()
             WHERE id = $1::text::uuid",
            &[&recorded],
        )
        .await
        .expect("its 200 recorded");
    let router = Router::of(&config, &db).await;

    let in_flight = dispatcher::store::support::Selection {
        state: Some("in_flight".into()),
        ..Default::default()
    };
    let before = db.delivery_entries_read().await;
    let listed = dispatcher::store::support::list(&router.client, &in_flight, None, 50)
        .await
        .expect("list");
    let read = db.delivery_entries_read_since(&router.client, before).await;

    let mut listed: Vec<String> = listed
        .iter()
        .map(|delivery| delivery.id.to_string())
        .collect();
    listed.sort();
    first_due.sort();
    assert_eq!(
        listed, first_due,
        "the three still claimed, not the one recorded"
    );
    assert!(
        read < BACKLOG / 10,
        "the list of what is in flight read {read} rows and index entries: it walked the \
         {BACKLOG} due or the {BACKLOG} delivered"
    );
}

/// A delivery the daemon has claimed (stored `pending` with its claim token since
/// migration 0020) is in flight to the API and the page while its request is on the
/// wire: listed so, with no next attempt, and neither cancels it, each saying why.
#[tokio::test(flavor = "multi_thread")]
async fn neither_the_api_nor_the_page_cancels_a_delivery_on_the_wire() {
    // The answer comes long after the test is done: the request stays on the wire.
    let partner = TestPartner::start("acme", |request| {
        Reply::accepted(request).after(Duration::from_secs(60))
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .request_timeout(Duration::from_secs(90))
        .lease(Duration::from_secs(120));
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let id = partner.wait_for_requests(1).await[0].webhook_id();
    let admin = AdminClient::of(&daemon, None).await;

    let (status, listed) = admin.get("/api/deliveries?state=in_flight").await;
    assert_eq!((status, ids(&listed)), (200, vec![id.clone()]), "{listed}");
    let (_, detail) = admin.get(&format!("/api/deliveries/{id}")).await;
    assert_eq!(detail["state"], "in_flight", "{detail}");
    assert!(detail["next_attempt_at"].is_null(), "{detail}");

    let (status, refused) = admin
        .post(&format!("/api/deliveries/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not cancelled: it is in flight right now"),
        "{refused}"
    );
    let pressed = admin
        .raw(
            admin
                .http()
                .post(format!("{}/deliveries/{id}/cancel", admin.base))
                .form(&[("back", format!("/deliveries/{id}"))]),
        )
        .await;
    assert_eq!(
        pressed.headers()["location"],
        format!("/deliveries/{id}?notice=not-cancelled-in-flight&delivery={id}").as_str()
    );
    assert_eq!(
        db.count_deliveries(&Deliveries::all().with_id(&id).in_state("in_flight"))
            .await,
        1,
        "still on the wire, its answer still to be recorded"
    );
}

fn policy_nonce(policy: &str) -> String {
    let start = policy.find("script-src 'nonce-").expect("a script nonce") + 18;
    policy[start..policy[start..].find('\'').expect("quoted") + start].to_string()
}

/// Every answer of the page and the API: only its own script and style run, no other
/// site frames it, no address leaks in a referrer, and nothing is kept in a cache (the
/// page and the API show partners' answers).
#[tokio::test]
async fn the_page_and_the_api_run_only_their_own_script_and_are_never_cached() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    // An event no partner serves: its delivery can be cancelled, so the page asks first.
    let mut orphan = enrollment_event("p-orphan");
    orphan["supportProgramId"] = json!(UNSERVED_PROGRAM);
    db.insert_event(ENROLLMENT, &orphan).await;
    let daemon = Daemon::start(&config, &db);
    db.wait_for_state("unrouted", 1).await;
    let admin = AdminClient::of(&daemon, None).await;

    let mut nonces = HashSet::new();
    for path in [
        "/",
        "/login",
        "/api/deliveries",
        "/api/partners",
        "/api/openapi.json",
    ] {
        let response = admin
            .raw(admin.http().get(format!("{}{path}", admin.base)))
            .await;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header("cache-control"), "no-store", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        let policy = header("content-security-policy");
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        let nonce = policy_nonce(&policy);
        assert!(nonces.insert(nonce.clone()), "a fresh nonce each answer");
        if path == "/" {
            let page = response.text().await.expect("page");
            assert!(
                page.contains("data-confirm="),
                "the cancel button asks: {page}"
            );
            for inline_handler in ["onsubmit=", "onclick=", "javascript:"] {
                assert!(!page.contains(inline_handler), "{inline_handler}: {page}");
            }
            let carried = format!("nonce=\"{nonce}\"");
            assert_eq!(
                page.matches("<script").count(),
                page.matches(&format!("<script {carried}")).count()
            );
            assert_eq!(
                page.matches("<style").count(),
                page.matches(&format!("<style {carried}")).count()
            );
        }
    }
}

#[tokio::test]
async fn support_lists_by_event_or_patient_opens_a_delivery_by_id_and_pages_back_to_where_it_was() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let mut events = Vec::new();
    for i in 0..9 {
        let event = enrollment_event(&format!("p-{i}"));
        events.push((db.insert_event(ENROLLMENT, &event).await, event));
    }
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 9).await;
    let admin = AdminClient::of(&daemon, None).await;

    let (event_id, event) = &events[4];
    let (status, of_event) = admin
        .get(&format!("/api/deliveries?event_id={event_id}"))
        .await;
    assert_eq!(status, 200, "{of_event}");
    assert_eq!(of_event["deliveries"].as_array().map(Vec::len), Some(1));
    assert_eq!(of_event["deliveries"][0]["event_id"], json!(event_id));
    let delivery = ids(&of_event).remove(0);

    let redirect = |query: &str| {
        let admin = &admin;
        let query = query.to_string();
        async move {
            let answer = admin
                .raw(admin.http().get(format!("{}/search?q={query}", admin.base)))
                .await;
            assert_eq!(answer.status().as_u16(), 303, "{query}");
            answer.headers()["location"]
                .to_str()
                .expect("location")
                .to_string()
        }
    };
    assert_eq!(redirect(&delivery).await, format!("/deliveries/{delivery}"));
    let found = admin
        .raw(
            admin
                .http()
                .get(format!("{}/?state=all&patient_id=p-4", admin.base)),
        )
        .await
        .text()
        .await
        .expect("search results");
    assert!(found.contains(&format!("data-delivery=\"{delivery}\"")));
    assert_eq!(found.matches("data-delivery=").count(), 1, "{found}");
    let patient = &event["patient"];
    for field in ["firstName", "lastName", "phoneNumber", "email"] {
        if let Some(value) = patient[field].as_str() {
            assert!(!found.contains(value), "{field} in the search results");
        }
    }

    // Forward in fours, then back: each page back is the page that was shown before.
    let mut forward = Vec::new();
    let mut path = "/api/deliveries?limit=4".to_string();
    loop {
        let (status, page) = admin.get(&path).await;
        assert_eq!(status, 200, "{page}");
        forward.push((ids(&page), page["previous_before"].clone()));
        match page["next_after"].as_str() {
            Some(after) => path = format!("/api/deliveries?limit=4&after={after}"),
            None => break,
        }
    }
    let sizes: Vec<usize> = forward.iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(sizes, [4, 4, 1]);
    assert_eq!(
        forward[0].1,
        Value::Null,
        "the first page has none before it"
    );
    for back in (0..2).rev() {
        let before = forward[back + 1].1.as_str().expect("a page before");
        let (_, page) = admin
            .get(&format!("/api/deliveries?limit=4&before={before}"))
            .await;
        assert_eq!(ids(&page), forward[back].0, "page {back} again");
        assert_eq!(page["previous_before"], forward[back].1);
    }
    // Both: the deliveries between the two, none between one and itself.
    let (status, between) = admin
        .get(&format!(
            "/api/deliveries?after={delivery}&before={delivery}"
        ))
        .await;
    assert_eq!((status, ids(&between)), (200, vec![]), "{between}");
}

/// The page's search box, for `q` (encoded); the status and the page.
async fn search_page(admin: &AdminClient, q: &str) -> (u16, String) {
    let q: String = url::form_urlencoded::byte_serialize(q.as_bytes()).collect();
    let answer = admin
        .raw(admin.http().get(format!("{}/search?q={q}", admin.base)))
        .await;
    let status = answer.status().as_u16();
    (status, answer.text().await.expect("the search's page"))
}

/// The deliveries a search result lists under one reading of the text (`patient`,
/// `patient-prefix`, `external-id`, `support-program`, `event`).
fn found_by(page: &str, reading: &str) -> Vec<String> {
    let Some((_, section)) = page.split_once(&format!("data-reading=\"{reading}\"")) else {
        return Vec::new();
    };
    let section = section.split("</section>").next().unwrap_or_default();
    section
        .split("data-delivery=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn support_finds_deliveries_by_whatever_the_caller_quotes() {
    let acme = TestPartner::accepting("acme").await;
    let beta = TestPartner::accepting("beta").await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&beta, &[OTHER_PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let mut by_patient = std::collections::HashMap::new();
    for patient in ["ha61236024160af", "ha61239999", "hb70000001", "p42"] {
        let event_id = db
            .insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
        by_patient.insert(patient, event_id);
    }
    let mut of_other_program = enrollment_event("ha7000");
    of_other_program["supportProgramId"] = json!(OTHER_PROGRAM);
    db.insert_event(ENROLLMENT, &of_other_program).await;
    db.wait_for_state("delivered", 5).await;
    let deliveries = db.deliveries().await;
    let of = |patient: &str| -> String {
        deliveries
            .iter()
            .find(|delivery| delivery["patient_id"] == patient)
            .and_then(|delivery| delivery["id"].as_str())
            .expect("the patient's delivery")
            .to_string()
    };
    let admin = AdminClient::of(&daemon, None).await;

    // The caller reads out their whole HelpAround id: the results come first, above the
    // partners and their charts, and the box keeps what was typed.
    let (status, page) = search_page(&admin, "ha61236024160af").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(found_by(&page, "patient-prefix"), [of("ha61236024160af")]);
    let results = page.find("id=\"results\"").expect("results");
    let partners = page.find("id=\"partners\"").expect("the partners");
    assert!(results < partners, "the results are above the partners");
    assert!(
        page.contains("value=\"ha61236024160af\""),
        "the box keeps the text"
    );

    // Only the start of it: every patient whose id starts so.
    let (_, page) = search_page(&admin, "ha6123").await;
    let mut found = found_by(&page, "patient-prefix");
    found.sort();
    let mut expected = vec![of("ha61236024160af"), of("ha61239999")];
    expected.sort();
    assert_eq!(found, expected);

    // Three characters are too few for a prefix: looked up as a whole id, and said so.
    let (status, page) = search_page(&admin, "ha6").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"prefix-too-short\""), "{page}");
    assert!(page.contains("id=\"nothing-found\""), "{page}");
    let (_, page) = search_page(&admin, "p42").await;
    assert_eq!(found_by(&page, "patient"), [of("p42")]);
    assert!(page.contains("id=\"prefix-too-short\""), "{page}");

    // The partner's own id for the patient, from its 200 answer.
    let (_, page) = search_page(&admin, "crm-ha61239999").await;
    assert_eq!(found_by(&page, "external-id"), [of("ha61239999")]);
    assert!(found_by(&page, "patient-prefix").is_empty());

    // The support program: its events' deliveries, and no other program's.
    let (_, page) = search_page(&admin, OTHER_PROGRAM).await;
    assert_eq!(found_by(&page, "support-program"), [of("ha7000")]);

    // An event's outbox id.
    let event_id = by_patient["hb70000001"];
    let (_, page) = search_page(&admin, &event_id.to_string()).await;
    assert_eq!(found_by(&page, "event"), [of("hb70000001")]);

    // A delivery's id opens the delivery.
    let delivery = of("p42");
    let answer = admin
        .raw(
            admin
                .http()
                .get(format!("{}/search?q={delivery}", admin.base)),
        )
        .await;
    assert_eq!(answer.status().as_u16(), 303);
    assert_eq!(
        answer.headers()["location"],
        format!("/deliveries/{delivery}").as_str()
    );

    // Nothing matches: said so. Longer than any id: refused, saying why.
    let (status, page) = search_page(&admin, "nobody-we-know").await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"nothing-found\""), "{page}");
    let (status, page) = search_page(&admin, &"x".repeat(300)).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("at most 255 characters"), "{page}");
}
