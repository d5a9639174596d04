//! `pgward backup [--full|--incremental] [--annotate k=v] [--keep]`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use tokio_util::sync::CancellationToken;

use crate::backup::summary;
use crate::site::Site;

/// Exit 0 once the backup is complete (manifest written). An incremental backup builds on the
/// latest backup; without one, it is full.
pub async fn backup(
    site: &Site,
    incremental: bool,
    annotations: &[String],
    keep: bool,
) -> Result<i32> {
    let options = site.backup_options(parse_annotations(annotations)?, keep);
    let completed = site
        .take_backup(incremental, &options, &CancellationToken::new())
        .await?;
    let damaged = summary::damaged_files(&completed);
    if !damaged.is_empty() {
        eprintln!(
            "WARNING: data page checksum failures, copied as they are on disk: {}",
            damaged.join(", ")
        );
    }
    println!("{}", summary::one_line(&completed));
    Ok(0)
}

fn parse_annotations(raw: &[String]) -> Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => bail!("--annotate {a:?}: expected key=value"),
        })
        .collect()
}
