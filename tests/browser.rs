//! The support page in a real browser: headless Chromium, driven through chromedriver
//! (WebDriver) the way a support person would use it: sign in, find why a delivery
//! failed, resend it, check the record.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test installs them when
//! missing); `CHROMIUM` and `CHROMEDRIVER` name other binaries. Set
//! `SUPPORT_PAGE_SCREENSHOT=path.png` to keep the overview's screenshot.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const TOKEN: &str = "support-token-for-the-browser-tests";
const PARTNER_MESSAGE: &str = "Patient is already enrolled in program";
/// How long to wait for the browser, a page or an element before failing.
const PATIENCE: Duration = Duration::from_secs(60);

/// A chromedriver on a free 127.0.0.1 port, with the browsers it started; ended when
/// dropped (its process group, so no Chromium is left behind after a failed test).
struct ChromeDriver {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
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
    async fn browser(&self) -> Client {
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

async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
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

async fn current_path(browser: &Client) -> String {
    browser
        .current_url()
        .await
        .map(|url| url.path().to_string())
        .unwrap_or_else(|e| format!("<no url: {e}>"))
}

async fn text(element: &fantoccini::elements::Element) -> String {
    element.text().await.expect("read an element's text")
}

/// Fills in the login form and presses "Sign in", as a person would.
async fn sign_in(browser: &Client, name: &str, token: &str) {
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
    let mut event = enrollment_event("ha-browser-1");
    // Names no page text could contain by chance, so finding one means it leaked.
    event["patient"]["firstName"] = json!("Philomena");
    event["patient"]["lastName"] = json!("Quackenbush");
    event["patient"]["phoneNumber"] = json!("+447700900461");
    let patient = &event["patient"];
    let personal: Vec<&str> = ["firstName", "lastName", "phoneNumber"]
        .iter()
        .map(|field| {
            patient[field]
                .as_str()
                .unwrap_or_else(|| panic!("the example enrollment has a {field}"))
        })
        .collect();
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
    let source = browser.source().await.expect("read the page");
    for value in &personal {
        assert!(
            !source.contains(value),
            "the page shows the patient's {value:?}; it must show ids only"
        );
    }
    let signed_in = text(&wait_for(&browser, "header form.logout span").await).await;
    assert!(
        signed_in.contains("Dana Support"),
        "the header names who is signed in: {signed_in}"
    );

    let kept = std::env::var_os("SUPPORT_PAGE_SCREENSHOT").map(PathBuf::from);
    let scratch = tempfile::tempdir().expect("temp dir for the screenshot");
    let screenshot = kept
        .clone()
        .unwrap_or_else(|| scratch.path().join("support-page.png"));
    save_screenshot(&browser, &screenshot).await;
    let png = std::fs::read(&screenshot).expect("read the screenshot back");
    assert!(
        png.len() > 8 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is a PNG ({} bytes)",
        png.len()
    );
    if let Some(kept) = kept {
        eprintln!("support page screenshot: {}", kept.display());
    }

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
        vec![vec!["resend".to_string(), "page:Dana Support".to_string()]],
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
