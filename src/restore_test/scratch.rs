//! The scratch directory of one restore test: made beside (never inside) the data directory,
//! given to the server's user, torn down at the end (or killed and removed when the test's
//! future is dropped); and the control socket in it that answers the throwaway server's
//! `wal-fetch`, and nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use super::server::Throwaway;
use crate::config::StopConfig;
use crate::control::server::{Answer, Caller, ControlServer, Handler};
use crate::control::{Request, Response};
use crate::process::{self, RunAs};
use crate::wal::fetch::{Fetched, Fetcher};
use crate::wal::pg_wal::Scope;

/// The scratch directory of one run and what runs in it; torn down at the end, or killed and
/// removed on drop.
pub(super) struct Scratch {
    pub(super) dir: PathBuf,
    /// The directory holding `dir` was made by this run: removed too when left empty.
    made_root: Option<PathBuf>,
    /// Stops the WAL control socket and the fetcher's downloads.
    pub(super) stop_serving: CancellationToken,
    serving: Option<(tokio::task::JoinHandle<()>, Fetcher)>,
    pub(super) server: Option<Throwaway>,
    torn_down: bool,
}

impl Scratch {
    /// A new directory in `root` (created if missing), given to `owner`. Its unix sockets
    /// must fit in `sun_path`.
    pub(super) fn make(
        root: &Path,
        backup_id: &str,
        owner: Option<&RunAs>,
        port: u16,
    ) -> Result<Scratch> {
        let made_root = if root.exists() {
            None
        } else {
            std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
            Some(root.to_path_buf())
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("{backup_id}-"))
            .tempdir_in(root)
            .with_context(|| format!("create a directory in {}", root.display()))?
            .keep();
        let scratch = Scratch {
            dir,
            made_root,
            stop_serving: CancellationToken::new(),
            serving: None,
            server: None,
            torn_down: false,
        };
        if let Some(owner) = owner {
            owner.chown(&scratch.dir)?;
        }
        // sun_path holds 108 bytes with the terminating NUL.
        let longest = scratch.dir.join(format!(".s.PGSQL.{port}.lock"));
        if longest.as_os_str().len() > 107 {
            bail!(
                "{} is too long a path for a unix socket\nHINT: set scratch_dir (--scratch-dir) \
                 to a shorter path",
                longest.display()
            );
        }
        Ok(scratch)
    }

    /// The control socket the server's `restore_command` asks.
    pub(super) fn socket(&self) -> PathBuf {
        self.dir.join("pgward.sock")
    }

    /// Serves `wal-fetch` for the throwaway server from `fetcher`.
    pub(super) async fn serve_wal(
        &mut self,
        fetcher: Fetcher,
        owner: Option<&RunAs>,
    ) -> Result<()> {
        let server = ControlServer::bind(&self.socket(), owner).await?;
        let handler = Arc::new(WalOnly {
            fetcher: fetcher.clone(),
        });
        let task = tokio::spawn(server.serve(handler, self.stop_serving.clone()));
        self.serving = Some((task, fetcher));
        Ok(())
    }

    /// Stops the server (fast shutdown, then SIGKILL), the WAL service, and removes the
    /// directory.
    pub(super) async fn tear_down(mut self, stop: &StopConfig) -> Result<()> {
        self.torn_down = true;
        if let Some(server) = &mut self.server {
            server.stop(stop.timeout, stop.kill_timeout).await;
        }
        self.stop_serving.cancel();
        if let Some((task, fetcher)) = self.serving.take() {
            let _ = task.await;
            // Downloads in flight write into the directory about to be removed.
            fetcher.settle().await;
        }
        let dir = self.dir.clone();
        let root = self.made_root.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
            if let Some(root) = root {
                // Another run may be using it: then it stays.
                let _ = std::fs::remove_dir(root);
            }
            anyhow::Ok(())
        })
        .await
        .context("join the clean-up")?
    }
}

impl Drop for Scratch {
    /// The test's future was dropped mid-way: kill the server's process group and remove
    /// the directory, as well as can be done without waiting (blocking briefly on the way:
    /// this is not the path of a test that ran to its end).
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        self.stop_serving.cancel();
        if let Some(server) = &self.server {
            if server.exited.is_none() {
                process::signal_group(server.pid, Signal::SIGKILL);
            }
        }
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => return,
            }
        }
        tracing::warn!(
            "could not remove the restore test's scratch directory {}\nHINT: remove it by hand",
            self.dir.display()
        );
    }
}

/// Serves `wal-fetch` and nothing else: the throwaway server must never archive. Whoever
/// asks, the file goes directly into the scratch cluster's `pg_wal` (the fetcher's), as for
/// the server's user on the daemon's socket (see `wal::pg_wal`).
struct WalOnly {
    fetcher: Fetcher,
}

impl Handler for WalOnly {
    fn handle(&self, caller: Caller, request: Request) -> Answer<'_> {
        Box::pin(async move {
            match request {
                Request::WalFetch { name, dest } => {
                    match self.fetcher.destination(&dest, Scope::PgWal) {
                        Ok(dest) => match self.fetcher.fetch(&name, &dest).await {
                            Ok(fetched) => Response::WalFetched {
                                found: fetched == Fetched::Found,
                            },
                            Err(e) => Response::Error {
                                message: format!("{e:#}"),
                            },
                        },
                        Err(refused) => caller.refuse("wal_fetch", &refused.0),
                    }
                }
                Request::WalPush { .. } => {
                    caller.refuse("wal_push", "a restore test's server never archives")
                }
                _ => Response::Error {
                    message: "this is a restore test's socket, not the daemon's".into(),
                },
            }
        })
    }
}
