//! The one retry helper for repository operations: exponential backoff with jitter, driven
//! by [`RepoError::is_permanent`] and [`RepoError::retried_by_client`], cancellable.
//!
//! # One layer of retries per request
//!
//! A request is retried in exactly one place. For object stores that place is object_store's
//! own client (`RetryConfig`, built from `storage.retry` in `store`): it retries a request
//! on `5xx` (S3's `503 SlowDown` included, also when S3 hides it in a `200`), `429`, `408`
//! and connect errors, and timeouts of idempotent requests, with exponential backoff and
//! decorrelated jitter (each delay random between `initial_backoff` and twice the previous
//! one, capped at `max_backoff`; the first delay is `initial_backoff`), and it resumes a
//! download cut halfway with a range read from the last byte received — which a retry of
//! the whole operation from here could not do. One request under a persistent `503` is thus
//! attempted `max_retries + 1` times (fewer only if `retry_timeout` runs out first).
//!
//! This helper retries *operations* (a put, a listing, a streamed download) only for
//! failures the client may not have retried: a timeout or a connection lost mid-request (the
//! client repeats those only for idempotent requests, and a create-only put is not one; the
//! error does not say which it was, so both layers may try a request that keeps timing out),
//! a response that could not be read or decoded, and everything of a store without an HTTP
//! client (`file://`, which has no retries of its own). An
//! error the client already retried to its limit ([`RepoError::retried_by_client`]) ends
//! the operation at once: retrying it here would multiply the attempts (`(max_retries + 1)²`
//! requests per object under a SlowDown storm, when the store is asking for fewer). What
//! happens next is the caller's: postgres runs `archive_command` again and the daemon's
//! archiver pauses with growing delays; a backup fails and its job runs it again.
//!
//! Definite answers (absent, conflict, corrupt, refused) are never retried.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::error::Chain;
use super::settings::StorageRetryConfig;
use super::RepoError;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry, doubled after each.
    pub initial_backoff: Duration,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// The defaults of `storage.retry`.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The policy of `storage.retry`.
    pub fn from_config(cfg: &StorageRetryConfig) -> RetryPolicy {
        RetryPolicy {
            max_retries: cfg.max_retries,
            initial_backoff: cfg.initial_backoff,
            max_backoff: cfg.max_backoff,
        }
    }

    /// Delay before retry number `retry` (0-based), before jitter.
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(31));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// "Equal jitter": half the delay fixed, half random, so retries of many clients spread out
/// while each still waits at least half its backoff.
fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Runs `op` until it succeeds, fails permanently, runs out of retries or `cancel` fires
/// ([`RepoError::Cancelled`]). Each retry is logged at WARN with its attempt count.
///
/// Cancel safety: dropping the returned future drops the attempt in flight; `op` must leave
/// nothing half-visible when dropped (the repository's writes are atomic per object).
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    op_name: &str,
    op: F,
) -> Result<T, RepoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RepoError>>,
{
    retry_loop(policy, cancel, op_name, op, AttemptOnCancel::Drop).await
}

/// [`retry`] for an `op` that watches `cancel` itself and must run to its end: a download
/// whose writer, on a blocking thread, must have finished with its file before the caller
/// returns (a restore's directory may be removed right after). An attempt under way is
/// never dropped; only the wait between attempts ends at once on `cancel`.
pub async fn retry_to_end<T, F, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    op_name: &str,
    op: F,
) -> Result<T, RepoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RepoError>>,
{
    retry_loop(policy, cancel, op_name, op, AttemptOnCancel::Await).await
}

/// What a cancel does to the attempt in flight.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AttemptOnCancel {
    Drop,
    Await,
}

async fn retry_loop<T, F, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    op_name: &str,
    mut op: F,
    on_cancel: AttemptOnCancel,
) -> Result<T, RepoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RepoError>>,
{
    let mut retries = 0u32;
    loop {
        if cancel.is_cancelled() {
            return Err(RepoError::Cancelled);
        }
        let result = match on_cancel {
            AttemptOnCancel::Await => op().await,
            AttemptOnCancel::Drop => tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(RepoError::Cancelled),
                result = op() => result,
            },
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(e)
                if e.is_permanent() || e.retried_by_client() || retries >= policy.max_retries =>
            {
                return Err(e)
            }
            Err(e) => e,
        };
        let delay = jittered(policy.backoff(retries));
        retries += 1;
        tracing::warn!(
            op = op_name,
            attempt = retries,
            max_retries = policy.max_retries,
            delay = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            "failed to {op_name}, retrying: {}",
            Chain(&error)
        );
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(RepoError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::Instant;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        }
    }

    fn transient() -> RepoError {
        RepoError::storage(
            "k",
            object_store::Error::Generic {
                store: "test",
                source: "connection reset".into(),
            },
        )
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let delays: Vec<u128> = (0..5).map(|r| p.backoff(r).as_millis()).collect();
        assert_eq!(delays, [100, 200, 300, 300, 300]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(300));
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got = retry(&policy(), &CancellationToken::new(), "get k", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..=2 => Err(transient()),
                _ => Ok(7),
            }
        })
        .await
        .expect("succeeds on the fourth attempt");
        assert_eq!(got, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // Waited 100 + 200 + 300 ms, each at least halved by jitter.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited <= Duration::from_millis(600), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_to_end_awaits_the_attempt_under_way_and_cancels_only_the_wait() {
        let cancel = CancellationToken::new();
        let finished = AtomicU32::new(0);
        let calls = AtomicU32::new(0);
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            canceller.cancel();
        });
        let got = retry_to_end(&policy(), &cancel, "get k", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            // An attempt that notices the cancel only at its own pace (a writer finishing).
            tokio::time::sleep(Duration::from_millis(50)).await;
            finished.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(transient())
        })
        .await;
        assert!(matches!(got, Err(RepoError::Cancelled)), "{got:?}");
        // The first attempt ran to its end; no second one started after the cancel.
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let err = retry(&policy(), &CancellationToken::new(), "put k", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(transient())
        })
        .await
        .expect_err("never succeeds");
        assert!(matches!(err, RepoError::Storage { .. }), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 5, "1 attempt + 4 retries");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        for permanent in [
            RepoError::NotFound { key: "k".into() },
            RepoError::Corrupt {
                key: "k".into(),
                reason: "bad".into(),
            },
            RepoError::Config("no".into()),
            RepoError::storage(
                "k",
                object_store::Error::PermissionDenied {
                    path: "k".into(),
                    source: "403".into(),
                },
            ),
        ] {
            let calls = AtomicU32::new(0);
            let mut once = Some(permanent);
            let start = Instant::now();
            let err = retry(&policy(), &CancellationToken::new(), "op", || {
                calls.fetch_add(1, Ordering::SeqCst);
                let e = once.take().expect("called once");
                async move { Err::<(), _>(e) }
            })
            .await
            .expect_err("fails");
            assert!(err.is_permanent());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_interrupts_the_backoff_and_the_attempt() {
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                cancel.cancel();
            })
        };
        let start = Instant::now();
        let err = retry(&policy(), &cancel, "op", || async {
            Err::<(), _>(transient())
        })
        .await
        .expect_err("cancelled");
        assert!(matches!(err, RepoError::Cancelled), "{err}");
        assert_eq!(start.elapsed(), Duration::from_millis(150));
        canceller.await.expect("canceller");
        // An attempt that hangs is dropped too.
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = retry(&policy(), &cancel, "op", || {
            std::future::pending::<Result<(), _>>()
        })
        .await
        .expect_err("cancelled");
        assert!(matches!(err, RepoError::Cancelled));
    }
}
