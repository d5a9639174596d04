//! Transfers over slow and flaky links: every object of a backup, restore and verify goes
//! through the storage fault proxy in front of a real S3-compatible server, and each must
//! complete (and verify) through the faults; `pg_control` is copied only with a valid CRC,
//! and a damaged one in a backup is an error of `verify`. The proxy itself is tested first.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::fault_proxy::{Fault, FaultProxy, Rule};
use crate::common::{
    pgward_armed, pgward_with, reached, start_archiving, start_recovered, Cluster,
};
use crate::storage_servers::TestS3;

/// Sends `request` (a whole HTTP/1.1 request) to the proxy and reads what comes back until
/// the connection closes or nothing arrives for `patience`; with how long that took.
fn exchange(port: u16, request: &str, patience: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
    stream.set_read_timeout(Some(patience)).unwrap();
    // A refused connection may already be closed: the write's error is not the point.
    let _ = stream.write_all(request.as_bytes());
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => break,
        }
    }
    (got, start.elapsed())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// The body length a response announces, and the body bytes that came.
fn body_lengths(response: &[u8]) -> (usize, usize) {
    let text = String::from_utf8_lossy(response);
    let (head, _) = text.split_once("\r\n\r\n").expect("a response head");
    let announced = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .expect("a content-length");
    let head_len = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head")
        + 4;
    (announced, response.len() - head_len)
}

#[test]
fn the_fault_proxy_forwards_and_faults_as_told() {
    let s3 = TestS3::start();
    let proxy = FaultProxy::start(s3.port());
    let patience = Duration::from_secs(2);
    let unsigned = get("/pgward-test/?list-type=2");

    // Forwarded: the server's own answer (an unsigned request is refused with an S3 error).
    let (plain, _) = exchange(proxy.port(), &unsigned, patience);
    let plain_text = String::from_utf8_lossy(&plain).into_owned();
    assert!(plain_text.starts_with("HTTP/1.1 403"), "{plain_text}");
    let (announced, came) = body_lengths(&plain);
    assert_eq!(announced, came, "{plain_text}");
    assert!(announced > 64, "{plain_text}");

    // 503 SlowDown with S3's error body, not forwarded.
    proxy.set(Rule::all(Fault::SlowDown));
    let (slowed, _) = exchange(proxy.port(), &unsigned, patience);
    let slowed = String::from_utf8_lossy(&slowed).into_owned();
    assert!(slowed.starts_with("HTTP/1.1 503"), "{slowed}");
    assert!(slowed.contains("<Code>SlowDown</Code>"), "{slowed}");

    // Refused: closed at once, nothing answered.
    proxy.set(Rule::all(Fault::Refuse));
    let (refused, took) = exchange(proxy.port(), &unsigned, patience);
    assert!(refused.is_empty(), "{}", String::from_utf8_lossy(&refused));
    assert!(took < patience, "closed at once, not timed out: {took:?}");

    // Stalled: accepted, read, never answered.
    proxy.set(Rule::all(Fault::Stall));
    let (stalled, took) = exchange(proxy.port(), &unsigned, patience);
    assert!(stalled.is_empty());
    assert!(took >= patience, "{took:?}");

    // Cut: the head and 10 bytes of the body, then the connection closes.
    proxy.set(Rule::all(Fault::Cut { after_bytes: 10 }));
    let (cut, took) = exchange(proxy.port(), &unsigned, patience);
    let (cut_announced, cut_came) = body_lengths(&cut);
    assert_eq!((cut_announced, cut_came), (announced, 10));
    assert!(took < patience, "closed, not stalled: {took:?}");

    // Slow: the body at 100 bytes per second.
    proxy.set(Rule::all(Fault::Slow { bytes_per_sec: 100 }));
    let (slow, took) = exchange(proxy.port(), &unsigned, Duration::from_secs(30));
    assert_eq!(body_lengths(&slow), (announced, announced));
    let expected = Duration::from_secs_f64(announced as f64 / 100.0);
    assert!(
        took >= expected.mul_f64(0.8),
        "{took:?} for {announced} bytes"
    );

    // Only matching requests, one in two of them; counted.
    proxy.set(
        Rule::all(Fault::SlowDown)
            .method("GET")
            .path_contains("/only-this/")
            .one_in(2),
    );
    let before = proxy.counts();
    let statuses: Vec<String> = [
        "/pgward-test/only-this/a",
        "/pgward-test/only-this/b",
        "/pgward-test/other",
    ]
    .iter()
    .chain(["/pgward-test/only-this/c", "/pgward-test/only-this/d"].iter())
    .map(|path| {
        let (answer, _) = exchange(proxy.port(), &get(path), patience);
        String::from_utf8_lossy(&answer)[9..12].to_owned()
    })
    .collect();
    assert_eq!(statuses, ["403", "503", "403", "403", "503"]);
    let after = proxy.counts();
    assert_eq!(after.requests - before.requests, 5);
    assert_eq!(after.faulted - before.faulted, 2);

    proxy.clear();
    let (again, _) = exchange(proxy.port(), &unsigned, patience);
    assert!(String::from_utf8_lossy(&again).starts_with("HTTP/1.1 403"));

    // pgward's signed requests pass with the Host pgward sent (the proxy's); rewritten to
    // the server's address, the signature no longer matches and the server refuses them.
    let cluster = Cluster::new();
    let retry = "max_retries: 0, initial_backoff: 50ms, max_backoff: 50ms, timeout: 10s";
    let config = cluster.config("", &through_proxy(&s3, &proxy, "host", retry));
    let (code, out, err) = pgward(&config, &["list", "--json"]);
    assert_eq!(code, 0, "through the proxy:\n{out}\n{err}");
    proxy.rewrite_host(true);
    let (code, out, err) = pgward(&config, &["list", "--json"]);
    assert_ne!(code, 0, "a rewritten Host was accepted:\n{out}");
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
}

/// The `storage:` block of a config for `s3` reached through `proxy`, with the retry
/// settings `retry` (a YAML flow map's contents).
fn through_proxy(s3: &TestS3, proxy: &FaultProxy, prefix: &str, retry: &str) -> String {
    let yaml = s3
        .config_yaml(prefix)
        .replace(&s3.endpoint, &proxy.endpoint());
    let start = yaml.find("  retry:").expect("a retry line");
    format!("{}  retry: {{ {retry} }}\n", &yaml[..start])
}

fn pgward(config: &Path, args: &[&str]) -> (i32, String, String) {
    pgward_with(config, args)
}

/// The slice size of the slow-link test's backup (the default `backup.slice_size`): its
/// large file is one such slice and a little more for a second one. At 0.5 MiB/s, 128 MiB
/// take 256 s.
const LARGE_SLICE: u64 = 128 << 20;
/// The slow link: 0.5 MiB/s.
const SLOW_LINK: u64 = 512 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_slice_restores_through_a_slow_link_whatever_the_request_timeout() {
    let s3 = TestS3::start();
    let proxy = FaultProxy::start(s3.port());
    let cluster = Cluster::new();
    let storage = through_proxy(
        &s3,
        &proxy,
        "slow",
        "max_retries: 2, initial_backoff: 50ms, max_backoff: 500ms, timeout: 10s",
    );
    let (config, _pgward, _client) = start_archiving(&cluster, &storage).await;
    let text = std::fs::read_to_string(&config).unwrap();
    let slices = format!("backup:\n  slice_size: {LARGE_SLICE}\n");
    std::fs::write(&config, format!("{text}{slices}")).unwrap();
    // Incompressible, so the stored slice is as large as the file's.
    let large = cluster.data_dir().join("pgward_test_random");
    {
        let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
        let mut out = std::fs::File::create(&large).unwrap();
        std::io::copy(&mut (&mut urandom).take(LARGE_SLICE + 8192), &mut out).unwrap();
    }
    let (code, out, err) = pgward(&config, &["backup", "--full"]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");

    // The restore's whole-request timeout is far shorter than the slice takes over the
    // link; only a transfer that stops making progress for `idle_timeout` would fail.
    let restored = Cluster::new();
    let slow_storage = through_proxy(
        &s3,
        &proxy,
        "slow",
        "max_retries: 2, initial_backoff: 50ms, max_backoff: 500ms, timeout: 3s, idle_timeout: 10s",
    );
    let restore_config = restored.config(
        "password: pw",
        &format!("{slow_storage}wal:\n  archive: false\n"),
    );
    proxy.set(Rule::all(Fault::Slow {
        bytes_per_sec: SLOW_LINK,
    }));
    let started = Instant::now();
    let (code, out, err) = pgward(&restore_config, &["restore", "latest"]);
    let took = started.elapsed();
    assert_eq!(code, 0, "restore failed after {took:?}:\n{out}\n{err}");
    eprintln!("restored {LARGE_SLICE} bytes through {SLOW_LINK} B/s in {took:?}");
    let least = Duration::from_secs(LARGE_SLICE / SLOW_LINK);
    assert!(
        took >= least.mul_f64(0.9),
        "the link was not slow: {took:?}"
    );
    assert!(
        !err.contains("retrying"),
        "nothing was to fail and be retried:\n{err}"
    );
    let original = std::fs::read(&large).unwrap();
    let copy = std::fs::read(restored.data_dir().join("pgward_test_random")).unwrap();
    assert!(original == copy, "the restored large file differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_restores_and_verify_complete_through_slowdowns_and_cut_bodies() {
    let s3 = TestS3::start();
    let proxy = FaultProxy::start(s3.port());
    let cluster = Cluster::new();
    let storage = through_proxy(
        &s3,
        &proxy,
        "flaky",
        "max_retries: 2, initial_backoff: 50ms, max_backoff: 500ms, timeout: 10s",
    );
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    // Small slices: many objects, so the faults hit many of them.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}backup:\n  slice_size: 1MB\n")).unwrap();
    client
        .batch_execute(
            "CREATE TABLE t AS SELECT i, md5(i::text) AS m FROM generate_series(1, 150000) AS i",
        )
        .await
        .unwrap();

    // Backups: one in three uploads answered 503 SlowDown, then one in two cut after
    // 64 KiB of its body. WAL goes through unharmed: only backup objects are faulted. Never
    // one object twice in a row: a request is retried by the storage client alone, up to
    // `max_retries` (2) times, and this is about surviving faults within those.
    proxy.set(
        Rule::all(Fault::SlowDown)
            .method("PUT")
            .path_contains("/backups/")
            .one_in(3)
            .never_twice_in_a_row(),
    );
    let (code, out, err) = pgward(&config, &["backup", "--full"]);
    assert_eq!(code, 0, "backup through 503s failed:\n{out}\n{err}");
    let slowed = proxy.counts().faulted;
    assert!(slowed >= 5, "too few uploads faulted: {slowed}");
    proxy.set(
        Rule::all(Fault::Cut {
            after_bytes: 64 << 10,
        })
        .method("PUT")
        .path_contains("/backups/")
        .one_in(2)
        .never_twice_in_a_row(),
    );
    let (code, out, err) = pgward(&config, &["backup", "--full"]);
    assert_eq!(code, 0, "backup through cut uploads failed:\n{out}\n{err}");
    assert!(proxy.counts().faulted > slowed, "no upload was cut");
    client
        .batch_execute("INSERT INTO t VALUES (-1, 'after both backups')")
        .await
        .unwrap();
    crate::common::switch_and_wait_archived(&client).await;

    // Verify reads every object back through 503s, then through cut downloads. (Cuts only
    // of objects: the listings' pages here are larger than the cut, and one in two cut
    // would break some page of every attempt at a listing.)
    for rule in [
        Rule::all(Fault::SlowDown)
            .method("GET")
            .one_in(3)
            .never_twice_in_a_row(),
        Rule::all(Fault::Cut {
            after_bytes: 64 << 10,
        })
        .method("GET")
        .path_contains("/flaky/backups/")
        .one_in(2)
        .never_twice_in_a_row(),
    ] {
        proxy.set(rule.clone());
        let before = proxy.counts().faulted;
        let (code, out, err) = pgward(&config, &["verify", "latest"]);
        assert_eq!(code, 0, "verify through {rule:?} failed:\n{out}\n{err}");
        assert!(out.trim_end().ends_with("checked: ok"), "{out}");
        assert!(proxy.counts().faulted > before, "{rule:?} faulted nothing");
    }

    // Restore through cut downloads, then recover through 503s.
    let restored = Cluster::new();
    let restore_config = restored.config(
        "password: pw",
        &format!("{storage}wal:\n  archive: false\n"),
    );
    proxy.set(
        Rule::all(Fault::Cut {
            after_bytes: 64 << 10,
        })
        .method("GET")
        .path_contains("/flaky/backups/")
        .one_in(2)
        .never_twice_in_a_row(),
    );
    let (code, out, err) = pgward(&restore_config, &["restore", "latest"]);
    assert_eq!(
        code, 0,
        "restore through cut downloads failed:\n{out}\n{err}"
    );
    proxy.set(
        Rule::all(Fault::SlowDown)
            .method("GET")
            .one_in(3)
            .never_twice_in_a_row(),
    );
    let (_recovered, restored_client) = start_recovered(&restored, &storage).await;
    let row = restored_client
        .query_one("SELECT count(*), sum(i)::bigint FROM t", &[])
        .await
        .unwrap();
    let (count, sum): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((count, sum), (150_001, 150_000 * 150_001 / 2 - 1));
    let after: i64 = restored_client
        .query_one("SELECT count(*) FROM t WHERE m = 'after both backups'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, 1, "the row committed after the backups was replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_pg_control_is_read_again_and_a_damaged_copy_fails_verify() {
    let backed = crate::common::backed_up_cluster("CREATE TABLE t AS SELECT 1 AS i").await;
    let config = &backed.config;

    // The first read of pg_control is torn: read again, and the backup is good.
    let out = pgward_armed(
        config,
        "backup-pg-control-torn=1*return(error)",
        &["backup", "--full"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(reached(&stderr, "backup-pg-control-torn"), "{stderr}");
    assert!(
        stderr.contains("pg_control has a bad checksum") && stderr.contains("reading it again"),
        "{stderr}"
    );
    let (code, out, err) = pgward(config, &["verify", "latest"]);
    assert_eq!(code, 0, "{out}\n{err}");

    // Never a good read: no backup.
    let before = crate::common::listed(config).len();
    let out = pgward_armed(
        config,
        "backup-pg-control-torn=return(error)",
        &["backup", "--full"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("global/pg_control has a bad checksum in each of 10 reads"),
        "{stderr}"
    );
    assert_eq!(crate::common::listed(config).len(), before);

    // A backup holding a torn copy (as one taken before the check could): verify says so.
    let out = pgward_armed(
        config,
        "backup-pg-control-torn=return(error);backup-pg-control-unchecked=return(error)",
        &["backup", "--full"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, out, err) = pgward(config, &["verify", "latest"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("/data/global/pg_control: the backup's pg_control is damaged (pg_control has a bad checksum"),
        "{out}"
    );
}
