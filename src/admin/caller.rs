//! Who is asking: the page's and the API's authentication (`session.rs`) put a
//! [`Caller`] in every request they let through; `allowed.rs` checks its role against
//! what a handler needs. A plain type, below the admin server's state, which records it.

use crate::config::identity::Role;
use crate::store::audit::Via;

/// Who made a request, as authenticated.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The name the record shows: the provider's user name, `token:<name>`,
    /// `<name> (break-glass)`, or, on an open (loopback-only) server, `loopback` or the
    /// API's `X-Actor`.
    pub actor: String,
    /// The provider's subject id, or the API token's id.
    pub subject: Option<String>,
    pub role: Role,
    pub via: Via,
}

impl Caller {
    /// The name recorded with a resend or cancel (`page:…`, `api:…`).
    pub(crate) fn support_actor(&self) -> String {
        format!("{}:{}", self.via.as_str(), self.actor)
    }

    /// Whether this caller sees partners' answers (which may echo patient data).
    pub(crate) fn sees_answers(&self) -> bool {
        self.role.allows(Role::Support)
    }
}
