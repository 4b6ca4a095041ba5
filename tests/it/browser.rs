//! The support page in a real browser: headless Chromium, driven through chromedriver
//! (WebDriver) the way a support person would use it: sign in, find why a delivery
//! failed, resend it, check the record.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test installs them when
//! missing); `CHROMIUM` and `CHROMEDRIVER` name other binaries. The screenshots the
//! README shows are taken in `screenshots.rs`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub(crate) const TOKEN: &str = "support-token-for-the-browser-tests";
const PARTNER_MESSAGE: &str = ALREADY_ENROLLED;
/// How long to wait for the browser, a page or an element before failing.
const PATIENCE: Duration = Duration::from_secs(60);

/// A chromedriver on a free 127.0.0.1 port, with the browsers it started; ended when
/// dropped (its process group, so no Chromium is left behind after a failed test).
pub(crate) struct ChromeDriver {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ChromeDriver {
    pub(crate) fn start() -> ChromeDriver {
        let chromedriver = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
        let dir = tempfile::tempdir().expect("temp dir for chromedriver");
        // A port that was free a moment ago can be taken before chromedriver binds it:
        // then chromedriver exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path().join(format!("chromedriver-{port}.log"));
            let mut child = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so that Drop can end the browsers too.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(status) = child.try_wait().expect("wait for chromedriver") {
                    eprintln!(
                        "chromedriver on port {port} exited ({status}); log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return ChromeDriver { child, port, dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("chromedriver did not listen on 127.0.0.1:{port} within {PATIENCE:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("chromedriver could not start on a free port in 5 tries");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A headless Chromium session with a fresh profile, kept off the (closed) network.
    pub(crate) async fn browser(&self) -> Client {
        let chromium = binary("CHROMIUM", "/usr/bin/chromium");
        let profile = self
            .dir
            .path()
            .join(format!("profile-{}", uuid::Uuid::new_v4()));
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("capabilities are an object")
        };
        // chromedriver speaks plain HTTP on loopback: no TLS connector needed.
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder
            .capabilities(capabilities)
            .connect(&self.url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "start a Chromium session through chromedriver: {e}\nchromedriver log:\n{}",
                    self.log()
                )
            })
    }

    fn log(&self) -> String {
        let log = self
            .dir
            .path()
            .join(format!("chromedriver-{}.log", self.port));
        std::fs::read_to_string(log).unwrap_or_default()
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // Asked to shut down, chromedriver quits the browsers it started; whatever is
        // left of its process group after that is killed.
        if let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = stream.write_all(
                format!(
                    "GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                    self.port
                )
                .as_bytes(),
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn binary(variable: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var_os(variable).unwrap_or_else(|| default.into()));
    assert!(
        path.is_file(),
        "{} not found: install Debian's chromium and chromium-driver (scripts/test does), \
         or set {variable} to its path",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|listener| listener.local_addr())
        .expect("find a free port on 127.0.0.1")
        .port()
}

pub(crate) async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
    match browser
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(e) => panic!(
            "`{css}` did not appear on {}: {e}\npage:\n{}",
            current_path(browser).await,
            browser.source().await.unwrap_or_default()
        ),
    }
}

pub(crate) async fn current_path(browser: &Client) -> String {
    browser
        .current_url()
        .await
        .map(|url| url.path().to_string())
        .unwrap_or_else(|e| format!("<no url: {e}>"))
}

pub(crate) async fn text(element: &fantoccini::elements::Element) -> String {
    element.text().await.expect("read an element's text")
}

/// Fills in the login form and presses "Sign in", as a person would.
pub(crate) async fn sign_in(browser: &Client, name: &str, token: &str) {
    wait_for(browser, "form[action='/login'] input[name='name']")
        .await
        .send_keys(name)
        .await
        .expect("type the name");
    wait_for(browser, "form[action='/login'] input[name='token']")
        .await
        .send_keys(token)
        .await
        .expect("type the token");
    wait_for(browser, "form[action='/login'] button[type='submit']")
        .await
        .click()
        .await
        .expect("press Sign in");
}

/// A PNG of the whole page: the window is made as tall as the page first.
async fn save_screenshot(browser: &Client, path: &Path) {
    let size = browser
        .execute(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];",
            vec![],
        )
        .await
        .expect("measure the page");
    let height = size[0].as_u64().expect("page height") + size[1].as_u64().unwrap_or(0);
    browser
        .set_window_size(
            1400,
            u32::try_from(height.max(900)).expect("page height fits"),
        )
        .await
        .expect("resize the window to the page");
    let png = browser.screenshot().await.expect("take a screenshot");
    browser
        .set_window_size(1400, 900)
        .await
        .expect("restore the window size");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the screenshot's directory");
    }
    std::fs::write(path, png)
        .unwrap_or_else(|e| panic!("write the screenshot to {}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn support_finds_why_a_delivery_failed_and_resends_it_from_the_page() {
    let partner = TestPartner::start("acme", |request| match request.try_number {
        1 => Reply::status(
            400,
            json!({"success": false, "errorMessage": PARTNER_MESSAGE}).to_string(),
        ),
        _ => Reply::accepted(request),
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let (event, personal) = with_personal_data(enrollment_event("ha-browser-1"));
    db.insert_event(ENROLLMENT, &event).await;
    db.wait_for_state("rejected", 1).await;
    let delivery_id = db.deliveries().await[0]["id"]
        .as_str()
        .expect("delivery id")
        .to_string();
    let admin = daemon.admin_url().await;

    let chromedriver = ChromeDriver::start();
    let browser = chromedriver.browser().await;
    browser.goto(&admin).await.expect("open the support page");
    wait_for(&browser, "input[name='token']").await;
    assert_eq!(
        current_path(&browser).await,
        "/login",
        "without a session the page asks to sign in"
    );

    sign_in(&browser, "Dana Support", TOKEN).await;
    let row = wait_for(
        &browser,
        &format!("table#deliveries tr[data-delivery='{delivery_id}']"),
    )
    .await;
    assert_eq!(current_path(&browser).await, "/");
    let row_text = text(&row).await;
    assert!(
        row_text.contains("ha-browser-1"),
        "the row shows the patient id: {row_text}"
    );
    assert!(
        row_text.contains(PARTNER_MESSAGE),
        "the row shows the partner's errorMessage: {row_text}"
    );
    assert_no_personal_data(&browser, &personal).await;
    let signed_in = text(&wait_for(&browser, "header form.logout span").await).await;
    assert!(
        signed_in.contains("Dana Support"),
        "the header names who is signed in: {signed_in}"
    );

    screenshot(&browser, None).await;

    row.find(Locator::Css("button.primary"))
        .await
        .expect("the row has a Resend button")
        .click()
        .await
        .expect("press Resend");
    let notice = text(&wait_for(&browser, "p.notice").await).await;
    assert!(
        notice.contains("Resent"),
        "the page confirms the resend: {notice}"
    );
    db.wait_for_delivery_state(&delivery_id, "delivered").await;

    browser
        .goto(&format!("{admin}/deliveries/{delivery_id}"))
        .await
        .expect("open the delivery page");
    wait_for(&browser, "table#attempts").await;
    let attempts = browser
        .find_all(Locator::Css("table#attempts tbody tr"))
        .await
        .expect("read the attempts");
    assert_eq!(attempts.len(), 2, "the rejected try and the resent one");
    let actions = browser
        .find_all(Locator::Css("table#support-actions tbody tr"))
        .await
        .expect("read the support actions");
    let mut recorded = Vec::new();
    for action in &actions {
        let cells = action
            .find_all(Locator::Css("td"))
            .await
            .expect("read a support action's cells");
        let mut texts = Vec::new();
        for cell in &cells {
            texts.push(text(cell).await);
        }
        recorded.push(texts[1..].to_vec());
    }
    assert_eq!(
        recorded,
        vec![vec![
            "resend".to_string(),
            "page:Dana Support (break-glass)".to_string()
        ]],
        "the resend is recorded with who did it"
    );

    browser.close().await.expect("end the browser session");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_leaves_you_on_the_login_page_without_a_session() {
    let config = TestConfig::new().admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let admin = daemon.admin_url().await;

    let chromedriver = ChromeDriver::start();
    let browser = chromedriver.browser().await;
    browser
        .goto(&format!("{admin}/login"))
        .await
        .expect("open the login page");
    sign_in(&browser, "Dana Support", "not-the-token-not-the-token").await;
    let notice = text(&wait_for(&browser, "p.notice.bad").await).await;
    assert!(
        notice.contains("token is not right"),
        "the page says why: {notice}"
    );
    assert_eq!(current_path(&browser).await, "/login");
    let cookies = browser.get_all_cookies().await.expect("read cookies");
    assert!(
        cookies
            .iter()
            .all(|cookie| cookie.name() != "dispatcher_session"),
        "no session cookie was set: {cookies:?}"
    );

    browser.goto(&admin).await.expect("open the overview");
    wait_for(&browser, "input[name='token']").await;
    assert_eq!(
        current_path(&browser).await,
        "/login",
        "the overview still asks to sign in"
    );

    browser.close().await.expect("end the browser session");
}

/// A screenshot of the whole page, checked to be a PNG. `keep` names it in the directory
/// `SUPPORT_PAGE_SCREENSHOTS` when that is set; otherwise it goes to a scratch directory.
pub(crate) async fn screenshot(browser: &Client, keep: Option<&str>) {
    let kept = keep.and_then(|name| {
        std::env::var_os("SUPPORT_PAGE_SCREENSHOTS").map(|dir| PathBuf::from(dir).join(name))
    });
    let scratch = tempfile::tempdir().expect("temp dir for the screenshot");
    let path = kept
        .clone()
        .unwrap_or_else(|| scratch.path().join("support-page.png"));
    save_screenshot(browser, &path).await;
    let png = std::fs::read(&path).expect("read the screenshot back");
    assert!(
        png.len() > 8 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is a PNG ({} bytes)",
        png.len()
    );
    if let Some(kept) = kept {
        eprintln!("support page screenshot: {}", kept.display());
    }
}

/// Names no page text could contain by chance, so finding one means it leaked.
pub(crate) fn with_personal_data(mut event: Value) -> (Value, Vec<String>) {
    event["patient"]["firstName"] = json!("Philomena");
    event["patient"]["lastName"] = json!("Quackenbush");
    event["patient"]["phoneNumber"] = json!("+447700900461");
    let personal = ["firstName", "lastName", "phoneNumber"]
        .iter()
        .map(|field| {
            event["patient"][field]
                .as_str()
                .unwrap_or_else(|| panic!("the example enrollment has a {field}"))
                .to_string()
        })
        .collect();
    (event, personal)
}

pub(crate) async fn assert_no_personal_data(browser: &Client, personal: &[String]) {
    let source = browser.source().await.expect("read the page");
    let path = current_path(browser).await;
    for value in personal {
        assert!(
            !source.contains(value.as_str()),
            "{path} shows the patient's {value:?}; it must show ids only"
        );
    }
}

/// The page's address once it contains `text` (after a click that navigates).
pub(crate) async fn wait_for_url_containing(browser: &Client, text: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let url = browser
            .current_url()
            .await
            .expect("read the url")
            .to_string();
        if url.contains(text) {
            return url;
        }
        assert!(
            Instant::now() < deadline,
            "the page stayed at {url}, not {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The deliveries listed on the page, top to bottom.
async fn listed(browser: &Client) -> Vec<String> {
    rows_of(browser, "table#deliveries tbody tr[data-delivery]").await
}

/// The deliveries a search found, top to bottom.
async fn found(browser: &Client) -> Vec<String> {
    rows_of(browser, "section#results tr[data-delivery]").await
}

async fn rows_of(browser: &Client, css: &str) -> Vec<String> {
    let rows = browser
        .find_all(Locator::Css(css))
        .await
        .expect("read the listed deliveries");
    let mut ids = Vec::new();
    for row in rows {
        ids.push(
            row.attr("data-delivery")
                .await
                .expect("read a row")
                .expect("a row names its delivery"),
        );
    }
    ids
}

/// Types into the header's search box and presses Search.
pub(crate) async fn search(browser: &Client, text: &str) {
    let input = wait_for(browser, "header form.search input[name='q']").await;
    input.clear().await.expect("clear the search box");
    input.send_keys(text).await.expect("type the search");
    wait_for(browser, "header form.search button[type='submit']")
        .await
        .click()
        .await
        .expect("press Search");
}

#[tokio::test(flavor = "multi_thread")]
async fn support_finds_a_patients_deliveries_and_a_delivery_by_id_from_the_search_box() {
    let acme = TestPartner::accepting("acme").await;
    let beta = TestPartner::accepting("beta").await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&beta, &[PROGRAM])
        .admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let (event, personal) = with_personal_data(enrollment_event("ha-search-2"));
    db.insert_event(ENROLLMENT, &enrollment_event("ha-search-1"))
        .await;
    let event_id = db.insert_event(ENROLLMENT, &event).await;
    db.insert_event(ENROLLMENT, &enrollment_event("ha-search-3"))
        .await;
    db.wait_for_deliveries(&Deliveries::all().ended(), 6).await;
    let mut of_patient: Vec<String> = db
        .deliveries()
        .await
        .iter()
        .filter(|delivery| delivery["patient_id"] == "ha-search-2")
        .map(|delivery| delivery["id"].as_str().expect("id").to_string())
        .collect();
    of_patient.sort();
    let admin = daemon.admin_url().await;

    let chromedriver = ChromeDriver::start();
    let browser = chromedriver.browser().await;
    browser.goto(&admin).await.expect("open the support page");
    sign_in(&browser, "Dana Support", TOKEN).await;
    wait_for(&browser, "table#deliveries").await;

    search(&browser, "ha-search-2").await;
    wait_for_url_containing(&browser, "/search?q=ha-search-2").await;
    wait_for(&browser, "section#results").await;
    let mut shown = found(&browser).await;
    shown.sort();
    assert_eq!(
        shown, of_patient,
        "the patient's deliveries, one per partner, in every state"
    );
    let kept = wait_for(&browser, "header form.search input[name='q']")
        .await
        .prop("value")
        .await
        .expect("read the search box");
    assert_eq!(
        kept.as_deref(),
        Some("ha-search-2"),
        "the box keeps the search"
    );
    let top = |css: &'static str| {
        let browser = &browser;
        async move {
            wait_for(browser, css)
                .await
                .rectangle()
                .await
                .expect("where it is on the page")
                .1
        }
    };
    assert!(
        top("section#results").await < top("table#partners").await,
        "the results come before the partners and their charts"
    );
    assert_no_personal_data(&browser, &personal).await;

    search(&browser, &event_id.to_string()).await;
    wait_for_url_containing(&browser, &format!("/search?q={event_id}")).await;
    wait_for(&browser, "section#results [data-reading='event']").await;
    let mut shown = found(&browser).await;
    shown.sort();
    assert_eq!(shown, of_patient, "the event's deliveries");

    let delivery = &of_patient[0];
    search(&browser, delivery).await;
    wait_for(&browser, "ol#timeline").await;
    assert_eq!(
        current_path(&browser).await,
        format!("/deliveries/{delivery}")
    );
    assert_no_personal_data(&browser, &personal).await;

    browser.close().await.expect("end the browser session");
}

#[tokio::test(flavor = "multi_thread")]
async fn support_pages_through_a_long_list_and_back_keeping_the_filters() {
    let partner = TestPartner::start("acme", |_| {
        Reply::status(
            400,
            json!({"success": false, "errorMessage": PARTNER_MESSAGE}).to_string(),
        )
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    for i in 0..55 {
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("ha-page-{i}")))
            .await;
    }
    db.wait_for_state("rejected", 55).await;
    let admin = daemon.admin_url().await;

    let chromedriver = ChromeDriver::start();
    let browser = chromedriver.browser().await;
    browser.goto(&admin).await.expect("open the support page");
    sign_in(&browser, "Dana Support", TOKEN).await;
    wait_for(&browser, "table#deliveries").await;
    browser
        .goto(&format!("{admin}/?state=rejected&partner=acme"))
        .await
        .expect("open the rejected deliveries of acme");
    wait_for(&browser, "a[rel='next']").await;
    let first = listed(&browser).await;
    assert_eq!(first.len(), 50, "a page holds 50");
    assert!(
        browser.find(Locator::Css("a[rel='prev']")).await.is_err(),
        "nothing is newer than the first page"
    );

    wait_for(&browser, "a[rel='next']")
        .await
        .click()
        .await
        .expect("press Older");
    let url = wait_for_url_containing(&browser, "after=").await;
    assert!(
        url.contains("state=rejected") && url.contains("partner=acme"),
        "{url}"
    );
    wait_for(&browser, "a[rel='prev']").await;
    let second = listed(&browser).await;
    assert_eq!(second.len(), 5, "the rest");
    assert!(
        second.iter().all(|id| !first.contains(id)),
        "no delivery twice"
    );
    assert!(
        browser.find(Locator::Css("a[rel='next']")).await.is_err(),
        "nothing is older than the last page"
    );

    wait_for(&browser, "a[rel='prev']")
        .await
        .click()
        .await
        .expect("press Newer");
    let url = wait_for_url_containing(&browser, "before=").await;
    assert!(
        url.contains("state=rejected") && url.contains("partner=acme"),
        "{url}"
    );
    wait_for(&browser, "a[rel='next']").await;
    assert_eq!(listed(&browser).await, first, "back to the first page");

    browser.close().await.expect("end the browser session");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_charts_each_partners_day_and_a_delivery_shows_its_next_attempt() {
    let acme = TestPartner::refusing("acme", &["ha-chart-refused"], PARTNER_MESSAGE).await;
    let wobbly = TestPartner::start("wobbly", |_| Reply::status(503, "")).await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&wobbly, &[PROGRAM])
        .circuit_breaker_failures("wobbly", 100)
        .retry_delays(Duration::from_secs(600), Duration::from_secs(600))
        .admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    let (event, personal) = with_personal_data(enrollment_event("ha-chart-1"));
    db.insert_event(ENROLLMENT, &event).await;
    db.insert_event(ENROLLMENT, &enrollment_event("ha-chart-2"))
        .await;
    db.insert_event(ENROLLMENT, &enrollment_event("ha-chart-refused"))
        .await;
    db.wait_for_deliveries(&Deliveries::of("acme").ended(), 3)
        .await;
    db.wait_for_deliveries(
        &Deliveries::of("wobbly")
            .in_state("pending")
            .with_attempts(1),
        3,
    )
    .await;
    let admin = daemon.admin_url().await;

    let chromedriver = ChromeDriver::start();
    let browser = chromedriver.browser().await;
    browser.goto(&admin).await.expect("open the support page");
    sign_in(&browser, "Dana Support", TOKEN).await;
    wait_for(&browser, "section#charts").await;
    for (partner, series, expected) in [
        ("acme", "delivered", "2"),
        ("acme", "rejected", "1"),
        ("acme", "retried", "0"),
        ("wobbly", "retried", "3"),
        ("wobbly", "delivered", "0"),
    ] {
        let cell = wait_for(
            &browser,
            &format!("figure.chart[data-partner='{partner}'] td[data-series='{series}']"),
        )
        .await;
        assert_eq!(text(&cell).await, expected, "{partner}: {series}");
    }
    let bars = browser
        .find_all(Locator::Css(
            "figure.chart[data-partner='acme'] svg g.series[data-series='delivered'] rect",
        ))
        .await
        .expect("read the bars");
    assert_eq!(bars.len(), 1, "this hour's bar");
    assert_no_personal_data(&browser, &personal).await;
    screenshot(&browser, None).await;

    let pending = db
        .deliveries()
        .await
        .into_iter()
        .find(|delivery| delivery["partner"] == "wobbly" && delivery["patient_id"] == "ha-chart-1")
        .expect("wobbly's delivery of the first event");
    let id = pending["id"].as_str().expect("id");
    browser
        .goto(&format!("{admin}/deliveries/{id}"))
        .await
        .expect("open the delivery page");
    let first = text(&wait_for(&browser, "ol#timeline li[data-attempt='1']").await).await;
    assert!(
        first.contains("HTTP 503") && first.contains("to be tried again"),
        "{first}"
    );
    let next = text(&wait_for(&browser, "ol#timeline li#next-attempt").await).await;
    assert!(next.contains("next attempt (2) in "), "{next}");
    let minutes: u64 = next
        .rsplit(" in ")
        .next()
        .and_then(|wait| wait.strip_suffix('m'))
        .and_then(|minutes| minutes.parse().ok())
        .unwrap_or_else(|| panic!("a wait in minutes: {next}"));
    assert!(
        (9..=12).contains(&minutes),
        "ten minutes, plus jitter: {next}"
    );
    assert_no_personal_data(&browser, &personal).await;
    screenshot(&browser, None).await;

    browser.close().await.expect("end the browser session");
}

/// Support on the phone reads the list: the partner's own words for a failure, when the
/// next try goes or that the partner's open circuit holds it, which support program an
/// unrouted event names (the one ops must add), how long ago each was made (the exact
/// time on hover), and a new delivery showing up without a click.
#[tokio::test(flavor = "multi_thread")]
async fn the_list_says_when_each_delivery_goes_next_and_refreshes_on_its_own() {
    let acme = TestPartner::start("acme", |_| {
        Reply::status(
            500,
            json!({"errorMessage": "CRM database unavailable"}).to_string(),
        )
    })
    .await;
    let down = TestPartner::start("down", |_| Reply::status(503, "")).await;
    let config = TestConfig::new()
        .partner(&acme, &[PROGRAM])
        .partner(&down, &[OTHER_PROGRAM])
        .circuit_breaker_failures("acme", 100)
        .circuit_breaker_failures("down", 1)
        .circuit_breaker_cool_down("down", Duration::from_secs(3600))
        .retry_delays(Duration::from_secs(600), Duration::from_secs(600))
        .admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("ha-list-acme"))
        .await;
    let mut held = enrollment_event("ha-list-down");
    held["supportProgramId"] = json!(OTHER_PROGRAM);
    db.insert_event(ENROLLMENT, &held).await;
    let mut unknown = enrollment_event("ha-list-unknown");
    unknown["supportProgramId"] = json!("prog-not-configured");
    db.insert_event(ENROLLMENT, &unknown).await;
    for partner in ["acme", "down"] {
        db.wait_for_deliveries(
            &Deliveries::of(partner).in_state("pending").with_attempts(1),
            1,
        )
        .await;
    }
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.partner_circuits WHERE partner = 'down' AND state = 'open'",
        1,
    )
    .await;
    db.wait_for_state("unrouted", 1).await;
    let admin = daemon.admin_url().await;

    let chromedriver = ChromeDriver::start();
    let browser = chromedriver.browser().await;
    browser.goto(&admin).await.expect("open the support page");
    sign_in(&browser, "Dana Support", TOKEN).await;
    wait_for(&browser, "section#charts").await;
    browser
        .goto(&format!("{admin}/?state=all"))
        .await
        .expect("list every delivery");
    let row = |patient: &str| {
        format!("table#deliveries tr[data-delivery]:has(td[data-patient='{patient}'])")
    };
    let failing = text(&wait_for(&browser, &row("ha-list-acme")).await).await;
    assert!(
        failing.contains("HTTP 500: CRM database unavailable"),
        "the partner's errorMessage: {failing}"
    );
    let minutes: u64 = failing
        .split("next in ")
        .nth(1)
        .and_then(|rest| rest.split_once('m'))
        .and_then(|(minutes, _)| minutes.parse().ok())
        .unwrap_or_else(|| panic!("the next try's time: {failing}"));
    assert!(
        (9..=12).contains(&minutes),
        "ten minutes, plus jitter: {failing}"
    );
    let held = text(&wait_for(&browser, &row("ha-list-down")).await).await;
    assert!(held.contains("held: circuit open"), "{held}");
    let unrouted = text(&wait_for(&browser, &row("ha-list-unknown")).await).await;
    assert!(
        unrouted.contains("no partner is configured for support program prog-not-configured"),
        "{unrouted}"
    );
    let created = wait_for(&browser, &format!("{} td.when time", row("ha-list-acme"))).await;
    let exact = created
        .attr("title")
        .await
        .expect("read the title")
        .expect("the exact time on hover");
    assert!(exact.ends_with(" UTC"), "{exact}");
    let ago = text(&created).await;
    assert!(ago.ends_with(" ago") || ago == "just now", "{ago}");

    // A new event while the list is open: it appears without a click.
    db.insert_event(ENROLLMENT, &enrollment_event("ha-list-later"))
        .await;
    wait_for(&browser, &row("ha-list-later")).await;
    browser.close().await.expect("end the browser session");
}
