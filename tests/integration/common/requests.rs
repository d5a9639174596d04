//! The storage requests a running daemon counted (`pgward_storage_requests_total{op,result}`),
//! read from its `/metrics`: for tests that bound what an operation costs in requests (per WAL
//! segment, per backup) or check that a storage storm does not multiply them.

use std::collections::BTreeMap;

/// The family's name.
pub const STORAGE_REQUESTS: &str = "pgward_storage_requests_total";

/// One scrape of the family: count by `(op, result)`, with its `# TYPE` and `# HELP`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageRequests {
    pub counts: BTreeMap<(String, String), u64>,
    /// `# TYPE` (`counter`), when the scrape had it.
    pub kind: Option<String>,
    /// `# HELP`, when the scrape had it.
    pub help: Option<String>,
}

impl StorageRequests {
    /// Requests of `op` that ended with `result` (0 when absent).
    pub fn get(&self, op: &str, result: &str) -> u64 {
        self.counts
            .get(&(op.to_owned(), result.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Requests of `op`, whatever their result.
    pub fn of_op(&self, op: &str) -> u64 {
        self.sum(|o, _| o == op)
    }

    /// Requests that ended with `result`, whatever their operation.
    pub fn of_result(&self, result: &str) -> u64 {
        self.sum(|_, r| r == result)
    }

    /// Every request.
    pub fn total(&self) -> u64 {
        self.sum(|_, _| true)
    }

    fn sum(&self, pick: impl Fn(&str, &str) -> bool) -> u64 {
        self.counts
            .iter()
            .filter(|((op, result), _)| pick(op, result))
            .map(|(_, n)| n)
            .sum()
    }

    /// What was counted after `before` (a counter only grows).
    pub fn since(&self, before: &StorageRequests) -> StorageRequests {
        let counts = self
            .counts
            .iter()
            .map(|(labels, n)| {
                let earlier = before.counts.get(labels).copied().unwrap_or(0);
                assert!(*n >= earlier, "{labels:?} went down: {earlier} -> {n}");
                (labels.clone(), n - earlier)
            })
            .collect();
        StorageRequests {
            counts,
            kind: self.kind.clone(),
            help: self.help.clone(),
        }
    }
}

/// The family in the text of a scrape.
pub fn parse_storage_requests(scrape: &str) -> StorageRequests {
    let mut found = StorageRequests::default();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(kind) = after_name(rest).and_then(first_word) {
                found.kind = Some(kind);
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(help) = after_name(rest) {
                found.help = Some(help.trim().to_owned());
            }
        } else if let Some(rest) = line.strip_prefix(STORAGE_REQUESTS) {
            let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once("} "))
            else {
                continue;
            };
            let labels = parse_labels(labels);
            let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
            let value: f64 = value.trim().parse().expect("a sample's value");
            found
                .counts
                .insert((label("op"), label("result")), value as u64);
        }
    }
    found
}

/// The family as the daemon whose metrics listen on `127.0.0.1:metrics_port` shows it now.
pub async fn storage_requests(metrics_port: u16) -> StorageRequests {
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let response = reqwest::get(&url).await.expect("GET /metrics");
    assert!(response.status().is_success(), "{}", response.status());
    parse_storage_requests(&response.text().await.expect("the scrape's body"))
}

/// What follows the family's name and a space in a `# TYPE` or `# HELP` line.
fn after_name(rest: &str) -> Option<&str> {
    rest.strip_prefix(STORAGE_REQUESTS)?.strip_prefix(' ')
}

fn first_word(text: &str) -> Option<String> {
    text.split_whitespace().next().map(str::to_owned)
}

/// `a="x",b="y"` (no escaped quotes in these labels' values).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim_matches('"').to_owned()))
        .collect()
}

#[test]
fn a_scrape_becomes_counts_by_operation_and_result() {
    let scrape = "# HELP pgward_storage_requests_total Requests made of the storage.\n\
                  # TYPE pgward_storage_requests_total counter\n\
                  pgward_storage_requests_total{op=\"put\",result=\"ok\"} 3\n\
                  pgward_storage_requests_total{op=\"get_range\",result=\"not_found\"} 2\n\
                  # TYPE pgward_storage_requests_total_other gauge\n\
                  pgward_storage_requests_total_other{op=\"put\",result=\"ok\"} 7\n\
                  pgward_wal_pushed_total{result=\"archived\"} 3\n";
    let got = parse_storage_requests(scrape);
    assert_eq!(got.kind.as_deref(), Some("counter"));
    assert_eq!(got.help.as_deref(), Some("Requests made of the storage."));
    assert_eq!(got.get("put", "ok"), 3);
    assert_eq!(got.of_result("not_found"), 2);
    assert_eq!(got.of_op("put"), 3);
    assert_eq!(got.total(), 5);
    let mut later = got.clone();
    later.counts.insert(("put".to_owned(), "ok".to_owned()), 5);
    assert_eq!(later.since(&got).total(), 2);
}
