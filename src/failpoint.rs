//! Named points where a test stops or kills pgward, to produce the interruptions that matter
//! (a backup killed before its manifest, a restore killed mid-delete). Compiled in only with the
//! `failpoints` feature, which `make test` builds the binary with; a release build has none.
//!
//! A test arms points through the `FAILPOINTS` environment variable of the `fail` crate:
//! `FAILPOINTS="backup-before-manifest=return(kill);restore-after-marker=return(stop)"`.
//! Besides the crate's own actions (`sleep(ms)`, `panic`, `pause`, ...), `return(ACTION)` takes:
//! - `kill`: the process dies as with `kill -9` at that point (no cleanup, no flush);
//! - `stop`: the process stops itself (SIGSTOP), for the test to look, then kill or continue it;
//! - `error`: the point fails, as an I/O error would (the caller's error path runs).
//!
//! Every armed point that is reached says so in the log first
//! (`failpoint reached failpoint=NAME`), which is what the tests wait for.

/// Marks a named point. Without the `failpoints` feature it expands to nothing; with it,
/// an armed `return(error)` returns `Err` from the enclosing function, whose error type must
/// come from `anyhow::Error`.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if $crate::failpoint::reached($name) {
                return Err(anyhow::anyhow!("failpoint {} armed to fail", $name).into());
            }
        }
    };
}

/// Runs the action armed at `name`, if any; true when the point is to fail.
#[cfg(feature = "failpoints")]
pub fn reached(name: &str) -> bool {
    if !armed(name) {
        return false;
    }
    tracing::warn!(failpoint = name, "failpoint reached");
    fail::eval(name, |action| match action.as_deref() {
        Some("kill") => kill_self(),
        Some("stop") => {
            // SIGSTOP cannot be caught: the process stays here until SIGCONT or SIGKILL.
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
            false
        }
        Some("error") => true,
        other => panic!("failpoint {name}: unknown action return({other:?})"),
    })
    .unwrap_or(false)
}

/// Whether `FAILPOINTS` names `name`: only armed points log, and `fail` is set up once.
#[cfg(feature = "failpoints")]
fn armed(name: &str) -> bool {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("FAILPOINTS").unwrap_or_default();
        if spec.is_empty() {
            return Vec::new();
        }
        // The scenario stays configured for the life of the process.
        std::mem::forget(fail::FailScenario::setup());
        spec.split(';')
            .filter_map(|point| {
                point
                    .split_once('=')
                    .map(|(name, _)| name.trim().to_owned())
            })
            .collect()
    });
    armed.iter().any(|armed| armed == name)
}

/// Dies as `kill -9` would. PID 1 of a PID namespace ignores even its own SIGKILL, so the
/// fallback is `_exit`, which skips every destructor and buffer flush just the same.
#[cfg(feature = "failpoints")]
fn kill_self() -> bool {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // SAFETY: _exit ends the process at once; nothing after it runs.
    unsafe { libc::_exit(137) }
}
