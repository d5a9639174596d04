//! What a backup copies: a walk of the data directory and its tablespaces, with the files
//! postgres rebuilds (or that must not be restored) left out by `exclude`'s rules. The files
//! found are set aside (see `spill`) in the order the copy takes them, and read back as a
//! stream: a data directory of millions of files is never held in memory. Blocking: run
//! [`walk`] off the async runtime.

use std::cmp::{Ordering, Reverse};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::exclude::{rule, Rule};
use super::manifest::{DirEntry, FileEntry, Tablespace};
use crate::postgres::control_file::CONTROL_FILE_PATH;
use crate::spill::{Sorted, Spill};

/// A file to back up.
pub(super) struct Source {
    pub(super) path: String,
    pub(super) abs: PathBuf,
    pub(super) mode: u32,
    /// Size when walked, for ordering only (the copy records what it reads).
    pub(super) len: u64,
}

/// A file as the walk sets it aside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Found {
    path: String,
    mode: u32,
    len: u64,
    /// Small enough for a bundle.
    small: bool,
    /// Its entry in the parent backup, for an incremental.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    earlier: Option<FileEntry>,
}

fn by_path(a: &Found, b: &Found) -> Ordering {
    a.path.cmp(&b.path)
}

/// The order the copy takes files in: the small ones first (they fill bundles, the largest
/// objects), then the others largest first, so that the long uploads start early and the
/// tail of the backup is short.
fn copy_order(a: &Found, b: &Found) -> Ordering {
    (Reverse(a.small), Reverse(a.len), &a.path).cmp(&(Reverse(b.small), Reverse(b.len), &b.path))
}

/// Files held in memory by a walk at most (about a hundred bytes each); the tests' build
/// (with failpoints) holds 8, so that each backup they take sets files aside on disk.
const RUN_LEN: usize = if cfg!(feature = "failpoints") {
    8
} else {
    16384
};

/// What a walk of the data directory found.
pub(super) struct Walk {
    pub(super) dirs: Vec<DirEntry>,
    /// Every regular file but `pg_control`, in the order the copy takes them.
    pub(super) files: Sorted<Found>,
    /// `global/pg_control`, copied last.
    pub(super) control: Option<Source>,
    pub(super) tablespaces: Vec<Tablespace>,
    /// Bytes of every file.
    pub(super) bytes: u64,
    /// Bytes of the files small enough for a bundle.
    pub(super) small_bytes: u64,
}

/// What a walk gathers as it goes.
struct Gathered {
    dirs: Vec<DirEntry>,
    files: Spill<Found>,
    control: Option<Source>,
    tablespaces: Vec<Tablespace>,
    bytes: u64,
    small_bytes: u64,
}

/// Entries named in a refusal at most; the count of the rest follows.
const NAMED_AT_MOST: usize = 10;

/// Lists what to back up; files of at most `small` bytes (`None`: no file) go into bundles.
/// For an incremental, each file comes with its entry in `parent` (the parent backup's files,
/// by path), if any. Blocking.
///
/// Refuses (naming them) what a backup could not restore exactly, rather than leave it out of
/// a backup that would count as complete: symbolic links other than tablespaces and `pg_wal`
/// (which, as `pg_basebackup` does, is recorded as a directory), and names that are not
/// UTF-8 (manifest paths are UTF-8 text).
pub(super) fn walk(
    data_dir: &Path,
    small: Option<u64>,
    parent: Option<&Sorted<FileEntry>>,
) -> Result<Walk> {
    let mut unsupported = Vec::new();
    // Matched with the parent's files by path, then put in the copy's order.
    let order = match parent {
        Some(_) => by_path,
        None => copy_order,
    };
    let out = walk_all(data_dir, small, order, &mut unsupported)?;
    if unsupported.is_empty() {
        let files = out
            .files
            .finish_blocking()
            .context("sort the list of files to copy")?;
        let files = match parent {
            Some(parent) => with_earlier(&files, parent)?,
            None => files,
        };
        return Ok(Walk {
            dirs: out.dirs,
            files,
            control: out.control,
            tablespaces: out.tablespaces,
            bytes: out.bytes,
            small_bytes: out.small_bytes,
        });
    }
    let count = unsupported.len();
    let mut named: Vec<String> = unsupported.into_iter().take(NAMED_AT_MOST).collect();
    if count > NAMED_AT_MOST {
        named.push(format!("and {} more", count - NAMED_AT_MOST));
    }
    bail!(
        "the data directory {} holds what a backup cannot restore exactly: {}\nHINT: pgward \
         backs up regular files and directories with UTF-8 names, tablespaces and a symlinked \
         pg_wal; replace a symbolic link by what it points to (or move it out of the data \
         directory), and rename or remove files whose names are not UTF-8",
        data_dir.display(),
        named.join("; ")
    )
}

fn walk_all(
    data_dir: &Path,
    small: Option<u64>,
    order: crate::spill::Order<Found>,
    unsupported: &mut Vec<String>,
) -> Result<Gathered> {
    let mut out = Gathered {
        dirs: Vec::new(),
        files: Spill::new(order, RUN_LEN),
        control: None,
        tablespaces: Vec::new(),
        bytes: 0,
        small_bytes: 0,
    };
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = if rel.is_empty() {
            data_dir.to_owned()
        } else {
            data_dir.join(&rel)
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Dropped while the backup runs (a database, a temp directory): nothing to copy.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => continue,
            Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                unsupported.push(format!("{}: not a UTF-8 name", entry.path().display()));
                continue;
            };
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let abs = entry.path();
            // A tablespace is a symlink in pg_tblspc: remember where it points, walk it.
            let meta = if rel == "pg_tblspc" {
                let link = std::fs::symlink_metadata(&abs)
                    .with_context(|| format!("stat {}", abs.display()))?;
                if link.file_type().is_symlink() {
                    let location = std::fs::read_link(&abs)
                        .with_context(|| format!("read link {}", abs.display()))?;
                    out.tablespaces.push(Tablespace {
                        oid: name.parse().with_context(|| {
                            format!("{} is not a tablespace oid", abs.display())
                        })?,
                        location: location.to_string_lossy().into_owned(),
                    });
                }
                std::fs::metadata(&abs)
            } else if path == "pg_wal" {
                // Moved elsewhere with `initdb --waldir`: recorded as the directory it stands
                // for, whose content comes from the archive anyway (as `pg_basebackup` does).
                std::fs::metadata(&abs)
            } else {
                entry.metadata()
            };
            let meta = match meta {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("stat {}", abs.display())),
            };
            let mode = meta.permissions().mode() & 0o7777;
            match rule(&path, meta.is_dir()) {
                Rule::Skip => {}
                Rule::KeepEmpty => out.dirs.push(DirEntry { path, mode }),
                Rule::Include if meta.is_dir() => {
                    out.dirs.push(DirEntry {
                        path: path.clone(),
                        mode,
                    });
                    pending.push(path);
                }
                Rule::Include if meta.is_file() => {
                    let len = meta.len();
                    out.bytes += len;
                    if path == CONTROL_FILE_PATH {
                        out.control = Some(Source {
                            path,
                            abs,
                            mode,
                            len,
                        });
                        continue;
                    }
                    let small = small.is_some_and(|max| len <= max);
                    if small {
                        out.small_bytes += len;
                    }
                    out.files
                        .push_blocking(Found {
                            path,
                            mode,
                            len,
                            small,
                            earlier: None,
                        })
                        .context("set aside the list of files to copy (in TMPDIR)")?;
                }
                Rule::Include if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(&abs)
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|e| format!("unreadable: {e}"));
                    unsupported.push(format!("{}: a symbolic link (to {target})", abs.display()));
                }
                // Sockets, fifos: not data.
                Rule::Include => {
                    tracing::debug!("skipping {}: not a regular file", abs.display())
                }
            }
        }
    }
    out.dirs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// `files` (by path) each with its entry among `parent`'s (by path), in the copy's order.
fn with_earlier(files: &Sorted<Found>, parent: &Sorted<FileEntry>) -> Result<Sorted<Found>> {
    let mut out = Spill::new(copy_order, RUN_LEN);
    let mut earlier = parent
        .iter()
        .context("read back the parent backup's files")?
        .peekable();
    for found in files
        .iter()
        .context("read back the list of files to copy")?
    {
        let mut found = found.context("read back the list of files to copy")?;
        // Both in path order: the parent's files before this one are gone since.
        while let Some(next) = earlier.peek() {
            match next {
                Ok(entry) if entry.path < found.path => {
                    earlier.next();
                }
                Ok(entry) if entry.path == found.path => {
                    found.earlier = earlier.next().and_then(Result::ok);
                    break;
                }
                Ok(_) => break,
                Err(_) => {
                    let e = earlier
                        .next()
                        .and_then(Result::err)
                        .expect("peeked an error");
                    return Err(e).context("read back the parent backup's files");
                }
            }
        }
        out.push_blocking(found)
            .context("set aside the list of files to copy (in TMPDIR)")?;
    }
    out.finish_blocking()
        .context("sort the list of files to copy")
}

/// A file to back up, and its entry in the parent backup (for an incremental).
pub(super) type ToCopy = (Source, Option<FileEntry>);

/// Files read back ahead of the copy.
const SOURCES_AHEAD: usize = 256;

/// Files found by a walk of `data_dir`, read back in their order, as the copy's sources.
pub(super) fn sources(
    files: Sorted<Found>,
    data_dir: &Path,
) -> impl Stream<Item = Result<ToCopy>> + Send + 'static {
    let data_dir = data_dir.to_owned();
    files.stream(SOURCES_AHEAD).map(move |found| {
        let found = found.context("read back the list of files to copy")?;
        let source = Source {
            abs: data_dir.join(&found.path),
            path: found.path,
            mode: found.mode,
            len: found.len,
        };
        Ok((source, found.earlier))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn files_come_back_small_ones_first_then_largest_first_and_pg_control_aside() {
        let root = tempfile::tempdir().expect("temp dir");
        let data = root.path();
        std::fs::create_dir_all(data.join("base/1")).expect("base");
        std::fs::create_dir_all(data.join("global")).expect("global");
        for (name, len) in [("a", 10), ("b", 500), ("c", 50), ("d", 300), ("e", 100)] {
            std::fs::write(data.join("base/1").join(name), vec![0u8; len]).expect("file");
        }
        std::fs::write(data.join(CONTROL_FILE_PATH), vec![0u8; 8192]).expect("pg_control");
        let found = walk(data, Some(100), None).expect("walk");
        let order: Vec<String> = found
            .files
            .iter()
            .unwrap()
            .map(|f| f.unwrap().path)
            .collect();
        assert_eq!(
            order,
            ["base/1/e", "base/1/c", "base/1/a", "base/1/b", "base/1/d"]
        );
        assert_eq!(found.small_bytes, 160);
        assert_eq!(found.bytes, 960 + 8192);
        assert_eq!(found.control.expect("pg_control").path, CONTROL_FILE_PATH);
    }

    #[test]
    fn symlinks_and_non_utf8_names_are_refused_by_name_and_pg_wal_is_a_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        let data = root.path().join("data");
        let wal_elsewhere = root.path().join("wal");
        std::fs::create_dir_all(data.join("base/1")).expect("base");
        std::fs::create_dir(&wal_elsewhere).expect("wal dir");
        std::fs::write(data.join("PG_VERSION"), b"17\n").expect("file");
        std::fs::write(wal_elsewhere.join("000000010000000000000001"), b"w").expect("segment");
        std::os::unix::fs::symlink(&wal_elsewhere, data.join("pg_wal")).expect("pg_wal link");
        let found = walk(&data, None, None).expect("a symlinked pg_wal is fine");
        let dirs: Vec<&str> = found.dirs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(dirs, ["base", "base/1", "pg_wal"]);
        let files: Vec<String> = found
            .files
            .iter()
            .unwrap()
            .map(|f| f.unwrap().path)
            .collect();
        assert_eq!(files, ["PG_VERSION"]);

        std::os::unix::fs::symlink("/etc/hostname", data.join("base/1/conf")).expect("link");
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::fs::write(data.join(odd), b"x").expect("non-UTF-8 name");
        let Err(e) = walk(&data, None, None) else {
            panic!("a backup of what it cannot restore is refused")
        };
        let e = format!("{e:#}");
        assert!(
            e.contains(&format!(
                "{}: a symbolic link (to /etc/hostname)",
                data.join("base/1/conf").display()
            )),
            "{e}"
        );
        assert!(
            e.contains(&format!("{}/caf\u{fffd}: not a UTF-8 name", data.display())),
            "{e}"
        );
        assert!(e.contains("HINT: "), "{e}");
    }
}
