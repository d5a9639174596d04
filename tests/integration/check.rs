//! `pgward check` against a real server and repository.

use std::path::Path;
use std::process::Command;

use crate::common::{file_storage, pgward_bin, start_archiving, Cluster};

fn check(config: &Path) -> (i32, serde_json::Value) {
    let out = Command::new(pgward_bin())
        .arg("--config")
        .arg(config)
        .args(["check", "--json"])
        .output()
        .expect("run pgward check");
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), value)
}

fn failed(report: &serde_json::Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_without_a_backup_and_passes_with_one() {
    let cluster = Cluster::new();
    let (config, _pgward, _client) = start_archiving(&cluster, &file_storage(&cluster)).await;

    let (code, report) = check(&config);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        failed(&report),
        ["minimum_redundancy", "backup_age"],
        "{report}"
    );
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for expected in [
        "postgres",
        "wal_level",
        "archive_mode",
        "archive_command",
        "archiver",
        "wal_archived_age",
        "system_identifier",
        "repository",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {report}");
    }

    let out = Command::new(pgward_bin())
        .arg("--config")
        .arg(&config)
        .arg("backup")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, report) = check(&config);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["ok"], true);
}
