//! `pgward backup`, `pgward list`, `pgward show`, `pgward expire` and `pgward restore`: config
//! in, the work done in this process, a report out.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::backup::catalog;
use crate::backup::expire;
use crate::backup::manifest::Manifest;
use crate::backup::progress::human_bytes;
use crate::backup::retention::Policy;
use crate::backup::take::{take, BackupOptions, ClusterIdentity};
use crate::config::Config;
use crate::postgres::ready::Target;
use crate::postgres::server::data_dir_major;
use crate::postgres::wal::Lsn;
use crate::process::RunAs;
use crate::repo::Repo;
use crate::restore::target::{RecoverySettings, RecoveryTarget, TargetAction};
use crate::restore::{restore, RestoreOptions};

/// `pgward backup`: exit 0 once the backup is complete (manifest written). An incremental
/// backup builds on the latest backup; without one, it is full.
pub async fn backup(
    config: &Config,
    incremental: bool,
    annotations: &[String],
    keep: bool,
) -> Result<i32> {
    let annotations = parse_annotations(annotations)?;
    let owner = RunAs::for_child(Some(&config.postgres.user))?;
    let ctx = crate::commands::push_context(config, owner.as_ref()).await?;
    let pg_major = data_dir_major(&config.postgres.data_dir)?;
    let options = BackupOptions {
        concurrency: config.backup.concurrency as usize,
        wal_wait: config.backup.wal_wait,
        annotations,
        keep,
    };
    let cluster = ClusterIdentity {
        pg_major,
        system_identifier: ctx.system_identifier,
    };
    let unfinished = catalog::unfinished_ids(&ctx.repo).await?;
    if !unfinished.is_empty() {
        tracing::warn!(
            "the repository holds objects of backups that never completed (interrupted, or \
             running elsewhere now); they are not listed or restored: {}",
            unfinished.join(", ")
        );
    }
    let parent = if incremental {
        let latest = catalog::backup_ids(&ctx.repo).await?.pop();
        match latest {
            Some(id) => Some(catalog::read_manifest(&ctx.repo, &id).await?),
            None => {
                tracing::info!("no earlier backup to build on: taking a full backup");
                None
            }
        }
    } else {
        None
    };
    let manifest = take(
        &ctx.repo,
        &server_target(config),
        &config.postgres.data_dir,
        cluster,
        parent.as_ref(),
        &options,
        &CancellationToken::new(),
    )
    .await?;
    let copied = manifest
        .files
        .iter()
        .filter(|f| f.stored_in == manifest.id)
        .count();
    println!(
        "backup {} complete ({}{}): {} in {} files, {} copied, {} stored",
        manifest.id,
        format!("{:?}", manifest.kind).to_lowercase(),
        manifest
            .parent
            .as_deref()
            .map(|p| format!(" on {p}"))
            .unwrap_or_default(),
        human_bytes(manifest.size),
        manifest.files.len(),
        copied,
        human_bytes(manifest.stored_size)
    );
    Ok(0)
}

/// `pgward list [--json]`.
pub async fn list(config: &Config, json: bool) -> Result<i32> {
    let repo = Repo::open(&config.storage)
        .with_context(|| format!("open repository {}", config.storage.url))?;
    let manifests = catalog::manifests(&repo).await?;
    if json {
        let rows: Vec<serde_json::Value> = manifests.iter().map(summary).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<18} {:<11} {:<25} {:<25} {:>10} {:>10}  WAL",
        "id", "type", "start", "stop", "size", "stored"
    );
    for m in &manifests {
        println!(
            "{:<18} {:<11} {:<25} {:<25} {:>10} {:>10}  {}..{}",
            m.id,
            format!("{:?}", m.kind).to_lowercase(),
            m.start_time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            m.stop_time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            human_bytes(m.size),
            human_bytes(m.stored_size),
            m.start_wal,
            m.stop_wal
        );
    }
    Ok(0)
}

/// `pgward show <id|latest> [--json]`.
pub async fn show(config: &Config, which: &str, json: bool) -> Result<i32> {
    let repo = Repo::open(&config.storage)
        .with_context(|| format!("open repository {}", config.storage.url))?;
    let m = catalog::resolve(&repo, which).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary(&m))?);
        return Ok(0);
    }
    let copied = m.files.iter().filter(|f| f.stored_in == m.id).count();
    let duration = (m.stop_time - m.start_time).num_milliseconds() as f64 / 1e3;
    println!("backup      {}", m.id);
    println!(
        "type        {}{}",
        format!("{:?}", m.kind).to_lowercase(),
        m.parent
            .as_deref()
            .map(|p| format!(" (on {p})"))
            .unwrap_or_default()
    );
    println!(
        "postgres    {} (system identifier {})",
        m.pg_major, m.system_identifier
    );
    println!("timeline    {}", m.timeline);
    println!(
        "start       {} at {}",
        m.start_time.format("%Y-%m-%d %H:%M:%S UTC"),
        m.start_lsn
    );
    println!(
        "stop        {} at {} ({duration:.1} s)",
        m.stop_time.format("%Y-%m-%d %H:%M:%S UTC"),
        m.stop_lsn
    );
    println!("WAL         {} .. {}", m.start_wal, m.stop_wal);
    println!(
        "size        {} in {} files ({} copied by this backup), {} stored",
        human_bytes(m.size),
        m.files.len(),
        copied,
        human_bytes(m.stored_size)
    );
    println!(
        "checksums   {}",
        if m.data_checksums { "on" } else { "off" }
    );
    println!(
        "keep        {}",
        if m.keep { "yes (never expired)" } else { "no" }
    );
    for (k, v) in &m.annotations {
        println!("annotation  {k}={v}");
    }
    Ok(0)
}

/// One backup for `list --json`: the manifest without its file list.
fn summary(m: &Manifest) -> serde_json::Value {
    let mut value = serde_json::to_value(m).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("files");
        object.remove("directories");
        object.insert("file_count".into(), m.files.len().into());
        let copied = m.files.iter().filter(|f| f.stored_in == m.id).count();
        object.insert("files_copied".into(), copied.into());
        object.insert(
            "duration_seconds".into(),
            ((m.stop_time - m.start_time).num_milliseconds() as f64 / 1e3).into(),
        );
    }
    value
}

/// `pgward expire [--dry-run] [--json]`: apply `backup.retention`.
pub async fn expire(config: &Config, dry_run: bool, json: bool) -> Result<i32> {
    let repo = Repo::open(&config.storage)
        .with_context(|| format!("open repository {}", config.storage.url))?;
    let retention = &config.backup.retention;
    let policy = Policy {
        full: retention.full,
        max_age: retention.max_age,
    };
    let plan = expire::plan(&repo, &policy, chrono::Utc::now()).await?;
    if !json {
        print!("{}", expire_text(&plan));
    }
    if !dry_run {
        expire::execute(&repo, &plan).await?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&expire_json(&plan, dry_run))?
        );
    } else {
        println!("{}", expire_summary(&plan, dry_run));
    }
    Ok(0)
}

/// One line per backup, unfinished backup and timeline.
fn expire_text(plan: &expire::Plan) -> String {
    let mut out = String::new();
    for v in &plan.selection.verdicts {
        let action = if v.expire { "expire" } else { "keep" };
        out.push_str(&format!("{action} {} ({})\n", v.id, v.explain()));
    }
    for id in &plan.abandoned {
        out.push_str(&format!(
            "delete unfinished backup {id} ({} objects; interrupted: it started before the \
             newest complete backup)\n",
            plan.object_count(id)
        ));
    }
    match plan.wal_horizon {
        None => out.push_str("no backup is kept: WAL left as it is\n"),
        Some(horizon) => {
            for (tli, wal) in &plan.wal {
                let mut line = format!("delete {} segments of timeline {tli}", wal.segments.len());
                if let Some(last) = wal.last {
                    line.push_str(&format!(" up to {last}"));
                }
                match wal.backup_files.len() {
                    0 => {}
                    1 => line.push_str(" and 1 backup history file"),
                    n => line.push_str(&format!(" and {n} backup history files")),
                }
                out.push_str(&line);
                out.push('\n');
            }
            out.push_str(&format!(
                "keep WAL from {horizon} (where the earliest kept backup starts)\n"
            ));
        }
    }
    out
}

fn expire_summary(plan: &expire::Plan, dry_run: bool) -> String {
    let what = format!(
        "{} of {} backups and {} unfinished",
        plan.selection.expired().count(),
        plan.selection.verdicts.len(),
        plan.abandoned.len()
    );
    let objects = format!(
        "{} backup objects and {} WAL files",
        plan.backup_objects(),
        plan.wal_files()
    );
    if dry_run {
        format!("dry run, nothing deleted: would expire {what}, deleting {objects}")
    } else {
        format!("expired {what}: deleted {objects}")
    }
}

/// `expire --json`: the same as the text, as one object.
fn expire_json(plan: &expire::Plan, dry_run: bool) -> serde_json::Value {
    let backups: Vec<serde_json::Value> = plan
        .selection
        .verdicts
        .iter()
        .map(|v| {
            serde_json::json!({
                "id": v.id,
                "kind": format!("{:?}", v.kind).to_lowercase(),
                "action": if v.expire { "expire" } else { "keep" },
                "chain": v.chain,
                "reason": v.reason.to_string(),
                "objects": plan.object_count(&v.id),
            })
        })
        .collect();
    let unfinished: Vec<serde_json::Value> = plan
        .abandoned
        .iter()
        .map(|id| serde_json::json!({ "id": id, "objects": plan.object_count(id) }))
        .collect();
    let timelines: Vec<serde_json::Value> = plan
        .wal
        .iter()
        .map(|(tli, wal)| {
            serde_json::json!({
                "timeline": tli.0,
                "segments": wal.segments.len(),
                "backup_files": wal.backup_files.len(),
                "up_to": wal.last.map(|s| s.to_string()),
            })
        })
        .collect();
    serde_json::json!({
        "dry_run": dry_run,
        "backups": backups,
        "unfinished": unfinished,
        "wal": {
            "keep_from": plan.wal_horizon.map(|s| s.to_string()),
            "timelines": timelines,
        },
        "summary": {
            "backups": plan.selection.verdicts.len(),
            "kept": plan.selection.kept().count(),
            "expired": plan.selection.expired().count(),
            "unfinished": plan.abandoned.len(),
            "backup_objects": plan.backup_objects(),
            "wal_files": plan.wal_files(),
        },
    })
}

/// What `pgward restore` was asked for.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    pub backup: String,
    pub data_dir: Option<std::path::PathBuf>,
    pub target_time: Option<String>,
    pub target_lsn: Option<String>,
    pub target_xid: Option<u64>,
    pub target_name: Option<String>,
    pub target_immediate: bool,
    pub target_action: Option<String>,
    pub force: bool,
}

/// `pgward restore`.
pub async fn restore_command(config: &Config, request: &RestoreRequest) -> Result<i32> {
    let target = recovery_target(request)?;
    let action = request
        .target_action
        .as_deref()
        .map(TargetAction::parse)
        .transpose()?;
    if action.is_some() && target == RecoveryTarget::EndOfWal {
        bail!("--target-action needs a target (--target-time, --target-lsn, --target-xid, --target-name or --target-immediate)");
    }
    let owner = RunAs::for_child(Some(&config.postgres.user))?;
    let repo = Repo::open(&config.storage)
        .with_context(|| format!("open repository {}", config.storage.url))?;
    let manifest = catalog::resolve(&repo, &request.backup).await?;
    let data_dir = request
        .data_dir
        .clone()
        .unwrap_or_else(|| config.postgres.data_dir.clone());
    let options = RestoreOptions {
        data_dir: std::path::absolute(&data_dir)
            .with_context(|| format!("make {} absolute", data_dir.display()))?,
        force: request.force,
        concurrency: config.backup.concurrency as usize,
        owner,
        recovery: RecoverySettings {
            restore_command: wal_fetch_command(config)?,
            target,
            action,
            backup_id: manifest.id.clone(),
        },
    };
    tracing::info!(backup = %manifest.id, data_dir = %options.data_dir.display(), "restoring");
    restore(&repo, &manifest, &options, &CancellationToken::new()).await?;
    println!(
        "restored backup {} into {}; start postgres (pgward run) to recover from the archive",
        manifest.id,
        options.data_dir.display()
    );
    Ok(0)
}

fn recovery_target(request: &RestoreRequest) -> Result<RecoveryTarget> {
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

/// `restore_command` for the restored cluster: this binary's `wal-fetch` with this config.
fn wal_fetch_command(config: &Config) -> Result<String> {
    let exe = std::env::current_exe().context("find the pgward executable")?;
    let mut command = crate::app::shell_quote(&exe.to_string_lossy());
    if let Some(file) = &config.source {
        let file = std::path::absolute(file).context("make the config path absolute")?;
        command.push_str(&format!(
            " --config {}",
            crate::app::shell_quote(&file.to_string_lossy())
        ));
    }
    command.push_str(" wal-fetch %f %p");
    Ok(command)
}

/// How to reach the server as its superuser over the unix socket.
pub fn server_target(config: &Config) -> Target {
    let pg = &config.postgres;
    Target {
        socket_dir: pg.socket_dir.clone(),
        port: pg.port,
        user: pg.init.superuser.clone(),
        password: pg.init.password.clone(),
        dbname: "postgres".into(),
    }
}

fn parse_annotations(raw: &[String]) -> Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => bail!("--annotate {a:?}: expected key=value"),
        })
        .collect()
}
