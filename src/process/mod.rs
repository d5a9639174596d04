//! Spawning child processes the way PID 1 must: registered with the one reaper, optionally as
//! another user, in their own process group, killed if pgward dies, output relayed line by line.
//!
//! Used by the supervisor (long-lived children), postgres bootstrap (initdb, psql, init
//! scripts), the scheduler (job commands, which also tap their output) and the restore test
//! (a throwaway server, whose last lines explain an early exit). Knows nothing of what the
//! children are.

pub mod relay;
pub mod user;

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use crate::init::{ExitInfo, Reaper};
pub use relay::{LogSink, OutputLine, StreamKind, Tail, Tap};
pub use user::RunAs;

/// What pgward adds to (and takes from) its own environment for a child: built in one place
/// by the caller that knows what the child is, applied with [`Spec::child_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildEnv {
    pub set: Vec<(OsString, OsString)>,
    pub remove: Vec<OsString>,
}

impl ChildEnv {
    pub fn set(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.set.push((key.into(), value.into()));
    }
}

/// Everything needed to start one child.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Log prefix and error context.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to (and overriding) pgward's own environment.
    pub env: Vec<(OsString, OsString)>,
    /// Variables removed from the inherited environment.
    pub env_remove: Vec<OsString>,
    pub run_as: Option<RunAs>,
    pub working_dir: Option<PathBuf>,
    /// Sent to the child if pgward itself dies, so no child outlives a crashed supervisor.
    pub parent_death_signal: Signal,
}

impl Spec {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Spec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            run_as: None,
            working_dir: None,
            parent_death_signal: Signal::SIGKILL,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Applies `env` (before this spec's own variables, which win).
    pub fn child_env(mut self, env: &ChildEnv) -> Self {
        let own = std::mem::replace(&mut self.env, env.set.clone());
        self.env.extend(own);
        self.env_remove.extend(env.remove.iter().cloned());
        self
    }

    pub fn run_as(mut self, run_as: Option<RunAs>) -> Self {
        self.run_as = run_as;
        self
    }

    fn command(&self, stdin: Stdio) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Our own process group: a Ctrl-C on pgward's terminal must reach pgward only, which
            // then stops children in order.
            .process_group(0);
        for key in &self.env_remove {
            cmd.env_remove(key);
        }
        if let Some(user) = &self.run_as {
            user.set_login_env(&mut cmd);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        let death_signal = self.parent_death_signal;
        let parent = std::process::id() as i32;
        // Allocated before the fork: the child may not allocate.
        let ids = self
            .run_as
            .as_ref()
            .map(|u| (u.uid, u.gid, u.groups.clone()));
        // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are
        // allowed: setgroups(2), setgid(2), setuid(2), prctl(2), getppid(2) and kill(2) are
        // plain syscalls in a single-threaded child and allocate nothing. The credentials are
        // switched here rather than with `CommandExt::uid` because std would drop every
        // supplementary group (postgres needs e.g. `ssl-cert`), and the parent-death signal
        // is set after them because a credential change clears it (prctl(2)).
        unsafe {
            cmd.pre_exec(move || {
                if let Some((uid, gid, groups)) = &ids {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setgid(*gid) != 0
                        || libc::setuid(*uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    death_signal as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), death_signal as libc::c_int);
                }
                Ok(())
            });
        }
        cmd
    }
}

/// A started child: its pid and the receiver of its exit status.
pub struct Running {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitInfo>,
}

/// Why `spec` could not be started, with what to do when the cause says it.
fn spawn_error(spec: &Spec, e: std::io::Error) -> anyhow::Error {
    let what = format!("start {} ({}): {e}", spec.name, spec.program.display());
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => {
            Some("install the program, or give its full path (a bare name is looked up on PATH)")
        }
        std::io::ErrorKind::PermissionDenied => {
            Some("the program must be executable by the user it runs as")
        }
        _ => None,
    };
    match hint {
        Some(hint) => anyhow::anyhow!("{what}\nHINT: {hint}"),
        None => anyhow::anyhow!("{what}"),
    }
}

/// Starts `spec`, relaying its output to `sink`, with stdin from /dev/null.
pub fn spawn(spec: &Spec, sink: &LogSink) -> Result<Running> {
    spawn_with_stdin(spec, sink, Stdio::null()).map(|(running, _)| running)
}

/// Starts `spec` like [`spawn`], and also sends each line of both streams, in the order they
/// were read, to `tap` (see [`Tap`] for when it closes).
pub fn spawn_tapped(spec: &Spec, sink: &LogSink, tap: Tap) -> Result<Running> {
    start(spec, sink, Stdio::null(), Some(tap), None).map(|(running, _)| running)
}

/// [`spawn`], also keeping the last lines of its output (both streams) in `tail`.
pub fn spawn_keeping_tail(spec: &Spec, sink: &LogSink, tail: &Tail) -> Result<Running> {
    start(spec, sink, Stdio::null(), None, Some(tail)).map(|(running, _)| running)
}

/// Starts `spec` with a piped stdin the caller writes to (e.g. a decompressed SQL script).
pub fn spawn_with_stdin(
    spec: &Spec,
    sink: &LogSink,
    stdin: Stdio,
) -> Result<(Running, Option<std::process::ChildStdin>)> {
    start(spec, sink, stdin, None, None)
}

fn start(
    spec: &Spec,
    sink: &LogSink,
    stdin: Stdio,
    tap: Option<Tap>,
    tail: Option<&Tail>,
) -> Result<(Running, Option<std::process::ChildStdin>)> {
    let (mut child, exit) = Reaper::global()
        .spawn(&mut spec.command(stdin))
        .map_err(|e| spawn_error(spec, e))?;
    if let Some(out) = child.stdout.take() {
        sink.relay_observed(
            &spec.name,
            StreamKind::Stdout,
            out,
            tap.clone(),
            tail.cloned(),
        );
    }
    if let Some(err) = child.stderr.take() {
        sink.relay_observed(&spec.name, StreamKind::Stderr, err, tap, tail.cloned());
    }
    let pid = child.id() as i32;
    Ok((Running { pid, exit }, child.stdin.take()))
}

/// Waits for an exit status delivered by the reaper.
pub async fn wait(running: Running) -> ExitInfo {
    // The reaper only drops a sender after delivering; a closed channel would mean the registry
    // itself was dropped, which cannot happen to a process-wide static.
    running
        .exit
        .await
        .expect("the global reaper never drops a registered child")
}

/// Runs `spec` to completion, feeding `input` (if any) to its stdin from a blocking thread.
pub async fn run(
    spec: &Spec,
    sink: &LogSink,
    input: Option<Box<dyn io::Read + Send>>,
) -> Result<ExitInfo> {
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let (running, child_stdin) = spawn_with_stdin(spec, sink, stdin)?;
    let feeder = match (input, child_stdin) {
        (Some(mut input), Some(mut stdin)) => Some(tokio::task::spawn_blocking(move || {
            // A child that exits early closes the pipe; its exit status tells why, so a broken
            // pipe here is not the error to report.
            match io::copy(&mut input, &mut stdin).and_then(|_| stdin.flush()) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
                _ => Ok(()),
            }
        })),
        _ => None,
    };
    let status = wait(running).await;
    if let Some(feeder) = feeder {
        feeder
            .await
            .context("join stdin feeder")?
            .with_context(|| format!("feed input to {}", spec.name))?;
    }
    Ok(status)
}

/// Runs `spec` to completion and returns its stdout (stderr is relayed). For short outputs
/// such as `--version` or `pg_controldata`.
pub async fn capture(spec: &Spec, sink: &LogSink) -> Result<(ExitInfo, String)> {
    let mut cmd = spec.command(Stdio::null());
    let (mut child, exit) = Reaper::global()
        .spawn(&mut cmd)
        .map_err(|e| spawn_error(spec, e))?;
    if let Some(err) = child.stderr.take() {
        sink.relay(&spec.name, StreamKind::Stderr, err);
    }
    let mut stdout = child
        .stdout
        .take()
        .expect("stdout is piped by Spec::command");
    let read = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        io::Read::read_to_string(&mut stdout, &mut out).map(|_| out)
    });
    let status = wait(Running {
        pid: child.id() as i32,
        exit,
    })
    .await;
    let out = read
        .await
        .context("join output reader")?
        .with_context(|| format!("read output of {}", spec.name))?;
    Ok((status, out))
}

/// Runs `spec` and fails unless it exits 0.
pub async fn run_ok(
    spec: &Spec,
    sink: &LogSink,
    input: Option<Box<dyn io::Read + Send>>,
) -> Result<()> {
    let status = run(spec, sink, input).await?;
    if !status.success() {
        anyhow::bail!("{} failed: {status}", spec.name);
    }
    Ok(())
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: i32, signal: Signal) {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, "cannot send {signal}: {e}"),
    }
}

/// Sends `signal` to the whole process group led by `pid` (the child and what it spawned).
pub fn signal_group(pid: i32, signal: Signal) {
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, "cannot send {signal} to process group: {e}"),
    }
}
