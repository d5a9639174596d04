//! Real postgres under `pgward run`: bootstrap like the official image, privilege drop,
//! restart after a crash, clean shutdown, data surviving a restart.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{self, service, Cluster, Pgward, BOOT};

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_like_the_official_image_and_keeps_data_across_restarts() {
    let cluster = Cluster::new();
    // Scripts run in name order: the table must exist before the gzipped rows and the shell
    // script see it.
    cluster.dir.write(
        "initdb.d/01-schema.sql",
        "CREATE TABLE marker (step text);\nINSERT INTO marker VALUES ('sql');\n",
    );
    std::fs::write(
        cluster.dir.join("initdb.d/02-rows.sql.gz"),
        gzip("INSERT INTO marker VALUES ('gz');\n"),
    )
    .unwrap();
    cluster.dir.write(
        "initdb.d/03-shell.sh",
        "set -e\npsql -v ON_ERROR_STOP=1 --no-psqlrc -d \"$POSTGRES_DB\" -c \"INSERT INTO marker VALUES ('sh:$POSTGRES_USER')\"\n",
    );
    cluster.dir.write("initdb.d/README.txt", "ignored\n");
    let config = cluster.config("", "");
    let config_arg = config.to_str().unwrap();
    let waldir = cluster.dir.join("wal");
    let env = [
        ("POSTGRES_INITDB_WALDIR", waldir.to_str().unwrap()),
        ("POSTGRES_USER", "alice"),
        ("POSTGRES_PASSWORD", "s3cr#t: pw"),
        ("POSTGRES_DB", "app"),
        // Password authentication on loopback too, so the password is really checked.
        (
            "POSTGRES_INITDB_ARGS",
            "--data-checksums --auth-host=scram-sha-256",
        ),
    ];

    let mut pgward = Pgward::start(&["--config", config_arg, "run"], &env);
    pgward.wait_for_output("PostgreSQL init process complete", BOOT);
    let client = cluster
        .wait_connect("alice", "s3cr#t: pw", "app", BOOT)
        .await;
    let rows: Vec<String> = client
        .query("SELECT step FROM marker ORDER BY step", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec!["gz", "sh:alice", "sql"]);
    let checksums: String = client
        .query_one("SHOW data_checksums", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(checksums, "on");
    // POSTGRES_INITDB_WALDIR: pg_wal lives elsewhere, linked from the data directory.
    assert_eq!(
        std::fs::read_link(cluster.data_dir().join("pg_wal")).unwrap(),
        waldir
    );
    // A wrong password is refused.
    assert!(cluster.connect("alice", "wrong", "app").await.is_err());
    client
        .batch_execute("INSERT INTO marker VALUES ('before restart')")
        .await
        .unwrap();
    drop(client);

    // As root, postgres runs as the postgres user.
    let postmaster = cluster.postmaster_pid().expect("postmaster.pid");
    if common::is_root() {
        let postgres_uid = nix::unistd::User::from_name("postgres")
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        assert_eq!(common::process_uid(postmaster), Some(postgres_uid));
    }

    // SIGTERM: a clean (fast) shutdown, exit 0.
    let asked = Instant::now();
    pgward.signal(Signal::SIGTERM);
    let status = pgward.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "output:\n{}", pgward.output());
    assert!(asked.elapsed() < Duration::from_secs(20));
    assert_eq!(cluster.controldata_state(), "shut down");

    // Second start: no bootstrap, data still there, no password needed in the environment.
    let pgward = Pgward::start(&["--config", config_arg, "run"], &[]);
    let client = cluster
        .wait_connect("alice", "s3cr#t: pw", "app", BOOT)
        .await;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM marker WHERE step = 'before restart'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert!(!pgward.output().contains("init process complete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_postgres_after_kill_9_of_the_postmaster() {
    let cluster = Cluster::new();
    let config = cluster.config("password: pw", "");
    let config_arg = config.to_str().unwrap();
    let pgward = Pgward::start(&["--config", config_arg, "run"], &[]);
    cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    let first = cluster.postmaster_pid().expect("postmaster.pid");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
    pgward.wait_for_output("killed by SIGKILL", Duration::from_secs(10));
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    let second = cluster.postmaster_pid().expect("postmaster.pid");
    assert_ne!(first, second);
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    common::eventually("status shows the restart", Duration::from_secs(10), || {
        let status = Pgward::status(&config);
        let pg = service(&status, "postgres");
        pg["restarts"] == 1 && pg["pid"] == second && pg["last_exit"] == "killed by SIGKILL"
    });
    let status = Pgward::status(&config);
    assert_eq!(status["phase"], "running");
    assert!(status["uptime_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn refuses_to_bootstrap_without_a_password_unless_trust_is_explicit() {
    let cluster = Cluster::new();
    let config = cluster.config("", "");
    let mut pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    pgward.expect_error(
        "superuser password is not specified",
        "the test gives no password",
    );
    let status = pgward.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let output = pgward.output();
    assert!(
        output.contains("superuser password is not specified"),
        "{output}"
    );
    assert!(
        output.contains("POSTGRES_HOST_AUTH_METHOD=trust"),
        "{output}"
    );
    // Nothing half-done: the data directory is still empty.
    assert_eq!(
        std::fs::read_dir(cluster.data_dir())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn refuses_a_non_empty_data_directory_without_pg_version() {
    let cluster = Cluster::new();
    cluster.dir.write("data/precious.txt", "not a cluster\n");
    let config = cluster.config("password: pw", "");
    let mut pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    pgward.expect_error(
        "is not empty but holds no PG_VERSION",
        "the test puts a file in the data directory",
    );
    let status = pgward.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    assert!(
        pgward
            .output()
            .contains("is not empty but holds no PG_VERSION"),
        "{}",
        pgward.output()
    );
    assert_eq!(
        std::fs::read_to_string(cluster.dir.join("data/precious.txt")).unwrap(),
        "not a cluster\n"
    );
}

#[test]
fn a_failed_init_script_leaves_a_cluster_that_refuses_to_start() {
    let cluster = Cluster::new();
    cluster
        .dir
        .write("initdb.d/01-broken.sql", "SELECT no_such_function();\n");
    let config = cluster.config("password: pw", "");
    let config_arg = config.to_str().unwrap();
    let mut pgward = Pgward::start(&["--config", config_arg, "run"], &[]);
    pgward.expect_error("01-broken.sql failed", "the test's init script fails");
    assert_eq!(pgward.wait_exit(BOOT).code(), Some(1));
    assert!(
        pgward.output().contains("01-broken.sql failed"),
        "{}",
        pgward.output()
    );

    let mut again = Pgward::start(&["--config", config_arg, "run"], &[]);
    again.expect_error("did not complete", "the first start's init script failed");
    assert_eq!(again.wait_exit(Duration::from_secs(30)).code(), Some(1));
    assert!(
        again.output().contains("did not complete"),
        "{}",
        again.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_without_password_and_sighup_reloads() {
    let cluster = Cluster::new();
    let config = cluster.config("host_auth_method: trust", "");
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster.wait_connect("postgres", "", "postgres", BOOT).await;
    // Change a reloadable setting on disk, SIGHUP pgward, and watch postgres pick it up.
    std::fs::OpenOptions::new()
        .append(true)
        .open(cluster.data_dir().join("postgresql.auto.conf"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"work_mem = '7MB'\n"))
        .unwrap();
    pgward.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value: String = client.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        if value == "7MB" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "work_mem still {value} after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pgward
        .output()
        .contains("SIGHUP: reloading postgres configuration"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_does_not_outlive_a_killed_pgward() {
    let cluster = Cluster::new();
    let config = cluster.config("password: pw", "");
    let mut pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    let postmaster = cluster.postmaster_pid().expect("postmaster.pid");

    pgward.signal(Signal::SIGKILL);
    pgward.wait_exit(Duration::from_secs(10));
    // The parent-death signal is SIGQUIT: an immediate shutdown, not an orphaned server.
    common::eventually("the postmaster exits", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{postmaster}")).exists()
            || std::fs::read_to_string(format!("/proc/{postmaster}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    // And the next start recovers it.
    let _pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
}
