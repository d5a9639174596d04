//! Trust boundaries of restores: a manifest is untrusted input (whoever can write to the
//! repository writes manifests, and `pgward restore` runs as root), a restore follows no
//! symlink the database's OS user made, and a restore test acts on nothing outside itself
//! (a restored subscriber does not reach its publisher).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgward::backup::manifest::{manifest_key, DirEntry, Manifest, Tablespace};
use pgward::repo::{PutMode, Repo};

use crate::common::{
    backed_up_cluster, backup_ok, file_storage, is_root, pgward_with, start_archiving, BackedUp,
    Cluster, Pgward, BOOT,
};

/// The repository of the cluster configured in `config`, through pgward's own API (so what
/// the test writes has a correct frame and checksum).
fn open_repo(config: &Path) -> Repo {
    let config = pgward::config::load(Some(config), &|_| None).expect("load the test config");
    Repo::open(&config.storage).expect("open the repository")
}

async fn read_manifest(repo: &Repo, id: &str) -> Manifest {
    let bytes = repo
        .get_bytes(&manifest_key(id))
        .await
        .expect("read the manifest")
        .expect("the backup has a manifest");
    serde_json::from_slice(&bytes).expect("a manifest")
}

async fn write_manifest(repo: &Repo, manifest: &Manifest) {
    repo.put_bytes(
        &manifest_key(&manifest.id),
        serde_json::to_vec(manifest).unwrap(),
        PutMode::Overwrite,
    )
    .await
    .expect("write the manifest");
}

/// Mode bits and entries of `dir`: what an attack through a restore would change.
fn state_of(dir: &Path) -> (u32, Vec<String>) {
    let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (mode, names)
}

/// A directory outside every data directory, with a file in it.
fn victim(cluster: &Cluster) -> PathBuf {
    let victim = cluster.dir.join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("keep"), "x").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).unwrap();
    victim
}

/// Removes a path the test may cause to exist outside its temp dir (if the fix regresses).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_with_paths_outside_the_data_directory_is_refused_with_nothing_written() {
    let BackedUp {
        cluster,
        config,
        pgward: _run,
        id,
        ..
    } = backed_up_cluster("CREATE TABLE t AS SELECT 1 AS i").await;
    let repo = open_repo(&config);
    let original = read_manifest(&repo, &id).await;
    let victim = victim(&cluster);
    let before = state_of(&victim);
    let in_etc = PathBuf::from(format!("/etc/pgward-test-{}", cluster.port));
    let _cleanup = RemoveOnDrop(in_etc.clone());
    let target = cluster.dir.join("restored");
    let target_arg = target.to_str().unwrap();

    type Alter = Box<dyn Fn(&mut Manifest)>;
    let victim_abs = victim.to_str().unwrap().to_owned();
    let etc = in_etc.to_str().unwrap().to_owned();
    let cases: Vec<(Alter, String)> = vec![
        (
            Box::new(|m| {
                m.directories.push(DirEntry {
                    path: "../victim".into(),
                    mode: 0o777,
                })
            }),
            "manifest entry \"../victim\" (a directory) climbs out of the data directory with \
             \"..\""
                .to_owned(),
        ),
        (
            Box::new(|m| m.files[0].path = "../victim/passwd".into()),
            "manifest entry \"../victim/passwd\" (a file) climbs out of the data directory with \
             \"..\""
                .to_owned(),
        ),
        (
            Box::new(move |m| {
                m.directories.push(DirEntry {
                    path: victim_abs.clone(),
                    mode: 0o777,
                })
            }),
            format!(
                "manifest entry {:?} (a directory) is an absolute path; the manifest's paths \
                 are relative to the data directory",
                victim.to_str().unwrap()
            ),
        ),
        (
            Box::new(move |m| {
                m.tablespaces.push(Tablespace {
                    oid: 99999,
                    location: etc.clone(),
                })
            }),
            format!(
                "manifest entry {:?} (tablespace 99999's location) is inside the system \
                 directory /etc\nHINT: if this backup is yours, restore the tablespace \
                 elsewhere with --tablespace-map 99999=DIR",
                in_etc.to_str().unwrap()
            ),
        ),
    ];
    for (alter, expected) in &cases {
        let mut manifest = original.clone();
        alter(&mut manifest);
        write_manifest(&repo, &manifest).await;
        let (code, out, err) = pgward_with(
            &config,
            &["restore", &id, "--data-dir", target_arg, "--force"],
        );
        assert_eq!(code, 1, "{expected}\n{out}\n{err}");
        assert!(
            err.contains(&format!("backup {id}: {expected}")),
            "expected {expected:?} in:\n{err}"
        );
        assert!(err.contains("HINT: "), "{err}");
        // Nothing written: no data directory, the outside untouched.
        assert!(!target.exists(), "{expected}: the data directory was made");
        assert_eq!(state_of(&victim), before, "{expected}");
        assert!(
            !in_etc.exists(),
            "{expected}: {} was made",
            in_etc.display()
        );
    }

    // A tablespace in a system directory is the one entry a restore accepts when told where
    // to put it instead.
    let elsewhere = cluster.dir.join("ts-elsewhere");
    let mapping = format!("99999={}", elsewhere.display());
    let (code, out, err) = pgward_with(
        &config,
        &[
            "restore",
            &id,
            "--data-dir",
            target_arg,
            "--tablespace-map",
            &mapping,
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        fs::read_link(target.join("pg_tblspc/99999")).unwrap(),
        elsewhere
    );
    assert_eq!(
        fs::read_to_string(target.join("tablespace_map")).unwrap(),
        format!("99999 {}\n", elsewhere.display())
    );
    assert!(!in_etc.exists());
    fs::remove_dir_all(&target).unwrap();

    // The other readers do not act on a bad manifest, and say why.
    let mut manifest = original.clone();
    (cases[0].0)(&mut manifest);
    write_manifest(&repo, &manifest).await;
    let (code, out, err) = pgward_with(&config, &["verify", &id, "--json"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["ok"], false, "{report}");
    let found = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "invalid_manifest")
        .unwrap_or_else(|| panic!("no invalid_manifest problem: {report}"));
    assert_eq!(found["severity"], "error");
    assert_eq!(found["entry"], "../victim");
    assert_eq!(
        found["key"].as_str().unwrap(),
        format!("backups/{id}/manifest.json")
    );
    let (code, out, _) = pgward_with(&config, &["verify", &id]);
    assert_eq!(code, 1);
    assert!(
        out.contains("manifest entry \"../victim\" (a directory) climbs out"),
        "{out}"
    );
    for command in [&["show", id.as_str()][..], &["list"][..]] {
        let (code, out, err) = pgward_with(&config, command);
        assert_eq!(code, 1, "{command:?}: {out}\n{err}");
        assert!(
            err.contains(&format!("backup {id}: manifest entry \"../victim\"")),
            "{command:?}: {err}"
        );
    }
    let scratch = cluster.dir.join("scratch");
    let (code, out, err) = pgward_with(
        &config,
        &[
            "restore-test",
            &id,
            "--json",
            "--scratch-dir",
            scratch.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "pick the backup: backup {id}: manifest entry \"../victim\""
        )),
        "{reason}"
    );
    assert!(fs::read_dir(&scratch).map_or(true, |mut d| d.next().is_none()));
    assert_eq!(state_of(&victim), before);

    // The untouched manifest restores.
    write_manifest(&repo, &original).await;
    let (code, out, err) = pgward_with(&config, &["restore", &id, "--data-dir", target_arg]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_follows_no_symlink_the_database_user_made() {
    if !is_root() {
        eprintln!("skipped: needs root (a restore running as root is what is attacked)");
        return;
    }
    let BackedUp {
        cluster,
        config,
        pgward: _run,
        id,
        ..
    } = backed_up_cluster("CREATE TABLE t AS SELECT 1 AS i").await;
    let postgres = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("a postgres user");
    let victim = victim(&cluster);
    let before = state_of(&victim);
    // What the database's OS user can do in a directory of its own: a symlink to elsewhere.
    let link = cluster.dir.join("pg-link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(postgres.uid.as_raw()), None).unwrap();
    let refused = format!(
        "{} is a symlink made by uid {}; a restore follows no symlink another user made",
        link.display(),
        postgres.uid
    );

    // As the data directory (--force would empty it), or on the way to one.
    for data_dir in [link.clone(), link.join("data")] {
        let (code, out, err) = pgward_with(
            &config,
            &[
                "restore",
                &id,
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--force",
            ],
        );
        assert_eq!(code, 1, "{out}\n{err}");
        assert!(err.contains(&refused), "{err}");
        assert_eq!(state_of(&victim), before);
    }

    // As a tablespace's location.
    let repo = open_repo(&config);
    let mut manifest = read_manifest(&repo, &id).await;
    manifest.tablespaces.push(Tablespace {
        oid: 99998,
        location: link.join("ts").to_str().unwrap().to_owned(),
    });
    write_manifest(&repo, &manifest).await;
    let target = cluster.dir.join("restored");
    let (code, out, err) = pgward_with(
        &config,
        &["restore", &id, "--data-dir", target.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains(&refused), "{err}");
    assert!(err.contains("tablespace 99998"), "{err}");
    assert!(!target.exists());
    assert_eq!(state_of(&victim), before);
}

/// The first column of `sql`'s one row, as text.
async fn one_text(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_test_of_a_subscriber_leaves_its_publisher_alone() {
    // The publisher: a cluster of its own, logical WAL, connections logged.
    let publisher = Cluster::new();
    let pub_config = publisher.config(
        "password: pw",
        "wal:\n  archive: false\nlog:\n  level: info\n",
    );
    let text = fs::read_to_string(&pub_config).unwrap().replacen(
        "  parameters:\n",
        "  parameters:\n    wal_level: logical\n    log_connections: 'on'\n    log_replication_commands: 'on'\n",
        1,
    );
    fs::write(&pub_config, text).unwrap();
    let pub_run = Pgward::start(&["--config", pub_config.to_str().unwrap(), "run"], &[]);
    let pub_client = publisher
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    pub_client
        .batch_execute(
            "CREATE TABLE t (i int PRIMARY KEY);
             INSERT INTO t SELECT generate_series(1, 10);
             CREATE PUBLICATION p FOR TABLE t;",
        )
        .await
        .unwrap();

    // The subscriber, archiving and backed up while its subscription runs; it reaches the
    // publisher through the publisher's unix socket.
    let cluster = Cluster::new();
    let (config, _run, client) = start_archiving(&cluster, &file_storage(&cluster)).await;
    let conninfo = format!(
        "host={} port={} user=postgres password=pw dbname=postgres application_name=sub",
        publisher.socket_dir().display(),
        publisher.port
    );
    client
        .batch_execute("CREATE TABLE t (i int PRIMARY KEY)")
        .await
        .unwrap();
    // Alone: it cannot run in a transaction block (which a multi-statement string is).
    client
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub CONNECTION '{conninfo}' PUBLICATION p"
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + BOOT;
    loop {
        let n: i64 = client
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        if n == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the subscription did not sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    backup_ok(&config);

    // The real subscriber pauses; the publisher moves on; its slot waits for the subscriber.
    client
        .batch_execute("ALTER SUBSCRIPTION sub DISABLE")
        .await
        .unwrap();
    let deadline = Instant::now() + BOOT;
    while one_text(
        &pub_client,
        "SELECT bool_or(active)::text FROM pg_replication_slots WHERE slot_name = 'sub'",
    )
    .await
    .as_deref()
        != Some("false")
    {
        assert!(
            Instant::now() < deadline,
            "the subscription's slot stays active"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pub_client
        .batch_execute("INSERT INTO t SELECT generate_series(11, 20)")
        .await
        .unwrap();
    let slot_sql = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                    WHERE slot_name = 'sub'";
    let flushed = one_text(&pub_client, slot_sql).await;
    assert!(
        flushed.is_some(),
        "the subscription has a slot on the publisher"
    );
    let connections_before = pub_run.output().matches("application_name=sub").count();

    // The copy recovers, promotes, and waits three seconds in its query: time for an apply
    // worker to connect and consume the new rows, if one started.
    let (code, out, err) = pgward_with(
        &config,
        &[
            "restore-test",
            "--json",
            "--sql",
            "SELECT count(*) = 10 FROM t, pg_sleep(3)",
            "--scratch-dir",
            cluster.dir.join("scratch").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");

    assert_eq!(
        one_text(&pub_client, slot_sql).await,
        flushed,
        "the copy moved the subscription's slot"
    );
    assert_eq!(
        one_text(
            &pub_client,
            "SELECT bool_or(active)::text FROM pg_replication_slots WHERE slot_name = 'sub'"
        )
        .await
        .as_deref(),
        Some("false")
    );
    assert_eq!(
        pub_run.output().matches("application_name=sub").count(),
        connections_before,
        "the copy connected to the publisher:\n{}",
        pub_run.output()
    );
}
