//! Extra services: restart policies, ordering after postgres, log relay, shutdown order and
//! escalation.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{self, service, Cluster, Pgward};

#[test]
fn each_restart_policy_and_a_fatal_service_make_a_non_zero_exit() {
    let cluster = Cluster::new();
    std::fs::create_dir(cluster.dir.join("work")).unwrap();
    // As root a service may run as another user; otherwise it runs as pgward's own user.
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let run_as = if common::is_root() {
        "nobody".to_owned()
    } else {
        me
    };
    let services = "services:
  - name: always
    command: [sh, -c, \"echo always-ran; sleep 0.3\"]
    restart: always
    start_secs: 100ms
    backoff: 100ms
  - name: clean
    command: [sh, -c, \"echo clean-ran; exit 0\"]
    restart: on-failure
  - name: crashy
    command: [sh, -c, \"echo crashy-ran; exit 3\"]
    restart: on-failure
    start_retries: 2
    backoff: 100ms
    start_secs: 1s
  - name: once
    command: [sh, -c, \"echo once-ran; exit 0\"]
    restart: never
  - name: placed
    command: [sh, -c, \"echo placed-in=$(pwd) as=$(id -un) greeting=$GREETING; exec sleep 1000\"]
    env: { GREETING: hello }
    working_dir: WORKDIR
    user: USER
  - name: waiter
    command: [sh, -c, \"pg_isready -q -h $PGHOST -p $PGPORT && echo saw-postgres-ready; exec sleep 1000\"]
    env: { PGHOST: SOCKET, PGPORT: \"PORT\" }
    restart: on-failure
    after: postgres
"
    .replace("SOCKET", cluster.socket_dir().to_str().unwrap())
    .replace("PORT", &cluster.port.to_string())
    .replace("WORKDIR", cluster.dir.join("work").to_str().unwrap())
    .replace("USER", &run_as);
    let config = cluster.config("host_auth_method: trust", &services);
    let bin_dir = common::pg_bin_dir();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut pgward = Pgward::start(
        &["--config", config.to_str().unwrap(), "run"],
        &[("PATH", &path)],
    );
    pgward.expect_error("service=crashy", "the test's `crashy` service always fails");
    pgward.expect_error(
        "failed for good: crashy",
        "the test's `crashy` service always fails",
    );

    pgward.wait_for_output("[waiter] saw-postgres-ready", Duration::from_secs(60));
    common::eventually("restart policies settle", Duration::from_secs(20), || {
        let status = Pgward::status(&config);
        service(&status, "always")["restarts"].as_u64().unwrap_or(0) >= 3
            && service(&status, "clean")["state"] == "exited"
            && service(&status, "crashy")["state"] == "fatal"
            && service(&status, "once")["state"] == "exited"
    });
    let status = Pgward::status(&config);
    assert_eq!(service(&status, "clean")["restarts"], 0);
    assert_eq!(service(&status, "once")["restarts"], 0);
    // Two retries allowed: three failed starts, two restarts.
    assert_eq!(service(&status, "crashy")["restarts"], 2);
    assert_eq!(service(&status, "crashy")["last_exit"], "exit code 3");
    assert_eq!(service(&status, "waiter")["state"], "running");
    let output = pgward.output();
    assert!(
        output.contains("[once] once-ran") && output.contains("[clean] clean-ran"),
        "{output}"
    );
    assert!(
        output.contains("[postgres] "),
        "postgres output is relayed with its name: {output}"
    );

    // Shutdown order: services first, postgres last; exit 1 because `crashy` failed for good.
    pgward.signal(Signal::SIGTERM);
    let exit = pgward.wait_exit(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(1));
    let output = pgward.output();
    let position = |needle: &str| {
        output
            .lines()
            .position(|l| l.contains(needle) && l.contains("stopped:"))
            .unwrap_or_else(|| panic!("no stop line for {needle}:\n{output}"))
    };
    let waiter_stopped = position("service=waiter");
    let postgres_stopped = position("service=postgres");
    assert!(
        waiter_stopped < postgres_stopped,
        "services must stop before postgres:\n{output}"
    );
    assert!(output.contains("failed for good: crashy"), "{output}");
    assert_eq!(cluster.controldata_state(), "shut down");
}

#[test]
fn a_second_sigterm_escalates_and_json_logs_carry_the_service_name() {
    let cluster = Cluster::new();
    let config = cluster.config(
        "host_auth_method: trust",
        "services:
  - name: stubborn
    command: [sh, -c, \"trap 'echo ignoring-term' TERM; echo started; while true; do sleep 0.1; done\"]
    stop_timeout: 60s
log:
  format: json
",
    );
    let mut pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    pgward.wait_for_output("\"service\":\"stubborn\"", Duration::from_secs(60));
    pgward.wait_for_output("postgres ready", Duration::from_secs(60));
    let line = pgward
        .output()
        .lines()
        .find(|l| l.contains("\"message\":\"started\"") && l.contains("\"stream\""))
        .map(str::to_owned)
        .expect("relayed line");
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON record");
    assert_eq!(record["service"], "stubborn");
    assert_eq!(record["stream"], "stdout");

    pgward.signal(Signal::SIGTERM);
    pgward.wait_for_output("ignoring-term", Duration::from_secs(10));
    let escalated = Instant::now();
    pgward.signal(Signal::SIGTERM);
    let exit = pgward.wait_exit(Duration::from_secs(30));
    assert!(
        escalated.elapsed() < Duration::from_secs(15),
        "escalation did not skip the 60s grace"
    );
    assert_eq!(exit.code(), Some(0), "{}", pgward.output());
    assert!(pgward.output().contains("escalating shutdown"));
}
