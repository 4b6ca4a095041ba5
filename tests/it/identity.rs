//! Who uses the admin server: people sign in through a real OpenID Provider on 127.0.0.1
//! (tests/oidc-provider/provider.py, Authlib), get the role of their groups, and every
//! sign-in, refusal, read of partners' answers and action lands in the audit trail;
//! scripts use personal API tokens; the trail cannot be changed.
//!
//! The provider runs from the venv scripts/test makes (`DISPATCHER_TEST_OIDC_PYTHON`).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};

use crate::browser::{current_path, text, wait_for, ChromeDriver};
use crate::support::*;
use fantoccini::Locator;
use serde_json::json;

pub(crate) const CLIENT_SECRET: &str = "client-secret-of-the-dispatcher";
const PARTNER_MESSAGE: &str = "member_id unknown to CRM";

/// The test OpenID Provider, killed when dropped.
pub(crate) struct Provider {
    child: Child,
    pub(crate) issuer: String,
}

impl Provider {
    pub(crate) fn start(redirect_uri: &str) -> Provider {
        let python = std::env::var("DISPATCHER_TEST_OIDC_PYTHON").expect(
            "DISPATCHER_TEST_OIDC_PYTHON is not set: run the tests with scripts/test, which makes the provider's venv",
        );
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/oidc-provider/provider.py");
        let mut child = Command::new(python)
            .arg(script)
            .args([
                "--client-secret",
                CLIENT_SECRET,
                "--redirect-uri",
                redirect_uri,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the test OpenID Provider");
        let stdout = child.stdout.take().expect("provider stdout");
        let mut issuer = String::new();
        BufReader::new(stdout)
            .read_line(&mut issuer)
            .expect("the provider prints its issuer");
        assert!(issuer.starts_with("http://127.0.0.1:"), "issuer: {issuer}");
        Provider {
            child,
            issuer: issuer.trim().to_string(),
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A daemon whose page signs people in through a fresh provider, with one delivery the
/// partner rejected.
struct Bench {
    _provider: Provider,
    daemon: Daemon,
    db: TestDb,
    admin: String,
    config: TestConfig,
    delivery: String,
    _partner: TestPartner,
}

async fn bench() -> Bench {
    let partner = TestPartner::start("acme", |_| {
        Reply::status(400, json!({"errorMessage": PARTNER_MESSAGE}).to_string())
    })
    .await;
    let listen = format!("127.0.0.1:{}", free_port());
    let provider = Provider::start(&format!("http://{listen}/auth/callback"));
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .admin_listen(&listen)
        .admin_oidc(&provider.issuer, CLIENT_SECRET);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("ha-identity-1"))
        .await;
    db.wait_for_state("rejected", 1).await;
    let delivery = db.deliveries().await[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let admin = daemon.admin_url().await;
    Bench {
        _provider: provider,
        daemon,
        db,
        admin,
        config,
        delivery,
        _partner: partner,
    }
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn cookie_of(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or_default().to_string())
        .find(|pair| pair.starts_with(&format!("{name}=")) && pair.len() > name.len() + 1)
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"]
        .to_str()
        .expect("location")
        .to_string()
}

/// Where the provider sends the browser back after `user` signs in (with `quirk`), and
/// the sign-in cookie the admin server set when it sent the browser there.
async fn to_the_provider_and_back(admin: &str, user: &str, quirk: &str) -> (String, String) {
    let http = http();
    let started = http
        .post(format!("{admin}/auth/login"))
        .send()
        .await
        .expect("start sign-in");
    assert_eq!(started.status().as_u16(), 303);
    let sign_in = cookie_of(&started, "dispatcher_sign_in").expect("sign-in cookie");
    let authorize = location(&started);
    assert!(authorize.contains("code_challenge="), "PKCE: {authorize}");
    let answered = http
        .post(&authorize)
        .form(&[("username", user), ("quirk", quirk)])
        .send()
        .await
        .expect("sign in at the provider");
    assert_eq!(
        answered.status().as_u16(),
        302,
        "{:?}",
        answered.text().await
    );
    (location(&answered), sign_in)
}

/// The callback's answer: status, the session cookie if one was set, the page.
async fn callback(callback: &str, sign_in: &str) -> (u16, Option<String>, String) {
    let answer = http()
        .get(callback)
        .header("cookie", sign_in)
        .send()
        .await
        .expect("callback");
    let status = answer.status().as_u16();
    let session = cookie_of(&answer, "dispatcher_session");
    (status, session, answer.text().await.unwrap_or_default())
}

/// The session cookie of `user` (vera: viewer, dana: support, oscar: operator).
pub(crate) async fn signed_in(admin: &str, user: &str) -> String {
    let (back, sign_in) = to_the_provider_and_back(admin, user, "").await;
    let (status, session, page) = callback(&back, &sign_in).await;
    assert_eq!(status, 200, "{user}: {page}");
    session.unwrap_or_else(|| panic!("{user} got no session: {page}"))
}

pub(crate) async fn get(url: &str, session: &str) -> (u16, String) {
    let answer = http()
        .get(url)
        .header("cookie", session)
        .send()
        .await
        .expect("get");
    (
        answer.status().as_u16(),
        answer.text().await.unwrap_or_default(),
    )
}

async fn post(url: &str, session: &str) -> u16 {
    http()
        .post(url)
        .header("cookie", session)
        .form(&[("back", "/")])
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

async fn audit_rows(db: &TestDb, condition: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM dispatcher.audit_log WHERE {condition}"
    ))
    .await
}

#[tokio::test]
async fn each_person_gets_the_role_of_their_groups_and_what_they_read_or_do_is_audited() {
    let bench = bench().await;
    let Bench {
        db,
        admin,
        delivery,
        ..
    } = &bench;
    let page = format!("{admin}/deliveries/{delivery}");

    // A viewer sees the delivery, not the partner's answer, and cannot resend.
    let vera = signed_in(admin, "vera").await;
    let (status, shown) = get(&page, &vera).await;
    assert_eq!(status, 200);
    assert!(
        shown.contains("ha-identity-1") && !shown.contains(PARTNER_MESSAGE),
        "{shown}"
    );
    assert!(shown.contains("vera (viewer)"), "{shown}");
    assert_eq!(post(&format!("{page}/resend"), &vera).await, 403);
    assert_eq!(get(&format!("{admin}/audit"), &vera).await.0, 403);
    let search = format!("{admin}/search?q=ha-identity-1");
    let (status, found) = get(&search, &vera).await;
    assert_eq!(status, 200);
    assert!(
        found.contains("ha-identity-1") && !found.contains(PARTNER_MESSAGE),
        "a viewer's search shows no answer: {found}"
    );

    // Support sees the answer (and that is recorded first) and resends, under its name.
    let dana = signed_in(admin, "dana").await;
    let (_, shown) = get(&page, &dana).await;
    assert!(shown.contains(PARTNER_MESSAGE), "{shown}");
    let (_, found) = get(&search, &dana).await;
    assert!(found.contains(PARTNER_MESSAGE), "{found}");
    assert_eq!(post(&format!("{page}/resend"), &dana).await, 303);
    assert_eq!(get(&format!("{admin}/audit"), &dana).await.0, 403);
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.support_actions WHERE actor = 'page:dana'",
        1,
    )
    .await;

    // An operator reads the trail.
    let oscar = signed_in(admin, "oscar").await;
    let (status, trail) = get(&format!("{admin}/audit"), &oscar).await;
    assert_eq!(status, 200, "{trail}");
    assert!(
        trail.contains("dana") && trail.contains("resend"),
        "{trail}"
    );

    for (condition, expected) in [
        ("action = 'sign_in' AND outcome = 'ok' AND actor = 'vera' AND role = 'viewer' AND subject = 'sub-vera'", 1),
        ("action = 'sign_in' AND outcome = 'ok' AND actor = 'dana' AND role = 'support'", 1),
        ("action = 'sign_in' AND outcome = 'ok' AND actor = 'oscar' AND role = 'operator'", 1),
        ("action = 'role_check' AND outcome = 'refused' AND actor = 'vera'", 2),
        ("action = 'role_check' AND outcome = 'refused' AND actor = 'dana'", 1),
        (&format!("action = 'delivery_read' AND actor = 'dana' AND target = '{delivery}'"), 1),
        ("action = 'delivery_read' AND actor = 'vera'", 0),
        ("action = 'deliveries_read' AND actor = 'dana' AND target = 'search?q=ha-identity-1'", 1),
        ("action = 'deliveries_read' AND actor = 'vera'", 0),
        (&format!("action = 'resend' AND outcome = 'ok' AND actor = 'dana' AND target = '{delivery}' AND via = 'page'"), 1),
        ("action = 'audit_read' AND actor = 'oscar'", 1),
    ] {
        assert_eq!(audit_rows(db, condition).await, expected, "{condition}");
    }

    // Signing out ends the session on the server: the same cookie opens nothing after.
    let out = http()
        .post(format!("{admin}/logout"))
        .header("cookie", &dana)
        .send()
        .await
        .expect("sign out");
    assert_eq!(out.status().as_u16(), 303);
    let after = http()
        .get(&page)
        .header("cookie", &dana)
        .send()
        .await
        .expect("get");
    assert_eq!(after.status().as_u16(), 303);
    assert_eq!(location(&after), "/login");
    assert_eq!(
        audit_rows(db, "action = 'sign_out' AND actor = 'dana'").await,
        1
    );
}

#[tokio::test]
async fn a_person_outside_every_group_a_broken_id_token_and_a_replayed_state_sign_nobody_in() {
    let bench = bench().await;
    let Bench { db, admin, .. } = &bench;

    let (back, sign_in) = to_the_provider_and_back(admin, "mallory", "").await;
    let (status, session, page) = callback(&back, &sign_in).await;
    assert_eq!((status, session), (403, None), "{page}");
    assert!(page.contains("none of the groups"), "{page}");

    for (quirk, says) in [
        ("expired", "xpired"),
        ("tampered", "ignature"),
        ("wrong_aud", "audience"),
    ] {
        let (back, sign_in) = to_the_provider_and_back(admin, "vera", quirk).await;
        let (status, session, page) = callback(&back, &sign_in).await;
        assert_eq!((status, session), (403, None), "{quirk}: {page}");
        assert_eq!(
            audit_rows(
                db,
                &format!("action = 'sign_in' AND outcome = 'refused' AND reason LIKE '%ID token%{says}%'")
            )
            .await,
            1,
            "{quirk} is audited with why"
        );
    }

    // A state works once: the same callback again signs nobody in.
    let (back, sign_in) = to_the_provider_and_back(admin, "dana", "").await;
    let (status, session, _) = callback(&back, &sign_in).await;
    assert_eq!(status, 200);
    assert!(session.is_some());
    let (status, session, page) = callback(&back, &sign_in).await;
    assert_eq!((status, session), (403, None), "{page}");
    assert!(page.contains("used already"), "{page}");
    // Nor does a callback this browser did not start.
    let (back, _) = to_the_provider_and_back(admin, "dana", "").await;
    let (status, session, _) = callback(&back, "dispatcher_sign_in=someone-elses").await;
    assert_eq!((status, session), (403, None));

    assert_eq!(
        audit_rows(
            db,
            "action = 'sign_in' AND outcome = 'refused' AND actor = 'mallory'"
        )
        .await,
        1
    );
    assert_eq!(
        audit_rows(db, "action = 'sign_in' AND outcome = 'refused'").await,
        6,
        "mallory, three broken tokens, a replay and a foreign state"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatcher.admin_sessions")
            .await,
        1,
        "only dana's good sign-in opened a session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_browser_support_signs_in_with_the_company_account_and_an_outsider_is_turned_away() {
    let bench = bench().await;
    let Bench {
        admin, delivery, ..
    } = &bench;
    let chromedriver = ChromeDriver::start();

    let browser = chromedriver.browser().await;
    browser.goto(admin).await.expect("open the page");
    wait_for(&browser, "button#sign-in")
        .await
        .click()
        .await
        .expect("press sign in");
    wait_for(&browser, "input#username")
        .await
        .send_keys("dana")
        .await
        .expect("type the user");
    wait_for(&browser, "button#sign-in")
        .await
        .click()
        .await
        .expect("sign in at the provider");
    let row = wait_for(
        &browser,
        &format!("table#deliveries tr[data-delivery='{delivery}']"),
    )
    .await;
    assert_eq!(current_path(&browser).await, "/");
    assert!(text(&row).await.contains(PARTNER_MESSAGE));
    let who = text(&wait_for(&browser, "header form.logout span").await).await;
    assert!(who.contains("dana (support)"), "{who}");
    browser.close().await.expect("end the session");

    let browser = chromedriver.browser().await;
    browser.goto(admin).await.expect("open the page");
    wait_for(&browser, "button#sign-in")
        .await
        .click()
        .await
        .expect("press sign in");
    wait_for(&browser, "input#username")
        .await
        .send_keys("mallory")
        .await
        .expect("type the user");
    wait_for(&browser, "button#sign-in")
        .await
        .click()
        .await
        .expect("sign in at the provider");
    let refusal = text(&wait_for(&browser, "p.notice.bad").await).await;
    assert!(
        refusal.contains("mallory is in none of the groups"),
        "{refusal}"
    );
    browser.goto(admin).await.expect("open the overview");
    wait_for(&browser, "button#sign-in").await;
    assert_eq!(current_path(&browser).await, "/login");
    let cookies = browser.get_all_cookies().await.expect("cookies");
    assert!(cookies
        .iter()
        .all(|cookie| cookie.name() != "dispatcher_session"));
    let _ = browser
        .find(Locator::Css("h1"))
        .await
        .expect("the page has a title");
    browser.close().await.expect("end the session");
}

#[tokio::test]
async fn a_script_uses_a_personal_token_of_its_role_until_it_is_revoked_and_the_trail_cannot_be_changed(
) {
    let bench = bench().await;
    let Bench {
        db,
        admin: _,
        config,
        delivery,
        daemon,
        ..
    } = &bench;
    let path = config.write(db);
    let create = |name: &str, role: &str| {
        let mut command = dispatcher(&path);
        command.args([
            "tokens",
            "create",
            "--name",
            name,
            "--role",
            role,
            "--expires",
            "30d",
        ]);
        command
    };
    let viewer = finish(create("dashboard", "viewer")).await;
    assert!(viewer.status.success(), "{viewer}");
    let viewer_token = viewer.stdout.trim().to_string();
    let ops = finish(create("nightly-retry", "operator")).await;
    let ops_token = ops.stdout.trim().to_string();
    assert!(ops_token.starts_with("hadt_"), "{ops}");
    let again = finish(create("dashboard", "viewer")).await;
    assert!(
        !again.status.success() && again.stderr.contains("exists already"),
        "{again}"
    );
    let stored: i64 = db
        .count(&format!(
            "SELECT count(*) FROM dispatcher.api_tokens WHERE token_hash = sha256('{ops_token}'::bytea)"
        ))
        .await;
    assert_eq!(stored, 1, "kept as its SHA-256");

    let as_viewer = AdminClient::of(daemon, Some(&viewer_token)).await;
    let (status, listed) = as_viewer.get("/api/deliveries").await;
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains(PARTNER_MESSAGE), "{listed}");
    let (status, _) = as_viewer
        .post(&format!("/api/deliveries/{delivery}/retry"), &json!({}))
        .await;
    assert_eq!(status, 403);

    let as_ops = AdminClient::of(daemon, Some(&ops_token)).await;
    let (status, shown) = as_ops.get(&format!("/api/deliveries/{delivery}")).await;
    assert_eq!(status, 200);
    assert!(shown.to_string().contains(PARTNER_MESSAGE));
    let (status, created) = as_ops
        .post(
            "/api/tokens",
            &json!({"name": "from-api", "role": "support", "expires": "7d"}),
        )
        .await;
    assert_eq!(status, 200, "creating a token through the API: {created}");
    assert!(created["token"]
        .as_str()
        .is_some_and(|t| t.starts_with("hadt_")));
    let (status, trail) = as_ops.get("/api/audit?actor=token:nightly-retry").await;
    assert_eq!(status, 200, "{trail}");
    let actions: Vec<&str> = trail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|entry| entry["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["audit_read", "token_create", "delivery_read"],
        "{trail}"
    );

    let revoked = finish({
        let mut command = dispatcher(&path);
        command.args(["tokens", "revoke", "dashboard"]);
        command
    })
    .await;
    assert!(revoked.status.success(), "{revoked}");
    assert_eq!(as_viewer.get("/api/deliveries").await.0, 401);
    let listed = finish({
        let mut command = dispatcher(&path);
        command.args(["tokens", "list"]);
        command
    })
    .await;
    assert!(
        listed.stdout.contains("revoked") && !listed.stdout.contains("hadt_"),
        "{listed}"
    );

    let trail = finish({
        let mut command = dispatcher(&path);
        command.args(["audit", "--action", "token_revoke"]);
        command
    })
    .await;
    assert!(
        trail.stdout.contains("dashboard") && trail.stdout.contains("cli:"),
        "{trail}"
    );

    // Even the owner (this superuser) cannot change or delete the trail.
    for statement in [
        "UPDATE dispatcher.audit_log SET actor = 'someone else'",
        "DELETE FROM dispatcher.audit_log",
        "TRUNCATE dispatcher.audit_log",
    ] {
        let error = db
            .client
            .batch_execute(statement)
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("append-only")
                || format!("{error:?}").contains("append-only"),
            "{statement}: {error:?}"
        );
    }
}
