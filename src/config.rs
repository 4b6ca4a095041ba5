//! `dispatcher.toml`: what ops configure, checked completely at start.
//!
//! The file is read in three steps so that every error names the key at fault:
//! TOML syntax, then `"${ENV_VAR}"` expansion, then the typed [`RawConfig`] (unknown and
//! missing keys), then the values themselves (URLs, durations, secrets).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::retry::RetryPolicy;
use crate::signing::SigningSecret;

/// Overrides `[database] url`, so the URL (and its password) can stay out of the file.
pub const DATABASE_URL_ENV: &str = "DISPATCHER_DATABASE_URL";

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
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// Holds the database password, so it is never printed.
    pub url: SecretString,
    pub pool_size: usize,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &"[redacted]")
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

#[derive(Debug, Clone)]
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

/// How long health data and delivery records are kept (see `retention`).
#[derive(Debug, Clone)]
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
    pub signing_secret: Option<SigningSecret>,
    /// Extra request headers, typically the partner's API key.
    pub headers: Vec<(reqwest::header::HeaderName, SecretString)>,
    pub max_in_flight: usize,
    pub allow_insecure: bool,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    #[serde(default = "defaults::pool_size")]
    pool_size: usize,
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
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "defaults::max_in_flight")]
    max_in_flight: usize,
    #[serde(default)]
    allow_insecure: bool,
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
            ConfigError::key(key, error.into_inner().message().to_string())
        })?;
        raw.validate(env_database_url)
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
    fn validate(self, env_database_url: Option<String>) -> Result<Config, ConfigError> {
        let url = env_database_url.or(self.database.url).ok_or_else(|| {
            ConfigError::key(
                "database.url",
                format!("missing; set it in the file or in {DATABASE_URL_ENV}"),
            )
        })?;
        if url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::key(
                "database.url",
                "not a valid PostgreSQL connection URL",
            ));
        }
        let database = DatabaseConfig {
            url: SecretString::from(url),
            pool_size: positive("database.pool_size", self.database.pool_size)?,
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
        if dispatch.lease - dispatch.lease / 10
            <= dispatch.request_timeout + dispatch.shutdown_grace
        {
            return Err(ConfigError::key(
                "dispatch.lease",
                "must be longer than (dispatch.request_timeout + dispatch.shutdown_grace) plus a tenth \
                 of the lease, left for writing the result",
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
            let partner = raw.validate(index)?;
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
        })
    }
}

impl RawPartner {
    fn validate(self, index: usize) -> Result<Partner, ConfigError> {
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
        let signing_secret = self
            .signing_secret
            .map(|secret| {
                SigningSecret::parse(&secret)
                    .map_err(|error| ConfigError::key(key("signing_secret"), error.to_string()))
            })
            .transpose()?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in self.headers {
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
        Ok(Partner {
            name: self.name,
            support_programs: self.support_programs,
            enrollment_url,
            user_action_url,
            signing_secret,
            headers,
            max_in_flight: positive(&key("max_in_flight"), self.max_in_flight)?,
            allow_insecure: self.allow_insecure,
        })
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
        let text = include_str!("../dispatcher.sample.toml");
        let config = Config::parse(text, "dispatcher.sample.toml", None, |name| match name {
            "DISPATCHER_DATABASE_URL" => Some("postgres://dispatcher@127.0.0.1/dispatcher".into()),
            "ACME_SIGNING_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            "ACME_API_KEY" => Some("key".into()),
            _ => None,
        })
        .expect("the sample config is valid");
        assert_eq!(config.partners[0].name, "acme-crm");
    }

    #[test]
    fn metadata_cannot_go_before_the_bodies() {
        let text = format!("{MINIMAL}\n[retention]\npayload_days = 30\nmetadata_days = 7\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("retention.metadata_days"), "{error}");
    }

    #[test]
    fn a_bad_duration_is_named() {
        let text = format!("{MINIMAL}\n[retry]\nbase_delay = \"soon\"\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("retry.base_delay"), "{error}");
    }
}
