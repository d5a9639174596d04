//! A running pgward with its stdout and stderr captured, and the one-shot `pgward <command>`.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pgward_bin;

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
