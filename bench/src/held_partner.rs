//! The `held-partner` scenario: does a partner whose circuit is open, holding a huge
//! backlog of due deliveries, slow the claims of a healthy partner?
//!
//! The held backlog is due earlier than the healthy one, so a claim that reads due
//! deliveries in `due_at` order and skips the held partner's walks past all of them.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::daemon::PartnerSite;
use crate::database::Patients;
use crate::report::{Metric, Target};
use crate::scenarios::{Arrivals, Bench, Legs, Until};

/// The held partner: never reached, its circuit open for the whole run.
const HELD: &str = "held";
const HELD_URL: &str = "http://127.0.0.1:9";
/// How long before the healthy deliveries the held ones fell due.
const HELD_OVERDUE: Duration = Duration::from_secs(3600);

impl Bench {
    /// `alone`: the healthy partner's backlog only; `with_held`: the held partner's
    /// behind it (before it, in due order). Both legs configure both partners, with the
    /// held one's circuit open.
    pub(crate) async fn held_partner(&self) -> Result<Vec<Metric>> {
        let healthy = self.sizes.held_healthy;
        let partners = [
            self.fast_partner(),
            PartnerSite {
                name: HELD.into(),
                base_url: HELD_URL.into(),
                max_in_flight: None,
            },
        ];
        let mut legs = Legs::default();
        for (label, backlog) in [("alone", 0), ("with_held", self.sizes.held_backlog)] {
            let setup = self.setup(&format!("held-{label}"), &partners, "").await?;
            if backlog > 0 {
                setup
                    .db
                    .seed_routed_backlog(HELD, backlog, Patients::Distinct, "held-", HELD_OVERDUE)
                    .await?;
            }
            setup
                .db
                .seed_routed_backlog(
                    "fast",
                    healthy,
                    Patients::Distinct,
                    "healthy-",
                    Duration::ZERO,
                )
                .await?;
            setup.db.hold_partner(HELD).await?;
            setup.db.settle().await?;
            let outcome = self
                .run_dispatcher(
                    &setup,
                    1,
                    Arrivals::Nginx,
                    Until::ended_for("fast", healthy),
                    None,
                )
                .await?;
            // The circuit must have held: otherwise the run measured something else.
            let still_pending = setup.db.count_in_state(HELD, "pending").await?;
            self.finish(setup).await?;
            if still_pending != backlog as i64 {
                bail!(
                    "held-partner ({label}): {still_pending} of the held partner's {backlog} \
                     deliveries still pending: its circuit did not hold"
                );
            }
            legs.ran(label, &outcome);
            legs.push(Metric::new(
                format!("{label}.held_backlog_rows"),
                "",
                backlog as f64,
            ));
        }
        Ok(legs.second_to_first(
            "with_held_to_alone",
            "with_held_to_alone_claim_time",
            Target::AtLeast(0.9),
        ))
    }
}
