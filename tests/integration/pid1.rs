//! PID-1 behaviour under a real PID namespace: pgward is PID 1, reaps orphans, stops on SIGTERM.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::{self, children_of, Cluster, Pgward};

#[test]
fn as_pid_1_reaps_orphans_and_stops_everything_on_sigterm() {
    if !common::is_root() {
        eprintln!("needs root for unshare --pid; run as root (make test does)");
    }
    let cluster = Cluster::new();
    // The service's shell starts a background sleeper and exits at once from a subshell: the
    // sleeper is orphaned, reparented to PID 1, and must be reaped when it ends.
    let config = cluster.config(
        "host_auth_method: trust",
        "services:\n  - name: orphaner\n    command: [sh, -c, \"(sleep 0.5 &) ; echo spawned-orphan; exec sleep 1000\"]\n    restart: never\n    after: postgres\n",
    );
    let mut unshare = Pgward::start_wrapped(
        &["unshare", "--pid", "--fork", "--mount-proc"],
        &["--config", config.to_str().unwrap(), "run"],
        &[],
    );
    unshare.wait_for_output("[orphaner] spawned-orphan", Duration::from_secs(60));

    // pgward is the only child of unshare; in its namespace it is PID 1.
    let pgward_pid = children_of(unshare.pid())
        .first()
        .expect("unshare has a child")
        .0;
    let status = Pgward::status(&config);
    assert_eq!(status["pgward_pid"], 1, "{status}");
    assert!(unshare.output().contains("pid=1"), "{}", unshare.output());

    // The orphan ended after 0.5 s; nothing under pgward may stay a zombie.
    std::thread::sleep(Duration::from_secs(2));
    let zombies: Vec<_> = children_of(pgward_pid)
        .into_iter()
        .filter(|(_, state)| *state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies under pgward: {zombies:?}");

    // unshare does not forward signals: signal PID 1 of the namespace itself, as a container
    // runtime does.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pgward_pid), Signal::SIGTERM).unwrap();
    let exit = unshare.wait_exit(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "{}", unshare.output());
    assert_eq!(cluster.controldata_state(), "shut down");
    // The namespace is gone with its PID 1: no process of it survives.
    assert!(
        cluster.postmaster_pid().is_none()
            || !std::path::Path::new(&format!("/proc/{}", cluster.postmaster_pid().unwrap()))
                .exists()
    );
}
