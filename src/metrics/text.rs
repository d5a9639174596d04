//! The Prometheus text exposition format, version 0.0.4: families of samples collected from
//! several places and written once, in a deterministic order.
//!
//! Owns the format only (names, escaping, values); what the metrics mean is the collectors'
//! business. Format reference:
//! <https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>.
//!
//! Guarantees, whoever adds samples and in whatever order:
//! - one `# HELP` and one `# TYPE` line per family, families sorted by name, samples sorted
//!   by their label pairs;
//! - no duplicate series: a sample with the same label pairs as an earlier one replaces it;
//! - a family asked for again with another type keeps its first type, and the samples
//!   offered under the other type are dropped (a scrape with two `# TYPE` lines for one name
//!   is refused whole by Prometheus);
//! - names that are not valid metric or label names are never written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The content type of [`Families::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Untyped,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Untyped => "untyped",
        }
    }
}

/// Label pairs in the order they are written.
type Labels = Vec<(String, String)>;

/// One metric family: help, type and its samples keyed by label pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    help: String,
    kind: Kind,
    samples: BTreeMap<Labels, f64>,
}

impl Family {
    fn new(help: &str, kind: Kind) -> Family {
        Family {
            help: help.to_owned(),
            kind,
            samples: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the sample with these label pairs. Pairs with an invalid label name
    /// make the sample invalid: it is dropped.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Family {
        if labels.iter().all(|(name, _)| is_label_name(name)) {
            let key = labels
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            self.samples.insert(key, value);
        } else {
            tracing::debug!(?labels, "invalid label name: sample dropped");
        }
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn help(&self) -> &str {
        &self.help
    }

    /// The samples, in output order.
    pub fn samples(&self) -> impl Iterator<Item = (&[(String, String)], f64)> {
        self.samples.iter().map(|(l, v)| (l.as_slice(), *v))
    }

    /// The value of the sample with exactly these label pairs (in any order).
    pub fn get(&self, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(have, _)| {
                have.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(n, v)| have.iter().any(|(hn, hv)| hn == n && hv == v))
            })
            .map(|(_, v)| *v)
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Families by name; see the module doc for the guarantees.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Families {
    families: BTreeMap<String, Family>,
    /// Where samples that cannot be written go (an invalid name, a type conflict); never
    /// rendered.
    sink: Option<Box<Family>>,
}

impl Families {
    pub fn new() -> Families {
        Families::default()
    }

    pub fn counter(&mut self, name: &str, help: &str) -> &mut Family {
        self.family(name, help, Kind::Counter)
    }

    pub fn gauge(&mut self, name: &str, help: &str) -> &mut Family {
        self.family(name, help, Kind::Gauge)
    }

    pub fn untyped(&mut self, name: &str, help: &str) -> &mut Family {
        self.family(name, help, Kind::Untyped)
    }

    /// The family `name`, created with `help` and `kind` if new. The first help text stays.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Family {
        let usable = match self.families.get(name) {
            Some(existing) if existing.kind != kind => {
                tracing::warn!(
                    name,
                    first = existing.kind.as_str(),
                    then = kind.as_str(),
                    "metric family asked for with two types: the second one's samples are dropped"
                );
                false
            }
            Some(_) => true,
            None if is_metric_name(name) => true,
            None => {
                tracing::warn!(name, "invalid metric name: family dropped");
                false
            }
        };
        if usable {
            return self
                .families
                .entry(name.to_owned())
                .or_insert_with(|| Family::new(help, kind));
        }
        let sink = self
            .sink
            .get_or_insert_with(|| Box::new(Family::new("", kind)));
        sink.samples.clear();
        sink
    }

    /// Moves every family of `other` into `self`, with the same rules as adding its samples
    /// one by one.
    pub fn merge(&mut self, other: Families) {
        for (name, family) in other.families {
            let target = self.family(&name, &family.help, family.kind);
            target.samples.extend(family.samples);
        }
    }

    pub fn get(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    /// Families by name, in output order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Family)> {
        self.families.iter().map(|(n, f)| (n.as_str(), f))
    }

    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    /// The exposition text. Families without samples are left out.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    /// [`render`](Self::render), appending to `out`.
    pub fn render_into(&self, out: &mut String) {
        for (name, family) in &self.families {
            if family.samples.is_empty() {
                continue;
            }
            out.push_str("# HELP ");
            out.push_str(name);
            if !family.help.is_empty() {
                out.push(' ');
                escape_help(&family.help, out);
            }
            out.push('\n');
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, value) in &family.samples {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (label, value)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(label);
                        out.push_str("=\"");
                        // Label values come from the database (custom queries among them):
                        // a secret-named column, or a secret in a value, is not exported.
                        if crate::redact::is_secret_name(label) {
                            out.push_str(crate::redact::REDACTED);
                        } else {
                            escape_label_value(&crate::redact::scrub(value), out);
                        }
                        out.push('"');
                    }
                    out.push('}');
                }
                out.push(' ');
                format_value(*value, out);
                out.push('\n');
            }
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not starting with `__` (reserved for Prometheus).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Help text: backslash and line feed are escaped.
fn escape_help(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Label values: backslash, double quote and line feed are escaped.
fn escape_label_value(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `NaN`, `+Inf`, `-Inf`, else a float Go's `strconv.ParseFloat` (Prometheus's parser) reads
/// back exactly: the shortest round-tripping form, in exponent notation when it would
/// otherwise be long.
fn format_value(value: f64, out: &mut String) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value != 0.0 && (value.abs() >= 1e15 || value.abs() < 1e-4) {
        let _ = write!(out, "{value:e}");
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_sorted_with_one_header_each() {
        let mut families = Families::new();
        families
            .gauge("pg_b", "second")
            .sample(&[("datname", "y")], 2.0);
        families.counter("pg_a_total", "first").sample(&[], 7.0);
        // Added from another place: same family, no second header.
        families
            .gauge("pg_b", "ignored help")
            .sample(&[("datname", "x")], 1.5);
        assert_eq!(
            families.render(),
            "# HELP pg_a_total first\n\
             # TYPE pg_a_total counter\n\
             pg_a_total 7\n\
             # HELP pg_b second\n\
             # TYPE pg_b gauge\n\
             pg_b{datname=\"x\"} 1.5\n\
             pg_b{datname=\"y\"} 2\n"
        );
    }

    #[test]
    fn escapes_label_values_and_help() {
        let mut families = Families::new();
        families
            .untyped("m", "a \\ back\nslash \"quoted\"")
            .sample(&[("v", "a\\b\"c\nd"), ("w", "é")], 1.0);
        assert_eq!(
            families.render(),
            "# HELP m a \\\\ back\\nslash \"quoted\"\n\
             # TYPE m untyped\n\
             m{v=\"a\\\\b\\\"c\\nd\",w=\"é\"} 1\n"
        );
    }

    #[test]
    fn secret_label_values_are_not_exported() {
        let mut families = Families::new();
        families.untyped("m", "").sample(
            &[
                ("api_key", "k-1"),
                ("conninfo", "host=h password=pw"),
                ("dsn", "postgresql://u:pw@h/d"),
            ],
            1.0,
        );
        assert_eq!(
            families.render(),
            "# HELP m\n# TYPE m untyped\n\
             m{api_key=\"<redacted>\",conninfo=\"host=h password=<redacted>\",\
             dsn=\"postgresql://u:…@h/d\"} 1\n"
        );
    }

    #[test]
    fn writes_special_and_large_values() {
        let render = |v: f64| {
            let mut s = String::new();
            format_value(v, &mut s);
            s
        };
        assert_eq!(render(f64::NAN), "NaN");
        assert_eq!(render(f64::INFINITY), "+Inf");
        assert_eq!(render(f64::NEG_INFINITY), "-Inf");
        assert_eq!(render(0.0), "0");
        assert_eq!(render(-1.0), "-1");
        assert_eq!(render(0.002), "0.002");
        assert_eq!(render(134217728.0), "134217728");
        assert_eq!(render(1796017415.0), "1796017415");
        assert_eq!(render(1e300), "1e300");
        assert_eq!(render(1.5e-7), "1.5e-7");
        for v in [0.1, 1.0 / 3.0, 1e300, 1.5e-7, 123456789.125, 2f64.powi(60)] {
            assert_eq!(render(v).parse::<f64>().unwrap(), v, "{v} round-trips");
        }
    }

    #[test]
    fn a_repeated_series_replaces_the_earlier_sample() {
        let mut families = Families::new();
        let family = families.gauge("g", "h");
        family.sample(&[("a", "1")], 1.0);
        family.sample(&[("a", "1")], 2.0);
        assert_eq!(
            families.render(),
            "# HELP g h\n# TYPE g gauge\ng{a=\"1\"} 2\n"
        );
    }

    #[test]
    fn a_type_conflict_keeps_the_first_type_and_its_samples() {
        let mut families = Families::new();
        families.gauge("g", "h").sample(&[], 1.0);
        families.counter("g", "h").sample(&[], 5.0);
        families.counter("g", "h").sample(&[("x", "y")], 5.0);
        assert_eq!(families.render(), "# HELP g h\n# TYPE g gauge\ng 1\n");
    }

    #[test]
    fn invalid_names_are_never_written() {
        let mut families = Families::new();
        families.gauge("bad-name", "h").sample(&[], 1.0);
        families.gauge("0bad", "h").sample(&[], 1.0);
        families.gauge("ok", "h").sample(&[("bad label", "v")], 1.0);
        families
            .gauge("ok", "h")
            .sample(&[("__reserved", "v")], 1.0);
        assert_eq!(families.render(), "");
        assert!(is_metric_name("pg_stat:x_1"));
        assert!(is_label_name("_x1"));
        assert!(!is_label_name("a:b"));
    }

    #[test]
    fn merge_follows_the_same_rules() {
        let mut a = Families::new();
        a.gauge("g", "first").sample(&[("k", "1")], 1.0);
        let mut b = Families::new();
        b.gauge("g", "second").sample(&[("k", "2")], 2.0);
        b.counter("c_total", "c").sample(&[], 3.0);
        a.merge(b);
        assert_eq!(
            a.render(),
            "# HELP c_total c\n# TYPE c_total counter\nc_total 3\n\
             # HELP g first\n# TYPE g gauge\ng{k=\"1\"} 1\ng{k=\"2\"} 2\n"
        );
        assert_eq!(a.get("g").unwrap().get(&[("k", "2")]), Some(2.0));
    }

    #[test]
    fn empty_families_and_empty_help_render_cleanly() {
        let mut families = Families::new();
        families.gauge("never_sampled", "h");
        families.gauge("no_help", "").sample(&[], 1.0);
        assert_eq!(
            families.render(),
            "# HELP no_help\n# TYPE no_help gauge\nno_help 1\n"
        );
    }
}
