//! Cron schedules and time zone names for `jobs[]`.
//!
//! Validated here so a bad job fails `config check`; the scheduler parses the same text again
//! with [`parse_schedule`] when it runs. Seconds fields are refused: jobs run at minute
//! granularity, and a six-field expression is more likely a mistake than a wish.

use std::path::Path;

use croner::Cron;

/// Nicknames accepted besides five-field expressions, with what they stand for.
const NICKNAMES: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// Parses a five-field cron expression (minute, hour, day of month, month, day of week) or a
/// nickname (`@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`).
pub fn parse_schedule(text: &str) -> Result<Cron, String> {
    let trimmed = text.trim();
    let expr = if trimmed.starts_with('@') {
        NICKNAMES
            .iter()
            .find(|(nick, _)| nick.eq_ignore_ascii_case(trimmed))
            .map(|(_, expr)| *expr)
            .ok_or_else(|| {
                format!(
                    "invalid cron schedule {text:?}: unknown nickname (use @hourly, @daily, \
                     @midnight, @weekly, @monthly, @yearly or @annually)"
                )
            })?
    } else {
        let fields = trimmed.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "invalid cron schedule {text:?}: expected 5 fields (minute hour day-of-month \
                 month day-of-week), found {fields}{}",
                if fields == 6 {
                    "; seconds are not supported"
                } else {
                    ""
                }
            ));
        }
        trimmed
    };
    Cron::new(expr).parse().map_err(|e| {
        format!(
            "invalid cron schedule {text:?}: {}",
            lowercase_first(&e.to_string())
        )
    })
}

/// Whether `name` is a time zone this system knows: `UTC`, or a file of the tz database.
pub(crate) fn check_timezone(name: &str, zoneinfo: &Path) -> Result<(), String> {
    if name == "UTC" {
        return Ok(());
    }
    let safe = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if safe && zoneinfo.join(name).is_file() {
        return Ok(());
    }
    Err(format!(
        "unknown time zone {name:?} (use UTC or an IANA name such as Europe/Paris, looked up \
         in {}: is tzdata installed?)",
        zoneinfo.display()
    ))
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_five_fields_and_nicknames() {
        for ok in [
            "0 1 * * *",
            "*/5 * * * 1-5",
            "@weekly",
            "@midnight",
            "@annually",
            "@Daily",
        ] {
            assert!(parse_schedule(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_seconds_and_garbage() {
        assert_eq!(
            parse_schedule("0 0 1 * * *").unwrap_err(),
            "invalid cron schedule \"0 0 1 * * *\": expected 5 fields (minute hour day-of-month \
             month day-of-week), found 6; seconds are not supported"
        );
        assert!(parse_schedule("@fortnightly").is_err());
        assert!(parse_schedule("61 * * * *")
            .unwrap_err()
            .starts_with("invalid cron schedule \"61 * * * *\": "));
    }

    #[test]
    fn timezones() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("Europe")).expect("mkdir");
        std::fs::write(dir.path().join("Europe/Paris"), b"TZif").expect("write");
        assert_eq!(check_timezone("UTC", Path::new("/nonexistent")), Ok(()));
        assert_eq!(check_timezone("Europe/Paris", dir.path()), Ok(()));
        assert!(check_timezone("Mars/Olympus", dir.path()).is_err());
        assert!(check_timezone("../etc/passwd", dir.path()).is_err());
        assert!(check_timezone("Europe", dir.path()).is_err());
    }
}
