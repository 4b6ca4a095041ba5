//! The HTTP side: one pooled client per partner (its TLS settings, its destination
//! guard, its credentials), one POST per attempt, the partner's answer read with a cap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use reqwest::dns::Resolve;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use url::Url;

use crate::config::{Config, DispatchConfig, Partner};
use crate::http::auth::{Authenticator, Credential};
use crate::http::error::{TransportError, TransportErrorKind};
use crate::http::guard::{DestinationPolicy, GuardedResolver, SystemResolver};
use crate::http::headers::{webhook_headers, TraceHeaders, AGENT};

/// How much of a partner's answer is kept: enough for any contract answer and a useful
/// error page, and a hostile partner cannot make us hold more.
pub const RESPONSE_BODY_CAP: usize = 16 * 1024;

/// The most header bytes taken from a partner over HTTP/2 (hyper's default, stated here so
/// it cannot change under us). Over HTTP/1 hyper allows 100 header lines and ~400 KiB of
/// head, which reqwest does not let us lower; both end a head without end in an error.
const HTTP2_HEADER_LIST_CAP: u32 = 16 * 1024;

/// What the partner answered, when it answered at all.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// At most [`RESPONSE_BODY_CAP`] bytes.
    pub body: Vec<u8>,
    /// Why the body stopped short (it broke off, or did not arrive within
    /// `request_timeout`). The status still stands: the partner decided when it sent it,
    /// and the body only informs. Kept with the attempt for support.
    pub body_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client of partner `{partner}`: {message}")]
pub struct SenderError {
    partner: String,
    message: String,
}

/// The [`Sender`] of the configuration in force. A SIGHUP reload builds the clients of
/// the new configuration before it is put in force ([`LiveSender::prepare`]), so an added
/// partner gets one, a changed partner its new TLS, guard and auth settings, and a
/// configuration whose clients cannot be built is refused at reload.
pub struct LiveSender {
    built: ArcSwap<BuiltSender>,
}

struct BuiltSender {
    config: Arc<Config>,
    sender: Sender,
}

impl LiveSender {
    pub fn new(config: Arc<Config>) -> Result<LiveSender, SenderError> {
        let sender = Sender::new(&config.dispatch, &config.partners)?;
        Ok(LiveSender {
            built: ArcSwap::from_pointee(BuiltSender { config, sender }),
        })
    }

    /// Builds the clients of a reloaded configuration before it is put in force; the
    /// returned step puts them in use (see [`crate::config::live::Preparer`]).
    pub fn prepare(
        self: &Arc<Self>,
        config: &Arc<Config>,
    ) -> Result<impl FnOnce() + Send + 'static, SenderError> {
        let built = BuiltSender {
            sender: Sender::new(&config.dispatch, &config.partners)?,
            config: config.clone(),
        };
        let live = self.clone();
        Ok(move || live.built.store(Arc::new(built)))
    }

    /// The sender for `config` (a snapshot of the live configuration).
    pub fn for_config(&self, config: &Arc<Config>) -> Sender {
        let built = self.built.load();
        if Arc::ptr_eq(&built.config, config) {
            return built.sender.clone();
        }
        // A snapshot taken just before a reload: its few attempts get clients of their
        // own rather than replace the new configuration's.
        match Sender::new(&config.dispatch, &config.partners) {
            Ok(sender) => sender,
            Err(error) => {
                // It was built once already, so this is not expected.
                tracing::error!(%error, "cannot build the HTTP clients of the previous configuration; using the current ones");
                built.sender.clone()
            }
        }
    }
}

/// Posts webhook bodies. One per daemon, holding one client per partner: each client's
/// connection pool is shared by every request to that partner.
#[derive(Clone)]
pub struct Sender {
    partners: Arc<HashMap<String, PartnerClient>>,
    request_timeout: Duration,
}

/// One partner's client, as its deliveries use it and `check --connect` probes it.
pub(crate) struct PartnerClient {
    pub(crate) http: reqwest::Client,
    pub(crate) policy: Arc<DestinationPolicy>,
    pub(crate) auth: Option<Authenticator>,
}

impl Sender {
    pub fn new(dispatch: &DispatchConfig, partners: &[Partner]) -> Result<Sender, SenderError> {
        Sender::with_resolver(dispatch, partners, Arc::new(SystemResolver))
    }

    /// With another DNS resolver than the system's: `dns` answers the lookups, and the
    /// destination guard still checks every answer (tests play DNS with it).
    pub fn with_resolver(
        dispatch: &DispatchConfig,
        partners: &[Partner],
        dns: Arc<dyn Resolve>,
    ) -> Result<Sender, SenderError> {
        let mut clients = HashMap::with_capacity(partners.len());
        for partner in partners {
            let client = PartnerClient::new(dispatch, partner, dns.clone()).map_err(|message| {
                SenderError {
                    partner: partner.name.clone(),
                    message,
                }
            })?;
            clients.insert(partner.name.clone(), client);
        }
        Ok(Sender {
            partners: Arc::new(clients),
            request_timeout: dispatch.request_timeout,
        })
    }

    /// One attempt: POST `body` to `url` with the partner's headers, credentials and,
    /// when it has signing secrets, Standard Webhooks headers, and the attempt's trace
    /// context when `[telemetry]` is on. `request_timeout` bounds the whole attempt,
    /// token fetch, the one retry after a 401 and the reading of the answer included, so
    /// an attempt still ends within its claim's lease however slowly the partner drips
    /// its answer.
    pub async fn post(
        &self,
        partner: &Partner,
        url: &Url,
        webhook_id: &str,
        body: Vec<u8>,
        now: DateTime<Utc>,
        trace: Option<&TraceHeaders>,
    ) -> Result<Answer, TransportError> {
        let Some(client) = self.partners.get(&partner.name) else {
            return Err(TransportError {
                kind: TransportErrorKind::Request,
                message: format!("partner `{}` has no HTTP client", partner.name),
            });
        };
        let deadline = Deadline {
            at: tokio::time::Instant::now() + self.request_timeout,
            timeout: self.request_timeout,
        };
        // Up to the answer's head, then its body: each against the same deadline, one
        // after the other (timers nested on one deadline would race).
        let head = client.post(partner, url, webhook_id, body, now, trace);
        let response = match tokio::time::timeout_at(deadline.at, head).await {
            Ok(response) => response?,
            Err(_) => {
                return Err(TransportError {
                    kind: TransportErrorKind::Timeout,
                    message: format!("no answer within request_timeout ({deadline})"),
                })
            }
        };
        Ok(read_answer(response, now, deadline).await)
    }
}

/// When an attempt's `request_timeout` runs out.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: tokio::time::Instant,
    timeout: Duration,
}

impl std::fmt::Display for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.timeout))
    }
}

impl PartnerClient {
    pub(crate) fn new(
        dispatch: &DispatchConfig,
        partner: &Partner,
        dns: Arc<dyn Resolve>,
    ) -> Result<PartnerClient, String> {
        let policy = Arc::new(DestinationPolicy::of(partner));
        let mut builder = reqwest::Client::builder()
            .user_agent(AGENT)
            .timeout(dispatch.request_timeout)
            .connect_timeout(dispatch.request_timeout)
            // A redirect is a failed attempt: following it would send health data to an
            // address the partner never registered.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect to addresses the guard never saw.
            .no_proxy()
            .https_only(!partner.allow_insecure)
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone(), dns)))
            .pool_max_idle_per_host(partner.max_in_flight)
            .http2_max_header_list_size(HTTP2_HEADER_LIST_CAP)
            .tcp_nodelay(true)
            .use_rustls_tls();
        // `check --connect` builds the same TLS for rustls (`late_alert::client_config`):
        // a change here is a change there.
        for root in &partner.tls.extra_roots {
            builder = builder.add_root_certificate(root.clone());
        }
        if let Some(identity) = &partner.tls.client_identity {
            builder = builder.identity(identity.clone());
        }
        let http = builder.build().map_err(|error| {
            let error: TransportError = error.into();
            error.message
        })?;
        let auth = partner
            .auth
            .as_ref()
            .map(|auth| Authenticator::new(auth, http.clone(), policy.clone()))
            .transpose()
            .map_err(|message| format!("auth: {message}"))?;
        Ok(PartnerClient { http, policy, auth })
    }

    async fn post(
        &self,
        partner: &Partner,
        url: &Url,
        webhook_id: &str,
        body: Vec<u8>,
        now: DateTime<Utc>,
        trace: Option<&TraceHeaders>,
    ) -> Result<reqwest::Response, TransportError> {
        self.policy.check_url(url)?;
        let credential = match &self.auth {
            Some(auth) => Some(
                auth.credential()
                    .await
                    .map_err(|error| error.into_transport_error())?,
            ),
            None => None,
        };
        let timestamp = now.timestamp();
        let request = |credential: Option<&Credential>, body: Vec<u8>| {
            let headers = webhook_headers(
                partner,
                webhook_id,
                timestamp,
                &body,
                credential.map(|credential| &credential.header),
                trace,
            );
            let mut request = self.http.post(url.clone());
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.body(body).send()
        };
        // Kept only when a 401 could be answered with a new token and the same request.
        let resend_body = matches!(self.auth, Some(Authenticator::OAuth(_))).then(|| body.clone());
        let mut response = request(credential.as_ref(), body).await?;
        if let (StatusCode::UNAUTHORIZED, Some(auth), Some(used), Some(body)) =
            (response.status(), &self.auth, &credential, resend_body)
        {
            if let Some(renewed) = auth.after_rejection(used).await {
                let renewed = renewed.map_err(|error| error.into_transport_error())?;
                tracing::info!("partner refused its OAuth token; sending again with a new one");
                response = request(Some(&renewed), body).await?;
            }
        }
        Ok(response)
    }
}

/// Reads the partner's answer: its status and headers (capped: see
/// [`HTTP2_HEADER_LIST_CAP`]), then at most [`RESPONSE_BODY_CAP`] bytes of body, until
/// `deadline`. The rest of a longer body is never read: dropping the response closes the
/// connection.
async fn read_answer(
    mut response: reqwest::Response,
    now: DateTime<Utc>,
    deadline: Deadline,
) -> Answer {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, now));
    let mut body = Vec::new();
    let mut body_error = None;
    while body.len() < RESPONSE_BODY_CAP {
        match tokio::time::timeout_at(deadline.at, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                let room = RESPONSE_BODY_CAP - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(Ok(None)) => break,
            // The client's own timeout is request_timeout too, and may fire first.
            Ok(Err(error)) if !error.is_timeout() => {
                let error = TransportError::from(error);
                body_error = Some(format!("the answer broke off: {error}"));
                break;
            }
            Ok(Err(_)) | Err(_) => {
                body_error = Some(format!(
                    "the answer's body did not arrive within request_timeout ({deadline})"
                ));
                break;
            }
        }
    }
    Answer {
        status,
        retry_after,
        body,
        body_error,
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date.
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (date.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
