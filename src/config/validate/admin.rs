//! `[admin]`, validated: the address, the token, the host names the server answers to,
//! its TLS certificate and key, checked to belong together, and its own database pool.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use secrecy::SecretString;

use super::{duration, positive};
use crate::config::file::RawAdmin;
use crate::config::secrets::{read_certificates, read_pem};
use crate::config::{AdminConfig, AdminTls, ConfigError, HostAuthority, PoolLimits};

/// Long enough that guessing it is hopeless.
const MIN_ADMIN_TOKEN_LEN: usize = 24;

impl RawAdmin {
    pub(super) fn validate(self, base_dir: &Path) -> Result<AdminConfig, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            ConfigError::key(
                "admin.listen",
                "must be an IP address and port, e.g. 127.0.0.1:9187",
            )
        })?;
        let token = match self.token {
            None => None,
            Some(token) if token.chars().count() < MIN_ADMIN_TOKEN_LEN => {
                return Err(ConfigError::key(
                    "admin.token",
                    format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
                ))
            }
            Some(token) => Some(SecretString::from(token)),
        };
        let mut allowed_hosts = Vec::with_capacity(self.allowed_hosts.len());
        for (index, entry) in self.allowed_hosts.iter().enumerate() {
            let host = HostAuthority::parse(entry).ok_or_else(|| {
                ConfigError::key(
                    format!("admin.allowed_hosts[{index}]"),
                    format!(
                        "`{entry}` is not a host name or IP address with an optional port, \
                         e.g. dispatcher-admin.example.org or dispatcher-admin.example.org:9187"
                    ),
                )
            })?;
            allowed_hosts.push(host);
        }
        let oidc = self.oidc.map(|oidc| oidc.validate(base_dir)).transpose()?;
        if !allowed_hosts.is_empty() && token.is_none() && oidc.is_none() {
            return Err(ConfigError::key(
                "admin.allowed_hosts",
                "needs admin.oidc or admin.token: without either the admin server answers \
                 to loopback names only (127.0.0.1, [::1], localhost)",
            ));
        }
        let tls = admin_tls(self.tls_cert, self.tls_key, base_dir)?;
        let trusted_proxies = trusted_proxies(&self.trusted_proxies, self.allow_plain_http)?;
        plain_http_on_loopback_only(
            &listen,
            token.is_some(),
            tls.is_some(),
            self.allow_plain_http,
        )?;
        let pool = PoolLimits {
            size: positive("admin.database_pool_size", self.database_pool_size)?,
            statement_timeout: duration("admin.statement_timeout", &self.statement_timeout)?,
        };
        Ok(AdminConfig {
            listen,
            token,
            allowed_hosts,
            tls,
            oidc,
            allow_plain_http: self.allow_plain_http,
            trusted_proxies,
            pool,
        })
    }
}

/// Sign-in tokens and partners' answers do not cross a network in plain text: on an
/// address beyond loopback (which it listens on only with a token) the server speaks
/// https, unless ops say a proxy in front of it does (`allow_plain_http`).
fn plain_http_on_loopback_only(
    listen: &std::net::SocketAddr,
    token: bool,
    tls: bool,
    allow_plain_http: bool,
) -> Result<(), ConfigError> {
    if token && !tls && !allow_plain_http && !listen.ip().is_loopback() {
        return Err(ConfigError::key(
            "admin.listen",
            format!(
                "{listen} is reachable from other machines, and without TLS the token and \
                 the partners' answers would cross the network in plain text: set \
                 admin.tls_cert and admin.tls_key, or admin.allow_plain_http = true when a \
                 proxy in front terminates TLS"
            ),
        ));
    }
    Ok(())
}

/// `[admin] trusted_proxies`: addresses or networks (CIDR), only with `allow_plain_http`
/// (a server that speaks https itself knows how it was reached).
fn trusted_proxies(
    entries: &[String],
    allow_plain_http: bool,
) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    if !entries.is_empty() && !allow_plain_http {
        return Err(ConfigError::key(
            "admin.trusted_proxies",
            "needs admin.allow_plain_http = true: only a server behind a TLS-terminating \
             proxy takes the proxy's word for the scheme",
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::key(
                        format!("admin.trusted_proxies[{index}]"),
                        format!("`{entry}` is not an IP address or a network such as 10.0.0.0/24"),
                    )
                })
        })
        .collect()
}

/// The admin server's certificate chain and key, read like a partner's client
/// certificate (PEM files beside the config) and checked to belong together now, so
/// `dispatcher check` finds a wrong pair rather than the first browser.
fn admin_tls(
    cert_file: Option<String>,
    key_file: Option<String>,
    base_dir: &Path,
) -> Result<Option<AdminTls>, ConfigError> {
    use sha2::Digest;

    let (cert_file, key_file) = match (cert_file, key_file) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::key(
                "admin.tls_key",
                "missing: tls_cert needs its private key",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::key(
                "admin.tls_cert",
                "missing: tls_key needs its certificate",
            ))
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let chain = read_certificates("admin.tls_cert", &cert_file, base_dir)?;
    let fingerprint = chain
        .iter()
        .fold(sha2::Sha256::new(), |digest, cert| {
            digest.chain_update(cert)
        })
        .finalize()
        .into();
    let mut pem = read_pem("admin.tls_key", &key_file, base_dir)?;
    let key = PrivateKeyDer::from_pem_slice(&pem);
    // The key's bytes are not kept beyond the server configuration.
    pem.fill(0);
    let key = key.map_err(|_| {
        ConfigError::key(
            "admin.tls_key",
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|error| {
            ConfigError::key(
                "admin.tls_key",
                format!("cannot serve with this certificate and key: {error}"),
            )
        })?;
    // The admin server speaks HTTP/1.1 only.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(AdminTls {
        server: std::sync::Arc::new(server),
        fingerprint,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{parse, MINIMAL};
    use crate::config::Config;

    #[test]
    fn the_admin_server_has_a_small_pool_of_its_own_with_a_short_statement_timeout() {
        let defaults = parse(MINIMAL).expect("valid").admin.pool;
        assert_eq!(
            (defaults.size, defaults.statement_timeout),
            (2, std::time::Duration::from_secs(5))
        );
        let with_admin = |keys: &str| format!("{MINIMAL}\n[admin]\n{keys}\n");
        let set = parse(&with_admin(
            "database_pool_size = 3\nstatement_timeout = \"2500ms\"",
        ))
        .expect("valid")
        .admin
        .pool;
        assert_eq!(
            (set.size, set.statement_timeout),
            (3, std::time::Duration::from_millis(2500))
        );
        for (keys, named) in [
            ("database_pool_size = 0", "admin.database_pool_size"),
            ("statement_timeout = \"0s\"", "admin.statement_timeout"),
            ("statement_timeout = \"soon\"", "admin.statement_timeout"),
        ] {
            let error = parse(&with_admin(keys)).unwrap_err().to_string();
            assert!(error.contains(named), "{keys}: {error}");
        }
    }

    #[test]
    fn admin_host_names_are_checked_and_need_a_token() {
        let with_admin = |keys: &str| format!("{MINIMAL}\n[admin]\n{keys}\n");
        let token = "token = \"a-token-of-at-least-24-characters\"";
        let config = parse(&with_admin(&format!(
            "{token}\nallowed_hosts = [\"Admin.Example.org\", \"10.1.2.3:9187\", \"[fd00::1]:443\"]"
        )))
        .expect("valid allowed_hosts");
        let hosts: Vec<(&str, Option<u16>)> = config
            .admin
            .allowed_hosts
            .iter()
            .map(|host| (host.host.as_str(), host.port))
            .collect();
        assert_eq!(
            hosts,
            [
                ("admin.example.org", None),
                ("10.1.2.3", Some(9187)),
                ("[fd00::1]", Some(443))
            ]
        );

        let error = parse(&with_admin("allowed_hosts = [\"admin.example.org\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("admin.allowed_hosts") && error.contains("admin.token"),
            "{error}"
        );
        for bad in [
            "https://admin.example.org",
            "admin.example.org:",
            "a b",
            "",
            "::1",
        ] {
            let error = parse(&with_admin(&format!(
                "{token}\nallowed_hosts = [\"admin.example.org\", \"{bad}\"]"
            )))
            .unwrap_err()
            .to_string();
            assert!(error.contains("admin.allowed_hosts[1]"), "{bad}: {error}");
        }
    }

    #[test]
    fn beyond_loopback_with_a_token_the_server_needs_tls_or_a_proxy_said_to_have_it() {
        let with_admin = |keys: &str| format!("{MINIMAL}\n[admin]\n{keys}\n");
        let token = "token = \"a-token-of-at-least-24-characters\"";
        for listen in ["0.0.0.0:9187", "10.1.2.3:9187", "[::]:9187"] {
            let error = parse(&with_admin(&format!("listen = \"{listen}\"\n{token}")))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("admin.listen")
                    && error.contains("admin.tls_cert")
                    && error.contains("admin.allow_plain_http = true"),
                "{listen}: {error}"
            );
        }
        // On loopback, or without a token (then it listens on loopback only): plain http.
        parse(&with_admin(&format!(
            "listen = \"127.0.0.1:9187\"\n{token}"
        )))
        .expect("loopback");
        parse(&with_admin("listen = \"0.0.0.0:9187\"")).expect("no token: loopback only");
        let behind_proxy = parse(&with_admin(&format!(
            "listen = \"0.0.0.0:9187\"\n{token}\nallow_plain_http = true\n\
             trusted_proxies = [\"10.0.0.5\", \"10.1.0.0/16\"]"
        )))
        .expect("behind a proxy");
        assert_eq!(behind_proxy.admin.trusted_proxies.len(), 2);

        let error = parse(&with_admin("trusted_proxies = [\"10.0.0.5\"]"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("admin.allow_plain_http"), "{error}");
        let error = parse(&with_admin(
            "allow_plain_http = true\ntrusted_proxies = [\"10.0.0.5\", \"proxy.internal\"]",
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("admin.trusted_proxies[1]"), "{error}");
    }

    #[test]
    fn the_admin_certificate_and_key_are_checked_and_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dispatcher.toml").display().to_string();
        let write = |name: &str, content: &str| {
            std::fs::write(dir.path().join(name), content).expect("write");
        };
        let issue = || {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = issue();
        let (_, other_key) = issue();
        write("admin.pem", &cert);
        write("admin-key.pem", &key);
        write("other-key.pem", &other_key);
        write("not-pem.pem", "hello");
        let admin = |keys: &str| {
            Config::parse(
                &format!("{MINIMAL}\n[admin]\n{keys}\n"),
                &path,
                None,
                |_| None,
            )
        };

        let config = admin("tls_cert = \"admin.pem\"\ntls_key = \"admin-key.pem\"")
            .expect("a matching pair");
        assert!(config.admin.tls.is_some());
        let printed = format!("{config:?}");
        assert!(!printed.contains("PRIVATE KEY") && printed.contains("[certificate]"));

        for (keys, named, says) in [
            ("tls_cert = \"admin.pem\"", "admin.tls_key", "missing"),
            ("tls_key = \"admin-key.pem\"", "admin.tls_cert", "missing"),
            (
                "tls_cert = \"gone.pem\"\ntls_key = \"admin-key.pem\"",
                "admin.tls_cert",
                "cannot read",
            ),
            (
                "tls_cert = \"not-pem.pem\"\ntls_key = \"admin-key.pem\"",
                "admin.tls_cert",
                "no PEM certificate",
            ),
            (
                "tls_cert = \"admin.pem\"\ntls_key = \"not-pem.pem\"",
                "admin.tls_key",
                "no PEM private key",
            ),
            (
                "tls_cert = \"admin.pem\"\ntls_key = \"admin.pem\"",
                "admin.tls_key",
                "no PEM private key",
            ),
            (
                "tls_cert = \"admin.pem\"\ntls_key = \"other-key.pem\"",
                "admin.tls_key",
                "cannot serve",
            ),
        ] {
            let error = admin(keys).unwrap_err().to_string();
            assert!(
                error.contains(named) && error.contains(says),
                "{keys}: {error}"
            );
            assert!(!error.contains("BEGIN"), "{error}");
        }
    }
}
