//! `[partners.auth]`, validated: how a partner knows a request is ours beyond static
//! headers. Plain settings, so the configuration needs nothing of the HTTP runtime;
//! `http::auth` fetches and caches the OAuth tokens these settings describe.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// `[partners.auth]`, validated.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`.
    Bearer { token: SecretString },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        username: String,
        password: SecretString,
    },
    /// `Authorization: Bearer <access token from token_url>`.
    OAuth2ClientCredentials(OAuthClientCredentials),
}

#[derive(Debug, Clone)]
pub struct OAuthClientCredentials {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub client_auth: ClientAuthMethod,
}

/// How the client id and secret travel to the token endpoint (RFC 6749 section 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic authentication (the default the RFC asks servers to support).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

impl AuthConfig {
    pub fn token_url(&self) -> Option<&Url> {
        match self {
            AuthConfig::OAuth2ClientCredentials(oauth) => Some(&oauth.token_url),
            _ => None,
        }
    }

    /// The `Authorization` value of the static kinds; `None` for OAuth. Err when the
    /// credentials cannot be sent in a header (checked when the config is loaded).
    pub(crate) fn static_header(&self) -> Result<Option<HeaderValue>, &'static str> {
        let text = match self {
            AuthConfig::Bearer { token } => format!("Bearer {}", token.expose_secret()),
            AuthConfig::Basic { username, password } => {
                if username.contains(':') {
                    return Err("username must not contain `:` (HTTP Basic, RFC 7617)");
                }
                let pair = format!("{username}:{}", password.expose_secret());
                format!("Basic {}", BASE64.encode(pair))
            }
            AuthConfig::OAuth2ClientCredentials(_) => return Ok(None),
        };
        sensitive_header(&text)
            .map(Some)
            .ok_or("contains characters that cannot be sent in an HTTP header")
    }
}

/// A header value marked sensitive, so that it is never printed.
pub(crate) fn sensitive_header(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_encoded_and_a_colon_in_the_username_refused() {
        let basic = AuthConfig::Basic {
            username: "helparound".into(),
            password: SecretString::from("s3cret"),
        };
        let header = basic.static_header().expect("valid").expect("static");
        assert_eq!(
            header.to_str().expect("ascii"),
            format!("Basic {}", BASE64.encode("helparound:s3cret"))
        );
        assert!(header.is_sensitive());
        let colon = AuthConfig::Basic {
            username: "a:b".into(),
            password: SecretString::from("x"),
        };
        assert!(colon.static_header().is_err());
    }
}
