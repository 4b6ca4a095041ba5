//! A partner's TLS as the dispatcher meets it: a private CA trusted through `ca_bundle`,
//! and client certificates (mTLS) through `client_cert` + `client_key`.

use crate::support::tls::{server_config, TestCa};
use crate::support::*;
use chrono::Utc;
use dispatcher::config::Config;
use dispatcher::http::client::{Answer, Sender};
use dispatcher::http::error::TransportError;

async fn post_enrollment(config: &Config) -> Result<Answer, TransportError> {
    let sender = Sender::new(&config.dispatch, &config.partners).expect("partner clients");
    let partner = &config.partners[0];
    sender
        .post(
            partner,
            &partner.enrollment_url,
            "msg_tls",
            b"{}".to_vec(),
            Utc::now(),
            None,
        )
        .await
}

fn accept_all(_: &Received) -> Reply {
    Reply::status(200, "{}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_behind_a_private_ca_is_trusted_only_through_its_ca_bundle() {
    let partner_ca = TestCa::new("Acme CRM private CA");
    let partner = TestPartner::start_https(
        "acme",
        server_config(&partner_ca.server_certificate(), None),
        accept_all,
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "acme-ca.pem", &partner_ca.cert_pem());
    let local = "allow_networks = [\"127.0.0.1/32\"]\n";

    let untrusted = partner_config(dir.path(), "acme", &partner.base_url, local);
    let error = post_enrollment(&untrusted)
        .await
        .expect_err("an unknown CA is not trusted");
    assert_eq!(error.kind.as_str(), "connect", "{error}");
    assert!(partner.received().is_empty());

    let trusted = partner_config(
        dir.path(),
        "acme",
        &partner.base_url,
        &format!("{local}ca_bundle = \"acme-ca.pem\"\n"),
    );
    let answer = post_enrollment(&trusted)
        .await
        .expect("trusted through ca_bundle");
    assert_eq!(answer.status, 200);
    assert_eq!(partner.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_that_requires_a_client_certificate_gets_ours() {
    let partner_ca = TestCa::new("Acme CRM private CA");
    let our_ca = TestCa::new("HelpAround client CA");
    let other_ca = TestCa::new("Someone else's CA");
    let partner = TestPartner::start_https(
        "acme",
        server_config(&partner_ca.server_certificate(), Some(&our_ca)),
        accept_all,
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "acme-ca.pem", &partner_ca.cert_pem());
    let ours = our_ca.client_certificate("dispatcher.helparound");
    write_file(dir.path(), "client.pem", &ours.cert_pem);
    write_file(dir.path(), "client.key", &ours.key_pem);
    let stranger = other_ca.client_certificate("dispatcher.helparound");
    write_file(dir.path(), "stranger.pem", &stranger.cert_pem);
    write_file(dir.path(), "stranger.key", &stranger.key_pem);
    let base = "allow_networks = [\"127.0.0.1/32\"]\nca_bundle = \"acme-ca.pem\"\n";

    let without = partner_config(dir.path(), "acme", &partner.base_url, base);
    assert!(
        post_enrollment(&without).await.is_err(),
        "no client certificate, no connection"
    );
    let wrong = partner_config(
        dir.path(),
        "acme",
        &partner.base_url,
        &format!("{base}client_cert = \"stranger.pem\"\nclient_key = \"stranger.key\"\n"),
    );
    assert!(
        post_enrollment(&wrong).await.is_err(),
        "a certificate the partner does not trust is refused"
    );
    assert!(partner.received().is_empty());

    let with = partner_config(
        dir.path(),
        "acme",
        &partner.base_url,
        &format!("{base}client_cert = \"client.pem\"\nclient_key = \"client.key\"\n"),
    );
    let answer = post_enrollment(&with).await.expect("mutual TLS");
    assert_eq!(answer.status, 200);
    assert_eq!(partner.received().len(), 1);
}
