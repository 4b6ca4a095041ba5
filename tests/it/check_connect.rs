//! `dispatcher check --connect` as ops run it before a deployment: every partner URL is
//! reached as a delivery would reach it (DNS, destination guard, TCP, TLS with the
//! partner's CA and our client certificate, the OAuth token), no event is sent, and each
//! failure is named in words ops can act on, with exit 1. Partners on 127.0.0.1.

use std::path::Path;

use crate::support::tls::{server_config, TestCa};
use crate::support::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use serde_json::json;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const LOCAL: &str = "allow_networks = [\"127.0.0.0/8\", \"::1/128\"]\n";

/// `dispatcher check --connect` on a configuration holding these `[[partners]]` tables.
async fn check_connect(dir: &Path, partners: &str) -> Output {
    check_connect_with_env(dir, partners, &[]).await
}

/// The same, with these environment variables (`FAILPOINTS`).
async fn check_connect_with_env(dir: &Path, partners: &str, env: &[(&str, &str)]) -> Output {
    let path = dir.join("dispatcher.toml");
    let text = format!(
        "[database]\nurl = \"postgres://dispatcher@127.0.0.1:1/nowhere\"\n\n\
         [dispatch]\nrequest_timeout = \"5s\"\n\n{partners}"
    );
    std::fs::write(&path, text).expect("write config");
    let mut command = dispatcher(&path);
    command
        .args(["check", "--connect"])
        .envs(env.iter().copied());
    finish(command).await
}

/// A `[[partners]]` table with webhooks under `base_url`, and more keys.
fn partner(name: &str, base_url: &str, keys: &str) -> String {
    format!(
        "[[partners]]\nname = \"{name}\"\nsupport_programs = [\"{PROGRAM}\"]\n\
         enrollment_url = \"{base_url}/webhook/user-enrollment\"\n\
         user_action_url = \"{base_url}/webhook/user-action\"\n{keys}\n"
    )
}

/// OAuth keys for a token endpoint at `base_url`/oauth/token.
fn oauth(base_url: &str) -> String {
    format!(
        "[partners.auth]\nkind = \"oauth2_client_credentials\"\n\
         token_url = \"{base_url}/oauth/token\"\nclient_id = \"helparound\"\n\
         client_secret = \"never-shown-secret\"\n"
    )
}

/// The one line `check --connect` printed about this partner's `endpoint`.
fn line<'a>(output: &'a Output, partner: &str, endpoint: &str) -> &'a str {
    let prefix = format!("partner {partner}  {endpoint}  ");
    let lines: Vec<&str> = output
        .stdout
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .collect();
    assert_eq!(lines.len(), 1, "one line `{prefix}…` expected:\n{output}");
    lines[0]
}

/// The command failed, and the partner's `endpoint` line names why in `words`.
fn assert_fails_with(output: &Output, partner: &str, endpoint: &str, words: &[&str]) {
    assert_eq!(output.status.code(), Some(1), "{output}");
    assert!(
        output.stderr.contains("connection checks failed"),
        "{output}"
    );
    let line = line(output, partner, endpoint);
    assert!(line.contains("  FAILED: "), "{line}\n{output}");
    for word in words {
        assert!(
            line.contains(word),
            "`{word}` missing from: {line}\n{output}"
        );
    }
}

/// Files in `dir` for a partner behind `partner_ca` that wants our client certificate.
fn write_tls_files(dir: &Path, partner_ca: &TestCa, client_ca: &TestCa) -> String {
    write_file(dir, "acme-ca.pem", &partner_ca.cert_pem());
    let ours = client_ca.client_certificate("dispatcher.helparound");
    write_file(dir, "client.pem", &ours.cert_pem);
    write_file(dir, "client.key", &ours.key_pem);
    "ca_bundle = \"acme-ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"\n"
        .to_string()
}

/// A partner whose token endpoint (/oauth/token) hands out `probe-token-1`.
fn token_or_no_content(request: &Received) -> Reply {
    match request.path.as_str() {
        "/oauth/token" => Reply::status(
            200,
            json!({"access_token": "probe-token-1", "token_type": "Bearer", "expires_in": 3600})
                .to_string(),
        ),
        _ => Reply::status(204, ""),
    }
}

/// Acme's CRM over HTTPS with a CA of its own, which no test configures as trusted.
async fn https_partner() -> TestPartner {
    let ca = TestCa::new("Acme CA");
    TestPartner::start_https(
        "acme",
        server_config(&ca.server_certificate(), None),
        token_or_no_content,
    )
    .await
}

/// Acme's CRM over HTTPS with its own CA, asking for a client certificate from ours,
/// with a token endpoint: the partner of the mTLS scenarios.
async fn mtls_partner() -> (TestPartner, TestCa, TestCa) {
    let partner_ca = TestCa::new("Acme CRM private CA");
    let our_ca = TestCa::new("HelpAround client CA");
    let acme = TestPartner::start_https(
        "acme",
        server_config(&partner_ca.server_certificate(), Some(&our_ca)),
        token_or_no_content,
    )
    .await;
    (acme, partner_ca, our_ca)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_reached_over_mtls_with_a_token_passes_and_receives_no_event() {
    let (acme, partner_ca, our_ca) = mtls_partner().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = write_tls_files(dir.path(), &partner_ca, &our_ca);
    // By name, so that DNS and the guard's look at its answer are part of it.
    let base_url = acme.base_url.replace("127.0.0.1", "localhost");
    let keys = format!("{LOCAL}{tls}{}", oauth(&base_url));

    let output = check_connect(dir.path(), &partner("acme", &base_url, &keys)).await;

    assert!(output.status.success(), "{output}");
    for endpoint in ["enrollment", "user action", "token"] {
        let line = line(&output, "acme", endpoint);
        assert!(
            line.contains("  ok  resolved in ") && line.contains("TLS connection"),
            "{line}"
        );
    }
    assert!(line(&output, "acme", "token").contains("token fetched in "));
    for secret in ["never-shown-secret", "probe-token-1"] {
        assert!(
            !output.stdout.contains(secret) && !output.stderr.contains(secret),
            "`{secret}` was printed:\n{output}"
        );
    }
    let received = acme.received();
    let webhooks: Vec<&Received> = received
        .iter()
        .filter(|request| request.path.starts_with("/webhook/"))
        .collect();
    assert_eq!(webhooks.len(), 2, "one probe per URL");
    for request in webhooks {
        assert!(request.body.is_empty(), "no event is sent");
        assert_eq!(request.webhook_id(), "", "nothing is signed");
        assert_eq!(request.header("authorization"), "", "no credential is sent");
    }
    let token_fetches = received
        .iter()
        .filter(|request| request.path == "/oauth/token" && !request.body.is_empty())
        .count();
    assert_eq!(token_fetches, 1);
    assert_eq!(acme.failed_handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_does_not_resolve_is_a_dns_failure() {
    let dir = tempfile::tempdir().expect("temp dir");

    let output = check_connect(
        dir.path(),
        &partner("acme", "https://crm.partner.invalid", ""),
    )
    .await;

    assert_fails_with(
        &output,
        "acme",
        "enrollment",
        &["DNS: cannot resolve crm.partner.invalid"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_the_destination_guard_refuses_is_named_with_its_class() {
    let acme = https_partner().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "{}/webhook",
        acme.base_url.replace("127.0.0.1", "localhost")
    );
    // Both webhooks at one URL: probed once. No allow_networks: loopback is refused.
    let table = format!(
        "[[partners]]\nname = \"acme\"\nsupport_programs = [\"{PROGRAM}\"]\n\
         enrollment_url = \"{url}\"\nuser_action_url = \"{url}\"\n"
    );

    let output = check_connect(dir.path(), &table).await;

    assert_fails_with(
        &output,
        "acme",
        "enrollment, user action",
        &["destination refused: localhost is", "a loopback address"],
    );
    assert!(acme.received().is_empty(), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_nobody_listens_on_is_a_refused_connection() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let dir = tempfile::tempdir().expect("temp dir");

    let output = check_connect(
        dir.path(),
        &partner("acme", &format!("https://127.0.0.1:{port}"), LOCAL),
    )
    .await;

    assert_fails_with(
        &output,
        "acme",
        "enrollment",
        &[&format!("connection refused by 127.0.0.1:{port}")],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_a_ca_not_configured_is_not_trusted() {
    let acme = https_partner().await;
    let dir = tempfile::tempdir().expect("temp dir");

    let output = check_connect(dir.path(), &partner("acme", &acme.base_url, LOCAL)).await;

    assert_fails_with(
        &output,
        "acme",
        "user action",
        &["TLS: the partner's certificate is not trusted", "ca_bundle"],
    );
    assert!(acme.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_named_with_its_date() {
    let (ca_pem, expired) = expired_server_certificate();
    let acme = TestPartner::start_https("acme", expired, token_or_no_content).await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "acme-ca.pem", &ca_pem);
    let keys = format!("{LOCAL}ca_bundle = \"acme-ca.pem\"\n");

    let output = check_connect(dir.path(), &partner("acme", &acme.base_url, &keys)).await;

    assert_fails_with(
        &output,
        "acme",
        "enrollment",
        &["TLS: the partner's certificate has expired (on 2021-01-01"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_missing_or_unknown_to_the_partner_is_named() {
    client_certificate_refusals_are_named(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs `--features failpoints` (scripts/test sets it)"
)]
async fn a_client_certificate_refusal_the_connection_pool_lost_is_still_named() {
    // Under TLS 1.3 the partner refuses our certificate once our handshake is done. On a
    // busy machine the HTTP client's pool can take the connection as ready, and its
    // request then fails "connection was not ready" with the partner's alert lost: the
    // fail point makes it lose the alert every time.
    client_certificate_refusals_are_named(&[("FAILPOINTS", "probe-alert-lost=return")]).await;
}

/// A partner behind mTLS probed without a client certificate, then with one from a CA
/// it never heard of: both refusals named, and no request reaches it.
async fn client_certificate_refusals_are_named(env: &[(&str, &str)]) {
    let (acme, partner_ca, _our_ca) = mtls_partner().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // Our files, but a client certificate from a CA the partner never heard of.
    let tls = write_tls_files(dir.path(), &partner_ca, &TestCa::new("Someone else's CA"));

    let without = check_connect_with_env(
        dir.path(),
        &partner(
            "acme",
            &acme.base_url,
            &format!("{LOCAL}ca_bundle = \"acme-ca.pem\"\n"),
        ),
        env,
    )
    .await;
    let stranger = check_connect_with_env(
        dir.path(),
        &partner("acme", &acme.base_url, &format!("{LOCAL}{tls}")),
        env,
    )
    .await;

    assert_fails_with(
        &without,
        "acme",
        "enrollment",
        &["asks for a client certificate and none is configured"],
    );
    assert_fails_with(
        &stranger,
        "acme",
        "enrollment",
        &["the partner refused our client certificate (UnknownCA)"],
    );
    assert!(acme.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_answering_401_is_named_with_its_oauth_error() {
    let partner_ca = TestCa::new("Acme CRM private CA");
    let acme = TestPartner::start_https(
        "acme",
        server_config(&partner_ca.server_certificate(), None),
        |request| match request.path.as_str() {
            "/oauth/token" => Reply::status(401, r#"{"error": "invalid_client"}"#),
            _ => Reply::status(204, ""),
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "acme-ca.pem", &partner_ca.cert_pem());
    let keys = format!(
        "{LOCAL}ca_bundle = \"acme-ca.pem\"\n{}",
        oauth(&acme.base_url)
    );

    let output = check_connect(dir.path(), &partner("acme", &acme.base_url, &keys)).await;

    assert_fails_with(
        &output,
        "acme",
        "token",
        &["the token endpoint answered HTTP 401 (invalid_client)"],
    );
    assert!(line(&output, "acme", "enrollment").contains("  ok  "));
    assert!(!output.stdout.contains("never-shown-secret"), "{output}");
}

/// A CA's certificate (PEM) and a server configuration whose certificate, for 127.0.0.1,
/// that CA issued for 2020 only.
fn expired_server_certificate() -> (String, rustls::ServerConfig) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().expect("key");
    let certificate = params.signed_by(&key, &ca).expect("sign");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(certificate.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server certificate");
    (ca.pem(), config)
}
