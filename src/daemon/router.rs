//! The router: fans new outbox events out into deliveries, one short transaction per
//! batch (`store::outbox`), and wakes the claimer for those it leaves pending. While it
//! keeps up with the outbox, it claims as it inserts them the deliveries a claim would
//! take at once, and starts their attempts itself (see `store::queue::SendNow`); in a
//! burst (a full batch) it leaves them all to the claimer, in due order. A batch
//! PostgreSQL refuses for what one of its events holds is routed again around that
//! event, which ends `invalid` with the database's reason: no event holds up the ones
//! after it. After a burst it asks for the deliveries' statistics to be refreshed
//! (`statistics`, beside it), so the claim's plan keeps up with the backlog; it never
//! waits for that.
//!
//! It also keeps the outbox's wake-up flag (`store::notify`): while it routes it looks
//! again by itself and producers send no NOTIFY; only when it finds nothing does it mark
//! itself waiting and sleep until one, and the first producer to commit then marks it
//! busy and notifies (one NOTIFY per sleep). No committed event is stranded: it sleeps only
//! after `router_may_sleep` said every producer that saw it busy has committed, and one
//! more look found nothing (the argument is in migrations 0006, 0008 and 0015). That last look
//! is made even when another daemon holds the routing lock at that moment: it is tried
//! again until it is made. A wake-up by the poll interval goes through the same steps
//! before it sleeps again, so a producer that marked it busy and rolled back delays the
//! events after it by one poll at most.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::Config;
use crate::delivery::NewDelivery;
use crate::store::db::{self, DbError};
use crate::store::notify;
use crate::store::outbox::{self, Routed, RoutingRound};

use super::recorder::Finished;
use super::slots::Reservations;
use super::Dispatcher;

/// Outbox events routed per transaction.
const ROUTE_BATCH: usize = 1000;
/// In a burst of routing, the deliveries' statistics are refreshed once this many events
/// are routed, then each time the burst doubles (see `super::statistics`).
const STATISTICS_AFTER: usize = 10_000;
/// After a partial batch the router is busy and looks again after this pause, with no
/// NOTIFY, so a steady flow of producers never pays for one. It bounds the wake-up's
/// latency while busy; long enough that each look routes a few events rather than one.
const BUSY_PAUSE: Duration = Duration::from_millis(2);
/// A producer is mid-commit (`router_may_sleep` said false): look again after this. A
/// commit takes a few milliseconds; a producer that holds the wake-up lock longer (its
/// trigger ran at insert under SET CONSTRAINTS ALL IMMEDIATE) is looked at less and less
/// often, up to [`MID_COMMIT_PAUSE_MAX`].
const MID_COMMIT_PAUSE: Duration = Duration::from_millis(2);
const MID_COMMIT_PAUSE_MAX: Duration = Duration::from_millis(100);

/// What the router does after a look at the outbox.
enum Next {
    RouteAgain,
    After(Duration),
    /// Until a NOTIFY from the outbox, the poll interval or shutdown.
    Sleep,
}

/// The look at the outbox that must follow `router_may_sleep`'s true before this daemon
/// sleeps. Another daemon may hold the routing lock at that moment, and its own look may
/// have been taken before a producer that read "busy" committed: then this one must still
/// look, once the lock is free.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LastLook {
    /// None is due (or it has been made).
    Made,
    Due,
    /// Due, and another daemon held the routing lock when it was tried (logged once).
    LockedOut,
}

/// The router's side of the wake-up flag, as far as this daemon knows it.
struct WakeupFlag {
    /// The flag may read waiting: the next batch this daemon routes sets it to busy.
    maybe_waiting: bool,
    /// This daemon routed since `router_may_sleep` last said true (or it has just started,
    /// and the flag may read busy from a daemon that died, or its poll interval woke it,
    /// and it may read busy from a producer that rolled back): it must not sleep on NOTIFY
    /// before it has marked the flag waiting itself, got true, and looked once more.
    /// Whoever sets the flag busy, or routes the event of a producer that did, therefore
    /// keeps looking until it has set it back.
    owes_waiting: bool,
    last_look: LastLook,
    mid_commit_pause: Duration,
}

impl Dispatcher {
    /// Routes until shutdown: at once while batches come back full, after [`BUSY_PAUSE`]
    /// while they come back partial, and when the outbox is empty, after a NOTIFY (sent
    /// only once this router said it waits) or the poll interval, the fallback for all.
    ///
    /// While it keeps up (its last batch was not full), it claims the deliveries it routes
    /// that its daemon can send at once, and starts their attempts itself, each under
    /// `results` like the claimer's; on shutdown it waits for them.
    pub(super) async fn route_events(self: Arc<Self>, results: mpsc::Sender<Finished>) {
        let mut attempts = JoinSet::new();
        let mut keeping_up = true;
        let (mut burst, mut refresh_at) = (0, STATISTICS_AFTER);
        let mut flag = WakeupFlag {
            maybe_waiting: true,
            owes_waiting: true,
            last_look: LastLook::Made,
            mid_commit_pause: MID_COMMIT_PAUSE,
        };
        while !self.shutdown.is_stopping() {
            let config = self.live.snapshot();
            while attempts.try_join_next().is_some() {}
            let round = match self
                .route_batch(&config, keeping_up, &mut attempts, &results)
                .await
            {
                Err(DbError::Query(error)) if db::refused_for_content(&error).is_some() => {
                    self.route_around_refusals(&config).await
                }
                round => round,
            };
            let next = match round {
                Ok(RoutingRound {
                    routed: Routed::Events(count),
                    pending,
                    ..
                }) => {
                    keeping_up = count < ROUTE_BATCH;
                    burst += count;
                    if burst >= refresh_at {
                        // Its own task: the router never waits on an ANALYZE.
                        self.statistics_due.notify_one();
                        refresh_at = burst * 2;
                    }
                    if count < ROUTE_BATCH {
                        (burst, refresh_at) = (0, STATISTICS_AFTER);
                    }
                    self.after_routing(count, pending, &mut flag).await
                }
                // Another daemon routes and marks the flag waiting before it sleeps; marking
                // it here would only make producers notify while that daemon is busy. But a
                // daemon that owes the flag keeps looking: the other may be on its last look
                // before sleeping, leaving this one's "busy" on the flag. So does one whose
                // last look this was. The poll interval covers a daemon that dies while busy.
                Ok(RoutingRound {
                    routed: Routed::ByAnotherDaemon,
                    ..
                }) => {
                    if flag.last_look == LastLook::Due {
                        tracing::debug!("another daemon holds the routing lock at the last look before sleeping; looking again");
                        flag.last_look = LastLook::LockedOut;
                    }
                    match flag.owes_waiting || flag.last_look != LastLook::Made {
                        false => Next::Sleep,
                        true => Next::After(BUSY_PAUSE),
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "routing new events failed; retrying");
                    self.wait_after_db_error(&self.wakeups.outbox).await;
                    continue;
                }
            };
            match next {
                Next::RouteAgain => {}
                Next::After(pause) => tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = self.shutdown.stopping() => {}
                },
                Next::Sleep => {
                    tracing::debug!("waiting for new events");
                    tokio::select! {
                        () = self.wakeups.outbox.notified() => {}
                        // A producer that found this router waiting marks it woken before
                        // its NOTIFY; if it then rolls back, the flag says "busy" with no
                        // router awake. So a router woken by the poll interval says it
                        // waits again even if it finds nothing: one poll puts the flag right.
                        () = tokio::time::sleep(config.dispatch.poll_interval) => flag.owes_waiting = true,
                        () = self.shutdown.stopping() => {}
                    }
                }
            }
        }
        while attempts.join_next().await.is_some() {}
    }

    /// After a look that routed `count` events, leaving `pending` deliveries for a claim:
    /// busy while there were any, otherwise on the way to sleep.
    async fn after_routing(&self, count: usize, pending: usize, flag: &mut WakeupFlag) -> Next {
        flag.last_look = LastLook::Made;
        if pending > 0 {
            self.wakeups.deliveries.notify_one();
        }
        if count > 0 {
            tracing::debug!(events = count, "routed");
            flag.owes_waiting = true;
            flag.mid_commit_pause = MID_COMMIT_PAUSE;
            if flag.maybe_waiting {
                match self
                    .on_client(async |client| notify::router_busy(client).await)
                    .await
                {
                    Ok(()) => flag.maybe_waiting = false,
                    // Producers keep notifying meanwhile: slower, never stranded.
                    Err(error) => tracing::warn!(%error, "cannot mark the router busy"),
                }
            }
            return match count {
                ROUTE_BATCH => Next::RouteAgain,
                _ => Next::After(BUSY_PAUSE),
            };
        }
        if !flag.owes_waiting {
            // Nothing routed since `router_may_sleep` said true and a look found nothing
            // (this is that look, or a NOTIFY that found nothing new): every producer since
            // read "waiting" and notifies, or read "busy" from a daemon that owes, or from
            // a producer that notifies, whose event a daemon routes and then owes
            // (migration 0015; one that rolled back is the poll interval's).
            return Next::Sleep;
        }
        flag.maybe_waiting = true;
        match self
            .on_client(async |client| notify::router_may_sleep(client).await)
            .await
        {
            // Every commit that read "busy" is visible now: one more look.
            Ok(true) => {
                flag.owes_waiting = false;
                flag.last_look = LastLook::Due;
                Next::RouteAgain
            }
            Ok(false) => {
                let pause = flag.mid_commit_pause;
                flag.mid_commit_pause = (pause * 2).min(MID_COMMIT_PAUSE_MAX);
                Next::After(pause)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot mark the router waiting; retrying");
                Next::After(db_retry(&self.live.snapshot()))
            }
        }
    }

    /// Routes up to [`ROUTE_BATCH`] events, in a `route` span. With `claim`, offers to
    /// claim each delivery this daemon can send now (`Reservations`), and starts an
    /// attempt for each the routing claimed.
    async fn route_batch(
        self: &Arc<Self>,
        config: &Config,
        claim: bool,
        attempts: &mut JoinSet<()>,
        results: &mpsc::Sender<Finished>,
    ) -> Result<RoutingRound, DbError> {
        let span = tracing::info_span!(
            "route",
            events = tracing::field::Empty,
            deliveries_claimed = tracing::field::Empty
        );
        async {
            let mut client = self.pool.get().await?;
            let mut reservations = Reservations::default();
            let mut offer =
                |delivery: &NewDelivery| claim && self.reserve(config, &mut reservations, delivery);
            // Taken before the transaction: the lease starts when the database begins it.
            let claimed_at = Instant::now();
            let mut round =
                outbox::route_and_claim(&mut client, config, ROUTE_BATCH, &mut offer).await?;
            drop(client);
            if let Routed::Events(count) = round.routed {
                let events = i64::try_from(count).unwrap_or(i64::MAX);
                tracing::Span::current().record("events", events);
            }
            if !round.claimed.is_empty() {
                let claimed = i64::try_from(round.claimed.len()).unwrap_or(i64::MAX);
                tracing::Span::current().record("deliveries_claimed", claimed);
                self.metrics.claimed(round.claimed.len());
            }
            for delivery in std::mem::take(&mut round.claimed) {
                // Only offered deliveries are claimed, and each offered one has its own.
                let Some((capacity, send_permit)) = reservations.take(delivery.id) else {
                    tracing::error!(delivery_id = %delivery.id,
                        "claimed as routed without a reservation; its lease will return it");
                    continue;
                };
                self.start_attempt(
                    attempts,
                    results,
                    delivery,
                    capacity,
                    Some(send_permit),
                    claimed_at,
                );
            }
            Ok(round)
        }
        .instrument(span)
        .await
    }

    /// Reserves what sending `delivery` at once takes: false when its partner is not
    /// configured, or this daemon has no capacity or that partner no room now.
    fn reserve(
        &self,
        config: &Config,
        reservations: &mut Reservations,
        delivery: &NewDelivery,
    ) -> bool {
        let Some(partner) = delivery
            .partner
            .as_deref()
            .and_then(|name| config.partner(name))
        else {
            return false;
        };
        reservations.reserve(
            delivery.id,
            &self.capacity,
            &self.partner_slots,
            partner,
            &self.breakers,
        )
    }

    /// Routes the batch PostgreSQL just refused around the events it refuses, in a
    /// `route` span: each of those ends `invalid` with the database's reason, logged with
    /// its id and counted.
    async fn route_around_refusals(&self, config: &Config) -> Result<RoutingRound, DbError> {
        let span = tracing::info_span!("route", events = tracing::field::Empty);
        async {
            let mut client = self.pool.get().await?;
            let around =
                outbox::route_new_events_around_refusals(&mut client, config, ROUTE_BATCH).await?;
            for refused in &around.refused {
                tracing::warn!(event_id = refused.event_id, code = %refused.reason.code,
                    reason = %refused.reason.message,
                    "the database refused to store this event's deliveries; ended it invalid");
            }
            self.metrics.events_refused(around.refused.len());
            if let Routed::Events(count) = around.routed {
                let events = i64::try_from(count).unwrap_or(i64::MAX);
                tracing::Span::current().record("events", events);
            }
            Ok(around)
        }
        .instrument(span)
        .await
    }
}

/// How long to wait before trying the flag again after a database error.
fn db_retry(config: &Config) -> Duration {
    config
        .dispatch
        .poll_interval
        .min(crate::store::db::RETRY_AFTER_ERROR)
}
