//! Per-partner circuit breakers: a partner that keeps failing is left alone for a while.
//!
//! After `circuit_breaker_failures` failed attempts in a row (no answer, or an answer
//! that is retried: see [`crate::delivery::outcome`]) a partner's circuit *opens*: the claimer takes
//! none of its deliveries, so they stay pending without spending attempts, leases or
//! capacity. Once `circuit_breaker_cool_down` has passed the circuit is *half-open*: one
//! delivery goes out as a probe. Any answer but a retried one closes the circuit and the
//! backlog drains; a failure opens it for another cool-down. A 400 that rejects one event
//! is the partner answering, so it counts as the partner being up.
//!
//! Each daemon keeps its own breakers in memory and decides alone: no database round trip
//! per attempt or claim, and a daemon that dies leaves nothing held. Changes are written
//! to `dispatcher.partner_circuits` (by `daemon::circuits`, through `store::circuits`),
//! which support, the API and the metrics read and which a daemon starts from after a
//! restart. With several
//! daemons a row holds the latest change any of them made, and a failing partner sees up
//! to N failures and one probe per cool-down from each daemon.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::config::CircuitConfig;
use crate::delivery::outcome::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Deliveries go out as usual.
    Closed,
    /// Deliveries are held until `retry_at`.
    Open,
    /// One probe request is out; the rest are held until it is answered.
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The state [`CircuitState::as_str`] wrote.
    pub fn from_stored(text: &str) -> CircuitState {
        match text {
            "open" => CircuitState::Open,
            "half_open" => CircuitState::HalfOpen,
            // The CHECK constraint allows nothing else.
            _ => CircuitState::Closed,
        }
    }
}

/// One partner's circuit breaker: the state machine, with no I/O, so that what it decides
/// depends only on the outcomes it was told and the time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Breaker {
    state: CircuitState,
    consecutive_failures: u32,
    opened_at: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
    /// Probes let out so far; while half-open, the number of the one out. A probe from an
    /// earlier half-open period that settles or is given back late is told apart by it,
    /// so it cannot open a second probe slot or re-open the circuit of the current one.
    probes: u64,
}

/// Which probe an admission is, by its breaker's count.
type ProbeNumber = u64;

/// How many of a partner's deliveries its breaker lets out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowance {
    Any,
    Probe,
    Held,
}

impl Breaker {
    fn closed() -> Breaker {
        Breaker {
            state: CircuitState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            retry_at: None,
            probes: 0,
        }
    }

    fn allowance(&self, now: DateTime<Utc>) -> Allowance {
        match self.state {
            CircuitState::Closed => Allowance::Any,
            CircuitState::Open if self.retry_at.is_none_or(|at| at <= now) => Allowance::Probe,
            CircuitState::Open | CircuitState::HalfOpen => Allowance::Held,
        }
    }

    /// Lets one delivery out: `Some(Some(n))` when it is probe number `n`, `Some(None)`
    /// when the circuit is closed, `None` when it is held.
    fn admit(&mut self, now: DateTime<Utc>) -> Option<Option<ProbeNumber>> {
        match self.allowance(now) {
            Allowance::Any => Some(None),
            Allowance::Probe => {
                self.state = CircuitState::HalfOpen;
                self.probes = self.probes.wrapping_add(1);
                Some(Some(self.probes))
            }
            Allowance::Held => None,
        }
    }

    /// Whether `probe` is the one out now.
    fn is_current_probe(&self, probe: Option<ProbeNumber>) -> bool {
        self.state == CircuitState::HalfOpen && probe == Some(self.probes)
    }

    /// What an attempt's outcome does to the circuit. A failure of a request sent before
    /// the circuit opened, or of an earlier probe, changes nothing but the count; an
    /// answer closes it whatever request brought it.
    fn settle(
        &mut self,
        failed: bool,
        probe: Option<ProbeNumber>,
        config: &CircuitConfig,
        now: DateTime<Utc>,
    ) {
        if !failed {
            *self = Breaker {
                probes: self.probes,
                ..Breaker::closed()
            };
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let opens = match self.state {
            CircuitState::Closed => self.consecutive_failures >= config.failures,
            CircuitState::HalfOpen => self.is_current_probe(probe),
            CircuitState::Open => false,
        };
        if opens {
            self.state = CircuitState::Open;
            self.opened_at.get_or_insert(now);
            self.retry_at = Some(after(now, config.cool_down));
        }
    }

    /// The probe was never sent (shutdown, an event that cannot be sent): the next claim
    /// may probe with another delivery. An earlier period's probe gives back nothing.
    fn release_probe(&mut self, probe: ProbeNumber) {
        if self.is_current_probe(Some(probe)) {
            self.state = CircuitState::Open;
        }
    }
}

fn after(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(wait)
        .ok()
        .and_then(|wait| now.checked_add_signed(wait))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Every partner's breaker in this daemon, and the changes not yet written to the
/// database. Partners it has heard nothing of are closed.
#[derive(Default)]
pub(crate) struct Breakers {
    inner: Mutex<Registry>,
    changed: Notify,
}

#[derive(Default)]
struct Registry {
    breakers: HashMap<String, Breaker>,
    unwritten: HashSet<String>,
}

impl Breakers {
    /// How many of the partner's deliveries may be claimed now, given its free
    /// `max_in_flight` slots: all of them while closed, one probe once the cool-down is
    /// over, none otherwise.
    pub(crate) fn room(&self, partner: &str, free_slots: usize, now: DateTime<Utc>) -> usize {
        let allowance = self
            .lock()
            .breakers
            .get(partner)
            .map_or(Allowance::Any, |breaker| breaker.allowance(now));
        match allowance {
            Allowance::Any => free_slots,
            Allowance::Probe => free_slots.min(1),
            Allowance::Held => 0,
        }
    }

    /// Lets one claimed delivery of the partner out, or `None` if it must wait.
    pub(crate) fn admit(self: &Arc<Self>, partner: &str, now: DateTime<Utc>) -> Option<Admission> {
        let mut probe = None;
        self.update(partner, |breaker| probe = breaker.admit(now));
        Some(Admission {
            breakers: self.clone(),
            partner: partner.to_string(),
            probe: probe?,
            settled: false,
        })
    }

    /// The next time after `now` an open circuit may probe, so the claimer wakes for it.
    pub(crate) fn next_probe_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.lock()
            .breakers
            .values()
            .filter(|breaker| breaker.state == CircuitState::Open)
            .filter_map(|breaker| breaker.retry_at)
            .filter(|at| *at > now)
            .min()
    }

    /// Starts from the circuits as recorded, so a restart does not forget an open
    /// circuit. A probe that was out when its daemon stopped is due again.
    pub(crate) fn restore(&self, recorded: Vec<PartnerCircuit>) {
        let mut registry = self.lock();
        for circuit in recorded {
            let state = match circuit.state {
                CircuitState::HalfOpen => CircuitState::Open,
                state => state,
            };
            registry.breakers.insert(
                circuit.partner,
                Breaker {
                    state,
                    consecutive_failures: u32::try_from(circuit.consecutive_failures).unwrap_or(0),
                    opened_at: circuit.opened_at,
                    retry_at: circuit.retry_at,
                    probes: 0,
                },
            );
        }
    }

    /// Resolves once a circuit changed since the last [`Breakers::take_changes`] (or at
    /// once if one changed while nobody waited).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The circuits changed since the last call, to be recorded. Those that could not be
    /// written go back with [`Breakers::unwritten`].
    pub(crate) fn take_changes(&self) -> Vec<CircuitChange> {
        let mut registry = self.lock();
        let names: Vec<String> = registry.unwritten.drain().collect();
        names
            .into_iter()
            .map(|partner| {
                let breaker = registry
                    .breakers
                    .get(&partner)
                    .cloned()
                    .unwrap_or_else(Breaker::closed);
                CircuitChange {
                    partner,
                    state: breaker.state,
                    consecutive_failures: breaker.consecutive_failures,
                    opened_at: breaker.opened_at,
                    retry_at: breaker.retry_at,
                }
            })
            .collect()
    }

    /// Changes that were not written: the next write takes their latest state.
    pub(crate) fn unwritten(&self, changes: Vec<CircuitChange>) {
        self.lock()
            .unwritten
            .extend(changes.into_iter().map(|change| change.partner));
    }

    /// Applies `change` to the partner's breaker; logs and queues for writing what changed.
    fn update(&self, partner: &str, change: impl FnOnce(&mut Breaker)) {
        let mut registry = self.lock();
        let breaker = registry
            .breakers
            .entry(partner.to_string())
            .or_insert_with(Breaker::closed);
        let before = breaker.clone();
        change(breaker);
        if *breaker == before {
            return;
        }
        log_transition(partner, &before, breaker);
        registry.unwritten.insert(partner.to_string());
        drop(registry);
        self.changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn log_transition(partner: &str, before: &Breaker, after: &Breaker) {
    let failures = after.consecutive_failures;
    let retry_at = after.retry_at.map(|at| at.to_rfc3339());
    match (before.state, after.state) {
        (CircuitState::Closed, CircuitState::Open) => tracing::warn!(
            partner,
            failures,
            retry_at,
            "circuit open: holding this partner's deliveries until the cool-down is over"
        ),
        (CircuitState::HalfOpen, CircuitState::Open) if failures > before.consecutive_failures => {
            tracing::warn!(
                partner,
                failures,
                retry_at,
                "probe failed: circuit open again"
            )
        }
        (CircuitState::Open, CircuitState::HalfOpen) => {
            tracing::info!(partner, "circuit half-open: sending one probe request")
        }
        (state, CircuitState::Closed) if state != CircuitState::Closed => {
            tracing::info!(partner, "circuit closed: the partner answers again")
        }
        _ => {}
    }
}

/// A claimed delivery the breaker let out. Settle it with the attempt's outcome; dropped
/// unsettled (no request was made), a probe is given back.
pub(crate) struct Admission {
    breakers: Arc<Breakers>,
    partner: String,
    /// Its number when it is a half-open circuit's probe.
    probe: Option<ProbeNumber>,
    settled: bool,
}

impl Admission {
    pub(crate) fn settle(mut self, outcome: &Outcome, config: &CircuitConfig) {
        self.settled = true;
        let failed = matches!(outcome, Outcome::Failed { .. });
        let probe = self.probe;
        self.breakers.update(&self.partner, |breaker| {
            breaker.settle(failed, probe, config, Utc::now())
        });
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let (Some(probe), false) = (self.probe, self.settled) {
            self.breakers
                .update(&self.partner, |breaker| breaker.release_probe(probe));
        }
    }
}

/// A partner's circuit as this daemon changed it, to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitChange {
    pub partner: String,
    pub state: CircuitState,
    pub consecutive_failures: u32,
    pub opened_at: Option<DateTime<Utc>>,
    pub retry_at: Option<DateTime<Utc>>,
}

/// A partner's circuit as last recorded, for support, the API and the metrics.
#[derive(Debug, Clone)]
pub struct PartnerCircuit {
    pub partner: String,
    pub state: CircuitState,
    /// Failed attempts in a row (no answer, or 5xx, 429, 408 and the like).
    pub consecutive_failures: i32,
    /// When the circuit opened; null while closed.
    pub opened_at: Option<DateTime<Utc>>,
    /// When one probe request may go out; null while closed.
    pub retry_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl PartnerCircuit {
    /// Whether the partner's deliveries are being held.
    pub fn is_open(&self) -> bool {
        self.state != CircuitState::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitConfig {
        CircuitConfig {
            failures: 3,
            cool_down: Duration::from_secs(30),
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).expect("valid time")
    }

    fn failed(breaker: &mut Breaker, probe: Option<ProbeNumber>, now: DateTime<Utc>) {
        breaker.settle(true, probe, &config(), now);
    }

    #[test]
    fn opens_after_the_configured_failures_in_a_row_and_an_answer_resets_the_count() {
        let mut breaker = Breaker::closed();
        failed(&mut breaker, None, at(0));
        failed(&mut breaker, None, at(1));
        breaker.settle(false, None, &config(), at(2));
        assert_eq!(
            breaker,
            Breaker::closed(),
            "an answer between failures resets"
        );
        for second in 3..5 {
            failed(&mut breaker, None, at(second));
            assert_eq!(breaker.allowance(at(second)), Allowance::Any);
        }
        failed(&mut breaker, None, at(5));
        assert_eq!(breaker.state, CircuitState::Open);
        assert_eq!(breaker.consecutive_failures, 3);
        assert_eq!(breaker.opened_at, Some(at(5)));
        assert_eq!(breaker.retry_at, Some(at(35)));
    }

    #[test]
    fn holds_for_the_cool_down_then_lets_one_probe_out() {
        let mut breaker = Breaker::closed();
        for second in 0..3 {
            failed(&mut breaker, None, at(second));
        }
        assert_eq!(breaker.allowance(at(31)), Allowance::Held);
        assert_eq!(breaker.admit(at(31)), None);
        assert_eq!(breaker.allowance(at(32)), Allowance::Probe);
        assert_eq!(breaker.admit(at(32)), Some(Some(1)));
        assert_eq!(breaker.state, CircuitState::HalfOpen);
        assert_eq!(breaker.admit(at(33)), None, "only one probe at a time");
    }

    #[test]
    fn a_failed_probe_opens_for_another_cool_down_and_an_answered_one_closes() {
        let mut breaker = Breaker::closed();
        for second in 0..3 {
            failed(&mut breaker, None, at(second));
        }
        assert_eq!(breaker.admit(at(40)), Some(Some(1)));
        failed(&mut breaker, Some(1), at(41));
        assert_eq!(breaker.state, CircuitState::Open);
        assert_eq!(
            breaker.opened_at,
            Some(at(2)),
            "open since the first opening"
        );
        assert_eq!(breaker.retry_at, Some(at(71)));
        assert_eq!(breaker.admit(at(70)), None);
        assert_eq!(breaker.admit(at(71)), Some(Some(2)));
        breaker.settle(false, Some(2), &config(), at(72));
        assert_eq!(
            breaker,
            Breaker {
                probes: 2,
                ..Breaker::closed()
            }
        );
    }

    #[test]
    fn late_failures_of_requests_sent_before_opening_do_not_extend_the_cool_down() {
        let mut breaker = Breaker::closed();
        for second in 0..3 {
            failed(&mut breaker, None, at(second));
        }
        failed(&mut breaker, None, at(10));
        assert_eq!(breaker.retry_at, Some(at(32)));
        assert_eq!(breaker.admit(at(32)), Some(Some(1)));
        failed(&mut breaker, None, at(33));
        assert_eq!(
            breaker.state,
            CircuitState::HalfOpen,
            "not the probe's answer"
        );
    }

    #[test]
    fn a_probe_never_sent_is_given_back() {
        let breakers = Arc::new(Breakers::default());
        for second in 0..3 {
            let admission = breakers.admit("acme", at(second)).expect("closed");
            admission.settle(
                &Outcome::Failed {
                    reason: "HTTP 500".into(),
                    retry_after: None,
                },
                &config(),
            );
        }
        let now = Utc::now() + chrono::Duration::seconds(31);
        assert_eq!(breakers.room("acme", 5, now), 1);
        let probe = breakers.admit("acme", now).expect("the probe");
        assert_eq!(breakers.room("acme", 5, now), 0);
        assert!(breakers.admit("acme", now).is_none());
        drop(probe);
        assert_eq!(breakers.room("acme", 5, now), 1, "the next claim may probe");
        assert_eq!(breakers.room("other", 5, now), 5);
    }

    fn failure() -> Outcome {
        Outcome::Failed {
            reason: "HTTP 503".into(),
            retry_after: None,
        }
    }

    /// A probe goes out; a request sent before the circuit opened answers late, closing
    /// it; the partner fails again and a second probe goes out. Returns both probes and
    /// a time when the second is out.
    fn a_second_half_open_period(
        breakers: &Arc<Breakers>,
    ) -> (Admission, Admission, DateTime<Utc>) {
        let early = breakers.admit("acme", Utc::now()).expect("closed");
        for _ in 0..3 {
            let admission = breakers.admit("acme", Utc::now()).expect("closed");
            admission.settle(&failure(), &config());
        }
        let first = breakers
            .admit("acme", Utc::now() + chrono::Duration::seconds(31))
            .expect("the first probe");
        early.settle(&Outcome::Delivered { external_id: None }, &config());
        for _ in 0..3 {
            let admission = breakers.admit("acme", Utc::now()).expect("closed again");
            admission.settle(&failure(), &config());
        }
        let later = Utc::now() + chrono::Duration::seconds(31);
        let second = breakers.admit("acme", later).expect("the second probe");
        (first, second, later)
    }

    fn state(breakers: &Breakers) -> CircuitState {
        breakers.lock().breakers["acme"].state
    }

    #[test]
    fn an_earlier_probe_given_back_late_does_not_open_a_second_probe_slot() {
        let breakers = Arc::new(Breakers::default());
        let (first, _second, later) = a_second_half_open_period(&breakers);
        drop(first);
        assert_eq!(breakers.room("acme", 5, later), 0, "one probe at a time");
        assert_eq!(state(&breakers), CircuitState::HalfOpen);
    }

    #[test]
    fn an_earlier_probe_failing_late_leaves_the_current_probe_to_decide() {
        let breakers = Arc::new(Breakers::default());
        let (first, second, _) = a_second_half_open_period(&breakers);
        first.settle(&failure(), &config());
        assert_eq!(state(&breakers), CircuitState::HalfOpen, "not re-opened");
        second.settle(&failure(), &config());
        assert_eq!(state(&breakers), CircuitState::Open);
    }

    #[test]
    fn a_rejected_event_is_the_partner_answering() {
        let breakers = Arc::new(Breakers::default());
        let now = Utc::now();
        for _ in 0..2 {
            breakers.admit("acme", now).expect("closed").settle(
                &Outcome::Failed {
                    reason: "timeout".into(),
                    retry_after: None,
                },
                &config(),
            );
        }
        breakers.admit("acme", now).expect("closed").settle(
            &Outcome::Rejected {
                reason: "HTTP 400".into(),
            },
            &config(),
        );
        breakers.admit("acme", now).expect("closed").settle(
            &Outcome::Failed {
                reason: "HTTP 503".into(),
                retry_after: None,
            },
            &config(),
        );
        assert_eq!(breakers.room("acme", 5, now), 5, "still closed");
    }
}
