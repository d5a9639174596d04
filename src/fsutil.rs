//! Durable local writes. A rename is only durable once the directory holding it is fsynced,
//! and a file's content only once the file is; one helper so no caller forgets either. Many
//! files written together (a restore) may instead be renamed into place unsynced and made
//! durable by one sync of their filesystem ([`sync_filesystem`]) after the last.
//!
//! And [`Dir`]: a directory held open, for work in a directory another user can write (the
//! daemon, as root, in the server's `pg_wal`), where a path looked up twice may lead to two
//! places and a symlink may stand where a file was expected; and [`resolved`], where a path
//! that may not exist yet really leads.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use anyhow::{Context, Result};

/// fsync a directory, making renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

/// Flushes everything written to the filesystem holding `dir` (`syncfs`): file contents,
/// creations and renames. One call in place of an fsync per file, for many files written
/// together and made durable at once (a restore).
pub fn sync_filesystem(dir: &Path) -> Result<()> {
    let dir_handle =
        fs::File::open(dir).with_context(|| format!("open {} to sync it", dir.display()))?;
    // SAFETY: the descriptor is open for the call's duration.
    if unsafe { libc::syncfs(dir_handle.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("sync the filesystem holding {}", dir.display()));
    }
    Ok(())
}

/// Gives `file` its final length `len` with the blocks allocated up front, so parts written
/// at their offsets by several threads land in contiguous extents (writing them into a
/// sparse file measured about a third slower on ext4); where the filesystem cannot
/// preallocate, the file is only extended.
pub fn preallocate(file: &fs::File, len: u64) -> std::io::Result<()> {
    let Ok(signed) = i64::try_from(len) else {
        return file.set_len(len);
    };
    match nix::fcntl::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(file), 0, signed) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => file.set_len(len),
        Err(e) => Err(e.into()),
    }
}

/// When a local write becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On its own: fsynced before it is reported written.
    Now,
    /// Later, with the rest of the filesystem ([`sync_filesystem`]).
    Deferred,
}

/// A file that replaces `path` atomically once complete: readers see the old content or the
/// new, never a mix, and nothing is held in memory. Written to a temp file in the same
/// directory; [`AtomicFile::commit`] fsyncs it, renames it over `path` and fsyncs the
/// directory. Dropped uncommitted, the temp file is removed and `path` is untouched.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: std::path::PathBuf,
}

impl AtomicFile {
    /// Starts a replacement of `path`; its directory must exist.
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        let dir = parent_dir(path);
        Ok(AtomicFile {
            tmp: tempfile::NamedTempFile::new_in(dir)?,
            path: path.to_owned(),
        })
    }

    /// The temp file, for positioned writes.
    pub fn as_file(&self) -> &fs::File {
        self.tmp.as_file()
    }

    /// Makes the content durable and visible at `path`.
    pub fn commit(self) -> std::io::Result<()> {
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        fs::File::open(parent_dir(&self.path))?.sync_all()
    }

    /// Makes the content visible at `path`, whole (never a mix with the old), but not yet
    /// durable: for a caller that syncs the filesystem ([`sync_filesystem`]) before it counts
    /// on the file, and that a crash before then leaves visibly unfinished (a restore's
    /// marker).
    pub fn commit_unsynced(self) -> std::io::Result<()> {
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }

    /// [`AtomicFile::commit`] or [`AtomicFile::commit_unsynced`], as `durability` says.
    pub fn commit_as(self, durability: Durability) -> std::io::Result<()> {
        match durability {
            Durability::Now => self.commit(),
            Durability::Deferred => self.commit_unsynced(),
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

/// A directory held open: every name is looked up in it (`openat(2)`, `renameat(2)`), so the
/// directory cannot be swapped between two calls, and a symlink in the place of a name is
/// never followed (`O_NOFOLLOW`; a rename replaces the link itself). Names are single path
/// components.
#[derive(Debug)]
pub struct Dir {
    dir: fs::File,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory at `path`. A symlink at `path` itself is followed, like any path
    /// given in the config (`pg_wal` is one after `initdb --waldir`): check what was opened
    /// with [`Dir::metadata`].
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            dir: owned(fd),
            path: path.to_owned(),
        })
    }

    /// Opens the directory `name` in this one, not through a symlink.
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        let fd = nix::fcntl::openat(
            Some(self.fd()),
            component(name)?,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            dir: owned(fd),
            path: self.path.join(name),
        })
    }

    /// The path it was opened by (for messages; it may lead elsewhere by now).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was opened (`fstat`).
    pub fn metadata(&self) -> io::Result<fs::Metadata> {
        self.dir.metadata()
    }

    /// Opens the file `name` for reading. A symlink there fails with
    /// [`io::ErrorKind::FilesystemLoop`] (`ELOOP`); a FIFO or device is opened without
    /// blocking, for the caller to refuse after a look at its metadata.
    pub fn open_file(&self, name: &str) -> io::Result<fs::File> {
        let fd = nix::fcntl::openat(
            Some(self.fd()),
            component(name)?,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(owned(fd))
    }

    /// Creates a new file named `prefix` and a random suffix, mode 0600, for writing: never
    /// an existing name, nor through a symlink (`O_EXCL`). Its name and the file.
    pub fn create_temp(&self, prefix: &str) -> io::Result<(String, fs::File)> {
        loop {
            let name = format!("{prefix}{:016x}", fastrand::u64(..));
            match nix::fcntl::openat(
                Some(self.fd()),
                component(&name)?,
                OFlag::O_RDWR
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => return Ok((name, owned(fd))),
                Err(nix::errno::Errno::EEXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Renames `from` in this directory to `to` in `dest`, replacing what `to` names there
    /// (a symlink is replaced, not followed). Not durable until [`Dir::sync`].
    pub fn rename(&self, from: &str, dest: &Dir, to: &str) -> io::Result<()> {
        nix::fcntl::renameat(
            Some(self.fd()),
            component(from)?,
            Some(dest.fd()),
            component(to)?,
        )?;
        Ok(())
    }

    /// Removes the file (or symlink) `name`.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        nix::unistd::unlinkat(
            Some(self.fd()),
            component(name)?,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?;
        Ok(())
    }

    /// Creates the directory `name` with `mode` (less the umask).
    pub fn create_dir(&self, name: &str, mode: u32) -> io::Result<()> {
        nix::sys::stat::mkdirat(
            Some(self.fd()),
            component(name)?,
            Mode::from_bits_truncate(mode),
        )?;
        Ok(())
    }

    /// Whether something (a symlink included) is named `name` here.
    pub fn contains(&self, name: &str) -> bool {
        component(name).is_ok_and(|name| {
            nix::sys::stat::fstatat(Some(self.fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
        })
    }

    /// The names in it (`.` and `..` left out; names that are not UTF-8 too).
    pub fn file_names(&self) -> io::Result<Vec<String>> {
        let mut listing = nix::dir::Dir::openat(
            Some(self.fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry?;
            match entry.file_name().to_str() {
                Ok("." | "..") | Err(_) => {}
                Ok(name) => names.push(name.to_owned()),
            }
        }
        Ok(names)
    }

    /// The same directory on a second descriptor (for a blocking thread).
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            dir: self.dir.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// fsync: makes renames and creations in it durable.
    pub fn sync(&self) -> io::Result<()> {
        self.dir.sync_all()
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.dir.as_raw_fd()
    }
}

/// `name` if it is one path component, else an error (a name with `/`, `.`, `..`, empty).
fn component(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    Ok(name)
}

/// Takes ownership of a descriptor `open(2)` just returned.
fn owned(fd: std::os::fd::RawFd) -> fs::File {
    // SAFETY: `fd` was just returned by a successful open and is owned by nobody else.
    fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `path` (absolute) with `.` and `..` folded and the symlinks of its longest existing
/// ancestor resolved.
pub fn resolved(path: &Path) -> PathBuf {
    let mut folded = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                folded.pop();
            }
            Component::CurDir => {}
            other => folded.push(other),
        }
    }
    let mut missing = Vec::new();
    let mut existing = folded.as_path();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return missing.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return folded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_replaces_only_on_commit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        fs::write(&path, b"old").expect("write");
        let mut file = AtomicFile::create(&path).expect("create");
        file.write_all(b"new content").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"old");
        drop(file);
        assert_eq!(fs::read(&path).expect("read"), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).expect("list").count(),
            1,
            "temp removed"
        );
        let mut file = AtomicFile::create(&path).expect("create");
        file.write_all(b"new content").expect("write");
        file.commit().expect("commit");
        assert_eq!(fs::read(&path).expect("read"), b"new content");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);
    }
}

#[cfg(test)]
mod dir_tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_held_directory_never_follows_a_symlink_in_place_of_a_name() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"root's own").expect("write");
        let inside = tmp.path().join("inside");
        fs::create_dir(&inside).expect("mkdir");
        symlink(&outside, inside.join("link")).expect("symlink");
        symlink(tmp.path(), inside.join("dirlink")).expect("symlink");
        let dir = Dir::open(&inside).expect("open");

        let e = dir.open_file("link").expect_err("a symlink is not opened");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(dir.open_dir("dirlink").is_err());
        assert!(dir.open_file("../outside").is_err());
        assert!(dir.open_file("..").is_err());

        // A rename onto the symlink replaces the link; its target keeps its content.
        let (tmp_name, mut file) = dir.create_temp("t.").expect("temp");
        file.write_all(b"fetched").expect("write");
        dir.rename(&tmp_name, &dir, "link").expect("rename");
        assert_eq!(fs::read(&outside).expect("read"), b"root's own");
        let mut content = String::new();
        dir.open_file("link")
            .expect("a file now")
            .read_to_string(&mut content)
            .expect("read");
        assert_eq!(content, "fetched");
        assert!(dir.contains("dirlink"));
        let mut names = dir.file_names().expect("list");
        names.sort();
        assert_eq!(names, ["dirlink", "link"]);
        dir.remove_file("dirlink").expect("remove");
        assert!(!dir.contains("dirlink"));
        assert!(tmp.path().exists());
    }
}
