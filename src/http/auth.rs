//! How a partner knows a request is ours beyond static headers: a bearer token, HTTP
//! Basic credentials, or an OAuth 2 access token (client credentials grant, RFC 6749
//! section 4.4) fetched from the partner's token endpoint.
//!
//! OAuth tokens are cached until shortly before they expire, fetched once however many
//! requests need one at the same moment (they share the fetch), and fetched again once
//! when the partner answers 401 to a token it no longer accepts.
//!
//! The settings themselves ([`AuthConfig`]) are plain configuration, in `config::auth`;
//! this module is the runtime that acts on them.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use reqwest::header::{HeaderValue, ACCEPT};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::auth::{sensitive_header, AuthConfig, ClientAuthMethod, OAuthClientCredentials};
use crate::http::error::{TransportError, TransportErrorKind};
use crate::http::guard::DestinationPolicy;

/// A token endpoint's answer is small; a hostile one cannot make us hold more.
const TOKEN_ANSWER_CAP: usize = 64 * 1024;
/// Lifetime assumed when the token endpoint does not say (`expires_in` is optional).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// The longest a token is kept, whatever lifetime the endpoint claims: a day-long token
/// is fetched again daily, and a claim of centuries can neither overflow the clock nor
/// keep a token the partner has since revoked.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// A token is replaced this long before it expires (at most a tenth of its lifetime), so
/// it does not expire on the way to the partner.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Why no credential could be had. Never carries a secret or the token endpoint's body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("cannot get an OAuth token: {0}")]
    Request(TransportError),
    #[error("cannot get an OAuth token: the token endpoint answered HTTP {status}{}",
        .error.as_ref().map(|code| format!(" ({code})")).unwrap_or_default())]
    Refused { status: u16, error: Option<String> },
    #[error("cannot get an OAuth token: the token endpoint's answer {0}")]
    Malformed(&'static str),
    #[error("cannot get an OAuth token: internal error in the dispatcher (see its log)")]
    Internal,
}

impl AuthError {
    /// How the failed attempt is recorded: a refused token endpoint is a refused
    /// destination like any other.
    pub(crate) fn into_transport_error(self) -> TransportError {
        let kind = match &self {
            AuthError::Request(error) if error.kind == TransportErrorKind::DestinationRefused => {
                TransportErrorKind::DestinationRefused
            }
            _ => TransportErrorKind::Auth,
        };
        TransportError {
            kind,
            message: self.to_string(),
        }
    }
}

/// The `Authorization` value for one request, and which token it was.
pub(crate) struct Credential {
    pub(crate) header: HeaderValue,
    generation: Option<u64>,
}

/// Supplies one partner's `Authorization` header.
pub(crate) enum Authenticator {
    Static(HeaderValue),
    OAuth(Arc<TokenSource>),
}

impl Authenticator {
    /// `client` is the partner's own client (its TLS settings and destination guard).
    pub(crate) fn new(
        config: &AuthConfig,
        client: reqwest::Client,
        policy: Arc<DestinationPolicy>,
    ) -> Result<Authenticator, &'static str> {
        match config {
            AuthConfig::OAuth2ClientCredentials(settings) => {
                Ok(Authenticator::OAuth(Arc::new(TokenSource {
                    settings: settings.clone(),
                    client,
                    policy,
                    state: Mutex::default(),
                    generations: AtomicU64::new(0),
                })))
            }
            other => {
                let header = other
                    .static_header()?
                    .ok_or("static credentials expected")?;
                Ok(Authenticator::Static(header))
            }
        }
    }

    pub(crate) async fn credential(&self) -> Result<Credential, AuthError> {
        match self {
            Authenticator::Static(header) => Ok(Credential {
                header: header.clone(),
                generation: None,
            }),
            Authenticator::OAuth(source) => source.token(None).await.map(Token::credential),
        }
    }

    /// After the partner answered 401 to `rejected`: a new credential worth one more try,
    /// or `None` when trying again cannot help (static credentials).
    pub(crate) async fn after_rejection(
        &self,
        rejected: &Credential,
    ) -> Option<Result<Credential, AuthError>> {
        match self {
            Authenticator::Static(_) => None,
            Authenticator::OAuth(source) => Some(
                source
                    .token(rejected.generation)
                    .await
                    .map(Token::credential),
            ),
        }
    }
}

#[derive(Clone)]
struct Token {
    access_token: SecretString,
    /// Which fetch produced it, so that many 401s to one token cause one new fetch.
    generation: u64,
    refresh_at: Instant,
}

impl Token {
    fn credential(self) -> Credential {
        // Checked to be a valid header value when the token arrived.
        let header = sensitive_header(&format!("Bearer {}", self.access_token.expose_secret()))
            .unwrap_or_else(|| HeaderValue::from_static(""));
        Credential {
            header,
            generation: Some(self.generation),
        }
    }
}

type TokenFetch = Shared<BoxFuture<'static, Result<Token, AuthError>>>;

#[derive(Default)]
struct TokenState {
    current: Option<Token>,
    /// The fetch under way, shared by every request that needs a token meanwhile.
    fetching: Option<TokenFetch>,
}

pub(crate) struct TokenSource {
    settings: OAuthClientCredentials,
    client: reqwest::Client,
    policy: Arc<DestinationPolicy>,
    state: Mutex<TokenState>,
    generations: AtomicU64,
}

impl TokenSource {
    /// The cached token unless it is due for refresh or is the one the partner
    /// `rejected`; otherwise the result of the (one, shared) fetch of a new one.
    async fn token(self: &Arc<Self>, rejected: Option<u64>) -> Result<Token, AuthError> {
        let fetch = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(token) = &state.current {
                if Some(token.generation) != rejected && Instant::now() < token.refresh_at {
                    return Ok(token.clone());
                }
            }
            match &state.fetching {
                Some(fetch) => fetch.clone(),
                None => {
                    // A bug in the fetch must not leave a panicked future here for every
                    // later request to poll: it ends as an error like any failed fetch.
                    let fetch = AssertUnwindSafe(self.clone().fetch())
                        .catch_unwind()
                        .map(|fetched| fetched.unwrap_or(Err(AuthError::Internal)))
                        .boxed()
                        .shared();
                    state.fetching = Some(fetch.clone());
                    fetch
                }
            }
        };
        let result = fetch.clone().await;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .fetching
            .as_ref()
            .is_some_and(|current| current.ptr_eq(&fetch))
        {
            state.fetching = None;
            if let Ok(token) = &result {
                state.current = Some(token.clone());
            }
        }
        result
    }

    async fn fetch(self: Arc<Self>) -> Result<Token, AuthError> {
        let settings = &self.settings;
        self.policy
            .check_url(&settings.token_url)
            .map_err(|refused| {
                AuthError::Request(TransportError {
                    kind: TransportErrorKind::DestinationRefused,
                    message: refused.to_string(),
                })
            })?;
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &settings.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &settings.audience {
            form.push(("audience", audience));
        }
        let mut request = self
            .client
            .post(settings.token_url.clone())
            .header(ACCEPT, "application/json");
        match settings.client_auth {
            ClientAuthMethod::ClientSecretBasic => {
                // RFC 6749 2.3.1: both are form-encoded before going into Basic.
                let encode = |text: &str| {
                    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
                };
                request = request.basic_auth(
                    encode(&settings.client_id),
                    Some(encode(settings.client_secret.expose_secret())),
                );
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push(("client_id", &settings.client_id));
                form.push(("client_secret", settings.client_secret.expose_secret()));
            }
        }
        let request = request.form(&form);
        drop(form);
        let started = Instant::now();
        let mut response = request
            .send()
            .await
            .map_err(|error| AuthError::Request(error.into()))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| AuthError::Request(error.into()))?
        {
            if body.len() + chunk.len() > TOKEN_ANSWER_CAP {
                return Err(AuthError::Malformed("is too large"));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(AuthError::Refused {
                status: status.as_u16(),
                error: serde_json::from_slice::<TokenError>(&body)
                    .ok()
                    .and_then(|answer| answer.error)
                    .filter(|code| is_error_code(code)),
            });
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let (access_token, lifetime) = parse_token_answer(&body)?;
        tracing::debug!(
            expires_in_s = lifetime.as_secs(),
            generation,
            "fetched an OAuth token"
        );
        Ok(Token {
            access_token,
            generation,
            refresh_at: started
                .checked_add(lifetime.saturating_sub(refresh_margin(lifetime)))
                .unwrap_or(started),
        })
    }
}

fn refresh_margin(lifetime: Duration) -> Duration {
    REFRESH_MARGIN.min(lifetime / 10)
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    token_type: Option<String>,
    /// A number per the RFC; some servers send it as a string.
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TokenError {
    error: Option<String>,
}

/// The RFC's `error` codes are short printable ASCII; anything else is not repeated.
fn is_error_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

fn parse_token_answer(body: &[u8]) -> Result<(SecretString, Duration), AuthError> {
    let answer: TokenAnswer =
        serde_json::from_slice(body).map_err(|_| AuthError::Malformed("is not JSON"))?;
    if let Some(kind) = &answer.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed("has a token_type other than Bearer"));
        }
    }
    let token = answer
        .access_token
        .filter(|token| !token.is_empty())
        .ok_or(AuthError::Malformed("has no access_token"))?;
    if sensitive_header(&format!("Bearer {token}")).is_none() {
        return Err(AuthError::Malformed(
            "has an access_token that cannot be sent in a header",
        ));
    }
    let lifetime = match answer.expires_in {
        None => DEFAULT_TOKEN_LIFETIME,
        Some(value) => {
            let seconds = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|text| text.trim().parse().ok()))
                .ok_or(AuthError::Malformed(
                    "has an expires_in that is not a number",
                ))?;
            Duration::from_secs(seconds).min(MAX_TOKEN_LIFETIME)
        }
    };
    Ok((SecretString::from(token), lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_replaced_shortly_before_it_expires() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(60)),
            Duration::from_secs(6)
        );
        assert_eq!(refresh_margin(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn token_answers_are_read_as_the_rfc_and_common_servers_write_them() {
        let (token, lifetime) = parse_token_answer(
            br#"{"access_token":"t-1","token_type":"Bearer","expires_in":3600}"#,
        )
        .expect("standard answer");
        assert_eq!(token.expose_secret(), "t-1");
        assert_eq!(lifetime, Duration::from_secs(3600));
        let (_, lifetime) = parse_token_answer(
            br#"{"access_token":"t-1","token_type":"bearer","expires_in":"599"}"#,
        )
        .expect("expires_in as a string");
        assert_eq!(lifetime, Duration::from_secs(599));
        let (_, lifetime) = parse_token_answer(br#"{"access_token":"t-1"}"#).expect("minimal");
        assert_eq!(lifetime, DEFAULT_TOKEN_LIFETIME);
        let (_, lifetime) =
            parse_token_answer(br#"{"access_token":"t-1","expires_in":18446744073709551615}"#)
                .expect("a lifetime of centuries");
        assert_eq!(lifetime, MAX_TOKEN_LIFETIME, "kept a day at most");
        for bad in [
            &br#"{"token_type":"Bearer"}"#[..],
            br#"{"access_token":"t-1","token_type":"mac"}"#,
            br#"{"access_token":"t\n1"}"#,
            b"<html>",
        ] {
            assert!(parse_token_answer(bad).is_err());
        }
    }

    #[test]
    fn errors_quote_only_the_oauth_error_code() {
        let error = AuthError::Refused {
            status: 401,
            error: Some("invalid_client".into()),
        };
        assert_eq!(
            error.to_string(),
            "cannot get an OAuth token: the token endpoint answered HTTP 401 (invalid_client)"
        );
        assert!(!is_error_code("secret was \"abc\""));
        assert_eq!(error.into_transport_error().kind, TransportErrorKind::Auth);
    }
}
