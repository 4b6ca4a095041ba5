//! A `[[partners]]` entry, validated one named step at a time: its names, URLs, signing
//! secrets, headers, networks, TLS files, `[partners.auth]` and circuit breaker.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::SecretString;
use url::Url;

use super::{duration, positive};
use crate::config::auth::{AuthConfig, OAuthClientCredentials};
use crate::config::file::{RawAuth, RawPartner};
use crate::config::secrets::{read_pem, secret_text};
use crate::config::{CircuitConfig, ClientCertificate, ConfigError, Partner, PartnerTls};
use crate::contract::payload::{fits_identifier, IDENTIFIER_TOO_LONG};
use crate::contract::signing::SigningSecret;

impl RawPartner {
    /// `index` names the entry in errors: `partners[{index}].{field}`.
    pub(super) fn validate(self, index: usize, base_dir: &Path) -> Result<Partner, ConfigError> {
        let key = |field: &str| format!("partners[{index}].{field}");
        let RawPartner {
            name,
            support_programs,
            enrollment_url,
            user_action_url,
            signing_secret,
            signing_secrets,
            headers,
            max_in_flight,
            circuit_breaker_failures,
            circuit_breaker_cool_down,
            allow_insecure,
            allow_networks,
            ca_bundle,
            client_cert,
            client_key,
            auth,
        } = self;
        names(&key, &name, &support_programs)?;
        let enrollment_url = partner_url(&key("enrollment_url"), &enrollment_url, allow_insecure)?;
        let user_action_url =
            partner_url(&key("user_action_url"), &user_action_url, allow_insecure)?;
        let signing_secrets = signing_secrets_of(&key, signing_secret, signing_secrets, base_dir)?;
        let headers = header_values(&key, headers, base_dir)?;
        let allow_networks = networks(&key, &allow_networks)?;
        let tls = partner_tls(&key, ca_bundle, client_cert, client_key, base_dir)?;
        let auth = auth
            .map(|raw| raw.validate(&key("auth"), allow_insecure, base_dir))
            .transpose()?;
        one_authorization(&key, auth.as_ref(), &headers)?;
        let circuit = circuit(&key, circuit_breaker_failures, &circuit_breaker_cool_down)?;
        Ok(Partner {
            name,
            support_programs,
            enrollment_url,
            user_action_url,
            signing_secrets,
            headers,
            max_in_flight: positive(&key("max_in_flight"), max_in_flight)?,
            circuit,
            allow_insecure,
            allow_networks,
            tls,
            auth,
        })
    }
}

/// The partner's name, and the support programs whose events it takes.
fn names(
    key: &impl Fn(&str) -> String,
    name: &str,
    support_programs: &[String],
) -> Result<(), ConfigError> {
    if name.trim().is_empty() {
        return Err(ConfigError::key(key("name"), "must not be empty"));
    }
    // The name is the `source` of the partner's id in later bodies, and both are ids of
    // the contract's: at most 255 characters (R13).
    if !fits_identifier(name) {
        return Err(ConfigError::key(key("name"), IDENTIFIER_TOO_LONG));
    }
    if support_programs.is_empty() || support_programs.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::key(
            key("support_programs"),
            "must list at least one non-empty support program id",
        ));
    }
    if !support_programs
        .iter()
        .all(|program| fits_identifier(program))
    {
        return Err(ConfigError::key(
            key("support_programs"),
            format!("each support program id {IDENTIFIER_TOO_LONG}"),
        ));
    }
    Ok(())
}

/// `signing_secret`, or `signing_secrets` (several while a secret is rotated), not both.
fn signing_secrets_of(
    key: &impl Fn(&str) -> String,
    single: Option<String>,
    several: Option<Vec<String>>,
    base_dir: &Path,
) -> Result<Vec<SigningSecret>, ConfigError> {
    match (single, several) {
        (Some(_), Some(_)) => Err(ConfigError::key(
            key("signing_secrets"),
            "set either signing_secret or signing_secrets, not both",
        )),
        (Some(secret), None) => Ok(vec![signing_secret(
            &key("signing_secret"),
            &secret,
            base_dir,
        )?]),
        (None, Some(secrets)) if secrets.is_empty() => Err(ConfigError::key(
            key("signing_secrets"),
            "must list at least one secret (or leave the key out)",
        )),
        (None, Some(secrets)) => secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| {
                signing_secret(
                    &format!("{}[{i}]", key("signing_secrets")),
                    secret,
                    base_dir,
                )
            })
            .collect(),
        (None, None) => Ok(Vec::new()),
    }
}

fn signing_secret(key: &str, text: &str, base_dir: &Path) -> Result<SigningSecret, ConfigError> {
    let text = secret_text(key, text.to_string(), base_dir)?;
    SigningSecret::parse(&text).map_err(|error| ConfigError::key(key, error.to_string()))
}

/// `headers`: names and values fit for HTTP, the values secrets (`[telemetry]`'s too).
pub(super) fn header_values(
    key: &impl Fn(&str) -> String,
    headers: BTreeMap<String, String>,
    base_dir: &Path,
) -> Result<Vec<(HeaderName, SecretString)>, ConfigError> {
    let mut checked = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let value = secret_text(&format!("{}.{name}", key("headers")), value, base_dir)?;
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConfigError::key(
                key("headers"),
                format!("`{name}` is not a valid header name"),
            )
        })?;
        if HeaderValue::from_str(&value).is_err() {
            return Err(ConfigError::key(
                format!("{}.{name}", key("headers")),
                "is not a valid header value",
            ));
        }
        checked.push((header_name, SecretString::from(value)));
    }
    Ok(checked)
}

/// `allow_networks`: the non-global networks the partner may still be reached in.
fn networks(key: &impl Fn(&str) -> String, networks: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    networks
        .iter()
        .map(|network| {
            network.parse::<IpNet>().map_err(|_| {
                ConfigError::key(
                    key("allow_networks"),
                    format!("`{network}` is not a network such as \"127.0.0.0/8\" or \"::1/128\""),
                )
            })
        })
        .collect()
}

/// `[partners.auth]` and an `Authorization` header would each claim the one header.
fn one_authorization(
    key: &impl Fn(&str) -> String,
    auth: Option<&AuthConfig>,
    headers: &[(HeaderName, SecretString)],
) -> Result<(), ConfigError> {
    if auth.is_some() && headers.iter().any(|(name, _)| name == AUTHORIZATION) {
        return Err(ConfigError::key(
            key("headers.authorization"),
            "conflicts with [partners.auth]; keep one of them",
        ));
    }
    Ok(())
}

/// `circuit_breaker_failures` and `circuit_breaker_cool_down`.
fn circuit(
    key: &impl Fn(&str) -> String,
    failures: u32,
    cool_down: &str,
) -> Result<CircuitConfig, ConfigError> {
    if failures == 0 {
        return Err(ConfigError::key(
            key("circuit_breaker_failures"),
            "must be at least 1: the failed attempts in a row after which the partner's \
             deliveries are held",
        ));
    }
    Ok(CircuitConfig {
        failures,
        cool_down: duration(&key("circuit_breaker_cool_down"), cool_down)?,
    })
}

impl RawAuth {
    fn validate(
        self,
        key: &str,
        allow_insecure: bool,
        base_dir: &Path,
    ) -> Result<AuthConfig, ConfigError> {
        let field = |name: &str| format!("{key}.{name}");
        let auth = match self {
            RawAuth::Bearer { token } => AuthConfig::Bearer {
                token: credential(&field("token"), token, base_dir)?,
            },
            RawAuth::Basic { username, password } => AuthConfig::Basic {
                username,
                password: credential(&field("password"), password, base_dir)?,
            },
            RawAuth::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
                client_auth,
            } => {
                if client_id.is_empty() {
                    return Err(ConfigError::key(field("client_id"), "must not be empty"));
                }
                AuthConfig::OAuth2ClientCredentials(OAuthClientCredentials {
                    token_url: partner_url(&field("token_url"), &token_url, allow_insecure)?,
                    client_id,
                    client_secret: credential(&field("client_secret"), client_secret, base_dir)?,
                    scope,
                    audience,
                    client_auth,
                })
            }
        };
        if let Err(message) = auth.static_header() {
            let name = match auth {
                AuthConfig::Basic { .. } if message.contains("username") => "username",
                AuthConfig::Basic { .. } => "password",
                _ => "token",
            };
            return Err(ConfigError::key(field(name), message));
        }
        Ok(auth)
    }
}

/// A credential of `[partners.auth]`: an empty one (an unset variable's stand-in, say)
/// is a mistake, not a credential.
fn credential(key: &str, value: String, base_dir: &Path) -> Result<SecretString, ConfigError> {
    let value = secret_text(key, value, base_dir)?;
    if value.is_empty() {
        return Err(ConfigError::key(key, "must not be empty"));
    }
    Ok(SecretString::from(value))
}

/// `ca_bundle`, and `client_cert` with `client_key` (mTLS).
fn partner_tls(
    key: &impl Fn(&str) -> String,
    ca_bundle: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    base_dir: &Path,
) -> Result<PartnerTls, ConfigError> {
    let mut tls = PartnerTls::default();
    if let Some(file) = ca_bundle {
        let pem = read_pem(&key("ca_bundle"), &file, base_dir)?;
        tls.extra_roots_der = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|roots| !roots.is_empty())
            .ok_or_else(|| ConfigError::key(key("ca_bundle"), "holds no PEM certificate"))?;
        // As reqwest's own from_pem_bundle makes them, from the same parse.
        tls.extra_roots = tls
            .extra_roots_der
            .iter()
            .map(|root| reqwest::Certificate::from_der(root))
            .collect::<Result<_, _>>()
            .map_err(|_| ConfigError::key(key("ca_bundle"), "holds no PEM certificate"))?;
    }
    match (client_cert, client_key) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(ConfigError::key(
                key("client_key"),
                "missing: client_cert needs its private key",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::key(
                key("client_cert"),
                "missing: client_key needs its certificate",
            ))
        }
        (Some(cert_file), Some(key_file)) => {
            let mut pem = read_pem(&key("client_cert"), &cert_file, base_dir)?;
            let certificates = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
            if certificates.map_or(true, |certificates| certificates.is_empty()) {
                return Err(ConfigError::key(
                    key("client_cert"),
                    "holds no PEM certificate",
                ));
            }
            pem.push(b'\n');
            pem.extend(read_pem(&key("client_key"), &key_file, base_dir)?);
            let identity = reqwest::Identity::from_pem(&pem);
            // The same for rustls, as reqwest reads it: every certificate of the two
            // files, and the last key.
            let chain = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
            let last_key = PrivateKeyDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map(|mut keys| keys.pop());
            // The key's bytes are not kept beyond the identity and its rustls twin.
            pem.fill(0);
            let (Ok(identity), Ok(chain), Ok(Some(last_key))) = (identity, chain, last_key) else {
                return Err(ConfigError::key(
                    key("client_key"),
                    "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                ));
            };
            tls.client_identity = Some(identity);
            tls.client_certificate = Some(ClientCertificate {
                chain,
                key: Arc::new(last_key),
            });
        }
    }
    Ok(tls)
}

/// An https:// URL with a host (http:// only with `allow_insecure`).
fn partner_url(key: &str, text: &str, allow_insecure: bool) -> Result<Url, ConfigError> {
    let url = Url::parse(text)
        .map_err(|error| ConfigError::key(key, format!("not a valid URL: {error}")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        "http" => {
            return Err(ConfigError::key(
                key,
                "must be https:// (patient data never travels in clear text); set allow_insecure = true only for local testing",
            ))
        }
        other => {
            return Err(ConfigError::key(
                key,
                format!("scheme `{other}` is not supported; use https://"),
            ))
        }
    }
    if url.host_str().is_none() {
        return Err(ConfigError::key(key, "has no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use crate::config::auth::{AuthConfig, ClientAuthMethod};
    use crate::config::testing::{parse, partner_with, MINIMAL};
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn plain_http_needs_allow_insecure() {
        let text = MINIMAL.replace("https://crm.example/enroll", "http://crm.example/enroll");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].enrollment_url") && error.contains("https"),
            "{error}"
        );
        let allowed = text.replace("name = \"acme\"", "name = \"acme\"\nallow_insecure = true");
        assert!(parse(&allowed).is_ok());
    }

    /// The partner's name is the `source` of its patient ids in the bodies it gets, and
    /// a program id is compared with events' ids: both at most 255 characters (R13).
    #[test]
    fn names_and_program_ids_are_at_most_255_characters() {
        let longest = "é".repeat(255);
        let named = MINIMAL.replace("\"acme\"", &format!("\"{longest}\""));
        let named = named.replace("\"prog-1\"", &format!("\"{longest}\""));
        assert!(parse(&named).is_ok());

        let named = MINIMAL.replace("\"acme\"", &format!("\"{longest}x\""));
        let error = parse(&named).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].name") && error.contains("at most 255 characters"),
            "{error}"
        );
        let program = MINIMAL.replace("\"prog-1\"", &format!("\"{longest}x\""));
        let error = parse(&program).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].support_programs")
                && error.contains("at most 255 characters"),
            "{error}"
        );
    }

    #[test]
    fn a_partner_rotating_its_secret_lists_both_and_the_old_key_still_works() {
        let both = partner_with(
            "signing_secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"whsec_bmV4dA==\"]",
        );
        assert_eq!(
            parse(&both).expect("valid").partners[0]
                .signing_secrets
                .len(),
            2
        );
        let single = partner_with("signing_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"");
        assert_eq!(
            parse(&single).expect("valid").partners[0]
                .signing_secrets
                .len(),
            1
        );

        let bad = partner_with("signing_secrets = [\"whsec_bmV4dA==\", \"oops\"]");
        let error = parse(&bad).unwrap_err().to_string();
        assert!(error.contains("partners[0].signing_secrets[1]"), "{error}");
        let twice = partner_with(
            "signing_secret = \"whsec_bmV4dA==\"\nsigning_secrets = [\"whsec_bmV4dA==\"]",
        );
        let error = parse(&twice).unwrap_err().to_string();
        assert!(error.contains("not both"), "{error}");
    }

    #[test]
    fn auth_kinds_are_checked_and_named() {
        let oauth = format!(
            "{MINIMAL}\n[partners.auth]\nkind = \"oauth2_client_credentials\"\n\
             token_url = \"https://auth.example/token\"\nclient_id = \"ha\"\n\
             client_secret = \"s\"\nscope = \"webhooks\"\nclient_auth = \"client_secret_post\"\n"
        );
        let config = parse(&oauth).expect("valid oauth");
        assert!(matches!(
            &config.partners[0].auth,
            Some(AuthConfig::OAuth2ClientCredentials(o)) if o.client_auth == ClientAuthMethod::ClientSecretPost
        ));

        let http_token_url = oauth.replace("https://auth.example", "http://auth.example");
        let error = parse(&http_token_url).unwrap_err().to_string();
        assert!(error.contains("partners[0].auth.token_url"), "{error}");

        let unknown_kind = format!("{MINIMAL}\n[partners.auth]\nkind = \"kerberos\"\n");
        let error = parse(&unknown_kind).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].auth") && error.contains("kerberos"),
            "{error}"
        );

        let typo = format!("{MINIMAL}\n[partners.auth]\nkind = \"bearer\"\ntokne = \"t\"\n");
        let error = parse(&typo).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].auth") && error.contains("tokne"),
            "{error}"
        );

        let empty = format!("{MINIMAL}\n[partners.auth]\nkind = \"bearer\"\ntoken = \"\"\n");
        let error = parse(&empty).unwrap_err().to_string();
        assert!(error.contains("partners[0].auth.token"), "{error}");

        let conflict = partner_with("headers = { \"Authorization\" = \"Bearer x\" }")
            + "\n[partners.auth]\nkind = \"bearer\"\ntoken = \"t\"\n";
        let error = parse(&conflict).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].headers.authorization"),
            "{error}"
        );
    }

    #[test]
    fn allow_networks_and_tls_files_are_checked_and_named() {
        let networks = partner_with("allow_networks = [\"127.0.0.0/8\", \"::1/128\"]");
        assert_eq!(
            parse(&networks).expect("valid").partners[0]
                .allow_networks
                .len(),
            2
        );
        let bad = partner_with("allow_networks = [\"localhost\"]");
        let error = parse(&bad).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].allow_networks") && error.contains("localhost"),
            "{error}"
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dispatcher.toml").display().to_string();
        std::fs::write(dir.path().join("not-a-cert.pem"), "hello").expect("write");
        for (keys, named) in [
            ("ca_bundle = \"missing.pem\"", "partners[0].ca_bundle"),
            ("ca_bundle = \"not-a-cert.pem\"", "partners[0].ca_bundle"),
            ("client_cert = \"not-a-cert.pem\"", "partners[0].client_key"),
            ("client_key = \"not-a-cert.pem\"", "partners[0].client_cert"),
            (
                "client_cert = \"not-a-cert.pem\"\nclient_key = \"not-a-cert.pem\"",
                "partners[0].client_cert",
            ),
        ] {
            let error = Config::parse(&partner_with(keys), &path, None, |_| None)
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{keys}: {error}");
        }
    }

    #[test]
    fn the_circuit_breaker_has_defaults_and_its_keys_are_checked() {
        let circuit = &parse(MINIMAL).expect("valid config").partners[0].circuit;
        assert_eq!(circuit.failures, 10);
        assert_eq!(circuit.cool_down, Duration::from_secs(30));

        let tuned =
            partner_with("circuit_breaker_failures = 3\ncircuit_breaker_cool_down = \"2m\"");
        let circuit = &parse(&tuned).expect("valid config").partners[0].circuit;
        assert_eq!(circuit.failures, 3);
        assert_eq!(circuit.cool_down, Duration::from_secs(120));

        for (keys, named) in [
            (
                "circuit_breaker_failures = 0",
                "partners[0].circuit_breaker_failures",
            ),
            (
                "circuit_breaker_failures = -1",
                "partners[0].circuit_breaker_failures",
            ),
            (
                "circuit_breaker_cool_down = \"0s\"",
                "partners[0].circuit_breaker_cool_down",
            ),
            (
                "circuit_breaker_cool_down = \"a while\"",
                "partners[0].circuit_breaker_cool_down",
            ),
        ] {
            let error = parse(&partner_with(keys)).unwrap_err().to_string();
            assert!(error.contains(named), "{keys}: {error}");
        }
    }
}
