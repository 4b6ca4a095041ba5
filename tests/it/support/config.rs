//! The dispatcher.toml a test runs with, as typed settings rendered to TOML in one place,
//! so a test says which setting it changes and not how the file spells it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{TestDb, TestPartner, PROGRAM, SIGNING_SECRET};

/// The dispatcher.toml a test runs with: typed settings, rendered to TOML in one place
/// ([`TestConfig::text`]).
#[derive(Clone)]
pub struct TestConfig {
    pub partners: Vec<(String, String, Vec<String>)>,
    /// Settings of a partner's table, by partner name.
    pub partner_settings: HashMap<String, PartnerSettings>,
    /// More TOML for a partner's table, by partner name, for what [`PartnerSettings`]
    /// does not type (TLS files, auth, ...).
    pub partner_keys: HashMap<String, String>,
    pub dispatch: Dispatch,
    pub retry: Retry,
    /// `[retention]`, when the test sets it; else the daemon's defaults.
    pub retention: Option<Retention>,
    pub admin: Admin,
    /// `[database]`: by default the test database's URL, no CA file.
    pub database: Database,
    pub dir: Arc<tempfile::TempDir>,
}

/// `[dispatch]`; a key left `None` is left out of the file, so the daemon's default holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dispatch {
    pub concurrency: Option<usize>,
    pub batch_size: Option<usize>,
    pub lease: Option<Duration>,
    pub poll_interval: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub shutdown_grace: Option<Duration>,
}

impl Dispatch {
    /// Fast timings, so a test's claims, polls and shutdowns happen within it.
    pub fn fast() -> Dispatch {
        Dispatch {
            concurrency: Some(64),
            batch_size: Some(50),
            lease: Some(Duration::from_secs(10)),
            poll_interval: Some(Duration::from_millis(200)),
            request_timeout: Some(Duration::from_secs(2)),
            shutdown_grace: Some(Duration::from_secs(5)),
        }
    }
}

/// `[database]`, when a test reaches its database another way than [`TestDb::url`]; and
/// `[support] database_url`, the standby support reads from, when it has one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Database {
    pub url: Option<String>,
    pub ca_file: Option<String>,
    pub standby_url: Option<String>,
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Admin {
    pub listen: String,
    pub token: Option<String>,
    pub allowed_hosts: Vec<String>,
    /// The certificate and key files, when it serves HTTPS.
    pub tls: Option<(String, String)>,
    /// `[admin.oidc]`, as TOML keys, when people sign in through an identity provider.
    pub oidc: Option<String>,
}

/// `[retry]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

/// `[retention]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Retention {
    pub payload_days: u32,
    pub metadata_days: u32,
    pub prune_interval: Duration,
}

/// A partner's own limits; a key left `None` takes the daemon's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartnerSettings {
    pub max_in_flight: Option<usize>,
    pub circuit_breaker_failures: Option<u32>,
    pub circuit_breaker_cool_down: Option<Duration>,
    /// Headers sent besides the test's `x-api-key`.
    pub headers: Vec<(String, String)>,
}

/// A duration as the config file writes it ("200ms", "10s", "2h").
fn toml_duration(duration: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(duration))
}

impl TestConfig {
    /// Fast timings so retries happen within a test.
    pub fn new() -> TestConfig {
        TestConfig {
            partners: Vec::new(),
            partner_settings: HashMap::new(),
            partner_keys: HashMap::new(),
            dispatch: Dispatch::fast(),
            retry: Retry {
                max_attempts: 5,
                base_delay: Duration::from_millis(300),
                max_delay: Duration::from_secs(2),
            },
            retention: None,
            database: Database::default(),
            admin: Admin {
                listen: "127.0.0.1:0".into(),
                token: None,
                allowed_hosts: Vec::new(),
                tls: None,
                oidc: None,
            },
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
        }
    }

    pub fn partner(self, partner: &TestPartner, programs: &[&str]) -> TestConfig {
        self.partner_at(&partner.name, &partner.base_url, programs)
    }

    /// A partner served at `base_url` by something other than a [`TestPartner`].
    pub fn partner_at(mut self, name: &str, base_url: &str, programs: &[&str]) -> TestConfig {
        self.partners.push((
            name.to_string(),
            base_url.to_string(),
            programs.iter().map(|p| p.to_string()).collect(),
        ));
        self
    }

    /// Adds TOML to the partner's table: keys, then optionally a `[partners.auth]` table.
    /// With `signing_secrets` among them, the default `signing_secret` is left out.
    pub fn partner_keys(mut self, name: &str, toml: &str) -> TestConfig {
        self.partner_keys.insert(name.to_string(), toml.to_string());
        self
    }

    /// The partner's `max_in_flight`.
    pub fn max_in_flight(mut self, partner: &str, requests: usize) -> TestConfig {
        self.settings_of(partner).max_in_flight = Some(requests);
        self
    }

    /// The partner's circuit breaker: open after `failures` in a row, probe again after
    /// `cool_down`.
    pub fn circuit_breaker(
        mut self,
        partner: &str,
        failures: u32,
        cool_down: Duration,
    ) -> TestConfig {
        let settings = self.settings_of(partner);
        settings.circuit_breaker_failures = Some(failures);
        settings.circuit_breaker_cool_down = Some(cool_down);
        self
    }

    /// Only the partner's `circuit_breaker_failures`.
    pub fn circuit_breaker_failures(mut self, partner: &str, failures: u32) -> TestConfig {
        self.settings_of(partner).circuit_breaker_failures = Some(failures);
        self
    }

    /// Only the partner's `circuit_breaker_cool_down`.
    pub fn circuit_breaker_cool_down(mut self, partner: &str, cool_down: Duration) -> TestConfig {
        self.settings_of(partner).circuit_breaker_cool_down = Some(cool_down);
        self
    }

    /// One more header the partner is sent.
    pub fn partner_header(mut self, partner: &str, name: &str, value: &str) -> TestConfig {
        self.settings_of(partner)
            .headers
            .push((name.to_string(), value.to_string()));
        self
    }

    fn settings_of(&mut self, partner: &str) -> &mut PartnerSettings {
        self.partner_settings
            .entry(partner.to_string())
            .or_default()
    }

    /// The whole `[dispatch]` section (e.g. `Dispatch::default()`: the daemon's own).
    pub fn dispatch(mut self, dispatch: Dispatch) -> TestConfig {
        self.dispatch = dispatch;
        self
    }

    pub fn concurrency(mut self, tasks: usize) -> TestConfig {
        self.dispatch.concurrency = Some(tasks);
        self
    }

    pub fn batch_size(mut self, deliveries: usize) -> TestConfig {
        self.dispatch.batch_size = Some(deliveries);
        self
    }

    pub fn lease(mut self, lease: Duration) -> TestConfig {
        self.dispatch.lease = Some(lease);
        self
    }

    pub fn poll_interval(mut self, interval: Duration) -> TestConfig {
        self.dispatch.poll_interval = Some(interval);
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> TestConfig {
        self.dispatch.request_timeout = Some(timeout);
        self
    }

    pub fn shutdown_grace(mut self, grace: Duration) -> TestConfig {
        self.dispatch.shutdown_grace = Some(grace);
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> TestConfig {
        self.retry.max_attempts = attempts;
        self
    }

    /// The first retry's delay, and the most any retry waits.
    pub fn retry_delays(mut self, base: Duration, max: Duration) -> TestConfig {
        self.retry.base_delay = base;
        self.retry.max_delay = max;
        self
    }

    pub fn retention(mut self, retention: Retention) -> TestConfig {
        self.retention = Some(retention);
        self
    }

    /// The database URL the daemon is given instead of the test database's own.
    pub fn database_url(mut self, url: &str) -> TestConfig {
        self.database.url = Some(url.into());
        self
    }

    /// The CA file the daemon checks the database's certificate with.
    pub fn database_ca_file(mut self, file: &str) -> TestConfig {
        self.database.ca_file = Some(file.into());
        self
    }

    /// The hot standby support's reads go to (`[support] database_url`).
    pub fn standby_url(mut self, url: &str) -> TestConfig {
        self.database.standby_url = Some(url.into());
        self
    }

    /// Where the admin server listens (by default a free loopback port).
    pub fn admin_listen(mut self, address: &str) -> TestConfig {
        self.admin.listen = address.into();
        self
    }

    /// The admin server's bearer token (by default none).
    pub fn admin_token(mut self, token: &str) -> TestConfig {
        self.admin.token = Some(token.into());
        self
    }

    /// The names the admin server answers to besides its own address.
    pub fn admin_allowed_hosts(mut self, hosts: &[&str]) -> TestConfig {
        self.admin.allowed_hosts = hosts.iter().map(|host| host.to_string()).collect();
        self
    }

    /// Serve the admin server over HTTPS with these files (relative to the config's dir).
    pub fn admin_tls(mut self, cert_file: &str, key_file: &str) -> TestConfig {
        self.admin.tls = Some((cert_file.into(), key_file.into()));
        self
    }

    /// Sign-in through the OpenID Provider at `issuer`, as client `dispatcher` with
    /// `client_secret`; the provider's groups `dispatcher-viewers`, `dispatcher-support`
    /// and `dispatcher-ops` hold the three roles.
    pub fn admin_oidc(mut self, issuer: &str, client_secret: &str) -> TestConfig {
        let redirect = format!("http://{}/auth/callback", self.admin.listen);
        self.admin.oidc = Some(format!(
            "issuer = \"{issuer}\"\nclient_id = \"dispatcher\"\nclient_secret = \"{client_secret}\"\n\
             redirect_url = \"{redirect}\"\n\
             roles = {{ viewer = [\"dispatcher-viewers\"], support = [\"dispatcher-support\"], \
             operator = [\"dispatcher-ops\"] }}\n"
        ));
        self
    }

    pub fn text(&self, db: &TestDb) -> String {
        let url = self.database.url.as_ref().unwrap_or(&db.url);
        let mut text = format!("[database]\nurl = \"{url}\"\n");
        if let Some(ca_file) = &self.database.ca_file {
            text.push_str(&format!("ca_file = \"{ca_file}\"\n"));
        }
        text.push_str("\n[dispatch]\n");
        let Dispatch {
            concurrency,
            batch_size,
            lease,
            poll_interval,
            request_timeout,
            shutdown_grace,
        } = &self.dispatch;
        let numbers = [("concurrency", concurrency), ("batch_size", batch_size)];
        for (key, value) in numbers {
            if let Some(value) = value {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        let durations = [
            ("lease", lease),
            ("poll_interval", poll_interval),
            ("request_timeout", request_timeout),
            ("shutdown_grace", shutdown_grace),
        ];
        for (key, value) in durations {
            if let Some(value) = value {
                text.push_str(&format!("{key} = {}\n", toml_duration(*value)));
            }
        }
        let Retry {
            max_attempts,
            base_delay,
            max_delay,
        } = &self.retry;
        text.push_str(&format!(
            "\n[retry]\nmax_attempts = {max_attempts}\nbase_delay = {}\nmax_delay = {}\n",
            toml_duration(*base_delay),
            toml_duration(*max_delay)
        ));
        let Admin {
            listen,
            token,
            allowed_hosts,
            tls,
            oidc,
        } = &self.admin;
        text.push_str(&format!("\n[admin]\nlisten = \"{listen}\"\n"));
        if let Some(token) = token {
            text.push_str(&format!("token = \"{token}\"\n"));
        }
        if !allowed_hosts.is_empty() {
            text.push_str(&format!("allowed_hosts = {allowed_hosts:?}\n"));
        }
        if let Some((cert_file, key_file)) = tls {
            text.push_str(&format!(
                "tls_cert = \"{cert_file}\"\ntls_key = \"{key_file}\"\n"
            ));
        }
        if let Some(oidc) = oidc {
            text.push_str(&format!("\n[admin.oidc]\n{oidc}"));
        }
        if let Some(standby_url) = &self.database.standby_url {
            text.push_str(&format!("\n[support]\ndatabase_url = \"{standby_url}\"\n"));
        }
        if let Some(Retention {
            payload_days,
            metadata_days,
            prune_interval,
        }) = &self.retention
        {
            text.push_str(&format!(
                "\n[retention]\npayload_days = {payload_days}\nmetadata_days = {metadata_days}\n\
                 prune_interval = {}\n",
                toml_duration(*prune_interval)
            ));
        }
        for (name, base_url, programs) in &self.partners {
            let keys = self.partner_keys.get(name).map_or("", String::as_str);
            let settings = self.partner_settings.get(name).cloned().unwrap_or_default();
            let mut headers = format!("\"x-api-key\" = \"key-{name}\"");
            for (header, value) in &settings.headers {
                headers.push_str(&format!(", \"{header}\" = \"{value}\""));
            }
            text.push_str(&format!(
                "\n[[partners]]\nname = \"{name}\"\nsupport_programs = {programs:?}\n\
                 enrollment_url = \"{base_url}/webhook/user-enrollment\"\n\
                 user_action_url = \"{base_url}/webhook/user-action\"\n\
                 headers = {{ {headers} }}\n"
            ));
            if !keys.contains("signing_secrets") {
                text.push_str(&format!("signing_secret = \"{SIGNING_SECRET}\"\n"));
            }
            // Plain-HTTP partners are local test servers: that needs allow_insecure,
            // which also opens the destination guard. HTTPS partners go without it.
            if base_url.starts_with("http://") {
                text.push_str("allow_insecure = true\n");
            }
            if let Some(requests) = settings.max_in_flight {
                text.push_str(&format!("max_in_flight = {requests}\n"));
            }
            if let Some(failures) = settings.circuit_breaker_failures {
                text.push_str(&format!("circuit_breaker_failures = {failures}\n"));
            }
            if let Some(cool_down) = settings.circuit_breaker_cool_down {
                text.push_str(&format!(
                    "circuit_breaker_cool_down = {}\n",
                    toml_duration(cool_down)
                ));
            }
            text.push_str(keys);
            text.push('\n');
        }
        text
    }

    pub fn write(&self, db: &TestDb) -> PathBuf {
        let path = self.dir.path().join("dispatcher.toml");
        std::fs::write(&path, self.text(db)).expect("write config");
        path
    }
}

/// A config for library-level tests that talk to partners without a daemon or a
/// database: one partner named `name` at `base_url`, with `keys` added to its table.
/// Relative file names in `keys` are read from `dir`.
pub fn partner_config(
    dir: &std::path::Path,
    name: &str,
    base_url: &str,
    keys: &str,
) -> dispatcher::config::Config {
    let text = format!(
        "[database]\nurl = \"postgres://dispatcher@127.0.0.1/unused\"\n\n\
         [dispatch]\nrequest_timeout = \"5s\"\n\n\
         [[partners]]\nname = \"{name}\"\nsupport_programs = [\"{PROGRAM}\"]\n\
         enrollment_url = \"{base_url}/webhook/user-enrollment\"\n\
         user_action_url = \"{base_url}/webhook/user-action\"\n{keys}\n"
    );
    let path = dir.join("dispatcher.toml");
    dispatcher::config::Config::parse(&text, &path.display().to_string(), None, |_| None)
        .unwrap_or_else(|error| panic!("test config: {error}\n{text}"))
}
