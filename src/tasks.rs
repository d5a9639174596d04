//! The daemon's critical tasks: long-lived loops (the archiver's look-ahead, each job's
//! schedule, the state saver, the metrics watchers) without which pgward would silently stop
//! doing part of its job. Spawned through [`Critical`], a task that panics, or ends before its
//! own cancellation token asked it to, is reported on [`Failures`]; the daemon then logs it and
//! shuts down in order rather than limp on (a dead archiver would leave WAL unarchived).
//!
//! A leaf: knows tokio and nothing of what the tasks do.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Spawns critical tasks; cheap to clone.
#[derive(Clone)]
pub struct Critical {
    failures: mpsc::UnboundedSender<String>,
}

/// Where the failures of critical tasks arrive.
pub struct Failures {
    failures: mpsc::UnboundedReceiver<String>,
    /// Kept so that [`Failures::next`] waits (rather than ends) when no task is left.
    _open: mpsc::UnboundedSender<String>,
}

impl Critical {
    pub fn new() -> (Critical, Failures) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Critical {
                failures: tx.clone(),
            },
            Failures {
                failures: rx,
                _open: tx,
            },
        )
    }

    /// Spawns `task`, named `name` in the failure message. Its end is expected only once
    /// `cancel` is cancelled.
    pub fn spawn<F>(
        &self,
        name: impl Into<String>,
        cancel: &CancellationToken,
        task: F,
    ) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let cancel = cancel.clone();
        let failures = self.failures.clone();
        tokio::spawn(async move {
            let failure = match AssertUnwindSafe(task).catch_unwind().await {
                Err(_) => Some(format!("{name} panicked")),
                Ok(()) if !cancel.is_cancelled() => Some(format!("{name} ended unexpectedly")),
                Ok(()) => None,
            };
            if let Some(failure) = failure {
                tracing::error!("critical task failed: {failure}");
                let _ = failures.send(failure);
            }
        })
    }
}

impl Failures {
    /// The next failure; waits as long as there is none.
    pub async fn next(&mut self) -> String {
        self.failures
            .recv()
            .await
            .expect("Failures holds a sender itself")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_task_that_ends_early_or_panics_is_reported_one_that_was_cancelled_is_not() {
        let (critical, mut failures) = Critical::new();
        let cancel = CancellationToken::new();
        let stopped = cancel.clone();
        critical.spawn(
            "the waiter",
            &cancel,
            async move { stopped.cancelled().await },
        );
        critical.spawn("the quitter", &cancel, async {});
        assert_eq!(failures.next().await, "the quitter ended unexpectedly");
        critical.spawn("the crasher", &cancel, async { panic!("on purpose") });
        assert_eq!(failures.next().await, "the crasher panicked");
        cancel.cancel();
        let quiet = tokio::time::timeout(Duration::from_millis(100), failures.next()).await;
        assert!(quiet.is_err(), "a cancelled task's end is no failure");
    }
}
