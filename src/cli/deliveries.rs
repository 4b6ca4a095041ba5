//! `dispatcher deliveries …`: what support uses to see failures and resend, and what
//! each of its subcommands prints.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;
use uuid::Uuid;

use super::selection::SelectionFlags;
use crate::admin::api::wire::{DeliveryDetailOut, DeliveryOut};
use crate::delivery::breaker::{CircuitState, PartnerCircuit};
use crate::delivery::state::{DeliveryState, WAITING};
use crate::store::circuits;
use crate::store::db::{Client, DbError, GenericClient, Pool};
use crate::store::standby::{self, ReadFrom};
use crate::store::support::{self, DeliveryDetail, DeliverySummary, Selection, SupportError};

#[derive(Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        #[command(flatten)]
        selection: SelectionFlags,
        /// Continue after this delivery id (the last of the previous page).
        #[arg(long)]
        after: Option<Uuid>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show one delivery with every attempt and the partner's answers.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Send deliveries again (back to pending, with a fresh set of attempts): the ids
    /// given, or every delivery the filter selects (failed ones unless --state says
    /// otherwise).
    Retry {
        ids: Vec<Uuid>,
        #[command(flatten)]
        selection: SelectionFlags,
    },
    /// Stop deliveries for good.
    Cancel {
        #[arg(required = true)]
        ids: Vec<Uuid>,
    },
}

/// Where `list` and `show` read: the primary, or the standby of `[support]
/// database_url` when there is one and it can be read.
pub struct Readers {
    pub primary: Pool,
    pub standby: Option<Pool>,
}

impl Readers {
    /// A connection for reading, having said in `notes` (stderr, away from a `--json`
    /// answer) where it leads when that is not simply the primary: the standby and how
    /// far behind it is, or the primary and why not the standby.
    async fn client(&self, notes: &mut impl Write) -> anyhow::Result<Client> {
        let from = standby::read_from(&self.primary, self.standby.as_ref()).await;
        if from != ReadFrom::Primary {
            writeln!(notes, "{from}")?;
        }
        from.pool(&self.primary, self.standby.as_ref())
            .get()
            .await
            .map_err(DbError::from)
            .context("connecting to the database")
    }
}

/// Runs one `dispatcher deliveries` subcommand on a database whose schema is current:
/// writes (and the audit trail) on `client`, the primary; `list` and `show` read from
/// `readers`, saying where in `notes`.
pub async fn run(
    command: DeliveriesCommand,
    client: &mut Client,
    readers: &Readers,
    out: &mut impl Write,
    notes: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        DeliveriesCommand::List {
            selection,
            after,
            limit,
            json,
        } => {
            let reader = readers.client(notes).await?;
            list(&reader, &selection.into(), after, limit, json, out).await
        }
        DeliveriesCommand::Show { id, json } => {
            let reader = readers.client(notes).await?;
            show(&reader, &*client, id, json, out).await
        }
        DeliveriesCommand::Retry { ids, selection } => {
            let selection = Selection::from(selection);
            if ids.is_empty() && selection.names_nothing() {
                bail!("name the deliveries to resend by id, or select them with --state, --partner, --event-name, --event-id, --patient, --since or --until");
            }
            let selection = if ids.is_empty() {
                selection.failed_unless_stated()
            } else {
                Selection {
                    ids: Some(ids),
                    ..selection
                }
            };
            retry(client, &selection, out).await
        }
        DeliveriesCommand::Cancel { ids } => cancel(client, &ids, out).await,
    }
}

/// A failed statement in the command line's words: a wrong state is named by its flag.
fn failed(error: SupportError, doing: &'static str) -> anyhow::Error {
    match error {
        SupportError::UnknownState(error) => anyhow::Error::new(error).context("--state"),
        SupportError::Database(error) => anyhow::Error::new(error).context(doing),
    }
}

use super::tokens::{audited, cli_actor};
use crate::store::audit::{action, Outcome};

async fn list(
    client: &impl GenericClient,
    selection: &Selection,
    after: Option<Uuid>,
    limit: i64,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let rows = support::list(client, selection, after, limit)
        .await
        .map_err(|error| failed(error, "listing deliveries"))?;
    if json {
        let rows: Vec<DeliveryOut> = rows.into_iter().map(DeliveryOut::from).collect();
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    // Why a partner's deliveries are not moving, before the deliveries themselves.
    let circuits = circuits::recorded(client)
        .await
        .map_err(DbError::from)
        .context("reading the partners' circuit breakers")?;
    for circuit in circuits.iter().filter(|circuit| {
        circuit.is_open()
            && selection
                .partner
                .as_ref()
                .is_none_or(|p| *p == circuit.partner)
    }) {
        writeln!(out, "{}", circuit_line(circuit))?;
    }
    writeln!(
        out,
        "{:<36}  {:>8}  {:<16}  {:<44}  {:<18}  {:<10}  {:>5}  {:>6}  LAST ERROR",
        "ID", "EVENT", "PARTNER", "EVENT NAME", "PATIENT", "STATE", "TRIES", "STATUS"
    )?;
    for row in &rows {
        writeln!(out, "{}", table_line(row))?;
    }
    writeln!(out, "({})", deliveries(rows.len()))?;
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
        "{:<36}  {:>8}  {:<16}  {:<44}  {:<18}  {:<10}  {:>5}  {:>6}  {}",
        row.id,
        row.event_id,
        row.partner.as_deref().unwrap_or("-"),
        row.event_name,
        row.patient_id.as_deref().unwrap_or("-"),
        row.state.as_str(),
        row.tries(),
        row.last_status.map_or("-".to_string(), |s| s.to_string()),
        row.last_error.as_deref().unwrap_or(""),
    )
}

/// Reads the delivery on `reader`, records the read on `primary` before printing it.
async fn show(
    reader: &impl GenericClient,
    primary: &impl GenericClient,
    id: Uuid,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let Some(detail) = support::show(reader, id)
        .await
        .map_err(DbError::from)
        .context("reading the delivery")?
    else {
        // A placeholder support re-routed: say where it went.
        match support::rerouted(reader, id)
            .await
            .context("reading the delivery")?
        {
            Some(rerouted) => bail!("{rerouted}"),
            None => bail!("no delivery with id {id}"),
        }
    };
    // It shows the partners' answers: recorded before it is printed.
    audited(
        primary,
        action::DELIVERY_READ,
        Some(&id.to_string()),
        Outcome::Ok,
        None,
    )
    .await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &DeliveryDetailOut::from(detail))?;
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
    match d.state {
        DeliveryState::Waiting => writeln!(out, "state        waiting: {WAITING}")?,
        state => writeln!(out, "state        {state}")?,
    }
    writeln!(out, "attempts     {}", d.tries())?;
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
async fn retry(
    client: &mut Client,
    selection: &Selection,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let report = support::resend(client, selection, &cli_actor())
        .await
        .map_err(|error| failed(error, "resending"))?;
    for id in report.resent.iter().chain(&report.rerouted) {
        audited(
            &*client,
            action::RESEND,
            Some(&id.to_string()),
            Outcome::Ok,
            None,
        )
        .await?;
    }
    write!(out, "{report}")?;
    let Some(ids) = &selection.ids else {
        writeln!(out, "({} resent)", deliveries(report.touched()))?;
        return Ok(());
    };
    if let Some(refusals) = report.refusals(ids) {
        bail!("{refusals}");
    }
    Ok(())
}

async fn cancel(client: &mut Client, ids: &[Uuid], out: &mut impl Write) -> anyhow::Result<()> {
    let report = support::cancel(client, ids, &cli_actor())
        .await
        .map_err(DbError::from)
        .context("cancelling")?;
    for id in &report.cancelled {
        audited(
            client,
            action::CANCEL,
            Some(&id.to_string()),
            Outcome::Ok,
            None,
        )
        .await?;
        writeln!(out, "{id}: cancelled")?;
    }
    if let Some(refusals) = report.refusals() {
        bail!("{refusals}");
    }
    Ok(())
}

/// "1 delivery", "2 deliveries".
fn deliveries(count: usize) -> String {
    match count {
        1 => "1 delivery".to_string(),
        _ => format!("{count} deliveries"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_delivery_is_one_delivery() {
        assert_eq!(deliveries(0), "0 deliveries");
        assert_eq!(deliveries(1), "1 delivery");
        assert_eq!(deliveries(2), "2 deliveries");
    }
}
