//! The one reaper: every exit status in this process is collected here.
//!
//! Because `waitpid(-1)` takes the status of any child, nobody else may wait on children
//! (no `std::process::Child::wait`, no `tokio::process`). Spawners register their pid and get a
//! receiver for its [`ExitInfo`]; statuses of unregistered pids (orphans reparented to us) are
//! logged and dropped, as tini does.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitInfo {
    pub fn success(self) -> bool {
        self == ExitInfo::Code(0)
    }

    /// The exit code a shell (and tini) would report: the code, or 128 + signal.
    pub fn as_exit_code(self) -> i32 {
        match self {
            ExitInfo::Code(c) => c,
            ExitInfo::Signal(s) => 128 + s,
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitInfo::Code(c) => write!(f, "exit code {c}"),
            ExitInfo::Signal(s) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// Registry of pids we wait for; see the module doc.
pub struct Reaper {
    waiting: Mutex<HashMap<i32, oneshot::Sender<ExitInfo>>>,
}

impl Reaper {
    /// The process-wide reaper.
    pub fn global() -> &'static Reaper {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        REAPER.get_or_init(|| Reaper {
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// Spawns `command` and registers its pid in one step. The registry lock is held across the
    /// fork so the reaper cannot collect the child's status before we know it is ours.
    pub fn spawn(&self, command: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitInfo>)> {
        let mut waiting = self.lock();
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Collects every exited child without blocking, until none is left, and delivers each
    /// status to its owner. Returns how many were reaped.
    pub fn reap_all(&self) -> usize {
        let mut reaped = 0;
        loop {
            let mut waiting = self.lock();
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
                Ok(status) => status,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid failed: {e}");
                    return reaped;
                }
            };
            let Some((pid, info)) = exit_info(status) else {
                continue;
            };
            reaped += 1;
            match waiting.remove(&pid.as_raw()) {
                // The owner may have gone away (e.g. a cancelled bootstrap); nothing to tell.
                Some(tx) => drop(tx.send(info)),
                None => tracing::debug!(pid = pid.as_raw(), "reaped orphan ({info})"),
            }
        }
    }

    /// Collects the statuses of registered children only, for unit tests: the test binary is
    /// not PID 1 and runs other tests that wait for their own `std::process` children, whose
    /// statuses a `waitpid(-1)` would steal. Production uses [`reap_all`](Self::reap_all).
    #[cfg(test)]
    pub(crate) fn reap_registered(&self) -> usize {
        let mut waiting = self.lock();
        let pids: Vec<i32> = waiting.keys().copied().collect();
        let mut reaped = 0;
        for pid in pids {
            if let Ok(Some((_, info))) =
                waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).map(exit_info)
            {
                reaped += 1;
                if let Some(tx) = waiting.remove(&pid) {
                    // The owner may have gone away; nothing to tell.
                    let _ = tx.send(info);
                }
            }
        }
        reaped
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitInfo>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pid and [`ExitInfo`] of a status that means the process is gone; `None` for a stop,
/// a continue or "still alive".
fn exit_info(status: WaitStatus) -> Option<(Pid, ExitInfo)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, ExitInfo::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, ExitInfo::Signal(sig as i32))),
        _ => None,
    }
}

/// Starts, once per test binary, a thread that delivers the statuses of children spawned
/// through [`Reaper::global`] (polling every few milliseconds, see
/// [`Reaper::reap_registered`]). Tests that run real processes through `process` call it
/// first; the signal thread is not used because it would also take the harness's SIGINT.
#[cfg(test)]
pub(crate) fn start_test_reaper() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::Builder::new()
            .name("test-reaper".into())
            .spawn(|| loop {
                Reaper::global().reap_registered();
                std::thread::sleep(std::time::Duration::from_millis(5));
            })
            .expect("start the test reaper thread");
    });
}
