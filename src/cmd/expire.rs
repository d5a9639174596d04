//! `pgward expire [--dry-run] [--json]`: apply `backup.retention`: delete expired backups,
//! the objects of interrupted ones, and the WAL no kept backup needs.

use anyhow::Result;

use crate::backup::expire;
use crate::site::Site;

/// Prints the plan (one line per backup, unfinished backup and timeline), carries it out
/// unless `dry_run`, then sums up.
pub async fn expire(site: &Site, dry_run: bool, json: bool) -> Result<i32> {
    if !dry_run {
        site.refuse_if_copy("expire")?;
    }
    let repo = site.repo()?;
    let lineage = crate::backup::lineage::of_cluster(repo, site.data_dir()).await?;
    let plan =
        expire::plan_for(repo, &site.retention(), chrono::Utc::now(), Some(&lineage)).await?;
    if !json {
        print!("{}", expire_text(&plan));
    }
    if !dry_run {
        expire::execute(repo, &plan).await?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&expire_json(&plan, dry_run))?
        );
    } else {
        println!("{}", plan.summary(dry_run));
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
            "delete unfinished backup {id} ({} objects; interrupted: no manifest, and no live \
             backup lease names it)\n",
            plan.object_count(id)
        ));
    }
    if let Some(running) = &plan.running {
        out.push_str(&format!("leave running {} alone\n", running.describe()));
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

/// `expire --json`: the same as the text, as one object.
fn expire_json(plan: &expire::Plan, dry_run: bool) -> serde_json::Value {
    let backups: Vec<serde_json::Value> = plan
        .selection
        .verdicts
        .iter()
        .map(|v| {
            serde_json::json!({
                "id": v.id,
                "kind": v.kind.as_str(),
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
    let running = plan.running.as_ref().map(|r| {
        serde_json::json!({
            "id": r.subject,
            "host": r.host,
            "pid": r.pid,
            "since": r.since,
            "lease_expires_at": r.expires_at(),
        })
    });
    serde_json::json!({
        "dry_run": dry_run,
        "backups": backups,
        "unfinished": unfinished,
        "running": running,
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
