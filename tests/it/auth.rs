//! Partner authentication as a partner sees it: a static bearer token or Basic
//! credentials, or an OAuth access token from the partner's token endpoint, fetched once
//! for many requests and renewed once when the partner stops accepting it.

use std::time::Duration;

use crate::support::*;
use base64::Engine;
use chrono::Utc;
use dispatcher::config::Config;
use dispatcher::http::client::{Answer, Sender};
use dispatcher::http::error::TransportError;
use serde_json::json;

async fn post_enrollment(sender: &Sender, config: &Config) -> Result<Answer, TransportError> {
    let partner = &config.partners[0];
    sender
        .post(
            partner,
            &partner.enrollment_url,
            "msg_auth",
            b"{}".to_vec(),
            Utc::now(),
            None,
        )
        .await
}

/// A token endpoint handing out `token-1`, `token-2`, ... one per request.
async fn token_endpoint() -> TestPartner {
    TestPartner::start("identity-provider", |request| {
        Reply::status(
            200,
            json!({"access_token": format!("token-{}", request.try_number),
                   "token_type": "Bearer", "expires_in": 3600})
            .to_string(),
        )
        // Slow enough that concurrent requests all need a token before the first arrives.
        .after(Duration::from_millis(200))
    })
    .await
}

/// A partner that accepts exactly these Authorization values and answers 401 otherwise.
async fn partner_accepting(authorizations: &'static [&'static str]) -> TestPartner {
    TestPartner::start("acme", move |request| {
        if authorizations.contains(&request.header("authorization").as_str()) {
            Reply::status(200, "{}")
        } else {
            Reply::status(401, "")
        }
    })
    .await
}

fn oauth_keys(token_endpoint: &TestPartner, extra: &str) -> String {
    format!(
        "allow_insecure = true\n[partners.auth]\nkind = \"oauth2_client_credentials\"\n\
         token_url = \"{}/oauth/token\"\nclient_id = \"helparound\"\nclient_secret = \"s3cret\"\n\
         scope = \"webhooks\"\n{extra}",
        token_endpoint.base_url
    )
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn one_oauth_token_is_fetched_for_many_concurrent_requests_and_reused() {
    let idp = token_endpoint().await;
    let partner = partner_accepting(&["Bearer token-1"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = partner_config(dir.path(), "acme", &partner.base_url, &oauth_keys(&idp, ""));
    let sender = Sender::new(&config.dispatch, &config.partners).expect("partner clients");

    let answers =
        futures_util::future::join_all((0..20).map(|_| post_enrollment(&sender, &config))).await;
    for answer in answers {
        assert_eq!(answer.expect("delivered").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            post_enrollment(&sender, &config)
                .await
                .expect("delivered")
                .status,
            200
        );
    }
    assert_eq!(partner.received().len(), 23);

    let token_requests = idp.received();
    assert_eq!(token_requests.len(), 1, "one fetch, shared and then cached");
    let request = &token_requests[0];
    assert_eq!(request.path, "/oauth/token");
    assert_eq!(
        request.header("authorization"),
        basic("helparound", "s3cret")
    );
    assert_eq!(
        request.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    let form = String::from_utf8_lossy(&request.body).to_string();
    assert_eq!(form, "grant_type=client_credentials&scope=webhooks");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_promising_a_token_for_ever_does_not_stop_deliveries() {
    // u64::MAX seconds: added to the clock unchecked, this once panicked inside the shared
    // fetch and every later request to the partner with it.
    let idp = TestPartner::start("identity-provider", |_| {
        Reply::status(
            200,
            r#"{"access_token": "token-1", "token_type": "Bearer", "expires_in": 18446744073709551615}"#,
        )
    })
    .await;
    let partner = partner_accepting(&["Bearer token-1"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = partner_config(dir.path(), "acme", &partner.base_url, &oauth_keys(&idp, ""));
    let sender = Sender::new(&config.dispatch, &config.partners).expect("partner clients");

    for _ in 0..2 {
        let answer = post_enrollment(&sender, &config).await.expect("answered");
        assert_eq!(answer.status, 200);
    }
    assert_eq!(idp.received().len(), 1, "the token is reused");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_that_stops_accepting_a_token_gets_a_new_one_within_the_same_attempt() {
    let idp = token_endpoint().await;
    // token-1 was revoked on the partner's side; token-2 is good.
    let partner = partner_accepting(&["Bearer token-2"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = partner_config(dir.path(), "acme", &partner.base_url, &oauth_keys(&idp, ""));
    let sender = Sender::new(&config.dispatch, &config.partners).expect("partner clients");

    let answer = post_enrollment(&sender, &config).await.expect("answered");
    assert_eq!(
        answer.status, 200,
        "the attempt's answer is the renewed request's"
    );
    let received = partner.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].header("authorization"), "Bearer token-1");
    assert_eq!(received[1].header("authorization"), "Bearer token-2");
    assert_eq!(received[0].body, received[1].body);
    assert_eq!(received[0].webhook_id(), received[1].webhook_id());
    assert_eq!(idp.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_refusing_every_token_gets_one_renewal_per_attempt_not_a_loop() {
    let idp = token_endpoint().await;
    let partner = partner_accepting(&[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = partner_config(dir.path(), "acme", &partner.base_url, &oauth_keys(&idp, ""));
    let sender = Sender::new(&config.dispatch, &config.partners).expect("partner clients");

    let answer = post_enrollment(&sender, &config).await.expect("answered");
    assert_eq!(
        answer.status, 401,
        "recorded as the partner's 401, retried later"
    );
    assert_eq!(partner.received().len(), 2);
    assert_eq!(idp.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_secret_post_sends_the_client_credentials_in_the_form() {
    let idp = token_endpoint().await;
    let partner = partner_accepting(&["Bearer token-1"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = oauth_keys(
        &idp,
        "audience = \"https://api.acme.example\"\nclient_auth = \"client_secret_post\"\n",
    );
    let config = partner_config(dir.path(), "acme", &partner.base_url, &keys);
    let sender = Sender::new(&config.dispatch, &config.partners).expect("partner clients");

    assert_eq!(
        post_enrollment(&sender, &config)
            .await
            .expect("answered")
            .status,
        200
    );
    let request = &idp.received()[0];
    assert_eq!(request.header("authorization"), "");
    assert_eq!(
        String::from_utf8_lossy(&request.body),
        "grant_type=client_credentials&scope=webhooks&audience=https%3A%2F%2Fapi.acme.example\
         &client_id=helparound&client_secret=s3cret"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn static_bearer_and_basic_credentials_are_sent_on_every_request() {
    let partner = partner_accepting(&[
        "Bearer partner-issued-token",
        "Basic aGVscGFyb3VuZDpwJHNzOndvcmQ=",
    ])
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "acme-password", "p$ss:word\n");
    for keys in [
        "[partners.auth]\nkind = \"bearer\"\ntoken = \"partner-issued-token\"\n",
        "[partners.auth]\nkind = \"basic\"\nusername = \"helparound\"\npassword = \"file:acme-password\"\n",
    ] {
        let config = partner_config(
            dir.path(),
            "acme",
            &partner.base_url,
            &format!("allow_insecure = true\n{keys}"),
        );
        let sender = Sender::new(&config.dispatch, &config.partners).expect("partner clients");
        let answer = post_enrollment(&sender, &config).await.expect("answered");
        assert_eq!(answer.status, 200, "{keys}");
    }
    assert_eq!(
        basic("helparound", "p$ss:word"),
        "Basic aGVscGFyb3VuZDpwJHNzOndvcmQ="
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_failure_is_a_failed_attempt_retried_on_schedule() {
    // The identity provider is down twice, then recovers.
    let idp = TestPartner::start("identity-provider", |request| match request.try_number {
        1 | 2 => Reply::status(503, r#"{"error": "temporarily_unavailable"}"#),
        _ => Reply::status(
            200,
            r#"{"access_token": "fresh-token", "token_type": "Bearer", "expires_in": 3600}"#,
        ),
    })
    .await;
    let partner = TestPartner::start("acme", |request| {
        if request.header("authorization") == "Bearer fresh-token" {
            Reply::accepted(request)
        } else {
            Reply::status(401, "")
        }
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .partner_keys(
            "acme",
            &format!(
                "[partners.auth]\nkind = \"oauth2_client_credentials\"\n\
                 token_url = \"{}/oauth/token\"\nclient_id = \"helparound\"\n\
                 client_secret = \"never-shown-secret\"\n",
                idp.base_url
            ),
        );
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_state("delivered", 1).await;
    let delivery = &db.deliveries().await[0];
    let attempts = db.attempts(delivery["id"].as_str().expect("id")).await;
    assert_eq!(attempts.len(), 3);
    for failed in &attempts[..2] {
        assert_eq!(failed["error_kind"], json!("auth"), "{failed}");
        assert_eq!(
            failed["error"],
            json!("cannot get an OAuth token: the token endpoint answered HTTP 503 (temporarily_unavailable)")
        );
        assert_eq!(failed["http_status"], json!(null));
    }
    assert_eq!(attempts[2]["http_status"], json!(200));
    assert_eq!(
        partner.received().len(),
        1,
        "nothing was sent without a token"
    );
    assert!(!daemon.log_text().contains("never-shown-secret"));
    assert!(!daemon.log_text().contains("fresh-token"));
}
