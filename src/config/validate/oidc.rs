//! `[admin.oidc]`, validated: the provider's issuer (clear text only to this machine), the
//! client's credentials (the secret as `${ENV}` or `file:`), where the browser comes
//! back, and which groups hold which role.

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::duration;
use crate::config::database::is_loopback_host;
use crate::config::file::RawOidc;
use crate::config::identity::{OidcConfig, Role};
use crate::config::secrets::secret_text;
use crate::config::ConfigError;

/// The path of the sign-in callback on the admin server (`admin::oidc`).
pub const CALLBACK_PATH: &str = "/auth/callback";

/// A sign-in lasts a working day at most; the provider is asked again after it.
const MAX_SESSION: Duration = Duration::from_secs(24 * 60 * 60);

impl RawOidc {
    pub(super) fn validate(self, base_dir: &Path) -> Result<OidcConfig, ConfigError> {
        let key = |field: &str| format!("admin.oidc.{field}");
        web_url(&key("issuer"), &self.issuer)?;
        let issuer = self.issuer;
        if self.client_id.trim().is_empty() {
            return Err(ConfigError::key(key("client_id"), "must not be empty"));
        }
        let client_secret = secret_text(&key("client_secret"), self.client_secret, base_dir)?;
        if client_secret.is_empty() {
            return Err(ConfigError::key(key("client_secret"), "must not be empty"));
        }
        let redirect_url = web_url(&key("redirect_url"), &self.redirect_url)?;
        if redirect_url.path() != CALLBACK_PATH {
            return Err(ConfigError::key(
                key("redirect_url"),
                format!("must be this admin server's {CALLBACK_PATH}, as the browser reaches it"),
            ));
        }
        if self.groups_claim.trim().is_empty() {
            return Err(ConfigError::key(key("groups_claim"), "must not be empty"));
        }
        let session_lifetime = duration(&key("session_lifetime"), &self.session_lifetime)?;
        if session_lifetime > MAX_SESSION {
            return Err(ConfigError::key(
                key("session_lifetime"),
                "must be at most 24h",
            ));
        }
        let mut roles = Vec::new();
        for (name, groups) in self.roles {
            let role_key = key(&format!("roles.{name}"));
            let role: Role = name.parse().map_err(|_| {
                ConfigError::key(&role_key, "is not a role: use viewer, support or operator")
            })?;
            if groups.is_empty() || groups.iter().any(|group| group.trim().is_empty()) {
                return Err(ConfigError::key(
                    &role_key,
                    "must list the provider's group names that hold this role",
                ));
            }
            roles.push((role, groups));
        }
        if roles.is_empty() {
            return Err(ConfigError::key(
                key("roles"),
                "must map at least one role to the provider's groups, e.g. support = [\"dispatcher-support\"]",
            ));
        }
        roles.sort();
        Ok(OidcConfig {
            issuer,
            client_id: self.client_id,
            client_secret: SecretString::from(client_secret),
            redirect_url,
            scopes: self.scopes,
            groups_claim: self.groups_claim,
            roles,
            session_lifetime,
        })
    }
}

/// https://, or http:// to this machine (a provider or proxy beside the daemon).
fn web_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text)
        .map_err(|error| ConfigError::key(key, format!("not a valid URL: {error}")))?;
    match url.scheme() {
        "https" => {}
        "http" if url.host_str().is_some_and(is_loopback_host) => {}
        _ => {
            return Err(ConfigError::key(
                key,
                "must be https://, or http:// to a loopback address",
            ))
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::key(key, "must have no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::key(key, "must carry no user name or password"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use crate::config::identity::Role;
    use crate::config::testing::{parse, MINIMAL};

    const OIDC: &str = "[admin.oidc]
issuer = \"https://login.example.org/realms/helparound\"
client_id = \"dispatcher\"
client_secret = \"a-client-secret\"
redirect_url = \"https://dispatcher-admin.example.org/auth/callback\"
roles = { viewer = [\"everyone\"], support = [\"support-agents\"], operator = [\"dispatcher-ops\", \"sre\"] }
";

    #[test]
    fn groups_map_to_the_highest_role_they_hold() {
        let config = parse(&format!("{MINIMAL}\n{OIDC}")).expect("valid [admin.oidc]");
        let oidc = config.admin.oidc.expect("oidc");
        assert_eq!(oidc.groups_claim, "groups");
        assert_eq!(
            oidc.role_of(["everyone", "support-agents"]),
            Some(Role::Support)
        );
        assert_eq!(oidc.role_of(["sre"]), Some(Role::Operator));
        assert_eq!(oidc.role_of(["marketing"]), None);
        assert_eq!(oidc.role_of([]), None);
        assert!(!format!("{oidc:?}").contains("a-client-secret"));
    }

    #[test]
    fn a_wrong_oidc_setting_is_named() {
        for (from, to, named) in [
            (
                "https://login.example.org",
                "http://login.example.org",
                "admin.oidc.issuer",
            ),
            ("/auth/callback", "/callback", "admin.oidc.redirect_url"),
            ("viewer = ", "admins = ", "admin.oidc.roles.admins"),
            ("[\"everyone\"]", "[]", "admin.oidc.roles.viewer"),
            (
                "\"a-client-secret\"",
                "\"file:no-such-file\"",
                "admin.oidc.client_secret",
            ),
        ] {
            let error = parse(&format!("{MINIMAL}\n{}", OIDC.replacen(from, to, 1)))
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{to}: {error}");
            assert!(!error.contains("a-client-secret"), "{error}");
        }
    }
}
