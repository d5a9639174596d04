//! `image/prometheus/` checked with Prometheus's own tool, `promtool`: the config, the alert
//! rules and their unit tests, the dashboard's queries, and a scrape of the metrics endpoint
//! through Prometheus's exposition-format parser and linter. Also: every pgward metric these
//! files use is documented in `docs/metrics.md`, and the dashboard shows every one.
//!
//! `scripts/test-deps.sh` (run by `make test`) puts promtool in `.tools/bin`; a promtool on
//! `PATH` does too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use pgward::config::MetricsConfig;
use pgward::metrics::server::{Readiness, Server, Source};
use tokio_util::sync::CancellationToken;

use crate::common::{prometheus_dir, promtool_run, repo_root};

/// Runs promtool in `image/prometheus/` with `stdin`; fails the test unless it exits 0.
fn promtool_ok(args: &[&str], stdin: Option<&str>) -> String {
    let (status, output) = promtool_run(args, stdin);
    assert!(
        status.success(),
        "promtool {} failed ({status}):\n{output}",
        args.join(" ")
    );
    output
}

#[test]
fn the_alert_rules_are_valid() {
    let output = promtool_ok(&["check", "rules", "alerts.yml"], None);
    assert!(output.contains("SUCCESS: 9 rules found"), "{output}");
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let output = promtool_ok(&["test", "rules", "alerts.test.yml"], None);
    assert!(output.contains("SUCCESS"), "{output}");
}

#[test]
fn the_prometheus_config_is_valid() {
    let output = promtool_ok(&["check", "config", "prometheus.yml"], None);
    assert!(output.contains("SUCCESS: 1 rule files found"), "{output}");
}

/// The dashboard's panels and their queries.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = prometheus_dir().join("grafana/pgward.json");
    let text = std::fs::read_to_string(&path).expect("read grafana/pgward.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel title").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a query");
            queries.push((title.clone(), expr.to_owned()));
        }
    }
    assert!(queries.len() > 30, "{} queries", queries.len());
    queries
}

#[test]
fn the_dashboard_queries_are_valid_promql() {
    // promtool has no expression checker of its own: each query becomes a recording rule,
    // with Grafana's variables replaced by what they stand for.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries().iter().enumerate() {
        let expr = expr
            .replace("$instance", "db-0:9187")
            .replace("$__rate_interval", "1m");
        assert!(
            !expr.contains('$'),
            "{title}: an unknown variable in {expr}"
        );
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("a JSON string is a YAML string")
        ));
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).expect("write the rules");
    promtool_ok(
        &["check", "rules", file.to_str().expect("a UTF-8 temp path")],
        None,
    );
}

/// Every `pgward_…` metric name in `text`; histogram series named as their family.
fn pgward_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("pgward_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // "`pgward_`", "`pgward_job_*`": a prefix, not a name.
        if !preceded_by_word && !name.ends_with('_') {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| family.ends_with("_seconds"))
                .unwrap_or(name);
            names.insert(family.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric names of the "pgward metrics" section of docs/metrics.md.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md")).expect("read the doc");
    let start = doc
        .find("\n## pgward metrics\n")
        .expect("docs/metrics.md has a \"pgward metrics\" section");
    let section = &doc[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let names = pgward_names(&section[..end]);
    assert!(names.len() >= 30, "{names:?}");
    names
}

#[test]
fn every_metric_used_is_documented_and_on_the_dashboard() {
    let documented = documented();
    let dashboard: String = dashboard_queries()
        .into_iter()
        .map(|(_, expr)| expr + "\n")
        .collect();
    let read = |file: &str| {
        std::fs::read_to_string(prometheus_dir().join(file)).expect("read image/prometheus")
    };
    for (what, text) in [
        ("alerts.yml", read("alerts.yml")),
        ("alerts.test.yml", read("alerts.test.yml")),
        ("grafana/pgward.json", dashboard.clone()),
        ("the sample scrape", SAMPLE.to_owned()),
    ] {
        let undocumented: Vec<_> = pgward_names(&text)
            .difference(&documented)
            .cloned()
            .collect();
        assert!(
            undocumented.is_empty(),
            "{what} uses metrics not in docs/metrics.md: {undocumented:?}"
        );
    }
    let missing: Vec<_> = documented
        .difference(&pgward_names(&dashboard))
        .cloned()
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
    let missing: Vec<_> = documented
        .difference(&pgward_names(SAMPLE))
        .cloned()
        .collect();
    assert!(missing.is_empty(), "not in the sample scrape: {missing:?}");
}

/// A scrape of every documented pgward metric, as the exporter is to write it. Until the
/// collectors land, the fake source below serves it.
const SAMPLE: &str = r#"# HELP pgward_up 1: pgward answers.
# TYPE pgward_up gauge
pgward_up 1
# HELP pgward_service_up 1 while the service runs.
# TYPE pgward_service_up gauge
pgward_service_up{service="postgres"} 1
pgward_service_up{service="pgbouncer"} 1
# HELP pgward_service_restarts_total Restarts of the service by pgward after it exited.
# TYPE pgward_service_restarts_total counter
pgward_service_restarts_total{service="postgres"} 0
pgward_service_restarts_total{service="pgbouncer"} 2
# HELP pgward_postgres_last_exit_code Exit status of postgres's last exit (128 + signal number when killed by one).
# TYPE pgward_postgres_last_exit_code gauge
pgward_postgres_last_exit_code 0
# HELP pgward_backup_last_success_timestamp_seconds When the newest complete backup finished.
# TYPE pgward_backup_last_success_timestamp_seconds gauge
pgward_backup_last_success_timestamp_seconds 1.7644896e+09
# HELP pgward_backup_last_failure_timestamp_seconds When the last failed backup ended.
# TYPE pgward_backup_last_failure_timestamp_seconds gauge
pgward_backup_last_failure_timestamp_seconds 1.7640576e+09
# HELP pgward_backup_last_age_seconds Age of the newest complete backup.
# TYPE pgward_backup_last_age_seconds gauge
pgward_backup_last_age_seconds 3721.5
# HELP pgward_backup_last_size_bytes Size of the data directory the newest backup covers.
# TYPE pgward_backup_last_size_bytes gauge
pgward_backup_last_size_bytes 5.36870912e+09
# HELP pgward_backup_last_stored_bytes What the newest backup added to the repository.
# TYPE pgward_backup_last_stored_bytes gauge
pgward_backup_last_stored_bytes 1.2582912e+08
# HELP pgward_backup_last_duration_seconds How long the newest backup took.
# TYPE pgward_backup_last_duration_seconds gauge
pgward_backup_last_duration_seconds 42.7
# HELP pgward_backups Complete backups in the repository, by kind.
# TYPE pgward_backups gauge
pgward_backups{kind="full"} 2
pgward_backups{kind="incremental"} 23
# HELP pgward_backup_min_redundancy backup.min_redundancy.
# TYPE pgward_backup_min_redundancy gauge
pgward_backup_min_redundancy 1
# HELP pgward_backup_first_recoverability_timestamp_seconds The earliest moment the repository can restore to.
# TYPE pgward_backup_first_recoverability_timestamp_seconds gauge
pgward_backup_first_recoverability_timestamp_seconds 1.7638848e+09
# HELP pgward_backup_recovery_window_seconds How far back a point-in-time restore reaches.
# TYPE pgward_backup_recovery_window_seconds gauge
pgward_backup_recovery_window_seconds 608400
# HELP pgward_backup_bad_blocks Pages with checksum failures in the newest backup.
# TYPE pgward_backup_bad_blocks gauge
pgward_backup_bad_blocks 0
# HELP pgward_restore_test_last_success 1 when the last restore test succeeded, 0 when it failed.
# TYPE pgward_restore_test_last_success gauge
pgward_restore_test_last_success 1
# HELP pgward_restore_test_last_timestamp_seconds When the last restore test ended.
# TYPE pgward_restore_test_last_timestamp_seconds gauge
pgward_restore_test_last_timestamp_seconds 1.7644176e+09
# HELP pgward_restore_test_last_duration_seconds How long the last restore test took.
# TYPE pgward_restore_test_last_duration_seconds gauge
pgward_restore_test_last_duration_seconds 95.2
# HELP pgward_wal_pushed_total WAL files pushed to the repository, by result.
# TYPE pgward_wal_pushed_total counter
pgward_wal_pushed_total{result="archived"} 1523
pgward_wal_pushed_total{result="already_archived"} 2
pgward_wal_pushed_total{result="failed"} 1
# HELP pgward_wal_fetched_total WAL files asked for by restore_command, by result.
# TYPE pgward_wal_fetched_total counter
pgward_wal_fetched_total{result="found"} 0
pgward_wal_fetched_total{result="not_found"} 0
pgward_wal_fetched_total{result="failed"} 0
# HELP pgward_wal_push_duration_seconds Time to push one WAL file.
# TYPE pgward_wal_push_duration_seconds histogram
pgward_wal_push_duration_seconds_bucket{le="0.05"} 120
pgward_wal_push_duration_seconds_bucket{le="0.1"} 800
pgward_wal_push_duration_seconds_bucket{le="0.25"} 1400
pgward_wal_push_duration_seconds_bucket{le="0.5"} 1500
pgward_wal_push_duration_seconds_bucket{le="1"} 1520
pgward_wal_push_duration_seconds_bucket{le="2.5"} 1524
pgward_wal_push_duration_seconds_bucket{le="5"} 1526
pgward_wal_push_duration_seconds_bucket{le="+Inf"} 1526
pgward_wal_push_duration_seconds_sum 187.3
pgward_wal_push_duration_seconds_count 1526
# HELP pgward_wal_ready_backlog WAL files waiting to be archived.
# TYPE pgward_wal_ready_backlog gauge
pgward_wal_ready_backlog 0
# HELP pgward_wal_ready_scan_failing 1 while pg_wal/archive_status cannot be scanned.
# TYPE pgward_wal_ready_scan_failing gauge
pgward_wal_ready_scan_failing 0
# HELP pgward_wal_ready_scan_errors_total Scans of pg_wal/archive_status that failed.
# TYPE pgward_wal_ready_scan_errors_total counter
pgward_wal_ready_scan_errors_total 0
# HELP pgward_wal_last_archived_age_seconds Time since the last WAL file was archived.
# TYPE pgward_wal_last_archived_age_seconds gauge
pgward_wal_last_archived_age_seconds 12.5
# HELP pgward_wal_prefetch_hits_total wal-fetch requests answered from the prefetch spool.
# TYPE pgward_wal_prefetch_hits_total counter
pgward_wal_prefetch_hits_total 0
# HELP pgward_storage_requests_total Requests made of the storage, by operation and result.
# TYPE pgward_storage_requests_total counter
pgward_storage_requests_total{op="put",result="ok"} 42
pgward_storage_requests_total{op="put",result="error"} 1
pgward_storage_requests_total{op="get_range",result="ok"} 42
# HELP pgward_check_ok 1 when the pgward check item passed at its last run.
# TYPE pgward_check_ok gauge
pgward_check_ok{check="archive_command"} 1
pgward_check_ok{check="minimum_redundancy"} 1
# HELP pgward_job_last_run_timestamp_seconds When the job's last run started.
# TYPE pgward_job_last_run_timestamp_seconds gauge
pgward_job_last_run_timestamp_seconds{job="nightly-backup"} 1.7644896e+09
# HELP pgward_job_last_success_timestamp_seconds When the job's last successful run ended.
# TYPE pgward_job_last_success_timestamp_seconds gauge
pgward_job_last_success_timestamp_seconds{job="nightly-backup"} 1.76448964e+09
# HELP pgward_job_last_duration_seconds How long the job's last finished run took.
# TYPE pgward_job_last_duration_seconds gauge
pgward_job_last_duration_seconds{job="nightly-backup"} 42.9
# HELP pgward_job_runs_total Finished runs of the job.
# TYPE pgward_job_runs_total counter
pgward_job_runs_total{job="nightly-backup"} 31
# HELP pgward_job_failures_total Failed runs of the job.
# TYPE pgward_job_failures_total counter
pgward_job_failures_total{job="nightly-backup"} 1
# HELP pgward_job_running 1 while a run of the job is under way.
# TYPE pgward_job_running gauge
pgward_job_running{job="nightly-backup"} 0
# HELP pgward_job_stuck 1 while a run of the job exceeds its timeout.
# TYPE pgward_job_stuck gauge
pgward_job_stuck{job="nightly-backup"} 0
"#;

/// Serves [`SAMPLE`].
struct SampleSource;

impl Source for SampleSource {
    fn metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(async { SAMPLE.to_owned() })
    }
    fn healthy(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn ready(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async { Readiness::Ready })
    }
    fn status(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async { serde_json::json!({}) })
    }
}

#[tokio::test]
async fn a_scrape_passes_prometheus_parser_and_linter() {
    let config = MetricsConfig {
        enabled: true,
        listen: "127.0.0.1:0".parse().expect("an address"),
        username: None,
        password: None,
        tls: None,
        ready_in_recovery: false,
        queries_file: None,
        scrape_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(5),
        lock_timeout: Duration::from_secs(1),
    };
    let server = Server::bind(&config).await.expect("bind");
    let url = format!("http://{}/metrics", server.local_addr());
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(server.serve(Arc::new(SampleSource), cancel.clone()));

    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
        .get(&url)
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().await.expect("the body");
    assert_eq!(body, SAMPLE);

    // `check metrics` exits 0 only when the text parses and the linter has nothing to say
    // (counters end in _total, units in base units, HELP present, ...).
    let output =
        tokio::task::spawn_blocking(move || promtool_ok(&["check", "metrics"], Some(&body)))
            .await
            .expect("promtool");
    assert_eq!(output, "", "promtool check metrics complained");

    cancel.cancel();
    serving
        .await
        .expect("the server task")
        .expect("the server stops cleanly");
}
