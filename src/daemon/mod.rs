//! The daemon: the one place that spawns tasks. [`run`] wires what `dispatcher run`
//! needs (signals, SIGHUP reload, the pool, the schema check, metrics, the admin server
//! with its own pool)
//! and hands over to the [`Dispatcher`], which runs the loops that do the work, one file
//! each:
//! - `router`: fans new outbox events out into deliveries, claiming as it inserts them
//!   those it can send at once, and starts their attempts;
//! - `claimer`: claims due deliveries in batches and starts one `attempt` task each;
//! - `recorder`: writes the attempts' resolutions back in batches;
//! - beside them, `pruner` erases and deletes what is past retention, `rescuer` returns
//!   deliveries whose lease ran out, `circuits` records the circuit breakers' changes,
//!   `statistics` refreshes the deliveries' statistics when the router asks, and
//!   `wakeup` listens for NOTIFY to wake the router and the claimer.
//!
//! The rules these loops apply are `delivery`'s, the SQL they run is `store`'s; what
//! lives here is what waits, spawns and shuts down.
//!
//! A semaphore of `concurrency` permits bounds everything in between: a permit is taken
//! per claimed delivery and given back only once its resolution is written, so memory
//! stays bounded however far the outbox runs ahead. No database transaction is open while
//! a request is on the wire.
//!
//! A partner is only claimed from as far as it can send at once: each claim skips the
//! partners whose `max_in_flight` slots (`slots`) are all taken or whose circuit breaker
//! holds them, and takes no more of a partner's deliveries than it has room for. A
//! claimed delivery therefore goes out at once; one that hangs or fails holds only its
//! partner's slots, never capacity or leases the other partners need.
//!
//! Each routing batch and each attempt works on one snapshot of the live configuration,
//! so a reload (SIGHUP) applies from the next one on.

mod attempt;
mod circuits;
mod claimer;
mod pruner;
mod recorder;
mod rescuer;
mod router;
mod slots;
mod statistics;
mod wakeup;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::admin::AdminServer;
use crate::config::live::{LiveConfig, Prepared};
use crate::config::Config;
use crate::delivery::breaker::Breakers;
use crate::http::client::LiveSender;
use crate::observe::metrics::Metrics;
use crate::observe::systemd;
use crate::shutdown::Shutdown;
use crate::store::db::{Client, Pool};
use crate::store::{db, schema};
use slots::PartnerSlots;
use wakeup::Wakeups;

/// Why the dispatcher could not start: its HTTP clients or its listen connection's
/// settings could not be built. Once running, it rides out every error until shutdown.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    HttpClient(#[from] crate::http::client::SenderError),
    #[error(transparent)]
    Db(#[from] db::DbError),
}

/// `dispatcher run`: runs the daemon until SIGTERM or SIGINT, re-reading `config_path`
/// on SIGHUP. Returns once every claim is recorded or handed back.
pub async fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    // Signals first, so a SIGTERM or SIGHUP during start-up is handled too.
    let shutdown = Shutdown::new();
    let grace = config.dispatch.shutdown_grace;
    tokio::spawn(
        shutdown
            .clone()
            .on_signals(grace)
            .context("installing signal handlers")?,
    );
    let live = LiveConfig::new(config, config_path);
    tokio::spawn(
        live.clone()
            .on_reload_signal()
            .context("installing the SIGHUP handler")?,
    );
    let database = &live.snapshot().database;
    let pool = db::daemon_pool(database)?;
    let client = tokio::select! {
        client = pool.get() => client
            .map_err(db::DbError::from)
            .context("connecting to the database")?,
        () = shutdown.stopping() => return Ok(()),
    };
    schema::ensure_current(&client).await?;
    drop(client);
    let metrics = Metrics::new(live.clone());
    let admin = &live.snapshot().admin;
    // Support's questions get connections of their own, so they never take the loops'.
    let support_pool = db::pool(database, admin.pool)?;
    // `[support] database_url`: their reads go to the standby, on the same limits.
    let standby = &live.snapshot().support.standby;
    let standby_pool = standby
        .as_ref()
        .map(|standby| db::standby_pool(standby, admin.pool))
        .transpose()?;
    if standby_pool.is_some() {
        tracing::info!("support's reads go to the standby (support.database_url)");
    }
    let admin = AdminServer::bind(
        admin,
        support_pool,
        standby_pool,
        pool.clone(),
        metrics.clone(),
        live.clone(),
    )
    .await
    .with_context(|| format!("starting the admin server on {}", admin.listen))?;
    let admin = tokio::spawn(admin.serve(shutdown.clone()));
    // Every partner's client is built here; a certificate that cannot be read ends the
    // start before systemd hears the daemon is ready.
    let dispatcher = Dispatcher::new(live.clone(), pool, shutdown.clone(), metrics)?;
    // Ready for systemd (Type=notify): the schema is current, the admin server listens
    // and the partners' clients are built.
    let lifecycle = tokio::spawn(systemd::report_lifecycle(shutdown));
    tracing::info!(
        partners = live.snapshot().partners.len(),
        "dispatcher running"
    );
    dispatcher.run().await?;
    admin.abort();
    // The shutdown has begun, so it is saying STOPPING=1 now; waited for, because a
    // daemon with nothing in flight stops within milliseconds, and the runtime drops a
    // task not yet polled when `main` returns: systemd would never hear it.
    let _ = lifecycle.await;
    Ok(())
}

/// What the daemon's loops share.
pub struct Dispatcher {
    /// Partners, retries, batch size and poll interval are read from it as they are used;
    /// the restart-only settings in it never change (see `config::live`).
    live: LiveConfig,
    pool: Pool,
    sender: Arc<LiveSender>,
    wakeups: Wakeups,
    /// The router asks for the deliveries' statistics to be refreshed (`statistics`).
    statistics_due: Arc<Notify>,
    partner_slots: PartnerSlots,
    breakers: Arc<Breakers>,
    capacity: Arc<Semaphore>,
    shutdown: Shutdown,
    metrics: Metrics,
}

impl Dispatcher {
    pub fn new(
        live: LiveConfig,
        pool: Pool,
        shutdown: Shutdown,
        metrics: Metrics,
    ) -> Result<Arc<Dispatcher>, DispatchError> {
        let config = live.snapshot();
        let sender = Arc::new(LiveSender::new(config.clone())?);
        live.prepare_reloads_with(Box::new({
            let sender = sender.clone();
            move |config| match sender.prepare(config) {
                Ok(put_in_use) => Ok(Box::new(put_in_use) as Prepared),
                Err(error) => Err(error.to_string()),
            }
        }));
        Ok(Arc::new(Dispatcher {
            sender,
            capacity: Arc::new(Semaphore::new(config.dispatch.concurrency)),
            live,
            pool,
            wakeups: Wakeups::default(),
            statistics_due: Arc::new(Notify::new()),
            partner_slots: PartnerSlots::default(),
            breakers: Arc::new(Breakers::default()),
            shutdown,
            metrics,
        }))
    }

    /// Runs until shutdown, then returns once every claim is recorded or handed back.
    pub async fn run(self: Arc<Self>) -> Result<(), DispatchError> {
        let config = self.live.snapshot();
        circuits::load(&self.breakers, &self.pool).await;
        let circuits = tokio::spawn(circuits::record_changes(
            self.breakers.clone(),
            self.pool.clone(),
            self.shutdown.clone(),
        ));
        let listen_config = db::connection_config(&config.database)?;
        let listener = tokio::spawn(wakeup::listen(
            listen_config,
            self.wakeups.clone(),
            self.shutdown.clone(),
        ));

        // Its own task, taking a pool connection per short batch: dispatch never waits on it.
        let pruner = tokio::spawn(pruner::run(
            self.pool.clone(),
            config.retention.clone(),
            self.shutdown.clone(),
        ));
        let statistics = tokio::spawn(statistics::run(
            self.pool.clone(),
            self.statistics_due.clone(),
            self.shutdown.clone(),
        ));
        let rescuer = tokio::spawn(rescuer::run(
            self.pool.clone(),
            self.live.clone(),
            self.metrics.clone(),
            self.wakeups.clone(),
            self.shutdown.clone(),
        ));
        let (results, pending_results) = mpsc::channel(config.dispatch.concurrency);
        let recorder = tokio::spawn(self.clone().record_resolutions(pending_results));
        let router = tokio::spawn(self.clone().route_events(results.clone()));

        self.clone().claim_deliveries(results).await;

        // The claimer and the router drop their senders once every attempt they started
        // finished; the recorder drains what is left and stops.
        let _ = router.await;
        let _ = recorder.await;
        let _ = pruner.await;
        let _ = statistics.await;
        let _ = rescuer.await;
        let _ = circuits.await;
        // What the last attempts did to the circuits; if the database is away, the
        // states stay as last written.
        if let Err(error) = circuits::write_changes(&self.breakers, &self.pool).await {
            tracing::warn!(%error, "cannot record the last circuit breaker states");
        }
        listener.abort();
        tracing::info!("dispatcher stopped");
        Ok(())
    }

    /// [`db::on_client`] on the daemon's pool.
    async fn on_client<T, E: Into<db::DbError>>(
        &self,
        query: impl AsyncFnOnce(&Client) -> Result<T, E>,
    ) -> Result<T, db::DbError> {
        db::on_client(&self.pool, query).await
    }

    /// [`Dispatcher::on_client`] for a statement that needs the connection to itself: a
    /// transaction of its own.
    async fn on_client_mut<T, E: Into<db::DbError>>(
        &self,
        query: impl AsyncFnOnce(&mut Client) -> Result<T, E>,
    ) -> Result<T, db::DbError> {
        db::on_client_mut(&self.pool, query).await
    }

    /// Waits until `wakeup` (which the listener also sends once it is connected again
    /// after an outage), the poll interval, or [`db::RETRY_AFTER_ERROR`], whichever is first.
    async fn wait_after_db_error(&self, wakeup: &Notify) {
        let poll = self.live.snapshot().dispatch.poll_interval;
        tokio::select! {
            () = wakeup.notified() => {}
            () = tokio::time::sleep(poll.min(db::RETRY_AFTER_ERROR)) => {}
            () = self.shutdown.stopping() => {}
        }
    }
}
