//! What comes from outside the file: `${VAR}` interpolation, `*_file` secrets, built-in
//! defaults and the official image's `POSTGRES_*` variables.

use super::*;

// ---- interpolation ----

#[test]
fn interpolation_in_strings_numbers_and_durations() {
    let yaml = "\
postgres:
  port: ${PGPORT:-5432}
  user: ${PGUSER}
  stop: { timeout: \"${STOP:-90s}\" }
  parameters: { log_line_prefix: 'test $$1', work_mem: '${WORK_MEM:-4MB}' }
";
    let config = ok(yaml, &[("PGUSER", "pg"), ("STOP", "2m")]);
    assert_eq!(config.postgres.port, 5432);
    assert_eq!(config.postgres.user, "pg");
    assert_eq!(config.postgres.stop.timeout, Duration::from_secs(120));
    assert_eq!(config.postgres.parameters["log_line_prefix"], "test $1");
    assert_eq!(config.postgres.parameters["work_mem"], "4MB");
    let config = ok(yaml, &[("PGUSER", "pg"), ("PGPORT", "6432")]);
    assert_eq!(config.postgres.port, 6432);
    assert_eq!(config.postgres.stop.timeout, Duration::from_secs(90));
}

#[test]
fn interpolated_number_still_checked_at_its_scalar() {
    assert_eq!(
        problems("postgres:\n  port: ${PGPORT}\n", &[("PGPORT", "x")]),
        ["cfg.yaml:2:9: postgres.port: invalid port \"x\" (use an integer from 1 to 65535)"]
    );
}

#[test]
fn password_with_hash_and_colon_survives() {
    let yaml = "postgres:\n  init:\n    password: ${PW}\n    superuser: \"a: b # c\"\n";
    let config = ok(yaml, &[("PW", "p#ss: word # not a comment")]);
    let password = config.postgres.init.password.expect("password");
    assert_eq!(password.expose(), "p#ss: word # not a comment");
    assert_eq!(config.postgres.init.superuser, "a: b # c");
}

// ---- *_file secrets ----

#[test]
fn secret_from_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-file\n").expect("write");
    let yaml = format!(
        "postgres:\n  init:\n    password_file: {}\n",
        file.display()
    );
    let config = ok(&yaml, &[("POSTGRES_PASSWORD", "from-env")]);
    assert_eq!(
        config.postgres.init.password.as_ref().map(Secret::expose),
        Some("from-file")
    );
    // The file name itself may come from the environment.
    let yaml = "postgres:\n  init:\n    password_file: ${SECRETS}/pw\n";
    let dir_text = dir.path().display().to_string();
    let config = ok(yaml, &[("SECRETS", &dir_text)]);
    assert_eq!(
        config.postgres.init.password.as_ref().map(Secret::expose),
        Some("from-file")
    );
}

#[test]
fn secret_and_secret_file_are_exclusive() {
    let yaml = "postgres:\n  init:\n    password: x\n    password_file: /run/secrets/pg\n";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:4:5: postgres.init.password_file: both password and password_file are set \
         (but are exclusive)"
    );
}

#[test]
fn unreadable_secret_file_names_the_path() {
    let yaml = "postgres:\n  init:\n    password_file: /nonexistent/pgward/pw\n";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:3:5: postgres.init.password_file: cannot read secret file \
         /nonexistent/pgward/pw: No such file or directory (os error 2)"
    );
}

#[test]
fn empty_file_is_all_defaults() {
    let want = defaults("/var/lib/postgresql/data", "postgres", "postgres");
    let nulls = "postgres:\n  parameters:\n  init: ~\nservices:\njobs: ~\nlog:\ncontrol:\n\
                 storage:\n  s3: ~\n  gcs:\n  azure:\n  retry:\nwal: ~\n";
    for yaml in ["", "# only a comment\n", "---\n", nulls] {
        assert_eq!(ok(yaml, &[]), want, "{yaml:?}");
    }
}

#[test]
fn the_repositorys_own_retry_default_is_storage_retrys() {
    // A restore options' and a repository's policy before the config's is set.
    let config = ok("", &[]);
    assert_eq!(
        crate::repo::RetryPolicy::default(),
        crate::repo::RetryPolicy::from_config(&config.storage.retry)
    );
}

#[test]
fn no_file_is_defaults_and_a_missing_file_is_a_read_error() {
    let env = |_: &str| None;
    let config = load(None, &env).expect("defaults load");
    assert_eq!(
        config,
        defaults("/var/lib/postgresql/data", "postgres", "postgres")
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.yaml");
    match load(Some(&missing), &env) {
        Err(ConfigError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected a read error, got {other:?}"),
    }
    let file = dir.path().join("pgward.yaml");
    std::fs::write(&file, "postgres:\n  port: 6000\n").expect("write");
    let config = load(Some(&file), &env).expect("file loads");
    assert_eq!(config.source.as_deref(), Some(file.as_path()));
    assert_eq!(config.postgres.port, 6000);
    std::fs::write(&file, "postgres:\n  port: 0\n").expect("write");
    let err = load(Some(&file), &env).expect_err("port 0");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2:9: postgres.port: port 0 is not allowed (use 1 to 65535)",
            file.display()
        )
    );
}

#[test]
fn official_image_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_file = dir.path().join("db");
    std::fs::write(&db_file, "appdb\r\n").expect("write");
    let db_file = db_file.display().to_string();
    let env = [
        ("PGDATA", "/data/pg"),
        ("POSTGRES_USER", "admin"),
        ("POSTGRES_PASSWORD", "pw"),
        ("POSTGRES_DB_FILE", db_file.as_str()),
        ("POSTGRES_INITDB_ARGS", " --data-checksums  --locale=C "),
        ("POSTGRES_INITDB_WALDIR", "/wal"),
        ("POSTGRES_HOST_AUTH_METHOD", "md5"),
    ];
    let config = ok("", &env);
    let init = &config.postgres.init;
    assert_eq!(config.postgres.data_dir, Path::new("/data/pg"));
    assert_eq!(init.superuser, "admin");
    assert_eq!(init.password.as_ref().map(Secret::expose), Some("pw"));
    assert_eq!(init.database, "appdb");
    assert_eq!(init.initdb_args, ["--data-checksums", "--locale=C"]);
    assert_eq!(init.waldir.as_deref(), Some(Path::new("/wal")));
    assert_eq!(init.host_auth_method.as_deref(), Some("md5"));
    // The database defaults to the superuser; empty values count as unset.
    let config = ok(
        "",
        &[
            ("POSTGRES_USER", "admin"),
            ("POSTGRES_DB", ""),
            ("PGDATA", ""),
        ],
    );
    assert_eq!(
        config,
        defaults("/var/lib/postgresql/data", "admin", "admin")
    );
    // Keys in the file win over the environment.
    let yaml = "postgres:\n  data_dir: /srv/pg\n  init: { superuser: root, password: file-pw }\n";
    let config = ok(yaml, &env);
    assert_eq!(config.postgres.data_dir, Path::new("/srv/pg"));
    assert_eq!(config.postgres.init.superuser, "root");
    assert_eq!(config.postgres.init.database, "appdb");
    assert_eq!(
        config.postgres.init.password.as_ref().map(Secret::expose),
        Some("file-pw")
    );
}

#[test]
fn official_image_exclusive_and_unreadable_variables() {
    let env = [
        ("POSTGRES_PASSWORD", "pw"),
        ("POSTGRES_PASSWORD_FILE", "/run/secrets/pw"),
        ("POSTGRES_USER_FILE", "/nonexistent/pgward/user"),
    ];
    assert_eq!(
        problems("", &env),
        [
            "<env>:0:0: POSTGRES_USER_FILE: cannot read secret file /nonexistent/pgward/user: \
             No such file or directory (os error 2)",
            "<env>:0:0: POSTGRES_PASSWORD: both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE \
             are set (but are exclusive)",
        ]
    );
}
