//! `dispatcher check --connect`: can each partner be reached, before an event has to be?
//!
//! A configuration that validates can still fail at the first delivery: a name that does
//! not resolve, an address the destination guard refuses, a firewall, a private CA left
//! out of `ca_bundle`, an expired certificate, a client certificate the partner does not
//! accept, a token endpoint that refuses our client id. This probes each of a partner's
//! URLs the way a delivery would reach it, with the partner's own `PartnerClient` (its
//! guard, its TLS roots and client certificate, its timeouts), and words each failure
//! the way ops can act on it ([`ProbeError`]).
//!
//! The probe is an `OPTIONS` request to the URL as configured, with no body: no event,
//! none of the partner's headers, no signature, no `[partners.auth]` credential. A bare
//! TLS handshake would not do: under TLS 1.3 a partner that refuses our client
//! certificate says so only after the handshake, on the first read, so a handshake alone
//! would pass a partner that refuses every delivery. Whatever status the partner
//! answers, the connection works. When the request fails for a reason its error does not
//! name, the partner is heard out on one more connection (`hear_out`), for the alert
//! the HTTP client may have lost. For a token URL the partner's token source then
//! fetches a token, which is dropped unseen.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::dns::{Name, Resolve};
use reqwest::Method;
use rustls::pki_types::UnixTime;
use rustls::{AlertDescription, CertificateError};
use url::{Host, Url};

use crate::config::{DispatchConfig, Partner};
use crate::http::auth::AuthError;
use crate::http::client::PartnerClient;
use crate::http::error::{causes, TransportError};
use crate::http::guard::{GuardError, GuardedResolver, SystemResolver};
use crate::http::late_alert::late_alert;

/// Which of a partner's URLs a probe is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Enrollment,
    UserAction,
    /// The enrollment and user action URLs, when they are the same.
    Webhooks,
    /// The OAuth token endpoint (`[partners.auth] token_url`).
    Token,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Endpoint::Enrollment => "enrollment",
            Endpoint::UserAction => "user action",
            Endpoint::Webhooks => "enrollment, user action",
            Endpoint::Token => "token",
        })
    }
}

/// What probing one URL found.
#[derive(Debug)]
pub struct Probe {
    pub endpoint: Endpoint,
    pub url: Url,
    pub outcome: Result<Reached, ProbeError>,
}

/// A URL that answered.
#[derive(Debug)]
pub struct Reached {
    /// How long DNS took; `None` when the URL's host is an address.
    pub resolved_in: Option<Duration>,
    /// False for an `http://` URL (`allow_insecure`).
    pub tls: bool,
    /// From the start of the `OPTIONS` request to its answer: TCP, TLS and one round trip.
    pub answered_in: Duration,
    /// The status the partner answered the `OPTIONS` request with (any status will do).
    pub status: u16,
    /// For the token URL: how long fetching a token took.
    pub token_in: Option<Duration>,
}

/// Why a partner URL cannot be reached, in words ops can act on. Never carries a secret,
/// a token, or a URL (its query may hold an API key).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot build this partner's HTTP client: {0}")]
    Client(String),
    #[error("DNS: {0}")]
    Dns(GuardError),
    #[error("DNS: no answer for {host} within request_timeout ({})", humantime::format_duration(*.timeout))]
    DnsTimeout { host: String, timeout: Duration },
    /// The guard's own words name the host, its address and the address class.
    #[error("{0}")]
    Refused(GuardError),
    #[error(
        "connection refused by {authority}: nothing listens there, or a firewall turns us away"
    )]
    ConnectionRefused { authority: String },
    #[error("no answer from {authority} within request_timeout ({}): a firewall may drop our packets, or the partner is down", humantime::format_duration(*.timeout))]
    TimedOut {
        authority: String,
        timeout: Duration,
    },
    #[error("TLS: the partner's certificate is not trusted (unknown issuer): if the partner uses a private CA, set ca_bundle to that CA's certificate")]
    Untrusted,
    #[error("TLS: the partner's certificate has expired{}", .not_after.map(|at| format!(" (on {})", at.format("%Y-%m-%d %H:%M:%S UTC"))).unwrap_or_default())]
    Expired { not_after: Option<DateTime<Utc>> },
    #[error("TLS: the partner's certificate is not valid yet (is this machine's clock right?)")]
    NotValidYet,
    #[error("TLS: the partner's certificate is not valid for {host}{}", if .presented.is_empty() { String::new() } else { format!(" (it names {})", .presented.join(", ")) })]
    WrongName {
        host: String,
        presented: Vec<String>,
    },
    #[error("TLS: the partner's certificate is refused: {0}")]
    BadCertificate(String),
    #[error("TLS: the partner asks for a client certificate and none is configured: set client_cert and client_key")]
    ClientCertificateMissing,
    #[error("TLS: the partner refused our client certificate ({alert}): check that client_cert is the one the partner enrolled, and that it has not expired")]
    ClientCertificateRefused { alert: String },
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The token source's own words: the endpoint's status and OAuth error code.
    #[error("{0}")]
    Token(AuthError),
}

/// Probes every URL of `partner` in turn: the webhook URLs (once when they are the same),
/// then the token URL when the partner uses OAuth.
pub async fn probe_partner(dispatch: &DispatchConfig, partner: &Partner) -> Vec<Probe> {
    let mut probes = Vec::new();
    for (endpoint, url) in endpoints(partner) {
        let outcome = probe(dispatch, partner, endpoint, url).await;
        probes.push(Probe {
            endpoint,
            url: url.clone(),
            outcome,
        });
    }
    probes
}

fn endpoints(partner: &Partner) -> Vec<(Endpoint, &Url)> {
    let mut endpoints = if partner.enrollment_url == partner.user_action_url {
        vec![(Endpoint::Webhooks, &partner.enrollment_url)]
    } else {
        vec![
            (Endpoint::Enrollment, &partner.enrollment_url),
            (Endpoint::UserAction, &partner.user_action_url),
        ]
    };
    if let Some(token_url) = partner.auth.as_ref().and_then(|auth| auth.token_url()) {
        endpoints.push((Endpoint::Token, token_url));
    }
    endpoints
}

async fn probe(
    dispatch: &DispatchConfig,
    partner: &Partner,
    endpoint: Endpoint,
    url: &Url,
) -> Result<Reached, ProbeError> {
    let timeout = dispatch.request_timeout;
    // A client of its own for each URL, so that each is timed on a fresh connection.
    let client = PartnerClient::new(dispatch, partner, Arc::new(SystemResolver))
        .map_err(ProbeError::Client)?;
    let resolved = resolve(&client, url, timeout).await?;
    let started = Instant::now();
    let response = match client
        .http
        .request(Method::OPTIONS, url.clone())
        .send()
        .await
    {
        Ok(response) => response,
        Err(error) => {
            let failure = ProbeError::of_connection(error, url, partner, timeout);
            return Err(hear_out(failure, partner, url, &resolved.addresses, timeout).await);
        }
    };
    let answered_in = started.elapsed();
    let status = response.status().as_u16();
    drop(response);
    let token_in = match (&client.auth, endpoint) {
        (Some(auth), Endpoint::Token) => {
            let started = Instant::now();
            match tokio::time::timeout(timeout, auth.credential()).await {
                Ok(credential) => drop(credential.map_err(ProbeError::Token)?),
                Err(_) => {
                    return Err(ProbeError::TimedOut {
                        authority: authority(url),
                        timeout,
                    })
                }
            }
            Some(started.elapsed())
        }
        _ => None,
    };
    Ok(Reached {
        resolved_in: resolved.took,
        tls: url.scheme() == "https",
        answered_in,
        status,
        token_in,
    })
}

/// Where a URL's host is, as the destination guard lets the partner's client reach it.
struct Resolved {
    /// How long DNS took; `None` when the host is an address.
    took: Option<Duration>,
    /// With the URL's port.
    addresses: Vec<SocketAddr>,
}

impl Resolved {
    fn address(address: IpAddr, port: u16) -> Resolved {
        Resolved {
            took: None,
            addresses: vec![SocketAddr::new(address, port)],
        }
    }
}

/// Resolves the URL's host through the partner's destination guard, as its client's
/// resolver will: refused when the guard leaves no address to connect to.
async fn resolve(
    client: &PartnerClient,
    url: &Url,
    timeout: Duration,
) -> Result<Resolved, ProbeError> {
    client.policy.check_url(url).map_err(ProbeError::Refused)?;
    let port = url.port_or_known_default().unwrap_or_default();
    let host = match url.host() {
        Some(Host::Domain(host)) => host,
        Some(Host::Ipv4(address)) => return Ok(Resolved::address(address.into(), port)),
        Some(Host::Ipv6(address)) => return Ok(Resolved::address(address.into(), port)),
        None => {
            return Ok(Resolved {
                took: None,
                addresses: Vec::new(),
            })
        }
    };
    let started = Instant::now();
    let name: Name = host.parse().map_err(|_| {
        ProbeError::Dns(GuardError::Resolve {
            host: host.to_string(),
            message: "not a valid host name".into(),
        })
    })?;
    let resolver = GuardedResolver::new(client.policy.clone(), Arc::new(SystemResolver));
    match tokio::time::timeout(timeout, resolver.resolve(name)).await {
        Ok(Ok(addresses)) => Ok(Resolved {
            took: Some(started.elapsed()),
            addresses: addresses
                .map(|address| SocketAddr::new(address.ip(), port))
                .collect(),
        }),
        Ok(Err(error)) => Err(match error.downcast::<GuardError>() {
            Ok(guard) if guard.is_refused() => ProbeError::Refused(*guard),
            Ok(guard) => ProbeError::Dns(*guard),
            Err(lookup) => ProbeError::Dns(GuardError::Resolve {
                host: host.to_string(),
                message: lookup.to_string(),
            }),
        }),
        Err(_) => Err(ProbeError::DnsTimeout {
            host: host.to_string(),
            timeout,
        }),
    }
}

/// Why the `OPTIONS` request failed: `failure` as [`ProbeError::of_connection`] worded
/// it, unless it names nothing and the partner, heard out on a connection of our own,
/// sends an alert once the TLS handshake is done ([`late_alert`]). Under TLS 1.3 that is
/// when a partner refuses our client certificate, and reqwest's pool can lose it: when
/// the alert ends the connection after the pool took it as ready but before our request
/// went out, the request fails "connection was not ready" and the alert, the
/// connection's own error, is in no error's source chain (hyper-util only logs it).
async fn hear_out(
    failure: ProbeError,
    partner: &Partner,
    url: &Url,
    addresses: &[SocketAddr],
    timeout: Duration,
) -> ProbeError {
    // Where the tests make the pool lose the alert, every time (`--features failpoints`,
    // FAILPOINTS=probe-alert-lost=return).
    #[cfg(feature = "failpoints")]
    let failure = fail::eval("probe-alert-lost", |_| {
        ProbeError::Connect("connection was not ready (fail point probe-alert-lost)".into())
    })
    .unwrap_or(failure);
    let (ProbeError::Connect(_), "https", Some(host)) = (&failure, url.scheme(), url.host()) else {
        return failure;
    };
    match tokio::time::timeout(timeout, late_alert(&partner.tls, host, addresses)).await {
        Ok(Some(alert)) => ProbeError::of_tls(&rustls::Error::AlertReceived(alert), url, partner),
        Ok(None) | Err(_) => failure,
    }
}

impl ProbeError {
    /// Why the `OPTIONS` request got no answer: the first cause in its chain that says
    /// more than "error sending request" (the guard, rustls, or the socket).
    fn of_connection(
        error: reqwest::Error,
        url: &Url,
        partner: &Partner,
        timeout: Duration,
    ) -> ProbeError {
        for cause in causes(&error) {
            if let Some(guard) = cause.downcast_ref::<GuardError>() {
                return if guard.is_refused() {
                    ProbeError::Refused(guard.clone())
                } else {
                    ProbeError::Dns(guard.clone())
                };
            }
            if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
                return ProbeError::of_tls(tls, url, partner);
            }
            match cause.downcast_ref::<std::io::Error>().map(|io| io.kind()) {
                Some(std::io::ErrorKind::ConnectionRefused) => {
                    return ProbeError::ConnectionRefused {
                        authority: authority(url),
                    }
                }
                Some(std::io::ErrorKind::TimedOut) => {
                    return ProbeError::TimedOut {
                        authority: authority(url),
                        timeout,
                    }
                }
                _ => {}
            }
        }
        if error.is_timeout() {
            return ProbeError::TimedOut {
                authority: authority(url),
                timeout,
            };
        }
        // Its message leaves the URL out.
        ProbeError::Connect(TransportError::from(error).message)
    }

    fn of_tls(error: &rustls::Error, url: &Url, partner: &Partner) -> ProbeError {
        match error {
            rustls::Error::InvalidCertificate(certificate) => match certificate {
                CertificateError::UnknownIssuer => ProbeError::Untrusted,
                CertificateError::Expired => ProbeError::Expired { not_after: None },
                CertificateError::ExpiredContext { not_after, .. } => ProbeError::Expired {
                    not_after: date(*not_after),
                },
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    ProbeError::NotValidYet
                }
                CertificateError::NotValidForName => ProbeError::WrongName {
                    host: url.host_str().unwrap_or_default().to_string(),
                    presented: Vec::new(),
                },
                CertificateError::NotValidForNameContext { presented, .. } => {
                    ProbeError::WrongName {
                        host: url.host_str().unwrap_or_default().to_string(),
                        presented: presented.clone(),
                    }
                }
                other => ProbeError::BadCertificate(format!("{other:?}")),
            },
            rustls::Error::AlertReceived(alert) if refuses_our_certificate(*alert) => {
                match partner.tls.client_identity {
                    None => ProbeError::ClientCertificateMissing,
                    Some(_) => ProbeError::ClientCertificateRefused {
                        alert: format!("{alert:?}"),
                    },
                }
            }
            other => ProbeError::Tls(other.to_string()),
        }
    }
}

/// The alerts a server sends about the client's certificate (RFC 8446 section 6.2).
fn refuses_our_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
    )
}

fn date(time: UnixTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(time.as_secs()).ok()?, 0)
}

/// `host:port`, for the words of a failed connection.
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_worded_for_ops_without_the_url() {
        let url: Url = "https://crm.partner.test:8443/hooks?api_key=k"
            .parse()
            .expect("url");
        assert_eq!(
            ProbeError::ConnectionRefused {
                authority: authority(&url)
            }
            .to_string(),
            "connection refused by crm.partner.test:8443: nothing listens there, or a firewall turns us away"
        );
        let expired = ProbeError::Expired {
            not_after: DateTime::from_timestamp(1_700_000_000, 0),
        };
        assert_eq!(
            expired.to_string(),
            "TLS: the partner's certificate has expired (on 2023-11-14 22:13:20 UTC)"
        );
        let wrong = ProbeError::WrongName {
            host: "crm.partner.test".into(),
            presented: vec!["localhost".into()],
        };
        assert_eq!(
            wrong.to_string(),
            "TLS: the partner's certificate is not valid for crm.partner.test (it names localhost)"
        );
        let timed_out = ProbeError::TimedOut {
            authority: authority(&url),
            timeout: Duration::from_secs(10),
        };
        assert!(timed_out.to_string().contains("request_timeout (10s)"));
    }
}
