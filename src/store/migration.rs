//! One migration file read as the steps `dispatcher migrate` applies (`schema::migrate`
//! runs them).
//!
//! A file is one transaction, unless a line `-- dispatcher:no-transaction` splits it:
//! what comes before the marker runs in one transaction, each statement after it on its
//! own, outside any transaction. That is where an index on a large table is built
//! (`CREATE INDEX CONCURRENTLY`) or dropped (`DROP INDEX CONCURRENTLY`) without stopping
//! the enrollment flow's inserts or the daemon's writes; PostgreSQL refuses both inside a
//! transaction.
//!
//! A run can stop between two such statements (a cancel, a crash, a lost connection),
//! and the version is recorded only after the last one, so the next `migrate` runs the
//! whole file again: every statement after the marker must be one that does nothing the
//! second time (`IF NOT EXISTS`, `IF EXISTS`), and the statements before it must be too.
//! An interrupted `CREATE INDEX CONCURRENTLY` leaves an INVALID index behind, which `IF
//! NOT EXISTS` would take for done: the runner drops it and builds it again (which is why
//! such a build is a step of its own, [`Step::BuildIndex`]).
//!
//! Only statements that block no reader and no writer may follow the marker (they run
//! without `lock_timeout`, so they wait as long as they must): building and dropping an
//! index concurrently, renaming an index (a SHARE UPDATE EXCLUSIVE lock on the index
//! alone), and validating a constraint added `NOT VALID` (SHARE UPDATE EXCLUSIVE on the
//! table: it reads every row, blocking neither reads nor writes). Anything else is
//! refused when the file is read, which the tests below do for
//! every shipped file.

/// The line that ends a migration's transaction: each statement after it runs alone.
pub const NO_TRANSACTION: &str = "-- dispatcher:no-transaction";

/// What `dispatcher migrate` runs for one migration, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Statements run in one transaction, under `lock_timeout`.
    Transaction(&'a str),
    /// `CREATE INDEX CONCURRENTLY IF NOT EXISTS index ...`, outside a transaction; an
    /// INVALID `index` (left by an interrupted build) is dropped first.
    BuildIndex { index: String, sql: &'a str },
    /// Another statement that runs outside a transaction: an index dropped concurrently
    /// or renamed.
    Alone(&'a str),
}

/// Why a migration file cannot be applied as written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrationFileError {
    #[error("more than one `{NO_TRANSACTION}` line")]
    TwoMarkers,
    #[error(
        "statement {number} after `{NO_TRANSACTION}` is not `CREATE [UNIQUE] INDEX \
         CONCURRENTLY IF NOT EXISTS`, `DROP INDEX CONCURRENTLY IF EXISTS`, `ALTER INDEX IF \
         EXISTS ... RENAME TO` or `ALTER TABLE ... VALIDATE CONSTRAINT`: only these run \
         outside a transaction, blocking no insert and doing nothing when run again"
    )]
    NotOnline { number: usize },
    #[error("a quote or comment after `{NO_TRANSACTION}` is never closed")]
    Unterminated,
}

/// Reads a migration file into its steps.
pub fn steps(file: &str) -> Result<Vec<Step<'_>>, MigrationFileError> {
    let mut parts = split_at_marker(file);
    let (transactional, alone) = match (parts.next(), parts.next(), parts.next()) {
        (Some(before), after, None) => (before, after.unwrap_or("")),
        _ => return Err(MigrationFileError::TwoMarkers),
    };
    let mut steps = Vec::new();
    if !code_of(transactional).trim().is_empty() {
        steps.push(Step::Transaction(transactional));
    }
    for (index, statement) in statements(alone)?.into_iter().enumerate() {
        steps.push(classify(statement).ok_or(MigrationFileError::NotOnline { number: index + 1 })?);
    }
    Ok(steps)
}

/// The text before each marker line and after the last one.
fn split_at_marker(file: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(file);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            if line.trim() == NO_TRANSACTION {
                rest = Some(&text[offset + line.len()..]);
                return Some(&text[..offset]);
            }
            offset += line.len();
        }
        rest = None;
        Some(text)
    })
}

fn classify(statement: &str) -> Option<Step<'_>> {
    let code = code_of(statement).to_uppercase();
    let words: Vec<&str> = code.split_whitespace().collect();
    let create = match words.as_slice() {
        ["CREATE", "UNIQUE", "INDEX", rest @ ..] | ["CREATE", "INDEX", rest @ ..] => Some(rest),
        _ => None,
    };
    if let Some(["CONCURRENTLY", "IF", "NOT", "EXISTS", _, "ON", ..]) = create {
        // The name as written (the upper-cased copy is only for matching keywords).
        let code = code_of(statement);
        let original: Vec<&str> = code.split_whitespace().collect();
        let at = words.iter().position(|word| *word == "EXISTS")? + 1;
        // PostgreSQL folds a name that is not quoted to lower case.
        let name = original.get(at)?;
        let index = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => name.to_lowercase(),
        };
        return Some(Step::BuildIndex {
            index,
            sql: statement,
        });
    }
    match words.as_slice() {
        ["DROP", "INDEX", "CONCURRENTLY", "IF", "EXISTS", ..] => Some(Step::Alone(statement)),
        ["ALTER", "INDEX", "IF", "EXISTS", _, "RENAME", "TO", _, ..] => {
            Some(Step::Alone(statement))
        }
        // A constraint added `NOT VALID` in the transaction, checked against the rows
        // already there (SHARE UPDATE EXCLUSIVE: reads and writes go on).
        ["ALTER", "TABLE", _, "VALIDATE", "CONSTRAINT", _] => Some(Step::Alone(statement)),
        _ => None,
    }
}

/// The text with its comments blanked out (quoted text kept).
fn code_of(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    let mut lexer = Lexer::new(text);
    while let Some((c, in_comment)) = lexer.next_char() {
        code.push(if in_comment { ' ' } else { c });
    }
    code
}

/// The statements of `text`, split at each `;` outside quotes and comments, without
/// those that hold only comments.
fn statements(text: &str) -> Result<Vec<&str>, MigrationFileError> {
    let mut statements = Vec::new();
    let mut lexer = Lexer::new(text);
    let mut start = 0;
    while let Some((c, in_comment)) = lexer.next_char() {
        if c == ';' && !in_comment && lexer.state == State::Code {
            statements.push(&text[start..lexer.at]);
            start = lexer.at;
        }
    }
    if lexer.state != State::Code {
        return Err(MigrationFileError::Unterminated);
    }
    statements.push(&text[start..]);
    Ok(statements
        .into_iter()
        .filter(|statement| !code_of(statement).trim().is_empty())
        .map(str::trim)
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Code,
    LineComment,
    BlockComment,
    Quoted(char),
    DollarQuoted(String),
}

/// Walks SQL text a character at a time, knowing whether it is in a comment or a quote.
struct Lexer<'a> {
    text: &'a str,
    /// The byte offset just after the last character returned.
    at: usize,
    state: State,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Lexer<'a> {
        Lexer {
            text,
            at: 0,
            state: State::Code,
        }
    }

    /// The next character, and whether it belongs to a comment.
    fn next_char(&mut self) -> Option<(char, bool)> {
        let rest = &self.text[self.at..];
        let c = rest.chars().next()?;
        self.at += c.len_utf8();
        let after = &self.text[self.at..];
        let in_comment = match &self.state {
            State::Code => match c {
                '-' if after.starts_with('-') => {
                    self.state = State::LineComment;
                    true
                }
                '/' if after.starts_with('*') => {
                    self.state = State::BlockComment;
                    true
                }
                '\'' | '"' => {
                    self.state = State::Quoted(c);
                    false
                }
                '$' => {
                    if let Some(tag) = dollar_tag(rest) {
                        self.at += tag.len() - 1;
                        self.state = State::DollarQuoted(tag);
                    }
                    false
                }
                _ => false,
            },
            State::LineComment => {
                if c == '\n' {
                    self.state = State::Code;
                }
                true
            }
            State::BlockComment => {
                if c == '*' && after.starts_with('/') {
                    self.at += 1;
                    self.state = State::Code;
                }
                true
            }
            State::Quoted(quote) => {
                // A doubled quote is a quote inside the text.
                if c == *quote {
                    if after.starts_with(*quote) {
                        self.at += quote.len_utf8();
                    } else {
                        self.state = State::Code;
                    }
                }
                false
            }
            State::DollarQuoted(tag) => {
                if c == '$' && rest.starts_with(tag.as_str()) {
                    self.at += tag.len() - 1;
                    self.state = State::Code;
                }
                false
            }
        };
        Some((c, in_comment))
    }
}

/// `$tag$` (or `$$`) at the start of `text`: a dollar quote's opening.
fn dollar_tag(text: &str) -> Option<String> {
    let inner = text.strip_prefix('$')?;
    let end = inner.find('$')?;
    let tag = &inner[..end];
    let mut chars = tag.chars();
    let valid = match chars.next() {
        None => true,
        Some(first) => {
            (first.is_alphabetic() || first == '_')
                && chars.all(|c| c.is_alphanumeric() || c == '_')
        }
    };
    valid.then(|| format!("${tag}$"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::MIGRATIONS;

    #[test]
    fn a_file_without_the_marker_is_one_transaction() {
        let file = "-- a comment\nCREATE TABLE t (a int);\nCREATE INDEX i ON t (a);\n";
        assert_eq!(steps(file), Ok(vec![Step::Transaction(file)]));
    }

    #[test]
    fn after_the_marker_each_statement_runs_alone_and_builds_name_their_index() {
        let file = "ALTER TABLE t ADD COLUMN IF NOT EXISTS b int;\n\
                    -- dispatcher:no-transaction\n\
                    -- the index for b; a comment with a ; in it\n\
                    CREATE INDEX CONCURRENTLY IF NOT EXISTS t_b ON s.t (b) WHERE b <> ';';\n\
                    DROP INDEX CONCURRENTLY IF EXISTS s.t_old;\n\
                    ALTER INDEX IF EXISTS s.t_b RENAME TO t_old;\n\
                    ALTER TABLE s.t VALIDATE CONSTRAINT t_b_positive;\n";
        assert_eq!(
            steps(file),
            Ok(vec![
                Step::Transaction("ALTER TABLE t ADD COLUMN IF NOT EXISTS b int;\n"),
                Step::BuildIndex {
                    index: "t_b".into(),
                    sql: "-- the index for b; a comment with a ; in it\n\
                          CREATE INDEX CONCURRENTLY IF NOT EXISTS t_b ON s.t (b) WHERE b <> ';';"
                },
                Step::Alone("DROP INDEX CONCURRENTLY IF EXISTS s.t_old;"),
                Step::Alone("ALTER INDEX IF EXISTS s.t_b RENAME TO t_old;"),
                Step::Alone("ALTER TABLE s.t VALIDATE CONSTRAINT t_b_positive;"),
            ])
        );
    }

    #[test]
    fn a_file_that_starts_with_the_marker_has_no_transaction() {
        let file = "-- dispatcher:no-transaction\n\
                    CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"u\" ON t (a);";
        assert_eq!(
            steps(file),
            Ok(vec![Step::BuildIndex {
                index: "u".into(),
                sql: "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"u\" ON t (a);"
            }])
        );
    }

    #[test]
    fn only_statements_that_block_nobody_and_can_run_twice_may_follow_the_marker() {
        for refused in [
            // Would fail the second time, or leave an INVALID index IF NOT EXISTS skips.
            "CREATE INDEX CONCURRENTLY i ON t (a);",
            "DROP INDEX CONCURRENTLY i;",
            "ALTER INDEX i RENAME TO j;",
            // Blocks the table's writers (SHARE) or everyone (ACCESS EXCLUSIVE).
            "CREATE INDEX IF NOT EXISTS i ON t (a);",
            "DROP INDEX IF EXISTS i;",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS b int;",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);",
        ] {
            let file = format!("{NO_TRANSACTION}\nDROP INDEX CONCURRENTLY IF EXISTS x;\n{refused}");
            assert_eq!(
                steps(&file),
                Err(MigrationFileError::NotOnline { number: 2 }),
                "{refused}"
            );
        }
        let twice = format!("{NO_TRANSACTION}\n{NO_TRANSACTION}\n");
        assert_eq!(steps(&twice), Err(MigrationFileError::TwoMarkers));
        let open = format!("{NO_TRANSACTION}\nDROP INDEX CONCURRENTLY IF EXISTS \"x;");
        assert_eq!(steps(&open), Err(MigrationFileError::Unterminated));
    }

    #[test]
    fn quotes_and_dollar_quotes_hide_semicolons_and_comment_marks() {
        let text = "SELECT 'a;--b''c;'; SELECT $f$ ; -- $f$; SELECT $1; /* ; */ SELECT \"x;\"";
        assert_eq!(
            statements(text),
            Ok(vec![
                "SELECT 'a;--b''c;';",
                "SELECT $f$ ; -- $f$;",
                "SELECT $1;",
                "/* ; */ SELECT \"x;\""
            ])
        );
    }

    #[test]
    fn every_shipped_migration_reads() {
        for (version, file) in MIGRATIONS {
            let steps = steps(file).unwrap_or_else(|error| panic!("migration {version}: {error}"));
            assert!(!steps.is_empty(), "migration {version} does nothing");
        }
    }
}
