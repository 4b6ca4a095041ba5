//! What systemd learns of the daemon's life when it runs as a `Type=notify` service
//! (deploy/systemd/dispatcher.service): `READY=1` once it can do its work, `WATCHDOG=1`
//! while it lives, `STOPPING=1` once a shutdown begins.
//!
//! "Started" then means the schema check passed and the admin server listens, so units
//! ordered after this one, and `systemctl start` itself, wait for a daemon that works
//! rather than for a process that merely exists. Outside systemd (`NOTIFY_SOCKET` unset)
//! every notification is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::shutdown::Shutdown;

/// Reports the daemon ready now, feeds the watchdog if the unit has one (`WatchdogSec=`),
/// and reports `STOPPING=1` when `shutdown` begins. Spawn it once the daemon is ready.
pub async fn report_lifecycle(shutdown: Shutdown) {
    notify(&[NotifyState::Ready, NotifyState::Status("delivering")]);
    match sd_notify::watchdog_enabled() {
        Some(timeout) => {
            // Twice per timeout, as sd_watchdog_enabled(3) advises, so one late tick
            // does not get the daemon killed.
            let mut ticks = tokio::time::interval(watchdog_interval(timeout));
            loop {
                tokio::select! {
                    _ = ticks.tick() => notify(&[NotifyState::Watchdog]),
                    () = shutdown.stopping() => break,
                }
            }
        }
        None => shutdown.stopping().await,
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn watchdog_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(1))
}

/// A notification that cannot be sent costs systemd's view of the daemon, never the
/// daemon itself: it is logged and the daemon goes on.
fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_twice_per_timeout() {
        assert_eq!(
            watchdog_interval(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn a_zero_timeout_still_gives_a_usable_interval() {
        assert!(watchdog_interval(Duration::ZERO) > Duration::ZERO);
    }
}
