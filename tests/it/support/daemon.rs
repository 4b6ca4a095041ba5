//! The real `dispatcher` binary as ops run it: `run` as a child process killed when the
//! test ends, and one-shot commands whose output a test reads.

use std::io::{Read, Seek};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{TestConfig, TestDb};

/// The real binary, with the given config.
pub fn dispatcher(config: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dispatcher"));
    command
        .arg("--config")
        .arg(config)
        .env_remove("DISPATCHER_DATABASE_URL");
    command
}

/// `dispatcher --config PATH ARGS…`, run to its end.
pub async fn cli(config: &std::path::Path, args: &[&str]) -> Output {
    let mut command = dispatcher(config);
    command.args(args);
    finish(command).await
}

/// Like [`cli`], but the command must succeed.
pub async fn cli_ok(config: &std::path::Path, args: &[&str]) -> Output {
    let output = cli(config, args).await;
    assert!(
        output.status.success(),
        "dispatcher {args:?} failed:\n{output}"
    );
    output
}

/// A running `dispatcher run`; killed when dropped.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    /// The file it was started with, and re-reads on SIGHUP.
    pub config_path: PathBuf,
}

impl Daemon {
    pub fn start(config: &TestConfig, db: &TestDb) -> Daemon {
        Daemon::start_with_text(&config.text(db), config.dir.path())
    }

    /// Starts the daemon on config text the test wrote itself (for keys [`TestConfig`]
    /// does not set), in its own file under `dir`.
    pub fn start_with_text(config_text: &str, dir: &std::path::Path) -> Daemon {
        Daemon::start_logging(config_text, dir, "info,dispatcher=debug")
    }

    /// Starts the daemon with `RUST_LOG=rust_log`; stdout and stderr both go to `log`.
    pub fn start_logging(config_text: &str, dir: &std::path::Path, rust_log: &str) -> Daemon {
        Daemon::start_in(config_text, dir, rust_log, &[])
    }

    /// Starts the daemon with more environment variables (fail points, a fake clock).
    pub fn start_with_env(config: &TestConfig, db: &TestDb, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_in(
            &config.text(db),
            config.dir.path(),
            "info,dispatcher=debug",
            env,
        )
    }

    /// Starts the daemon with its clock (wall clock only) `offset` ahead of the
    /// database's, e.g. "+1h", through Debian's libfaketime (scripts/test installs it).
    pub fn start_with_clock_ahead(config: &TestConfig, db: &TestDb, offset: &str) -> Daemon {
        let library = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
            .iter()
            .map(|arch| format!("/usr/lib/{arch}/faketime/libfaketime.so.1"))
            .find(|path| std::path::Path::new(path).exists())
            .expect("libfaketime: install Debian's faketime package (scripts/test does)");
        Daemon::start_with_env(
            config,
            db,
            &[
                ("LD_PRELOAD", &library),
                ("FAKETIME", offset),
                // Timers and timeouts keep real time; only the dates are off.
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        )
    }

    fn start_in(
        config_text: &str,
        dir: &std::path::Path,
        rust_log: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let path = dir.join(format!("dispatcher-{name}.toml"));
        std::fs::write(&path, config_text).expect("write config");
        let log = dir.join(format!("daemon-{name}.log"));
        let log_file = std::fs::File::create(&log).expect("daemon log");
        let child = dispatcher(&path)
            .arg("run")
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stdout(log_file.try_clone().expect("daemon log"))
            .stderr(log_file)
            .spawn()
            .expect("start dispatcher run");
        Daemon {
            child,
            log,
            config_path: path,
        }
    }

    /// What ops do to change a running daemon: rewrite its file, send SIGHUP.
    pub fn reload_with(&self, config_text: &str) {
        std::fs::write(&self.config_path, config_text).expect("rewrite config");
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    /// Polls the daemon's stderr until `needle` appears `count` times; returns the log.
    pub async fn wait_for_log(&self, needle: &str, count: usize) -> String {
        for _ in 0..1200 {
            let log = self.log_text();
            if log.matches(needle).count() >= count {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Its log's end follows, as the daemon is dropped (`Drop for Daemon`).
        panic!("the daemon did not log `{needle}` {count} time(s) within 60s");
    }

    /// Whether the process is still there (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("wait for dispatcher")
            .is_none()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// The daemon's peak resident memory so far (`VmHWM`), in bytes: what ops would see
    /// the process take from the machine.
    pub fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the daemon's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status");
        kib * 1024
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("send signal");
    }

    /// SIGKILL: a crash, with no chance to clean up.
    pub fn crash(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (up to 60s) and returns its status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait().expect("wait for dispatcher") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "dispatcher did not exit within 60s; log:\n{}",
            self.log_text()
        );
    }

    /// The admin server's address, from its start-up log line.
    pub async fn admin_url(&self) -> String {
        for _ in 0..1200 {
            let log = self.log_text();
            if let Some(addr) = log
                .lines()
                .filter(|line| line.contains("admin server listening"))
                .find_map(|line| line.split("addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                return format!("http://{}", addr.trim_matches('"'));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the admin server did not start within 60s; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The end of a failed test's daemon log, printed as the test unwinds: a wait that timed
/// out (a delivery's state, a partner's requests) then leaves what the daemon was doing.
const LOG_LINES_ON_FAILURE: usize = 200;

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_LINES_ON_FAILURE)..];
            eprintln!(
                "the daemon's log, its last {} of {} lines ({}):\n{}",
                tail.len(),
                lines.len(),
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// What one finished command printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a command to its end (killing it after 60s) and collects what it printed.
pub async fn finish(mut command: Command) -> Output {
    let mut stdout = tempfile::tempfile().expect("stdout file");
    let mut stderr = tempfile::tempfile().expect("stderr file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("stdout handle"))
        .stderr(stderr.try_clone().expect("stderr handle"))
        .spawn()
        .expect("start dispatcher");
    let mut status = None;
    for _ in 0..1200 {
        status = child.try_wait().expect("wait for dispatcher");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let timed_out = status.is_none();
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for dispatcher");
    let read = |file: &mut std::fs::File| {
        let mut text = String::new();
        file.rewind().expect("rewind output");
        file.read_to_string(&mut text).expect("read output");
        text
    };
    let output = Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    };
    assert!(
        !timed_out,
        "the command was still running after 60s:\n{output}"
    );
    output
}
