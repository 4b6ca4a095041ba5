//! The live configuration: `dispatcher.toml` re-read on SIGHUP, without a restart.
//!
//! Partners (added, removed, URLs, headers, secrets, support programs, `max_in_flight`),
//! `[retry]`, `dispatch.batch_size` and `dispatch.poll_interval` apply from the next
//! routing batch, claim and attempt on. The rest is built into the running daemon (the
//! connection pool, the capacity, the lease arithmetic, the log
//! writer, the trace exporter): a change there is logged as needing a restart and the running value kept.
//! A file that does not validate is refused whole, and the running configuration kept;
//! so is one that validates but cannot be put to use (a partner's HTTP client cannot be
//! built from it): what uses the configuration prepares for it first (see
//! [`LiveConfig::prepare_reloads_with`]).
//!
//! Readers take a [`LiveConfig::snapshot`] and use it for one unit of work, so a reload
//! never changes a partner under a request that is being made.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use secrecy::ExposeSecret;

use crate::config::{Config, ConfigError};

/// The configuration in force, swapped whole on reload. Cheap to clone.
#[derive(Clone)]
pub struct LiveConfig {
    current: Arc<ArcSwap<Config>>,
    path: Arc<PathBuf>,
    preparers: Arc<Mutex<Vec<Preparer>>>,
}

/// Builds what a new configuration needs (the partners' HTTP clients) and returns how to
/// put that in use, or says why the configuration cannot be used. Every preparer builds
/// before any puts in use, so a reload that one refuses changes nothing anywhere. Keeps
/// the configuration free of what is built from it.
pub type Preparer = Box<dyn Fn(&Arc<Config>) -> Result<Prepared, String> + Send + Sync>;

/// What a [`Preparer`] built, put in use once every preparer has accepted the reload.
pub type Prepared = Box<dyn FnOnce() + Send>;

/// Why a reload was refused; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{0}")]
    Unusable(String),
}

/// What a successful reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// Keys changed in the file that only a restart applies; their running values stay.
    pub needs_restart: Vec<&'static str>,
}

impl LiveConfig {
    /// The configuration loaded at start, and the file to re-read on reload.
    pub fn new(config: Config, path: &Path) -> LiveConfig {
        LiveConfig {
            current: Arc::new(ArcSwap::from_pointee(config)),
            path: Arc::new(path.to_path_buf()),
            preparers: Arc::default(),
        }
    }

    /// Every reload from now on is first handed to `preparer`, and refused if it fails.
    pub fn prepare_reloads_with(&self, preparer: Preparer) {
        self.preparers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(preparer);
    }

    /// The configuration in force now; hold it for one unit of work.
    pub fn snapshot(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Re-reads and validates the file; puts it in force, keeping restart-only settings.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut new = Config::load(&self.path)?;
        let running = self.current.load();
        let needs_restart = keep_restart_only_settings(&running, &mut new);
        let new = Arc::new(new);
        let prepared = self
            .preparers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|prepare| prepare(&new))
            .collect::<Result<Vec<Prepared>, String>>()
            .map_err(ReloadError::Unusable)?;
        for put_in_use in prepared {
            put_in_use();
        }
        self.current.store(new);
        Ok(Reloaded { needs_restart })
    }

    /// Installs the SIGHUP handler now (so a SIGHUP never falls to its default action,
    /// which would end the daemon), and returns the future that reloads on each one.
    pub fn on_reload_signal(self) -> std::io::Result<impl std::future::Future<Output = ()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        Ok(async move {
            while hangup.recv().await.is_some() {
                self.reload_and_log();
            }
        })
    }

    fn reload_and_log(&self) {
        let path = self.path.display();
        match self.reload() {
            Ok(reloaded) => {
                for key in reloaded.needs_restart {
                    tracing::warn!(
                        key,
                        "this setting changes only with a restart; keeping the running value"
                    );
                }
                tracing::info!(%path, partners = self.snapshot().partners.len(), "configuration reloaded");
            }
            // `{:#}`: several problems on the one line, as a log line must be.
            Err(error) => tracing::error!(
                %path,
                error = format_args!("{error:#}"),
                "configuration reload refused; keeping the running configuration"
            ),
        }
    }
}

/// Copies the running value of every restart-only setting into `new`; returns the keys
/// whose value the file changed.
fn keep_restart_only_settings(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut keep = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    keep(
        "database.url",
        running.database.url.expose_secret() != new.database.url.expose_secret(),
    );
    keep("database.ca_file", running.database.ca != new.database.ca);
    keep(
        "database.pool_size",
        running.database.pool_size != new.database.pool_size,
    );
    let (was, now) = (&running.dispatch, &new.dispatch);
    keep("dispatch.concurrency", was.concurrency != now.concurrency);
    keep("dispatch.lease", was.lease != now.lease);
    keep(
        "dispatch.request_timeout",
        was.request_timeout != now.request_timeout,
    );
    keep(
        "dispatch.shutdown_grace",
        was.shutdown_grace != now.shutdown_grace,
    );
    keep("log.format", running.log != new.log);
    keep("admin.listen", running.admin.listen != new.admin.listen);
    keep(
        "admin.allowed_hosts",
        running.admin.allowed_hosts != new.admin.allowed_hosts,
    );
    keep("admin.tls_cert", running.admin.tls != new.admin.tls);
    keep("admin.oidc", running.admin.oidc != new.admin.oidc);
    keep(
        "admin.database_pool_size",
        running.admin.pool.size != new.admin.pool.size,
    );
    keep(
        "admin.statement_timeout",
        running.admin.pool.statement_timeout != new.admin.pool.statement_timeout,
    );
    keep(
        "support.database_url",
        running
            .support
            .standby
            .as_ref()
            .map(|s| s.url.expose_secret())
            != new.support.standby.as_ref().map(|s| s.url.expose_secret()),
    );
    keep(
        "support.ca_file",
        running.support.standby.as_ref().and_then(|s| s.ca.as_ref())
            != new.support.standby.as_ref().and_then(|s| s.ca.as_ref()),
    );
    keep("retention", running.retention != new.retention);
    keep("telemetry", running.telemetry != new.telemetry);
    keep(
        "admin.token",
        running
            .admin
            .token
            .as_ref()
            .map(ExposeSecret::expose_secret)
            != new.admin.token.as_ref().map(ExposeSecret::expose_secret),
    );

    new.database = running.database.clone();
    new.dispatch.concurrency = was.concurrency;
    new.dispatch.lease = was.lease;
    new.dispatch.request_timeout = was.request_timeout;
    new.dispatch.shutdown_grace = was.shutdown_grace;
    new.log = running.log.clone();
    new.admin = running.admin.clone();
    new.support = running.support.clone();
    new.retention = running.retention.clone();
    new.telemetry = running.telemetry.clone();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    const FILE: &str = r#"
        [database]
        url = "postgres://dispatcher@127.0.0.1/dispatcher"
        pool_size = 8

        [dispatch]
        concurrency = 256
        batch_size = 100

        [[partners]]
        name = "acme"
        support_programs = ["prog-1"]
        enrollment_url = "https://crm.example/enroll"
        user_action_url = "https://crm.example/action"
    "#;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("dispatcher.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn live(dir: &tempfile::TempDir) -> LiveConfig {
        let path = write(dir, FILE);
        let config = Config::load(&path).expect("valid config");
        LiveConfig::new(config, &path)
    }

    #[test]
    fn partner_changes_apply_and_restart_only_settings_keep_their_running_value() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = live(&dir);
        let before = live.snapshot();
        write(
            &dir,
            &(FILE
                .replace("crm.example/enroll", "new-crm.example/enroll")
                .replace("pool_size = 8", "pool_size = 2")
                .replace("concurrency = 256", "concurrency = 16")
                .replace("batch_size = 100", "batch_size = 10")
                + "\n[support]\ndatabase_url = \"postgres://support@127.0.0.1:5433/dispatcher\"\n"),
        );

        let reloaded = live.reload().expect("valid new file");

        assert_eq!(
            reloaded.needs_restart,
            vec![
                "database.pool_size",
                "dispatch.concurrency",
                "support.database_url"
            ]
        );
        let after = live.snapshot();
        assert_eq!(
            after.partners[0].enrollment_url.as_str(),
            "https://new-crm.example/enroll"
        );
        assert_eq!(after.dispatch.batch_size, 10, "batch_size applies live");
        assert_eq!(after.database.pool_size, 8);
        assert_eq!(after.dispatch.concurrency, 256);
        assert!(
            after.support.standby.is_none(),
            "the standby takes a restart"
        );
        assert_eq!(
            before.partners[0].enrollment_url.as_str(),
            "https://crm.example/enroll",
            "a snapshot taken earlier is not changed under its holder"
        );
    }

    #[test]
    fn a_file_that_cannot_be_put_to_use_is_refused_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = live(&dir);
        let put_in_use = Arc::new(std::sync::atomic::AtomicBool::new(false));
        live.prepare_reloads_with(Box::new({
            let put_in_use = put_in_use.clone();
            move |_| {
                let put_in_use = put_in_use.clone();
                Ok(Box::new(move || put_in_use.store(true, Ordering::Relaxed)))
            }
        }));
        live.prepare_reloads_with(Box::new(|config| match config.partners.len() {
            1 => Ok(Box::new(|| ())),
            _ => Err("partner `beta`: cannot build its HTTP client".to_string()),
        }));
        let beta = FILE.replace("name = \"acme\"", "name = \"beta\"");
        write(
            &dir,
            &format!(
                "{FILE}\n{}",
                &beta[beta.find("[[partners]]").unwrap_or(0)..]
            ),
        );

        let error = live.reload().unwrap_err().to_string();

        assert_eq!(error, "partner `beta`: cannot build its HTTP client");
        assert_eq!(live.snapshot().partners.len(), 1, "the running one is kept");
        assert!(
            !put_in_use.load(Ordering::Relaxed),
            "what another preparer built is not put in use"
        );
    }

    #[test]
    fn an_invalid_file_is_refused_and_the_running_configuration_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = live(&dir);
        write(
            &dir,
            &FILE.replace("https://crm.example/action", "ftp://crm.example/action"),
        );

        let error = live.reload().unwrap_err().to_string();

        assert!(error.contains("partners[0].user_action_url"), "{error}");
        assert_eq!(
            live.snapshot().partners[0].user_action_url.as_str(),
            "https://crm.example/action"
        );
    }

    #[test]
    fn a_refusal_names_every_problem_on_the_one_log_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = live(&dir);
        write(
            &dir,
            &FILE
                .replace("https://crm.example/action", "ftp://crm.example/action")
                .replace("pool_size = 8", "pool_size = 0"),
        );

        let error = live.reload().unwrap_err();

        let line = format!("{error:#}");
        assert!(
            line.starts_with("2 problems in ")
                && line.contains("database.pool_size")
                && line.contains("partners[0].user_action_url")
                && !line.contains('\n'),
            "{line}"
        );
    }
}
