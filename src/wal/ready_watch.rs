//! Noticing at once when postgres marks a WAL file ready to archive.
//!
//! Postgres creates `archive_status/<file>.ready` and then starts `archive_command`; when the
//! daemon learns of the file from an inotify event instead of its next scan, it is already
//! working on the file while the `wal-push` client starts, and often done before it asks.
//! The periodic scan stays as the fallback (inotify can be unavailable or overflow).

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio_util::sync::CancellationToken;

/// How often the watching thread looks at `cancel` while no event comes.
const CANCEL_CHECK_MS: u16 = 250;

/// Calls `on_ready` from a thread of its own whenever `.ready` files appear in `status_dir`,
/// with the names of the WAL files (an empty list when the kernel dropped events: scan), until
/// `cancel` fires. `on_ready` may block; events wait meanwhile.
pub fn watch_ready(
    status_dir: &Path,
    on_ready: impl Fn(Vec<String>) + Send + 'static,
    cancel: CancellationToken,
) -> Result<()> {
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify_init")?;
    inotify
        .add_watch(
            status_dir,
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
        )
        .with_context(|| format!("watch {}", status_dir.display()))?;
    std::thread::Builder::new()
        .name("pgward-wal-ready".into())
        .spawn(move || {
            while !cancel.is_cancelled() {
                let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(CANCEL_CHECK_MS)) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::debug!("watching archive_status stopped: {e}");
                        return;
                    }
                }
                let events = match inotify.read_events() {
                    Ok(events) => events,
                    Err(nix::errno::Errno::EAGAIN) => continue,
                    Err(e) => {
                        tracing::debug!("watching archive_status stopped: {e}");
                        return;
                    }
                };
                // An overflow event carries no name: report it as "look for yourself".
                let overflow = events.iter().any(|e| e.name.is_none());
                let names: Vec<String> = events
                    .iter()
                    .filter_map(|e| e.name.as_ref()?.to_str()?.strip_suffix(".ready"))
                    .map(str::to_owned)
                    .collect();
                if overflow {
                    on_ready(Vec::new());
                } else if !names.is_empty() {
                    on_ready(names);
                }
            }
        })
        .context("start the archive_status watcher")?;
    Ok(())
}
