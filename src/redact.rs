//! Redaction: the one place that decides what of a secret pgward may show, for every floor
//! (`config print`, the log, `status`, `/status`, `/metrics`, job reports, error messages).
//!
//! Two kinds of knowledge meet here. Where pgward knows a value's name (an environment
//! variable, a server parameter, a label), [`is_secret_name`] decides: a name holding
//! `password`, `passwd`, `passphrase`, `secret`, `token`, `key` or `credential`, in any case
//! and as any part of a word (`PGPASSWORD`, `AWS_SECRET_ACCESS_KEY`, `sslkey`), hides its
//! whole value as [`REDACTED`]. Where it only has text (a command line, an error, a line a
//! child wrote), [`scrub`] hides what has the shape of a secret:
//!
//! - `name=value` with a secret-looking name, as in a conninfo string
//!   (`host=db password=s3cret`, `password='it''s'`) or an environment dump: the value
//!   becomes [`REDACTED`];
//! - in a URL: the password of its user info (`postgresql://app:…@db/app`; for other schemes
//!   the whole user info, which is often a token: `https://…@github.com/x`); the values of
//!   its query string (every one, except in a `postgres://`/`postgresql://` URI where only
//!   secret-looking parameters are hidden, since the rest are connection options) and its
//!   fragment: each becomes [`ELIDED`];
//! - SQL's `PASSWORD '…'` (`ALTER ROLE app PASSWORD 'x'`): the literal becomes
//!   `'<redacted>'`.
//!
//! A webhook URL carries its token in its path too (`https://hooks.slack.com/services/T/B/X`):
//! [`webhook_url`] shows every path segment as [`ELIDED`].
//!
//! Better to hide a harmless value than to show a password, so the rules are broad; a value
//! hidden once stays as it is when scrubbed again. What a rule cannot see, it cannot hide: a
//! secret printed bare, with no name and not in a URL, shows. A leaf: imports nothing.

use std::borrow::Cow;

/// What a whole hidden value is shown as.
pub const REDACTED: &str = "<redacted>";

/// What a hidden part of a URL is shown as.
pub const ELIDED: &str = "…";

/// Words that mark a name as secret, matched case-insensitively anywhere in it.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "key",
    "credential",
];

/// Values [`scrub`] leaves after `name=`: nothing, what it already hid, and the word `value`
/// with which messages spell the form itself (`expected key=value`).
const NOT_SECRETS: &[&str] = &["", REDACTED, ELIDED, "value"];

/// Whether a variable, parameter or label with this name holds a secret (see the module doc).
pub fn is_secret_name(name: &str) -> bool {
    SECRET_WORDS
        .iter()
        .any(|word| contains_ignore_case(name, word))
}

/// `text` with every secret it shows by its shape hidden (see the module doc). Text with no
/// `=`, no `://` and no `password` is returned as it is, without a copy.
pub fn scrub(text: &str) -> Cow<'_, str> {
    if !text.contains('=') && !text.contains("://") && !contains_ignore_case(text, "password") {
        return Cow::Borrowed(text);
    }
    let urls = scrub_urls(text);
    let pairs = scrub_pairs(&urls);
    let sql = scrub_sql_passwords(&pairs);
    if sql == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(sql.into_owned())
    }
}

/// Every string in `value` [`scrub`]bed, in place (object keys are names, left as they are);
/// whether anything changed.
pub fn scrub_json(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => match scrub(text) {
            Cow::Owned(scrubbed) => {
                *text = scrubbed;
                true
            }
            Cow::Borrowed(_) => false,
        },
        serde_json::Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| scrub_json(item) | changed),
        serde_json::Value::Object(map) => map
            .values_mut()
            .fold(false, |changed, item| scrub_json(item) | changed),
        _ => false,
    }
}

/// A webhook URL as it may be shown: [`scrub`]bed, and every segment of its path as
/// [`ELIDED`] (chat webhooks carry their token there):
/// `https://hooks.example.com/…/…?channel=…`.
pub fn webhook_url(url: &str) -> String {
    let url = scrub(url);
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return REDACTED.to_owned();
    };
    let rest = &url[start..];
    let Some(path_start) = rest.find('/') else {
        return url.into_owned();
    };
    let path_end = rest[path_start..]
        .find(['?', '#'])
        .map_or(rest.len(), |i| path_start + i);
    let path = rest[path_start..path_end]
        .split('/')
        .map(|segment| if segment.is_empty() { "" } else { ELIDED })
        .collect::<Vec<_>>()
        .join("/");
    format!(
        "{}{}{path}{}",
        &url[..start],
        &rest[..path_start],
        &rest[path_end..]
    )
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    find_ignore_case(haystack, needle, 0).is_some()
}

/// The byte offset of the first ASCII-case-insensitive `needle` (ASCII) in `haystack` at or
/// after `from`.
fn find_ignore_case(haystack: &str, needle: &str, from: usize) -> Option<usize> {
    let (hay, needle) = (haystack.as_bytes(), needle.as_bytes());
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len())
        .find(|&i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

/// Where a bare value or a URL ends: whitespace or a quote (what usually surrounds one in a
/// message, a log record or JSON).
fn ends_token(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | '\\')
}

// ---- URLs ----

fn scrub_urls(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let sep = search + found;
        search = sep + 3;
        let scheme_start = text[..sep]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(sep, |(i, _)| i);
        let scheme = &text[scheme_start..sep];
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let end = text[search..]
            .find(ends_token)
            .map_or(text.len(), |i| search + i);
        let rest = &text[search..end];
        let scrubbed = scrub_url_rest(scheme, rest);
        if scrubbed != rest {
            out.push_str(&text[copied..search]);
            out.push_str(&scrubbed);
            copied = end;
        }
        search = end;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// What follows `scheme://`, hidden: user info, query, fragment.
fn scrub_url_rest(scheme: &str, rest: &str) -> String {
    let postgres =
        scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql");
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(rest.len());
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(ELIDED);
                }
                None if postgres => out.push_str(userinfo),
                None => out.push_str(ELIDED),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (tail, None),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if postgres && !is_secret_name(name) => param.to_owned(),
                    Some((name, "")) => format!("{name}="),
                    Some((name, _)) => format!("{name}={ELIDED}"),
                    None if postgres || param.is_empty() => param.to_owned(),
                    None => ELIDED.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    match fragment {
        Some(fragment) if !postgres && !fragment.is_empty() => {
            out.push('#');
            out.push_str(ELIDED);
        }
        Some(fragment) => {
            out.push('#');
            out.push_str(fragment);
        }
        None => {}
    }
    out
}

// ---- name=value ----

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn scrub_pairs(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find('=') {
        let eq = search + found;
        search = eq + 1;
        let name_start = text[..eq]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_name_char(c))
            .last()
            .map_or(eq, |(i, _)| i);
        if name_start < copied || !is_secret_name(&text[name_start..eq]) {
            continue;
        }
        let value_start = eq + 1;
        let value_end = value_end(text, value_start);
        let value = &text[value_start..value_end];
        if NOT_SECRETS.contains(&value) {
            search = value_end;
            continue;
        }
        out.push_str(&text[copied..value_start]);
        out.push_str(REDACTED);
        copied = value_end;
        search = value_end;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The end of the value starting at `start`: a quoted one (`'...'` as in conninfo, or
/// `"..."` as in a shell, each with backslash escapes) through its closing quote, or the end
/// of `text` when it is not closed; a bare one at whitespace, a quote or `&` (the next
/// parameter of a query string).
fn value_end(text: &str, start: usize) -> usize {
    let rest = &text[start..];
    if let Some(quote) = rest.chars().next().filter(|c| matches!(c, '\'' | '"')) {
        let mut escaped = false;
        for (i, c) in rest[1..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                c if c == quote => return start + 1 + i + 1,
                _ => {}
            }
        }
        return text.len();
    }
    rest.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '&'))
        .map_or(text.len(), |i| start + i)
}

// ---- SQL ----

/// `PASSWORD 'literal'` (and `E'literal'`), as in `CREATE ROLE ... PASSWORD '...'`.
fn scrub_sql_passwords(text: &str) -> Cow<'_, str> {
    const WORD: &str = "password";
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(at) = find_ignore_case(text, WORD, search) {
        search = at + WORD.len();
        let bytes = text.as_bytes();
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let after = &text[search..];
        let spaces = after.len() - after.trim_start().len();
        if spaces == 0 {
            continue;
        }
        let mut open = search + spaces;
        if text[open..].starts_with(['E', 'e']) {
            open += 1;
        }
        if !text[open..].starts_with('\'') {
            continue;
        }
        let close = sql_literal_end(text, open);
        let literal = match text[..close].strip_suffix('\'') {
            Some(closed) if close > open + 1 => &closed[open + 1..],
            _ => &text[open + 1..close],
        };
        if NOT_SECRETS.contains(&literal) {
            search = close;
            continue;
        }
        out.push_str(&text[copied..open]);
        out.push('\'');
        out.push_str(REDACTED);
        out.push('\'');
        copied = close;
        search = close;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The end (after the closing quote) of the SQL string literal opening at `open`; `''` is a
/// quote inside it, and so is `\'` (in an `E''` literal; taken anywhere, to hide more rather
/// than less). The end of `text` when it is not closed.
fn sql_literal_end(text: &str, open: usize) -> usize {
    let bytes = text.as_bytes();
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(input, expected)`: each scrubbed exactly so, and scrubbing again changes nothing.
    fn check(cases: &[(&str, &str)]) {
        for (input, expected) in cases {
            let once = scrub(input);
            assert_eq!(once, *expected, "scrub({input:?})");
            assert_eq!(scrub(&once), *expected, "scrub(scrub({input:?}))");
        }
    }

    #[test]
    fn secret_names_are_told_by_their_words_in_any_case() {
        for name in [
            "PGPASSWORD",
            "password",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "api_key",
            "sslkey",
            "ssl_key_file",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "Db-Passwd",
            "ssl_passphrase",
            "X-Api-Token",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "PGUSER",
            "host",
            "work_mem",
            "primary_conninfo",
            "HOME",
            "PATH",
            "PWD",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn conninfo_passwords_are_hidden() {
        check(&[
            (
                "host=primary port=5432 user=replicator password=s3cret sslmode=require",
                "host=primary port=5432 user=replicator password=<redacted> sslmode=require",
            ),
            (
                "host=primary password='it\\'s a secret' user=r",
                "host=primary password=<redacted> user=r",
            ),
            ("password='unclosed secret", "password=<redacted>"),
            (
                "PGPASSWORD=\"two words\" next",
                "PGPASSWORD=<redacted> next",
            ),
            (
                "sslpassword=x sslkey=/k.pem",
                "sslpassword=<redacted> sslkey=<redacted>",
            ),
            ("password= host=h", "password= host=h"),
            (
                "primary_conninfo='host=p password=pw1'",
                "primary_conninfo='host=p password=<redacted>'",
            ),
            ("work_mem=4MB", "work_mem=4MB"),
        ]);
    }

    #[test]
    fn environment_dumps_and_flags_are_hidden() {
        check(&[
            ("PGPASSWORD=abc123", "PGPASSWORD=<redacted>"),
            (
                "AWS_SECRET_ACCESS_KEY=wJalr/K7 HOME=/root",
                "AWS_SECRET_ACCESS_KEY=<redacted> HOME=/root",
            ),
            ("--password=hunter2 -v", "--password=<redacted> -v"),
            (
                "{\"message\":\"env API_TOKEN=t0k\"}",
                "{\"message\":\"env API_TOKEN=<redacted>\"}",
            ),
            (
                "--annotate \"x\": expected key=value",
                "--annotate \"x\": expected key=value",
            ),
            ("a == b, x=1", "a == b, x=1"),
        ]);
    }

    #[test]
    fn url_credentials_and_queries_are_hidden() {
        check(&[
            (
                "postgresql://app:s3cret@db:5432/app?sslmode=require&password=p2&application_name=x",
                "postgresql://app:…@db:5432/app?sslmode=require&password=…&application_name=x",
            ),
            ("postgres://app@db/app", "postgres://app@db/app"),
            (
                "see https://user:pass@example.com/a/b?token=abc&x=1#frag.",
                "see https://user:…@example.com/a/b?token=…&x=…#…",
            ),
            (
                "git clone https://ghp_abc@github.com/o/r",
                "git clone https://…@github.com/o/r",
            ),
            (
                "\"https://h.example/x?sig=a%2Bb\"",
                "\"https://h.example/x?sig=…\"",
            ),
            ("https://hooks.example.com/T0/B0/XYZ", "https://hooks.example.com/T0/B0/XYZ"),
            ("s3://bucket/prefix", "s3://bucket/prefix"),
            ("http://0.0.0.0:9187/metrics", "http://0.0.0.0:9187/metrics"),
            ("https://h/x?flag&a=", "https://h/x?…&a="),
            ("not a url :// here", "not a url :// here"),
        ]);
    }

    #[test]
    fn sql_password_literals_are_hidden() {
        check(&[
            (
                "STATEMENT:  ALTER ROLE app PASSWORD 'it''s secret';",
                "STATEMENT:  ALTER ROLE app PASSWORD '<redacted>';",
            ),
            (
                "create role x login password E'a\\'b' valid until 'infinity'",
                "create role x login password E'<redacted>' valid until 'infinity'",
            ),
            (
                "FATAL:  password authentication failed for user \"app\"",
                "FATAL:  password authentication failed for user \"app\"",
            ),
            ("CREATE ROLE x PASSWORD NULL", "CREATE ROLE x PASSWORD NULL"),
        ]);
    }

    #[test]
    fn text_without_secrets_is_not_copied() {
        for text in [
            "LOG:  checkpoint starting: time",
            "wrote 3 buffers (0.0%); write=0.001 s",
        ] {
            assert!(matches!(scrub(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn webhook_paths_are_elided() {
        assert_eq!(
            webhook_url("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/…/…/…/…"
        );
        assert_eq!(
            webhook_url("http://127.0.0.1:8080/hooks/T0K3N?key=qu3ry"),
            "http://127.0.0.1:8080/…/…?key=…"
        );
        assert_eq!(
            webhook_url("https://u:p@example.com/"),
            "https://u:…@example.com/"
        );
        assert_eq!(webhook_url("https://example.com"), "https://example.com");
        assert_eq!(webhook_url("not a url"), REDACTED);
    }

    #[test]
    fn json_strings_are_scrubbed_in_place() {
        let mut value = serde_json::json!({
            "password=x": ["host=h password=p", 3, {"url": "https://a:b@h/"}],
        });
        assert!(scrub_json(&mut value));
        assert!(!scrub_json(&mut value), "a second time changes nothing");
        assert_eq!(
            value,
            serde_json::json!({
                "password=x": ["host=h password=<redacted>", 3, {"url": "https://a:…@h/"}],
            })
        );
    }
}
