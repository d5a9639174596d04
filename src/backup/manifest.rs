//! The manifest of one backup: what it holds and where in the WAL it starts and stops.
//!
//! A backup lives under `backups/<id>/` in the repository: one object per file of the data
//! directory (`data/<path>`), `backup_label` and `tablespace_map` as `pg_backup_stop` returned
//! them, and `manifest.json`, written last. A backup without a manifest is not a backup: it
//! was interrupted, and no listing or restore treats it as one.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::layout::{backup_prefix, BackupId};

/// Manifest format this pgward writes and the newest it reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    Full,
    Incremental,
}

impl BackupKind {
    /// Its name, as the manifest and `--json` outputs spell it (`full`, `incremental`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        }
    }

    /// The letter that ends a backup id (`F`/`I`).
    fn letter(self) -> char {
        match self {
            BackupKind::Full => 'F',
            BackupKind::Incremental => 'I',
        }
    }
}

/// One regular file of the data directory (or of a tablespace, under `pg_tblspc/<oid>/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory, `/`-separated.
    pub path: String,
    /// Bytes read (a file may change while an online backup reads it; WAL replay fixes that).
    pub size: u64,
    /// Modification time when read, seconds since the epoch, and its nanoseconds: an
    /// incremental backup compares both.
    pub mtime: i64,
    #[serde(default)]
    pub mtime_nsec: i64,
    /// Unix permission bits.
    pub mode: u32,
    /// BLAKE3 of the content, lowercase hex; empty for a file stored in `parts`.
    #[serde(default)]
    pub checksum: String,
    /// Size of the stored object (of the parts stored in `stored_in`, for a parted file).
    pub stored_size: u64,
    /// The backup whose objects hold the content: this one, or for an unchanged file of an
    /// incremental backup, an earlier one of its chain. For a parted file, the backup that
    /// stored its newest part.
    pub stored_in: String,
    /// Blocks whose data page checksum did not match when the file was read (clusters with
    /// data checksums only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_blocks: Vec<u32>,
    /// A file stored as several objects: a large file cut into slices stored in parallel,
    /// and for a relation changed since the parent backup, the parent's parts followed by
    /// one part with the changed blocks. Restored in order, a later part overwriting what
    /// it overlaps; the file is then cut to `size`. Empty: one object holds the whole file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

/// One object holding byte ranges of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// `[offset, length]` pairs, ascending and disjoint: the object's content is these
    /// ranges of the file, concatenated. Never empty.
    pub ranges: Vec<[u64; 2]>,
    /// BLAKE3 of the content, lowercase hex.
    pub checksum: String,
    pub stored_size: u64,
    /// The backup that stored the object.
    pub stored_in: String,
    /// The object is the one that backup stored for the whole file (its key has no
    /// `@offset`): the first part of a file whose changed blocks a later backup stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole_object: bool,
}

impl Part {
    /// Bytes of the file the part holds.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r[1]).sum()
    }

    /// Where the object is: beside a whole file's, named by the first byte it holds.
    pub fn key(&self, path: &str) -> String {
        let whole = file_key(&self.stored_in, path);
        if self.whole_object {
            return whole;
        }
        let first = self.ranges.first().map_or(0, |r| r[0]);
        format!("{whole}@{first}")
    }

    /// The ranges as `(offset, length)`.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|r| (r[0], r[1])).collect()
    }

    /// Whether the two parts hold a byte in common.
    pub fn overlaps(&self, other: &Part) -> bool {
        let (mut a, mut b) = (
            self.ranges.iter().peekable(),
            other.ranges.iter().peekable(),
        );
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            if x[0] < y[0] + y[1] && y[0] < x[0] + x[1] {
                return true;
            }
            if x[0] + x[1] <= y[0] + y[1] {
                a.next();
            } else {
                b.next();
            }
        }
        false
    }
}

/// One object a file of a backup needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef<'a> {
    pub key: String,
    /// BLAKE3 of its content, lowercase hex.
    pub checksum: &'a str,
    /// Bytes of content.
    pub len: u64,
    pub stored_size: u64,
    pub stored_in: &'a str,
}

/// A directory to recreate at restore (excluded directories are kept, empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub path: String,
    pub mode: u32,
}

/// A tablespace: `pg_tblspc/<oid>` is a symlink to `location`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub location: String,
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    pub kind: BackupKind,
    /// The backup this incremental one builds on.
    pub parent: Option<String>,
    pub pg_major: u32,
    /// As a string, like `repo.json`: above 2^53.
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// First and last WAL segment the backup needs.
    pub start_wal: String,
    pub stop_wal: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// Whether the cluster has data checksums.
    pub data_checksums: bool,
    pub tablespaces: Vec<Tablespace>,
    pub directories: Vec<DirEntry>,
    pub files: Vec<FileEntry>,
    /// `--annotate key=value`.
    pub annotations: BTreeMap<String, String>,
    /// `--keep`: never expired.
    pub keep: bool,
    /// Sum of `files[].size`.
    pub size: u64,
    /// Sum of the stored sizes of the objects this backup wrote itself.
    pub stored_size: u64,
    /// Bytes this backup read from the data directory (the content of those objects).
    #[serde(default)]
    pub read_size: u64,
    /// `pgward <version>` that took it.
    pub created_by: String,
}

impl FileEntry {
    /// Whether `self` (from an earlier backup that started at `taken_at`) still describes a
    /// file of `size` bytes modified at `mtime`.`mtime_nsec`: then its stored object can serve
    /// a later backup without reading the file.
    ///
    /// File times come from a coarse clock (a few milliseconds on Linux), so a write in the
    /// same tick as the earlier backup's read would leave them unchanged: a file modified less
    /// than [`UNSTABLE_WINDOW_SECS`] before that backup started, or after, is never trusted
    /// and is copied again.
    pub fn unchanged(
        &self,
        size: u64,
        mtime: i64,
        mtime_nsec: i64,
        taken_at: DateTime<Utc>,
    ) -> bool {
        let stable = self.mtime < taken_at.timestamp() - UNSTABLE_WINDOW_SECS;
        stable && self.size == size && self.mtime == mtime && self.mtime_nsec == mtime_nsec
    }
}

impl FileEntry {
    /// The objects holding the file: one, or its parts.
    pub fn objects(&self) -> Vec<ObjectRef<'_>> {
        if self.parts.is_empty() {
            return vec![ObjectRef {
                key: file_key(&self.stored_in, &self.path),
                checksum: &self.checksum,
                len: self.size,
                stored_size: self.stored_size,
                stored_in: &self.stored_in,
            }];
        }
        self.parts
            .iter()
            .map(|p| ObjectRef {
                key: p.key(&self.path),
                checksum: &p.checksum,
                len: p.bytes(),
                stored_size: p.stored_size,
                stored_in: &p.stored_in,
            })
            .collect()
    }

    /// For each part, the round it is restored in: after every earlier part it overlaps
    /// (parts of one round are disjoint and may be written at once).
    pub fn part_rounds(&self) -> Vec<usize> {
        let mut rounds: Vec<usize> = Vec::with_capacity(self.parts.len());
        for (i, part) in self.parts.iter().enumerate() {
            let round = self.parts[..i]
                .iter()
                .zip(&rounds)
                .filter(|(earlier, _)| earlier.overlaps(part))
                .map(|(_, r)| r + 1)
                .max()
                .unwrap_or(0);
            rounds.push(round);
        }
        rounds
    }
}

/// See [`FileEntry::unchanged`].
pub const UNSTABLE_WINDOW_SECS: i64 = 2;

/// A backup id for `kind` started at `at`: `20261130T035500F`. Ids sort by start time.
pub fn backup_id(at: DateTime<Utc>, kind: BackupKind) -> String {
    format!("{}{}", at.format("%Y%m%dT%H%M%S"), kind.letter())
}

/// Checks that `id` has the shape [`backup_id`] makes (it becomes part of object keys); the
/// rule is [`BackupId`]'s.
pub fn check_backup_id(id: &str) -> Result<()> {
    BackupId::parse(id)?;
    Ok(())
}

/// Key of a backup's manifest.
pub fn manifest_key(id: &str) -> String {
    format!("{}/manifest.json", backup_prefix(id))
}

/// Key of the object holding the file at `path` (relative to the data directory).
pub fn file_key(id: &str, path: &str) -> String {
    format!("{}/data/{path}", backup_prefix(id))
}

/// Key of the backup label or tablespace map returned by `pg_backup_stop`.
pub fn label_key(id: &str, name: &str) -> String {
    format!("{}/{name}", backup_prefix(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time_and_are_checked() {
        let at = DateTime::parse_from_rfc3339("2026-11-30T03:55:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let full = backup_id(at, BackupKind::Full);
        assert_eq!(full, "20261130T035500F");
        check_backup_id(&full).unwrap();
        check_backup_id("20261130T035501I").unwrap();
        assert!(full.as_str() < "20261130T035501I");
        for bad in [
            "",
            "latest",
            "20261130T035500X",
            "20261130-035500F",
            "../../etc/passwd",
        ] {
            assert!(check_backup_id(bad).is_err(), "{bad}");
        }
        assert_eq!(
            file_key(&full, "base/1/1259"),
            "backups/20261130T035500F/data/base/1/1259"
        );
        assert_eq!(
            manifest_key(&full),
            "backups/20261130T035500F/manifest.json"
        );
    }

    #[test]
    fn a_kind_reads_as_the_manifest_spells_it() {
        for kind in [BackupKind::Full, BackupKind::Incremental] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn only_files_settled_before_the_earlier_backup_are_trusted_unchanged() {
        let taken_at = DateTime::parse_from_rfc3339("2026-11-30T03:55:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let entry = |mtime: i64| FileEntry {
            path: "base/1/1259".into(),
            size: 8192,
            mtime,
            mtime_nsec: 5,
            mode: 0o600,
            checksum: "00".into(),
            stored_size: 100,
            stored_in: "20261130T035500F".into(),
            bad_blocks: vec![],
            parts: vec![],
        };
        let old = taken_at.timestamp() - 60;
        assert!(entry(old).unchanged(8192, old, 5, taken_at));
        assert!(!entry(old).unchanged(16384, old, 5, taken_at));
        assert!(!entry(old).unchanged(8192, old, 6, taken_at));
        assert!(!entry(old).unchanged(8192, old + 1, 5, taken_at));
        // Written just before (or while) the earlier backup ran: copied again.
        let recent = taken_at.timestamp() - 1;
        assert!(!entry(recent).unchanged(8192, recent, 5, taken_at));
    }

    fn part(ranges: &[[u64; 2]], stored_in: &str) -> Part {
        Part {
            ranges: ranges.to_vec(),
            checksum: "00".into(),
            stored_size: 1,
            stored_in: stored_in.into(),
            whole_object: false,
        }
    }

    #[test]
    fn parts_are_restored_in_rounds_of_disjoint_parts() {
        let full = "20261130T035500F";
        let incr = "20261130T045500I";
        let entry = FileEntry {
            path: "base/5/16384".into(),
            size: 300,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o600,
            checksum: String::new(),
            stored_size: 3,
            stored_in: incr.into(),
            bad_blocks: vec![],
            parts: vec![
                part(&[[0, 100]], full),
                part(&[[100, 100]], full),
                part(&[[200, 100]], full),
                // Changed blocks: over the first and the third slice.
                part(&[[10, 5], [250, 10]], incr),
                // Over the changed blocks again, and the untouched second slice.
                part(&[[12, 1]], incr),
                part(&[[150, 1]], incr),
            ],
        };
        assert_eq!(entry.part_rounds(), vec![0, 0, 0, 1, 2, 1]);
        assert!(!entry.parts[0].overlaps(&entry.parts[1]));
        assert!(entry.parts[3].overlaps(&entry.parts[2]));
        let keys: Vec<String> = entry.objects().into_iter().map(|o| o.key).collect();
        assert_eq!(keys[0], format!("backups/{full}/data/base/5/16384@0"));
        assert_eq!(keys[3], format!("backups/{incr}/data/base/5/16384@10"));
        assert_eq!(entry.objects()[3].len, 15);
    }
}
