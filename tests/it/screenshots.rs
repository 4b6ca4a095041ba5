//! The pages the README shows, taken as support would reach them, in headless Chromium:
//! a patient found from the search box (results above the partners and their charts),
//! what the partner received for a delivery it refused, shown for a reason, and that read
//! in the audit trail. Set `SUPPORT_PAGE_SCREENSHOTS=docs` to keep them
//! (`support-page-overview.png`, `support-page-delivery.png`, `support-page-audit.png`).

use crate::browser::*;
use crate::support::*;

/// The partner's answer to the patient it does not know, the issue's own example.
const UNKNOWN_MEMBER: &str = "member_id unknown to CRM";

#[tokio::test(flavor = "multi_thread")]
async fn support_compares_what_the_partner_received_with_its_refusal_and_the_trail_says_who_looked()
{
    let acme = TestPartner::refusing("acme", &["ha61236024160af"], UNKNOWN_MEMBER).await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let (event, personal) = with_personal_data(enrollment_event("ha61236024160af"));
    db.insert_event(ENROLLMENT, &event).await;
    for other in ["ha61236024160b0", "ha7730251"] {
        db.insert_event(ENROLLMENT, &enrollment_event(other)).await;
    }
    db.wait_for_deliveries(&Deliveries::of("acme").ended(), 3)
        .await;
    let admin = daemon.admin_url().await;

    let chromedriver = ChromeDriver::start();
    let browser = chromedriver.browser().await;
    browser.goto(&admin).await.expect("open the support page");
    sign_in(&browser, "Dana Support", TOKEN).await;
    wait_for(&browser, "table#deliveries").await;

    // The caller reads the start of the patient's id off a letter.
    search(&browser, "ha6123").await;
    wait_for_url_containing(&browser, "/search?q=ha6123").await;
    let row = wait_for(&browser, "section#results tr[data-delivery]").await;
    assert!(text(&row).await.contains(UNKNOWN_MEMBER));
    assert_no_personal_data(&browser, &personal).await;
    screenshot(&browser, Some("support-page-overview.png")).await;

    // What did the partner get? The body only for a reason, which the trail keeps.
    let id = row
        .attr("data-delivery")
        .await
        .expect("read the row")
        .expect("the row names its delivery");
    browser
        .goto(&format!("{admin}/deliveries/{id}"))
        .await
        .expect("open the delivery");
    wait_for(&browser, "section#received table#received-headers").await;
    assert_no_personal_data(&browser, &personal).await;
    let reason = "caller says the CRM never heard from us; comparing member_id";
    wait_for(&browser, "form#show-body input#reason")
        .await
        .send_keys(reason)
        .await
        .expect("type the reason");
    wait_for(&browser, "form#show-body button[type='submit']")
        .await
        .click()
        .await
        .expect("press Show patient data");
    let body = text(&wait_for(&browser, "#received-body").await).await;
    let sent: serde_json::Value = serde_json::from_str(&body).expect("the body is JSON");
    let refused = acme
        .received()
        .into_iter()
        .find(|request| request.patient_id() == "ha61236024160af")
        .expect("the partner got the enrollment it refused");
    let received: serde_json::Value =
        serde_json::from_slice(&refused.body).expect("the partner got JSON");
    assert_eq!(
        sent, received,
        "the body shown is the body the partner received"
    );
    screenshot(&browser, Some("support-page-delivery.png")).await;

    browser
        .goto(&format!("{admin}/audit"))
        .await
        .expect("open the audit trail");
    wait_for(&browser, "table#audit tbody tr").await;
    let mut entries = Vec::new();
    for row in browser
        .find_all(fantoccini::Locator::Css("table#audit tbody tr"))
        .await
        .expect("read the trail")
    {
        entries.push(text(&row).await);
    }
    assert!(
        entries.iter().any(|entry| entry.contains("body_read")
            && entry.contains(&id)
            && entry.contains(reason)),
        "the read is in the trail, with its reason: {entries:#?}"
    );
    screenshot(&browser, Some("support-page-audit.png")).await;
    browser.close().await.expect("end the browser session");
}
