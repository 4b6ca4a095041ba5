//! The daemon as a systemd `Type=notify` service (deploy/systemd/dispatcher.service): the
//! test plays systemd's side of the protocol, a Unix datagram socket named by
//! `NOTIFY_SOCKET`, and checks what the daemon says on it and when.

use std::path::Path;
use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;
use tokio::net::UnixDatagram;

/// What systemd would hear: the notification socket it hands the service.
struct NotifySocket {
    socket: UnixDatagram,
    path: String,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
        NotifySocket {
            socket,
            path: path.to_str().expect("temp path is UTF-8").to_string(),
        }
    }

    /// The next notification, as its `KEY=value` lines; None after `within` of silence.
    async fn next(&self, within: Duration) -> Option<Vec<String>> {
        let mut buffer = vec![0u8; 4096];
        let length = tokio::time::timeout(within, self.socket.recv(&mut buffer))
            .await
            .ok()?
            .expect("receive a notification");
        let text = std::str::from_utf8(&buffer[..length]).expect("notifications are text");
        Some(text.lines().map(str::to_string).collect())
    }

    /// Reads notifications until one holds `line`; returns those read before it.
    async fn wait_for(&self, line: &str) -> Vec<Vec<String>> {
        let mut before = Vec::new();
        loop {
            match self.next(Duration::from_secs(60)).await {
                Some(message) if message.iter().any(|l| l == line) => return before,
                Some(message) => before.push(message),
                None => panic!("no {line} within 60s; heard before: {before:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_once_the_admin_server_answers_then_watchdog_pings_then_stopping_on_sigterm() {
    let config = TestConfig::new();
    let db = TestDb::migrated(&config).await;
    let notify = NotifySocket::bind(config.dir.path());
    let mut daemon = Daemon::start_with_env(
        &config,
        &db,
        // A watchdog of one second: systemd would kill a daemon silent for longer.
        &[
            ("NOTIFY_SOCKET", &notify.path),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );

    let before = notify.wait_for("READY=1").await;
    assert!(
        before.is_empty(),
        "the daemon said something before READY=1: {before:?}"
    );
    // READY=1 promises a daemon that works: its readiness probe already answers yes.
    let admin = AdminClient::of(&daemon, None).await;
    let (status, body) = admin.get("/readyz").await;
    assert_eq!(status, 200, "READY=1 came before /readyz was ready: {body}");

    for _ in 0..3 {
        let message = notify
            .next(Duration::from_secs(1))
            .await
            .expect("a watchdog ping within each watchdog period");
        assert_eq!(message, ["WATCHDOG=1"]);
    }

    daemon.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1").await;
    assert!(daemon.wait_exit().await.success(), "{}", daemon.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn never_ready_while_the_database_schema_is_not_the_one_this_build_needs() {
    let config = TestConfig::new();
    let db = TestDb::unmigrated().await;
    let notify = NotifySocket::bind(config.dir.path());
    let mut daemon = Daemon::start_with_env(&config, &db, &[("NOTIFY_SOCKET", &notify.path)]);

    let status = daemon.wait_exit().await;
    assert!(!status.success(), "{}", daemon.log_text());
    assert_eq!(
        notify.next(Duration::from_millis(200)).await,
        None,
        "a daemon that cannot work told systemd something"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_watchdog_nothing_is_said_between_ready_and_stopping() {
    let config = TestConfig::new();
    let db = TestDb::migrated(&config).await;
    let notify = NotifySocket::bind(config.dir.path());
    let mut daemon = Daemon::start_with_env(&config, &db, &[("NOTIFY_SOCKET", &notify.path)]);

    notify.wait_for("READY=1").await;
    assert_eq!(notify.next(Duration::from_secs(1)).await, None);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        notify.wait_for("STOPPING=1").await,
        Vec::<Vec<String>>::new()
    );
    assert!(daemon.wait_exit().await.success(), "{}", daemon.log_text());
}
