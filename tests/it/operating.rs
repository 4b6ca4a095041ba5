//! Ops' view of a running daemon: changing its configuration with SIGHUP, reading its logs.

use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn after_sighup_new_events_go_to_the_partner_url_ops_just_configured() {
    let old_crm = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&old_crm, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    old_crm.wait_for_requests(1).await;

    // acme moved its CRM, a second partner joined the program, and someone also touched a
    // setting that only a restart changes.
    let moved_crm = TestPartner::accepting("acme").await;
    let newcomer = TestPartner::accepting("beta").await;
    let changed = TestConfig::new()
        .partner(&moved_crm, &[PROGRAM])
        .partner(&newcomer, &[PROGRAM])
        .concurrency(8);
    assert_ne!(changed.dispatch, config.dispatch);
    daemon.reload_with(&changed.text(&db));
    let log = daemon.wait_for_log("configuration reloaded", 1).await;
    assert!(
        log.lines()
            .any(|line| line.contains("dispatch.concurrency") && line.contains("restart")),
        "the restart-only change is not reported:\n{log}"
    );

    db.insert_event(ENROLLMENT, &enrollment_event("p-2")).await;
    let at_moved = moved_crm.wait_for_requests(1).await;
    let at_newcomer = newcomer.wait_for_requests(1).await;
    db.wait_for_state("delivered", 3).await;
    assert_eq!(at_moved[0].patient_id(), "p-2");
    assert_eq!(at_newcomer[0].patient_id(), "p-2");
    assert_eq!(
        old_crm.received().len(),
        1,
        "nothing more went to the old URL"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_file_on_sighup_is_refused_naming_the_key_and_delivery_goes_on() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    // Before its handlers are installed, a SIGHUP would end the process.
    daemon.wait_for_log("dispatcher running", 1).await;
    let good = config.text(&db);
    let broken = good.replace(
        "allow_insecure = true\n",
        "allow_insecure = true\ncolour = \"red\"\n",
    );
    assert_ne!(broken, good);

    daemon.reload_with(&broken);
    let log = daemon.wait_for_log("configuration reload refused", 1).await;
    let refusal = log
        .lines()
        .find(|line| line.contains("configuration reload refused"))
        .unwrap_or_default();
    assert!(
        refusal.contains("ERROR") && refusal.contains("partners[0]") && refusal.contains("colour"),
        "the refusal does not name the key: {refusal}"
    );

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let received = partner.wait_for_requests(1).await;
    db.wait_for_state("delivered", 1).await;
    assert_eq!(received[0].header("x-api-key"), "key-acme");
    assert!(!daemon.log_text().contains("configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_whose_partner_client_cannot_be_built_is_refused_at_reload_naming_it() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    daemon.wait_for_log("dispatcher running", 1).await;

    // A client certificate with another certificate's key: each file reads well, and
    // only building the TLS client finds that they do not belong together.
    let ca = tls::TestCa::new("HelpAround test CA");
    let (ours, other) = (
        ca.client_certificate("dispatcher.helparound"),
        ca.client_certificate("someone.else"),
    );
    let dir = config.dir.path();
    write_file(dir, "client.pem", &ours.cert_pem);
    write_file(dir, "other.key", &other.key_pem);
    let mismatched = config.clone().partner_keys(
        "acme",
        "client_cert = \"client.pem\"\nclient_key = \"other.key\"",
    );
    daemon.reload_with(&mismatched.text(&db));
    let log = daemon.wait_for_log("configuration reload refused", 1).await;
    let refusal = log
        .lines()
        .find(|line| line.contains("configuration reload refused"))
        .unwrap_or_default();
    assert!(
        refusal.contains("ERROR") && refusal.contains("partner `acme`"),
        "the refusal does not name the partner: {refusal}"
    );

    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    partner.wait_for_requests(1).await;
    db.wait_for_state("delivered", 1).await;
    assert!(!daemon.log_text().contains("configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_a_line_and_attempt_lines_carry_ids_never_the_event() {
    // The first try fails, so the log has a retry line and a delivered line.
    let partner = TestPartner::start("acme", |request| {
        if request.try_number == 1 {
            Reply::status(503, "{}")
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let text = format!("{}\n[log]\nformat = \"json\"\n", config.text(&db));
    let mut daemon = Daemon::start_with_text(&text, config.dir.path());
    // The contract's example patient: John Doe, +12027953213.
    db.insert_event(ENROLLMENT, &enrollment_event("ha61236024160af"))
        .await;
    partner.wait_for_requests(2).await;
    db.wait_for_state("delivered", 1).await;
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait_exit().await.success());

    let log = daemon.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let delivery = &db.deliveries().await[0];
    let attempt_line = |outcome: &str| {
        lines
            .iter()
            .find(|line| line["span"]["name"] == "attempt" && line["span"]["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no attempt line with outcome {outcome}:\n{log}"))
    };
    let retried = attempt_line("pending");
    assert_eq!(retried["span"]["http_status"], 503);
    assert_eq!(retried["span"]["attempt"], 1);
    let delivered = attempt_line("delivered");
    assert_eq!(delivered["level"], "INFO");
    assert_eq!(delivered["span"]["delivery_id"], delivery["id"]);
    assert_eq!(delivered["span"]["event_id"], delivery["event_id"]);
    assert_eq!(delivered["span"]["partner"], "acme");
    assert_eq!(delivered["span"]["attempt"], 2);
    assert!(delivered["span"]["duration_ms"].is_u64(), "{delivered}");
    for value in ["ha61236024160af", "John", "Doe", "+12027953213", "key-acme"] {
        assert!(!log.contains(value), "the log carries `{value}`:\n{log}");
    }
}
