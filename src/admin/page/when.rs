//! How the support page writes a moment: one format for every time it shows, so the
//! overview, a delivery's page and its timeline read alike. Lists say how long ago (or
//! until) in words a person on the phone reads at a glance, with the exact UTC time on
//! hover.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

pub(super) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `at` relative to `now` ("5m ago", "in 11m"), the exact time on hover.
pub(super) fn moment(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) title=(time(at)) { (relative(at, now)) } }
}

/// "just now", "in 40s", "in 11m", "2h 5m ago", "3d 4h ago": the two largest units,
/// rounded down; seconds only under a minute (a retry that close is worth the second).
fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let span = seconds.unsigned_abs();
    if span == 0 {
        return "just now".to_string();
    }
    let (days, hours, minutes) = (span / 86_400, span % 86_400 / 3_600, span % 3_600 / 60);
    let words = match (days, hours) {
        (0, 0) if minutes == 0 => format!("{span}s"),
        (0, 0) => format!("{minutes}m"),
        (0, _) if minutes == 0 => format!("{hours}h"),
        (0, _) => format!("{hours}h {minutes}m"),
        (_, 0) => format!("{days}d"),
        _ => format!("{days}d {hours}h"),
    };
    if seconds > 0 {
        format!("in {words}")
    } else {
        format!("{words} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn a_moment_reads_as_how_long_ago_or_until() {
        let now = Utc::now();
        let cases = [
            (Duration::zero(), "just now"),
            (Duration::seconds(-20), "20s ago"),
            (Duration::seconds(40), "in 40s"),
            (Duration::seconds(190), "in 3m"),
            (Duration::minutes(11), "in 11m"),
            (Duration::minutes(65), "in 1h 5m"),
            (Duration::minutes(-5), "5m ago"),
            (Duration::minutes(-125), "2h 5m ago"),
            (Duration::hours(3), "in 3h"),
            (Duration::hours(-76), "3d 4h ago"),
            (Duration::days(-2), "2d ago"),
        ];
        for (offset, words) in cases {
            assert_eq!(relative(now + offset, now), words, "{offset:?}");
        }
    }

    #[test]
    fn the_exact_time_is_on_hover() {
        let at = "2026-12-05T10:00:00Z"
            .parse::<DateTime<Utc>>()
            .expect("time");
        let now = at + Duration::minutes(3);
        assert_eq!(
            moment(at, now).into_string(),
            "<time datetime=\"2026-12-05T10:00:00+00:00\" title=\"2026-12-05 10:00:00 UTC\">3m ago</time>"
        );
    }
}
