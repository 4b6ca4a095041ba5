//! `[telemetry]`, validated: the collector's URL (clear text only to this machine), the
//! service name, the export headers (secrets) and the sampling ratio.

use std::path::Path;

use url::Url;

use super::partner::header_values;
use crate::config::database::is_loopback_host;
use crate::config::file::RawTelemetry;
use crate::config::telemetry::{TelemetryConfig, DEFAULT_SERVICE_NAME, OTLP_TRACES_PATH};
use crate::config::ConfigError;

impl RawTelemetry {
    pub(super) fn validate(self, base_dir: &Path) -> Result<TelemetryConfig, ConfigError> {
        let key = |field: &str| format!("telemetry.{field}");
        let service_name = self
            .service_name
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        if service_name.trim().is_empty() {
            return Err(ConfigError::key(key("service_name"), "must not be empty"));
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(ConfigError::key(
                key("sampling_ratio"),
                "must be between 0 and 1",
            ));
        }
        Ok(TelemetryConfig {
            traces_url: traces_url(&key("otlp_endpoint"), &self.otlp_endpoint)?,
            service_name,
            headers: header_values(&key, self.headers, base_dir)?,
            sampling_ratio: self.sampling_ratio,
        })
    }
}

/// The collector's traces URL: `endpoint` with `v1/traces` appended. https://, or
/// http:// to a loopback host: spans carry ids only, yet nothing of a patient's
/// deliveries leaves the machine in clear text (as with partners' `allow_insecure`).
fn traces_url(key: &str, endpoint: &str) -> Result<Url, ConfigError> {
    let mut url = Url::parse(endpoint)
        .map_err(|error| ConfigError::key(key, format!("not a valid URL: {error}")))?;
    match url.scheme() {
        "https" => {}
        "http" if url.host_str().is_some_and(is_loopback_host) => {}
        "http" => {
            return Err(ConfigError::key(
                key,
                "must be https://, or http:// to a loopback address (a collector on this machine)",
            ))
        }
        other => {
            return Err(ConfigError::key(
                key,
                format!("scheme `{other}` is not supported; use https://"),
            ))
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::key(key, "must have no query or fragment"));
    }
    // They would be printed with the URL (in errors and `Debug`); headers are secrets.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::key(
            key,
            "must carry no user name or password; put credentials in telemetry.headers",
        ));
    }
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    url.join(OTLP_TRACES_PATH)
        .map_err(|error| ConfigError::key(key, format!("not a valid URL: {error}")))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[database]\nurl = \"postgres://dispatcher@127.0.0.1/d\"\n";

    fn parse(telemetry: &str) -> Result<Config, String> {
        let text = format!("{BASE}\n[telemetry]\n{telemetry}\n");
        Config::parse(&text, "dispatcher.toml", None, |name| match name {
            "COLLECTOR_KEY" => Some("key-1".into()),
            _ => None,
        })
        .map_err(|error| error.to_string())
    }

    #[test]
    fn without_the_section_nothing_is_exported() {
        let config = Config::parse(BASE, "dispatcher.toml", None, |_| None).expect("valid");
        assert!(config.telemetry.is_none());
    }

    #[test]
    fn the_traces_path_is_appended_and_the_defaults_apply() {
        let config = parse("otlp_endpoint = \"https://collector.example/otlp\"").expect("valid");
        let telemetry = config.telemetry.expect("telemetry");
        assert_eq!(
            telemetry.traces_url.as_str(),
            "https://collector.example/otlp/v1/traces"
        );
        assert_eq!(telemetry.service_name, "helparound-dispatcher");
        assert_eq!(telemetry.sampling_ratio, 1.0);
        let config = parse("otlp_endpoint = \"http://127.0.0.1:4318\"").expect("valid");
        assert_eq!(
            config.telemetry.expect("telemetry").traces_url.as_str(),
            "http://127.0.0.1:4318/v1/traces"
        );
    }

    #[test]
    fn clear_text_goes_only_to_a_loopback_collector() {
        for allowed in [
            "http://localhost:4318",
            "http://[::1]:4318",
            "http://127.0.0.2",
        ] {
            assert!(
                parse(&format!("otlp_endpoint = \"{allowed}\"")).is_ok(),
                "{allowed}"
            );
        }
        let error = parse("otlp_endpoint = \"http://collector.example:4318\"").unwrap_err();
        assert!(error.contains("telemetry.otlp_endpoint"), "{error}");
        let error = parse("otlp_endpoint = \"grpc://127.0.0.1:4317\"").unwrap_err();
        assert!(error.contains("telemetry.otlp_endpoint"), "{error}");
    }

    #[test]
    fn a_password_in_the_collector_url_is_refused_without_being_repeated() {
        let error = parse("otlp_endpoint = \"https://ops:hunter2@collector.example\"").unwrap_err();
        assert!(error.contains("telemetry.headers"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn errors_name_the_key_and_headers_are_secrets() {
        let error =
            parse("otlp_endpoint = \"https://c.example\"\nsampling_ratio = 1.5").unwrap_err();
        assert!(error.contains("telemetry.sampling_ratio"), "{error}");
        let error =
            parse("otlp_endpoint = \"https://c.example\"\nservice_name = \" \"").unwrap_err();
        assert!(error.contains("telemetry.service_name"), "{error}");
        let error = parse("endpoint = \"https://c.example\"").unwrap_err();
        assert!(error.contains("telemetry"), "{error}");
        let config = parse(
            "otlp_endpoint = \"https://c.example\"\nheaders = { \"x-api-key\" = \"${COLLECTOR_KEY}\" }",
        )
        .expect("valid");
        let telemetry = config.telemetry.expect("telemetry");
        assert_eq!(telemetry.headers[0].0.as_str(), "x-api-key");
        assert!(!format!("{telemetry:?}").contains("key-1"));
    }
}
