//! A connection string read as tokio-postgres reads it, both forms (`postgres://` URLs
//! and `key=value` strings), so that the `sslmode` found here is the one the driver
//! would find: every `sslmode` is taken out and replaced, in place, by what the driver
//! is to negotiate, and `sslrootcert` is refused.

use super::{SslMode, UrlError};

/// A connection string made fit for tokio-postgres: every `sslmode` in it says only what
/// to negotiate (`require` for the verifying modes), in place, so that the driver reads it
/// where it was written and [`super::driver_agrees`] can compare.
pub(super) struct Translated {
    pub(super) for_driver: String,
    /// None when the string gives none.
    pub(super) ssl_mode: Option<SslMode>,
}

/// Reads one parameter, its key and value decoded: an `sslmode` is recorded (only one may
/// be given) and the value the driver gets in its place returned; `sslrootcert` is
/// refused; anything else is the driver's, None.
fn own_param(
    key: &[u8],
    value: &[u8],
    ssl_mode: &mut Option<SslMode>,
) -> Result<Option<&'static str>, UrlError> {
    match key {
        b"sslmode" => {
            if ssl_mode.is_some() {
                return Err(UrlError::SslModeTwice);
            }
            let mode = SslMode::parse(value)?;
            *ssl_mode = Some(mode);
            Ok(Some(match mode.negotiation() {
                tokio_postgres::config::SslMode::Disable => "disable",
                tokio_postgres::config::SslMode::Prefer => "prefer",
                _ => "require",
            }))
        }
        b"sslrootcert" => Err(UrlError::SslRootCert),
        _ => Ok(None),
    }
}

/// A `postgres://` URL's query, split as tokio-postgres splits it (so that a `?`, `&` or
/// `=` in the password does not move it): the login part runs to the first `@` anywhere,
/// the query starts at the first `?` after it, a key runs to the next `=` and its value to
/// the next `&`; keys and values are percent-decoded.
pub(super) fn translate_url(url: &str) -> Result<Translated, UrlError> {
    let after_login = url.split_once('@').map_or(url, |(_, rest)| rest);
    let Some((_, query)) = after_login.split_once('?') else {
        return Ok(Translated {
            for_driver: url.to_string(),
            ssl_mode: None,
        });
    };
    let head = url.strip_suffix(query).ok_or(UrlError::Invalid)?;
    let mut ssl_mode = None;
    let mut params = Vec::new();
    let mut rest = query;
    while !rest.is_empty() {
        let (key, after_key) = rest.split_once('=').ok_or(UrlError::Invalid)?;
        let (value, after_value) = after_key.split_once('&').unwrap_or((after_key, ""));
        rest = after_value;
        match own_param(&percent_decode(key), &percent_decode(value), &mut ssl_mode)? {
            Some(for_driver) => params.push(format!("{key}={for_driver}")),
            None => params.push(format!("{key}={value}")),
        }
    }
    Ok(Translated {
        for_driver: format!("{head}{}", params.join("&")),
        ssl_mode,
    })
}

/// `%XX` as its byte, anything else as it is: percent_encoding's decoding, which
/// tokio-postgres uses.
pub(super) fn percent_decode(text: &str) -> Vec<u8> {
    let hex_digit = |byte: u8| {
        char::from(byte)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut decoded = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if let (b'%', [high, low, after_escape @ ..]) = (byte, after) {
            if let (Some(high), Some(low)) = (hex_digit(*high), hex_digit(*low)) {
                decoded.push((high << 4) | low);
                rest = after_escape;
                continue;
            }
        }
        decoded.push(byte);
        rest = after;
    }
    decoded
}

/// A `key=value key='quoted value'` string, read as tokio-postgres reads it: whitespace
/// around `=`, `'` quotes, `\` escaping the next character in or out of them.
pub(super) fn translate_key_value(text: &str) -> Result<Translated, UrlError> {
    let mut chars = text.char_indices().peekable();
    let mut ssl_mode = None;
    let mut params = Vec::new();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        // tokio-postgres stops reading at an `=` with no key and ignores what follows,
        // an `sslmode` included: refused instead.
        if key.is_empty() {
            return Err(UrlError::Invalid);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=').ok_or(UrlError::Invalid)?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next().ok_or(UrlError::Invalid)? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(chars.next().ok_or(UrlError::Invalid)?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                match c {
                    // A trailing `\` escapes nothing, and the driver drops it.
                    '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                    c => value.push(c),
                }
            }
            if value.is_empty() {
                return Err(UrlError::Invalid);
            }
        }
        let end = chars.peek().map_or(text.len(), |&(index, _)| index);
        match own_param(key.as_bytes(), value.as_bytes(), &mut ssl_mode)? {
            Some(for_driver) => params.push(format!("{key}={for_driver}")),
            None => params.push(text.get(start..end).ok_or(UrlError::Invalid)?.to_string()),
        }
    }
    Ok(Translated {
        for_driver: params.join(" "),
        ssl_mode,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::database::tests::{assert_reads, parsed};
    use crate::config::database::{ConnectionUrl, SslMode, UrlError};

    use super::percent_decode;

    /// The reviewer's downgrade: the driver reads the login part up to the `@`, so a `?`
    /// in the password is not the start of the query, and `require` must stay `require`.
    #[test]
    fn a_question_mark_in_the_password_does_not_hide_the_sslmode() {
        for (url, mode) in [
            (
                "postgres://u:pa%3Fss@db/x?sslmode=require",
                SslMode::Require,
            ),
            ("postgres://u:pa?ss@db/x?sslmode=require", SslMode::Require),
            ("postgres://u:pa?ss@db/x?sslmode=disable", SslMode::Disable),
            (
                "postgres://u:pa?ss@db/x?sslmode=verify-full",
                SslMode::VerifyFull,
            ),
            (
                "postgres://u:pa?s=s&t@db/x?sslmode=verify-ca",
                SslMode::VerifyCa,
            ),
            ("postgres://u:pa?ss@db/x", SslMode::Prefer),
        ] {
            assert_reads(url, mode);
        }
        let literal = parsed("postgres://u:pa?ss@db/x?sslmode=require");
        assert_eq!(literal.postgres.get_password(), Some(&b"pa?ss"[..]));
        assert_eq!(literal.postgres.get_dbname(), Some("x"));
    }

    /// The driver percent-decodes the query's keys and values, so every spelling of an
    /// sslmode it would read is ours to carry out.
    #[test]
    fn a_percent_encoded_sslmode_is_read_as_written() {
        for (url, mode) in [
            ("postgres://u@db/x?ssl%6Dode=require", SslMode::Require),
            ("postgres://u@db/x?ssl%6dode=disable", SslMode::Disable),
            (
                "postgres://u@db/x?sslmode=verify%2Dfull",
                SslMode::VerifyFull,
            ),
            ("postgres://u@db/x?%73slmode=verify%2dca", SslMode::VerifyCa),
            (
                "postgres://u@db/x?application_name=a%26b&ssl%6Dode=require",
                SslMode::Require,
            ),
        ] {
            assert_reads(url, mode);
        }
        assert_eq!(percent_decode("%6D%6dz%zz%4%"), b"mmz%zz%4%");
        assert_eq!(
            ConnectionUrl::parse("postgres://u@db/x?sslroot%63ert=/ca.pem").err(),
            Some(UrlError::SslRootCert)
        );
    }

    /// A `key=value` string is read as the driver reads it: quotes and backslashes
    /// included, and an `sslmode=` inside a quoted or escaped password is the password.
    #[test]
    fn a_quoted_or_escaped_sslmode_in_a_key_value_string_is_read_as_written() {
        for (text, mode) in [
            ("host=db sslmode='require'", SslMode::Require),
            ("host=db sslmode='verify-full'", SslMode::VerifyFull),
            ("host=db sslmode=verify\\-ca", SslMode::VerifyCa),
            (
                "host=db password='x sslmode=disable' sslmode=require",
                SslMode::Require,
            ),
            ("host=db password=x\\ sslmode=disable", SslMode::Prefer),
            (
                "host=db password='a\\' sslmode=disable' dbname=x",
                SslMode::Prefer,
            ),
            ("host=db sslmode='disable'dbname=x", SslMode::Disable),
        ] {
            assert_reads(text, mode);
        }
        let escaped = parsed("host=db password=x\\ sslmode=disable");
        assert_eq!(
            escaped.postgres.get_password(),
            Some(&b"x sslmode=disable"[..])
        );
    }

    /// Two sslmodes, or text the driver would stop reading before an sslmode, leave it
    /// unclear which mode holds: refused, and the password is never in the message.
    #[test]
    fn an_sslmode_given_twice_or_hidden_from_the_driver_is_refused() {
        for (url, error) in [
            (
                "postgres://u:s3cret@db/x?sslmode=verify-full&ssl%6Dode=disable",
                UrlError::SslModeTwice,
            ),
            (
                "host=db password=s3cret sslmode=require sslmode='disable'",
                UrlError::SslModeTwice,
            ),
            (
                "host=db password=s3cret = sslmode=require",
                UrlError::Invalid,
            ),
            (
                "host=db password='s3cret sslmode=require",
                UrlError::Invalid,
            ),
            ("postgres://u:s3cret@db/x?sslmode", UrlError::Invalid),
            // Without a login, the `@` in the query is where the driver ends the login:
            // the sslmode written would be ignored by both readings.
            (
                "postgres://db/x?sslmode=verify-full&user=svc@db",
                UrlError::SslModeUnclear,
            ),
        ] {
            let refused = ConnectionUrl::parse(url).err();
            assert_eq!(refused, Some(error), "{url}");
            assert!(!format!("{refused:?}").contains("s3cret"), "{url}");
        }
    }
}
