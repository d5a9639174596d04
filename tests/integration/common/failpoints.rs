//! Arming pgward's named failpoints (`src/failpoint.rs`) in a command the test runs, and
//! waiting for one to be reached.

use std::path::Path;
use std::process::{Command, Output};

use super::pgward_bin;

/// The environment that arms `spec` (`name=return(kill);other=return(stop)`) in a pgward.
/// Fails the test at once when the binary has no failpoints, rather than letting it pass
/// without the interruption it is about.
pub fn failpoints(spec: &str) -> (&'static str, String) {
    // A branch, not a constant assertion: a build without the feature fails here, at run
    // time, naming the test (a `const` assertion would stop the whole test binary building).
    if !cfg!(feature = "failpoints") {
        panic!(
            "this test arms failpoints: run it with `--features failpoints` (as `make test` does)"
        );
    }
    ("FAILPOINTS", spec.to_owned())
}

/// `pgward --config <config> <args>` with `spec` armed, run to its end (or its death).
pub fn pgward_armed(config: &Path, spec: &str, args: &[&str]) -> Output {
    let (name, value) = failpoints(spec);
    Command::new(pgward_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env(name, value)
        .output()
        .expect("run pgward")
}

/// Whether pgward's output says it reached failpoint `name`.
pub fn reached(output: &str, name: &str) -> bool {
    output
        .lines()
        .any(|l| l.contains("failpoint reached") && l.contains(name))
}

/// Asserts that `out` is a pgward killed at failpoint `name` (SIGKILL, or `_exit(137)` as
/// PID 1).
pub fn assert_killed_at(out: &Output, name: &str) {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        reached(&stderr, name),
        "pgward never reached failpoint {name}:\n{stderr}"
    );
    assert!(
        out.status.signal() == Some(9) || out.status.code() == Some(137),
        "pgward was to die at failpoint {name}, but ended with {:?}:\n{stderr}",
        out.status
    );
}
