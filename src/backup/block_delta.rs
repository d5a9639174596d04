//! Block-level incremental backups: which blocks of a changed relation file to read, from the
//! WAL written between the parent backup's start and this one's.
//!
//! A page changed after the parent backup started is named by a WAL record before this
//! backup's start (a block reference), or after it, where replay rewrites it from a full-page
//! image anyway. So the blocks referenced in that range, the blocks past the parent's copy of
//! the file and the blocks past a truncation are all that differ from the parent's copy.
//! Whatever the WAL does not describe block by block is copied whole: relations (re)created
//! in the range (`XLOG_SMGR_CREATE`), databases created or moved by copying files, forks other
//! than the main one (the free space map is not WAL-logged), non-relation files. If the WAL
//! cannot be read, or holds a record that changes files in a way the scanner does not know,
//! the backup copies changed files whole (as a file-level incremental) and says why.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::manifest::{FileEntry, ManifestOf, Part};
use crate::postgres::control_file::ControlFile;
use crate::postgres::wal::{Lsn, TimelineId};
use crate::postgres::wal_records::{ChangedBlocks, RelFileLocator, WalScanner};
use crate::repo::{layout, Repo};

/// Bytes of a data page.
pub const BLOCK: u64 = 8192;
/// `DEFAULTTABLESPACE_OID` and `GLOBALTABLESPACE_OID`.
const DEFAULT_TABLESPACE: u32 = 1663;
const GLOBAL_TABLESPACE: u32 = 1664;
/// A file whose chain of parts is this deep is copied whole again, so a restore never
/// layers more than this many parts over one byte.
const MAX_LAYERS: usize = 8;

/// The blocks changed between a parent backup and this one, and how relation files map to
/// them.
pub struct BlockMap {
    changed: ChangedBlocks,
    relseg_size: u32,
}

/// Why a block-level incremental is not possible against `parent`, if it is not.
pub fn unusable_parent<F>(
    parent: &ManifestOf<F>,
    timeline: u32,
    pg_major: u32,
    control: &ControlFile,
) -> Option<String> {
    if parent.timeline != timeline {
        return Some(format!(
            "the parent backup {} is on timeline {}, the server on {timeline}",
            parent.id, parent.timeline
        ));
    }
    if parent.pg_major != pg_major {
        return Some(format!(
            "the parent backup {} is of PostgreSQL {}",
            parent.id, parent.pg_major
        ));
    }
    // Enabling checksums offline rewrites every page without WAL.
    if parent.data_checksums != (control.data_checksum_version != 0) {
        return Some("data checksums were switched since the parent backup".into());
    }
    if u64::from(control.blcksz) != BLOCK || control.relseg_size == 0 {
        return Some(format!(
            "the cluster's block size is {} (block-level incrementals need 8192)",
            control.blcksz
        ));
    }
    None
}

/// Reads the WAL from `parent`'s start to `start_lsn` (on `timeline`) and collects the
/// blocks it changed, holding at most `memory_ceiling` bytes of them (past it, the relations
/// with the most changed blocks are copied whole: [`BlockMap::ceiling`]). Segments are streamed
/// from the archive (no local copy), or read from `pg_wal` for the newest ones not archived
/// yet. Blocking reads run off the runtime.
#[allow(clippy::too_many_arguments)]
pub async fn scan<F: Sync>(
    repo: &Repo,
    data_dir: &Path,
    parent: &ManifestOf<F>,
    start_lsn: Lsn,
    timeline: TimelineId,
    control: &ControlFile,
    memory_ceiling: u64,
    cancel: &CancellationToken,
) -> Result<BlockMap> {
    let parent_start: Lsn = parent
        .start_lsn
        .parse()
        .with_context(|| format!("read the parent backup's start LSN {}", parent.start_lsn))?;
    let mut scanner = WalScanner::new(
        parent.pg_major,
        timeline,
        control.xlog_seg_size,
        parent_start,
        start_lsn,
    )?;
    scanner.expect_system_id(control.system_identifier);
    scanner.limit_memory(memory_ceiling);
    let scanner = Arc::new(Mutex::new(scanner));
    let segments = lock(&scanner).segments();
    for segment in segments {
        let name = segment.to_string();
        let key = layout::wal_key(&name)?;
        let feeding = scanner.clone();
        let archived = repo
            .consume(&key, cancel, move |content| {
                lock(&feeding).feed_segment(segment, std::io::BufReader::new(content))
            })
            .await
            .with_context(|| format!("read WAL segment {name} from the archive"))?;
        match archived {
            Some(fed) => fed?,
            None => {
                let local = data_dir.join("pg_wal").join(&name);
                if !local.exists() {
                    bail!("WAL segment {name} is neither in the archive nor in pg_wal");
                }
                let feeding = scanner.clone();
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let file = std::fs::File::open(&local)
                        .with_context(|| format!("open {}", local.display()))?;
                    let reader = std::io::BufReader::with_capacity(256 * 1024, file);
                    lock(&feeding).feed_segment(segment, reader)?;
                    Ok(())
                })
                .await
                .context("join a WAL scan")??;
            }
        }
    }
    let scanner = Arc::try_unwrap(scanner)
        .map_err(|_| anyhow::anyhow!("the WAL scanner is still shared after the scan"))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let changed = scanner.finish()?;
    Ok(BlockMap {
        changed,
        relseg_size: control.relseg_size,
    })
}

/// The scanner is fed on one blocking thread at a time; the lock only hands it over.
fn lock(scanner: &Mutex<WalScanner>) -> std::sync::MutexGuard<'_, WalScanner> {
    scanner.lock().unwrap_or_else(|p| p.into_inner())
}

impl BlockMap {
    /// Blocks per relation segment file.
    pub fn relseg_size(&self) -> u32 {
        self.relseg_size
    }

    /// Records and WAL bytes scanned.
    pub fn scanned(&self) -> (u64, u64) {
        (self.changed.records, self.changed.wal_bytes)
    }

    /// Relations whose changed files are copied whole because the map reached its memory
    /// ceiling, and the bytes the map is reckoned to hold.
    pub fn ceiling(&self) -> (usize, u64) {
        (self.changed.whole.len(), self.changed.estimated_bytes())
    }

    /// The ranges of the file at `path` (now `size` bytes) to read when `earlier` is the
    /// parent's entry of it; `None` when the file must be copied whole.
    pub fn ranges_to_read(
        &self,
        path: &str,
        earlier: &FileEntry,
        size: u64,
    ) -> Option<Vec<(u64, u64)>> {
        let (rel, segno) = relation_of(path)?;
        if size == 0 || size % BLOCK != 0 || earlier.size % BLOCK != 0 {
            return None;
        }
        if self.changed.created.contains(&rel)
            || self.changed.whole.contains(&rel)
            || self.changed.databases.contains(&rel.db)
        {
            return None;
        }
        if earlier
            .part_rounds()
            .iter()
            .max()
            .is_some_and(|&r| r + 1 >= MAX_LAYERS)
        {
            return None;
        }
        let per_segment = u64::from(self.relseg_size);
        let first = u64::from(segno) * per_segment;
        let blocks_now = size / BLOCK;
        let blocks_then = earlier.size / BLOCK;
        let mut read: Vec<u64> = self
            .changed
            .main_blocks
            .get(&rel)
            .into_iter()
            .flat_map(|blocks| {
                blocks.range(first as u32..(first + per_segment).min(u64::from(u32::MAX)) as u32)
            })
            .map(|&b| u64::from(b) - first)
            .filter(|&b| b < blocks_now)
            .collect();
        // Past a truncation, and past the parent's copy: pages written without WAL (zeroed
        // on extension) may be there.
        let mut tail_from = blocks_then;
        if let Some(&truncated_to) = self.changed.truncated.get(&rel) {
            tail_from = tail_from.min(u64::from(truncated_to).saturating_sub(first));
        }
        read.extend(tail_from..blocks_now);
        read.sort_unstable();
        read.dedup();
        // Mostly changed: a whole copy is as cheap to take and cheaper to restore.
        if read.len() as u64 * 2 > blocks_now {
            return None;
        }
        Some(runs(&read))
    }
}

/// Contiguous runs of sorted block numbers, as byte ranges.
fn runs(blocks: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &block in blocks {
        match out.last_mut() {
            Some((offset, len)) if *offset + *len == block * BLOCK => *len += BLOCK,
            _ => out.push((block * BLOCK, BLOCK)),
        }
    }
    out
}

/// The relation (main fork) a data directory path belongs to, and the segment number of the
/// file: `base/<db>/<rel>[.<seg>]`, `global/<rel>[.<seg>]`,
/// `pg_tblspc/<spc>/<version dir>/<db>/<rel>[.<seg>]`. `None` for anything else, forks
/// other than main included.
pub fn relation_of(path: &str) -> Option<(RelFileLocator, u32)> {
    let parts: Vec<&str> = path.split('/').collect();
    let (spc, db, name) = match parts.as_slice() {
        ["base", db, name] => (DEFAULT_TABLESPACE, number(db)?, *name),
        ["global", name] => (GLOBAL_TABLESPACE, 0, *name),
        ["pg_tblspc", spc, _, db, name] => (number(spc)?, number(db)?, *name),
        _ => return None,
    };
    let (rel, segno) = match name.split_once('.') {
        Some((rel, seg)) => (number(rel)?, number(seg)?),
        None => (number(name)?, 0),
    };
    Some((RelFileLocator { spc, db, rel }, segno))
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The parts of `earlier` a block-level copy builds on: its own parts, or its whole object
/// as one part; parts wholly past `size` are dropped.
pub fn base_parts(earlier: &FileEntry, size: u64) -> Vec<Part> {
    let parts = if earlier.parts.is_empty() {
        vec![Part {
            ranges: vec![[0, earlier.size]],
            checksum: earlier.checksum.clone(),
            stored_size: earlier.stored_size,
            stored_in: earlier.stored_in.clone(),
            whole_object: true,
            bundle: earlier.bundle,
        }]
    } else {
        earlier.parts.clone()
    };
    parts
        .into_iter()
        .filter(|p| p.ranges.iter().any(|r| r[0] < size) && p.bytes() > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(rel: u32) -> RelFileLocator {
        RelFileLocator {
            spc: DEFAULT_TABLESPACE,
            db: 5,
            rel,
        }
    }

    fn entry(size: u64) -> FileEntry {
        FileEntry {
            path: "base/5/16384".into(),
            size,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o600,
            checksum: "aa".into(),
            stored_size: 10,
            stored_in: "20261130T035500F".into(),
            bad_blocks: vec![],
            parts: vec![],
            bundle: None,
        }
    }

    fn map(changed: ChangedBlocks) -> BlockMap {
        BlockMap {
            changed,
            relseg_size: 131_072,
        }
    }

    #[test]
    fn paths_name_their_relation_and_segment() {
        assert_eq!(relation_of("base/5/16384"), Some((loc(16384), 0)));
        assert_eq!(relation_of("base/5/16384.3"), Some((loc(16384), 3)));
        assert_eq!(
            relation_of("global/1262"),
            Some((
                RelFileLocator {
                    spc: 1664,
                    db: 0,
                    rel: 1262
                },
                0
            ))
        );
        assert_eq!(
            relation_of("pg_tblspc/16390/PG_15_202209061/5/16391.1"),
            Some((
                RelFileLocator {
                    spc: 16390,
                    db: 5,
                    rel: 16391
                },
                1
            ))
        );
        for other in [
            "base/5/16384_fsm",
            "base/5/16384_vm.1",
            "base/5/PG_VERSION",
            "global/pg_control",
            "pg_xact/0000",
            "base/5/16384.x",
        ] {
            assert_eq!(relation_of(other), None, "{other}");
        }
    }

    #[test]
    fn changed_blocks_of_the_segment_and_the_new_tail_are_read() {
        let mut changed = ChangedBlocks::default();
        // Blocks 3, 4 and 9 of segment 0; 131072 + 2 is block 2 of segment 1.
        changed
            .main_blocks
            .insert(loc(16384), [3, 4, 9, 131_074].into_iter().collect());
        let map = map(changed);
        // Grew from 100 to 102 blocks.
        assert_eq!(
            map.ranges_to_read("base/5/16384", &entry(100 * BLOCK), 102 * BLOCK),
            Some(vec![
                (3 * BLOCK, 2 * BLOCK),
                (9 * BLOCK, BLOCK),
                (100 * BLOCK, 2 * BLOCK)
            ])
        );
        assert_eq!(
            map.ranges_to_read("base/5/16384.1", &entry(100 * BLOCK), 100 * BLOCK),
            Some(vec![(2 * BLOCK, BLOCK)])
        );
        // Shrunk to 4 blocks: only what is left of the changes.
        assert_eq!(
            map.ranges_to_read("base/5/16384", &entry(100 * BLOCK), 8 * BLOCK),
            Some(vec![(3 * BLOCK, 2 * BLOCK)])
        );
        // Nothing changed by WAL (hint bits): nothing to read, the parent's copy serves.
        assert_eq!(
            map.ranges_to_read("base/5/99999", &entry(100 * BLOCK), 100 * BLOCK),
            Some(vec![])
        );
        // Other forks and odd sizes are copied whole.
        assert_eq!(
            map.ranges_to_read("base/5/16384_fsm", &entry(3 * BLOCK), 3 * BLOCK),
            None
        );
        assert_eq!(
            map.ranges_to_read("base/5/16384", &entry(100 * BLOCK), 100 * BLOCK + 1),
            None
        );
        // Mostly changed: whole.
        assert_eq!(
            map.ranges_to_read("base/5/16384", &entry(4 * BLOCK), 10 * BLOCK),
            None
        );
    }

    #[test]
    fn created_relations_databases_and_truncations_are_respected() {
        let mut changed = ChangedBlocks::default();
        changed.created.insert(loc(1));
        changed.databases.insert(7);
        changed.truncated.insert(loc(2), 40);
        let map = map(changed);
        assert_eq!(
            map.ranges_to_read("base/5/1", &entry(100 * BLOCK), 100 * BLOCK),
            None
        );
        assert_eq!(
            map.ranges_to_read("base/7/2", &entry(100 * BLOCK), 100 * BLOCK),
            None
        );
        // Truncated to 40 blocks then grown back to 60: blocks 40.. are read.
        assert_eq!(
            map.ranges_to_read("base/5/2", &entry(100 * BLOCK), 60 * BLOCK),
            Some(vec![(40 * BLOCK, 20 * BLOCK)])
        );
    }

    #[test]
    fn past_the_memory_ceiling_the_busiest_relations_are_copied_whole() {
        let mut changed = ChangedBlocks::default();
        // Room for about 100 blocks and a few relations.
        let ceiling = 100 * crate::postgres::wal_records::BYTES_PER_BLOCK
            + 4 * crate::postgres::wal_records::BYTES_PER_RELATION;
        for block in 0..90 {
            changed.touch_main(loc(1), block, Some(ceiling));
        }
        for block in 0..5 {
            changed.touch_main(loc(2), block, Some(ceiling));
        }
        assert!(changed.whole.is_empty());
        // Relation 3 tips it over: relation 1, the busiest, goes whole.
        for block in 0..20 {
            changed.touch_main(loc(3), block, Some(ceiling));
        }
        assert_eq!(changed.whole, [loc(1)].into_iter().collect());
        assert_eq!(changed.blocks, 25);
        assert!(changed.estimated_bytes() <= ceiling);
        // Later changes of a whole relation are not counted again.
        changed.touch_main(loc(1), 500, Some(ceiling));
        assert_eq!(changed.blocks, 25);
        let map = map(changed);
        assert_eq!(
            map.ranges_to_read("base/5/1", &entry(100 * BLOCK), 100 * BLOCK),
            None
        );
        assert_eq!(
            map.ranges_to_read("base/5/2", &entry(100 * BLOCK), 100 * BLOCK),
            Some(vec![(0, 5 * BLOCK)])
        );
        assert_eq!(map.ceiling().0, 1);
    }

    #[test]
    fn a_whole_object_becomes_the_first_part_and_deep_chains_are_copied_again() {
        let whole = entry(100 * BLOCK);
        let parts = base_parts(&whole, 100 * BLOCK);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].whole_object);
        assert_eq!(parts[0].ranges, vec![[0, 100 * BLOCK]]);
        assert_eq!(
            parts[0].key("base/5/16384"),
            "backups/20261130T035500F/data/base/5/16384"
        );

        let mut deep = entry(100 * BLOCK);
        deep.parts = (0..MAX_LAYERS)
            .map(|i| Part {
                ranges: vec![[0, BLOCK]],
                checksum: format!("{i}"),
                stored_size: 1,
                stored_in: "20261130T035500F".into(),
                whole_object: false,
                bundle: None,
            })
            .collect();
        let mut changed = ChangedBlocks::default();
        changed
            .main_blocks
            .insert(loc(16384), [1].into_iter().collect());
        assert_eq!(
            map(changed).ranges_to_read("base/5/16384", &deep, 100 * BLOCK),
            None
        );
    }
}
