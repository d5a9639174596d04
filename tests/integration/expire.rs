//! `pgward expire` against backups taken under pgward with a `file://` repository: a dry run
//! changes nothing; a real one removes the backups retention lets go and the WAL only they
//! needed, and what is left still restores.

use std::path::{Path, PathBuf};

use crate::common::{file_storage, start_archiving, Cluster};

fn pgward(config: &Path, args: &[&str]) -> (i32, String, String) {
    crate::common::pgward_with(config, args)
}

/// `pgward <args>`, which must succeed; its stdout.
fn pgward_ok(config: &Path, args: &[&str]) -> String {
    let (code, out, err) = pgward(config, args);
    assert_eq!(code, 0, "pgward {args:?} failed:\n{out}\n{err}");
    out
}

/// Every file below `dir`, relative to it, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Names of the archived segments of timeline 1 (codec extension stripped).
fn segments(repo: &Path) -> Vec<String> {
    tree(&repo.join("wal/00000001"))
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .filter(|name| name.len() == 24)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_keeps_the_newest_full_backups_and_the_wal_they_need() {
    let cluster = Cluster::new();
    let storage = format!(
        "{}backup:\n  retention:\n    full: 2\n",
        file_storage(&cluster)
    );
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    let repo = cluster.dir.join("repo");
    let mut ids = Vec::new();
    for i in 0..3 {
        client
            .batch_execute(&format!(
                "CREATE TABLE t{i} AS SELECT generate_series(1, 1000) AS n"
            ))
            .await
            .unwrap();
        let out = pgward_ok(&config, &["backup"]);
        assert!(out.contains("complete"), "{out}");
        let show: serde_json::Value =
            serde_json::from_str(&pgward_ok(&config, &["show", "latest", "--json"])).unwrap();
        ids.push((
            show["id"].as_str().unwrap().to_owned(),
            show["start_wal"].as_str().unwrap().to_owned(),
        ));
    }
    let (oldest, _) = &ids[0];
    let (second, second_start) = &ids[1];
    assert!(
        segments(&repo).iter().any(|s| s < second_start),
        "no WAL archived before the second backup: {:?}",
        segments(&repo)
    );

    // A dry run says what would go and changes nothing.
    let before = tree(&repo);
    let out = pgward_ok(&config, &["expire", "--dry-run"]);
    assert!(
        out.contains(&format!(
            "expire {oldest} (older than the 2 newest full backups)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("keep {second} (one of the 2 newest full backups)")),
        "{out}"
    );
    assert!(
        out.contains(&format!("keep {} (newest full backup)", ids[2].0)),
        "{out}"
    );
    assert!(out.contains("segments of timeline 1 up to "), "{out}");
    assert!(out.contains("dry run, nothing deleted"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&pgward_ok(&config, &["expire", "--dry-run", "--json"])).unwrap();
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["summary"]["expired"], 1, "{json}");
    assert_eq!(json["summary"]["kept"], 2, "{json}");
    assert_eq!(json["wal"]["keep_from"], second_start.as_str(), "{json}");
    assert_eq!(tree(&repo), before);

    let out = pgward_ok(&config, &["expire"]);
    assert!(out.contains(&format!("expire {oldest} ")), "{out}");
    assert!(!repo.join("backups").join(oldest).exists());
    let left = segments(&repo);
    assert!(
        left.iter().all(|s| s >= second_start),
        "WAL before {second_start} left: {left:?}"
    );
    assert!(left.contains(second_start), "{left:?}");
    let listed: serde_json::Value =
        serde_json::from_str(&pgward_ok(&config, &["list", "--json"])).unwrap();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [second.as_str(), ids[2].0.as_str()]);

    // Running again finds nothing to do.
    let out = pgward_ok(&config, &["expire"]);
    assert!(
        out.contains(
            "expired 0 of 2 backups and 0 unfinished: deleted 0 backup objects and 0 WAL files"
        ),
        "{out}"
    );

    // What is left restores.
    let restored = Cluster::new();
    let data = restored.data_dir();
    pgward_ok(
        &config,
        &["restore", "latest", "--data-dir", data.to_str().unwrap()],
    );
    assert!(data.join("PG_VERSION").is_file());
}
