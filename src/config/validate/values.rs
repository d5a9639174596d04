//! Scalar parsers shared by every section: text in, typed value or a one-line reason out.
//!
//! Every "invalid X (use Y)" reason is worded by [`invalid`], and every value that must be one
//! of a few names is read by [`choice`], so a new key of either kind reads like the others.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

/// `invalid {what} "{s}" (use {hint})`: the reason for a value that is not one the key takes.
pub(super) fn invalid(what: &str, s: &str, hint: &str) -> String {
    format!("invalid {what} {s:?} (use {hint})")
}

/// `s` as one of `options` (name as written, value), or
/// `invalid {what} "{s}" (use a, b or c)`.
pub(super) fn choice<T: Copy>(what: &str, s: &str, options: &[(&str, T)]) -> Result<T, String> {
    pick(what, s, s, options)
}

/// As [`choice`], blanks around `s` ignored (as numbers ignore them): booleans and codec
/// names always did, the other choices never did.
pub(super) fn choice_ignoring_blanks<T: Copy>(
    what: &str,
    s: &str,
    options: &[(&str, T)],
) -> Result<T, String> {
    pick(what, s, s.trim(), options)
}

/// The value of the option called `name`; the reason quotes `written`.
fn pick<T: Copy>(
    what: &str,
    written: &str,
    name: &str,
    options: &[(&str, T)],
) -> Result<T, String> {
    options
        .iter()
        .find(|(option, _)| *option == name)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            invalid(
                what,
                written,
                &one_of(options.iter().map(|(option, _)| *option)),
            )
        })
}

/// `a`, `a or b`, `a, b or c`.
pub(super) fn one_of<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

pub(super) fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

/// The name of an environment variable: not empty, no `=` (which ends a name) and no NUL.
pub(super) fn env_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(['=', '\0']) {
        Err(format!(
            "{s:?} is not an environment variable name (no `=`, not empty)"
        ))
    } else {
        Ok(s.to_owned())
    }
}

pub(super) fn absolute_path(s: &str) -> Result<PathBuf, String> {
    if s.starts_with('/') {
        Ok(PathBuf::from(s))
    } else {
        Err(format!("expected an absolute path, got {s:?}"))
    }
}

pub(super) fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed (use 1 to 65535)".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(invalid("port", s, "an integer from 1 to 65535")),
    }
}

pub(super) fn parse_count(s: &str) -> Result<u32, String> {
    s.trim()
        .parse()
        .map_err(|_| invalid("count", s, "a non-negative integer"))
}

/// A count (see [`parse_count`]) within `range`, or
/// `invalid {what} "{s}" (use an integer from A to B)`.
pub(super) fn count_in(what: &str, s: &str, range: RangeInclusive<u32>) -> Result<u32, String> {
    match parse_count(s)? {
        n if range.contains(&n) => Ok(n),
        _ => Err(integer_from(what, s, range)),
    }
}

/// `invalid {what} "{s}" (use an integer from A to B)`.
pub(super) fn integer_from<T: std::fmt::Display>(
    what: &str,
    s: &str,
    range: RangeInclusive<T>,
) -> String {
    let hint = format!("an integer from {} to {}", range.start(), range.end());
    invalid(what, s, &hint)
}

pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    choice_ignoring_blanks("boolean", s, &[("true", true), ("false", false)])
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// A duration longer than zero, or `{what} must be longer than 0s`.
pub(super) fn positive_duration(what: &str, s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{what} must be longer than 0s")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_list_their_names() {
        let modes = [("smart", 1), ("fast", 2)];
        assert_eq!(choice("stop mode", "fast", &modes), Ok(2));
        assert_eq!(
            choice("stop mode", "slow", &modes),
            Err("invalid stop mode \"slow\" (use smart or fast)".to_owned())
        );
        assert_eq!(
            choice("x", "d", &[("a", 1), ("b", 2), ("c", 3)]),
            Err("invalid x \"d\" (use a, b or c)".to_owned())
        );
        assert_eq!(
            choice_ignoring_blanks("boolean", " on ", &[("true", true), ("false", false)]),
            Err("invalid boolean \" on \" (use true or false)".to_owned())
        );
        assert_eq!(
            choice("stop mode", " fast", &modes),
            Err("invalid stop mode \" fast\" (use smart or fast)".to_owned())
        );
        assert_eq!(choice_ignoring_blanks("x", " fast ", &modes), Ok(2));
        assert_eq!(one_of(["a"]), "a");
        assert_eq!(one_of([]), "");
    }
}
