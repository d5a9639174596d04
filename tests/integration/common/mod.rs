//! Shared fixtures of the integration tests; every subject module takes its fixtures from here
//! (and the storage servers from `storage_servers`), never from another subject module.
//!
//! - this file: the binary under test, temp dirs, free ports, polling, processes in /proc;
//! - [`pgward`](self::pgward): a running pgward with its output captured, the check that fails
//!   a test on an ERROR record in that output which the test did not declare, and the one-shot
//!   `pgward <command>`;
//! - [`cluster`](self::cluster): a cluster's paths and config, connections, archiving into a
//!   repository, a cluster with a table and a backup, a restored cluster;
//! - [`failpoints`](self::failpoints): arming pgward's named failpoints in a command, and
//!   telling where it died;
//! - [`docker`](self::docker): the container engine, the image built from the binary under
//!   test, containers and volumes removed when the test ends;
//! - [`fault_proxy`](self::fault_proxy): an HTTP proxy in front of a storage server whose
//!   faults (refuse, stall, 503 SlowDown, slow, cut mid-body) a test switches at runtime;
//! - [`repo_files`](self::repo_files): the repository's own files the tests read (example
//!   configs) and the tools they run on them (promtool);
//! - [`majors`](self::majors): the PostgreSQL major the tests' servers run
//!   (`PGWARD_TEST_PG_MAJOR`);
//! - [`requests`](self::requests): the storage requests a running daemon counted, from its
//!   `/metrics` (`pgward_storage_requests_total`).
//!
//! Nothing here imports a subject module.

mod cluster;
pub mod docker;
mod failpoints;
pub mod fault_proxy;
mod majors;
mod pgward;
mod repo_files;
pub mod requests;

pub use cluster::*;
pub use failpoints::*;
pub use majors::*;
pub use pgward::*;
pub use repo_files::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a test waits for a server to start (or a restored one to recover) before failing:
/// generous, since the tests share the machine's cores with each other and other builds.
pub const BOOT: Duration = Duration::from_secs(60);

/// The binary under test.
pub fn pgward_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgward")
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A temp directory, world-traversable so the `postgres` user can reach the data directory
/// below it when the tests run as root.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("pgward-test-")
            .tempdir()
            .expect("create temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TestDir { dir }
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent dir");
        }
        fs::write(&path, content).expect("write test file");
        path
    }
}

/// The newest Debian PostgreSQL bin dir (the same rule pgward applies without PATH): the
/// default server, and the client tools of every test (see [`server_bin_dir`]).
pub fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<(f64, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect(
            "a PostgreSQL server is installed under /usr/lib/postgresql (make test installs it)",
        )
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: f64 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort_by(|a, b| a.0.total_cmp(&b.0));
    versions.pop().expect("a postgres server binary").1
}

/// Polls `check` until it is true.
pub fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            panic!("{what}: not true within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Owner uid of a running process.
pub fn process_uid(pid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Pids (and states) of the direct children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok())
    {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim().to_owned()) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((child, state));
        }
    }
    out
}

/// Every regular file below `dir` (nothing when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A one-request HTTP server: the request's head and body, answered with `status`.
pub async fn one_request_server(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if request.len() >= head_end + 4 + length {
                    break;
                }
            }
        }
        let answer =
            format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        stream.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (port, task)
}
