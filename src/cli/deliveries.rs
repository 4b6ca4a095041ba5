//! `dispatcher deliveries …`: what support uses to see failures and resend.

use std::io::Write;

use anyhow::{bail, Context};
use uuid::Uuid;

use crate::delivery::breaker::{CircuitState, PartnerCircuit};
use crate::store::circuits;
use crate::store::resend;
use crate::store::support::{self, DeliveryDetail, DeliveryFilter, DeliverySummary};

/// Who is acting from the command line, for the record of support actions.
pub fn cli_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_string());
    format!("cli:{user}")
}

pub async fn list(
    client: &impl deadpool_postgres::GenericClient,
    filter: &DeliveryFilter,
    after: Option<Uuid>,
    limit: i64,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let rows = support::list(client, filter, after, limit)
        .await
        .context("listing deliveries")?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    // Why a partner's deliveries are not moving, before the deliveries themselves.
    let circuits = circuits::recorded(client)
        .await
        .context("reading the partners' circuit breakers")?;
    for circuit in circuits.iter().filter(|circuit| {
        circuit.is_open()
            && filter
                .partner
                .as_ref()
                .is_none_or(|p| *p == circuit.partner)
    }) {
        writeln!(out, "{}", circuit_line(circuit))?;
    }
    writeln!(
        out,
        "{:<36}  {:>8}  {:<16}  {:<44}  {:<18}  {:<10}  {:>3}  {:>6}  LAST ERROR",
        "ID", "EVENT", "PARTNER", "EVENT NAME", "PATIENT", "STATE", "TRY", "STATUS"
    )?;
    for row in &rows {
        writeln!(out, "{}", table_line(row))?;
    }
    writeln!(out, "({} deliveries)", rows.len())?;
    if let Some(last) = rows.last().filter(|_| rows.len() as i64 == limit) {
        writeln!(out, "more: --after {}", last.id)?;
    }
    Ok(())
}

fn circuit_line(circuit: &PartnerCircuit) -> String {
    let since = circuit
        .opened_at
        .map_or(String::new(), |at| format!(" since {}", at.to_rfc3339()));
    let failures = circuit.consecutive_failures;
    match (circuit.state, circuit.retry_at) {
        (CircuitState::HalfOpen, _) => format!(
            "circuit half-open for partner {}{since}: one probe request is out, its other deliveries wait for its answer",
            circuit.partner
        ),
        (_, Some(retry_at)) => format!(
            "circuit open for partner {}{since} after {failures} failed attempts in a row: its deliveries are held; one probe request goes out at {}",
            circuit.partner,
            retry_at.to_rfc3339()
        ),
        _ => format!(
            "circuit open for partner {}{since} after {failures} failed attempts in a row: its deliveries are held",
            circuit.partner
        ),
    }
}

fn table_line(row: &DeliverySummary) -> String {
    format!(
        "{:<36}  {:>8}  {:<16}  {:<44}  {:<18}  {:<10}  {:>3}  {:>6}  {}",
        row.id,
        row.event_id,
        row.partner.as_deref().unwrap_or("-"),
        row.event_name,
        row.patient_id.as_deref().unwrap_or("-"),
        row.state.as_str(),
        row.attempt_count,
        row.last_status.map_or("-".to_string(), |s| s.to_string()),
        row.last_error.as_deref().unwrap_or(""),
    )
}

pub async fn show(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let Some(detail) = support::show(client, id)
        .await
        .context("reading the delivery")?
    else {
        bail!("no delivery with id {id}");
    };
    if json {
        serde_json::to_writer_pretty(&mut *out, &detail)?;
        writeln!(out)?;
        return Ok(());
    }
    print_detail(&detail, out)
}

fn print_detail(detail: &DeliveryDetail, out: &mut impl Write) -> anyhow::Result<()> {
    let d = &detail.summary;
    writeln!(out, "delivery     {}", d.id)?;
    writeln!(out, "event        {} ({})", d.event_id, d.event_name)?;
    writeln!(out, "partner      {}", d.partner.as_deref().unwrap_or("-"))?;
    writeln!(
        out,
        "patient      {}",
        d.patient_id.as_deref().unwrap_or("-")
    )?;
    writeln!(out, "state        {}", d.state)?;
    writeln!(out, "attempts     {}", d.attempt_count)?;
    writeln!(out, "created      {}", d.created_at.to_rfc3339())?;
    if let Some(next) = d.next_attempt_at {
        writeln!(out, "next attempt {}", next.to_rfc3339())?;
    }
    if let Some(error) = &d.last_error {
        writeln!(out, "last error   {error}")?;
    }
    if let Some(erased) = detail.event_erased_at {
        writeln!(
            out,
            "event body   erased on {} (retention); it cannot be sent again",
            erased.to_rfc3339()
        )?;
    }
    // (A delivery never sent had no answers to erase.)
    if let Some(erased) = detail
        .answers_erased_at
        .filter(|_| !detail.attempts.is_empty())
    {
        writeln!(
            out,
            "answers      the partner's answers were erased on {} (retention)",
            erased.to_rfc3339()
        )?;
    }
    for attempt in &detail.attempts {
        writeln!(
            out,
            "\nattempt {} at {} took {} ms: {}",
            attempt.number,
            attempt.started_at.to_rfc3339(),
            attempt.duration_ms,
            attempt
                .http_status
                .map_or("no answer".to_string(), |status| format!("HTTP {status}")),
        )?;
        if let Some(error) = &attempt.error {
            writeln!(out, "  error: {error}")?;
        }
        if let Some(body) = &attempt.response_body {
            writeln!(out, "  answer: {body}")?;
        } else if let Some(erased) = attempt.answer_erased_at {
            writeln!(
                out,
                "  answer: erased on {} (retention)",
                erased.to_rfc3339()
            )?;
        }
    }
    for action in &detail.support_actions {
        writeln!(
            out,
            "\n{} by {} at {}",
            action.action,
            action.actor,
            action.at.to_rfc3339()
        )?;
    }
    Ok(())
}

/// Resends deliveries; for an event that reached no partner, routes it again with the
/// current configuration. With ids, fails naming the ids that could not be resent.
pub async fn retry(
    client: &mut deadpool_postgres::Client,
    selection: &DeliveryFilter,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let report = resend::resend(client, selection, &cli_actor())
        .await
        .context("resending")?;
    for id in &report.resent {
        writeln!(out, "{id}: pending again")?;
    }
    for id in &report.rerouted {
        writeln!(out, "{id}: its event will be routed again")?;
    }
    let Some(ids) = &selection.ids else {
        writeln!(out, "({} deliveries resent)", report.touched())?;
        return Ok(());
    };
    let mut refusals: Vec<String> = report
        .erased
        .iter()
        .map(|erased| {
            format!(
                "{}: the event body was erased on {}; it cannot be sent again",
                erased.id,
                erased.erased_at.format("%Y-%m-%d")
            )
        })
        .collect();
    let untouched: Vec<String> = ids
        .iter()
        .filter(|id| {
            !report.resent.contains(id)
                && !report.rerouted.contains(id)
                && !report.erased.iter().any(|erased| erased.id == **id)
        })
        .map(Uuid::to_string)
        .collect();
    if !untouched.is_empty() {
        refusals.push(format!(
            "not resent (unknown, or still pending or in flight): {}",
            untouched.join(", ")
        ));
    }
    if !refusals.is_empty() {
        bail!("{}", refusals.join("\n"));
    }
    Ok(())
}

pub async fn cancel(
    client: &impl deadpool_postgres::GenericClient,
    ids: &[Uuid],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let cancelled = support::cancel(client, ids, &cli_actor())
        .await
        .context("cancelling")?;
    for id in &cancelled {
        writeln!(out, "{id}: cancelled")?;
    }
    let untouched: Vec<String> = ids
        .iter()
        .filter(|id| !cancelled.contains(id))
        .map(Uuid::to_string)
        .collect();
    if !untouched.is_empty() {
        bail!("not cancelled (unknown, delivered, already cancelled, or in flight right now: try again in a moment): {}", untouched.join(", "));
    }
    Ok(())
}
