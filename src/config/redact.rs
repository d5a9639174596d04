//! The effective config as YAML for `config print`, with secrets hidden by the rules of
//! [`crate::redact`].
//!
//! [`Secret`](super::Secret) fields hide themselves. On top of them: values that are secret
//! by their name (the `env` of services and jobs, postgres parameters) are hidden whole; every
//! other string is scrubbed of what looks like a secret (a conninfo `password=`, a URL's
//! credentials and query), command lines included; a webhook URL's path is elided.

use super::{Config, JobConfig, ReportConfig, ServiceConfig};
use crate::redact::{self, REDACTED};

/// The effective config as YAML with every secret hidden.
pub fn redacted_yaml(config: &Config) -> String {
    let mut config = config.clone();
    for ServiceConfig { env, .. } in &mut config.services {
        hide_secret_values(env.iter_mut());
    }
    for JobConfig {
        env,
        on_failure,
        on_success,
        ..
    } in &mut config.jobs
    {
        hide_secret_values(env.iter_mut());
        for report in [on_failure, on_success].into_iter().flatten() {
            let ReportConfig { webhook, .. } = report;
            if let Some(webhook) = webhook {
                webhook.url = redact::webhook_url(&webhook.url);
            }
        }
    }
    hide_secret_values(config.postgres.parameters.iter_mut());
    // Serializing plain data (strings, numbers, maps, lists) cannot fail.
    let mut value = serde_yaml_ng::to_value(&config).expect("config serializes to YAML");
    scrub(&mut value);
    serde_yaml_ng::to_string(&value).expect("config serializes to YAML")
}

fn hide_secret_values<'a>(entries: impl Iterator<Item = (&'a String, &'a mut String)>) {
    for (name, value) in entries {
        if redact::is_secret_name(name) {
            *value = REDACTED.to_owned();
        }
    }
}

/// Every string value scrubbed, in place (keys are names, left as they are).
fn scrub(value: &mut serde_yaml_ng::Value) {
    use serde_yaml_ng::Value;
    match value {
        Value::String(text) => {
            if let std::borrow::Cow::Owned(scrubbed) = redact::scrub(text) {
                *text = scrubbed;
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(scrub),
        Value::Mapping(map) => map.iter_mut().for_each(|(_, v)| scrub(v)),
        Value::Tagged(tagged) => scrub(&mut tagged.value),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}
