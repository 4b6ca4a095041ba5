//! What the partner received, as support reads it on a delivery: the URL and the headers
//! with every secret masked, then, for a reason the audit trail records, the body, which
//! must be what the partner got; a viewer gets none of it, an erased body says when it
//! was erased, and neither the body nor the reason reaches the daemon's log.

use serde_json::{json, Value};

use crate::identity::{free_port, get, http, signed_in, Provider, CLIENT_SECRET};
use crate::support::*;

const API_KEY: &str = "key-of-acme-9c41";
const BEARER: &str = "partner-issued-token-77d2";
/// A name no log line has any business holding.
const LAST_NAME: &str = "Quillfeather";
const REASON: &str = "ticket RX-90210: partner says member unknown";
const MASKED: &str = "••••";

/// A daemon signing people in through the test provider, with a partner that takes a
/// static API key and a bearer token and accepts every event.
struct Bench {
    _provider: Provider,
    daemon: Daemon,
    db: TestDb,
    config: TestConfig,
    admin: String,
    partner: TestPartner,
}

async fn bench() -> Bench {
    let partner = TestPartner::start("acme", Reply::accepted).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let provider = Provider::start(&format!("http://{listen}/auth/callback"));
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .partner_header("acme", "x-partner-key", API_KEY)
        .partner_keys(
            "acme",
            &format!("[partners.auth]\nkind = \"bearer\"\ntoken = \"{BEARER}\"\n"),
        )
        .admin_listen(&listen)
        .admin_oidc(&provider.issuer, CLIENT_SECRET);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let admin = daemon.admin_url().await;
    Bench {
        _provider: provider,
        daemon,
        db,
        config,
        admin,
        partner,
    }
}

impl Bench {
    /// Sends one event (an enrollment under [`LAST_NAME`]) and waits for it: the delivery id and what the partner got.
    async fn delivered(&self, event_name: &str, mut event: Value) -> (String, Received) {
        if event["patient"].get("lastName").is_some() {
            event["patient"]["lastName"] = json!(LAST_NAME);
        }
        let sent = self.partner.received().len();
        self.db.insert_event(event_name, &event).await;
        let received = self.partner.wait_for_requests(sent + 1).await;
        let received = received[sent].clone();
        let id = received.webhook_id();
        self.db.wait_for_delivery_state(&id, "delivered").await;
        (id, received)
    }

    /// An API client with a fresh personal token of `role`.
    async fn api_as(&self, name: &str, role: &str) -> AdminClient {
        let mut command = dispatcher(&self.config.write(&self.db));
        command.args([
            "tokens",
            "create",
            "--name",
            name,
            "--role",
            role,
            "--expires",
            "1d",
        ]);
        let created = finish(command).await;
        assert!(created.status.success(), "{created}");
        AdminClient::of(&self.daemon, Some(created.stdout.trim())).await
    }
}

/// "Show patient data" on the page: the status and the page, checked to be kept in no
/// cache.
async fn show_patient_data(
    admin: &str,
    delivery: &str,
    session: &str,
    reason: &str,
) -> (u16, String) {
    let answer = http()
        .post(format!("{admin}/deliveries/{delivery}/received"))
        .header("cookie", session)
        .form(&[("reason", reason)])
        .send()
        .await
        .expect("post the reason");
    let status = answer.status().as_u16();
    assert_eq!(answer.headers()["cache-control"], "no-store");
    (status, answer.text().await.unwrap_or_default())
}

/// The text of the page's `<pre id="received-body">`, unescaped.
fn body_on_page(page: &str) -> Value {
    let start = page
        .find("<pre id=\"received-body\">")
        .expect("the body is shown")
        + 24;
    let end = start + page[start..].find("</pre>").expect("end of the body");
    let text = page[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).expect("the body shown is JSON")
}

#[tokio::test]
async fn support_sees_what_the_partner_received_for_a_reason_the_trail_keeps_and_a_viewer_sees_none_of_it(
) {
    let bench = bench().await;
    let Bench {
        db, admin, daemon, ..
    } = &bench;
    let (first, _) = bench
        .delivered(ENROLLMENT, enrollment_event("ha-received-1"))
        .await;
    // The partner's 200 taught its own patient id (R9): the next event carries it.
    let (second, received) = bench
        .delivered(VIEWED_TRACKER, viewed_tracker_event("ha-received-1"))
        .await;
    assert!(
        received.body.windows(15).any(|w| w == b"crm-ha-received"),
        "R9 id sent"
    );

    // On the delivery's page, support sees the URL and the headers, every secret masked.
    let dana = signed_in(admin, "dana").await;
    let page_of = |id: &str| format!("{admin}/deliveries/{id}");
    let (status, page) = get(&page_of(&second), &dana).await;
    assert_eq!(status, 200);
    assert!(page.contains("What the partner received"), "{page}");
    assert!(
        page.contains(&format!("POST {}/", bench.partner.base_url)),
        "{page}"
    );
    assert!(
        page.contains(MASKED) && page.contains("webhook-timestamp"),
        "{page}"
    );
    for secret in [API_KEY, BEARER, LAST_NAME, SIGNING_SECRET] {
        assert!(!page.contains(secret), "{secret} on the page");
    }

    // The body takes a reason; then it is what the partner received.
    for refused in ["", "   ", &"x".repeat(501)] {
        assert_eq!(
            show_patient_data(admin, &second, &dana, refused).await.0,
            400
        );
    }
    let (status, shown) = show_patient_data(admin, &second, &dana, REASON).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(body_on_page(&shown), received.json);
    assert!(!shown.contains(API_KEY) && !shown.contains(BEARER));

    // The API says the same to a support token, headers and all.
    let script = bench.api_as("support-script", "support").await;
    let path = format!("/api/deliveries/{second}/received");
    let (status, api) = script.post(&path, &json!({"reason": REASON})).await;
    assert_eq!(status, 200, "{api}");
    assert_eq!(api["body"], received.json, "the body as the partner got it");
    assert_eq!(
        api["url"],
        format!("{}{}", bench.partner.base_url, received.path)
    );
    let mut masked = Vec::new();
    for header in api["headers"].as_array().expect("headers") {
        let (name, value) = (
            header["name"].as_str().unwrap(),
            header["value"].as_str().unwrap(),
        );
        if value == MASKED {
            masked.push(name);
        } else {
            assert_eq!(received.header(name), value, "{name}");
        }
    }
    masked.sort_unstable();
    assert_eq!(
        masked,
        [
            "authorization",
            "webhook-signature",
            "x-api-key",
            "x-partner-key"
        ]
    );
    for (name, _) in &received.headers {
        let listed = api["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|header| header["name"] == name.as_str());
        assert!(
            listed || ["host", "content-length", "accept"].contains(&name.as_str()),
            "{name} was sent but is not shown"
        );
    }
    // The first body went out before the partner's id was known, and says so.
    let (_, api) = script
        .post(
            &format!("/api/deliveries/{first}/received"),
            &json!({"reason": REASON}),
        )
        .await;
    assert_eq!(api["body"], bench.partner.received()[0].json);

    // The trail holds who read it, and why.
    for (actor, via) in [("dana", "page"), ("token:support-script", "api")] {
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM dispatcher.audit_log WHERE action = 'body_read' AND outcome = 'ok'
                 AND actor = '{actor}' AND via = '{via}' AND target = '{second}' AND reason = '{REASON}'"
            ))
            .await,
            1,
            "{actor}"
        );
    }

    // A viewer gets no section, and is refused the body on the page and in the API.
    let vera = signed_in(admin, "vera").await;
    let (status, page) = get(&page_of(&second), &vera).await;
    assert_eq!(status, 200);
    assert!(!page.contains("What the partner received"), "{page}");
    assert_eq!(
        show_patient_data(admin, &second, &vera, REASON).await.0,
        403
    );
    let viewer = bench.api_as("dashboard", "viewer").await;
    let (status, refused) = viewer.post(&path, &json!({"reason": REASON})).await;
    assert_eq!(status, 403, "{refused}");
    assert!(refused.to_string().find(LAST_NAME).is_none());

    // Nothing of the body or the reason is in the log.
    let log = daemon.log_text();
    for secret in [LAST_NAME, "RX-90210", API_KEY, BEARER] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[tokio::test]
async fn an_erased_body_says_when_it_was_erased() {
    let bench = bench().await;
    let Bench { db, admin, .. } = &bench;
    let (id, received) = bench
        .delivered(ENROLLMENT, enrollment_event("ha-received-2"))
        .await;
    db.client
        .batch_execute(
            "UPDATE dispatcher.outbox SET event = NULL, event_erased_at = '2025-03-04T05:06:07Z'",
        )
        .await
        .expect("erase the body as retention does");

    let dana = signed_in(admin, "dana").await;
    let (status, shown) = show_patient_data(admin, &id, &dana, REASON).await;
    assert_eq!(status, 200, "{shown}");
    assert!(shown.contains("erased on 2025-03-04"), "{shown}");
    assert!(
        shown.contains(received.header("webhook-timestamp").as_str()),
        "{shown}"
    );
    assert!(!shown.contains(LAST_NAME), "{shown}");

    let script = bench.api_as("support-script", "support").await;
    let (status, api) = script
        .post(
            &format!("/api/deliveries/{id}/received"),
            &json!({"reason": REASON}),
        )
        .await;
    assert_eq!(status, 200, "{api}");
    assert_eq!(api["erased_at"], "2025-03-04T05:06:07Z");
    assert_eq!(api["body"], Value::Null);
}
