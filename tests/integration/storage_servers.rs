//! Real object-storage servers for the integration tests: s3s-fs (S3-compatible, objects kept
//! as plain files) and Azurite (Microsoft's Azure Blob emulator), both installed into `.tools/`
//! of the checkout by `scripts/test-deps.sh` (see `docs/testing.md`).
//!
//! Each fixture runs its own server on a free 127.0.0.1 port with its own temp dir, creates the
//! bucket or container the tests use, and kills the server on `Drop`. `stop` and `restart` keep
//! the port and the data, to simulate an outage in the middle of a run.
//!
//! Only std, nix and tempfile: bucket creation needs no signed request (an s3s-fs bucket is a
//! directory), and the Azure container is created with a fixed account SAS (see
//! [`AZURITE_ACCOUNT_SAS`]).

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// The versions `scripts/test-deps.sh` installs; the fixtures rely on their flags and behaviour.
pub const S3S_FS_VERSION: &str = "0.14.1";
pub const AZURITE_VERSION: &str = "3.35.0";

/// Azurite's fixed development account and key (public, the same in every Azurite and in
/// Microsoft's docs).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An account SAS for the development account: blob service, all resource types, permissions
/// rwdlac, http allowed, valid until 2099. Azurite checks its signature like Azure does; it was
/// computed once, since it depends on nothing but the key and these fields, so the fixtures need
/// no HMAC. To make another (Python):
///
/// ```text
/// sts = "\n".join(["devstoreaccount1", "rwdlac", "b", "sco", "", "2099-12-31T00:00:00Z", "",
///                  "https,http", "2019-12-12", ""])
/// sig = base64.b64encode(hmac.new(base64.b64decode(KEY), sts.encode(), hashlib.sha256).digest())
/// ```
pub const AZURITE_ACCOUNT_SAS: &str = "sv=2019-12-12&ss=b&srt=sco&sp=rwdlac\
    &se=2099-12-31T00%3A00%3A00Z&spr=https%2Chttp\
    &sig=%2FhrDqolfkJL4KpUA5HS6iDfRheIynnwdLg17eTFJs%2FQ%3D";

/// How long a server may take to accept connections (Azurite is a node program: about a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Azurite gets to save its metadata on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `retry:` part of every `config_yaml`: short, so tests of outages stay quick.
const RETRY_YAML: &str =
    "  retry: { max_retries: 2, initial_backoff: 50ms, max_backoff: 500ms, timeout: 10s }\n";

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// `s3://bucket/prefix`, `az://container/prefix`; no trailing slash, none for an empty prefix.
fn storage_url(scheme: &str, bucket: &str, prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

/// One server process: how to spawn it, its log, and the port it must accept on.
struct Server {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Spawns the server and waits until it accepts TCP connections. On failure, returns the
    /// reason with the server's output.
    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        if !self.program.is_file() {
            return Err(format!("{} not found", self.program.display()));
        }
        // Appended across restarts, so a failure shows the whole history.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the server log"))
            .stderr(log)
            // s3s-fs logs through tracing's env filter: keep it at warnings whatever the
            // test run's RUST_LOG says.
            .env("RUST_LOG", "warn")
            .spawn()
            .map_err(|e| format!("cannot execute {}: {e}", self.program.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("poll the server") {
                return Err(format!(
                    "{} exited during start-up with {status}",
                    self.name
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not accept connections on {addr} within {START_TIMEOUT:?}",
                    self.name
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `spawn` on a fresh port, retried when another process took the port between our probe
    /// and the server's bind; panics with the server's output and a hint otherwise.
    fn start(&mut self, set_port: impl Fn(&mut Self, u16)) {
        let mut last = String::new();
        for _ in 0..3 {
            set_port(self, free_port());
            match self.spawn() {
                Ok(()) => return,
                Err(e) => {
                    let out = self.output();
                    if !out.contains("already in use") && !out.contains("EADDRINUSE") {
                        self.fail(&e);
                    }
                    last = e;
                }
            }
        }
        self.fail(&last);
    }

    fn restart(&mut self) {
        self.stop(Signal::SIGKILL);
        if let Err(e) = self.spawn() {
            self.fail(&e);
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "failed to start the test {name}: {what}\n--- {log} ---\n{out}\n---\n\
             HINT: run scripts/test-deps.sh, which installs s3s-fs {S3S_FS_VERSION} and \
             azurite {AZURITE_VERSION} into .tools/",
            name = self.name,
            log = self.log.display(),
            out = self.output(),
        )
    }

    /// The server's output so far (the last 8 kB).
    fn output(&self) -> String {
        let text = fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let cut = text.len().saturating_sub(8192);
        let cut = (cut..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text[cut..].to_owned()
    }

    /// Sends `signal`, waits up to `STOP_TIMEOUT`, then SIGKILLs. No-op when not running.
    fn stop(&mut self, signal: Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        if signal != Signal::SIGKILL && kill(pid, signal).is_ok() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Signal::SIGKILL);
        // A failing test shows what the server said: its answers explain the client's errors.
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}\n---", self.name, self.output());
        }
    }
}

/// An s3s-fs server with one bucket, path-style, SigV4 checked against a fixed key pair.
///
/// s3s-fs keeps a bucket as a directory under its root and each object as a plain file at
/// `<root>/<bucket>/<key>`, so tests can look at (or damage) objects directly:
/// [`TestS3::object_path`].
pub struct TestS3 {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    server: Server,
    /// Holds `data/` (the server's root) and `server.log`; removed after the server is killed
    /// (fields drop in order).
    root: TempDir,
}

impl TestS3 {
    pub fn start() -> TestS3 {
        let root = tempfile::Builder::new()
            .prefix("pgward-s3-")
            .tempdir()
            .expect("create temp dir");
        let bucket = "pgward-test".to_owned();
        let data = root.path().join("data");
        // A bucket is a directory under the root (s3s-fs's CreateBucket is a mkdir, and its
        // HeadBucket/ListBuckets read the directory), so no signed PUT is needed.
        fs::create_dir_all(data.join(&bucket)).expect("create the bucket directory");
        let (access_key, secret_key) = ("pgward-test-ak".to_owned(), "pgward-test-sk".to_owned());
        let mut server = Server {
            name: "S3 server (s3s-fs)",
            program: tools_dir().join("bin/s3s-fs"),
            args: Vec::new(),
            port: 0,
            log: root.path().join("server.log"),
            child: None,
        };
        server.start(|s, port| {
            s.port = port;
            s.args = vec![
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--access-key".into(),
                access_key.clone(),
                "--secret-key".into(),
                secret_key.clone(),
                data.display().to_string(),
            ];
        });
        TestS3 {
            endpoint: format!("http://127.0.0.1:{}", server.port),
            bucket,
            access_key,
            secret_key,
            server,
            root,
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Kills the server (SIGKILL: every object is already a renamed file on disk). Requests
    /// fail with "connection refused" until `restart`.
    pub fn stop(&mut self) {
        self.server.stop(Signal::SIGKILL);
    }

    /// Starts the server again on the same port and data; kills it first if it is running.
    pub fn restart(&mut self) {
        self.server.restart();
    }

    /// `s3://<bucket>/<prefix>`
    pub fn url(&self, prefix: &str) -> String {
        storage_url("s3", &self.bucket, prefix)
    }

    /// The `storage:` block of a pgward config for this server and `prefix`.
    pub fn config_yaml(&self, prefix: &str) -> String {
        format!(
            "storage:\n  url: {url}\n  s3: {{ endpoint: {endpoint}, region: us-east-1, \
             access_key_id: {ak}, secret_access_key: {sk}, path_style: true, allow_http: true }}\n\
             {RETRY_YAML}",
            url = self.url(prefix),
            endpoint = self.endpoint,
            ak = self.access_key,
            sk = self.secret_key,
        )
    }

    /// Where s3s-fs keeps the object `key` of the bucket.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join("data").join(&self.bucket).join(key)
    }
}

/// An Azurite blob service with one container, the development account, and data kept on disk
/// so that `restart` finds it again.
pub struct TestAzurite {
    /// `http://127.0.0.1:<port>/devstoreaccount1` (path-style: the account is the first segment)
    pub endpoint: String,
    pub container: String,
    pub account: String,
    pub access_key: String,
    server: Server,
    /// Holds `data/` (Azurite's `--location`) and `server.log`; removed after the server is
    /// killed (fields drop in order).
    _dir: TempDir,
}

impl TestAzurite {
    pub fn start() -> TestAzurite {
        let dir = tempfile::Builder::new()
            .prefix("pgward-azurite-")
            .tempdir()
            .expect("create temp dir");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).expect("create Azurite's data dir");
        let mut server = Server {
            name: "Azure Blob emulator (azurite-blob)",
            program: tools_dir().join("azurite/node_modules/.bin/azurite-blob"),
            args: Vec::new(),
            port: 0,
            log: dir.path().join("server.log"),
            child: None,
        };
        server.start(|s, port| {
            s.port = port;
            s.args = vec![
                "--blobHost".into(),
                "127.0.0.1".into(),
                "--blobPort".into(),
                port.to_string(),
                // On disk rather than --inMemoryPersistence, so data survives `restart`.
                "--location".into(),
                data.display().to_string(),
                "--disableTelemetry".into(),
                // Accept whatever x-ms-version object_store sends.
                "--skipApiVersionCheck".into(),
                // No access log (one line per request).
                "--silent".into(),
            ];
        });
        let azurite = TestAzurite {
            endpoint: format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", server.port),
            container: "pgward-test".to_owned(),
            account: AZURITE_ACCOUNT.to_owned(),
            access_key: AZURITE_KEY.to_owned(),
            server,
            _dir: dir,
        };
        // object_store cannot create containers: a REST "Create Container" signed by the SAS.
        let (status, body) = azurite.request("PUT", "", &["restype=container"], &[], b"");
        if status != 201 {
            azurite.server.fail(&format!(
                "creating container {} answered {status}: {body}",
                azurite.container
            ));
        }
        azurite
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Stops the server (SIGTERM, so Azurite saves its metadata; SIGKILL after 10 s).
    /// Requests fail with "connection refused" until `restart`.
    pub fn stop(&mut self) {
        self.server.stop(Signal::SIGTERM);
    }

    /// Starts the server again on the same port and data; stops it first if it is running.
    pub fn restart(&mut self) {
        self.server.stop(Signal::SIGTERM);
        self.server.restart();
    }

    /// `az://<container>/<prefix>`
    pub fn url(&self, prefix: &str) -> String {
        storage_url("az", &self.container, prefix)
    }

    /// The `storage:` block of a pgward config for this server and `prefix`.
    pub fn config_yaml(&self, prefix: &str) -> String {
        format!(
            "storage:\n  url: {url}\n  azure: {{ account: {account}, access_key: {key}, \
             endpoint: {endpoint}, allow_http: true, use_emulator: true }}\n{RETRY_YAML}",
            url = self.url(prefix),
            account = self.account,
            key = self.access_key,
            endpoint = self.endpoint,
        )
    }

    /// `AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:<port>`: with `use_emulator`, object_store
    /// takes the emulator's address from this variable (default port 10000) and ignores any
    /// endpoint it is given; pass it to a pgward built that way.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "AZURITE_BLOB_STORAGE_URL".to_owned(),
            format!("http://127.0.0.1:{}", self.server.port),
        )]
    }

    /// One blob-service request authorised by [`AZURITE_ACCOUNT_SAS`]: `path` is below the
    /// container ("" for the container itself), `query` extra `k=v` pairs. Returns the status
    /// and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        query: &[&str],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let mut target = format!("/{}/{}", self.account, self.container);
        if !path.is_empty() {
            target.push('/');
            target.push_str(path.trim_start_matches('/'));
        }
        let mut q: Vec<&str> = query.to_vec();
        q.push(AZURITE_ACCOUNT_SAS);
        target.push('?');
        target.push_str(&q.join("&"));
        http(self.server.port, method, &target, headers, body)
    }
}

/// A minimal HTTP/1.1 exchange (`Connection: close`, whole response read). Returns the status
/// and the body (headers dropped).
pub fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("send the request");
    stream.write_all(body).expect("send the body");
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).expect("read the response");
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

// The fixtures' own checks: a server that starts, checks credentials, and keeps its data
// across `stop` and `restart` on the same port.

fn refuses_connections(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[test]
fn test_s3_checks_signatures_and_survives_restart() {
    let mut s3 = TestS3::start();
    // Unsigned requests are refused: authentication is on.
    let (status, body) = http(
        s3.port(),
        "GET",
        &format!("/{}?list-type=2", s3.bucket),
        &[],
        b"",
    );
    assert_eq!(status, 403, "{body}");
    // An object is a file: one written directly is served (after the restart below).
    fs::create_dir_all(s3.object_path("p")).expect("create a key prefix directory");
    fs::write(s3.object_path("p/obj"), b"x").expect("write an object file");

    let port = s3.port();
    s3.stop();
    assert!(refuses_connections(port));
    s3.restart();
    assert_eq!(s3.port(), port);
    let (status, _) = http(port, "GET", &format!("/{}/p/obj", s3.bucket), &[], b"");
    assert_eq!(status, 403);
    assert!(s3.object_path("p/obj").is_file());

    assert_eq!(s3.url("/a/b/"), "s3://pgward-test/a/b");
    assert_eq!(
        s3.config_yaml("a"),
        format!(
            "storage:\n  url: s3://pgward-test/a\n  s3: {{ endpoint: http://127.0.0.1:{port}, \
             region: us-east-1, access_key_id: pgward-test-ak, secret_access_key: pgward-test-sk, \
             path_style: true, allow_http: true }}\n  retry: {{ max_retries: 2, \
             initial_backoff: 50ms, max_backoff: 500ms, timeout: 10s }}\n"
        )
    );
}

#[test]
fn test_azurite_has_the_container_and_keeps_blobs_across_restart() {
    let mut az = TestAzurite::start();
    let (status, body) = az.request(
        "PUT",
        "p/blob",
        &[],
        &[("x-ms-blob-type", "BlockBlob")],
        b"hello",
    );
    assert_eq!(status, 201, "{body}");

    let port = az.port();
    az.stop();
    assert!(refuses_connections(port));
    az.restart();
    assert_eq!(az.port(), port);
    let (status, body) = az.request("GET", "p/blob", &[], &[], b"");
    assert_eq!((status, body.as_str()), (200, "hello"));
    // Without the SAS (or the account key) a private container refuses reads.
    let (status, _) = http(
        port,
        "GET",
        &format!("/{AZURITE_ACCOUNT}/pgward-test/p/blob"),
        &[],
        b"",
    );
    assert_eq!(status, 403);

    assert_eq!(az.url(""), "az://pgward-test");
    assert!(az.config_yaml("x").contains(&format!(
        "endpoint: http://127.0.0.1:{port}/devstoreaccount1"
    )));
    assert_eq!(az.env()[0].1, format!("http://127.0.0.1:{port}"));
}
