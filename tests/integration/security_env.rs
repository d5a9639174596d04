//! Trust boundaries of child processes: what the environment of postgres, its superusers'
//! SQL, init scripts, services, jobs and report commands holds of pgward's secrets, and whom
//! jobs run as (a user that does not exist is refused at `config check`, and a user that
//! disappears later fails the run rather than running it as root).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, eventually, pgward_with, Cluster, Pgward, TestDir, BOOT};

/// What pgward's environment holds in the tests: each value is a secret no child may see,
/// by the rule that removes it.
const SECRETS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "sec-aws-id-0001"),
    ("AWS_SECRET_ACCESS_KEY", "sec-aws-secret-0002"),
    ("AWS_SESSION_TOKEN", "sec-aws-session-0003"),
    (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "/run/sec-google-0004.json",
    ),
    ("GOOGLE_SERVICE_ACCOUNT_KEY", "sec-google-key-0005"),
    ("AZURE_STORAGE_ACCOUNT_KEY", "sec-azure-key-0006"),
    ("POSTGRES_PASSWORD", "sec-pg-password-0007"),
    ("PGPASSWORD", "sec-pgpassword-0008"),
    ("PGWARD_API_TOKEN", "sec-pgward-token-0009"),
    // Named like nothing secret, but the config reads it into a secret (a webhook header).
    ("REPORT_HEADER", "sec-read-as-secret-0010"),
];

/// A variable that is no secret: children still get it.
const PLAIN: (&str, &str) = ("SECURITY_ENV_PLAIN", "plain-value-visible");

fn pgward_env() -> Vec<(&'static str, &'static str)> {
    let mut env = SECRETS.to_vec();
    env.push(PLAIN);
    env
}

/// `pgward --config <config> <args>` in [`pgward_env`] (the config reads from it), run to
/// completion: (exit code, stdout, stderr).
fn pgward_in_env(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::pgward_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(pgward_env())
        .output()
        .expect("run pgward");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory every user can write in (jobs run as the server's user when root).
fn open_dir() -> TestDir {
    let dir = TestDir::new();
    std::fs::set_permissions(dir.join(""), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The secrets whose value (or name, with `=`) appears in `env`, a dump of an environment
/// (`env` output, or `/proc/<pid>/environ` with NULs).
fn leaked<'a>(env: &str, except: &[&str]) -> Vec<&'a str> {
    SECRETS
        .iter()
        .filter(|(name, _)| !except.contains(name))
        .filter(|(name, value)| env.contains(value) || env.contains(&format!("{name}=")))
        .map(|(name, _)| *name)
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_child_of_pgward_sees_its_secrets_unless_it_asks_for_one() {
    if !common::is_root() {
        eprintln!("needs root: postgres runs as the postgres user, jobs as postgres.user");
        return;
    }
    let cluster = Cluster::new();
    let out = open_dir();
    let o = out.join("").display().to_string();
    // An init script, as the image runs them: it dumps what it was given.
    cluster
        .dir
        .write("initdb.d/dump-env.sh", &format!("env > {o}/init.env\n"));
    let extra = format!(
        "services:
  - name: envdump
    command: [sh, -c, \"env > {o}/service.env; exec sleep 600\"]
  - name: inheriting
    command: [sh, -c, \"env > {o}/service-inheriting.env; exec sleep 600\"]
    inherit_env: [AZURE_STORAGE_ACCOUNT_KEY]
jobs:
  - name: plain
    schedule: 0 0 1 1 *
    command: \"id -un > {o}/plain.user; env > {o}/plain.env\"
    on_success:
      command: \"env > {o}/report.env\"
    on_failure:
      webhook:
        url: http://127.0.0.1:9/never
        headers: {{ X-Token: \"${{REPORT_HEADER}}\" }}
  - name: inheriting
    schedule: 0 0 1 1 *
    command: \"env > {o}/inheriting.env\"
    inherit_env: [AWS_SESSION_TOKEN]
    env: {{ GIVEN_SECRET: given-explicitly }}
"
    );
    // No password in the file: POSTGRES_PASSWORD in the environment is the superuser's.
    let config = cluster.config("", &extra);
    let (code, stdout, stderr) = pgward_in_env(&config, &["config", "check"]);
    assert_eq!(code, 0, "config check: {stdout}\n{stderr}");
    let pgward = Pgward::start(
        &["--config", config.to_str().unwrap(), "run"],
        &pgward_env(),
    );
    let client = cluster
        .wait_connect("postgres", "sec-pg-password-0007", "postgres", BOOT)
        .await;

    // The server's own environment, as root sees it in /proc.
    let postmaster = cluster.postmaster_pid().expect("postmaster.pid");
    let environ = std::fs::read(format!("/proc/{postmaster}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    assert_eq!(leaked(&environ, &[]), Vec::<&str>::new(), "{environ}");
    assert!(
        environ.contains("SECURITY_ENV_PLAIN=plain-value-visible"),
        "{environ}"
    );

    // What a superuser reads of it in SQL (pg_read_file refuses the NULs between variables;
    // the binary form returns the same file): the backend's own (where postgres wrote its
    // process title over the start of the environment), the postmaster's, and what a
    // program run by COPY gets.
    for file in [
        "/proc/self/environ".to_owned(),
        format!("/proc/{postmaster}/environ"),
    ] {
        let row = client
            .query_one("SELECT pg_read_binary_file($1)", &[&file])
            .await
            .unwrap();
        let from_sql = String::from_utf8_lossy(row.get::<_, &[u8]>(0)).replace('\0', "\n");
        assert_eq!(
            leaked(&from_sql, &[]),
            Vec::<&str>::new(),
            "{file}: {from_sql}"
        );
    }
    client
        .batch_execute(&format!("COPY (SELECT 1) TO PROGRAM 'env > {o}/copy.env'"))
        .await
        .unwrap();
    let copy = read(&out.join("copy.env"));
    assert_eq!(leaked(&copy, &[]), Vec::<&str>::new(), "{copy}");
    assert!(
        copy.contains("SECURITY_ENV_PLAIN=plain-value-visible"),
        "{copy}"
    );

    // Init scripts get what the image gives them (POSTGRES_PASSWORD, PGPASSWORD set to the
    // superuser's password), nothing else secret.
    let init = read(&out.join("init.env"));
    assert_eq!(
        leaked(&init, &["POSTGRES_PASSWORD", "PGPASSWORD"]),
        Vec::<&str>::new(),
        "{init}"
    );
    assert!(
        init.contains("POSTGRES_PASSWORD=sec-pg-password-0007"),
        "{init}"
    );
    assert!(init.contains("PGPASSWORD=sec-pg-password-0007"), "{init}");

    // Services: none, unless listed in inherit_env.
    eventually("the services dumped their environment", BOOT, || {
        out.join("service.env").exists() && out.join("service-inheriting.env").exists()
    });
    let service = read(&out.join("service.env"));
    assert_eq!(leaked(&service, &[]), Vec::<&str>::new(), "{service}");
    assert!(
        service.contains("SECURITY_ENV_PLAIN=plain-value-visible"),
        "{service}"
    );
    let service = read(&out.join("service-inheriting.env"));
    assert_eq!(
        leaked(&service, &["AZURE_STORAGE_ACCOUNT_KEY"]),
        Vec::<&str>::new(),
        "{service}"
    );
    assert!(
        service.contains("AZURE_STORAGE_ACCOUNT_KEY=sec-azure-key-0006"),
        "{service}"
    );

    // Jobs and report commands: none; a job with no user runs as postgres.user.
    let (code, stdout, stderr) = pgward_in_env(&config, &["jobs", "run", "plain"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(read(&out.join("plain.user")).trim(), "postgres");
    let job = read(&out.join("plain.env"));
    assert_eq!(leaked(&job, &[]), Vec::<&str>::new(), "{job}");
    assert!(
        job.contains("SECURITY_ENV_PLAIN=plain-value-visible"),
        "{job}"
    );
    eventually("the report command ran", Duration::from_secs(10), || {
        std::fs::read_to_string(out.join("report.env")).is_ok_and(|e| e.contains("PGWARD_JOB_"))
    });
    let report = read(&out.join("report.env"));
    assert_eq!(leaked(&report, &[]), Vec::<&str>::new(), "{report}");
    assert!(report.contains("PGWARD_JOB_NAME=plain"), "{report}");

    // A job gets what it lists in inherit_env, and what its own env sets.
    let (code, stdout, stderr) = pgward_in_env(&config, &["jobs", "run", "inheriting"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let job = read(&out.join("inheriting.env"));
    assert_eq!(
        leaked(&job, &["AWS_SESSION_TOKEN"]),
        Vec::<&str>::new(),
        "{job}"
    );
    assert!(
        job.contains("AWS_SESSION_TOKEN=sec-aws-session-0003"),
        "{job}"
    );
    assert!(job.contains("GIVEN_SECRET=given-explicitly"), "{job}");

    drop(client);
    drop(pgward);
}

#[test]
fn a_job_or_service_user_that_does_not_exist_is_refused_by_config_check() {
    let dir = TestDir::new();
    let yaml = "services:
  - name: sidecar
    command: [sleep, \"1\"]
    user: pgward-no-such-service-user
jobs:
  - name: nightly
    schedule: \"@daily\"
    command: [true]
    user: pgward-no-such-job-user
";
    let config = dir.write("pgward.yaml", yaml);
    let (code, stdout, stderr) = pgward_with(&config, &["config", "check"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let file = config.display();
    assert_eq!(
        stderr,
        format!(
            "{file}:4:11: services[0].user: no such user \"pgward-no-such-service-user\"\n\
             {file}:9:11: jobs[0].user: no such user \"pgward-no-such-job-user\"\n"
        )
    );
}

/// A user made for one test, removed when dropped (if the test did not remove it first).
struct TempUser {
    name: String,
}

impl TempUser {
    fn create() -> TempUser {
        let name = format!("pgwt{}", std::process::id());
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh", &name])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name}");
        TempUser { name }
    }

    fn remove(&self) {
        let status = Command::new("userdel")
            .arg(&self.name)
            .status()
            .expect("run userdel");
        assert!(status.success(), "userdel {}", self.name);
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .arg(&self.name)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_user_disappeared_after_the_check_fails_and_never_runs_as_root() {
    if !common::is_root() {
        eprintln!("needs root: creates and removes an OS user");
        return;
    }
    let user = TempUser::create();
    let cluster = Cluster::new();
    let out = open_dir();
    let o = out.join("").display().to_string();
    let extra = format!(
        "jobs:
  - name: vanished
    schedule: 0 0 1 1 *
    command: \"id -un > {o}/ran-as\"
    user: {user}
    on_failure:
      command: \"id -un > {o}/reported-as\"
",
        user = user.name
    );
    let config = cluster.config("password: pw", &extra);
    let (code, stdout, stderr) = pgward_with(&config, &["config", "check"]);
    assert_eq!(code, 0, "config check: {stdout}\n{stderr}");
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    pgward.expect_error(
        &format!("cannot run as user \"{}\"", user.name),
        "the test removes the job's user",
    );
    let _client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;

    user.remove();
    let (code, stdout, stderr) = pgward_with(&config, &["jobs", "run", "vanished"]);
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    let said = format!("{stdout}{stderr}");
    assert!(
        said.contains(&format!("user \"{}\" does not exist", user.name)),
        "{said}"
    );
    // Neither the command nor the failure report ran, as anyone.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !out.join("ran-as").exists(),
        "the job ran as {}",
        read(&out.join("ran-as"))
    );
    assert!(
        !out.join("reported-as").exists(),
        "the report ran as {}",
        read(&out.join("reported-as"))
    );
    let jobs = Pgward::status(&config)["jobs"].clone();
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "vanished")
        .unwrap_or_else(|| panic!("{jobs}"));
    assert_eq!(job["last_result"], "failure", "{job}");
}
