//! `wal:` and `backup:`: archiving and fetching WAL, base backups, their checks and
//! retention.

use super::super::size::parse_size;
use super::values::{choice, count_in, invalid, parse_count, positive_duration};
use super::*;

pub(super) fn validate_wal(raw: RawWal, cx: &mut Cx<'_>) -> WalConfig {
    let RawWal {
        archive,
        archive_timeout,
        push_concurrency,
        stage,
        prefetch,
        max_age,
    } = raw;
    WalConfig {
        archive: cx.bool("wal.archive", archive).unwrap_or(true),
        archive_timeout: cx
            .parse("wal.archive_timeout", archive_timeout, |s| {
                let d = parse_duration(s)?;
                // postgres takes whole seconds, at most INT_MAX.
                if d.subsec_nanos() != 0 || d.as_secs() > i32::MAX as u64 {
                    Err(invalid(
                        "archive_timeout",
                        s,
                        "whole seconds, e.g. 60s or 5m",
                    ))
                } else {
                    Ok(d)
                }
            })
            .unwrap_or(Duration::from_secs(60)),
        push_concurrency: cx
            .parse("wal.push_concurrency", push_concurrency, |s| {
                count_in("push_concurrency", s, 1..=64)
            })
            .unwrap_or(4),
        stage: cx.bool("wal.stage", stage).unwrap_or(true),
        prefetch: cx
            .parse("wal.prefetch", prefetch, |s| {
                count_in("prefetch", s, 0..=256)
            })
            .unwrap_or(8),
        max_age: cx.parse("wal.max_age", max_age, parse_duration),
    }
}

pub(super) fn validate_backup(raw: RawBackup, cx: &mut Cx<'_>) -> BackupConfig {
    let RawBackup {
        concurrency,
        transfers,
        wal_wait,
        on,
        lease_ttl,
        slice_size,
        incremental_memory,
        bundle_size,
        bundle_file_max,
        max_age,
        min_redundancy,
        retention,
    } = raw;
    let bundle_size = cx
        .parse("backup.bundle_size", bundle_size, parse_size)
        .unwrap_or(64 << 20);
    let bundle_file_max = cx
        .parse("backup.bundle_file_max", bundle_file_max, |s| {
            let size = parse_size(s)?;
            if bundle_size > 0 && size > bundle_size {
                return Err(invalid(
                    "bundle_file_max",
                    s,
                    "a size of at most backup.bundle_size",
                ));
            }
            Ok(size)
        })
        .unwrap_or((1 << 20).min(bundle_size));
    BackupConfig {
        concurrency: cx
            .parse("backup.concurrency", concurrency, |s| {
                count_in("concurrency", s, 1..=64)
            })
            .unwrap_or(2),
        transfers: cx
            .parse("backup.transfers", transfers, |s| {
                count_in("transfers", s, 1..=64)
            })
            .unwrap_or(8),
        wal_wait: cx
            .parse("backup.wal_wait", wal_wait, parse_duration)
            .unwrap_or(Duration::from_secs(300)),
        on: cx
            .parse("backup.on", on, |s| {
                choice(
                    "backup.on",
                    s,
                    &[
                        ("primary", BackupOn::Primary),
                        ("standby", BackupOn::Standby),
                        ("any", BackupOn::Any),
                    ],
                )
            })
            .unwrap_or_default(),
        lease_ttl: cx
            .parse("backup.lease_ttl", lease_ttl, |s| {
                let ttl = parse_duration(s)?;
                if ttl < Duration::from_secs(1) {
                    return Err(invalid("lease_ttl", s, "a duration of at least 1s"));
                }
                Ok(ttl)
            })
            .unwrap_or(Duration::from_secs(300)),
        slice_size: cx
            .parse("backup.slice_size", slice_size, |s| {
                let size = parse_size(s)?;
                if size < 1 << 20 || size % 8192 != 0 {
                    return Err(invalid(
                        "slice size",
                        s,
                        "a multiple of 8kB of at least 1MB",
                    ));
                }
                Ok(size)
            })
            .unwrap_or(128 << 20),
        incremental_memory: cx
            .parse("backup.incremental_memory", incremental_memory, parse_size)
            .unwrap_or(128 << 20),
        bundle_size,
        bundle_file_max,
        max_age: cx.parse("backup.max_age", max_age, parse_duration),
        min_redundancy: cx
            .parse("backup.min_redundancy", min_redundancy, parse_count)
            .unwrap_or(1),
        retention: validate_retention(retention, cx),
    }
}

fn validate_retention(raw: RawRetention, cx: &mut Cx<'_>) -> RetentionConfig {
    let RawRetention { full, max_age } = raw;
    RetentionConfig {
        full: cx
            .parse("backup.retention.full", full, |s| {
                match s.trim().parse::<u32>() {
                    // 0 reads as "no limit" in many tools; here it would mean "keep none by
                    // count", which the newest full backup overrides anyway: refuse the ambiguity.
                    Ok(0) => Err(format!(
                        "invalid full {s:?}: the newest full backup is always kept (use 1 or \
                     more; to keep backups by age alone, set full: 1 and max_age)"
                    )),
                    Ok(n) => Ok(n),
                    Err(_) => Err(invalid("full", s, "an integer of 1 or more")),
                }
            })
            .unwrap_or(2),
        max_age: cx.parse("backup.retention.max_age", max_age, |s| {
            positive_duration("max_age", s)
        }),
    }
}
