//! `pgward wal-push <path>` (archive_command) and `pgward wal-fetch <name> <dest>`
//! (restore_command), and `pgward switch-wal [--wait]`. The first two are thin clients of the daemon, which does the work with its persistent
//! storage client, parallel uploads and prefetch; alone (no daemon: bootstrap, manual use)
//! they do it themselves. The config is read only then (see [`SOCKET_ENV`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::backup::take::{connect, ARCHIVE_MODE_HINT};
use crate::config::LogFormat;
use crate::control::{client, Request, Response, SOCKET_ENV};
use crate::postgres::wal_switch::{archiver_last_failure, switch_wal};
use crate::site::Site;
use crate::wal;
use crate::wal::awaited::wait_archived;
use crate::wal::fetch::Fetched;
use crate::wal::pg_wal::{Scope, WalFile};
use crate::wal::push::Pushed;

/// How long a client waits for the daemon to archive or fetch one file: uploads retry inside,
/// and postgres itself waits on archive_command without limit.
const WAL_PATIENCE: Duration = Duration::from_secs(600);

/// Exit code of `wal-fetch` for a file that is not in the archive: postgres reads it as the
/// end of the archived WAL.
pub const FETCH_NOT_FOUND: i32 = 1;
/// Exit code of `wal-fetch` for a real error. Above 125, so postgres aborts recovery (it treats
/// such codes like a crash of the command) instead of taking the error for the end of the
/// archive and ending recovery early at the wrong point.
pub const FETCH_FAILED: i32 = 255;

/// `pgward wal-push <path>`.
pub fn push(config_path: Option<PathBuf>, path: &Path) -> ExitCode {
    crate::logging::init(client_log_format(), "info");
    let mut site = LazySite::new(config_path);
    super::with_runtime(false, async move {
        push_file(&mut site, path).await.or_else(|e| {
            tracing::error!(
                "failed to archive {}: {}",
                path.display(),
                crate::repo::with_hint(&e)
            );
            Ok(1)
        })
    })
}

/// `pgward wal-fetch <name> <dest>`: 0 fetched, [`FETCH_NOT_FOUND`], [`FETCH_FAILED`].
pub fn fetch(config_path: Option<PathBuf>, name: &str, dest: &Path) -> ExitCode {
    crate::logging::init(client_log_format(), "info");
    let mut site = LazySite::new(config_path);
    super::with_runtime(false, async move {
        Ok(match fetch_file(&mut site, name, dest).await {
            Ok(Fetched::Found) => 0,
            Ok(Fetched::NotFound) => FETCH_NOT_FOUND,
            Err(e) => {
                tracing::error!("failed to fetch {name}: {}", crate::repo::with_hint(&e));
                FETCH_FAILED
            }
        })
    })
}

/// Exit 0 only once the file is stored and verified.
async fn push_file(site: &mut LazySite, path: &Path) -> Result<i32> {
    let path = wal::push::absolute(path)?;
    let request = Request::WalPush { path: path.clone() };
    match ask_daemon(site, &request).await? {
        Some(Response::WalPushed { .. }) => return Ok(0),
        Some(Response::Error { message }) => bail!("{message}"),
        Some(other) => return Err(other.unexpected()),
        None => {}
    }
    // No daemon (manual use), or one that leaves archiving to its clients: do it here.
    let ctx = site.get()?.push_context().await?;
    let file = WalFile::open(&path).map_err(|refused| anyhow::anyhow!("{refused}"))?;
    let outcome = ctx.push(&file, &CancellationToken::new()).await?;
    if outcome == Pushed::AlreadyArchived {
        tracing::info!(file = %path.display(), "already archived with identical content");
    }
    Ok(0)
}

/// The common case of `wal-push`, the daemon archiving: no async runtime and no config. Run
/// once per segment by postgres, often while the machine is busiest, so every millisecond of
/// process start counts. `None` when the answer is anything but success; the full path then
/// asks again (an idempotent request) and reports what went wrong.
///
/// The daemon may have archived the file already and left a mark (see `wal::archived_marks`):
/// taking it is the whole call. Only a `wal-push` started by the daemon's postgres (the
/// daemon's socket and marks directory are in its environment) trusts marks: one run by hand
/// may mean another repository.
pub fn push_quick(path: &Path) -> Option<()> {
    let socket = PathBuf::from(std::env::var_os(SOCKET_ENV)?);
    if let Some(marks) = std::env::var_os(wal::archived_marks::MARKS_ENV) {
        if wal::archived_marks::take_mark(Path::new(&marks), path) {
            return Some(());
        }
    }
    let path = wal::push::absolute(path).ok()?;
    let request = Request::WalPush { path };
    match client::exchange_blocking(&socket, &request, WAL_PATIENCE) {
        Ok(Some(Response::WalPushed { .. })) => Some(()),
        _ => None,
    }
}

async fn fetch_file(site: &mut LazySite, name: &str, dest: &Path) -> Result<Fetched> {
    let dest = wal::push::absolute(dest)?;
    let request = Request::WalFetch {
        name: name.to_owned(),
        dest: dest.clone(),
    };
    match ask_daemon(site, &request).await? {
        Some(Response::WalFetched { found: true }) => return Ok(Fetched::Found),
        Some(Response::WalFetched { found: false }) => return Ok(Fetched::NotFound),
        Some(Response::Error { message }) => bail!("{message}"),
        Some(other) => return Err(other.unexpected()),
        None => {}
    }
    let fetcher = site
        .get()?
        .cluster_fetcher(CancellationToken::new())
        .await?;
    // This process writes with its own rights: wherever it was asked to.
    let dest = fetcher
        .destination(&dest, Scope::Anywhere)
        .map_err(|refused| anyhow::anyhow!("{refused}"))?;
    let fetched = fetcher.fetch(name, &dest).await?;
    // Alone, this process is the only one that can fill the spool for the next requests.
    fetcher.settle().await;
    Ok(fetched)
}

/// The log format `pgward run` passes to the postgres it starts, so its archive and restore
/// commands log like the daemon.
fn client_log_format() -> LogFormat {
    match std::env::var(crate::logging::FORMAT_ENV).as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// The site, its config read only if a request needs it.
struct LazySite {
    path: Option<PathBuf>,
    loaded: Option<Site>,
}

impl LazySite {
    fn new(path: Option<PathBuf>) -> LazySite {
        LazySite { path, loaded: None }
    }

    fn get(&mut self) -> Result<&Site> {
        if self.loaded.is_none() {
            let config =
                crate::config::load(self.path.as_deref(), &|name| std::env::var(name).ok())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            self.loaded = Some(Site::new(config));
        }
        Ok(self.loaded.as_ref().expect("loaded just above"))
    }
}

/// Sends `request` to the daemon. `None` when no daemon listens, or when it leaves such work
/// to its clients.
async fn ask_daemon(site: &mut LazySite, request: &Request) -> Result<Option<Response>> {
    let socket = match std::env::var_os(SOCKET_ENV) {
        Some(socket) => PathBuf::from(socket),
        None => site.get()?.config().control.socket.clone(),
    };
    let Some(stream) = client::connect_if_running(&socket).await? else {
        return Ok(None);
    };
    match client::exchange(stream, request, WAL_PATIENCE).await? {
        Response::NotServed => Ok(None),
        answer => Ok(Some(answer)),
    }
}

/// `pgward switch-wal [--wait]`: closes the server's current WAL segment; with `wait`, exits
/// 0 only once that segment is in the repository (at most `backup.wal_wait`), 1 when it is
/// not by then.
pub async fn switch(site: &Site, wait: bool) -> Result<i32> {
    let client = connect(&site.target()).await?;
    let segment = switch_wal(&client).await?;
    println!("WAL segment {segment} is complete");
    if !wait {
        return Ok(0);
    }
    let repo = site.repo()?;
    let patience = site.config().backup.wal_wait;
    let missing = wait_archived(repo, &[segment], patience, &CancellationToken::new())
        .await
        .with_context(|| format!("wait for {segment} to be archived"))?;
    if missing.is_empty() {
        println!("{segment} is archived in {}", repo.describe());
        return Ok(0);
    }
    let archive_mode: String = client
        .query_one("SELECT current_setting('archive_mode')", &[])
        .await
        .map(|row| row.get(0))
        .unwrap_or_default();
    let hint = match archive_mode.as_str() {
        "off" => ARCHIVE_MODE_HINT.to_owned(),
        _ => "HINT: `pgward status` shows the archiver's backlog and last error; raise \
              backup.wal_wait if archiving is only slow"
            .to_owned(),
    };
    eprintln!(
        "error: WAL segment {segment} did not reach {} within {} (archive_mode {archive_mode}, \
         the archiver's last failure: {})\n{hint}",
        repo.describe(),
        humantime::format_duration(patience),
        archiver_last_failure(&client).await,
    );
    Ok(1)
}
