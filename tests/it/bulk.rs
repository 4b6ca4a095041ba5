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

/// The value of the hidden field `name` in a page's HTML.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in {page}"))
        + marker.len();
    page[start..]
        .split('"')
        .next()
        .expect("a value")
        .to_string()
}

#[tokio::test]
async fn an_operator_resends_in_bulk_from_the_page_exactly_what_the_preview_counted() {
    let acme = partner_refusing_everything("acme").await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .admin_token("bulk-page-break-glass-token");
    let db = TestDb::migrated(&config).await;
    for patient in ["p-1", "p-2", "p-3"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::of("acme").in_state("rejected"), 3)
        .await;
    let page = AdminClient::of(&daemon, None).await;
    let oscar = db.signed_in("oscar", "operator").await;

    let preview_path =
        "/bulk?preview=1&partner=acme&state=rejected&since=2020-01-01T00%3A00&until=";
    let (status, preview) = page.page_as(&oscar, preview_path).await;
    assert_eq!(status, 200, "{preview}");
    assert!(
        preview.contains("3 deliveries would be resent"),
        "{preview}"
    );
    let fields = |digest: &str| {
        [
            ("partner", "acme".to_string()),
            ("state", "rejected".to_string()),
            ("since", "2020-01-01T00:00".to_string()),
            ("until", String::new()),
            ("digest", digest.to_string()),
        ]
    };
    let previewed = fields(&hidden(&preview, "digest"));
    let previewed: Vec<(&str, &str)> = previewed.iter().map(|(n, v)| (*n, v.as_str())).collect();

    // A fourth fails after the preview: the confirmation resends nothing, shows 4.
    db.insert_event(ENROLLMENT, &enrollment_event("p-4")).await;
    db.wait_for_deliveries(&Deliveries::of("acme").in_state("rejected"), 4)
        .await;
    let (status, changed) = page.post_form_as(&oscar, "/bulk/resend", &previewed).await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed.contains("changed since the preview"), "{changed}");
    assert!(
        changed.contains("4 deliveries would be resent"),
        "{changed}"
    );
    assert_eq!(resends(&db).await, 0, "nothing resent beyond the preview");

    let confirmed = fields(&hidden(&changed, "digest"));
    let confirmed: Vec<(&str, &str)> = confirmed.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (status, done) = page.post_form_as(&oscar, "/bulk/resend", &confirmed).await;
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("4 deliveries resent."), "{done}");
    assert_eq!(resends(&db).await, 4);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM dispatcher.audit_log WHERE action = 'bulk_resend'
             AND actor = 'oscar' AND outcome = 'ok' AND target LIKE '%partner=acme%touched 4%'"
        )
        .await,
        1
    );

    // Support and viewers get no form, and their confirmation is refused.
    for role in ["support", "viewer"] {
        let session = db.signed_in(&format!("{role}-person"), role).await;
        let (status, _) = page.page_as(&session, preview_path).await;
        assert_eq!(status, 403, "{role} sees no bulk form");
        let (_, overview) = page.page_as(&session, "/").await;
        assert!(
            !overview.contains("href=\"/bulk\""),
            "{role} gets no link to it"
        );
        let (status, _) = page
            .post_form_as(&session, "/bulk/resend", &confirmed)
            .await;
        assert_eq!(status, 403, "{role} cannot resend in bulk");
    }
    assert_eq!(resends(&db).await, 4);
}
