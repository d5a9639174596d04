//! The docs' command examples are valid CLI: every `pgward ...` command in a ```sh (or
//! ```bash, ```shell) block of README.md, docs/*.md and recovery/*.md parses with the real
//! command tree.
//!
//! A synopsis is read as one: `[a|b]` is tried both left out and as its first alternative,
//! `...` (repeatable) is dropped, and `<placeholder>` becomes a sample value. A line that shows
//! `pgward` but is deliberately not a command carries the marker comment `# docs-cli: skip`
//! (docs/testing.md says so).

use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::Parser;
use pgward::cli::Cli;

const SKIP_MARKER: &str = "# docs-cli: skip";

fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "recovery"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("read docs directory") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The shell lines of the sh code blocks of `text`, continuation lines joined, each with its
/// 1-based line number.
fn shell_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            in_block = !in_block && matches!(lang.trim(), "sh" | "bash" | "shell");
            continue;
        }
        if !in_block {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        joined.push_str(trimmed.strip_prefix("$ ").unwrap_or(trimmed));
        match joined.strip_suffix('\\') {
            Some(head) => pending = Some((start, head.to_owned())),
            None => out.push((start, joined)),
        }
    }
    out
}

/// Shell words of `line`, without its comment, split into commands at `|`, `||`, `&&`, `;`.
/// Enough shell for docs: quotes, no expansions.
fn commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                let w = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    w.push(q);
                }
            }
            '#' if word.is_none() => break,
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    commands.last_mut().expect("one command").push(w);
                }
            }
            '|' | '&' | ';' => {
                if let Some(w) = word.take() {
                    commands.last_mut().expect("one command").push(w);
                }
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                commands.push(Vec::new());
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        commands.last_mut().expect("one command").push(w);
    }
    commands
}

/// The synopsis `line` as concrete lines: optional groups left out, and each taken as its
/// first alternative.
fn expand_synopsis(line: &str) -> Vec<String> {
    let line = line.replace("...", "");
    let mut without = String::new();
    let mut first = String::new();
    let mut rest = line.as_str();
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| open + c) else {
            break;
        };
        without.push_str(&rest[..open]);
        first.push_str(&rest[..open]);
        first.push_str(rest[open + 1..close].split('|').next().unwrap_or(""));
        rest = &rest[close + 1..];
    }
    without.push_str(rest);
    first.push_str(rest);
    if without == first {
        vec![without]
    } else {
        vec![without, first]
    }
}

/// `<id>` and other `<placeholder>`s as sample values.
fn fill_placeholders(word: &str) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let (Some(open), Some(close)) = (rest.find('<'), rest.find('>')) {
        if close < open {
            break;
        }
        out.push_str(&rest[..open]);
        out.push_str(match &rest[open + 1..close] {
            "id" => "20250101T010000F",
            "name" => "nightly",
            _ => "sample",
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Every pgward invocation of the docs: (file:line, argv).
fn doc_commands() -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).expect("read doc");
        let name = file.file_name().expect("a file name").to_string_lossy();
        for (line_no, line) in shell_lines(&text) {
            if line.contains(SKIP_MARKER) {
                continue;
            }
            for concrete in expand_synopsis(&line) {
                for words in commands(&concrete) {
                    let Some(at) = words
                        .iter()
                        .position(|w| w == "pgward" || w.ends_with("/pgward"))
                    else {
                        continue;
                    };
                    let argv = words[at..].iter().map(|w| fill_placeholders(w)).collect();
                    found.push((format!("{name}:{line_no}"), argv));
                }
            }
        }
    }
    found
}

#[test]
fn every_pgward_command_in_the_docs_parses() {
    let found = doc_commands();
    assert!(found.len() >= 50, "too few commands found: {found:?}");
    let bad: Vec<String> = found
        .iter()
        .filter_map(|(at, argv)| {
            // `--help` and `--version` are valid commands that clap answers with an "error".
            Cli::try_parse_from(argv)
                .err()
                .filter(|e| !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion))
                .map(|e| format!("{at}: {}: {}", argv.join(" "), e.kind()))
        })
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_reader_finds_commands_the_way_a_shell_would() {
    assert_eq!(
        commands("PGWARD_CONFIG=x pgward list --json | jq . && pgward check # pgward nope"),
        vec![
            vec!["PGWARD_CONFIG=x", "pgward", "list", "--json"],
            vec!["jq", "."],
            vec!["pgward", "check"],
        ]
    );
    assert_eq!(
        expand_synopsis("pgward show [<id>|latest] [--json]..."),
        vec!["pgward show  ", "pgward show <id> --json"]
    );
    assert_eq!(fill_placeholders("<id>"), "20250101T010000F");
    assert_eq!(
        shell_lines("```sh\n$ pgward restore latest \\\n  --delta\n```\npgward nope\n"),
        vec![(2, "pgward restore latest --delta".to_owned())]
    );
    // The parser really refuses what is not a command.
    assert!(Cli::try_parse_from(["pgward", "lsit"]).is_err());
}
