//! Prometheus metrics: what ops graph and alert on.
//!
//! Counters and histograms are fed by the dispatcher as it works. The queue gauges
//! (pending, in flight, oldest due, per partner) are read from the database by one grouped
//! query at each scrape, so they cost nothing per delivery and are right when several
//! daemons share the database; so are the circuit breakers' states, as last recorded. The
//! pool gauges are read from the pool at each scrape.
//!
//! Labels are partner names, contract event names, outcomes and status classes: never a
//! patient id or anything from a body.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::live::LiveConfig;
use crate::contract::payload::EventKind;

use crate::delivery::outcome::AttemptRecord;
use crate::delivery::state::DeliveryState;
use crate::delivery::ClaimedDelivery;
use crate::store::circuits;
use crate::store::db::{DbError, Pool};
use crate::store::queue;

/// The `Content-Type` of [`Metrics::render`]'s text (OpenMetrics, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A scrape must answer even when the database does not: past this the queue gauges are
/// left out and `dispatcher_database_up` is 0.
const QUEUE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Request durations, seconds: from a fast local partner to a request timeout.
const ATTEMPT_DURATION_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// The daemon's metrics. Create one in `main`, give a clone to the dispatcher and one to
/// whatever serves `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    live: LiveConfig,
    deliveries_ended: Family<EndedLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: Family<PartnerLabels, Histogram, fn() -> Histogram>,
    claim_batch_size: Histogram,
    leases_expired: Family<PartnerLabels, Counter>,
    events_refused: Counter,
    pending: Family<PartnerLabels, Gauge>,
    in_flight: Family<PartnerLabels, Gauge>,
    oldest_due_age: Family<PartnerLabels, Gauge<f64, AtomicU64>>,
    circuit_open: Family<PartnerLabels, Gauge>,
    database_up: Gauge,
    pool_size: Gauge,
    pool_available: Gauge,
    pool_waiting: Gauge,
    /// One scrape at a time: each clears and refills the queue gauges.
    scrape: tokio::sync::Mutex<()>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerLabels {
    partner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabels {
    partner: String,
    event_name: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    partner: String,
    event_name: &'static str,
    status_class: &'static str,
}

/// What the metrics know of a claimed delivery: its partner and its kind of event.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryLabels {
    partner: String,
    event_name: &'static str,
}

impl DeliveryLabels {
    pub(crate) fn of(delivery: &ClaimedDelivery) -> DeliveryLabels {
        DeliveryLabels::new(&delivery.partner, &delivery.event_name)
    }

    pub(crate) fn new(partner: &str, event_name: &str) -> DeliveryLabels {
        DeliveryLabels {
            partner: partner.to_string(),
            // The outbox column is free text; only the contract's names become labels.
            event_name: EventKind::from_name(event_name).map_or("unknown", EventKind::name),
        }
    }
}

fn attempt_duration_histogram() -> Histogram {
    Histogram::new(ATTEMPT_DURATION_BUCKETS)
}

impl Metrics {
    /// `live` tells which partners to report zeros for when they have nothing queued.
    pub fn new(live: LiveConfig) -> Metrics {
        let mut registry = Registry::with_prefix("dispatcher");
        let deliveries_ended = Family::default();
        registry.register(
            "deliveries_ended",
            "Deliveries ended by outcome: delivered, rejected, dead, invalid",
            deliveries_ended.clone(),
        );
        let attempts = Family::default();
        registry.register(
            "attempts",
            "Requests made to partners, by status class (2xx, 3xx, 4xx, 5xx) or transport error (timeout, connect, response_body, request)",
            attempts.clone(),
        );
        let attempt_duration =
            Family::new_with_constructor(attempt_duration_histogram as fn() -> Histogram);
        registry.register(
            "attempt_duration_seconds",
            "How long requests to partners took, answer read included",
            attempt_duration.clone(),
        );
        let claim_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "claim_batch_size",
            "Deliveries taken per claim that found any",
            claim_batch_size.clone(),
        );
        let leases_expired = Family::default();
        registry.register(
            "leases_expired",
            "Claims whose lease ran out with no result recorded (a daemon died or lost the database); each delivery is sent again, or dead if that was its last attempt",
            leases_expired.clone(),
        );
        let events_refused = Counter::default();
        registry.register(
            "events_refused",
            "Outbox events whose deliveries PostgreSQL refused to store (a value too large to index, a constraint); each ended invalid with the database's reason, and the events after it were routed",
            events_refused.clone(),
        );
        let pending = Family::default();
        registry.register(
            "deliveries_pending",
            "Deliveries waiting for their next attempt (all daemons)",
            pending.clone(),
        );
        let in_flight = Family::default();
        registry.register(
            "deliveries_in_flight",
            "Deliveries claimed and not yet recorded (all daemons)",
            in_flight.clone(),
        );
        let oldest_due_age = Family::default();
        registry.register(
            "oldest_due_delivery_age_seconds",
            "How long the oldest due delivery has waited past its due time",
            oldest_due_age.clone(),
        );
        let circuit_open = Family::default();
        registry.register(
            "partner_circuit_open",
            "1 while the partner's circuit breaker holds its deliveries (open, or half-open with one probe out)",
            circuit_open.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "1 when this scrape could read the delivery queue from the database",
            database_up.clone(),
        );
        let pool_size = Gauge::default();
        registry.register(
            "db_pool_size",
            "Database connections open in the pool",
            pool_size.clone(),
        );
        let pool_available = Gauge::default();
        registry.register(
            "db_pool_available",
            "Database connections idle in the pool",
            pool_available.clone(),
        );
        let pool_waiting = Gauge::default();
        registry.register(
            "db_pool_waiting",
            "Tasks waiting for a database connection",
            pool_waiting.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                live,
                deliveries_ended,
                attempts,
                attempt_duration,
                claim_batch_size,
                leases_expired,
                events_refused,
                pending,
                in_flight,
                oldest_due_age,
                circuit_open,
                database_up,
                pool_size,
                pool_available,
                pool_waiting,
                scrape: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The text exposition of every metric, with the queue and pool gauges read now.
    pub async fn render(&self, pool: &Pool) -> Result<String, MetricsError> {
        let _one_scrape_at_a_time = self.inner.scrape.lock().await;
        self.read_pool(pool);
        self.read_queue(pool).await;
        let mut text = String::new();
        encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }

    /// A claim took `count` deliveries.
    pub(crate) fn claimed(&self, count: usize) {
        self.inner.claim_batch_size.observe(count as f64);
    }

    /// A request was made (whatever came of it).
    pub(crate) fn attempt_made(&self, delivery: &DeliveryLabels, attempt: &AttemptRecord) {
        let status_class = match (attempt.http_status, attempt.error_kind) {
            (Some(status), _) => status_class(status),
            (None, Some(kind)) => kind,
            (None, None) => "unknown",
        };
        self.inner
            .attempts
            .get_or_create(&AttemptLabels {
                partner: delivery.partner.clone(),
                event_name: delivery.event_name,
                status_class,
            })
            .inc();
        self.inner
            .attempt_duration
            .get_or_create(&PartnerLabels {
                partner: delivery.partner.clone(),
            })
            .observe(attempt.duration.as_secs_f64());
    }

    /// The rescuer returned a delivery whose lease ran out; `state` is what it left.
    pub(crate) fn lease_expired(&self, delivery: &DeliveryLabels, state: DeliveryState) {
        self.inner
            .leases_expired
            .get_or_create(&PartnerLabels {
                partner: delivery.partner.clone(),
            })
            .inc();
        self.resolution_recorded(delivery, state);
    }

    /// Routing ended `count` events invalid because PostgreSQL refused their deliveries.
    pub(crate) fn events_refused(&self, count: usize) {
        self.inner
            .events_refused
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// A resolution was written; counts it if it ended the delivery.
    pub(crate) fn resolution_recorded(&self, delivery: &DeliveryLabels, state: DeliveryState) {
        let outcome = match state {
            DeliveryState::Delivered
            | DeliveryState::Rejected
            | DeliveryState::Dead
            | DeliveryState::Invalid => state.as_str(),
            _ => return,
        };
        self.inner
            .deliveries_ended
            .get_or_create(&EndedLabels {
                partner: delivery.partner.clone(),
                event_name: delivery.event_name,
                outcome,
            })
            .inc();
    }

    fn read_pool(&self, pool: &Pool) {
        let status = pool.status();
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.inner.pool_size.set(gauge(status.size));
        self.inner.pool_available.set(gauge(status.available));
        self.inner.pool_waiting.set(gauge(status.waiting));
    }

    async fn read_queue(&self, pool: &Pool) {
        let inner = &self.inner;
        let read = tokio::time::timeout(QUEUE_READ_TIMEOUT, async {
            let client = pool.get().await?;
            let queue = queue::queue_by_partner(&client).await?;
            let circuits = circuits::recorded(&client).await?;
            Ok::<_, DbError>((queue, circuits))
        })
        .await;
        inner.pending.clear();
        inner.in_flight.clear();
        inner.oldest_due_age.clear();
        inner.circuit_open.clear();
        let (queue, circuits) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                tracing::warn!(%error, "metrics: cannot read the delivery queue");
                inner.database_up.set(0);
                return;
            }
            Err(_) => {
                tracing::warn!("metrics: reading the delivery queue timed out");
                inner.database_up.set(0);
                return;
            }
        };
        inner.database_up.set(1);
        // Zeros for configured partners with nothing queued, so their series do not vanish.
        let config = inner.live.snapshot();
        let queued: HashSet<&str> = queue.iter().map(|q| q.partner.as_str()).collect();
        for partner in config
            .partners
            .iter()
            .filter(|p| !queued.contains(p.name.as_str()))
        {
            let labels = PartnerLabels {
                partner: partner.name.clone(),
            };
            inner.pending.get_or_create(&labels).set(0);
            inner.in_flight.get_or_create(&labels).set(0);
            inner.oldest_due_age.get_or_create(&labels).set(0.0);
        }
        for partner in &config.partners {
            let labels = PartnerLabels {
                partner: partner.name.clone(),
            };
            inner.circuit_open.get_or_create(&labels).set(0);
        }
        for circuit in circuits {
            let labels = PartnerLabels {
                partner: circuit.partner.clone(),
            };
            inner
                .circuit_open
                .get_or_create(&labels)
                .set(i64::from(circuit.is_open()));
        }
        for partner in queue {
            let labels = PartnerLabels {
                partner: partner.partner,
            };
            inner.pending.get_or_create(&labels).set(partner.pending);
            inner
                .in_flight
                .get_or_create(&labels)
                .set(partner.in_flight);
            inner
                .oldest_due_age
                .get_or_create(&labels)
                .set(partner.oldest_due_seconds.max(0.0));
        }
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}
