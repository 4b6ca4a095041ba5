//! Every broken field of a stored event, not only the first. serde stops at the first
//! problem, so the event is read again with that place mended from a complete, valid
//! example of its kind (a field added or replaced, an unknown one removed), and again,
//! until it parses or a bound is reached; each reading names its problem. The example's
//! values are ours and are never named; the messages name fields only.

use serde::Deserialize;
use serde_json::{json, Value};
use serde_path_to_error::{Path, Segment};

use super::object::Object;
use super::{describe, EventKind, InvalidEvent};

/// Readings after the first: enough for every field of an enrollment to be broken.
const MAX_READINGS: usize = 48;
/// The most bytes of problems a refusal lists; the rest are counted. The refusal is
/// stored with the delivery and shown to support.
const LISTED_BYTES: usize = 400;

/// A problem serde found: where, and what.
struct Problem {
    path: Path,
    error: serde_json::Error,
}

impl Problem {
    fn message(&self) -> String {
        describe(&self.path.to_string(), &self.error)
    }
}

/// The stored text parsed as the contract's `T`, or a refusal naming every broken field
/// (`patient.lastName is required; patient.dob must be …`).
pub(super) fn parse<T: for<'de> Deserialize<'de>>(
    kind: EventKind,
    json: &str,
) -> Result<T, InvalidEvent> {
    // Without tracking the path first: that is every event that keeps the contract, and
    // the tracking roughly doubled the parse. Only a refusal is read again, with the path,
    // to name its fields; both readings take and refuse exactly the same input.
    let mut plain = serde_json::Deserializer::from_str(json);
    if let Ok(Object(value)) = Object::<T>::deserialize(&mut plain) {
        if plain.end().is_ok() {
            return Ok(value);
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let first = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(Object(value)) => {
            return deserializer
                .end()
                .map(|()| value)
                .map_err(|_| InvalidEvent("event is not a single JSON object".into()));
        }
        Err(error) => Problem {
            path: error.path().clone(),
            error: error.into_inner(),
        },
    };
    let mut messages = vec![first.message()];
    // Malformed JSON, nesting past serde_json's limit, numbers no type holds, or not an
    // object: one problem, the first, is all there is to say.
    let Ok(mut event) = serde_json::from_str::<Value>(json) else {
        return Err(refusal(&messages, false));
    };
    if !event.is_object() {
        return Err(refusal(&messages, false));
    }
    let example = example(kind);
    let mut problem = first;
    for _ in 0..MAX_READINGS {
        if !mend(&mut event, &example, &problem) {
            // A place the example cannot stand in for: what was found so far.
            return Err(refusal(&messages, false));
        }
        problem = match serde_path_to_error::deserialize::<_, Object<T>>(&event) {
            Ok(_) => return Err(refusal(&messages, false)),
            Err(error) => Problem {
                path: error.path().clone(),
                error: error.into_inner(),
            },
        };
        let message = problem.message();
        if messages.contains(&message) {
            // No progress: the mend did not take (a duplicate key read as one).
            return Err(refusal(&messages, false));
        }
        messages.push(message);
    }
    Err(refusal(&messages, true))
}

/// The problems joined, as many as fit, then how many more were found, or that the
/// readings stopped with more to find.
fn refusal(messages: &[String], stopped: bool) -> InvalidEvent {
    let mut text = String::new();
    let mut listed = 0;
    for message in messages {
        if listed > 0 && text.len() + message.len() + 2 > LISTED_BYTES {
            break;
        }
        if listed > 0 {
            text.push_str("; ");
        }
        text.push_str(message);
        listed += 1;
    }
    let left = messages.len() - listed;
    match (left, stopped) {
        (0, false) => {}
        (0, true) => text.push_str("; and more"),
        (left, false) => text.push_str(&format!("; and {left} more")),
        (left, true) => text.push_str(&format!("; and {left} more, at least")),
    }
    InvalidEvent(text)
}

/// Mends the place of `problem` from the example: a missing field is added, an unknown
/// one removed, a wrong value replaced. False when it cannot (the example has no such
/// place, or the place is the event itself).
fn mend(event: &mut Value, example: &Value, problem: &Problem) -> bool {
    let segments: Vec<&Segment> = problem.path.iter().collect();
    let message = problem.error.to_string();
    if let Some(name) = named(&message, "missing field `") {
        let Some(value) = example_at(example, &segments).and_then(|object| object.get(name)) else {
            return false;
        };
        return match place(event, &segments) {
            Some(Value::Object(object)) => {
                object.insert(name.to_string(), value.clone());
                true
            }
            _ => false,
        };
    }
    if message.starts_with("unknown field `") {
        // The path ends with the unknown key itself (whatever characters its name has).
        return match segments.split_last() {
            Some((Segment::Map { key }, object)) => match place(event, object) {
                Some(Value::Object(object)) => object.remove(key.as_str()).is_some(),
                _ => false,
            },
            _ => false,
        };
    }
    // A duplicate key is read once from the parsed document: nothing to mend.
    if message.starts_with("duplicate field `") {
        return true;
    }
    if segments.is_empty() {
        return false;
    }
    let Some(value) = example_at(example, &segments) else {
        return false;
    };
    match place(event, &segments) {
        Some(broken) => {
            *broken = value.clone();
            true
        }
        None => false,
    }
}

/// serde's name in a message such as "missing field `lastName`".
fn named<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

fn place<'v>(event: &'v mut Value, segments: &[&Segment]) -> Option<&'v mut Value> {
    segments
        .iter()
        .try_fold(event, |value, segment| match segment {
            Segment::Map { key } => value.get_mut(key.as_str()),
            Segment::Seq { index } => value.get_mut(*index),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
}

/// The example's value at the same place; every item of a list stands for its first.
fn example_at<'e>(example: &'e Value, segments: &[&Segment]) -> Option<&'e Value> {
    segments
        .iter()
        .try_fold(example, |value, segment| match segment {
            Segment::Map { key } => value.get(key.as_str()),
            Segment::Seq { .. } => value.get(0),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
}

/// A valid event of the kind with every field the contract has, values of our own.
fn example(kind: EventKind) -> Value {
    let phone = "+12025550100";
    let millis = 1_614_556_800_000_i64;
    let card = json!({
        "status": "active", "carrier": "c", "member_id": "m", "group_num": "g",
        "cardname": "c", "card_dob": millis, "front_picture_image": "f",
        "back_picture_image": "b"
    });
    let external_ids = json!([{"source": "s", "sourceId": "x"}]);
    match kind {
        EventKind::Enrollment => json!({
            "message": "m", "supportProgramId": "p", "status": "s",
            "patient": {
                "id": "p", "phoneNumber": phone, "firstName": "f", "lastName": "l",
                "dob": millis, "gender": "g", "contact_method": "c", "pref_language": "l",
                "email": "e", "call_time": "c",
                "caregiver": {"name": "n", "relationship": "r", "phone": phone, "email": "e"},
                "address": {"street": "s", "apt": "a", "city": "c", "state": "s", "zip": "z"},
                "insurance": {"primaryInsurance": card, "secondaryInsurance": card},
                "signature": {"timestamp": millis, "image": "i"},
                "consents": [{"name": "n", "value": true, "timestamp": millis}],
                "externalIds": external_ids
            }
        }),
        EventKind::ViewedTracker => json!({
            "message": "m", "supportProgramId": "p", "status": "s",
            "data": {"key": "userAction", "value": "viewedTracker"},
            "patient": {"id": "p", "phoneNumber": phone, "externalIds": external_ids}
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Event;
    use super::*;

    fn refusal(kind: EventKind, event: Value) -> String {
        Event::parse(kind, &event.to_string()).unwrap_err().0
    }

    #[test]
    fn the_examples_are_valid_events() {
        for kind in [EventKind::Enrollment, EventKind::ViewedTracker] {
            let example = example(kind).to_string();
            assert!(Event::parse(kind, &example).is_ok(), "{kind:?}");
        }
    }

    #[test]
    fn every_broken_field_is_named_once_in_the_order_read() {
        // (json! sorts keys: the event reads in that order.)
        let event = json!({
            "supportProgramId": "",
            "patient": {"id": "p1", "phoneNumber": "202-555", "firstName": 7,
                        "dob": "1990-01-01", "middleName": "Q",
                        "consents": [{"name": "a", "value": true}, {"name": "b", "value": "yes"}]}
        });
        assert_eq!(
            refusal(EventKind::Enrollment, event),
            "patient.consents[1].value must be a boolean; \
             patient.dob must be a whole number of milliseconds since the Unix epoch, from 1900-01-01 (-2208988800000) on; \
             patient.firstName must be a string; \
             patient.middleName is not a field of the contract; \
             patient.phoneNumber must be E.164 (+ then 7 to 15 digits, the first not 0); \
             patient.lastName is required; \
             supportProgramId must not be empty"
        );
    }

    #[test]
    fn an_unknown_field_whose_name_has_a_backtick_is_removed_and_reading_goes_on() {
        let event = json!({"supportProgramId": "p", "patient": {"id": "p1", "`": 1}});
        assert_eq!(
            refusal(EventKind::ViewedTracker, event),
            "patient.` is not a field of the contract; patient.phoneNumber is required"
        );
    }

    #[test]
    fn one_broken_field_reads_as_before() {
        let event = json!({"supportProgramId": "p", "patient": {"id": "p1", "phoneNumber": "+12027953213"}});
        assert_eq!(
            refusal(
                EventKind::ViewedTracker,
                json!({"supportProgramId": "p", "patient": {"id": "p1"}})
            ),
            "patient.phoneNumber is required"
        );
        assert!(Event::parse(EventKind::ViewedTracker, &event.to_string()).is_ok());
    }

    #[test]
    fn a_long_list_is_cut_and_counted_and_never_repeats_a_value() {
        let mut patient = serde_json::Map::new();
        for index in 0..60 {
            patient.insert(format!("unknownField{index}"), json!("PHI-SENTINEL"));
        }
        let message = refusal(
            EventKind::Enrollment,
            json!({"supportProgramId": "p", "patient": patient}),
        );
        assert!(message.len() <= 512, "{} bytes", message.len());
        assert!(message.contains("; and "), "{message}");
        assert!(!message.contains("PHI-SENTINEL"), "{message}");
    }
}
