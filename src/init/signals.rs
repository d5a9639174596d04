//! The signal thread: a dedicated OS thread (signal-hook) that reaps on SIGCHLD and forwards
//! the signals the application acts on to the async side.

use std::io;
use std::thread;

use signal_hook::consts::signal::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

use super::Reaper;

/// A signal the application reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedSignal {
    /// SIGTERM, SIGINT or SIGQUIT: stop (a second one escalates).
    Terminate(i32),
    /// SIGHUP: reload postgres's configuration.
    Reload,
}

/// Installs the handlers and starts the thread. Must run before the first child is spawned so
/// no SIGCHLD is missed (a missed one would only delay reaping until the next).
pub fn start_signal_thread() -> io::Result<mpsc::UnboundedReceiver<ForwardedSignal>> {
    let mut signals = Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP])?;
    let (tx, rx) = mpsc::unbounded_channel();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let reaper = Reaper::global();
            // Children may have exited before the handler was installed.
            reaper.reap_all();
            for signal in signals.forever() {
                let forwarded = match signal {
                    SIGCHLD => {
                        reaper.reap_all();
                        continue;
                    }
                    SIGHUP => ForwardedSignal::Reload,
                    other => ForwardedSignal::Terminate(other),
                };
                // The receiver is gone only while the process is exiting.
                let _ = tx.send(forwarded);
            }
        })?;
    Ok(rx)
}
