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

/// Calls `on_ready` from a thread of its own whenever a `.ready` file appears in
/// `status_dir`, until `cancel` fires.
pub fn watch_ready(
    status_dir: &Path,
    on_ready: impl Fn() + Send + 'static,
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
                // Overflow and other events carry no name; a wake-up costs one scan.
                let ready = match inotify.read_events() {
                    Ok(events) => events.iter().any(|e| {
                        e.name
                            .as_ref()
                            .and_then(|n| n.to_str())
                            .is_none_or(|n| n.ends_with(".ready"))
                    }),
                    Err(nix::errno::Errno::EAGAIN) => false,
                    Err(e) => {
                        tracing::debug!("watching archive_status stopped: {e}");
                        return;
                    }
                };
                if ready {
                    on_ready();
                }
            }
        })
        .context("start the archive_status watcher")?;
    Ok(())
}
