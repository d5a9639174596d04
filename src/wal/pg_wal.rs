//! The cluster's `pg_wal` as the daemon reads and writes it for its clients.
//!
//! The daemon runs as root; its WAL clients (`wal-push`, `wal-fetch`) run as the server's OS
//! user, and so can every database superuser (`COPY ... TO PROGRAM`). A path such a client
//! sends is therefore untrusted: the daemon reads only WAL files directly inside the
//! cluster's `pg_wal`, regular files of the server's user opened without following a
//! symlink, and writes only directly inside that `pg_wal`, through a temp file it created
//! and a rename there, never through a symlink. Root and pgward's own user may name any
//! path ([`Scope::Anywhere`]): the daemon can do nothing for them they cannot do themselves.
//!
//! Every name is resolved in a directory held open ([`Dir`]), so no check can be undone by
//! a swap between the check and the use.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::fsutil::Dir;
use crate::postgres::wal::WalFileName;

/// Where a client may have the daemon read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Root or pgward's own user: any path (still never a symlink in place of the file).
    Anywhere,
    /// Anyone else (the server's user): directly inside the cluster's `pg_wal`.
    PgWal,
}

/// Why the daemon will not touch a path for a client: said to the client, and logged with
/// its uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Where the server writes what postgres names with `%p` in its restore_command.
pub const RECOVERY_FILES: &[&str] = &["RECOVERYXLOG", "RECOVERYHISTORY"];

/// The cluster's `pg_wal` and who must own what is in it.
#[derive(Debug, Clone)]
pub struct PgWal {
    path: PathBuf,
    /// The server's OS user (uid, gid) when pgward is root: owns `pg_wal`, its WAL files,
    /// and every file the daemon puts there. `None`: everything is pgward's own user's.
    owner: Option<(u32, u32)>,
}

/// The identity of one file's content as it stood when opened: a file replaced (another
/// inode) or rewritten (another size or time) is another file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// A WAL file opened for archiving: everything is read from this descriptor, never from its
/// path again.
#[derive(Debug)]
pub struct WalFile {
    /// Its name (`000000010000000000000003`, `00000002.history`, ...).
    pub name: String,
    pub kind: WalFileName,
    pub file: fs::File,
    pub id: FileId,
    /// The path it was opened by, for messages.
    pub path: PathBuf,
}

impl WalFile {
    /// Opens the WAL file at `path` for this process's own use (the standalone `wal-push`):
    /// a WAL file name, a regular file, not through a symlink.
    pub fn open(path: &Path) -> Result<WalFile, Refused> {
        let (dir, name) = split(path)?;
        let kind = wal_name(path, name)?;
        let dir = Dir::open(dir).map_err(|e| cannot_open(dir, &e))?;
        let (file, meta) = open_regular(&dir, name, path)?;
        Ok(WalFile {
            name: name.to_owned(),
            kind,
            file,
            id: FileId::of(&meta),
            path: path.to_owned(),
        })
    }
}

/// Where a fetched file goes: a name in a directory held open.
#[derive(Debug)]
pub struct Destination {
    pub dir: Dir,
    pub name: String,
    /// Given to the server's user once written (a file in the cluster's `pg_wal`).
    pub owner: Option<(u32, u32)>,
    /// The directory is the cluster's `pg_wal` (the spool is on its filesystem).
    pub in_pg_wal: bool,
    /// The path asked for, for messages.
    pub path: PathBuf,
}

impl PgWal {
    /// `path` is `<data_dir>/pg_wal`; `owner` the server's user when pgward is root.
    pub fn new(path: PathBuf, owner: Option<(u32, u32)>) -> PgWal {
        PgWal { path, owner }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's user (uid, gid) when pgward is root.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// Opens `pg_wal` (following the symlink `initdb --waldir` makes), checking that it is a
    /// directory of the server's user, which can write it anyway.
    pub fn open(&self) -> Result<Dir, Refused> {
        let dir = Dir::open(&self.path).map_err(|e| cannot_open(&self.path, &e))?;
        let meta = dir.metadata().map_err(|e| cannot_open(&self.path, &e))?;
        if let Some((uid, _)) = self.owner {
            if meta.uid() != uid {
                return Err(Refused(format!(
                    "{} belongs to uid {}, not to the server's user (uid {uid})\nHINT: is the \
                     data directory's pg_wal what initdb made? pgward writes into no directory \
                     the server's user does not own",
                    self.path.display(),
                    meta.uid()
                )));
            }
        }
        Ok(dir)
    }

    /// Opens the WAL file at `path` for archiving on a client's behalf, within `scope`.
    pub fn open_wal_file(&self, path: &Path, scope: Scope) -> Result<WalFile, Refused> {
        if scope == Scope::Anywhere {
            return WalFile::open(path);
        }
        let (parent, name) = split(path)?;
        let kind = wal_name(path, name)?;
        let dir = self.open()?;
        self.check_is_pg_wal(&dir, parent, path)?;
        let (file, meta) = open_regular(&dir, name, path)?;
        if let Some((uid, _)) = self.owner {
            if meta.uid() != uid {
                return Err(Refused(format!(
                    "{} belongs to uid {}, not to the server's user (uid {uid}): not a WAL file \
                     postgres wrote",
                    path.display(),
                    meta.uid()
                )));
            }
        }
        Ok(WalFile {
            name: name.to_owned(),
            kind,
            file,
            id: FileId::of(&meta),
            path: path.to_owned(),
        })
    }

    /// The WAL file `name` in `pg_wal` (the look-ahead's own reads, named by postgres's
    /// `.ready` files, which the server's user can write).
    pub fn open_own(&self, name: &str) -> Result<WalFile, Refused> {
        self.open_wal_file(&self.path.join(name), Scope::PgWal)
    }

    /// The identity of the file `name` in `pg_wal` now, if it is a regular file.
    pub fn id_of(&self, name: &str) -> Option<FileId> {
        let dir = self.open().ok()?;
        let file = dir.open_file(name).ok()?;
        let meta = file.metadata().ok()?;
        meta.is_file().then(|| FileId::of(&meta))
    }

    /// Where to write a file fetched for a client that asked for `dest`, within `scope`:
    /// for [`Scope::PgWal`], a name directly inside `pg_wal` (`RECOVERYXLOG`,
    /// `RECOVERYHISTORY`, a WAL file name...) other than pgward's own (`pgward.*`).
    pub fn destination(&self, dest: &Path, scope: Scope) -> Result<Destination, Refused> {
        let (parent, name) = split(dest)?;
        if scope == Scope::PgWal && name.starts_with("pgward.") {
            return Err(Refused(format!(
                "{} is pgward's own, not a file postgres restores into",
                dest.display()
            )));
        }
        let wal = self.open();
        let in_pg_wal = wal
            .as_ref()
            .is_ok_and(|wal| self.check_is_pg_wal(wal, parent, dest).is_ok());
        let dir = match (scope, in_pg_wal) {
            (_, true) => wal?,
            (Scope::Anywhere, false) => Dir::open(parent).map_err(|e| cannot_open(parent, &e))?,
            (Scope::PgWal, false) => {
                let wal = wal?;
                return Err(self.check_is_pg_wal(&wal, parent, dest).unwrap_err());
            }
        };
        Ok(Destination {
            dir,
            name: name.to_owned(),
            owner: if in_pg_wal { self.owner } else { None },
            in_pg_wal,
            path: dest.to_owned(),
        })
    }

    /// `parent` (of the client's `path`) is the `pg_wal` held open in `wal`: the same
    /// directory, by device and inode.
    fn check_is_pg_wal(&self, wal: &Dir, parent: &Path, path: &Path) -> Result<(), Refused> {
        let outside = || {
            Refused(format!(
                "{} is not directly in the cluster's pg_wal ({})\nHINT: the server's user may \
                 have the daemon read and write WAL files in pg_wal only",
                path.display(),
                self.path.display()
            ))
        };
        let same = match (fs::metadata(parent), wal.metadata()) {
            (Ok(a), Ok(b)) => a.is_dir() && a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        same.then_some(()).ok_or_else(outside)
    }
}

/// A client's path as its directory and file name.
fn split(path: &Path) -> Result<(&Path, &str), Refused> {
    if !path.is_absolute() {
        return Err(Refused(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    let name = path.file_name().and_then(|n| n.to_str());
    match (path.parent(), name) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(Refused(format!("{} names no file", path.display()))),
    }
}

/// `name` as a WAL file name (segment, partial, timeline history, backup history).
fn wal_name(path: &Path, name: &str) -> Result<WalFileName, Refused> {
    WalFileName::parse(name).map_err(|_| {
        Refused(format!(
            "{} is not a WAL file (a segment, partial segment, timeline history or backup \
             history file name)",
            path.display()
        ))
    })
}

/// Opens `name` in `dir`: a regular file, not through a symlink.
fn open_regular(dir: &Dir, name: &str, path: &Path) -> Result<(fs::File, fs::Metadata), Refused> {
    let file = dir.open_file(name).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => Refused(format!(
            "{} is a symbolic link; WAL files are archived only as regular files",
            path.display()
        )),
        _ => cannot_open(path, &e),
    })?;
    let meta = file.metadata().map_err(|e| cannot_open(path, &e))?;
    if !meta.is_file() {
        return Err(Refused(format!("{} is not a regular file", path.display())));
    }
    Ok((file, meta))
}

fn cannot_open(path: &Path, e: &io::Error) -> Refused {
    Refused(format!("cannot open {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const SEGMENT: &str = "000000010000000000000003";

    fn cluster() -> (tempfile::TempDir, PgWal) {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("pg_wal");
        fs::create_dir(&wal).unwrap();
        fs::write(wal.join(SEGMENT), b"wal").unwrap();
        (dir, PgWal::new(wal, None))
    }

    fn refused<T: std::fmt::Debug>(result: Result<T, Refused>) -> String {
        result.expect_err("refused").0
    }

    #[test]
    fn a_push_from_the_server_user_is_a_wal_file_directly_in_pg_wal() {
        let (tmp, wal) = cluster();
        let file = wal
            .open_wal_file(&wal.path().join(SEGMENT), Scope::PgWal)
            .unwrap();
        assert_eq!(file.name, SEGMENT);
        assert_eq!(Some(file.id), wal.id_of(SEGMENT));

        let secret = tmp.path().join("shadow");
        fs::write(&secret, b"secret").unwrap();
        symlink(&secret, wal.path().join("0000002A.history")).unwrap();
        let why = refused(wal.open_wal_file(&wal.path().join("0000002A.history"), Scope::PgWal));
        assert!(why.ends_with("is a symbolic link; WAL files are archived only as regular files"));
        // Root's own push of a symlink is refused too.
        let why = refused(wal.open_wal_file(&wal.path().join("0000002A.history"), Scope::Anywhere));
        assert!(why.contains("symbolic link"), "{why}");

        fs::copy(wal.path().join(SEGMENT), tmp.path().join(SEGMENT)).unwrap();
        let outside = tmp.path().join(SEGMENT);
        let why = refused(wal.open_wal_file(&outside, Scope::PgWal));
        assert_eq!(
            why,
            format!(
                "{} is not directly in the cluster's pg_wal ({})\nHINT: the server's user may \
                 have the daemon read and write WAL files in pg_wal only",
                outside.display(),
                wal.path().display()
            )
        );
        assert_eq!(
            wal.open_wal_file(&outside, Scope::Anywhere).unwrap().name,
            SEGMENT
        );

        fs::create_dir(wal.path().join("sub")).unwrap();
        fs::write(wal.path().join("sub").join(SEGMENT), b"x").unwrap();
        refused(wal.open_wal_file(&wal.path().join("sub").join(SEGMENT), Scope::PgWal));
        let why = refused(wal.open_wal_file(&wal.path().join("postgresql.conf"), Scope::PgWal));
        assert!(why.ends_with("is not a WAL file (a segment, partial segment, timeline history or backup history file name)"), "{why}");
        let dotted = PathBuf::from(format!("{}/../pg_wal/{SEGMENT}", wal.path().display()));
        assert!(
            wal.open_wal_file(&dotted, Scope::PgWal).is_ok(),
            "the same directory"
        );
        refused(wal.open_wal_file(Path::new(&format!("pg_wal/{SEGMENT}")), Scope::PgWal));

        nix::unistd::mkfifo(
            &wal.path().join("00000002.history"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let why = refused(wal.open_wal_file(&wal.path().join("00000002.history"), Scope::PgWal));
        assert!(why.ends_with("is not a regular file"), "{why}");
    }

    #[test]
    fn a_fetch_for_the_server_user_goes_directly_into_pg_wal() {
        let (tmp, wal) = cluster();
        for name in ["RECOVERYXLOG", "RECOVERYHISTORY", SEGMENT] {
            let dest = wal
                .destination(&wal.path().join(name), Scope::PgWal)
                .unwrap();
            assert_eq!(dest.name, name);
            assert!(dest.in_pg_wal);
        }
        let etc = tmp.path().join("etc");
        fs::create_dir(&etc).unwrap();
        let why = refused(wal.destination(&etc.join("cron-job"), Scope::PgWal));
        assert!(
            why.contains("is not directly in the cluster's pg_wal"),
            "{why}"
        );
        symlink(&etc, wal.path().join("sneaky")).unwrap();
        refused(wal.destination(&wal.path().join("sneaky/RECOVERYXLOG"), Scope::PgWal));
        refused(wal.destination(&wal.path().join("pgward.prefetch"), Scope::PgWal));
        refused(wal.destination(Path::new("pg_wal/RECOVERYXLOG"), Scope::PgWal));
        refused(wal.destination(Path::new("/"), Scope::PgWal));

        let anywhere = wal.destination(&etc.join("copy"), Scope::Anywhere).unwrap();
        assert!(!anywhere.in_pg_wal);
        assert_eq!(anywhere.owner, None);
    }

    #[test]
    fn a_pg_wal_of_another_owner_is_refused() {
        let (_tmp, wal) = cluster();
        let me = nix::unistd::geteuid().as_raw();
        let theirs = PgWal::new(wal.path().to_owned(), Some((me + 1, 0)));
        let why = refused(theirs.open_wal_file(&wal.path().join(SEGMENT), Scope::PgWal));
        assert!(
            why.contains(&format!("belongs to uid {me}, not to the server's user")),
            "{why}"
        );
        let mine = PgWal::new(wal.path().to_owned(), Some((me, 0)));
        assert!(mine
            .open_wal_file(&wal.path().join(SEGMENT), Scope::PgWal)
            .is_ok());
    }
}
