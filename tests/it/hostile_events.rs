//! Hostile events in the outbox: whatever JSON the enrollment flow writes (deep nesting,
//! huge strings, wrong types, unicode edge cases, numbers out of range), parsing it never
//! panics; a refusal names the offending field and never quotes its value; and every
//! contract-valid event still passes and is sent as it was stored.
//!
//! The property tests check `Event::parse` against an oracle: the contract's JSON Schema
//! applied to the body the event would make. The last tests take the same hostile events
//! through PostgreSQL (jsonb, then `event::text`, as the claim reads them) and through a
//! running daemon.

use std::sync::OnceLock;

use crate::support::*;
use chrono::{DateTime, Utc};
use dispatcher::contract::payload::{Event, EventKind};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

/// Put in every hostile string value: a refusal must never repeat it.
const SENTINEL: &str = "PHI-SENTINEL";
/// A refusal is stored with the delivery and shown to support: short, whatever the input.
const MAX_REASON: usize = 512;
/// Far past serde_json's recursion limit (128) and anything the contract nests.
const DEEP: usize = 10_000;

// ---------------------------------------------------------------------------------------
// Contract-valid events, per contract/enrollment.schema.json and viewed-tracker.schema.json
// (as stored: without sendDate, sourceName and eventName, which the dispatcher sets).

/// Text of every kind: arbitrary unicode (NUL and control characters included), the
/// usual suspects, and plain words.
fn text() -> BoxedStrategy<String> {
    const EDGES: &[&str] = &[
        "",
        "\u{0}",
        "a\u{0}b",
        "\u{202E}gpj.exe\u{202C}",
        "\u{200F}שלום",
        "مرحبا",
        "👩🏽‍⚕️",
        "\u{FEFF}",
        "e\u{301}",
        "\u{10FFFF}",
        "\u{FFFD}",
        "\\ud800",
        "\"quoted\"",
        "line\nbreak",
        "`backtick`",
        "expected a string",
        "<script>alert(1)</script>",
        "' OR 1=1 --",
    ];
    prop_oneof![
        4 => any::<String>(),
        2 => prop::sample::select(EDGES).prop_map(str::to_string),
        2 => "[a-zA-Z ]{0,12}",
    ]
    .boxed()
}

fn non_empty() -> BoxedStrategy<String> {
    text()
        .prop_filter("must not be empty", |text| !text.is_empty())
        .boxed()
}

/// The most characters an identifier may have (R13: the schemas' `maxLength`).
const MAX_IDENTIFIER: usize = 255;

/// Identifiers the contract allows (R13): any non-empty text, and the longest, 255
/// characters of one to four bytes each.
fn identifier() -> BoxedStrategy<String> {
    prop_oneof![
        3 => non_empty(),
        1 => longest_identifier(),
    ]
    .boxed()
}

/// `externalIds[].source`: like an identifier, but it may be empty.
fn source() -> BoxedStrategy<String> {
    prop_oneof![3 => text(), 1 => longest_identifier()].boxed()
}

fn longest_identifier() -> BoxedStrategy<String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), MAX_IDENTIFIER),
        prop::sample::select(vec!['x', 'é', '中', '😀']).prop_map(|c| vec![c; MAX_IDENTIFIER]),
    ]
    .prop_map(|chars| chars.into_iter().collect())
    .boxed()
}

/// An identifier one character too long, or as long as the one that stalled routing:
/// 3,008 random characters (the sentinel among them).
fn overlong_identifier() -> BoxedStrategy<String> {
    let long = |length: usize| {
        prop::collection::vec(any::<char>(), length - SENTINEL.len())
            .prop_map(|chars| format!("{SENTINEL}{}", chars.into_iter().collect::<String>()))
    };
    prop_oneof![long(MAX_IDENTIFIER + 1), long(3_008)]
        .prop_map(|text| serde_json::to_string(&text).expect("json"))
        .boxed()
}

fn phone() -> BoxedStrategy<String> {
    "\\+[1-9][0-9]{6,14}".boxed()
}

fn millis() -> BoxedStrategy<u64> {
    prop_oneof![any::<u64>(), Just(0), Just(u64::MAX)].boxed()
}

/// Dates of birth the contract allows: before 1970 they are negative, down to 1900-01-01
/// (R12).
fn birth_millis() -> BoxedStrategy<i64> {
    const EARLIEST: i64 = -2_208_988_800_000;
    prop_oneof![
        EARLIEST..=0_i64,
        EARLIEST..=i64::MAX,
        Just(EARLIEST),
        Just(-1),
    ]
    .boxed()
}

/// An optional field: absent, or present with a value of the strategy.
fn opt<S>(strategy: S) -> impl Strategy<Value = Option<Value>>
where
    S: Strategy,
    S::Value: Into<Value>,
{
    prop::option::of(strategy.prop_map(Into::into))
}

/// An object of the fields that are present.
fn object<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(name, value)| value.map(|value| (name.to_string(), value)))
            .collect(),
    )
}

fn external_ids() -> BoxedStrategy<Option<Value>> {
    opt(prop::collection::vec(
        (source(), identifier()).prop_map(|(source, id)| json!({"source": source, "sourceId": id})),
        0..3,
    ))
    .boxed()
}

fn insurance_card() -> BoxedStrategy<Option<Value>> {
    opt((
        opt(text()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(birth_millis()),
        opt(text()),
        opt(text()),
    )
        .prop_map(|(status, carrier, member, group, name, dob, front, back)| {
            object([
                ("status", status),
                ("carrier", carrier),
                ("member_id", member),
                ("group_num", group),
                ("cardname", name),
                ("card_dob", dob),
                ("front_picture_image", front),
                ("back_picture_image", back),
            ])
        }))
    .boxed()
}

/// What the dispatcher ignores in a stored event (it sets them itself), of any type.
fn ignored_fields() -> BoxedStrategy<[(&'static str, Option<Value>); 3]> {
    let any_scalar = || {
        opt(prop_oneof![
            text().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ])
    };
    (any_scalar(), any_scalar(), any_scalar())
        .prop_map(|(date, source, name)| {
            [
                ("sendDate", date),
                ("sourceName", source),
                ("eventName", name),
            ]
        })
        .boxed()
}

fn valid_enrollment() -> BoxedStrategy<Value> {
    let person = (
        identifier(),
        phone(),
        non_empty(),
        non_empty(),
        opt(birth_millis()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(text()),
    );
    let caregiver = opt(
        (opt(text()), opt(text()), opt(phone()), opt(text())).prop_map(
            |(name, relationship, phone, email)| {
                object([
                    ("name", name),
                    ("relationship", relationship),
                    ("phone", phone),
                    ("email", email),
                ])
            },
        ),
    );
    let address = opt((
        opt(text()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(text()),
    )
        .prop_map(|(street, apt, city, state, zip)| {
            object([
                ("street", street),
                ("apt", apt),
                ("city", city),
                ("state", state),
                ("zip", zip),
            ])
        }));
    let insurance = opt(
        (insurance_card(), insurance_card()).prop_map(|(primary, secondary)| {
            object([
                ("primaryInsurance", primary),
                ("secondaryInsurance", secondary),
            ])
        }),
    );
    let signature = opt((opt(millis()), opt(text()))
        .prop_map(|(timestamp, image)| object([("timestamp", timestamp), ("image", image)])));
    let consents = opt(prop::collection::vec(
        (non_empty(), any::<bool>(), opt(millis())).prop_map(|(name, value, timestamp)| {
            object([
                ("name", Some(name.into())),
                ("value", Some(value.into())),
                ("timestamp", timestamp),
            ])
        }),
        0..4,
    ));
    let patient = (
        person,
        (
            caregiver,
            address,
            insurance,
            signature,
            consents,
            external_ids(),
        ),
    )
        .prop_map(
            |(
                (id, phone, first, last, dob, gender, contact, language, email, call_time),
                (caregiver, address, insurance, signature, consents, external_ids),
            )| {
                object([
                    ("id", Some(id.into())),
                    ("phoneNumber", Some(phone.into())),
                    ("firstName", Some(first.into())),
                    ("lastName", Some(last.into())),
                    ("dob", dob),
                    ("gender", gender),
                    ("contact_method", contact),
                    ("pref_language", language),
                    ("email", email),
                    ("call_time", call_time),
                    ("caregiver", caregiver),
                    ("address", address),
                    ("insurance", insurance),
                    ("signature", signature),
                    ("consents", consents),
                    ("externalIds", external_ids),
                ])
            },
        );
    (
        opt(text()),
        identifier(),
        opt(text()),
        patient,
        ignored_fields(),
    )
        .prop_map(|(message, program, status, patient, ignored)| {
            let mut event = object([
                ("message", message),
                ("supportProgramId", Some(program.into())),
                ("status", status),
                ("patient", Some(patient)),
            ]);
            with_fields(&mut event, ignored);
            event
        })
        .boxed()
}

fn valid_viewed_tracker() -> BoxedStrategy<Value> {
    let patient = (identifier(), phone(), external_ids()).prop_map(|(id, phone, external_ids)| {
        object([
            ("id", Some(id.into())),
            ("phoneNumber", Some(phone.into())),
            ("externalIds", external_ids),
        ])
    });
    (
        opt(text()),
        identifier(),
        opt(text()),
        any::<bool>(),
        patient,
        ignored_fields(),
    )
        .prop_map(|(message, program, status, with_data, patient, ignored)| {
            let mut event = object([
                ("message", message),
                ("supportProgramId", Some(program.into())),
                ("status", status),
                ("data", with_data.then(tracker_data)),
                ("patient", Some(patient)),
            ]);
            with_fields(&mut event, ignored);
            event
        })
        .boxed()
}

fn tracker_data() -> Value {
    json!({"key": "userAction", "value": "viewedTracker"})
}

fn with_fields<const N: usize>(event: &mut Value, fields: [(&str, Option<Value>); N]) {
    if let Value::Object(map) = object(fields) {
        event.as_object_mut().expect("event").extend(map);
    }
}

fn valid_event() -> BoxedStrategy<(EventKind, Value)> {
    prop_oneof![
        valid_enrollment().prop_map(|event| (EventKind::Enrollment, event)),
        valid_viewed_tracker().prop_map(|event| (EventKind::ViewedTracker, event)),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------
// Hostile changes to a valid event, made in its JSON text.

/// A place in an event: object keys and array indices.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A JSON path as the dispatcher names it: `patient.consents[0].value`.
fn path_name(path: &[Step]) -> String {
    let mut name = String::new();
    for step in path {
        match step {
            Step::Key(key) if name.is_empty() => name.push_str(key),
            Step::Key(key) => {
                name.push('.');
                name.push_str(key);
            }
            Step::Index(index) => name.push_str(&format!("[{index}]")),
        }
    }
    name
}

/// Every place in `value` below its root.
fn places(value: &Value) -> Vec<Vec<Step>> {
    fn walk(value: &Value, path: &mut Vec<Step>, found: &mut Vec<Vec<Step>>) {
        let children: Vec<(Step, &Value)> = match value {
            Value::Object(map) => map.iter().map(|(k, v)| (Step::Key(k.clone()), v)).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (Step::Index(i), v))
                .collect(),
            _ => Vec::new(),
        };
        for (step, child) in children {
            path.push(step);
            found.push(path.clone());
            walk(child, path, found);
            path.pop();
        }
    }
    let mut found = Vec::new();
    walk(value, &mut Vec::new(), &mut found);
    found
}

fn at<'v>(value: &'v mut Value, path: &[Step]) -> &'v mut Value {
    path.iter().fold(value, |value, step| match step {
        Step::Key(key) => &mut value[key.as_str()],
        Step::Index(index) => &mut value[*index],
    })
}

/// `patient.consents[1].value` as steps.
fn parse_path(name: &str) -> Vec<Step> {
    name.split('.')
        .flat_map(|part| match part.split_once('[') {
            Some((key, index)) => vec![
                Step::Key(key.into()),
                Step::Index(index.trim_end_matches(']').parse().expect("index")),
            ],
            None => vec![Step::Key(part.into())],
        })
        .collect()
}

/// What is done at the chosen place.
#[derive(Clone, Debug)]
enum Hostility {
    /// The value there becomes this JSON text.
    Replace(String),
    /// The field (or array item) is removed.
    Remove,
    /// A field the contract does not have is added to the object there.
    AddField(String),
}

/// JSON texts that break a field: nesting far past any limit, huge strings, strings too
/// long for an identifier (R13), every wrong type, numbers no integer type holds, escapes
/// that are no character.
fn hostile_json() -> BoxedStrategy<String> {
    let deep = prop_oneof![
        Just(format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP))),
        Just(format!("{}1{}", "{\"a\":".repeat(DEEP), "}".repeat(DEEP))),
        Just(format!(
            "{}[]{}",
            "[{\"id\":".repeat(DEEP / 2),
            "}]".repeat(DEEP / 2)
        )),
    ];
    let huge = (1usize << 20..(1 << 20) + 64).prop_map(|length| {
        serde_json::to_string(&format!("{SENTINEL}{}", "x".repeat(length))).expect("json")
    });
    let wrong_type = prop::sample::select(vec![
        "true".to_string(),
        "false".into(),
        "null".into(),
        "[]".into(),
        "{}".into(),
        "[1, 2]".into(),
        format!("[\"{SENTINEL}\", \"+12027953213\", \"Ann\", \"Lee\"]"),
        "{\"street\": 1}".into(),
        format!("\"{SENTINEL}\""),
        "12345".into(),
    ]);
    let out_of_range = prop::sample::select(vec![
        "1e400",
        "-1e400",
        "18446744073709551616",
        "-9223372036854775809",
        "-1",
        "1.5",
        "1.0",
        "-0",
        "1e-400",
        "123456789012345678901234567890",
        "0.1e1",
    ])
    .prop_map(str::to_string);
    let unicode = prop::sample::select(vec![
        "\"\\ud800\"",
        "\"\\udfff\"",
        "\"a\\ud83d\"",
        "\"\\ud83d\\ude00\"",
        "\"\\u0000\"",
        "\"\\u202e\\u200f\"",
        "\"\u{1F600}\"",
        "\"\\uFFFF\"",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        deep,
        huge,
        overlong_identifier(),
        wrong_type,
        out_of_range,
        unicode
    ]
    .boxed()
}

fn hostility() -> BoxedStrategy<Hostility> {
    prop_oneof![
        6 => hostile_json().prop_map(Hostility::Replace),
        2 => Just(Hostility::Remove),
        2 => prop_oneof![
            Just("middleName".to_string()),
            Just("apartment".to_string()),
            Just("x".repeat(100_000)),
            non_empty(),
        ]
        .prop_map(Hostility::AddField),
    ]
    .boxed()
}

/// A valid event, a place in it and what is done there.
#[derive(Clone, Debug)]
struct Attack {
    kind: EventKind,
    valid: Value,
    path: Vec<Step>,
    hostility: Hostility,
}

impl Attack {
    /// The hostile event's JSON text.
    fn text(&self) -> String {
        const MARKER: &str = "\u{E000}hostile\u{E000}";
        let mut event = self.valid.clone();
        match &self.hostility {
            Hostility::Replace(json) => {
                *at(&mut event, &self.path) = Value::from(MARKER);
                event
                    .to_string()
                    .replacen(&Value::from(MARKER).to_string(), json, 1)
            }
            Hostility::Remove => {
                let (last, parent) = self.path.split_last().expect("below the root");
                match (at(&mut event, parent), last) {
                    (Value::Object(map), Step::Key(key)) => {
                        map.remove(key);
                    }
                    (Value::Array(items), Step::Index(index)) => {
                        items.remove(*index);
                    }
                    _ => unreachable!("a place is a key of an object or an index of an array"),
                }
                event.to_string()
            }
            Hostility::AddField(name) => {
                if let Value::Object(map) = at(&mut event, &self.path) {
                    map.insert(name.clone(), json!(1));
                }
                event.to_string()
            }
        }
    }

    /// What a refusal must name: the place, or for an added field the object it was
    /// added to (the refusal names the field inside it).
    fn named_place(&self) -> String {
        path_name(&self.path)
    }

    /// Whether the place is a field the dispatcher ignores in a stored event (it sets
    /// them itself): anything may stand there.
    fn replaces_an_ignored_field(&self) -> bool {
        matches!(self.hostility, Hostility::Replace(_))
            && matches!(self.path.as_slice(), [Step::Key(key)]
                if ["sendDate", "sourceName", "eventName"].contains(&key.as_str()))
    }
}

fn attack() -> BoxedStrategy<Attack> {
    (valid_event(), any::<Index>(), any::<Index>(), hostility())
        .prop_map(|((kind, valid), place, object, hostility)| {
            let path = match &hostility {
                // Added to an object: the event itself or one inside it.
                Hostility::AddField(_) => {
                    let mut objects: Vec<Vec<Step>> = places(&valid)
                        .into_iter()
                        .filter(|path| at(&mut valid.clone(), path).is_object())
                        .collect();
                    objects.push(Vec::new());
                    objects[object.index(objects.len())].clone()
                }
                _ => {
                    let all = places(&valid);
                    all[place.index(all.len())].clone()
                }
            };
            Attack {
                kind,
                valid,
                path,
                hostility,
            }
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------
// The oracle: is this stored event contract-valid?

fn schema(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Enrollment => "enrollment.schema.json",
        EventKind::ViewedTracker => "viewed-tracker.schema.json",
    }
}

/// Whether the contract allows `text` as a stored event of `kind`: the body it would make
/// (with the fields the dispatcher sets) validates against the contract's schema. A
/// `null` member counts as absent (it is left out of the body, R7); a number that is not
/// a whole one in u64/i64 is allowed nowhere (R5 wants integers; the schema's `integer`
/// would take 1.0).
fn contract_allows(kind: EventKind, text: &str) -> bool {
    fn normalize(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.retain(|_, member| !member.is_null());
                map.values_mut().for_each(normalize);
            }
            Value::Array(items) => items.iter_mut().for_each(normalize),
            // Something no place in the contract takes. `-0` and `0.0` are zero, a whole
            // number (serde_json reads them as floats; values.rs's `zero`).
            Value::Number(number)
                if !(number.is_u64() || number.is_i64()) && number.as_f64() != Some(0.0) =>
            {
                *value = json!({"not a whole number": true});
            }
            _ => {}
        }
    }
    // serde_json's own recursion limit refuses what nests this deep.
    let Ok(mut event) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let Some(map) = event.as_object_mut() else {
        return false;
    };
    for ignored in ["sendDate", "sourceName", "eventName"] {
        map.remove(ignored);
    }
    let mut event = Value::Object(std::mem::take(map));
    normalize(&mut event);
    let map = event.as_object_mut().expect("object");
    map.insert("sendDate".into(), json!("2026-01-01T00:00:00.000Z"));
    map.insert("sourceName".into(), json!("helparound"));
    map.insert("eventName".into(), json!(kind.name()));
    if kind == EventKind::ViewedTracker {
        map.entry("data").or_insert_with(tracker_data);
    }
    body_is_valid(kind, &json!({ "event": event }))
}

fn body_is_valid(kind: EventKind, body: &Value) -> bool {
    static VALIDATORS: OnceLock<[jsonschema::Validator; 2]> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| {
        [EventKind::Enrollment, EventKind::ViewedTracker].map(|kind| {
            let text = std::fs::read_to_string(spec_dir().join(schema(kind))).expect("schema");
            jsonschema::validator_for(&serde_json::from_str(&text).expect("schema is JSON"))
                .expect("schema compiles")
        })
    });
    validators[usize::from(kind == EventKind::ViewedTracker)].is_valid(body)
}

fn send_date() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-04T05:06:07.089Z")
        .expect("date")
        .with_timezone(&Utc)
}

/// What must hold of any parse: a body that validates, or a short refusal that does not
/// repeat a value.
fn check_outcome(kind: EventKind, text: &str) -> Result<Value, String> {
    match Event::parse(kind, text) {
        Ok(event) => {
            let body: Value = serde_json::from_slice(&event.to_body(send_date())).expect("body");
            assert!(
                body_is_valid(kind, &body),
                "an accepted event makes a body the contract refuses: {body}"
            );
            Ok(body)
        }
        Err(refusal) => {
            let reason = refusal.to_string();
            assert!(!reason.is_empty());
            assert!(
                reason.len() <= MAX_REASON,
                "a refusal of {} bytes: {}…",
                reason.len(),
                reason.chars().take(200).collect::<String>()
            );
            assert!(
                !reason.contains(SENTINEL),
                "the refusal repeats a value: {reason}"
            );
            Err(reason)
        }
    }
}

// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        // Failures print their input; tests/ holds no regression files.
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    })]

    /// Every contract-valid event passes, and its body carries exactly what was stored.
    #[test]
    fn valid_events_pass_and_are_sent_as_stored((kind, stored) in valid_event()) {
        let body = match check_outcome(kind, &stored.to_string()) {
            Ok(body) => body,
            Err(reason) => panic!("a valid event was refused: {reason}\n{stored}"),
        };
        let mut sent = body["event"].clone();
        let mut stored = stored;
        for set_by_dispatcher in ["sendDate", "sourceName", "eventName", "data"] {
            sent.as_object_mut().expect("event").remove(set_by_dispatcher);
            stored.as_object_mut().expect("event").remove(set_by_dispatcher);
        }
        prop_assert_eq!(sent, stored);
    }

    /// A hostile change to a valid event: refused, naming the place, exactly when the
    /// contract refuses it.
    #[test]
    fn hostile_events_are_refused_naming_the_field(attack in attack()) {
        let text = attack.text();
        let outcome = check_outcome(attack.kind, &text);
        let allowed = attack.replaces_an_ignored_field() || contract_allows(attack.kind, &text);
        match outcome {
            Ok(_) => prop_assert!(allowed, "accepted, but the contract refuses it: {:?}", attack.hostility),
            Err(reason) => {
                prop_assert!(!allowed, "refused ({}), but the contract allows it", reason);
                let place = attack.named_place();
                prop_assert!(
                    reason.starts_with(&place) || place.is_empty(),
                    "the refusal `{}` does not name `{}`", reason, place
                );
                if let Hostility::AddField(_) = attack.hostility {
                    prop_assert!(reason.ends_with("is not a field of the contract"), "{}", reason);
                }
            }
        }
    }

    /// R13: an identifier over 255 characters (one too many, or the 3,008 that stalled
    /// routing), in whichever of the four places, is refused naming that place, exactly
    /// as the schema refuses it.
    #[test]
    fn identifiers_over_255_characters_are_refused_naming_the_field(
        (kind, valid) in valid_event(),
        place in any::<Index>(),
        overlong in overlong_identifier(),
    ) {
        let identifiers: Vec<Vec<Step>> = places(&valid)
            .into_iter()
            .filter(|path| {
                let name = path_name(path);
                name == "supportProgramId"
                    || name == "patient.id"
                    || name.ends_with("].source")
                    || name.ends_with("].sourceId")
            })
            .collect();
        let attack = Attack {
            kind,
            valid,
            path: identifiers[place.index(identifiers.len())].clone(),
            hostility: Hostility::Replace(overlong),
        };
        let text = attack.text();
        prop_assert!(!contract_allows(kind, &text));
        let reason = check_outcome(kind, &text).expect_err("refused");
        prop_assert_eq!(
            reason,
            format!("{} must be at most 255 characters", attack.named_place())
        );
    }

    /// Any JSON document at all, built from the contract's field names and others.
    #[test]
    fn any_json_document_is_parsed_or_refused_by_the_contract(
        document in any_json(),
        kind in prop_oneof![Just(EventKind::Enrollment), Just(EventKind::ViewedTracker)],
    ) {
        let text = document.to_string();
        let outcome = check_outcome(kind, &text);
        prop_assert_eq!(outcome.is_ok(), contract_allows(kind, &text), "{:?}", outcome);
    }

    /// Any text at all, and valid events cut short or with a byte changed.
    #[test]
    fn any_text_is_refused_without_panic(
        noise in any::<String>(),
        (kind, stored) in valid_event(),
        cut in any::<Index>(),
        inserted in any::<char>(),
    ) {
        let _ = check_outcome(kind, &noise);
        let stored = stored.to_string();
        let mut at = cut.index(stored.len() + 1);
        while !stored.is_char_boundary(at) {
            at -= 1;
        }
        prop_assert!(check_outcome(kind, &stored[..at]).is_err() || at == stored.len());
        let mut changed = stored.clone();
        changed.insert(at, inserted);
        let _ = check_outcome(kind, &changed);
    }
}

/// JSON documents whose keys are often the contract's, so they reach deep into it.
fn any_json() -> BoxedStrategy<Value> {
    const NAMES: &[&str] = &[
        "supportProgramId",
        "patient",
        "id",
        "phoneNumber",
        "firstName",
        "lastName",
        "dob",
        "consents",
        "name",
        "value",
        "timestamp",
        "externalIds",
        "source",
        "sourceId",
        "address",
        "apt",
        "insurance",
        "primaryInsurance",
        "card_dob",
        "signature",
        "caregiver",
        "phone",
        "data",
        "key",
        "message",
        "sendDate",
        "status",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
        phone().prop_map(Value::from),
        Just(Value::from("userAction")),
        Just(Value::from("viewedTracker")),
    ];
    let key =
        prop_oneof![4 => prop::sample::select(NAMES).prop_map(str::to_string), 1 => text()].boxed();
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

// ---------------------------------------------------------------------------------------
// The same through PostgreSQL: stored as jsonb, read back as `event::text`.

/// PostgreSQL's jsonb: `Ok(text read back)`, or `Err` when it refuses to store the text
/// (the enrollment flow's INSERT fails; nothing reaches the outbox).
async fn through_jsonb(db: &TestDb, text: &str) -> Result<String, String> {
    db.client
        .query_one("SELECT $1::text::jsonb::text", &[&text])
        .await
        .map(|row| row.get(0))
        .map_err(|error| error.to_string())
}

#[test]
fn hostile_events_read_back_from_jsonb_are_refused_the_same_way() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDb::unmigrated());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(64)
    });
    runner
        .run(&attack(), |attack| {
            let text = attack.text();
            let direct = check_outcome(attack.kind, &text);
            let Ok(stored) = runtime.block_on(through_jsonb(&db, &text)) else {
                return Ok(());
            };
            let read_back = check_outcome(attack.kind, &stored);
            // jsonb keeps a number as its value: `0.1e1` is stored, and read back, as `1`,
            // a whole number the contract takes (and the daemon only ever reads events
            // back from jsonb). Only then may the text alone be refused and its read-back
            // taken.
            let normalized_to_whole = matches!(&attack.hostility, Hostility::Replace(number)
                if number.contains(['e', 'E'])
                    && serde_json::from_str::<f64>(number).is_ok_and(|value| value.fract() == 0.0));
            prop_assert!(
                direct.is_ok() == read_back.is_ok() || (normalized_to_whole && read_back.is_ok()),
                "{:?} / {:?}",
                direct,
                read_back
            );
            if let Err(reason) = read_back {
                let place = attack.named_place();
                prop_assert!(
                    reason.starts_with(&place),
                    "`{}` does not name `{}`",
                    reason,
                    place
                );
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_keeps_deep_nesting_and_refuses_what_text_cannot_hold() {
    let db = TestDb::unmigrated().await;
    let event = |send_date: &str, first_name: &str| {
        format!(
            r#"{{"supportProgramId": "p", "sendDate": {send_date}, "patient": {{"id": "p1",
                 "phoneNumber": "+12027953213", "firstName": {first_name}, "lastName": "Lee"}}}}"#
        )
    };
    let nested = format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP));

    // 10,000 levels are stored and read back. In a field the dispatcher ignores they are
    // skipped without recursion (and the body gets its own sendDate); where the contract
    // wants a string they are refused at the first bracket.
    let stored = through_jsonb(&db, &event(&nested, "\"Ann\""))
        .await
        .expect("jsonb stores deep nesting");
    let body = check_outcome(EventKind::Enrollment, &stored).expect("sent");
    assert_eq!(body["event"]["sendDate"], "2026-03-04T05:06:07.089Z");
    let stored = through_jsonb(&db, &event("null", &nested))
        .await
        .expect("jsonb stores deep nesting");
    assert_eq!(
        check_outcome(EventKind::Enrollment, &stored),
        Err("patient.firstName must be a string".to_string())
    );

    // No NUL and no lone surrogate in jsonb: the enrollment flow's INSERT fails.
    for unstorable in [r#""\u0000""#, r#""\ud800""#, r#""a\udfff""#] {
        let refused = through_jsonb(&db, &event("null", unstorable)).await;
        assert!(refused.is_err(), "{unstorable} was stored: {refused:?}");
    }
    // An escaped emoji (a surrogate pair) is a character like any other.
    let stored = through_jsonb(&db, &event("null", r#""\ud83d\ude00""#))
        .await
        .expect("stored");
    let body = check_outcome(EventKind::Enrollment, &stored).expect("sent");
    assert_eq!(body["event"]["patient"]["firstName"], "\u{1F600}");
}

// ---------------------------------------------------------------------------------------
// Through a running daemon.

/// Hostile events between valid events of the same patient: each hostile one ends
/// `invalid` naming its field, and the events before and after it reach the partner.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_events_in_the_outbox_end_invalid_and_the_events_around_them_are_delivered() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let _daemon = Daemon::start(&config, &db);

    let nested = format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP));
    let huge = Value::from(format!("+1{}", "5".repeat(1 << 20))).to_string();
    let replace = |json: &str| Hostility::Replace(json.to_string());
    // (patient, place, hostility, the refusal's start)
    let hostile = [
        (
            "deep",
            "patient.address",
            replace(&nested),
            "patient.address must be an object",
        ),
        (
            "huge",
            "patient.phoneNumber",
            replace(&huge),
            "patient.phoneNumber must be E.164",
        ),
        (
            "range",
            "patient.dob",
            replace("1e400"),
            "patient.dob must be a whole",
        ),
        (
            "negative",
            "patient.consents[1].timestamp",
            replace("-1"),
            "patient.consents[1].timestamp must be a whole",
        ),
        (
            "type",
            "patient.consents[0].value",
            replace(&format!("\"{SENTINEL}\"")),
            "patient.consents[0].value must be a boolean",
        ),
        (
            "shape",
            "patient.address",
            replace(&format!("[\"{SENTINEL}\"]")),
            "patient.address must be an object",
        ),
        (
            "unknown",
            "patient",
            Hostility::AddField("middleName".into()),
            "patient.middleName is not a field of the contract",
        ),
    ];
    let mut expected = Vec::new();
    for (patient, place, hostility, reason) in &hostile {
        let mut valid = enrollment_event(patient);
        valid["patient"]["consents"] = json!([
            {"name": "sharePHI", "value": true, "timestamp": 1},
            {"name": "contact", "value": false, "timestamp": 2},
        ]);
        let attack = Attack {
            kind: EventKind::Enrollment,
            valid,
            path: parse_path(place),
            hostility: hostility.clone(),
        };
        // Before, hostile, after: one patient, so the later event waits for the hostile one.
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
        let id = db
            .insert_event_text(ENROLLMENT, &attack.text())
            .await
            .expect("stored");
        db.insert_event(VIEWED_TRACKER, &viewed_tracker_event(patient))
            .await;
        expected.push((id, *reason));
    }
    // Unicode at its edges is no hostility: delivered as stored.
    let mut unicode = enrollment_event("unicode");
    unicode["patient"]["firstName"] = json!("\u{202E}👩🏽‍⚕️ e\u{301} שלום");
    db.insert_event(ENROLLMENT, &unicode).await;
    // Nor is deep nesting where the dispatcher sets the field itself.
    let ignored = Attack {
        kind: EventKind::Enrollment,
        valid: enrollment_event("ignored"),
        path: parse_path("sendDate"),
        hostility: replace(&nested),
    };
    db.insert_event_text(ENROLLMENT, &ignored.text())
        .await
        .expect("stored");

    let valid = 2 * hostile.len() as i64 + 2;
    db.wait_for_state("delivered", valid).await;
    db.wait_for_state("invalid", hostile.len() as i64).await;
    for (event_id, reason) in expected {
        let row = db
            .client
            .query_one(
                "SELECT last_error, attempt_count FROM dispatcher.deliveries WHERE event_id = $1",
                &[&event_id],
            )
            .await
            .expect("delivery");
        let last_error: String = row.get(0);
        assert!(
            last_error.starts_with(reason),
            "{last_error:.200} / {reason}"
        );
        assert!(!last_error.contains(SENTINEL), "{last_error}");
        assert!(last_error.len() <= MAX_REASON, "{} bytes", last_error.len());
        // Never sent: no attempt, nothing at the partner.
        assert_eq!(row.get::<_, i32>(1), 0);
    }
    let received = partner.received();
    assert_eq!(
        received.len() as i64,
        valid,
        "only the valid events were sent"
    );
    let sent_unicode = received
        .iter()
        .find(|request| request.patient_id() == "unicode")
        .expect("the unicode event arrived");
    assert_eq!(
        sent_unicode.json["event"]["patient"]["firstName"],
        unicode["patient"]["firstName"]
    );
    // Per patient: the event after the hostile one went out after the one before it.
    for (patient, ..) in &hostile {
        let names: Vec<String> = received
            .iter()
            .filter(|request| request.patient_id() == *patient)
            .map(|request| {
                request.json["event"]["eventName"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(names, [ENROLLMENT, VIEWED_TRACKER], "{patient}");
    }
}

/// The row that once stalled routing for every partner: a `patient.id` of 3,008 random
/// characters, more than PostgreSQL can index, in the same routing batch as the events
/// after it. R13: its events end `invalid` naming the field, the overlong id is stored
/// with no delivery, and the event after it is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_patient_id_of_3008_characters_ends_invalid_and_holds_up_no_later_event() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let overlong = format!("{SENTINEL}{}", random_text(3_008 - SENTINEL.len()));
    // Written before the daemon starts: one routing batch holds them all.
    let enrolled = db
        .insert_event(ENROLLMENT, &enrollment_event(&overlong))
        .await;
    let viewed = db
        .insert_event(VIEWED_TRACKER, &viewed_tracker_event(&overlong))
        .await;
    db.insert_event(ENROLLMENT, &enrollment_event("after"))
        .await;
    let _daemon = Daemon::start(&config, &db);

    db.wait_for_deliveries(
        &Deliveries::of("acme")
            .of_patient("after")
            .in_state("delivered"),
        1,
    )
    .await;
    for event_id in [enrolled, viewed] {
        let row = db
            .client
            .query_one(
                "SELECT state, last_error, patient_id, partner FROM dispatcher.deliveries
                 WHERE event_id = $1",
                &[&event_id],
            )
            .await
            .expect("one delivery, for support to see");
        assert_eq!(row.get::<_, &str>(0), "invalid");
        assert_eq!(
            row.get::<_, &str>(1),
            "patient.id must be at most 255 characters"
        );
        assert_eq!(row.get::<_, Option<&str>>(2), None, "the id is not copied");
        assert_eq!(row.get::<_, Option<&str>>(3), None);
    }
    assert_eq!(partner.received().len(), 1, "only the valid event was sent");
}

/// Beyond R13, a value R13 lets through and PostgreSQL still refuses: here an event name
/// (any text; routed as `invalid`, "not an event of the contract") of 3,008 random
/// characters, after ops indexed the deliveries' event names for their own reports. Its
/// deliveries fail the routing batch ("index row size … exceeds btree … maximum 2704",
/// SQLSTATE 54000); each such event ends `invalid` with the database's reason and
/// without the value, the events around it are delivered, and ops see the count.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_postgresql_refuses_to_route_ends_invalid_with_its_reason_and_the_rest_is_routed()
{
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    db.client
        .batch_execute(
            "CREATE INDEX deliveries_by_event_name ON dispatcher.deliveries (event_name)",
        )
        .await
        .expect("ops add an index");
    // Written before the daemon starts, so one routing batch holds them all: 20 valid
    // events, with two PostgreSQL refuses among them.
    let mut refused = Vec::new();
    for n in 0..20 {
        if n == 3 || n == 15 {
            let name = format!("{SENTINEL}{}", random_text(3_008 - SENTINEL.len()));
            refused.push(db.insert_event(&name, &enrollment_event(SENTINEL)).await);
        }
        db.insert_event(ENROLLMENT, &enrollment_event(&format!("p-{n}")))
            .await;
    }
    let daemon = Daemon::start(&config, &db);

    db.wait_for_state("delivered", 20).await;
    for event_id in &refused {
        let row = db
            .client
            .query_one(
                "SELECT state, last_error, patient_id, partner, attempt_count
                 FROM dispatcher.deliveries WHERE event_id = $1",
                &[event_id],
            )
            .await
            .expect("one delivery, for support to see");
        assert_eq!(row.get::<_, &str>(0), "invalid");
        let reason: &str = row.get(1);
        assert!(
            reason.starts_with(
                "the database refused to store this event's deliveries: index row size"
            ) && reason.ends_with("(SQLSTATE 54000)"),
            "{reason}"
        );
        assert!(!reason.contains(SENTINEL), "{reason}");
        assert_eq!(row.get::<_, Option<&str>>(2), None);
        assert_eq!(row.get::<_, Option<&str>>(3), None);
        assert_eq!(row.get::<_, i32>(4), 0, "never sent");
    }
    assert_eq!(partner.received().len(), 20);
    let admin = AdminClient::of(&daemon, None).await;
    let metrics = admin
        .raw(admin.http().get(format!("{}/metrics", admin.base)))
        .await
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics
            .lines()
            .any(|line| line == "dispatcher_events_refused_total 2"),
        "{metrics}"
    );
    assert!(!daemon.log_text().contains(SENTINEL), "a value in the log");
}
