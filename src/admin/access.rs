//! Where the admin server may be reached from, and the break-glass token.
//!
//! Who a caller is (sessions, API tokens) is `session.rs`'s; what their role allows,
//! `caller.rs`'s. Without `[admin.oidc]` and without `[admin] token` the server listens on
//! loopback only (see [`super::AdminServer::bind`]) and lets in every request that names
//! it by a loopback name.
//!
//! Listening on loopback is not enough by itself: a web page whose name its owner points
//! at 127.0.0.1 (DNS rebinding) is, to the browser, the same site as the admin server, so
//! it could read the API and press the buttons. Its requests still carry its own name in
//! `Host`, so the API and the page answer only to the names they are published under
//! ([`known_hosts_only`]). The API takes posts only as JSON, which another site's page
//! cannot send without the browser asking us first (we never say yes), and refuses any
//! naming another origin ([`json_posts`]); the page's forms refuse other sites' posts
//! ([`same_origin_posts`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::handler::Handler;
use axum::http::header::{CONTENT_TYPE, COOKIE, HOST, ORIGIN};
use axum::http::Extensions;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::serve::IncomingStream;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::HostAuthority;

const MAX_ACTOR_LEN: usize = 64;

/// The host names the API and the support page answer to.
pub(crate) enum HostRule {
    /// Without a token: `127.0.0.1`, `[::1]` and `localhost`, with this server's port
    /// (which a browser leaves out only when it is the scheme's default).
    Loopback { port: u16, https: bool },
    /// `[admin] allowed_hosts`: each entry's name, with its port or with any.
    Listed(Vec<HostAuthority>),
    /// With sign-in (`[admin.oidc]` or a token) and no `allowed_hosts`: any name
    /// (sign-in keeps strangers out).
    Any,
}

const LOOPBACK_NAMES: [&str; 3] = ["127.0.0.1", "[::1]", "localhost"];

impl HostRule {
    fn admits(&self, asked: &HostAuthority) -> bool {
        match self {
            HostRule::Loopback { port, https } => {
                let default_port = if *https { 443 } else { 80 };
                LOOPBACK_NAMES.contains(&asked.host.as_str())
                    && asked.port.unwrap_or(default_port) == *port
            }
            HostRule::Listed(allowed) => allowed.iter().any(|allowed| {
                allowed.host == asked.host
                    && allowed.port.is_none_or(|port| asked.port == Some(port))
            }),
            HostRule::Any => true,
        }
    }
}

/// The break-glass token, if one is configured, whether people sign in through the
/// identity provider, the names the server answers to, and whether it speaks HTTPS. The
/// checks below take it from whatever state the server shares (`Arc<Access>: FromRef<S>`),
/// so they know nothing of the rest of that state.
pub(crate) struct Access {
    token: Option<SecretString>,
    oidc: bool,
    hosts: HostRule,
    /// Whether the server speaks HTTPS: origins and cookies depend on it.
    https: bool,
    /// `[admin] trusted_proxies`: whose `X-Forwarded-Proto: https` makes a request https.
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl Access {
    pub(crate) fn new(
        token: Option<SecretString>,
        oidc: bool,
        hosts: HostRule,
        https: bool,
    ) -> Access {
        Access {
            token,
            oidc,
            hosts,
            https,
            trusted_proxies: Vec::new(),
        }
    }

    /// Whether the break-glass token is configured.
    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Behind a TLS-terminating proxy at one of these addresses.
    pub(crate) fn trusting_proxies(mut self, proxies: Vec<ipnet::IpNet>) -> Access {
        self.trusted_proxies = proxies;
        self
    }

    /// Whether the session cookies are `Secure`: this server speaks https, or it stands
    /// behind TLS-terminating proxies (`[admin] trusted_proxies`), so the browser only ever
    /// reaches it over https.
    pub(crate) fn secure_cookies(&self) -> bool {
        self.https || !self.trusted_proxies.is_empty()
    }

    /// Whether the browser reached us over https: this server speaks it, or a trusted
    /// proxy that does says so in `X-Forwarded-Proto` (anyone else's word is ignored).
    pub(crate) fn https(&self, extensions: &Extensions, headers: &HeaderMap) -> bool {
        self.https
            || extensions
                .get::<ConnectInfo<Peer>>()
                .is_some_and(|ConnectInfo(Peer(peer))| {
                    self.trusted_proxies
                        .iter()
                        .any(|proxy| proxy.contains(&peer.ip()))
                })
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|value| value.to_str().ok())
                    .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
    }

    fn scheme(&self, extensions: &Extensions, headers: &HeaderMap) -> &'static str {
        if self.https(extensions, headers) {
            "https"
        } else {
            "http"
        }
    }

    /// Neither sign-in nor a token: a loopback-only server that lets every local caller in.
    pub(crate) fn is_open(&self) -> bool {
        self.token.is_none() && !self.oidc
    }

    /// Whether `given` is the break-glass token (never, without one). Compares digests,
    /// so the time taken says nothing about how much of a guess was right.
    pub(crate) fn token_matches(&self, given: &str) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let expected = Sha256::digest(token.expose_secret().as_bytes());
        let given = Sha256::digest(given.as_bytes());
        expected
            .iter()
            .zip(given.iter())
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
    }
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

/// Lets a request through only if it names this server as it is published: the `Host`
/// header, and the authority of an absolute request target (`GET http://host/…`), which
/// HTTP says wins over `Host`. A request naming no host at all is refused too.
pub(crate) async fn known_hosts_only(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    let in_target = request
        .uri()
        .authority()
        .map(|authority| authority.as_str());
    let in_header = match request.headers().get(HOST).map(|value| value.to_str()) {
        None => None,
        Some(Ok(host)) => Some(host),
        Some(Err(_)) => return misdirected(),
    };
    let named: Vec<&str> = in_target.into_iter().chain(in_header).collect();
    let admitted = !named.is_empty()
        && named.iter().all(|name| {
            HostAuthority::parse(name).is_some_and(|asked| access.hosts.admits(&asked))
        });
    if !admitted {
        return misdirected();
    }
    next.run(request).await
}

/// 421 Misdirected Request: this server is not the one the request was meant for. The
/// name asked for is not logged or echoed; it is the caller's.
fn misdirected() -> Response {
    tracing::warn!("admin server: refused a request for a host name it does not answer to");
    (
        StatusCode::MISDIRECTED_REQUEST,
        "refused: the admin server does not answer to this host name \
         (without [admin] token: 127.0.0.1, [::1] or localhost with its port; \
         with a token: [admin] allowed_hosts)\n",
    )
        .into_response()
}

/// `post(handler)` behind [`json_posts`]: on the method alone, so another method an
/// address does not have is still answered 405, not 415.
pub(crate) fn json_post<H, T, S>(access: &Arc<Access>, handler: H) -> MethodRouter<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    post(handler).route_layer(from_fn_with_state(access.clone(), json_posts))
}

/// Lets an API post (or any request that changes something) through only with a JSON
/// body, and not from another site's page. A page can post `text/plain` or a form to any
/// site without the browser asking first; JSON it cannot, so the browser asks with a
/// preflight `OPTIONS`, which the API never allows.
pub(crate) async fn json_posts(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    // Only POST changes anything; other methods no route has are answered 405.
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    if !is_json(request.headers()) {
        return ApiError::NotJson.into_response();
    }
    let scheme = access.scheme(request.extensions(), request.headers());
    if !is_same_origin(request.headers(), scheme) {
        return ApiError::ForeignOrigin.into_response();
    }
    next.run(request).await
}

/// `Content-Type: application/json`, with or without parameters such as `charset`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

/// The address a connection came from (axum's connect info, over http and https alike).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// The value of cookie `name`, if the request carries it.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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
pub(crate) async fn same_origin_posts(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    let scheme = access.scheme(request.extensions(), request.headers());
    if request.method() == Method::POST && !is_same_origin(request.headers(), scheme) {
        return (
            StatusCode::FORBIDDEN,
            "refused: this form was posted from another site",
        )
            .into_response();
    }
    next.run(request).await
}

/// Whether a request comes from this server's own pages, or from no page at all: its
/// `Origin`, when a browser sent one, is `scheme://host` of the request itself.
fn is_same_origin(headers: &HeaderMap, scheme: &str) -> bool {
    match headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok())
    {
        Some("cross-site" | "same-site") => return false,
        // The browser's own word (no page can set it): the page's `Referrer-Policy:
        // no-referrer` makes it send `Origin: null` with our own forms.
        Some("same-origin") => return true,
        _ => {}
    }
    let Some(origin) = headers.get(ORIGIN).and_then(|value| value.to_str().ok()) else {
        // Browsers send Origin with every form post; tools such as curl need not.
        return true;
    };
    let host = headers.get(HOST).and_then(|value| value.to_str().ok());
    let origin_host = origin
        .strip_prefix(scheme)
        .and_then(|rest| rest.strip_prefix("://"));
    origin_host.is_some() && origin_host == host
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::new(
            Some(SecretString::from("a-token-long-enough-for-tests")),
            false,
            HostRule::Any,
            false,
        )
    }

    #[test]
    fn only_the_configured_token_matches() {
        let access = access();
        assert!(access.token_matches("a-token-long-enough-for-tests"));
        assert!(!access.token_matches("a-token-long-enough-for-test"));
        assert!(!access.token_matches(""));
        let without = Access::new(None, true, HostRule::Any, false);
        assert!(
            !without.token_matches(""),
            "without a token nothing is the break-glass token"
        );
    }

    #[test]
    fn a_post_from_another_site_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "127.0.0.1:9187".parse().expect("header"));
        headers.insert(ORIGIN, "http://127.0.0.1:9187".parse().expect("header"));
        assert!(is_same_origin(&headers, "http"));
        assert!(!is_same_origin(&headers, "https"));
        headers.insert(ORIGIN, "https://evil.example".parse().expect("header"));
        assert!(!is_same_origin(&headers, "https"));
        headers.insert(ORIGIN, "null".parse().expect("header"));
        assert!(!is_same_origin(&headers, "http"));
        // Our own form under `Referrer-Policy: no-referrer`: the browser vouches for it.
        headers.insert("sec-fetch-site", "same-origin".parse().expect("header"));
        assert!(is_same_origin(&headers, "http"));
        headers.insert("sec-fetch-site", "cross-site".parse().expect("header"));
        assert!(!is_same_origin(&headers, "http"));
    }

    fn admits(rule: &HostRule, host: &str) -> bool {
        HostAuthority::parse(host).is_some_and(|asked| rule.admits(&asked))
    }

    #[test]
    fn without_a_token_only_loopback_names_with_the_port_are_answered() {
        let rule = HostRule::Loopback {
            port: 9187,
            https: false,
        };
        for host in [
            "127.0.0.1:9187",
            "localhost:9187",
            "LOCALHOST:9187",
            "[::1]:9187",
        ] {
            assert!(admits(&rule, host), "{host}");
        }
        for host in [
            "evil.example:9187",
            "127.0.0.1",
            "127.0.0.1:80",
            "localhost.:9187",
            "127.0.0.1.nip.io:9187",
            "user@127.0.0.1:9187",
            "127.0.0.1:9187/",
            "",
        ] {
            assert!(!admits(&rule, host), "{host}");
        }
        let on_443 = HostRule::Loopback {
            port: 443,
            https: true,
        };
        assert!(admits(&on_443, "localhost"));
        assert!(admits(&on_443, "localhost:443"));
    }

    #[test]
    fn listed_names_are_answered_on_their_port_or_any() {
        let rule = HostRule::Listed(
            ["admin.example.org", "10.1.2.3:9187", "[fd00::1]:9187"]
                .into_iter()
                .map(|entry| HostAuthority::parse(entry).expect("entry"))
                .collect(),
        );
        for host in [
            "admin.example.org",
            "Admin.Example.org:8443",
            "10.1.2.3:9187",
            "[fd00::1]:9187",
        ] {
            assert!(admits(&rule, host), "{host}");
        }
        for host in [
            "10.1.2.3",
            "10.1.2.3:80",
            "admin.example.org.evil.example",
            "[fd00::1]",
        ] {
            assert!(!admits(&rule, host), "{host}");
        }
    }

    #[test]
    fn the_api_takes_json_only() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (content_type, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
            ("application/jsonx", false),
        ] {
            headers.insert(CONTENT_TYPE, content_type.parse().expect("header"));
            assert_eq!(is_json(&headers), json, "{content_type}");
        }
    }
}
