//! A partner for the scenarios that need to know when each delivery arrived: a small
//! HTTP/1.1 server on 127.0.0.1 that records every request's `webhook-id` and arrival
//! time and answers the contract's 200, after an optional delay (the slow partner).

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The contract's 200 answer (the same body nginx gives).
pub const ACCEPTED: &str = r#"{"success": true, "data": {"supportProgramId": "78ef982b-00ea-39c2-a875-f549c40e92ad", "patientId": "ha61236024160af", "externalId": "4aadb997-e9fd-3909-a2f0-833b821544bd"}}"#;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub webhook_id: String,
    pub at: Instant,
}

#[derive(Default)]
struct Log {
    arrivals: Mutex<Arrivals>,
}

#[derive(Default)]
struct Arrivals {
    all: Vec<Arrival>,
    distinct: HashSet<String>,
}

pub struct Receiver {
    pub base_url: String,
    log: Arc<Log>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1; every answer waits `delay` first.
    pub async fn start(delay: Duration) -> Result<Receiver> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("binding the receiver on 127.0.0.1")?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let log = Arc::new(Log::default());
        let server = tokio::spawn(serve(listener, log.clone(), delay));
        Ok(Receiver {
            base_url,
            log,
            server,
        })
    }

    /// Deliveries received: requests with distinct webhook-ids.
    pub fn distinct(&self) -> usize {
        self.lock().distinct.len()
    }

    /// Every request so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.lock().all.clone()
    }

    /// Requests that carried a webhook-id already seen: deliveries sent twice.
    pub fn duplicates(&self) -> usize {
        let arrivals = self.lock();
        arrivals.all.len() - arrivals.distinct.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arrivals> {
        self.log
            .arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, log: Arc<Log>, delay: Duration) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let log = log.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| answer(request, log.clone(), delay));
            // A connection ending (the daemon stopping) is not an error worth reporting.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(
    request: Request<Incoming>,
    log: Arc<Log>,
    delay: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let webhook_id = request
        .headers()
        .get("webhook-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // Read the body, as a partner does.
    let _ = request.into_body().collect().await;
    {
        let mut arrivals = log.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
        arrivals.distinct.insert(webhook_id.clone());
        arrivals.all.push(Arrival { webhook_id, at });
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from_static(ACCEPTED.as_bytes())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
