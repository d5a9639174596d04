//! The one [`Launcher`] implementation: start a [`process::Spec`], optionally with a readiness
//! check, and the policies derived from config.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::runner::{Launcher, Readiness};
use super::state::{Policy, StopStep};
use crate::config::{RestartConfig, RestartMode, ServiceConfig, StopConfig, StopMode};
use crate::process::{self, LogSink, Spec};

/// Checks readiness of the process with the given pid.
pub type ReadinessCheck = Arc<dyn Fn(i32) -> Readiness + Send + Sync>;

/// Starts `spec` each time; ready at once unless a check is given.
pub struct SpecLauncher {
    pub spec: Spec,
    pub sink: LogSink,
    pub readiness: Option<ReadinessCheck>,
}

impl Launcher for SpecLauncher {
    fn spawn(&mut self) -> anyhow::Result<process::Running> {
        let running = process::spawn(&self.spec, &self.sink)?;
        tracing::info!(service = %self.spec.name, pid = running.pid, "started");
        Ok(running)
    }

    fn readiness(&self, pid: i32) -> Readiness {
        match &self.readiness {
            Some(check) => check(pid),
            None => Box::pin(std::future::ready(())),
        }
    }
}

/// Waiting "forever" for the exit after SIGKILL: nothing else can be done.
const AFTER_KILL: Duration = Duration::from_secs(86400);

/// The policy of postgres: always restarted; stopped with the configured mode, then immediate
/// (SIGQUIT), then SIGKILL. See "Shutting Down the Server" in the PostgreSQL docs for the
/// meaning of each signal.
pub fn postgres_policy(restart: &RestartConfig, stop: &StopConfig) -> Policy {
    let first = match stop.mode {
        StopMode::Smart => Signal::SIGTERM,
        StopMode::Fast => Signal::SIGINT,
    };
    Policy {
        restart: RestartMode::Always,
        start_secs: restart.start_secs,
        start_retries: restart.start_retries,
        backoff: restart.backoff,
        max_backoff: restart.max_backoff,
        stop_ladder: vec![
            StopStep {
                signal: first,
                grace: stop.timeout,
            },
            StopStep {
                signal: Signal::SIGQUIT,
                grace: stop.kill_timeout,
            },
            StopStep {
                signal: Signal::SIGKILL,
                grace: AFTER_KILL,
            },
        ],
    }
}

/// The policy of an extra service: its own restart mode; its stop signal, then SIGKILL.
pub fn service_policy(service: &ServiceConfig) -> Policy {
    let r = &service.restart_policy;
    Policy {
        restart: service.restart,
        start_secs: r.start_secs,
        start_retries: r.start_retries,
        backoff: r.backoff,
        max_backoff: r.max_backoff,
        stop_ladder: vec![
            StopStep {
                signal: service.stop_signal.0,
                grace: service.stop_timeout,
            },
            StopStep {
                signal: Signal::SIGKILL,
                grace: AFTER_KILL,
            },
        ],
    }
}

/// The spec of an extra service. The program is looked up on `PATH` by exec.
pub fn service_spec(service: &ServiceConfig) -> anyhow::Result<Spec> {
    let (program, args) = service
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("service {} has an empty command", service.name))?;
    let mut spec = Spec::new(service.name.clone(), program)
        .args(args)
        .run_as(process::RunAs::for_child(service.user.as_deref())?);
    for (k, v) in &service.env {
        spec = spec.env(k, v);
    }
    spec.working_dir = service.working_dir.clone();
    // A sidecar gets a chance to clean up if pgward dies; postgres gets SIGQUIT (see app).
    spec.parent_death_signal = Signal::SIGTERM;
    Ok(spec)
}
