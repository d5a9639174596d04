//! No secret shows anywhere pgward shows things: secrets in every place a config can hold one
//! (the S3 secret key, the postgres password, a job's secret-named variable, a conninfo
//! password in a server parameter, key=value and URI forms, a webhook URL with a token in its
//! path and its query) appear in none of `config print`, pgward's log, `pgward status`,
//! `jobs run`, `/status`, `/metrics` or the job's report; `/status` over HTTP carries no job
//! output and is behind the metrics' basic auth; `config check` warns about a config file
//! with a secret in it that the server's OS user can read.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::{is_root, one_request_server, pgward_with, Cluster, Pgward, TestDir, BOOT};
use crate::storage_servers::TestS3;

const PG_PASSWORD: &str = "Pg-Secret-0001";
const CONNINFO_PASSWORD: &str = "Conninfo-Secret-0002";
const URI_PASSWORD: &str = "Uri-Secret-0003";
const JOB_ENV_SECRET: &str = "Job-Env-Secret-0004";
const WEBHOOK_PATH_TOKEN: &str = "Webhook-Path-Secret-0005";
const WEBHOOK_QUERY_TOKEN: &str = "Webhook-Query-Secret-0006";
const METRICS_PASSWORD: &str = "Metrics-Secret-0007";

/// Asserts that none of `secrets` is in `text` (what `place` printed).
fn assert_hidden(place: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} shows in {place}:\n{text}");
    }
}

async fn get(port: u16, path: &str, auth: Option<(&str, &str)>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut request = client.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some((user, password)) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_config_print_log_status_metrics_or_reports() {
    let cluster = Cluster::new();
    let s3 = TestS3::start();
    let (hook_port, hook) = one_request_server(200).await;
    // The job prints its environment, as a job that debugs itself would.
    let jobs = format!(
        r#"jobs:
  - name: leaky
    schedule: '@daily'
    command: [sh, -c, 'echo visible-command-marker; printenv']
    env: {{ API_TOKEN: {JOB_ENV_SECRET}, MODE: visible-env-marker }}
    output_lines: 1000
    on_success:
      webhook:
        url: http://127.0.0.1:{hook_port}/hooks/{WEBHOOK_PATH_TOKEN}?token={WEBHOOK_QUERY_TOKEN}
"#
    );
    let config = cluster.config(
        &format!("password: {PG_PASSWORD}"),
        &format!("{}{jobs}", s3.config_yaml("redaction")),
    );
    // The conninfo secrets: primary_conninfo (key=value form; a primary ignores it) and a
    // custom parameter holding a URI.
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "  parameters:\n",
        &format!(
            "  parameters:\n    primary_conninfo: 'host=127.0.0.1 port=1 user=rep \
             password={CONNINFO_PASSWORD}'\n    pgward_test.dsn: \
             'postgresql://rep:{URI_PASSWORD}@db/x?sslmode=disable&password={URI_PASSWORD}'\n"
        ),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let secrets = [
        s3.secret_key.as_str(),
        PG_PASSWORD,
        CONNINFO_PASSWORD,
        URI_PASSWORD,
        JOB_ENV_SECRET,
        WEBHOOK_PATH_TOKEN,
        WEBHOOK_QUERY_TOKEN,
    ];

    // config print: every secret hidden, the rest (the command line) shown.
    let (code, printed, err) = pgward_with(&config, &["config", "print"]);
    assert_eq!(code, 0, "{printed}\n{err}");
    assert_hidden("config print", &printed, &secrets);
    for shown in [
        "visible-command-marker",
        "MODE: visible-env-marker",
        "API_TOKEN: <redacted>",
        "secret_access_key: <redacted>",
        "password=<redacted>",
        "postgresql://rep:…@db/x?sslmode=disable&password=…",
        &format!("url: http://127.0.0.1:{hook_port}/…/…?token=…"),
    ] {
        assert!(printed.contains(shown), "{shown} missing:\n{printed}");
    }

    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    cluster
        .wait_connect("postgres", PG_PASSWORD, "postgres", BOOT)
        .await;

    // A run through the control socket: its output, streamed, is scrubbed.
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "leaky"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("visible-command-marker"), "{out}");
    assert!(out.contains("API_TOKEN=<redacted>"), "{out}");
    assert!(out.contains("MODE=visible-env-marker"), "{out}");
    assert_hidden("jobs run", &format!("{out}\n{err}"), &secrets);

    // The report: its body carries the output tail, scrubbed.
    let request = tokio::time::timeout(Duration::from_secs(30), hook)
        .await
        .expect("the webhook was called")
        .unwrap();
    let body = request.split_once("\r\n\r\n").map(|(_, b)| b).unwrap();
    let report: serde_json::Value = serde_json::from_str(body).expect("a JSON report");
    assert!(
        report["output_tail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "API_TOKEN=<redacted>"),
        "{report:#}"
    );
    assert_hidden("the webhook's report", body, &secrets);

    // pgward status over the socket may keep the output, scrubbed.
    let status = Pgward::status(&config);
    let status_text = serde_json::to_string_pretty(&status).unwrap();
    assert_hidden("pgward status --json", &status_text, &secrets);
    let job = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "leaky")
        .unwrap_or_else(|| panic!("no job leaky in {status_text}"));
    assert!(
        job["last_output"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|l| l == "visible-command-marker")),
        "{status_text}"
    );
    let (code, out, err) = pgward_with(&config, &["status"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_hidden("pgward status", &out, &secrets);
    let (code, out, err) = pgward_with(&config, &["jobs", "list", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_hidden("pgward jobs list --json", &out, &secrets);

    // /status over HTTP (no auth configured): no job output at all, no secret.
    let port = cluster.metrics_port;
    let (code, body) = get(port, "/status", None).await;
    assert_eq!(code, 200, "{body}");
    assert_hidden("/status", &body, &secrets);
    assert!(!body.contains("visible-command-marker"), "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    for job in json["jobs"].as_array().unwrap() {
        assert!(job.get("last_output").is_none(), "{body}");
    }
    assert_eq!(json["jobs"][0]["runs_total"], 1, "{body}");

    let (code, body) = get(port, "/metrics", None).await;
    assert_eq!(code, 200, "{body}");
    assert_hidden("/metrics", &body, &secrets);

    // pgward's log, to its last line: the job's output is in it, scrubbed.
    let mut pgward = pgward;
    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    pgward.wait_exit(Duration::from_secs(60));
    let log = pgward.output();
    assert_hidden("pgward's log", &log, &secrets);
    assert!(log.contains("API_TOKEN=<redacted>"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_over_http_needs_the_metrics_credentials() {
    let cluster = Cluster::new();
    let metrics = format!(
        "metrics:\n  listen: 127.0.0.1:{}\n  username: scraper\n  password: {METRICS_PASSWORD}\n\
         jobs:\n  - {{ name: echo, schedule: '@daily', command: [echo, job-output-marker] }}\n",
        cluster.metrics_port
    );
    let config = cluster.config("password: pw", &metrics);
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "echo"]);
    assert_eq!(code, 0, "{out}\n{err}");

    let port = cluster.metrics_port;
    for path in ["/status", "/metrics"] {
        let (code, body) = get(port, path, None).await;
        assert_eq!(code, 401, "{path} without credentials: {body}");
        let (code, body) = get(port, path, Some(("scraper", "wrong"))).await;
        assert_eq!(code, 401, "{path} with a wrong password: {body}");
    }
    let (code, body) = get(port, "/status", Some(("scraper", METRICS_PASSWORD))).await;
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("job-output-marker"), "{body}");
    assert_hidden("/status", &body, &[METRICS_PASSWORD]);
    let (code, body) = get(port, "/metrics", Some(("scraper", METRICS_PASSWORD))).await;
    assert_eq!(code, 200, "{body}");
    assert_hidden("/metrics", &body, &[METRICS_PASSWORD]);
    drop(pgward);
}

#[test]
fn config_check_warns_when_the_server_user_can_read_a_secret() {
    if !is_root() {
        // Which users can read the file only matters, and can only be set up, as root.
        return;
    }
    let dir = TestDir::new();
    let secret_file = dir.write("s3-secret", "from-a-file\n");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let literal = "storage:\n  url: s3://bucket/p\n  s3: { region: r, access_key_id: ak, \
                   secret_access_key: Literal-Secret-0008 }\n";
    let from_file = format!(
        "storage:\n  url: s3://bucket/p\n  s3: {{ region: r, access_key_id: ak, \
         secret_access_key_file: {} }}\n",
        secret_file.display()
    );
    let from_env = "storage:\n  url: s3://bucket/p\n  s3: { region: r, access_key_id: ak, \
                    secret_access_key: '${PGWARD_TEST_S3_SECRET}' }\n";
    let check = |name: &str, text: &str, mode: u32| {
        let path = dir.write(name, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = std::process::Command::new(crate::common::pgward_bin())
            .args(["--config", path.to_str().unwrap(), "config", "check"])
            .env("PGWARD_TEST_S3_SECRET", "from-the-environment")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(
            !stderr.contains("Literal-Secret-0008"),
            "{name}: the warning shows the secret: {stderr}"
        );
        (path, stderr)
    };

    let (path, stderr) = check("world-readable.yaml", literal, 0o644);
    assert_eq!(
        stderr,
        format!(
            "warning: {} is readable by the server's OS user postgres (mode 0644) and holds \
             secrets: storage.s3.secret_access_key; every database superuser can read them\n\
             HINT: chmod 600 {} (readable only by the user pgward runs as), or give each secret \
             as `<key>_file: PATH` or `${{VAR}}` from the environment\n",
            path.display(),
            path.display()
        )
    );
    // Group-readable by a group of the server's user: the same.
    let (path, _) = check("group-readable.yaml", literal, 0o640);
    let postgres_gid = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("a postgres user")
        .gid;
    nix::unistd::chown(&path, None, Some(postgres_gid)).unwrap();
    let out = pgward_with(&path, &["config", "check"]);
    assert_eq!(out.0, 0, "{out:?}");
    assert!(
        out.2.contains("warning: ") && out.2.contains("(mode 0640)"),
        "{out:?}"
    );

    // Not readable by the server's user, or no literal secret in it: nothing to say.
    for (name, text, mode) in [
        ("private.yaml", literal, 0o600),
        ("root-group.yaml", literal, 0o640),
        ("secret-file.yaml", from_file.as_str(), 0o644),
        ("secret-env.yaml", from_env, 0o644),
    ] {
        let (_, stderr) = check(name, text, mode);
        assert_eq!(stderr, "", "{name}");
    }
}
