//! When a job is due: its `schedule:` evaluated in its `timezone:`. Pure: the caller passes
//! the time, nothing here reads the clock or sleeps.
//!
//! # Daylight saving time
//!
//! A cron expression names wall-clock times, and around a DST change some wall-clock times do
//! not exist (a gap, clocks go forward) and others happen twice (a fold, clocks go back). A
//! job at fixed hours runs once a day whatever the clock does:
//!
//! - **Gap**: a wall-clock time that does not exist fires once, at the first instant after
//!   the gap. A daily `30 2 * * *` in Europe/Paris runs on 2026-03-29 at 03:00 CEST (01:00
//!   UTC); several times inside one gap still make one run.
//! - **Fold**: a wall-clock time that happens twice fires at its first occurrence only. A
//!   daily `30 2 * * *` in Europe/Paris runs on 2026-10-25 at 02:30 CEST (00:30 UTC) and not
//!   again at 02:30 CET.
//!
//! A job whose hour field is `*` (every hour: `*/10 * * * *`, `5 * * * *`, seconds
//! schedules...) follows the wall clock instead, so that it keeps its interval in elapsed
//! time: times inside a gap are never shown and do not run (`*/10 * * * *` runs at 01:50 CET
//! then 03:00 CEST, ten minutes later; `5 * * * *` at 01:05 CET then 03:05 CEST), and times
//! of the repeated hour are shown twice and run twice (no hour-long pause). cronie treats jobs
//! that run more often than hourly the same way.
//!
//! croner (2.x) gets the daily job right when walked forward from before the change, but its
//! search works on wall-clock times and maps an ambiguous time to its first occurrence: asked
//! from inside the repeated hour (after 02:10 CET) it answers 02:30 CEST, an instant *before*
//! the time asked about; interval jobs pause through the repeated hour (`*/30 * * * *`:
//! 02:30 CEST, then 03:00 CET); and a time in a gap becomes an extra run at the gap's end
//! (`5 * * * *`: 01:05 CET, 03:00 CEST, 03:05 CEST). So croner here only finds matching
//! wall-clock times (searched in UTC, where each exists once), and the mapping to instants
//! is done below, one UTC offset at a time.
//!
//! Offsets come from the tz database compiled into `chrono-tz`, whose table of transitions
//! ends at some future year (after 2040 for Europe/Paris); past it the last offset is kept.

use chrono::{DateTime, LocalResult, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::config::{parse_schedule, parse_timezone, ParsedSchedule};

/// Transitions crossed while looking for one fire time before giving up. A schedule that
/// fires at all fires within a few years, and zones change offset at most twice a year.
const MAX_TRANSITIONS: usize = 64;

/// Step of the search for a change of UTC offset: no zone changes offset twice in a day.
const DAY_SECS: i64 = 86_400;

/// A job's schedule, ready to tell when it fires.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: Tz,
}

#[derive(Debug, Clone)]
enum Kind {
    Reboot,
    Cron {
        cron: Box<Cron>,
        /// The hour field matches every hour: the job runs through a repeated hour twice.
        every_hour: bool,
    },
}

impl Schedule {
    /// Parses `expr` as `schedule:` and `timezone` as `timezone:`, with the same rules (and
    /// messages) as config validation.
    pub fn new(expr: &str, timezone: &str) -> Result<Schedule, String> {
        let tz = parse_timezone(timezone)?;
        let kind = match parse_schedule(expr)? {
            ParsedSchedule::Reboot => Kind::Reboot,
            ParsedSchedule::Cron(cron) => {
                // An error means an hour out of 0..=23, which cannot be asked here.
                let every_hour = (0..24).all(|h| cron.pattern.hour_match(h).unwrap_or(false));
                Kind::Cron { cron, every_hour }
            }
        };
        Ok(Schedule { kind, tz })
    }

    /// `@reboot`: runs once when pgward starts, never on the clock.
    pub fn is_reboot(&self) -> bool {
        matches!(self.kind, Kind::Reboot)
    }

    /// The first fire time strictly after `t`; `None` for `@reboot` (or past the year 5000,
    /// croner's horizon).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Fire times are whole seconds; `timestamp` rounds down, so `+ 1` is the first whole
        // second after `t`.
        let first = self.first_fire_from(t.timestamp().checked_add(1)?)?;
        DateTime::from_timestamp(first, 0)
    }

    /// The latest fire time in `(after, up_to]`: the run missed while pgward was down, for
    /// `catch_up`. `None` when there is none, or for `@reboot`.
    ///
    /// Bisects the interval rather than walking it: the cost is log2 of the interval's length
    /// in seconds searches like [`Schedule::next_after`] (25 for a year of downtime), however
    /// often the job fires; a seconds schedule does not make it walk millions of fire times.
    pub fn last_due(&self, after: DateTime<Utc>, up_to: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Work in whole seconds: fire times in (after, up_to] are those in (lo, hi].
        let mut lo = after.timestamp();
        let mut hi = up_to.timestamp();
        let fires_in = |lo: i64, hi: i64| {
            self.first_fire_from(lo.checked_add(1)?)
                .filter(|&fire| fire <= hi)
        };
        fires_in(lo, hi)?;
        // Invariant: the latest fire time of (after, up_to] lies in (lo, hi]; when the
        // interval is one second long, that is hi.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fires_in(mid, hi).is_some() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        DateTime::from_timestamp(hi, 0)
    }

    /// The first fire time at or after `from` (seconds since the epoch), following the rules
    /// of the module doc.
    ///
    /// Walks the time line one UTC offset at a time: within a stretch of constant offset
    /// `off`, the instant of wall-clock time `w` is `w - off`, so croner's next matching
    /// wall-clock time gives the candidate directly; when a change of offset comes first, the
    /// gap or fold it makes is resolved and the walk resumes after it.
    fn first_fire_from(&self, from: i64) -> Option<i64> {
        let Kind::Cron { cron, every_hour } = &self.kind else {
            return None;
        };
        // The walk starts one second early so that a change of offset exactly at `from` is
        // seen as one: a gap ending at `from` fires at `from`.
        let mut lo = from.checked_sub(1)?;
        let mut off = self.offset_at(lo)?;
        // The wall-clock time from which matches are looked for.
        let mut wall_lo = lo.checked_add(off)?.checked_add(1)?;
        if !every_hour {
            if let Some(fold_end) = self.repeated_until(lo, off) {
                // Inside the second pass of a repeated hour: its times fired the first time.
                wall_lo = wall_lo.max(fold_end);
            }
        }
        for _ in 0..MAX_TRANSITIONS {
            let wall = next_wall_match(cron, wall_lo)?;
            let candidate = wall.checked_sub(off)?;
            let Some(change) = self.next_offset_change(lo, candidate, off) else {
                return Some(candidate);
            };
            let new_off = self.offset_at(change)?;
            if new_off > off {
                // Gap: wall-clock times [change + off, change + new_off) do not exist; one
                // of them matching fires when the gap ends, for a job at fixed hours.
                if !every_hour && wall < change.checked_add(new_off)? {
                    return Some(change);
                }
                wall_lo = change.checked_add(new_off)?;
            } else {
                // Fold: wall-clock times [change + new_off, change + off) happen again.
                wall_lo = if *every_hour {
                    change.checked_add(new_off)?
                } else {
                    change.checked_add(off)?
                };
            }
            lo = change;
            off = new_off;
        }
        None
    }

    /// When `at` (whose offset is `off`) is in the second pass of a repeated hour: the
    /// wall-clock time at which the repetition ends.
    fn repeated_until(&self, at: i64, off: i64) -> Option<i64> {
        let wall = DateTime::from_timestamp(at.checked_add(off)?, 0)?.naive_utc();
        let LocalResult::Ambiguous(a, b) = self.tz.from_local_datetime(&wall) else {
            return None;
        };
        let (first, second) = (
            a.timestamp().min(b.timestamp()),
            a.timestamp().max(b.timestamp()),
        );
        if at != second {
            return None;
        }
        let first_off = self.offset_at(first)?;
        let change = self.next_offset_change(first, at, first_off)?;
        change.checked_add(first_off)
    }

    /// Seconds east of UTC of the job's zone at instant `at`.
    fn offset_at(&self, at: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp(at, 0)?.naive_utc();
        Some(i64::from(
            self.tz
                .offset_from_utc_datetime(&utc)
                .fix()
                .local_minus_utc(),
        ))
    }

    /// The first instant in `(from, to]` whose offset is not `off` (the offset at `from`).
    fn next_offset_change(&self, from: i64, to: i64, off: i64) -> Option<i64> {
        let mut start = from;
        while start < to {
            let end = start.saturating_add(DAY_SECS).min(to);
            if self.offset_at(end)? != off {
                // At most one change in a day: bisect (start, end] for it.
                let (mut same, mut changed) = (start, end);
                while changed - same > 1 {
                    let mid = same + (changed - same) / 2;
                    if self.offset_at(mid)? == off {
                        same = mid;
                    } else {
                        changed = mid;
                    }
                }
                return Some(changed);
            }
            start = end;
        }
        None
    }
}

/// The first wall-clock time at or after `wall` (seconds, as if the wall clock were UTC)
/// that `cron` matches. In UTC every wall-clock time exists exactly once, so croner's
/// search is a pure search over wall-clock times.
fn next_wall_match(cron: &Cron, wall: i64) -> Option<i64> {
    let start = DateTime::from_timestamp(wall, 0)?;
    cron.find_next_occurrence(&start, true)
        .ok()
        .map(|found| found.timestamp())
}

/// `rfc3339` as a UTC time: how the scheduler's tests write their instants.
#[cfg(test)]
pub(super) fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test time")
        .with_timezone(&Utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(expr: &str, tz: &str) -> Schedule {
        Schedule::new(expr, tz).expect("valid schedule")
    }

    /// The next `n` fire times after `from`, on the job's wall clock with its offset.
    fn fires(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = at(from);
        let mut out = Vec::new();
        for _ in 0..n {
            let next = s.next_after(t).expect("fires");
            assert!(next > t, "{next} not after {t}");
            out.push(next.with_timezone(&s.tz).to_rfc3339());
            t = next;
        }
        out
    }

    #[test]
    fn daily_job_in_paris_on_spring_forward_runs_when_the_gap_ends() {
        let s = schedule("30 2 * * *", "Europe/Paris");
        assert_eq!(
            fires(&s, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
            ]
        );
        // Asked just before the gap, or at its end: the same one run.
        assert_eq!(
            s.next_after(at("2026-03-29T01:59:59+01:00")),
            Some(at("2026-03-29T03:00:00+02:00"))
        );
        assert_eq!(
            s.next_after(at("2026-03-29T03:00:00+02:00")),
            Some(at("2026-03-30T02:30:00+02:00"))
        );
    }

    #[test]
    fn daily_job_in_paris_on_fall_back_runs_at_the_first_occurrence_only() {
        let s = schedule("30 2 * * *", "Europe/Paris");
        assert_eq!(
            fires(&s, "2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24T02:30:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00",
            ]
        );
        // From anywhere after the first 02:30, including the repeated hour (where croner
        // alone answers the earlier 02:30, before the time asked about).
        for from in [
            "2026-10-25T02:45:00+02:00",
            "2026-10-25T02:00:00+01:00",
            "2026-10-25T02:10:00+01:00",
            "2026-10-25T02:30:00+01:00",
            "2026-10-25T02:59:59+01:00",
        ] {
            assert_eq!(
                s.next_after(at(from)),
                Some(at("2026-10-26T02:30:00+01:00")),
                "{from}"
            );
        }
    }

    #[test]
    fn new_york_gap_and_fold() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT. 2026-11-01: 02:00 EDT becomes 01:00 EST.
        let s = schedule("30 2 * * *", "America/New_York");
        assert_eq!(
            fires(&s, "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
        );
        assert_eq!(
            fires(&s, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T02:30:00-05:00", "2026-11-02T02:30:00-05:00"]
        );
        let s = schedule("30 1 * * *", "America/New_York");
        assert_eq!(
            fires(&s, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
        assert_eq!(
            s.next_after(at("2026-11-01T01:10:00-05:00")),
            Some(at("2026-11-02T01:30:00-05:00"))
        );
    }

    #[test]
    fn interval_jobs_keep_their_interval_through_dst() {
        let s = schedule("*/30 * * * *", "Europe/Paris");
        assert_eq!(
            fires(&s, "2026-03-29T01:00:00+01:00", 3),
            [
                "2026-03-29T01:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:30:00+02:00",
            ]
        );
        assert_eq!(
            fires(&s, "2026-10-25T01:45:00+02:00", 6),
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T03:00:00+01:00",
                "2026-10-25T03:30:00+01:00",
            ]
        );
        // Started inside the repeated hour, it carries on there.
        assert_eq!(
            fires(&s, "2026-10-25T02:10:00+01:00", 1),
            ["2026-10-25T02:30:00+01:00"]
        );
        // A minute that falls in the gap is not replaced by a run at the gap's end.
        let s = schedule("5 * * * *", "Europe/Paris");
        assert_eq!(
            fires(&s, "2026-03-29T01:00:00+01:00", 2),
            ["2026-03-29T01:05:00+01:00", "2026-03-29T03:05:00+02:00"]
        );
        let hourly = schedule("@hourly", "America/New_York");
        assert_eq!(
            fires(&hourly, "2026-11-01T00:30:00-04:00", 3),
            [
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T02:00:00-05:00",
            ]
        );
        // A fixed hour list is not "every hour": the repeated 01:xx runs once.
        let s = schedule("*/30 1 * * *", "America/New_York");
        assert_eq!(
            fires(&s, "2026-11-01T00:30:00-04:00", 3),
            [
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-02T01:00:00-05:00",
            ]
        );
    }

    #[test]
    fn every_ten_minutes_across_both_dst_days_is_strictly_increasing() {
        for (expr, day, runs) in [
            // 23-hour day: six runs an hour.
            ("*/10 * * * *", "2026-03-29", 23 * 6),
            // 25-hour day: the repeated hour runs too.
            ("*/10 * * * *", "2026-10-25", 25 * 6),
            ("30 2 * * *", "2026-03-29", 1),
            ("30 2 * * *", "2026-10-25", 1),
        ] {
            let s = schedule(expr, "Europe/Paris");
            let start = s.tz.from_local_datetime(
                &chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
                    .expect("date")
                    .and_hms_opt(0, 0, 0)
                    .expect("midnight"),
            );
            let start = start.single().expect("midnight exists").with_timezone(&Utc);
            let end = start + chrono::Duration::hours(if day.ends_with("29") { 23 } else { 25 });
            let mut t = start - chrono::Duration::seconds(1);
            let mut count = 0;
            while let Some(next) = s.next_after(t).filter(|&n| n < end) {
                assert!(next > t);
                if expr.starts_with("*/10") && count > 0 {
                    assert_eq!(next - t, chrono::Duration::minutes(10), "{expr} at {next}");
                }
                t = next;
                count += 1;
            }
            assert_eq!(count, runs, "{expr} on {day}");
        }
    }

    #[test]
    fn nicknames() {
        // A Friday.
        let from = "2026-05-15T10:20:30Z";
        for (nick, next) in [
            ("@hourly", "2026-05-15T11:00:00+00:00"),
            ("@daily", "2026-05-16T00:00:00+00:00"),
            ("@midnight", "2026-05-16T00:00:00+00:00"),
            ("@weekly", "2026-05-17T00:00:00+00:00"),
            ("@monthly", "2026-06-01T00:00:00+00:00"),
            ("@yearly", "2027-01-01T00:00:00+00:00"),
            ("@annually", "2027-01-01T00:00:00+00:00"),
        ] {
            assert_eq!(fires(&schedule(nick, "UTC"), from, 1), [next], "{nick}");
        }
        assert_eq!(
            fires(&schedule("@daily", "Europe/Paris"), from, 1),
            ["2026-05-16T00:00:00+02:00"]
        );
    }

    #[test]
    fn seconds_and_minutes_are_strictly_after() {
        let s = schedule("*/10 * * * * *", "UTC");
        assert_eq!(
            fires(&s, "2026-05-15T10:20:30.500Z", 3),
            [
                "2026-05-15T10:20:40+00:00",
                "2026-05-15T10:20:50+00:00",
                "2026-05-15T10:21:00+00:00",
            ]
        );
        assert_eq!(
            s.next_after(at("2026-05-15T10:20:40Z")),
            Some(at("2026-05-15T10:20:50Z"))
        );
        let s = schedule("* * * * *", "UTC");
        assert_eq!(
            s.next_after(at("2026-05-15T10:20:00Z")),
            Some(at("2026-05-15T10:21:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-05-15T10:20:59.999Z")),
            Some(at("2026-05-15T10:21:00Z"))
        );
    }

    #[test]
    fn reboot_has_no_time() {
        let s = schedule("@reboot", "Europe/Paris");
        assert!(s.is_reboot());
        assert_eq!(s.next_after(at("2026-05-15T10:20:30Z")), None);
        assert_eq!(
            s.last_due(at("2026-01-01T00:00:00Z"), at("2026-05-15T10:20:30Z")),
            None
        );
        assert!(!schedule("@daily", "UTC").is_reboot());
    }

    #[test]
    fn leap_day() {
        let s = schedule("0 12 29 2 *", "Europe/Paris");
        assert_eq!(
            fires(&s, "2026-05-15T10:20:30Z", 2),
            ["2028-02-29T12:00:00+01:00", "2032-02-29T12:00:00+01:00"]
        );
    }

    #[test]
    fn new_reports_config_messages() {
        assert_eq!(
            Schedule::new("@daily", "Mars/Olympus").unwrap_err(),
            "unknown time zone \"Mars/Olympus\" (use UTC or an IANA name of the tz database \
             such as Europe/Paris or America/New_York; case matters)"
        );
        assert!(Schedule::new("61 * * * *", "UTC")
            .unwrap_err()
            .starts_with("invalid cron schedule \"61 * * * *\": "));
    }

    #[test]
    fn last_due_is_the_latest_fire_time_in_the_interval() {
        let s = schedule("0 1 * * *", "UTC");
        let (after, up_to) = (at("2026-05-01T00:00:00Z"), at("2026-05-10T12:00:00Z"));
        assert_eq!(s.last_due(after, up_to), Some(at("2026-05-10T01:00:00Z")));
        // Inclusive of up_to, exclusive of after.
        assert_eq!(
            s.last_due(after, at("2026-05-10T01:00:00Z")),
            Some(at("2026-05-10T01:00:00Z"))
        );
        assert_eq!(s.last_due(at("2026-05-10T01:00:00Z"), up_to), None);
        assert_eq!(s.last_due(up_to, after), None);
        assert_eq!(s.last_due(up_to, up_to), None);
    }

    #[test]
    fn last_due_over_a_long_downtime_of_a_seconds_schedule() {
        let s = schedule("*/10 * * * * *", "Europe/Paris");
        assert_eq!(
            s.last_due(at("2025-05-01T00:00:00Z"), at("2026-05-15T10:20:35.700Z")),
            Some(at("2026-05-15T10:20:30Z"))
        );
        let s = schedule("@yearly", "UTC");
        assert_eq!(
            s.last_due(at("2000-06-01T00:00:00Z"), at("2026-05-15T10:20:35Z")),
            Some(at("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn last_due_follows_the_dst_rules() {
        let s = schedule("30 2 * * *", "Europe/Paris");
        assert_eq!(
            s.last_due(at("2026-10-24T12:00:00Z"), at("2026-10-25T03:00:00+01:00")),
            Some(at("2026-10-25T02:30:00+02:00"))
        );
        assert_eq!(
            s.last_due(at("2026-03-28T12:00:00Z"), at("2026-03-29T12:00:00Z")),
            Some(at("2026-03-29T03:00:00+02:00"))
        );
    }

    #[test]
    fn last_due_agrees_with_walking_forward() {
        let cases = [
            ("*/7 * * * *", "Europe/Paris"),
            ("30 2 * * *", "Europe/Paris"),
            ("*/30 * * * *", "America/New_York"),
            ("15 1 * * 0", "America/New_York"),
            ("*/45 * * * * *", "UTC"),
        ];
        for (expr, tz) in cases {
            let s = schedule(expr, tz);
            for (after, up_to) in [
                ("2026-03-28T20:00:00Z", "2026-03-29T04:10:00Z"),
                ("2026-10-24T22:00:00Z", "2026-10-25T01:20:00Z"),
                ("2026-10-24T22:00:00Z", "2026-10-25T00:45:00Z"),
                ("2026-03-07T20:00:00Z", "2026-03-08T07:03:00Z"),
                ("2026-10-31T20:00:00Z", "2026-11-01T06:40:00Z"),
                ("2026-10-31T20:00:00Z", "2026-11-01T05:40:00Z"),
            ] {
                let (after, up_to) = (at(after), at(up_to));
                let mut walked = None;
                let mut t = after;
                while let Some(next) = s.next_after(t).filter(|&n| n <= up_to) {
                    walked = Some(next);
                    t = next;
                }
                assert_eq!(
                    s.last_due(after, up_to),
                    walked,
                    "{expr} {tz} {after} {up_to}"
                );
            }
        }
    }
}
