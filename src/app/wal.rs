//! The daemon's WAL services: postgres's archive settings, and the archiver and fetcher,
//! opened in the background once the repository answers; with archiving, the heartbeat that
//! tells a successor whether this cluster still archives.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::site::Site;
use crate::tasks::Critical;
use crate::wal::archiver::{Archiver, ArchiverOptions};
use crate::wal::fetch::Fetcher;
use crate::wal::heartbeat;
use tokio::task::JoinHandle;

/// The archiver and fetcher of the daemon, once the repository could be opened.
pub(super) struct WalServices {
    /// `None` when archiving is off (`wal.archive: false`): pushes are then left to clients.
    pub(super) archiver: Option<Archiver>,
    pub(super) fetcher: Fetcher,
}

/// Where the daemon's WAL services appear once open.
pub(super) type WalSlot = Arc<OnceLock<WalServices>>;

/// Sets `archive_mode`, `archive_command` (this binary's `wal-push`, see
/// [`Site::archive_command`]) and `archive_timeout`.
pub(super) fn archive_parameters(
    site: &Site,
    parameters: &mut BTreeMap<String, String>,
) -> Result<()> {
    parameters.insert("archive_mode".into(), "on".into());
    parameters.insert(
        "archive_timeout".into(),
        format!("{}s", site.config().wal.archive_timeout.as_secs()),
    );
    if let Some(own) = parameters.get("archive_command") {
        // Config validation allowed it: it wraps pgward's own wal-push.
        tracing::info!("archive_command as configured: {own}");
        return Ok(());
    }
    parameters.insert("archive_command".into(), site.archive_command()?);
    Ok(())
}

/// Opens the repository in the background, retrying while storage is unreachable: postgres
/// must start even during a storage outage (its WAL waits in pg_wal; wal-push fails and
/// postgres retries until this succeeds). A critical task: it returns only once cancelled.
pub(super) async fn open_wal_services(
    site: Arc<Site>,
    slot: Arc<OnceLock<WalServices>>,
    cancel: CancellationToken,
    critical: Critical,
) {
    let mut delay = Duration::from_secs(1);
    let mut logged = false;
    loop {
        match open(&site, &cancel, &critical).await {
            Ok((services, heartbeat)) => {
                let _ = slot.set(services);
                cancel.cancelled().await;
                // Its last beat, marked stopped, once postgres has stopped archiving.
                if let Some(heartbeat) = heartbeat {
                    let _ = heartbeat.await;
                }
                return;
            }
            Err(e) => {
                if logged {
                    tracing::warn!(
                        "repository still unavailable, retrying in {}: {e:#}",
                        humantime::format_duration(delay)
                    );
                } else {
                    tracing::error!(
                        "failed to open the WAL repository (archiving waits, nothing is lost): {}",
                        crate::repo::with_hint(&e)
                    );
                    logged = true;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// The WAL services, and with archiving the heartbeat task (see [`heartbeat`]), which ends
/// after `cancel` with a last beat marked stopped.
async fn open(
    site: &Site,
    cancel: &CancellationToken,
    critical: &Critical,
) -> Result<(WalServices, Option<JoinHandle<()>>)> {
    if !site.config().wal.archive {
        // Only the fetcher: nothing is written to the repository, not even repo.json.
        let fetcher = site.cluster_fetcher(cancel.clone()).await?;
        let services = WalServices {
            archiver: None,
            fetcher,
        };
        return Ok((services, None));
    }
    let ctx = site.push_context().await?;
    let data_dir = site.data_dir();
    let fetcher = site.fetcher(&data_dir.join("pg_wal"), ctx.seg_size, cancel.clone())?;
    tracing::info!(repository = %ctx.repo.describe(), "WAL archiving to the repository");
    let wal = &site.config().wal;
    let options = ArchiverOptions {
        concurrency: wal.push_concurrency as usize,
        stage: wal.stage,
        owner: site.run_as()?.map(|u| (u.uid, u.gid)),
    };
    let marks = site.archived_marks()?;
    // Not critical: a failed beat is logged and tried again; archiving goes on.
    let heartbeat = tokio::spawn(heartbeat::beat(
        ctx.repo.clone(),
        ctx.system_identifier,
        data_dir.to_path_buf(),
        cancel.clone(),
    ));
    let archiver = Archiver::start(ctx, data_dir, options, &marks, cancel.clone(), critical);
    let services = WalServices {
        archiver: Some(archiver),
        fetcher,
    };
    Ok((services, Some(heartbeat)))
}
