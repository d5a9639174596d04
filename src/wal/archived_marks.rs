//! Marks of files the daemon has archived before postgres asked, so `wal-push` can answer
//! with one `unlink` instead of a round trip to the daemon.
//!
//! On a busy machine a round trip costs several scheduler wake-ups (the daemon must run to
//! answer), which is most of a `wal-push` call once the upload itself is done ahead. The
//! daemon writes an empty file `pg_wal/pgward.archived/<name>` after the file was stored and
//! verified; the client removes it and exits 0. Removal is the acknowledgement, so a mark is
//! used once, and only a client that removed it may report success.
//!
//! The directory is emptied whenever the daemon starts: a mark only vouches for the
//! repository of the daemon that wrote it, and the configuration (the repository) may have
//! changed since. A mark that is lost only costs the round trip it would have saved.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Name of the marks directory inside `pg_wal`.
pub const MARKS_DIR: &str = crate::postgres::data_dir::ARCHIVED_MARKS_DIR;

/// The daemon's side: the marks directory of one cluster.
#[derive(Debug)]
pub struct ArchivedMarks {
    dir: PathBuf,
}

impl ArchivedMarks {
    /// Empties (creates) `pg_wal/pgward.archived`, owned by `owner` (the server's user, who
    /// runs `wal-push` and removes marks) when given. Blocking.
    pub fn reset(wal_dir: &Path, owner: Option<(u32, u32)>) -> io::Result<ArchivedMarks> {
        let dir = wal_dir.join(MARKS_DIR);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir(&dir)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(ArchivedMarks { dir })
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

/// The client's side: takes the mark of the WAL file at `wal_file` (`%p`, in `pg_wal`).
/// `true` means the daemon archived it and this caller consumed the mark.
pub fn take_mark(wal_file: &Path) -> bool {
    let (Some(dir), Some(name)) = (wal_file.parent(), wal_file.file_name()) else {
        return false;
    };
    fs::remove_file(dir.join(MARKS_DIR).join(name)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_taken_once_and_a_restart_forgets_marks() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path();
        let marks = ArchivedMarks::reset(wal, None).unwrap();
        let segment = wal.join("000000010000000000000003");
        assert!(!take_mark(&segment));
        marks.mark("000000010000000000000003");
        assert!(marks.is_marked("000000010000000000000003"));
        assert!(take_mark(&segment));
        assert!(!take_mark(&segment));

        marks.mark("000000010000000000000004");
        let marks = ArchivedMarks::reset(wal, None).unwrap();
        assert!(!take_mark(&wal.join("000000010000000000000004")));
        marks.mark("000000010000000000000005");
        marks.unmark("000000010000000000000005");
        assert!(!take_mark(&wal.join("000000010000000000000005")));
    }
}
