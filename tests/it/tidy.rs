//! The house rules `cargo build` cannot see, read from `src/` as text (rust-analyzer's
//! `tidy` test is the model): a folder imports only the layers the code map allows it, SQL
//! is written only in the store, tasks are started only where ARCHITECTURE.md says, only
//! the store names the database driver, every file opens with its `//!` comment, and none
//! passes 500 lines of code. A failure names the file and line of each breach.
//!
//! The rules are read from ARCHITECTURE.md itself: the arrows from the code map's table
//! and the places that may start tasks from the "Only the daemon spawns" invariant, so the
//! document and this test cannot drift apart. To change a rule, change the document. The
//! two places that may name the driver are a constant here ([`DRIVER_PLACES`]), as the
//! store's paragraph in ARCHITECTURE.md names them.
//!
//! `src/` is read as text with comments and the insides of literals set aside (a doc
//! comment may name any layer, a log line may say "LISTEN"), not parsed as Rust: what
//! these rules need is paths, calls and string literals, and a small scanner keeps the
//! test free of a parser dependency. The `a_*` tests at the bottom show that each rule
//! catches what it is for.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Past this many lines of code (blank lines, comments and the unit tests aside) a file
/// holds more than one thing.
const MAX_CODE_LINES: usize = 500;

/// The one folder that may hold SQL (ARCHITECTURE.md: "All SQL lives in `store/`").
const SQL_PLACE: &str = "store/";

#[test]
fn every_folder_imports_only_the_layers_the_code_map_allows() {
    let map = CodeMap::read();
    let findings = sources()
        .iter()
        .flat_map(|file| map.wrong_imports(file))
        .collect();
    assert_none(
        "imports the code map does not allow (ARCHITECTURE.md, Code map)",
        findings,
    );
}

#[test]
fn the_code_map_has_a_row_for_every_module_of_src_and_no_other() {
    let map = CodeMap::read();
    let mut in_src = BTreeSet::new();
    for entry in std::fs::read_dir(src()).expect("src/ is readable") {
        let name = entry.expect("src/ is readable").file_name();
        let name = name.to_string_lossy();
        if name != "lib.rs" {
            in_src.insert(layer_name(&name).to_owned());
        }
    }
    let in_map: BTreeSet<String> = map.layers.iter().map(|l| l.name.clone()).collect();
    assert_eq!(
        in_src, in_map,
        "ARCHITECTURE.md's code map must have one row per folder or file at the top of src/"
    );
}

#[test]
fn sql_is_written_only_in_the_store() {
    let findings = sources()
        .iter()
        .filter(|file| !file.path.starts_with(SQL_PLACE))
        .flat_map(sql_statements)
        .collect();
    assert_none(
        "SQL outside store/ (ARCHITECTURE.md: \"All SQL lives in `store/`\")",
        findings,
    );
}

/// The places that may name the PostgreSQL driver: the store, which owns the database,
/// and `config/database/`, which reads `database.url` with the driver's own parser so
/// that `check` refuses a URL the driver would read differently (an `sslmode` downgrade).
const DRIVER_PLACES: &[&str] = &["store/", "config/database/"];

#[test]
fn only_the_store_names_the_database_driver() {
    let findings = sources()
        .iter()
        .filter(|file| {
            !DRIVER_PLACES
                .iter()
                .any(|place| file.path.starts_with(place))
        })
        .flat_map(driver_names)
        .collect();
    assert_none(
        "the PostgreSQL driver named outside store/ (ARCHITECTURE.md: \"Only `store/` names the driver\")",
        findings,
    );
}

#[test]
fn tasks_and_runtimes_are_started_only_where_the_code_map_says() {
    let places = spawn_places(&architecture());
    for place in &places {
        assert!(
            src().join(place).exists(),
            "ARCHITECTURE.md's \"Only the daemon spawns\" names `{place}`, which is not in src/"
        );
    }
    let findings = sources()
        .iter()
        .filter(|file| {
            !places
                .iter()
                .any(|place| file.path.starts_with(place.as_str()))
        })
        .flat_map(task_starts)
        .collect();
    assert_none(
        &format!(
            "a task or runtime started outside {} (ARCHITECTURE.md: \"Only the daemon spawns\")",
            places.join(", ")
        ),
        findings,
    );
}

#[test]
fn every_file_opens_with_its_doc_comment() {
    let findings = sources().iter().filter_map(missing_doc_opening).collect();
    assert_none(
        "files that do not open with a `//!` comment saying what they hold",
        findings,
    );
}

#[test]
fn no_file_passes_500_lines_of_code() {
    let findings = sources()
        .iter()
        .filter_map(|file| {
            let lines = code_lines(file);
            (lines > MAX_CODE_LINES).then(|| {
                let what = format!(
                    "{lines} lines of code, more than {MAX_CODE_LINES}: split it where its concerns part"
                );
                Finding::new(file, 1, what)
            })
        })
        .collect();
    assert_none("files past 500 lines of code, unit tests aside", findings);
}

// ---- the rules, over one file ----

/// A breach of a rule: where, and what.
struct Finding {
    file: String,
    line: usize,
    what: String,
}

impl Finding {
    fn new(file: &SourceFile, line: usize, what: String) -> Finding {
        Finding {
            file: file.path.clone(),
            line,
            what,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "src/{}:{}: {}", self.file, self.line, self.what)
    }
}

fn assert_none(rule: &str, findings: Vec<Finding>) {
    if !findings.is_empty() {
        let list: Vec<String> = findings.iter().map(ToString::to_string).collect();
        panic!("{rule}:\n{}\n", list.join("\n"));
    }
}

/// One layer of the code map, by its name in `src/` (`store`, `shutdown`, `main`).
struct Layer {
    name: String,
    imports: BTreeSet<String>,
}

/// ARCHITECTURE.md's code map: the layers from the bottom up, each with what it imports.
struct CodeMap {
    layers: Vec<Layer>,
}

impl CodeMap {
    fn read() -> CodeMap {
        CodeMap::parse(&architecture())
    }

    /// The table under "## Code map": a row per layer, its name in backticks in the first
    /// column and the layers it imports, in backticks, in the second. A layer may import
    /// only layers of the rows above it, so the table itself points downwards.
    fn parse(doc: &str) -> CodeMap {
        let table = doc
            .lines()
            .skip_while(|line| line.trim() != "## Code map")
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'));
        let mut layers: Vec<Layer> = Vec::new();
        // The header and the line under it.
        for row in table.skip(2) {
            let cells: Vec<&str> = row.split('|').collect();
            let [_, layer, imports, ..] = cells[..] else {
                panic!("ARCHITECTURE.md's code map: a row without two columns: {row}");
            };
            let name = match &backticked(layer)[..] {
                [name] => layer_name(name).to_owned(),
                _ => panic!("ARCHITECTURE.md's code map: a row must name one layer: {row}"),
            };
            let imports: BTreeSet<String> = backticked(imports)
                .iter()
                .map(|import| layer_name(import).to_owned())
                .collect();
            for import in &imports {
                assert!(
                    layers.iter().any(|below| &below.name == import),
                    "ARCHITECTURE.md's code map: `{name}` imports `{import}`, which is not a \
                     layer of the rows above it (imports only run downwards)"
                );
            }
            layers.push(Layer { name, imports });
        }
        assert!(
            !layers.is_empty(),
            "ARCHITECTURE.md has no code map table under \"## Code map\""
        );
        CodeMap { layers }
    }

    /// The imports in `file` that point at a layer its row does not list.
    fn wrong_imports(&self, file: &SourceFile) -> Vec<Finding> {
        // The crate root only declares the layers.
        if file.path == "lib.rs" {
            return Vec::new();
        }
        let own = layer_name(&file.path);
        let Some(layer) = self.layers.iter().find(|layer| layer.name == own) else {
            return vec![Finding::new(
                file,
                1,
                format!("`{own}` has no row in the code map"),
            )];
        };
        imported_layers(file)
            .into_iter()
            .filter(|(_, target)| *target != layer.name && !layer.imports.contains(target))
            .map(|(line, target)| {
                let what = if self.layers.iter().any(|l| l.name == target) {
                    format!(
                        "`{own}` imports `{target}`; the code map lets it import only {}",
                        listed(&layer.imports)
                    )
                } else {
                    format!("`{own}` imports `{target}`, which is not a layer of the code map")
                };
                Finding::new(file, line, what)
            })
            .collect()
    }
}

fn listed(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        return "nothing of ours".into();
    }
    let names: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    names.join(", ")
}

/// `store/queue.rs` → `store`, `shutdown.rs` → `shutdown`, `daemon/` → `daemon`.
fn layer_name(path: &str) -> &str {
    let first = path.split('/').next().unwrap_or(path);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// The words in backticks in a piece of Markdown.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The places ARCHITECTURE.md's "Only the daemon spawns" invariant names, as paths in
/// `src/` (`daemon/`, `shutdown.rs`, ...): the paths in backticks in its paragraph.
fn spawn_places(doc: &str) -> Vec<String> {
    let mut lines = doc
        .lines()
        .skip_while(|line| !line.contains("**Only the daemon spawns.**"));
    let first = lines
        .next()
        .expect("ARCHITECTURE.md has the invariant \"**Only the daemon spawns.**\"");
    let paragraph = std::iter::once(first)
        .chain(lines.take_while(|line| line.starts_with("  ")))
        .collect::<Vec<_>>()
        .join(" ");
    let places: Vec<String> = backticked(&paragraph)
        .into_iter()
        .filter(|word| word.ends_with('/') || word.ends_with(".rs"))
        .map(str::to_owned)
        .collect();
    assert!(
        !places.is_empty(),
        "\"Only the daemon spawns\" names no place in src/"
    );
    places
}

/// The layers `file` names: `crate::x` paths (and each `x` of `crate::{x, y::z}`), the
/// `super::` paths that climb out of the file's layer, and, in `main.rs`, the library's
/// `dispatcher::x` paths. Returns (line, layer).
fn imported_layers(file: &SourceFile) -> Vec<(usize, String)> {
    let tokens = tokens(&file.scanned.code);
    let (root, mut module) = if file.path == "main.rs" {
        ("dispatcher", Vec::new())
    } else {
        ("crate", file_module(&file.path))
    };
    // Inline modules (`mod tests { ... }`) by the brace depth they close at.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0;
    let mut found = Vec::new();
    for (k, token) in tokens.iter().enumerate() {
        let is = |offset: usize, text: &str| tokens.get(k + offset).is_some_and(|t| t.text == text);
        match token.text.as_str() {
            "{" => {
                depth += 1;
                if k >= 2 && tokens[k - 2].text == "mod" && is_ident(&tokens[k - 1].text) {
                    module.push(tokens[k - 1].text.clone());
                    inline.push(depth);
                }
            }
            "}" => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                    module.pop();
                }
                depth -= 1;
            }
            _ => {}
        }
        // Only where a path starts: not `x::crate`, not `pub(super)`.
        if !is(1, "::") || (k > 0 && tokens[k - 1].text == "::") {
            continue;
        }
        if token.text == root {
            found.extend(heads(&tokens, k + 2));
        } else if token.text == "super" && file.path != "main.rs" {
            let mut climbed = Vec::from(&module[..]);
            let mut at = k;
            while tokens.get(at).is_some_and(|t| t.text == "super")
                && tokens.get(at + 1).is_some_and(|t| t.text == "::")
            {
                climbed.pop();
                at += 2;
            }
            match climbed.first() {
                Some(layer) => found.push((token.line, layer.clone())),
                None => found.extend(heads(&tokens, at)),
            }
        }
    }
    found
}

/// The first segment of the path at `at`, or of each path in the group `{a::b, c}`.
fn heads(tokens: &[Token], at: usize) -> Vec<(usize, String)> {
    let Some(first) = tokens.get(at) else {
        return Vec::new();
    };
    if first.text != "{" {
        return if is_ident(&first.text) && first.text != "self" {
            vec![(first.line, first.text.clone())]
        } else {
            Vec::new()
        };
    }
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expecting = true;
    for token in &tokens[at..] {
        match token.text.as_str() {
            "{" => {
                depth += 1;
                expecting = depth == 1;
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," if depth == 1 => expecting = true,
            text if expecting && is_ident(text) => {
                if text != "self" {
                    heads.push((token.line, text.to_owned()));
                }
                expecting = false;
            }
            _ => expecting = false,
        }
    }
    heads
}

/// `store/support/resend.rs` → `[store, support, resend]`, `store/mod.rs` → `[store]`.
fn file_module(path: &str) -> Vec<String> {
    let path = path.strip_suffix(".rs").unwrap_or(path);
    let mut module: Vec<String> = path.split('/').map(str::to_owned).collect();
    if module
        .last()
        .is_some_and(|last| last == "mod" || last == "lib")
    {
        module.pop();
    }
    module
}

/// The string literals of `file` that hold an SQL statement, recognised by its keywords
/// in any case: `SELECT … FROM`, `SELECT f(…)`, `INSERT INTO`, `UPDATE … SET`,
/// `DELETE FROM`, `CREATE`/`ALTER`/`DROP` of a schema object, `WITH … AS (`,
/// `SET LOCAL`, and a literal that is only `LISTEN x;`, `ANALYZE x` and the like. A
/// sentence in a log line or an error ("LISTEN failed; reconnecting", "select the
/// deliveries with ...") is none of these.
fn sql_statements(file: &SourceFile) -> Vec<Finding> {
    file.scanned
        .literals
        .iter()
        .filter_map(|(line, text)| {
            sql_keywords(text).map(|keywords| {
                Finding::new(
                    file,
                    *line,
                    format!("a string literal holds SQL (`{keywords}`)"),
                )
            })
        })
        .collect()
}

fn sql_keywords(text: &str) -> Option<&'static str> {
    const OBJECTS: &[&str] = &[
        "TABLE",
        "INDEX",
        "UNIQUE",
        "SCHEMA",
        "FUNCTION",
        "PROCEDURE",
        "TRIGGER",
        "TYPE",
        "VIEW",
        "SEQUENCE",
        "EXTENSION",
        "TEMP",
        "TEMPORARY",
        "MATERIALIZED",
        "OR",
        "ROLE",
        "DATABASE",
        "POLICY",
    ];
    const ALONE: &[&str] = &[
        "LISTEN", "UNLISTEN", "NOTIFY", "ANALYZE", "VACUUM", "TRUNCATE",
    ];
    // Words, upper-cased, and punctuation marks one by one.
    let mut tokens: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let len = if c.is_ascii_alphanumeric() || c == '_' {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        } else {
            c.len_utf8()
        };
        if !c.is_whitespace() {
            tokens.push(rest[..len].to_ascii_uppercase());
        }
        rest = &rest[len..];
    }
    let at = |i: usize| tokens.get(i).map_or("", String::as_str);
    let is_word = |t: &str| t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
    // `f(` or `schema.f(`.
    let is_call = |mut i: usize| {
        while is_word(at(i)) && at(i + 1) == "." {
            i += 2;
        }
        is_word(at(i)) && at(i + 1) == "("
    };
    for (i, token) in tokens.iter().enumerate() {
        let later =
            |within: usize, word: &str| tokens[i + 1..].iter().take(within).any(|t| t == word);
        let next = at(i + 1);
        return Some(match token.as_str() {
            "SELECT" if later(usize::MAX, "FROM") => "SELECT … FROM",
            "SELECT" if is_call(i + 1) => "SELECT f(…)",
            "INSERT" if next == "INTO" => "INSERT INTO",
            "UPDATE" if later(6, "SET") => "UPDATE … SET",
            "DELETE" if next == "FROM" => "DELETE FROM",
            "CREATE" if OBJECTS.contains(&next) => "CREATE",
            "ALTER" if OBJECTS.contains(&next) => "ALTER",
            "DROP" if OBJECTS.contains(&next) => "DROP",
            "SET" if next == "LOCAL" || next == "SESSION" => "SET LOCAL",
            "WITH" if next == "RECURSIVE" => "WITH RECURSIVE",
            "WITH" if is_word(next) && at(i + 2) == "AS" && at(i + 3) == "(" => "WITH … AS (",
            _ => continue,
        });
    }
    // Statements of a keyword and a name only: `LISTEN a; LISTEN b;`, `ANALYZE t`.
    let statements: Vec<Vec<&str>> = text
        .split(';')
        .map(|statement| statement.split_whitespace().collect::<Vec<_>>())
        .filter(|words| !words.is_empty())
        .collect();
    let alone = |words: &Vec<&str>| {
        words.len() == 2 && ALONE.contains(&words[0].to_ascii_uppercase().as_str())
    };
    (!statements.is_empty() && statements.iter().all(alone)).then_some("LISTEN, ANALYZE …")
}

/// Where `file` starts a task, a thread or a runtime: `spawn(…)` however it is reached
/// (`tokio::spawn`, `JoinSet::spawn`, `spawn_blocking`, `std::thread::spawn`), a
/// runtime or thread `Builder`, `Runtime::new`, `#[tokio::main]`. A process's
/// `Command::spawn()` takes no argument and is not a task.
fn task_starts(file: &SourceFile) -> Vec<Finding> {
    let tokens = tokens(&file.scanned.code);
    let text = |k: usize| tokens.get(k).map_or("", |t| t.text.as_str());
    let mut found = Vec::new();
    for (k, token) in tokens.iter().enumerate() {
        let start = match token.text.as_str() {
            "spawn" | "spawn_blocking" | "spawn_local"
                if text(k + 1) == "(" && text(k + 2) != ")" =>
            {
                Some(token.text.clone())
            }
            "Runtime" if text(k + 1) == "::" && text(k + 2) == "new" => Some("Runtime::new".into()),
            "runtime" | "thread" if text(k + 1) == "::" && text(k + 2) == "Builder" => {
                Some(format!("{}::Builder", token.text))
            }
            "Builder" if text(k + 1) == "::" && text(k + 2).starts_with("new_") => {
                Some(format!("Builder::{}", text(k + 2)))
            }
            "tokio" if text(k + 1) == "::" && text(k + 2) == "main" => Some("tokio::main".into()),
            _ => None,
        };
        // One finding a line: `runtime::Builder::new_multi_thread` is one start.
        let seen = found
            .last()
            .is_some_and(|last: &Finding| last.line == token.line);
        if let (Some(start), false) = (start, seen) {
            found.push(Finding::new(
                file,
                token.line,
                format!("starts a task or runtime (`{start}`)"),
            ));
        }
    }
    found
}

/// Where `file` names `tokio_postgres` or `deadpool_postgres` in its code (a log filter's
/// string or a comment is not code).
fn driver_names(file: &SourceFile) -> Vec<Finding> {
    tokens(&file.scanned.code)
        .iter()
        .filter(|token| matches!(token.text.as_str(), "tokio_postgres" | "deadpool_postgres"))
        .map(|token| {
            Finding::new(
                file,
                token.line,
                format!("names the database driver (`{}`)", token.text),
            )
        })
        .collect()
}

fn missing_doc_opening(file: &SourceFile) -> Option<Finding> {
    let first = file.text.lines().position(|line| !line.trim().is_empty());
    let opens = first.is_some_and(|at| {
        file.text
            .lines()
            .nth(at)
            .is_some_and(|l| l.starts_with("//!"))
    });
    (!opens).then(|| {
        Finding::new(
            file,
            first.map_or(1, |at| at + 1),
            "opens without a `//!` comment saying what the file holds".into(),
        )
    })
}

/// Lines with code on them, comments aside, up to the unit tests: the first
/// `#[cfg(test)]` that opens an inline module (`#[cfg(test)] mod testing;` is not one).
fn code_lines(file: &SourceFile) -> usize {
    let lines: Vec<&str> = file.scanned.code.lines().map(str::trim).collect();
    let tests = (0..lines.len()).find(|&at| {
        lines[at] == "#[cfg(test)]"
            && lines[at + 1..]
                .iter()
                .find(|line| !line.is_empty())
                .is_some_and(|line| line.contains("mod ") && line.ends_with('{'))
    });
    lines[..tests.unwrap_or(lines.len())]
        .iter()
        .filter(|line| !line.is_empty())
        .count()
}

// ---- reading src/ ----

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn src() -> PathBuf {
    root().join("src")
}

fn architecture() -> String {
    let path = root().join("ARCHITECTURE.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A file of `src/`: its path under `src/` (`store/queue.rs`), its text, and the text
/// scanned.
struct SourceFile {
    path: String,
    text: String,
    scanned: Scanned,
}

impl SourceFile {
    fn new(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.to_owned(),
            text: text.to_owned(),
            scanned: scan(text),
        }
    }
}

/// Every `.rs` file under `src/`, in path order.
fn sources() -> Vec<SourceFile> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("src/ is readable").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&src(), &mut paths);
    paths.sort();
    let files: Vec<SourceFile> = paths
        .iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let relative = path.strip_prefix(src()).expect("under src/");
            SourceFile::new(&relative.to_string_lossy().replace('\\', "/"), &text)
        })
        .collect();
    assert!(files.len() > 10, "src/ holds the dispatcher's files");
    files
}

/// A file's text with comments and the insides of string and char literals blanked
/// (newlines kept, so every line keeps its number), and its string literals with the line
/// each starts on.
struct Scanned {
    code: String,
    literals: Vec<(usize, String)>,
}

fn scan(text: &str) -> Scanned {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut code = String::with_capacity(text.len());
    let mut literals = Vec::new();
    let mut line = 1;
    // Keeps line breaks, blanks the rest.
    let blank = |c: char, code: &mut String, line: &mut usize| {
        if c == '\n' {
            *line += 1;
            code.push('\n');
        } else {
            code.push(' ');
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                code.push(' ');
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    code.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    code.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(chars[i], &mut code, &mut line);
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            code.push_str(&word);
            let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
            if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                // A raw string: ends at a quote followed by as many hashes.
                code.extend(std::iter::repeat_n('#', hashes));
                code.push('"');
                i += hashes + 1;
                let first_line = line;
                let mut literal = String::new();
                while i < chars.len() {
                    if chars[i] == '"'
                        && chars[i + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&c| c == '#')
                            .count()
                            == hashes
                    {
                        code.push('"');
                        code.extend(std::iter::repeat_n('#', hashes));
                        i += hashes + 1;
                        break;
                    }
                    literal.push(chars[i]);
                    blank(chars[i], &mut code, &mut line);
                    i += 1;
                }
                literals.push((first_line, literal));
            }
        } else if c == '"' {
            code.push('"');
            i += 1;
            let first_line = line;
            let mut literal = String::new();
            while i < chars.len() && chars[i] != '"' {
                // An escaped character (`\"`, `\\`) is taken with its backslash.
                let len = if chars[i] == '\\' { 2 } else { 1 };
                for &c in chars.iter().skip(i).take(len) {
                    literal.push(c);
                    blank(c, &mut code, &mut line);
                }
                i += len;
            }
            code.push('"');
            i += 1;
            literals.push((first_line, literal));
        } else if c == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal ('x', '"', '\'', '\u{1F600}'); a lifetime has no closing quote.
            code.push('\'');
            let mut end = if at(i + 1) == '\\' { i + 3 } else { i + 2 };
            while end < chars.len() && chars[end] != '\'' {
                end += 1;
            }
            for _ in i + 1..end {
                code.push(' ');
            }
            code.push('\'');
            i = end + 1;
        } else {
            if c == '\n' {
                line += 1;
            }
            code.push(c);
            i += 1;
        }
    }
    Scanned { code, literals }
}

/// A word or a punctuation mark of scanned code (`::` is one), with its line.
struct Token {
    text: String,
    line: usize,
}

fn tokens(code: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    for (number, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(c) = rest.chars().next() {
            let len = if c.is_alphanumeric() || c == '_' {
                rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len())
            } else if rest.starts_with("::") {
                2
            } else {
                c.len_utf8()
            };
            if !c.is_whitespace() {
                tokens.push(Token {
                    text: rest[..len].to_owned(),
                    line: number + 1,
                });
            }
            rest = &rest[len..];
        }
    }
    tokens
}

fn is_ident(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

// ---- each rule catches what it is for ----

fn findings_in(path: &str, text: &str) -> Vec<String> {
    let file = SourceFile::new(path, text);
    let map = CodeMap::read();
    let mut all = map.wrong_imports(&file);
    all.extend(sql_statements(&file));
    all.extend(task_starts(&file));
    all.extend(missing_doc_opening(&file));
    all.iter().map(ToString::to_string).collect()
}

#[test]
fn a_store_file_that_imports_the_admin_server_is_named_with_its_line() {
    let text = "//! Queue.\n\nuse crate::delivery::Delivery;\nuse crate::admin::AdminState;\n";
    assert_eq!(
        findings_in("store/queue.rs", text),
        [
            "src/store/queue.rs:4: `store` imports `admin`; the code map lets it import only \
          `config`, `contract`, `delivery`, `shutdown`"
        ]
    );
}

#[test]
fn a_group_import_and_a_super_path_that_leave_the_layer_are_caught_too() {
    let text = "//! Chart.\n\nuse crate::{\n    config::Config,\n    daemon::Dispatcher,\n};\n\
                use super::super::support::Selection;\nfn f() { super::super::super::observe::metrics(); }\n";
    let found = findings_in("store/support/chart.rs", text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("src/store/support/chart.rs:5: `store` imports `daemon`"));
    assert!(found[1].starts_with("src/store/support/chart.rs:8: `store` imports `observe`"));
}

#[test]
fn paths_in_comments_strings_and_unit_test_modules_of_the_same_layer_are_not_imports() {
    let text =
        "//! See [`crate::admin`].\n\n/* crate::daemon */\nconst A: &str = \"use crate::admin\";\n\
                const Q: char = '\"';\nfn f<'a>(x: &'a str) {}\n\
                #[cfg(test)]\nmod tests {\n    use super::*;\n}\n";
    assert_eq!(findings_in("shutdown.rs", text), Vec::<String>::new());
}

#[test]
fn sql_outside_the_store_is_caught_and_prose_is_not() {
    let text = "//! Router.\n\nfn f() {\n    warn!(\"LISTEN failed; select a partner\");\n    \
                query(r#\"\n        update dispatcher.deliveries d\n        SET state = 'dead'\"#);\n    \
                listen(\"LISTEN {CHANNEL};\");\n}\n";
    assert_eq!(
        findings_in("daemon/router.rs", text),
        [
            "src/daemon/router.rs:5: a string literal holds SQL (`UPDATE … SET`)",
            "src/daemon/router.rs:8: a string literal holds SQL (`LISTEN, ANALYZE …`)",
        ]
    );
}

#[test]
fn a_task_started_outside_the_daemon_is_caught_and_a_process_is_not() {
    let text =
        "//! Metrics.\n\nfn f() {\n    Command::new(\"x\").spawn();\n    tokio::spawn(async {});\n\
                let rt = tokio::runtime::Builder::new_current_thread();\n}\n";
    let found = findings_in("observe/metrics.rs", text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("src/observe/metrics.rs:5: starts a task or runtime (`spawn`)"));
    assert!(found[1]
        .starts_with("src/observe/metrics.rs:6: starts a task or runtime (`runtime::Builder`)"));
}

#[test]
fn a_daemon_file_that_names_the_driver_is_caught_and_a_log_filter_is_not() {
    let named = |path: &str, text: &str| {
        driver_names(&SourceFile::new(path, text))
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        named(
            "daemon/recorder.rs",
            "//! x\nuse tokio_postgres::error::SqlState;\n"
        ),
        ["src/daemon/recorder.rs:2: names the database driver (`tokio_postgres`)"]
    );
    assert!(named(
        "observe/logging.rs",
        "//! x\nconst F: &str = \"tokio_postgres=warn\";\n"
    )
    .is_empty());
}

#[test]
fn a_file_without_its_opening_comment_is_caught() {
    assert_eq!(
        findings_in("contract/signing.rs", "\n// Signing.\nfn f() {}\n"),
        ["src/contract/signing.rs:2: opens without a `//!` comment saying what the file holds"]
    );
}

#[test]
fn unit_tests_comments_and_blank_lines_are_not_lines_of_code() {
    let text = "//! A.\n\n// why\nfn f() {}\n/* a\nb */\n#[cfg(test)]\nmod helpers;\n\
                #[cfg(test)]\nmod tests {\n    fn g() {}\n}\n";
    assert_eq!(code_lines(&SourceFile::new("a.rs", text)), 3);
}
