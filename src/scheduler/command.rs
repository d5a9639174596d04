//! One attempt of a `command:` job: start it in its own process group, relay and keep its
//! output, stop it on timeout or cancellation, and make sure nothing it started outlives it.
//!
//! Owns nothing but the one run: schedules, retries, `fails_when` and reports are decided by
//! the caller from the [`CommandOutcome`]. Processes are started only through
//! [`crate::process`] (the global reaper owns every exit status), never `tokio::process`.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{CommandLine, JobConfig, JobTask};
use crate::init::ExitInfo;
use crate::process::{self, ChildEnv, LogSink, OutputLine, RunAs, Spec};

/// How long the output relays may still take to reach EOF once the job's process group was
/// killed. Only a process that left the group (e.g. with `setsid`) and kept the pipe open can
/// make them take longer; the run then ends without the rest of its output, and the relay
/// threads keep logging whatever comes until that process closes the pipe.
pub const OUTPUT_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Lines read but not yet counted; a job that writes faster than this is taken in blocks on
/// its full pipe. Bounds the memory of a run's output to this many lines of at most
/// `log.max_line_bytes`, plus the kept tail.
const TAP_CAPACITY: usize = 256;

/// What to run for one attempt, and how to stop it.
#[derive(Debug, Clone)]
pub struct CommandRun {
    /// Log prefix and error context, e.g. `job nightly` (logged as `[job nightly] ...`).
    pub name: String,
    /// An argv runs directly (the program looked up on `PATH`); a string runs as
    /// `/bin/sh -c <string>`.
    pub command: CommandLine,
    /// Added to (and overriding) pgward's own environment.
    pub env: BTreeMap<String, String>,
    /// The user to run as; `None` runs as pgward itself.
    pub run_as: Option<RunAs>,
    /// `None` keeps pgward's own.
    pub working_dir: Option<PathBuf>,
    /// After this long: SIGTERM to the process group, SIGKILL after `kill_timeout`.
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL, on timeout or cancellation.
    pub kill_timeout: Duration,
    /// How many of the last output lines (both streams) [`CommandOutcome::tail`] keeps.
    pub output_lines: usize,
    /// What pgward gives every job's process (below `env`, which wins).
    pub child_env: ChildEnv,
}

impl CommandRun {
    /// The run of `job`, or `None` when it is a built-in action rather than a command.
    /// `run_as` is the job's resolved user (see [`RunAs::for_child`]); the working directory
    /// defaults to that user's home, else `/`.
    pub fn for_job(job: &JobConfig, run_as: Option<RunAs>) -> Option<CommandRun> {
        let JobTask::Command { command } = &job.task else {
            return None;
        };
        let working_dir = job
            .working_dir
            .clone()
            .or_else(|| run_as.as_ref().map(|u| u.home.clone()))
            .unwrap_or_else(|| PathBuf::from("/"));
        Some(CommandRun {
            name: format!("job {}", job.name),
            command: command.clone(),
            env: job.env.clone(),
            run_as,
            working_dir: Some(working_dir),
            timeout: job.timeout,
            kill_timeout: job.kill_timeout,
            output_lines: usize::try_from(job.output_lines).unwrap_or(usize::MAX),
            child_env: ChildEnv::default(),
        })
    }

    fn spec(&self) -> Result<Spec> {
        let spec = match &self.command {
            CommandLine::Argv(argv) => {
                let (program, args) = argv
                    .split_first()
                    .ok_or_else(|| anyhow!("{} has an empty command", self.name))?;
                Spec::new(self.name.clone(), program).args(args)
            }
            CommandLine::Shell(script) => Spec::new(self.name.clone(), "/bin/sh")
                .arg("-c")
                .arg(script),
        };
        let mut spec = spec.run_as(self.run_as.clone()).child_env(&self.child_env);
        for (key, value) in &self.env {
            spec = spec.env(key, value);
        }
        spec.working_dir = self.working_dir.clone();
        Ok(spec)
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The exit status of the process pgward started (the shell, for a string command).
    pub exit: ExitInfo,
    /// It was stopped because it ran longer than its timeout.
    pub timed_out: bool,
    /// It was stopped because the caller cancelled it.
    pub cancelled: bool,
    /// Lines written to stdout (an overlong line counts once per `log.max_line_bytes` piece).
    pub stdout_lines: u64,
    /// Lines written to stderr, counted the same way.
    pub stderr_lines: u64,
    /// The last [`CommandRun::output_lines`] lines of both streams, in the order they were read.
    pub tail: Vec<String>,
    /// When it was started.
    pub started: DateTime<Utc>,
    /// From start until the process pgward started exited.
    pub duration: Duration,
}

/// Runs one attempt of `run` to its end. Each output line is logged through `sink`, counted,
/// kept in the tail, and sent to `live` if given (a client that went away is dropped).
///
/// Stopping, on timeout or when `cancel` fires: SIGTERM to the process group, SIGKILL to it
/// after `kill_timeout` if the process has not exited. Whatever the end, once the process
/// exited the rest of its group is killed, so no child of the job outlives it; then the output
/// is read to its end, for at most [`OUTPUT_DRAIN_GRACE`].
///
/// Fails only when the process cannot be started (e.g. no such program, or an empty argv).
///
/// Cancel safety: dropping the future kills the job's process group (SIGKILL); use `cancel`
/// for an orderly stop that waits for the process and reports its outcome.
pub async fn run(
    run: &CommandRun,
    sink: &LogSink,
    live: Option<mpsc::UnboundedSender<OutputLine>>,
    cancel: &CancellationToken,
) -> Result<CommandOutcome> {
    let spec = run.spec()?;
    let (tap, mut lines) = mpsc::channel(TAP_CAPACITY);
    let started = Utc::now();
    let clock = Instant::now();
    let running = process::spawn_tapped(&spec, sink, tap)?;
    let pid = running.pid;
    let mut exit = running.exit;
    let guard = KillGroupOnDrop(pid);
    tracing::debug!(pid, "{} started", run.name);

    let mut output = Output::new(run.output_lines, live);
    let timeout_at = run.timeout.map(deadline);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let (mut timed_out, mut cancelled) = (false, false);
    let mut lines_open = true;
    let status = loop {
        let stopping = timed_out || cancelled;
        tokio::select! {
            status = &mut exit => {
                break status.expect("the global reaper never drops a registered child");
            }
            line = lines.recv(), if lines_open => match line {
                Some(line) => output.push(line),
                None => lines_open = false,
            },
            () = sleep_until(timeout_at), if timeout_at.is_some() && !stopping => {
                tracing::warn!(
                    pid,
                    "{} timed out after {}; sending SIGTERM to its process group",
                    run.name,
                    humantime::format_duration(run.timeout.unwrap_or_default())
                );
                timed_out = true;
                process::signal_group(pid, Signal::SIGTERM);
                kill_at = Some(deadline(run.kill_timeout));
            }
            () = cancel.cancelled(), if !stopping => {
                tracing::info!(pid, "stopping {}: sending SIGTERM to its process group", run.name);
                cancelled = true;
                process::signal_group(pid, Signal::SIGTERM);
                kill_at = Some(deadline(run.kill_timeout));
            }
            () = sleep_until(kill_at), if kill_at.is_some() => {
                tracing::warn!(
                    pid,
                    "{} still runs {} after SIGTERM; sending SIGKILL to its process group",
                    run.name,
                    humantime::format_duration(run.kill_timeout)
                );
                kill_at = None;
                process::signal_group(pid, Signal::SIGKILL);
            }
        }
    };
    let duration = clock.elapsed();
    // Children that ignored SIGTERM, or that the job left running in the background, go with
    // it. The group outlives its leader while any member lives, so its id cannot have been
    // reused by an unrelated group yet (setpgid(2)).
    drop(guard);

    let drain_until = deadline(OUTPUT_DRAIN_GRACE);
    while lines_open {
        match tokio::time::timeout_at(drain_until, lines.recv()).await {
            Ok(Some(line)) => output.push(line),
            Ok(None) => lines_open = false,
            Err(_) => {
                tracing::warn!(
                    "the output of {} is still open {} after it ended (a process outside its \
                     process group holds it); the rest is logged but not kept",
                    run.name,
                    humantime::format_duration(OUTPUT_DRAIN_GRACE)
                );
                break;
            }
        }
    }
    tracing::debug!(pid, "{} ended: {status}", run.name);
    Ok(CommandOutcome {
        exit: status,
        timed_out,
        cancelled,
        stdout_lines: output.stdout_lines,
        stderr_lines: output.stderr_lines,
        tail: output.tail.into(),
        started,
        duration,
    })
}

/// Kills the job's whole process group when dropped: at the normal end of a run, and if the
/// run's future is dropped or panics while the job runs.
struct KillGroupOnDrop(i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        process::signal_group(self.0, Signal::SIGKILL);
    }
}

/// Counts, keeps and forwards the output lines of a run.
struct Output {
    stdout_lines: u64,
    stderr_lines: u64,
    keep: usize,
    tail: VecDeque<String>,
    live: Option<mpsc::UnboundedSender<OutputLine>>,
}

impl Output {
    fn new(keep: usize, live: Option<mpsc::UnboundedSender<OutputLine>>) -> Self {
        Output {
            stdout_lines: 0,
            stderr_lines: 0,
            keep,
            // Grows as lines come: `keep` may be large while most jobs print little.
            tail: VecDeque::new(),
            live,
        }
    }

    fn push(&mut self, line: OutputLine) {
        match line.stream {
            process::StreamKind::Stdout => self.stdout_lines += 1,
            process::StreamKind::Stderr => self.stderr_lines += 1,
        }
        if let Some(live) = &self.live {
            if live.send(line.clone()).is_err() {
                self.live = None;
            }
        }
        if self.keep == 0 {
            return;
        }
        if self.tail.len() == self.keep {
            self.tail.pop_front();
        }
        self.tail.push_back(line.text);
    }
}

fn deadline(after: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    // Saturate: a huge configured duration means "practically never".
    now.checked_add(after)
        .unwrap_or(now + Duration::from_secs(86400 * 365))
}

/// Sleeps until `at`; callers guard the branch with `at.is_some()`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How the scheduler's tests relay what their commands write: text lines of up to 4 KiB.
#[cfg(test)]
pub(super) fn test_sink() -> LogSink {
    LogSink {
        format: crate::config::LogFormat::Text,
        max_line_bytes: 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::StreamKind;

    fn shell(script: &str) -> CommandRun {
        command(CommandLine::Shell(script.into()))
    }

    fn command(command: CommandLine) -> CommandRun {
        crate::init::reaper::start_test_reaper();
        CommandRun {
            name: "job test".into(),
            command,
            env: BTreeMap::new(),
            run_as: None,
            working_dir: None,
            timeout: None,
            kill_timeout: Duration::from_secs(10),
            output_lines: 50,
            child_env: ChildEnv::default(),
        }
    }

    async fn run_to_end(run: &CommandRun) -> CommandOutcome {
        super::run(run, &test_sink(), None, &CancellationToken::new())
            .await
            .expect("start the test command")
    }

    /// Awaits `future`, which must finish within 3 s (the tests' bound on a prompt kill).
    async fn within_3s<T>(future: impl std::future::Future<Output = T>) -> T {
        let clock = Instant::now();
        let output = future.await;
        assert!(
            clock.elapsed() < Duration::from_secs(3),
            "{:?}",
            clock.elapsed()
        );
        output
    }

    /// Whether `pid` no longer runs: gone, or a zombie nobody reaped yet (outside PID 1,
    /// orphans are reparented to whoever reaps in this container, maybe nobody).
    fn is_gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| matches!(state, 'Z' | 'X')),
        }
    }

    /// Polls for a while: SIGKILL is delivered asynchronously.
    async fn wait_gone(pid: i32) -> bool {
        for _ in 0..100 {
            if is_gone(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn first_line_pid(outcome: &CommandOutcome) -> i32 {
        outcome
            .tail
            .first()
            .and_then(|line| line.parse().ok())
            .unwrap_or_else(|| panic!("expected a pid first, got {:?}", outcome.tail))
    }

    #[test]
    fn a_command_job_runs_in_its_users_home_by_default() {
        let yaml = "\
jobs:
  - name: nightly
    schedule: '@daily'
    command: [vacuumdb, --all]
    env: { A: b }
    timeout: 1m
    kill_timeout: 2s
    output_lines: 7
  - name: elsewhere
    schedule: '@daily'
    command: 'pwd'
    working_dir: /srv
  - name: backup
    schedule: '@daily'
    action: backup
";
        let config = crate::config::from_str(yaml, "cfg.yaml", &|_| None).expect("valid config");
        let [nightly, elsewhere, backup] = &config.jobs[..] else {
            panic!("three jobs expected: {:?}", config.jobs);
        };
        let user = RunAs {
            name: "postgres".into(),
            uid: 999,
            gid: 999,
            groups: vec![999],
            home: "/var/lib/postgresql".into(),
        };
        let run = CommandRun::for_job(nightly, Some(user.clone())).expect("a command job");
        assert_eq!(run.name, "job nightly");
        assert_eq!(
            run.command,
            CommandLine::Argv(vec!["vacuumdb".into(), "--all".into()])
        );
        assert_eq!(run.env, BTreeMap::from([("A".into(), "b".into())]));
        assert_eq!(run.run_as, Some(user.clone()));
        assert_eq!(run.working_dir, Some("/var/lib/postgresql".into()));
        assert_eq!(run.timeout, Some(Duration::from_secs(60)));
        assert_eq!(run.kill_timeout, Duration::from_secs(2));
        assert_eq!(run.output_lines, 7);
        let own = CommandRun::for_job(nightly, None).expect("a command job");
        assert_eq!(own.working_dir, Some("/".into()));
        let set = CommandRun::for_job(elsewhere, Some(user)).expect("a command job");
        assert_eq!(set.working_dir, Some("/srv".into()));
        assert!(CommandRun::for_job(backup, None).is_none());
    }

    #[tokio::test]
    async fn reports_exit_codes_and_signals() {
        assert_eq!(run_to_end(&shell("exit 3")).await.exit, ExitInfo::Code(3));
        assert_eq!(run_to_end(&shell("true")).await.exit, ExitInfo::Code(0));
        let killed = run_to_end(&shell("kill -KILL $$")).await;
        assert_eq!(killed.exit, ExitInfo::Signal(libc::SIGKILL));
        assert!(!killed.timed_out && !killed.cancelled);
    }

    #[tokio::test]
    async fn an_argv_runs_without_a_shell_and_a_string_with_one() {
        let argv = command(CommandLine::Argv(vec![
            "echo".into(),
            "$HOME".into(),
            "a;b".into(),
        ]));
        assert_eq!(run_to_end(&argv).await.tail, vec!["$HOME a;b"]);
        let string = shell("echo one; echo two | tr a-z A-Z");
        assert_eq!(run_to_end(&string).await.tail, vec!["one", "TWO"]);
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_naming_the_job() {
        let run = command(CommandLine::Argv(vec!["/nonexistent/program".into()]));
        let error = super::run(&run, &test_sink(), None, &CancellationToken::new())
            .await
            .expect_err("the program does not exist");
        assert!(
            format!("{error:#}").starts_with("start job test (/nonexistent/program)"),
            "{error:#}"
        );
        let empty = command(CommandLine::Argv(Vec::new()));
        let error = super::run(&empty, &test_sink(), None, &CancellationToken::new())
            .await
            .expect_err("an empty argv cannot run");
        assert_eq!(error.to_string(), "job test has an empty command");
    }

    #[tokio::test]
    async fn sets_the_environment_and_working_directory() {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let mut run = shell("pwd; echo \"$PGWARD_TEST_VALUE\"");
        run.env.insert("PGWARD_TEST_VALUE".into(), "a value".into());
        run.working_dir = Some(dir.path().to_path_buf());
        let cwd = dir.path().canonicalize().expect("canonical temp dir");
        let cwd = cwd.to_str().expect("utf-8 temp dir");
        assert_eq!(run_to_end(&run).await.tail, vec![cwd, "a value"]);
    }

    #[tokio::test]
    async fn counts_both_streams_and_keeps_the_last_lines_in_order() {
        let mut run = shell("for i in 1 2 3 4 5 6; do echo out$i; done; echo err >&2");
        run.output_lines = 100;
        let all = run_to_end(&run).await;
        assert_eq!((all.stdout_lines, all.stderr_lines), (6, 1));
        assert_eq!(all.tail.len(), 7);

        let mut run = shell("seq 1 10");
        run.output_lines = 3;
        let trimmed = run_to_end(&run).await;
        assert_eq!(trimmed.stdout_lines, 10);
        assert_eq!(trimmed.tail, vec!["8", "9", "10"]);

        // Two pipes read by two threads: only output spaced in time has a definite order.
        let run = shell("echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three");
        assert_eq!(run_to_end(&run).await.tail, vec!["one", "two", "three"]);

        let mut run = shell("echo one");
        run.output_lines = 0;
        let none = run_to_end(&run).await;
        assert_eq!((none.stdout_lines, none.tail), (1, Vec::<String>::new()));
    }

    #[tokio::test]
    async fn a_timeout_kills_a_job_that_ignores_sigterm_with_its_children() {
        // The trap is inherited: the background sleep ignores SIGTERM too.
        let mut run = shell("trap '' TERM; sleep 30 & echo $!; wait");
        run.timeout = Some(Duration::from_millis(300));
        run.kill_timeout = Duration::from_millis(300);
        let outcome = within_3s(run_to_end(&run)).await;
        assert!(outcome.timed_out && !outcome.cancelled);
        assert_eq!(outcome.exit, ExitInfo::Signal(libc::SIGKILL));
        assert!(outcome.duration >= Duration::from_millis(600));
        assert!(wait_gone(first_line_pid(&outcome)).await);
    }

    #[tokio::test]
    async fn children_that_survive_the_job_are_killed_with_it() {
        // The shell dies of SIGTERM at once; its child ignores it, and only the kill of the
        // group after the shell's exit (not the far kill_timeout) can end it.
        let mut run = shell("(trap '' TERM; exec sleep 30) & echo $!; wait");
        run.timeout = Some(Duration::from_millis(300));
        run.kill_timeout = Duration::from_secs(30);
        let outcome = within_3s(run_to_end(&run)).await;
        assert!(outcome.timed_out);
        assert_eq!(outcome.exit, ExitInfo::Signal(libc::SIGTERM));
        assert!(wait_gone(first_line_pid(&outcome)).await);

        // A job that succeeds and leaves a child in the background.
        let outcome = within_3s(run_to_end(&shell("sleep 30 & echo $!"))).await;
        assert_eq!(outcome.exit, ExitInfo::Code(0));
        assert!(wait_gone(first_line_pid(&outcome)).await);
    }

    #[tokio::test]
    async fn cancellation_stops_the_job() {
        let mut run = shell("sleep 30");
        run.kill_timeout = Duration::from_millis(300);
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            trigger.cancel();
        });
        let outcome = within_3s(super::run(&run, &test_sink(), None, &cancel))
            .await
            .expect("start the test command");
        assert!(outcome.cancelled && !outcome.timed_out);
        assert_eq!(outcome.exit, ExitInfo::Signal(libc::SIGTERM));
    }

    #[tokio::test]
    async fn a_live_subscriber_receives_every_line_in_order() {
        let run = shell("seq 1 300; echo done >&2");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outcome = super::run(&run, &test_sink(), Some(tx), &CancellationToken::new())
            .await
            .expect("start the test command");
        assert_eq!(outcome.stdout_lines, 300);
        let mut received = Vec::new();
        while let Some(line) = rx.recv().await {
            received.push(line);
        }
        let stdout: Vec<String> = received
            .iter()
            .filter(|l| l.stream == StreamKind::Stdout)
            .map(|l| l.text.clone())
            .collect();
        let expected: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
        assert_eq!(stdout, expected);
        assert_eq!(
            received
                .iter()
                .filter(|l| l.stream == StreamKind::Stderr)
                .collect::<Vec<_>>(),
            vec![&OutputLine {
                stream: StreamKind::Stderr,
                text: "done".into()
            }]
        );
    }
}
