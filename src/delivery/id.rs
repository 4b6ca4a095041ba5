//! Delivery ids: UUIDv7s of the moment the database made the delivery.
//!
//! A delivery's id carries in its first 48 bits the millisecond of its `created_at`, which
//! is PostgreSQL's `now()` in the transaction that inserts it, never the daemon's clock: a
//! daemon whose clock runs ahead makes ids of the database's time all the same. So a
//! window of `created_at` is a range of ids, which is how support reads a window of
//! delivered deliveries (by the primary key: no other index holds them, migration 0023),
//! and ids sort as the deliveries were made, whichever daemon made them.

use chrono::{DateTime, Utc};
use uuid::{ContextV7, Timestamp, Uuid};

/// The ids of the deliveries one transaction makes, all of the millisecond it made them
/// at, each greater than the one before.
#[derive(Debug)]
pub struct DeliveryIds {
    seconds: u64,
    nanos: u32,
    /// Its own, and given the same time at each call: its counter starts at random and
    /// counts up within the millisecond, and never moves the time (a context shared over
    /// transactions would keep the latest time it saw, which may not be this one's).
    context: ContextV7,
}

impl DeliveryIds {
    /// The ids of deliveries made at `made_at`: the inserting transaction's `now()`, the
    /// `created_at` they are stored with.
    pub fn made_at(made_at: DateTime<Utc>) -> DeliveryIds {
        DeliveryIds {
            // The database's clock is after 1970.
            seconds: u64::try_from(made_at.timestamp()).unwrap_or(0),
            nanos: made_at.timestamp_subsec_nanos(),
            context: ContextV7::new(),
        }
    }

    /// The next id: of the millisecond it was made at, greater than the ones before it.
    /// Its counter has 2^41 ids to go before it could carry into the next millisecond,
    /// which no transaction's deliveries come near.
    pub fn next_id(&mut self) -> Uuid {
        Uuid::new_v7(Timestamp::from_unix(
            &self.context,
            self.seconds,
            self.nanos,
        ))
    }
}

/// The millisecond a delivery id says it was made at.
pub fn made_at(id: Uuid) -> Option<DateTime<Utc>> {
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(seconds).ok()?, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_millisecond_they_were_made_at_and_increase() {
        // A moment with microseconds, as PostgreSQL's now() has: the id keeps its
        // millisecond, whatever this process's clock says.
        let made = DateTime::parse_from_rfc3339("2026-12-05T14:03:07.123456Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut ids = DeliveryIds::made_at(made);
        let batch: Vec<Uuid> = (0..10_000).map(|_| ids.next_id()).collect();

        let millisecond = DateTime::parse_from_rfc3339("2026-12-05T14:03:07.123Z")
            .expect("time")
            .with_timezone(&Utc);
        assert!(batch.iter().all(|id| made_at(*id) == Some(millisecond)));
        assert!(batch.iter().all(|id| id.get_version_num() == 7));
        assert!(
            batch.windows(2).all(|pair| pair[0] < pair[1]),
            "each id greater than the one before"
        );

        let mut again = DeliveryIds::made_at(made);
        assert_ne!(
            again.next_id(),
            batch[0],
            "another transaction of the same millisecond makes other ids"
        );
    }
}
