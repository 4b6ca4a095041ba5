//! The contract's values that carry a rule (a required string, an identifier of at most
//! 255 characters, an E.164 phone number, epoch milliseconds, a birth date back to 1900),
//! each refusing what breaks it as it is read, and the one way every struct of the
//! contract is read (as an object).

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

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

/// The most characters an identifier may have (ruling R13): `supportProgramId`,
/// `patient.id`, `externalIds[].source` and `externalIds[].sourceId` (the schemas'
/// `maxLength`, which counts characters, not bytes). HelpAround's own ids are 15-36; a
/// longer one is not an id, and PostgreSQL cannot index a value of a few thousand.
pub const MAX_IDENTIFIER_CHARS: usize = 255;

/// What an identifier over [`MAX_IDENTIFIER_CHARS`] is refused with, after its field.
pub const IDENTIFIER_TOO_LONG: &str = "must be at most 255 characters";

/// Whether `text` is short enough for an identifier (R13).
pub fn fits_identifier(text: &str) -> bool {
    text.chars().nth(MAX_IDENTIFIER_CHARS).is_none()
}

/// A required identifier (R13): present, not empty, at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Identifier(String);

impl Identifier {
    /// `text` as an identifier, or why it cannot be one (the words of a refusal).
    pub fn new(text: String) -> Result<Identifier, &'static str> {
        if text.is_empty() {
            return Err("must not be empty");
        }
        Source::new(text).map(|Source(text)| Identifier(text))
    }
}

impl<'de> Deserialize<'de> for Identifier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Identifier::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// `externalIds[].source`: at most 255 characters (R13), and, unlike the other
/// identifiers, allowed empty (the schema sets no `minLength`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Source(String);

impl Source {
    /// `text` as a source, or why it cannot be one (the words of a refusal).
    pub fn new(text: String) -> Result<Source, &'static str> {
        match fits_identifier(&text) {
            true => Ok(Source(text)),
            false => Err(IDENTIFIER_TOO_LONG),
        }
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Source::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
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
            .and_then(|number| number.as_u64().or_else(|| zero(&number)))
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
            .and_then(|number| number.as_i64().or_else(|| zero(&number)))
        {
            Some(millis) if millis >= BirthMillis::EARLIEST => Ok(BirthMillis(millis)),
            _ => Err(serde::de::Error::custom(
                "must be a whole number of milliseconds since the Unix epoch, \
                 from 1900-01-01 (-2208988800000) on",
            )),
        }
    }
}

/// `-0` (or `0.0`) is zero: serde_json reads it as a float, while PostgreSQL's jsonb
/// stores `-0` as `0`, so an event reads the same whichever text the daemon is given.
fn zero<T: Default>(number: &serde_json::Number) -> Option<T> {
    (number.as_f64() == Some(0.0)).then(T::default)
}
