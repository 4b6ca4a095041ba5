//! Each partner's last 24 hours, hour by hour, for the support page's chart: how many
//! deliveries ended delivered, rejected or dead, and how many attempts failed and were
//! tried again. One statement, so the chart costs the overview one round trip.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

/// The hours a [`PartnerDay`] covers: the current hour and the 23 before it.
pub const HOURS: usize = 24;

/// What happened to one partner's deliveries in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourCounts {
    /// Deliveries that ended delivered in this hour.
    pub delivered: i64,
    /// Deliveries the partner refused for good (the contract's 400) in this hour.
    pub rejected: i64,
    /// Attempts started in this hour that failed and were tried again.
    pub retried: i64,
    /// Deliveries that ran out of attempts in this hour.
    pub dead: i64,
}

/// One partner's last 24 hours: `hours[0]` began 23 hours before the current hour,
/// `hours[23]` is the current hour (UTC), `current_hour` its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerDay {
    pub partner: String,
    pub current_hour: DateTime<Utc>,
    pub hours: [HourCounts; HOURS],
}

impl PartnerDay {
    /// The sum over the 24 hours.
    pub fn total(&self) -> HourCounts {
        self.hours
            .iter()
            .fold(HourCounts::default(), |sum, hour| HourCounts {
                delivered: sum.delivered + hour.delivered,
                rejected: sum.rejected + hour.rejected,
                retried: sum.retried + hour.retried,
                dead: sum.dead + hour.dead,
            })
    }

    /// When the hour at `index` began (`HOURS` is the next hour, where the last ends).
    pub fn hour_start(&self, index: usize) -> DateTime<Utc> {
        let before = (HOURS as i64 - 1) - index as i64;
        self.current_hour - chrono::Duration::hours(before)
    }
}

/// The start of the current hour, and of the first hour shown, on the database's clock.
const CURRENT_HOUR: &str = "date_trunc('hour', now(), 'UTC')";
const FIRST_HOUR: &str = "(date_trunc('hour', now(), 'UTC') - interval '23 hours')";

/// Each partner with something in its last 24 hours, by name.
///
/// It walks only the recent work, whatever the history kept: the deliveries that ended
/// since the first hour (index `deliveries_ended`) or have not ended (the queue's
/// indexes, one per state: each state is named apart, as `deliveries_ended_by_state`
/// holds no unfinished delivery), and the attempts of those by primary key, the first
/// from the delivery's own row (migration 0024). An attempt in the window belongs to one
/// of them, as a delivery's `ended_at` is never before its last attempt. `OFFSET 0` keeps the attempts a lookup per delivery: joined freely, the
/// planner would rather scan every attempt ever kept. An attempt counts as retried when a
/// later one followed, or one is scheduled or on the wire (in flight: stored `pending`
/// with a claim token since migration 0020, so among the pending here); an attempt
/// support resent after is not a retry, for every resend (each marks its attempt
/// `resent_after`, which the timeline reads too).
pub async fn last_day(
    client: &impl GenericClient,
) -> Result<Vec<PartnerDay>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT partner,
                        (extract(epoch FROM {CURRENT_HOUR} - hour) / 3600)::int AS hours_ago,
                        {CURRENT_HOUR} AS current_hour,
                        sum(delivered)::bigint AS delivered, sum(rejected)::bigint AS rejected,
                        sum(retried)::bigint AS retried, sum(dead)::bigint AS dead
                 FROM (
                     SELECT partner, date_trunc('hour', ended_at, 'UTC') AS hour,
                            (state = 'delivered')::int AS delivered,
                            (state = 'rejected')::int AS rejected,
                            0 AS retried,
                            (state = 'dead')::int AS dead
                     FROM dispatcher.deliveries
                     WHERE partner IS NOT NULL
                       AND ended_at >= {FIRST_HOUR}
                       AND state IN ('delivered', 'rejected', 'dead')
                     UNION ALL
                     SELECT d.partner, date_trunc('hour', a.started_at, 'UTC'), 0, 0, 1, 0
                     FROM dispatcher.deliveries d
                     CROSS JOIN LATERAL (
                         (SELECT started_at FROM dispatcher.attempts
                          WHERE delivery_id = d.id
                            AND NOT resent_after
                            AND (number < d.attempt_count OR d.state IN ('pending', 'waiting'))
                          OFFSET 0)
                         UNION ALL
                         SELECT d.first_attempt_started_at
                         WHERE d.first_attempt_started_at IS NOT NULL
                           AND NOT COALESCE(d.first_attempt_resent_after, false)
                           AND (1 < d.attempt_count OR d.state IN ('pending', 'waiting'))
                     ) a
                     WHERE d.partner IS NOT NULL
                       AND (d.ended_at >= {FIRST_HOUR}
                            OR d.state = 'pending' OR d.state = 'waiting')
                       AND a.started_at >= {FIRST_HOUR}
                 ) counted
                 GROUP BY partner, hour
                 ORDER BY partner, hour"
            ),
            &[],
        )
        .await?;
    let mut days: Vec<PartnerDay> = Vec::new();
    for row in &rows {
        let partner: String = row.get("partner");
        let hours_ago: i32 = row.get("hours_ago");
        let current_hour: DateTime<Utc> = row.get("current_hour");
        // A daemon's clock a little ahead of the database's stamps an attempt in the
        // next hour: it happened now.
        let Some(index) = usize::try_from(hours_ago.max(0))
            .ok()
            .and_then(|ago| (HOURS - 1).checked_sub(ago))
        else {
            continue;
        };
        if days.last().is_none_or(|day| day.partner != partner) {
            days.push(PartnerDay {
                partner,
                current_hour,
                hours: [HourCounts::default(); HOURS],
            });
        }
        if let Some(day) = days.last_mut() {
            // Added, not set: the next hour's row lands on the current hour's.
            let hour = &mut day.hours[index];
            hour.delivered += row.get::<_, i64>("delivered");
            hour.rejected += row.get::<_, i64>("rejected");
            hour.retried += row.get::<_, i64>("retried");
            hour.dead += row.get::<_, i64>("dead");
        }
    }
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_slot_is_the_current_hour_and_the_total_adds_every_hour() {
        let current_hour = "2026-12-01T14:00:00Z".parse().expect("time");
        let mut day = PartnerDay {
            partner: "acme".into(),
            current_hour,
            hours: [HourCounts::default(); HOURS],
        };
        day.hours[0].delivered = 2;
        day.hours[23].delivered = 1;
        day.hours[23].retried = 4;
        day.hours[5].dead = 1;
        assert_eq!(day.hour_start(23), current_hour);
        assert_eq!(
            day.hour_start(0),
            "2026-11-30T15:00:00Z"
                .parse::<DateTime<Utc>>()
                .expect("time")
        );
        assert_eq!(
            day.total(),
            HourCounts {
                delivered: 3,
                rejected: 0,
                retried: 4,
                dead: 1
            }
        );
    }
}
