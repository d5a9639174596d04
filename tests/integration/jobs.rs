//! The job scheduler in a running daemon: policies of command jobs (concurrency, timeout and
//! kill, retries, fails_when), reports (command and webhook), built-in actions against a
//! real postgres and repository, and catch-up after downtime.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{
    eventually, file_storage, files_under, one_request_server, pg_bin_dir, pgward_with, Cluster,
    Pgward, TestDir, BOOT,
};

fn jobs_json(config: &Path) -> serde_json::Value {
    let (code, out, err) = pgward_with(config, &["jobs", "list", "--json"]);
    assert_eq!(code, 0, "jobs list: {out}\n{err}");
    serde_json::from_str(&out).expect("jobs list --json")
}

fn job<'a>(jobs: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    jobs.as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {jobs}"))
}

/// A directory the jobs (run as the server's user when the tests run as root) can write in.
fn job_dir() -> TestDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new();
    std::fs::set_permissions(dir.join(""), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Starts pgward on a fresh cluster with `jobs` (YAML list items) and waits for postgres.
async fn start_with_jobs(
    cluster: &Cluster,
    extra: &str,
    jobs: &str,
) -> (std::path::PathBuf, Pgward) {
    let config = cluster.config("password: pw", &format!("{extra}jobs:\n{jobs}"));
    let (code, out, err) = pgward_with(&config, &["config", "check"]);
    assert_eq!(code, 0, "config check: {out}\n{err}");
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    (config, pgward)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_jobs_follow_their_policies_and_report() {
    let cluster = Cluster::new();
    let dir = job_dir();
    let d = dir.join("").display().to_string();
    let (hook_port, hook) = one_request_server(200).await;
    let pg_isready = pg_bin_dir().join("pg_isready").display().to_string();
    let socket = cluster.socket_dir().display().to_string();
    let port = cluster.port;
    let jobs = format!(
        r#"  - {{ name: at-start, schedule: '@reboot', command: [{pg_isready}, -h, {socket}, -p, '{port}'] }}
  - {{ name: forbid, schedule: '* * * * * *', command: 'sleep 3' }}
  - {{ name: allow, schedule: '* * * * * *', command: 'sleep 3', concurrency: allow }}
  - {{ name: replace, schedule: '* * * * * *', command: 'sleep 3', concurrency: replace, kill_timeout: 1s }}
  - name: stubborn
    schedule: '@yearly'
    command: "trap '' TERM; sleep 300 & echo $! > {d}/child.pid; wait"
    timeout: 1s
    kill_timeout: 1s
  - name: flaky
    schedule: '@yearly'
    command: 'n=$(cat {d}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/count; echo attempt $n; [ $n -ge 3 ]'
    retries: {{ max: 3, initial_delay: 300ms, multiplier: 2, max_delay: 1s }}
  - {{ name: noisy-err, schedule: '@yearly', command: 'echo oops >&2', fails_when: {{ produces_stderr: true }} }}
  - {{ name: noisy-out, schedule: '@yearly', command: [echo, hello from a job], fails_when: {{ produces_stdout: true }} }}
  - {{ name: tolerant, schedule: '@yearly', command: 'exit 3', fails_when: {{ nonzero_exit: false }} }}
  - {{ name: always, schedule: '@yearly', command: 'true', fails_when: {{ always: true }} }}
  - name: hooked
    schedule: '@yearly'
    command: 'echo about to fail; exit 4'
    on_failure:
      command: 'env | grep ^PGWARD_JOB_ > {d}/hook.env'
      webhook: {{ url: 'http://127.0.0.1:{hook_port}/hook', headers: {{ X-Token: s3cret }} }}
  - name: cheered
    schedule: '@yearly'
    command: 'true'
    on_success: {{ command: 'echo $PGWARD_JOB_STATUS > {d}/success' }}
"#
    );
    let (config, mut pgward) = start_with_jobs(&cluster, "", &jobs).await;
    // The failures are the point: each failed run is an ERROR record (a replaced run too).
    for job in [
        "replace",
        "stubborn",
        "noisy-err",
        "noisy-out",
        "always",
        "hooked",
    ] {
        pgward.expect_error(&format!("job={job} "), "the test makes this job fail");
    }

    // Concurrency: watch the three every-second jobs for a while.
    let mut max_running = std::collections::HashMap::new();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let jobs = jobs_json(&config);
        for name in ["forbid", "allow", "replace"] {
            let running = job(&jobs, name)["running"].as_u64().unwrap();
            let max = max_running.entry(name).or_insert(0);
            *max = (*max).max(running);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(max_running["forbid"], 1, "{max_running:?}");
    assert!(max_running["allow"] >= 2, "{max_running:?}");
    assert_eq!(max_running["replace"], 1, "{max_running:?}");
    let jobs = jobs_json(&config);
    assert!(
        job(&jobs, "replace")["failures_total"].as_u64().unwrap() >= 1,
        "{jobs}"
    );
    assert!(
        pgward.output().contains("concurrency: forbid"),
        "{}",
        pgward.output()
    );

    // Timeout: SIGTERM is ignored, so SIGKILL after kill_timeout, to the whole group.
    let started = Instant::now();
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "stubborn"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains("timeout") || err.contains("timed out"),
        "{err}"
    );
    let child: i32 = std::fs::read_to_string(dir.join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("the job's child is killed", Duration::from_secs(5), || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_err()
    });

    // Retries with backoff: fails twice, succeeds the third time.
    let started = Instant::now();
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "flaky"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("attempt 3"), "{out}");
    assert!(err.contains("retrying in"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // fails_when.
    for (name, expected) in [
        ("noisy-err", 1),
        ("noisy-out", 1),
        ("tolerant", 0),
        ("always", 1),
    ] {
        let (code, out, err) = pgward_with(&config, &["jobs", "run", name]);
        assert_eq!(code, expected, "{name}: {out}\n{err}");
    }
    let (_, out, _) = pgward_with(&config, &["jobs", "run", "noisy-out"]);
    assert!(out.contains("hello from a job"), "{out}");
    // Relayed to pgward's log with the job's name, and kept for status.
    assert!(
        pgward.output().contains("[job noisy-out] hello from a job"),
        "{}",
        pgward.output()
    );
    let jobs = jobs_json(&config);
    assert_eq!(
        job(&jobs, "noisy-out")["last_output"][0],
        "hello from a job",
        "{jobs}"
    );
    // @reboot ran once, after postgres accepted connections.
    assert_eq!(job(&jobs, "at-start")["last_result"], "success", "{jobs}");
    assert_eq!(job(&jobs, "at-start")["runs_total"], 1, "{jobs}");

    // Reports: the failure hook's command and webhook, the success hook.
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "hooked"]);
    assert_eq!(code, 4, "{out}\n{err}");
    let request = tokio::time::timeout(Duration::from_secs(10), hook)
        .await
        .expect("the webhook was called")
        .unwrap();
    assert!(request.starts_with("POST /hook"), "{request}");
    assert!(
        request.to_ascii_lowercase().contains("x-token: s3cret"),
        "{request}"
    );
    let body: serde_json::Value =
        serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["job"], "hooked", "{body}");
    assert_eq!(body["status"], "failure", "{body}");
    assert_eq!(body["exit_code"], 4, "{body}");
    eventually("the failure hook ran", Duration::from_secs(5), || {
        dir.join("hook.env").exists()
    });
    let env = std::fs::read_to_string(dir.join("hook.env")).unwrap();
    assert!(env.contains("PGWARD_JOB_NAME=hooked"), "{env}");
    assert!(env.contains("PGWARD_JOB_EXIT_CODE=4"), "{env}");
    assert!(env.contains("about to fail"), "{env}");
    let (code, _, _) = pgward_with(&config, &["jobs", "run", "cheered"]);
    assert_eq!(code, 0);
    eventually("the success hook ran", Duration::from_secs(5), || {
        std::fs::read_to_string(dir.join("success")).is_ok_and(|s| s.trim() == "success")
    });
    assert!(
        !pgward.output().contains("s3cret"),
        "a header value was logged"
    );

    // The table, an unknown job, and status.
    let (code, out, _) = pgward_with(&config, &["jobs", "list"]);
    assert_eq!(code, 0);
    for name in ["forbid", "stubborn", "hooked"] {
        assert!(out.contains(name), "{out}");
    }
    let (code, _, err) = pgward_with(&config, &["jobs", "run", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no job named \"nope\""), "{err}");
    let status = Pgward::status(&config);
    assert!(status["jobs"].as_array().unwrap().len() >= 10, "{status}");

    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(pgward.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_jobs_run_on_schedule_and_actions_work() {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let jobs = r#"  - { name: backups, schedule: '*/4 * * * * *', action: backup, options: { type: incremental } }
  - { name: make-table, schedule: '@yearly', action: sql, options: { sql: 'CREATE TABLE made_by_job (i int)' } }
  - { name: slow-sql, schedule: '@yearly', action: sql, options: { sql: 'SELECT pg_sleep(5)', statement_timeout: 500ms } }
  - { name: verify, schedule: '@yearly', action: verify }
  - { name: drill, schedule: '@yearly', action: restore-test, options: { sql: 'SELECT count(*) = 3 FROM t' } }
"#;
    let (config, mut pgward) = start_with_jobs(&cluster, &storage, jobs).await;
    pgward.expect_error("job=slow-sql ", "the test makes this job time out");
    pgward.expect_error(
        "job failed: restore test of backup ",
        "the test damages the backup the drill restores",
    );
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 3) AS i")
        .await
        .unwrap();

    eventually("two backups by the job", Duration::from_secs(60), || {
        let (_, out, _) = pgward_with(&config, &["list", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .map(|v| v.as_array().map_or(0, |a| a.len()) >= 2)
            .unwrap_or(false)
    });
    let jobs = jobs_json(&config);
    assert_eq!(job(&jobs, "backups")["last_result"], "success", "{jobs}");
    assert!(job(&jobs, "backups")["next_run"].is_string(), "{jobs}");

    let (code, out, err) = pgward_with(&config, &["jobs", "run", "make-table"]);
    assert_eq!(code, 0, "{out}\n{err}");
    client
        .batch_execute("SELECT * FROM made_by_job")
        .await
        .unwrap();
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "slow-sql"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("statement timeout"), "{err}");
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "drill"]);
    assert_eq!(code, 0, "{out}\n{err}");

    // Damage every object of the first backup: the newest one needs some of them.
    let repo = cluster.dir.join("repo");
    let first = std::fs::read_dir(repo.join("backups"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .min()
        .unwrap();
    let objects: Vec<_> = files_under(&first.join("data"))
        .into_iter()
        .chain(files_under(&first.join("bundles")))
        .collect();
    for path in &objects {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xFF;
        std::fs::write(path, bytes).unwrap();
    }
    let damaged = objects.len();
    assert!(damaged > 2, "{damaged}");
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "drill"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("restore test"), "{err}");
    let jobs = jobs_json(&config);
    assert_eq!(job(&jobs, "drill")["last_result"], "failure", "{jobs}");

    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(pgward.wait_exit(Duration::from_secs(60)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_missed_while_down_is_caught_up_once() {
    let cluster = Cluster::new();
    let dir = job_dir();
    let d = dir.join("").display().to_string();
    let jobs = format!(
        "  - {{ name: hourly, schedule: '0 * * * *', catch_up: true, command: 'echo ran >> {d}/hourly' }}
  - {{ name: hourly-no, schedule: '0 * * * *', command: 'echo ran >> {d}/no' }}
"
    );
    let (config, mut pgward) = start_with_jobs(&cluster, "", &jobs).await;
    let state_file = cluster.data_dir().join("pgward.jobs.json");
    eventually("the state file", Duration::from_secs(10), || {
        std::fs::read_to_string(&state_file).is_ok_and(|s| s.contains("hourly-no"))
    });
    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(pgward.wait_exit(Duration::from_secs(30)).success());

    // As if pgward had been down for the last three hours.
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let three_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
    for name in ["hourly", "hourly-no"] {
        state["jobs"][name]["last_fire"] = serde_json::Value::String(three_hours_ago.clone());
    }
    std::fs::write(&state_file, serde_json::to_string(&state).unwrap()).unwrap();

    let mut pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    eventually("the missed run", Duration::from_secs(30), || {
        dir.join("hourly").exists()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        std::fs::read_to_string(dir.join("hourly")).unwrap(),
        "ran\n",
        "caught up exactly once"
    );
    assert!(!dir.join("no").exists(), "a job without catch_up ran");
    let jobs = jobs_json(&config);
    assert_eq!(job(&jobs, "hourly")["last_result"], "success", "{jobs}");
    assert!(pgward.output().contains("missed"), "{}", pgward.output());
    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(pgward.wait_exit(Duration::from_secs(30)).success());
}
