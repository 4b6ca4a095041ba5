//! What the support page looks like: HTML from plain data, nothing read or changed here.
//! The handlers in [`super`] fetch what to show and call these.

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use uuid::Uuid;

use super::when::{moment, time};
use super::{chart, timeline};
use crate::admin::caller::Caller;
use crate::admin::headers;
use crate::admin::state::{DeliveryPage, Page};
use crate::config::identity::Role;
use crate::delivery::breaker::{CircuitState, PartnerCircuit};
use crate::delivery::state::{DeliveryState, WAITING};
use crate::store::support::chart::PartnerDay;
use crate::store::support::{
    CancelRefused, DeliveryDetail, DeliverySummary, PartnerSummary, Rerouted, Resent, Selection,
};

/// What the last button press did, shown at the top of the next page.
#[derive(Deserialize)]
pub(super) struct Notice {
    notice: Option<String>,
    /// The delivery acted on, to follow it from the overview.
    delivery: Option<Uuid>,
}

impl Notice {
    /// The notice that says why a cancel was refused: the state that kept the delivery
    /// (its words are [`CancelRefused`]'s).
    pub(super) fn not_cancelled(refused: CancelRefused) -> &'static str {
        if refused.archived {
            return "not-cancelled-archived";
        }
        match refused.state {
            Some(DeliveryState::InFlight) => "not-cancelled-in-flight",
            Some(DeliveryState::Delivered) => "not-cancelled-delivered",
            Some(DeliveryState::Cancelled) => "not-cancelled-cancelled",
            _ => "not-cancelled",
        }
    }

    /// The notice that says what a resend did (its words are [`Resent`]'s).
    pub(super) fn resent(resent: Resent) -> &'static str {
        match resent {
            Resent::PendingAgain => "resent",
            Resent::RoutedAgain => "rerouted",
            Resent::Untouched => "not-resent",
        }
    }

    pub(super) fn render(&self) -> Markup {
        let Some(notice) = self.notice.as_deref() else {
            return html! {};
        };
        let refused_as = |state, archived| {
            let refused = CancelRefused {
                id: Uuid::nil(),
                state,
                archived,
            };
            format!("{}.", capitalized(refused.reason()))
        };
        let refused = |state| refused_as(state, false);
        let (class, text) = match notice {
            "resent" => ("ok", format!("Resent: {}.", Resent::PendingAgain)),
            "rerouted" => ("ok", format!("Resent: {}.", Resent::RoutedAgain)),
            "not-resent" => ("bad", format!("{}.", capitalized(Resent::Untouched))),
            "cancelled" => (
                "ok",
                "Cancelled: the delivery will not be sent.".to_string(),
            ),
            "not-cancelled-in-flight" => ("bad", refused(Some(DeliveryState::InFlight))),
            "not-cancelled-delivered" => ("bad", refused(Some(DeliveryState::Delivered))),
            "not-cancelled-cancelled" => ("bad", refused(Some(DeliveryState::Cancelled))),
            "not-cancelled" => ("bad", refused(Some(DeliveryState::Pending))),
            "not-cancelled-archived" => ("bad", refused_as(None, true)),
            _ => return html! {},
        };
        html! {
            p.notice.(class) role="status" {
                (text)
                @if let Some(id) = self.delivery {
                    " " a href={ "/deliveries/" (id) } { "Follow delivery " (id) }
                }
            }
        }
    }
}

pub(super) fn layout(title: &str, signed_in: Option<&Caller>, body: Markup) -> Markup {
    layout_searched(title, signed_in, None, body)
}

/// [`layout`], with what was searched for kept in the search box.
pub(super) fn layout_searched(
    title: &str,
    signed_in: Option<&Caller>,
    searched: Option<&str>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · HelpAround dispatcher" }
                // The answer's nonce: the Content-Security-Policy runs nothing else.
                @let nonce = headers::nonce();
                style nonce=(nonce) { (STYLE) }
                script nonce=(nonce) { (PreEscaped(CONFIRM)) (PreEscaped(REFRESH)) }
            }
            body {
                header {
                    a.brand href="/" { "HelpAround dispatcher" }
                    @if signed_in.is_some() {
                        // On every page: support starts from what the patient or partner quoted.
                        form.search role="search" method="get" action="/search" {
                            input type="search" name="q" required value=[searched]
                                aria-label="Patient id or its first 4+ characters, partner's patient id, delivery id, event id or support program"
                                placeholder="Patient id (or its start), partner's id, delivery, event, program";
                            button type="submit" { "Search" }
                        }
                    }
                    @if let Some(caller) = signed_in {
                        @if caller.role.allows(Role::Operator) {
                            a.brand href="/audit" { "Audit trail" }
                            a.brand href="/bulk" { "Resend in bulk" }
                        }
                        form.logout method="post" action="/logout" {
                            span { "Signed in as " (caller.actor) " (" (caller.role) ")" }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A form with `data-confirm` asks before it is sent (the Content-Security-Policy allows
/// no inline handler such as `onsubmit`).
const CONFIRM: &str = "document.addEventListener('submit', function (event) {
  var question = event.target.getAttribute('data-confirm');
  if (question && !window.confirm(question)) { event.preventDefault(); }
});";

/// A page with lists marks them `data-refresh` (seconds): it reloads itself on that beat,
/// so a support person on the phone sees a resend land, but not while they type, choose,
/// select text or look at another tab. A script under the page's nonce, since the
/// Content-Security-Policy allows no other.
const REFRESH: &str = "
document.addEventListener('DOMContentLoaded', function () {
  var list = document.querySelector('[data-refresh]');
  if (!list) { return; }
  setInterval(function () {
    var active = document.activeElement;
    var busy = active && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(active.tagName);
    if (!document.hidden && !busy && !String(window.getSelection())) { window.location.reload(); }
  }, 1000 * Number(list.getAttribute('data-refresh')));
});";

/// How often a page of lists reloads itself ([`REFRESH`]).
pub(super) const REFRESH_SECONDS: u32 = 15;

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { display: flex; justify-content: space-between; align-items: center; padding: .6rem 1.5rem; background: #1d3557; color: white; }
header a.brand { color: white; font-weight: 600; text-decoration: none; }
header form { display: flex; gap: .6rem; align-items: center; margin: 0; }
main { padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; background: white; font-size: .9rem; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid #e1e4ea; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
th.num, td.num { text-align: right; }
td.when, td.nowrap { white-space: nowrap; }
.next { color: #5a6272; font-size: .8rem; }
.state { padding: .1rem .4rem; border-radius: .3rem; font-size: .8rem; background: #e1e4ea; }
.state-delivered { background: #d3f2dc; } .state-pending, .state-waiting, .state-in_flight { background: #fff1c2; }
.state-rejected, .state-dead, .state-invalid, .state-unrouted { background: #fbd5d5; }
.error { color: #8a1c1c; max-width: 32rem; }
.notice { padding: .6rem 1rem; border-radius: .3rem; }
.notice.ok { background: #d3f2dc; } .notice.bad { background: #fbd5d5; }
form.inline { display: inline; margin: 0; }
button { cursor: pointer; padding: .25rem .7rem; border: 1px solid #8c96a8; border-radius: .3rem; background: white; }
button.primary { background: #1d3557; color: white; border-color: #1d3557; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f0f2f5; padding: .5rem; margin: 0; max-height: 20rem; overflow: auto; }
dl { display: grid; grid-template-columns: max-content auto; gap: .3rem 1rem; background: white; padding: 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
form.filters { display: flex; gap: .8rem; align-items: end; margin-bottom: .8rem; flex-wrap: wrap; }
label { display: flex; flex-direction: column; font-size: .85rem; gap: .2rem; }
input, select { font: inherit; padding: .25rem; max-width: 24rem; }
header form.search input { width: 22rem; }
.muted { color: #5b6475; font-size: .8rem; }
nav.pages { display: flex; gap: 1.5rem; margin-top: .8rem; }
section.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(36rem, 1fr)); gap: 1rem; }
figure.chart { margin: 0; background: white; padding: .6rem .8rem; }
figure.chart figcaption { font-weight: 600; margin-bottom: .3rem; }
figure.chart svg.bars { width: 100%; height: auto; }
figure.chart table { width: auto; margin-top: .3rem; }
ol#timeline { list-style: none; padding: 0; background: white; margin: 0; }
ol#timeline li { padding: .45rem 1rem; border-left: 4px solid #c5ccd8; margin-left: 1rem; }
ol#timeline li.failed { border-left-color: #d04545; } ol#timeline li.ok { border-left-color: #2a9d50; }
ol#timeline li.next { border-left-color: #e0a100; border-left-style: dashed; }
ol#timeline li.support { border-left-color: #1d3557; }
";

/// When a pending delivery goes out next, in the list's words: held while its partner's
/// circuit is open, due now, or in how long.
fn next_attempt(delivery: &DeliverySummary, now: DateTime<Utc>) -> Markup {
    html! {
        @if delivery.held_by_circuit {
            span.next { "held: circuit open" }
        } @else if let Some(at) = delivery.next_attempt_at {
            @if at <= now { span.next { "due now" } } @else { span.next { "next " (moment(at, now)) } }
        }
    }
}

fn state_badge(state: DeliveryState) -> Markup {
    match state {
        DeliveryState::Waiting => html! {
            span class="state state-waiting" title=(format!("waiting: {WAITING}")) { "waiting" }
        },
        _ => html! { span class={ "state state-" (state.as_str()) } { (state.as_str()) } },
    }
}

/// Resend and cancel buttons for the states where they can work, for support.
fn actions(delivery: &DeliverySummary, back: &str, caller: &Caller) -> Markup {
    if !caller.role.allows(Role::Support) {
        return html! {};
    }
    html! {
        @if delivery.state.can_resend() {
            form.inline method="post" action={ "/deliveries/" (delivery.id) "/resend" } {
                input type="hidden" name="back" value=(back);
                button.primary type="submit" { "Resend" }
            }
            " "
        }
        @if delivery.state.can_cancel() {
            form.inline method="post" action={ "/deliveries/" (delivery.id) "/cancel" }
                data-confirm="Cancel this delivery? It will not be sent again." {
                input type="hidden" name="back" value=(back);
                button type="submit" { "Cancel" }
            }
        }
    }
}

/// Whether a partner's deliveries are held after failures in a row.
fn circuit(circuit: Option<&PartnerCircuit>) -> Markup {
    match circuit {
        Some(circuit) if circuit.state == CircuitState::HalfOpen => html! {
            span.error { "open: one probe request is out" }
        },
        Some(circuit) if circuit.is_open() => html! {
            span.error {
                "open after " (circuit.consecutive_failures) " failures in a row: deliveries held"
                @if let Some(at) = circuit.retry_at { " until " (time(at)) }
            }
        },
        _ => html! { "closed" },
    }
}

fn short_event_name(name: &str) -> &str {
    name.strip_prefix("HelpAround.Patient.").unwrap_or(name)
}

pub(super) fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The sign-in page: the company's identity provider, and below it the break-glass
/// form when `[admin] token` is set.
pub(super) fn login_page(failed: bool, oidc: bool, break_glass: bool) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if oidc {
                form method="post" action="/auth/login" {
                    button.primary #sign-in type="submit" { "Sign in with your company account" }
                }
            }
            @if break_glass {
                @if oidc { h2 { "Break-glass access" } p.muted { "Only when the identity provider is down. Every use is logged and audited." } }
                @if failed { p.notice.bad role="alert" { "That token is not right, or no name was given." } }
                form method="post" action="/login" {
                    p { label { "Your name (recorded with everything you do)"
                        input type="text" name="name" required autocomplete="name";
                    } }
                    p { label { "Admin token"
                        input type="password" name="token" required autocomplete="current-password";
                    } }
                    button.primary type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// Which deliveries the overview lists, and where in them it is.
pub(super) struct Listing<'a> {
    pub selection: &'a Selection,
    /// The state filter as the page shows it: `failed` by default, or `all`.
    pub shown_state: &'a str,
    pub page: &'a Page,
}

impl Listing<'_> {
    /// The overview's address for these filters, without a position in the pages.
    fn filters(&self) -> String {
        overview_address(self.selection, self.shown_state)
    }

    /// This very page, for the buttons to come back to.
    fn here(&self) -> String {
        let filters = self.filters();
        match (self.page.after, self.page.before) {
            (Some(after), _) => format!("{filters}&after={after}"),
            (None, Some(before)) => format!("{filters}&before={before}"),
            (None, None) => filters,
        }
    }

    /// The filters the state and partner boxes do not show, kept when they are changed.
    fn hidden_filters(&self) -> Markup {
        let selection = self.selection;
        html! {
            @if let Some(name) = &selection.event_name { input type="hidden" name="event_name" value=(name); }
            @if let Some(patient) = &selection.patient_id { input type="hidden" name="patient_id" value=(patient); }
            @if let Some(event_id) = selection.event_id { input type="hidden" name="event_id" value=(event_id); }
            @if let Some(at) = selection.since { input type="hidden" name="since" value=(at.to_rfc3339()); }
            @if let Some(at) = selection.until { input type="hidden" name="until" value=(at.to_rfc3339()); }
        }
    }

    /// What the list is narrowed to beyond state and partner, in words.
    fn searched_for(&self) -> Markup {
        let selection = self.selection;
        html! {
            @if let Some(patient) = &selection.patient_id {
                p #searched { "Patient id " strong { (patient) } ". " a href="/" { "Clear the search" } }
            }
            @if let Some(event_id) = selection.event_id {
                p #searched {
                    "Event (outbox id) " strong { (event_id) } ". "
                    a href={ "/?state=all&patient_id=" (event_id) } { "Patient id " (event_id) " instead" } " · "
                    a href="/" { "Clear the search" }
                }
            }
        }
    }
}

/// The overview's address for a selection, the state shown as the page shows it
/// (`failed` by default, or `all`): what its links and its filter form ask for, in the
/// names [`crate::admin::selection::SelectionIn`] reads.
pub(crate) fn overview_address(selection: &Selection, shown_state: &str) -> String {
    format!(
        "/?{}",
        crate::admin::selection::query_string(selection, Some(shown_state))
    )
}

/// The overview's body: partners at a glance and over their last day, then a page of the
/// selected deliveries.
pub(super) fn overview(
    notice: &Notice,
    summaries: &[PartnerSummary],
    days: &[PartnerDay],
    rows: &DeliveryPage,
    listing: &Listing,
    caller: &Caller,
) -> Markup {
    let shown_state = listing.shown_state;
    let partner = listing.selection.partner.as_deref();
    let filters = listing.filters();
    let back = listing.here();
    html! {
        (notice.render())
        (partners_at_a_glance(summaries, days))
        h2 { @if shown_state == "all" { "Deliveries" } @else { "Deliveries: " (shown_state) } }
        (listing.searched_for())
        form.filters method="get" action="/" {
            label { "State"
                select name="state" {
                    @for option in ["failed", "all", "pending", "waiting", "in_flight", "delivered", "rejected", "dead", "invalid", "cancelled", "unrouted"] {
                        option value=(option) selected[option == shown_state] { (option) }
                    }
                }
            }
            label { "Partner"
                select name="partner" {
                    option value="" { "all partners" }
                    @for name in summaries.iter().filter_map(|s| s.partner.as_deref()) {
                        option value=(name) selected[partner == Some(name)] { (name) }
                    }
                }
            }
            (listing.hidden_filters())
            button type="submit" { "Show" }
        }
        table #deliveries data-refresh=(REFRESH_SECONDS) {
            (delivery_headings())
            tbody {
                @for delivery in &rows.deliveries {
                    (delivery_row(delivery, &back, caller))
                }
                @if rows.deliveries.is_empty() {
                    tr { td colspan="9" { "Nothing here." } }
                }
            }
        }
        nav.pages aria-label="Pages of deliveries" {
            @if let Some(before) = rows.previous_before {
                a rel="prev" href={ (filters) "&before=" (before) } { "← Newer deliveries" }
            }
            @if let Some(after) = rows.next_after {
                a rel="next" href={ (filters) "&after=" (after) } { "Older deliveries →" }
            }
        }
    }
}

/// Each partner at a glance, then its last 24 hours as a chart.
pub(super) fn partners_at_a_glance(summaries: &[PartnerSummary], days: &[PartnerDay]) -> Markup {
    html! {
        h1 { "Partners" }
        table #partners {
            thead { tr {
                th { "Partner" } th.num { "Delivered (24 h)" } th.num { "Failed (24 h)" }
                th.num { "Pending" } th { "Oldest pending" } th { "Circuit breaker" }
            } }
            tbody {
                @for summary in summaries {
                    tr {
                        td {
                            @match &summary.partner {
                                Some(name) => a href={ "/?state=all&partner=" (url_encode(name)) } { (name) },
                                None => em { "no partner (unrouted or unroutable)" },
                            }
                        }
                        td.num { (summary.delivered) }
                        td.num { (summary.failed) }
                        td.num { (summary.pending) }
                        td { @if let Some(since) = summary.oldest_pending_since { (moment(since, Utc::now())) } @else { "–" } }
                        td.circuit { (circuit(summary.circuit.as_ref())) }
                    }
                }
                @if summaries.is_empty() {
                    tr { td colspan="6" { "No deliveries in the last 24 hours." } }
                }
            }
        }
        (chart::last_day(days))
    }
}

/// The headings of a table of deliveries, over [`delivery_row`]s.
pub(super) fn delivery_headings() -> Markup {
    html! {
        thead { tr {
            th { "Created" } th { "Partner" } th { "Event" } th { "Patient id" } th { "State" }
            th.num { "Tries" } th.num { "Last status" } th { "Partner's answer / error" } th { "" }
        } }
    }
}

/// One delivery in a table, with its buttons; `back` is where they return to.
pub(super) fn delivery_row(delivery: &DeliverySummary, back: &str, caller: &Caller) -> Markup {
    let now = Utc::now();
    html! {
        tr data-delivery=(delivery.id) {
            td.when { (moment(delivery.created_at, now)) }
            td { (delivery.partner.as_deref().unwrap_or("–")) }
            td { (short_event_name(&delivery.event_name)) " " span.muted { "#" (delivery.event_id) } }
            td.nowrap data-patient=[delivery.patient_id.as_deref()] { (delivery.patient_id.as_deref().unwrap_or("–")) }
            td.nowrap { (state_badge(delivery.state)) " " (next_attempt(delivery, now)) }
            td.num.nowrap { (delivery.tries()) }
            td.num { @if let Some(status) = delivery.last_status { (status) } @else { "–" } }
            td.error { (delivery.last_error.as_deref().unwrap_or("")) }
            td.nowrap { a href={ "/deliveries/" (delivery.id) } { "Details" } " " (actions(delivery, back, caller)) }
        }
    }
}

/// One delivery's body: what it is, its timeline, every attempt with the partner's
/// answer, and who resent or cancelled it.
pub(super) fn delivery(notice: &Notice, detail: &DeliveryDetail, caller: &Caller) -> Markup {
    let id = detail.summary.id;
    let DeliveryDetail {
        summary,
        attempts,
        support_actions,
        event_erased_at,
        answers_erased_at,
    } = detail;
    let back = format!("/deliveries/{id}");
    html! {
        (notice.render())
        h1 { "Delivery " (summary.id) }
        dl {
            dt { "Partner" } dd { (summary.partner.as_deref().unwrap_or("–")) }
            dt { "Event" } dd { (summary.event_name) " (outbox id " (summary.event_id) ")" }
            dt { "Patient id" } dd { (summary.patient_id.as_deref().unwrap_or("–")) }
            dt { "State" } dd { (state_badge(summary.state)) }
            dt { "Created" } dd { (time(summary.created_at)) }
            @if summary.state == DeliveryState::Pending {
                dt { "Next attempt" }
                dd {
                    @if summary.held_by_circuit { "held: the partner's circuit is open; it goes when a probe gets an answer" }
                    @else if let Some(next) = summary.next_attempt_at { (time(next)) " (" (moment(next, Utc::now())) ")" }
                }
            }
            @if let Some(error) = &summary.last_error { dt { "Last error" } dd.error { (error) } }
            @if let Some(at) = *event_erased_at { dt { "Event body" } dd { "erased on " (time(at)) " (retention); it cannot be sent again" } }
            @if let Some(at) = *answers_erased_at { dt { "Partner's answers" } dd { "erased on " (time(at)) " (retention)" } }
            dt { "Actions" } dd { (actions(summary, &back, caller)) }
        }
        h2 { "Timeline" }
        (timeline::timeline(detail, Utc::now()))
        h2 { "Attempts and the partner's answers" }
        table #attempts {
            thead { tr { th.num { "#" } th { "Sent" } th.num { "Took" } th.num { "Status" } th { "Error" } th { "Partner's answer" } } }
            tbody {
                @for attempt in attempts {
                    tr {
                        td.num { (attempt.number) }
                        td.when { (time(attempt.started_at)) }
                        td.num { (attempt.duration_ms) " ms" }
                        td.num { @if let Some(status) = attempt.http_status { (status) } @else { "no answer" } }
                        td.error { (attempt.error.as_deref().unwrap_or("")) }
                        td {
                            @if let Some(body) = &attempt.response_body { pre { (body) } }
                            @else if let Some(at) = attempt.answer_erased_at { em { "erased on " (time(at)) } }
                        }
                    }
                }
                @if attempts.is_empty() { tr { td colspan="6" { "No attempt yet." } } }
            }
        }
        @if !support_actions.is_empty() {
            h2 { "Support actions" }
            table #support-actions {
                thead { tr { th { "When" } th { "What" } th { "Who" } } }
                tbody {
                    @for action in support_actions {
                        tr { td { (time(action.at)) } td { (action.action) } td { (action.actor) } }
                    }
                }
            }
        }
    }
}

/// The old id of a placeholder support re-routed: what became of it, with links to the
/// event's deliveries now.
pub(super) fn rerouted(rerouted: &Rerouted) -> Markup {
    html! {
        h1 { "Delivery " (rerouted.id) }
        p #rerouted {
            "This delivery reached no partner. " (rerouted.actor) " routed its event "
            a href={ "/?state=all&event_id=" (rerouted.event_id) } { "#" (rerouted.event_id) }
            " again on " (time(rerouted.at)) "."
        }
        @if rerouted.deliveries.is_empty() {
            p { "The event has no delivery yet." }
        } @else {
            p { "Its deliveries now:" }
            ul {
                @for id in &rerouted.deliveries {
                    li { a href={ "/deliveries/" (id) } { (id) } }
                }
            }
        }
    }
}

/// `text` with its first letter in capitals, to open a sentence.
fn capitalized(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page says what a resend did in the words the CLI and the API print.
    #[test]
    fn a_resend_notice_reads_as_the_cli_and_the_api_word_it() {
        for resent in [Resent::PendingAgain, Resent::RoutedAgain, Resent::Untouched] {
            let notice = Notice {
                notice: Some(Notice::resent(resent).to_string()),
                delivery: None,
            };
            let shown = notice.render().into_string();
            let words = resent.to_string();
            assert!(shown.contains(&words[1..]), "{shown} does not say {words}");
        }
    }
}
