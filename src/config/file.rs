//! The serde mirror of `dispatcher.toml`: every table and key as written, with its
//! default, and nothing checked beyond its type. Unknown and missing keys are refused
//! here, by name; the values are checked in `validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::auth::ClientAuthMethod;
use crate::config::{ConfigError, LogFormat};

/// The typed mirror of a document whose `${VAR}`s are expanded; a wrongly typed, unknown
/// or missing key is named by its path (`partners[0].enrollment_url`).
pub(super) fn read(document: toml::Value) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(document).map_err(|error| {
        let key = error.path().to_string();
        ConfigError::key(key, without_values(error.into_inner().message()))
    })
}

/// The `[database]` table alone, as [`read`] reads it (a file without one: the defaults).
pub(super) fn read_database(table: Option<toml::Value>) -> Result<RawDatabase, ConfigError> {
    let Some(table) = table else {
        return Ok(RawDatabase {
            url: None,
            pool_size: defaults::pool_size(),
            ca_file: None,
        });
    };
    serde_path_to_error::deserialize(table).map_err(|error| {
        let key = format!("database.{}", error.path());
        ConfigError::key(key, without_values(error.into_inner().message()))
    })
}

/// The `[support]` table alone, as [`read`] reads it (a file without one: no standby).
pub(super) fn read_support(table: Option<toml::Value>) -> Result<RawSupport, ConfigError> {
    let Some(table) = table else {
        return Ok(RawSupport::default());
    };
    serde_path_to_error::deserialize(table).map_err(|error| {
        let key = format!("support.{}", error.path());
        ConfigError::key(key, without_values(error.into_inner().message()))
    })
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) database: RawDatabase,
    #[serde(default)]
    pub(super) dispatch: RawDispatch,
    #[serde(default)]
    pub(super) retry: RawRetry,
    #[serde(default)]
    pub(super) retention: RawRetention,
    #[serde(default)]
    pub(super) partners: Vec<RawPartner>,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) support: RawSupport,
    pub(super) telemetry: Option<RawTelemetry>,
}

/// `[support]`: where support's reads go.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSupport {
    pub(super) database_url: Option<String>,
    pub(super) ca_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) otlp_endpoint: String,
    pub(super) service_name: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default = "defaults::sampling_ratio")]
    pub(super) sampling_ratio: f64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default = "defaults::admin_listen")]
    pub(super) listen: String,
    pub(super) token: Option<String>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<String>,
    pub(super) tls_cert: Option<String>,
    pub(super) tls_key: Option<String>,
    pub(super) oidc: Option<RawOidc>,
    #[serde(default)]
    pub(super) allow_plain_http: bool,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    #[serde(default = "defaults::admin_database_pool_size")]
    pub(super) database_pool_size: usize,
    #[serde(default = "defaults::admin_statement_timeout")]
    pub(super) statement_timeout: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: defaults::admin_listen(),
            token: None,
            allowed_hosts: Vec::new(),
            tls_cert: None,
            tls_key: None,
            oidc: None,
            allow_plain_http: false,
            trusted_proxies: Vec::new(),
            database_pool_size: defaults::admin_database_pool_size(),
            statement_timeout: defaults::admin_statement_timeout(),
        }
    }
}

/// `[admin.oidc]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    pub(super) issuer: String,
    pub(super) client_id: String,
    pub(super) client_secret: String,
    pub(super) redirect_url: String,
    #[serde(default = "defaults::oidc_scopes")]
    pub(super) scopes: Vec<String>,
    #[serde(default = "defaults::oidc_groups_claim")]
    pub(super) groups_claim: String,
    #[serde(default = "defaults::oidc_session_lifetime")]
    pub(super) session_lifetime: String,
    /// Role name (`viewer`, `support`, `operator`) to the groups that hold it.
    pub(super) roles: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) url: Option<String>,
    #[serde(default = "defaults::pool_size")]
    pub(super) pool_size: usize,
    pub(super) ca_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDispatch {
    #[serde(default = "defaults::concurrency")]
    pub(super) concurrency: usize,
    #[serde(default = "defaults::batch_size")]
    pub(super) batch_size: usize,
    #[serde(default = "defaults::lease")]
    pub(super) lease: String,
    #[serde(default = "defaults::poll_interval")]
    pub(super) poll_interval: String,
    #[serde(default = "defaults::request_timeout")]
    pub(super) request_timeout: String,
    #[serde(default = "defaults::shutdown_grace")]
    pub(super) shutdown_grace: String,
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
pub(super) struct RawRetry {
    #[serde(default = "defaults::max_attempts")]
    pub(super) max_attempts: u32,
    #[serde(default = "defaults::base_delay")]
    pub(super) base_delay: String,
    #[serde(default = "defaults::max_delay")]
    pub(super) max_delay: String,
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
pub(super) struct RawRetention {
    #[serde(default = "defaults::payload_days")]
    pub(super) payload_days: u32,
    #[serde(default = "defaults::metadata_days")]
    pub(super) metadata_days: u32,
    #[serde(default = "defaults::prune_interval")]
    pub(super) prune_interval: String,
    #[serde(default = "defaults::prune_batch_size")]
    pub(super) batch_size: usize,
    #[serde(default = "defaults::audit_days")]
    pub(super) audit_days: u32,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            payload_days: defaults::payload_days(),
            metadata_days: defaults::metadata_days(),
            prune_interval: defaults::prune_interval(),
            batch_size: defaults::prune_batch_size(),
            audit_days: defaults::audit_days(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPartner {
    pub(super) name: String,
    pub(super) support_programs: Vec<String>,
    pub(super) enrollment_url: String,
    pub(super) user_action_url: String,
    pub(super) signing_secret: Option<String>,
    pub(super) signing_secrets: Option<Vec<String>>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default = "defaults::max_in_flight")]
    pub(super) max_in_flight: usize,
    #[serde(default = "defaults::circuit_breaker_failures")]
    pub(super) circuit_breaker_failures: u32,
    #[serde(default = "defaults::circuit_breaker_cool_down")]
    pub(super) circuit_breaker_cool_down: String,
    #[serde(default)]
    pub(super) allow_insecure: bool,
    #[serde(default)]
    pub(super) allow_networks: Vec<String>,
    pub(super) ca_bundle: Option<String>,
    pub(super) client_cert: Option<String>,
    pub(super) client_key: Option<String>,
    pub(super) auth: Option<RawAuth>,
}

/// `[partners.auth]`, told apart by `kind`.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum RawAuth {
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

pub(super) mod defaults {
    pub fn sampling_ratio() -> f64 {
        1.0
    }
    pub fn pool_size() -> usize {
        8
    }
    pub fn admin_database_pool_size() -> usize {
        2
    }
    pub fn admin_statement_timeout() -> String {
        "5s".into()
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
    /// Six years: HIPAA keeps its required records that long.
    pub fn audit_days() -> u32 {
        2190
    }
    pub fn oidc_scopes() -> Vec<String> {
        vec!["profile".into(), "email".into()]
    }
    pub fn oidc_groups_claim() -> String {
        "groups".into()
    }
    pub fn oidc_session_lifetime() -> String {
        "8h".into()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::auth::AuthConfig;
    use crate::config::testing::{parse, partner_with, MINIMAL};
    use crate::config::{Config, LogFormat};

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
            .replace("# allowed_hosts = ", "allowed_hosts = ")
            .replace(
                "# [support]\n# database_url = ",
                "[support]\ndatabase_url = ",
            );
        let config = Config::parse(&uncommented, "dispatcher.sample.toml", None, |name| {
            Some(match name {
                "ACME_SIGNING_SECRET" | "ACME_NEXT_SIGNING_SECRET" | "GLOBEX_SIGNING_SECRET" => {
                    "whsec_Z2xvYmV4LXNlY3JldA==".into()
                }
                "DISPATCHER_DATABASE_URL" => "postgres://dispatcher@127.0.0.1/dispatcher".into(),
                "DISPATCHER_STANDBY_URL" => "postgres://support@127.0.0.1:5433/dispatcher".into(),
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
        assert!(config.support.standby.is_some());
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        let text = partner_with("signing_secrets = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("partners[0].signing_secrets"), "{error}");
        assert!(!error.contains("MfKQ9r8G"), "{error}");
    }
}
