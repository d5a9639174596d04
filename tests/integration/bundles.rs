//! Bundles: small files packed into few objects. A backup of about a thousand files stores a
//! few dozen objects on an S3 server, restores exactly (plain and `--delta`), an incremental
//! packs its changed blocks too, a damaged bundle is named by `verify` and by `restore`, and
//! backups stored one object per file still restore.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::{
    backup_ok, file_storage, files_under, listed, pgward_with, start_archiving, start_recovered,
    Cluster,
};
use crate::storage_servers::TestS3;

/// Tables (each with an index): with the system catalogs, about a thousand files.
const TABLES: usize = 300;

fn show(config: &Path, id: &str) -> serde_json::Value {
    let (code, out, err) = pgward_with(config, &["show", id, "--json"]);
    assert_eq!(code, 0, "show {id}: {out}\n{err}");
    serde_json::from_str(&out).expect("show --json is JSON")
}

fn restore(config: &Path, id: &str, dest: &Path, extra: &[&str]) {
    let mut args = vec!["restore", id, "--data-dir", dest.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = pgward_with(config, &args);
    assert_eq!(code, 0, "restore {id} {extra:?}: {out}\n{err}");
}

/// Every file below `dir`, by relative path, with its BLAKE3.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    files_under(dir)
        .into_iter()
        .map(|path| {
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let hash = blake3::hash(&std::fs::read(&path).unwrap())
                .to_hex()
                .to_string();
            (rel, hash)
        })
        .collect()
}

async fn create_tables(client: &tokio_postgres::Client) {
    let mut sql = String::new();
    for i in 0..TABLES {
        sql.push_str(&format!(
            "CREATE TABLE t{i} (id int PRIMARY KEY, v text); \
             INSERT INTO t{i} SELECT g, repeat('x', {i} % 50) FROM generate_series(1, 20) g;"
        ));
    }
    client.batch_execute(&sql).await.unwrap();
    client.batch_execute("CHECKPOINT").await.unwrap();
}

async fn total_rows(client: &tokio_postgres::Client) -> i64 {
    let mut sql = String::from("SELECT 0::int8");
    for i in 0..TABLES {
        sql.push_str(&format!(" + (SELECT sum(id) FROM t{i})"));
    }
    client.query_one(&sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_small_files_are_a_few_objects_on_s3_and_restore_exactly() {
    let s3 = TestS3::start();
    let cluster = Cluster::new();
    let storage = s3.config_yaml("bundled");
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    create_tables(&client).await;
    let expected = total_rows(&client).await;

    backup_ok(&config);
    let id = listed(&config)[0]["id"].as_str().unwrap().to_owned();
    let shown = show(&config, &id);
    let files = shown["file_count"].as_u64().unwrap();
    assert!(files >= 900, "the cluster has {files} files: {shown}");
    let stored = files_under(&s3.object_path(&format!("bundled/backups/{id}"))).len() as u64;
    assert!(
        stored * 10 <= files,
        "{files} files stored as {stored} objects: {shown}"
    );
    assert_eq!(shown["objects"].as_u64(), Some(stored), "{shown}");

    // Plain restore, started: every row is there.
    let restored = Cluster::new();
    restore(&config, &id, &restored.data_dir(), &[]);
    let before_start = tree(&restored.data_dir());
    {
        let (_pgward, restored_client) = start_recovered(&restored, &storage).await;
        assert_eq!(total_rows(&restored_client).await, expected);
    }

    // A delta restore over a copy with files damaged, removed and added: identical to the
    // plain restore.
    let delta = Cluster::new();
    restore(&config, &id, &delta.data_dir(), &[]);
    let data = delta.data_dir();
    let relations: Vec<String> = before_start
        .keys()
        .filter(|p| p.starts_with("base/") && !p.ends_with("PG_VERSION"))
        .take(40)
        .cloned()
        .collect();
    for (i, rel) in relations.iter().enumerate() {
        match i % 3 {
            0 => std::fs::write(data.join(rel), b"damaged").unwrap(),
            1 => std::fs::remove_file(data.join(rel)).unwrap(),
            _ => {
                let mut bytes = std::fs::read(data.join(rel)).unwrap();
                if let Some(b) = bytes.first_mut() {
                    *b ^= 0xff;
                }
                std::fs::write(data.join(rel), bytes).unwrap();
            }
        }
    }
    restore(&config, &id, &data, &["--delta"]);
    assert_eq!(
        tree(&data),
        before_start,
        "a delta restore over bundles is exact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incrementals_bundle_changed_blocks_and_a_damaged_bundle_is_named() {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    create_tables(&client).await;
    backup_ok(&config);
    // Settle: files written around a backup's start are always copied again by the next.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut sql = String::new();
    for i in (0..TABLES).step_by(7) {
        sql.push_str(&format!("UPDATE t{i} SET v = 'changed' WHERE id = 3;"));
    }
    client.batch_execute(&sql).await.unwrap();
    client.batch_execute("CHECKPOINT").await.unwrap();
    let expected = total_rows(&client).await;
    let changed: i64 = client
        .query_one("SELECT count(*) FROM t0 WHERE v = 'changed'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, 1);
    let (code, out, err) = pgward_with(&config, &["backup", "--incremental"]);
    assert_eq!(code, 0, "incremental: {out}\n{err}");
    let backups = listed(&config);
    let incremental = backups.last().unwrap()["id"].as_str().unwrap().to_owned();
    let shown = show(&config, &incremental);
    assert_eq!(shown["kind"], "incremental", "{shown}");
    let repo = cluster.dir.join("repo");
    let own = files_under(&repo.join(format!("backups/{incremental}")));
    let data_objects = own
        .iter()
        .filter(|p| p.to_string_lossy().contains("/data/"))
        .count();
    assert!(
        data_objects <= 2,
        "the changed blocks of ~{} tables went into bundles, yet {data_objects} objects of \
         their own: {own:?}",
        TABLES / 7
    );

    // The incremental restores exactly, through the full backup's bundles and its own.
    let restored = Cluster::new();
    restore(&config, &incremental, &restored.data_dir(), &[]);
    {
        let (_pgward, restored_client) = start_recovered(&restored, &storage).await;
        assert_eq!(total_rows(&restored_client).await, expected);
        let got: i64 = restored_client
            .query_one("SELECT count(*) FROM t0 WHERE v = 'changed'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, 1);
    }

    // A byte flipped in the middle of the full backup's first bundle: verify and restore
    // both name it.
    let full = backups[0]["id"].as_str().unwrap().to_owned();
    let bundle = files_under(&repo.join(format!("backups/{full}/bundles")))
        .into_iter()
        .min()
        .expect("the full backup has bundles");
    let mut bytes = std::fs::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&bundle, bytes).unwrap();
    let name = bundle.file_name().unwrap().to_string_lossy();
    let stem = name.split('.').next().unwrap();
    let (code, out, err) = pgward_with(&config, &["verify", &full]);
    assert_ne!(code, 0, "verify of a damaged bundle: {out}\n{err}");
    assert!(
        format!("{out}{err}").contains(&format!("bundles/{stem}")),
        "verify names the bundle: {out}\n{err}"
    );
    let target = Cluster::new();
    let dest = target.data_dir();
    let (code, out, err) = pgward_with(
        &config,
        &["restore", &full, "--data-dir", dest.to_str().unwrap()],
    );
    assert_ne!(code, 0, "restore of a damaged bundle: {out}\n{err}");
    assert!(
        err.contains(&format!("bundles/{stem}")),
        "restore names the bundle: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_stored_one_object_per_file_still_restore() {
    let cluster = Cluster::new();
    let storage = format!("{}backup:\n  bundle_size: 0\n", file_storage(&cluster));
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    client
        .batch_execute("CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    backup_ok(&config);
    let id = listed(&config)[0]["id"].as_str().unwrap().to_owned();
    let repo = cluster.dir.join("repo");
    assert!(
        !repo.join(format!("backups/{id}/bundles")).exists(),
        "bundle_size: 0 stores one object per file"
    );
    let restored = Cluster::new();
    restore(&config, &id, &restored.data_dir(), &[]);
    let (_pgward, restored_client) = start_recovered(&restored, &storage).await;
    let n: i64 = restored_client
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
}
