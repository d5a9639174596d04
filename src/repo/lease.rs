//! Leases: one holder at a time of a named piece of work on the repository (one backup at a
//! time), visible to everyone who reads the repository, and taken over once its holder stops
//! renewing it.
//!
//! A lease is a series of small objects `locks/<name>/<generation>` (16 decimal digits), each
//! a JSON [`LeaseInfo`]; the highest generation is the lease. Taking it creates the next
//! generation with a create-only put ([`PutMode::Create`]): of two takers, exactly one
//! creates it. Taking needs the highest generation to be released or expired (not renewed for
//! its `ttl_seconds`). The holder renews its own generation (an overwrite only it makes) every
//! third of the TTL, and releases it by marking it released, never by deleting it: the
//! generations only grow, so a taker that read an old listing can only create a generation
//! that already exists (and lose) or one below the highest (and see that it lost, below).
//!
//! Why not a conditional replace of one object (`PutMode::Update` with the ETag)? The
//! `file://` repository (object_store's `LocalFileSystem`) does not implement it, while every
//! store implements create-only: one scheme for all. After creating its generation, a taker
//! lists again and proceeds only if its generation is the highest: a generation created in a
//! slot freed by the cleanup of older generations never passes that check, so two takers never
//! both proceed. On an S3-compatible server without `If-None-Match` the repository falls back
//! to a read before the write (see [`super`]), and two takers within that window could both
//! create; the after-check then lets at most the later one go on, not both, unless both check
//! before either writes — as narrow as the create-only fallback itself.
//!
//! Liveness is judged by the holder's clock (`renewed_at`) against the reader's: the clocks of
//! the machines sharing a repository must agree to well within the TTL (NTP does).
//!
//! The holder's side: [`Lease`] renews in a task of its own and notices when it lost the
//! lease (a newer generation) or let it lapse (no renewal for a TTL, during which anyone could
//! have judged it gone); work that must not complete without the lease asks
//! [`Lease::confirm`] right before its last write.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{PutMode, PutOutcome, Repo, RepoError};

/// Prefix of every lease's generations.
pub const LOCKS_PREFIX: &str = "locks";

/// Who holds a lease, for what, and until when: the content of one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Host name of the holder's machine (its container's, in a container).
    pub host: String,
    /// Process id of the holder on that host.
    pub pid: u32,
    /// What the holder does (`backup`).
    pub operation: String,
    /// What the work is on, once known (a backup's id).
    pub subject: Option<String>,
    /// When the holder took the lease.
    pub since: DateTime<Utc>,
    /// The holder's last renewal.
    pub renewed_at: DateTime<Utc>,
    /// The lease expires this long after `renewed_at` unless renewed.
    pub ttl_seconds: u64,
    /// The holder is done; anyone may take the lease.
    pub released: bool,
    /// Unique per taking: two takers never write the same content.
    pub token: String,
}

impl LeaseInfo {
    /// A new holder's info: this process, now.
    pub fn mine(operation: &str, ttl: Duration) -> LeaseInfo {
        let now = Utc::now();
        let host = nix::unistd::gethostname()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let pid = std::process::id();
        let nonce = format!("{host}/{pid}/{}", now.timestamp_nanos_opt().unwrap_or(0));
        LeaseInfo {
            host,
            pid,
            operation: operation.to_owned(),
            subject: None,
            since: now,
            renewed_at: now,
            ttl_seconds: ttl.as_secs().max(1),
            released: false,
            token: blake3::hash(nonce.as_bytes()).to_hex()[..16].to_owned(),
        }
    }

    /// When the lease expires unless renewed.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.renewed_at + chrono::Duration::seconds(self.ttl_seconds as i64)
    }

    /// Held (not released) and renewed within its TTL, as of `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        !self.released && now < self.expires_at()
    }

    /// `backup 20261207T061500F by host db-0 pid 1 since 06:15:00 UTC`, for messages.
    pub fn describe(&self) -> String {
        let subject = match &self.subject {
            Some(subject) => format!("{} {subject}", self.operation),
            None => format!("{} (starting)", self.operation),
        };
        format!(
            "{subject} by host {} pid {}, since {}",
            self.host,
            self.pid,
            self.since.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// The key of generation `generation` of lease `name`.
fn generation_key(name: &str, generation: u64) -> String {
    format!("{LOCKS_PREFIX}/{name}/{generation:016}")
}

/// The lease as the repository has it now: its highest generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub generation: u64,
    pub info: LeaseInfo,
}

/// What [`Repo::try_lease`] found.
#[derive(Debug)]
pub enum Taken {
    /// The lease is ours until released (renewed meanwhile).
    Acquired(Lease),
    /// Someone else holds it, live.
    Held(LeaseInfo),
}

impl Repo {
    /// The generations of lease `name` in the repository, lowest first.
    async fn lease_generations(&self, name: &str) -> Result<Vec<u64>, RepoError> {
        let prefix = format!("{LOCKS_PREFIX}/{name}");
        let mut generations: Vec<u64> = self
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|o| o.key.strip_prefix(&prefix)?.strip_prefix('/')?.parse().ok())
            .collect();
        generations.sort_unstable();
        Ok(generations)
    }

    /// One generation's info; `None` when absent (cleaned up meanwhile).
    async fn lease_generation(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<Option<LeaseInfo>, RepoError> {
        let key = generation_key(name, generation);
        match self.get_bytes(&key).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| RepoError::Corrupt {
                        key,
                        reason: format!("not a lease: {e}"),
                    })
            }
        }
    }

    /// Lease `name` as it stands: its highest generation, `None` when never taken.
    pub async fn read_lease(&self, name: &str) -> Result<Option<LeaseState>, RepoError> {
        // A generation deleted between the listing and the read was superseded: list again.
        for _ in 0..5 {
            let Some(&generation) = self.lease_generations(name).await?.last() else {
                return Ok(None);
            };
            if let Some(info) = self.lease_generation(name, generation).await? {
                return Ok(Some(LeaseState { generation, info }));
            }
        }
        Err(RepoError::Corrupt {
            key: format!("{LOCKS_PREFIX}/{name}"),
            reason: "its generations keep disappearing while read".into(),
        })
    }

    /// Takes lease `name` for `mine` if it is free (never taken, released, or expired), and
    /// keeps it renewed until [`Lease::release`]; else says who holds it.
    pub async fn try_lease(&self, name: &str, mine: LeaseInfo) -> Result<Taken, RepoError> {
        let current = self.read_lease(name).await?;
        Ok(
            match self
                .try_lease_beside(name, mine, current, || async {})
                .await?
            {
                Ok((lease, ())) => Taken::Acquired(lease),
                Err(holder) => Taken::Held(holder),
            },
        )
    }

    /// [`Repo::try_lease`] from `current`, the lease as [`Repo::read_lease`] read it just
    /// before (the caller may read it beside other work), running `beside` (work to do under
    /// the lease, such as a listing) alongside the check that this process's generation is
    /// the highest, a round trip saved. Its output comes with the acquired lease; a lost check
    /// discards it, and the next attempt runs it again. `Err(holder)`: the lease is held by
    /// `holder`.
    pub async fn try_lease_beside<T, F: Future<Output = T>>(
        &self,
        name: &str,
        mine: LeaseInfo,
        current: Option<LeaseState>,
        mut beside: impl FnMut() -> F,
    ) -> Result<Result<(Lease, T), LeaseInfo>, RepoError> {
        let ttl = Duration::from_secs(mine.ttl_seconds);
        let mut first = Some(current);
        for _ in 0..10 {
            let current = match first.take() {
                Some(current) => current,
                None => self.read_lease(name).await?,
            };
            if let Some(current) = &current {
                if current.info.is_live(Utc::now()) {
                    return Ok(Err(current.info.clone()));
                }
            }
            let generation = current.as_ref().map_or(1, |c| c.generation + 1);
            let key = generation_key(name, generation);
            let json = serde_json::to_vec_pretty(&mine).expect("LeaseInfo serializes");
            match self.put_bytes(&key, json, PutMode::Create).await {
                Ok(PutOutcome::Created { .. }) => {}
                // Another taker created this generation first (identical content is
                // impossible: the token differs): look again.
                Ok(PutOutcome::AlreadyIdentical { .. }) | Err(RepoError::Conflict { .. }) => {
                    continue
                }
                Err(e) => return Err(e),
            }
            // Proceed only as the highest generation (see the module doc).
            let (generations, beside) = tokio::join!(self.lease_generations(name), beside());
            let generations = generations?;
            if generations.last().is_some_and(|&top| top > generation) {
                let _ = self.delete(&key).await;
                continue;
            }
            if let Some(previous) = &current {
                if !previous.info.released {
                    tracing::warn!(
                        lease = name,
                        "took over an expired lease: {} (last renewed {})",
                        previous.info.describe(),
                        previous.info.renewed_at.format("%Y-%m-%d %H:%M:%S UTC")
                    );
                }
            }
            let older = generations
                .into_iter()
                .filter(|&g| g < generation)
                .collect();
            let lease = Lease::start(self.clone(), name, generation, mine, ttl, older);
            return Ok(Ok((lease, beside)));
        }
        Err(RepoError::Corrupt {
            key: format!("{LOCKS_PREFIX}/{name}"),
            reason: "ten attempts to take the lease lost to other takers".into(),
        })
    }
}

/// A lease this process holds; renewed by a task until released (or dropped, which stops the
/// renewal and lets the lease expire).
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
    stop: CancellationToken,
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// The deletion of the generations below this one.
    cleanup: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    repo: Repo,
    name: String,
    generation: u64,
    ttl: Duration,
    state: Mutex<HolderState>,
}

#[derive(Debug)]
struct HolderState {
    info: LeaseInfo,
    /// Why the lease cannot be trusted any more: lost to a newer generation, or let lapse.
    broken: Option<String>,
}

impl Shared {
    fn key(&self) -> String {
        generation_key(&self.name, self.generation)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HolderState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the holder's info, renewed now; notes a lapse (the previous renewal older than
    /// the TTL: anyone may have judged the lease expired meanwhile).
    async fn renew(&self) -> Result<(), RepoError> {
        let now = Utc::now();
        let info = {
            let mut state = self.lock();
            state.info.renewed_at = now;
            state.info.clone()
        };
        let json = serde_json::to_vec_pretty(&info).expect("LeaseInfo serializes");
        self.repo
            .put_bytes(&self.key(), json, PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// Marks the lease broken (first reason wins) and says so.
    fn break_with(&self, reason: String) {
        let mut state = self.lock();
        if state.broken.is_none() {
            tracing::warn!(lease = %self.name, "{reason}");
            state.broken = Some(reason);
        }
    }

    /// Breaks the lease when the last renewal is older than the TTL.
    fn check_lapse(&self, now: DateTime<Utc>) {
        let (renewed_at, expired) = {
            let state = self.lock();
            (state.info.renewed_at, !state.info.is_live(now))
        };
        if expired {
            self.break_with(format!(
                "the {} lease was not renewed since {} (longer than its {} TTL): it may have \
                 been judged abandoned",
                self.name,
                renewed_at.format("%H:%M:%S UTC"),
                humantime::format_duration(self.ttl)
            ));
        }
    }

    /// Breaks the lease when a newer generation exists (someone took it over) or its own is
    /// gone. One listing; the newer holder's info is read only to say who took it.
    async fn check_generation(&self) -> Result<(), RepoError> {
        let generations = self.repo.lease_generations(&self.name).await?;
        match generations.last() {
            Some(&top) if top == self.generation => {}
            Some(&top) if top > self.generation => {
                let who = match self.repo.lease_generation(&self.name, top).await {
                    Ok(Some(info)) => info.describe(),
                    _ => format!("generation {top}"),
                };
                self.break_with(format!("the {} lease was taken over: {who}", self.name));
            }
            _ => self.break_with(format!(
                "the {} lease {} disappeared from the repository",
                self.name,
                self.key()
            )),
        }
        Ok(())
    }
}

impl Lease {
    /// Holds `generation` of lease `name`: renews it, and deletes the `older` generations.
    fn start(
        repo: Repo,
        name: &str,
        generation: u64,
        info: LeaseInfo,
        ttl: Duration,
        older: Vec<u64>,
    ) -> Lease {
        // Best effort, beside the work: an old generation left behind is only litter, which
        // the next taker deletes.
        let cleanup = {
            let (repo, name) = (repo.clone(), name.to_owned());
            tokio::spawn(async move {
                for generation in older {
                    let _ = repo.delete(&generation_key(&name, generation)).await;
                }
            })
        };
        let shared = Arc::new(Shared {
            repo,
            name: name.to_owned(),
            generation,
            ttl,
            state: Mutex::new(HolderState { info, broken: None }),
        });
        let stop = CancellationToken::new();
        let renewal = tokio::spawn(renew_until(shared.clone(), stop.clone()));
        Lease {
            shared,
            stop,
            renewal: Some(renewal),
            cleanup: Some(cleanup),
        }
    }

    /// The generation held.
    pub fn generation(&self) -> u64 {
        self.shared.generation
    }

    /// What the lease says now.
    pub fn info(&self) -> LeaseInfo {
        self.shared.lock().info.clone()
    }

    /// Records what the work is on (a backup's id), stored at once: readers must see it before
    /// the work writes anything under that name.
    pub async fn set_subject(&self, subject: &str) -> Result<(), RepoError> {
        self.shared.lock().info.subject = Some(subject.to_owned());
        self.shared.renew().await
    }

    /// `Ok` when the lease is still this process's and was never let lapse: the check before
    /// the work's last write. `Err` says why not.
    pub async fn confirm(&self) -> Result<(), String> {
        self.shared.check_lapse(Utc::now());
        if let Err(e) = self.shared.check_generation().await {
            return Err(format!(
                "cannot read the {} lease {}: {e}",
                self.shared.name,
                self.shared.key()
            ));
        }
        match &self.shared.lock().broken {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// Stops renewing and marks the lease released, so the next taker need not wait for it to
    /// expire. A failure to write that is only logged: the lease then expires by itself.
    pub async fn release(mut self) {
        self.stop.cancel();
        let renewal = self.renewal.take();
        let cleanup = self.cleanup.take();
        tokio::join!(release(self.shared.clone(), renewal), async {
            if let Some(cleanup) = cleanup {
                let _ = cleanup.await;
            }
        });
    }
}

/// Waits for the renewal task to end, then marks this generation released. No look for a
/// newer generation first: writing this one never touches a newer holder's, and below the
/// highest a released mark is only litter the next taker deletes.
async fn release(shared: Arc<Shared>, renewal: Option<tokio::task::JoinHandle<()>>) {
    if let Some(renewal) = renewal {
        let _ = renewal.await;
    }
    shared.lock().info.released = true;
    if let Err(e) = shared.renew().await {
        tracing::warn!(lease = %shared.name, "could not release the lease {} (it expires by \
            itself after {}): {e}", shared.key(), humantime::format_duration(shared.ttl));
    }
}

impl Drop for Lease {
    /// Dropped unreleased (the work's future was dropped, e.g. a job stopped): the work has
    /// stopped, so the lease is released in the background where a runtime runs; otherwise it
    /// expires by itself.
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(renewal) = self.renewal.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(release(self.shared.clone(), Some(renewal)));
            }
        }
    }
}

/// Renews every third of the TTL until `stop`; a failed renewal is retried at the next tick
/// (and logged), a lapse or a takeover marks the lease broken.
async fn renew_until(shared: Arc<Shared>, stop: CancellationToken) {
    let period = (shared.ttl / 3).max(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        shared.check_lapse(Utc::now());
        if let Err(e) = shared.renew().await {
            tracing::warn!(lease = %shared.name, "could not renew the lease {}: {e}", shared.key());
            continue;
        }
        if let Err(e) = shared.check_generation().await {
            tracing::warn!(lease = %shared.name, "could not read the lease back: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_repo() -> Repo {
        Repo::open_with_store(
            Arc::new(object_store::memory::InMemory::new()),
            "",
            super::super::Codec::Zstd,
            3,
        )
    }

    fn holder(pid: u32, ttl: Duration) -> LeaseInfo {
        LeaseInfo {
            pid,
            token: format!("token-{pid}"),
            ..LeaseInfo::mine("backup", ttl)
        }
    }

    fn acquired(taken: Taken) -> Lease {
        match taken {
            Taken::Acquired(lease) => lease,
            Taken::Held(info) => panic!("held by {info:?}"),
        }
    }

    fn held(taken: Taken) -> LeaseInfo {
        match taken {
            Taken::Held(info) => info,
            Taken::Acquired(lease) => panic!("acquired generation {}", lease.generation()),
        }
    }

    #[tokio::test]
    async fn one_holder_at_a_time_until_released() {
        let repo = memory_repo();
        let ttl = Duration::from_secs(60);
        let first = acquired(repo.try_lease("backup", holder(1, ttl)).await.unwrap());
        assert_eq!(first.generation(), 1);
        first.set_subject("20261207T061500F").await.unwrap();
        let other = held(repo.try_lease("backup", holder(2, ttl)).await.unwrap());
        assert_eq!(other.pid, 1);
        assert_eq!(other.subject.as_deref(), Some("20261207T061500F"));
        assert!(other
            .describe()
            .starts_with("backup 20261207T061500F by host "));
        first.confirm().await.unwrap();
        first.release().await;
        let state = repo.read_lease("backup").await.unwrap().unwrap();
        assert!(state.info.released);
        let second = acquired(repo.try_lease("backup", holder(2, ttl)).await.unwrap());
        assert_eq!(second.generation(), 2);
        second.release().await;
        // The older generation was cleaned up (by the time of the release); the newest is the
        // lease.
        assert_eq!(repo.lease_generations("backup").await.unwrap(), [2]);
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_holder_learns_it() {
        let repo = memory_repo();
        let ttl = Duration::from_secs(60);
        let stale = acquired(repo.try_lease("backup", holder(1, ttl)).await.unwrap());
        // The holder stopped renewing two TTLs ago (as if stopped or cut off).
        let old = Utc::now() - chrono::Duration::seconds(120);
        let mut info = stale.info();
        info.renewed_at = old;
        repo.put_bytes(
            &generation_key("backup", 1),
            serde_json::to_vec(&info).unwrap(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        stale.shared.lock().info.renewed_at = old;
        let stored = repo.read_lease("backup").await.unwrap().unwrap();
        assert!(!stored.info.is_live(Utc::now()));
        let taker = acquired(repo.try_lease("backup", holder(2, ttl)).await.unwrap());
        assert_eq!(taker.generation(), 2);
        let err = stale.confirm().await.unwrap_err();
        assert!(err.contains("was not renewed since"), "{err}");
        // Taken over before it noticed: its work fails, and the taker's lease is intact.
        taker.confirm().await.unwrap();
        // Released or not, the stale holder never touches the newer generation.
        stale.release().await;
        let state = repo.read_lease("backup").await.unwrap().unwrap();
        assert_eq!((state.generation, state.info.pid), (2, 2));
        assert!(state.info.is_live(Utc::now()));
    }

    #[tokio::test]
    async fn a_holder_that_let_its_lease_lapse_gives_up_and_releases_it() {
        let repo = memory_repo();
        let ttl = Duration::from_secs(60);
        let lapsed = acquired(repo.try_lease("backup", holder(1, ttl)).await.unwrap());
        // Its last renewal is two TTLs old (it was paused): anyone may have judged it gone.
        lapsed.shared.lock().info.renewed_at = Utc::now() - chrono::Duration::seconds(120);
        let err = lapsed.confirm().await.unwrap_err();
        assert!(err.contains("was not renewed since"), "{err}");
        lapsed.release().await;
        let next = acquired(repo.try_lease("backup", holder(2, ttl)).await.unwrap());
        assert_eq!(next.generation(), 2);
        next.release().await;
    }

    #[tokio::test]
    async fn a_taker_below_the_highest_generation_steps_back() {
        let repo = memory_repo();
        let ttl = Duration::from_secs(60);
        let holder_lease = acquired(repo.try_lease("backup", holder(1, ttl)).await.unwrap());
        // A generation far above, as a taker with an old listing could leave: the holder of
        // generation 1 learns it lost, and a new taker sees the live generation 7.
        let seven = LeaseInfo {
            subject: Some("20261207T070000F".into()),
            ..holder(7, ttl)
        };
        repo.put_bytes(
            &generation_key("backup", 7),
            serde_json::to_vec(&seven).unwrap(),
            PutMode::Create,
        )
        .await
        .unwrap();
        let err = holder_lease.confirm().await.unwrap_err();
        assert!(
            err.contains("was taken over: backup 20261207T070000F"),
            "{err}"
        );
        assert_eq!(
            held(repo.try_lease("backup", holder(3, ttl)).await.unwrap()).pid,
            7
        );
    }

    #[tokio::test]
    async fn concurrent_takers_one_wins() {
        let repo = memory_repo();
        let ttl = Duration::from_secs(60);
        let takers = (0..8).map(|pid| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.try_lease("backup", holder(pid, ttl)).await })
        });
        let mut winners = Vec::new();
        for taker in takers {
            if let Taken::Acquired(lease) = taker.await.unwrap().unwrap() {
                winners.push(lease);
            }
        }
        assert_eq!(winners.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_holder_renews_and_a_reader_sees_it_live() {
        let repo = memory_repo();
        let ttl = Duration::from_secs(3);
        let lease = acquired(repo.try_lease("backup", holder(1, ttl)).await.unwrap());
        let first = repo.read_lease("backup").await.unwrap().unwrap().info;
        // Paused time advances through the renewal's sleeps; wall time moves a little too.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let later = repo.read_lease("backup").await.unwrap().unwrap().info;
        assert!(later.renewed_at > first.renewed_at, "{first:?} {later:?}");
        lease.confirm().await.unwrap();
        lease.release().await;
    }
}
