//! PID-1 duties that must not depend on the async runtime: the signal thread, the one reaper
//! that owns `waitpid(-1)`, the child-subreaper flag, and the memory a long-lived process
//! gives back (`memory`).
//!
//! Knows nothing of postgres or services: it hands out exit statuses to whoever registered a
//! pid and forwards every other signal to a channel.

pub mod memory;
pub mod reaper;
pub mod signals;

pub use reaper::{ExitInfo, Reaper};
pub use signals::{start_signal_thread, ForwardedSignal};

/// Makes this process the reaper of orphaned descendants when it is not PID 1 (PID 1 is
/// already). Without it, grandchildren that lose their parent would be reparented past us and
/// we could neither reap nor account for them. See prctl(2) PR_SET_CHILD_SUBREAPER.
pub fn become_subreaper() -> nix::Result<()> {
    if std::process::id() == 1 {
        return Ok(());
    }
    nix::sys::prctl::set_child_subreaper(true)
}
