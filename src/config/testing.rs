//! What the configuration's unit tests share: a minimal valid file, and how they parse.

use crate::config::{Config, ConfigError};

pub(crate) const MINIMAL: &str = r#"
        [database]
        url = "postgres://dispatcher@127.0.0.1/dispatcher"

        [[partners]]
        name = "acme"
        support_programs = ["prog-1"]
        enrollment_url = "https://crm.example/enroll"
        user_action_url = "https://crm.example/action"
    "#;

/// Parses `text` as a file with nothing beside it, where `${ACME_KEY}` is `key-123`.
pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", None, |name| {
        (name == "ACME_KEY").then(|| "key-123".to_string())
    })
}

/// MINIMAL's partner with extra keys (before any sub-table).
pub(crate) fn partner_with(keys: &str) -> String {
    MINIMAL.replace("name = \"acme\"", &format!("name = \"acme\"\n{keys}"))
}
