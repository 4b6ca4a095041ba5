//! Partner CRMs played by HTTP(S) servers on 127.0.0.1: each answers as its test tells
//! it and keeps what it received, so a test can check what the dispatcher sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::{tls, PROGRAM};

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

/// What a partner that already has the patient answers (the contract's example 400).
pub const ALREADY_ENROLLED: &str = "Patient is already enrolled in program";

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

    /// TLS handshakes refused (certificate not trusted, client certificate missing); not
    /// those a client abandoned by hanging up.
    pub fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }

    /// A partner that accepts everything.
    pub async fn accepting(name: &str) -> TestPartner {
        TestPartner::start(name, Reply::accepted).await
    }

    /// A partner that refuses the given patients with the contract's 400 and `message`
    /// as its `errorMessage` (their deliveries end `rejected`, waiting for support, with
    /// its answer to show) and takes the rest.
    pub async fn refusing(
        name: &str,
        refused: &'static [&'static str],
        message: &'static str,
    ) -> TestPartner {
        TestPartner::start(name, move |request| {
            if refused.contains(&request.patient_id().as_str()) {
                Reply::status(
                    400,
                    json!({"success": false, "errorMessage": message}).to_string(),
                )
            } else {
                Reply::accepted(request)
            }
        })
        .await
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

/// Counts requests per webhook-id.
pub fn per_webhook_id(received: &[Received]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in received {
        *counts.entry(request.webhook_id()).or_insert(0) += 1;
    }
    counts
}
