//! The `waiting-backlog` scenario (issue 20): a partner back from an outage has its
//! patients' first events in backoff and their later events waiting behind them (per
//! (partner, patient) order). Does that backlog slow a healthy partner's deliveries?
//!
//! The waiting deliveries are made by the daemon's own routing, so each build leaves them
//! as it would (before issue 20: pending, and filtered out again by every claim; after:
//! `waiting`, outside the claim's path). The healthy partner's events are then delivered
//! beside them, and against the same setup without the later events.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::database::{Patients, ENROLLMENT};
use crate::report::{Metric, Target};
use crate::scenarios::{Arrivals, Bench, Until};

/// The partner back from an outage: its own support program, an address nothing answers
/// (it is never asked during the measurement: its first events are in backoff).
const BACK: &str = "back";
const BACK_PROGRAM: &str = "5d1f2a3b-9c8e-4f70-8a6b-2e4c6d8f0a1b";
const BACK_URL: &str = "http://127.0.0.1:9";

impl Bench {
    /// `alone`: the back partner's first events only; `beside_waiting`: with the later
    /// events of the same patients waiting behind them (`waiting_each - 1` each).
    pub(crate) async fn waiting_backlog(&self) -> Result<Vec<Metric>> {
        let healthy = self.sizes.waiting_healthy;
        let patients = self.sizes.waiting_patients;
        let back = format!(
            "[[partners]]\nname = \"{BACK}\"\nsupport_programs = [\"{BACK_PROGRAM}\"]\n\
             enrollment_url = \"{BACK_URL}/webhook/user-enrollment\"\n\
             user_action_url = \"{BACK_URL}/webhook/user-action\"\n\
             signing_secret = \"{}\"\nallow_insecure = true\n",
            crate::daemon::SIGNING_SECRET
        );
        let mut metrics = Vec::new();
        let mut rates = Vec::new();
        for (label, each) in [("alone", 1), ("beside_waiting", self.sizes.waiting_each)] {
            let setup = self
                .setup(&format!("waiting-{label}"), &[self.fast_partner()], &back)
                .await?;
            let db = &setup.db;
            db.seed_events(patients * each, Patients::EventsEach(each), "back-", false)
                .await?;
            db.client
                .execute(
                    "UPDATE dispatcher.outbox
                     SET event = jsonb_set(event, '{supportProgramId}', to_jsonb($1::text))",
                    &[&BACK_PROGRAM],
                )
                .await
                .context("the back partner's program")?;
            // Routed by the daemon itself while the partner is still held (its outage), so
            // nothing is sent; then its first events go into backoff and its circuit closes.
            db.hold_partner(BACK).await?;
            let mut router = self.start_daemon(&setup, 1, None)?;
            let deadline = Instant::now() + self.sizes.deadline;
            while db.unrouted().await? > 0 {
                router.check_running()?;
                if Instant::now() > deadline {
                    bail!("waiting-backlog ({label}): the back partner's events were not routed in time");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            router.stop(Duration::from_secs(30)).await?;
            db.client
                .batch_execute(&format!(
                    "UPDATE dispatcher.deliveries
                     SET due_at = now() + interval '1 hour', attempt_count = 3
                     WHERE partner = '{BACK}' AND event_name = '{ENROLLMENT}';
                     DELETE FROM dispatcher.partner_circuits WHERE partner = '{BACK}'"
                ))
                .await
                .context("the back partner's first events in backoff")?;
            db.seed_routed_backlog(
                "fast",
                healthy,
                Patients::Distinct,
                "healthy-",
                Duration::ZERO,
            )
            .await?;
            db.settle().await?;
            let behind = patients * (each - 1);
            let outcome = self
                .run_dispatcher(
                    &setup,
                    1,
                    Arrivals::Nginx,
                    Until::ended_for("fast", healthy),
                    None,
                )
                .await?;
            self.finish(setup).await?;
            metrics.extend(outcome.metrics(label));
            metrics.push(Metric::new(
                format!("{label}.behind_first_events"),
                "",
                behind as f64,
            ));
            rates.push(outcome.per_second());
        }
        metrics.push(
            Metric::new("beside_waiting_to_alone", "x", rates[1] / rates[0])
                .target(Target::AtLeast(0.9)),
        );
        Ok(metrics)
    }
}
