//! `${VAR}` / `${VAR:-default}` interpolation of one scalar's text.
//!
//! Works on a single, already-parsed YAML scalar, never on the file's raw text, so a value
//! containing `#` or `: ` cannot change the document's structure. Knows nothing of keys or
//! positions: the caller locates errors.

/// Environment lookup, as handed to [`super::load`].
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands `${VAR}` and `${VAR:-default}` in `text`; `$$` is a literal `$`.
///
/// As in the shell, `:-` also applies when the variable is set but empty, and the default may
/// itself contain `${...}`. A `$` followed by anything else is kept as is, so passwords with a
/// lone `$` need no escaping. Errors are one-line reasons.
pub(crate) fn interpolate(text: &str, env: Env<'_>) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(|| {
                format!("unterminated \"${{\" in {text:?} (write \"$$\" for a literal \"$\")")
            })?;
            out.push_str(&expand(&body[..end], env)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Index of the `}` closing a `${` whose body starts `body`, skipping nested `${...}`.
fn closing_brace(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Expands the inside of one `${...}`.
fn expand(inner: &str, env: Env<'_>) -> Result<String, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    if !is_var_name(name) {
        return Err(format!(
            "invalid variable reference \"${{{inner}}}\" (use ${{NAME}} or ${{NAME:-default}})"
        ));
    }
    match (env(name), default) {
        (Some(value), Some(_)) if !value.is_empty() => Ok(value),
        (_, Some(default)) => interpolate(default, env),
        (Some(value), None) => Ok(value),
        (None, None) => Err(format!(
            "environment variable {name} is not set and has no default (use ${{{name}:-default}})"
        )),
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(text: &str) -> Result<String, String> {
        let vars: HashMap<&str, &str> =
            HashMap::from([("A", "alpha"), ("EMPTY", ""), ("PORT", "6432")]);
        interpolate(text, &|k| vars.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn expands_set_default_and_escape() {
        assert_eq!(run("x${A}y").as_deref(), Ok("xalphay"));
        assert_eq!(run("${A:-z}").as_deref(), Ok("alpha"));
        assert_eq!(run("${NOPE:-5432}").as_deref(), Ok("5432"));
        assert_eq!(run("${EMPTY:-d}").as_deref(), Ok("d"));
        assert_eq!(run("${EMPTY}").as_deref(), Ok(""));
        assert_eq!(run("$${A}").as_deref(), Ok("${A}"));
        assert_eq!(run("a$$b").as_deref(), Ok("a$b"));
        assert_eq!(run("pa$s").as_deref(), Ok("pa$s"));
        assert_eq!(run("end$").as_deref(), Ok("end$"));
        assert_eq!(run("${NOPE:-${PORT}}").as_deref(), Ok("6432"));
        assert_eq!(run("${NOPE:-}").as_deref(), Ok(""));
        assert_eq!(run("${NOPE:-a:-b}").as_deref(), Ok("a:-b"));
    }

    #[test]
    fn reports_missing_and_malformed() {
        assert_eq!(
            run("${NOPE}"),
            Err(
                "environment variable NOPE is not set and has no default (use ${NOPE:-default})"
                    .to_string()
            )
        );
        assert!(run("${A").unwrap_err().starts_with("unterminated \"${\""));
        assert!(run("${1A}")
            .unwrap_err()
            .starts_with("invalid variable reference \"${1A}\""));
        assert!(run("${A-x}")
            .unwrap_err()
            .starts_with("invalid variable reference"));
    }
}
