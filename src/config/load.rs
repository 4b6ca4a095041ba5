//! Reading `dispatcher.toml`, in the steps that let every error name its key: TOML
//! syntax, then `${VAR}` expansion ([`secrets`]) and the serde mirror ([`file`]), then
//! every value ([`validate`]), with every problem a step can find noted in one run.

use std::path::Path;

use super::error::{ConfigError, Problems};
use super::{file, secrets, Config, DATABASE_URL_ENV};

impl Config {
    /// Reads and validates the config file; `DISPATCHER_DATABASE_URL` overrides `[database] url`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let env_database_url = std::env::var(DATABASE_URL_ENV).ok();
        Config::parse(
            &text,
            &path.display().to_string(),
            env_database_url,
            |name| std::env::var(name).ok(),
        )
    }

    /// Parses config text; `lookup_env` resolves `${VAR}` references.
    pub fn parse(
        text: &str,
        path: &str,
        env_database_url: Option<String>,
        lookup_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut document: toml::Value =
            toml::from_str(text).map_err(|error| ConfigError::Syntax {
                path: path.to_string(),
                message: error.message().to_string(),
            })?;
        let mut problems = Problems::default();
        secrets::expand_env(
            &mut document,
            &mut String::new(),
            &lookup_env,
            &mut problems,
        );
        // The file's keys do not hang on the variables' values: an unknown one is named too.
        let raw = problems.check(file::read(document));
        // Relative file names (TLS files, secret files) are read from beside the config.
        let base_dir = Path::new(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match raw {
            // Values are checked once every variable is set: an unset one is named already.
            Some(raw) if problems.is_empty() => raw
                .validate(env_database_url, &base_dir)
                .map_err(|problems| problems.into_error(path)),
            _ => Err(problems.into_error(path)),
        }
    }
}
