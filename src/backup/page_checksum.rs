//! Data page checksums (`initdb --data-checksums`): which files hold relation pages, and
//! whether a page's stored checksum matches its content, computed as PostgreSQL does
//! (FNV-1a based, 32 lanes over the 8 KiB page, block number mixed in; see
//! `src/include/storage/checksum_impl.h`). A backup checks every page it copies, so a bad block
//! is reported when the backup is taken, not discovered at restore.

use std::path::Path;

/// Page size (BLCKSZ); clusters built with another size are not checked.
pub const PAGE: usize = 8192;
/// Pages per relation segment file (1 GiB / BLCKSZ): block numbers continue across `.N` files.
const PAGES_PER_SEGMENT: u64 = (1 << 30) / PAGE as u64;
const LANES: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// Offset of `pd_checksum` in the page header (after the 8-byte LSN).
const CHECKSUM_OFFSET: usize = 8;
/// Offset of `pd_upper`: a page never initialized has `pd_upper == 0`.
const UPPER_OFFSET: usize = 14;

const LANE_SEEDS: [u32; LANES] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum PostgreSQL stores in `pd_checksum` for `page` at block `blkno`.
pub fn page_checksum(page: &[u8], blkno: u32) -> u16 {
    debug_assert_eq!(page.len(), PAGE);
    let mut sums = LANE_SEEDS;
    for (i, word) in page.chunks_exact(4).enumerate() {
        let mut value = u32::from_ne_bytes(word.try_into().expect("4 bytes"));
        // The stored checksum itself counts as zero (its 2 bytes share a word with pd_flags).
        if i == CHECKSUM_OFFSET / 4 {
            let mut bytes = value.to_ne_bytes();
            bytes[..2].copy_from_slice(&[0, 0]);
            value = u32::from_ne_bytes(bytes);
        }
        let lane = i % LANES;
        sums[lane] = mix(sums[lane], value);
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// Whether the file at `path` (relative to the data directory) holds relation pages:
/// `base/<db>/<node>`, `global/<node>`, `pg_tblspc/<oid>/<version>/<db>/<node>`, with an
/// optional fork (`_fsm`, `_vm`, `_init`) and segment (`.N`) suffix.
pub fn is_relation_file(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let name = match parts.as_slice() {
        ["base", db, name] if is_number(db) => name,
        ["global", name] => name,
        ["pg_tblspc", oid, _, db, name] if is_number(oid) && is_number(db) => name,
        _ => return false,
    };
    let (stem, segment) = name.split_once('.').unwrap_or((name, "0"));
    let node = ["_fsm", "_vm", "_init"]
        .iter()
        .find_map(|fork| stem.strip_suffix(fork))
        .unwrap_or(stem);
    is_number(node) && is_number(segment)
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The segment number of a relation file (`16384.2` → 2).
fn segment_of(path: &str) -> u64 {
    path.rsplit('/')
        .next()
        .and_then(|name| name.split_once('.'))
        .and_then(|(_, seg)| seg.parse().ok())
        .unwrap_or(0)
}

/// Block numbers of the pages of `file` (a relation file at `path`) whose checksum is wrong,
/// among those in `ranges` (page-aligned `(offset, length)` pairs; `(0, u64::MAX)` for the
/// whole file). Pages never initialized (all zero) are fine, and so are pages with an LSN at
/// or after `backup_start_lsn`: they may be mid-write as the backup reads them, and WAL replay
/// rewrites them from full-page images anyway. Blocking.
pub fn bad_blocks(
    file: &Path,
    path: &str,
    backup_start_lsn: u64,
    ranges: &[(u64, u64)],
) -> std::io::Result<Vec<u32>> {
    let file = std::fs::File::open(file)?;
    let first_block = segment_of(path) * PAGES_PER_SEGMENT;
    let mut buf = vec![0u8; PAGE * 32];
    let mut bad = Vec::new();
    for &(offset, len) in ranges {
        let end = offset.saturating_add(len);
        let mut pos = offset;
        while pos < end {
            let want = (end - pos).min(buf.len() as u64) as usize;
            let got = read_at_most(&file, &mut buf[..want], pos)?;
            // A partial page at the end: the file is being extended; WAL replay covers it.
            for (index, page) in buf[..got].chunks_exact(PAGE).enumerate() {
                let blkno = (first_block + pos / PAGE as u64 + index as u64) as u32;
                if page_is_bad(page, blkno, backup_start_lsn) {
                    bad.push(blkno);
                }
            }
            if got < want {
                break;
            }
            pos += got as u64;
        }
    }
    Ok(bad)
}

fn page_is_bad(page: &[u8], blkno: u32, backup_start_lsn: u64) -> bool {
    let upper = u16::from_ne_bytes([page[UPPER_OFFSET], page[UPPER_OFFSET + 1]]);
    if upper == 0 && page.iter().all(|&b| b == 0) {
        return false;
    }
    if page_lsn(page) >= backup_start_lsn {
        return false;
    }
    let stored = u16::from_ne_bytes([page[CHECKSUM_OFFSET], page[CHECKSUM_OFFSET + 1]]);
    stored != page_checksum(page, blkno)
}

/// Reads into `buf` from `offset` until it is full or the file ends; the bytes read.
fn read_at_most(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `pd_lsn`: two 32-bit halves, high first.
fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_ne_bytes(page[0..4].try_into().expect("4 bytes"));
    let lo = u32::from_ne_bytes(page[4..8].try_into().expect("4 bytes"));
    (u64::from(hi) << 32) | u64::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_told_apart() {
        for yes in [
            "base/5/16384",
            "base/5/16384.1",
            "base/5/16384_fsm",
            "base/5/16384_vm",
            "base/5/16384_init",
            "global/1262",
            "pg_tblspc/16390/PG_15_202209061/5/16391.3",
        ] {
            assert!(is_relation_file(yes), "{yes}");
        }
        for no in [
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "global/pg_control",
            "global/pg_filenode.map",
            "pg_xact/0000",
            "base/5/16384_foo",
            "postgresql.conf",
        ] {
            assert!(!is_relation_file(no), "{no}");
        }
        assert_eq!(segment_of("base/5/16384.7"), 7);
        assert_eq!(segment_of("base/5/16384"), 0);
    }

    #[test]
    fn a_stored_checksum_changes_nothing_and_any_other_byte_does() {
        let mut page = vec![0u8; PAGE];
        for (i, b) in page.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let sum = page_checksum(&page, 3);
        page[CHECKSUM_OFFSET] ^= 0xFF;
        assert_eq!(page_checksum(&page, 3), sum);
        page[4000] ^= 1;
        assert_ne!(page_checksum(&page, 3), sum);
        assert_ne!(page_checksum(&page, 4), page_checksum(&page, 3));
    }
}
