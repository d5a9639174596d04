//! What archiving costs in storage requests, and what a storm of `503 SlowDown` does to it:
//! the daemon counts every request it makes (`pgward_storage_requests_total{op,result}`), a
//! request is retried in one layer only (the storage client's, `storage.retry.max_retries`
//! times), and through a SlowDown window WAL is acknowledged only once stored, nothing is
//! lost, and the requests per archive attempt stay bounded instead of multiplying.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::fault_proxy::{Counts, Fault, FaultProxy, Rule};
use crate::common::requests::{storage_requests, StorageRequests};
use crate::common::{quiet_archiving_config, switch_and_wait_archived, Cluster, Pgward, BOOT};
use crate::storage_servers::TestS3;

/// `storage.retry.max_retries` of the storm test.
const MAX_RETRIES: u64 = 2;
/// How long the storage answers every request `503 SlowDown`.
const WINDOW: Duration = Duration::from_secs(8);

const OPS: [&str; 11] = [
    "get",
    "get_range",
    "head",
    "put",
    "put_multipart_start",
    "put_part",
    "put_multipart_complete",
    "put_multipart_abort",
    "list",
    "delete",
    "copy",
];
const RESULTS: [&str; 4] = ["ok", "not_found", "exists", "error"];

/// The `storage:` block for `s3` reached at `endpoint` (the server's own or a proxy's), with
/// the retry settings `retry` (a YAML flow map's contents).
fn s3_storage(s3: &TestS3, endpoint: &str, prefix: &str, retry: &str) -> String {
    let yaml = s3.config_yaml(prefix).replace(&s3.endpoint, endpoint);
    let start = yaml.find("  retry:").expect("a retry line");
    format!("{}  retry: {{ {retry} }}\n", &yaml[..start])
}

/// Starts pgward archiving to `storage`, segments switched only by the test, with the
/// `wal:` lines `wal_extra` added; connects as `postgres`.
async fn start(
    cluster: &Cluster,
    storage: &str,
    wal_extra: &str,
) -> (std::path::PathBuf, Pgward, tokio_postgres::Client) {
    let config = quiet_archiving_config(cluster, storage);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("  prefetch: 4\n", &format!("  prefetch: 4\n{wal_extra}"), 1);
    std::fs::write(&config, text).unwrap();
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    (config, pgward, client)
}

/// Writes a little WAL, so that the next switch starts a new segment.
async fn write_some(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS t (i int, m text); \
             INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 2000) AS i",
        )
        .await
        .unwrap();
}

async fn archiver_stats(client: &tokio_postgres::Client) -> (String, i64, i64) {
    let row = client
        .query_one(
            "SELECT coalesce(last_archived_wal, ''), archived_count, failed_count \
             FROM pg_stat_archiver",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The WAL segments stored in the bucket under `prefix` (complete objects only: s3s-fs
/// shows an object once its upload completed).
fn segments_in_bucket(s3: &TestS3, prefix: &str) -> BTreeSet<String> {
    let dir = s3.object_path(&format!("{prefix}/wal/00000001"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let segment = name.get(..24)?;
            let rest = &name[24..];
            let is_segment = segment.chars().all(|c| c.is_ascii_hexdigit())
                && [".zst", ".lz4", ".raw"].contains(&rest);
            is_segment.then(|| segment.to_owned())
        })
        .collect()
}

/// The segments postgres marked archived (`.done`) and still waiting (`.ready`).
fn archive_status(cluster: &Cluster) -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = cluster.data_dir().join("pg_wal/archive_status");
    let (mut done, mut ready) = (BTreeSet::new(), BTreeSet::new());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.len() != 24 + 5 {
            continue; // history and backup history files: none here, and not segments
        }
        if let Some(segment) = name.strip_suffix(".done") {
            done.insert(segment.to_owned());
        } else if let Some(segment) = name.strip_suffix(".ready") {
            ready.insert(segment.to_owned());
        }
    }
    (done, ready)
}

fn failed_uploads(config: &Path) -> u64 {
    Pgward::status(config)["archiver"]["failed_total"]
        .as_u64()
        .expect("the archiver's failed_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_counts_every_storage_request_by_operation_and_result() {
    let s3 = TestS3::start();
    let cluster = Cluster::new();
    let storage = s3.config_yaml("counted");
    let (_config, _pgward, client) = start(&cluster, &storage, "").await;
    write_some(&client).await;
    switch_and_wait_archived(&client).await;

    // The family is there with every label pair, a counter with its help.
    let before = storage_requests(cluster.metrics_port).await;
    assert_eq!(before.kind.as_deref(), Some("counter"), "{before:?}");
    assert!(
        before
            .help
            .as_deref()
            .is_some_and(|h| h.contains("storage")),
        "{before:?}"
    );
    let pairs: BTreeSet<(String, String)> = before.counts.keys().cloned().collect();
    let expected: BTreeSet<(String, String)> = OPS
        .iter()
        .flat_map(|op| RESULTS.iter().map(|r| (op.to_string(), r.to_string())))
        .collect();
    assert_eq!(pairs, expected);
    assert!(before.get("put", "ok") >= 1, "{before:?}");

    const SEGMENTS: u64 = 3;
    for _ in 0..SEGMENTS {
        write_some(&client).await;
        switch_and_wait_archived(&client).await;
    }
    let after = storage_requests(cluster.metrics_port).await;
    let spent = after.since(&before);
    eprintln!("requests for {SEGMENTS} segments: {:?}", nonzero(&spent));
    assert!(
        spent.get("put", "ok") >= SEGMENTS,
        "a put per segment at least: {spent:?}"
    );
    assert_eq!(spent.of_result("error"), 0, "{spent:?}");
    // A segment: its create-only put, the read-back of its trailer. Besides those, at most
    // a heartbeat and a refresh of the timeline history may fall in the window.
    assert!(
        spent.total() <= 2 * SEGMENTS + 2,
        "more than 2 requests per segment: {spent:?}"
    );
}

/// The non-zero counts, for messages.
fn nonzero(requests: &StorageRequests) -> Vec<String> {
    requests
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|((op, result), n)| format!("{op}/{result}={n}"))
        .collect()
}

fn minus(after: Counts, before: Counts) -> Counts {
    Counts {
        requests: after.requests - before.requests,
        faulted: after.faulted - before.faulted,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowdown_storm_loses_no_wal_and_does_not_multiply_requests() {
    let s3 = TestS3::start();
    let proxy = FaultProxy::start(s3.port());
    let cluster = Cluster::new();
    let retry = format!(
        "max_retries: {MAX_RETRIES}, initial_backoff: 50ms, max_backoff: 200ms, timeout: 10s"
    );
    let storage = s3_storage(&s3, &proxy.endpoint(), "storm", &retry);
    // Not staging the segment being written: its requests belong to no archive attempt, and
    // this test accounts for every request by the attempts.
    let (config, pgward, client) = start(&cluster, &storage, "  stage: false\n").await;
    pgward.expect_error(
        "failed to archive",
        "the storage answers 503 SlowDown to every request for a while",
    );
    write_some(&client).await;
    switch_and_wait_archived(&client).await;
    let (last_before, _, pg_failed_before) = archiver_stats(&client).await;

    let requests_before = storage_requests(cluster.metrics_port).await;
    let failed_before = failed_uploads(&config);
    let proxy_before = proxy.counts();
    proxy.set_for(Rule::all(Fault::SlowDown), WINDOW);
    let started = Instant::now();

    // WAL keeps coming; nothing of it may be acknowledged while the storage refuses.
    let mut switched = Vec::new();
    while started.elapsed() + Duration::from_secs(2) < WINDOW {
        write_some(&client).await;
        let name: String = client
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .unwrap()
            .get(0);
        switched.push(name);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (last, _, _) = archiver_stats(&client).await;
        if proxy.faulting() {
            assert_eq!(last, last_before, "acknowledged while the storage refused");
        }
    }
    assert!(switched.len() >= 3, "{switched:?}");
    while proxy.faulting() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let storm = started.elapsed();

    // The storm is over: the archive catches up by itself (the next switch wakes postgres's
    // archiver, which may be waiting out its pause after failures).
    write_some(&client).await;
    let last = switch_and_wait_archived(&client).await;
    let (last_archived, archived_count, pg_failed) = archiver_stats(&client).await;
    assert!(last_archived >= last);
    assert!(pg_failed > pg_failed_before, "the storm was not felt");

    // Nothing lost: every segment postgres counts archived is in the bucket, those of the
    // storm included, and none is left waiting.
    let in_bucket = segments_in_bucket(&s3, "storm");
    let (done, ready) = archive_status(&cluster);
    for segment in switched.iter().chain(&done) {
        assert!(
            in_bucket.contains(segment),
            "{segment} is not in the bucket"
        );
    }
    assert!(
        ready.iter().all(|r| r.as_str() > last.as_str()),
        "still waiting: {ready:?}"
    );
    assert!(
        in_bucket.len() as i64 >= archived_count,
        "{} segments in the bucket, postgres archived {archived_count}",
        in_bucket.len()
    );

    // No multiplication. Every request that failed was attempted by the storage client
    // exactly `max_retries + 1` times (all answered 503); requests in flight when the storm
    // ended were answered 503 fewer times and then succeeded. pgward retried none of them
    // again: an upload that failed made at most three failed requests (its create-only put,
    // then the look for an object the put may have left, and its size probe; or a refresh of
    // the timeline history) and ended there.
    let attempts = MAX_RETRIES + 1;
    let spent = storage_requests(cluster.metrics_port)
        .await
        .since(&requests_before);
    let http = minus(proxy.counts(), proxy_before);
    let failed = spent.of_result("error");
    let uploads_failed = failed_uploads(&config) - failed_before;
    let segments = switched.len() as u64 + 1;
    eprintln!(
        "storm of {storm:?}: {http:?} HTTP requests for {segments} segments; {uploads_failed} \
         uploads failed, postgres failed {} times; requests: {:?}",
        pg_failed - pg_failed_before,
        nonzero(&spent),
    );
    // Per segment: its faulted requests are the failed attempts above; the rest is what
    // archiving it costs without a storm (the put, the read-back), and for the segment under
    // way when the storm ended, the looks after its last failed put (trailer, size): the
    // storm leaves no extra work behind.
    for segment in &switched {
        let seen = proxy.counts_for(segment);
        eprintln!("  {segment}: {seen:?}");
        assert!(seen.requests - seen.faulted <= 2 + 2, "{segment}: {seen:?}");
    }
    assert!(uploads_failed > 0 && failed > 0, "{spent:?}");
    // At most push_concurrency uploads in flight, one request each, and a heartbeat.
    let in_flight_at_the_end = 4 + 1;
    assert!(
        http.faulted >= attempts * failed,
        "{http:?}: fewer attempts than {attempts} per failed request ({failed})"
    );
    assert!(
        http.faulted <= attempts * (failed + in_flight_at_the_end),
        "{http:?}: more attempts than {attempts} per failed request ({failed})"
    );
    // A heartbeat may fail in the window too.
    assert!(
        failed <= 3 * uploads_failed + 1,
        "{failed} failed requests for {uploads_failed} failed uploads: retried again"
    );
    assert!(
        http.faulted <= 3 * attempts * (uploads_failed + 1) + attempts * in_flight_at_the_end,
        "{http:?} for {uploads_failed} failed uploads"
    );
}

/// Files below `dir`, recursively.
fn files_below(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.path().is_dir() {
            true => files_below(&entry.path()),
            false => 1,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_on_s3_deletes_in_a_few_bulk_requests_not_one_per_object() {
    let s3 = TestS3::start();
    let proxy = FaultProxy::start(s3.port());
    let cluster = Cluster::new();
    let storage = format!(
        "{}backup:\n  retention:\n    full: 1\n  bundle_size: 0\n",
        s3_storage(&s3, &proxy.endpoint(), "bulk", "max_retries: 2")
    );
    let (config, _pgward, client) = start(&cluster, &storage, "").await;
    let backup = |config: &Path| {
        let (code, out, err) = crate::common::pgward_with(config, &["backup"]);
        assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    };
    backup(&config);
    const SEGMENTS: usize = 5;
    for _ in 0..SEGMENTS {
        write_some(&client).await;
        switch_and_wait_archived(&client).await;
    }
    backup(&config);
    let backups = s3.object_path("bulk/backups");
    let wal = s3.object_path("bulk/wal");
    let (objects, segments) = (files_below(&backups), files_below(&wal));

    let before = proxy.counts_for("?delete");
    let (code, out, err) = crate::common::pgward_with(&config, &["expire"]);
    assert_eq!(code, 0, "expire failed:\n{out}\n{err}");
    let deletes = proxy.counts_for("?delete").requests - before.requests;
    let deleted = (objects - files_below(&backups)) + (segments - files_below(&wal));
    // Without bundles the expired backup is about a thousand objects, and the WAL before the
    // kept backup a few segments more. Each goes under every codec's name, a thousand names
    // a request: a handful of requests, where one per object and name made thousands.
    assert!(
        deleted >= 900 + SEGMENTS,
        "{deleted} objects deleted of {objects} and {segments}:\n{out}"
    );
    assert!(
        deletes * 100 <= deleted as u64,
        "{deletes} delete requests for {deleted} objects:\n{out}"
    );
}
