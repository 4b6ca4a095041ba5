//! What is wrong with a configuration file, and every problem of it found in one run: a
//! newcomer with six unset variables, or ops with two partners wrong, fix them in one
//! round instead of one per run. A step that does not read another's result notes its
//! problem in [`Problems`], and the next step runs all the same; a step that does read
//! one waits until it is sound.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    /// Every problem one run found (see `Problems`), each a `Key` error.
    #[error(fmt = list)]
    Many {
        path: String,
        problems: Vec<ConfigError>,
    },
}

impl ConfigError {
    pub(super) fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The problems found so far, in the order the steps ran.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<ConfigError>);

impl Problems {
    /// A step's value; or `None`, its problem noted.
    pub(super) fn check<T>(&mut self, step: Result<T, ConfigError>) -> Option<T> {
        step.map_err(|problem| self.note(problem)).ok()
    }

    pub(super) fn note(&mut self, problem: ConfigError) {
        self.0.push(problem);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The error of the file at `path`: a lone problem reads as it does alone, several
    /// come under their count.
    pub(super) fn into_error(mut self, path: &str) -> ConfigError {
        match self.0.len() {
            1 => self.0.remove(0),
            _ => ConfigError::Many {
                path: path.to_string(),
                problems: self.0,
            },
        }
    }
}

/// [`ConfigError::Many`]: "3 problems in PATH:", then one a line, so ops see how many
/// there are; with `{:#}`, all on one line, for a log line.
pub(super) fn list(
    path: &str,
    problems: &[ConfigError],
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    write!(f, "{} problems in {path}:", problems.len())?;
    for (index, problem) in problems.iter().enumerate() {
        match (f.alternate(), index) {
            (false, _) => write!(f, "\n  {problem}")?,
            (true, 0) => write!(f, " {problem}")?,
            (true, _) => write!(f, "; {problem}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{parse, MINIMAL};
    use crate::config::Config;

    /// The sample's `${VAR}`s, each with the key it sits in, in the order they are named:
    /// the file's own order (the document keeps it), so ops read them top to bottom.
    const SAMPLE_VARIABLES: [(&str, &str); 6] = [
        ("database.url", "DISPATCHER_DATABASE_URL"),
        ("admin.token", "DISPATCHER_ADMIN_TOKEN"),
        ("partners[0].signing_secret", "ACME_SIGNING_SECRET"),
        ("partners[0].headers.x-api-key", "ACME_API_KEY"),
        ("partners[1].signing_secret", "GLOBEX_SIGNING_SECRET"),
        ("partners[1].auth.client_secret", "GLOBEX_CLIENT_SECRET"),
    ];

    #[test]
    fn the_copied_sample_names_every_unset_variable_at_once() {
        let text = include_str!("../../dispatcher.sample.toml");
        let error = Config::parse(text, "dispatcher.toml", None, |_| None)
            .unwrap_err()
            .to_string();
        let mut lines = error.lines();
        assert_eq!(
            lines.next(),
            Some("6 problems in dispatcher.toml:"),
            "{error}"
        );
        for ((key, variable), line) in SAMPLE_VARIABLES.iter().zip(lines) {
            assert_eq!(
                line,
                format!("  config key `{key}`: environment variable {variable} is not set"),
                "{error}"
            );
        }
        assert_eq!(error.lines().count(), 7, "{error}");
    }

    #[test]
    fn independent_tables_and_partners_report_together() {
        let acme = &MINIMAL[MINIMAL.find("[[partners]]").unwrap_or(0)..];
        let beta = acme
            .replace("\"acme\"", "\"beta\"")
            .replace("https://crm.example/action", "ftp://crm.example/action");
        let text = format!(
            "{}\n{beta}\n{acme}\n[retry]\nmax_attempts = 0\n",
            MINIMAL.replace("https://crm.example/enroll", "http://crm.example/enroll")
        );
        let error = parse(&text).unwrap_err().to_string();
        assert_eq!(
            error,
            "4 problems in test.toml:\n  \
             config key `retry.max_attempts`: must be at least 1\n  \
             config key `partners[0].enrollment_url`: must be https:// (patient data never \
             travels in clear text); set allow_insecure = true only for local testing\n  \
             config key `partners[1].user_action_url`: scheme `ftp` is not supported; use \
             https://\n  \
             config key `partners[2].name`: partner `acme` is configured twice"
        );
    }

    #[test]
    fn one_problem_reads_as_it_always_has() {
        let text = format!("{MINIMAL}\n[retry]\nmax_attempts = 0\n");
        let error = parse(&text).unwrap_err().to_string();
        assert_eq!(error, "config key `retry.max_attempts`: must be at least 1");
    }

    #[test]
    fn unset_variables_and_unknown_keys_are_named_together_and_values_wait_for_both() {
        let text = MINIMAL
            .replace(
                "name = \"acme\"",
                "name = \"acme\"\ncolour = \"red\"\nsigning_secret = \"${UNSET_SECRET}\"",
            )
            .replace("https://crm.example/enroll", "http://${UNSET_HOST}/enroll");
        let error = parse(&text).unwrap_err().to_string();
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(lines.len(), 4, "{error}");
        assert_eq!(
            lines[..3],
            [
                "3 problems in test.toml:",
                "  config key `partners[0].signing_secret`: environment variable UNSET_SECRET is not set",
                "  config key `partners[0].enrollment_url`: environment variable UNSET_HOST is not set",
            ],
            "{error}"
        );
        assert!(
            lines[3].starts_with("  config key `partners[0].colour`: unknown field `colour`"),
            "{error}"
        );
    }

    #[test]
    fn a_log_line_gets_them_all_on_one_line() {
        let text = format!(
            "{}\n[retry]\nmax_attempts = 0\n",
            MINIMAL.replace("https://crm.example/enroll", "ftp://crm.example/enroll")
        );
        let error = parse(&text).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "2 problems in test.toml: config key `retry.max_attempts`: must be at least 1; \
             config key `partners[0].enrollment_url`: scheme `ftp` is not supported; use https://"
        );
    }
}
