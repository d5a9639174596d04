//! A cluster under test: its paths, its config, connections to its postgres; archiving into a
//! `file://` (or any) repository; the cluster with a table and a backup that the backup,
//! restore and verify tests start from; a restored cluster brought up to the end of recovery.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, pg_bin_dir, pgward_with, server_bin_dir, Pgward, TestDir, BOOT};

/// Paths and port of one cluster under test.
pub struct Cluster {
    pub dir: TestDir,
    pub port: u16,
    /// Where pgward's metrics endpoints listen (on 127.0.0.1), unless the test's config says.
    pub metrics_port: u16,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            dir: TestDir::new(),
            port: free_port(),
            metrics_port: free_port(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("run/pgward.sock")
    }

    /// The `postgres:` and `control:` parts of a config for this cluster; `extra` is appended
    /// at top level (services, log...). `init` lines go under `postgres.init`.
    pub fn config(&self, init: &str, extra: &str) -> PathBuf {
        let init = indent(init, 4);
        // Each cluster archives into its own repository unless the test names one.
        let storage = if extra.contains("storage:") {
            String::new()
        } else {
            format!(
                "storage:\n  url: file://{}\n",
                self.dir.join("repo").display()
            )
        };
        // Tests run in parallel: each daemon's endpoints on a port of its own.
        let metrics = if extra.contains("metrics:") {
            String::new()
        } else {
            format!("metrics:\n  listen: 127.0.0.1:{}\n", self.metrics_port)
        };
        let extra = format!("{storage}{metrics}{extra}");
        // The major under test (PGWARD_TEST_PG_MAJOR), else the server pgward finds itself.
        let bin_dir = server_bin_dir()
            .map(|bin| format!("  bin_dir: {}\n", bin.display()))
            .unwrap_or_default();
        let text = format!(
            "postgres:\n{bin_dir}  data_dir: {data}\n  port: {port}\n  socket_dir: {sock}\n  parameters:\n    listen_addresses: 127.0.0.1\n  stop:\n    timeout: 20s\n  init:\n    scripts_dir: {scripts}\n{init}\ncontrol:\n  socket: {control}\n{extra}\n",
            data = self.data_dir().display(),
            port = self.port,
            sock = self.socket_dir().display(),
            scripts = self.dir.join("initdb.d").display(),
            control = self.control_socket().display(),
        );
        self.dir.write("pgward.yaml", &text)
    }

    /// Connects over TCP with a password. (initdb's pg_hba.conf trusts 127.0.0.1, as in the
    /// official image, unless `--auth-host` is among the initdb arguments.)
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(3));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Waits until a password connection succeeds.
    pub async fn wait_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
        within: Duration,
    ) -> tokio_postgres::Client {
        let deadline = Instant::now() + within;
        loop {
            match self.connect(user, password, db).await {
                Ok(client) => return client,
                Err(e) if Instant::now() > deadline => {
                    panic!("no connection within {within:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The postmaster pid from `postmaster.pid`, if the file is there.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `Database cluster state` from pg_controldata.
    pub fn controldata_state(&self) -> String {
        let bin = pg_bin_dir();
        let out = Command::new(bin.join("pg_controldata"))
            .arg(self.data_dir())
            .env("LC_ALL", "C")
            .output()
            .expect("run pg_controldata");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Database cluster state:"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("no cluster state in pg_controldata output: {text}"))
    }
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until a recovering server has ended recovery (promoted).
pub async fn wait_promoted(client: &tokio_postgres::Client, within: Duration) {
    let deadline = Instant::now() + within;
    while client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(Instant::now() < deadline, "recovery did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `storage:` block of the cluster's own `file://` repository (`<dir>/repo`).
pub fn file_storage(cluster: &Cluster) -> String {
    format!(
        "storage:\n  url: file://{}\n",
        cluster.dir.join("repo").display()
    )
}

/// A cluster archiving to `storage` (a `storage:` YAML block, possibly followed by other
/// top-level keys).
pub fn archiving_config(cluster: &Cluster, storage: &str) -> PathBuf {
    cluster.config(
        "password: pw",
        &format!(
            "{storage}\nwal:\n  archive: true\n  archive_timeout: 1s\n  push_concurrency: 4\n  prefetch: 4\n"
        ),
    )
}

/// Adds `wal_keep_size` so postgres does not recycle archived segments under the test.
pub fn keep_wal(config: &Path) {
    let text = fs::read_to_string(config).unwrap();
    let text = text.replacen(
        "  parameters:\n",
        "  parameters:\n    wal_keep_size: 1GB\n",
        1,
    );
    fs::write(config, text).unwrap();
}

/// Starts pgward on `cluster` archiving to `storage`, keeping its WAL (so the archived copies
/// can be compared with the originals), and connects as `postgres` (password `pw`).
pub async fn start_archiving(
    cluster: &Cluster,
    storage: &str,
) -> (PathBuf, Pgward, tokio_postgres::Client) {
    let config = archiving_config(cluster, storage);
    keep_wal(&config);
    run_and_connect(cluster, config).await
}

/// [`start_archiving`] with no `archive_timeout` switch under the test: the test decides when
/// segments are switched.
pub async fn start_archiving_quietly(
    cluster: &Cluster,
    storage: &str,
) -> (PathBuf, Pgward, tokio_postgres::Client) {
    let config = quiet_archiving_config(cluster, storage);
    run_and_connect(cluster, config).await
}

/// The config of [`start_archiving_quietly`], for a test that starts pgward its own way.
pub fn quiet_archiving_config(cluster: &Cluster, storage: &str) -> PathBuf {
    let config = archiving_config(cluster, storage);
    let text = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        text.replace("archive_timeout: 1s", "archive_timeout: 1h"),
    )
    .unwrap();
    keep_wal(&config);
    config
}

/// Starts `pgward run` with `config` and connects to its postgres as `postgres`.
pub async fn run_and_connect(
    cluster: &Cluster,
    config: PathBuf,
) -> (PathBuf, Pgward, tokio_postgres::Client) {
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    (config, pgward, client)
}

/// Runs pgbench against the cluster, as the server's user when root (peer-free socket auth).
pub fn pgbench(cluster: &Cluster, args: &[&str]) {
    let out = Command::new(pg_bin_dir().join("pgbench"))
        .args([
            "-h",
            cluster.socket_dir().to_str().unwrap(),
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", "pw")
        .output()
        .expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Switches WAL and waits until postgres reports that segment archived; returns its name.
pub async fn switch_and_wait_archived(client: &tokio_postgres::Client) -> String {
    let name: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver",
                &[],
            )
            .await
            .unwrap();
        let last: String = row.get(0);
        if last.as_str() >= name.as_str() && last.len() == 24 {
            return name;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not archived; last archived {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pgward backup` on `config`, which must succeed; its output.
pub fn backup_ok(config: &Path) -> String {
    let (code, out, err) = pgward_with(config, &["backup"]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    out
}

/// The complete backups `pgward list --json` reports.
pub fn listed(config: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) = pgward_with(config, &["list", "--json"]);
    assert_eq!(code, 0, "list failed: {err}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("list --json is JSON");
    list.as_array().expect("list --json is an array").clone()
}

/// A cluster archiving to its own `file://` repository (as [`start_archiving`]), after
/// `create_table` ran and one `pgward backup` completed: what the backup, restore and verify
/// tests start from.
///
/// Fields drop in declaration order: the connection, then pgward, then the directories.
pub struct BackedUp {
    pub client: tokio_postgres::Client,
    /// `pgward run` on the cluster; ERROR-checked when dropped.
    pub pgward: Pgward,
    pub config: PathBuf,
    /// The repository's `storage:` block, for the configs of restored clusters.
    pub storage: String,
    /// The backup's id.
    pub id: String,
    pub cluster: Cluster,
}

/// See [`BackedUp`].
pub async fn backed_up_cluster(create_table: &str) -> BackedUp {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let (config, pgward, client) = start_archiving(&cluster, &storage).await;
    client.batch_execute(create_table).await.unwrap();
    backup_ok(&config);
    let id = listed(&config)[0]["id"]
        .as_str()
        .expect("a backup id")
        .to_owned();
    BackedUp {
        client,
        pgward,
        config,
        storage,
        id,
        cluster,
    }
}

/// Starts pgward on a restored data directory (no archiving: its WAL must not mix with the
/// original's), reading WAL from `storage`, and waits until recovery has ended.
pub async fn start_recovered(
    restored: &Cluster,
    storage: &str,
) -> (Pgward, tokio_postgres::Client) {
    let config = restored.config(
        "password: pw",
        &format!("{storage}wal:\n  archive: false\n"),
    );
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = restored
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    wait_promoted(&client, BOOT).await;
    (pgward, client)
}

/// Where the running daemon leaves its archived marks, as the `archive_command` it gave
/// postgres names them (`test -f <dir>/%f || ...`); a relative directory is in the data
/// directory (postgres's working directory).
pub async fn archived_marks_dir(cluster: &Cluster, client: &tokio_postgres::Client) -> PathBuf {
    let command: String = client
        .query_one("SHOW archive_command", &[])
        .await
        .unwrap()
        .get(0);
    let dir = command
        .strip_prefix("test -f ")
        .and_then(|rest| rest.split_once("/%f"))
        .map(|(dir, _)| dir.trim_matches('\''))
        .unwrap_or_else(|| panic!("no marks directory in archive_command {command:?}"));
    cluster.data_dir().join(dir)
}
