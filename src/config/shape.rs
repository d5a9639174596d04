//! serde's complaints about the file's shape, in the file's own terms.
//!
//! serde_yaml_ng stops at the first key it does not know or value of the wrong kind, and
//! words it for Rust: `invalid type: integer `5`, expected struct RawPostgres`. A user wrote
//! YAML, so the problem names what they wrote and what the key takes in YAML's words:
//! `expected a mapping of settings, found an integer`. Never a Rust type's name.

use super::locate::{Locator, Pos};
use super::Problem;

/// Turns serde_yaml_ng's `path: message at line L column C` into a [`Problem`], worded by
/// [`in_user_terms`].
///
/// serde_yaml_ng names the parent map for an unknown key and omits the path at the root, so
/// the key is recovered from what the locator knows sits at the reported position.
pub(crate) fn problem(error: &serde_yaml_ng::Error, file: &str, locator: &Locator) -> Problem {
    let mut message = error.to_string();
    let at = match error.location() {
        Some(l) => {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            if let Some(i) = message.find(&suffix) {
                message.replace_range(i..i + suffix.len(), "");
            }
            Pos {
                line: l.line(),
                column: l.column(),
            }
        }
        None => Pos::default(),
    };
    // The longest known path (or parent of one) the message is prefixed with. serde_yaml_ng
    // places a tagged value (`!tag 5`) where the locator has nothing, so failing that, the
    // message's own prefix is taken when it is a path of the file.
    let prefix = locator
        .paths_at(at)
        .into_iter()
        .flat_map(|(path, _)| [Some(path), super::locate::parent(path)])
        .flatten()
        .filter(|path| !path.is_empty() && message.starts_with(&format!("{path}: ")))
        .max_by_key(|path| path.len())
        .map(str::to_owned)
        .or_else(|| {
            let (path, _) = message.split_once(": ")?;
            locator.contains(path).then(|| path.to_owned())
        });
    let (parent, reason) = match &prefix {
        Some(path) => (path.as_str(), message[path.len() + 2..].to_owned()),
        None => ("", message),
    };
    let unknown = reason
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| super::locate::join(parent, name));
    let key = match (unknown, parent) {
        (Some(key), _) => key,
        (None, "") => "<document>".to_owned(),
        (None, parent) => parent.to_owned(),
    };
    Problem {
        file: file.to_owned(),
        line: at.line,
        column: at.column,
        key,
        reason: in_user_terms(&reason),
    }
}

/// serde's `invalid type: <found>, expected <expected>` as `expected <what the key takes>,
/// found <what was written>`; any other message as it is.
fn in_user_terms(reason: &str) -> String {
    let parts = reason
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.rsplit_once(", expected "));
    match parts {
        Some((found, expected)) => {
            format!(
                "expected {}, found {}",
                expected_kind(expected),
                found_kind(found)
            )
        }
        None => reason.to_owned(),
    }
}

/// What a key takes. serde names a section by its Rust struct (`struct RawPostgres`) and
/// collections by its own words; the raw model's hand-written shapes already say it well.
fn expected_kind(expected: &str) -> &str {
    if expected.starts_with("struct ") {
        return "a mapping of settings";
    }
    match expected {
        "a sequence" => "a list",
        "a map" => "a mapping",
        other => other,
    }
}

/// What was written, by the YAML kind of serde's `Unexpected` (the value itself is left out:
/// it may be a secret given in the wrong place).
fn found_kind(found: &str) -> &str {
    const KINDS: &[(&str, &str)] = &[
        ("boolean", "a boolean"),
        ("integer", "an integer"),
        ("floating point", "a number"),
        ("string", "a string"),
        ("character", "a string"),
        ("sequence", "a list"),
        ("map", "a mapping"),
        ("unit value", "null"),
        ("enum", "a tagged value"),
    ];
    KINDS
        .iter()
        .find(|(serde, _)| found == *serde || found.starts_with(&format!("{serde} ")))
        .map_or(found, |(_, user)| user)
}
