//! Defaults taken from the environment the way the official `postgres` image's entrypoint
//! takes them, so an existing container's `-e POSTGRES_*` settings keep working unchanged.
//!
//! Mirrors `docker-entrypoint.sh`: `file_env` (a `VAR` or a `VAR_FILE`, never both) and
//! `${VAR:-}` (empty counts as unset). Only consulted for keys the config file leaves out.

use std::path::Path;

use super::interpolate::Env;
use super::secret::read_secret_file;

/// A problem with one environment variable: its name and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvProblem {
    pub var: String,
    pub reason: String,
}

/// `${name:-}`: the value, with empty treated as unset.
pub(crate) fn var(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// The image's `file_env name`: `$name`, else the contents of the file named by `$name_FILE`.
pub(crate) fn file_env(env: Env<'_>, name: &str) -> Result<Option<String>, EnvProblem> {
    let file_var = format!("{name}_FILE");
    match (var(env, name), var(env, &file_var)) {
        (Some(_), Some(_)) => Err(EnvProblem {
            var: name.to_owned(),
            reason: format!("both {name} and {file_var} are set (but are exclusive)"),
        }),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => read_secret_file(Path::new(&path))
            .map(Some)
            .map_err(|reason| EnvProblem {
                var: file_var,
                reason,
            }),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn file_env_follows_the_image() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "s3cret\n").expect("write");
        let secret = secret.to_string_lossy().into_owned();
        let vars: HashMap<&str, String> = HashMap::from([
            ("A", "a".to_string()),
            ("EMPTY", String::new()),
            ("EMPTY_FILE", secret.clone()),
            ("B_FILE", secret.clone()),
            ("C", "c".to_string()),
            ("C_FILE", secret),
            ("D_FILE", "/nonexistent/pgward-test".to_string()),
        ]);
        let env = |k: &str| vars.get(k).cloned();
        assert_eq!(file_env(&env, "A"), Ok(Some("a".to_string())));
        assert_eq!(file_env(&env, "B"), Ok(Some("s3cret".to_string())));
        assert_eq!(file_env(&env, "EMPTY"), Ok(Some("s3cret".to_string())));
        assert_eq!(file_env(&env, "NONE"), Ok(None));
        assert_eq!(
            file_env(&env, "C"),
            Err(EnvProblem {
                var: "C".to_string(),
                reason: "both C and C_FILE are set (but are exclusive)".to_string()
            })
        );
        let err = file_env(&env, "D").unwrap_err();
        assert_eq!(err.var, "D_FILE");
        assert!(err
            .reason
            .starts_with("cannot read secret file /nonexistent/pgward-test: "));
    }
}
