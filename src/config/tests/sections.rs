//! A full file, redaction, and each section's keys and checks (storage, wal, backup, jobs,
//! metrics).

use super::*;

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
fn full_example_postgres() {
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
}

#[test]
fn full_example_services_jobs_log_and_control() {
    let config = ok(FULL, &[("POSTGRES_PASSWORD", "ignored")]);
    assert_eq!(
        config.services[0],
        ServiceConfig {
            name: "pgbouncer".into(),
            command: vec!["pgbouncer".into(), "/etc/pgbouncer.ini".into()],
            env: BTreeMap::from([
                ("A".into(), "b".into()),
                ("DB_PASSWORD".into(), "sesame".into())
            ]),
            inherit_env: vec![],
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
            inherit_env: vec![],
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
                    JobTask::Backup {
                        incremental: false,
                        at_start_if_none: false
                    }
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
fn redacted_yaml_hides_secrets_by_name_and_by_shape() {
    let yaml = r#"
postgres:
  parameters:
    primary_conninfo: "host=primary user=rep password='s3 cret' application_name=standby"
    ssl_key_file: /etc/ssl/private/server.key
    pgward.dsn: postgresql://rep:uri-secret@primary/postgres?sslmode=require
jobs:
  - name: export
    schedule: "@daily"
    command: [psql, "postgresql://app:cmd-secret@db/app", -c, select 1]
    env: { API_TOKEN: env-secret, MODE: fast }
    on_failure:
      webhook:
        url: https://hooks.example.com/services/T0/B0/path-secret?token=query-secret
        headers: { Authorization: Bearer header-secret }
"#;
    let printed = redacted_yaml(&ok(yaml, &[]));
    for secret in [
        "s3 cret",
        "uri-secret",
        "server.key",
        "cmd-secret",
        "env-secret",
        "path-secret",
        "query-secret",
        "header-secret",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
    }
    let parameters = printed
        .split_once("  parameters:\n")
        .and_then(|(_, rest)| rest.split_once("  init:"))
        .map(|(parameters, _)| parameters)
        .expect("a parameters section");
    assert_eq!(
        parameters,
        "    pgward.dsn: postgresql://rep:…@primary/postgres?sslmode=require\n    \
         primary_conninfo: host=primary user=rep password=<redacted> application_name=standby\n    \
         ssl_key_file: <redacted>\n"
    );
    for shown in [
        "  - psql\n    - postgresql://app:…@db/app\n    - -c\n    - select 1\n",
        "    API_TOKEN: <redacted>\n    MODE: fast\n",
        "      url: https://hooks.example.com/…/…/…/…?token=…\n      headers:\n        \
         Authorization: <redacted>\n",
    ] {
        assert!(printed.contains(shown), "{shown} missing:\n{printed}");
    }
}

#[test]
fn secrets_written_in_the_file_are_told_from_those_read_elsewhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("key");
    std::fs::write(&file, "from-a-file\n").expect("write");
    let yaml = format!(
        r#"
postgres:
  parameters: {{ primary_conninfo: "host=p password=pw", work_mem: 4MB, ssl_passphrase_command: "${{CMD}}" }}
  init: {{ password: "${{PW}}" }}
storage:
  url: s3://bucket-1/p
  s3: {{ access_key_id: ak, secret_access_key_file: {}, session_token: literal-token }}
services:
  - {{ name: app, command: [app], env: {{ DB_PASSWORD: literal, HOME: /x }} }}
jobs:
  - name: j
    schedule: "@daily"
    command: [true]
    on_success: {{ webhook: {{ url: "https://h/x", headers: {{ Authorization: "Bearer t", X-From-Env: "${{TOKEN}}" }} }} }}
"#,
        file.display()
    );
    let config = ok(&yaml, &[("CMD", "echo x"), ("PW", "p"), ("TOKEN", "t")]);
    assert_eq!(
        config.literal_secrets,
        [
            "postgres.parameters.primary_conninfo",
            "services[0].env.DB_PASSWORD",
            "jobs[0].on_success.webhook.headers.Authorization",
            "storage.s3.session_token",
        ]
    );
    assert_eq!(ok("", &[]).literal_secrets, Vec::<String>::new());
}

#[test]
fn a_bad_reference_in_a_secret_does_not_quote_it() {
    let yaml = "postgres: { init: { password: \"pa${ss word\" } }\n";
    assert_eq!(
        problems(yaml, &[]),
        [
            "cfg.yaml:1:31: postgres.init.password: a \"${\" in this secret is not a valid \
             reference (use ${NAME} or ${NAME:-default}; write \"$$\" for a literal \"$\"); the \
             value is not shown"
        ]
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
  retry: {{ max_retries: 0, initial_backoff: 1s, max_backoff: 1s, timeout: 5m, idle_timeout: 2m }}
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
            idle_timeout: Duration::from_secs(120),
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
    assert_eq!(
        problem("backup:\n  lease_ttl: 500ms\n"),
        "cfg.yaml:2:14: backup.lease_ttl: invalid lease_ttl \"500ms\" (use a duration of at \
         least 1s)"
    );
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
  on: any
  lease_ttl: 2m
  slice_size: 16MiB
  incremental_memory: 1GB
  retention:
    full: ${FULLS}
    max_age: 30d
";
    assert_eq!(
        ok(yaml, &[("FULLS", "5")]).backup,
        BackupConfig {
            concurrency: 8,
            transfers: 8,
            wal_wait: Duration::from_secs(90),
            on: BackupOn::Any,
            lease_ttl: Duration::from_secs(120),
            slice_size: 16 << 20,
            incremental_memory: 1 << 30,
            bundle_size: 64 << 20,
            bundle_file_max: 1 << 20,
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
        ok(include_str!("../../../configs/pgward.example.yaml"), &[]),
        defaults("/var/lib/postgresql/data", "postgres", "postgres")
    );
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
                JobTask::Backup {
                    incremental: true,
                    at_start_if_none: false
                }
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
fn services_and_jobs_list_the_secret_variables_they_inherit() {
    let yaml = "\
services:
  - { name: uploader, command: [up], inherit_env: [AWS_ACCESS_KEY_ID, \"${WHICH}\"] }
jobs:
  - name: sync
    schedule: '@daily'
    command: [aws, s3, sync]
    inherit_env:
      - AWS_SESSION_TOKEN
";
    let config = ok(yaml, &[("WHICH", "AWS_SECRET_ACCESS_KEY")]);
    assert_eq!(
        config.services[0].inherit_env,
        ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    );
    assert_eq!(config.jobs[0].inherit_env, ["AWS_SESSION_TOKEN"]);
    let none = ok(
        "services:\n  - { name: a, command: [a], inherit_env: ~ }\n",
        &[],
    );
    assert!(none.services[0].inherit_env.is_empty());
}

#[test]
fn every_secret_value_is_known_to_the_config() {
    let yaml = "\
postgres:
  init: { password: init-pw }
storage:
  url: s3://bucket/prefix
  s3: { access_key_id: key-id, secret_access_key: s3-secret, session_token: s3-session }
  gcs: { service_account_key: '{\"gcs\": \"key\"}' }
  azure: { access_key: azure-key }
metrics: { username: u, password: metrics-pw }
jobs:
  - name: j
    schedule: '@daily'
    command: [x]
    on_failure: { webhook: { url: 'http://127.0.0.1:9/f', headers: { A: failure-header } } }
    on_success: { webhook: { url: 'http://127.0.0.1:9/s', headers: { B: success-header, C: '' } } }
";
    let config = ok(yaml, &[]);
    assert_eq!(
        config.secret_values(),
        [
            "init-pw",
            "s3-secret",
            "s3-session",
            "{\"gcs\": \"key\"}",
            "azure-key",
            "metrics-pw",
            "key-id",
            "failure-header",
            "success-header",
        ]
    );
    assert_eq!(ok("", &[]).secret_values(), Vec::<&str>::new());
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

#[test]
fn a_backup_job_may_also_run_at_start_and_from_backup_may_fall_back_to_initdb() {
    let config = ok(
        "postgres:\n  init:\n    from_backup: latest-or-init\n    restore_as: successor\n\
         jobs:\n  - name: backup\n    schedule: \"0 1 * * *\"\n    action: backup\n    \
         options: { at_start: if_none }\n",
        &[],
    );
    assert_eq!(
        config.postgres.init.from_backup.as_deref(),
        Some("latest-or-init")
    );
    assert_eq!(
        config.jobs[0].task,
        JobTask::Backup {
            incremental: false,
            at_start_if_none: true
        }
    );
    assert!(config.jobs[0].task.runs_at_start());
    assert_eq!(
        problem(
            "jobs:\n  - name: b\n    schedule: \"@daily\"\n    action: backup\n    \
             options: { at_start: always }\n"
        ),
        "cfg.yaml:5:26: jobs[0].options.at_start: invalid at_start \"always\" (use never or if_none)"
    );
    assert!(problem(
        "jobs:\n  - name: e\n    schedule: \"@daily\"\n    action: expire\n    \
         options: { at_start: if_none }\n"
    )
    .contains("action expire takes no option \"at_start\""));
}
