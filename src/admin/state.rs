//! The service layer of the admin server: what the API and the support page both ask of
//! the store (a page of deliveries either way, one delivery, each partner at a glance and
//! over its last day, the search box's readings, resend and cancel one), with the same checks and the same answers
//! whichever of them asks, in plain data (the API says it in JSON in `api/wire.rs`), and
//! the page position both read from a request (the selection is `selection.rs`'s).

use std::sync::Arc;

use axum::extract::FromRef;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::access::Access;
use super::caller::Caller;
use super::error::{ApiError, DatabaseUnavailable};
use super::oidc::Oidc;
use crate::config::live::LiveConfig;
use crate::observe::metrics::Metrics;
use crate::store::audit::{self, action, Outcome};
use crate::store::circuits;
use crate::store::db::{Client, Pool};
use crate::store::standby::{self, ReadFrom};
use crate::store::support::chart::{self, PartnerDay};
use crate::store::support::search::{self, Found, Reading};
use crate::store::support::{
    self, DeliveryDetail, DeliverySummary, PartnerSummary, ResendReport, Selection, SupportError,
};

/// Rows per page when the client does not say.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// The admin server's own connections, for everything support asks: few, and with a
    /// short `statement_timeout` (`[admin]`), so no question of support's can hold the
    /// daemon's. Everything written (resend, cancel, the audit trail, sessions, tokens) and
    /// everything read beside a write goes here, to the primary.
    pub(super) pool: Pool,
    /// `[support] database_url`'s standby, on the same limits: the deliveries, partners,
    /// charts and searches support reads ([`AdminState::reader`]). `None`: the primary.
    pub(super) standby: Option<Pool>,
    /// For one request, set by [`AdminState::reading`]: the pool its reads go to, chosen
    /// once with the lag the page shows beside them.
    pub(super) pinned: Option<Pool>,
    /// The daemon's pool, for `/readyz` and the scrape: they report on it, and ask it
    /// only short questions of their own, each bounded by a timeout.
    pub(super) daemon_pool: Pool,
    pub(super) access: Arc<Access>,
    pub(super) metrics: Metrics,
    /// `[admin.oidc]`: sign-in through the company's identity provider.
    pub(super) oidc: Option<Arc<Oidc>>,
    /// The configuration in force: the partners' URLs and headers, for what a partner
    /// received (`received.rs`).
    pub(super) live: LiveConfig,
}

/// What the access checks take from the shared state.
impl FromRef<AdminState> for Arc<Access> {
    fn from_ref(state: &AdminState) -> Arc<Access> {
        state.access.clone()
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// The `next_after` of the previous page.
    pub after: Option<Uuid>,
    /// The `previous_before` of the next page, to page back; with `after`, only the
    /// deliveries between the two.
    pub before: Option<Uuid>,
    /// Rows per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// Deliveries newest first, and where the pages beside it start (the API's
/// `DeliveryPageOut` says it in JSON).
pub(crate) struct DeliveryPage {
    pub deliveries: Vec<DeliverySummary>,
    /// Pass as `after` for the next (older) page; absent on the last page.
    pub next_after: Option<Uuid>,
    /// Pass as `before` for the previous (newer) page; absent on the first page.
    pub previous_before: Option<Uuid>,
}

/// What a list shows when its reader may not see partners' answers.
const ANSWER_HIDDEN: &str = "(the partner's answer is shown to the support role)";

impl AdminState {
    /// Appends to the audit trail what `caller` did to `target` and how it ended.
    pub(crate) async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        target: Option<&str>,
        outcome: Outcome,
        reason: Option<&str>,
    ) -> Result<(), ApiError> {
        let client = self.client().await?;
        audit::record(
            &client,
            &audit::Entry {
                actor: &caller.actor,
                subject: caller.subject.as_deref(),
                role: Some(caller.role),
                via: caller.via,
                action,
                target,
                outcome,
                reason,
            },
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, action, "could not write the audit trail");
            DatabaseUnavailable
        })?;
        Ok(())
    }

    /// A sign-in, a refusal or a sign-out: the role only when it was granted.
    pub(crate) async fn audit_sign_in(
        &self,
        caller: &Caller,
        outcome: Outcome,
        reason: Option<&str>,
        action: &str,
    ) -> Result<(), ApiError> {
        let client = self.client().await?;
        audit::record(
            &client,
            &audit::Entry {
                actor: &caller.actor,
                subject: caller.subject.as_deref(),
                role: (outcome == Outcome::Ok).then_some(caller.role),
                via: caller.via,
                action,
                target: None,
                outcome,
                reason,
            },
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, action, "could not write the audit trail");
            DatabaseUnavailable
        })?;
        Ok(())
    }

    /// A page of deliveries as `caller` may see it: with the partners' answers for
    /// support (the read audited first: no record, no answers), without them for a viewer.
    pub(crate) async fn page_for(
        &self,
        caller: &Caller,
        selection: &Selection,
        page: Page,
    ) -> Result<DeliveryPage, ApiError> {
        let mut rows = self.page_of(selection, page).await?;
        if caller.sees_answers() {
            let shown_errors = rows.deliveries.iter().any(|row| row.last_error.is_some());
            if shown_errors {
                self.audit(
                    caller,
                    action::DELIVERIES_READ,
                    Some(&described(selection)),
                    Outcome::Ok,
                    None,
                )
                .await?;
            }
        } else {
            for row in &mut rows.deliveries {
                hide_answer(&mut row.last_error);
            }
        }
        Ok(rows)
    }

    /// One delivery as `caller` may see it (see [`AdminState::page_for`]).
    pub(crate) async fn detail_for(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<DeliveryDetail, ApiError> {
        let mut detail = self.detail(id).await?;
        if caller.sees_answers() {
            self.audit(
                caller,
                action::DELIVERY_READ,
                Some(&id.to_string()),
                Outcome::Ok,
                None,
            )
            .await?;
        } else {
            hide_answer(&mut detail.summary.last_error);
            for attempt in &mut detail.attempts {
                hide_answer(&mut attempt.error);
                hide_answer(&mut attempt.response_body);
            }
        }
        Ok(detail)
    }

    /// One page of deliveries; a wrong state or page length is refused before the
    /// database is asked.
    pub(crate) async fn page_of(
        &self,
        selection: &Selection,
        page: Page,
    ) -> Result<DeliveryPage, ApiError> {
        selection.states().map_err(SupportError::from)?;
        let limit = page.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        let client = self.reader().await?;
        match (page.after, page.before) {
            (after, None) => {
                let deliveries = support::list(&client, selection, after, limit).await?;
                let next_after = deliveries
                    .last()
                    .filter(|_| deliveries.len() as i64 == limit)
                    .map(|last| last.id);
                // Paged forward, the page it came from is newer than its first row.
                let previous_before = after.and(deliveries.first().map(|first| first.id));
                Ok(DeliveryPage {
                    deliveries,
                    next_after,
                    previous_before,
                })
            }
            (Some(after), Some(before)) => {
                // Between the two: older than `after`, newer than `before`. Newest first,
                // so the rows past `before` are the page's tail, and the range ends there.
                let mut deliveries = support::list(&client, selection, Some(after), limit).await?;
                let full = deliveries.len() as i64 == limit;
                deliveries.retain(|row| row.id > before);
                let next_after = deliveries
                    .last()
                    .filter(|_| full && deliveries.len() as i64 == limit)
                    .map(|last| last.id);
                Ok(DeliveryPage {
                    previous_before: deliveries.first().map(|first| first.id),
                    next_after,
                    deliveries,
                })
            }
            (None, Some(before)) => {
                // One more than a page says whether a newer page is left.
                let mut deliveries =
                    support::list_before(&client, selection, before, limit + 1).await?;
                let newer_left = deliveries.len() as i64 > limit;
                if newer_left {
                    deliveries.remove(0);
                }
                Ok(DeliveryPage {
                    next_after: deliveries.last().map(|last| last.id),
                    previous_before: deliveries
                        .first()
                        .map(|first| first.id)
                        .filter(|_| newer_left),
                    deliveries,
                })
            }
        }
    }

    /// What support's search box finds for `text`: every way it can be read, each
    /// reading's deliveries (at most `limit`), in the order they are shown. A text no id
    /// could be is refused, saying why.
    /// What a search finds, as `caller` may see it (see [`AdminState::page_for`]): the
    /// partners' answers for support, the read audited first; none for a viewer.
    pub(crate) async fn search_for(
        &self,
        caller: &Caller,
        text: &str,
        limit: i64,
    ) -> Result<Vec<Found>, ApiError> {
        let mut found = self.search(text, limit).await?;
        let mut rows = found
            .iter_mut()
            .flat_map(|found| found.deliveries.iter_mut());
        if !caller.sees_answers() {
            rows.for_each(|row| hide_answer(&mut row.last_error));
        } else if rows.any(|row| row.last_error.is_some()) {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("q", text)
                .finish();
            let target = format!("search?{query}");
            self.audit(
                caller,
                action::DELIVERIES_READ,
                Some(&target),
                Outcome::Ok,
                None,
            )
            .await?;
        }
        Ok(found)
    }

    async fn search(&self, text: &str, limit: i64) -> Result<Vec<Found>, ApiError> {
        let readings =
            Reading::all_of(text).map_err(|refused| ApiError::BadRequest(refused.to_string()))?;
        let client = self.reader().await?;
        let mut found = Vec::with_capacity(readings.len());
        for reading in readings {
            found.push(
                search::find(&client, reading, limit)
                    .await
                    .map_err(DatabaseUnavailable::logged)?,
            );
        }
        Ok(found)
    }

    /// Each partner's last 24 hours by hour, for the overview's chart.
    pub(crate) async fn last_day(&self) -> Result<Vec<PartnerDay>, ApiError> {
        let client = self.reader().await?;
        Ok(chart::last_day(&client)
            .await
            .map_err(DatabaseUnavailable::logged)?)
    }

    /// A connection to the primary: for every write, and what is read beside one.
    pub(crate) async fn client(&self) -> Result<Client, DatabaseUnavailable> {
        self.pool.get().await.map_err(DatabaseUnavailable::logged)
    }

    /// A connection for support's reads: where [`AdminState::reading`] chose for this
    /// request, else the standby when there is one and it answers, else the primary.
    pub(crate) async fn reader(&self) -> Result<Client, DatabaseUnavailable> {
        match &self.pinned {
            Some(pool) => pool.get().await.map_err(DatabaseUnavailable::logged),
            None => standby::read_client(&self.pool, self.standby.as_ref())
                .await
                .map_err(DatabaseUnavailable::logged),
        }
    }

    /// This state with its reads held to one server for a request, and what the page
    /// says about them: the standby and its lag, measured before anything is read (so what
    /// is read is at least that fresh), or the primary and why.
    pub(crate) async fn reading(&self) -> (AdminState, ReadFrom) {
        let from = standby::read_from(&self.pool, self.standby.as_ref()).await;
        let pinned = AdminState {
            pinned: Some(from.pool(&self.pool, self.standby.as_ref()).clone()),
            ..self.clone()
        };
        (pinned, from)
    }

    /// Each partner at a glance, with its circuit breaker.
    pub(crate) async fn partner_summaries(&self) -> Result<Vec<PartnerSummary>, ApiError> {
        let client = self.reader().await?;
        let mut summaries = support::partner_summaries(&client)
            .await
            .map_err(DatabaseUnavailable::logged)?;
        let circuits = circuits::recorded(&client)
            .await
            .map_err(DatabaseUnavailable::logged)?;
        for circuit in circuits {
            if let Some(summary) = summaries
                .iter_mut()
                .find(|summary| summary.partner.as_deref() == Some(circuit.partner.as_str()))
            {
                summary.circuit = Some(circuit);
            }
        }
        Ok(summaries)
    }

    /// One delivery; for the id of a placeholder support re-routed, where it went.
    pub(crate) async fn detail(&self, id: Uuid) -> Result<DeliveryDetail, ApiError> {
        let client = self.reader().await?;
        if let Some(detail) = support::show(&client, id)
            .await
            .map_err(DatabaseUnavailable::logged)?
        {
            return Ok(detail);
        }
        match support::rerouted(&client, id)
            .await
            .map_err(DatabaseUnavailable::logged)?
        {
            Some(rerouted) => Err(ApiError::Rerouted(rerouted)),
            None => Err(ApiError::NotFound(id)),
        }
    }

    /// Resends one delivery; a conflict if it has not ended. Audited, however it ends.
    pub(crate) async fn resend_one(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<ResendReport, ApiError> {
        let result = self.resend(id, &caller.support_actor()).await;
        self.audited(caller, action::RESEND, &id.to_string(), &result)
            .await?;
        result
    }

    async fn resend(&self, id: Uuid, actor: &str) -> Result<ResendReport, ApiError> {
        let mut client = self.client().await?;
        let report = support::resend(&mut client, &Selection::ids(&[id]), actor).await?;
        if report.touched() > 0 {
            tracing::info!(delivery_id = %id, "resent by support");
            return Ok(report);
        }
        if let Some(erased) = report.erased.first() {
            return Err(ApiError::Conflict(erased.to_string()));
        }
        Err(self.why_untouched(&client, id, "resent").await)
    }

    /// Cancels one delivery; a conflict naming the one reason if it is delivered,
    /// cancelled or in flight, not found if there is no such delivery. Audited, however it
    /// ends.
    pub(crate) async fn cancel_one(&self, caller: &Caller, id: Uuid) -> Result<(), ApiError> {
        let result = self.cancel(id, &caller.support_actor()).await;
        self.audited(caller, action::CANCEL, &id.to_string(), &result)
            .await?;
        result
    }

    async fn cancel(&self, id: Uuid, actor: &str) -> Result<(), ApiError> {
        let mut client = self.client().await?;
        let report = support::cancel(&mut client, &[id], actor)
            .await
            .map_err(DatabaseUnavailable::logged)?;
        match report.refused.first() {
            None => {
                tracing::info!(delivery_id = %id, "cancelled by support");
                Ok(())
            }
            Some(refused) if refused.state.is_none() => Err(ApiError::NotFound(id)),
            Some(refused) => Err(ApiError::NotCancelled(*refused)),
        }
    }

    /// Records an action's outcome: done, or failed with the reason the caller was given.
    pub(crate) async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        result: &Result<T, ApiError>,
    ) -> Result<(), ApiError> {
        let (outcome, reason) = match result {
            Ok(_) => (Outcome::Ok, None),
            Err(error) => (Outcome::Failed, Some(error.to_string())),
        };
        self.audit(caller, action, Some(target), outcome, reason.as_deref())
            .await
    }

    async fn why_untouched(&self, client: &Client, id: Uuid, action: &str) -> ApiError {
        match support::show(client, id).await {
            Ok(Some(detail)) => ApiError::Conflict(format!(
                "delivery {id} is {} and cannot be {action} now",
                detail.summary.state
            )),
            Ok(None) => ApiError::NotFound(id),
            Err(error) => DatabaseUnavailable::logged(error).into(),
        }
    }
}

/// The partner's words (an answer, or an error text quoting it) replaced by a note.
fn hide_answer(answer: &mut Option<String>) {
    if answer.is_some() {
        *answer = Some(ANSWER_HIDDEN.to_string());
    }
}

impl AdminState {
    /// A selection in the audit trail's words (see [`described`]).
    pub(crate) fn described(&self, selection: &Selection) -> String {
        described(selection)
    }
}

/// A selection in the audit trail's words: its filters as a query string.
fn described(selection: &Selection) -> String {
    format!(
        "deliveries?{}",
        super::selection::query_string(selection, selection.state.as_deref())
    )
}
