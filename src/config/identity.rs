//! Who may use the admin server, as plain data: the roles, and `[admin.oidc]` (the
//! company's identity provider and which of its groups hold which role). Below `store`,
//! `admin` and `cli`, which all speak of roles.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use url::Url;

/// What a person or a script may do on the admin server. Each role can do what the one
/// before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The lists and the charts, without the partners' answers.
    Viewer,
    /// Also the partners' answers and what was sent; resend and cancel one delivery.
    Support,
    /// Also bulk actions, the audit trail and API tokens.
    Operator,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Support, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Support => "support",
            Role::Operator => "operator",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown role: expected viewer, support or operator")]
pub struct UnknownRole;

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or(UnknownRole)
    }
}

/// `[admin.oidc]`: sign-in through the company's OpenID Provider (authorization code with
/// PKCE), roles from the provider's groups.
#[derive(Clone)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as the provider writes it (ID tokens must name
    /// it so; a URL type would add a `/` to a bare host); its discovery document is
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Where the provider sends the browser back: this server's `/auth/callback`, as the
    /// browser reaches it (registered with the provider).
    pub redirect_url: Url,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The ID token claim that lists the user's groups.
    pub groups_claim: String,
    /// Which groups hold which role; a user in several gets the highest.
    pub roles: Vec<(Role, Vec<String>)>,
    /// How long a sign-in lasts.
    pub session_lifetime: Duration,
}

impl OidcConfig {
    /// The highest role any of `groups` holds.
    pub fn role_of<'a>(&self, groups: impl IntoIterator<Item = &'a str> + Clone) -> Option<Role> {
        self.roles
            .iter()
            .filter(|(_, names)| {
                groups
                    .clone()
                    .into_iter()
                    .any(|group| names.iter().any(|name| name == group))
            })
            .map(|(role, _)| *role)
            .max()
    }
}

impl PartialEq for OidcConfig {
    fn eq(&self, other: &Self) -> bool {
        self.issuer == other.issuer
            && self.client_id == other.client_id
            && self.client_secret.expose_secret() == other.client_secret.expose_secret()
            && self.redirect_url == other.redirect_url
            && self.scopes == other.scopes
            && self.groups_claim == other.groups_claim
            && self.roles == other.roles
            && self.session_lifetime == other.session_lifetime
    }
}

impl fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("redirect_url", &self.redirect_url.as_str())
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .field("roles", &self.roles)
            .field("session_lifetime", &self.session_lifetime)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_can_do_what_the_one_before_it_can() {
        assert!(Role::Operator.allows(Role::Support));
        assert!(Role::Support.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Support));
        assert!(!Role::Support.allows(Role::Operator));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().ok(), Some(role));
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
