//! `pgward backup`, `list`, `show`, `restore`, `verify`, `expire` and `restore-test`: config
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
use crate::backup::verify::{Report, SegSizeSource, VerifyOptions};
use crate::config::Config;
use crate::postgres::ready::Target;
use crate::postgres::server::data_dir_major;
use crate::postgres::wal::Lsn;
use crate::process::RunAs;
use crate::repo::{Repo, RetryPolicy};
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
    let manifest = take_backup(
        config,
        incremental,
        annotations,
        keep,
        &CancellationToken::new(),
    )
    .await?;
    let damaged = damaged_files(&manifest);
    if !damaged.is_empty() {
        eprintln!(
            "WARNING: data page checksum failures, copied as they are on disk: {}",
            damaged.join(", ")
        );
    }
    println!("{}", backup_summary(&manifest));
    Ok(0)
}

/// Takes a backup (the `backup` command and job action): the manifest of the complete backup.
pub async fn take_backup(
    config: &Config,
    incremental: bool,
    annotations: BTreeMap<String, String>,
    keep: bool,
    cancel: &CancellationToken,
) -> Result<Manifest> {
    let owner = RunAs::for_child(Some(&config.postgres.user))?;
    let ctx = crate::commands::push_context(config, owner.as_ref()).await?;
    let pg_major = data_dir_major(&config.postgres.data_dir)?;
    let options = BackupOptions {
        concurrency: config.backup.concurrency as usize,
        wal_wait: config.backup.wal_wait,
        slice_size: config.backup.slice_size,
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
    take(
        &ctx.repo,
        &Target::superuser_of(&config.postgres),
        &config.postgres.data_dir,
        cluster,
        parent.as_ref(),
        &options,
        cancel,
    )
    .await
}

/// Files of `manifest` with bad blocks, and which.
pub fn damaged_files(manifest: &Manifest) -> Vec<String> {
    manifest
        .files
        .iter()
        .filter(|f| !f.bad_blocks.is_empty())
        .map(|f| format!("{} (blocks {:?})", f.path, f.bad_blocks))
        .collect()
}

/// One line saying what a complete backup holds.
pub fn backup_summary(manifest: &Manifest) -> String {
    let copied = manifest
        .files
        .iter()
        .filter(|f| f.stored_in == manifest.id)
        .count();
    format!(
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
    )
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
        "read        {} from the data directory",
        human_bytes(m.read_size)
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
        let parted = m.files.iter().filter(|f| !f.parts.is_empty()).count();
        object.insert("parted_files".into(), parted.into());
        let bad: usize = m.files.iter().map(|f| f.bad_blocks.len()).sum();
        object.insert("bad_blocks".into(), bad.into());
        object.insert(
            "duration_seconds".into(),
            ((m.stop_time - m.start_time).num_milliseconds() as f64 / 1e3).into(),
        );
    }
    value
}

/// `pgward verify [--json]`: exit 0 when the backup restores (warnings allowed), 1 when not.
pub async fn verify(config: &Config, backup: &str, json: bool) -> Result<i32> {
    let report = verify_backup(config, backup, &CancellationToken::new()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human_report(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// Verifies a backup (the `verify` command and job action).
pub async fn verify_backup(
    config: &Config,
    backup: &str,
    cancel: &CancellationToken,
) -> Result<Report> {
    let repo = Repo::open(&config.storage)
        .with_context(|| format!("open repository {}", config.storage.url))?;
    let manifest = catalog::resolve(&repo, backup).await?;
    let options = VerifyOptions {
        concurrency: config.backup.concurrency as usize,
        retry: RetryPolicy::from_config(&config.storage.retry),
        data_dir: Some(config.postgres.data_dir.clone()),
    };
    crate::backup::verify::verify(&repo, &manifest, &options, cancel).await
}

/// One line per problem, a note when the WAL segment size was assumed, then the summary.
pub fn human_report(report: &Report) -> String {
    let mut out = String::new();
    for finding in &report.problems {
        out.push_str(&format!(
            "{finding}
"
        ));
    }
    if report.wal_segment_size_source == SegSizeSource::Assumed {
        out.push_str(&format!(
            "note: WAL segment size assumed to be {} MiB (neither the backup's pg_control nor \
             the data directory's could be read)\n",
            report.wal_segment_size >> 20
        ));
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let verdict = match (report.errors(), report.warnings()) {
        (0, 0) => "ok".to_owned(),
        (0, w) => format!("ok, {}", plural(w, "warning")),
        (e, 0) => format!("not restorable, {}", plural(e, "error")),
        (e, w) => format!(
            "not restorable, {}, {}",
            plural(e, "error"),
            plural(w, "warning")
        ),
    };
    let wal_to = report.wal_continuous_to.as_deref().map_or_else(
        || "not even the start segment".to_owned(),
        |s| format!("continuous to {s}"),
    );
    out.push_str(&format!(
        "backup {}: {} ({}) and {} ({wal_to}) checked: {verdict}\n",
        report.backup,
        plural(report.objects_checked, "data object"),
        human_bytes(report.bytes_checked),
        plural(report.wal_segments_checked, "WAL segment"),
    ));
    out
}

/// `pgward expire [--dry-run] [--json]`: apply `backup.retention`.
pub async fn expire(config: &Config, dry_run: bool, json: bool) -> Result<i32> {
    let (repo, plan) = expire_plan(config).await?;
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

/// The repository and what `backup.retention` expires in it now.
pub async fn expire_plan(config: &Config) -> Result<(Repo, expire::Plan)> {
    let repo = Repo::open(&config.storage)
        .with_context(|| format!("open repository {}", config.storage.url))?;
    let retention = &config.backup.retention;
    let policy = Policy {
        full: retention.full,
        max_age: retention.max_age,
    };
    let plan = expire::plan(&repo, &policy, chrono::Utc::now()).await?;
    Ok((repo, plan))
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

pub fn expire_summary(plan: &expire::Plan, dry_run: bool) -> String {
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
pub type RestoreRequest = crate::cli::RestoreArgs;

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
    let manifest = match (&target, request.backup.as_str()) {
        // "The backup before the mistake": the newest one that ended before the target time.
        (RecoveryTarget::Time(time), "latest") => match parse_target_time(time) {
            Some(at) => catalog::newest_before(&repo, at).await?,
            None => {
                tracing::warn!(
                    "cannot read --target-time {time:?} here (postgres will); restoring the latest backup"
                );
                catalog::resolve(&repo, "latest").await?
            }
        },
        _ => catalog::resolve(&repo, &request.backup).await?,
    };
    let data_dir = request
        .data_dir
        .clone()
        .unwrap_or_else(|| config.postgres.data_dir.clone());
    let tablespace_map = request
        .tablespace_map
        .iter()
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
                    "--tablespace-map {m:?}: backup {} has no tablespace {oid}",
                    manifest.id
                );
            }
            Ok((oid, dir))
        })
        .collect::<Result<_>>()?;
    let options = RestoreOptions {
        tablespace_map,
        data_dir: std::path::absolute(&data_dir)
            .with_context(|| format!("make {} absolute", data_dir.display()))?,
        force: request.force,
        delta: request.delta,
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

/// `pgward restore-test`: exit 0 when the backup restored, recovered and the query returned
/// true, 1 when not, 2 when the test cannot run as asked. A stop signal (`signals`) ends the
/// test early, cleaning up.
pub async fn restore_test(
    config: &Config,
    args: &crate::cli::RestoreTestArgs,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<crate::init::ForwardedSignal>,
) -> Result<i32> {
    use crate::config::{RestoreTestConfig, RestoreTestTarget};
    use crate::scheduler::restore_test;

    const EXIT_USAGE: i32 = 2;
    if args.backup != "latest" {
        if let Err(e) = crate::backup::manifest::check_backup_id(&args.backup) {
            eprintln!("error: {e:#}");
            return Ok(EXIT_USAGE);
        }
    }
    let options = RestoreTestConfig {
        backup: args.backup.clone(),
        target: match args.target.as_str() {
            "latest" => RestoreTestTarget::Latest,
            _ => RestoreTestTarget::Consistent,
        },
        sql: args.sql.clone(),
        database: args.database.clone(),
        scratch_dir: args.scratch_dir.clone(),
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        while let Some(signal) = signals.recv().await {
            if let crate::init::ForwardedSignal::Terminate(_) = signal {
                tracing::warn!("stop requested: ending the restore test and cleaning up");
                on_signal.cancel();
            }
        }
    });
    let report = match restore_test::run(config, &options, &cancel).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", restore_test::human_report(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// `postgres.init.from_backup`: restores `which` into the (empty) data directory, with
/// recovery to the end of the archive, before `pgward run` starts postgres.
pub async fn bootstrap_from_backup(
    config: &Config,
    which: &str,
    owner: Option<RunAs>,
) -> Result<()> {
    let repo = Repo::open(&config.storage)
        .with_context(|| format!("open repository {}", config.storage.url))?;
    let manifest = catalog::resolve(&repo, which).await?;
    let options = RestoreOptions {
        data_dir: config.postgres.data_dir.clone(),
        force: false,
        delta: false,
        tablespace_map: Default::default(),
        concurrency: config.backup.concurrency as usize,
        owner,
        recovery: RecoverySettings {
            restore_command: wal_fetch_command(config)?,
            target: RecoveryTarget::EndOfWal,
            action: None,
            backup_id: manifest.id.clone(),
        },
    };
    tracing::info!(backup = %manifest.id, data_dir = %options.data_dir.display(), "empty data directory: restoring from the repository instead of initdb");
    restore(&repo, &manifest, &options, &CancellationToken::new()).await?;
    tracing::info!(backup = %manifest.id, "restored; postgres recovers from the archive when it starts");
    Ok(())
}

/// The common shapes of a recovery target time (`2026-11-30 03:55:00+00`, with or without
/// fractional seconds, `T`, or a zone); `None` for anything else.
fn parse_target_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{DateTime, NaiveDateTime, Utc};
    let text = text.trim();
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    // Without a zone, postgres reads the server's TimeZone; UTC is what images run with.
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    None
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
    Ok(format!(
        "{} wal-fetch %f %p",
        crate::app::pgward_invocation(config)?
    ))
}

fn parse_annotations(raw: &[String]) -> Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => bail!("--annotate {a:?}: expected key=value"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::verify::{Finding, Problem, Severity};

    fn report(problems: Vec<Finding>, source: SegSizeSource) -> Report {
        Report {
            backup: "20261130T035500F".into(),
            ok: problems.iter().all(|p| p.severity != Severity::Error),
            objects_checked: 1203,
            bytes_checked: 23 << 20,
            wal_segments_checked: 5,
            wal_segment_size: 16 << 20,
            wal_segment_size_source: source,
            start_wal: "000000010000000000000003".into(),
            stop_wal: "000000010000000000000004".into(),
            wal_continuous_to: Some("000000010000000000000007".into()),
            problems,
        }
    }

    #[test]
    fn the_human_report_lists_problems_then_sums_up() {
        assert_eq!(
            human_report(&report(vec![], SegSizeSource::Backup)),
            "backup 20261130T035500F: 1203 data objects (23.0 MiB) and 5 WAL segments (continuous to \
             000000010000000000000007) checked: ok\n"
        );
        let problems = vec![
            Finding {
                severity: Severity::Error,
                problem: Problem::MissingObject {
                    key: "backups/20261130T035500F/data/base/1/1259".into(),
                },
            },
            Finding {
                severity: Severity::Warning,
                problem: Problem::WalGap {
                    segment: "000000010000000000000008".into(),
                    key: "wal/00000001/000000010000000000000008".into(),
                    newest: "000000010000000000000009".into(),
                },
            },
        ];
        let text = human_report(&report(problems, SegSizeSource::Assumed));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            lines[0],
            "error: backups/20261130T035500F/data/base/1/1259: missing from the repository"
        );
        assert!(lines[1].starts_with("warning: wal/00000001/000000010000000000000008: "));
        assert!(lines[2].starts_with("note: WAL segment size assumed to be 16 MiB"));
        assert!(
            lines[3].ends_with("checked: not restorable, 1 error, 1 warning"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn target_times_in_the_shapes_people_type() {
        let want = chrono::DateTime::parse_from_rfc3339("2026-11-30T03:55:00Z").unwrap();
        for text in [
            "2026-11-30 03:55:00+00",
            "2026-11-30 04:55:00+01:00",
            "2026-11-30T03:55:00Z",
            "2026-11-30 03:55:00",
            "2026-11-30 03:55:00.000000+00",
        ] {
            assert_eq!(parse_target_time(text), Some(want.into()), "{text}");
        }
        assert_eq!(parse_target_time("yesterday"), None);
    }
}
