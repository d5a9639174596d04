//! `pgward list [--json]` and `pgward show <id|latest> [--json]`: the catalogue of complete
//! backups.

use anyhow::Result;

use crate::backup::catalog;
use crate::backup::manifest::Manifest;
use crate::backup::progress::human_bytes;
use crate::site::Site;

/// `pgward list [--json]`.
pub async fn list(site: &Site, json: bool) -> Result<i32> {
    let manifests = catalog::manifests(site.repo()?).await?;
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
            m.kind.as_str(),
            m.start_time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            m.stop_time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            human_bytes(m.size),
            human_bytes(m.stored_size),
            m.start_wal,
            m.stop_wal
        );
    }
    // The backup under way, if any: not listed until it completes, but not invisible.
    if let Some(running) = crate::backup::exclusive::running_backup(site.repo()?).await? {
        println!(
            "running: {} (lease expires {} unless renewed)",
            running.describe(),
            running.expires_at().format("%H:%M:%S UTC")
        );
    }
    Ok(0)
}

/// `pgward show <id|latest> [--json]`: `latest` of the config's cluster's lineage, as
/// `restore` picks it.
pub async fn show(site: &Site, which: &str, json: bool) -> Result<i32> {
    let repo = site.repo()?;
    let lineage = crate::backup::lineage::of_cluster(repo, site.data_dir()).await?;
    let m = catalog::resolve_for(repo, which, &lineage).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary(&m))?);
        return Ok(0);
    }
    let copied = m.files.iter().filter(|f| f.stored_in == m.id).count();
    let duration = (m.stop_time - m.start_time).num_milliseconds() as f64 / 1e3;
    println!("backup      {}", m.id);
    println!(
        "type        {}{}",
        m.kind.as_str(),
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
        "size        {} in {} files ({} copied by this backup), {} stored in {} objects",
        human_bytes(m.size),
        m.files.len(),
        copied,
        human_bytes(m.stored_size),
        m.objects_stored()
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
        object.insert("objects".into(), m.objects_stored().into());
        let bad: usize = m.files.iter().map(|f| f.bad_blocks.len()).sum();
        object.insert("bad_blocks".into(), bad.into());
        object.insert(
            "duration_seconds".into(),
            ((m.stop_time - m.start_time).num_milliseconds() as f64 / 1e3).into(),
        );
    }
    value
}
