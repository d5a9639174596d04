//! The container image in a real engine: `make image` on the stand-in postgres base with the
//! binary under test, then what users do with `docker run`, `exec`, `kill`, `stop` and
//! `start`. Containers run with `--network none` and are reached with `docker exec`; the
//! repository is the image's default `file:///var/lib/pgward/repo` on a named volume.
//! (`image.rs` runs the same config without an engine, as PID 1 of a PID namespace.)
//!
//! The health check runs every second here (`--health-interval 1s`) instead of the image's
//! 10 s, which would only make the tests wait.

use std::time::Duration;

use crate::common::docker::{pgward_image, Container, Volume};
use crate::common::TestDir;

/// A first start's initdb and initdb.d scripts, or a restore, on a shared machine.
const BOOT: Duration = Duration::from_secs(120);
/// The image's documented grace period: more than postgres.stop.timeout + kill_timeout.
const GRACE: Duration = Duration::from_secs(90);
const ARCHIVED: Duration = Duration::from_secs(60);
const PASSWORD: &str = "container-secret";

const MARKERS_SQL: &str = "CREATE TABLE markers (id serial PRIMARY KEY, note text NOT NULL);\n\
                           INSERT INTO markers (note) VALUES ('initdb.d');\n";

fn markers(c: &Container) -> String {
    c.psql("SELECT string_agg(note, ',' ORDER BY id) FROM markers")
}

/// Rows and a checksum of table `rows`: what a restore must bring back exactly.
fn rows_digest(c: &Container) -> String {
    c.psql("SELECT count(*) || ':' || coalesce(md5(string_agg(n::text || v, ',' ORDER BY n)), '') FROM rows")
}

/// How many times postgres logged a clean shutdown, over all starts of the container.
fn clean_shutdowns(c: &Container) -> usize {
    c.logs().matches("database system is shut down").count()
}

fn assert_clean_stop(c: &Container, shutdowns_before: usize) {
    let (took, code) = c.stop(GRACE);
    let logs = c.logs();
    assert_eq!(code, 0, "docker stop: exit code {code}:\n{logs}");
    assert!(took < GRACE, "docker stop took {took:?}:\n{logs}");
    assert_eq!(
        clean_shutdowns(c),
        shutdowns_before + 1,
        "no clean shutdown of postgres in the log:\n{logs}"
    );
    assert!(logs.contains("pgward stopped exit_code=0"), "{logs}");
}

#[test]
fn a_container_bootstraps_backs_up_reloads_on_hup_stops_and_starts_cleanly_and_a_successor_restores_every_row(
) {
    let image = pgward_image();
    let dir = TestDir::new();
    dir.write("initdb/01-markers.sql", MARKERS_SQL);
    let initdb = format!(
        "{}:/docker-entrypoint-initdb.d:ro",
        dir.join("initdb").display()
    );
    let data = Volume::new();
    let repo = Volume::new();
    let password = format!("POSTGRES_PASSWORD={PASSWORD}");
    let common_args = ["--health-interval", "1s", "-e", &password];

    // First start: initdb with the password, the initdb.d script, then the health check.
    let data_at = data.at("/var/lib/postgresql/data");
    let repo_at = repo.at("/var/lib/pgward");
    let mut args = common_args.to_vec();
    args.extend(["-v", &initdb, "-v", &data_at, "-v", &repo_at]);
    let first = Container::run(image, &args);
    // The image's own check command; only its interval is overridden.
    let check = first.inspect("{{json .Config.Healthcheck.Test}}");
    assert_eq!(check, r#"["CMD","pgward","health","--ready"]"#);
    first.wait_healthy(BOOT);
    assert_eq!(markers(&first), "initdb.d");
    // The password works over TCP (the official image's host rule: scram-sha-256).
    let (code, out) = first.exec(&[
        "env",
        &format!("PGPASSWORD={PASSWORD}"),
        "psql",
        "-XAtq",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-c",
        "SELECT 'tcp-ok'",
    ]);
    assert_eq!((code, out.trim()), (0, "tcp-ok"), "{out}");

    // The image's first backup at start, then one by hand, then rows only the WAL archive
    // holds. (A backup by hand while the first runs would be refused: one at a time.)
    first.wait_for_log("backup complete", BOOT);
    first.psql("CREATE TABLE rows (n int PRIMARY KEY, v text NOT NULL)");
    first.psql("INSERT INTO rows SELECT n, md5(n::text) FROM generate_series(1, 5000) n");
    let (code, out) = first.exec(&["pgward", "backup"]);
    assert_eq!(code, 0, "pgward backup in the container: {out}");
    assert!(out.contains(" complete ("), "{out}");
    first.psql("INSERT INTO rows SELECT n, 'after-backup' FROM generate_series(5001, 7000) n");
    first.psql("INSERT INTO markers (note) VALUES ('after-backup')");

    // SIGHUP to PID 1 reloads postgres's configuration.
    assert_eq!(first.psql("SHOW work_mem"), "4MB");
    first.psql("ALTER SYSTEM SET work_mem = '7MB'");
    first.signal("HUP");
    crate::common::eventually("work_mem reloaded after SIGHUP", ARCHIVED, || {
        first.psql("SHOW work_mem") == "7MB"
    });
    assert!(
        first
            .logs()
            .contains("SIGHUP: reloading postgres configuration"),
        "{}",
        first.logs()
    );

    // docker stop: a clean shutdown, exit 0, inside the grace period.
    first.switch_and_wait_archived(ARCHIVED);
    assert_clean_stop(&first, clean_shutdowns(&first));

    // docker start: the same data, the initdb.d script not run again.
    first.start();
    first.wait_healthy(BOOT);
    assert_eq!(markers(&first), "initdb.d,after-backup");
    first.psql("INSERT INTO rows SELECT n, 'after-restart' FROM generate_series(7001, 8000) n");
    first.psql("INSERT INTO markers (note) VALUES ('after-restart')");
    let digest = rows_digest(&first);
    assert!(digest.starts_with("8000:"), "{digest}");
    first.switch_and_wait_archived(ARCHIVED);
    assert_clean_stop(&first, clean_shutdowns(&first));

    // A new container on an empty data volume with the repository: the latest backup plus the
    // archive, every row; it replaces the first, which has stopped.
    let data2 = Volume::new();
    let data2_at = data2.at("/var/lib/postgresql/data");
    let mut args = common_args.to_vec();
    args.extend([
        "-e",
        "PGWARD_FROM_BACKUP=latest",
        "-e",
        "PGWARD_RESTORE_AS=successor",
        "-v",
        &data2_at,
        "-v",
        &repo_at,
    ]);
    let successor = Container::run(image, &args);
    successor.wait_healthy(BOOT);
    assert_eq!(markers(&successor), "initdb.d,after-backup,after-restart");
    assert_eq!(rows_digest(&successor), digest);
    // It archives where the first did.
    successor.psql("INSERT INTO markers (note) VALUES ('successor')");
    successor.switch_and_wait_archived(ARCHIVED);
    assert_clean_stop(&successor, clean_shutdowns(&successor));
}

#[test]
fn the_image_runs_with_a_read_only_root_and_tmpfs_on_run_and_tmp() {
    let image = pgward_image();
    let password = format!("POSTGRES_PASSWORD={PASSWORD}");
    // The data and repository directories are the image's VOLUMEs (anonymous volumes here);
    // /run holds postgres's socket directory and pgward's runtime directory.
    let c = Container::run(
        image,
        &[
            "--read-only",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/tmp",
            "--health-interval",
            "1s",
            "-e",
            &password,
        ],
    );
    c.wait_healthy(BOOT);
    c.wait_for_log("backup complete", BOOT);
    c.psql("CREATE TABLE rows AS SELECT n FROM generate_series(1, 1000) n");
    let (code, out) = c.exec(&["pgward", "backup"]);
    assert_eq!(code, 0, "pgward backup under --read-only: {out}");
    c.switch_and_wait_archived(ARCHIVED);
    let logs = c.logs();
    assert!(!logs.contains("Read-only file system"), "{logs}");
    assert_clean_stop(&c, clean_shutdowns(&c));
}
