//! What a backup copies: a walk of the data directory and its tablespaces, with the files
//! postgres rebuilds (or that must not be restored) left out by `exclude`'s rules. Blocking:
//! run it off the async runtime.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::exclude::{rule, Rule};
use super::manifest::{DirEntry, Tablespace};

/// A file to back up.
pub(super) struct Source {
    pub(super) path: String,
    pub(super) abs: PathBuf,
    pub(super) mode: u32,
    /// Size when walked, for ordering only (the copy records what it reads).
    pub(super) len: u64,
}

/// What a walk of the data directory found.
#[derive(Default)]
pub(super) struct Walk {
    pub(super) dirs: Vec<DirEntry>,
    pub(super) files: Vec<Source>,
    pub(super) tablespaces: Vec<Tablespace>,
    pub(super) bytes: u64,
}

/// Entries named in a refusal at most; the count of the rest follows.
const NAMED_AT_MOST: usize = 10;

/// Lists what to back up. Blocking.
///
/// Refuses (naming them) what a backup could not restore exactly, rather than leave it out of
/// a backup that would count as complete: symbolic links other than tablespaces and `pg_wal`
/// (which, as `pg_basebackup` does, is recorded as a directory), and names that are not
/// UTF-8 (manifest paths are UTF-8 text).
pub(super) fn walk(data_dir: &Path) -> Result<Walk> {
    let mut unsupported = Vec::new();
    let out = walk_all(data_dir, &mut unsupported)?;
    if unsupported.is_empty() {
        return Ok(out);
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

fn walk_all(data_dir: &Path, unsupported: &mut Vec<String>) -> Result<Walk> {
    let mut out = Walk::default();
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
                    out.bytes += meta.len();
                    out.files.push(Source {
                        path,
                        abs,
                        mode,
                        len: meta.len(),
                    });
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
    // Largest first: the long uploads start early and the tail of the backup is short.
    out.files.sort_by_key(|s| std::cmp::Reverse(s.len));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

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
        let found = walk(&data).expect("a symlinked pg_wal is fine");
        let dirs: Vec<&str> = found.dirs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(dirs, ["base", "base/1", "pg_wal"]);
        let files: Vec<&str> = found.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(files, ["PG_VERSION"]);

        std::os::unix::fs::symlink("/etc/hostname", data.join("base/1/conf")).expect("link");
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::fs::write(data.join(odd), b"x").expect("non-UTF-8 name");
        let Err(e) = walk(&data) else {
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
