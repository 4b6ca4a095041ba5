//! Bulk recovery: the API's bulk resend under an `Idempotency-Key` (one request's work,
//! however many times and however close together it is sent), and the support page's
//! bulk resend for operators (a preview of the count, a confirmation, the result).

use serde_json::json;

use crate::support::*;

/// A partner that refuses every event (400): its deliveries end `rejected`, and stay so
/// after every resend.
async fn partner_refusing_everything(name: &str) -> TestPartner {
    TestPartner::start(name, |_| {
        Reply::status(400, r#"{"success": false, "errorMessage": "no"}"#)
    })
    .await
}

/// How many times support resent a delivery, by any route.
async fn resends(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM dispatcher.support_actions WHERE action = 'resend'")
        .await
}

#[tokio::test]
async fn two_concurrent_bulk_resends_with_one_idempotency_key_resend_once_and_answer_alike() {
    let acme = partner_refusing_everything("acme").await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    for patient in ["p-1", "p-2", "p-3"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    // The first request holds its key a second, so the second surely comes meanwhile.
    let daemon = Daemon::start_with_env(
        &config,
        &db,
        &[("FAILPOINTS", "bulk-resend-keyed=1*sleep(1000)->off")],
    );
    db.wait_for_deliveries(&Deliveries::of("acme").in_state("rejected"), 3)
        .await;
    let admin = AdminClient::of(&daemon, None).await;

    let selection = json!({"partner": "acme", "state": "rejected"});
    let path = "/api/deliveries/retry";
    let (first, second) = tokio::join!(
        admin.post_keyed(path, &selection, "resend-acme-1"),
        admin.post_keyed(path, &selection, "resend-acme-1"),
    );
    assert_eq!(first.0, 200, "{}\n{}", first.1, daemon.log_text());
    assert_eq!(
        first,
        second,
        "the same key, the same answer\n{}",
        daemon.log_text()
    );
    assert_eq!(first.1["touched"], 3, "{}", first.1);
    assert_eq!(
        resends(&db).await,
        3,
        "each delivery resent once, not twice"
    );

    // Later, with the deliveries rejected again, the key still answers as first and
    // touches nothing; a new key is a new request.
    db.wait_for_deliveries(&Deliveries::of("acme").in_state("rejected"), 3)
        .await;
    let again = admin.post_keyed(path, &selection, "resend-acme-1").await;
    assert_eq!(again, first);
    assert_eq!(resends(&db).await, 3);
    let (status, error) = admin
        .post_keyed(path, &json!({"partner": "acme"}), "resend-acme-1")
        .await;
    assert_eq!(status, 422, "the same key for another request: {error}");
    assert!(error["error"]
        .as_str()
        .is_some_and(|text| text.contains("Idempotency-Key")));
    let (status, fresh) = admin.post_keyed(path, &selection, "resend-acme-2").await;
    assert_eq!((status, &fresh["touched"]), (200, &json!(3)), "{fresh}");

    let (status, error) = admin.post_keyed(path, &selection, "two words").await;
    assert_eq!(status, 400, "a key is visible ASCII: {error}");
}
