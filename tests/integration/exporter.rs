//! The postgres collector against real servers: its families next to postgres_exporter
//! 0.11's (the Debian package, run on the same server), replication and a failing archiver,
//! custom queries, stalled queries, a stopped server.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgward::metrics::postgres::PostgresCollector;
use pgward::metrics::text::Families;

use crate::common::{self, free_port, Cluster, Pgward, BOOT};

/// postgres_exporter 0.11's own families (Go runtime, process, HTTP handler, build info):
/// pgward's process has its own metrics.
const REFERENCE_ONLY_PREFIXES: &[&str] = &["go_", "process_", "promhttp_", "postgres_exporter_"];

/// Families pgward adds to 0.11's defaults (docs/metrics.md, "Differences").
const PGWARD_ONLY: &[&str] = &[
    "pg_postmaster_start_time_seconds",
    "pg_replication_lag",
    "pg_replication_is_replica",
];

/// A config for `cluster` with `parameters` added under `postgres.parameters` and `metrics`
/// lines under `metrics:` (its endpoint on a free port, whoever serves it); `extra` is added
/// at top level.
fn config_with(cluster: &Cluster, parameters: &str, metrics: &str, extra: &str) -> PathBuf {
    let metrics = format!(
        "{extra}metrics:\n  listen: 127.0.0.1:{}\n{}",
        free_port(),
        metrics
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let path = cluster.config("password: pw", &metrics);
    let text = std::fs::read_to_string(&path).unwrap();
    let parameters: String = parameters.lines().map(|l| format!("    {l}\n")).collect();
    let text = text.replacen(
        "  parameters:\n",
        &format!("  parameters:\n{parameters}"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn collector_for(config: &Path) -> PostgresCollector {
    let config = pgward::config::load(Some(config), &|_| None).expect("load the test config");
    PostgresCollector::new(config.postgres.superuser_target(), &config.metrics)
        .expect("a collector")
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> f64 {
    let family = families
        .get(name)
        .unwrap_or_else(|| panic!("no family {name} in:\n{}", families.render()));
    let matching: Vec<f64> = family
        .samples()
        .filter(|(have, _)| {
            labels
                .iter()
                .all(|(n, v)| have.iter().any(|(hn, hv)| hn == n && hv == v))
        })
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{name}{labels:?}: {} samples match in:\n{}",
        matching.len(),
        families.render()
    );
    matching[0]
}

fn collector_success(families: &Families) -> BTreeMap<String, f64> {
    families
        .get("pg_scrape_collector_success")
        .expect("pg_scrape_collector_success")
        .samples()
        .map(|(labels, v)| (labels[0].1.clone(), v))
        .collect()
}

/// A family in an exposition: its type and the label-name sets of its samples.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Shape {
    kind: String,
    labels: BTreeSet<Vec<String>>,
}

/// Parses an exposition into family shapes, checking its syntax on the way: every sample
/// belongs to a family declared once by `# TYPE`, values are floats, label values properly
/// quoted.
fn shapes(text: &str) -> BTreeMap<String, Shape> {
    let mut out: BTreeMap<String, Shape> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            let previous = out.insert(
                name.to_owned(),
                Shape {
                    kind: kind.to_owned(),
                    labels: BTreeSet::new(),
                },
            );
            assert!(previous.is_none(), "two # TYPE lines for {name}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels, value) = parse_sample(line);
        assert!(
            value == "NaN" || value == "+Inf" || value == "-Inf" || value.parse::<f64>().is_ok(),
            "value of {line:?}"
        );
        let mut names: Vec<String> = labels.into_iter().map(|(n, _)| n).collect();
        names.sort();
        // Histogram and summary series belong to their base family.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|base| {
                    out.get(*base)
                        .is_some_and(|f| matches!(f.kind.as_str(), "histogram" | "summary"))
                })
            })
            .unwrap_or(&name)
            .to_owned();
        out.get_mut(&family)
            .unwrap_or_else(|| panic!("sample without # TYPE: {line}"))
            .labels
            .insert(names);
    }
    out
}

/// `name{a="x",b="y"} value` → (name, pairs, value text).
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, String) {
    let end = line.find(['{', ' ']).expect("a sample line");
    let name = line[..end].to_owned();
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').expect("label=");
            let label = rest[..eq].to_owned();
            let mut chars = rest[eq + 1..].char_indices();
            assert_eq!(chars.next().map(|c| c.1), Some('"'), "{line}");
            let mut value = String::new();
            let close = loop {
                match chars.next().expect("closing quote") {
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => panic!("bad escape \\{c} in {line}"),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.push((label, value));
            rest = &rest[eq + 1 + close + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.trim().split(' ').next().expect("a value").to_owned();
    (name, labels, value)
}

/// postgres_exporter 0.11 (Debian's `prometheus-postgres-exporter`) on `cluster`.
struct Reference {
    child: Child,
    port: u16,
}

impl Reference {
    fn start(cluster: &Cluster) -> Reference {
        let port = free_port();
        let child = Command::new("prometheus-postgres-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=error")
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "host={} port={} user=postgres password=pw dbname=postgres sslmode=disable",
                    cluster.socket_dir().display(),
                    cluster.port
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "run prometheus-postgres-exporter (Debian's package, installed by \
                 scripts/test-deps.sh)",
            );
        Reference { child, port }
    }

    fn scrape(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                // HTTP/1.0: a body without chunked encoding, ended by the close.
                stream
                    .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    .unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
                assert!(
                    head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
                    "{head}"
                );
                return body.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "postgres_exporter did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pg_basebackup -R -X stream` of `primary` into `standby`'s data directory, creating the
/// physical slot `slot`: a streaming standby once started.
fn clone_as_standby(primary: &Cluster, standby: &Cluster, slot: &str) {
    let dest = standby.data_dir();
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(common::pg_bin_dir().join("pg_basebackup"))
        .args(["-h", primary.socket_dir().to_str().unwrap()])
        .args(["-p", &primary.port.to_string(), "-U", "postgres"])
        .args(["-D", dest.to_str().unwrap()])
        .args(["-R", "-X", "stream", "-c", "fast", "-C", "-S", slot]);
    if common::is_root() {
        // The server's user must own the copy.
        std::fs::create_dir_all(&dest).unwrap();
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&dest, Some(postgres.uid), Some(postgres.gid)).unwrap();
        let mut runuser = Command::new("runuser");
        runuser
            .args(["-u", "postgres", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        cmd = runuser;
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The version postgres_exporter says it is.
fn reference_version() -> Option<String> {
    let out = Command::new("prometheus-postgres-exporter")
        .arg("--version")
        .output()
        .expect("run prometheus-postgres-exporter (installed by scripts/test-deps.sh)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map(|v| v.trim_end_matches(',').to_owned())
}

/// Families, types and label names of `collector` equal postgres_exporter's on `cluster`,
/// but for the documented differences.
async fn compare_with_reference(cluster: &Cluster, collector: &PostgresCollector) {
    let reference = Reference::start(cluster);
    let theirs = shapes(&reference.scrape());
    let ours_text = collector.scrape().await.render();
    let ours_shapes = shapes(&ours_text);
    let compared = theirs
        .keys()
        .filter(|n| ours_shapes.contains_key(*n))
        .count();
    assert!(compared > 200, "only {compared} families in common");
    let mut problems = Vec::new();
    for (name, shape) in &theirs {
        if REFERENCE_ONLY_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        match ours_shapes.get(name) {
            None => problems.push(format!("missing: {name} {shape:?}")),
            Some(mine) if mine != shape => {
                problems.push(format!("differs: {name}: ours {mine:?}, theirs {shape:?}"))
            }
            Some(_) => {}
        }
    }
    for name in ours_shapes.keys() {
        if !theirs.contains_key(name) && !PGWARD_ONLY.contains(&name.as_str()) {
            problems.push(format!("extra: {name}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for name in PGWARD_ONLY {
        assert!(ours_shapes.contains_key(*name), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn families_match_postgres_exporter_on_a_primary_with_a_standby_and_a_failing_archiver() {
    let primary = Cluster::new();
    let config = config_with(
        &primary,
        "archive_mode: \"on\"\narchive_command: \"false\"",
        "",
        // postgres's own archive_command, failing every time.
        "wal:\n  archive: false\n",
    );
    let _pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = primary
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;

    let standby = Cluster::new();
    clone_as_standby(&primary, &standby, "standby1");
    client
        .batch_execute("SELECT pg_create_physical_replication_slot('unused')")
        .await
        .unwrap();
    let standby_config = config_with(&standby, "", "", "");
    let _standby_pgward =
        Pgward::start(&["--config", standby_config.to_str().unwrap(), "run"], &[]);
    standby
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    let deadline = Instant::now() + BOOT;
    while client
        .query("SELECT 1 FROM pg_stat_replication WHERE state = 'streaming' AND replay_lsn IS NOT NULL", &[])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the standby never streamed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let collector = collector_for(&config);
    let ours = collector.scrape().await;
    let server = format!("{}:{}", primary.socket_dir().display(), primary.port);
    let server = ("server", server.as_str());

    // Sane values.
    assert_eq!(value(&ours, "pg_up", &[]), 1.0);
    assert_eq!(value(&ours, "pg_exporter_last_scrape_error", &[]), 0.0);
    assert_eq!(value(&ours, "pg_exporter_scrapes_total", &[]), 1.0);
    for (collector, ok) in collector_success(&ours) {
        assert_eq!(ok, 1.0, "collector {collector} failed:\n{}", ours.render());
    }
    assert!(
        value(
            &ours,
            "pg_database_size_bytes",
            &[("datname", "postgres"), server]
        ) > 1e6
    );
    let major: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .unwrap()
        .get(0);
    let short_version = ours
        .get("pg_static")
        .unwrap()
        .samples()
        .next()
        .unwrap()
        .0
        .iter()
        .find(|(n, _)| n == "short_version")
        .unwrap()
        .1
        .clone();
    assert!(
        short_version.starts_with(&format!("{}.", major.parse::<u32>().unwrap() / 10000)),
        "{short_version}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value(&ours, "pg_postmaster_start_time_seconds", &[]);
    assert!(started <= now && started > now - 600.0, "{started}");
    assert_eq!(value(&ours, "pg_settings_shared_buffers_bytes", &[]), {
        let blocks: String = client
            .query_one(
                "SELECT setting FROM pg_settings WHERE name = 'shared_buffers'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        blocks.parse::<f64>().unwrap() * 8192.0
    });
    assert_eq!(
        value(&ours, "pg_settings_checkpoint_timeout_seconds", &[]),
        300.0
    );
    assert_eq!(value(&ours, "pg_replication_is_replica", &[]), 0.0);
    assert_eq!(value(&ours, "pg_replication_lag", &[]), 0.0);
    let standby_labels = [("slot_name", "standby1"), ("state", "streaming")];
    assert!(
        value(
            &ours,
            "pg_stat_replication_pg_current_wal_lsn_bytes",
            &standby_labels
        ) > 0.0
    );
    assert!(
        value(
            &ours,
            "pg_stat_replication_pg_wal_lsn_diff",
            &standby_labels
        ) >= 0.0
    );
    assert_eq!(
        value(
            &ours,
            "pg_replication_slots_active",
            &[("slot_name", "standby1")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &ours,
            "pg_replication_slots_active",
            &[("slot_name", "unused")]
        ),
        0.0
    );
    assert!(value(
        &ours,
        "pg_replication_slots_pg_wal_lsn_diff",
        &[("slot_name", "unused")]
    )
    .is_nan());
    assert!(
        value(
            &ours,
            "pg_stat_activity_count",
            &[("datname", "postgres"), ("state", "active")]
        ) >= 1.0,
        "the collector's own session is active"
    );
    assert!(
        value(
            &ours,
            "pg_locks_count",
            &[("datname", "postgres"), ("mode", "accesssharelock")]
        ) >= 1.0
    );
    assert_eq!(value(&ours, "pg_stat_archiver_archived_count", &[]), 0.0);
    assert!(value(&ours, "pg_stat_archiver_last_archive_age", &[]).is_nan());

    // The same families, types and labels as postgres_exporter 0.11 on the same server.
    if let Some(version) = reference_version().filter(|v| !v.starts_with("0.11.")) {
        eprintln!("postgres_exporter {version} is not 0.11: the comparison with it is skipped");
    } else {
        compare_with_reference(&primary, &collector).await;
    }

    // Counters move
    // Counters move: transactions commit, the failing archive_command fails again after each
    // segment switch.
    let commits = value(
        &ours,
        "pg_stat_database_xact_commit",
        &[("datname", "postgres")],
    );
    let failed = value(&ours, "pg_stat_archiver_failed_count", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS t (i int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = collector.scrape().await;
        if value(
            &now,
            "pg_stat_database_xact_commit",
            &[("datname", "postgres")],
        ) > commits
            && value(&now, "pg_stat_archiver_failed_count", &[]) > failed
        {
            assert_eq!(value(&now, "pg_stat_archiver_archived_count", &[]), 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "xact_commit or failed_count did not rise:\n{}",
            now.render()
        );
    }

    // The standby says it is one.
    let on_standby = collector_for(&standby_config).scrape().await;
    assert_eq!(value(&on_standby, "pg_up", &[]), 1.0);
    assert_eq!(value(&on_standby, "pg_replication_is_replica", &[]), 1.0);
    assert!(value(&on_standby, "pg_replication_lag", &[]) >= 0.0);
    for (collector, ok) in collector_success(&on_standby) {
        assert_eq!(
            ok,
            1.0,
            "collector {collector} failed on the standby:\n{}",
            on_standby.render()
        );
    }
    assert!(on_standby
        .get("pg_stat_replication_pg_wal_lsn_diff")
        .is_none_or(|f| f.is_empty()));
}

const QUERIES: &str = r#"
app_orders:
  query: "SELECT status, count(*) AS n, sum(amount) AS amount, 'x' AS note FROM orders GROUP BY status"
  metrics:
    - status:
        usage: "LABEL"
        description: "Order status"
    - n:
        usage: "GAUGE"
        description: "Orders per status"
    - amount:
        usage: "COUNTER"
        description: "Sum of the \"amount\" column"
    - note:
        usage: "DISCARD"
        description: "Dropped"
app_locked:
  query: "SELECT count(*) AS rows FROM locked"
  metrics:
    - rows:
        usage: "GAUGE"
        description: "Rows of a table someone may lock"
app_sleepy:
  query: "SELECT 1 AS done FROM (SELECT pg_sleep(coalesce(max(seconds), 0)) FROM knobs) s"
  metrics:
    - done:
        usage: "GAUGE"
        description: "Sleeps as long as the knob says"
app_after:
  query: "SELECT 1 AS ran"
  metrics:
    - ran:
        usage: "GAUGE"
        description: "Runs last"
"#;

/// The metrics session as the server sees it: (pid, state) of each.
async fn exporter_sessions(client: &tokio_postgres::Client) -> Vec<(i32, String)> {
    client
        .query(
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity WHERE application_name = $1",
            &[&pgward::metrics::postgres::APPLICATION_NAME],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_queries_stalls_concurrent_scrapes_and_a_stopped_server() {
    let cluster = Cluster::new();
    let queries = cluster.dir.write("queries.yaml", QUERIES);
    let config = config_with(
        &cluster,
        "",
        &format!(
            "queries_file: {}\nscrape_timeout: 3s\nstatement_timeout: 30s\nlock_timeout: 1s",
            queries.display()
        ),
        "",
    );
    let mut pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    client
        .batch_execute(
            "CREATE TABLE orders (status text, amount numeric);
             INSERT INTO orders VALUES ('new', 1.5), ('new', 2), ('paid', 10);
             CREATE TABLE locked (i int);
             CREATE TABLE knobs (seconds float8);",
        )
        .await
        .unwrap();
    let collector = collector_for(&config);
    assert_eq!(
        collector.collectors()[collector.collectors().len() - 4..],
        ["app_orders", "app_locked", "app_sleepy", "app_after"]
    );

    // Custom queries: labels, types, help, the server label; numeric sums are numbers.
    let first = collector.scrape().await;
    for (collector, ok) in collector_success(&first) {
        assert_eq!(ok, 1.0, "collector {collector} failed:\n{}", first.render());
    }
    let server = format!("{}:{}", cluster.socket_dir().display(), cluster.port);
    let text = first.render();
    assert!(
        text.contains(&format!(
            "# HELP app_orders_amount Sum of the \"amount\" column\n\
             # TYPE app_orders_amount counter\n\
             app_orders_amount{{status=\"new\",server=\"{server}\"}} 3.5\n\
             app_orders_amount{{status=\"paid\",server=\"{server}\"}} 10\n"
        )),
        "{text}"
    );
    assert_eq!(value(&first, "app_orders_n", &[("status", "new")]), 2.0);
    assert_eq!(
        first.get("app_orders_n").unwrap().kind(),
        pgward::metrics::text::Kind::Gauge
    );
    assert!(first.get("app_orders_note").is_none());
    assert_eq!(value(&first, "app_after_ran", &[]), 1.0);
    let sessions = exporter_sessions(&client).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let pid = sessions[0].0;

    // A table locked by someone else and a query that sleeps past the scrape deadline.
    let holder = cluster.connect("postgres", "pw", "postgres").await.unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO knobs VALUES (30)")
        .await
        .unwrap();
    let began = Instant::now();
    let stalled = collector.scrape().await;
    let took = began.elapsed();
    // The deadline is 3s; the margin is for a busy test machine.
    assert!(
        took < Duration::from_millis(4000),
        "the scrape took {took:?}, past scrape_timeout (3s)"
    );
    assert!(
        took >= Duration::from_secs(2),
        "{took:?}: did the sleep run?"
    );
    let success = collector_success(&stalled);
    assert_eq!(success["app_locked"], 0.0, "lock_timeout");
    assert_eq!(success["app_sleepy"], 0.0, "cut off by scrape_timeout");
    assert_eq!(success["app_after"], 0.0, "no time left");
    assert_eq!(success["app_orders"], 1.0);
    assert_eq!(success["database"], 1.0);
    assert_eq!(success["settings"], 1.0);
    assert_eq!(value(&stalled, "pg_up", &[]), 1.0);
    assert_eq!(value(&stalled, "pg_exporter_last_scrape_error", &[]), 1.0);
    assert!(stalled.get("app_locked_rows").is_none());
    assert_eq!(
        value(
            &stalled,
            "pg_locks_count",
            &[("datname", "postgres"), ("mode", "accessexclusivelock")]
        ),
        1.0
    );

    // The sleeping query was cancelled: the one session is idle again, not a second one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sessions = exporter_sessions(&client).await;
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        assert_eq!(sessions[0].0, pid, "the session was kept");
        if sessions[0].1 == "idle" {
            break;
        }
        assert!(Instant::now() < deadline, "still {sessions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Released: everything works again on the same session.
    holder.batch_execute("ROLLBACK").await.unwrap();
    client
        .batch_execute("UPDATE knobs SET seconds = 1")
        .await
        .unwrap();
    let again = collector.scrape().await;
    for (collector, ok) in collector_success(&again) {
        assert_eq!(ok, 1.0, "collector {collector} failed:\n{}", again.render());
    }
    assert_eq!(value(&again, "app_locked_rows", &[]), 0.0);
    assert_eq!(exporter_sessions(&client).await[0].0, pid);

    // Concurrent scrapes share one collection (each takes a second: the knob).
    let total = value(&again, "pg_exporter_scrapes_total", &[]);
    let (a, b) = tokio::join!(collector.scrape(), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        collector.scrape().await
    });
    assert_eq!(value(&a, "pg_exporter_scrapes_total", &[]), total + 1.0);
    assert_eq!(
        a.render(),
        b.render(),
        "the second scrape got the first's result"
    );
    assert_eq!(exporter_sessions(&client).await.len(), 1);

    // Postgres stopped: pg_up 0, every collector failed, promptly, no panic.
    drop(holder);
    drop(client);
    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    pgward.wait_exit(Duration::from_secs(60));
    let began = Instant::now();
    let down = collector.scrape().await;
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(value(&down, "pg_up", &[]), 0.0);
    assert_eq!(value(&down, "pg_exporter_last_scrape_error", &[]), 1.0);
    assert!(down.get("pg_static").is_none());
    for (collector, ok) in collector_success(&down) {
        assert_eq!(ok, 0.0, "collector {collector}");
    }

    // Started again: a new session.
    let _pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    client
        .batch_execute("UPDATE knobs SET seconds = 0")
        .await
        .unwrap();
    let back = collector.scrape().await;
    assert_eq!(value(&back, "pg_up", &[]), 1.0);
    assert_eq!(value(&back, "app_orders_n", &[("status", "paid")]), 1.0);
    assert_eq!(exporter_sessions(&client).await.len(), 1);
}

#[test]
fn a_bad_queries_file_is_refused_naming_the_file_and_the_query() {
    let dir = common::TestDir::new();
    let queries = dir.write(
        "queries.yaml",
        "good:\n  query: SELECT 1 AS x\n  metrics:\n    - x: {usage: GAUGE}\n\
         broken:\n  query: SELECT 1 AS x\n  metrics:\n    - x: {usage: GUAGE}\n\
         locks:\n  query: SELECT 1 AS x\n  metrics:\n    - x: {usage: GAUGE}\n",
    );
    let text = format!("metrics:\n  queries_file: {}\n", queries.display());
    let config = pgward::config::from_str(&text, "pgward.yaml", &|_| None).unwrap();
    let target = config.postgres.superuser_target();
    let error = PostgresCollector::new(target.clone(), &config.metrics)
        .err()
        .expect("refused");
    assert_eq!(
        format!("{error:#}"),
        format!(
            "{}: query broken: column x: unknown usage \"GUAGE\" (LABEL, COUNTER, GAUGE or DISCARD)",
            queries.display()
        )
    );

    // Fixed, the name of a built-in collector is still refused.
    std::fs::write(
        &queries,
        "locks:\n  query: SELECT 1 AS x\n  metrics:\n    - x: {usage: GAUGE}\n",
    )
    .unwrap();
    let error = PostgresCollector::new(target.clone(), &config.metrics)
        .err()
        .expect("refused");
    assert_eq!(
        format!("{error:#}"),
        format!(
            "{}: query locks: the name is a built-in collector's; choose another",
            queries.display()
        )
    );

    // A missing file.
    std::fs::remove_file(&queries).unwrap();
    let error = PostgresCollector::new(target, &config.metrics)
        .err()
        .expect("refused");
    assert!(
        format!("{error:#}").starts_with(&format!(
            "read metrics.queries_file {}: ",
            queries.display()
        )),
        "{error:#}"
    );
}
