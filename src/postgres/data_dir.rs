//! What pgward keeps of its own inside a data directory, by name, in one place: whoever
//! writes one of these files and whoever must step around it (a backup leaves them out, a
//! restore checks the bootstrap marker) read the name here, so neither depends on the other.
//!
//! Names, and what the init-incomplete marker says, only: no I/O. Each name starts with
//! `pgward.` so that it cannot be mistaken for one of postgres's own files.

/// At the top of the data directory while a bootstrap (initdb, init scripts) or a restore is
/// under way, written before anything else is touched: a later start refuses a directory that
/// has it, or resumes the restore of `postgres.init.from_backup` (see [`Marker`]).
pub const INIT_INCOMPLETE_MARKER: &str = "pgward.init-incomplete";

/// At the top of the data directory: the scheduler's memory of its jobs' past runs.
pub const JOBS_STATE_FILE: &str = "pgward.jobs.json";

/// Inside `pg_wal`: marks of the WAL files the daemon archived before postgres asked, when
/// pgward runs as the server's user (as root it keeps them out of that user's reach).
pub const ARCHIVED_MARKS_DIR: &str = "pgward.archived";

/// pgward's files at the top of the data directory, which are not the cluster's: a backup
/// leaves them out. (The marks directory is inside `pg_wal`, which a backup leaves out whole.)
pub const TOP_FILES: &[&str] = &[INIT_INCOMPLETE_MARKER, JOBS_STATE_FILE];

/// What was under way when an [`INIT_INCOMPLETE_MARKER`] was left: who resumes it, or what
/// to do about it, depends on that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    /// initdb and the init scripts, at a first start.
    Initdb,
    /// A restore at a first start (`postgres.init.from_backup`): the next start resumes it.
    FromBackup,
    /// `pgward restore`: running it again with `--delta` finishes it.
    Restore,
}

/// The content of an [`INIT_INCOMPLETE_MARKER`]: what is under way and, for a restore, of
/// which backup. Written before the directory is touched, removed when the work is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub work: Unfinished,
    pub backup: Option<String>,
}

impl Marker {
    const INITDB: &'static str = "initialization under way";
    const FROM_BACKUP: &'static str = "restore under way (postgres.init.from_backup)";
    const RESTORE: &'static str = "restore under way (pgward restore)";
    const BACKUP: &'static str = "backup ";

    /// The file's text: the work on the first line, then `backup <id>` when there is one.
    pub fn text(&self) -> String {
        let first = match self.work {
            Unfinished::Initdb => Self::INITDB,
            Unfinished::FromBackup => Self::FROM_BACKUP,
            Unfinished::Restore => Self::RESTORE,
        };
        match &self.backup {
            Some(id) => format!("{first}\n{}{id}\n", Self::BACKUP),
            None => format!("{first}\n"),
        }
    }

    /// Reads a marker's text. Older versions wrote `restore under way` for both kinds of
    /// restore: that one is a `pgward restore`'s (finished by hand, never resumed on its
    /// own); anything else unknown is an initialization.
    pub fn parse(text: &str) -> Marker {
        let mut lines = text.lines();
        let work = match lines.next().unwrap_or("").trim() {
            Self::FROM_BACKUP => Unfinished::FromBackup,
            first if first.starts_with("restore under way") => Unfinished::Restore,
            _ => Unfinished::Initdb,
        };
        let backup = lines
            .find_map(|l| l.strip_prefix(Self::BACKUP))
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty());
        Marker { work, backup }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_says_what_was_under_way_and_reads_back() {
        for work in [
            Unfinished::Initdb,
            Unfinished::FromBackup,
            Unfinished::Restore,
        ] {
            for backup in [None, Some("20261130T035500F".to_owned())] {
                let marker = Marker { work, backup };
                assert_eq!(Marker::parse(&marker.text()), marker);
            }
        }
        let marker = Marker {
            work: Unfinished::FromBackup,
            backup: Some("20261130T035500F".into()),
        };
        assert_eq!(
            marker.text(),
            "restore under way (postgres.init.from_backup)\nbackup 20261130T035500F\n"
        );
        // What older versions wrote.
        assert_eq!(
            Marker::parse("restore under way\n").work,
            Unfinished::Restore
        );
        assert_eq!(
            Marker::parse("initialization under way\n").work,
            Unfinished::Initdb
        );
        assert_eq!(Marker::parse("").work, Unfinished::Initdb);
    }
}
