//! `pgward restore [<id|latest>] [--data-dir D] [--target-*] [--target-action A] [--delta]
//! [--force] [--tablespace-map OID=DIR]`: a backup back into a data directory, with the
//! recovery settings for a point in time.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::backup::entries::SpilledManifest;
use crate::backup::manifest::ManifestOf;
use crate::backup::{catalog, lineage};
use crate::cli::RestoreArgs;
use crate::postgres::wal::Lsn;
use crate::restore::restore as restore_backup;
use crate::restore::target::{parse_target_time, RecoveryTarget, RecoveryTimeline, TargetAction};
use crate::site::Site;

/// Restores the backup asked for (for a time target with `latest`: the newest one that ended
/// before it), of the lineage of the config's cluster (see [`lineage`]), with recovery pinned
/// to that lineage's timeline; then says how to start.
pub async fn restore(site: &Site, request: &RestoreArgs) -> Result<i32> {
    let target = recovery_target(request)?;
    let action = request
        .target_action
        .as_deref()
        .map(TargetAction::parse)
        .transpose()?;
    if action.is_some() && target == RecoveryTarget::EndOfWal {
        bail!("--target-action needs a target (--target-time, --target-lsn, --target-xid, --target-name or --target-immediate)");
    }
    site.run_as()?;
    let repo = site.repo()?;
    let lineage = lineage::of_cluster(repo, site.data_dir()).await?;
    let manifest: SpilledManifest = match (&target, request.backup.as_str()) {
        // "The backup before the mistake": the newest one that ended before the target time.
        (RecoveryTarget::Time(time), "latest") => match parse_target_time(time) {
            Some(at) => catalog::newest_before(repo, at, &lineage).await?,
            None => {
                tracing::warn!(
                    "cannot read --target-time {time:?} here (postgres will); restoring the \
                     latest backup\nHINT: to restore the newest backup before that time, write \
                     it as 2026-11-30 03:55:00+00, or name the backup (`pgward list`)"
                );
                catalog::resolve_for(repo, "latest", &lineage).await?
            }
        },
        _ => catalog::resolve_for(repo, &request.backup, &lineage).await?,
    };
    if !lineage.holds(&manifest) {
        tracing::warn!(
            "backup {} (timeline {}) is not on the lineage of {}: recovery follows its own \
             timeline {}",
            manifest.id,
            manifest.timeline,
            lineage.describe(),
            manifest.timeline
        );
    }
    let data_dir = request
        .data_dir
        .clone()
        .unwrap_or_else(|| site.data_dir().to_path_buf());
    let tablespace_map = tablespace_map(&request.tablespace_map, &manifest)?;
    let data_dir = std::path::absolute(&data_dir)
        .with_context(|| format!("make {} absolute", data_dir.display()))?;
    let mut options = site.restore_options(data_dir, &manifest.id, target, action)?;
    options.tablespace_map = tablespace_map;
    options.force = request.force;
    options.delta = request.delta;
    options.recovery.timeline =
        RecoveryTimeline::pinned(lineage.target_timeline(&manifest), manifest.timeline);
    tracing::info!(backup = %manifest.id, data_dir = %options.data_dir.display(),
        timeline = lineage.target_timeline(&manifest).0, "restoring");
    restore_backup(repo, &manifest, &options, &CancellationToken::new()).await?;
    println!(
        "restored backup {} into {}; start postgres (pgward run) to recover from the archive",
        manifest.id,
        options.data_dir.display()
    );
    Ok(0)
}

/// `--tablespace-map OID=DIR` options: each oid must be a tablespace of the backup.
fn tablespace_map<F>(raw: &[String], manifest: &ManifestOf<F>) -> Result<HashMap<u32, PathBuf>> {
    raw.iter()
        .map(|m| {
            let (oid, dir) = m
                .split_once('=')
                .with_context(|| format!("--tablespace-map {m:?}: expected OID=DIR"))?;
            let oid: u32 = oid
                .trim()
                .parse()
                .with_context(|| format!("--tablespace-map {m:?}: {oid:?} is not an oid"))?;
            let dir = std::path::absolute(dir.trim())
                .with_context(|| format!("--tablespace-map {m:?}"))?;
            if !manifest.tablespaces.iter().any(|t| t.oid == oid) {
                bail!(
                    "--tablespace-map {m:?}: backup {} has no tablespace {oid}\nHINT: `pgward \
                     show {} --json` lists its tablespaces",
                    manifest.id,
                    manifest.id
                );
            }
            Ok((oid, dir))
        })
        .collect()
}

fn recovery_target(request: &RestoreArgs) -> Result<RecoveryTarget> {
    Ok(if let Some(time) = &request.target_time {
        RecoveryTarget::Time(time.clone())
    } else if let Some(lsn) = &request.target_lsn {
        RecoveryTarget::Lsn(
            lsn.parse::<Lsn>()
                .with_context(|| format!("--target-lsn {lsn:?}"))?,
        )
    } else if let Some(xid) = request.target_xid {
        RecoveryTarget::Xid(xid)
    } else if let Some(name) = &request.target_name {
        RecoveryTarget::Name(name.clone())
    } else if request.target_immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::EndOfWal
    })
}
