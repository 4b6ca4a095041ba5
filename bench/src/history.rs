//! The `history` scenario (issue 22): does the history support keeps (ended deliveries,
//! with their attempts, for `metadata_days`) slow the queue? A claim should cost the same
//! beside a year of it as beside none.
//!
//! The history is older than the backlog, as it is in production: its ids (time-ordered)
//! come before every delivery due, so a plan that walks the primary key in order reads
//! the whole history before it reaches the first due delivery. It is another partner's
//! (`archived`, no longer configured), so that the run counts only the backlog's
//! deliveries; the tables and indexes hold it all the same. Patients' ids are scattered
//! (a hash), as real ones are: a new delivery's entry in each index keyed by patient lands
//! among the history's, on a leaf page of its own, so the measured window (which starts
//! at a checkpoint) pays the page images a large history costs each write.

use std::time::Duration;

use anyhow::Result;

use crate::database::Patients;
use crate::report::{Metric, Target};
use crate::scenarios::{Arrivals, Bench, Legs, Until};

/// The partner the history was delivered to.
const ARCHIVED: &str = "archived";

impl Bench {
    /// `alone`: the partner's backlog only; `with_history`: the same backlog beside the
    /// history, seeded first. Both seeded by SQL, then `VACUUM ANALYZE`.
    pub(crate) async fn history(&self) -> Result<Vec<Metric>> {
        let backlog = self.sizes.history_backlog;
        let partners = [self.fast_partner()];
        let mut legs = Legs::default();
        for (label, history) in [("alone", 0), ("with_history", self.sizes.history_rows)] {
            let setup = self
                .setup(&format!("history-{label}"), &partners, "")
                .await?;
            if history > 0 {
                setup
                    .db
                    .seed_ended_deliveries(ARCHIVED, history, Patients::Scattered, "past-")
                    .await?;
            }
            setup
                .db
                .seed_routed_backlog("fast", backlog, Patients::Scattered, "due-", Duration::ZERO)
                .await?;
            setup.db.settle().await?;
            let outcome = self
                .run_dispatcher(
                    &setup,
                    1,
                    Arrivals::Nginx,
                    Until::ended_for("fast", backlog),
                    None,
                )
                .await?;
            self.finish(setup).await?;
            legs.ran(label, &outcome);
            legs.push(Metric::new(
                format!("{label}.history_rows"),
                "",
                history as f64,
            ));
        }
        Ok(legs.second_to_first(
            "with_history_to_alone",
            "with_history_to_alone_claim_time",
            Target::AtLeast(0.9),
        ))
    }
}
