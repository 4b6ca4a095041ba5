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
//!
//! Since migration 0025 most of a year's history is in the archive, its week partitions
//! (what ended before `payload_days`); the live tables keep the rest. `with_history` has
//! the live part only; `with_archive` the same beside the archive's part, which a claim
//! should never read: `--history-archived 99000000` makes the two 100,000,000.

use std::time::Duration;

use anyhow::Result;

use crate::database::Patients;
use crate::report::{Metric, Target};
use crate::scenarios::{Arrivals, Bench, Legs, Until};

/// The partner the history was delivered to.
const ARCHIVED: &str = "archived";

impl Bench {
    /// `alone`: the partner's backlog only; `with_history`: the same backlog beside the
    /// live history, seeded first; `with_archive`: beside the live history and the
    /// archived one (skipped on a schema from before the archive). Seeded by SQL, then
    /// `VACUUM ANALYZE`.
    pub(crate) async fn history(&self) -> Result<Vec<Metric>> {
        let backlog = self.sizes.history_backlog;
        let partners = [self.fast_partner()];
        let mut legs = Legs::default();
        for (label, history, archived) in [
            ("alone", 0, 0),
            ("with_history", self.sizes.history_rows, 0),
            (
                "with_archive",
                self.sizes.history_rows,
                self.sizes.history_archived,
            ),
        ] {
            let setup = self
                .setup(&format!("history-{label}"), &partners, "")
                .await?;
            if archived > 0 && !setup.db.has_archive().await? {
                eprintln!(
                    "bench: history: this schema has no archive (before 0025); {label} skipped"
                );
                self.finish(setup).await?;
                continue;
            }
            // The archive first: its seeding takes minutes (half an hour at 99,000,000),
            // long enough for autovacuum to map the live history's free space and for
            // the archive's pages to push the live tables' out of the caches, where
            // production keeps the hot live pages and leaves the archive cold. Seeded
            // first, the live tables are as fresh as in `with_history`.
            if archived > 0 {
                setup
                    .db
                    .seed_archived_deliveries(ARCHIVED, archived, "archived-")
                    .await?;
            }
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
            legs.push(Metric::new(
                format!("{label}.archived_rows"),
                "",
                archived as f64,
            ));
        }
        legs.against_first(
            2,
            "with_archive_to_alone",
            "with_archive_to_alone_claim_time",
            Target::AtLeast(0.9),
        );
        Ok(legs.second_to_first(
            "with_history_to_alone",
            "with_history_to_alone_claim_time",
            Target::AtLeast(0.9),
        ))
    }
}
