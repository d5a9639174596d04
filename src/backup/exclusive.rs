//! One backup of a repository at a time, visibly: the repository's `backup` lease
//! ([`crate::repo::lease`]). A backup (the `backup` command or a scheduled job, in any process
//! on any machine sharing the repository) takes it before anything else and writes its backup
//! id into it before its first object; a second backup while the lease is live is refused,
//! naming the holder. `expire` reads it to leave the running backup's objects alone.
//!
//! Refused, not queued: a backup that waited could start hours late, after the one it waited
//! for, which is rarely what a schedule or a person wants; the refusal says who holds the
//! lease and until when, and a crashed holder's lease is taken over as soon as it expires
//! (`backup.lease_ttl` after its last renewal).

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};

use crate::repo::{Lease, LeaseInfo, Repo};

/// The lease's name: `locks/backup/<generation>` in the repository.
pub const BACKUP_LEASE: &str = "backup";

/// Takes the backup lease for this process and backup `id` (its subject from the start),
/// renewed every third of `ttl` until released; a live lease of another backup refuses the
/// backup. `first` (such as the check of the repository's identity) runs while the lease is
/// read, and must succeed before anything is written; `beside` runs under the lease,
/// alongside the last step of taking it (see [`Repo::try_lease_beside`]), and its output
/// comes back with the lease.
pub async fn take_backup_lease<T, F: Future<Output = T>>(
    repo: &Repo,
    ttl: Duration,
    id: &str,
    first: impl Future<Output = Result<()>>,
    beside: impl FnMut() -> F,
) -> Result<(Lease, T)> {
    let context = || format!("take the backup lease in {}", repo.describe());
    let mut mine = LeaseInfo::mine("backup", ttl);
    mine.subject = Some(id.to_owned());
    let (first, current) = tokio::join!(first, repo.read_lease(BACKUP_LEASE));
    first?;
    let current = current.with_context(context)?;
    let taken = repo
        .try_lease_beside(BACKUP_LEASE, mine, current, beside)
        .await
        .with_context(context)?;
    taken.or_else(|holder| bail!("{}", refusal(&holder, Utc::now())))
}

/// Why a backup is refused while `holder` runs, and what to do.
fn refusal(holder: &LeaseInfo, now: DateTime<Utc>) -> String {
    let expires = holder.expires_at();
    let left = (expires - now).to_std().unwrap_or_default();
    format!(
        "another backup of this repository is running: {} (lease renewed {}, expires {} \
         unless renewed); one backup runs at a time\nHINT: wait for it to end; if that process \
         is gone, its lease expires at {} (backup.lease_ttl after its last renewal) and the \
         next backup takes over",
        holder.describe(),
        holder.renewed_at.format("%H:%M:%S UTC"),
        match left.as_secs() {
            0 => "now".to_owned(),
            s => format!("in {}", humantime::format_duration(Duration::from_secs(s))),
        },
        expires.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// The backup running now, as its live lease says (`None` when no lease is live); read by
/// `expire` after it listed the backups, so that a backup whose objects it saw has already
/// named itself in the lease.
pub async fn running_backup(repo: &Repo) -> Result<Option<LeaseInfo>> {
    let state = repo
        .read_lease(BACKUP_LEASE)
        .await
        .with_context(|| format!("read the backup lease in {}", repo.describe()))?;
    Ok(state
        .map(|s| s.info)
        .filter(|info| info.is_live(Utc::now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_holder_and_when_its_lease_expires() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let holder = LeaseInfo {
            host: "db-0".into(),
            pid: 1,
            operation: "backup".into(),
            subject: Some("20261207T061500F".into()),
            since: at("2026-12-07T06:15:00Z"),
            renewed_at: at("2026-12-07T06:40:00Z"),
            ttl_seconds: 300,
            released: false,
            token: "t".into(),
        };
        assert_eq!(
            refusal(&holder, at("2026-12-07T06:41:00Z")),
            "another backup of this repository is running: backup 20261207T061500F by host \
             db-0 pid 1, since 2026-12-07 06:15:00 UTC (lease renewed 06:40:00 UTC, expires in \
             4m unless renewed); one backup runs at a time\nHINT: wait for it to end; if that \
             process is gone, its lease expires at 2026-12-07 06:45:00 UTC (backup.lease_ttl \
             after its last renewal) and the next backup takes over"
        );
    }
}
