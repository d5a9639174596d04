//! Custom queries in postgres_exporter's `queries.yaml` format, read and checked once at
//! start-up:
//!
//! ```yaml
//! pg_replication:
//!   query: "SELECT ... AS lag"
//!   master: true            # accepted, without effect: pgward queries one database
//!   cache_seconds: 30       # optional: reuse a result this long
//!   runonserver: ">=10.0.0" # optional: server versions the query runs on
//!   metrics:
//!     - lag:
//!         usage: GAUGE      # LABEL, COUNTER, GAUGE or DISCARD
//!         description: "Replication lag behind master in seconds"
//! ```
//!
//! Every problem of the file is reported at once, each naming the file and the query.

use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::namespace::{Column, Namespace, Usage, VersionRange};
use crate::metrics::text::{is_label_name, is_metric_name};

/// Reads and checks the queries file at `path`.
pub fn load(path: &Path) -> anyhow::Result<Vec<Namespace>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("read metrics.queries_file {}: {e}", path.display()))?;
    parse(&text, &path.display().to_string()).map_err(|problems| anyhow::anyhow!(problems))
}

/// `value` as the file writes it (`1`, `true`, `null`), or its kind, for a problem that
/// quotes a key which is not a string.
fn yaml_text(value: &Value) -> String {
    match value {
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
        scalar => serde_yaml_ng::to_string(scalar)
            .map(|text| text.trim_end().to_owned())
            .unwrap_or_else(|_| "another kind of value".into()),
    }
}

/// Parses `text`; `file` names it in the problems, one per line.
pub fn parse(text: &str, file: &str) -> Result<Vec<Namespace>, String> {
    let root: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("{file}: {e}"))?;
    let mut problems = Vec::new();
    let mut namespaces = Vec::new();
    match root {
        // An empty file: no queries.
        Value::Null => {}
        Value::Mapping(queries) => {
            for (name, body) in queries {
                let Some(name) = name.as_str() else {
                    problems.push(format!(
                        "{file}: query names must be strings, not {}",
                        yaml_text(&name)
                    ));
                    continue;
                };
                let before = problems.len();
                let namespace = check_query(name, body, &mut |problem| {
                    problems.push(format!("{file}: query {name}: {problem}"))
                });
                if problems.len() == before {
                    namespaces.extend(namespace);
                }
            }
        }
        _ => problems.push(format!(
            "{file}: expected a mapping of query names to queries"
        )),
    }
    if problems.is_empty() {
        Ok(namespaces)
    } else {
        Err(problems.join("\n"))
    }
}

fn check_query(name: &str, body: Value, report: &mut dyn FnMut(String)) -> Option<Namespace> {
    if !is_metric_name(name) || name.contains(':') {
        report(
            "the name must be letters, digits and underscores, not starting with a digit".into(),
        );
    }
    let Value::Mapping(body) = body else {
        report("expected a mapping with query and metrics".into());
        return None;
    };
    let mut query = None;
    let mut metrics = None;
    let mut cache = None;
    let mut versions = None;
    for (key, value) in body {
        match key.as_str().unwrap_or("") {
            "query" => match value {
                Value::String(q) if !q.trim().is_empty() => query = Some(q),
                _ => report("query must be a non-empty string".into()),
            },
            "metrics" => metrics = Some(value),
            "master" => {
                if !value.is_bool() {
                    report("master must be true or false".into());
                }
            }
            "cache_seconds" => match value.as_u64() {
                Some(0) => {}
                Some(s) => cache = Some(Duration::from_secs(s)),
                None => report("cache_seconds must be a whole number of seconds".into()),
            },
            "runonserver" => match value.as_str().map(VersionRange::parse) {
                Some(Ok(range)) => versions = Some(range),
                Some(Err(e)) => report(format!("runonserver: {e}")),
                None => report("runonserver must be a version range string".into()),
            },
            other => report(format!(
                "unknown key {other:?} (expected query, metrics, master, cache_seconds, \
                 runonserver)"
            )),
        }
    }
    if query.is_none() {
        report("missing query".into());
    }
    let columns = match metrics {
        None => {
            report("missing metrics".into());
            Vec::new()
        }
        Some(metrics) => check_metrics(name, metrics, report),
    };
    Some(Namespace {
        name: name.to_owned(),
        collector: name.to_owned(),
        query: query?,
        columns,
        unknown_columns: true,
        cache,
        versions,
    })
}

fn check_metrics(name: &str, metrics: Value, report: &mut dyn FnMut(String)) -> Vec<Column> {
    let Value::Sequence(items) = metrics else {
        report("metrics must be a list of `- column: {usage, description}`".into());
        return Vec::new();
    };
    let mut columns: Vec<Column> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for item in items {
        let Value::Mapping(item) = item else {
            report("each metrics entry must be `column: {usage, description}`".into());
            continue;
        };
        for (column, spec) in item {
            let Some(column) = column.as_str() else {
                report(format!(
                    "column names must be strings, not {}",
                    yaml_text(&column)
                ));
                continue;
            };
            let mut report = |p: String| report(format!("column {column}: {p}"));
            if seen.iter().any(|c| c == column) {
                report("listed twice".into());
                continue;
            }
            seen.push(column.to_owned());
            let Value::Mapping(spec) = spec else {
                report("expected {usage, description}".into());
                continue;
            };
            let mut usage = None;
            let mut usage_reported = false;
            let mut help = String::new();
            for (key, value) in spec {
                match (key.as_str().unwrap_or(""), value) {
                    ("usage", Value::String(u)) => {
                        usage = match u.to_ascii_uppercase().as_str() {
                            "LABEL" => Some(Usage::Label),
                            "COUNTER" => Some(Usage::Counter),
                            "GAUGE" => Some(Usage::Gauge),
                            "DISCARD" => Some(Usage::Discard),
                            "MAPPEDMETRIC" | "DURATION" | "HISTOGRAM" => {
                                usage_reported = true;
                                report(format!(
                                    "usage {u} is not supported (LABEL, COUNTER, GAUGE or DISCARD)"
                                ));
                                None
                            }
                            _ => {
                                usage_reported = true;
                                report(format!(
                                    "unknown usage {u:?} (LABEL, COUNTER, GAUGE or DISCARD)"
                                ));
                                None
                            }
                        }
                    }
                    ("description", Value::String(d)) => help = d,
                    ("description", Value::Null) => {}
                    (key @ ("usage" | "description"), _) => {
                        report(format!("{key} must be a string"))
                    }
                    (other, _) => report(format!(
                        "unknown key {other:?} (expected usage, description)"
                    )),
                }
            }
            let Some(usage) = usage else {
                if !usage_reported {
                    report("missing usage".into());
                }
                continue;
            };
            match usage {
                Usage::Label if column == "server" => report(
                    "`server` is a label pgward adds to every family: rename the column".into(),
                ),
                Usage::Label if !is_label_name(column) => report("not a valid label name".into()),
                Usage::Counter | Usage::Gauge if !is_metric_name(&format!("{name}_{column}")) => {
                    report(format!("{name}_{column} is not a valid metric name"))
                }
                _ => {}
            }
            columns.push(Column::new(column, usage, &help));
        }
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_queries_yaml_format() {
        let text = r#"
pg_replication:
  query: "SELECT 1 AS lag"
  master: true
  metrics:
    - lag:
        usage: "GAUGE"
        description: "Replication lag behind master in seconds"
app_orders:
  query: SELECT status, count(*) AS n, sum(total) AS total, 'x' AS note FROM orders GROUP BY 1
  cache_seconds: 30
  runonserver: ">=10.0.0"
  metrics:
    - status: {usage: LABEL, description: Order status}
    - n: {usage: counter, description: Orders}
    - total: {usage: GAUGE}
    - note: {usage: DISCARD, description: dropped}
"#;
        let queries = parse(text, "q.yaml").unwrap();
        assert_eq!(queries.len(), 2);
        assert_eq!(queries[0].name, "pg_replication");
        assert_eq!(queries[0].collector, "pg_replication");
        assert_eq!(
            queries[0].columns,
            vec![Column::new(
                "lag",
                Usage::Gauge,
                "Replication lag behind master in seconds"
            )]
        );
        let orders = &queries[1];
        assert_eq!(orders.cache, Some(Duration::from_secs(30)));
        assert!(orders.versions.is_some());
        assert_eq!(
            orders.columns,
            vec![
                Column::new("status", Usage::Label, "Order status"),
                Column::new("n", Usage::Counter, "Orders"),
                Column::new("total", Usage::Gauge, ""),
                Column::new("note", Usage::Discard, "dropped"),
            ]
        );
        assert!(parse("", "q.yaml").unwrap().is_empty());
    }

    #[test]
    fn reports_every_problem_with_file_and_query() {
        let text = r#"
good:
  query: SELECT 1 AS x
  metrics:
    - x: {usage: GAUGE}
no_query:
  metrics:
    - x: {usage: GAUGE}
bad_usage:
  query: SELECT 1 AS x
  metrics:
    - x: {usage: SOMETIMES}
    - y: {usage: HISTOGRAM}
    - server: {usage: LABEL}
    - x: {usage: GAUGE}
    - z: {description: no usage}
"bad-name":
  query: SELECT 1
  metrics: []
typo:
  query: SELECT 1
  metric: []
"#;
        let err = parse(text, "q.yaml").unwrap_err();
        assert_eq!(
            err,
            "q.yaml: query no_query: missing query\n\
             q.yaml: query bad_usage: column x: unknown usage \"SOMETIMES\" (LABEL, COUNTER, GAUGE or DISCARD)\n\
             q.yaml: query bad_usage: column y: usage HISTOGRAM is not supported (LABEL, COUNTER, GAUGE or DISCARD)\n\
             q.yaml: query bad_usage: column server: `server` is a label pgward adds to every family: rename the column\n\
             q.yaml: query bad_usage: column x: listed twice\n\
             q.yaml: query bad_usage: column z: missing usage\n\
             q.yaml: query bad-name: the name must be letters, digits and underscores, not starting with a digit\n\
             q.yaml: query typo: unknown key \"metric\" (expected query, metrics, master, cache_seconds, runonserver)\n\
             q.yaml: query typo: missing metrics"
        );
    }

    #[test]
    fn keys_that_are_not_strings_are_quoted_as_the_file_writes_them() {
        let text = "1:\n  query: SELECT 1\n  metrics: []\nq:\n  query: SELECT 1 AS x\n  \
                    metrics:\n    - true: {usage: GAUGE}\n";
        assert_eq!(
            parse(text, "q.yaml").unwrap_err(),
            "q.yaml: query names must be strings, not 1\n\
             q.yaml: query q: column names must be strings, not true"
        );
    }

    #[test]
    fn refuses_what_is_not_yaml_or_not_a_mapping() {
        assert!(parse("a: [", "q.yaml").unwrap_err().starts_with("q.yaml: "));
        assert_eq!(
            parse("- 1", "q.yaml").unwrap_err(),
            "q.yaml: expected a mapping of query names to queries"
        );
    }
}
