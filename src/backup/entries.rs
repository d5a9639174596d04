//! The entries of the files a backup stored, gathered as the copy completes them: kept on
//! disk past a run of [`RUN_LEN`] (see `spill`), so that a backup of millions of files holds
//! no more of them in memory than one of a few thousand; read back sorted by path to check
//! the objects and write the manifest. The figures of the manifest and of the summary are
//! counted on the way in.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

use super::manifest::{validate_file, FileEntry, InvalidManifest, ManifestOf};
use super::summary::block_list;
use crate::spill::{Sorted, Spill};

/// Entries held in memory at most (a few hundred bytes each): about 3 MB. The tests' build
/// (with failpoints) holds 8, so that each backup they take writes runs to disk and merges
/// them (more than `spill`'s merge width of them, for a cluster of a thousand files).
pub const RUN_LEN: usize = if cfg!(feature = "failpoints") {
    8
} else {
    8192
};

/// What the entries of one backup add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Files in the backup.
    pub files: u64,
    /// Files whose content this backup stored (rather than referenced from its parent).
    pub copied: u64,
    /// Sum of the files' sizes.
    pub size: u64,
    /// Stored size of the objects this backup wrote itself.
    pub stored_size: u64,
    /// Bytes of the files' content in those objects.
    pub read_size: u64,
    /// The backups whose objects hold the content: this one and those of its chain it uses.
    pub holders: BTreeSet<String>,
    /// Files with data page checksum failures, and their blocks: `base/5/16384 (block 7)`.
    pub damaged: Vec<String>,
}

/// Entries being gathered for backup `id`.
pub struct Entries {
    id: String,
    spill: Spill<FileEntry>,
    tally: Tally,
}

fn by_path(a: &FileEntry, b: &FileEntry) -> std::cmp::Ordering {
    a.path.cmp(&b.path)
}

impl Entries {
    /// None yet, of backup `id`.
    pub fn new(id: &str) -> Entries {
        Entries {
            id: id.to_owned(),
            spill: Spill::new(by_path, RUN_LEN),
            tally: Tally::default(),
        }
    }

    /// Adds the entry of one file.
    pub async fn push(&mut self, entry: FileEntry) -> Result<()> {
        self.count(&entry);
        self.spill
            .push(entry)
            .await
            .context("set aside the list of stored files (in TMPDIR)")
    }

    fn count(&mut self, entry: &FileEntry) {
        let tally = &mut self.tally;
        tally.files += 1;
        tally.size += entry.size;
        if entry.stored_in == self.id {
            tally.copied += 1;
        }
        for object in entry.objects() {
            if object.stored_in == self.id {
                tally.stored_size += object.stored_size;
                tally.read_size += object.len;
            }
            if !tally.holders.contains(object.stored_in) {
                tally.holders.insert(object.stored_in.to_owned());
            }
        }
        if !entry.bad_blocks.is_empty() {
            tally.damaged.push(format!(
                "{} ({})",
                entry.path,
                block_list(&entry.bad_blocks)
            ));
        }
    }

    /// The entries sorted by path, and what they add up to.
    pub async fn finish(self) -> Result<(Sorted<FileEntry>, Tally)> {
        let sorted = self
            .spill
            .finish()
            .await
            .context("sort the list of stored files")?;
        let mut tally = self.tally;
        tally.damaged.sort();
        Ok((sorted, tally))
    }
}

/// A manifest's list of files set aside as it is parsed, sorted by path: an earlier backup's
/// manifest of any size is read without holding its files.
#[derive(Clone)]
pub struct SpilledFiles {
    pub sorted: Sorted<FileEntry>,
    /// The first entry [`validate_file`] refused, as it was read (its `backup` is filled in
    /// by the reader, who knows the id).
    pub first_invalid: Option<InvalidManifest>,
}

/// A manifest read with its files set aside.
pub type SpilledManifest = ManifestOf<SpilledFiles>;

impl std::fmt::Debug for SpilledFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} files set aside", self.sorted.len())
    }
}

impl<'de> Deserialize<'de> for SpilledFiles {
    /// Blocking: runs spill to disk (manifests are parsed on a thread of their own).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Files;
        impl<'de> Visitor<'de> for Files {
            type Value = SpilledFiles;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of files")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SpilledFiles, A::Error> {
                let mut spill = Spill::new(by_path, RUN_LEN);
                let mut first_invalid = None;
                while let Some(entry) = seq.next_element::<FileEntry>()? {
                    if first_invalid.is_none() {
                        first_invalid = validate_file("", &entry).err();
                    }
                    spill.push_blocking(entry).map_err(|e| {
                        A::Error::custom(format!("set aside the list of files (in TMPDIR): {e}"))
                    })?;
                }
                let sorted = spill.finish_blocking().map_err(A::Error::custom)?;
                Ok(SpilledFiles {
                    sorted,
                    first_invalid,
                })
            }
        }
        deserializer.deserialize_seq(Files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{InBundle, Part};

    fn entry(path: &str, stored_in: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 100,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o600,
            checksum: "00".into(),
            stored_size: 10,
            stored_in: stored_in.into(),
            bad_blocks: vec![],
            parts: vec![],
            bundle: None,
        }
    }

    #[test]
    fn a_list_of_files_is_read_set_aside_and_sorted() {
        let files: Vec<FileEntry> = (0..50)
            .rev()
            .map(|i| entry(&format!("base/1/{i:03}"), "20261130T035500F"))
            .collect();
        let json = serde_json::to_string(&files).unwrap();
        let read: SpilledFiles = serde_json::from_str(&json).unwrap();
        let back: Vec<FileEntry> = read.sorted.iter().unwrap().map(|e| e.unwrap()).collect();
        let mut sorted = files;
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(back, sorted);
        assert_eq!(read.first_invalid, None);
    }

    #[test]
    fn a_tampered_entry_is_found_as_the_list_is_read() {
        let files = vec![
            entry("base/1/1", "20261130T035500F"),
            entry("../../etc/passwd", "20261130T035500F"),
            entry("base/1/2", "../wal"),
        ];
        let json = serde_json::to_string(&files).unwrap();
        let read: SpilledFiles = serde_json::from_str(&json).unwrap();
        let invalid = read.first_invalid.expect("refused");
        assert_eq!(invalid.entry, "../../etc/passwd");
        assert_eq!(invalid.what, "a file");
    }

    #[tokio::test]
    async fn entries_come_back_by_path_with_their_figures() {
        let (full, incr) = ("20261130T035500F", "20261130T045500I");
        let mut entries = Entries::new(incr);
        let mut bundled = entry("base/1/2", incr);
        bundled.bundle = Some(InBundle {
            bundle: 0,
            offset: 0,
            stored_len: 10,
        });
        bundled.bad_blocks = vec![3, 7];
        let mut changed = entry("base/1/1", incr);
        changed.checksum = String::new();
        changed.parts = vec![
            Part {
                ranges: vec![[0, 100]],
                checksum: "01".into(),
                stored_size: 40,
                stored_in: full.into(),
                whole_object: true,
                bundle: None,
            },
            Part {
                ranges: vec![[8, 4]],
                checksum: "02".into(),
                stored_size: 3,
                stored_in: incr.into(),
                whole_object: false,
                bundle: None,
            },
        ];
        for e in [entry("global/1262", full), bundled, changed] {
            entries.push(e).await.unwrap();
        }
        let (sorted, tally) = entries.finish().await.unwrap();
        let paths: Vec<String> = sorted.iter().unwrap().map(|e| e.unwrap().path).collect();
        assert_eq!(paths, ["base/1/1", "base/1/2", "global/1262"]);
        assert_eq!(tally.files, 3);
        assert_eq!(tally.copied, 2);
        assert_eq!(tally.size, 300);
        assert_eq!(
            tally.stored_size,
            10 + 3,
            "the bundled file and the changed blocks"
        );
        assert_eq!(tally.read_size, 100 + 4);
        assert_eq!(
            tally.holders,
            BTreeSet::from([full.to_owned(), incr.to_owned()])
        );
        assert_eq!(tally.damaged, ["base/1/2 (blocks 3, 7)"]);
    }
}
