//! `[database]`'s URL, read: libpq's `sslmode` (which tokio-postgres cannot hold) taken
//! out and checked, the rest handed to tokio-postgres's own reading, and the two readings
//! made to agree; and `ca_file`'s trusted roots. Plain data for `store::db`, which opens
//! the connections and carries out what the `sslmode` asks (see its table).
//!
//! The URL is read here, not where connections are opened, so that a bad one is refused
//! when the configuration is validated and every error names `database.url`. Reading it
//! takes tokio-postgres's own parser: only it can say what the driver will negotiate.

mod connection_string;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use rustls::RootCertStore;
use tokio_postgres::config::Host;

use connection_string::{percent_decode, translate_key_value, translate_url, Translated};

/// What is wrong with `database.url`. Never quotes the URL: it may hold the password.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UrlError {
    #[error("not a valid PostgreSQL connection URL")]
    Invalid,
    #[error("sslmode must be one of disable, prefer, require, verify-ca, verify-full")]
    UnknownSslMode,
    #[error("sslrootcert is not read: give the CA's certificate in database.ca_file")]
    SslRootCert,
    #[error("sslmode is given more than once; give it once")]
    SslModeTwice,
    #[error(
        "the sslmode cannot be read for certain (the PostgreSQL driver reads another one); \
         write it once, plainly, as sslmode=verify-full"
    )]
    SslModeUnclear,
}

/// libpq's `sslmode`, see the module's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &[u8]) -> Result<SslMode, UrlError> {
        match value {
            b"disable" => Ok(SslMode::Disable),
            b"prefer" => Ok(SslMode::Prefer),
            b"require" => Ok(SslMode::Require),
            b"verify-ca" => Ok(SslMode::VerifyCa),
            b"verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(UrlError::UnknownSslMode),
        }
    }

    /// Whether the server's certificate is checked against a CA: only then is an
    /// attacker in the middle of the link kept out.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to insist.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// `database.url`, read: tokio-postgres's settings, and the `sslmode` it cannot hold.
/// Read once, when the configuration is validated.
#[derive(Clone)]
pub struct ConnectionUrl {
    pub postgres: tokio_postgres::Config,
    pub ssl_mode: SslMode,
}

impl ConnectionUrl {
    /// Reads a `postgres://` URL or a `key=value` connection string.
    pub fn parse(url: &str) -> Result<ConnectionUrl, UrlError> {
        // The same test tokio-postgres makes to tell the two forms apart.
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let Translated {
            for_driver,
            ssl_mode,
        } = if is_url {
            translate_url(url)?
        } else {
            translate_key_value(url)?
        };
        // An `sslmode` written in a URL where neither reading finds it (in a query hidden
        // by an `@` the driver takes for the end of the login) would be silently ignored.
        if is_url
            && ssl_mode.is_none()
            && String::from_utf8_lossy(&percent_decode(url)).contains("sslmode")
        {
            return Err(UrlError::SslModeUnclear);
        }
        let ssl_mode = ssl_mode.unwrap_or_default();
        let postgres: tokio_postgres::Config = for_driver.parse().map_err(|_| UrlError::Invalid)?;
        driver_agrees(ssl_mode, &postgres)?;
        Ok(ConnectionUrl { postgres, ssl_mode })
    }

    /// The TCP hosts this URL reaches on another machine.
    pub fn remote_hosts(&self) -> Vec<String> {
        remote_hosts(&self.postgres)
    }

    /// The hosts on another machine whose certificate is not verified: anyone in the path
    /// to them can read the patient data, or pose as the database. What `check` and the
    /// start-up warn about.
    pub fn unverified_remote_hosts(&self) -> Vec<String> {
        if self.ssl_mode.verifies() {
            return Vec::new();
        }
        self.remote_hosts()
    }
}

/// The TCP hosts `postgres` reaches on another machine (a unix socket, `localhost` or a
/// loopback address does not leave this one). A `hostaddr` decides over the name.
fn remote_hosts(postgres: &tokio_postgres::Config) -> Vec<String> {
    let addrs = postgres.get_hostaddrs();
    let hosts = postgres.get_hosts();
    let count = hosts.len().max(addrs.len());
    (0..count)
        .filter_map(|index| {
            let addr = addrs.get(index);
            let remote = match (hosts.get(index), addr) {
                (_, Some(addr)) => !addr.is_loopback(),
                (Some(Host::Tcp(name)), None) => !is_loopback_host(name),
                (Some(Host::Unix(_)), None) | (None, None) => false,
            };
            let shown = match (hosts.get(index), addr) {
                (Some(Host::Tcp(name)), _) => name.clone(),
                (_, Some(addr)) => addr.to_string(),
                _ => String::new(),
            };
            remote.then_some(shown)
        })
        .collect()
}

/// Whether a host, as a URL writes it (`localhost`, `127.0.0.1`, `[::1]`), is this
/// machine: the one place clear text is allowed to reach.
pub(crate) fn is_loopback_host(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Defence in depth: the driver read the text it was given, sslmode included, and must
/// negotiate what `ssl_mode` says. Should it read an sslmode that was missed here (a
/// spelling this module does not know), the URL is refused rather than left to one reading
/// or the other, which could be a downgrade to plain text.
fn driver_agrees(ssl_mode: SslMode, postgres: &tokio_postgres::Config) -> Result<(), UrlError> {
    if postgres.get_ssl_mode() == ssl_mode.negotiation() {
        Ok(())
    } else {
        Err(UrlError::SslModeUnclear)
    }
}

/// `database.ca_file`, read: the CA that `verify-ca` and `verify-full` trust instead of
/// the public web PKI roots.
#[derive(Debug, Clone)]
pub struct DatabaseCa {
    pub path: PathBuf,
    pub roots: RootCertStore,
}

impl PartialEq for DatabaseCa {
    fn eq(&self, other: &DatabaseCa) -> bool {
        self.path == other.path && self.roots.roots == other.roots.roots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parsed(url: &str) -> ConnectionUrl {
        ConnectionUrl::parse(url).unwrap_or_else(|error| panic!("{url}: {error}"))
    }

    #[test]
    fn sslmode_is_read_from_the_url_and_tokio_postgres_is_told_whether_to_insist() {
        for (url, mode) in [
            ("postgres://u@db.example/x", SslMode::Prefer),
            (
                "postgres://u@db.example/x?sslmode=disable",
                SslMode::Disable,
            ),
            (
                "postgresql://u@db.example/x?application_name=a&sslmode=verify-full",
                SslMode::VerifyFull,
            ),
            (
                "postgres://u@db.example/x?sslmode=verify-ca&connect_timeout=3",
                SslMode::VerifyCa,
            ),
            ("host=db.example user=u sslmode=require", SslMode::Require),
            (
                "host=db.example password='a \\' b' sslmode = verify-full dbname=x",
                SslMode::VerifyFull,
            ),
        ] {
            assert_reads(url, mode);
        }
        let quoted = parsed("host=db.example password='a \\' b' sslmode=verify-full dbname=x");
        assert_eq!(quoted.postgres.get_password(), Some(&b"a ' b"[..]));
        assert_eq!(quoted.postgres.get_dbname(), Some("x"));
    }

    #[test]
    fn an_unknown_sslmode_or_an_sslrootcert_is_refused_by_name() {
        for (url, error) in [
            ("postgres://u@db/x?sslmode=allow", UrlError::UnknownSslMode),
            (
                "postgres://u@db/x?sslmode=verify_full",
                UrlError::UnknownSslMode,
            ),
            ("host=db sslmode=strict", UrlError::UnknownSslMode),
            (
                "postgres://u@db/x?sslrootcert=/ca.pem",
                UrlError::SslRootCert,
            ),
            ("host=db sslrootcert=/ca.pem", UrlError::SslRootCert),
            ("mysql://u@db/x", UrlError::Invalid),
            ("host='db", UrlError::Invalid),
        ] {
            assert_eq!(ConnectionUrl::parse(url).err(), Some(error), "{url}");
        }
    }

    /// Asserts that `url` is read as `mode`, and that the driver is told the same.
    pub(super) fn assert_reads(url: &str, mode: SslMode) {
        use tokio_postgres::config::SslMode as Driver;
        let read = parsed(url);
        assert_eq!(read.ssl_mode, mode, "{url}");
        // Written out, not taken from the code under test.
        let negotiated = match mode {
            SslMode::Disable => Driver::Disable,
            SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        };
        assert_eq!(
            read.postgres.get_ssl_mode(),
            negotiated,
            "{url}: the driver negotiates otherwise"
        );
    }

    /// Should the driver ever read an sslmode this module did not (a spelling nobody
    /// thought of), the URL is refused rather than connected with either reading.
    #[test]
    fn a_driver_that_would_negotiate_another_sslmode_is_refused() {
        let driver_reads = |url: &str| {
            url.parse::<tokio_postgres::Config>()
                .unwrap_or_else(|error| panic!("{url}: {error}"))
        };
        let disable = driver_reads("postgres://u@db/x?sslmode=disable");
        let require = driver_reads("postgres://u@db/x?sslmode=require");
        let unsaid = driver_reads("postgres://u@db/x");

        for (ssl_mode, driver) in [
            (SslMode::Require, &disable),
            (SslMode::VerifyFull, &unsaid),
            (SslMode::Prefer, &require),
            (SslMode::Disable, &unsaid),
        ] {
            assert_eq!(
                driver_agrees(ssl_mode, driver),
                Err(UrlError::SslModeUnclear),
                "{ssl_mode}"
            );
        }
        for (ssl_mode, driver) in [
            (SslMode::VerifyFull, &require),
            (SslMode::VerifyCa, &require),
            (SslMode::Prefer, &unsaid),
            (SslMode::Disable, &disable),
        ] {
            assert_eq!(driver_agrees(ssl_mode, driver), Ok(()), "{ssl_mode}");
        }
    }

    #[test]
    fn only_hosts_on_other_machines_are_remote() {
        for (url, remote) in [
            ("postgres://u@127.0.0.1/x", vec![]),
            ("postgres://u@localhost:5433/x", vec![]),
            ("postgres://u@[::1]/x", vec![]),
            ("postgres://u@%2Fvar%2Frun%2Fpostgresql/x", vec![]),
            ("postgres://u@db.internal/x", vec!["db.internal"]),
            ("postgres://u@10.0.0.5/x", vec!["10.0.0.5"]),
            ("postgres://u@db.internal/x?hostaddr=127.0.0.1", vec![]),
            (
                "postgres://u@localhost/x?hostaddr=10.0.0.5",
                vec!["localhost"],
            ),
            ("host=127.0.0.1,db2.internal user=u", vec!["db2.internal"]),
        ] {
            assert_eq!(parsed(url).remote_hosts(), remote, "{url}");
        }
    }
}
