//! Reports of a finished run (`on_failure:` / `on_success:`): a command run with `PGWARD_JOB_*`
//! variables, and a JSON POST to a webhook.
//!
//! A report is best effort: one that fails is logged at error level and goes no further; it
//! never changes the run's outcome and is never retried. Webhook header values are secrets
//! and are never logged; neither is the webhook URL's path or query (chat webhooks carry
//! their token there), only its scheme, host and port.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::command::{self, CommandRun};
use crate::config::{CommandLine, ReportConfig, WebhookConfig};
use crate::process::{ChildEnv, LogSink, RunAs};

/// How long a report command may run before it is stopped (SIGTERM to its process group).
pub const REPORT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Between SIGTERM and SIGKILL of a report command that ran too long.
const REPORT_COMMAND_KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the run being reported succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Success,
    Failure,
}

impl RunStatus {
    /// `success` or `failure`, as in the JSON body and `PGWARD_JOB_STATUS`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::Failure => "failure",
        }
    }
}

/// A finished run, as reported. Serialized, it is the webhook's JSON body:
///
/// ```json
/// {
///   "job": "nightly",
///   "status": "failure",
///   "reason": "exit code 3",
///   "exit_code": 3,
///   "attempt": 2,
///   "started_at": "2024-05-01T02:00:00.012Z",
///   "finished_at": "2024-05-01T02:00:41.950Z",
///   "duration_secs": 41.938,
///   "output_tail": ["vacuumdb: vacuuming database \"app\"", "..."],
///   "host": "db-0"
/// }
/// ```
///
/// Timestamps are RFC 3339 in UTC; `reason` and `exit_code` are `null` when they do not apply
/// (a success; a built-in action, which has no exit code).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The job's name.
    pub job: String,
    pub status: RunStatus,
    /// Why the run failed (e.g. `exit code 3`, `timed out after 10m`), or a note on a success.
    pub reason: Option<String>,
    /// The command's exit code (128 + signal number when it was killed by a signal).
    pub exit_code: Option<i32>,
    /// 1 for the first attempt, 2 for the first retry...
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_secs: f64,
    /// The last lines of the output (`output_lines:` of the job), oldest first.
    pub output_tail: Vec<String>,
    /// The host name of the machine (the container's, in a container).
    pub host: String,
}

impl RunReport {
    /// The variables a report command gets, on top of the job's `env:`.
    fn env_vars(&self) -> [(&'static str, String); 8] {
        [
            ("PGWARD_JOB_NAME", self.job.clone()),
            ("PGWARD_JOB_STATUS", self.status.as_str().to_owned()),
            ("PGWARD_JOB_REASON", self.reason.clone().unwrap_or_default()),
            (
                "PGWARD_JOB_EXIT_CODE",
                self.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            ),
            ("PGWARD_JOB_ATTEMPT", self.attempt.to_string()),
            (
                "PGWARD_JOB_STARTED_AT",
                self.started_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
            ("PGWARD_JOB_DURATION", format!("{:.3}", self.duration_secs)),
            ("PGWARD_JOB_OUTPUT", self.output_tail.join("\n")),
        ]
    }
}

/// This machine's host name, for [`RunReport::host`]; `unknown` if it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Sends `report` as `report_config` says: its command (run as `run_as`, with the job's `env`
/// and the `PGWARD_JOB_*` variables, for at most [`REPORT_COMMAND_TIMEOUT`]; not at all when
/// `run_as` is the reason the job's user cannot be found) and its webhook, both at once.
/// Failures are logged, never returned (see the module doc).
///
/// Variables: `PGWARD_JOB_NAME`, `PGWARD_JOB_STATUS` (`success` or `failure`),
/// `PGWARD_JOB_REASON` (empty if none), `PGWARD_JOB_EXIT_CODE` (empty if none),
/// `PGWARD_JOB_ATTEMPT`, `PGWARD_JOB_STARTED_AT` (RFC 3339), `PGWARD_JOB_DURATION` (seconds,
/// e.g. `41.938`), `PGWARD_JOB_OUTPUT` (the output tail, one line per line).
///
/// Cancel safety: dropping the future kills a running report command and abandons the request.
pub async fn send(
    report_config: &ReportConfig,
    report: &RunReport,
    env: &BTreeMap<String, String>,
    child_env: &ChildEnv,
    run_as: Result<Option<RunAs>, String>,
    sink: &LogSink,
) {
    let command = async {
        if let Some(command) = &report_config.command {
            if let Err(e) = run_command(command, report, env, child_env, run_as, sink).await {
                tracing::error!(
                    job = %report.job,
                    "failed to run the {} report command of job {}: {e:#}",
                    report.status.as_str(),
                    report.job
                );
            }
        }
    };
    let webhook = async {
        if let Some(webhook) = &report_config.webhook {
            if let Err(e) = post(webhook, report).await {
                tracing::error!(
                    job = %report.job,
                    "failed to POST the {} report of job {} to {}: {e:#}",
                    report.status.as_str(),
                    report.job,
                    origin(&webhook.url)
                );
            }
        }
    };
    tokio::join!(command, webhook);
}

/// Runs the report command; fails unless it exits 0 in time.
async fn run_command(
    command: &CommandLine,
    report: &RunReport,
    env: &BTreeMap<String, String>,
    child_env: &ChildEnv,
    run_as: Result<Option<RunAs>, String>,
    sink: &LogSink,
) -> Result<()> {
    let run_as = run_as.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut env = env.clone();
    // Ours win over the job's: they describe this run.
    env.extend(
        report
            .env_vars()
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value)),
    );
    let run = CommandRun {
        name: format!("job {} report", report.job),
        command: command.clone(),
        env,
        run_as,
        // Not the job's directory, which may be the very thing that broke.
        working_dir: Some("/".into()),
        timeout: Some(REPORT_COMMAND_TIMEOUT),
        kill_timeout: REPORT_COMMAND_KILL_TIMEOUT,
        // Its output is in the log already; nothing reads a tail of it.
        output_lines: 0,
        child_env: child_env.clone(),
    };
    // Nothing cancels a report but dropping this future (see `send`).
    let outcome = command::run(&run, sink, None, &CancellationToken::new()).await?;
    if outcome.timed_out {
        bail!(
            "it ran longer than {} and was stopped ({})",
            humantime::format_duration(REPORT_COMMAND_TIMEOUT),
            outcome.exit
        );
    }
    if !outcome.exit.success() {
        bail!("{}", outcome.exit);
    }
    Ok(())
}

/// POSTs `report` as JSON; fails on a transport error, a timeout, or a status other than 2xx.
async fn post(webhook: &WebhookConfig, report: &RunReport) -> Result<()> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &webhook.headers {
        let header = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("use header name {name:?}"))?;
        // The error of an invalid value does not echo it, but say nothing of it anyway.
        let mut value = reqwest::header::HeaderValue::from_str(value.expose())
            .map_err(|_| anyhow!("header {name:?} has a value that is not valid in HTTP"))?;
        value.set_sensitive(true);
        headers.insert(header, value);
    }
    let body = serde_json::to_vec(report).context("encode the report as JSON")?;
    let client = reqwest::Client::builder()
        .timeout(webhook.timeout)
        .user_agent(concat!("pgward/", env!("CARGO_PKG_VERSION")))
        // A redirect would send the secret headers on to another place and turn the POST into
        // a GET; a webhook that moved is an error to fix in the config.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("build an HTTP client")?;
    let response = client
        .post(&webhook.url)
        .headers(headers)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                anyhow!(
                    "no answer within {}",
                    humantime::format_duration(webhook.timeout)
                )
            } else {
                // The URL may hold a token: keep it out of the message.
                anyhow::Error::new(e.without_url())
            }
        })?;
    let status = response.status();
    if !status.is_success() {
        bail!("it answered {status}");
    }
    Ok(())
}

/// `scheme://host[:port]` of `url`, the part of a webhook URL that is safe to log.
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
            (Some(host), None) => format!("{}://{host}", url.scheme()),
            (None, _) => format!("a {} URL", url.scheme()),
        },
        Err(_) => "an invalid URL".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tracing::instrument::WithSubscriber;

    use super::command::test_sink;
    use super::*;
    use crate::config::Secret;

    fn report() -> RunReport {
        let started_at = DateTime::parse_from_rfc3339("2024-05-01T02:00:00.5Z")
            .expect("a valid timestamp")
            .with_timezone(&Utc);
        RunReport {
            job: "nightly".into(),
            status: RunStatus::Failure,
            reason: Some("exit code 3".into()),
            exit_code: Some(3),
            attempt: 2,
            started_at,
            finished_at: started_at + chrono::Duration::milliseconds(41_250),
            duration_secs: 41.25,
            output_tail: vec!["first line".into(), "last line".into()],
            host: "db-0".into(),
        }
    }

    /// Runs `future` with pgward's log captured; returns the log text.
    async fn logged<F: std::future::Future<Output = ()>>(future: F) -> String {
        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture(Arc::default());
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        future.with_subscriber(subscriber).await;
        let bytes = capture.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes).expect("utf-8 log")
    }

    /// Sends the test report with `config` and no job environment; returns the log.
    async fn send_logged(config: &ReportConfig) -> String {
        logged(send(
            config,
            &report(),
            &BTreeMap::new(),
            &ChildEnv::default(),
            Ok(None),
            &test_sink(),
        ))
        .await
    }

    /// A request as the test server saw it: header names lowercased.
    struct Request {
        head: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    /// Serves one request with `status` (e.g. `200 OK`) and hands it over.
    async fn serve_once(status: &'static str) -> (u16, tokio::sync::oneshot::Receiver<Request>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test port");
        let port = listener.local_addr().expect("bound address").port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept the webhook");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = stream.read(&mut chunk).await.expect("read the request");
                assert!(n > 0, "connection closed before the end of the head");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8(buf[..head_end].to_vec()).expect("utf-8 head");
            let headers: Vec<(String, String)> = head
                .lines()
                .skip(1)
                .filter_map(|line| line.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse().expect("numeric content-length"))
                .unwrap_or(0);
            while buf.len() < head_end + length {
                let n = stream.read(&mut chunk).await.expect("read the body");
                assert!(n > 0, "connection closed before the end of the body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let response =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            stream
                .write_all(response.as_bytes())
                .await
                .expect("answer the webhook");
            let _ = stream.shutdown().await;
            let _ = tx.send(Request {
                head,
                headers,
                body: buf[head_end..head_end + length].to_vec(),
            });
        });
        (port, rx)
    }

    fn webhook(port: u16) -> ReportConfig {
        ReportConfig {
            command: None,
            webhook: Some(WebhookConfig {
                url: format!("http://127.0.0.1:{port}/hooks/T0K3N?key=qu3ry"),
                headers: BTreeMap::from([(
                    "X-Pgward-Token".to_owned(),
                    Secret::new("s3cret-value".into()),
                )]),
                timeout: Duration::from_secs(5),
            }),
        }
    }

    /// No secret, path or query of the test webhook may reach the log.
    fn assert_no_secrets(log: &str) {
        for secret in ["s3cret-value", "T0K3N", "qu3ry"] {
            assert!(
                !log.contains(secret),
                "{secret} leaked into the log:\n{log}"
            );
        }
    }

    #[test]
    fn serializes_to_the_documented_json() {
        let json = serde_json::to_value(report()).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "job": "nightly",
                "status": "failure",
                "reason": "exit code 3",
                "exit_code": 3,
                "attempt": 2,
                "started_at": "2024-05-01T02:00:00.500Z",
                "finished_at": "2024-05-01T02:00:41.750Z",
                "duration_secs": 41.25,
                "output_tail": ["first line", "last line"],
                "host": "db-0",
            })
        );
    }

    #[tokio::test]
    async fn the_command_gets_the_run_in_its_environment() {
        crate::init::reaper::start_test_reaper();
        let dir = tempfile::tempdir().expect("create a temp dir");
        let out = dir.path().join("vars");
        let script = r#"{
            echo "NAME=$PGWARD_JOB_NAME"
            echo "STATUS=$PGWARD_JOB_STATUS"
            echo "REASON=$PGWARD_JOB_REASON"
            echo "EXIT_CODE=$PGWARD_JOB_EXIT_CODE"
            echo "ATTEMPT=$PGWARD_JOB_ATTEMPT"
            echo "STARTED_AT=$PGWARD_JOB_STARTED_AT"
            echo "DURATION=$PGWARD_JOB_DURATION"
            echo "OUTPUT=$PGWARD_JOB_OUTPUT"
            echo "JOB_VAR=$JOB_VAR"
            echo "cwd=$(pwd)"
        } > "$OUT""#;
        let config = ReportConfig {
            command: Some(CommandLine::Shell(script.into())),
            webhook: None,
        };
        let env = BTreeMap::from([
            ("JOB_VAR".to_owned(), "from the job".to_owned()),
            ("OUT".to_owned(), out.display().to_string()),
            // The run's own value wins over the job's.
            ("PGWARD_JOB_NAME".to_owned(), "overridden".to_owned()),
        ]);
        let log = logged(send(
            &config,
            &report(),
            &env,
            &ChildEnv::default(),
            Ok(None),
            &test_sink(),
        ))
        .await;
        assert!(!log.contains("ERROR"), "{log}");
        let written = std::fs::read_to_string(&out).expect("the command wrote its file");
        assert_eq!(
            written,
            "NAME=nightly\nSTATUS=failure\nREASON=exit code 3\nEXIT_CODE=3\nATTEMPT=2\n\
             STARTED_AT=2024-05-01T02:00:00.500Z\nDURATION=41.250\n\
             OUTPUT=first line\nlast line\nJOB_VAR=from the job\ncwd=/\n"
        );
    }

    #[tokio::test]
    async fn a_failing_command_is_logged_not_returned() {
        crate::init::reaper::start_test_reaper();
        let config = ReportConfig {
            command: Some(CommandLine::Shell("exit 3".into())),
            webhook: None,
        };
        let log = send_logged(&config).await;
        assert!(
            log.contains("ERROR")
                && log.contains(
                    "failed to run the failure report command of job nightly: exit code 3"
                ),
            "{log}"
        );
    }

    #[tokio::test]
    async fn the_webhook_gets_the_json_body_and_its_headers() {
        let (port, request) = serve_once("200 OK").await;
        let log = send_logged(&webhook(port)).await;
        assert!(!log.contains("ERROR"), "{log}");
        let request = request.await.expect("the server saw a request");
        assert!(
            request
                .head
                .starts_with("POST /hooks/T0K3N?key=qu3ry HTTP/1.1\r\n"),
            "{}",
            request.head
        );
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("x-pgward-token"), Some("s3cret-value"));
        assert_eq!(header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&request.body).expect("a JSON body");
        assert_eq!(body, serde_json::to_value(report()).expect("serialize"));
    }

    #[tokio::test]
    async fn a_webhook_error_status_is_logged_without_secrets() {
        let (port, request) = serve_once("500 Internal Server Error").await;
        let log = send_logged(&webhook(port)).await;
        request.await.expect("the server saw a request");
        let expected = format!(
            "failed to POST the failure report of job nightly to http://127.0.0.1:{port}: \
             it answered 500 Internal Server Error"
        );
        assert!(log.contains("ERROR") && log.contains(&expected), "{log}");
        assert_no_secrets(&log);
    }

    #[tokio::test]
    async fn an_unreachable_or_silent_webhook_is_logged() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test port");
        let port = closed.local_addr().expect("bound address").port();
        drop(closed);
        let log = send_logged(&webhook(port)).await;
        let expected = format!(
            "failed to POST the failure report of job nightly to http://127.0.0.1:{port}: "
        );
        assert!(log.contains("ERROR") && log.contains(&expected), "{log}");
        assert_no_secrets(&log);

        // Accepts, never answers.
        let silent = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test port");
        let port = silent.local_addr().expect("bound address").port();
        let mut config = webhook(port);
        if let Some(webhook) = &mut config.webhook {
            webhook.timeout = Duration::from_millis(300);
        }
        let log = send_logged(&config).await;
        assert!(log.contains("no answer within 300ms"), "{log}");
        drop(silent);
    }
}
