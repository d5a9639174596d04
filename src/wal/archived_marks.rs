//! Marks of files the daemon has archived before postgres asked, so archive_command can
//! answer without a round trip to the daemon.
//!
//! On a busy machine a round trip costs several scheduler wake-ups (the daemon must run to
//! answer), which is most of a `wal-push` call once the upload itself is done ahead. The
//! daemon writes an empty file `<marks>/<name>` after the file was stored and verified;
//! archive_command (`test -f <marks>/%f || pgward wal-push %p`) then exits 0 without starting
//! pgward at all.
//!
//! A mark makes postgres consider a file archived, so only the daemon may write one. When
//! pgward runs as root, the marks live in a directory of its own outside the data directory,
//! [`runtime_marks_dir`] (`/run/pgward/archived-<id>`, root's, mode 0755): the server's user
//! (and so every database superuser) can read it, for `test -f`, but cannot create, replace
//! or remove a mark there. When pgward runs as the server's user itself, they are one user,
//! and the marks stay in `pg_wal/pgward.archived`.
//!
//! The directory is emptied whenever the daemon starts: a mark vouches only for a file this
//! run archived (the configuration, the repository, may have changed since). The archiver
//! withdraws a mark once postgres has moved past its file, and when the file in `pg_wal` is
//! no longer the one it archived (see `wal::archiver`). A mark that is lost only costs the
//! round trip it would have saved.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the marks directory inside `pg_wal` (when pgward is not root).
pub const MARKS_DIR: &str = crate::postgres::data_dir::ARCHIVED_MARKS_DIR;

/// pgward's runtime directory when it runs as root: root's, readable by all.
pub const RUNTIME_DIR: &str = "/run/pgward";

/// Tells `wal-push` (run by postgres) where the daemon's marks are.
pub const MARKS_ENV: &str = "PGWARD_ARCHIVED_MARKS";

/// The marks directory of a root daemon for the cluster in `data_dir`: one per data
/// directory, so several clusters on a host never share marks.
pub fn runtime_marks_dir(data_dir: &Path) -> PathBuf {
    let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let hash = blake3::hash(data_dir.as_os_str().as_bytes()).to_hex();
    Path::new(RUNTIME_DIR).join(format!("archived-{}", &hash[..16]))
}

/// The daemon's side: the marks directory of one cluster.
#[derive(Debug)]
pub struct ArchivedMarks {
    dir: PathBuf,
}

impl ArchivedMarks {
    /// Empties (creates) the marks directory `dir`, mode 0755. With `runtime` (pgward is
    /// root), its parent is pgward's runtime directory: made if missing, and refused unless it
    /// is a directory of this user that nobody else can write. Blocking.
    pub fn reset(dir: &Path, runtime: bool) -> io::Result<ArchivedMarks> {
        if runtime {
            if let Some(parent) = dir.parent() {
                make_private_dir(parent)?;
            }
        }
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        Ok(ArchivedMarks {
            dir: dir.to_owned(),
        })
    }

    /// Marks `name` archived. Call only once it is stored and verified. Blocking.
    pub fn mark(&self, name: &str) {
        if let Err(e) = fs::File::create(self.dir.join(name)) {
            // Without the mark, the client asks the daemon, which answers all the same.
            tracing::debug!(file = name, "cannot write the archived mark: {e}");
        }
    }

    /// Removes the mark of `name`, if any: answered another way, or no longer pending.
    pub fn unmark(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(name));
    }

    /// Whether the mark of `name` is still there (postgres has not taken it).
    pub fn is_marked(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }
}

/// Makes `dir` (one level) if missing, mode 0755, and checks that it is this user's own
/// directory, not a symlink, writable by nobody else.
fn make_private_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory of uid {me} that only it can write (owner uid {}, mode \
             {:o}{})\nHINT: remove it; pgward makes it at start",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777,
            if meta.is_symlink() { ", a symlink" } else { "" }
        )));
    }
    Ok(())
}

/// The client's side: takes the mark of the WAL file at `wal_file` (`%p`) in `marks_dir`.
/// `true` means the daemon archived it: the mark was removed, or it stays in the daemon's own
/// directory for the daemon to withdraw (a client that cannot remove it cannot have forged
/// it either).
pub fn take_mark(marks_dir: &Path, wal_file: &Path) -> bool {
    let Some(name) = wal_file.file_name() else {
        return false;
    };
    let mark = marks_dir.join(name);
    match fs::remove_file(&mark) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            fs::symlink_metadata(&mark).is_ok_and(|m| m.is_file())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_taken_once_and_a_restart_forgets_marks() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("pg_wal");
        let marks_dir = wal.join(MARKS_DIR);
        fs::create_dir(&wal).unwrap();
        let marks = ArchivedMarks::reset(&marks_dir, false).unwrap();
        let segment = wal.join("000000010000000000000003");
        assert!(!take_mark(&marks_dir, &segment));
        marks.mark("000000010000000000000003");
        assert!(marks.is_marked("000000010000000000000003"));
        assert!(take_mark(&marks_dir, &segment));
        assert!(!take_mark(&marks_dir, &segment));

        marks.mark("000000010000000000000004");
        let marks = ArchivedMarks::reset(&marks_dir, false).unwrap();
        assert!(!take_mark(
            &marks_dir,
            &wal.join("000000010000000000000004")
        ));
        marks.mark("000000010000000000000005");
        marks.unmark("000000010000000000000005");
        assert!(!take_mark(
            &marks_dir,
            &wal.join("000000010000000000000005")
        ));
    }

    #[test]
    fn the_runtime_directory_is_private_and_one_per_data_directory() {
        let a = runtime_marks_dir(Path::new("/var/lib/postgresql/data"));
        let b = runtime_marks_dir(Path::new("/var/lib/postgresql/other"));
        assert!(a.starts_with(RUNTIME_DIR) && b.starts_with(RUNTIME_DIR));
        assert_ne!(a, b);
        assert_eq!(a, runtime_marks_dir(Path::new("/var/lib/postgresql/data")));
        assert_eq!(a.file_name().unwrap().len(), "archived-".len() + 16);

        let tmp = tempfile::tempdir().unwrap();
        let runtime = tmp.path().join("run");
        let marks = ArchivedMarks::reset(&runtime.join("archived-x"), true).unwrap();
        marks.mark("000000010000000000000003");
        for dir in [runtime.clone(), runtime.join("archived-x")] {
            assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o755);
        }
        // A runtime directory others can write is refused: a mark there could be forged.
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o777)).unwrap();
        let e = ArchivedMarks::reset(&runtime.join("archived-x"), true).unwrap_err();
        assert!(e.to_string().contains("that only it can write"), "{e}");
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&runtime, &link).unwrap();
        let e = ArchivedMarks::reset(&link.join("archived-x"), true).unwrap_err();
        assert!(e.to_string().contains("a symlink"), "{e}");
    }
}
