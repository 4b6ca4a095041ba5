//! The system under test: the real `dispatcher` binary, run as a child process with a
//! generated `dispatcher.toml`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::procfs;

/// The Standard Webhooks example secret: partners sign-check nothing here, but the
/// dispatcher signs every request as it would for a real partner.
pub(crate) const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A partner as the dispatcher is configured with it.
#[derive(Debug, Clone)]
pub struct PartnerSite {
    pub name: String,
    /// `http://127.0.0.1:PORT`; the contract's two paths are added.
    pub base_url: String,
    /// `max_in_flight` for a partner known to take more than the default 64 at once.
    pub max_in_flight: Option<usize>,
}

/// The configuration every benchmark daemon runs with: the shipped defaults for
/// everything that decides speed (`[dispatch]`, pool size), partners over plain HTTP on
/// loopback (`allow_insecure`), signed; `extra` adds sections (e.g. `[retention]`).
pub fn config_text(
    database_url: &str,
    partners: &[PartnerSite],
    program: &str,
    extra: &str,
) -> String {
    let mut text = format!(
        "[database]\nurl = \"{database_url}\"\n\n\
         [admin]\n# No token: loopback only. Port 0: several daemons side by side.\nlisten = \"127.0.0.1:0\"\n\n{extra}\n"
    );
    for partner in partners {
        text.push_str(&format!(
            "[[partners]]\nname = \"{name}\"\nsupport_programs = [\"{program}\"]\n\
             enrollment_url = \"{base}/webhook/user-enrollment\"\n\
             user_action_url = \"{base}/webhook/user-action\"\n\
             signing_secret = \"{SIGNING_SECRET}\"\n\
             # A partner on 127.0.0.1 over plain HTTP: local benchmarking only.\n\
             allow_insecure = true\n",
            name = partner.name,
            base = partner.base_url,
        ));
        if let Some(limit) = partner.max_in_flight {
            text.push_str(&format!("max_in_flight = {limit}\n"));
        }
        text.push('\n');
    }
    text
}

/// `dispatcher migrate`: creates the schema, exactly as ops would.
pub async fn migrate(binary: &Path, config: &Path) -> Result<()> {
    let output = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("migrate")
        .output()
        .await
        .with_context(|| format!("running {} migrate", binary.display()))?;
    if !output.status.success() {
        bail!(
            "dispatcher migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A running `dispatcher run`.
pub struct Daemon {
    child: Child,
    pid: u32,
    log: PathBuf,
    /// When it was started, as Unix seconds (compared with times PostgreSQL recorded).
    pub started_unix: f64,
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

impl Daemon {
    /// Starts `dispatcher run`; its log (stderr) goes to `log_path`. `rust_log` sets
    /// `RUST_LOG` unless the user set one (the default is the daemon's: `info`, one line
    /// per attempt, as in production).
    pub fn start(
        binary: &Path,
        config: &Path,
        log_path: &Path,
        rust_log: Option<&str>,
    ) -> Result<Daemon> {
        let log =
            File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let (Some(level), None) = (rust_log, std::env::var_os("RUST_LOG")) {
            command.env("RUST_LOG", level);
        }
        let started_unix = unix_now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the dispatcher exited at once")?;
        Ok(Daemon {
            child,
            pid,
            log: log_path.to_path_buf(),
            started_unix,
        })
    }

    /// CPU seconds used since it started.
    pub fn cpu_seconds(&self) -> f64 {
        procfs::cpu_seconds(self.pid).unwrap_or(0.0)
    }

    pub fn peak_rss_mib(&self) -> f64 {
        procfs::peak_rss_mib(self.pid).unwrap_or(0.0)
    }

    /// Fails, with the end of its log, if the daemon has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the dispatcher exited ({status}) during the measurement; end of its log {}:\n{}",
                self.log.display(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGSTOP: it runs nothing until [`Daemon::resume`], its connections held open.
    pub fn pause(&self) -> Result<()> {
        kill(self.process()?, Signal::SIGSTOP).context("sending SIGSTOP to the dispatcher")
    }

    /// SIGCONT, after [`Daemon::pause`].
    pub fn resume(&self) -> Result<()> {
        kill(self.process()?, Signal::SIGCONT).context("sending SIGCONT to the dispatcher")
    }

    fn process(&self) -> Result<Pid> {
        Ok(Pid::from_raw(
            i32::try_from(self.pid).context("pid out of range")?,
        ))
    }

    /// SIGTERM, as ops would stop it; killed if it has not stopped within `patience`.
    pub async fn stop(mut self, patience: Duration) -> Result<()> {
        self.check_running()?;
        kill(self.process()?, Signal::SIGTERM).context("sending SIGTERM to the dispatcher")?;
        match tokio::time::timeout(patience, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "the dispatcher exited with {status} on SIGTERM; end of its log:\n{}",
                        self.log_tail(30)
                    );
                }
            }
            Err(_) => {
                eprintln!(
                    "bench: the dispatcher did not stop within {patience:?} of SIGTERM; killing it"
                );
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}
