//! Turning the file's serde mirror (`file::Raw*`) into the typed configuration: every
//! value checked (URLs, durations, secrets, TLS files) and every error naming its key.
//! One step per table, in the order of the file; a partner's steps are in `partner`,
//! the admin server's in `admin`. Each table and each partner reports its first problem,
//! and all of them are reported together.

mod admin;
mod oidc;
mod partner;
mod telemetry;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;

use crate::config::database::{ConnectionUrl, DatabaseCa, SslMode};
use crate::config::error::Problems;
use crate::config::file::{
    defaults, RawConfig, RawDatabase, RawDispatch, RawPartner, RawRetention, RawRetry, RawSupport,
};
use crate::config::secrets::{beside_config, read_certificates};
use crate::config::{
    Config, ConfigError, DatabaseConfig, DispatchConfig, LogConfig, Partner, RetentionConfig,
    RetryPolicy, SupportConfig, DATABASE_URL_ENV,
};

impl RawConfig {
    /// `env_database_url` overrides `[database] url`; relative file names are read from
    /// `base_dir`.
    pub(in crate::config) fn validate(
        self,
        env_database_url: Option<String>,
        base_dir: &Path,
    ) -> Result<Config, Problems> {
        // No table reads another: each is checked, its problem noted, whatever the others hold.
        let mut problems = Problems::default();
        let database = problems.check(self.database.validate(env_database_url, base_dir));
        let dispatch = problems.check(self.dispatch.validate());
        let retry = problems.check(self.retry.validate());
        let retention = problems.check(self.retention.validate());
        let partners = validate_partners(self.partners, base_dir, &mut problems);
        let admin = problems.check(self.admin.validate(base_dir));
        let support = problems.check(self.support.validate(base_dir));
        let telemetry = problems.check(
            self.telemetry
                .map(|telemetry| telemetry.validate(base_dir))
                .transpose(),
        );
        let (
            Some(database),
            Some(dispatch),
            Some(retry),
            Some(retention),
            Some(partners),
            Some(admin),
            Some(support),
            Some(telemetry),
        ) = (
            database, dispatch, retry, retention, partners, admin, support, telemetry,
        )
        else {
            return Err(problems);
        };
        Ok(Config {
            database,
            dispatch,
            retry,
            retention,
            partners,
            admin,
            support,
            log: LogConfig {
                format: self.log.format,
            },
            telemetry,
        })
    }
}

impl RawDatabase {
    pub(in crate::config) fn validate(
        self,
        env_database_url: Option<String>,
        base_dir: &Path,
    ) -> Result<DatabaseConfig, ConfigError> {
        let url = env_database_url.or(self.url).ok_or_else(|| {
            ConfigError::key(
                "database.url",
                format!("missing; set it in the file or in {DATABASE_URL_ENV}"),
            )
        })?;
        let connection = ConnectionUrl::parse(&url)
            .map_err(|error| ConfigError::key("database.url", error.to_string()))?;
        let ca = match self.ca_file {
            None => None,
            Some(file) => Some(database_ca(
                ("database.ca_file", "database.url"),
                &file,
                connection.ssl_mode,
                base_dir,
            )?),
        };
        Ok(DatabaseConfig {
            url: SecretString::from(url),
            pool_size: positive("database.pool_size", self.pool_size)?,
            connection,
            ca,
        })
    }
}

impl RawSupport {
    /// The standby, read as `[database]`'s URL and CA are: the same `sslmode` rules, its
    /// own `ca_file` (a standby's certificate may come from another CA).
    pub(in crate::config) fn validate(self, base_dir: &Path) -> Result<SupportConfig, ConfigError> {
        let Some(url) = self.database_url else {
            if self.ca_file.is_some() {
                return Err(ConfigError::key(
                    "support.ca_file",
                    "is only used with support.database_url",
                ));
            }
            return Ok(SupportConfig::default());
        };
        let connection = ConnectionUrl::parse(&url)
            .map_err(|error| ConfigError::key("support.database_url", error.to_string()))?;
        let ca = match self.ca_file {
            None => None,
            Some(file) => Some(database_ca(
                ("support.ca_file", "support.database_url"),
                &file,
                connection.ssl_mode,
                base_dir,
            )?),
        };
        Ok(SupportConfig {
            standby: Some(DatabaseConfig {
                url: SecretString::from(url),
                // Not read (see `SupportConfig`): a command's one connection.
                pool_size: 1,
                connection,
                ca,
            }),
        })
    }
}

/// A `ca_file` (`database.ca_file`, `support.ca_file`: `key`, beside the URL at
/// `url_key`): only where the certificate is verified, lest ops believe a CA protects a
/// link that `require` leaves open to anyone's certificate.
fn database_ca(
    (key, url_key): (&str, &str),
    file: &str,
    ssl_mode: SslMode,
    base_dir: &Path,
) -> Result<DatabaseCa, ConfigError> {
    if !ssl_mode.verifies() {
        return Err(ConfigError::key(
            key,
            format!(
                "is only used with sslmode=verify-full or verify-ca, and {url_key} has \
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
    for certificate in read_certificates(key, file, base_dir)? {
        roots.add(certificate).map_err(|error| {
            ConfigError::key(
                key,
                format!("holds a certificate that cannot be a CA: {error}"),
            )
        })?;
    }
    Ok(DatabaseCa {
        path: beside_config(base_dir, file),
        roots,
    })
}

impl RawDispatch {
    fn validate(self) -> Result<DispatchConfig, ConfigError> {
        let dispatch = DispatchConfig {
            concurrency: positive("dispatch.concurrency", self.concurrency)?,
            batch_size: positive("dispatch.batch_size", self.batch_size)?,
            lease: duration("dispatch.lease", &self.lease)?,
            poll_interval: duration("dispatch.poll_interval", &self.poll_interval)?,
            request_timeout: duration("dispatch.request_timeout", &self.request_timeout)?,
            shutdown_grace: duration("dispatch.shutdown_grace", &self.shutdown_grace)?,
        };
        let grace_is_default = self.shutdown_grace == defaults::shutdown_grace();
        lease_outlasts_a_request(&dispatch, grace_is_default)?;
        Ok(dispatch)
    }
}

/// A claim must outlive the request made under it, or another daemon could send the
/// same delivery while we still wait for the answer.
fn lease_outlasts_a_request(
    dispatch: &DispatchConfig,
    grace_is_default: bool,
) -> Result<(), ConfigError> {
    let in_use = dispatch
        .request_timeout
        .saturating_add(dispatch.shutdown_grace);
    if dispatch.lease - dispatch.lease / 10 > in_use {
        return Ok(());
    }
    // Nine tenths of the lease must exceed `in_use`; whole seconds read best.
    let shortest = in_use.saturating_mul(10).as_secs() / 9 + 1;
    let default = if grace_is_default {
        ", the default"
    } else {
        ""
    };
    Err(ConfigError::key(
        "dispatch.lease",
        format!(
            "{lease} is too short: a claim must outlast request_timeout ({timeout}) plus \
             shutdown_grace ({grace}{default}), plus a tenth of the lease for recording \
             the result; make lease at least \"{shortest}s\", or shorten the other two",
            lease = humantime::format_duration(dispatch.lease),
            timeout = humantime::format_duration(dispatch.request_timeout),
            grace = humantime::format_duration(dispatch.shutdown_grace),
        ),
    ))
}

impl RawRetry {
    fn validate(self) -> Result<RetryPolicy, ConfigError> {
        let retry = RetryPolicy {
            max_attempts: self.max_attempts,
            base_delay: duration("retry.base_delay", &self.base_delay)?,
            max_delay: duration("retry.max_delay", &self.max_delay)?,
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
        Ok(retry)
    }
}

/// The audit trail is kept at least a year (the database refuses to prune it sooner).
const MIN_AUDIT_DAYS: u32 = 365;

impl RawRetention {
    fn validate(self) -> Result<RetentionConfig, ConfigError> {
        let retention = RetentionConfig {
            payload_days: self.payload_days,
            metadata_days: self.metadata_days,
            prune_interval: duration("retention.prune_interval", &self.prune_interval)?,
            batch_size: positive("retention.batch_size", self.batch_size)?,
            audit_days: self.audit_days,
        };
        // dispatcher.prune_audit_log keeps a year whatever it is asked.
        if retention.audit_days < MIN_AUDIT_DAYS {
            return Err(ConfigError::key(
                "retention.audit_days",
                format!("must be at least {MIN_AUDIT_DAYS}"),
            ));
        }
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
        Ok(retention)
    }
}

/// Each partner validated, and named once; `None` when one is not, its problems noted.
fn validate_partners(
    raw: Vec<RawPartner>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<Vec<Partner>> {
    let count = raw.len();
    let mut names = HashSet::new();
    let mut partners = Vec::with_capacity(count);
    for (index, raw) in raw.into_iter().enumerate() {
        let name = raw.name.clone();
        partners.extend(problems.check(raw.validate(index, base_dir)));
        if !names.insert(name.clone()) {
            problems.note(ConfigError::key(
                format!("partners[{index}].name"),
                format!("partner `{name}` is configured twice"),
            ));
        }
    }
    (partners.len() == count && names.len() == count).then_some(partners)
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

#[cfg(test)]
mod tests {
    use crate::config::database::SslMode;
    use crate::config::testing::{parse, MINIMAL};
    use crate::config::Config;

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
    fn the_standby_is_read_as_the_database_is_and_named_by_its_own_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dispatcher.toml").display().to_string();
        let ca = rcgen::generate_simple_self_signed(vec!["standby.internal".to_string()])
            .expect("CA certificate");
        std::fs::write(dir.path().join("standby-ca.pem"), ca.cert.pem()).expect("write");
        let support = |keys: &str| {
            let text = format!("{MINIMAL}\n[support]\n{keys}\n");
            Config::parse(&text, &path, None, |_| None).map(|config| config.support)
        };
        let remote = "postgres://support:hunter2@standby.internal/dispatcher";

        assert!(support("").expect("valid").standby.is_none());
        let standby = support(&format!(
            "database_url = \"{remote}?sslmode=verify-full\"\nca_file = \"standby-ca.pem\""
        ))
        .expect("valid")
        .standby
        .expect("a standby");
        assert_eq!(standby.connection.ssl_mode, SslMode::VerifyFull);
        assert_eq!(
            standby.ca.map(|ca| ca.path),
            Some(dir.path().join("standby-ca.pem"))
        );

        for (keys, named, says) in [
            (
                format!("database_url = \"{remote}?sslmode=verify_full\""),
                "support.database_url",
                "sslmode must be one of",
            ),
            (
                format!("database_url = \"{remote}\"\nca_file = \"standby-ca.pem\""),
                "support.ca_file",
                "support.database_url has sslmode=prefer",
            ),
            (
                "ca_file = \"standby-ca.pem\"".to_string(),
                "support.ca_file",
                "only used with support.database_url",
            ),
            (
                format!("database_url = \"{remote}\"\npool_size = 3"),
                "support",
                "pool_size",
            ),
        ] {
            let error = support(&keys).unwrap_err().to_string();
            assert!(
                error.contains(named) && error.contains(says),
                "{keys}: {error}"
            );
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn metadata_cannot_go_before_the_bodies() {
        let text = format!("{MINIMAL}\n[retention]\npayload_days = 30\nmetadata_days = 7\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("retention.metadata_days"), "{error}");
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
