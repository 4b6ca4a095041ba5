//! `dispatcher.toml`: what ops configure, checked completely at start.
//!
//! The file is read in three steps so that every error names the key at fault:
//! TOML syntax, then `"${ENV_VAR}"` expansion, then the typed [`RawConfig`] (unknown and
//! missing keys), then the values themselves (URLs, durations, secrets, TLS files).
//!
//! Secrets come from the environment (`"${VAR}"`) or from files (`"file:/path"`), never
//! from the database, and are kept in types whose `Debug` does not print them. Error
//! messages name the key, never its value.

pub mod auth;
pub mod database;
pub mod live;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::config::auth::{AuthConfig, ClientAuthMethod, OAuthClientCredentials};
use crate::config::database::{ConnectionUrl, DatabaseCa, SslMode};
use crate::contract::signing::SigningSecret;

/// A secret value of this form is read from the file it names (relative paths from the
/// config file's directory), without its trailing line break.
pub const SECRET_FILE_PREFIX: &str = "file:";

/// Overrides `[database] url`, so the URL (and its password) can stay out of the file.
pub const DATABASE_URL_ENV: &str = "DISPATCHER_DATABASE_URL";

/// Overrides `[log] format`, so a deployment can pick JSON without editing the file.
pub const LOG_FORMAT_ENV: &str = "DISPATCHER_LOG_FORMAT";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The validated configuration the daemon and the CLI run with.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub dispatch: DispatchConfig,
    pub retry: RetryPolicy,
    pub retention: RetentionConfig,
    pub partners: Vec<Partner>,
    pub admin: AdminConfig,
    pub log: LogConfig,
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
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("allowed_hosts", &self.allowed_hosts)
            .field("tls", &self.tls.as_ref().map(|_| "[certificate]"))
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
    /// Non-global networks this partner may still be reached in (see `guard`).
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

/// A partner's TLS settings beyond the public web PKI.
#[derive(Debug, Clone, Default)]
pub struct PartnerTls {
    /// `ca_bundle`: trusted in addition to the built-in roots (a partner's private CA).
    pub extra_roots: Vec<reqwest::Certificate>,
    /// `client_cert` + `client_key`: presented when the partner asks for a client
    /// certificate (mTLS). Its `Debug` prints nothing of the key.
    pub client_identity: Option<reqwest::Identity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database: RawDatabase,
    #[serde(default)]
    dispatch: RawDispatch,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    partners: Vec<RawPartner>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "defaults::admin_listen")]
    listen: String,
    token: Option<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: defaults::admin_listen(),
            token: None,
            allowed_hosts: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    #[serde(default = "defaults::pool_size")]
    pool_size: usize,
    ca_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    #[serde(default = "defaults::concurrency")]
    concurrency: usize,
    #[serde(default = "defaults::batch_size")]
    batch_size: usize,
    #[serde(default = "defaults::lease")]
    lease: String,
    #[serde(default = "defaults::poll_interval")]
    poll_interval: String,
    #[serde(default = "defaults::request_timeout")]
    request_timeout: String,
    #[serde(default = "defaults::shutdown_grace")]
    shutdown_grace: String,
}

impl Default for RawDispatch {
    fn default() -> Self {
        RawDispatch {
            concurrency: defaults::concurrency(),
            batch_size: defaults::batch_size(),
            lease: defaults::lease(),
            poll_interval: defaults::poll_interval(),
            request_timeout: defaults::request_timeout(),
            shutdown_grace: defaults::shutdown_grace(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default = "defaults::max_attempts")]
    max_attempts: u32,
    #[serde(default = "defaults::base_delay")]
    base_delay: String,
    #[serde(default = "defaults::max_delay")]
    max_delay: String,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            max_attempts: defaults::max_attempts(),
            base_delay: defaults::base_delay(),
            max_delay: defaults::max_delay(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    #[serde(default = "defaults::payload_days")]
    payload_days: u32,
    #[serde(default = "defaults::metadata_days")]
    metadata_days: u32,
    #[serde(default = "defaults::prune_interval")]
    prune_interval: String,
    #[serde(default = "defaults::prune_batch_size")]
    batch_size: usize,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            payload_days: defaults::payload_days(),
            metadata_days: defaults::metadata_days(),
            prune_interval: defaults::prune_interval(),
            batch_size: defaults::prune_batch_size(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    name: String,
    support_programs: Vec<String>,
    enrollment_url: String,
    user_action_url: String,
    signing_secret: Option<String>,
    signing_secrets: Option<Vec<String>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "defaults::max_in_flight")]
    max_in_flight: usize,
    #[serde(default = "defaults::circuit_breaker_failures")]
    circuit_breaker_failures: u32,
    #[serde(default = "defaults::circuit_breaker_cool_down")]
    circuit_breaker_cool_down: String,
    #[serde(default)]
    allow_insecure: bool,
    #[serde(default)]
    allow_networks: Vec<String>,
    ca_bundle: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    auth: Option<RawAuth>,
}

/// `[partners.auth]`, told apart by `kind`.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawAuth {
    Bearer {
        token: String,
    },
    Basic {
        username: String,
        password: String,
    },
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
        audience: Option<String>,
        #[serde(default = "defaults::client_auth")]
        client_auth: ClientAuthMethod,
    },
}

mod defaults {
    pub fn pool_size() -> usize {
        8
    }
    pub fn concurrency() -> usize {
        256
    }
    pub fn batch_size() -> usize {
        100
    }
    pub fn lease() -> String {
        "60s".into()
    }
    pub fn poll_interval() -> String {
        "1s".into()
    }
    pub fn request_timeout() -> String {
        "10s".into()
    }
    pub fn shutdown_grace() -> String {
        "15s".into()
    }
    pub fn max_attempts() -> u32 {
        12
    }
    pub fn base_delay() -> String {
        "10s".into()
    }
    pub fn max_delay() -> String {
        "6h".into()
    }
    pub fn max_in_flight() -> usize {
        64
    }
    pub fn circuit_breaker_failures() -> u32 {
        10
    }
    pub fn circuit_breaker_cool_down() -> String {
        "30s".into()
    }
    pub fn admin_listen() -> String {
        "127.0.0.1:9187".into()
    }
    pub fn client_auth() -> super::ClientAuthMethod {
        super::ClientAuthMethod::ClientSecretBasic
    }
    pub fn payload_days() -> u32 {
        30
    }
    pub fn metadata_days() -> u32 {
        400
    }
    pub fn prune_interval() -> String {
        "10m".into()
    }
    pub fn prune_batch_size() -> usize {
        1000
    }
}

impl Config {
    /// Reads and validates the config file; `DISPATCHER_DATABASE_URL` overrides `[database] url`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let env_database_url = std::env::var(DATABASE_URL_ENV).ok();
        Config::parse(
            &text,
            &path.display().to_string(),
            env_database_url,
            |name| std::env::var(name).ok(),
        )
    }

    /// Parses config text; `lookup_env` resolves `${VAR}` references.
    pub fn parse(
        text: &str,
        path: &str,
        env_database_url: Option<String>,
        lookup_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut document: toml::Value =
            toml::from_str(text).map_err(|error| ConfigError::Syntax {
                path: path.to_string(),
                message: error.message().to_string(),
            })?;
        expand_env(&mut document, &mut String::new(), &lookup_env)?;
        let raw: RawConfig = serde_path_to_error::deserialize(document).map_err(|error| {
            let key = error.path().to_string();
            ConfigError::key(key, without_values(error.into_inner().message()))
        })?;
        // Relative file names (TLS files, secret files) are read from beside the config.
        let base_dir = Path::new(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        raw.validate(env_database_url, &base_dir)
    }

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

impl RawConfig {
    fn validate(
        self,
        env_database_url: Option<String>,
        base_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let url = env_database_url.or(self.database.url).ok_or_else(|| {
            ConfigError::key(
                "database.url",
                format!("missing; set it in the file or in {DATABASE_URL_ENV}"),
            )
        })?;
        let connection = ConnectionUrl::parse(&url)
            .map_err(|error| ConfigError::key("database.url", error.to_string()))?;
        let ca = match self.database.ca_file {
            None => None,
            Some(file) => Some(database_ca(&file, connection.ssl_mode, base_dir)?),
        };
        let database = DatabaseConfig {
            url: SecretString::from(url),
            pool_size: positive("database.pool_size", self.database.pool_size)?,
            connection,
            ca,
        };

        let dispatch = DispatchConfig {
            concurrency: positive("dispatch.concurrency", self.dispatch.concurrency)?,
            batch_size: positive("dispatch.batch_size", self.dispatch.batch_size)?,
            lease: duration("dispatch.lease", &self.dispatch.lease)?,
            poll_interval: duration("dispatch.poll_interval", &self.dispatch.poll_interval)?,
            request_timeout: duration("dispatch.request_timeout", &self.dispatch.request_timeout)?,
            shutdown_grace: duration("dispatch.shutdown_grace", &self.dispatch.shutdown_grace)?,
        };
        // A claim must outlive the request made under it, or another daemon could send the
        // same delivery while we still wait for the answer.
        let in_use = dispatch
            .request_timeout
            .saturating_add(dispatch.shutdown_grace);
        if dispatch.lease - dispatch.lease / 10 <= in_use {
            // Nine tenths of the lease must exceed `in_use`; whole seconds read best.
            let shortest = in_use.saturating_mul(10).as_secs() / 9 + 1;
            let default = if self.dispatch.shutdown_grace == defaults::shutdown_grace() {
                ", the default"
            } else {
                ""
            };
            return Err(ConfigError::key(
                "dispatch.lease",
                format!(
                    "{lease} is too short: a claim must outlast request_timeout ({timeout}) plus \
                     shutdown_grace ({grace}{default}), plus a tenth of the lease for recording \
                     the result; make lease at least \"{shortest}s\", or shorten the other two",
                    lease = humantime::format_duration(dispatch.lease),
                    timeout = humantime::format_duration(dispatch.request_timeout),
                    grace = humantime::format_duration(dispatch.shutdown_grace),
                ),
            ));
        }

        let retry = RetryPolicy {
            max_attempts: self.retry.max_attempts,
            base_delay: duration("retry.base_delay", &self.retry.base_delay)?,
            max_delay: duration("retry.max_delay", &self.retry.max_delay)?,
        };
        if retry.max_attempts == 0 {
            return Err(ConfigError::key("retry.max_attempts", "must be at least 1"));
        }
        if retry.max_delay < retry.base_delay {
            return Err(ConfigError::key(
                "retry.max_delay",
                "must not be shorter than retry.base_delay",
            ));
        }

        let retention = RetentionConfig {
            payload_days: self.retention.payload_days,
            metadata_days: self.retention.metadata_days,
            prune_interval: duration("retention.prune_interval", &self.retention.prune_interval)?,
            batch_size: positive("retention.batch_size", self.retention.batch_size)?,
        };
        if retention.payload_days == 0 {
            return Err(ConfigError::key(
                "retention.payload_days",
                "must be at least 1",
            ));
        }
        // Deleting a delivery deletes what it holds: bodies cannot outlive the metadata.
        if retention.metadata_days < retention.payload_days {
            return Err(ConfigError::key(
                "retention.metadata_days",
                "must not be shorter than retention.payload_days",
            ));
        }

        let mut names = HashSet::new();
        let mut partners = Vec::with_capacity(self.partners.len());
        for (index, raw) in self.partners.into_iter().enumerate() {
            let partner = raw.validate(index, base_dir)?;
            if !names.insert(partner.name.clone()) {
                return Err(ConfigError::key(
                    format!("partners[{index}].name"),
                    format!("partner `{}` is configured twice", partner.name),
                ));
            }
            partners.push(partner);
        }

        Ok(Config {
            database,
            dispatch,
            retry,
            retention,
            partners,
            admin: self.admin.validate(base_dir)?,
            log: LogConfig {
                format: self.log.format,
            },
        })
    }
}

/// Long enough that guessing it is hopeless.
const MIN_ADMIN_TOKEN_LEN: usize = 24;

impl RawAdmin {
    fn validate(self, base_dir: &Path) -> Result<AdminConfig, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            ConfigError::key(
                "admin.listen",
                "must be an IP address and port, e.g. 127.0.0.1:9187",
            )
        })?;
        let token = match self.token {
            None => None,
            Some(token) if token.chars().count() < MIN_ADMIN_TOKEN_LEN => {
                return Err(ConfigError::key(
                    "admin.token",
                    format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
                ))
            }
            Some(token) => Some(SecretString::from(token)),
        };
        let mut allowed_hosts = Vec::with_capacity(self.allowed_hosts.len());
        for (index, entry) in self.allowed_hosts.iter().enumerate() {
            let host = HostAuthority::parse(entry).ok_or_else(|| {
                ConfigError::key(
                    format!("admin.allowed_hosts[{index}]"),
                    format!(
                        "`{entry}` is not a host name or IP address with an optional port, \
                         e.g. dispatcher-admin.example.org or dispatcher-admin.example.org:9187"
                    ),
                )
            })?;
            allowed_hosts.push(host);
        }
        if !allowed_hosts.is_empty() && token.is_none() {
            return Err(ConfigError::key(
                "admin.allowed_hosts",
                "needs admin.token: without a token the admin server answers to loopback \
                 names only (127.0.0.1, [::1], localhost)",
            ));
        }
        let tls = admin_tls(self.tls_cert, self.tls_key, base_dir)?;
        Ok(AdminConfig {
            listen,
            token,
            allowed_hosts,
            tls,
        })
    }
}

/// The admin server's certificate chain and key, read like a partner's client
/// certificate (PEM files beside the config) and checked to belong together now, so
/// `dispatcher check` finds a wrong pair rather than the first browser.
fn admin_tls(
    cert_file: Option<String>,
    key_file: Option<String>,
    base_dir: &Path,
) -> Result<Option<AdminTls>, ConfigError> {
    use sha2::Digest;

    let (cert_file, key_file) = match (cert_file, key_file) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::key(
                "admin.tls_key",
                "missing: tls_cert needs its private key",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::key(
                "admin.tls_cert",
                "missing: tls_key needs its certificate",
            ))
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let chain = read_certificates("admin.tls_cert", &cert_file, base_dir)?;
    let fingerprint = chain
        .iter()
        .fold(sha2::Sha256::new(), |digest, cert| {
            digest.chain_update(cert)
        })
        .finalize()
        .into();
    let mut pem = read_pem("admin.tls_key", &key_file, base_dir)?;
    let key = PrivateKeyDer::from_pem_slice(&pem);
    // The key's bytes are not kept beyond the server configuration.
    pem.fill(0);
    let key = key.map_err(|_| {
        ConfigError::key(
            "admin.tls_key",
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|error| {
            ConfigError::key(
                "admin.tls_key",
                format!("cannot serve with this certificate and key: {error}"),
            )
        })?;
    // The admin server speaks HTTP/1.1 only.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(AdminTls {
        server: std::sync::Arc::new(server),
        fingerprint,
    }))
}

impl RawPartner {
    fn validate(self, index: usize, base_dir: &Path) -> Result<Partner, ConfigError> {
        let key = |field: &str| format!("partners[{index}].{field}");
        if self.name.trim().is_empty() {
            return Err(ConfigError::key(key("name"), "must not be empty"));
        }
        if self.support_programs.is_empty() || self.support_programs.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::key(
                key("support_programs"),
                "must list at least one non-empty support program id",
            ));
        }
        let enrollment_url = partner_url(
            &key("enrollment_url"),
            &self.enrollment_url,
            self.allow_insecure,
        )?;
        let user_action_url = partner_url(
            &key("user_action_url"),
            &self.user_action_url,
            self.allow_insecure,
        )?;
        let signing_secrets = match (self.signing_secret, self.signing_secrets) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    key("signing_secrets"),
                    "set either signing_secret or signing_secrets, not both",
                ))
            }
            (Some(secret), None) => {
                vec![signing_secret(&key("signing_secret"), &secret, base_dir)?]
            }
            (None, Some(secrets)) if secrets.is_empty() => {
                return Err(ConfigError::key(
                    key("signing_secrets"),
                    "must list at least one secret (or leave the key out)",
                ))
            }
            (None, Some(secrets)) => secrets
                .iter()
                .enumerate()
                .map(|(i, secret)| {
                    signing_secret(
                        &format!("{}[{i}]", key("signing_secrets")),
                        secret,
                        base_dir,
                    )
                })
                .collect::<Result<_, _>>()?,
            (None, None) => Vec::new(),
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in self.headers {
            let value = secret_text(&format!("{}.{name}", key("headers")), value, base_dir)?;
            let header_name =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    ConfigError::key(
                        key("headers"),
                        format!("`{name}` is not a valid header name"),
                    )
                })?;
            if reqwest::header::HeaderValue::from_str(&value).is_err() {
                return Err(ConfigError::key(
                    format!("{}.{name}", key("headers")),
                    "is not a valid header value",
                ));
            }
            headers.push((header_name, SecretString::from(value)));
        }
        let allow_networks = self
            .allow_networks
            .iter()
            .map(|network| {
                network.parse::<IpNet>().map_err(|_| {
                    ConfigError::key(
                        key("allow_networks"),
                        format!(
                            "`{network}` is not a network such as \"127.0.0.0/8\" or \"::1/128\""
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let tls = partner_tls(
            &key,
            self.ca_bundle,
            self.client_cert,
            self.client_key,
            base_dir,
        )?;
        let auth = self
            .auth
            .map(|raw| raw.validate(&key("auth"), self.allow_insecure, base_dir))
            .transpose()?;
        if auth.is_some()
            && headers
                .iter()
                .any(|(name, _)| name == reqwest::header::AUTHORIZATION)
        {
            return Err(ConfigError::key(
                key("headers.authorization"),
                "conflicts with [partners.auth]; keep one of them",
            ));
        }
        if self.circuit_breaker_failures == 0 {
            return Err(ConfigError::key(
                key("circuit_breaker_failures"),
                "must be at least 1: the failed attempts in a row after which the partner's \
                 deliveries are held",
            ));
        }
        let circuit = CircuitConfig {
            failures: self.circuit_breaker_failures,
            cool_down: duration(
                &key("circuit_breaker_cool_down"),
                &self.circuit_breaker_cool_down,
            )?,
        };
        Ok(Partner {
            name: self.name,
            support_programs: self.support_programs,
            enrollment_url,
            user_action_url,
            signing_secrets,
            headers,
            max_in_flight: positive(&key("max_in_flight"), self.max_in_flight)?,
            circuit,
            allow_insecure: self.allow_insecure,
            allow_networks,
            tls,
            auth,
        })
    }
}

impl RawAuth {
    fn validate(
        self,
        key: &str,
        allow_insecure: bool,
        base_dir: &Path,
    ) -> Result<AuthConfig, ConfigError> {
        let field = |name: &str| format!("{key}.{name}");
        let auth = match self {
            RawAuth::Bearer { token } => AuthConfig::Bearer {
                token: credential(&field("token"), token, base_dir)?,
            },
            RawAuth::Basic { username, password } => AuthConfig::Basic {
                username,
                password: credential(&field("password"), password, base_dir)?,
            },
            RawAuth::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
                client_auth,
            } => {
                if client_id.is_empty() {
                    return Err(ConfigError::key(field("client_id"), "must not be empty"));
                }
                AuthConfig::OAuth2ClientCredentials(OAuthClientCredentials {
                    token_url: partner_url(&field("token_url"), &token_url, allow_insecure)?,
                    client_id,
                    client_secret: credential(&field("client_secret"), client_secret, base_dir)?,
                    scope,
                    audience,
                    client_auth,
                })
            }
        };
        if let Err(message) = auth.static_header() {
            let name = match auth {
                AuthConfig::Basic { .. } if message.contains("username") => "username",
                AuthConfig::Basic { .. } => "password",
                _ => "token",
            };
            return Err(ConfigError::key(field(name), message));
        }
        Ok(auth)
    }
}

/// A credential of `[partners.auth]`: an empty one (an unset variable's stand-in, say)
/// is a mistake, not a credential.
fn credential(key: &str, value: String, base_dir: &Path) -> Result<SecretString, ConfigError> {
    let value = secret_text(key, value, base_dir)?;
    if value.is_empty() {
        return Err(ConfigError::key(key, "must not be empty"));
    }
    Ok(SecretString::from(value))
}

fn signing_secret(key: &str, text: &str, base_dir: &Path) -> Result<SigningSecret, ConfigError> {
    let text = secret_text(key, text.to_string(), base_dir)?;
    SigningSecret::parse(&text).map_err(|error| ConfigError::key(key, error.to_string()))
}

/// A secret's value: as written (after `${VAR}` expansion), or the content of the file
/// named by `file:PATH`. Errors name the key and the file, never the value.
fn secret_text(key: &str, value: String, base_dir: &Path) -> Result<String, ConfigError> {
    let Some(file) = value.strip_prefix(SECRET_FILE_PREFIX) else {
        return Ok(value);
    };
    let path = beside_config(base_dir, file);
    let content = std::fs::read_to_string(&path).map_err(|error| {
        ConfigError::key(
            key,
            format!("cannot read secret file {}: {error}", path.display()),
        )
    })?;
    // Files written by `echo` or editors end in a line break that is not part of the secret.
    let secret = content.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(ConfigError::key(
            key,
            format!("secret file {} is empty", path.display()),
        ));
    }
    Ok(secret.to_string())
}

fn beside_config(base_dir: &Path, file: &str) -> PathBuf {
    base_dir.join(file)
}

fn read_pem(key: &str, file: &str, base_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    let path = beside_config(base_dir, file);
    std::fs::read(&path)
        .map_err(|error| ConfigError::key(key, format!("cannot read {}: {error}", path.display())))
}

/// The certificates of a PEM file beside the config (at least one), for rustls.
fn read_certificates(
    key: &str,
    file: &str,
    base_dir: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_pem(key, file, base_dir)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ConfigError::key(key, format!("is not valid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(ConfigError::key(key, "holds no PEM certificate"));
    }
    Ok(certificates)
}

/// `database.ca_file`: only where the certificate is verified, lest ops believe a CA
/// protects a link that `require` leaves open to anyone's certificate.
fn database_ca(file: &str, ssl_mode: SslMode, base_dir: &Path) -> Result<DatabaseCa, ConfigError> {
    const KEY: &str = "database.ca_file";
    if !ssl_mode.verifies() {
        return Err(ConfigError::key(
            KEY,
            format!(
                "is only used with sslmode=verify-full or verify-ca, and database.url has \
                 sslmode={ssl_mode}{}",
                if ssl_mode == SslMode::default() {
                    " (the default)"
                } else {
                    ""
                }
            ),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in read_certificates(KEY, file, base_dir)? {
        roots.add(certificate).map_err(|error| {
            ConfigError::key(
                KEY,
                format!("holds a certificate that cannot be a CA: {error}"),
            )
        })?;
    }
    Ok(DatabaseCa {
        path: beside_config(base_dir, file),
        roots,
    })
}

fn partner_tls(
    key: &impl Fn(&str) -> String,
    ca_bundle: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    base_dir: &Path,
) -> Result<PartnerTls, ConfigError> {
    let mut tls = PartnerTls::default();
    if let Some(file) = ca_bundle {
        let pem = read_pem(&key("ca_bundle"), &file, base_dir)?;
        tls.extra_roots = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|roots| !roots.is_empty())
            .ok_or_else(|| ConfigError::key(key("ca_bundle"), "holds no PEM certificate"))?;
    }
    match (client_cert, client_key) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(ConfigError::key(
                key("client_key"),
                "missing: client_cert needs its private key",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::key(
                key("client_cert"),
                "missing: client_key needs its certificate",
            ))
        }
        (Some(cert_file), Some(key_file)) => {
            let mut pem = read_pem(&key("client_cert"), &cert_file, base_dir)?;
            if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |c| c.is_empty()) {
                return Err(ConfigError::key(
                    key("client_cert"),
                    "holds no PEM certificate",
                ));
            }
            pem.push(b'\n');
            pem.extend(read_pem(&key("client_key"), &key_file, base_dir)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                ConfigError::key(
                    key("client_key"),
                    "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                )
            });
            // The key's bytes are not kept beyond the identity.
            pem.fill(0);
            tls.client_identity = Some(identity?);
        }
    }
    Ok(tls)
}

/// serde quotes a wrongly typed value in its message (`invalid type: string "…"`); the
/// value may be a secret, so it is cut out. The key names the place well enough.
fn without_values(message: &str) -> String {
    match (message.find('"'), message.rfind('"')) {
        (Some(start), Some(end)) if end > start => {
            format!(
                "{}(value not shown){}",
                &message[..start],
                &message[end + 1..]
            )
        }
        _ => message.to_string(),
    }
}

fn partner_url(key: &str, text: &str, allow_insecure: bool) -> Result<Url, ConfigError> {
    let url = Url::parse(text)
        .map_err(|error| ConfigError::key(key, format!("not a valid URL: {error}")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        "http" => {
            return Err(ConfigError::key(
                key,
                "must be https:// (patient data never travels in clear text); set allow_insecure = true only for local testing",
            ))
        }
        other => {
            return Err(ConfigError::key(
                key,
                format!("scheme `{other}` is not supported; use https://"),
            ))
        }
    }
    if url.host_str().is_none() {
        return Err(ConfigError::key(key, "has no host"));
    }
    Ok(url)
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

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let value = humantime::parse_duration(text).map_err(|error| {
        ConfigError::key(
            key,
            format!("`{text}` is not a duration such as \"500ms\", \"10s\" or \"6h\": {error}"),
        )
    })?;
    if value.is_zero() {
        return Err(ConfigError::key(key, "must be longer than zero"));
    }
    Ok(value)
}

fn positive(key: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::key(key, "must be at least 1"));
    }
    Ok(value)
}

/// Replaces `${VAR}` inside every string value, so secrets can stay in the environment.
fn expand_env(
    value: &mut toml::Value,
    key: &mut String,
    lookup_env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(text) if text.contains("${") => {
            *text = expand_string(text, key, lookup_env)?;
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = key.len();
                key.push_str(&format!("[{index}]"));
                expand_env(item, key, lookup_env)?;
                key.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table.iter_mut() {
                let len = key.len();
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
                expand_env(item, key, lookup_env)?;
                key.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_string(
    text: &str,
    key: &str,
    lookup_env: &impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut expanded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        expanded.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::key(key, "has `${` without a closing `}`"))?;
        let name = &after[..end];
        let value = lookup_env(name).ok_or_else(|| {
            ConfigError::key(key, format!("environment variable {name} is not set"))
        })?;
        expanded.push_str(&value);
        rest = &after[end + 1..];
    }
    expanded.push_str(rest);
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [database]
        url = "postgres://dispatcher@127.0.0.1/dispatcher"

        [[partners]]
        name = "acme"
        support_programs = ["prog-1"]
        enrollment_url = "https://crm.example/enroll"
        user_action_url = "https://crm.example/action"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", None, |name| {
            (name == "ACME_KEY").then(|| "key-123".to_string())
        })
    }

    #[test]
    fn a_minimal_file_gets_documented_defaults() {
        let config = parse(MINIMAL).expect("valid config");
        assert_eq!(config.dispatch.batch_size, 100);
        assert_eq!(config.retry.max_attempts, 12);
        assert_eq!(config.retention.payload_days, 30);
        assert_eq!(config.retention.metadata_days, 400);
        assert_eq!(
            config.retention.prune_interval,
            Duration::from_secs(10 * 60)
        );
        assert_eq!(config.partners_of("prog-1").count(), 1);
        assert_eq!(config.partners_of("prog-2").count(), 0);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let text = MINIMAL.replace("name = \"acme\"", "name = \"acme\"\ncolour = \"red\"");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("partners[0]") && error.contains("colour"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_key_is_named() {
        let text = MINIMAL.replace("user_action_url = \"https://crm.example/action\"", "");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("user_action_url"), "{error}");
    }

    #[test]
    fn plain_http_needs_allow_insecure() {
        let text = MINIMAL.replace("https://crm.example/enroll", "http://crm.example/enroll");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].enrollment_url") && error.contains("https"),
            "{error}"
        );
        let allowed = text.replace("name = \"acme\"", "name = \"acme\"\nallow_insecure = true");
        assert!(parse(&allowed).is_ok());
    }

    #[test]
    fn env_references_are_expanded_and_missing_ones_named() {
        let text = MINIMAL.replace(
            "name = \"acme\"",
            "name = \"acme\"\nheaders = { \"x-api-key\" = \"${ACME_KEY}\" }",
        );
        let config = parse(&text).expect("valid config");
        let (name, value) = &config.partners[0].headers[0];
        assert_eq!(name.as_str(), "x-api-key");
        assert_eq!(secrecy::ExposeSecret::expose_secret(value), "key-123");

        let missing = text.replace("ACME_KEY", "NOT_SET_ANYWHERE");
        let error = parse(&missing).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].headers.x-api-key") && error.contains("NOT_SET_ANYWHERE"),
            "{error}"
        );
    }

    #[test]
    fn the_documented_sample_parses() {
        let text = include_str!("../../dispatcher.sample.toml");
        let config = Config::parse(text, "dispatcher.sample.toml", None, |name| match name {
            "DISPATCHER_DATABASE_URL" => Some("postgres://dispatcher@127.0.0.1/dispatcher".into()),
            "ACME_SIGNING_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            "ACME_API_KEY" => Some("key".into()),
            "GLOBEX_SIGNING_SECRET" => Some("whsec_Z2xvYmV4LXNlY3JldA==".into()),
            "GLOBEX_CLIENT_SECRET" => Some("client-secret".into()),
            "DISPATCHER_ADMIN_TOKEN" => Some("a-token-of-at-least-24-characters".into()),
            _ => None,
        })
        .expect("the sample config is valid");
        assert_eq!(config.partners[0].name, "acme-crm");
        assert!(config.admin.token.is_some());
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(matches!(
            config.partners[1].auth,
            Some(AuthConfig::OAuth2ClientCredentials(_))
        ));
        // The commented-out alternatives are valid keys too.
        let uncommented = text
            .replace("# signing_secrets = ", "signing_secrets = ")
            .replace("signing_secret = \"${ACME_SIGNING_SECRET}\"\n", "")
            .replace("# allow_networks = ", "allow_networks = ")
            .replace(
                "# [partners.auth]\n# kind = \"bearer\"\n# token = ",
                "[partners.auth]\nkind = \"bearer\"\ntoken = ",
            )
            .replace("# audience = ", "audience = ")
            .replace("# allowed_hosts = ", "allowed_hosts = ");
        let config = Config::parse(&uncommented, "dispatcher.sample.toml", None, |name| {
            Some(match name {
                "ACME_SIGNING_SECRET" | "ACME_NEXT_SIGNING_SECRET" | "GLOBEX_SIGNING_SECRET" => {
                    "whsec_Z2xvYmV4LXNlY3JldA==".into()
                }
                "DISPATCHER_DATABASE_URL" => "postgres://dispatcher@127.0.0.1/dispatcher".into(),
                "DISPATCHER_ADMIN_TOKEN" => "a-token-of-at-least-24-characters".into(),
                _ => "value".into(),
            })
        })
        .expect("the sample's alternatives are valid");
        assert_eq!(config.partners[0].signing_secrets.len(), 2);
        assert_eq!(config.partners[0].allow_networks.len(), 1);
        assert!(matches!(
            config.partners[0].auth,
            Some(AuthConfig::Bearer { .. })
        ));
    }

    /// MINIMAL's partner with extra keys (before any sub-table).
    fn partner_with(keys: &str) -> String {
        MINIMAL.replace("name = \"acme\"", &format!("name = \"acme\"\n{keys}"))
    }

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
    fn secrets_can_come_from_files_beside_the_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("acme.key"), "key-from-file\r\n").expect("write");
        let path = dir.path().join("dispatcher.toml").display().to_string();
        let text = partner_with("headers = { \"x-api-key\" = \"file:acme.key\" }");
        let config = Config::parse(&text, &path, None, |_| None).expect("valid config");
        let (_, value) = &config.partners[0].headers[0];
        assert_eq!(secrecy::ExposeSecret::expose_secret(value), "key-from-file");

        let missing = text.replace("acme.key", "no-such.key");
        let error = Config::parse(&missing, &path, None, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("partners[0].headers.x-api-key") && error.contains("no-such.key"),
            "{error}"
        );
    }

    #[test]
    fn a_partner_rotating_its_secret_lists_both_and_the_old_key_still_works() {
        let both = partner_with(
            "signing_secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"whsec_bmV4dA==\"]",
        );
        assert_eq!(
            parse(&both).expect("valid").partners[0]
                .signing_secrets
                .len(),
            2
        );
        let single = partner_with("signing_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"");
        assert_eq!(
            parse(&single).expect("valid").partners[0]
                .signing_secrets
                .len(),
            1
        );

        let bad = partner_with("signing_secrets = [\"whsec_bmV4dA==\", \"oops\"]");
        let error = parse(&bad).unwrap_err().to_string();
        assert!(error.contains("partners[0].signing_secrets[1]"), "{error}");
        let twice = partner_with(
            "signing_secret = \"whsec_bmV4dA==\"\nsigning_secrets = [\"whsec_bmV4dA==\"]",
        );
        let error = parse(&twice).unwrap_err().to_string();
        assert!(error.contains("not both"), "{error}");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        let text = partner_with("signing_secrets = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("partners[0].signing_secrets"), "{error}");
        assert!(!error.contains("MfKQ9r8G"), "{error}");
    }

    #[test]
    fn auth_kinds_are_checked_and_named() {
        let oauth = format!(
            "{MINIMAL}\n[partners.auth]\nkind = \"oauth2_client_credentials\"\n\
             token_url = \"https://auth.example/token\"\nclient_id = \"ha\"\n\
             client_secret = \"s\"\nscope = \"webhooks\"\nclient_auth = \"client_secret_post\"\n"
        );
        let config = parse(&oauth).expect("valid oauth");
        assert!(matches!(
            &config.partners[0].auth,
            Some(AuthConfig::OAuth2ClientCredentials(o)) if o.client_auth == ClientAuthMethod::ClientSecretPost
        ));

        let http_token_url = oauth.replace("https://auth.example", "http://auth.example");
        let error = parse(&http_token_url).unwrap_err().to_string();
        assert!(error.contains("partners[0].auth.token_url"), "{error}");

        let unknown_kind = format!("{MINIMAL}\n[partners.auth]\nkind = \"kerberos\"\n");
        let error = parse(&unknown_kind).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].auth") && error.contains("kerberos"),
            "{error}"
        );

        let typo = format!("{MINIMAL}\n[partners.auth]\nkind = \"bearer\"\ntokne = \"t\"\n");
        let error = parse(&typo).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].auth") && error.contains("tokne"),
            "{error}"
        );

        let empty = format!("{MINIMAL}\n[partners.auth]\nkind = \"bearer\"\ntoken = \"\"\n");
        let error = parse(&empty).unwrap_err().to_string();
        assert!(error.contains("partners[0].auth.token"), "{error}");

        let conflict = partner_with("headers = { \"Authorization\" = \"Bearer x\" }")
            + "\n[partners.auth]\nkind = \"bearer\"\ntoken = \"t\"\n";
        let error = parse(&conflict).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].headers.authorization"),
            "{error}"
        );
    }

    #[test]
    fn allow_networks_and_tls_files_are_checked_and_named() {
        let networks = partner_with("allow_networks = [\"127.0.0.0/8\", \"::1/128\"]");
        assert_eq!(
            parse(&networks).expect("valid").partners[0]
                .allow_networks
                .len(),
            2
        );
        let bad = partner_with("allow_networks = [\"localhost\"]");
        let error = parse(&bad).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].allow_networks") && error.contains("localhost"),
            "{error}"
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dispatcher.toml").display().to_string();
        std::fs::write(dir.path().join("not-a-cert.pem"), "hello").expect("write");
        for (keys, named) in [
            ("ca_bundle = \"missing.pem\"", "partners[0].ca_bundle"),
            ("ca_bundle = \"not-a-cert.pem\"", "partners[0].ca_bundle"),
            ("client_cert = \"not-a-cert.pem\"", "partners[0].client_key"),
            ("client_key = \"not-a-cert.pem\"", "partners[0].client_cert"),
            (
                "client_cert = \"not-a-cert.pem\"\nclient_key = \"not-a-cert.pem\"",
                "partners[0].client_cert",
            ),
        ] {
            let error = Config::parse(&partner_with(keys), &path, None, |_| None)
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{keys}: {error}");
        }
    }

    #[test]
    fn the_database_sslmode_and_ca_file_are_checked_and_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dispatcher.toml").display().to_string();
        let ca = rcgen::generate_simple_self_signed(vec!["db.internal".to_string()])
            .expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).expect("write");
        std::fs::write(dir.path().join("not-a-cert.pem"), "hello").expect("write");
        let database = |url: &str, keys: &str| {
            let text = format!("[database]\nurl = \"{url}\"\n{keys}\n");
            Config::parse(&text, &path, None, |_| None).map(|config| config.database)
        };
        let remote = "postgres://dispatcher:hunter2@db.internal/dispatcher";

        let verified = database(
            &format!("{remote}?sslmode=verify-full"),
            "ca_file = \"ca.pem\"",
        )
        .expect("valid");
        assert_eq!(verified.connection.ssl_mode, SslMode::VerifyFull);
        assert_eq!(
            verified.ca.map(|ca| ca.path),
            Some(dir.path().join("ca.pem"))
        );
        let default = database(remote, "").expect("valid");
        assert_eq!(default.connection.ssl_mode, SslMode::Prefer);
        assert!(default.ca.is_none());

        for (url, keys, named, says) in [
            (
                format!("{remote}?sslmode=verify-full"),
                "ca_file = \"missing.pem\"",
                "database.ca_file",
                "cannot read",
            ),
            (
                format!("{remote}?sslmode=verify-ca"),
                "ca_file = \"not-a-cert.pem\"",
                "database.ca_file",
                "holds no PEM certificate",
            ),
            (
                remote.to_string(),
                "ca_file = \"ca.pem\"",
                "database.ca_file",
                "sslmode=prefer (the default)",
            ),
            (
                format!("{remote}?sslmode=require"),
                "ca_file = \"ca.pem\"",
                "database.ca_file",
                "only used with sslmode=verify-full or verify-ca",
            ),
            (
                format!("{remote}?sslmode=verify_full"),
                "",
                "database.url",
                "sslmode must be one of",
            ),
            (
                format!("{remote}?sslmode=verify-full&sslrootcert=ca.pem"),
                "",
                "database.url",
                "database.ca_file",
            ),
        ] {
            let error = database(&url, keys).unwrap_err().to_string();
            assert!(
                error.contains(named) && error.contains(says),
                "{url} {keys}: {error}"
            );
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn admin_host_names_are_checked_and_need_a_token() {
        let with_admin = |keys: &str| format!("{MINIMAL}\n[admin]\n{keys}\n");
        let token = "token = \"a-token-of-at-least-24-characters\"";
        let config = parse(&with_admin(&format!(
            "{token}\nallowed_hosts = [\"Admin.Example.org\", \"10.1.2.3:9187\", \"[fd00::1]:443\"]"
        )))
        .expect("valid allowed_hosts");
        let hosts: Vec<(&str, Option<u16>)> = config
            .admin
            .allowed_hosts
            .iter()
            .map(|host| (host.host.as_str(), host.port))
            .collect();
        assert_eq!(
            hosts,
            [
                ("admin.example.org", None),
                ("10.1.2.3", Some(9187)),
                ("[fd00::1]", Some(443))
            ]
        );

        let error = parse(&with_admin("allowed_hosts = [\"admin.example.org\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("admin.allowed_hosts") && error.contains("admin.token"),
            "{error}"
        );
        for bad in [
            "https://admin.example.org",
            "admin.example.org:",
            "a b",
            "",
            "::1",
        ] {
            let error = parse(&with_admin(&format!(
                "{token}\nallowed_hosts = [\"admin.example.org\", \"{bad}\"]"
            )))
            .unwrap_err()
            .to_string();
            assert!(error.contains("admin.allowed_hosts[1]"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_admin_certificate_and_key_are_checked_and_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dispatcher.toml").display().to_string();
        let write = |name: &str, content: &str| {
            std::fs::write(dir.path().join(name), content).expect("write");
        };
        let issue = || {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = issue();
        let (_, other_key) = issue();
        write("admin.pem", &cert);
        write("admin-key.pem", &key);
        write("other-key.pem", &other_key);
        write("not-pem.pem", "hello");
        let admin = |keys: &str| {
            Config::parse(
                &format!("{MINIMAL}\n[admin]\n{keys}\n"),
                &path,
                None,
                |_| None,
            )
        };

        let config = admin("tls_cert = \"admin.pem\"\ntls_key = \"admin-key.pem\"")
            .expect("a matching pair");
        assert!(config.admin.tls.is_some());
        let printed = format!("{config:?}");
        assert!(!printed.contains("PRIVATE KEY") && printed.contains("[certificate]"));

        for (keys, named, says) in [
            ("tls_cert = \"admin.pem\"", "admin.tls_key", "missing"),
            ("tls_key = \"admin-key.pem\"", "admin.tls_cert", "missing"),
            (
                "tls_cert = \"gone.pem\"\ntls_key = \"admin-key.pem\"",
                "admin.tls_cert",
                "cannot read",
            ),
            (
                "tls_cert = \"not-pem.pem\"\ntls_key = \"admin-key.pem\"",
                "admin.tls_cert",
                "no PEM certificate",
            ),
            (
                "tls_cert = \"admin.pem\"\ntls_key = \"not-pem.pem\"",
                "admin.tls_key",
                "no PEM private key",
            ),
            (
                "tls_cert = \"admin.pem\"\ntls_key = \"admin.pem\"",
                "admin.tls_key",
                "no PEM private key",
            ),
            (
                "tls_cert = \"admin.pem\"\ntls_key = \"other-key.pem\"",
                "admin.tls_key",
                "cannot serve",
            ),
        ] {
            let error = admin(keys).unwrap_err().to_string();
            assert!(
                error.contains(named) && error.contains(says),
                "{keys}: {error}"
            );
            assert!(!error.contains("BEGIN"), "{error}");
        }
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

    #[test]
    fn metadata_cannot_go_before_the_bodies() {
        let text = format!("{MINIMAL}\n[retention]\npayload_days = 30\nmetadata_days = 7\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("retention.metadata_days"), "{error}");
    }

    #[test]
    fn the_circuit_breaker_has_defaults_and_its_keys_are_checked() {
        let circuit = &parse(MINIMAL).expect("valid config").partners[0].circuit;
        assert_eq!(circuit.failures, 10);
        assert_eq!(circuit.cool_down, Duration::from_secs(30));

        let tuned =
            partner_with("circuit_breaker_failures = 3\ncircuit_breaker_cool_down = \"2m\"");
        let circuit = &parse(&tuned).expect("valid config").partners[0].circuit;
        assert_eq!(circuit.failures, 3);
        assert_eq!(circuit.cool_down, Duration::from_secs(120));

        for (keys, named) in [
            (
                "circuit_breaker_failures = 0",
                "partners[0].circuit_breaker_failures",
            ),
            (
                "circuit_breaker_failures = -1",
                "partners[0].circuit_breaker_failures",
            ),
            (
                "circuit_breaker_cool_down = \"0s\"",
                "partners[0].circuit_breaker_cool_down",
            ),
            (
                "circuit_breaker_cool_down = \"a while\"",
                "partners[0].circuit_breaker_cool_down",
            ),
        ] {
            let error = parse(&partner_with(keys)).unwrap_err().to_string();
            assert!(error.contains(named), "{keys}: {error}");
        }
    }

    #[test]
    fn a_lease_too_short_gives_the_numbers_that_fix_it() {
        let text = format!("{MINIMAL}\n[dispatch]\nlease = \"20s\"\n");
        let error = parse(&text).unwrap_err().to_string();
        assert_eq!(
            error,
            "config key `dispatch.lease`: 20s is too short: a claim must outlast request_timeout \
             (10s) plus shutdown_grace (15s, the default), plus a tenth of the lease for recording the \
             result; make lease at least \"28s\", or shorten the other two"
        );
        let text = text.replace("lease = \"20s\"", "lease = \"28s\"");
        assert!(parse(&text).is_ok(), "the lease it suggests is long enough");
    }

    #[test]
    fn a_bad_duration_is_named() {
        let text = format!("{MINIMAL}\n[retry]\nbase_delay = \"soon\"\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("retry.base_delay"), "{error}");
    }
}
