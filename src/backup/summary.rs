//! What a complete backup holds, in words: for `pgward backup`'s last line and the backup
//! job's report.

use super::entries::Tally;
use super::manifest::ManifestHead;
use super::progress::human_bytes;

/// A backup that just completed: its manifest, without the list of files, and what the list
/// adds up to.
#[derive(Debug, Clone)]
pub struct Completed {
    pub manifest: ManifestHead,
    pub tally: Tally,
}

/// Files of the backup with bad blocks, and which: `base/5/16384 (blocks 3, 7)`.
pub fn damaged_files(completed: &Completed) -> &[String] {
    &completed.tally.damaged
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
pub fn one_line(completed: &Completed) -> String {
    let Completed { manifest, tally } = completed;
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
        tally.files,
        tally.copied,
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
