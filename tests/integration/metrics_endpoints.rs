//! The daemon's metrics endpoints end to end: a real postgres under pgward, scraped over HTTP;
//! the body passes Prometheus's own parser.

use std::time::Duration;

use crate::common::{
    eventually, pgward_with, promtool_run, switch_and_wait_archived, Cluster, Pgward, BOOT,
};

async fn get(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of the first sample of `name` whose line holds every one of `labels`.
fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_serves_postgres_and_pgward_metrics_and_probes() {
    let cluster = Cluster::new();
    // Run by hand below; a disabled job is refused, so one due only once a year.
    let jobs = "jobs:\n  - { name: nightly, schedule: '@yearly', action: backup }\n";
    let config = cluster.config("password: pw", jobs);
    let mut pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    let port = cluster.metrics_port;

    eventually("/readyz answers 200", BOOT, || {
        std::process::Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/readyz")])
            .status()
            .is_ok_and(|s| s.success())
    });
    let (code, body) = get(port, "/healthz").await;
    assert_eq!((code, body.trim()), (200, "ok"));

    // Some archiving and a job run, so their metrics have values.
    client
        .batch_execute("CREATE TABLE t AS SELECT 1 AS i")
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "nightly"]);
    assert_eq!(code, 0, "{out}\n{err}");

    let (code, body) = get(port, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(sample(&body, "pg_up", &[]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "pgward_up", &[]), Some(1.0), "{body}");
    assert_eq!(
        sample(&body, "pgward_service_up", &["service=\"postgres\""]),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, "pgward_wal_pushed_total", &["result=\"archived\""]).unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    assert!(
        body.contains("pgward_wal_push_duration_seconds_bucket"),
        "{body}"
    );
    assert_eq!(
        sample(&body, "pgward_job_runs_total", &["job_name=\"nightly\""]),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, "pg_database_size_bytes", &["datname=\"postgres\""]).unwrap() > 0.0,
        "{body}"
    );
    // Prometheus's own parser takes it (exit 3 is its linter: postgres_exporter's names,
    // kept for existing dashboards, break its naming rules; pgward's own must not).
    let (status, lint) = promtool_run(&["check", "metrics"], Some(&body));
    assert!(
        matches!(status.code(), Some(0 | 3)),
        "promtool check metrics: {status}\n{lint}"
    );
    assert!(lint.lines().all(|l| l.starts_with("pg_")), "{lint}");

    let (code, status) = get(port, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["services"][0]["name"], "postgres", "{status}");
    assert_eq!(status["jobs"][0]["name"], "nightly", "{status}");

    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(pgward.wait_exit(Duration::from_secs(30)).success());
}
