//! Reading `dispatcher.toml`, in the steps that let every error name its key: TOML
//! syntax, then `${VAR}` expansion ([`secrets`]) and the serde mirror ([`file`]), then
//! every value ([`validate`]), with every problem a step can find noted in one run.

use std::path::Path;

use super::error::{ConfigError, Problems};
use super::{file, secrets, Config, DatabaseConfig, SupportConfig, DATABASE_URL_ENV};

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
        match raw {
            // Values are checked once every variable is set: an unset one is named already.
            Some(raw) if problems.is_empty() => raw
                .validate(env_database_url, &base_dir(path))
                .map_err(|problems| problems.into_error(path)),
            _ => Err(problems.into_error(path)),
        }
    }
}

impl DatabaseConfig {
    /// Only `[database]` of the config file, for what reads the database and sends
    /// nothing (`dispatcher deliveries`): no partner's secret is looked up, so one unset
    /// does not stop support. `url` (`--database-url`), then `DISPATCHER_DATABASE_URL`,
    /// override `[database] url`; with one of them the file may be absent.
    pub fn load(path: &Path, url: Option<String>) -> Result<DatabaseConfig, ConfigError> {
        let url = url.or_else(|| std::env::var(DATABASE_URL_ENV).ok());
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && url.is_some() => {
                String::new()
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        DatabaseConfig::parse(&text, &path.display().to_string(), url, |name| {
            std::env::var(name).ok()
        })
    }

    /// Reads `[database]` of config text; `url` overrides its `url`, which is then not
    /// expanded (its variable may be unset).
    pub fn parse(
        text: &str,
        path: &str,
        url: Option<String>,
        lookup_env: impl Fn(&str) -> Option<String>,
    ) -> Result<DatabaseConfig, ConfigError> {
        let mut database = table_of(text, path, "database")?;
        if let (Some(toml::Value::Table(table)), Some(_)) = (&mut database, &url) {
            table.remove("url");
        }
        let mut problems = Problems::default();
        if let Some(table) = &mut database {
            secrets::expand_env(
                table,
                &mut "database".to_string(),
                &lookup_env,
                &mut problems,
            );
        }
        let raw = problems.check(file::read_database(database));
        match raw {
            Some(raw) if problems.is_empty() => {
                raw.validate(url, &base_dir(path)).map_err(|problem| {
                    problems.note(problem);
                    problems.into_error(path)
                })
            }
            _ => Err(problems.into_error(path)),
        }
    }
}

impl SupportConfig {
    /// Only `[support]` of the config file, for `dispatcher deliveries` beside
    /// [`DatabaseConfig::load`]: its list and show read the standby named there. A file
    /// that is absent names none.
    pub fn load(path: &Path) -> Result<SupportConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SupportConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        SupportConfig::parse(&text, &path.display().to_string(), |name| {
            std::env::var(name).ok()
        })
    }

    /// Reads `[support]` of config text.
    pub fn parse(
        text: &str,
        path: &str,
        lookup_env: impl Fn(&str) -> Option<String>,
    ) -> Result<SupportConfig, ConfigError> {
        let mut support = table_of(text, path, "support")?;
        let mut problems = Problems::default();
        if let Some(table) = &mut support {
            secrets::expand_env(
                table,
                &mut "support".to_string(),
                &lookup_env,
                &mut problems,
            );
        }
        match problems.check(file::read_support(support)) {
            Some(raw) if problems.is_empty() => raw.validate(&base_dir(path)).map_err(|problem| {
                problems.note(problem);
                problems.into_error(path)
            }),
            _ => Err(problems.into_error(path)),
        }
    }
}

/// One table of config text, unread: `None` when the file has none.
fn table_of(text: &str, path: &str, name: &str) -> Result<Option<toml::Value>, ConfigError> {
    let document: toml::Value = toml::from_str(text).map_err(|error| ConfigError::Syntax {
        path: path.to_string(),
        message: error.message().to_string(),
    })?;
    Ok(match document {
        toml::Value::Table(mut table) => table.remove(name),
        _ => None,
    })
}

/// Where relative file names (TLS files, secret files) are read from: beside the config.
fn base_dir(path: &str) -> std::path::PathBuf {
    Path::new(path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[database]
url = "${DISPATCHER_DATABASE_URL}"
pool_size = 2

[[partners]]
name = "acme"
support_programs = ["p"]
enrollment_url = "https://acme.example/e"
user_action_url = "https://acme.example/u"
signing_secret = "${ACME_SIGNING_SECRET}"
"#;

    #[test]
    fn support_reads_the_database_without_the_partners_secrets() {
        let env = |name: &str| {
            (name == "DISPATCHER_DATABASE_URL").then(|| "postgres://support@db/dispatcher".into())
        };
        let database = DatabaseConfig::parse(FILE, "dispatcher.toml", None, env).expect("read");
        assert_eq!(database.pool_size, 2);
        // The whole file still names the unset secret.
        let error = Config::parse(FILE, "dispatcher.toml", None, env)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("ACME_SIGNING_SECRET"), "{error}");
    }

    #[test]
    fn a_url_given_overrides_the_files_and_its_unset_variable() {
        let url = Some("postgres://support@db/dispatcher".to_string());
        let database =
            DatabaseConfig::parse(FILE, "dispatcher.toml", url.clone(), |_| None).expect("read");
        assert_eq!(database.connection.remote_hosts(), ["db"]);
        let database = DatabaseConfig::parse("", "absent.toml", url, |_| None).expect("no file");
        assert_eq!(database.pool_size, 8);
        let error = DatabaseConfig::parse(FILE, "dispatcher.toml", None, |_| None)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("DISPATCHER_DATABASE_URL"), "{error}");
    }

    #[test]
    fn support_reads_the_standby_of_the_support_table_alone() {
        let file = format!("{FILE}\n[support]\ndatabase_url = \"${{STANDBY_URL}}\"\n");
        let env = |name: &str| {
            (name == "STANDBY_URL")
                .then(|| "postgres://support:pw@standby.internal/dispatcher".into())
        };
        let support = SupportConfig::parse(&file, "dispatcher.toml", env).expect("read");
        let standby = support.standby.expect("a standby");
        assert_eq!(standby.connection.remote_hosts(), ["standby.internal"]);
        let none = SupportConfig::parse(FILE, "dispatcher.toml", |_| None).expect("read");
        assert!(none.standby.is_none());
        let error = SupportConfig::parse(&file, "dispatcher.toml", |_| None)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("STANDBY_URL"), "{error}");
        let absent = SupportConfig::load(Path::new("/nonexistent/dispatcher.toml"));
        assert!(absent.expect("no file, no standby").standby.is_none());
    }
}
