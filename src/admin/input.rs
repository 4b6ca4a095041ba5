//! What the API reads beyond serde's defaults, so that it refuses exactly what its
//! OpenAPI document refuses: a field given in a body is never `null` (leave it out
//! instead), a text holds no NUL character (PostgreSQL's text cannot), and a whole
//! number may be written `5.0` (JSON Schema's `integer` allows it). Used with
//! `#[serde(default, deserialize_with = ...)]` on `Option` fields.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A text that is there and holds no NUL (the document says `pattern: ^[^\x00]*$`).
pub(crate) fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.contains('\0') {
        return Err(de::Error::custom("a text cannot hold a NUL character"));
    }
    Ok(Some(text))
}

/// A value that is there: `null` is refused.
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A whole number: `5`, `5.0` or, in a query string, `"5"`.
pub(crate) fn whole<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    deserializer.deserialize_any(Whole).map(Some)
}

struct Whole;

impl Visitor<'_> for Whole {
    type Value = i64;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a whole number (i64)")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
        Ok(value)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
        i64::try_from(value).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<i64, E> {
        // Inside ±2^63, ends excluded: a literal just past i64 (-9223372036854775809)
        // reaches here rounded to -2^63, and must not read as i64::MIN.
        const BOUND: f64 = 9_223_372_036_854_775_808.0;
        let whole = value.fract() == 0.0 && value > -BOUND && value < BOUND;
        if whole {
            Ok(value as i64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(value), &self))
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<i64, E> {
        value
            .parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(value), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Probe {
        #[serde(default, deserialize_with = "text")]
        name: Option<String>,
        #[serde(default, deserialize_with = "whole")]
        number: Option<i64>,
    }

    fn read(json: &str) -> Result<Probe, String> {
        serde_json::from_str(json).map_err(|error| error.to_string())
    }

    #[test]
    fn it_refuses_what_the_document_refuses() {
        assert!(read(r#"{}"#).is_ok_and(|probe| probe.name.is_none() && probe.number.is_none()));
        assert!(read(r#"{"name": null}"#).is_err(), "null is not a text");
        assert!(read(r#"{"name": "a\u0000b"}"#).is_err_and(|error| error.contains("NUL")));
        assert_eq!(
            read(r#"{"number": -4.0}"#).map(|probe| probe.number),
            Ok(Some(-4))
        );
        assert!(read(r#"{"number": 4.5}"#).is_err());
        assert!(read(r#"{"number": 1e19}"#).is_err(), "past i64");
        assert!(
            read(r#"{"number": -9223372036854775809}"#).is_err(),
            "just past i64"
        );
        assert_eq!(
            read(r#"{"number": -9223372036854775808}"#).map(|probe| probe.number),
            Ok(Some(i64::MIN))
        );
        assert!(read(r#"{"number": null}"#).is_err());
        let uri: axum::http::Uri = "/?number=7&name=x".parse().expect("uri");
        let axum::extract::Query(query) =
            axum::extract::Query::<Probe>::try_from_uri(&uri).expect("a query");
        assert_eq!((query.number, query.name.as_deref()), (Some(7), Some("x")));
    }
}
