//! The daemon's worker pool.
//!
//! Three loops share the work:
//! - the **router** fans new outbox events out into deliveries;
//! - the **claimer** claims due deliveries in batches and starts one attempt task each;
//! - the **recorder** writes the attempts' resolutions back in batches.
//!
//! Beside them, the pruner (`retention`) erases and deletes what is past retention, and
//! the rescuer (`rescue`) returns deliveries whose lease ran out.
//!
//! A semaphore of `concurrency` permits bounds everything in between: a permit is taken
//! per claimed delivery and given back only once its resolution is written, so memory
//! stays bounded however far the outbox runs ahead. No database transaction is open while
//! a request is on the wire.
//!
//! A partner is only claimed from as far as it can send at once: each claim skips the
//! partners whose `max_in_flight` slots are all taken or whose circuit breaker holds them
//! (`breaker`), and takes no more of a partner's deliveries than it has room for. A
//! claimed delivery therefore goes out at once; one that hangs or fails holds only its
//! partner's slots, never capacity or leases the other partners need.
//!
//! Each routing batch and each attempt works on one snapshot of the live configuration,
//! so a reload (SIGHUP) applies from the next one on.

pub(crate) mod rescuer;
pub mod wakeup;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::FutureExt;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_postgres::error::SqlState;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::live::{LiveConfig, Prepared};
use crate::config::{Config, Partner, RetryPolicy};
use crate::contract::payload::{Event, EventKind};
use crate::delivery::breaker::{Admission, Breakers};
use crate::delivery::outcome::Outcome;
use crate::delivery::outcome::{AttemptRecord, Resolution};
use crate::delivery::retry;
use crate::delivery::state::DeliveryState;
use crate::delivery::ClaimedDelivery;
use crate::http::client::LiveSender;
use crate::observe::metrics::{DeliveryLabels, Metrics};
use crate::shutdown::Shutdown;
use crate::store::queue::{self, PartnerRoom};
use crate::store::{db, outbox, retention};
use wakeup::Wakeups;

/// Outbox events routed per transaction.
const ROUTE_BATCH: usize = 1000;
/// Resolutions written per statement.
const RECORD_BATCH: usize = 1000;
/// In a burst of routing, the deliveries' statistics are refreshed once this many events
/// are routed, then each time the burst doubles (see `queue::refresh_statistics`).
const STATISTICS_AFTER: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    HttpClient(#[from] crate::http::client::SenderError),
    #[error(transparent)]
    Db(#[from] db::DbError),
}

/// A claimed delivery's attempt, finished or given up, with the capacity it holds.
struct Finished {
    resolution: Resolution,
    labels: DeliveryLabels,
    _capacity: OwnedSemaphorePermit,
}

/// A partner's `max_in_flight` permits. A reload that changes the limit gets a new
/// semaphore; requests holding the old one finish under it.
struct PartnerSlots {
    limit: usize,
    slots: Arc<Semaphore>,
}

/// What lets a claimed delivery go out now: one of its partner's `max_in_flight` slots and
/// its circuit breaker's admission. Taken as the delivery is claimed, so no claimed
/// delivery waits for its partner.
struct SendPermit {
    _slot: OwnedSemaphorePermit,
    admission: Admission,
}

/// What one turn of the claimer found.
enum ClaimOutcome {
    Claimed,
    EmptyQueue,
}

pub struct Dispatcher {
    /// Partners, retries, batch size and poll interval are read from it as they are used;
    /// the restart-only settings in it never change (see `reload`).
    live: LiveConfig,
    pool: Pool,
    sender: Arc<LiveSender>,
    wakeups: Wakeups,
    /// Per-partner `max_in_flight`, by partner name.
    partner_slots: Mutex<HashMap<String, PartnerSlots>>,
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
            partner_slots: Mutex::new(HashMap::new()),
            breakers: Arc::new(Breakers::default()),
            shutdown,
            metrics,
        }))
    }

    /// Runs until shutdown, then returns once every claim is recorded or handed back.
    pub async fn run(self: Arc<Self>) -> Result<(), DispatchError> {
        let config = self.live.snapshot();
        self.load_circuits().await;
        let circuits = tokio::spawn(
            self.breakers
                .clone()
                .record_changes(self.pool.clone(), self.shutdown.clone()),
        );
        let listen_config = db::connection_config(&config.database)?;
        let listener = tokio::spawn(wakeup::listen(
            listen_config,
            self.wakeups.clone(),
            self.shutdown.clone(),
        ));
        let router = tokio::spawn(self.clone().route_events());
        // Its own task, taking a pool connection per short batch: dispatch never waits on it.
        let pruner = tokio::spawn(retention::run(
            self.pool.clone(),
            config.retention.clone(),
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

        self.clone().claim_deliveries(results).await;

        // The claimer has dropped its sender once every attempt finished; the recorder
        // drains what is left and stops.
        let _ = recorder.await;
        let _ = router.await;
        let _ = pruner.await;
        let _ = rescuer.await;
        let _ = circuits.await;
        // What the last attempts did to the circuits; if the database is away, the
        // states stay as last written.
        if let Err(error) = self.breakers.write_changes(&self.pool).await {
            tracing::warn!(%error, "cannot record the last circuit breaker states");
        }
        listener.abort();
        tracing::info!("dispatcher stopped");
        Ok(())
    }

    /// Starts from the circuits as recorded, so a restart keeps holding a failing
    /// partner. Without the database it starts with every circuit closed.
    async fn load_circuits(&self) {
        let loaded = match self.pool.get().await {
            Ok(client) => self.breakers.load(&client).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = loaded {
            tracing::warn!(%error, "cannot read the recorded circuit breaker states; starting closed");
        }
    }

    async fn route_events(self: Arc<Self>) {
        let (mut burst, mut refresh_at) = (0, STATISTICS_AFTER);
        while !self.shutdown.is_stopping() {
            let config = self.live.snapshot();
            let routed = match self.pool.get().await {
                Ok(mut client) => outbox::route_new_events(&mut client, &config, ROUTE_BATCH)
                    .await
                    .map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            if let Ok(count) = routed {
                burst += count;
                if burst >= refresh_at {
                    self.refresh_statistics().await;
                    refresh_at = burst * 2;
                }
                if count < ROUTE_BATCH {
                    (burst, refresh_at) = (0, STATISTICS_AFTER);
                }
            }
            match routed {
                Ok(count) if count == ROUTE_BATCH => {
                    self.wakeups.deliveries.notify_one();
                    continue;
                }
                Ok(count) => {
                    if count > 0 {
                        tracing::debug!(events = count, "routed");
                        self.wakeups.deliveries.notify_one();
                    }
                    tokio::select! {
                        () = self.wakeups.outbox.notified() => {}
                        () = tokio::time::sleep(config.dispatch.poll_interval) => {}
                        () = self.shutdown.stopping() => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "routing new events failed; retrying");
                    self.wait_after_db_error(&self.wakeups.outbox).await;
                }
            }
        }
    }

    async fn refresh_statistics(&self) {
        let refreshed = match self.pool.get().await {
            Ok(client) => queue::refresh_statistics(&client)
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = refreshed {
            tracing::warn!(%error, "refreshing the statistics of the deliveries failed");
        }
    }

    async fn claim_deliveries(self: Arc<Self>, results: mpsc::Sender<Finished>) {
        let mut attempts = JoinSet::new();
        while !self.shutdown.is_stopping() {
            let outcome = self.try_claim_batch(&mut attempts, &results).await;
            while attempts.try_join_next().is_some() {}
            match outcome {
                Ok(ClaimOutcome::Claimed) => {}
                Ok(ClaimOutcome::EmptyQueue) => self.wait_for_due_deliveries().await,
                Err(error) => {
                    tracing::warn!(%error, "claiming deliveries failed; retrying");
                    self.wait_after_db_error(&self.wakeups.deliveries).await;
                }
            }
        }
        while attempts.join_next().await.is_some() {}
    }

    /// Waits for free capacity, then claims up to that many due deliveries and starts an
    /// attempt for each.
    async fn try_claim_batch(
        self: &Arc<Self>,
        attempts: &mut JoinSet<()>,
        results: &mpsc::Sender<Finished>,
    ) -> Result<ClaimOutcome, db::DbError> {
        let Some(mut permits) = self.reserve_capacity().await else {
            return Ok(ClaimOutcome::EmptyQueue);
        };
        let client = self.pool.get().await?;
        let config = self.live.snapshot();
        let room = self.partner_room(&config);
        // Taken before the query: the lease starts when the database runs it.
        let claimed_at = Instant::now();
        let claim = queue::claim_due(&client, permits.len(), config.dispatch.lease, &room).await?;
        drop(client);
        let claimed = claim.deliveries;
        if claimed.is_empty() {
            // Ending a delivery whose body was gone may have let a later one fall due.
            return Ok(match claim.ended_without_body {
                0 => ClaimOutcome::EmptyQueue,
                _ => ClaimOutcome::Claimed,
            });
        }
        tracing::debug!(count = claimed.len(), "claimed deliveries");
        self.metrics.claimed(claimed.len());
        for delivery in claimed {
            let Some(permit) = permits.pop() else { break };
            let send_permit = config
                .partner(&delivery.partner)
                .and_then(|partner| self.send_permit(partner));
            let dispatcher = self.clone();
            let results = results.clone();
            attempts.spawn(async move {
                let labels = DeliveryLabels::of(&delivery);
                let resolution = dispatcher
                    .attempt_delivery(&delivery, &labels, claimed_at, send_permit)
                    .await;
                let _ = results
                    .send(Finished {
                        resolution,
                        labels,
                        _capacity: permit,
                    })
                    .await;
            });
        }
        Ok(ClaimOutcome::Claimed)
    }

    /// How many deliveries each configured partner can send now. (A partner no longer
    /// configured is not listed: its deliveries are claimed to be postponed.)
    fn partner_room(&self, config: &Config) -> Vec<PartnerRoom> {
        let now = Utc::now();
        config
            .partners
            .iter()
            .map(|partner| PartnerRoom {
                partner: partner.name.clone(),
                free: self.breakers.room(
                    &partner.name,
                    self.partner_slots(partner).available_permits(),
                    now,
                ),
            })
            .collect()
    }

    /// A slot and the breaker's admission for a delivery just claimed; `None` when the partner
    /// cannot send it after all (a reload shrank its slots, or its circuit just opened).
    fn send_permit(&self, partner: &Partner) -> Option<SendPermit> {
        let slot = self.partner_slots(partner).try_acquire_owned().ok()?;
        let admission = self.breakers.admit(&partner.name, Utc::now())?;
        Some(SendPermit {
            _slot: slot,
            admission,
        })
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

    /// Up to `batch_size` capacity permits; waits for at least one. `None` on shutdown.
    async fn reserve_capacity(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = tokio::select! {
            permit = self.capacity.clone().acquire_owned() => permit.ok()?,
            () = self.shutdown.stopping() => return None,
        };
        let mut permits = vec![first];
        let batch_size = self.live.snapshot().dispatch.batch_size;
        while permits.len() < batch_size {
            match self.capacity.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    /// Sleeps until a notification, the next retry falling due, an open circuit's probe,
    /// or the poll interval.
    async fn wait_for_due_deliveries(&self) {
        let poll = self.live.snapshot().dispatch.poll_interval;
        let until_due = match self.pool.get().await {
            Ok(client) => queue::until_next_due(&client).await.ok().flatten(),
            Err(_) => None,
        };
        // The breakers keep their own (the daemon's) time.
        let now = Utc::now();
        let until_probe = self
            .breakers
            .next_probe_after(now)
            .and_then(|probe| (probe - now).to_std().ok());
        let wait = until_due
            .into_iter()
            .chain(until_probe)
            .min()
            .map_or(poll, |wait| wait.min(poll));
        tokio::select! {
            () = self.wakeups.deliveries.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = self.shutdown.stopping() => {}
        }
    }

    /// One attempt at one delivery, from the stored event to its resolution.
    async fn attempt_delivery(
        &self,
        delivery: &ClaimedDelivery,
        labels: &DeliveryLabels,
        claimed_at: Instant,
        mut permit: Option<SendPermit>,
    ) -> Resolution {
        let span = tracing::info_span!(
            "attempt",
            delivery_id = %delivery.id,
            event_id = delivery.event_id,
            partner = %delivery.partner,
            attempt = delivery.attempts_used + 1,
            outcome = tracing::field::Empty,
            http_status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let (started_at, started) = (Utc::now(), Instant::now());
        // Unwind safety: after a panic only `permit` is used again, and settling it is
        // what the panic path is for.
        let attempt = AssertUnwindSafe(self.try_attempt(delivery, claimed_at, &mut permit))
            .catch_unwind()
            .instrument(span.clone())
            .await;
        let resolution = attempt.unwrap_or_else(|_| {
            span.in_scope(|| {
                self.internal_failure(delivery, permit.take(), started_at, started.elapsed())
            })
        });
        span.record("outcome", resolution.state.as_str());
        if let Some(attempt) = &resolution.attempt {
            span.record("duration_ms", attempt.duration.as_millis() as u64);
            if let Some(status) = attempt.http_status {
                span.record("http_status", status);
            }
            self.metrics.attempt_made(labels, attempt);
        }
        // One line per attempt, carrying the span's fields: the audit trail of what was sent.
        span.in_scope(|| match resolution.state {
            DeliveryState::Delivered => tracing::info!("delivered"),
            DeliveryState::Pending if resolution.attempt.is_some() => {
                tracing::info!("attempt failed; will retry")
            }
            DeliveryState::Pending => tracing::debug!("handed back"),
            _ => tracing::warn!("delivery ended without success"),
        });
        resolution
    }

    /// `permit` is taken (and its breaker admission settled) once the partner has
    /// answered or the request failed; while it is still there, nothing was settled.
    async fn try_attempt(
        &self,
        delivery: &ClaimedDelivery,
        claimed_at: Instant,
        permit: &mut Option<SendPermit>,
    ) -> Resolution {
        let config = self.live.snapshot();
        let Some(partner) = config.partner(&delivery.partner) else {
            // Removed from dispatcher.toml while deliveries were pending: keep them until
            // ops restore the partner or support cancels them.
            return postpone(
                delivery,
                config.retry.max_delay,
                format!("partner `{}` is not in the configuration", delivery.partner),
            );
        };
        let Some(kind) = EventKind::from_name(&delivery.event_name) else {
            return invalid(
                delivery,
                format!(
                    "event_name `{}` is not an event of the contract",
                    delivery.event_name
                ),
            );
        };
        let mut event = match Event::parse(kind, &delivery.event) {
            Ok(event) => event,
            Err(reason) => return invalid(delivery, reason.0),
        };
        if let Some(external_id) = &delivery.external_id {
            event.merge_external_id(&partner.name, external_id);
        }
        let url = match kind {
            EventKind::Enrollment => &partner.enrollment_url,
            EventKind::ViewedTracker => &partner.user_action_url,
        };

        if permit.is_none() {
            return hand_back(delivery);
        }
        // Sending this late could outlive the lease and race another daemon's claim.
        if self.shutdown.is_stopping() || claimed_at.elapsed() >= config.dispatch.latest_send() {
            return hand_back(delivery);
        }
        // Where the tests make an attempt panic (`--features failpoints`, FAILPOINTS=attempt=panic).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("attempt");

        let sent_at = Utc::now();
        let body = event.to_body(sent_at);
        let started = Instant::now();
        let webhook_id = delivery.id.to_string();
        let sender = self.sender.for_config(&config);
        let answer = tokio::select! {
            answer = sender.post(partner, url, &webhook_id, body, sent_at) => answer,
            () = self.shutdown.abandoning() => return hand_back(delivery),
        };
        let duration = started.elapsed();
        let (outcome, attempt) = match answer {
            Ok(answer) => (
                Outcome::of_answer(&answer),
                AttemptRecord {
                    started_at: sent_at,
                    duration,
                    http_status: Some(answer.status),
                    error_kind: answer.body_error.as_ref().map(|_| "response_body"),
                    error: answer.body_error.clone(),
                    response_body: (!answer.body.is_empty())
                        .then(|| String::from_utf8_lossy(&answer.body).into_owned()),
                },
            ),
            Err(error) => (
                Outcome::of_transport_error(&error),
                AttemptRecord {
                    started_at: sent_at,
                    duration,
                    http_status: None,
                    error_kind: Some(error.kind.as_str()),
                    error: Some(error.message.clone()),
                    response_body: None,
                },
            ),
        };
        if let Some(permit) = permit.take() {
            permit.admission.settle(&outcome, &partner.circuit);
        }
        resolve(delivery, &config.retry, outcome, attempt)
    }

    /// A panic in an attempt is a bug of ours, yet the request may have gone out: it costs
    /// the delivery an attempt (error kind `internal`) and counts against the partner's
    /// circuit like any failure. So a bug that hits every attempt ends deliveries `dead`
    /// and holds the partner, visibly, instead of losing them to expired leases.
    fn internal_failure(
        &self,
        delivery: &ClaimedDelivery,
        permit: Option<SendPermit>,
        started_at: DateTime<Utc>,
        duration: Duration,
    ) -> Resolution {
        tracing::error!("internal error in the attempt (a panic); recorded as a failed attempt");
        let config = self.live.snapshot();
        let outcome = Outcome::Failed {
            reason: "internal error in the dispatcher (see its log)".to_string(),
            retry_after: None,
        };
        if let (Some(permit), Some(partner)) = (permit, config.partner(&delivery.partner)) {
            permit.admission.settle(&outcome, &partner.circuit);
        }
        let attempt = AttemptRecord {
            started_at,
            duration,
            http_status: None,
            error_kind: Some("internal"),
            error: None,
            response_body: None,
        };
        resolve(delivery, &config.retry, outcome, attempt)
    }

    /// The partner's `max_in_flight` semaphore, new if a reload changed the limit.
    fn partner_slots(&self, partner: &Partner) -> Arc<Semaphore> {
        let mut all = self
            .partner_slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match all.get(&partner.name) {
            Some(current) if current.limit == partner.max_in_flight => current.slots.clone(),
            _ => {
                let slots = Arc::new(Semaphore::new(partner.max_in_flight));
                all.insert(
                    partner.name.clone(),
                    PartnerSlots {
                        limit: partner.max_in_flight,
                        slots: slots.clone(),
                    },
                );
                slots
            }
        }
    }

    async fn record_resolutions(self: Arc<Self>, mut pending: mpsc::Receiver<Finished>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while pending.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            self.write_resolutions(&batch).await;
            // Dropping the batch frees its capacity for the claimer.
            batch.clear();
            self.wakeups.deliveries.notify_one();
        }
    }

    /// Writes one batch. If the database refuses it, writes the rows one by one, so a
    /// single bad row holds up nothing else; a refused row's delivery is sent again after
    /// its lease.
    async fn write_resolutions(&self, batch: &[Finished]) {
        // Borrowed, not cloned: a resolution may carry a 16 KiB answer.
        let resolutions: Vec<&Resolution> =
            batch.iter().map(|finished| &finished.resolution).collect();
        let mut written = HashSet::new();
        let mut refused = Vec::new();
        let give_up_at = Instant::now() + self.live.snapshot().dispatch.lease;
        match self.write_until_stored(&resolutions, give_up_at).await {
            Ok(ids) => written.extend(ids),
            // A row refused for what it holds refuses its whole batch: one by one, the
            // others are written; none is tried past the lease (it would be stale).
            Err(error) if resolutions.len() > 1 && !error.passing => {
                for resolution in &resolutions {
                    let result = if Instant::now() < give_up_at {
                        self.write_until_stored(std::slice::from_ref(resolution), give_up_at)
                            .await
                    } else {
                        Err(RefusedWrite::lease_over())
                    };
                    match result {
                        Ok(ids) => written.extend(ids),
                        Err(error) => refused.push((*resolution, error)),
                    }
                }
            }
            Err(error) => refused.extend(resolutions.iter().map(|r| (*r, error.clone()))),
        }
        for (resolution, error) in refused {
            tracing::error!(delivery_id = %resolution.delivery_id, code = %error.code, reason = %error.message,
                "the database refused this result; the delivery will be sent again after its lease");
        }
        // Counted once stored: a stale result the database discarded ended nothing.
        for finished in batch {
            if written.contains(&finished.resolution.delivery_id) {
                self.metrics
                    .resolution_recorded(&finished.labels, finished.resolution.state);
            }
        }
    }

    /// Writes resolutions, retrying while the database is unreachable, and while it fails
    /// the statement for a passing reason ([`is_transient`]) until `give_up_at` (the
    /// lease: a result written later would be stale anyway). If the database stays away
    /// past the shutdown grace period the results are dropped: the leases run out and
    /// the deliveries are sent again, never lost. Returns the ids written; Err when the
    /// database refuses the statement, or keeps failing it past `give_up_at`.
    async fn write_until_stored(
        &self,
        resolutions: &[&Resolution],
        give_up_at: Instant,
    ) -> Result<Vec<Uuid>, RefusedWrite> {
        let mut delay = Duration::from_millis(50);
        loop {
            let error = match self.pool.get().await {
                Err(error) => error.to_string(),
                Ok(client) => match queue::record(&client, resolutions).await {
                    Ok(ids) => {
                        for resolution in
                            resolutions.iter().filter(|r| !ids.contains(&r.delivery_id))
                        {
                            tracing::warn!(delivery_id = %resolution.delivery_id,
                                "result discarded: the claim was no longer current (lease expired or cancelled)");
                        }
                        return Ok(ids);
                    }
                    Err(error) => match error.as_db_error() {
                        Some(refused)
                            if !is_transient(refused.code()) || Instant::now() >= give_up_at =>
                        {
                            return Err(RefusedWrite {
                                code: refused.code().code().to_string(),
                                message: refused.message().to_string(),
                                passing: is_transient(refused.code()),
                            })
                        }
                        _ => error.to_string(),
                    },
                },
            };
            if self.shutdown.is_abandoning() {
                tracing::error!(%error, count = resolutions.len(),
                    "cannot record results before exiting; these deliveries will be sent again after their lease");
                return Ok(Vec::new());
            }
            tracing::warn!(%error, count = resolutions.len(), "recording results failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.abandoning() => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Why results were not written: the database refused the statement for what it holds,
/// or failed it for a reason that passes ([`is_transient`]) until the lease ran out.
/// (While it is unreachable, results are held instead: see `write_until_stored`.)
#[derive(Clone)]
struct RefusedWrite {
    code: String,
    message: String,
    /// The error would pass, but the lease ran out while it lasted.
    passing: bool,
}

impl RefusedWrite {
    fn lease_over() -> RefusedWrite {
        RefusedWrite {
            code: "-".to_string(),
            message: "the lease ran out before the result could be written".to_string(),
            passing: true,
        }
    }
}

/// Errors that say nothing about the rows: the same write may well succeed when tried
/// again, so a result is not given up for one of them while its lease lasts. Everything
/// else (a value PostgreSQL cannot store, a broken constraint) is a refusal of the rows.
fn is_transient(code: &SqlState) -> bool {
    const PASSING: [SqlState; 16] = [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        // statement_timeout, or a cancel by ops
        SqlState::QUERY_CANCELED,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::CONNECTION_EXCEPTION,
        SqlState::CONNECTION_DOES_NOT_EXIST,
        SqlState::CONNECTION_FAILURE,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::DISK_FULL,
        SqlState::OUT_OF_MEMORY,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::OBJECT_IN_USE,
        // A failover left the pool on a standby for a moment.
        SqlState::READ_ONLY_SQL_TRANSACTION,
        SqlState::IO_ERROR,
    ];
    PASSING.contains(code)
}

/// The delivery's next state after an attempt. A retry's time is a delay, counted by
/// the database's clock when the result is recorded: the claim compares `due_at` with
/// the database's `now()`, and the daemon's clock may differ from it.
fn resolve(
    delivery: &ClaimedDelivery,
    policy: &RetryPolicy,
    outcome: Outcome,
    mut attempt: AttemptRecord,
) -> Resolution {
    let attempts_used = delivery.attempts_used + 1;
    let mut resolution = Resolution {
        delivery_id: delivery.id,
        claim_token: delivery.claim_token,
        state: DeliveryState::Delivered,
        due_in: None,
        last_error: None,
        attempt: None,
        learned_external_id: None,
    };
    match outcome {
        Outcome::Delivered { external_id } => {
            resolution.learned_external_id = external_id;
        }
        Outcome::Rejected { reason } => {
            resolution.state = DeliveryState::Rejected;
            attempt.error.get_or_insert_with(|| reason.clone());
            resolution.last_error = Some(reason);
        }
        Outcome::Failed {
            reason,
            retry_after,
        } => {
            attempt.error.get_or_insert_with(|| reason.clone());
            if policy.is_exhausted(attempts_used) {
                resolution.state = DeliveryState::Dead;
                resolution.last_error =
                    Some(format!("{reason} (gave up after {attempts_used} attempts)"));
            } else {
                let scheduled = policy.delay_after(attempts_used, retry::draw_jitter());
                let asked = retry_after.map_or(Duration::ZERO, |asked| asked.min(policy.max_delay));
                resolution.state = DeliveryState::Pending;
                resolution.due_in = Some(scheduled.max(asked));
                resolution.last_error = Some(reason);
            }
        }
    }
    resolution.attempt = Some(attempt);
    resolution
}

/// Gives the claim back unattempted, due again after `wait`.
fn postpone(delivery: &ClaimedDelivery, wait: Duration, reason: String) -> Resolution {
    Resolution {
        due_in: Some(wait),
        last_error: Some(reason),
        ..hand_back(delivery)
    }
}

/// The stored event breaks the contract: it is never sent.
fn invalid(delivery: &ClaimedDelivery, reason: String) -> Resolution {
    Resolution {
        state: DeliveryState::Invalid,
        due_in: None,
        last_error: Some(reason),
        ..hand_back(delivery)
    }
}

/// Gives an unstarted claim back: due again at once, no attempt counted.
fn hand_back(delivery: &ClaimedDelivery) -> Resolution {
    Resolution {
        delivery_id: delivery.id,
        claim_token: delivery.claim_token,
        state: DeliveryState::Pending,
        due_in: Some(Duration::ZERO),
        last_error: None,
        attempt: None,
        learned_external_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_retried_through_errors_that_pass_and_given_up_only_for_its_content() {
        for passing in [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::QUERY_CANCELED, // statement_timeout
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::DISK_FULL,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ] {
            assert!(is_transient(&passing), "{} is retried", passing.code());
        }
        for refusal in [
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::UNTRANSLATABLE_CHARACTER,
            SqlState::STRING_DATA_RIGHT_TRUNCATION,
            SqlState::CHECK_VIOLATION,
            SqlState::FOREIGN_KEY_VIOLATION,
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        ] {
            assert!(!is_transient(&refusal), "{} is a refusal", refusal.code());
        }
    }
}
