//! Trust boundaries of child processes: whom jobs run as (a user that does not exist is
//! refused at `config check`, and a user that disappears later fails the run rather than
//! running it as root).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, pgward_with, Cluster, Pgward, TestDir, BOOT};

/// A directory every user can write in (jobs run as the server's user when root).
fn open_dir() -> TestDir {
    let dir = TestDir::new();
    std::fs::set_permissions(dir.join(""), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
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
