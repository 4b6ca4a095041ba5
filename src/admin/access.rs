//! Who may use the admin server, and who they are.
//!
//! With `[admin] token` set, the API wants `Authorization: Bearer <token>` and the
//! support page a session cookie, which its login form sets after checking the token and
//! asking for the support person's name. The cookie is signed with the token, so changing
//! the token logs everyone out. Without a token the server listens on loopback only (see
//! [`super::AdminServer::bind`]) and every request is let in.
//!
//! The name recorded with a resend or cancel is the session's name on the page, and the
//! `X-Actor` header (default `api`) on the API.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::api::ApiError;
use super::AdminState;

pub(crate) const SESSION_COOKIE: &str = "dispatcher_session";
/// A support session lasts a working day.
const SESSION_SECONDS: u64 = 12 * 60 * 60;
const MAX_ACTOR_LEN: usize = 64;

/// The admin token, if one is configured.
pub(crate) struct Access {
    token: Option<SecretString>,
}

impl Access {
    pub(crate) fn new(token: Option<SecretString>) -> Access {
        Access { token }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.token.is_none()
    }

    /// Compares digests, so the time taken says nothing about how much of a guess was right.
    pub(crate) fn token_matches(&self, given: &str) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let expected = Sha256::digest(token.expose_secret().as_bytes());
        let given = Sha256::digest(given.as_bytes());
        expected
            .iter()
            .zip(given.iter())
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
    }

    fn mac(&self, payload: &str) -> Option<Hmac<Sha256>> {
        let token = self.token.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(token.expose_secret().as_bytes()).ok()?;
        mac.update(payload.as_bytes());
        Some(mac)
    }

    /// A cookie value naming `actor` until the session expires.
    pub(crate) fn session_for(&self, actor: &str) -> Option<String> {
        let expires = now_seconds() + SESSION_SECONDS;
        let payload = format!("{}.{expires}", URL_SAFE_NO_PAD.encode(actor));
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&payload)?.finalize().into_bytes());
        Some(format!("{payload}.{signature}"))
    }

    /// The actor of a valid, unexpired session cookie.
    fn session_actor(&self, cookie: &str) -> Option<String> {
        let (payload, signature) = cookie.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        self.mac(payload)?.verify_slice(&signature).ok()?;
        let (actor, expires) = payload.split_once('.')?;
        if expires.parse::<u64>().ok()? <= now_seconds() {
            return None;
        }
        String::from_utf8(URL_SAFE_NO_PAD.decode(actor).ok()?).ok()
    }
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A name fit for the record: printable, trimmed, bounded.
pub(crate) fn clean_actor(name: &str) -> Option<String> {
    let name: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ACTOR_LEN)
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Lets an API request through only with the bearer token.
pub(crate) async fn require_bearer(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        _ if state.access.is_open() => next.run(request).await,
        Some(given) if state.access.token_matches(given) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// Who made an API request, from `X-Actor`.
pub(crate) struct ApiActor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiActor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let actor = parts
            .headers
            .get("x-actor")
            .and_then(|value| value.to_str().ok())
            .and_then(clean_actor)
            .unwrap_or_else(|| "api".to_string());
        Ok(ApiActor(format!("api:{actor}")))
    }
}

/// A support person signed in to the page; extracting it sends everyone else to the login
/// form.
pub(crate) struct SupportSession {
    pub actor: String,
}

impl FromRequestParts<AdminState> for SupportSession {
    type Rejection = Redirect;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        if state.access.is_open() {
            return Ok(SupportSession {
                actor: "page:loopback".to_string(),
            });
        }
        cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|value| state.access.session_actor(value))
            .map(|actor| SupportSession {
                actor: format!("page:{actor}"),
            })
            .ok_or_else(|| Redirect::to("/login"))
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Refuses a form post sent by another site's page (cross-site request forgery): the
/// browser names the page's origin, which must be this server.
pub(crate) async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::POST && !is_same_origin(request.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "refused: this form was posted from another site",
        )
            .into_response();
    }
    next.run(request).await
}

fn is_same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|site| site == "cross-site" || site == "same-site")
    {
        return false;
    }
    let Some(origin) = headers.get(ORIGIN).and_then(|value| value.to_str().ok()) else {
        // Browsers send Origin with every form post; tools such as curl need not.
        return true;
    };
    let host = headers.get(HOST).and_then(|value| value.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some() && origin_host == host
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::new(Some(SecretString::from("a-token-long-enough-for-tests")))
    }

    #[test]
    fn a_session_names_its_support_person_until_it_is_tampered_with() {
        let access = access();
        let session = access.session_for("Dana").expect("session");
        assert_eq!(access.session_actor(&session).as_deref(), Some("Dana"));

        let (payload, signature) = session.rsplit_once('.').expect("signed");
        let (_, expires) = payload.split_once('.').expect("expiry");
        let forged = format!(
            "{}.{expires}.{signature}",
            URL_SAFE_NO_PAD.encode("Mallory")
        );
        assert_eq!(access.session_actor(&forged), None);

        let other = Access::new(Some(SecretString::from("another-token-long-enough-here")));
        assert_eq!(other.session_actor(&session), None);
    }

    #[test]
    fn only_the_configured_token_matches() {
        let access = access();
        assert!(access.token_matches("a-token-long-enough-for-tests"));
        assert!(!access.token_matches("a-token-long-enough-for-test"));
        assert!(!access.token_matches(""));
    }

    #[test]
    fn a_post_from_another_site_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "127.0.0.1:9187".parse().expect("header"));
        headers.insert(ORIGIN, "http://127.0.0.1:9187".parse().expect("header"));
        assert!(is_same_origin(&headers));
        headers.insert(ORIGIN, "https://evil.example".parse().expect("header"));
        assert!(!is_same_origin(&headers));
    }
}
