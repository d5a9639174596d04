//! A real container engine for the image's tests: Docker made ready by
//! `scripts/docker-deps.sh` (installed and started when missing, with the stand-in postgres
//! base image), the image built from the binary under test with `make image BASE_IMAGE=...
//! PGWARD_BIN=...`, and containers and volumes that are removed when the test ends.
//!
//! Containers get `--network none`: they are reached with `docker exec`, never over a network.
//! When the engine cannot be made ready, the test fails with the script's reason; it is never
//! skipped.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use super::{is_error_record, pgward_bin};

/// The stand-in for the official `postgres:15` image that scripts/docker-deps.sh builds from
/// Debian's packages.
pub const STANDIN_BASE: &str = "pgward-test/postgres:15";
/// The repository of the images built from the binary under test, followed by a hash of the
/// binary's path (one repository per checkout); the tag is a hash of what goes into the image,
/// so a rebuilt binary gets a new image and an unchanged one is built once.
const TEST_IMAGE: &str = "pgward-test/pgward";
/// Serializes the engine's setup and the image build across the test processes.
const LOCK: &str = "/tmp/pgward-docker-test.lock";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `docker <args>`, run to completion.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run docker {args:?}: {e} (scripts/docker-deps.sh installs it)"))
}

/// `docker <args>` that must succeed: its stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The image of the binary under test on the stand-in base: the engine made ready and the
/// image built (once per binary) by the same `make image` users run.
pub fn pgward_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let deps = Command::new("flock")
            .arg(LOCK)
            .arg(repo_root().join("scripts/docker-deps.sh"))
            .output()
            .expect("run flock scripts/docker-deps.sh (util-linux)");
        assert!(
            deps.status.success(),
            "the container engine is not ready, so the image cannot be tested:\n{}\n\
             HINT: run scripts/docker-deps.sh as root; dockerd's log is .tools/dockerd.log",
            text(&deps)
        );
        let (name, tag) = image_name_and_tag();
        let image = format!("{name}:{tag}");
        let build = Command::new("flock")
            .arg(LOCK)
            .args([
                "sh",
                "-c",
                "image=$1; shift; docker image inspect \"$image\" >/dev/null 2>&1 || exec \"$@\"",
            ])
            .args(["sh", &image, "make", "-C"])
            .arg(repo_root())
            .args([
                "image",
                &format!("BASE_IMAGE={STANDIN_BASE}"),
                &format!("PGWARD_BIN={}", pgward_bin()),
                &format!("IMAGE_NAME={name}"),
                &format!("IMAGE_TAG={tag}"),
            ])
            .output()
            .expect("run make image");
        assert!(
            build.status.success(),
            "make image failed:\n{}",
            text(&build)
        );
        remove_older_images(&name, &image);
        image
    })
}

/// Removes the images of earlier builds of this checkout's binary, best effort: one in use by a
/// container stays.
fn remove_older_images(name: &str, current: &str) {
    let listed = docker_ok(&["images", name, "--format", "{{.Repository}}:{{.Tag}}"]);
    for image in listed.lines().filter(|i| *i != current) {
        let _ = docker(&["rmi", image]);
    }
}

/// The image's name (by the binary's path) and tag (a hash of the binary's size and mtime, the
/// Dockerfile, the image config and the base image).
fn image_name_and_tag() -> (String, String) {
    let mut hasher = DefaultHasher::new();
    pgward_bin().hash(&mut hasher);
    let name = format!("{TEST_IMAGE}-{:08x}", hasher.finish() as u32);
    let mut hasher = DefaultHasher::new();
    let meta = std::fs::metadata(pgward_bin()).expect("stat the binary under test");
    meta.len().hash(&mut hasher);
    meta.modified()
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .hash(&mut hasher);
    for file in ["image/Dockerfile", "image/pgward.yaml"] {
        std::fs::read(repo_root().join(file))
            .unwrap_or_else(|e| panic!("read {file}: {e}"))
            .hash(&mut hasher);
    }
    docker_ok(&["image", "inspect", "-f", "{{.Id}}", STANDIN_BASE]).hash(&mut hasher);
    (name, format!("{:016x}", hasher.finish()))
}

/// A name no other test (or earlier run) uses.
fn unique_name(kind: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "pgward-test-{kind}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named volume, removed on drop.
pub struct Volume {
    pub name: String,
}

impl Volume {
    pub fn new() -> Volume {
        let name = unique_name("vol");
        docker_ok(&["volume", "create", "--label", "org.pgward.test=1", &name]);
        Volume { name }
    }

    /// `-v` argument mounting this volume at `target`.
    pub fn at(&self, target: &str) -> String {
        format!("{}:{target}", self.name)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "-f", &self.name]);
    }
}

/// A container of `docker run -d --network none`, removed (with its anonymous volumes) on
/// drop. Its log gets pgward's ERROR check when the test ends, as `Pgward`'s output does.
pub struct Container {
    pub name: String,
    expected_errors: Vec<(String, String)>,
}

impl Container {
    /// `docker run -d --network none <args> <image>` (the image's own command: `pgward run`).
    pub fn run(image: &str, args: &[&str]) -> Container {
        let name = unique_name("ctr");
        let mut all = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "org.pgward.test=1",
            "--network",
            "none",
        ];
        all.extend_from_slice(args);
        all.push(image);
        docker_ok(&all);
        Container {
            name,
            expected_errors: Vec::new(),
        }
    }

    /// Declares ERROR records containing `pattern` in this container's log, because `why`.
    #[allow(dead_code)]
    pub fn expect_error(&mut self, pattern: &str, why: &str) {
        self.expected_errors
            .push((pattern.to_owned(), why.to_owned()));
    }

    /// `docker inspect -f <format>`.
    pub fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "-f", format, &self.name])
    }

    /// Everything the container printed, over all its starts.
    pub fn logs(&self) -> String {
        text(&docker(&["logs", &self.name]))
    }

    /// Waits until the container's log holds `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let started = Instant::now();
        while !self.logs().contains(needle) {
            assert!(
                started.elapsed() < within,
                "no {needle:?} in the log of {} within {within:?}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the engine's health check reports `healthy`; fails early when the container
    /// stops or turns unhealthy. How long it took.
    pub fn wait_healthy(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let state = self.inspect("{{.State.Status}} {{.State.Health.Status}}");
            match state.as_str() {
                "running healthy" => return started.elapsed(),
                "running starting" if started.elapsed() < within => {}
                _ => panic!(
                    "container {} is `{state}` after {:?}, not running healthy:\n{}",
                    self.name,
                    started.elapsed(),
                    self.logs()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker exec <args>`: (exit code, stdout + stderr).
    pub fn exec(&self, args: &[&str]) -> (i32, String) {
        let mut all = vec!["exec", &self.name];
        all.extend_from_slice(args);
        let out = docker(&all);
        (out.status.code().unwrap_or(-1), text(&out))
    }

    /// One SQL statement through psql in the container, as the postgres user over the socket:
    /// its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = docker(&[
            "exec",
            "-u",
            "postgres",
            &self.name,
            "psql",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        assert!(out.status.success(), "psql {sql:?} failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Switches to a new WAL segment and waits until the finished one is archived.
    pub fn switch_and_wait_archived(&self, within: Duration) {
        // A record first, so the switch always ends a segment that holds something (a switch
        // right after a backup's would be a no-op naming the segment before).
        self.psql("SELECT pg_logical_emit_message(false, 'pgward-test', 'switch')");
        let segment = self.psql("SELECT pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + within;
        loop {
            let archived =
                self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            // Segment names of one timeline sort by position; a backup's history file
            // (`<segment>.<offset>.backup`) counts as its segment.
            if archived
                .get(..segment.len())
                .is_some_and(|name| name >= segment.as_str())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "segment {segment} not archived within {within:?} (last: {archived:?}):\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker stop -t <grace>`: how long it took and the exit code.
    pub fn stop(&self, grace: Duration) -> (Duration, i32) {
        let started = Instant::now();
        docker_ok(&["stop", "-t", &grace.as_secs().to_string(), &self.name]);
        let took = started.elapsed();
        let code = self.inspect("{{.State.ExitCode}}");
        (took, code.parse().unwrap_or(-1))
    }

    pub fn start(&self) {
        docker_ok(&["start", &self.name]);
    }

    /// `docker kill -s <signal>`.
    pub fn signal(&self, signal: &str) {
        docker_ok(&["kill", "-s", signal, &self.name]);
    }

    fn check_errors(&self) {
        let logs = self.logs();
        let unexpected: Vec<&str> = logs
            .lines()
            .filter(|line| is_error_record(line))
            .filter(|line| {
                !self
                    .expected_errors
                    .iter()
                    .any(|(p, _)| line.contains(p.as_str()))
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "container {} logged ERROR records the test did not declare:\n{}\n\
             HINT: declare a provoked ERROR with Container::expect_error(pattern, why)\n\
             --- the whole log ---\n{logs}",
            self.name,
            unexpected.join("\n")
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if !panicking {
            // Stopped first, so the check sees the whole log, shutdown included.
            let _ = docker(&["stop", "-t", "90", &self.name]);
        }
        let checked = (!panicking)
            .then(|| std::panic::catch_unwind(AssertUnwindSafe(|| self.check_errors())));
        let _ = docker(&["rm", "-f", "-v", &self.name]);
        if let Some(Err(panic)) = checked {
            std::panic::resume_unwind(panic);
        }
    }
}
