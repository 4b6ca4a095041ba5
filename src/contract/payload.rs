//! The two webhook bodies of the partner contract (`contract/`), as typed structs.
//!
//! The enrollment flow stores the contract's `event` object; parsing it into these structs
//! *is* the validation: a stored event that breaks the contract is refused with a message
//! naming the field (`patient.lastName is required`) and never a value, because values are
//! health data and the message ends up in the database and in front of support.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

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

/// Why a stored event cannot be sent. The text names a field, never its value (an unknown
/// `event_name` aside: it is ours, not the patient's).
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
                parse_json(json).map(|event| Event::Enrollment(Box::new(event)))
            }
            EventKind::ViewedTracker => parse_json(json).map(Event::ViewedTracker),
        }
    }

    fn external_ids_mut(&mut self) -> &mut Option<Vec<ExternalId>> {
        match self {
            Event::Enrollment(event) => &mut event.patient.external_ids,
            Event::ViewedTracker(event) => &mut event.patient.external_ids,
        }
    }

    /// Adds the partner's own patient id learned from an earlier 200 answer (ruling R9),
    /// unless the enrollment flow already supplied it.
    pub fn merge_external_id(&mut self, source: &str, source_id: &str) {
        let ids = self.external_ids_mut().get_or_insert_with(Vec::new);
        if !ids.iter().any(|id| id.source_id.0 == source_id) {
            ids.push(ExternalId {
                source: source.to_string(),
                source_id: NonEmpty(source_id.to_string()),
            });
        }
    }

    /// The exact bytes to POST: the event plus `sendDate`, `sourceName` and `eventName` (R6).
    pub fn to_body(&self, send_date: DateTime<Utc>) -> Vec<u8> {
        let send_date = send_date.to_rfc3339_opts(SecondsFormat::Millis, true);
        let body = match self {
            Event::Enrollment(event) => serde_json::to_vec(&Body {
                event: Envelope {
                    event: event.as_ref(),
                    data: None,
                    send_date,
                    source_name: SOURCE_NAME,
                    event_name: ENROLLMENT,
                },
            }),
            Event::ViewedTracker(event) => serde_json::to_vec(&Body {
                event: Envelope {
                    event,
                    data: Some(TrackerData::VIEWED_TRACKER),
                    send_date,
                    source_name: SOURCE_NAME,
                    event_name: VIEWED_TRACKER,
                },
            }),
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

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    pub message: Option<String>,
    #[serde(rename = "supportProgramId")]
    pub support_program_id: NonEmpty,
    pub status: Option<String>,
    #[serde(deserialize_with = "object::required")]
    pub patient: EnrolledPatient,
    #[serde(rename = "sendDate", default, skip_serializing)]
    _send_date: Option<IgnoredAny>,
    #[serde(rename = "sourceName", default, skip_serializing)]
    _source_name: Option<IgnoredAny>,
    #[serde(rename = "eventName", default, skip_serializing)]
    _event_name: Option<IgnoredAny>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolledPatient {
    pub id: NonEmpty,
    #[serde(rename = "phoneNumber")]
    pub phone_number: Phone,
    #[serde(rename = "firstName")]
    pub first_name: NonEmpty,
    #[serde(rename = "lastName")]
    pub last_name: NonEmpty,
    pub dob: Option<BirthMillis>,
    pub gender: Option<String>,
    pub contact_method: Option<String>,
    pub pref_language: Option<String>,
    pub email: Option<String>,
    pub call_time: Option<String>,
    #[serde(default, deserialize_with = "object::optional")]
    pub caregiver: Option<Caregiver>,
    #[serde(default, deserialize_with = "object::optional")]
    pub address: Option<Address>,
    #[serde(default, deserialize_with = "object::optional")]
    pub insurance: Option<Insurance>,
    #[serde(default, deserialize_with = "object::optional")]
    pub signature: Option<Signature>,
    #[serde(default, deserialize_with = "object::optional_list")]
    pub consents: Option<Vec<Consent>>,
    #[serde(
        rename = "externalIds",
        default,
        deserialize_with = "object::optional_list"
    )]
    pub external_ids: Option<Vec<ExternalId>>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caregiver {
    pub name: Option<String>,
    pub relationship: Option<String>,
    pub phone: Option<Phone>,
    pub email: Option<String>,
}

/// `apt`, not the table's `apartment` (ruling R3).
#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub street: Option<String>,
    pub apt: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Insurance {
    #[serde(
        rename = "primaryInsurance",
        default,
        deserialize_with = "object::optional"
    )]
    pub primary: Option<InsuranceCard>,
    #[serde(
        rename = "secondaryInsurance",
        default,
        deserialize_with = "object::optional"
    )]
    pub secondary: Option<InsuranceCard>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsuranceCard {
    pub status: Option<String>,
    pub carrier: Option<String>,
    pub member_id: Option<String>,
    pub group_num: Option<String>,
    pub cardname: Option<String>,
    /// A number for both cards (ruling R4), and a birth date (R12).
    pub card_dob: Option<BirthMillis>,
    pub front_picture_image: Option<String>,
    pub back_picture_image: Option<String>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub timestamp: Option<Millis>,
    pub image: Option<String>,
}

/// Sent as `consents` (ruling R2).
#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    pub name: NonEmpty,
    pub value: bool,
    pub timestamp: Option<Millis>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalId {
    pub source: String,
    #[serde(rename = "sourceId")]
    pub source_id: NonEmpty,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewedTracker {
    pub message: Option<String>,
    #[serde(rename = "supportProgramId")]
    pub support_program_id: NonEmpty,
    pub status: Option<String>,
    /// Always `{key: userAction, value: viewedTracker}`; the dispatcher fills it in.
    #[serde(
        rename = "data",
        default,
        skip_serializing,
        deserialize_with = "object::optional"
    )]
    _data: Option<TrackerData>,
    #[serde(deserialize_with = "object::required")]
    pub patient: TrackerPatient,
    #[serde(rename = "sendDate", default, skip_serializing)]
    _send_date: Option<IgnoredAny>,
    #[serde(rename = "sourceName", default, skip_serializing)]
    _source_name: Option<IgnoredAny>,
    #[serde(rename = "eventName", default, skip_serializing)]
    _event_name: Option<IgnoredAny>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerPatient {
    pub id: NonEmpty,
    #[serde(rename = "phoneNumber")]
    pub phone_number: Phone,
    #[serde(
        rename = "externalIds",
        default,
        deserialize_with = "object::optional_list"
    )]
    pub external_ids: Option<Vec<ExternalId>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackerData {
    key: TrackerDataKey,
    value: TrackerDataValue,
}

impl TrackerData {
    const VIEWED_TRACKER: TrackerData = TrackerData {
        key: TrackerDataKey::UserAction,
        value: TrackerDataValue::ViewedTracker,
    };
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum TrackerDataKey {
    #[serde(rename = "userAction")]
    UserAction,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum TrackerDataValue {
    #[serde(rename = "viewedTracker")]
    ViewedTracker,
}

/// A string the contract requires to be present and non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NonEmpty(pub String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(NonEmpty(text))
    }
}

/// A phone number in E.164: `+`, then 7 to 15 digits, the first not 0 (ruling R8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Phone(String);

impl<'de> Deserialize<'de> for Phone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let digits = text.strip_prefix('+').unwrap_or("");
        let valid = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !valid {
            return Err(serde::de::Error::custom(
                "must be E.164 (+ then 7 to 15 digits, the first not 0)",
            ));
        }
        Ok(Phone(text))
    }
}

/// Milliseconds since the Unix epoch, as a JSON integer (ruling R5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Millis(u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Number::deserialize(deserializer)
            .ok()
            .and_then(|number| number.as_u64())
        {
            Some(millis) => Ok(Millis(millis)),
            None => Err(serde::de::Error::custom(
                "must be a whole, non-negative number of milliseconds since the Unix epoch",
            )),
        }
    }
}

/// A date of birth in milliseconds since the Unix epoch (ruling R12): negative before
/// 1970, as most patients of a support program were born; none before 1900-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BirthMillis(i64);

impl BirthMillis {
    /// 1900-01-01T00:00:00Z, the earliest birth the contract accepts.
    pub const EARLIEST: i64 = -2_208_988_800_000;
}

impl<'de> Deserialize<'de> for BirthMillis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Number::deserialize(deserializer)
            .ok()
            .and_then(|number| number.as_i64())
        {
            Some(millis) if millis >= BirthMillis::EARLIEST => Ok(BirthMillis(millis)),
            _ => Err(serde::de::Error::custom(
                "must be a whole number of milliseconds since the Unix epoch, \
                 from 1900-01-01 (-2208988800000) on",
            )),
        }
    }
}

/// serde takes a struct written as an array of its fields (`["p1", "+1202…"]`); the
/// contract has objects only, so every struct of it is read through here.
mod object {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::value::MapAccessDeserializer;
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde::Deserialize;

    /// A `T` that was written as a JSON object.
    pub(super) struct Object<T>(pub(super) T);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer
                .deserialize_map(ObjectVisitor(PhantomData))
                .map(Object)
        }
    }

    struct ObjectVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }

    pub(super) fn required<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Object::deserialize(deserializer).map(|Object(value)| value)
    }

    pub(super) fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<Object<T>>::deserialize(deserializer).map(|value| value.map(|Object(value)| value))
    }

    pub(super) fn optional_list<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<Vec<Object<T>>>::deserialize(deserializer)
            .map(|list| list.map(|list| list.into_iter().map(|Object(value)| value).collect()))
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(json: &str) -> Result<T, InvalidEvent> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let object::Object(value): object::Object<T> =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            InvalidEvent(describe(&path, &error.into_inner()))
        })?;
    deserializer
        .end()
        .map_err(|_| InvalidEvent("event is not a single JSON object".into()))?;
    Ok(value)
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
