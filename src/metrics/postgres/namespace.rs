//! A namespace: one query whose result columns become metric families
//! `<namespace>_<column>`, the model of postgres_exporter's metric maps and of its
//! `queries.yaml`.
//!
//! Results arrive in PostgreSQL's text format (the simple query protocol), which is what
//! postgres_exporter's driver reads too: label values are the server's own text (`inet`,
//! `name`, `oid`...), numbers, booleans and timestamps are turned into floats here.

use std::time::Duration;

use tokio_postgres::SimpleQueryRow;

use crate::metrics::text::{Families, Kind};

/// What a column becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A label of every family of the namespace.
    Label,
    Counter,
    Gauge,
    /// Ignored.
    Discard,
}

/// A column of a namespace's query.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub usage: Usage,
    pub help: String,
    /// The family's name when it is not `<namespace>_<column>`.
    pub family: Option<String>,
}

impl Column {
    pub fn new(name: &str, usage: Usage, help: &str) -> Column {
        Column {
            name: name.to_owned(),
            usage,
            help: help.to_owned(),
            family: None,
        }
    }

    /// A column written as the family `family` instead of `<namespace>_<column>`.
    pub fn named(name: &str, family: &str, usage: Usage, help: &str) -> Column {
        Column {
            family: Some(family.to_owned()),
            ..Column::new(name, usage, help)
        }
    }
}

/// One query and how its columns are read.
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    /// Prefix of the families: `pg_stat_database`.
    pub name: String,
    /// Its `collector` label in `pg_scrape_collector_success`.
    pub collector: String,
    pub query: String,
    pub columns: Vec<Column>,
    /// Columns the query returns that `columns` does not name become untyped families
    /// ("Unknown metric from ..."), as postgres_exporter does: the views grow columns with
    /// new server versions.
    pub unknown_columns: bool,
    /// A result is reused for this long (`cache_seconds`).
    pub cache: Option<Duration>,
    /// Server versions the query runs on (`runonserver`); all when `None`.
    pub versions: Option<VersionRange>,
}

impl Namespace {
    /// The families of `rows`; every family also gets the `server` label.
    pub fn families(&self, rows: &[SimpleQueryRow], server: &str, out: &mut Families) {
        let labels: Vec<&Column> = self
            .columns
            .iter()
            .filter(|c| c.usage == Usage::Label)
            .collect();
        for row in rows {
            let columns = row.columns();
            let value_of = |name: &str| {
                columns
                    .iter()
                    .position(|c| c.name() == name)
                    .and_then(|i| row.get(i))
            };
            let mut pairs: Vec<(&str, &str)> = labels
                .iter()
                .map(|c| (c.name.as_str(), value_of(&c.name).unwrap_or("")))
                .collect();
            pairs.push(("server", server));
            for (i, column) in columns.iter().enumerate() {
                let name = column.name();
                let text = row.get(i);
                match self.columns.iter().find(|c| c.name == name) {
                    Some(known) => {
                        let kind = match known.usage {
                            Usage::Label | Usage::Discard => continue,
                            Usage::Counter => Kind::Counter,
                            Usage::Gauge => Kind::Gauge,
                        };
                        let Some(value) = parse_value(text) else {
                            tracing::debug!(
                                namespace = self.name,
                                column = name,
                                text,
                                "value is not a number: sample left out"
                            );
                            continue;
                        };
                        let family = match &known.family {
                            Some(family) => family.clone(),
                            None => format!("{}_{name}", self.name),
                        };
                        out.family(&family, &known.help, kind).sample(&pairs, value);
                    }
                    None if self.unknown_columns => {
                        if let Some(value) = parse_value(text) {
                            out.untyped(
                                &format!("{}_{name}", self.name),
                                &format!("Unknown metric from {}", self.name),
                            )
                            .sample(&pairs, value);
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// A column's text as a float: NULL is NaN, booleans are 1 and 0, numbers (with `NaN` and
/// `Infinity`) as written, ISO timestamps are whole seconds since the Unix epoch (the
/// session runs with `DateStyle=ISO`). Anything else is not a number.
pub fn parse_value(text: Option<&str>) -> Option<f64> {
    let Some(text) = text else {
        return Some(f64::NAN);
    };
    match text {
        "t" => return Some(1.0),
        "f" => return Some(0.0),
        _ => {}
    }
    if let Ok(v) = text.parse::<f64>() {
        return Some(v);
    }
    // `2026-01-02 03:04:05.123456+00`, or with a `+05:30` offset in other time zones.
    chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.timestamp() as f64)
}

/// A server version, `major.minor.patch` (PostgreSQL 10 and later: `major.minor.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// From `server_version_num`: 150018 is 15.18.0, 90624 is 9.6.24.
    pub fn from_num(num: u32) -> Version {
        if num >= 100_000 {
            Version(num / 10_000, num % 10_000, 0)
        } else {
            Version(num / 10_000, num / 100 % 100, num % 100)
        }
    }

    fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().unwrap_or(Ok(0)).ok()?;
        let patch = parts.next().unwrap_or(Ok(0)).ok()?;
        parts
            .next()
            .is_none()
            .then_some(Version(major, minor, patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A semver range as postgres_exporter's `runonserver` takes it: comparisons joined by
/// spaces (all must hold), alternatives joined by `||`: `>=10.0.0 <12.0.0 || >=14`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRange {
    alternatives: Vec<Vec<(Op, Version)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl VersionRange {
    pub fn parse(text: &str) -> Result<VersionRange, String> {
        let mut alternatives = Vec::new();
        for alternative in text.split("||") {
            let mut all = Vec::new();
            for word in alternative.split_whitespace() {
                let (op, rest) = [
                    (">=", Op::Ge),
                    ("<=", Op::Le),
                    ("!=", Op::Ne),
                    ("==", Op::Eq),
                    (">", Op::Gt),
                    ("<", Op::Lt),
                    ("=", Op::Eq),
                ]
                .iter()
                .find_map(|(p, op)| word.strip_prefix(p).map(|rest| (*op, rest)))
                .unwrap_or((Op::Eq, word));
                let version = Version::parse(rest)
                    .ok_or_else(|| format!("{word:?} is not a comparison with a version"))?;
                all.push((op, version));
            }
            if all.is_empty() {
                return Err(format!("{text:?} has an empty alternative"));
            }
            alternatives.push(all);
        }
        Ok(VersionRange { alternatives })
    }

    pub fn contains(&self, v: Version) -> bool {
        self.alternatives.iter().any(|all| {
            all.iter().all(|(op, bound)| match op {
                Op::Eq => v == *bound,
                Op::Ne => v != *bound,
                Op::Lt => v < *bound,
                Op::Le => v <= *bound,
                Op::Gt => v > *bound,
                Op::Ge => v >= *bound,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_values_like_postgres_exporter() {
        assert!(parse_value(None).unwrap().is_nan());
        assert_eq!(parse_value(Some("t")), Some(1.0));
        assert_eq!(parse_value(Some("f")), Some(0.0));
        assert_eq!(parse_value(Some("42")), Some(42.0));
        assert_eq!(parse_value(Some("-1.5e3")), Some(-1500.0));
        assert_eq!(parse_value(Some("123.456789012")), Some(123.456789012));
        assert!(parse_value(Some("NaN")).unwrap().is_nan());
        assert_eq!(parse_value(Some("Infinity")), Some(f64::INFINITY));
        assert_eq!(parse_value(Some("-Infinity")), Some(f64::NEG_INFINITY));
        assert_eq!(
            parse_value(Some("2026-11-30 05:43:35.123456+00")),
            Some(1796017415.0)
        );
        assert_eq!(
            parse_value(Some("2026-11-30 11:13:35+05:30")),
            Some(1796017415.0)
        );
        assert_eq!(parse_value(Some("streaming")), None);
        assert_eq!(parse_value(Some("0/3000000")), None);
    }

    #[test]
    fn versions_and_ranges() {
        assert_eq!(Version::from_num(150018).to_string(), "15.18.0");
        assert_eq!(Version::from_num(90624).to_string(), "9.6.24");
        let range = VersionRange::parse(">=10.0.0 <12 || =15.2").unwrap();
        assert!(range.contains(Version(10, 0, 0)));
        assert!(range.contains(Version(11, 9, 0)));
        assert!(!range.contains(Version(12, 0, 0)));
        assert!(!range.contains(Version(9, 6, 24)));
        assert!(range.contains(Version(15, 2, 0)));
        assert!(VersionRange::parse("9.6.24")
            .unwrap()
            .contains(Version(9, 6, 24)));
        assert!(VersionRange::parse(">=x").is_err());
        assert!(VersionRange::parse(">=10 ||").is_err());
    }
}
