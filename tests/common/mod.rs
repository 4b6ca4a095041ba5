//! The test bench: a fresh PostgreSQL database per test, partners played by real HTTP
//! servers on 127.0.0.1, and the real `dispatcher` binary run as a child process.
#![allow(dead_code)]

pub mod cluster;
pub mod queries;
pub mod raw;
pub mod tls;

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

// Not every test binary asks about deliveries by selection.
#[allow(unused_imports)]
pub use queries::Deliveries;

pub const PROGRAM: &str = "78ef982b-00ea-39c2-a875-f549c40e92ad";
/// A second support program, for a partner that serves only it.
pub const OTHER_PROGRAM: &str = "0b6c1a35-7f55-4c63-9a64-3c1d2f1e9b10";
/// A support program no partner serves until a test adds one: its events go unrouted.
pub const UNSERVED_PROGRAM: &str = "0c5b6a4e-6f0e-4d8a-9d7e-3f2a1b0c9d8e";
pub const ENROLLMENT: &str = "HelpAround.Patient.CompleteEnrollment";
pub const VIEWED_TRACKER: &str = "HelpAround.Patient.UserAction.ViewedTracker";
/// The Standard Webhooks example secret; every test partner signs with it.
pub const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const MIB: u64 = 1024 * 1024;

/// A database of its own for one test, migrated by the real binary.
pub struct TestDb {
    pub url: String,
    pub client: tokio_postgres::Client,
}

impl TestDb {
    pub async fn unmigrated() -> TestDb {
        let admin_url = std::env::var("DISPATCHER_TEST_DATABASE_URL").expect(
            "DISPATCHER_TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL",
        );
        TestDb::unmigrated_on(&admin_url).await
    }

    /// A new database on the server `admin_url` points to (e.g. a test's own
    /// [`cluster::Cluster`]).
    pub async fn unmigrated_on(admin_url: &str) -> TestDb {
        let (admin, connection) = tokio_postgres::connect(admin_url, NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(connection);
        let name = format!("dispatcher_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("DISPATCHER_TEST_DATABASE_URL must end in /<database>"),
        };
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        TestDb { url, client }
    }

    pub async fn migrated(config: &TestConfig) -> TestDb {
        TestDb::migrate(config, TestDb::unmigrated().await)
    }

    pub async fn migrated_on(config: &TestConfig, admin_url: &str) -> TestDb {
        TestDb::migrate(config, TestDb::unmigrated_on(admin_url).await)
    }

    fn migrate(config: &TestConfig, db: TestDb) -> TestDb {
        let output = dispatcher(&config.write(&db))
            .arg("migrate")
            .output()
            .expect("run dispatcher migrate");
        assert!(
            output.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        db
    }

    /// A new connection, after the server was restarted (the old one died with it).
    pub async fn reconnect(&mut self) {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("reconnect to the test database");
        tokio::spawn(connection);
        self.client = client;
    }

    /// What the enrollment flow does: one plain INSERT.
    pub async fn insert_event(&self, event_name: &str, event: &Value) -> i64 {
        self.client
            .query_one(
                "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2) RETURNING id",
                &[&event_name, event],
            )
            .await
            .expect("insert outbox event")
            .get(0)
    }

    /// Inserts an event given as JSON text, as the enrollment flow would with a string it
    /// built itself; PostgreSQL may refuse it (jsonb holds no `\u0000` and no lone
    /// surrogate), which the enrollment flow would see as an error.
    pub async fn insert_event_text(
        &self,
        event_name: &str,
        json: &str,
    ) -> Result<i64, tokio_postgres::Error> {
        self.client
            .query_one(
                "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2::text::jsonb) RETURNING id",
                &[&event_name, &json],
            )
            .await
            .map(|row| row.get(0))
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Polls until `sql` (a count) reaches `expected`; fails after a generous deadline.
    pub async fn wait_for_count(&self, sql: &str, expected: i64) {
        self.wait_for_count_within(sql, expected, Duration::from_secs(60))
            .await
    }

    /// [`TestDb::wait_for_count`] with another deadline, for work that takes long however
    /// well it goes (a backlog of a million events).
    pub async fn wait_for_count_within(&self, sql: &str, expected: i64, deadline: Duration) {
        let started = std::time::Instant::now();
        let mut last = -1;
        while started.elapsed() < deadline {
            last = self.count(sql).await;
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("waited {deadline:?} for `{sql}` to be {expected}; it is {last}");
    }

    pub async fn deliveries(&self) -> Vec<Value> {
        let rows = self
            .client
            .query(
                "SELECT to_jsonb(d) FROM dispatcher.deliveries d ORDER BY event_id, partner",
                &[],
            )
            .await
            .expect("read deliveries");
        rows.iter().map(|row| row.get(0)).collect()
    }

    pub async fn attempts(&self, delivery_id: &str) -> Vec<Value> {
        let rows = self
            .client
            .query(
                "SELECT to_jsonb(a) FROM dispatcher.attempts a WHERE delivery_id = $1::text::uuid ORDER BY number",
                &[&delivery_id],
            )
            .await
            .expect("read attempts");
        rows.iter().map(|row| row.get(0)).collect()
    }
}

/// What a test partner answers to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// The contract's 200 answer, echoing the patient and giving the partner's own id.
    pub fn accepted(request: &Received) -> Reply {
        let patient = request.json["event"]["patient"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Reply::status(
            200,
            json!({"success": true, "data": {"supportProgramId": PROGRAM, "patientId": patient,
                   "externalId": format!("crm-{patient}")}})
            .to_string(),
        )
    }

    pub fn status(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            body: body.into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// One request a partner received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub json: Value,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// 1 for the first request with this webhook-id, 2 for its first retry, …
    pub try_number: usize,
}

impl Received {
    pub fn webhook_id(&self) -> String {
        self.header("webhook-id")
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    pub fn patient_id(&self) -> String {
        self.json["event"]["patient"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

type Behaviour = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

#[derive(Clone)]
struct PartnerState {
    behaviour: Behaviour,
    received: Arc<Mutex<Vec<Received>>>,
    open: Arc<OpenRequests>,
    /// Whether each request is kept in `received`; when not, only counted.
    remember: bool,
    count: Arc<AtomicUsize>,
}

/// Requests a partner has received and not finished answering: the dispatcher's
/// connections it is holding open. A request ends when its answer is sent or when the
/// dispatcher gives up and closes the connection (the server then drops the handler).
#[derive(Default)]
struct OpenRequests {
    now: AtomicUsize,
    most: AtomicUsize,
}

/// One open request, counted until dropped.
struct OpenRequest(Arc<OpenRequests>);

impl OpenRequest {
    fn start(open: &Arc<OpenRequests>) -> OpenRequest {
        let now = open.now.fetch_add(1, Ordering::SeqCst) + 1;
        open.most.fetch_max(now, Ordering::SeqCst);
        OpenRequest(open.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A partner CRM played by an HTTP server on 127.0.0.1.
pub struct TestPartner {
    pub name: String,
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
    failed_handshakes: Arc<AtomicUsize>,
    open: Arc<OpenRequests>,
    count: Arc<AtomicUsize>,
}

impl TestPartner {
    pub async fn start(
        name: &str,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> TestPartner {
        TestPartner::serve(name, None, true, behaviour).await
    }

    /// A partner that only counts what it receives ([`TestPartner::request_count`]), for
    /// hundreds of thousands of requests; `try_number` is not kept.
    pub async fn counting(
        name: &str,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> TestPartner {
        TestPartner::serve(name, None, false, behaviour).await
    }

    /// A partner serving HTTPS with `tls` (see [`tls::server_config`]) at
    /// `https://127.0.0.1:PORT`.
    pub async fn start_https(
        name: &str,
        tls: tokio_rustls::rustls::ServerConfig,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> TestPartner {
        TestPartner::serve(name, Some(tls), true, behaviour).await
    }

    async fn serve(
        name: &str,
        tls: Option<tokio_rustls::rustls::ServerConfig>,
        remember: bool,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> TestPartner {
        let received = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(OpenRequests::default());
        let count = Arc::new(AtomicUsize::new(0));
        let state = PartnerState {
            behaviour: Arc::new(behaviour),
            received: received.clone(),
            open: open.clone(),
            remember,
            count: count.clone(),
        };
        let app = axum::Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind partner");
        let address = listener.local_addr().expect("partner address");
        let base_url = match tls {
            None => {
                tokio::spawn(async move { axum::serve(listener, app).await });
                format!("http://{address}")
            }
            Some(config) => {
                let listener = tls::TlsListener::new(listener, config, failed_handshakes.clone());
                tokio::spawn(async move { axum::serve(listener, app).await });
                format!("https://{address}")
            }
        };
        TestPartner {
            name: name.to_string(),
            base_url,
            received,
            failed_handshakes,
            open,
            count,
        }
    }

    /// Requests received so far, kept or not.
    pub fn request_count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Requests received and not yet answered or given up by the dispatcher.
    pub fn open_requests(&self) -> usize {
        self.open.now.load(Ordering::SeqCst)
    }

    /// The most requests that were open at the same moment.
    pub fn most_open_at_once(&self) -> usize {
        self.open.most.load(Ordering::SeqCst)
    }

    /// Polls until `count` requests are open at once; fails after a generous deadline.
    pub async fn wait_for_open_requests(&self, count: usize) {
        for _ in 0..1200 {
            if self.open_requests() == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "partner {} has {} requests open after 60s, expected {count}",
            self.name,
            self.open_requests()
        );
    }

    /// TLS handshakes that failed (certificate not trusted, client certificate missing).
    pub fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }

    /// A partner that accepts everything.
    pub async fn accepting(name: &str) -> TestPartner {
        TestPartner::start(name, Reply::accepted).await
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("partner log").clone()
    }

    pub async fn wait_for_requests(&self, count: usize) -> Vec<Received> {
        for _ in 0..1200 {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "partner {} got {} requests in 60s, expected {count}",
            self.name,
            self.received().len()
        );
    }
}

async fn answer(
    State(state): State<PartnerState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let _open = OpenRequest::start(&state.open);
    state.count.fetch_add(1, Ordering::SeqCst);
    let request = {
        let mut received = state.received.lock().expect("partner log");
        let webhook_id = headers.get("webhook-id").cloned();
        let try_number = if state.remember {
            1 + received
                .iter()
                .filter(|r| r.headers.get("webhook-id") == webhook_id.as_ref())
                .count()
        } else {
            0
        };
        let request = Received {
            path: uri.path().to_string(),
            headers: headers.clone(),
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            body: body.to_vec(),
            received_at: chrono::Utc::now(),
            try_number,
        };
        if state.remember {
            received.push(request.clone());
        }
        request
    };
    let reply = (state.behaviour)(&request);
    tokio::time::sleep(reply.delay).await;
    let mut response_headers = HeaderMap::new();
    response_headers.insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    for (name, value) in reply.headers {
        response_headers.insert(name, value.parse().expect("test header value"));
    }
    (
        StatusCode::from_u16(reply.status).expect("test status"),
        response_headers,
        reply.body,
    )
}

/// The dispatcher.toml a test runs with: typed settings, rendered to TOML in one place
/// ([`TestConfig::text`]).
#[derive(Clone)]
pub struct TestConfig {
    pub partners: Vec<(String, String, Vec<String>)>,
    /// Settings of a partner's table, by partner name.
    pub partner_settings: HashMap<String, PartnerSettings>,
    /// More TOML for a partner's table, by partner name, for what [`PartnerSettings`]
    /// does not type (TLS files, auth, ...).
    pub partner_keys: HashMap<String, String>,
    pub dispatch: Dispatch,
    pub retry: Retry,
    /// `[retention]`, when the test sets it; else the daemon's defaults.
    pub retention: Option<Retention>,
    /// The `[admin]` section: by default a free loopback port, no token.
    pub admin: String,
    pub dir: Arc<tempfile::TempDir>,
}

/// `[dispatch]`; a key left `None` is left out of the file, so the daemon's default holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dispatch {
    pub concurrency: Option<usize>,
    pub batch_size: Option<usize>,
    pub lease: Option<Duration>,
    pub poll_interval: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub shutdown_grace: Option<Duration>,
}

impl Dispatch {
    /// Fast timings, so a test's claims, polls and shutdowns happen within it.
    pub fn fast() -> Dispatch {
        Dispatch {
            concurrency: Some(64),
            batch_size: Some(50),
            lease: Some(Duration::from_secs(10)),
            poll_interval: Some(Duration::from_millis(200)),
            request_timeout: Some(Duration::from_secs(2)),
            shutdown_grace: Some(Duration::from_secs(5)),
        }
    }
}

/// `[retry]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

/// `[retention]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Retention {
    pub payload_days: u32,
    pub metadata_days: u32,
    pub prune_interval: Duration,
}

/// A partner's own limits; a key left `None` takes the daemon's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartnerSettings {
    pub max_in_flight: Option<usize>,
    pub circuit_breaker_failures: Option<u32>,
    pub circuit_breaker_cool_down: Option<Duration>,
    /// Headers sent besides the test's `x-api-key`.
    pub headers: Vec<(String, String)>,
}

/// A duration as the config file writes it ("200ms", "10s", "2h").
fn toml_duration(duration: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(duration))
}

impl TestConfig {
    /// Fast timings so retries happen within a test.
    pub fn new() -> TestConfig {
        TestConfig {
            partners: Vec::new(),
            partner_settings: HashMap::new(),
            partner_keys: HashMap::new(),
            dispatch: Dispatch::fast(),
            retry: Retry {
                max_attempts: 5,
                base_delay: Duration::from_millis(300),
                max_delay: Duration::from_secs(2),
            },
            retention: None,
            admin: "listen = \"127.0.0.1:0\"".into(),
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
        }
    }

    pub fn partner(self, partner: &TestPartner, programs: &[&str]) -> TestConfig {
        self.partner_at(&partner.name, &partner.base_url, programs)
    }

    /// A partner served at `base_url` by something other than a [`TestPartner`].
    pub fn partner_at(mut self, name: &str, base_url: &str, programs: &[&str]) -> TestConfig {
        self.partners.push((
            name.to_string(),
            base_url.to_string(),
            programs.iter().map(|p| p.to_string()).collect(),
        ));
        self
    }

    /// Adds TOML to the partner's table: keys, then optionally a `[partners.auth]` table.
    /// With `signing_secrets` among them, the default `signing_secret` is left out.
    pub fn partner_keys(mut self, name: &str, toml: &str) -> TestConfig {
        self.partner_keys.insert(name.to_string(), toml.to_string());
        self
    }

    /// The partner's `max_in_flight`.
    pub fn max_in_flight(mut self, partner: &str, requests: usize) -> TestConfig {
        self.settings_of(partner).max_in_flight = Some(requests);
        self
    }

    /// The partner's circuit breaker: open after `failures` in a row, probe again after
    /// `cool_down`.
    pub fn circuit_breaker(
        mut self,
        partner: &str,
        failures: u32,
        cool_down: Duration,
    ) -> TestConfig {
        let settings = self.settings_of(partner);
        settings.circuit_breaker_failures = Some(failures);
        settings.circuit_breaker_cool_down = Some(cool_down);
        self
    }

    /// Only the partner's `circuit_breaker_failures`.
    pub fn circuit_breaker_failures(mut self, partner: &str, failures: u32) -> TestConfig {
        self.settings_of(partner).circuit_breaker_failures = Some(failures);
        self
    }

    /// Only the partner's `circuit_breaker_cool_down`.
    pub fn circuit_breaker_cool_down(mut self, partner: &str, cool_down: Duration) -> TestConfig {
        self.settings_of(partner).circuit_breaker_cool_down = Some(cool_down);
        self
    }

    /// One more header the partner is sent.
    pub fn partner_header(mut self, partner: &str, name: &str, value: &str) -> TestConfig {
        self.settings_of(partner)
            .headers
            .push((name.to_string(), value.to_string()));
        self
    }

    fn settings_of(&mut self, partner: &str) -> &mut PartnerSettings {
        self.partner_settings
            .entry(partner.to_string())
            .or_default()
    }

    /// The whole `[dispatch]` section (e.g. `Dispatch::default()`: the daemon's own).
    pub fn dispatch(mut self, dispatch: Dispatch) -> TestConfig {
        self.dispatch = dispatch;
        self
    }

    pub fn concurrency(mut self, tasks: usize) -> TestConfig {
        self.dispatch.concurrency = Some(tasks);
        self
    }

    pub fn batch_size(mut self, deliveries: usize) -> TestConfig {
        self.dispatch.batch_size = Some(deliveries);
        self
    }

    pub fn lease(mut self, lease: Duration) -> TestConfig {
        self.dispatch.lease = Some(lease);
        self
    }

    pub fn poll_interval(mut self, interval: Duration) -> TestConfig {
        self.dispatch.poll_interval = Some(interval);
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> TestConfig {
        self.dispatch.request_timeout = Some(timeout);
        self
    }

    pub fn shutdown_grace(mut self, grace: Duration) -> TestConfig {
        self.dispatch.shutdown_grace = Some(grace);
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> TestConfig {
        self.retry.max_attempts = attempts;
        self
    }

    /// The first retry's delay, and the most any retry waits.
    pub fn retry_delays(mut self, base: Duration, max: Duration) -> TestConfig {
        self.retry.base_delay = base;
        self.retry.max_delay = max;
        self
    }

    pub fn retention(mut self, retention: Retention) -> TestConfig {
        self.retention = Some(retention);
        self
    }

    pub fn admin(mut self, admin: &str) -> TestConfig {
        self.admin = admin.into();
        self
    }

    pub fn text(&self, db: &TestDb) -> String {
        let mut text = format!("[database]\nurl = \"{}\"\n\n[dispatch]\n", db.url);
        let Dispatch {
            concurrency,
            batch_size,
            lease,
            poll_interval,
            request_timeout,
            shutdown_grace,
        } = &self.dispatch;
        let numbers = [("concurrency", concurrency), ("batch_size", batch_size)];
        for (key, value) in numbers {
            if let Some(value) = value {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        let durations = [
            ("lease", lease),
            ("poll_interval", poll_interval),
            ("request_timeout", request_timeout),
            ("shutdown_grace", shutdown_grace),
        ];
        for (key, value) in durations {
            if let Some(value) = value {
                text.push_str(&format!("{key} = {}\n", toml_duration(*value)));
            }
        }
        let Retry {
            max_attempts,
            base_delay,
            max_delay,
        } = &self.retry;
        text.push_str(&format!(
            "\n[retry]\nmax_attempts = {max_attempts}\nbase_delay = {}\nmax_delay = {}\n",
            toml_duration(*base_delay),
            toml_duration(*max_delay)
        ));
        text.push_str(&format!("\n[admin]\n{}\n", self.admin));
        if let Some(Retention {
            payload_days,
            metadata_days,
            prune_interval,
        }) = &self.retention
        {
            text.push_str(&format!(
                "\n[retention]\npayload_days = {payload_days}\nmetadata_days = {metadata_days}\n\
                 prune_interval = {}\n",
                toml_duration(*prune_interval)
            ));
        }
        for (name, base_url, programs) in &self.partners {
            let keys = self.partner_keys.get(name).map_or("", String::as_str);
            let settings = self.partner_settings.get(name).cloned().unwrap_or_default();
            let mut headers = format!("\"x-api-key\" = \"key-{name}\"");
            for (header, value) in &settings.headers {
                headers.push_str(&format!(", \"{header}\" = \"{value}\""));
            }
            text.push_str(&format!(
                "\n[[partners]]\nname = \"{name}\"\nsupport_programs = {programs:?}\n\
                 enrollment_url = \"{base_url}/webhook/user-enrollment\"\n\
                 user_action_url = \"{base_url}/webhook/user-action\"\n\
                 headers = {{ {headers} }}\n"
            ));
            if !keys.contains("signing_secrets") {
                text.push_str(&format!("signing_secret = \"{SIGNING_SECRET}\"\n"));
            }
            // Plain-HTTP partners are local test servers: that needs allow_insecure,
            // which also opens the destination guard. HTTPS partners go without it.
            if base_url.starts_with("http://") {
                text.push_str("allow_insecure = true\n");
            }
            if let Some(requests) = settings.max_in_flight {
                text.push_str(&format!("max_in_flight = {requests}\n"));
            }
            if let Some(failures) = settings.circuit_breaker_failures {
                text.push_str(&format!("circuit_breaker_failures = {failures}\n"));
            }
            if let Some(cool_down) = settings.circuit_breaker_cool_down {
                text.push_str(&format!(
                    "circuit_breaker_cool_down = {}\n",
                    toml_duration(cool_down)
                ));
            }
            text.push_str(keys);
            text.push('\n');
        }
        text
    }

    pub fn write(&self, db: &TestDb) -> PathBuf {
        let path = self.dir.path().join("dispatcher.toml");
        std::fs::write(&path, self.text(db)).expect("write config");
        path
    }
}

/// The real binary, with the given config.
pub fn dispatcher(config: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dispatcher"));
    command
        .arg("--config")
        .arg(config)
        .env_remove("DISPATCHER_DATABASE_URL");
    command
}

/// A running `dispatcher run`; killed when dropped.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    /// The file it was started with, and re-reads on SIGHUP.
    pub config_path: PathBuf,
}

impl Daemon {
    pub fn start(config: &TestConfig, db: &TestDb) -> Daemon {
        Daemon::start_with_text(&config.text(db), config.dir.path())
    }

    /// Starts the daemon on config text the test wrote itself (for keys [`TestConfig`]
    /// does not set), in its own file under `dir`.
    pub fn start_with_text(config_text: &str, dir: &std::path::Path) -> Daemon {
        Daemon::start_logging(config_text, dir, "info,dispatcher=debug")
    }

    /// Starts the daemon with `RUST_LOG=rust_log`; stdout and stderr both go to `log`.
    pub fn start_logging(config_text: &str, dir: &std::path::Path, rust_log: &str) -> Daemon {
        Daemon::start_in(config_text, dir, rust_log, &[])
    }

    /// Starts the daemon with more environment variables (fail points, a fake clock).
    pub fn start_with_env(config: &TestConfig, db: &TestDb, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_in(
            &config.text(db),
            config.dir.path(),
            "info,dispatcher=debug",
            env,
        )
    }

    /// Starts the daemon with its clock (wall clock only) `offset` ahead of the
    /// database's, e.g. "+1h", through Debian's libfaketime (scripts/test installs it).
    pub fn start_with_clock_ahead(config: &TestConfig, db: &TestDb, offset: &str) -> Daemon {
        let library = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
            .iter()
            .map(|arch| format!("/usr/lib/{arch}/faketime/libfaketime.so.1"))
            .find(|path| std::path::Path::new(path).exists())
            .expect("libfaketime: install Debian's faketime package (scripts/test does)");
        Daemon::start_with_env(
            config,
            db,
            &[
                ("LD_PRELOAD", &library),
                ("FAKETIME", offset),
                // Timers and timeouts keep real time; only the dates are off.
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        )
    }

    fn start_in(
        config_text: &str,
        dir: &std::path::Path,
        rust_log: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let path = dir.join(format!("dispatcher-{name}.toml"));
        std::fs::write(&path, config_text).expect("write config");
        let log = dir.join(format!("daemon-{name}.log"));
        let log_file = std::fs::File::create(&log).expect("daemon log");
        let child = dispatcher(&path)
            .arg("run")
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stdout(log_file.try_clone().expect("daemon log"))
            .stderr(log_file)
            .spawn()
            .expect("start dispatcher run");
        Daemon {
            child,
            log,
            config_path: path,
        }
    }

    /// What ops do to change a running daemon: rewrite its file, send SIGHUP.
    pub fn reload_with(&self, config_text: &str) {
        std::fs::write(&self.config_path, config_text).expect("rewrite config");
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    /// Polls the daemon's stderr until `needle` appears `count` times; returns the log.
    pub async fn wait_for_log(&self, needle: &str, count: usize) -> String {
        for _ in 0..1200 {
            let log = self.log_text();
            if log.matches(needle).count() >= count {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the daemon did not log `{needle}` {count} time(s) within 60s; log:\n{}",
            self.log_text()
        );
    }

    /// Whether the process is still there (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("wait for dispatcher")
            .is_none()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// The daemon's peak resident memory so far (`VmHWM`), in bytes: what ops would see
    /// the process take from the machine.
    pub fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the daemon's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status");
        kib * 1024
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("send signal");
    }

    /// SIGKILL: a crash, with no chance to clean up.
    pub fn crash(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (up to 60s) and returns its status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait().expect("wait for dispatcher") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "dispatcher did not exit within 60s; log:\n{}",
            self.log_text()
        );
    }

    /// The admin server's address, from its start-up log line.
    pub async fn admin_url(&self) -> String {
        for _ in 0..1200 {
            let log = self.log_text();
            if let Some(addr) = log
                .lines()
                .filter(|line| line.contains("admin server listening"))
                .find_map(|line| line.split("addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                return format!("http://{}", addr.trim_matches('"'));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the admin server did not start within 60s; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The contract's example enrollment, as the enrollment flow stores it (no sendDate,
/// sourceName or eventName: the dispatcher sets those), for the given patient.
pub fn enrollment_event(patient_id: &str) -> Value {
    let mut event = example("enrollment.json");
    let object = event.as_object_mut().expect("example event is an object");
    for field in ["sendDate", "sourceName", "eventName"] {
        object.remove(field);
    }
    event["patient"]["id"] = json!(patient_id);
    event
}

pub fn viewed_tracker_event(patient_id: &str) -> Value {
    let mut event = example("viewed-tracker.json");
    let object = event.as_object_mut().expect("example event is an object");
    for field in ["sendDate", "sourceName", "eventName", "data"] {
        object.remove(field);
    }
    event["patient"]["id"] = json!(patient_id);
    event["patient"]
        .as_object_mut()
        .expect("patient")
        .remove("externalIds");
    event
}

/// The partner contract, as vendored in `contract/` (a copy of `../shared/spec`).
pub fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contract")
}

fn example(file: &str) -> Value {
    let text = std::fs::read_to_string(spec_dir().join("examples").join(file))
        .expect("read contract example");
    let body: Value = serde_json::from_str(&text).expect("contract example is JSON");
    body["event"].clone()
}

/// Validates a body against the contract's JSON Schema; returns the errors.
pub fn schema_errors(schema_file: &str, body: &Value) -> Vec<String> {
    let text = std::fs::read_to_string(spec_dir().join(schema_file)).expect("read schema");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Counts requests per webhook-id.
pub fn per_webhook_id(received: &[Received]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in received {
        *counts.entry(request.webhook_id()).or_insert(0) += 1;
    }
    counts
}

/// The admin server of a running daemon, as a script or support tool talks to it.
pub struct AdminClient {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    pub async fn of(daemon: &Daemon, token: Option<&str>) -> AdminClient {
        AdminClient {
            base: daemon.admin_url().await,
            token: token.map(str::to_string),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends and returns the status and the body parsed as JSON (Null if it is not JSON).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("admin server answers");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("admin answer body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .header("x-actor", "alice")
                .body(body.to_string()),
        )
        .await
    }

    /// The raw answer, for pages and redirects.
    pub async fn raw(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        request.send().await.expect("admin server answers")
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Writes a file into the test's directory (PEM files, secret files) and returns its path.
pub fn write_file(dir: &std::path::Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write test file");
    path
}

/// A config for library-level tests that talk to partners without a daemon or a
/// database: one partner named `name` at `base_url`, with `keys` added to its table.
/// Relative file names in `keys` are read from `dir`.
pub fn partner_config(
    dir: &std::path::Path,
    name: &str,
    base_url: &str,
    keys: &str,
) -> dispatcher::config::Config {
    let text = format!(
        "[database]\nurl = \"postgres://dispatcher@127.0.0.1/unused\"\n\n\
         [dispatch]\nrequest_timeout = \"5s\"\n\n\
         [[partners]]\nname = \"{name}\"\nsupport_programs = [\"{PROGRAM}\"]\n\
         enrollment_url = \"{base_url}/webhook/user-enrollment\"\n\
         user_action_url = \"{base_url}/webhook/user-action\"\n{keys}\n"
    );
    let path = dir.join("dispatcher.toml");
    dispatcher::config::Config::parse(&text, &path.display().to_string(), None, |_| None)
        .unwrap_or_else(|error| panic!("test config: {error}\n{text}"))
}

/// What one finished command printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a command to its end (killing it after 60s) and collects what it printed.
pub async fn finish(mut command: Command) -> Output {
    let mut stdout = tempfile::tempfile().expect("stdout file");
    let mut stderr = tempfile::tempfile().expect("stderr file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("stdout handle"))
        .stderr(stderr.try_clone().expect("stderr handle"))
        .spawn()
        .expect("start dispatcher");
    let mut status = None;
    for _ in 0..1200 {
        status = child.try_wait().expect("wait for dispatcher");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let timed_out = status.is_none();
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for dispatcher");
    let read = |file: &mut std::fs::File| {
        let mut text = String::new();
        file.rewind().expect("rewind output");
        file.read_to_string(&mut text).expect("read output");
        text
    };
    let output = Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    };
    assert!(
        !timed_out,
        "the command was still running after 60s:\n{output}"
    );
    output
}
