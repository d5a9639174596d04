//! `pgward verify` against a real backup in a `file://` repository: a good backup passes, a
//! gap in the WAL after it is a warning, and a damaged, swapped or missing object it needs
//! fails the check, naming the object.

use std::path::{Path, PathBuf};

use crate::common::{backed_up_cluster, files_under, listed, switch_and_wait_archived, BackedUp};

fn pgward(config: &Path, args: &[&str]) -> (i32, String, String) {
    crate::common::pgward_with(config, args)
}

fn verify_json(config: &Path) -> (i32, serde_json::Value) {
    let (code, out, err) = pgward(config, &["verify", "latest", "--json"]);
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, report)
}

/// The stored file of repository key `key` (the key plus a codec extension).
fn stored(repo: &Path, key: &str) -> PathBuf {
    let path = repo.join(key);
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&name))
                .is_some_and(|ext| matches!(ext, ".zst" | ".lz4" | ".raw"))
        })
        .unwrap_or_else(|| panic!("no stored object for {key}"))
}

/// The segment after `name` (16 MiB segments, far from a log id boundary in a test).
fn next_segment(name: &str) -> String {
    let seg = u32::from_str_radix(&name[16..], 16).unwrap();
    format!("{}{:08X}", &name[..16], seg + 1)
}

fn problems(report: &serde_json::Value) -> &Vec<serde_json::Value> {
    report["problems"].as_array().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_good_backup_and_names_what_is_wrong() {
    let BackedUp {
        cluster,
        config,
        pgward: _pgward,
        client,
        ..
    } = backed_up_cluster("CREATE TABLE t AS SELECT generate_series(1, 100000) AS i").await;
    let repo = cluster.dir.join("repo");
    let list = listed(&config);
    let backup = &list[0];
    let id = backup["id"].as_str().unwrap().to_owned();
    // The data objects: all the backup stored but its backup_label and manifest (small files
    // share bundles).
    let files = backup["objects"].as_u64().unwrap() - 2;
    assert!(files < backup["file_count"].as_u64().unwrap(), "{backup}");
    let stop_wal = backup["stop_wal"].as_str().unwrap().to_owned();
    // Two more segments after the backup's stop (a switch without new WAL does nothing).
    for _ in 0..2 {
        client
            .batch_execute("INSERT INTO t VALUES (0)")
            .await
            .unwrap();
        switch_and_wait_archived(&client).await;
    }

    // Good: exit 0, the file count, no problem.
    let (code, out, err) = pgward(&config, &["verify", "latest"]);
    assert_eq!(code, 0, "verify failed:\n{out}\n{err}");
    assert!(
        out.starts_with(&format!("backup {id}: {files} data objects (")),
        "{out}"
    );
    assert!(out.trim_end().ends_with("checked: ok"), "{out}");
    let (code, report) = verify_json(&config);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["objects_checked"], files);
    assert_eq!(report["wal_segment_size_source"], "backup");
    assert!(
        report["wal_segments_checked"].as_u64().unwrap() >= 3,
        "{report}"
    );
    assert!(problems(&report).is_empty(), "{report}");

    // A gap after the stop: still restorable, reported as a warning.
    let after = next_segment(&stop_wal);
    let after_key = format!("wal/{}/{after}", &after[..8]);
    let after_object = stored(&repo, &after_key);
    let after_bytes = std::fs::read(&after_object).unwrap();
    std::fs::remove_file(&after_object).unwrap();
    let (code, out, err) = pgward(&config, &["verify", &id]);
    assert_eq!(code, 0, "a gap after the stop must not fail:\n{out}\n{err}");
    assert!(
        out.starts_with(&format!(
            "warning: {after_key}: WAL segment {after} is missing"
        )),
        "{out}"
    );
    assert!(out.trim_end().ends_with("checked: ok, 1 warning"), "{out}");
    let (_, report) = verify_json(&config);
    assert_eq!(report["wal_continuous_to"], stop_wal.as_str());
    assert_eq!(problems(&report)[0]["kind"], "wal_gap");
    std::fs::write(&after_object, &after_bytes).unwrap();

    // One flipped byte in the middle of a stored data file: corrupt, named, exit 1.
    let data = repo.join(format!("backups/{id}/data"));
    let largest = files_under(&data)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let key = largest
        .strip_prefix(&repo)
        .unwrap()
        .with_extension("")
        .to_str()
        .unwrap()
        .to_owned();
    let good = std::fs::read(&largest).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x55;
    std::fs::write(&largest, &bad).unwrap();
    let (code, out, err) = pgward(&config, &["verify", "latest"]);
    assert_eq!(code, 1, "a corrupt object must fail:\n{out}\n{err}");
    assert!(
        out.starts_with(&format!("error: {key}: corrupt: ")),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("checked: not restorable, 1 error"),
        "{out}"
    );
    let (code, report) = verify_json(&config);
    assert_eq!(code, 1);
    assert_eq!(report["ok"], false);
    assert_eq!(problems(&report).len(), 1, "{report}");
    assert_eq!(problems(&report)[0]["kind"], "corrupt_object");
    assert_eq!(problems(&report)[0]["key"], key.as_str());

    // Another file's (well-formed) object in its place: a checksum mismatch, both values.
    let other = files_under(&data)
        .into_iter()
        .find(|p| *p != largest && p.extension() == largest.extension())
        .unwrap();
    std::fs::copy(&other, &largest).unwrap();
    let (code, report) = verify_json(&config);
    assert_eq!(code, 1);
    let problem = &problems(&report)[0];
    assert_eq!(problem["kind"], "checksum_mismatch", "{report}");
    assert_eq!(problem["key"], key.as_str());
    assert_eq!(problem["expected"].as_str().unwrap().len(), 64);
    assert_eq!(problem["actual"].as_str().unwrap().len(), 64);
    assert_ne!(problem["expected"], problem["actual"]);
    std::fs::write(&largest, &good).unwrap();

    // The stop segment deleted from the archive: the backup cannot reach consistency.
    let stop_key = format!("wal/{}/{stop_wal}", &stop_wal[..8]);
    std::fs::remove_file(stored(&repo, &stop_key)).unwrap();
    let (code, out, err) = pgward(&config, &["verify", "latest"]);
    assert_eq!(code, 1, "a missing stop segment must fail:\n{out}\n{err}");
    assert!(
        out.starts_with(&format!(
            "error: {stop_key}: WAL segment {stop_wal} is missing from the archive"
        )),
        "{out}"
    );
    let (code, report) = verify_json(&config);
    assert_eq!(code, 1);
    assert_eq!(problems(&report).len(), 1, "{report}");
    assert_eq!(problems(&report)[0]["kind"], "missing_wal");
    assert_eq!(problems(&report)[0]["segment"], stop_wal.as_str());
    assert!(report["wal_continuous_to"].as_str() < Some(stop_wal.as_str()));
}
