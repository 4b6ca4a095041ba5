//! Which deliveries support means, said once for all three ways of asking (the CLI's
//! flags, the API's query and bulk-resend body, the support page's filters: each edge
//! reads its own words into this one `Selection`), and turned into SQL conditions in one
//! place.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::delivery::state::{self, DeliveryState, UnknownState};

/// Which deliveries: by id, or by what they are. Every field narrows the selection; an
/// empty one selects everything. The state is kept as support typed it, and read
/// ([`Selection::states`]) where it is used, so a wrong name is refused in the asker's
/// words: `--state` on the command line, `state` in the API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Only these deliveries: named by a command, never by a filter.
    pub ids: Option<Vec<Uuid>>,
    /// pending (with waiting and in_flight), waiting, in_flight, delivered, rejected,
    /// dead, invalid, cancelled, unrouted, or failed (rejected, dead, invalid, unrouted):
    /// states as shown (a claimed delivery is in_flight, whatever its stored state).
    pub state: Option<String>,
    pub partner: Option<String>,
    pub event_name: Option<String>,
    pub patient_id: Option<String>,
    /// The outbox id of the event the deliveries carry.
    pub event_id: Option<i64>,
    /// Created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Created before this time.
    pub until: Option<DateTime<Utc>>,
}

impl Selection {
    /// Exactly these deliveries.
    pub fn ids(ids: &[Uuid]) -> Selection {
        Selection {
            ids: Some(ids.to_vec()),
            ..Selection::default()
        }
    }

    /// Whether it selects by nothing but (perhaps) ids: a bulk resend of that would
    /// resend everything.
    pub fn names_nothing(&self) -> bool {
        self.state.is_none()
            && self.partner.is_none()
            && self.event_name.is_none()
            && self.patient_id.is_none()
            && self.event_id.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    /// The states named, as support names them (see [`state::parse_states`]).
    pub fn states(&self) -> Result<Option<Vec<DeliveryState>>, UnknownState> {
        self.state.as_deref().map(state::parse_states).transpose()
    }

    /// A bulk resend without a state means "everything that failed"; delivered or
    /// cancelled deliveries are only resent when asked for by state or by id.
    pub fn failed_unless_stated(mut self) -> Selection {
        if self.state.is_none() && self.ids.is_none() {
            self.state = Some("failed".to_string());
        }
        self
    }
}

/// The least (`min`) or greatest (`max`) id of the window's delivered deliveries whose id
/// is off the database's clock (see [`CONDITIONS`]), by `deliveries_ended_by_state`, whose
/// predicate this names; none when there are none. PostgreSQL 15 has no `min` of a uuid:
/// a uuid's text sorts as its bytes in the "C" collation.
macro_rules! off_clock {
    ($aggregate:literal) => {
        concat!(
            "(SELECT ",
            $aggregate,
            "(o.id::text COLLATE \"C\")::uuid FROM dispatcher.deliveries o
              WHERE o.state = 'delivered'
                AND dispatcher.delivery_id_off_clock(o.id, o.created_at)
                AND ($6::timestamptz IS NULL OR o.created_at >= $6)
                AND ($7::timestamptz IS NULL OR o.created_at < $7))"
        )
    };
}

/// The conditions of a [`Selection`] on `dispatcher.every_delivery` (`NOT archived` for
/// the live deliveries alone), as parameters `$1` to `$8`; a statement's own
/// parameters follow from `$9`. A patient id is compared in the "C" collation, the one
/// of its index (`deliveries_by_patient`): equality means the same either way.
///
/// Each unfinished state is a condition of its own, and the ended ones one together:
/// `deliveries_ended_by_state` holds only ended deliveries (and of the delivered, only
/// those whose id is off the database's clock: see below), so `state = ANY($2)` alone
/// would leave a list of the unfinished (support's "pending") no index but the primary
/// key's, read through the history. Each statement is planned with its values (a
/// custom plan), so the states not asked for fall away and each one asked for finds its
/// own way in, with no second index for stale statistics to prefer: pending on
/// `deliveries_pending`, waiting on `deliveries_waiting`, in flight through
/// `dispatcher.leases`.
///
/// States are the shown ones (`shown_state!`): a claimed delivery is stored `pending`
/// with a claim token (migration 0020). So pending is `state = 'pending'` without a
/// token, and in flight is a token (which the CHECK `deliveries_claimed_pending` allows
/// only on a pending row). `deliveries_pending` holds the claimed ones too (at most a
/// partner's `max_in_flight` for each daemon), but finding them there would read the whole pending
/// backlog, however long a held partner's is; so in flight alone is found by the ids in
/// `dispatcher.leases`, each by primary key, kept where the delivery still carries a
/// token (a lease's other deliveries may have ended since). It reads every lease not yet
/// deleted, ran out or not: the record deletes one once all its deliveries are recorded,
/// the rescuer one that ran out, and until then its deliveries still holding the token
/// show in flight. So it reads the open claims, never the backlog or the history. That
/// condition names no state, so stale statistics cannot send it to `deliveries_pending`.
/// Asked with pending (support's "pending" is every unfinished state), they are the
/// pending ones with a token, and the leases are not read.
///
/// A time window of delivered deliveries is a range of the primary key: no other index
/// holds them since migration 0023 (a delivered one had an entry in
/// `deliveries_ended_by_state` only for this). A delivery's id is of its `created_at`'s
/// millisecond (`delivery/id.rs`), so the window's deliveries lie between the least ids
/// of its two ends; widened to the least and greatest id of the window's delivered
/// deliveries whose id is off that clock (made before 0023, or by a daemon from before
/// it: `deliveries_ended_by_state` keeps those, `off_clock!`). The `created_at`
/// conditions stay, so the range only narrows what is read. Of the other states, only
/// delivered (which support asks for alone) has no index by time: the range is asked
/// for it only, so it cannot lead another's plan from its own index. The archive's
/// deliveries are read by their index by state and time instead
/// (`archived_deliveries_by_state`, every state): for them the condition is `true` when
/// planned, so neither the range nor the look for off-clock ids in the live table
/// touches the archive, whose partitions would each be planned for it.
pub(super) const CONDITIONS: &str = concat!(
    "($1::uuid[] IS NULL OR id = ANY($1))
     AND ($2::text[] IS NULL
          OR (state = ANY($2) AND state NOT IN ('pending', 'waiting', 'in_flight'))
          OR (state = 'pending' AND 'pending' = ANY($2)
              AND (claim_token IS NULL OR 'in_flight' = ANY($2)))
          OR (state = 'waiting' AND 'waiting' = ANY($2))
          OR ('in_flight' = ANY($2) AND NOT ('pending' = ANY($2))
              AND id = ANY(ARRAY(SELECT unnest(l.deliveries) FROM dispatcher.leases l))
              AND claim_token IS NOT NULL))
     AND ($3::text IS NULL OR partner = $3)
     AND ($4::text IS NULL OR event_name = $4)
     AND ($5::text IS NULL OR patient_id COLLATE \"C\" = $5)
     AND ($6::timestamptz IS NULL OR created_at >= $6)
     AND ($7::timestamptz IS NULL OR created_at < $7)
     AND ($8::bigint IS NULL OR event_id = $8)
     AND ($2::text[] IS DISTINCT FROM '{delivered}'
          OR ($6::timestamptz IS NULL AND $7::timestamptz IS NULL)
          OR archived
          OR id BETWEEN
             -- A missing end is the first or last id there is, without the look for
             -- off-clock ids that could not move it; an end before 1970 or past what a
             -- UUIDv7 holds (2^48 - 1 ms) is clamped to it.
             CASE WHEN $6::timestamptz IS NULL THEN '00000000-0000-0000-0000-000000000000'::uuid
                  ELSE LEAST(dispatcher.first_uuid_of_millis(
                                 LEAST(GREATEST(dispatcher.unix_millis($6), 0),
                                       281474976710655)),
                             ",
    off_clock!("min"),
    ") END
             AND CASE WHEN $7::timestamptz IS NULL THEN 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid
                      ELSE GREATEST(dispatcher.first_uuid_of_millis(
                                        LEAST(GREATEST(dispatcher.unix_millis($7) + 1, 0),
                                              281474976710655)),
                                    ",
    off_clock!("max"),
    ") END)"
);

/// A selection's values in the order of [`CONDITIONS`].
pub(super) struct Params<'a> {
    selection: &'a Selection,
    states: Option<Vec<&'static str>>,
}

impl<'a> Params<'a> {
    pub(super) fn new(selection: &'a Selection) -> Result<Self, UnknownState> {
        Ok(Params {
            selection,
            states: selection
                .states()?
                .map(|states| states.into_iter().map(DeliveryState::as_str).collect()),
        })
    }

    /// The eight selection parameters followed by `extra`.
    pub(super) fn with<'b>(
        &'b self,
        extra: &[&'b (dyn ToSql + Sync)],
    ) -> Vec<&'b (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.selection.ids,
            &self.states,
            &self.selection.partner,
            &self.selection.event_name,
            &self.selection.patient_id,
            &self.selection.since,
            &self.selection.until,
            &self.selection.event_id,
        ];
        params.extend_from_slice(extra);
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_resend_without_a_state_means_the_failed_ones() {
        let partner = Selection {
            partner: Some("acme".into()),
            ..Selection::default()
        };
        let states = partner.failed_unless_stated().states().expect("states");
        assert_eq!(states, Some(DeliveryState::FAILED.to_vec()));
        let named = Selection::ids(&[Uuid::nil()]).failed_unless_stated();
        assert_eq!(named.state, None, "ids say which deliveries by themselves");
    }
}
