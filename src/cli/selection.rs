//! The command line's filter flags (`dispatcher deliveries list|retry`), read into the
//! store's one [`Selection`]. The API and the support page read theirs in
//! `admin/selection.rs`; a test here holds the three to the same meaning.

use chrono::{DateTime, Utc};

use crate::store::support::Selection;

/// Which deliveries, as flags. Ids are not a flag: `retry` takes them as arguments.
#[derive(Debug, Default, clap::Args)]
pub struct SelectionFlags {
    /// pending (with waiting and in_flight), waiting, in_flight, delivered, rejected,
    /// dead, invalid, cancelled, unrouted, or failed (rejected, dead, invalid, unrouted).
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub partner: Option<String>,
    #[arg(long)]
    pub event_name: Option<String>,
    #[arg(long = "patient")]
    pub patient_id: Option<String>,
    /// The outbox id of the event the deliveries carry.
    #[arg(long = "event-id")]
    pub event_id: Option<i64>,
    #[arg(
        long,
        help = "Created at or after this time (RFC 3339, e.g. 2026-11-25T09:00:00Z)"
    )]
    pub since: Option<DateTime<Utc>>,
    /// Created before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
}

impl From<SelectionFlags> for Selection {
    fn from(flags: SelectionFlags) -> Selection {
        let SelectionFlags {
            state,
            partner,
            event_name,
            patient_id,
            event_id,
            since,
            until,
        } = flags;
        Selection {
            ids: None,
            state,
            partner,
            event_name,
            patient_id,
            event_id,
            since,
            until,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::admin::page::{listed, overview_address};
    use crate::admin::selection::{QuerySelection, SelectionIn};
    use crate::cli::{Cli, Command, DeliveriesCommand};

    fn listed_by(flags: &[&str]) -> Selection {
        let args = ["dispatcher", "deliveries", "list"].iter().chain(flags);
        match Cli::try_parse_from(args).expect("flags").command {
            Command::Deliveries {
                command: DeliveriesCommand::List { selection, .. },
                ..
            } => selection.into(),
            _ => panic!("not a list"),
        }
    }

    /// Support asks for the same deliveries from a terminal, a script and a browser: each
    /// edge reads its own words, and all three mean one `Selection`.
    #[test]
    fn one_selection_means_the_same_on_the_command_line_in_the_api_and_on_the_page() {
        let command_line = listed_by(&[
            "--state",
            "failed",
            "--partner",
            "acme",
            "--event-name",
            "HelpAround.Patient.Enrollment",
            "--patient",
            "ha-123 & co",
            "--event-id",
            "42",
            "--since",
            "2026-11-25T09:00:00Z",
            "--until",
            "2026-11-26T09:00:00+01:00",
        ]);
        let api_query = QuerySelection::read(
            "state=failed&partner=acme&event_name=HelpAround.Patient.Enrollment\
             &patient_id=ha-123+%26+co&event_id=42&since=2026-11-25T09:00:00Z\
             &until=2026-11-26T08:00:00Z&limit=3",
        )
        .expect("the API's query");
        let api_body: SelectionIn = serde_json::from_value(json!({
            "state": "failed",
            "partner": "acme",
            "event_name": "HelpAround.Patient.Enrollment",
            "patient_id": "ha-123 & co",
            "event_id": 42,
            "since": "2026-11-25T09:00:00Z",
            "until": "2026-11-26T08:00:00Z",
        }))
        .expect("the bulk resend's body");
        // The page's links and filter form ask for what its address says, read as the
        // overview reads it.
        let address = overview_address(&command_line, "failed");
        let query = address.strip_prefix("/?").expect("an address with a query");
        let (page, shown) = listed(QuerySelection::read(query).expect("the page's address"));

        assert_eq!(command_line.partner.as_deref(), Some("acme"), "flags read");
        assert_eq!(command_line, api_query, "the API's query string");
        assert_eq!(command_line, Selection::from(api_body), "the API's body");
        assert_eq!(command_line, page, "the page's address {address}");
        assert_eq!(shown, "failed");
    }

    #[test]
    fn no_flag_selects_everything_on_every_surface() {
        let everything = Selection::default();
        assert_eq!(listed_by(&[]), everything);
        assert_eq!(QuerySelection::read("").expect("empty query"), everything);
        let (page, shown) = listed(QuerySelection::read("state=all").expect("all"));
        assert_eq!((page, shown.as_str()), (everything, "all"));
    }
}
