//! The cluster's opened handles, built once per process from the config: the repository (with
//! the server's OS user as the owner of what it creates on local disk, and the retry policy),
//! the user children run as, the data directory, the superuser connection, the commands
//! postgres runs to archive and fetch WAL, the options of backups, restores and verifies, and
//! the environment of every child process.
//!
//! Only `cmd/` and `app/` hold a `Site`. The domain modules below it (`wal/`, `backup/`,
//! `restore/`, `restore_test/`, `check`, ...) take the handles themselves, never the `Site`,
//! so what each one needs stays visible in its signature.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::backup::retention::Policy;
use crate::backup::take::{take_backup, BackupOptions, Cluster};
use crate::backup::verify::VerifyOptions;
use crate::check::{self, CheckResult};
use crate::config::{Config, LogFormat, RestoreTestConfig};
use crate::control::SOCKET_ENV;
use crate::postgres::ready::Target;
use crate::postgres::wal::WalSegSize;
use crate::postgres::{identity, ClusterIdentity};
use crate::process::{ChildEnv, LogSink, RunAs};
use crate::repo::{Repo, RepoMeta, RetryPolicy};
use crate::restore::target::{RecoverySettings, RecoveryTarget, TargetAction};
use crate::restore::RestoreOptions;
use crate::restore_test::{self, RestoreTestReport};
use crate::wal::archived_marks::{self, MARKS_DIR, MARKS_ENV};
use crate::wal::archiver::MarksAt;
use crate::wal::fetch::Fetcher;
use crate::wal::push::PushContext;

/// The child processes pgward starts, by what their environment must hold.
#[derive(Debug, Clone, Copy)]
pub enum Child<'a> {
    /// The supervised server: its archive and restore commands reach this daemon.
    Postgres,
    /// The first start of an empty data directory: initdb, the temporary server, psql and
    /// the init scripts (which get the image's variables on top, see
    /// `postgres::bootstrap`).
    Bootstrap,
    /// A throwaway server (the restore test): its restore command reaches the test's own
    /// control socket, not the daemon's.
    ThrowawayServer { control_socket: &'a Path },
    /// An extra service (`services[]`), with the secret variables it asked to inherit.
    Service { inherit_env: &'a [String] },
    /// A job's command, or its report command, with the secret variables the job asked to
    /// inherit.
    Job { inherit_env: &'a [String] },
}

/// See the module doc.
pub struct Site {
    config: Arc<Config>,
    /// The repository, or why it cannot be opened (the config names a store that cannot be
    /// built): kept, so that commands which can go on without it (`check`) report it.
    repo: Result<Repo, String>,
    /// The server's OS user when running as root, or why it cannot be resolved.
    run_as: Result<Option<RunAs>, String>,
}

impl Site {
    /// Opens the handles of `config`'s cluster. Never fails: what cannot be opened fails the
    /// first caller that needs it, with the reason.
    pub fn new(config: Config) -> Site {
        let run_as = RunAs::for_child(Some(&config.postgres.user)).map_err(|e| format!("{e:#}"));
        let owner = run_as.as_ref().ok().and_then(|u| u.as_ref());
        let repo = Repo::open(&config.storage)
            .map(|repo| repo.with_local_owner(owner.map(|u| (u.uid, u.gid))))
            .map_err(|e| format!("open repository {}: {e:#}", config.storage.url));
        Site {
            config: Arc::new(config),
            repo,
            run_as,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The config, shared (for the tasks of the daemon).
    pub fn shared_config(&self) -> Arc<Config> {
        self.config.clone()
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.postgres.data_dir
    }

    /// The repository of `storage.url`.
    pub fn repo(&self) -> Result<&Repo> {
        self.repo.as_ref().map_err(|e| anyhow!("{e}"))
    }

    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::from_config(&self.config.storage.retry)
    }

    /// Whom the server and the files made for it belong to: `postgres.user` when running as
    /// root, else `None` (everything runs as this process's user).
    pub fn run_as(&self) -> Result<Option<&RunAs>> {
        self.run_as
            .as_ref()
            .map(Option::as_ref)
            .map_err(|e| anyhow!("{e}"))
    }

    /// The server, as its superuser over the unix socket.
    pub fn target(&self) -> Target {
        self.config.postgres.superuser_target()
    }

    /// Where children's output goes (pgward's log, in its format).
    pub fn sink(&self) -> LogSink {
        LogSink {
            format: self.config.log.format,
            max_line_bytes: usize::try_from(self.config.log.max_line_bytes).unwrap_or(usize::MAX),
        }
    }

    /// The identity of the cluster in the data directory, checked against the repository's
    /// `repo.json` (written on first use): WAL and backups of another cluster or major version
    /// are refused.
    pub async fn cluster(&self) -> Result<ClusterIdentity> {
        let identity = ClusterIdentity::read(self.data_dir()).await?;
        self.check_repository(&identity).await?;
        Ok(identity)
    }

    /// The check of [`Site::cluster`] against the repository's `repo.json`, for `identity`
    /// as read from the data directory.
    async fn check_repository(&self, identity: &ClusterIdentity) -> Result<()> {
        let repo = self.repo()?;
        let expected = RepoMeta::new(identity.pg_major, identity.system_identifier);
        repo.ensure_meta(&expected)
            .await
            .with_context(|| format!("check repository {}", repo.describe()))?;
        Ok(())
    }

    /// Refuses `what`, a write into the repository, when this cluster is a copy of the one the
    /// repository belongs to (`from_backup` with `restore_as: copy`). `config check` refuses a
    /// copy's archiving and backup or expire jobs; this guards the same writes run by hand: a
    /// copy's backups and WAL would branch its original's history, and its `expire` would
    /// delete the original's newer backups as off its own lineage.
    pub fn refuse_if_copy(&self, what: &str) -> Result<()> {
        if !self.config.postgres.init.restores_a_copy() {
            return Ok(());
        }
        bail!(
            "{what} refused: this cluster was restored from {} with postgres.init.from_backup \
             and is a copy (postgres.init.restore_as: copy, the default), which never writes to \
             the repository it came from\nHINT: point storage.url at the copy's own repository \
             (and drop from_backup); if this cluster replaces the original, set \
             postgres.init.restore_as: successor",
            self.repo()?.describe()
        )
    }

    /// What archiving this cluster's WAL needs.
    pub async fn push_context(&self) -> Result<PushContext> {
        self.refuse_if_copy("archiving WAL")?;
        let identity = self.cluster().await?;
        Ok(PushContext::new(
            self.repo()?.clone(),
            self.retry(),
            identity,
        ))
    }

    /// A fetcher of archived WAL into `pg_wal` (spool there too), `seg_size` apart.
    pub fn fetcher(
        &self,
        pg_wal: &Path,
        seg_size: WalSegSize,
        cancel: CancellationToken,
    ) -> Result<Fetcher> {
        Ok(Fetcher::new(
            self.repo()?.clone(),
            self.retry(),
            pg_wal,
            seg_size,
            self.config.wal.prefetch as usize,
            self.run_as()?.cloned(),
            cancel,
        ))
    }

    /// A fetcher for the cluster in the data directory (its `pg_control` tells the segment
    /// size).
    pub async fn cluster_fetcher(&self, cancel: CancellationToken) -> Result<Fetcher> {
        let seg_size = identity::seg_size_of(self.data_dir()).await?;
        self.fetcher(&self.data_dir().join("pg_wal"), seg_size, cancel)
    }

    /// This pgward with this config, quoted for /bin/sh: the start of the archive and restore
    /// commands postgres runs.
    pub fn pgward_invocation(&self) -> Result<String> {
        let exe = std::env::current_exe().context("find the pgward executable")?;
        let mut command = shell_quote(&exe.to_string_lossy());
        if let Some(file) = &self.config.source {
            let file = std::path::absolute(file).context("make the config path absolute")?;
            command.push_str(&format!(
                " --config {}",
                shell_quote(&file.to_string_lossy())
            ));
        }
        Ok(command)
    }

    /// Where the daemon leaves its archived marks (see `wal::archived_marks`): when running
    /// as root, in a directory of its own that the server's user cannot write; else in
    /// `pg_wal`.
    pub fn archived_marks(&self) -> Result<MarksAt> {
        Ok(match self.run_as()? {
            Some(_) => MarksAt {
                dir: archived_marks::runtime_marks_dir(self.data_dir()),
                runtime: true,
            },
            None => MarksAt {
                dir: self.data_dir().join("pg_wal").join(MARKS_DIR),
                runtime: false,
            },
        })
    }

    /// `archive_command`: this binary's `wal-push`, after a look for the daemon's mark of the
    /// file (see `wal::archived_marks`) with the shell's built-in `test`: a segment the daemon
    /// archived before postgres asked then costs postgres no process beyond its shell.
    pub fn archive_command(&self) -> Result<String> {
        let marks = self.archived_marks()?;
        let marks = match marks.runtime {
            true => shell_quote(&marks.dir.to_string_lossy()),
            // Relative to the data directory, postgres's working directory.
            false => format!("pg_wal/{MARKS_DIR}"),
        };
        Ok(format!(
            "test -f {marks}/%f || {} wal-push %p",
            self.pgward_invocation()?
        ))
    }

    /// `restore_command` of a restored cluster: this binary's `wal-fetch`.
    pub fn restore_command(&self) -> Result<String> {
        Ok(format!("{} wal-fetch %f %p", self.pgward_invocation()?))
    }

    /// The environment of a child process: pgward's own, less its secrets (storage
    /// credentials, passwords, what the config read as a secret: see `secret_env_names`),
    /// plus what the child needs from pgward. The one place it is built: whatever a child
    /// must (or must not) see is decided here. A service or job still gets the secret
    /// variables it lists in `inherit_env`, and whatever its own `env` sets.
    ///
    /// Everything the `postgres` OS user runs (the server, and through it every database
    /// superuser: `COPY ... TO PROGRAM`, `pg_read_file('/proc/<postmaster>/environ')`) would
    /// otherwise read the storage credentials that can delete every backup.
    pub fn child_env(&self, child: Child<'_>) -> ChildEnv {
        let inherit: &[String] = match child {
            Child::Service { inherit_env } | Child::Job { inherit_env } => inherit_env,
            Child::Postgres | Child::Bootstrap | Child::ThrowawayServer { .. } => &[],
        };
        let mut env = ChildEnv {
            set: Vec::new(),
            remove: secret_env_names(std::env::vars_os(), &self.config.secret_values(), inherit),
        };
        let log_format = match self.config.log.format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        };
        match child {
            Child::Postgres => {
                env.set(SOCKET_ENV, &self.config.control.socket);
                env.set(crate::logging::FORMAT_ENV, log_format);
                if let Ok(marks) = self.archived_marks() {
                    env.set(MARKS_ENV, &marks.dir);
                }
            }
            Child::ThrowawayServer { control_socket } => {
                env.set(SOCKET_ENV, control_socket);
                env.set(crate::logging::FORMAT_ENV, log_format);
            }
            Child::Bootstrap | Child::Service { .. } | Child::Job { .. } => {}
        }
        env
    }

    /// How backups run (`backup.*`), with these annotations and keep flag.
    pub fn backup_options(
        &self,
        annotations: std::collections::BTreeMap<String, String>,
        keep: bool,
    ) -> BackupOptions {
        let backup = &self.config.backup;
        BackupOptions {
            concurrency: backup.concurrency as usize,
            transfers: backup.transfers as usize,
            wal_wait: backup.wal_wait,
            lease_ttl: backup.lease_ttl,
            slice_size: backup.slice_size,
            incremental_memory: backup.incremental_memory,
            bundling: crate::backup::Bundling {
                size: backup.bundle_size,
                file_max: backup.bundle_file_max,
            },
            annotations,
            keep,
            retry: self.retry(),
        }
    }

    /// Takes a backup of this cluster (the `backup` command and job action): full, or
    /// incremental on the latest backup; what the complete backup holds.
    pub async fn take_backup(
        &self,
        incremental: bool,
        options: &BackupOptions,
        cancel: &CancellationToken,
    ) -> Result<crate::backup::summary::Completed> {
        self.refuse_if_copy("a backup")?;
        // The server's user must be known (as root) before anything starts.
        self.run_as()?;
        let repo = self.repo()?;
        let identity = ClusterIdentity::read(self.data_dir()).await?;
        let target = self.target();
        let cluster = Cluster {
            target: &target,
            data_dir: self.data_dir(),
            identity,
        };
        // The repository's identity is checked while the backup lease is read.
        let checked = self.check_repository(&identity);
        take_backup(repo, &cluster, checked, incremental, options, cancel).await
    }

    /// Runs every health check on this cluster and its repository.
    pub async fn checks(&self) -> Vec<CheckResult> {
        let config = &self.config;
        let subject = check::Subject {
            target: self.target(),
            data_dir: self.data_dir(),
            repo: self.repo.as_ref().map_err(Clone::clone),
            identity: self.cluster().await.map_err(|e| format!("{e:#}")),
            wal_max_age: config.wal.max_age,
            backup_max_age: config.backup.max_age,
            min_redundancy: config.backup.min_redundancy,
        };
        check::run(&subject).await
    }

    /// Runs a restore test of this cluster's backups (see [`restore_test::run`]).
    pub async fn restore_test(
        &self,
        options: &RestoreTestConfig,
        cancel: &CancellationToken,
    ) -> Result<RestoreTestReport> {
        let server_env = |socket: &Path| {
            self.child_env(Child::ThrowawayServer {
                control_socket: socket,
            })
        };
        let fetcher = |pg_wal: &Path, seg_size, cancel| self.fetcher(pg_wal, seg_size, cancel);
        let resources = restore_test::Resources {
            config: &self.config,
            repo: self.repo.as_ref().map_err(Clone::clone),
            fetcher: &fetcher,
            owner: self.run_as()?,
            sink: self.sink(),
            restore_command: self.restore_command().map_err(|e| format!("{e:#}")),
            server_env: &server_env,
        };
        restore_test::run(&resources, options, cancel).await
    }

    /// A restore of backup `backup_id` into `data_dir` (empty), recovering to `target` with
    /// this binary's `wal-fetch`; the caller may then ask for `force`, `delta` or moved
    /// tablespaces.
    pub fn restore_options(
        &self,
        data_dir: PathBuf,
        backup_id: &str,
        target: RecoveryTarget,
        action: Option<TargetAction>,
    ) -> Result<RestoreOptions> {
        let mut options = RestoreOptions::new(
            data_dir,
            self.config.backup.concurrency as usize,
            self.run_as()?.cloned(),
            RecoverySettings {
                restore_command: self.restore_command()?,
                target,
                action,
                backup_id: backup_id.to_owned(),
                timeline: Default::default(),
                standby: None,
            },
        );
        options.retry = self.retry();
        Ok(options)
    }

    /// How `verify` reads a backup.
    pub fn verify_options(&self) -> VerifyOptions {
        VerifyOptions {
            concurrency: self.config.backup.concurrency as usize,
            retry: self.retry(),
            data_dir: Some(self.config.postgres.data_dir.clone()),
        }
    }

    /// `backup.retention`.
    pub fn retention(&self) -> Policy {
        let retention = &self.config.backup.retention;
        Policy {
            full: retention.full,
            max_age: retention.max_age,
        }
    }
}

/// Prefixes of the variables the object-storage clients read their settings and credentials
/// from (object_store's `from_env`: any `AWS_*`, `GOOGLE_*` or `AZURE_*` variable).
const STORAGE_ENV_PREFIXES: &[&str] = &["AWS_", "GOOGLE_", "AZURE_"];

/// Passwords of the official image and of libpq.
const PASSWORD_ENV: &[&str] = &["POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE", "PGPASSWORD"];

/// Words that make a `PGWARD_*` variable a secret, anywhere in its name.
const SECRET_NAME_WORDS: &[&str] = &["PASSWORD", "SECRET", "TOKEN", "KEY", "CREDENTIAL"];

/// The names among `vars` (pgward's environment) that a child must not inherit, in their
/// order: the storage clients' variables ([`STORAGE_ENV_PREFIXES`]), the passwords of
/// [`PASSWORD_ENV`], `PGWARD_*` variables named like a secret ([`SECRET_NAME_WORDS`]), and
/// any variable whose value is one of `secrets` (what the config read as a secret, e.g.
/// through `${VAR}`). The rules match names ignoring ASCII case; the names in `inherit`,
/// kept, match exactly.
fn secret_env_names(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    secrets: &[&str],
    inherit: &[String],
) -> Vec<OsString> {
    vars.into_iter()
        .filter(|(name, value)| {
            let name = name.to_string_lossy();
            let upper = name.to_ascii_uppercase();
            let secret = STORAGE_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
                || PASSWORD_ENV.contains(&upper.as_str())
                || (upper.starts_with("PGWARD_")
                    && SECRET_NAME_WORDS.iter().any(|w| upper.contains(w)))
                || secrets.iter().any(|s| value.as_bytes() == s.as_bytes());
            secret && !inherit.iter().any(|keep| *keep == name)
        })
        .map(|(name, _)| name)
        .collect()
}

/// Quotes `word` for /bin/sh, which runs archive_command.
fn shell_quote(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(vars: &[(&str, &str)], secrets: &[&str], inherit: &[&str]) -> Vec<String> {
        let vars = vars
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let inherit: Vec<String> = inherit.iter().map(|s| s.to_string()).collect();
        secret_env_names(vars, secrets, &inherit)
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn storage_credentials_and_passwords_are_kept_from_children() {
        let vars = [
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("AWS_SESSION_TOKEN", "t"),
            ("AWS_REGION", "eu-west-1"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/run/gcs.json"),
            ("GOOGLE_SERVICE_ACCOUNT_KEY", "{}"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "az"),
            ("AZURE_STORAGE_SAS_TOKEN", "sas"),
            ("POSTGRES_PASSWORD", "pw"),
            ("POSTGRES_PASSWORD_FILE", "/run/secrets/pw"),
            ("PGPASSWORD", "pw"),
            ("PGWARD_METRICS_PASSWORD", "m"),
            ("PGWARD_S3_SECRET", "s"),
            ("PGWARD_API_TOKEN", "tok"),
            ("PGWARD_HOOK_KEY", "hk"),
            ("pgward_gcs_credentials", "c"),
        ];
        let all: Vec<String> = vars.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(removed(&vars, &[], &[]), all);
    }

    #[test]
    fn what_postgres_and_the_tools_need_is_kept() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("TZ", "UTC"),
            ("PGDATA", "/var/lib/postgresql/data"),
            ("PGHOST", "/var/run/postgresql"),
            ("PGPORT", "5432"),
            ("PGUSER", "postgres"),
            ("PGDATABASE", "postgres"),
            ("PGPASSFILE", "/root/.pgpass"),
            ("POSTGRES_USER", "postgres"),
            ("POSTGRES_DB", "app"),
            ("PGWARD_CONFIG", "/etc/pgward/pgward.yaml"),
            ("PGWARD_STORAGE_URL", "s3://bucket/prefix"),
            ("PGWARD_LOG_FORMAT", "json"),
            ("DB_PASSWORD_HINT", "ask the DBA"),
        ];
        assert_eq!(removed(&vars, &["s3cret"], &[]), Vec::<String>::new());
    }

    #[test]
    fn a_variable_holding_a_secret_the_config_read_is_kept_from_children() {
        let vars = [
            ("METRICS_PW", "hunter2-long"),
            ("HOOK", "Bearer abc"),
            ("SIMILAR", "hunter2-longer"),
            ("EMPTY", ""),
        ];
        assert_eq!(
            removed(&vars, &["hunter2-long", "Bearer abc"], &[]),
            ["METRICS_PW", "HOOK"]
        );
    }

    #[test]
    fn inherit_env_keeps_exactly_the_listed_names() {
        let vars = [
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("AWS_SESSION_TOKEN", "t"),
            ("METRICS_PW", "hunter2-long"),
        ];
        assert_eq!(
            removed(
                &vars,
                &["hunter2-long"],
                &["AWS_SESSION_TOKEN", "METRICS_PW"]
            ),
            ["AWS_SECRET_ACCESS_KEY"]
        );
        // Exact names: no prefixes, no other case.
        assert_eq!(
            removed(&vars, &[], &["AWS_", "aws_session_token"]),
            ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
        );
    }

    #[test]
    fn shell_quoting_leaves_plain_paths_and_quotes_the_rest() {
        assert_eq!(shell_quote("/usr/bin/pgward"), "/usr/bin/pgward");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
