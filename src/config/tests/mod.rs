//! End-to-end tests of [`load`]/[`from_str`]: one per class of problem with its exact
//! `file:line:column: key`, interpolation, secrets, `POSTGRES_*` defaults, and redaction.
//! Environments are closures over maps; the process environment is never touched.
//!
//! `problems`: one test per class of problem; `environment`: interpolation, `*_file` secrets,
//! defaults and the official image's variables; `sections`: a full file, redaction, and each
//! section's keys and checks.

mod environment;
mod problems;
mod sections;

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
    from_str_with_users(yaml, "cfg.yaml", &|k| vars.get(k).cloned(), &users)
}

/// The user database of the tests: the same on every machine.
fn users(name: &str) -> Result<(), String> {
    match name {
        "root" | "postgres" | "nobody" | "pgbouncer" => Ok(()),
        _ => Err(format!("no such user {name:?}")),
    }
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

/// The whole config built from no file at all, for this data directory and these
/// `POSTGRES_USER` / `POSTGRES_DB` outcomes.
fn defaults(data_dir: &str, superuser: &str, database: &str) -> Config {
    Config {
        source: None,
        literal_secrets: Vec::new(),
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
                restore_as: crate::postgres::bootstrap::RestoreAs::Copy,
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
            replication: ReplicationConfig::default(),
            standby: None,
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
                idle_timeout: Duration::from_secs(60),
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
            transfers: 8,
            wal_wait: Duration::from_secs(300),
            on: BackupOn::Primary,
            lease_ttl: Duration::from_secs(300),
            slice_size: 128 << 20,
            incremental_memory: 128 << 20,
            bundle_size: 64 << 20,
            bundle_file_max: 1 << 20,
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

/// A job as written with only `name`, `schedule` and what it runs: every default.
fn job(name: &str, schedule: &str, task: JobTask) -> JobConfig {
    JobConfig {
        name: name.into(),
        schedule: schedule.into(),
        timezone: "UTC".into(),
        task,
        env: BTreeMap::new(),
        inherit_env: vec![],
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
