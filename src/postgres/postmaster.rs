//! Whether a postmaster runs on a data directory, told from outside it: from its lock file
//! (`postmaster.pid`) and what the lines of that file point at.
//!
//! The pid alone proves nothing here. A server under `pgward run` in a container has its pid
//! in that container's PID namespace: from another namespace, `kill(pid, 0)` finds no such
//! process, or an unrelated one. So a postmaster counts as running when any of these holds:
//! - its unix socket (the socket directory and port of the lock file) accepts a connection, or
//!   answers at all: a connect is made and closed at once, nothing is sent;
//! - its data-directory interlock is held: postgres keeps a System V shared memory segment
//!   (key and id on the lock file's 7th line) attached in every one of its processes, and
//!   refuses to start while it has attachments; so does this check (postgres's own
//!   `PGSharedMemoryIsInUse`, without attaching);
//! - the pid is a process here whose working directory is the data directory (a postmaster
//!   works in its data directory).
//!
//! See <https://www.postgresql.org/docs/current/server-start.html> and `miscadmin.h`
//! (`LOCK_FILE_LINE_*`) for the file's lines.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// The lock file postgres keeps at the top of a data directory while it runs.
pub const LOCK_FILE: &str = "postmaster.pid";

/// How long a connection attempt on the socket may take: a unix socket answers at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What `postmaster.pid` says (the lines pgward reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockFile {
    /// Line 1; negative in a single-user backend's file.
    pub pid: i32,
    /// Line 4.
    pub port: Option<u16>,
    /// Line 5: the first of `unix_socket_directories`; `None` without unix sockets.
    pub socket_dir: Option<PathBuf>,
    /// Line 7: the System V interlock segment's key and id.
    pub shmem: Option<(u64, i32)>,
}

impl LockFile {
    /// Parses the content of a `postmaster.pid`; `None` when its first line is no pid (a
    /// file being written: postgres writes it in one go, but it may be read half-made).
    pub fn parse(text: &str) -> Option<LockFile> {
        let lines: Vec<&str> = text.lines().collect();
        let pid = lines.first()?.trim().parse().ok()?;
        let line = |n: usize| lines.get(n - 1).map(|l| l.trim()).filter(|l| !l.is_empty());
        let shmem = line(7).and_then(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
        });
        Some(LockFile {
            pid,
            port: line(4).and_then(|p| p.parse().ok()),
            socket_dir: line(5).map(PathBuf::from),
            shmem,
        })
    }

    /// The lock file of `data_dir`; `None` when there is none (or it is not one yet).
    pub fn read(data_dir: &Path) -> Result<Option<LockFile>> {
        let path = data_dir.join(LOCK_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(LockFile::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// The server's unix socket: `<socket dir>/.s.PGSQL.<port>`, a relative directory taken
    /// from the data directory (the postmaster's working directory).
    pub fn socket(&self, data_dir: &Path) -> Option<PathBuf> {
        let dir = self.socket_dir.as_ref()?;
        let port = self.port?;
        Some(data_dir.join(dir).join(format!(".s.PGSQL.{port}")))
    }
}

/// A postmaster found running on a data directory, and how it was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The pid in its lock file (in the server's own PID namespace).
    pub pid: i32,
    pub evidence: Evidence,
}

/// What showed a postmaster alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// Its socket accepted a connection (or answered: a full backlog).
    Socket(PathBuf),
    /// Its shared memory interlock has attached processes.
    Interlock { shmid: i32, attached: u64 },
    /// The pid is a process here working in the data directory.
    Process,
}

impl fmt::Display for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} in its {LOCK_FILE}", self.pid)?;
        match &self.evidence {
            Evidence::Socket(socket) => write!(f, "; its socket {} answers", socket.display()),
            Evidence::Interlock { shmid, attached } => write!(
                f,
                "; its shared memory segment {shmid} has {attached} attached processes"
            ),
            Evidence::Process => write!(f, "; that process runs in the data directory"),
        }
    }
}

/// The postmaster running on `data_dir`, if one does (see the module's doc); `None` without
/// a lock file, or when nothing the lock file points at is alive (a server that crashed or
/// was killed leaves its lock file behind).
pub async fn running(data_dir: &Path) -> Result<Option<Running>> {
    let Some(lock) = LockFile::read(data_dir)? else {
        return Ok(None);
    };
    let found = |evidence| {
        Ok(Some(Running {
            pid: lock.pid,
            evidence,
        }))
    };
    if let Some(socket) = lock.socket(data_dir) {
        if socket_answers(&socket).await {
            return found(Evidence::Socket(socket));
        }
    }
    if let Some((key, shmid)) = lock.shmem {
        if let Some(attached) = interlock_attached(key, shmid) {
            return found(Evidence::Interlock { shmid, attached });
        }
    }
    if works_in(lock.pid, data_dir) {
        return found(Evidence::Process);
    }
    Ok(None)
}

/// Whether something listens on the unix socket at `path`: a connection made, or refused
/// only for a full backlog (`EAGAIN`), or not made within [`CONNECT_TIMEOUT`]. No socket
/// file, or nobody listening on it (`ECONNREFUSED`), is no answer.
async fn socket_answers(path: &Path) -> bool {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path)).await {
        Err(_elapsed) => true,
        Ok(Ok(_stream)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// The number of processes attached to System V shared memory segment `shmid` when it is
/// postgres's interlock segment `key` and has any; `None` when it is gone or unused.
fn interlock_attached(key: u64, shmid: i32) -> Option<u64> {
    // SAFETY: IPC_STAT only fills `stat`, a plain struct the kernel writes whole.
    let mut stat: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a shmid_ds; an unknown id is an error return, not UB.
    let rc = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut stat) };
    if rc != 0 {
        // EACCES means a segment there that this user may not look at: as root (a restore
        // runs as root) that does not happen; otherwise the other checks decide.
        return None;
    }
    // Another IPC namespace has ids of its own: the key tells postgres's segment apart.
    #[cfg(target_env = "gnu")]
    if u64::from(stat.shm_perm.__key as u32) != key {
        return None;
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = key;
    let attached = stat.shm_nattch as u64;
    (attached > 0).then_some(attached)
}

/// Whether process `pid` exists here and works in `data_dir`.
fn works_in(pid: i32, data_dir: &Path) -> bool {
    if pid <= 0 {
        return false;
    }
    let (Ok(cwd), Ok(dir)) = (
        std::fs::read_link(format!("/proc/{pid}/cwd")),
        data_dir.canonicalize(),
    ) else {
        return false;
    };
    cwd == dir
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock file as postgres 17 writes it.
    const PG17: &str = "4242\n/var/lib/postgresql/data\n1764474900\n5432\n/var/run/postgresql\n\
                        *\n  5432001         7\nready   \n";

    #[test]
    fn the_lock_file_s_lines_are_read() {
        let lock = LockFile::parse(PG17).unwrap();
        assert_eq!(
            lock,
            LockFile {
                pid: 4242,
                port: Some(5432),
                socket_dir: Some("/var/run/postgresql".into()),
                shmem: Some((5432001, 7)),
            }
        );
        assert_eq!(
            lock.socket(Path::new("/data")),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5432"))
        );
        // No unix socket, no interlock yet; a relative socket directory.
        let lock = LockFile::parse("77\n/d\n1\n6000\n\n\n").unwrap();
        assert_eq!((lock.socket_dir, lock.shmem), (None, None));
        let lock = LockFile::parse("77\n/d\n1\n6000\nsock\n").unwrap();
        assert_eq!(
            lock.socket(Path::new("/d")),
            Some(PathBuf::from("/d/sock/.s.PGSQL.6000"))
        );
        assert_eq!(LockFile::parse(""), None);
        assert_eq!(LockFile::parse("not a pid\n"), None);
    }

    fn lock_file(data: &Path, pid: i32, socket_dir: &Path, port: u16) {
        let text = format!(
            "{pid}\n{}\n1764474900\n{port}\n{}\n*\n\nready\n",
            data.display(),
            socket_dir.display()
        );
        std::fs::write(data.join(LOCK_FILE), text).unwrap();
    }

    #[tokio::test]
    async fn a_socket_that_answers_is_a_running_server_whatever_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        assert_eq!(running(&data).await.unwrap(), None, "no lock file");
        // A pid from another PID namespace: no such process here.
        lock_file(&data, i32::MAX - 1, dir.path(), 6543);
        assert_eq!(running(&data).await.unwrap(), None, "nothing answers");
        let socket = dir.path().join(".s.PGSQL.6543");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(
            running(&data).await.unwrap(),
            Some(Running {
                pid: i32::MAX - 1,
                evidence: Evidence::Socket(socket.clone()),
            })
        );
        assert_eq!(
            running(&data).await.unwrap().unwrap().to_string(),
            format!(
                "pid {} in its postmaster.pid; its socket {} answers",
                i32::MAX - 1,
                socket.display()
            )
        );
        // The socket file left behind by a server that died: refused, so not running.
        drop(listener);
        assert_eq!(running(&data).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_pid_here_counts_only_when_it_works_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (data, elsewhere) = (dir.path().join("data"), dir.path().join("elsewhere"));
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&elsewhere)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The process exists but works elsewhere: a pid reused by an unrelated process.
        lock_file(&data, pid, Path::new("/nonexistent"), 1);
        let unrelated = running(&data).await.unwrap();
        lock_file(&elsewhere, pid, Path::new("/nonexistent"), 1);
        let postmaster = running(&elsewhere).await.unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(unrelated, None);
        assert_eq!(
            postmaster,
            Some(Running {
                pid,
                evidence: Evidence::Process,
            })
        );
    }

    #[tokio::test]
    async fn an_attached_interlock_segment_is_a_running_server() {
        let dir = tempfile::tempdir().unwrap();
        // A key of this test's own, as postgres derives one from its port.
        let key = 0x5057_0000 | (std::process::id() & 0xffff) as i32;
        // SAFETY: plain System V calls on a segment this test creates and removes.
        let shmid = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | 0o600) };
        assert!(shmid >= 0, "shmget: {}", std::io::Error::last_os_error());
        let lock = |key: i32| {
            let text = format!("999999999\n/d\n1\n1\n\n\n{key:9} {shmid:9}\nready\n");
            std::fs::write(dir.path().join(LOCK_FILE), text).unwrap();
        };
        lock(key);
        let detached = running(dir.path()).await.unwrap();
        // SAFETY: attaches the segment just made, anywhere.
        let at = unsafe { libc::shmat(shmid, std::ptr::null(), 0) };
        let attached = running(dir.path()).await.unwrap();
        lock(key ^ 1);
        let other_key = running(dir.path()).await.unwrap();
        // SAFETY: detaches what was attached above, then removes the segment.
        unsafe {
            libc::shmdt(at);
            libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
        }
        assert_eq!(detached, None);
        assert_eq!(
            attached,
            Some(Running {
                pid: 999999999,
                evidence: Evidence::Interlock { shmid, attached: 1 },
            })
        );
        if cfg!(target_env = "gnu") {
            assert_eq!(other_key, None);
        }
    }
}
