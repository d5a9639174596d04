//! `pgward config check|print` as a user runs them: exit codes, located errors, redaction.

use std::process::Command;

use crate::common::{example_configs, pgward_bin, TestDir};

fn pgward(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(pgward_bin());
    cmd.args(args)
        .env_remove("PGWARD_CONFIG")
        .env_remove("POSTGRES_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pgward");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_valid_file_and_the_shipped_examples() {
    let dir = TestDir::new();
    let file = dir.write("ok.yaml", "postgres:\n  port: ${PORT:-5433}\n");
    let (code, out, err) = pgward(
        &["--config", file.to_str().unwrap(), "config", "check"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
    // Every example config of the repository and the image, found by listing: a new one is
    // checked without being named here.
    for path in example_configs() {
        let example = path.display().to_string();
        let (code, _, err) = pgward(
            &["--config", &example, "config", "check"],
            &[
                ("POSTGRES_PASSWORD", "x"),
                ("PGWARD_HOME", "/tmp/pgward-dev"),
            ],
        );
        assert_eq!(code, 0, "{example}: {err}");
    }
}

#[test]
fn check_reports_every_problem_with_file_line_column_and_exits_2() {
    let dir = TestDir::new();
    let file = dir.write(
        "bad.yaml",
        "postgres:\n  stop:\n    timeout: 5 parsecs\nservices:\n  - name: a\n    command: [x]\n  - name: a\n    command: [y]\njobs:\n  - name: j\n    schedule: \"61 * * * *\"\n    action: backup\n",
    );
    let (code, _, err) = pgward(
        &["--config", file.to_str().unwrap(), "config", "check"],
        &[],
    );
    assert_eq!(code, 2);
    let f = file.display();
    assert!(
        err.contains(&format!(
            "{f}:3:14: postgres.stop.timeout: invalid duration \"5 parsecs\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:7:11: services[1].name: duplicate service name \"a\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:11:15: jobs[0].schedule: invalid cron schedule \"61 * * * *\""
        )),
        "{err}"
    );
}

#[test]
fn unknown_keys_and_missing_files_exit_2() {
    let dir = TestDir::new();
    let file = dir.write("typo.yaml", "postgres:\n  prot: 5432\n");
    let (code, _, err) = pgward(
        &["--config", file.to_str().unwrap(), "config", "check"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "{}:2:3: postgres.prot: unknown field `prot`",
            file.display()
        )),
        "{err}"
    );
    let (code, _, err) = pgward(
        &["--config", "/nonexistent/pgward.yaml", "config", "check"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/pgward.yaml"), "{err}");
    // `run` refuses a bad config the same way, before starting anything.
    let (code, _, _) = pgward(&["--config", file.to_str().unwrap(), "run"], &[]);
    assert_eq!(code, 2);
}

#[test]
fn print_shows_the_effective_config_with_secrets_redacted() {
    let dir = TestDir::new();
    let secret_file = dir.write("pw", "file-secret-123\n");
    let file = dir.write(
        "cfg.yaml",
        &format!(
            "postgres:\n  port: ${{PGPORT_X:-6543}}\n  init:\n    password_file: {}\nservices:\n  - name: bouncer\n    command: [pgbouncer]\n    env: {{ DB_PASSWORD: env-secret-456, MODE: plain }}\n",
            secret_file.display()
        ),
    );
    let (code, out, err) = pgward(
        &["--config", file.to_str().unwrap(), "config", "print"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("port: 6543"), "{out}");
    assert!(out.contains("<redacted>"), "{out}");
    assert!(out.contains("plain"), "{out}");
    assert!(
        !out.contains("file-secret-123") && !out.contains("env-secret-456"),
        "{out}"
    );
    // Through the environment too (the image's POSTGRES_PASSWORD).
    let (code, out, _) = pgward(&["config", "print"], &[("POSTGRES_PASSWORD", "env-pw-789")]);
    assert_eq!(code, 0);
    assert!(
        !out.contains("env-pw-789") && out.contains("<redacted>"),
        "{out}"
    );
}
