//! A running pgward with its stdout and stderr captured, the one-shot `pgward <command>`, and
//! the ERROR check.
//!
//! The ERROR check is on for every [`Pgward`]: when it is dropped at the end of the test (after
//! stopping the process if the test left it running), every line of its output that is a pgward
//! log record at level ERROR fails the test, unless the test declared it with
//! [`Pgward::expect_error`] (a substring of the line, and why it is expected). ERROR means "a
//! human must look": a test that passes while pgward asks for one hides a bug.
//!
//! "pgward log record" covers pgward's own records and those of the pgward processes whose
//! output it relays under `[name] ` (`wal-push`/`wal-fetch` run by postgres, the restore
//! test's server, jobs), in the text and the JSON format; postgres's own `ERROR:` lines are not
//! pgward's. The check reads the output only after the process has exited and both pipes have
//! reached end of file, so it sees every line, the last ones included.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pgward_bin;

/// How long the output may go on after the process exited: the pipes end when the last process
/// holding them (pgward, or something it started and left behind) is gone.
const DRAIN: Duration = Duration::from_secs(10);

/// A running `pgward` with its stdout+stderr captured; ERROR-checked when dropped (see the
/// module's doc).
pub struct Pgward {
    pub child: Child,
    /// What the process was started as, to name it when its check fails.
    command: String,
    output: Arc<Mutex<String>>,
    /// The threads copying stdout and stderr into `output`: both finished once both pipes
    /// reached end of file.
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    errors: Mutex<ErrorCheck>,
}

/// What the test declared about ERROR records.
#[derive(Default)]
struct ErrorCheck {
    /// ERROR lines containing the first string are expected, for the reason in the second.
    expected: Vec<(String, String)>,
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
        let command = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = cmd.spawn().expect("start pgward");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream);
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
                    if std::env::var_os("PGWARD_TEST_ECHO").is_some() {
                        eprint!("{line}");
                    }
                    // Whole lines only: the check never sees half of one.
                    output.lock().unwrap().push_str(&line);
                    line.clear();
                }
            }));
        }
        Pgward {
            child,
            command,
            output,
            readers,
            status: None,
            errors: Mutex::default(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything printed so far (everything, once [`wait_exit`](Self::wait_exit) returned).
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

    /// Waits for exit, then for the rest of the output; panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                // Whether the pipes ended is checked when the fixture is dropped.
                self.drain();
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

    /// Declares that this process logs ERROR records containing `pattern`, because `why`
    /// (the test provokes them: a storage outage, a corrupt object, ...). Other ERROR records
    /// still fail the test.
    pub fn expect_error(&self, pattern: &str, why: &str) {
        assert!(
            !pattern.is_empty() && !why.trim().is_empty(),
            "an expected ERROR needs a pattern and a reason"
        );
        let mut check = self.errors.lock().unwrap();
        check.expected.push((pattern.to_owned(), why.to_owned()));
    }

    /// Stops the process if it still runs: SIGTERM, then SIGKILL after 30 s.
    fn stop(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            self.status = Some(status);
            return;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    /// Waits up to [`DRAIN`] for both pipes to end; whether they did.
    fn drain(&mut self) -> bool {
        let deadline = Instant::now() + DRAIN;
        while !self.readers.iter().all(|r| r.is_finished()) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        true
    }

    /// The ERROR check, on the complete output of the exited process.
    fn check_errors(&self) {
        let check = self.errors.lock().unwrap();
        let output = self.output();
        let unexpected: Vec<&str> = output
            .lines()
            .filter(|line| is_error_record(line))
            .filter(|line| {
                !check
                    .expected
                    .iter()
                    .any(|(p, _)| line.contains(p.as_str()))
            })
            .collect();
        if unexpected.is_empty() {
            return;
        }
        let declared: Vec<String> = check
            .expected
            .iter()
            .map(|(pattern, why)| format!("  {pattern:?} ({why})"))
            .collect();
        panic!(
            "`{}` logged ERROR records the test did not declare:\n{}\n\
             declared: {}\n\
             HINT: a test that provokes an ERROR declares it with Pgward::expect_error(pattern, \
             why); an ERROR in normal operation is a bug to fix in pgward\n\
             --- the whole output ---\n{output}",
            self.command,
            unexpected.join("\n"),
            if declared.is_empty() {
                "nothing".to_owned()
            } else {
                format!("\n{}", declared.join("\n"))
            },
        );
    }
}

impl Drop for Pgward {
    fn drop(&mut self) {
        self.stop();
        let drained = self.drain();
        // A test that already failed says why; a second panic would abort the run.
        if std::thread::panicking() {
            return;
        }
        assert!(
            drained,
            "`{}` exited, but its output did not end within {DRAIN:?}: a process it started \
             still holds its stdout or stderr",
            self.command
        );
        self.check_errors();
        super::check_started_major(&self.command, &self.output());
    }
}

/// Whether `line` is a pgward log record at level ERROR: text (`<RFC 3339 time> ERROR ...`)
/// or JSON (`"level":"ERROR"`), pgward's own or relayed under `[name] ` (text) or as the
/// `message` of a relayed record (JSON).
pub fn is_error_record(line: &str) -> bool {
    let mut text = line.trim();
    while let Some((_, rest)) = text
        .strip_prefix('[')
        .and_then(|inner| inner.split_once("] "))
    {
        text = rest;
    }
    if text.starts_with('{') {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(text) else {
            return false;
        };
        if record["level"] == "ERROR" {
            return true;
        }
        return record["service"].is_string()
            && record["message"].as_str().is_some_and(is_error_record);
    }
    let mut words = text.split_whitespace();
    let time = words.next().unwrap_or("");
    let is_time = time.len() >= 20 && time.as_bytes()[4] == b'-' && time.as_bytes()[10] == b'T';
    is_time && words.next() == Some("ERROR")
}

/// The service entry of `status --json` named `name`.
pub fn service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service {name} in {status}"))
}

/// `pgward --config <config> <args>`, run to completion: (exit code, stdout, stderr). The test
/// asserts on what it printed; the ERROR check is [`Pgward`]'s.
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

#[test]
fn error_records_are_told_from_other_lines() {
    let error = "2025-01-02T03:04:05.678901Z ERROR wal_push{segment=x}: failed to upload: gone";
    assert!(is_error_record(error));
    assert!(is_error_record(&format!("[postgres] {error}")));
    assert!(is_error_record(&format!(
        "[restore-test] [postgres] {error}"
    )));
    assert!(is_error_record(
        r#"{"timestamp":"2025-01-02T03:04:05.678901Z","level":"ERROR","message":"failed"}"#
    ));
    let relayed_json = serde_json::json!({
        "timestamp": "t", "service": "postgres", "stream": "stderr",
        "message": r#"{"timestamp":"t","level":"ERROR","message":"failed"}"#,
    });
    assert!(is_error_record(&relayed_json.to_string()));
    for other in [
        "2025-01-02T03:04:05.678901Z  WARN retrying: gone",
        "2025-01-02T03:04:05.678901Z  INFO backup: ERROR in a message is not a level",
        "[postgres] 2025-01-02 03:04:05.678 UTC [42] ERROR:  relation \"t\" does not exist",
        "[job noisy] ERROR something the job printed",
        r#"{"timestamp":"t","level":"WARN","message":"ERROR"}"#,
        r#"{"timestamp":"t","service":"job","stream":"stdout","message":"ERROR: x"}"#,
    ] {
        assert!(!is_error_record(other), "{other}");
    }
}
