//! Getting a data directory ready for a restore without harming what is in it: a directory a
//! postmaster runs on is refused (whatever the flags), so is one that holds anything unless
//! `--force` or `--delta` says what to do with it; the marker that says a restore is under way
//! is written before anything is removed, and stays while the directory is emptied (`--force`)
//! or cleared of what the backup does not hold (`--delta`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{location_of, write_file, RestoreOptions};
use crate::backup::entries::SpilledManifest;
use crate::postgres::bootstrap::INCOMPLETE_MARKER;
use crate::postgres::data_dir::{Marker, Unfinished};

/// What to do about a data directory that is not empty.
pub(super) const DATA_DIR_HINT: &str = "HINT: restore into an empty directory, or pass --delta to \
                                        restore over it (files that match stay) or --force to \
                                        replace its content";

/// Before anything is written into `data_dir`: refused when a postmaster runs on it, or when
/// it holds anything and neither `--force` nor `--delta` was given (saying so when it holds
/// an interrupted restore). Made (mode 0700) when missing.
pub(super) async fn check_data_dir(data_dir: &Path, options: &RestoreOptions) -> Result<()> {
    if let Some(running) = crate::postgres::postmaster::running(data_dir).await? {
        bail!(
            "postgres runs on data directory {} ({running}); restoring over it would destroy \
             it, so nothing was changed\nHINT: stop that server (its `pgward run`, or its \
             container) before restoring into its data directory, or restore elsewhere with \
             --data-dir",
            data_dir.display()
        );
    }
    let marker = crate::postgres::bootstrap::unfinished(data_dir)?;
    let told_what_to_do = options.force || options.delta;
    if !told_what_to_do && !is_empty(data_dir)? {
        if let Some(Marker {
            work: Unfinished::Restore | Unfinished::FromBackup,
            backup,
        }) = marker
        {
            bail!(
                "{} holds a restore (of backup {}) that did not complete\nHINT: pass --delta to \
                 finish it (the files already restored are kept), or --force to start over",
                data_dir.display(),
                backup.as_deref().unwrap_or("unknown")
            );
        }
        bail!(
            "{} is not empty; restoring would overwrite it\n{DATA_DIR_HINT}",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    private(data_dir)
}

/// Gives `dir` mode 0700, as postgres wants its data directory.
fn private(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("set the mode of {}", dir.display()))
}

/// Whether `dir` (which may not exist) holds nothing.
fn is_empty(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("read {}", dir.display())),
    }
}

/// A tablespace's location to restore into: made when missing, refused when it holds
/// anything (with `hint`, the `HINT:` line saying what to do); mode 0700.
pub(super) fn empty_or_refused(dir: &Path, hint: &str) -> Result<()> {
    if !is_empty(dir)? {
        bail!(
            "{} is not empty; restoring would overwrite it\n{hint}",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    private(dir)
}

/// Writes the marker that makes the directory refused by a start (or resumed, for
/// `postgres.init.from_backup`) until the restore is complete. Durable before it returns:
/// nothing is removed before it is on disk.
pub(super) fn write_marker(data_dir: &Path, marker: &Marker) -> Result<()> {
    write_file(&data_dir.join(INCOMPLETE_MARKER), marker.text().as_bytes())?;
    crate::failpoint!("restore-after-marker");
    Ok(())
}

/// With `--force`: everything in `data_dir` goes but the marker.
pub(super) fn empty(data_dir: &Path) -> Result<()> {
    for entry in
        std::fs::read_dir(data_dir).with_context(|| format!("read {}", data_dir.display()))?
    {
        let entry = entry.with_context(|| format!("read {}", data_dir.display()))?;
        if entry.file_name() == INCOMPLETE_MARKER {
            continue;
        }
        let path = entry.path();
        remove(&path, path.is_dir() && !path.is_symlink())?;
    }
    Ok(())
}

/// With `--delta`: whatever the backup does not hold goes (files and directories not in the
/// manifest, stale WAL, the old `postmaster.pid`, temp files of an interrupted restore); what
/// it holds stays, to be compared; so does the marker.
pub(super) fn clear_for_delta(
    data_dir: &Path,
    manifest: &SpilledManifest,
    options: &RestoreOptions,
) -> Result<()> {
    // The one list of a restore held whole: the paths of a delta restore's files.
    let mut files: std::collections::HashSet<String> = [INCOMPLETE_MARKER.to_owned()].into();
    for file in manifest
        .files
        .sorted
        .iter()
        .context("read back the backup's files")?
    {
        files.insert(file.context("read back the backup's files")?.path);
    }
    let dirs: std::collections::HashSet<&str> = manifest
        .directories
        .iter()
        .map(|d| d.path.as_str())
        .chain(["pg_tblspc"])
        .collect();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = data_dir.join(&rel);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let abs = entry.path();
            let kind = std::fs::symlink_metadata(&abs)
                .with_context(|| format!("stat {}", abs.display()))?
                .file_type();
            let keep = if kind.is_dir() {
                dirs.contains(path.as_str())
            } else if kind.is_symlink() {
                // Tablespace links are checked and recreated by the caller.
                rel == "pg_tblspc"
            } else {
                files.contains(path.as_str())
            };
            if keep && kind.is_dir() {
                pending.push(path);
            } else if keep && kind.is_symlink() {
                let target = manifest.tablespaces.iter().find(|t| {
                    t.oid.to_string() == abs.file_name().unwrap_or_default().to_string_lossy()
                });
                match target {
                    // Where the restore puts it (mapped or original), as `restore` checks too.
                    Some(t)
                        if std::fs::read_link(&abs)
                            .is_ok_and(|l| l == location_of(options, t.oid, &t.location)) =>
                    {
                        pending.push(path);
                    }
                    _ => remove(&abs, false)?,
                }
            } else if !keep {
                remove(&abs, kind.is_dir())?;
            }
        }
    }
    Ok(())
}

/// Removes a file (or a whole directory) of the data directory being replaced.
fn remove(path: &Path, dir: bool) -> Result<()> {
    let removed = if dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.with_context(|| format!("remove {}", path.display()))?;
    crate::failpoint!("restore-mid-delete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(data_dir: &Path) -> RestoreOptions {
        super::super::tests::options(data_dir)
    }

    #[tokio::test]
    async fn a_directory_in_use_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        let new = dir.path().join("new");
        check_data_dir(&new, &options(&new)).await.expect("created");
        assert!(new.is_dir());
        std::fs::write(dir.path().join("PG_VERSION"), "17\n").expect("write");
        assert_eq!(
            format!(
                "{:#}",
                check_data_dir(dir.path(), &options(dir.path()))
                    .await
                    .unwrap_err()
            ),
            format!(
                "{} is not empty; restoring would overwrite it\n\
                 HINT: restore into an empty directory, or pass --delta to restore over it \
                 (files that match stay) or --force to replace its content",
                dir.path().display()
            )
        );
        let mut forced = options(dir.path());
        forced.force = true;
        check_data_dir(dir.path(), &forced).await.expect("forced");
        let marker = Marker {
            work: Unfinished::Restore,
            backup: Some("20261130T035500F".into()),
        };
        write_marker(dir.path(), &marker).unwrap();
        std::fs::create_dir(dir.path().join("base")).unwrap();
        std::fs::write(dir.path().join("base/1"), "x").unwrap();
        empty(dir.path()).expect("emptied");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [INCOMPLETE_MARKER]);
    }

    #[tokio::test]
    async fn an_interrupted_restore_is_refused_without_delta_or_force_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let marker = Marker {
            work: Unfinished::Restore,
            backup: Some("20261130T035500F".into()),
        };
        write_marker(dir.path(), &marker).unwrap();
        let e = check_data_dir(dir.path(), &options(dir.path()))
            .await
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "{} holds a restore (of backup 20261130T035500F) that did not complete\n\
                 HINT: pass --delta to finish it (the files already restored are kept), or \
                 --force to start over",
                dir.path().display()
            )
        );
        let mut delta = options(dir.path());
        delta.delta = true;
        check_data_dir(dir.path(), &delta)
            .await
            .expect("finished with --delta");
    }
}
