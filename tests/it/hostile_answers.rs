//! A partner whose answers are hostile: a 2 GB body, headers that never end, invalid
//! UTF-8, a drip of bytes, a length it never sends, a reset halfway. Each costs one
//! bounded attempt, recorded with what went wrong, and the delivery goes on by the
//! contract's rules (the partner's status decides, when one came); nothing else: a
//! well-behaved partner beside it gets every event, and the daemon's memory stays flat.
//!
//! The hostile partner writes its bytes by hand ([`RawPartner`]); every event goes both to
//! it and to a well-behaved partner.

use std::time::Duration;

use crate::support::raw::{RawAnswer, RawPartner};
use crate::support::*;
use serde_json::Value;

/// The daemon needs a few tens of MiB; a 2 GB answer held in memory, or headers
/// collected without end, would take far more.
const MEMORY_BOUND: u64 = 100 * MIB;
/// Events each scenario sends; each goes to both partners.
const EVENTS: usize = 3;
/// A hostile partner's events end `dead` after this many attempts when retried.
const MAX_ATTEMPTS: usize = 2;

/// A daemon delivering to a hostile partner and a well-behaved one.
struct Scene {
    db: TestDb,
    daemon: Daemon,
    hostile: RawPartner,
    /// Holds the directory of the daemon's config file and log.
    _config: TestConfig,
}

impl Scene {
    async fn start(answer: RawAnswer) -> Scene {
        let hostile = RawPartner::start("hostile", answer).await;
        let steady = TestPartner::accepting("steady").await;
        let config = TestConfig::new()
            .partner_at(&hostile.name, &hostile.base_url, &[PROGRAM])
            .partner(&steady, &[PROGRAM])
            .max_attempts(MAX_ATTEMPTS as u32)
            .retry_delays(Duration::from_millis(300), Duration::from_secs(1));
        let db = TestDb::migrated(&config).await;
        let daemon = Daemon::start(&config, &db);
        for patient in 0..EVENTS {
            db.insert_event(ENROLLMENT, &enrollment_event(&format!("patient-{patient}")))
                .await;
        }
        Scene {
            db,
            daemon,
            hostile,
            _config: config,
        }
    }

    /// Waits for every hostile delivery to end `state`, and returns them.
    async fn hostile_deliveries_end(&self, state: &str) -> Vec<Value> {
        let ended = Deliveries::of("hostile").in_state(state);
        for _ in 0..1200 {
            if self.db.count_deliveries(&ended).await == EVENTS as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deliveries = self.hostile_deliveries().await;
        assert!(
            deliveries.len() == EVENTS
                && deliveries.iter().all(|delivery| delivery["state"] == state),
            "not all {state} within 60s: {deliveries:#?}\ndaemon log:\n{}",
            self.daemon.log_text()
        );
        deliveries
    }

    /// The hostile partner's deliveries, each with its attempts (as `attempts`).
    async fn hostile_deliveries(&self) -> Vec<Value> {
        let mut deliveries = Vec::new();
        for mut delivery in self.db.deliveries().await {
            if delivery["partner"] != "hostile" {
                continue;
            }
            let id = delivery["id"].as_str().expect("delivery id").to_string();
            delivery["attempts"] = Value::Array(self.db.attempts(&id).await);
            deliveries.push(delivery);
        }
        deliveries
    }

    /// What every scenario must also show: one request per recorded attempt and no
    /// other; the well-behaved partner got every event, and still gets new ones; the
    /// daemon's memory stayed flat.
    async fn assert_nothing_else(&self, hostile: &[Value]) {
        let requests = self.hostile.requests();
        for delivery in hostile {
            let sent = requests
                .iter()
                .filter(|r| r.webhook_id == delivery["id"])
                .count();
            assert_eq!(
                sent,
                attempts(delivery).len(),
                "one request per recorded attempt: {delivery}"
            );
            assert_eq!(
                delivery["attempt_count"],
                attempts(delivery).len(),
                "{delivery}"
            );
        }
        assert_eq!(requests.len(), EVENTS * attempts(&hostile[0]).len());

        self.db
            .wait_for_deliveries(
                &Deliveries::of("steady").in_state("delivered"),
                EVENTS as i64,
            )
            .await;
        // Still delivering once the hostile attempts are over.
        self.db
            .insert_event(ENROLLMENT, &enrollment_event("patient-after"))
            .await;
        self.db
            .wait_for_deliveries(
                &Deliveries::of("steady").in_state("delivered"),
                EVENTS as i64 + 1,
            )
            .await;

        let peak = self.daemon.peak_memory();
        assert!(
            peak < MEMORY_BOUND,
            "the daemon's peak memory reached {} MiB",
            peak / MIB
        );
    }
}

fn attempts(delivery: &Value) -> &Vec<Value> {
    delivery["attempts"].as_array().expect("attempts")
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// An HTTP/1.1 answer head; the connection is never reused.
fn head(status: &str, headers: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n{headers}\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_gigabyte_answer_is_read_only_to_its_cap() {
    let two_gigabytes = 2u64 << 30;
    let scene = Scene::start(RawAnswer::Stream {
        head: head("200 OK", &format!("Content-Length: {two_gigabytes}\r\n")),
        fill: vec![0; 64 * 1024],
        up_to: two_gigabytes,
    })
    .await;

    // A 200 is a 200, however long the body behind it.
    let hostile = scene.hostile_deliveries_end("delivered").await;
    for delivery in &hostile {
        let attempts = attempts(delivery);
        assert_eq!(attempts.len(), 1, "{delivery}");
        assert_eq!(attempts[0]["http_status"], 200);
        // 16 KiB of NUL bytes, each stored as U+FFFD (PostgreSQL text holds no NUL).
        let body = text(&attempts[0]["response_body"]);
        assert_eq!(body.chars().count(), 16 * 1024);
        assert!(body.chars().all(|c| c == '\u{FFFD}'));
    }
    // The dispatcher hung up: the partner could not push its 2 GB through.
    let written = scene.hostile.largest_answer();
    assert!(
        written < 256 * MIB,
        "the partner wrote {} MiB of its answer before the dispatcher hung up",
        written / MIB
    );
    scene.assert_nothing_else(&hostile).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn header_lines_without_end_fail_the_attempt() {
    let scene = Scene::start(RawAnswer::Stream {
        head: b"HTTP/1.1 200 OK\r\n".to_vec(),
        fill: b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(64),
        up_to: u64::MAX,
    })
    .await;

    let hostile = scene.hostile_deliveries_end("dead").await;
    for delivery in &hostile {
        let attempts = attempts(delivery);
        assert_eq!(attempts.len(), MAX_ATTEMPTS, "{delivery}");
        for attempt in attempts {
            assert_eq!(attempt["http_status"], Value::Null);
            assert!(
                text(&attempt["error"]).contains("message head is too large"),
                "{attempt}"
            );
        }
    }
    scene.assert_nothing_else(&hostile).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_header_line_without_end_fails_the_attempt() {
    let scene = Scene::start(RawAnswer::Stream {
        head: b"HTTP/1.1 200 OK\r\nX-Endless: ".to_vec(),
        fill: vec![b'a'; 64 * 1024],
        up_to: u64::MAX,
    })
    .await;

    let hostile = scene.hostile_deliveries_end("dead").await;
    for delivery in &hostile {
        for attempt in attempts(delivery) {
            assert_eq!(attempt["http_status"], Value::Null);
            assert!(
                text(&attempt["error"]).contains("message head is too large"),
                "{attempt}"
            );
        }
    }
    scene.assert_nothing_else(&hostile).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_a_refusal_keeps_the_partner_message_readable() {
    let body = b"{\"errorMessage\": \"patient \xff\xfe unknown\"}";
    let mut answer = head(
        "400 Bad Request",
        &format!("Content-Length: {}\r\n", body.len()),
    );
    answer.extend_from_slice(body);
    let scene = Scene::start(RawAnswer::Close(answer)).await;

    // A 400 stops the retries (R11), whatever its bytes.
    let hostile = scene.hostile_deliveries_end("rejected").await;
    for delivery in &hostile {
        let attempts = attempts(delivery);
        assert_eq!(attempts.len(), 1, "{delivery}");
        assert_eq!(attempts[0]["http_status"], 400);
        assert_eq!(
            text(&attempts[0]["response_body"]),
            "{\"errorMessage\": \"patient \u{FFFD}\u{FFFD} unknown\"}"
        );
        assert_eq!(
            text(&delivery["last_error"]),
            "HTTP 400: patient \u{FFFD}\u{FFFD} unknown"
        );
    }
    scene.assert_nothing_else(&hostile).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_headers_is_ignored_and_the_status_decides() {
    // Bytes no UTF-8 text holds, in a header the dispatcher reads (Retry-After) and in one
    // it does not.
    let answer = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
        Retry-After: \xff\xfe\r\nX-Note: caf\xe9\r\nContent-Length: 0\r\n\r\n"
        .to_vec();
    let scene = Scene::start(RawAnswer::Close(answer)).await;

    let hostile = scene.hostile_deliveries_end("dead").await;
    for delivery in &hostile {
        let attempts = attempts(delivery);
        assert_eq!(attempts.len(), MAX_ATTEMPTS, "{delivery}");
        for attempt in attempts {
            assert_eq!(attempt["http_status"], 503, "{attempt}");
        }
        assert!(text(&delivery["last_error"]).starts_with("HTTP 503"));
    }
    scene.assert_nothing_else(&hostile).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_drip_of_headers_ends_at_the_request_timeout() {
    let scene = Scene::start(RawAnswer::Drip {
        head: b"HTTP/1.1 200 OK\r\n".to_vec(),
        drip: b"X-Drip: a\r\n".to_vec(),
        every: Duration::from_millis(250),
    })
    .await;

    let hostile = scene.hostile_deliveries_end("dead").await;
    for delivery in &hostile {
        let attempts = attempts(delivery);
        assert_eq!(attempts.len(), MAX_ATTEMPTS, "{delivery}");
        for attempt in attempts {
            assert_eq!(attempt["http_status"], Value::Null);
            assert_eq!(attempt["error_kind"], "timeout", "{attempt}");
        }
    }
    scene.assert_nothing_else(&hostile).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_drip_of_body_ends_at_the_request_timeout_and_the_200_stands() {
    let scene = Scene::start(RawAnswer::Drip {
        head: head("200 OK", "Content-Length: 100000\r\n"),
        drip: b"{\"success\": true}".to_vec(),
        every: Duration::from_millis(250),
    })
    .await;

    let hostile = scene.hostile_deliveries_end("delivered").await;
    for delivery in &hostile {
        let attempts = attempts(delivery);
        assert_eq!(attempts.len(), 1, "{delivery}");
        assert_eq!(attempts[0]["http_status"], 200);
        assert_eq!(attempts[0]["error_kind"], "response_body");
        assert!(
            text(&attempts[0]["error"]).contains("request_timeout"),
            "{}",
            attempts[0]
        );
        // What had dripped in by then is kept.
        assert!(text(&attempts[0]["response_body"]).starts_with("{\"succ"));
    }
    scene.assert_nothing_else(&hostile).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_length_never_sent_then_silence_ends_at_the_request_timeout() {
    let mut answer = head("200 OK", "Content-Length: 5000\r\n");
    answer.extend_from_slice(b"{\"success\": tr");
    let scene = Scene::start(RawAnswer::Hold(answer)).await;

    let hostile = scene.hostile_deliveries_end("delivered").await;
    for delivery in &hostile {
        let attempts = attempts(delivery);
        assert_eq!(attempts.len(), 1, "{delivery}");
        assert_eq!(attempts[0]["http_status"], 200);
        assert_eq!(attempts[0]["error_kind"], "response_body");
        assert!(text(&attempts[0]["error"]).contains("request_timeout"));
        assert_eq!(text(&attempts[0]["response_body"]), "{\"success\": tr");
    }
    scene.assert_nothing_else(&hostile).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_length_never_sent_then_a_close_is_retried_as_its_503_says() {
    let mut answer = head("503 Service Unavailable", "Content-Length: 5000\r\n");
    answer.extend_from_slice(b"{\"errorMess");
    let scene = Scene::start(RawAnswer::Close(answer)).await;

    let hostile = scene.hostile_deliveries_end("dead").await;
    for delivery in &hostile {
        let attempts = attempts(delivery);
        assert_eq!(attempts.len(), MAX_ATTEMPTS, "{delivery}");
        for attempt in attempts {
            assert_eq!(attempt["http_status"], 503);
            assert_eq!(attempt["error_kind"], "response_body");
            assert!(
                text(&attempt["error"]).contains("end of file before message length reached"),
                "{attempt}"
            );
        }
    }
    scene.assert_nothing_else(&hostile).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_halfway_through_the_answer_fails_the_attempt() {
    let mut answer = head("503 Service Unavailable", "Content-Length: 5000\r\n");
    answer.extend_from_slice(b"{\"errorMess");
    let scene = Scene::start(RawAnswer::Reset(answer)).await;

    let hostile = scene.hostile_deliveries_end("dead").await;
    for delivery in &hostile {
        let attempts = attempts(delivery);
        assert_eq!(attempts.len(), MAX_ATTEMPTS, "{delivery}");
        for attempt in attempts {
            // Whether the head was read before the reset arrived is up to the kernel:
            // either way the attempt failed, and says the connection was reset.
            assert!(
                attempt["http_status"] == 503 || attempt["http_status"].is_null(),
                "{attempt}"
            );
            assert!(
                text(&attempt["error"])
                    .to_lowercase()
                    .contains("connection reset"),
                "{attempt}"
            );
        }
    }
    scene.assert_nothing_else(&hostile).await;
}
