//! `pgward verify [<id|latest>] [--json]`: every object's checksum and the WAL's continuity,
//! without restoring.

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::backup::catalog;
use crate::backup::verify::{human_report, verify as verify_backup};
use crate::site::Site;

/// Exit 0 when the backup restores (warnings allowed), 1 when not.
pub async fn verify(site: &Site, backup: &str, json: bool) -> Result<i32> {
    let repo = site.repo()?;
    let manifest = catalog::resolve_as_stored(repo, backup).await?;
    let options = site.verify_options();
    let report = verify_backup(repo, &manifest, &options, &CancellationToken::new()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human_report(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}
