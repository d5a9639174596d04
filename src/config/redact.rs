//! The effective config as YAML for `config print`, with secrets hidden.
//!
//! [`Secret`] fields hide themselves; this adds values that are secret only by their name:
//! service environment variables and postgres parameters. Better to hide a harmless value
//! than to print a password, so the name tests are broad.

use super::{Config, ServiceConfig};

const REDACTED: &str = "<redacted>";

/// Words that mark an environment variable as secret, matched case-insensitively anywhere in
/// its name (`PGPASSWORD`, `AWS_SECRET_ACCESS_KEY`, `GITHUB_TOKEN`...).
const SECRET_ENV_WORDS: &[&str] = &["PASSWORD", "SECRET", "TOKEN", "KEY"];

/// The effective config as YAML with every secret replaced by `<redacted>`.
pub fn redacted_yaml(config: &Config) -> String {
    let mut config = config.clone();
    for ServiceConfig { env, .. } in &mut config.services {
        for (name, value) in env.iter_mut() {
            let upper = name.to_ascii_uppercase();
            if SECRET_ENV_WORDS.iter().any(|w| upper.contains(w)) {
                *value = REDACTED.to_owned();
            }
        }
    }
    for (name, value) in config.postgres.parameters.iter_mut() {
        if name.to_ascii_lowercase().contains("password") {
            *value = REDACTED.to_owned();
        }
    }
    // Serializing plain data (strings, numbers, maps, lists) cannot fail.
    serde_yaml_ng::to_string(&config).expect("config serializes to YAML")
}
