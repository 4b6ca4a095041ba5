//! `dispatcher.toml`: what ops configure, checked completely at start.
//!
//! The file is read in steps so that every error names the key at fault: TOML syntax,
//! then `"${ENV_VAR}"` expansion (`secrets`), then the serde mirror of the file (`file`:
//! unknown and missing keys), then the values themselves (`validate`: URLs, durations,
//! secrets, TLS files). One run reports every problem it finds (`problems`): every unset
//! variable with the first unknown or missing key, or, once those are sound, the values'
//! problems, a table's or a partner's first each. This module holds the typed result,
//! plain data that every layer above reads; it imports nothing of the dispatcher's but
//! the contract's signing secret.
//!
//! Secrets come from the environment (`"${VAR}"`) or from files (`"file:/path"`), never
//! from the database, and are kept in types whose `Debug` does not print them. Error
//! messages name the key, never its value.

pub mod auth;
pub mod database;
mod error;
mod file;
pub mod identity;
pub mod live;
mod load;
mod secrets;
pub mod telemetry;
#[cfg(test)]
mod testing;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::config::auth::AuthConfig;
use crate::config::database::{ConnectionUrl, DatabaseCa};
use crate::config::telemetry::TelemetryConfig;
use crate::contract::signing::SigningSecret;

/// A secret value of this form is read from the file it names (relative paths from the
/// config file's directory), without its trailing line break.
pub const SECRET_FILE_PREFIX: &str = "file:";

/// Overrides `[database] url`, so the URL (and its password) can stay out of the file.
pub const DATABASE_URL_ENV: &str = "DISPATCHER_DATABASE_URL";

/// Overrides `[log] format`, so a deployment can pick JSON without editing the file.
pub const LOG_FORMAT_ENV: &str = "DISPATCHER_LOG_FORMAT";

pub use error::ConfigError;

/// The validated configuration the daemon and the CLI run with.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub dispatch: DispatchConfig,
    pub retry: RetryPolicy,
    pub retention: RetentionConfig,
    pub partners: Vec<Partner>,
    pub admin: AdminConfig,
    /// `[support]`: where support's reads go.
    pub support: SupportConfig,
    pub log: LogConfig,
    /// `[telemetry]`: absent, no trace is exported.
    pub telemetry: Option<TelemetryConfig>,
}

/// The admin server: health, metrics, the JSON API and the support page.
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: std::net::SocketAddr,
    /// Required by the API (bearer) and the support page (login). Without one, the
    /// server only listens on loopback, and answers to loopback names only.
    pub token: Option<SecretString>,
    /// The names (with a port, or any port) the API and the support page answer to, as
    /// ops publish the server; empty: any name. Only with a token.
    pub allowed_hosts: Vec<HostAuthority>,
    /// Serve HTTPS with this certificate and key (`tls_cert`, `tls_key`).
    pub tls: Option<AdminTls>,
    /// `[admin.oidc]`: sign-in through the company's identity provider. With it, the
    /// token is the break-glass way in only.
    pub oidc: Option<identity::OidcConfig>,
    /// Serve plain http on a non-loopback address: a proxy in front terminates TLS.
    pub allow_plain_http: bool,
    /// The proxies whose `X-Forwarded-Proto` is believed (for the Secure cookie and the
    /// origin of posts); nobody else's.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Its own connections (`database_pool_size`, `statement_timeout`), apart from the
    /// daemon's: support's questions, however many or slow, never take the router's,
    /// the claimer's or the recorder's.
    pub pool: PoolLimits,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("allowed_hosts", &self.allowed_hosts)
            .field("tls", &self.tls.as_ref().map(|_| "[certificate]"))
            .field("oidc", &self.oidc)
            .field("allow_plain_http", &self.allow_plain_http)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("pool", &self.pool)
            .finish()
    }
}

/// A host name or IP address (IPv6 in brackets), lower case, with an optional port: what
/// a `Host` header holds, and an entry of `[admin] allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAuthority {
    pub host: String,
    pub port: Option<u16>,
}

impl HostAuthority {
    /// `None` for anything but `host[:port]` (no user, no path, no empty port).
    pub fn parse(text: &str) -> Option<HostAuthority> {
        if text.contains(['@', '/', '\\', '?', '#']) {
            return None;
        }
        let (host, port) = match text.rsplit_once(':') {
            // An IPv6 address without a port has colons only inside its brackets.
            Some((host, port)) if !port.contains(']') => (host, Some(port.parse().ok()?)),
            _ => (text, None),
        };
        let host = match url::Host::parse(host).ok()? {
            url::Host::Domain(name) => name.to_ascii_lowercase(),
            ip => ip.to_string(),
        };
        Some(HostAuthority { host, port })
    }
}

/// The admin server's TLS: a rustls server configuration with its certificate and key.
#[derive(Clone)]
pub struct AdminTls {
    pub server: std::sync::Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate chain, so a reload can tell a new certificate (which
    /// takes a restart) from the running one.
    pub fingerprint: [u8; 32],
}

impl PartialEq for AdminTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// Holds the database password, so it is never printed.
    pub url: SecretString,
    pub pool_size: usize,
    /// `url`, read: its settings, and its `sslmode` (libpq's `prefer` when it says none).
    pub connection: ConnectionUrl,
    /// `ca_file`: what `verify-ca`/`verify-full` trust instead of the web PKI roots.
    pub ca: Option<DatabaseCa>,
}

/// `[support]`: where support's questions are answered.
#[derive(Debug, Clone, Default)]
pub struct SupportConfig {
    /// `database_url` (and `ca_file`): a hot standby of `[database]` that the support
    /// page's, the API's and `dispatcher deliveries list`/`show`'s reads go to; their
    /// writes (resend, cancel, the audit trail) still go to the primary. `None`: every
    /// question goes to the primary. Its `pool_size` is not read: the admin server's
    /// `[admin]` limits size its pool, and a command opens one connection.
    pub standby: Option<DatabaseConfig>,
}

/// A pool of database connections: how many it opens, and how long a statement on one
/// may run before PostgreSQL cancels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub size: usize,
    pub statement_timeout: Duration,
}

impl DatabaseConfig {
    /// The daemon's own pool (and the commands'): `pool_size` connections. None of the
    /// daemon's statements takes long; one that hangs is cut off and retried.
    pub fn pool_limits(&self) -> PoolLimits {
        PoolLimits {
            size: self.pool_size,
            statement_timeout: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &"[redacted]")
            .field("pool_size", &self.pool_size)
            .field("ssl_mode", &self.connection.ssl_mode)
            .field("ca_file", &self.ca.as_ref().map(|ca| &ca.path))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DispatchConfig {
    /// Deliveries claimed and not yet recorded, across all partners.
    pub concurrency: usize,
    /// Deliveries claimed per query.
    pub batch_size: usize,
    /// How long a claim is ours; after it, another daemon may take the delivery.
    pub lease: Duration,
    /// Fallback wake-up when no notification arrives.
    pub poll_interval: Duration,
    pub request_timeout: Duration,
    /// On SIGTERM, how long requests already sent may take to finish.
    pub shutdown_grace: Duration,
}

impl DispatchConfig {
    /// How long after its claim a delivery may still be sent: its request, and the
    /// writing of the result (given a tenth of the lease), must end within the lease, or
    /// another claim could send it again meanwhile.
    pub fn latest_send(&self) -> Duration {
        self.lease
            .saturating_sub(self.request_timeout)
            .saturating_sub(self.lease / 10)
    }
}

/// `[retry]`: how many times, and how far apart, a failed delivery is tried. The
/// schedule these settings give is the rule of `delivery::retry`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per delivery before it is `dead` (a resend by support starts a new count).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For a person at a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// `DISPATCHER_LOG_FORMAT` when set, else the configured format.
    pub fn chosen(
        configured: LogFormat,
        env_value: Option<&str>,
    ) -> Result<LogFormat, ConfigError> {
        match env_value {
            None => Ok(configured),
            Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(_) => Err(ConfigError::key(LOG_FORMAT_ENV, "must be `text` or `json`")),
        }
    }
}

/// How long health data and delivery records are kept (see `retention`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionConfig {
    /// Days after its deliveries end that an event's body and the partners' answers are
    /// erased.
    pub payload_days: u32,
    /// Days after a delivery ends that it goes, attempts and all (and its event with the
    /// last of them).
    pub metadata_days: u32,
    /// How often the daemon prunes.
    pub prune_interval: Duration,
    /// Rows per pruning transaction: short transactions, short locks.
    pub batch_size: usize,
    /// Days the audit trail is kept (at least 365).
    pub audit_days: u32,
}

/// A partner CRM: where its webhooks go and how they are authenticated.
#[derive(Debug, Clone)]
pub struct Partner {
    pub name: String,
    pub support_programs: Vec<String>,
    pub enrollment_url: Url,
    pub user_action_url: Url,
    /// Every request is signed with each of these (several while a secret is rotated).
    pub signing_secrets: Vec<SigningSecret>,
    /// Extra request headers, typically the partner's API key.
    pub headers: Vec<(reqwest::header::HeaderName, SecretString)>,
    pub max_in_flight: usize,
    /// When to stop sending to this partner for a while (see `breaker`).
    pub circuit: CircuitConfig,
    /// Local testing only: http:// URLs, and any destination address.
    pub allow_insecure: bool,
    /// Non-global networks this partner may still be reached in (see `http::guard`).
    pub allow_networks: Vec<IpNet>,
    pub tls: PartnerTls,
    pub auth: Option<AuthConfig>,
}

/// A partner's circuit breaker: after `failures` failed attempts in a row its deliveries
/// are held for `cool_down`, then one probe request tells whether it is back.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitConfig {
    pub failures: u32,
    pub cool_down: Duration,
}

/// A partner's TLS settings beyond the public web PKI, each in two forms: reqwest's for
/// the partner's client (`http/client.rs`), and rustls's for the one connection
/// `check --connect` opens itself to hear a partner out (`http/late_alert.rs`), since
/// reqwest's cannot be read back.
#[derive(Debug, Clone, Default)]
pub struct PartnerTls {
    /// `ca_bundle`: trusted in addition to the built-in roots (a partner's private CA).
    pub extra_roots: Vec<reqwest::Certificate>,
    /// The same roots, as rustls takes them.
    pub extra_roots_der: Vec<CertificateDer<'static>>,
    /// `client_cert` + `client_key`: presented when the partner asks for a client
    /// certificate (mTLS). Its `Debug` prints nothing of the key.
    pub client_identity: Option<reqwest::Identity>,
    /// The same certificate and key, as rustls takes them.
    pub client_certificate: Option<ClientCertificate>,
}

/// `client_cert` + `client_key` as rustls takes them: the certificate chain and its key.
/// Its `Debug` prints nothing of the key.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    /// Shared: a key is not `Clone`.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Config {
    /// The partners that take events of this support program.
    pub fn partners_of<'a>(
        &'a self,
        support_program: &'a str,
    ) -> impl Iterator<Item = &'a Partner> {
        self.partners.iter().filter(move |partner| {
            partner
                .support_programs
                .iter()
                .any(|p| p == support_program)
        })
    }

    pub fn partner(&self, name: &str) -> Option<&Partner> {
        self.partners.iter().find(|partner| partner.name == name)
    }
}

/// A partner URL fit to print: user, password and query (where partners put API keys)
/// are replaced by `redacted`.
pub fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Only fails for URLs that cannot have credentials, which then have none to hide.
    if !shown.username().is_empty() {
        let _ = shown.set_username("redacted");
    }
    if shown.password().is_some() {
        let _ = shown.set_password(Some("redacted"));
    }
    if shown.query().is_some() {
        shown.set_query(Some("redacted"));
    }
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{parse, MINIMAL};

    #[test]
    fn a_config_full_of_secrets_prints_none_of_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("client-secret"),
            "oauth-client-secret-file\n",
        )
        .expect("write secret file");
        let path = dir.path().join("dispatcher.toml");
        let text = r#"
            [database]
            url = "postgres://dispatcher:db-password-1@127.0.0.1/dispatcher"

            [[partners]]
            name = "acme"
            support_programs = ["prog-1"]
            enrollment_url = "https://crm.example/enroll"
            user_action_url = "https://crm.example/action"
            signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "${NEXT_SECRET}"]
            headers = { "x-api-key" = "api-key-2" }
            [partners.auth]
            kind = "oauth2_client_credentials"
            token_url = "https://auth.crm.example/token"
            client_id = "helparound"
            client_secret = "file:client-secret"

            [[partners]]
            name = "globex"
            support_programs = ["prog-1"]
            enrollment_url = "https://globex.example/enroll"
            user_action_url = "https://globex.example/action"
            [partners.auth]
            kind = "bearer"
            token = "bearer-token-3"

            [[partners]]
            name = "initech"
            support_programs = ["prog-1"]
            enrollment_url = "https://initech.example/enroll"
            user_action_url = "https://initech.example/action"
            [partners.auth]
            kind = "basic"
            username = "helparound"
            password = "basic-password-4"
            "#;
        let config = Config::parse(text, &path.display().to_string(), None, |name| {
            (name == "NEXT_SECRET").then(|| "whsec_bmV4dC1zZWNyZXQtNQ==".to_string())
        })
        .expect("valid config");
        assert_eq!(config.partners[0].signing_secrets.len(), 2);
        let printed = format!("{config:?} {config:#?}");
        for secret in [
            "db-password-1",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "bmV4dC1zZWNyZXQtNQ",
            "api-key-2",
            "oauth-client-secret-file",
            "bearer-token-3",
            "basic-password-4",
            // base64 of helparound:basic-password-4, as the Basic header would carry it
            "aGVscGFyb3VuZDpiYXNpYy1wYXNzd29yZC00",
        ] {
            assert!(!printed.contains(secret), "{secret} was printed");
        }
        assert!(printed.contains("helparound") && printed.contains("auth.crm.example"));
    }

    #[test]
    fn the_log_format_defaults_to_text_and_the_environment_overrides_the_file() {
        let config = parse(MINIMAL).expect("valid config");
        assert_eq!(config.log.format, LogFormat::Text);
        let json = parse(&format!("{MINIMAL}\n[log]\nformat = \"json\"\n")).expect("valid");
        assert_eq!(json.log.format, LogFormat::Json);
        assert_eq!(
            LogFormat::chosen(LogFormat::Json, Some("text")).expect("valid"),
            LogFormat::Text
        );
        assert_eq!(
            LogFormat::chosen(LogFormat::Text, None).expect("valid"),
            LogFormat::Text
        );
        let error = LogFormat::chosen(LogFormat::Text, Some("xml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains(LOG_FORMAT_ENV), "{error}");
        let error = parse(&format!("{MINIMAL}\n[log]\nformat = \"xml\"\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("log.format"), "{error}");
    }

    #[test]
    fn printed_urls_hide_credentials_and_queries() {
        let url = Url::parse("https://user:pass@crm.example/hook?api_key=abc#frag").expect("url");
        assert_eq!(
            redacted_url(&url),
            "https://redacted:redacted@crm.example/hook?redacted"
        );
        let plain = Url::parse("https://crm.example/hook").expect("url");
        assert_eq!(redacted_url(&plain), "https://crm.example/hook");
    }
}
