//! Support's search: one box for whatever the caller quotes. A delivery id (the
//! `webhook-id` a partner sees), an event's outbox id, a HelpAround patient id whole or
//! by its first [`MIN_PREFIX`] characters or more, the partner's own id for a patient
//! (the `externalId` of its 200 answer, R10), a support program. The text is read every
//! way it can be ([`Reading::all_of`]) and each reading is one statement that finds its
//! rows by an index (migration 0011), never by reading a table whole; [`explain`] shows
//! its plan (tests/it/overload.rs holds each to its index).

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{DeliverySummary, SUMMARY_COLUMNS};

/// The fewest characters of a patient id searched as a prefix: fewer would match too
/// many patients to be a search. Shorter text is looked up as a whole id only.
pub const MIN_PREFIX: usize = 4;

/// The longest text searched: no identifier is longer (R13 makes an event with a longer
/// one invalid).
pub const MAX_TEXT: usize = 255;

/// Why a text is not searched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchRefused {
    #[error("a search is at most {MAX_TEXT} characters: no id is longer")]
    TooLong,
    #[error("a search cannot hold control characters (tabs, line breaks)")]
    ControlCharacter,
}

/// One way to read what support typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// A delivery's id: the `webhook-id` the partner quotes.
    Delivery(Uuid),
    /// An event's outbox id.
    Event(i64),
    /// A HelpAround patient id, whole (text shorter than [`MIN_PREFIX`]).
    Patient(String),
    /// The first characters of HelpAround patient ids (the whole id included).
    PatientPrefix(String),
    /// The partner's own id for a patient, from its 200 answer (`data.externalId`).
    ExternalId(String),
    /// A support program (`supportProgramId`), while its events' bodies are kept.
    SupportProgram(String),
}

impl Reading {
    /// Every way `text` can be read, in the order the results are shown. Patient ids,
    /// partners' ids and programs are text and may look like numbers or UUIDs, so those
    /// readings are always made.
    pub fn all_of(text: &str) -> Result<Vec<Reading>, SearchRefused> {
        let text = text.trim();
        if text.chars().count() > MAX_TEXT {
            return Err(SearchRefused::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(SearchRefused::ControlCharacter);
        }
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut readings = Vec::new();
        if let Ok(id) = Uuid::parse_str(text) {
            readings.push(Reading::Delivery(id));
        }
        if let Ok(id) = text.parse::<i64>() {
            readings.push(Reading::Event(id));
        }
        if text.chars().count() >= MIN_PREFIX && prefix_end(text).is_some() {
            readings.push(Reading::PatientPrefix(text.to_string()));
        } else {
            readings.push(Reading::Patient(text.to_string()));
        }
        readings.push(Reading::ExternalId(text.to_string()));
        readings.push(Reading::SupportProgram(text.to_string()));
        Ok(readings)
    }
}

/// What one reading found: its deliveries, at most the limit asked for.
#[derive(Debug, Clone)]
pub struct Found {
    pub reading: Reading,
    /// Newest first; by patient id, then newest first, for a prefix.
    pub deliveries: Vec<DeliverySummary>,
    /// More deliveries match than were read.
    pub more: bool,
}

/// The deliveries `reading` matches, at most `limit` of them.
pub async fn find(
    client: &impl GenericClient,
    reading: Reading,
    limit: i64,
) -> Result<Found, tokio_postgres::Error> {
    // One more than asked says whether more match.
    let (sql, params) = statement(&reading, limit.saturating_add(1));
    let rows = client.query(&sql, &as_params(&params)).await?;
    let more = rows.len() as i64 > limit;
    let deliveries = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(DeliverySummary::from_row)
        .collect();
    Ok(Found {
        reading,
        deliveries,
        more,
    })
}

/// The plan PostgreSQL makes for `reading`'s statement, as [`find`] runs it (the same
/// text and values, planned for them), one line per row of `EXPLAIN`. Public for the
/// test that holds each search to its index, and for an operator asking the same of a
/// live database; nothing in the daemon calls it.
pub async fn explain(
    client: &impl GenericClient,
    reading: &Reading,
    limit: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let (sql, params) = statement(reading, limit.saturating_add(1));
    let rows = client
        .query(&format!("EXPLAIN {sql}"), &as_params(&params))
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn as_params(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|param| param.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Each reading's statement and its values: `$1` what is looked for, the limit last.
fn statement(reading: &Reading, limit: i64) -> (String, Params) {
    match reading {
        Reading::Delivery(id) => (
            format!("SELECT {SUMMARY_COLUMNS} FROM dispatcher.every_delivery deliveries WHERE id = $1 LIMIT $2"),
            vec![Box::new(*id), Box::new(limit)],
        ),
        // The (event_id, partner) key's index.
        Reading::Event(id) => (
            format!(
                "SELECT {SUMMARY_COLUMNS} FROM dispatcher.every_delivery deliveries WHERE event_id = $1
                 ORDER BY id DESC LIMIT $2"
            ),
            vec![Box::new(*id), Box::new(limit)],
        ),
        Reading::Patient(patient) => (
            format!(
                "SELECT {SUMMARY_COLUMNS} FROM dispatcher.every_delivery deliveries
                 WHERE patient_id COLLATE \"C\" = $1
                 ORDER BY id DESC LIMIT $2"
            ),
            vec![Box::new(patient.clone()), Box::new(limit)],
        ),
        // The ids starting with the prefix are the range [prefix, end) of the index, in
        // its order, so the limit stops the read however many patients match.
        Reading::PatientPrefix(prefix) => (
            format!(
                "SELECT {SUMMARY_COLUMNS} FROM dispatcher.every_delivery deliveries
                 WHERE patient_id COLLATE \"C\" >= $1 AND patient_id COLLATE \"C\" < $3
                 ORDER BY patient_id COLLATE \"C\", id DESC LIMIT $2"
            ),
            vec![
                Box::new(prefix.clone()),
                Box::new(limit),
                // `all_of` reads a prefix without an end as a whole id.
                Box::new(prefix_end(prefix).unwrap_or_default()),
            ],
        ),
        // That partner's deliveries of the patient it knows by this id.
        Reading::ExternalId(external_id) => (
            format!(
                "WITH known AS (
                     SELECT partner AS known_partner, patient_id AS known_patient
                     FROM dispatcher.partner_patients WHERE external_id = $1
                 )
                 SELECT {SUMMARY_COLUMNS} FROM known JOIN dispatcher.every_delivery deliveries
                     ON patient_id COLLATE \"C\" = known_patient AND partner = known_partner
                 ORDER BY id DESC LIMIT $2"
            ),
            vec![Box::new(external_id.clone()), Box::new(limit)],
        ),
        // The deliveries of the program's newest events (each has one at least); live
        // ones only, as an archived event has no body to name its program.
        Reading::SupportProgram(program) => (
            format!(
                "SELECT {SUMMARY_COLUMNS} FROM dispatcher.deliveries
                 WHERE event_id IN (
                     SELECT id FROM dispatcher.outbox
                     WHERE event ->> 'supportProgramId' = $1 AND event IS NOT NULL
                     ORDER BY id DESC LIMIT $2)
                 ORDER BY id DESC LIMIT $2"
            ),
            vec![Box::new(program.clone()), Box::new(limit)],
        ),
    }
}

/// The least text after every text that starts with `prefix`, in the "C" collation
/// (code point order): the prefix with its last character that has a successor moved on
/// by one, and cut after it. `None` when no character has one.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let after =
            (u32::from(last).saturating_add(1)..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(after) = after {
            chars.push(after);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_starting_with_a_prefix_end_before_its_last_character_moved_on() {
        assert_eq!(prefix_end("ha61").as_deref(), Some("ha62"));
        assert_eq!(prefix_end("ha6z").as_deref(), Some("ha6{"));
        assert_eq!(prefix_end("p\u{d7ff}").as_deref(), Some("p\u{e000}"));
        assert_eq!(prefix_end("p\u{10ffff}").as_deref(), Some("q"));
        assert_eq!(prefix_end("\u{10ffff}\u{10ffff}"), None);
    }

    #[test]
    fn support_types_one_box_and_every_reading_of_it_is_searched() {
        let read = |text: &str| Reading::all_of(text).expect("searched");
        let id = "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b";
        let uuid = Uuid::parse_str(id).expect("uuid");
        assert_eq!(
            read(id),
            [
                Reading::Delivery(uuid),
                Reading::PatientPrefix(id.into()),
                Reading::ExternalId(id.into()),
                Reading::SupportProgram(id.into()),
            ]
        );
        assert_eq!(
            read(" 4217 "),
            [
                Reading::Event(4217),
                Reading::PatientPrefix("4217".into()),
                Reading::ExternalId("4217".into()),
                Reading::SupportProgram("4217".into()),
            ]
        );
        assert_eq!(
            read("ha6")[0],
            Reading::Patient("ha6".into()),
            "three characters are a whole id, not a prefix"
        );
        assert_eq!(read("ha61")[0], Reading::PatientPrefix("ha61".into()));
        assert_eq!(read("  "), []);
    }

    #[test]
    fn a_search_longer_than_any_id_or_with_control_characters_is_refused() {
        assert_eq!(
            Reading::all_of(&"p".repeat(MAX_TEXT + 1)),
            Err(SearchRefused::TooLong)
        );
        assert!(Reading::all_of(&"p".repeat(MAX_TEXT)).is_ok());
        assert_eq!(
            Reading::all_of("ha\u{0}61"),
            Err(SearchRefused::ControlCharacter)
        );
    }
}
