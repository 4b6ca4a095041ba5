//! Graceful shutdown in two stages.
//!
//! On SIGTERM or SIGINT the daemon is *stopping*: it claims nothing more, hands back
//! deliveries it claimed but has not started, and lets requests already on the wire
//! finish. When the grace period is over it is *abandoning*: requests still running are
//! dropped and their deliveries handed back too (the partner may still have received
//! them; the retry carries the same `webhook-id`, so it can drop the duplicate).
//!
//! Every task gets a clone and waits on [`Shutdown::stopping`] or
//! [`Shutdown::abandoning`] beside its own work.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    abandon: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts stopping, and abandons whatever is left after `grace`.
    pub fn begin(&self, grace: Duration) {
        if self.stop.is_cancelled() {
            return;
        }
        self.stop.cancel();
        let abandon = self.abandon.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            abandon.cancel();
        });
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    pub fn is_abandoning(&self) -> bool {
        self.abandon.is_cancelled()
    }

    pub async fn abandoning(&self) {
        self.abandon.cancelled().await
    }

    /// Installs the SIGTERM and SIGINT handlers now, and returns the future that begins
    /// the shutdown on the first signal (a second one abandons at once). Installing before
    /// the future first runs means no early signal falls to the default action.
    pub fn on_signals(
        self,
        grace: Duration,
    ) -> std::io::Result<impl std::future::Future<Output = ()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            let mut signals = 0;
            loop {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                signals += 1;
                if signals == 1 {
                    tracing::info!(
                        grace_ms = grace.as_millis() as u64,
                        "shutting down: no new claims, waiting for requests in flight"
                    );
                    self.begin(grace);
                } else {
                    tracing::warn!("second signal: abandoning requests in flight");
                    self.abandon.cancel();
                }
            }
        })
    }
}
