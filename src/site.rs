//! The cluster's opened handles, built once per process from the config: the repository (with
//! the server's OS user as the owner of what it creates on local disk, and the retry policy),
//! the user children run as, the data directory, the superuser connection, the commands
//! postgres runs to archive and fetch WAL, the options of backups, restores and verifies, and
//! the environment of every child process.
//!
//! Only `cmd/` and `app/` hold a `Site`. The domain modules below it (`wal/`, `backup/`,
//! `restore/`, `restore_test/`, `check`, ...) take the handles themselves, never the `Site`,
//! so what each one needs stays visible in its signature.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::backup::manifest::Manifest;
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
    /// A throwaway server (the restore test): its restore command reaches the test's own
    /// control socket, not the daemon's.
    ThrowawayServer { control_socket: &'a Path },
    /// An extra service (`services[]`).
    Service,
    /// A job's command, or its report command.
    Job,
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
        let repo = self.repo()?;
        let identity = ClusterIdentity::read(self.data_dir()).await?;
        let expected = RepoMeta::new(identity.pg_major, identity.system_identifier);
        repo.ensure_meta(&expected)
            .await
            .with_context(|| format!("check repository {}", repo.describe()))?;
        Ok(identity)
    }

    /// What archiving this cluster's WAL needs.
    pub async fn push_context(&self) -> Result<PushContext> {
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

    /// The environment of a child process, on top of pgward's own. The one place it is
    /// built: whatever a child must (or must not) see is decided here.
    pub fn child_env(&self, child: Child<'_>) -> ChildEnv {
        let mut env = ChildEnv::default();
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
            Child::Service | Child::Job => {}
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
            wal_wait: backup.wal_wait,
            slice_size: backup.slice_size,
            annotations,
            keep,
        }
    }

    /// Takes a backup of this cluster (the `backup` command and job action): full, or
    /// incremental on the latest backup; the manifest of the complete backup.
    pub async fn take_backup(
        &self,
        incremental: bool,
        options: &BackupOptions,
        cancel: &CancellationToken,
    ) -> Result<Manifest> {
        // The server's user must be known (as root) before anything starts.
        self.run_as()?;
        let identity = self.cluster().await?;
        let target = self.target();
        let cluster = Cluster {
            target: &target,
            data_dir: self.data_dir(),
            identity,
        };
        take_backup(self.repo()?, &cluster, incremental, options, cancel).await
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
        Ok(RestoreOptions::new(
            data_dir,
            self.config.backup.concurrency as usize,
            self.run_as()?.cloned(),
            RecoverySettings {
                restore_command: self.restore_command()?,
                target,
                action,
                backup_id: backup_id.to_owned(),
            },
        ))
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

    #[test]
    fn shell_quoting_leaves_plain_paths_and_quotes_the_rest() {
        assert_eq!(shell_quote("/usr/bin/pgward"), "/usr/bin/pgward");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
