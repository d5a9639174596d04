//! `postgres:`: the server, its parameters, first-start bootstrap (`init`, with the official
//! image's `POSTGRES_*` defaults), stop and restart; and the parameters pgward sets itself
//! while it archives, which `parameters` must not set again.

use super::values::{choice, invalid, parse_port};
use super::*;
use crate::postgres::bootstrap::{RestoreAs, LATEST_OR_INIT};
use crate::postgres::standby::{has_password, is_slot_name};
use crate::repo::layout::BackupId;

pub(super) fn validate_postgres(raw: RawPostgres, cx: &mut Cx<'_>) -> PostgresConfig {
    let RawPostgres {
        data_dir,
        port,
        socket_dir,
        user,
        bin_dir,
        parameters,
        init,
        stop,
        restart,
        replication,
        standby,
    } = raw;
    let data_dir = match data_dir {
        Some(raw) => cx.path("postgres.data_dir", Some(raw)),
        None => image_env::var(cx.env, "PGDATA").map(PathBuf::from),
    }
    .unwrap_or_else(|| PathBuf::from("/var/lib/postgresql/data"));
    let port = cx.parse("postgres.port", port, parse_port).unwrap_or(5432);
    let socket_dir = cx
        .path("postgres.socket_dir", socket_dir)
        .unwrap_or_else(|| PathBuf::from("/var/run/postgresql"));
    let user = cx
        .string("postgres.user", user)
        .unwrap_or_else(|| "postgres".to_owned());
    let bin_dir = cx.path("postgres.bin_dir", bin_dir);
    let parameters = validate_parameters(parameters, cx);
    let init = validate_init(init, cx);
    let standby = standby.and_then(|raw| validate_standby(raw, &init, cx));
    PostgresConfig {
        data_dir,
        port,
        socket_dir,
        user,
        bin_dir,
        parameters,
        init,
        replication: validate_replication(replication, cx),
        standby,
        stop: validate_stop(stop, cx),
        restart: validate_restart(
            "postgres.restart",
            restart,
            RestartConfig {
                start_secs: Duration::from_secs(10),
                start_retries: 5,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(30),
            },
            cx,
        ),
    }
}

/// Settings pgward passes itself; setting them twice would silently lose one.
const MANAGED_PARAMETERS: &[(&str, &str)] = &[
    ("port", "postgres.port"),
    ("data_directory", "postgres.data_dir"),
];

fn validate_parameters(raw: BTreeMap<String, Text>, cx: &mut Cx<'_>) -> BTreeMap<String, String> {
    for name in raw.keys() {
        let path = format!("postgres.parameters.{name}");
        if !is_parameter_name(name) {
            cx.at_key(&path, format!("invalid parameter name {name:?}"));
        } else if let Some((_, key)) = MANAGED_PARAMETERS.iter().find(|(n, _)| n == name) {
            cx.at_key(&path, format!("set {key} instead"));
        }
    }
    cx.map("postgres.parameters", raw)
}

fn validate_init(raw: RawInit, cx: &mut Cx<'_>) -> InitConfig {
    let RawInit {
        superuser,
        password,
        password_file,
        database,
        initdb_args,
        waldir,
        host_auth_method,
        scripts_dir,
        from_backup,
        restore_as,
    } = raw;
    let superuser = match superuser {
        Some(raw) => cx.string("postgres.init.superuser", Some(raw)),
        None => cx.file_env("POSTGRES_USER"),
    }
    .unwrap_or_else(|| "postgres".to_owned());
    let password = match (password, password_file) {
        (None, None) => cx.file_env("POSTGRES_PASSWORD").map(Secret::new),
        (value, file) => cx.secret("postgres.init.password", value, file),
    };
    let database = match database {
        Some(raw) => cx.string("postgres.init.database", Some(raw)),
        None => cx.file_env("POSTGRES_DB"),
    }
    .unwrap_or_else(|| superuser.clone());
    let initdb_args = match initdb_args {
        Some(raw) => cx.list("postgres.init.initdb_args", raw),
        // Unquoted in the image's script, so the shell splits it on whitespace.
        None => cx
            .file_env("POSTGRES_INITDB_ARGS")
            .map(|args| args.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    let waldir = match waldir {
        Some(raw) => cx.path("postgres.init.waldir", Some(raw)),
        None => image_env::var(cx.env, "POSTGRES_INITDB_WALDIR").map(PathBuf::from),
    };
    let host_auth_method = match host_auth_method {
        Some(raw) => cx.string("postgres.init.host_auth_method", Some(raw)),
        None => image_env::var(cx.env, "POSTGRES_HOST_AUTH_METHOD"),
    };
    let scripts_dir = cx
        .path("postgres.init.scripts_dir", scripts_dir)
        .unwrap_or_else(|| PathBuf::from("/docker-entrypoint-initdb.d"));
    let from_backup = cx
        .parse("postgres.init.from_backup", from_backup, |s| {
            let named = ["none", "latest", LATEST_OR_INIT].contains(&s);
            match named || BackupId::parse(s).is_ok() {
                true => Ok(s.to_owned()),
                false => Err(invalid(
                    "from_backup",
                    s,
                    "none, latest, latest-or-init or a backup id such as 20261130T035500F",
                )),
            }
        })
        // `none`, the default written out: what an image's `${PGWARD_FROM_BACKUP:-none}` gives.
        .filter(|s| s != "none");
    let restore_as = cx
        .parse("postgres.init.restore_as", restore_as, |s| {
            choice(
                "restore_as",
                s,
                &[
                    ("copy", RestoreAs::Copy),
                    ("successor", RestoreAs::Successor),
                ],
            )
        })
        .unwrap_or_default();
    InitConfig {
        superuser,
        password,
        database,
        initdb_args,
        waldir,
        host_auth_method,
        scripts_dir,
        from_backup,
        restore_as,
    }
}

/// `postgres.replication`: each network as `address/prefix` (a bare address is the host
/// alone), the form `pg_hba.conf` takes.
fn validate_replication(raw: RawReplication, cx: &mut Cx<'_>) -> ReplicationConfig {
    let RawReplication { allow } = raw;
    let allow = allow
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            cx.parse(
                &format!("postgres.replication.allow[{i}]"),
                Some(raw),
                |s| {
                    parse_network(s).ok_or_else(|| {
                        invalid(
                            "network",
                            s,
                            "an address or a CIDR such as 10.0.0.0/8 or fd00::/8",
                        )
                    })
                },
            )
        })
        .collect();
    ReplicationConfig { allow }
}

/// `10.0.0.0/8`, `fd00::/8`, or a bare address (`/32` or `/128` added).
fn parse_network(s: &str) -> Option<String> {
    let (address, prefix) = match s.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (s, None),
    };
    let address: std::net::IpAddr = address.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
        None => max,
    };
    Some(format!("{address}/{prefix}"))
}

/// `postgres.standby`: a standby is made from the repository (`init.from_backup`), and its
/// password stays out of `primary_conninfo` (see [`crate::postgres::standby`]).
fn validate_standby(raw: RawStandby, init: &InitConfig, cx: &mut Cx<'_>) -> Option<StandbyConfig> {
    let RawStandby {
        primary_conninfo,
        password,
        password_file,
        slot,
    } = raw;
    let password = cx.secret("postgres.standby.password", password, password_file);
    let slot = cx.parse("postgres.standby.slot", slot, |s| match is_slot_name(s) {
        true => Ok(s.to_owned()),
        false => Err(invalid(
            "slot",
            s,
            "lower-case letters, digits and _, at most 63 characters",
        )),
    });
    match init.from_backup.as_deref() {
        None => cx.at_key(
            "postgres.standby",
            "a standby is made from the repository: set postgres.init.from_backup (latest)"
                .to_owned(),
        ),
        Some(LATEST_OR_INIT) => cx.at_key(
            "postgres.init.from_backup",
            format!(
                "{LATEST_OR_INIT} would bootstrap a new cluster with initdb when the repository \
                 holds no backup, which can be no standby (postgres.standby)\nHINT: use latest"
            ),
        ),
        Some(_) => {}
    }
    let Some(primary_conninfo) = cx.string("postgres.standby.primary_conninfo", primary_conninfo)
    else {
        cx.at_key(
            "postgres.standby.primary_conninfo",
            "missing: the primary to stream from, e.g. host=db-0 port=5432 user=replicator"
                .to_owned(),
        );
        return None;
    };
    if has_password(&primary_conninfo) {
        cx.at_key(
            "postgres.standby.primary_conninfo",
            "holds a password, which postgres would show to anyone allowed to read its settings\n\
             HINT: set postgres.standby.password (or password_file) instead: pgward hands it to \
             postgres in a private password file"
                .to_owned(),
        );
    }
    Some(StandbyConfig {
        primary_conninfo,
        password,
        slot,
    })
}

fn validate_stop(raw: RawStop, cx: &mut Cx<'_>) -> StopConfig {
    let RawStop {
        mode,
        timeout,
        kill_timeout,
    } = raw;
    StopConfig {
        mode: cx
            .parse("postgres.stop.mode", mode, |s| {
                choice(
                    "stop mode",
                    s,
                    &[("smart", StopMode::Smart), ("fast", StopMode::Fast)],
                )
            })
            .unwrap_or(StopMode::Fast),
        timeout: cx
            .duration("postgres.stop.timeout", timeout)
            .unwrap_or(Duration::from_secs(60)),
        kill_timeout: cx
            .duration("postgres.stop.kill_timeout", kill_timeout)
            .unwrap_or(Duration::from_secs(10)),
    }
}

/// Parameters pgward sets itself while it archives; a second value would silently lose.
const ARCHIVE_PARAMETERS: &[(&str, &str)] = &[
    ("archive_mode", "wal.archive"),
    ("archive_command", "wal.archive"),
    ("archive_library", "wal.archive"),
    ("archive_timeout", "wal.archive_timeout"),
];

pub(super) fn check_archive_parameters(
    postgres: &PostgresConfig,
    wal: &WalConfig,
    cx: &mut Cx<'_>,
) {
    if !wal.archive {
        return;
    }
    for (name, key) in ARCHIVE_PARAMETERS {
        // A command that wraps pgward's own wal-push (timing, logging) still archives through
        // pgward; anything else would bypass it.
        if *name == "archive_command"
            && postgres
                .parameters
                .get(*name)
                .is_some_and(|c| c.contains(" wal-push "))
        {
            continue;
        }
        if postgres.parameters.contains_key(*name) {
            cx.at_key(
                &format!("postgres.parameters.{name}"),
                format!(
                    "pgward sets {name} while wal.archive is true (set {key} instead, or \
                     wal.archive: false to manage archiving yourself; an archive_command may \
                     only wrap `pgward wal-push %p`)"
                ),
            );
        }
    }
}

/// A cluster restored from the repository (`from_backup`) is a copy unless `restore_as:
/// successor` says it replaces the original: a copy that archived, backed up or expired into
/// the repository it came from would rewrite its original's history (its promotion starts a
/// new timeline there, its `expire` deletes by its own lineage).
pub(super) fn check_restore_as(
    postgres: &PostgresConfig,
    wal: &WalConfig,
    jobs: &[JobConfig],
    cx: &mut Cx<'_>,
) {
    let init = &postgres.init;
    if !init.restores_a_copy() {
        return;
    }
    let mut writers = Vec::new();
    if wal.archive {
        writers.push("wal.archive: true".to_owned());
    }
    for (i, job) in jobs.iter().enumerate() {
        if job.enabled && matches!(job.task, JobTask::Backup { .. } | JobTask::Expire) {
            writers.push(format!(
                "jobs[{i}] ({:?}, action: {})",
                job.name,
                job.task.kind()
            ));
        }
    }
    if writers.is_empty() {
        return;
    }
    cx.at_key(
        "postgres.init.from_backup",
        format!(
            "a cluster restored with from_backup is a copy (postgres.init.restore_as: copy, the \
             default) and must never write to the repository it came from, but {} would write \
             into storage.url\n\
             HINT: for a copy, set wal.archive: false and remove (or disable) the backup and \
             expire jobs (once it runs, it may archive elsewhere: drop from_backup and point \
             storage.url at its own repository); if this cluster replaces the original \
             (disaster recovery), set postgres.init.restore_as: successor",
            writers.join(" and ")
        ),
    );
}

/// A GUC name as postgres accepts it on the command line (`-c name=value`): letters, digits,
/// `_`, and `.` for extension-qualified names.
fn is_parameter_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}
