//! Shared fixtures: a temp dir the server's user can enter, free ports, a running pgward whose
//! output is captured, and a way to reach its postgres.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Paths and port of one cluster under test.
pub struct Cluster {
    pub dir: TestDir,
    pub port: u16,
    /// Where pgward's metrics endpoints listen (on 127.0.0.1), unless the test's config says.
    pub metrics_port: u16,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            dir: TestDir::new(),
            port: free_port(),
            metrics_port: free_port(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("run/pgward.sock")
    }

    /// The `postgres:` and `control:` parts of a config for this cluster; `extra` is appended
    /// at top level (services, log...). `init` lines go under `postgres.init`.
    pub fn config(&self, init: &str, extra: &str) -> PathBuf {
        let init = indent(init, 4);
        // Each cluster archives into its own repository unless the test names one.
        let storage = if extra.contains("storage:") {
            String::new()
        } else {
            format!(
                "storage:\n  url: file://{}\n",
                self.dir.join("repo").display()
            )
        };
        // Tests run in parallel: each daemon's endpoints on a port of its own.
        let metrics = if extra.contains("metrics:") {
            String::new()
        } else {
            format!("metrics:\n  listen: 127.0.0.1:{}\n", self.metrics_port)
        };
        let extra = format!("{storage}{metrics}{extra}");
        let text = format!(
            "postgres:\n  data_dir: {data}\n  port: {port}\n  socket_dir: {sock}\n  parameters:\n    listen_addresses: 127.0.0.1\n  stop:\n    timeout: 20s\n  init:\n    scripts_dir: {scripts}\n{init}\ncontrol:\n  socket: {control}\n{extra}\n",
            data = self.data_dir().display(),
            port = self.port,
            sock = self.socket_dir().display(),
            scripts = self.dir.join("initdb.d").display(),
            control = self.control_socket().display(),
        );
        self.dir.write("pgward.yaml", &text)
    }

    /// Connects over TCP with a password. (initdb's pg_hba.conf trusts 127.0.0.1, as in the
    /// official image, unless `--auth-host` is among the initdb arguments.)
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(3));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Waits until a password connection succeeds.
    pub async fn wait_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
        within: Duration,
    ) -> tokio_postgres::Client {
        let deadline = Instant::now() + within;
        loop {
            match self.connect(user, password, db).await {
                Ok(client) => return client,
                Err(e) if Instant::now() > deadline => {
                    panic!("no connection within {within:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The postmaster pid from `postmaster.pid`, if the file is there.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `Database cluster state` from pg_controldata.
    pub fn controldata_state(&self) -> String {
        let bin = pg_bin_dir();
        let out = Command::new(bin.join("pg_controldata"))
            .arg(self.data_dir())
            .env("LC_ALL", "C")
            .output()
            .expect("run pg_controldata");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Database cluster state:"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("no cluster state in pg_controldata output: {text}"))
    }
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The newest Debian PostgreSQL bin dir (the same rule pgward applies without PATH).
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

/// A running `pgward` with its stdout+stderr captured.
pub struct Pgward {
    pub child: Child,
    output: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Pgward {
    /// `pgward <args>` with `env` added.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Pgward {
        Self::start_command(Command::new(pgward_bin()), args, env)
    }

    /// Runs `prefix` (e.g. `unshare --pid ...`) with pgward and `args` after it.
    pub fn start_wrapped(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Pgward {
        let mut cmd = Command::new(prefix[0]);
        cmd.args(&prefix[1..]).arg(pgward_bin());
        Self::start_command(cmd, args, env)
    }

    fn start_command(mut cmd: Command, args: &[&str], env: &[(&str, &str)]) -> Pgward {
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in [
            "POSTGRES_USER",
            "POSTGRES_PASSWORD",
            "POSTGRES_DB",
            "POSTGRES_HOST_AUTH_METHOD",
            "PGDATA",
            "PGWARD_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env(
            "PGWARD_LOG",
            std::env::var("TEST_PGWARD_LOG").unwrap_or("info".into()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start pgward");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream);
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
                    if std::env::var_os("PGWARD_TEST_ECHO").is_some() {
                        eprint!("{line}");
                    }
                    output.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        Pgward {
            child,
            output,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for_output(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.output().contains(needle) {
            if Instant::now() > deadline {
                panic!(
                    "{needle:?} not printed within {within:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal pgward");
    }

    /// Waits for exit; panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                // Let the reader threads drain what was printed last.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "pgward did not exit within {within:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `pgward status --json` against this daemon's config.
    pub fn status(config: &Path) -> serde_json::Value {
        let out = Command::new(pgward_bin())
            .args([
                "--config",
                config.to_str().expect("utf-8 path"),
                "status",
                "--json",
            ])
            .output()
            .expect("run pgward status");
        assert!(
            out.status.success(),
            "pgward status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// ERROR records in pgward's own log that no test expected.
    pub fn assert_no_errors_except(&self, allowed: &[&str]) {
        let output = self.output();
        let unexpected: Vec<&str> = output
            .lines()
            .filter(|l| l.contains(" ERROR ") && !l.starts_with('['))
            .filter(|l| !allowed.iter().any(|a| l.contains(a)))
            .collect();
        assert!(
            unexpected.is_empty(),
            "unexpected ERROR lines:\n{}",
            unexpected.join("\n")
        );
    }
}

impl Drop for Pgward {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The service entry of `status --json` named `name`.
pub fn service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service {name} in {status}"))
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

/// `pgward --config <config> <args>`, run to completion: (exit code, stdout, stderr).
pub fn pgward_with(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(pgward_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run pgward");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until a recovering server has ended recovery (promoted).
pub async fn wait_promoted(client: &tokio_postgres::Client, within: Duration) {
    let deadline = Instant::now() + within;
    while client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(Instant::now() < deadline, "recovery did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every regular file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
