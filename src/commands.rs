//! Client commands that talk to the running daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::{client, Request, Response};
use crate::postgres::control_file::ControlFile;
use crate::postgres::server::data_dir_major;
use crate::process::RunAs;
use crate::repo::{Repo, RetryPolicy};
use crate::wal;
use crate::wal::fetch::{Fetched, Fetcher};
use crate::wal::push::{PushContext, Pushed};

/// How long `pgward health` waits for the daemon's answer: below a HEALTHCHECK's or a probe's
/// usual timeout (5 s), so the failure it reports is its own, with the reason.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(4);

/// `pgward health [--ready]`: GET `/healthz` or `/readyz` of the local daemon, as a liveness
/// or readiness probe does; prints the answer, exit 0 on 200 and 1 on anything else.
pub async fn health(config: &Config, ready: bool) -> Result<i32> {
    let metrics = &config.metrics;
    if !metrics.enabled {
        bail!("metrics.enabled is false: the daemon serves no /healthz or /readyz\nHINT: enable metrics, or probe postgres with pg_isready");
    }
    let url = health_url(metrics, ready);
    let mut builder = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if metrics.tls.is_some() {
        // The daemon's own endpoint on loopback: its certificate names the host clients use,
        // not 127.0.0.1, and the probe asks nothing secret of it.
        builder = builder.danger_accept_invalid_certs(true);
    }
    let client = builder.build().context("build an HTTP client")?;
    let mut request = client.get(&url);
    if let (Some(user), Some(password)) = (&metrics.username, &metrics.password) {
        request = request.basic_auth(user, Some(password.expose()));
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            println!("{url}: no answer: {e}");
            return Ok(1);
        }
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{url}: {} {}", status.as_u16(), body.trim());
    Ok(if status == reqwest::StatusCode::OK {
        0
    } else {
        1
    })
}

/// The URL of `/healthz` or `/readyz` on `metrics.listen`, with an unspecified address
/// (`0.0.0.0`, `::`) asked on loopback.
fn health_url(metrics: &crate::config::MetricsConfig, ready: bool) -> String {
    let mut addr = metrics.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if metrics.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let path = if ready { "readyz" } else { "healthz" };
    format!("{scheme}://{addr}/{path}")
}

/// `pgward status [--json]`: exit 0 when the daemon answered.
pub async fn status(config: &Config, json: bool) -> Result<i32> {
    let status = match client::call(&config.control.socket, &Request::Status).await? {
        Response::Status(status) => status,
        Response::Error { message } => bail!("the daemon refused: {message}"),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    println!(
        "pgward {} (pid {}), up {}, {}",
        status.version,
        status.pgward_pid,
        format_secs(status.uptime_seconds),
        status.phase
    );
    println!(
        "{:<16} {:<10} {:>8} {:>9} {:>10}  LAST EXIT",
        "SERVICE", "STATE", "PID", "RESTARTS", "UPTIME"
    );
    for s in &status.services {
        println!(
            "{:<16} {:<10} {:>8} {:>9} {:>10}  {}",
            s.name,
            s.state,
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.restarts,
            s.uptime_seconds.map_or("-".into(), format_secs),
            s.last_exit.as_deref().unwrap_or("-"),
        );
    }
    if !status.jobs.is_empty() {
        print!("{}", crate::jobs_commands::table(&status.jobs));
    }
    if let Some(r) = &status.recovery {
        println!(
            "recovery: {} at {}; {}",
            if r.paused { "PAUSED" } else { "in progress" },
            r.replay_lsn.as_deref().unwrap_or("-"),
            r.hint
        );
    }
    if let Some(a) = &status.archiver {
        println!(
            "archiver: {} archived ({} answered ahead), {} already archived, {} failed; backlog {} (oldest {}), {} in flight; last {}{}",
            a.archived_total,
            a.answered_ahead_total,
            a.already_archived_total,
            a.failed_total,
            a.backlog,
            a.oldest_ready_age_seconds.map_or("-".into(), format_secs),
            a.in_flight,
            a.last_archived.as_deref().unwrap_or("-"),
            a.last_error.as_deref().map(|e| format!("; failing: {e}")).unwrap_or_default(),
        );
    }
    Ok(0)
}

fn format_secs(secs: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
}

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

/// `pgward wal-push <path>` (archive_command): exit 0 only once the file is stored and verified.
pub async fn wal_push(config: &mut LazyConfig, path: &Path) -> Result<i32> {
    let path = wal::push::absolute(path)?;
    let request = Request::WalPush { path: path.clone() };
    match ask_daemon(config, &request).await? {
        Some(Response::WalPushed { .. }) => return Ok(0),
        Some(Response::Error { message }) => bail!("{message}"),
        Some(other) => bail!("unexpected answer from the daemon: {other:?}"),
        None => {}
    }
    // No daemon (manual use), or one that leaves archiving to its clients: do it here.
    let config = config.get()?;
    let cancel = CancellationToken::new();
    let ctx = push_context(config, None).await?;
    let outcome = ctx.push(&path, &cancel).await?;
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
/// daemon's socket is in its environment) trusts marks: one run by hand may mean another
/// repository.
pub fn wal_push_quick(path: &Path) -> Option<()> {
    let socket = PathBuf::from(std::env::var_os(SOCKET_ENV)?);
    if wal::archived_marks::take_mark(path) {
        return Some(());
    }
    let path = wal::push::absolute(path).ok()?;
    let request = Request::WalPush { path };
    match client::exchange_blocking(&socket, &request, WAL_PATIENCE) {
        Ok(Some(Response::WalPushed { .. })) => Some(()),
        _ => None,
    }
}

/// `pgward wal-fetch <name> <dest>` (restore_command): 0 fetched, [`FETCH_NOT_FOUND`],
/// [`FETCH_FAILED`].
pub async fn wal_fetch(config: &mut LazyConfig, name: &str, dest: &Path) -> i32 {
    match wal_fetch_inner(config, name, dest).await {
        Ok(Fetched::Found) => 0,
        Ok(Fetched::NotFound) => FETCH_NOT_FOUND,
        Err(e) => {
            tracing::error!("failed to fetch {name}: {e:#}");
            FETCH_FAILED
        }
    }
}

async fn wal_fetch_inner(config: &mut LazyConfig, name: &str, dest: &Path) -> Result<Fetched> {
    let dest = wal::push::absolute(dest)?;
    let request = Request::WalFetch {
        name: name.to_owned(),
        dest: dest.clone(),
    };
    match ask_daemon(config, &request).await? {
        Some(Response::WalFetched { found: true }) => return Ok(Fetched::Found),
        Some(Response::WalFetched { found: false }) => return Ok(Fetched::NotFound),
        Some(Response::Error { message }) => bail!("{message}"),
        Some(other) => bail!("unexpected answer from the daemon: {other:?}"),
        None => {}
    }
    let config = config.get()?;
    let cancel = CancellationToken::new();
    let fetcher = fetcher(config, cancel).await?;
    let fetched = fetcher.fetch(name, &dest).await?;
    // Alone, this process is the only one that can fill the spool for the next requests.
    fetcher.settle().await;
    Ok(fetched)
}

/// Where the daemon listens, as `pgward run` tells the postgres it starts (and so its
/// archive_command and restore_command). With it, a client reaches the daemon without reading
/// the config file, which may hold secrets the server's user cannot read.
pub const SOCKET_ENV: &str = "PGWARD_CONTROL_SOCKET";

/// The config, read only if a command needs it.
pub struct LazyConfig {
    path: Option<PathBuf>,
    loaded: Option<Config>,
}

impl LazyConfig {
    pub fn new(path: Option<PathBuf>) -> LazyConfig {
        LazyConfig { path, loaded: None }
    }

    pub fn get(&mut self) -> Result<&Config> {
        if self.loaded.is_none() {
            let config =
                crate::config::load(self.path.as_deref(), &|name| std::env::var(name).ok())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            self.loaded = Some(config);
        }
        Ok(self.loaded.as_ref().expect("loaded just above"))
    }
}

/// Sends `request` to the daemon. `None` when no daemon listens, or when it leaves such work
/// to its clients.
async fn ask_daemon(config: &mut LazyConfig, request: &Request) -> Result<Option<Response>> {
    let socket = match std::env::var_os(SOCKET_ENV) {
        Some(socket) => PathBuf::from(socket),
        None => config.get()?.control.socket.clone(),
    };
    let Some(stream) = client::connect_if_running(&socket).await? else {
        return Ok(None);
    };
    match client::exchange(stream, request, WAL_PATIENCE).await? {
        Response::NotServed => Ok(None),
        answer => Ok(Some(answer)),
    }
}

/// The repository and identity for archiving this config's cluster.
/// `owner`: the server's OS user when the daemon runs as root, so a `file://` repository stays
/// writable for a `wal-push` that runs alone as that user.
pub async fn push_context(config: &Config, owner: Option<&RunAs>) -> Result<PushContext> {
    let repo = Repo::open(&config.storage)
        .with_context(|| format!("open repository {}", config.storage.url))?
        .with_local_owner(owner.map(|u| (u.uid, u.gid)));
    let pg_major = data_dir_major(&config.postgres.data_dir)?;
    PushContext::open(
        repo,
        RetryPolicy::from_config(&config.storage.retry),
        &config.postgres.data_dir,
        pg_major,
    )
    .await
}

/// A fetcher for this config's cluster.
pub async fn fetcher(config: &Config, cancel: CancellationToken) -> Result<Fetcher> {
    let repo = Repo::open(&config.storage)
        .with_context(|| format!("open repository {}", config.storage.url))?;
    let data_dir = config.postgres.data_dir.clone();
    let control = tokio::task::spawn_blocking(move || ControlFile::read(&data_dir))
        .await
        .context("join pg_control reader")??;
    Ok(Fetcher::new(
        repo,
        RetryPolicy::from_config(&config.storage.retry),
        &config.postgres.data_dir.join("pg_wal"),
        control.xlog_seg_size,
        config.wal.prefetch as usize,
        // The standalone client runs as the server's user already.
        None,
        cancel,
    ))
}
