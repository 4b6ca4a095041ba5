//! `[telemetry]`: where the daemon exports its traces (OpenTelemetry over OTLP/HTTP), as
//! plain data. Absent, nothing is exported and no exporter is built (`observe::traces`).

use reqwest::header::HeaderName;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// The service name spans carry when `service_name` is not set.
pub const DEFAULT_SERVICE_NAME: &str = "helparound-dispatcher";

/// The OTLP/HTTP path of traces, appended to `otlp_endpoint` (as the OpenTelemetry SDKs
/// do with `OTEL_EXPORTER_OTLP_ENDPOINT`).
pub const OTLP_TRACES_PATH: &str = "v1/traces";

#[derive(Clone)]
pub struct TelemetryConfig {
    /// Where spans are posted: `otlp_endpoint` with [`OTLP_TRACES_PATH`] appended.
    /// https://, or http:// to a loopback host only (a collector beside the daemon).
    pub traces_url: Url,
    pub service_name: String,
    /// Sent with every export (a collector's API key); the values are secrets.
    pub headers: Vec<(HeaderName, SecretString)>,
    /// The share of new traces kept, 0 to 1. A trace continued from the enrollment flow
    /// follows the flow's own decision (its `traceparent`'s sampled flag).
    pub sampling_ratio: f64,
}

impl PartialEq for TelemetryConfig {
    fn eq(&self, other: &Self) -> bool {
        let secrets = |config: &TelemetryConfig| {
            config
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.expose_secret().to_string()))
                .collect::<Vec<_>>()
        };
        self.traces_url == other.traces_url
            && self.service_name == other.service_name
            && self.sampling_ratio == other.sampling_ratio
            && secrets(self) == secrets(other)
    }
}

impl std::fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&HeaderName> = self.headers.iter().map(|(name, _)| name).collect();
        f.debug_struct("TelemetryConfig")
            .field("traces_url", &self.traces_url.as_str())
            .field("service_name", &self.service_name)
            .field("headers", &header_names)
            .field("sampling_ratio", &self.sampling_ratio)
            .finish()
    }
}
