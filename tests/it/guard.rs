//! The destination guard as a partner (or an attacker owning a partner's DNS) meets it:
//! patient data goes only to globally routable addresses, checked on the addresses DNS
//! returned when connecting.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::tls::{server_config, TestCa};
use crate::support::*;
use chrono::Utc;
use dispatcher::config::Config;
use dispatcher::http::client::{Answer, Sender};
use dispatcher::http::error::TransportError;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::json;

/// The partner's DNS played in-process: each lookup gets the next answer (the last one
/// repeats), like a name whose records change between connections.
struct PartnerDns {
    answers: Vec<IpAddr>,
    lookups: AtomicUsize,
}

impl Resolve for PartnerDns {
    fn resolve(&self, _name: Name) -> Resolving {
        let turn = self.lookups.fetch_add(1, Ordering::SeqCst);
        let address = self.answers[turn.min(self.answers.len() - 1)];
        Box::pin(async move {
            let addresses: Addrs = Box::new(std::iter::once(SocketAddr::new(address, 0)));
            Ok(addresses)
        })
    }
}

async fn post_enrollment(sender: &Sender, config: &Config) -> Result<Answer, TransportError> {
    let partner = &config.partners[0];
    sender
        .post(
            partner,
            &partner.enrollment_url,
            "msg_guard",
            b"{}".to_vec(),
            Utc::now(),
            None,
        )
        .await
}

/// An HTTPS partner on 127.0.0.1 and a directory holding its CA for `ca_bundle`.
async fn https_partner(
    behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
) -> (TestPartner, tempfile::TempDir) {
    let ca = TestCa::new("Acme CRM private CA");
    let partner = TestPartner::start_https(
        "acme",
        server_config(&ca.server_certificate(), None),
        behaviour,
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "acme-ca.pem", &ca.cert_pem());
    (partner, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_rebound_to_another_address_after_a_good_lookup_is_not_connected_to() {
    // Each answer closes its connection, so every request looks the name up again.
    let (partner, dir) =
        https_partner(|_| Reply::status(200, "{}").header("connection", "close")).await;
    let port = partner.base_url.rsplit(':').next().expect("port");
    let config = partner_config(
        dir.path(),
        "acme",
        &format!("https://crm.partner.test:{port}"),
        "ca_bundle = \"acme-ca.pem\"\nallow_networks = [\"127.0.0.1/32\"]\n",
    );
    // First lookup: the address allowed for this partner; then 127.0.0.2, which is not.
    let dns = Arc::new(PartnerDns {
        answers: vec![
            "127.0.0.1".parse().expect("ip"),
            "127.0.0.2".parse().expect("ip"),
        ],
        lookups: AtomicUsize::new(0),
    });
    let sender = Sender::with_resolver(&config.dispatch, &config.partners, dns.clone())
        .expect("partner clients");

    let answer = post_enrollment(&sender, &config)
        .await
        .expect("first lookup is fine");
    assert_eq!(answer.status, 200);
    let error = post_enrollment(&sender, &config)
        .await
        .expect_err("the rebound address is refused");
    assert_eq!(error.kind.as_str(), "destination_refused", "{error}");
    assert!(
        error.message.contains("crm.partner.test")
            && error.message.contains("127.0.0.2")
            && error.message.contains("loopback"),
        "{error}"
    );
    assert_eq!(dns.lookups.load(Ordering::SeqCst), 2);
    assert_eq!(partner.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_with_a_literal_internal_ip_is_refused_before_connecting() {
    let (partner, dir) = https_partner(|_| Reply::status(200, "{}")).await;
    let sender_for =
        |config: &Config| Sender::new(&config.dispatch, &config.partners).expect("partner clients");

    let closed = partner_config(
        dir.path(),
        "acme",
        &partner.base_url,
        "ca_bundle = \"acme-ca.pem\"\n",
    );
    let error = post_enrollment(&sender_for(&closed), &closed)
        .await
        .expect_err("127.0.0.1 is loopback");
    assert_eq!(error.kind.as_str(), "destination_refused", "{error}");
    assert!(partner.received().is_empty());

    let opened = partner_config(
        dir.path(),
        "acme",
        &partner.base_url,
        "ca_bundle = \"acme-ca.pem\"\nallow_networks = [\"127.0.0.0/8\"]\n",
    );
    let answer = post_enrollment(&sender_for(&opened), &opened)
        .await
        .expect("allow_networks opens the guard for 127.0.0.0/8");
    assert_eq!(answer.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_destination_is_a_failed_attempt_retried_on_schedule() {
    let (partner, dir) = https_partner(Reply::accepted).await;
    let ca_bundle = dir.path().join("acme-ca.pem");
    let port = partner.base_url.rsplit(':').next().expect("port");
    // "localhost" goes through the system resolver; 127.0.0.1 is a literal IP. Neither
    // is a partner's address; "trusted" has allow_networks for this test.
    let mut config = TestConfig::new()
        .max_attempts(2)
        .retry_delays(Duration::from_millis(300), Duration::from_secs(1));
    for (name, base_url, keys) in [
        (
            "by-name",
            format!("https://localhost:{port}"),
            String::new(),
        ),
        ("by-ip", partner.base_url.clone(), String::new()),
        (
            "trusted",
            partner.base_url.clone(),
            "allow_networks = [\"127.0.0.0/8\"]\n".to_string(),
        ),
    ] {
        config
            .partners
            .push((name.into(), base_url, vec![PROGRAM.into()]));
        config = config.partner_keys(
            name,
            &format!("ca_bundle = \"{}\"\n{keys}", ca_bundle.display()),
        );
    }
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_state("dead", 2).await;
    db.wait_for_deliveries(&Deliveries::of("trusted").in_state("delivered"), 1)
        .await;

    for delivery in db.deliveries().await {
        if delivery["partner"] == json!("trusted") {
            continue;
        }
        assert_eq!(delivery["attempt_count"], json!(2), "{delivery}");
        let attempts = db.attempts(delivery["id"].as_str().expect("id")).await;
        for attempt in &attempts {
            assert_eq!(
                attempt["error_kind"],
                json!("destination_refused"),
                "{attempt}"
            );
            assert!(
                attempt["error"].as_str().unwrap_or("").contains("loopback"),
                "{attempt}"
            );
        }
        // The retry waited for its turn (base_delay), as any failed attempt does.
        let started: Vec<chrono::DateTime<Utc>> = attempts
            .iter()
            .map(|a| serde_json::from_value(a["started_at"].clone()).expect("started_at"))
            .collect();
        assert!(
            started[1] - started[0] >= chrono::Duration::milliseconds(300),
            "retried before its scheduled time"
        );
    }
    assert_eq!(
        partner.received().len(),
        1,
        "only the partner with allow_networks was reached"
    );
}
