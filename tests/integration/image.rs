//! The container image's scenario without a container engine: the same binary as PID 1 of a
//! PID namespace (`unshare --pid --fork --mount-proc`), with the environment and file layout
//! `image/Dockerfile` sets up, archiving to an S3-compatible server.
//!
//! The image reads `/etc/pgward/pgward.yaml` (`PGWARD_CONFIG`), with absolute paths under `/`
//! (`/var/run/postgresql`, `/docker-entrypoint-initdb.d`, ...). A test cannot write there, so
//! it runs on a copy of `image/pgward.yaml` whose absolute paths are moved under the test's
//! directory and whose metrics port is a free one; everything else, the config's `${...}`
//! environment included, is the image's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::{self, children_of, eventually, pg_bin_dir, Pgward, TestDir};
use crate::storage_servers::TestS3;

/// Longer than `common::BOOT`: the second start restores the latest backup from S3 and
/// replays the archive before it accepts connections, all inside the namespace.
const IMAGE_BOOT: Duration = Duration::from_secs(90);
/// The image's grace period (`stop_grace_period`, `terminationGracePeriodSeconds`): more than
/// image/pgward.yaml's postgres.stop.timeout + kill_timeout (60s + 10s).
const GRACE: Duration = Duration::from_secs(90);
const PASSWORD: &str = "image-secret";

/// The absolute paths of image/pgward.yaml; each is moved under the test's directory.
const IMAGE_PATHS: [&str; 3] = [
    "/docker-entrypoint-initdb.d",
    "/var/run/postgresql",
    "/var/lib/pgward",
];

/// One start of the "container": its data directory and environment.
struct Container<'a> {
    dir: &'a TestDir,
    s3: &'a TestS3,
    port: u16,
    metrics_port: u16,
}

impl Container<'_> {
    /// image/pgward.yaml with its absolute paths under the test dir and its metrics port moved.
    fn write_config(&self) -> PathBuf {
        let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("image/pgward.yaml");
        let mut text = std::fs::read_to_string(image).expect("read image/pgward.yaml");
        for path in IMAGE_PATHS {
            assert!(
                text.contains(path),
                "image/pgward.yaml no longer uses {path}"
            );
            let moved = self.dir.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&moved).expect("create the image's directory");
            text = text.replace(path, moved.to_str().expect("utf-8 path"));
        }
        assert!(text.contains("0.0.0.0:9187"), "{text}");
        text = text.replace("0.0.0.0:9187", &format!("127.0.0.1:{}", self.metrics_port));
        self.dir.write("etc/pgward/pgward.yaml", &text)
    }

    /// The Dockerfile's ENV plus what a `docker run -e` / compose file adds.
    fn env(&self, config: &Path, pgdata: &Path, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("PGWARD_CONFIG", config.display().to_string()),
            ("PGDATA", pgdata.display().to_string()),
            ("PGPORT", self.port.to_string()),
            ("POSTGRES_PASSWORD", PASSWORD.to_owned()),
            ("PGWARD_STORAGE_URL", self.s3.url("image")),
            ("PGWARD_S3_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", self.s3.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.s3.secret_key.clone()),
            ("AWS_ENDPOINT_URL", self.s3.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            // Not due during the test: the first backup is the one taken at start.
            ("PGWARD_BACKUP_SCHEDULE", "0 0 1 1 *".to_owned()),
            ("PGWARD_RESTORE_TEST_SCHEDULE", "0 0 1 1 *".to_owned()),
            // One config for the first deployment and every later loss of the volume.
            ("PGWARD_FROM_BACKUP", "latest-or-init".to_owned()),
            ("PGWARD_RESTORE_AS", "successor".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// `unshare --pid --fork --mount-proc pgward`, with no arguments: the image's
    /// `ENTRYPOINT ["pgward"]` + `CMD ["run"]`, the config found through `PGWARD_CONFIG`.
    fn start(&self, env: &[(String, String)]) -> Pgward {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Pgward::start_wrapped(
            &["unshare", "--pid", "--fork", "--mount-proc"],
            &["run"],
            &env,
        )
    }

    async fn connect(&self) -> tokio_postgres::Client {
        let deadline = Instant::now() + IMAGE_BOOT;
        loop {
            let mut config = tokio_postgres::Config::new();
            config
                .host("127.0.0.1")
                .port(self.port)
                .user("postgres")
                .password(PASSWORD)
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(3));
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    return client;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("no connection within {IMAGE_BOOT:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        match reqwest::get(&url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

/// `pgward <args>` with the container's environment (as `docker exec` runs it).
fn pgward_env(env: &[(String, String)], args: &[&str]) -> std::process::Output {
    Command::new(common::pgward_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run pgward")
}

/// `pgward health [--ready]` as the image's HEALTHCHECK runs it: (exit code, output).
fn health(env: &[(String, String)], ready: bool) -> (i32, String) {
    let args: &[&str] = if ready {
        &["health", "--ready"]
    } else {
        &["health"]
    };
    let out = pgward_env(env, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The value of `pgward_backups{kind="full"}` in a scrape, if present.
fn full_backups(body: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with("pgward_backups{") && l.contains("kind=\"full\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// SIGTERM to PID 1 of the namespace (what `docker stop` sends, per STOPSIGNAL; unshare
/// forwards nothing), then the exit within the grace period.
fn docker_stop(unshare: &mut Pgward) -> Duration {
    let pid1 = children_of(unshare.pid())
        .first()
        .expect("unshare has a child")
        .0;
    let sent = Instant::now();
    kill(Pid::from_raw(pid1), Signal::SIGTERM).expect("signal PID 1");
    let exit = unshare.wait_exit(GRACE);
    assert_eq!(exit.code(), Some(0), "{}", unshare.output());
    sent.elapsed()
}

fn cluster_state(data_dir: &Path) -> String {
    let out = Command::new(pg_bin_dir().join("pg_controldata"))
        .arg(data_dir)
        .env("LC_ALL", "C")
        .output()
        .expect("run pg_controldata");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no cluster state in: {text}"))
}

async fn markers(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query("SELECT note FROM image_markers ORDER BY id", &[])
        .await
        .expect("read the markers")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_boots_backs_up_at_once_stops_cleanly_and_restores_an_empty_volume_with_one_config(
) {
    if !common::is_root() {
        eprintln!(
            "needs root for unshare --pid and the postgres user; run as root (make test does)"
        );
    }
    let dir = TestDir::new();
    let s3 = TestS3::start();
    let container = Container {
        dir: &dir,
        s3: &s3,
        port: common::free_port(),
        metrics_port: common::free_port(),
    };
    let config = container.write_config();
    // The official image's initdb.d convention: run once, on the first start only.
    dir.write(
        "docker-entrypoint-initdb.d/01-markers.sql",
        "CREATE TABLE image_markers (id serial PRIMARY KEY, note text NOT NULL);\n\
         INSERT INTO image_markers (note) VALUES ('initdb.d');\n",
    );

    // First start: the repository holds no backup, so initdb, the script, archiving, and a
    // first backup as soon as postgres is ready.
    let env = container.env(&config, &dir.join("data"), &[]);
    let mut first = container.start(&env);
    let client = container.connect().await;
    assert_eq!(markers(&client).await, ["initdb.d"]);
    client
        .batch_execute("INSERT INTO image_markers (note) VALUES ('before-backup')")
        .await
        .unwrap();

    // The daemon reads the backup catalogue for /metrics once a minute
    // (metrics::pgward::BACKUPS_INTERVAL): allow a backup and two reads.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let body = container.metrics().await;
        if full_backups(&body).is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no full backup in /metrics:\n{body}\n--- pgward list ---\n{:?}\n--- pgward ---\n{}",
            Command::new(common::pgward_bin())
                .arg("list")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .output(),
            first.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    assert!(
        first
            .output()
            .contains("running at start: no backup of this cluster yet"),
        "{}",
        first.output()
    );

    // The HEALTHCHECK: alive and ready.
    let (code, out) = health(&env, false);
    assert_eq!(code, 0, "{out}");
    eventually("pgward health --ready", IMAGE_BOOT, || {
        health(&env, true).0 == 0
    });
    // Checked and proven restorable within minutes: the image's check and restore-test jobs.
    for job in ["check", "restore-test"] {
        let out = pgward_env(&env, &["jobs", "run", job]);
        assert!(out.status.success(), "job {job}: {out:?}");
    }

    // A row after the backup, in archived WAL: the restore must replay it.
    client
        .batch_execute("INSERT INTO image_markers (note) VALUES ('after-backup')")
        .await
        .unwrap();
    common::switch_and_wait_archived(&client).await;
    drop(client);

    let took = docker_stop(&mut first);
    assert!(took < GRACE, "stopping took {took:?}");
    assert_eq!(cluster_state(&dir.join("data")), "shut down");
    let (code, out) = health(&env, false);
    assert_eq!(code, 1, "health of a stopped container: {out}");

    // Second start on an empty volume: restored from the latest backup, recovered from the
    // archive, promoted; the initdb.d script does not run again.
    // The same config: the repository holds a backup now, and this container replaces the
    // first one, which has stopped.
    let env = container.env(&config, &dir.join("data2"), &[]);
    let mut second = container.start(&env);
    let client = container.connect().await;
    common::wait_promoted(&client, IMAGE_BOOT).await;
    eventually("the backup job's decision at start", IMAGE_BOOT, || {
        second.output().contains("no run at start: ")
    });
    assert!(
        second.output().contains("holds backup "),
        "{}",
        second.output()
    );
    assert_eq!(
        markers(&client).await,
        ["initdb.d", "before-backup", "after-backup"]
    );
    drop(client);
    docker_stop(&mut second);
    assert_eq!(cluster_state(&dir.join("data2")), "shut down");
}
