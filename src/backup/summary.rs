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
        .map(|f| format!("{} ({})", f.path, block_list(&f.bad_blocks)))
        .collect()
}

/// `block 7`, or `blocks 3, 7`: block numbers as a reader writes them.
pub fn block_list(blocks: &[u32]) -> String {
    let numbers: Vec<String> = blocks.iter().map(u32::to_string).collect();
    match numbers.len() {
        1 => format!("block {}", numbers[0]),
        _ => format!("blocks {}", numbers.join(", ")),
    }
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
        manifest.kind.as_str(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_numbers_read_as_a_list() {
        assert_eq!(block_list(&[7]), "block 7");
        assert_eq!(block_list(&[3, 7, 12]), "blocks 3, 7, 12");
    }
}
