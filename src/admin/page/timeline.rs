//! A delivery's story in time order: created, each attempt with what came of it,
//! support's resends and cancels, and what happens next (the next attempt's time while
//! it is pending). Support answers "what happened?" from this list; the partners' full
//! answers stay in the attempts table below it.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::when::{moment, time};
use crate::delivery::state::{DeliveryState, WAITING};
use crate::store::support::{AttemptSummary, DeliveryDetail, SupportAction};

/// One line of the timeline.
enum Entry<'a> {
    Attempt(&'a AttemptSummary),
    Support(&'a SupportAction),
}

impl Entry<'_> {
    fn at(&self) -> DateTime<Utc> {
        match self {
            Entry::Attempt(attempt) => attempt.started_at,
            Entry::Support(action) => action.at,
        }
    }
}

pub(super) fn timeline(detail: &DeliveryDetail, now: DateTime<Utc>) -> Markup {
    let summary = &detail.summary;
    let mut entries: Vec<Entry> = detail.attempts.iter().map(Entry::Attempt).collect();
    entries.extend(detail.support_actions.iter().map(Entry::Support));
    // Stable: an attempt and an action at the same instant keep attempts first.
    entries.sort_by_key(Entry::at);
    html! {
        ol #timeline {
            li { span.when { (time(summary.created_at)) } " created for " (summary.partner.as_deref().unwrap_or("no partner")) }
            @for entry in &entries {
                @match entry {
                    Entry::Attempt(attempt) => {
                        @let (class, outcome) = outcome(detail, attempt);
                        li.(class) data-attempt=(attempt.number) {
                            span.when { (time(attempt.started_at)) } " attempt " (attempt.number) ": "
                            @match attempt.http_status { Some(status) => { "HTTP " (status) }, None => { "no answer" } }
                            " after " (attempt.duration_ms) " ms; " (outcome)
                        }
                    }
                    Entry::Support(action) => {
                        li.support { span.when { (time(action.at)) } " " (action.action) " by " (action.actor) }
                    }
                }
            }
            (what_next(detail, now))
        }
    }
}

/// What came of an attempt: the delivery's end for its last attempt, otherwise whether
/// it was tried again or support resent it.
fn outcome(detail: &DeliveryDetail, attempt: &AttemptSummary) -> (&'static str, String) {
    let next = detail
        .attempts
        .iter()
        .find(|later| later.number == attempt.number + 1);
    // Support resent the delivery after this attempt: the attempt ended the delivery
    // then, whatever its state is now. The mark the resend stored, which the 24-hour
    // chart reads too, so both say the same of every resend.
    if attempt.resent_after {
        return match attempt.http_status {
            Some(200) => ("ok", "delivered; support resent it".to_string()),
            _ => (
                "failed",
                "the delivery ended; support resent it".to_string(),
            ),
        };
    }
    if next.is_some() {
        return ("failed", "failed; tried again".to_string());
    }
    match detail.summary.state {
        DeliveryState::Delivered => ("ok", "delivered".to_string()),
        DeliveryState::Pending | DeliveryState::Waiting | DeliveryState::InFlight => {
            ("failed", "failed; to be tried again".to_string())
        }
        ended => ("failed", format!("the delivery ended {ended}")),
    }
}

/// The last line: when the next attempt is due, or that one is on the wire.
fn what_next(detail: &DeliveryDetail, now: DateTime<Utc>) -> Markup {
    let summary = &detail.summary;
    let next_number = summary.attempt_count + 1;
    match (summary.state, summary.next_attempt_at) {
        (DeliveryState::Pending, Some(due)) => html! {
            li.next #next-attempt {
                span.when { (time(due)) } " next attempt (" (next_number) ") "
                @if due > now { (moment(due, now)) } @else { "due now, waiting for a free slot" }
            }
        },
        (DeliveryState::InFlight, _) => html! {
            li.next #next-attempt { "attempt " (next_number) " is on its way to the partner now" }
        },
        (DeliveryState::Waiting, _) => html! {
            li.next #next-attempt { "waiting: " (WAITING) "; due once that one ends" }
        },
        _ => html! {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::support::DeliverySummary;

    fn at(text: &str) -> DateTime<Utc> {
        format!("2026-12-01T{text}Z").parse().expect("time")
    }

    fn attempt(number: i32, started: &str, status: Option<i32>) -> AttemptSummary {
        AttemptSummary {
            number,
            started_at: at(started),
            duration_ms: 12,
            http_status: status,
            error: None,
            response_body: None,
            answer_erased_at: None,
            resent_after: false,
        }
    }

    fn detail(state: DeliveryState, attempts: Vec<AttemptSummary>) -> DeliveryDetail {
        DeliveryDetail {
            summary: DeliverySummary {
                id: uuid::Uuid::nil(),
                event_id: 7,
                partner: Some("acme".into()),
                event_name: "HelpAround.Patient.CompleteEnrollment".into(),
                patient_id: Some("p-1".into()),
                state,
                attempt_count: attempts.len() as i32,
                attempts_since_resend: attempts.len() as i32,
                last_status: None,
                last_error: None,
                created_at: at("14:00:00"),
                next_attempt_at: (state == DeliveryState::Pending).then(|| at("14:05:00")),
                held_by_circuit: false,
            },
            event_erased_at: None,
            answers_erased_at: None,
            attempts,
            support_actions: Vec::new(),
        }
    }

    #[test]
    fn a_pending_delivery_says_when_its_next_attempt_is_due() {
        let pending = detail(
            DeliveryState::Pending,
            vec![
                attempt(1, "14:00:01", Some(503)),
                attempt(2, "14:01:00", None),
            ],
        );
        let html = timeline(&pending, at("14:02:00")).into_string();
        assert!(html.contains("attempt 1: HTTP 503 after 12 ms; failed; tried again"));
        assert!(html.contains("attempt 2: no answer after 12 ms; failed; to be tried again"));
        assert!(
            html.contains("2026-12-01 14:05:00 UTC</span> next attempt (3) <time"),
            "{html}"
        );
        assert!(html.contains(">in 3m</time>"), "{html}");
        let late = timeline(&pending, at("14:06:00")).into_string();
        assert!(late.contains("due now"), "{late}");
    }

    #[test]
    fn an_ended_delivery_says_how_it_ended_and_when_support_resent_it() {
        let mut resent = detail(
            DeliveryState::Delivered,
            vec![
                attempt(1, "14:00:01", Some(400)),
                attempt(2, "14:10:00", Some(200)),
            ],
        );
        resent.attempts[0].resent_after = true;
        resent.support_actions.push(SupportAction {
            action: "resend".into(),
            actor: "page:Dana".into(),
            at: at("14:09:59"),
        });
        let html = timeline(&resent, at("15:00:00")).into_string();
        assert!(
            html.contains("the delivery ended; support resent it"),
            "{html}"
        );
        assert!(html.contains("resend by page:Dana"));
        assert!(html.contains("attempt 2: HTTP 200 after 12 ms; delivered"));
        assert!(!html.contains("next-attempt"), "nothing is next");
        // Delivered, then resent by support: pending again, and its 200 stays a 200.
        let mut delivered_then_resent = detail(
            DeliveryState::Pending,
            vec![attempt(1, "14:00:01", Some(200))],
        );
        delivered_then_resent.attempts[0].resent_after = true;
        delivered_then_resent.support_actions.push(SupportAction {
            action: "resend".into(),
            actor: "page:Dana".into(),
            at: at("14:30:00"),
        });
        let html = timeline(&delivered_then_resent, at("14:31:00")).into_string();
        assert!(
            html.contains("attempt 1: HTTP 200 after 12 ms; delivered; support resent it"),
            "{html}"
        );
        assert!(!html.contains("to be tried again"), "{html}");
        let dead = detail(DeliveryState::Dead, vec![attempt(1, "14:00:01", None)]);
        assert!(timeline(&dead, at("15:00:00"))
            .into_string()
            .contains("the delivery ended dead"));
    }
}
