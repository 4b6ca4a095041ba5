//! A PostgreSQL cluster of a test's own, which the test may stop and start again: the
//! database outage ops know; and a hot standby streaming from it ([`Cluster::standby`]),
//! whose replay a test may pause. (The shared cluster from `scripts/with-postgres` serves
//! every other test and must never be stopped.)
//!
//! It needs `DISPATCHER_TEST_PG_BINDIR` (where `initdb` and `pg_ctl` are) and, when the
//! tests run as root, `DISPATCHER_TEST_PG_USER` (PostgreSQL refuses to run as root):
//! `scripts/with-postgres` exports both.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tokio_postgres::NoTls;

use super::tls::Issued;

/// What a cluster that only takes TLS over TCP accepts, as a production server would be
/// set up: encrypted connections from 127.0.0.1, no plain-text TCP at all. The unix
/// socket stays open to the test itself ([`Cluster::socket_url`]).
const TLS_ONLY_HBA: &str = "\
local     all all              trust
hostssl   all all 127.0.0.1/32 trust
hostnossl all all 0.0.0.0/0    reject
";

pub struct Cluster {
    bindir: PathBuf,
    /// The user the server runs as, when the tests run as root.
    run_as: Option<String>,
    /// Holds `data/` (the cluster, and its unix socket) and `server.log`.
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Cluster {
    /// A new cluster listening on 127.0.0.1, on a free port.
    pub fn new() -> Cluster {
        Cluster::start_new(None)
    }

    /// A new cluster with `ssl = on`, serving `certificate`, whose `pg_hba.conf` rejects
    /// every TCP connection that is not TLS.
    pub fn tls_only(certificate: &Issued) -> Cluster {
        Cluster::start_new(Some(certificate))
    }

    fn start_new(tls: Option<&Issued>) -> Cluster {
        let cluster = Cluster::unstarted();
        let initdb = cluster.pg("initdb", |command| {
            command
                .arg("-D")
                .arg(cluster.data())
                .args(["--auth=trust", "-U", "postgres", "--encoding=UTF8"])
                .args(["--no-locale", "--no-sync"]);
        });
        assert!(initdb.status.success(), "initdb failed:\n{}", text(&initdb));
        if let Some(certificate) = tls {
            cluster.serve_tls_only(certificate);
        }
        cluster.started()
    }

    /// A hot standby of this cluster, as ops make one: `pg_basebackup -R` (the base
    /// backup, `standby.signal` and `primary_conninfo`), started on a port of its own and
    /// streaming from this one over 127.0.0.1 (initdb's `pg_hba.conf` lets replication in
    /// from there).
    pub fn standby(&self) -> Cluster {
        let standby = Cluster::unstarted();
        let port = self.port.to_string();
        let backup = standby.pg("pg_basebackup", |command| {
            command
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                .arg("-D")
                .arg(standby.data())
                .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]);
        });
        assert!(
            backup.status.success(),
            "pg_basebackup failed:\n{}",
            text(&backup)
        );
        standby.started()
    }

    /// A cluster directory, owned by the server's user, with nothing in it yet.
    fn unstarted() -> Cluster {
        let bindir = std::env::var_os("DISPATCHER_TEST_PG_BINDIR").map(PathBuf::from).expect(
            "DISPATCHER_TEST_PG_BINDIR is not set: run the tests with scripts/test, which exports it",
        );
        // Where pg_ctl really is: a directory of links to initdb and pg_ctl alone (found
        // first on PATH) would lack pg_basebackup.
        let bindir = std::fs::canonicalize(bindir.join("pg_ctl"))
            .ok()
            .and_then(|pg_ctl| pg_ctl.parent().map(Path::to_path_buf))
            .unwrap_or(bindir);
        let run_as = std::env::var("DISPATCHER_TEST_PG_USER").ok();
        let dir = tempfile::Builder::new()
            .prefix("dispatcher-cluster.")
            .tempdir()
            .expect("cluster directory");
        if let Some(user) = &run_as {
            run(Command::new("chown").arg(user).arg(dir.path()));
        }
        Cluster {
            bindir,
            run_as,
            dir,
            port: 0,
        }
    }

    /// Starts the cluster in `data/` on a free port.
    fn started(mut self) -> Cluster {
        // A port that was free a moment ago may be taken before the server binds it (other
        // tests start clusters too): then try another.
        for _ in 0..20 {
            self.port = free_port();
            if self.try_start() {
                return self;
            }
            assert!(
                self.server_log().contains("could not bind"),
                "PostgreSQL did not start; its log:\n{}",
                self.server_log()
            );
        }
        panic!("PostgreSQL found no free port to listen on");
    }

    /// `url` (a database's URL on another cluster, e.g. a [`super::TestDb`]'s on the
    /// primary) with this cluster's port: the same database here.
    pub fn url_of(&self, url: &str) -> String {
        let database = url.rsplit_once('/').map_or("postgres", |(_, name)| name);
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// On a standby: stops replaying the WAL it receives (`pg_wal_replay_pause()`), and
    /// waits until it has stopped, so that nothing the primary commits from now on shows
    /// here until [`Cluster::resume_replay`].
    pub async fn pause_replay(&self) {
        let client = self.connect().await;
        client
            .execute("SELECT pg_wal_replay_pause()", &[])
            .await
            .expect("pause replay");
        self.wait_for(&client, "SELECT pg_get_wal_replay_pause_state() = 'paused'")
            .await;
    }

    pub async fn resume_replay(&self) {
        self.connect()
            .await
            .execute("SELECT pg_wal_replay_resume()", &[])
            .await
            .expect("resume replay");
    }

    /// On a standby: waits until it has replayed all that `primary` has written so far.
    pub async fn wait_until_replayed(&self, primary: &Cluster) {
        let written: String = primary
            .connect()
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("the primary's WAL position")
            .get(0);
        let replayed = format!("SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn");
        self.wait_for(&self.connect().await, &replayed).await;
    }

    /// Polls `condition` (a boolean query) until it holds; fails after a minute.
    async fn wait_for(&self, client: &tokio_postgres::Client, condition: &str) {
        for _ in 0..1200 {
            let row = client.query_one(condition, &[]).await.expect(condition);
            if row.get::<_, bool>(0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("`{condition}` did not hold within a minute");
    }

    /// A connection to the `postgres` database, as the superuser.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.admin_url(), NoTls)
            .await
            .expect("connect to the cluster");
        tokio::spawn(connection);
        client
    }

    /// The URL of the cluster's `postgres` database, as the superuser.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL of the cluster's `postgres` database over its unix socket: how a test
    /// reaches a [`Cluster::tls_only`] cluster without TLS of its own.
    pub fn socket_url(&self) -> String {
        let socket_dir = self.data().display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{socket_dir}:{}/postgres", self.port)
    }

    /// Installs the server certificate and key (the key readable by the server's user
    /// only, or PostgreSQL refuses it), turns TLS on and only lets TLS in over TCP.
    fn serve_tls_only(&self, certificate: &Issued) {
        let data = self.data();
        let files = [
            ("server.crt", &certificate.cert_pem),
            ("server.key", &certificate.key_pem),
        ];
        for (name, content) in files {
            let path = data.join(name);
            std::fs::write(&path, content).expect("write the server's TLS file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("restrict the server's TLS file");
            if let Some(user) = &self.run_as {
                run(Command::new("chown").arg(user).arg(&path));
            }
        }
        std::fs::write(data.join("pg_hba.conf"), TLS_ONLY_HBA).expect("write pg_hba.conf");
        let mut settings = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(
            &mut settings,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .expect("turn TLS on in postgresql.conf");
    }

    /// `pg_ctl stop -m immediate`: every backend is killed at once, as in a crash; the
    /// next start runs crash recovery.
    pub fn stop_immediately(&self) {
        let stopped = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        assert!(
            stopped.status.success(),
            "pg_ctl stop failed:\n{}",
            text(&stopped)
        );
    }

    /// Starts the stopped cluster again on the same port, and waits until it accepts
    /// connections.
    pub fn start(&self) {
        assert!(
            self.try_start(),
            "PostgreSQL did not start again on port {}; its log:\n{}",
            self.port,
            self.server_log()
        );
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn try_start(&self) -> bool {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -k '{}'",
            self.port,
            self.data().display()
        );
        let log = self.dir.path().join("server.log");
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            &log.display().to_string(),
            "-o",
            &options,
        ])
        .status
        .success()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        self.pg("pg_ctl", |command| {
            command.arg("-D").arg(self.data()).args(args);
        })
    }

    /// Runs one of PostgreSQL's programs, as the server's user when we are root.
    fn pg(&self, program: &str, args: impl FnOnce(&mut Command)) -> Output {
        let program = self.bindir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new(runuser());
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        args(&mut command);
        // The server user may not be able to read the test's working directory.
        command.current_dir("/");
        command.output().expect("run a PostgreSQL program")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
    }
}

/// A port nothing listens on at the moment.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

fn runuser() -> &'static Path {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.exists())
        .unwrap_or(Path::new("runuser"))
}

fn run(command: &mut Command) {
    let output = command.output().expect("run command");
    assert!(output.status.success(), "{command:?}:\n{}", text(&output));
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
