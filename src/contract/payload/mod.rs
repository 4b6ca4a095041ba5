//! The two webhook bodies of the partner contract (`contract/`), as typed structs.
//!
//! The enrollment flow stores the contract's `event` object; parsing it into these structs
//! *is* the validation: a stored event that breaks the contract is refused with a message
//! naming the field (`patient.lastName is required`) and never a value, because values are
//! health data and the message ends up in the database and in front of support.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_with::skip_serializing_none;
mod body;
mod every;
mod object;
mod values;

pub use body::*;
pub use values::{
    fits_identifier, BirthMillis, Identifier, Millis, NonEmpty, Phone, Source, IDENTIFIER_TOO_LONG,
    MAX_IDENTIFIER_CHARS,
};

use body::TrackerData;

pub const ENROLLMENT: &str = "HelpAround.Patient.CompleteEnrollment";
pub const VIEWED_TRACKER: &str = "HelpAround.Patient.UserAction.ViewedTracker";
const SOURCE_NAME: &str = "helparound";

/// The events the contract knows, by the `event_name` the enrollment flow writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Enrollment,
    ViewedTracker,
}

impl EventKind {
    /// The event a stored `event_name` stands for; any other name is not in the contract.
    pub fn from_name(event_name: &str) -> Result<EventKind, InvalidEvent> {
        match event_name {
            ENROLLMENT => Ok(EventKind::Enrollment),
            VIEWED_TRACKER => Ok(EventKind::ViewedTracker),
            _ => Err(InvalidEvent(format!(
                "event_name `{event_name}` is not an event of the contract"
            ))),
        }
    }

    /// The contract's name for the event.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Enrollment => ENROLLMENT,
            EventKind::ViewedTracker => VIEWED_TRACKER,
        }
    }
}

/// Why a stored event cannot be sent: every broken field, each named, never its value
/// (an unknown `event_name` aside: it is ours, not the patient's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub String);

/// A parsed, contract-valid event.
#[derive(Debug, Clone)]
pub enum Event {
    Enrollment(Box<Enrollment>),
    ViewedTracker(ViewedTracker),
}

impl Event {
    /// Parses the stored `event` JSON of the given kind, checking it against the contract.
    pub fn parse(kind: EventKind, json: &str) -> Result<Event, InvalidEvent> {
        match kind {
            EventKind::Enrollment => {
                every::parse(kind, json).map(|event| Event::Enrollment(Box::new(event)))
            }
            EventKind::ViewedTracker => every::parse(kind, json).map(Event::ViewedTracker),
        }
    }

    fn external_ids_mut(&mut self) -> &mut Option<Vec<ExternalId>> {
        match self {
            Event::Enrollment(event) => &mut event.patient.external_ids,
            Event::ViewedTracker(event) => &mut event.patient.external_ids,
        }
    }

    /// Adds the partner's own patient id learned from an earlier 200 answer (ruling R9),
    /// unless the enrollment flow already supplied it. One the contract would refuse
    /// (empty, or over 255 characters: R13) is left out, so the body stays valid; none
    /// is remembered since R13, but one may have been before.
    pub fn merge_external_id(&mut self, source: &str, source_id: &str) {
        let (Ok(source), Ok(source_id)) = (
            Source::new(source.to_string()),
            Identifier::new(source_id.to_string()),
        ) else {
            return;
        };
        let ids = self.external_ids_mut().get_or_insert_with(Vec::new);
        if !ids.iter().any(|id| id.source_id == source_id) {
            ids.push(ExternalId { source, source_id });
        }
    }

    /// The exact bytes to POST: the event plus `sendDate`, `sourceName` and `eventName` (R6).
    pub fn to_body(&self, send_date: DateTime<Utc>) -> Vec<u8> {
        self.written(send_date, false)
    }

    /// The same body as [`Event::to_body`], indented for a person to read: the same
    /// fields in the same order, only the whitespace differs.
    pub fn to_pretty_body(&self, send_date: DateTime<Utc>) -> Vec<u8> {
        self.written(send_date, true)
    }

    fn written(&self, send_date: DateTime<Utc>, pretty: bool) -> Vec<u8> {
        fn write(body: &impl Serialize, pretty: bool) -> serde_json::Result<Vec<u8>> {
            if pretty {
                serde_json::to_vec_pretty(body)
            } else {
                serde_json::to_vec(body)
            }
        }
        let send_date = send_date.to_rfc3339_opts(SecondsFormat::Millis, true);
        let body = match self {
            Event::Enrollment(event) => write(
                &Body {
                    event: Envelope {
                        event: event.as_ref(),
                        data: None,
                        send_date,
                        source_name: SOURCE_NAME,
                        event_name: ENROLLMENT,
                    },
                },
                pretty,
            ),
            Event::ViewedTracker(event) => write(
                &Body {
                    event: Envelope {
                        event,
                        data: Some(TrackerData::VIEWED_TRACKER),
                        send_date,
                        source_name: SOURCE_NAME,
                        event_name: VIEWED_TRACKER,
                    },
                },
                pretty,
            ),
        };
        // Plain structs of strings, numbers and booleans always serialize.
        body.expect("webhook bodies are always serializable")
    }
}

#[derive(Serialize)]
struct Body<'a, E: Serialize> {
    event: Envelope<'a, E>,
}

#[skip_serializing_none]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, E: Serialize> {
    #[serde(flatten)]
    event: &'a E,
    data: Option<TrackerData>,
    send_date: String,
    source_name: &'static str,
    event_name: &'static str,
}

/// The most characters of a field name or path a refusal repeats. Every name in the
/// contract is far shorter; an unknown field's name may be anything, and the refusal is
/// stored with the delivery.
const NAME_CAP: usize = 100;

fn capped(name: &str) -> String {
    match name.char_indices().nth(NAME_CAP) {
        Some((end, _)) => format!("{}…", &name[..end]),
        None => name.to_string(),
    }
}

/// Turns a serde error into `<field> <problem>`, dropping the value serde quotes.
fn describe(path: &str, error: &serde_json::Error) -> String {
    let field = if path == "." { "" } else { path };
    let joined = |name: &str| {
        capped(&if field.is_empty() {
            name.to_string()
        } else if field.ends_with(name) {
            field.to_string()
        } else {
            format!("{field}.{name}")
        })
    };
    let subject = capped(if field.is_empty() { "event" } else { field });
    // serde_json appends " at line L column C"; the position is of no use to support.
    let message = error.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(head, _)| head);
    if let Some(name) = backticked(message, "missing field `") {
        return format!("{} is required", joined(name));
    }
    if let Some(name) = backticked(message, "unknown field `") {
        return format!("{} is not a field of the contract", joined(name));
    }
    if let Some(name) = backticked(message, "duplicate field `") {
        return format!("{} appears twice", joined(name));
    }
    if message.starts_with("must ") {
        return format!("{subject} {message}");
    }
    // serde's "invalid type: X, expected Y"; not serde_json's syntax errors ("expected value",
    // "unexpected end of hex escape"), which are malformed JSON.
    if let Some((_, expected)) = message.rsplit_once(", expected ") {
        return format!("{subject} must be {}", plain_expectation(expected));
    }
    if message.contains("recursion limit") {
        return format!("{subject} is nested too deeply");
    }
    format!("{subject} is malformed")
}

fn backticked<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// serde's "expected" phrases, in the contract's words.
fn plain_expectation(expected: &str) -> &str {
    if expected.starts_with("struct ") || expected == "a map" {
        "an object"
    } else if expected == "a sequence" {
        "an array"
    } else {
        expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enrollment() -> serde_json::Value {
        json!({
            "supportProgramId": "prog-1",
            "patient": {"id": "p1", "phoneNumber": "+12027953213", "firstName": "Ann", "lastName": "Lee"}
        })
    }

    fn problem(kind: EventKind, value: serde_json::Value) -> String {
        Event::parse(kind, &value.to_string()).unwrap_err().0
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let mut event = enrollment();
        event["patient"].as_object_mut().unwrap().remove("lastName");
        assert_eq!(
            problem(EventKind::Enrollment, event),
            "patient.lastName is required"
        );

        let mut event = enrollment();
        event.as_object_mut().unwrap().remove("supportProgramId");
        assert_eq!(
            problem(EventKind::Enrollment, event),
            "supportProgramId is required"
        );
    }

    #[test]
    fn patients_born_before_1970_are_sent_with_negative_birth_dates() {
        // 1950-03-14 and 1900-01-01, the earliest birth the contract accepts (R12).
        for dob in [-624_240_000_000_i64, BirthMillis::EARLIEST] {
            let mut event = enrollment();
            event["patient"]["dob"] = json!(dob);
            event["patient"]["insurance"] = json!({"primaryInsurance": {"card_dob": dob}});
            let event = Event::parse(EventKind::Enrollment, &event.to_string()).unwrap();
            let body: serde_json::Value =
                serde_json::from_slice(&event.to_body(DateTime::UNIX_EPOCH)).unwrap();
            assert_eq!(body["event"]["patient"]["dob"], json!(dob));
            assert_eq!(
                body["event"]["patient"]["insurance"]["primaryInsurance"]["card_dob"],
                json!(dob)
            );
        }
    }

    /// PostgreSQL's jsonb stores `-0` as `0`; read directly, it must mean the same.
    #[test]
    fn minus_zero_is_a_birth_on_the_first_of_january_1970_as_jsonb_stores_it() {
        let text =
            enrollment()
                .to_string()
                .replacen("\"patient\":{", "\"patient\":{\"dob\":-0,", 1);
        let event = Event::parse(EventKind::Enrollment, &text).unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&event.to_body(DateTime::UNIX_EPOCH)).unwrap();
        assert_eq!(body["event"]["patient"]["dob"], json!(0));
    }

    #[test]
    fn births_before_1900_and_negative_event_times_are_refused() {
        let mut event = enrollment();
        event["patient"]["dob"] = json!(BirthMillis::EARLIEST - 1);
        let message = problem(EventKind::Enrollment, event);
        assert!(
            message.starts_with("patient.dob must be a whole"),
            "{message}"
        );
        assert!(message.contains("from 1900-01-01"), "{message}");

        let mut event = enrollment();
        event["patient"]["consents"] =
            json!([{"name": "sharePHI", "value": true, "timestamp": -1}]);
        let message = problem(EventKind::Enrollment, event);
        assert!(
            message.starts_with("patient.consents[0].timestamp must be a whole, non-negative"),
            "{message}"
        );
    }

    #[test]
    fn a_phone_number_must_be_e164() {
        for bad in ["2027953213", "+0202795321", "+1 202 795 3213", "+123456"] {
            let mut event = enrollment();
            event["patient"]["phoneNumber"] = json!(bad);
            let message = problem(EventKind::Enrollment, event);
            assert!(
                message.starts_with("patient.phoneNumber must be E.164"),
                "{message}"
            );
        }
    }

    #[test]
    fn wrong_types_are_named_without_their_values() {
        let mut event = enrollment();
        event["patient"]["firstName"] = json!(12345);
        assert_eq!(
            problem(EventKind::Enrollment, event),
            "patient.firstName must be a string"
        );

        let mut event = enrollment();
        event["patient"]["dob"] = json!("1990-01-01");
        let message = problem(EventKind::Enrollment, event);
        assert!(
            message.starts_with("patient.dob must be a whole"),
            "{message}"
        );
        assert!(!message.contains("1990"), "{message}");

        let mut event = enrollment();
        event["patient"]["consents"] = json!([{"name": "sharePHI", "value": "yes"}]);
        let message = problem(EventKind::Enrollment, event);
        assert!(
            message.starts_with("patient.consents[0].value must be"),
            "{message}"
        );
        assert!(!message.contains("yes"), "{message}");
    }

    /// R13: 255 characters (of up to four bytes each) is an identifier; 256 is not, and
    /// the refusal names the field, never the value.
    #[test]
    fn identifiers_over_255_characters_are_refused_naming_the_field() {
        let longest = "\u{1F600}".repeat(MAX_IDENTIFIER_CHARS);
        let too_long = format!("{longest}x");
        let mut event = enrollment();
        event["supportProgramId"] = json!(longest);
        event["patient"]["id"] = json!(longest);
        event["patient"]["externalIds"] = json!([{"source": longest, "sourceId": longest}]);
        assert!(Event::parse(EventKind::Enrollment, &event.to_string()).is_ok());

        for (place, kind) in [
            ("supportProgramId", EventKind::Enrollment),
            ("patient.id", EventKind::Enrollment),
            ("patient.externalIds[0].source", EventKind::Enrollment),
            ("patient.externalIds[0].sourceId", EventKind::ViewedTracker),
            ("patient.id", EventKind::ViewedTracker),
        ] {
            let mut event = enrollment();
            if kind == EventKind::ViewedTracker {
                event["patient"] = json!({"id": "p1", "phoneNumber": "+12027953213"});
            }
            event["patient"]["externalIds"] = json!([{"source": "acme", "sourceId": "crm-1"}]);
            let slot = match place {
                "supportProgramId" => &mut event["supportProgramId"],
                "patient.id" => &mut event["patient"]["id"],
                "patient.externalIds[0].source" => {
                    &mut event["patient"]["externalIds"][0]["source"]
                }
                _ => &mut event["patient"]["externalIds"][0]["sourceId"],
            };
            *slot = json!(too_long);
            let message = problem(kind, event);
            assert_eq!(message, format!("{place} must be at most 255 characters"));
        }
    }

    #[test]
    fn a_remembered_external_id_the_contract_refuses_is_left_out_of_the_body() {
        let stored = json!({"supportProgramId": "prog-1",
            "patient": {"id": "p1", "phoneNumber": "+12027953213"}});
        let mut event = Event::parse(EventKind::ViewedTracker, &stored.to_string()).unwrap();
        event.merge_external_id("acme", &"9".repeat(MAX_IDENTIFIER_CHARS + 1));
        event.merge_external_id("acme", "");
        let body: serde_json::Value =
            serde_json::from_slice(&event.to_body(DateTime::UNIX_EPOCH)).unwrap();
        assert_eq!(body["event"]["patient"].get("externalIds"), None);
    }

    #[test]
    fn fields_outside_the_contract_are_refused() {
        let mut event = enrollment();
        event["patient"]["address"] = json!({"apartment": "12"});
        let message = problem(EventKind::Enrollment, event);
        assert_eq!(
            message,
            "patient.address.apartment is not a field of the contract"
        );
    }

    #[test]
    fn absent_optional_fields_stay_absent_and_dispatcher_fields_are_set() {
        let event = Event::parse(EventKind::Enrollment, &enrollment().to_string()).unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&event.to_body(DateTime::UNIX_EPOCH)).unwrap();
        assert_eq!(
            body,
            json!({"event": {
                "supportProgramId": "prog-1",
                "patient": {"id": "p1", "phoneNumber": "+12027953213", "firstName": "Ann", "lastName": "Lee"},
                "sendDate": "1970-01-01T00:00:00.000Z",
                "sourceName": "helparound",
                "eventName": ENROLLMENT
            }})
        );
    }

    #[test]
    fn viewed_tracker_always_carries_its_data_and_merged_external_ids() {
        let stored = json!({"supportProgramId": "prog-1", "sendDate": "whatever",
            "patient": {"id": "p1", "phoneNumber": "+12027953213"}});
        let mut event = Event::parse(EventKind::ViewedTracker, &stored.to_string()).unwrap();
        event.merge_external_id("acme", "crm-77");
        event.merge_external_id("acme", "crm-77");
        let body: serde_json::Value =
            serde_json::from_slice(&event.to_body(DateTime::UNIX_EPOCH)).unwrap();
        assert_eq!(
            body["event"]["data"],
            json!({"key": "userAction", "value": "viewedTracker"})
        );
        assert_eq!(body["event"]["sendDate"], json!("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            body["event"]["patient"]["externalIds"],
            json!([{"source": "acme", "sourceId": "crm-77"}])
        );
    }

    #[test]
    fn a_wrong_tracker_data_value_is_refused() {
        let stored = json!({"supportProgramId": "prog-1", "data": {"key": "userAction", "value": "clicked"},
            "patient": {"id": "p1", "phoneNumber": "+12027953213"}});
        let message = problem(EventKind::ViewedTracker, stored);
        assert_eq!(message, "data.value must be `viewedTracker`");
    }

    #[test]
    fn an_object_written_as_an_array_of_its_fields_is_refused() {
        let mut event = enrollment();
        event["patient"] = json!(["p1", "+12027953213", "Ann", "Lee"]);
        assert_eq!(
            problem(EventKind::Enrollment, event),
            "patient must be an object"
        );
        let mut event = enrollment();
        event["patient"]["consents"] = json!([["sharePHI", true]]);
        assert_eq!(
            problem(EventKind::Enrollment, event),
            "patient.consents[0] must be an object"
        );
    }

    #[test]
    fn broken_json_is_malformed_and_names_where() {
        let text = r#"{"supportProgramId": "p", "patient": {"id": "p1", "firstName": "\ud800"}}"#;
        assert_eq!(
            Event::parse(EventKind::Enrollment, text).unwrap_err().0,
            "patient.firstName is malformed"
        );
    }

    #[test]
    fn an_unknown_field_is_named_within_bounds() {
        let mut event = enrollment();
        event["patient"]["x".repeat(10_000)] = json!(1);
        let message = problem(EventKind::Enrollment, event);
        assert!(message.starts_with("patient.xxx"), "{message}");
        assert!(
            message.ends_with("… is not a field of the contract"),
            "{message}"
        );
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn an_event_that_is_not_an_object_is_named() {
        assert_eq!(
            problem(EventKind::Enrollment, json!([1, 2])),
            "event must be an object"
        );
    }
}
