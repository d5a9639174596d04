//! `services[]:`: supervisord-style extra programs, their restart policy and stop signal, and
//! the order they start in (`after:`, which must name known services and not loop).

use std::str::FromStr;

use nix::sys::signal::Signal;

use super::values::choice;
use super::*;

/// Signals a service may be stopped with.
const STOP_SIGNALS: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGKILL,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

pub(super) fn validate_services(raw: Vec<RawService>, cx: &mut Cx<'_>) -> Vec<ServiceConfig> {
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut services = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let service = validate_service(&format!("services[{i}]"), raw, cx);
        if service.name == "postgres" {
            cx.at_value(
                &format!("services[{i}].name"),
                "\"postgres\" is reserved for the supervised server; pick another name",
            );
        } else {
            unique_name(cx, "services", i, &service.name, "service", &mut first_seen);
        }
        services.push(service);
    }
    check_after(&services, &first_seen, cx);
    services
}

fn validate_service(base: &str, raw: RawService, cx: &mut Cx<'_>) -> ServiceConfig {
    let RawService {
        name,
        command,
        env,
        inherit_env,
        user,
        working_dir,
        restart,
        start_secs,
        start_retries,
        backoff,
        max_backoff,
        stop_signal,
        stop_timeout,
        after,
    } = raw;
    let path = |key: &str| super::locate::join(base, key);
    let name = required_name(cx, &path("name"), name, "service");
    let command = required_command(cx, &path("command"), command);
    let env = cx.map(&path("env"), env);
    let inherit_env = cx.env_names(&path("inherit_env"), inherit_env);
    let user = cx.user(&path("user"), user);
    let working_dir = cx.path(&path("working_dir"), working_dir);
    let restart = cx
        .parse(&path("restart"), restart, |s| {
            let modes = [
                ("always", RestartMode::Always),
                ("on-failure", RestartMode::OnFailure),
                ("never", RestartMode::Never),
            ];
            choice("restart mode", s, &modes)
        })
        .unwrap_or(RestartMode::OnFailure);
    let restart_policy = validate_restart(
        base,
        RawRestart {
            start_secs,
            start_retries,
            backoff,
            max_backoff,
        },
        RestartConfig {
            start_secs: Duration::from_secs(1),
            start_retries: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        },
        cx,
    );
    let stop_signal = cx
        .parse(&path("stop_signal"), stop_signal, parse_signal)
        .unwrap_or(StopSignal(Signal::SIGTERM));
    let stop_timeout = cx
        .duration(&path("stop_timeout"), stop_timeout)
        .unwrap_or(Duration::from_secs(10));
    let after = cx.list(&path("after"), after.0);
    ServiceConfig {
        name,
        command,
        env,
        inherit_env,
        user,
        working_dir,
        restart,
        restart_policy,
        stop_signal,
        stop_timeout,
        after,
    }
}

/// `after:` must name `postgres` or a service, and services must not wait on each other in a
/// circle (none would ever start).
fn check_after(services: &[ServiceConfig], index: &HashMap<String, usize>, cx: &mut Cx<'_>) {
    for (i, service) in services.iter().enumerate() {
        for (j, dep) in service.after.iter().enumerate() {
            if dep != "postgres" && !index.contains_key(dep) {
                let mut known: Vec<&str> = vec!["postgres"];
                known.extend(services.iter().map(|s| s.name.as_str()));
                cx.at_value(
                    &format!("services[{i}].after[{j}]"),
                    format!("unknown service {dep:?} (known: {})", known.join(", ")),
                );
            }
        }
    }
    // Depth-first search; an edge back into the current path closes a cycle, reported once at
    // that edge.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        services: &[ServiceConfig],
        index: &HashMap<String, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        cx: &mut Cx<'_>,
    ) {
        marks[i] = Mark::Active;
        stack.push(i);
        for (j, dep) in services[i].after.iter().enumerate() {
            let Some(&k) = index.get(dep) else { continue };
            match marks[k] {
                Mark::New => visit(k, services, index, marks, stack, cx),
                Mark::Active => {
                    let start = stack.iter().position(|&s| s == k).unwrap_or(0);
                    let mut names: Vec<&str> = stack[start..]
                        .iter()
                        .map(|&s| services[s].name.as_str())
                        .collect();
                    names.push(&services[k].name);
                    cx.at_value(
                        &format!("services[{i}].after[{j}]"),
                        format!("dependency cycle: {}", names.join(" -> ")),
                    );
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
    }
    let mut marks = vec![Mark::New; services.len()];
    for i in 0..services.len() {
        // Only the first definition of a name takes part in the graph.
        if marks[i] == Mark::New && index.get(&services[i].name) == Some(&i) {
            visit(i, services, index, &mut marks, &mut Vec::new(), cx);
        }
    }
}

fn parse_signal(s: &str) -> Result<StopSignal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full)
        .ok()
        .filter(|sig| STOP_SIGNALS.contains(sig))
        .map(StopSignal)
        .ok_or_else(|| {
            format!("unknown stop signal {s:?} (use TERM, INT, QUIT, HUP, KILL, USR1 or USR2)")
        })
}
