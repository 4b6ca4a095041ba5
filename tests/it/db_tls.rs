//! The database link carries patient events, so in production it runs over TLS: a
//! PostgreSQL cluster of the test's own with `ssl = on`, whose `pg_hba.conf` turns away
//! every plain-text TCP connection, and a certificate from the database team's private CA.

use std::path::Path;
use std::time::Duration;

use crate::support::cluster::Cluster;
use crate::support::tls::TestCa;
use crate::support::*;

/// A cluster that only takes TLS, its CA's certificate in `ca.pem` beside the configs, and
/// a fresh database on it (which the test itself reaches over the unix socket).
struct TlsDatabase {
    cluster: Cluster,
    db: TestDb,
    config: TestConfig,
}

impl TlsDatabase {
    async fn start(config: TestConfig) -> TlsDatabase {
        let ca = TestCa::new("HelpAround database CA");
        let cluster = Cluster::tls_only(&ca.server_certificate());
        write_file(config.dir.path(), "ca.pem", &ca.cert_pem());
        let db = TestDb::unmigrated_on(&cluster.socket_url()).await;
        TlsDatabase {
            cluster,
            db,
            config,
        }
    }

    /// The test database's name, at the end of its URL.
    fn database(&self) -> &str {
        self.db.url.rsplit('/').next().expect("database name")
    }

    /// dispatcher.toml reaching the database over TCP as `host` (127.0.0.1, or a name
    /// given with `hostaddr=127.0.0.1`), with `url_query` and, if given, a CA file.
    fn config_text(&self, host: &str, url_query: &str, ca_file: Option<&str>) -> String {
        let url = format!(
            "postgres://postgres@{host}:{}/{}?{url_query}",
            self.cluster.port,
            self.database()
        );
        let config = self.config.clone().database_url(&url);
        match ca_file {
            Some(file) => config.database_ca_file(file),
            None => config,
        }
        .text(&self.db)
    }

    fn dispatcher(&self, config_text: &str) -> std::process::Command {
        let name = format!("dispatcher-{}.toml", uuid::Uuid::new_v4().simple());
        dispatcher(&write_file(self.config.dir.path(), &name, config_text))
    }

    async fn migrate(&self, config_text: &str) -> Output {
        let mut command = self.dispatcher(config_text);
        command.arg("migrate");
        finish(command).await
    }

    fn dir(&self) -> &Path {
        self.config.dir.path()
    }
}

/// What ops deploy: sslmode=verify-full with the database team's CA in `ca_file`. The
/// schema is created, the daemon runs, hears about the new event through LISTEN (polling
/// is an hour away) and delivers it; the server sees every one of its connections
/// encrypted.
#[tokio::test]
async fn the_daemon_migrates_listens_and_delivers_over_verified_tls() {
    let partner = TestPartner::accepting("crm").await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .dispatch(Dispatch::default())
        .poll_interval(Duration::from_secs(60 * 60));
    let database = TlsDatabase::start(config).await;
    let text = database.config_text("127.0.0.1", "sslmode=verify-full", Some("ca.pem"));

    let migrated = database.migrate(&text).await;
    assert!(migrated.status.success(), "migrate failed:\n{migrated}");

    let daemon = Daemon::start_with_text(&text, database.dir());
    daemon.wait_for_log("listening for new events", 1).await;
    database
        .db
        .insert_event(ENROLLMENT, &enrollment_event("ha-tls-1"))
        .await;
    let received = partner.wait_for_requests(1).await;
    assert_eq!(received[0].patient_id(), "ha-tls-1");
    database.db.wait_for_state("delivered", 1).await;

    let plain = database
        .db
        .count(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'helparound-dispatcher' AND NOT s.ssl",
        )
        .await;
    assert_eq!(plain, 0, "the daemon has plain-text connections");
    let listening_over_tls = database
        .db
        .count(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'helparound-dispatcher' AND s.ssl
               AND a.query LIKE 'LISTEN%'",
        )
        .await;
    assert_eq!(
        listening_over_tls, 1,
        "the LISTEN connection is not over TLS"
    );
}

/// The control: the same server refuses a dispatcher told not to use TLS, so the test
/// above could not pass over plain text.
#[tokio::test]
async fn the_server_turns_away_a_plain_text_connection() {
    let database = TlsDatabase::start(TestConfig::new()).await;
    let text = database.config_text("127.0.0.1", "sslmode=disable", None);

    let migrated = database.migrate(&text).await;

    assert!(!migrated.status.success(), "migrate succeeded:\n{migrated}");
    assert!(
        migrated.stderr.contains("no encryption"),
        "expected pg_hba.conf's refusal:\n{migrated}"
    );
}

/// A `ca_file` from the wrong CA (a copy-paste from another environment): the dispatcher
/// stops and says the database's certificate is not trusted by that file.
#[tokio::test]
async fn a_certificate_the_ca_file_does_not_trust_is_refused_with_a_clear_error() {
    let database = TlsDatabase::start(TestConfig::new()).await;
    let other_ca = TestCa::new("Some other CA");
    write_file(database.dir(), "other-ca.pem", &other_ca.cert_pem());

    for mode in ["verify-full", "verify-ca"] {
        let text = database.config_text(
            "127.0.0.1",
            &format!("sslmode={mode}"),
            Some("other-ca.pem"),
        );
        let migrated = database.migrate(&text).await;
        assert!(
            !migrated.status.success(),
            "{mode}: migrate succeeded:\n{migrated}"
        );
        assert!(
            migrated
                .stderr
                .contains("the database's certificate is not trusted by database.ca_file"),
            "{mode}: expected the untrusted certificate to be named:\n{migrated}"
        );
    }
}

/// The server is reached by a name its certificate does not carry (a DNS alias ops
/// added): verify-full refuses it and says why; verify-ca only checks the CA and connects.
#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let database = TlsDatabase::start(TestConfig::new()).await;
    let alias = "postgres-alias.helparound.test";

    let full = database.config_text(
        alias,
        "hostaddr=127.0.0.1&sslmode=verify-full",
        Some("ca.pem"),
    );
    let refused = database.migrate(&full).await;
    assert!(
        !refused.status.success(),
        "verify-full connected:\n{refused}"
    );
    assert!(
        refused.stderr.contains(&format!(
            "the database's certificate is not valid for {alias}"
        )),
        "expected the host name to be named:\n{refused}"
    );

    let ca_only = database.config_text(
        alias,
        "hostaddr=127.0.0.1&sslmode=verify-ca",
        Some("ca.pem"),
    );
    let migrated = database.migrate(&ca_only).await;
    assert!(migrated.status.success(), "verify-ca failed:\n{migrated}");
}

/// sslmode=require encrypts without checking who answers (as libpq does): it connects to
/// a server whose CA it was not told about.
#[tokio::test]
async fn require_encrypts_without_checking_the_certificate() {
    let database = TlsDatabase::start(TestConfig::new()).await;
    let text = database.config_text("127.0.0.1", "sslmode=require", None);

    let migrated = database.migrate(&text).await;

    assert!(migrated.status.success(), "migrate failed:\n{migrated}");
}

/// `dispatcher check` (which never connects) warns ops about a database on another host
/// reached without the certificate being verified, and stays quiet once it is.
#[tokio::test]
async fn check_warns_about_a_remote_database_whose_certificate_is_not_verified() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    write_file(
        dir,
        "ca.pem",
        &TestCa::new("HelpAround database CA").cert_pem(),
    );
    let check = |url: &str, keys: &str| {
        let text = format!("[database]\nurl = \"{url}\"\n{keys}\n");
        let mut command = dispatcher(&write_file(
            dir,
            &format!("check-{}.toml", uuid::Uuid::new_v4().simple()),
            &text,
        ));
        command.arg("check");
        finish(command)
    };
    let warning = "warning: the database at db.helparound.internal is reached without verifying its certificate";

    for query in [
        "",
        "?sslmode=prefer",
        "?sslmode=require",
        "?sslmode=disable",
    ] {
        let url = format!("postgres://dispatcher@db.helparound.internal/dispatcher{query}");
        let checked = check(&url, "").await;
        assert!(checked.status.success(), "{url}: check failed:\n{checked}");
        assert!(
            checked.stdout.contains(warning),
            "{url}: expected the warning:\n{checked}"
        );
    }

    for url in [
        "postgres://dispatcher@db.helparound.internal/dispatcher?sslmode=verify-full",
        "postgres://dispatcher@db.helparound.internal/dispatcher?sslmode=verify-ca",
    ] {
        let checked = check(url, "ca_file = \"ca.pem\"").await;
        assert!(checked.status.success(), "{url}: check failed:\n{checked}");
        assert!(
            !checked.stdout.contains("warning: the database"),
            "{url}: unexpected warning:\n{checked}"
        );
    }

    // The same machine: nothing crosses a network.
    let local = check("postgres://dispatcher@127.0.0.1/dispatcher", "").await;
    assert!(
        !local.stdout.contains("warning: the database"),
        "unexpected warning:\n{local}"
    );
}

/// An attacker in the path answers the dispatcher as a server without TLS, hoping it
/// falls back to plain text. With sslmode=require it must not, however the URL spells it:
/// after a password holding a `?`, with a percent-encoded key, or quoted in a `key=value`
/// string. (The first two were once read as `prefer`, and connected.)
#[tokio::test]
async fn require_refuses_a_server_without_tls_however_the_url_spells_it() {
    let plain_text = Cluster::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = plain_text.port;
    let migrate = |url: String| {
        let text = format!("[database]\nurl = \"{url}\"\n");
        let name = format!("dispatcher-{}.toml", uuid::Uuid::new_v4().simple());
        let mut command = dispatcher(&write_file(dir.path(), &name, &text));
        command.arg("migrate");
        finish(command)
    };

    for url in [
        format!("postgres://postgres:pa?ss@127.0.0.1:{port}/postgres?sslmode=require"),
        format!("postgres://postgres@127.0.0.1:{port}/postgres?ssl%6Dode=require"),
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode='require'"),
    ] {
        let migrated = migrate(url.clone()).await;
        assert!(
            !migrated.status.success(),
            "{url}: migrated in plain text:\n{migrated}"
        );
        assert!(
            migrated.stderr.contains("server does not support TLS"),
            "{url}: expected the missing TLS to be named:\n{migrated}"
        );
    }

    // The control: the server is there, and takes a URL that allows plain text.
    let allowed = format!("postgres://postgres:pa?ss@127.0.0.1:{port}/postgres?sslmode=prefer");
    let migrated = migrate(allowed).await;
    assert!(migrated.status.success(), "migrate failed:\n{migrated}");
}
