//! Where secret values and files come from: `"${VAR}"` expanded from the environment in
//! every string of the file, `"file:PATH"` secrets, and PEM files, both read from beside
//! the config file. Errors name the key and the file, never a value.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::error::Problems;
use crate::config::{ConfigError, SECRET_FILE_PREFIX};

/// Replaces `${VAR}` inside every string value, so secrets can stay in the environment.
/// Every unset variable is noted in `problems`, each with its key; its string is left as
/// it was.
pub(super) fn expand_env(
    value: &mut toml::Value,
    key: &mut String,
    lookup_env: &impl Fn(&str) -> Option<String>,
    problems: &mut Problems,
) {
    match value {
        toml::Value::String(text) if text.contains("${") => {
            if let Some(expanded) = expand_string(text, key, lookup_env, problems) {
                *text = expanded;
            }
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = key.len();
                key.push_str(&format!("[{index}]"));
                expand_env(item, key, lookup_env, problems);
                key.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table.iter_mut() {
                let len = key.len();
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
                expand_env(item, key, lookup_env, problems);
                key.truncate(len);
            }
        }
        _ => {}
    }
}

/// `text` with its variables' values; `None` when one is unset, each such noted.
fn expand_string(
    text: &str,
    key: &str,
    lookup_env: &impl Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<String> {
    let mut expanded = String::with_capacity(text.len());
    let mut complete = true;
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        expanded.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            problems.note(ConfigError::key(key, "has `${` without a closing `}`"));
            return None;
        };
        let name = &after[..end];
        match lookup_env(name) {
            Some(value) => expanded.push_str(&value),
            None => {
                problems.note(ConfigError::key(
                    key,
                    format!("environment variable {name} is not set"),
                ));
                complete = false;
            }
        }
        rest = &after[end + 1..];
    }
    expanded.push_str(rest);
    complete.then_some(expanded)
}

/// A secret's value: as written (after `${VAR}` expansion), or the content of the file
/// named by `file:PATH`. Errors name the key and the file, never the value.
pub(super) fn secret_text(
    key: &str,
    value: String,
    base_dir: &Path,
) -> Result<String, ConfigError> {
    let Some(file) = value.strip_prefix(SECRET_FILE_PREFIX) else {
        return Ok(value);
    };
    let path = beside_config(base_dir, file);
    let content = std::fs::read_to_string(&path).map_err(|error| {
        ConfigError::key(
            key,
            format!("cannot read secret file {}: {error}", path.display()),
        )
    })?;
    // Files written by `echo` or editors end in a line break that is not part of the secret.
    let secret = content.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(ConfigError::key(
            key,
            format!("secret file {} is empty", path.display()),
        ));
    }
    Ok(secret.to_string())
}

pub(super) fn beside_config(base_dir: &Path, file: &str) -> PathBuf {
    base_dir.join(file)
}

pub(super) fn read_pem(key: &str, file: &str, base_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    let path = beside_config(base_dir, file);
    std::fs::read(&path)
        .map_err(|error| ConfigError::key(key, format!("cannot read {}: {error}", path.display())))
}

/// The certificates of a PEM file beside the config (at least one), for rustls.
pub(super) fn read_certificates(
    key: &str,
    file: &str,
    base_dir: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_pem(key, file, base_dir)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ConfigError::key(key, format!("is not valid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(ConfigError::key(key, "holds no PEM certificate"));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{parse, partner_with, MINIMAL};
    use crate::config::Config;

    #[test]
    fn env_references_are_expanded_and_missing_ones_named() {
        let text = MINIMAL.replace(
            "name = \"acme\"",
            "name = \"acme\"\nheaders = { \"x-api-key\" = \"${ACME_KEY}\" }",
        );
        let config = parse(&text).expect("valid config");
        let (name, value) = &config.partners[0].headers[0];
        assert_eq!(name.as_str(), "x-api-key");
        assert_eq!(secrecy::ExposeSecret::expose_secret(value), "key-123");

        let missing = text.replace("ACME_KEY", "NOT_SET_ANYWHERE");
        let error = parse(&missing).unwrap_err().to_string();
        assert!(
            error.contains("partners[0].headers.x-api-key") && error.contains("NOT_SET_ANYWHERE"),
            "{error}"
        );
    }

    #[test]
    fn secrets_can_come_from_files_beside_the_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("acme.key"), "key-from-file\r\n").expect("write");
        let path = dir.path().join("dispatcher.toml").display().to_string();
        let text = partner_with("headers = { \"x-api-key\" = \"file:acme.key\" }");
        let config = Config::parse(&text, &path, None, |_| None).expect("valid config");
        let (_, value) = &config.partners[0].headers[0];
        assert_eq!(secrecy::ExposeSecret::expose_secret(value), "key-from-file");

        let missing = text.replace("acme.key", "no-such.key");
        let error = Config::parse(&missing, &path, None, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("partners[0].headers.x-api-key") && error.contains("no-such.key"),
            "{error}"
        );
    }
}
