//! End-to-end tests of [`load`]/[`from_str`]: one per class of problem with its exact
//! `file:line:column: key`, interpolation, secrets, `POSTGRES_*` defaults, and redaction.
//! Environments are closures over maps; the process environment is never touched.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::*;

fn parse(yaml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    from_str(yaml, "cfg.yaml", &|k| vars.get(k).cloned())
}

fn ok(yaml: &str, vars: &[(&str, &str)]) -> Config {
    match parse(yaml, vars) {
        Ok(config) => config,
        Err(e) => panic!("unexpected error:\n{e}"),
    }
}

/// Every problem as its one-line rendering.
fn problems(yaml: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match parse(yaml, vars) {
        Ok(_) => panic!("expected problems"),
        Err(ConfigError::Invalid(problems)) => {
            problems.iter().map(Problem::to_string_line).collect()
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The single problem of `yaml`.
fn problem(yaml: &str) -> String {
    let all = problems(yaml, &[]);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().expect("one problem")
}

// ---- one test per class of problem ----

#[test]
fn type_error_in_a_number() {
    assert_eq!(
        problem("postgres:\n  port: abc\n"),
        "cfg.yaml:2:9: postgres.port: invalid port \"abc\" (use an integer from 1 to 65535)"
    );
}

#[test]
fn type_error_in_the_shape() {
    assert_eq!(
        problem("services:\n  - name: pgbouncer\n    command: pgbouncer\n"),
        "cfg.yaml:3:14: services[0].command: expected a list, found a string"
    );
    assert_eq!(
        problem("postgres: [1]\n"),
        "cfg.yaml:1:11: postgres: expected a mapping of settings, found a list"
    );
}

/// A value of the wrong kind is named in YAML's terms, with what the key takes: never a Rust
/// type's name (serde's own wording is `invalid type: integer `5`, expected struct ...`).
#[test]
fn wrong_shapes_are_worded_in_the_file_s_terms() {
    let cases = [
        (
            "postgres: 5\n",
            "cfg.yaml:1:11: postgres: expected a mapping of settings, found an integer",
        ),
        (
            "jobs: {}\n",
            "cfg.yaml:1:7: jobs: expected a list, found a mapping",
        ),
        (
            "storage: [1]\n",
            "cfg.yaml:1:10: storage: expected a mapping of settings, found a list",
        ),
        (
            "log: text\n",
            "cfg.yaml:1:6: log: expected a mapping of settings, found a string",
        ),
        (
            "storage:\n  s3: true\n",
            "cfg.yaml:2:7: storage.s3: expected a mapping of settings, found a boolean",
        ),
        (
            "services: [5]\n",
            "cfg.yaml:1:12: services[0]: expected a mapping of settings, found an integer",
        ),
        (
            "jobs:\n  - name: a\n    options: 1.5\n",
            "cfg.yaml:3:14: jobs[0].options: expected a mapping of settings, found a number",
        ),
        (
            "postgres:\n  port: [1]\n",
            "cfg.yaml:2:9: postgres.port: expected a single value, found a list",
        ),
        (
            "postgres:\n  parameters: [1]\n",
            "cfg.yaml:2:15: postgres.parameters: expected a mapping, found a list",
        ),
        (
            "services:\n  - name: a\n    command: [a]\n    after: {x: 1}\n",
            "cfg.yaml:4:12: services[0].after: expected a name or a list of names, found a \
             mapping",
        ),
        (
            "jobs:\n  - name: a\n    command: {a: 1}\n",
            "cfg.yaml:3:14: jobs[0].command: expected a list of arguments or a shell command \
             line, found a mapping",
        ),
        (
            "postgres: !settings 5\n",
            "cfg.yaml:1:11: postgres: expected a mapping of settings, found an integer",
        ),
        (
            "services: [~]\n",
            "cfg.yaml:1:12: services[0]: expected a mapping of settings, found null",
        ),
        (
            "- 1\n",
            "cfg.yaml:1:1: <document>: expected a mapping of settings, found a list",
        ),
        (
            "hello\n",
            "cfg.yaml:1:1: <document>: expected a mapping of settings, found a string",
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(problem(yaml), want, "{yaml}");
    }
}

#[test]
fn unknown_key_at_the_top() {
    assert!(problem("postgers:\n  port: 1\n")
        .starts_with("cfg.yaml:1:1: postgers: unknown field `postgers`, expected one of "));
}

#[test]
fn unknown_key_in_a_nested_map() {
    assert_eq!(
        problem("postgres:\n  stop:\n    mdoe: fast\n"),
        "cfg.yaml:3:5: postgres.stop.mdoe: unknown field `mdoe`, expected one of `mode`, \
         `timeout`, `kill_timeout`"
    );
}

#[test]
fn unknown_key_in_a_list_item() {
    let yaml = "services:\n  - name: a\n    command: [a]\n  - name: b\n    comand: [b]\n";
    assert!(problem(yaml)
        .starts_with("cfg.yaml:5:5: services[1].comand: unknown field `comand`, expected one of"));
}

#[test]
fn yaml_syntax_error() {
    assert_eq!(
        problem("postgres:\n  port: 1\n port: 2\n"),
        "cfg.yaml:3:2: <document>: did not find expected key, while parsing a block mapping"
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        problem("postgres:\n  stop:\n    timeout: 5 parsecs\n"),
        "cfg.yaml:3:14: postgres.stop.timeout: invalid duration \"5 parsecs\": unknown time \
         unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, \
         years (and few variations)"
    );
}

#[test]
fn bad_size() {
    assert_eq!(
        problem("log:\n  max_line_bytes: 12 zettabytes\n"),
        "cfg.yaml:2:19: log.max_line_bytes: invalid size \"12 zettabytes\": unknown unit \
         \"zettabytes\" (use B, kB, MB, GB, TB or KiB, MiB, GiB, TiB; all 1024-based)"
    );
}

#[test]
fn bad_cron() {
    let yaml = "jobs:\n  - name: n\n    schedule: \"0 0 1 * * * *\"\n    action: backup\n";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:3:15: jobs[0].schedule: invalid cron schedule \"0 0 1 * * * *\": expected 5 \
         fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found 7"
    );
    let yaml = "jobs:\n  - name: n\n    schedule: 0 25 * * *\n    action: backup\n";
    assert!(problem(yaml)
        .starts_with("cfg.yaml:3:15: jobs[0].schedule: invalid cron schedule \"0 25 * * *\": "));
}

#[test]
fn missing_env_var() {
    assert_eq!(
        problem("postgres:\n  init:\n    password: ${PGPASS}\n"),
        "cfg.yaml:3:15: postgres.init.password: environment variable PGPASS is not set and has \
         no default (use ${PGPASS:-default})"
    );
}

#[test]
fn duplicate_job_names() {
    let yaml = "\
jobs:
  - { name: nightly, schedule: '@daily', action: backup }
  - { name: nightly, schedule: '@daily', action: expire }
";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:3:13: jobs[1].name: duplicate job name \"nightly\" (first defined at line 2)"
    );
}

#[test]
fn duplicate_service_names() {
    let yaml = "\
services:
  - name: a
    command: [a]
  - name: a
    command: [b]
";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:4:11: services[1].name: duplicate service name \"a\" (first defined at line 2)"
    );
}

#[test]
fn service_named_postgres() {
    assert_eq!(
        problem("services:\n  - name: postgres\n    command: [x]\n"),
        "cfg.yaml:2:11: services[0].name: \"postgres\" is reserved for the supervised server; \
         pick another name"
    );
}

#[test]
fn after_unknown_service() {
    let yaml = "services:\n  - name: a\n    command: [a]\n    after: [postgres, nope]\n";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:4:23: services[0].after[1]: unknown service \"nope\" (known: postgres, a)"
    );
}

#[test]
fn after_cycle() {
    let yaml = "\
services:
  - { name: a, command: [a], after: b }
  - { name: b, command: [b], after: [c] }
  - { name: c, command: [c], after: [postgres, a] }
  - { name: d, command: [d], after: d }
";
    assert_eq!(
        problems(yaml, &[]),
        [
            "cfg.yaml:4:48: services[2].after[1]: dependency cycle: a -> b -> c -> a",
            "cfg.yaml:5:37: services[3].after[0]: dependency cycle: d -> d",
        ]
    );
}

#[test]
fn empty_command() {
    assert_eq!(
        problem("services:\n  - name: a\n    command: []\n"),
        "cfg.yaml:3:14: services[0].command: command must not be empty"
    );
    assert_eq!(
        problem("services:\n  - name: a\n"),
        "cfg.yaml:2:5: services[0].command: missing command"
    );
}

#[test]
fn job_with_both_action_and_command() {
    let yaml = "jobs:\n  - name: j\n    schedule: '@daily'\n    action: backup\n    command: [x]\n";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:5:5: jobs[0].command: action and command are exclusive; set one"
    );
}

#[test]
fn job_with_neither_action_nor_command() {
    assert_eq!(
        problem("jobs:\n  - name: j\n    schedule: '@daily'\n"),
        "cfg.yaml:2:5: jobs[0]: either action or command is required"
    );
}

#[test]
fn unknown_action() {
    assert_eq!(
        problem("jobs:\n  - { name: j, schedule: '@daily', action: vacuum }\n"),
        "cfg.yaml:2:44: jobs[0].action: unknown action \"vacuum\" (use backup, expire, verify, \
         check, sql, restore-test)"
    );
}

#[test]
fn bad_stop_signal() {
    assert_eq!(
        problem("services:\n  - { name: a, command: [a], stop_signal: TERMINATE }\n"),
        "cfg.yaml:2:43: services[0].stop_signal: unknown stop signal \"TERMINATE\" (use TERM, \
         INT, QUIT, HUP, KILL, USR1 or USR2)"
    );
}

#[test]
fn bad_timezone() {
    let line = problem(
        "jobs:\n  - { name: j, schedule: '@daily', action: check, timezone: Mars/Olympus }\n",
    );
    assert_eq!(
        line,
        "cfg.yaml:2:61: jobs[0].timezone: unknown time zone \"Mars/Olympus\" (use UTC or an \
         IANA name of the tz database such as Europe/Paris or America/New_York; case matters)"
    );
}

#[test]
fn seconds_reboot_and_any_iana_zone_are_accepted() {
    let config = ok(
        "\
jobs:
  - { name: fast, schedule: '*/10 * * * * *', command: [true] }
  - { name: boot, schedule: '@reboot', action: check }
  - { name: ny, schedule: '30 2 * * *', action: check, timezone: America/New_York }
",
        &[],
    );
    let got: Vec<(&str, &str)> = config
        .jobs
        .iter()
        .map(|j| (j.schedule.as_str(), j.timezone.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("*/10 * * * * *", "UTC"),
            ("@reboot", "UTC"),
            ("30 2 * * *", "America/New_York")
        ]
    );
}

#[test]
fn bad_stop_mode_log_format_and_port_zero_all_reported() {
    let yaml = "\
postgres:
  port: 0
  stop: { mode: slow }
log:
  format: xml
";
    assert_eq!(
        problems(yaml, &[]),
        [
            "cfg.yaml:2:9: postgres.port: port 0 is not allowed (use 1 to 65535)",
            "cfg.yaml:3:17: postgres.stop.mode: invalid stop mode \"slow\" (use smart or fast)",
            "cfg.yaml:5:11: log.format: invalid log format \"xml\" (use text or json)",
        ]
    );
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let yaml = "\
postgres:
  data_dir: relative/dir
  restart: { backoff: 1 }
services:
  - name: 'bad name'
    command: ['']
    restart: sometimes
jobs:
  - { name: j, schedule: '@daily', action: backup, timeout: soon }
";
    assert_eq!(
        problems(yaml, &[]),
        [
            "cfg.yaml:2:13: postgres.data_dir: expected an absolute path, got \"relative/dir\"",
            "cfg.yaml:3:23: postgres.restart.backoff: invalid duration \"1\": time unit needed, \
             for example 1sec or 1ms",
            "cfg.yaml:5:11: services[0].name: invalid service name \"bad name\" (use letters, \
             digits, '_', '.' and '-', starting with a letter or digit)",
            "cfg.yaml:6:15: services[0].command[0]: program name must not be empty",
            "cfg.yaml:7:14: services[0].restart: invalid restart mode \"sometimes\" (use always, \
             on-failure or never)",
            "cfg.yaml:9:61: jobs[0].timeout: invalid duration \"soon\": expected number at 0",
        ]
    );
}

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

// ---- defaults ----

fn defaults(data_dir: &str, superuser: &str, database: &str) -> Config {
    Config {
        source: None,
        postgres: PostgresConfig {
            data_dir: PathBuf::from(data_dir),
            port: 5432,
            socket_dir: PathBuf::from("/var/run/postgresql"),
            user: "postgres".into(),
            bin_dir: None,
            parameters: BTreeMap::new(),
            init: InitConfig {
                superuser: superuser.into(),
                password: None,
                database: database.into(),
                initdb_args: vec![],
                waldir: None,
                host_auth_method: None,
                scripts_dir: PathBuf::from("/docker-entrypoint-initdb.d"),
                from_backup: None,
            },
            stop: StopConfig {
                mode: StopMode::Fast,
                timeout: Duration::from_secs(60),
                kill_timeout: Duration::from_secs(10),
            },
            restart: RestartConfig {
                start_secs: Duration::from_secs(10),
                start_retries: 5,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(30),
            },
        },
        services: vec![],
        jobs: vec![],
        log: LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            max_line_bytes: 65536,
        },
        control: ControlConfig {
            socket: PathBuf::from("/var/run/postgresql/pgward.sock"),
        },
        storage: StorageConfig {
            url: StorageUrl::File(PathBuf::from("/var/lib/pgward/repo")),
            s3: S3Config {
                endpoint: None,
                region: None,
                access_key_id: None,
                secret_access_key: None,
                session_token: None,
                path_style: false,
                allow_http: false,
            },
            gcs: GcsConfig {
                service_account_key: None,
                service_account_path: None,
            },
            azure: AzureConfig {
                account: None,
                access_key: None,
                endpoint: None,
                allow_http: false,
                use_emulator: false,
            },
            compression: Codec::Zstd,
            compression_level: 3,
            retry: StorageRetryConfig {
                max_retries: 5,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                timeout: Duration::from_secs(60),
            },
        },
        wal: WalConfig {
            archive: true,
            archive_timeout: Duration::from_secs(60),
            push_concurrency: 4,
            stage: true,
            prefetch: 8,
            max_age: None,
        },
        backup: BackupConfig {
            concurrency: 2,
            wal_wait: Duration::from_secs(300),
            slice_size: 128 << 20,
            max_age: None,
            min_redundancy: 1,
            retention: RetentionConfig {
                full: 2,
                max_age: None,
            },
        },
        metrics: MetricsConfig {
            enabled: true,
            listen: "0.0.0.0:9187".parse().unwrap(),
            username: None,
            password: None,
            tls: None,
            ready_in_recovery: false,
            queries_file: None,
            scrape_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(1),
        },
    }
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

// ---- a full file ----

const FULL: &str = r#"
postgres:
  data_dir: /var/lib/postgresql/data
  port: 5433
  socket_dir: /run/pg
  user: pg
  bin_dir: /usr/lib/postgresql/16/bin
  parameters: { shared_buffers: 128MB, max_connections: 50, log_connections: on, ssl: true, random_page_cost: 1.10 }
  init:
    superuser: admin
    password: hunter2
    database: app
    initdb_args: [--data-checksums]
    waldir: /wal
    host_auth_method: scram-sha-256
    scripts_dir: /init.d
  stop: { mode: smart, timeout: 30s, kill_timeout: 5s }
  restart: { start_secs: 2s, start_retries: 7, backoff: 500ms, max_backoff: 1m }
services:
  - { name: pgbouncer, command: [pgbouncer, /etc/pgbouncer.ini], env: {A: b, DB_PASSWORD: sesame}, user: postgres, working_dir: /tmp, restart: always, start_secs: 3s, start_retries: 4, backoff: 2s, max_backoff: 20s, stop_signal: SIGINT, stop_timeout: 15s, after: postgres }
  - name: exporter
    command: [exporter]
    after: [postgres, pgbouncer]
jobs:
  - { name: nightly, schedule: "0 1 * * *", action: backup, timezone: Europe/Paris, timeout: 1h }
  - { name: analyze, schedule: "@weekly", command: [vacuumdb, --all, --analyze-only] }
log: { format: json, level: "pgward=debug,info", max_line_bytes: 1MiB }
control: { socket: /run/pgward.sock }
"#;

#[test]
fn full_example() {
    let config = ok(FULL, &[("POSTGRES_PASSWORD", "ignored")]);
    let pg = &config.postgres;
    assert_eq!(pg.port, 5433);
    assert_eq!(pg.socket_dir, Path::new("/run/pg"));
    assert_eq!(pg.user, "pg");
    assert_eq!(
        pg.bin_dir.as_deref(),
        Some(Path::new("/usr/lib/postgresql/16/bin"))
    );
    let params: Vec<(&str, &str)> = pg
        .parameters
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        params,
        [
            ("log_connections", "on"),
            ("max_connections", "50"),
            ("random_page_cost", "1.10"),
            ("shared_buffers", "128MB"),
            ("ssl", "true"),
        ]
    );
    assert_eq!(pg.init.superuser, "admin");
    assert_eq!(
        pg.init.password.as_ref().map(Secret::expose),
        Some("hunter2")
    );
    assert_eq!(pg.init.database, "app");
    assert_eq!(pg.init.initdb_args, ["--data-checksums"]);
    assert_eq!(pg.init.scripts_dir, Path::new("/init.d"));
    assert_eq!(pg.stop.mode, StopMode::Smart);
    assert_eq!(pg.stop.timeout, Duration::from_secs(30));
    assert_eq!(pg.stop.kill_timeout, Duration::from_secs(5));
    assert_eq!(
        pg.restart,
        RestartConfig {
            start_secs: Duration::from_secs(2),
            start_retries: 7,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    );
    assert_eq!(
        config.services[0],
        ServiceConfig {
            name: "pgbouncer".into(),
            command: vec!["pgbouncer".into(), "/etc/pgbouncer.ini".into()],
            env: BTreeMap::from([
                ("A".into(), "b".into()),
                ("DB_PASSWORD".into(), "sesame".into())
            ]),
            user: Some("postgres".into()),
            working_dir: Some(PathBuf::from("/tmp")),
            restart: RestartMode::Always,
            restart_policy: RestartConfig {
                start_secs: Duration::from_secs(3),
                start_retries: 4,
                backoff: Duration::from_secs(2),
                max_backoff: Duration::from_secs(20),
            },
            stop_signal: StopSignal(Signal::SIGINT),
            stop_timeout: Duration::from_secs(15),
            after: vec!["postgres".into()],
        }
    );
    assert_eq!(
        config.services[1],
        ServiceConfig {
            name: "exporter".into(),
            command: vec!["exporter".into()],
            env: BTreeMap::new(),
            user: None,
            working_dir: None,
            restart: RestartMode::OnFailure,
            restart_policy: RestartConfig {
                start_secs: Duration::from_secs(1),
                start_retries: 3,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(30),
            },
            stop_signal: StopSignal(Signal::SIGTERM),
            stop_timeout: Duration::from_secs(10),
            after: vec!["postgres".into(), "pgbouncer".into()],
        }
    );
    assert_eq!(
        config.jobs,
        [
            JobConfig {
                timezone: "Europe/Paris".into(),
                timeout: Some(Duration::from_secs(3600)),
                ..job(
                    "nightly",
                    "0 1 * * *",
                    JobTask::Backup { incremental: false }
                )
            },
            job(
                "analyze",
                "@weekly",
                JobTask::Command {
                    command: CommandLine::Argv(vec![
                        "vacuumdb".into(),
                        "--all".into(),
                        "--analyze-only".into()
                    ])
                }
            ),
        ]
    );
    assert_eq!(
        config.log,
        LogConfig {
            format: LogFormat::Json,
            level: "pgward=debug,info".into(),
            max_line_bytes: 1 << 20,
        }
    );
    assert_eq!(config.control.socket, Path::new("/run/pgward.sock"));
}

// ---- redaction ----

#[test]
fn redacted_yaml_hides_every_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pw");
    std::fs::write(&file, "file-secret-123\n").expect("write");
    let yaml = format!(
        "\
postgres:
  parameters: {{ ssl_passphrase_command_password: param-secret-1, work_mem: 4MB }}
  init: {{ password_file: {} }}
services:
  - name: app
    command: [app]
    env: {{ PGPASSWORD: env-secret-1, aws_secret_access_key: env-secret-2, API_TOKEN: env-secret-3, ssh_key: env-secret-4, MODE: visible-value }}
",
        file.display()
    );
    let config = ok(&yaml, &[]);
    let printed = redacted_yaml(&config);
    for secret in [
        "file-secret-123",
        "param-secret-1",
        "env-secret-1",
        "env-secret-2",
        "env-secret-3",
        "env-secret-4",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
    }
    assert!(printed.contains("visible-value"), "{printed}");
    assert!(printed.contains("work_mem: 4MB"), "{printed}");
    assert!(printed.contains("password: <redacted>"), "{printed}");
    // The original is untouched.
    assert_eq!(
        config.postgres.init.password.as_ref().map(Secret::expose),
        Some("file-secret-123")
    );
}

#[test]
fn redacted_yaml_of_defaults_round_trips_key_names() {
    let printed = redacted_yaml(&ok("", &[]));
    for key in [
        "data_dir:",
        "socket:",
        "max_line_bytes: 65536",
        "timeout: 1m",
    ] {
        assert!(printed.contains(key), "{key} missing:\n{printed}");
    }
}

// ---- storage and wal ----

#[test]
fn storage_and_wal_every_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-from-file\n").expect("write");
    let yaml = format!(
        "\
storage:
  url: s3://pg-backups/prod/main/
  s3:
    endpoint: ${{S3_ENDPOINT}}
    region: eu-west-3
    access_key_id: AKIAEXAMPLE
    secret_access_key: s3cret
    session_token_file: {}
    path_style: false
    allow_http: true
  gcs: {{ service_account_path: /run/secrets/gcs.json }}
  azure: {{ account: acct, access_key: a2V5, endpoint: 'https://acct.blob.example', allow_http: false, use_emulator: false }}
  compression: zstd
  compression_level: 19
  retry: {{ max_retries: 0, initial_backoff: 1s, max_backoff: 1s, timeout: 5m }}
wal:
  archive: false
  archive_timeout: 5m
  push_concurrency: 64
  prefetch: 0
",
        token.display()
    );
    let config = ok(&yaml, &[("S3_ENDPOINT", "http://127.0.0.1:9000")]);
    let s = &config.storage;
    assert_eq!(
        s.url,
        StorageUrl::S3 {
            bucket: "pg-backups".into(),
            prefix: "prod/main".into()
        }
    );
    assert_eq!(
        s.s3,
        S3Config {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("eu-west-3".into()),
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some(Secret::new("s3cret".into())),
            session_token: Some(Secret::new("tok-from-file".into())),
            path_style: false,
            allow_http: true,
        }
    );
    assert_eq!(
        s.gcs,
        GcsConfig {
            service_account_key: None,
            service_account_path: Some(PathBuf::from("/run/secrets/gcs.json")),
        }
    );
    assert_eq!(
        s.azure,
        AzureConfig {
            account: Some("acct".into()),
            access_key: Some(Secret::new("a2V5".into())),
            endpoint: Some("https://acct.blob.example".into()),
            allow_http: false,
            use_emulator: false,
        }
    );
    assert_eq!((s.compression, s.compression_level), (Codec::Zstd, 19));
    assert_eq!(
        s.retry,
        StorageRetryConfig {
            max_retries: 0,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(300),
        }
    );
    assert_eq!(
        config.wal,
        WalConfig {
            archive: false,
            archive_timeout: Duration::from_secs(300),
            push_concurrency: 64,
            stage: true,
            prefetch: 0,
            max_age: None,
        }
    );
    // With wal.archive off, the archive parameters are the user's.
    let config = ok(
        "postgres:\n  parameters: { archive_mode: 'on', archive_timeout: 30s }\nwal: { archive: false }\n",
        &[],
    );
    assert_eq!(config.postgres.parameters["archive_timeout"], "30s");
}

#[test]
fn storage_defaults_per_scheme() {
    // path_style defaults to true exactly when an endpoint is set (S3-compatible servers).
    let config = ok(
        "storage:\n  url: s3://bucket\n  s3: { endpoint: 'https://minio.example' }\n",
        &[],
    );
    assert!(config.storage.s3.path_style);
    let config = ok("storage:\n  url: gs://bucket/p\n  compression: lz4\n", &[]);
    assert!(!config.storage.s3.path_style);
    assert_eq!(config.storage.compression, Codec::Lz4);
    let config = ok(
        "storage:\n  url: az://container\n  azure: { use_emulator: true, endpoint: 'http://127.0.0.1:10000/devstoreaccount1' }\n",
        &[],
    );
    assert!(config.storage.azure.use_emulator);
}

#[test]
fn storage_problems_are_located() {
    assert_eq!(
        problem("storage:\n  url: ftp://host/x\n"),
        "cfg.yaml:2:8: storage.url: unsupported storage url scheme \"ftp\" in \"ftp://host/x\" \
         (use file, s3, gs or az)"
    );
    assert_eq!(
        problem("storage:\n  url: s3:///prefix\n"),
        "cfg.yaml:2:8: storage.url: invalid storage url \"s3:///prefix\": the bucket name is \
         missing"
    );
    assert_eq!(
        problem("storage:\n  url: file://relative\n"),
        "cfg.yaml:2:8: storage.url: invalid storage url \"file://relative\": a file url needs an \
         absolute path and no host (file:///var/lib/pgward/repo)"
    );
    assert_eq!(
        problem("storage:\n  url: s3://b12\n  s3:\n    endpoint: http://minio:9000\n"),
        "cfg.yaml:4:15: storage.s3.endpoint: plain http endpoint \"http://minio:9000\" is not \
         allowed (use https, or set storage.s3.allow_http: true for a server on a trusted \
         network)"
    );
    assert_eq!(
        problem("storage:\n  azure: { endpoint: 'http://127.0.0.1:10000/x' }\n"),
        "cfg.yaml:2:22: storage.azure.endpoint: plain http endpoint \"http://127.0.0.1:10000/x\" \
         is not allowed (use https, or set storage.azure.allow_http: true for a server on a \
         trusted network)"
    );
    assert_eq!(
        problem("storage:\n  s3: { endpoint: minio:9000 }\n"),
        "cfg.yaml:2:19: storage.s3.endpoint: invalid endpoint \"minio:9000\" (expected an \
         http:// or https:// URL)"
    );
    assert_eq!(
        problem("storage:\n  s3: { allow_http: yes }\n"),
        "cfg.yaml:2:21: storage.s3.allow_http: invalid boolean \"yes\" (use true or false)"
    );
    assert_eq!(
        problem("storage:\n  compression: gzip\n"),
        "cfg.yaml:2:16: storage.compression: invalid compression \"gzip\" (use zstd, lz4 or \
         none)"
    );
    assert_eq!(
        problem("storage:\n  compression_level: 22\n"),
        "cfg.yaml:2:22: storage.compression_level: invalid zstd level \"22\" (use an integer \
         from 1 to 19)"
    );
    assert_eq!(
        problem("storage:\n  compression: lz4\n  compression_level: 5\n"),
        "cfg.yaml:3:3: storage.compression_level: compression_level applies to zstd only, but \
         compression is lz4"
    );
    assert_eq!(
        problem("storage:\n  retry: { initial_backoff: 10s, max_backoff: 1s }\n"),
        "cfg.yaml:2:47: storage.retry.max_backoff: max_backoff (1s) is shorter than \
         initial_backoff (10s)"
    );
    assert_eq!(
        problem("storage:\n  retry: { timeout: 0s }\n"),
        "cfg.yaml:2:21: storage.retry.timeout: timeout must be longer than 0s"
    );
    assert_eq!(
        problem("storage:\n  s3: { secret_access_key: a, secret_access_key_file: /x }\n"),
        "cfg.yaml:2:31: storage.s3.secret_access_key_file: both secret_access_key and \
         secret_access_key_file are set (but are exclusive)"
    );
    assert_eq!(
        problem(
            "storage:\n  gcs:\n    service_account_key: '{}'\n    service_account_path: /k.json\n"
        ),
        "cfg.yaml:4:5: storage.gcs.service_account_path: service_account_key and \
         service_account_path are exclusive; set one"
    );
    assert_eq!(
        problem("storage:\n  gcs: { service_account_key: not-json-secret }\n"),
        "cfg.yaml:2:31: storage.gcs.service_account_key: the service account key is not valid \
         JSON"
    );
    assert!(problem("storage:\n  s4: {}\n")
        .starts_with("cfg.yaml:2:3: storage.s4: unknown field `s4`, expected one of "));
}

#[test]
fn backup_problems_are_located() {
    assert_eq!(
        problem("backup:\n  concurrency: 0\n"),
        "cfg.yaml:2:16: backup.concurrency: invalid concurrency \"0\" (use an integer from 1 \
         to 64)"
    );
    assert!(problem("backup:\n  wal_wait: soon\n").starts_with("cfg.yaml:2:13: backup.wal_wait: "));
    assert!(problem("backup:\n  slice_size: 1000kB\n")
        .starts_with("cfg.yaml:2:15: backup.slice_size: invalid slice size"));
    assert_eq!(
        problem("backup:\n  retention:\n    full: 0\n"),
        "cfg.yaml:3:11: backup.retention.full: invalid full \"0\": the newest full backup is \
         always kept (use 1 or more; to keep backups by age alone, set full: 1 and max_age)"
    );
    assert_eq!(
        problem("backup:\n  retention: { full: many }\n"),
        "cfg.yaml:2:22: backup.retention.full: invalid full \"many\" (use an integer of 1 or \
         more)"
    );
    assert_eq!(
        problem("backup:\n  retention:\n    max_age: 0s\n"),
        "cfg.yaml:3:14: backup.retention.max_age: max_age must be longer than 0s"
    );
    assert!(problem("backup:\n  retention:\n    max_age: a month\n")
        .starts_with("cfg.yaml:3:14: backup.retention.max_age: invalid duration \"a month\""));
    assert!(problem("backup:\n  retention:\n    days: 3\n")
        .starts_with("cfg.yaml:3:5: backup.retention.days: unknown field `days`"));
}

#[test]
fn backup_section_parses() {
    let yaml = "\
backup:
  concurrency: 8
  wal_wait: 90s
  slice_size: 16MiB
  retention:
    full: ${FULLS}
    max_age: 30d
";
    assert_eq!(
        ok(yaml, &[("FULLS", "5")]).backup,
        BackupConfig {
            concurrency: 8,
            wal_wait: Duration::from_secs(90),
            slice_size: 16 << 20,
            max_age: None,
            min_redundancy: 1,
            retention: RetentionConfig {
                full: 5,
                max_age: Some(Duration::from_secs(30 * 86400)),
            },
        }
    );
    // An empty retention section is the defaults.
    assert_eq!(
        ok("backup:\n  retention: ~\n", &[]).backup.retention,
        RetentionConfig {
            full: 2,
            max_age: None,
        }
    );
}

#[test]
fn wal_problems_are_located() {
    assert_eq!(
        problem("wal:\n  push_concurrency: 0\n"),
        "cfg.yaml:2:21: wal.push_concurrency: invalid push_concurrency \"0\" (use an integer \
         from 1 to 64)"
    );
    assert_eq!(
        problem("wal:\n  prefetch: -1\n"),
        "cfg.yaml:2:13: wal.prefetch: invalid count \"-1\" (use a non-negative integer)"
    );
    assert_eq!(
        problem("wal:\n  archive_timeout: 1500ms\n"),
        "cfg.yaml:2:20: wal.archive_timeout: invalid archive_timeout \"1500ms\" (use whole \
         seconds, e.g. 60s or 5m)"
    );
    assert_eq!(
        problem("wal:\n  archive: maybe\n"),
        "cfg.yaml:2:12: wal.archive: invalid boolean \"maybe\" (use true or false)"
    );
    assert_eq!(
        problem("postgres:\n  parameters:\n    archive_command: /bin/true\n"),
        "cfg.yaml:3:5: postgres.parameters.archive_command: pgward sets archive_command while \
         wal.archive is true (set wal.archive instead, or wal.archive: false to manage \
         archiving yourself; an archive_command may only wrap `pgward wal-push %p`)"
    );
    // Wrapping pgward's own push (e.g. to time it) is allowed.
    ok(
        "postgres:\n  parameters:\n    archive_command: timed /usr/bin/pgward wal-push %p\n",
        &[],
    );
}

#[test]
fn redacted_yaml_hides_storage_secrets() {
    let yaml = "\
storage:
  url: s3://bucket-1/p
  s3: { access_key_id: AKIAVISIBLE, secret_access_key: s3-secret-1, session_token: s3-secret-2 }
  gcs: { service_account_key: '{\"private_key\": \"gcs-secret-3\"}' }
  azure: { account: acct, access_key: az-secret-4 }
";
    let printed = redacted_yaml(&ok(yaml, &[]));
    for secret in ["s3-secret-1", "s3-secret-2", "gcs-secret-3", "az-secret-4"] {
        assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
    }
    for shown in [
        "url: s3://bucket-1/p",
        "access_key_id: AKIAVISIBLE",
        "secret_access_key: <redacted>",
        "compression: zstd",
        "initial_backoff: 100ms",
        "archive_timeout: 1m",
        "push_concurrency: 4",
    ] {
        assert!(printed.contains(shown), "{shown} missing:\n{printed}");
    }
}

#[test]
fn the_example_file_is_the_defaults() {
    assert_eq!(
        ok(include_str!("../../configs/pgward.example.yaml"), &[]),
        defaults("/var/lib/postgresql/data", "postgres", "postgres")
    );
}

/// A job as written with only `name`, `schedule` and what it runs: every default.
fn job(name: &str, schedule: &str, task: JobTask) -> JobConfig {
    JobConfig {
        name: name.into(),
        schedule: schedule.into(),
        timezone: "UTC".into(),
        task,
        env: BTreeMap::new(),
        user: None,
        working_dir: None,
        concurrency: ConcurrencyPolicy::Forbid,
        timeout: None,
        kill_timeout: Duration::from_secs(30),
        retries: RetryConfig {
            max: 0,
            initial_delay: Duration::from_secs(30),
            multiplier: Multiplier(2.0),
            max_delay: Duration::from_secs(600),
        },
        fails_when: FailsWhen {
            nonzero_exit: true,
            produces_stdout: false,
            produces_stderr: false,
            always: false,
        },
        enabled: true,
        catch_up: false,
        wait_for_postgres: true,
        output_lines: 50,
        on_failure: None,
        on_success: None,
    }
}

#[test]
fn jobs_take_policies_options_and_reports() {
    let yaml = "\
jobs:
  - name: nightly
    schedule: '0 1 * * *'
    action: backup
    options: { type: incremental }
    concurrency: replace
    timeout: 2h
    kill_timeout: 5s
    retries: { max: 3, initial_delay: 1s, multiplier: 1.5, max_delay: 1m }
    fails_when: { produces_stderr: true, nonzero_exit: false }
    catch_up: true
    on_failure:
      command: 'echo $PGWARD_JOB_NAME failed'
      webhook: { url: 'http://127.0.0.1:9/hook', headers: { Authorization: Bearer x } }
  - name: vacuum
    schedule: '@daily'
    action: sql
    options: { sql: VACUUM, database: app }
  - name: drill
    schedule: '0 4 * * 0'
    action: restore-test
    options: { target: latest, sql: 'SELECT count(*) > 0 FROM t', scratch_dir: /scratch }
  - name: cleanup
    schedule: '*/5 * * * *'
    command: 'rm -f /tmp/x*'
    env: { A: b }
    user: nobody
    working_dir: /tmp
    enabled: false
    wait_for_postgres: false
    output_lines: 10
";
    let jobs = ok(yaml, &[]).jobs;
    assert_eq!(
        jobs[0],
        JobConfig {
            concurrency: ConcurrencyPolicy::Replace,
            timeout: Some(Duration::from_secs(7200)),
            kill_timeout: Duration::from_secs(5),
            retries: RetryConfig {
                max: 3,
                initial_delay: Duration::from_secs(1),
                multiplier: Multiplier(1.5),
                max_delay: Duration::from_secs(60),
            },
            fails_when: FailsWhen {
                nonzero_exit: false,
                produces_stdout: false,
                produces_stderr: true,
                always: false,
            },
            catch_up: true,
            on_failure: Some(ReportConfig {
                command: Some(CommandLine::Shell("echo $PGWARD_JOB_NAME failed".into())),
                webhook: Some(WebhookConfig {
                    url: "http://127.0.0.1:9/hook".into(),
                    headers: [("Authorization".to_owned(), Secret::new("Bearer x".into()))]
                        .into_iter()
                        .collect(),
                    timeout: Duration::from_secs(10),
                }),
            }),
            ..job(
                "nightly",
                "0 1 * * *",
                JobTask::Backup { incremental: true }
            )
        }
    );
    assert_eq!(
        jobs[1].task,
        JobTask::Sql {
            sql: "VACUUM".into(),
            database: "app".into(),
            statement_timeout: Duration::from_secs(3600),
        }
    );
    assert_eq!(
        jobs[2].task,
        JobTask::RestoreTest(RestoreTestConfig {
            backup: "latest".into(),
            target: RestoreTestTarget::Latest,
            sql: Some("SELECT count(*) > 0 FROM t".into()),
            database: "postgres".into(),
            scratch_dir: Some("/scratch".into()),
        })
    );
    assert_eq!(
        jobs[3],
        JobConfig {
            env: [("A".to_owned(), "b".to_owned())].into_iter().collect(),
            user: Some("nobody".into()),
            working_dir: Some("/tmp".into()),
            enabled: false,
            wait_for_postgres: false,
            output_lines: 10,
            ..job(
                "cleanup",
                "*/5 * * * *",
                JobTask::Command {
                    command: CommandLine::Shell("rm -f /tmp/x*".into())
                }
            )
        }
    );
}

#[test]
fn job_options_must_fit_the_action() {
    assert_eq!(
        problem(
            "jobs:\n  - { name: j, schedule: '@daily', action: expire, options: { sql: x } }\n"
        ),
        "cfg.yaml:2:63: jobs[0].options.sql: action expire takes no option \"sql\" (it takes no \
         options)"
    );
    assert_eq!(
        problem("jobs:\n  - { name: j, schedule: '@daily', action: sql }\n"),
        "cfg.yaml:2:5: jobs[0].options: action sql needs options.sql"
    );
    assert!(problem(
        "jobs:\n  - { name: j, schedule: '@daily', action: backup, options: { type: delta } }\n"
    )
    .contains("invalid backup type \"delta\""));
    assert!(problem(
        "jobs:\n  - { name: j, schedule: '@daily', command: x, retries: { multiplier: 0.5 } }\n"
    )
    .contains("invalid multiplier"));
    assert!(problem(
        "jobs:\n  - { name: j, schedule: '@daily', command: x, concurrency: queue }\n"
    )
    .contains("invalid concurrency policy"));
    assert!(problem(
        "jobs:\n  - { name: j, schedule: '@daily', command: x, on_failure: { webhook: { url: ftp://x } } }\n"
    )
    .contains("invalid webhook url"));
}

#[test]
fn metrics_section_parses_and_checks_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, "hunter2\n").unwrap();
    let yaml = format!(
        "metrics:\n  listen: 127.0.0.1:9999\n  username: prom\n  password_file: {}\n  tls: {{ cert_file: /c.pem, key_file: /k.pem }}\n  ready_in_recovery: true\n  scrape_timeout: 3s\n",
        secret.display()
    );
    let metrics = ok(&yaml, &[]).metrics;
    assert_eq!(metrics.listen, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(metrics.username.as_deref(), Some("prom"));
    assert_eq!(
        metrics.password.as_ref().map(|p| p.expose()),
        Some("hunter2")
    );
    assert_eq!(
        metrics.tls,
        Some(TlsConfig {
            cert_file: "/c.pem".into(),
            key_file: "/k.pem".into()
        })
    );
    assert!(metrics.ready_in_recovery);
    assert_eq!(metrics.scrape_timeout, Duration::from_secs(3));
    assert!(problem("metrics:\n  username: prom\n").contains("needs metrics.password"));
    assert!(problem("metrics:\n  tls: { cert_file: /c.pem }\n").contains("needs key_file"));
    assert!(problem("metrics:\n  listen: nowhere\n").contains("invalid listen address"));
}
