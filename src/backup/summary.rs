//! What a complete backup holds, in words: for `pgward backup`'s last line and the backup
//! job's report.

use super::manifest::Manifest;
use super::progress::human_bytes;

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
pub fn one_line(manifest: &Manifest) -> String {
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
