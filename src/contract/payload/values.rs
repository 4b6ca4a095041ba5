//! The contract's values that carry a rule (a required string, an E.164 phone number,
//! epoch milliseconds, a birth date back to 1900), each refusing what breaks it as it is
//! read, and the one way every struct of the contract is read (as an object).

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
