//! Cron schedules and time zone names for `jobs[]`.
//!
//! Validated here so a bad job fails `config check`; the scheduler parses the same text again
//! with [`parse_schedule`] and [`parse_timezone`] when it runs, so what validation accepts is
//! exactly what runs. Expressions have five fields (minute first) or six (seconds first: an
//! expression like `*/10 * * * * *` lets tests run a job every few seconds). Time zones come
//! from the tz database compiled into pgward (`chrono-tz`), not from the host's
//! `/usr/share/zoneinfo`: the image needs no tzdata, and a zone that passes `config check`
//! is the zone the scheduler evaluates.

use chrono_tz::Tz;
use croner::Cron;

/// Nicknames accepted besides cron expressions, with the five-field expression they stand for.
/// `@reboot` is not here: it has no expression (see [`ParsedSchedule::Reboot`]).
const NICKNAMES: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// A `schedule:` that parsed.
#[derive(Debug, Clone)]
pub enum ParsedSchedule {
    /// `@reboot`: once when pgward starts; it has no time on the clock.
    Reboot,
    /// A cron expression, nicknames expanded; the seconds field is 0 when it was not written.
    Cron(Box<Cron>),
}

/// Parses a cron expression of five fields (minute hour day-of-month month day-of-week), six
/// fields with seconds first, or a nickname (`@hourly`, `@daily`, `@midnight`, `@weekly`,
/// `@monthly`, `@yearly`, `@annually`, `@reboot`; any case).
pub fn parse_schedule(text: &str) -> Result<ParsedSchedule, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('@') {
        if trimmed.eq_ignore_ascii_case("@reboot") {
            return Ok(ParsedSchedule::Reboot);
        }
        let expr = NICKNAMES
            .iter()
            .find(|(nick, _)| nick.eq_ignore_ascii_case(trimmed))
            .map(|(_, expr)| *expr)
            .ok_or_else(|| {
                format!(
                    "invalid cron schedule {text:?}: unknown nickname (use @hourly, @daily, \
                     @midnight, @weekly, @monthly, @yearly, @annually or @reboot)"
                )
            })?;
        return parse_fields(text, expr, false);
    }
    match trimmed.split_whitespace().count() {
        5 => parse_fields(text, trimmed, false),
        6 => parse_fields(text, trimmed, true),
        fields => Err(format!(
            "invalid cron schedule {text:?}: expected 5 fields (minute hour day-of-month month \
             day-of-week) or 6 with seconds first, found {fields}"
        )),
    }
}

/// Hands `expr` to croner, whose count of fields was checked by the caller: croner would
/// otherwise guess where the seconds are.
fn parse_fields(text: &str, expr: &str, seconds: bool) -> Result<ParsedSchedule, String> {
    let mut cron = Cron::new(expr);
    if seconds {
        cron.with_seconds_required();
    }
    let cron = cron.parse().map_err(|e| {
        format!(
            "invalid cron schedule {text:?}: {}",
            lowercase_first(&e.to_string())
        )
    })?;
    // Refused here rather than left to the scheduler, which would find no next time (after
    // searching to croner's horizon, millennia away, on every ask). Fields repeat at most
    // every 400 years, so any start date answers.
    let epoch = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    if cron.find_next_occurrence(&epoch, true).is_err() {
        return Err(format!(
            "invalid cron schedule {text:?}: it never fires (no date matches its day-of-month, \
             month and day-of-week fields)"
        ));
    }
    Ok(ParsedSchedule::Cron(Box::new(cron)))
}

/// The time zone named `name`: `UTC` or an IANA name of the tz database (case matters, as in
/// the database).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!(
            "unknown time zone {name:?} (use UTC or an IANA name of the tz database such as \
             Europe/Paris or America/New_York; case matters)"
        )
    })
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
    fn accepts_five_and_six_fields_and_nicknames() {
        for ok in [
            "0 1 * * *",
            "*/5 * * * 1-5",
            "*/10 * * * * *",
            "30 0 1 * * *",
            "@weekly",
            "@midnight",
            "@annually",
            "@Daily",
        ] {
            assert!(
                matches!(parse_schedule(ok), Ok(ParsedSchedule::Cron(_))),
                "{ok}"
            );
        }
        assert!(matches!(
            parse_schedule("@reboot"),
            Ok(ParsedSchedule::Reboot)
        ));
        assert!(matches!(
            parse_schedule(" @REBOOT "),
            Ok(ParsedSchedule::Reboot)
        ));
    }

    #[test]
    fn six_fields_put_seconds_first() {
        let Ok(ParsedSchedule::Cron(cron)) = parse_schedule("7 * * * * *") else {
            panic!("six fields parse");
        };
        for second in 0..60 {
            assert_eq!(
                cron.pattern.second_match(second).expect("in range"),
                second == 7
            );
        }
    }

    #[test]
    fn rejects_wrong_field_counts_and_garbage() {
        assert_eq!(
            parse_schedule("0 0 1 * * * *").unwrap_err(),
            "invalid cron schedule \"0 0 1 * * * *\": expected 5 fields (minute hour \
             day-of-month month day-of-week) or 6 with seconds first, found 7"
        );
        assert_eq!(
            parse_schedule("0 0 *").unwrap_err(),
            "invalid cron schedule \"0 0 *\": expected 5 fields (minute hour day-of-month \
             month day-of-week) or 6 with seconds first, found 3"
        );
        assert_eq!(
            parse_schedule("@fortnightly").unwrap_err(),
            "invalid cron schedule \"@fortnightly\": unknown nickname (use @hourly, @daily, \
             @midnight, @weekly, @monthly, @yearly, @annually or @reboot)"
        );
        assert!(parse_schedule("61 * * * *")
            .unwrap_err()
            .starts_with("invalid cron schedule \"61 * * * *\": "));
        assert_eq!(
            parse_schedule("0 0 30 2 *").unwrap_err(),
            "invalid cron schedule \"0 0 30 2 *\": it never fires (no date matches its \
             day-of-month, month and day-of-week fields)"
        );
        // Rare is not never: February 29th.
        assert!(parse_schedule("0 0 29 2 *").is_ok());
        assert!(parse_schedule("60 * * * * *")
            .unwrap_err()
            .starts_with("invalid cron schedule \"60 * * * * *\": "));
    }

    #[test]
    fn timezones() {
        assert_eq!(parse_timezone("UTC"), Ok(Tz::UTC));
        assert_eq!(parse_timezone("Europe/Paris"), Ok(Tz::Europe__Paris));
        assert_eq!(
            parse_timezone("America/New_York"),
            Ok(Tz::America__New_York)
        );
        assert_eq!(
            parse_timezone("Mars/Olympus").unwrap_err(),
            "unknown time zone \"Mars/Olympus\" (use UTC or an IANA name of the tz database \
             such as Europe/Paris or America/New_York; case matters)"
        );
        for bad in [
            "",
            "europe/paris",
            "../etc/passwd",
            "Europe",
            "/etc/localtime",
        ] {
            assert!(parse_timezone(bad).is_err(), "{bad}");
        }
    }
}
