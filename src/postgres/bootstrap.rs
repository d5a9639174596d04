//! First start of an empty data directory, exactly as the official postgres image's
//! `docker-entrypoint.sh` does it: check the password rules, `initdb` with the superuser and
//! password, a `host all all all <method>` line in pg_hba.conf, a temporary socket-only server,
//! `CREATE DATABASE` for `POSTGRES_DB`, the scripts of the init directory in name order, and a
//! fast stop. Everything runs as the server's OS user, in the environment the caller gives
//! (pgward's own less its secrets). The init scripts get on top what the image gives them:
//! `POSTGRES_USER`, `POSTGRES_DB`, `POSTGRES_PASSWORD`, `PGPASSWORD` and the `PG*` variables
//! of the temporary server.
//!
//! Unlike the image, an interrupted bootstrap is not mistaken for a finished one: a marker file
//! lives in the data directory from initdb until the last script succeeded, and a later start
//! refuses to run on a directory that still has it ([`refusal`] says what to do; a restore of
//! `postgres.init.from_backup` left unfinished is resumed by the caller instead).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use serde::Serialize;

use super::data_dir::{Marker, Unfinished};
use super::ready::{self, Target};
use super::server::Server;
use crate::process::{self, ChildEnv, LogSink, Spec};
use crate::secret::Secret;

/// How an empty data directory is filled at first start: the same inputs as the official
/// image's entrypoint. Config reads it from `postgres.init:` (and names it
/// `config::InitConfig`); `from_backup` is for the caller, which restores instead of calling
/// [`bootstrap`] when it is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitConfig {
    /// Superuser name. Default `${POSTGRES_USER:-postgres}`.
    pub superuser: String,
    /// Superuser password. Default `$POSTGRES_PASSWORD` or the file named by
    /// `$POSTGRES_PASSWORD_FILE` (both set is an error, as in the image).
    pub password: Option<Secret>,
    /// Database created after initdb. Default `${POSTGRES_DB:-<superuser>}`.
    pub database: String,
    /// Extra initdb arguments. Default: `$POSTGRES_INITDB_ARGS` split on whitespace.
    pub initdb_args: Vec<String>,
    /// Separate WAL directory (`initdb --waldir`). Default `$POSTGRES_INITDB_WALDIR`.
    pub waldir: Option<PathBuf>,
    /// Auth method for the `host all all all` pg_hba line. Default `$POSTGRES_HOST_AUTH_METHOD`,
    /// else the server's `password_encryption` (scram-sha-256).
    pub host_auth_method: Option<String>,
    /// Scripts run once against a socket-only server after initdb. Default
    /// `/docker-entrypoint-initdb.d`.
    pub scripts_dir: PathBuf,
    /// Instead of initdb, restore this backup (`latest` or an id) into the empty data
    /// directory and recover from the archive; [`LATEST_OR_INIT`]: `latest` when the
    /// repository holds a complete backup, else initdb. Default: none (initdb).
    pub from_backup: Option<String>,
    /// What a cluster made by `from_backup` is to the repository it came from.
    pub restore_as: RestoreAs,
}

impl InitConfig {
    /// Whether a cluster this config restores is a copy of the repository's cluster
    /// (`from_backup` with `restore_as: copy`), which never writes to that repository.
    pub fn restores_a_copy(&self) -> bool {
        self.from_backup.is_some() && self.restore_as == RestoreAs::Copy
    }
}

/// `postgres.init.from_backup` for one config that serves a first deployment and every later
/// loss of the volume: restore `latest` when the repository holds a complete backup, else
/// bootstrap a new cluster with initdb.
pub const LATEST_OR_INIT: &str = "latest-or-init";

/// `postgres.init.restore_as`: what a cluster restored from a repository is to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreAs {
    /// Another cluster with the same data: never writes to the repository it came from.
    #[default]
    Copy,
    /// The original's replacement (disaster recovery): continues its lineage, archiving and
    /// backing up into the same repository once the original no longer archives.
    Successor,
}

/// Present in the data directory while a bootstrap is under way.
pub const INCOMPLETE_MARKER: &str = super::data_dir::INIT_INCOMPLETE_MARKER;

/// What the marker of an unfinished bootstrap or restore in `data_dir` says; `None` without
/// one.
pub fn unfinished(data_dir: &Path) -> Result<Option<Marker>> {
    let path = data_dir.join(INCOMPLETE_MARKER);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(Marker::parse(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Why a start refuses the data directory `data_dir` that `marker` says is unfinished (a
/// restore of `postgres.init.from_backup` is resumed instead, when that is still set).
pub fn refusal(data_dir: &Path, marker: &Marker) -> anyhow::Error {
    let dir = data_dir.display();
    let id = marker.backup.as_deref().unwrap_or("<id>");
    match marker.work {
        Unfinished::Initdb => anyhow::anyhow!(
            "the initialization of data directory {dir} did not complete (initdb or an init \
             script failed or was interrupted)\n\
             HINT: read the log of that run, fix the cause, empty the data directory and start \
             again"
        ),
        Unfinished::FromBackup => anyhow::anyhow!(
            "the restore of backup {id} into data directory {dir} at its first start \
             (postgres.init.from_backup) did not complete\n\
             HINT: set postgres.init.from_backup again to resume it, finish it with `pgward \
             restore {id} --data-dir {dir} --delta`, or empty the data directory"
        ),
        Unfinished::Restore => anyhow::anyhow!(
            "`pgward restore` of backup {id} into data directory {dir} did not complete\n\
             HINT: run `pgward restore {id} --data-dir {dir} --delta` to finish it (the files \
             already restored are kept), or empty the data directory"
        ),
    }
}

/// Checks the image's rules before touching anything: a password is required unless the
/// host auth method is explicitly `trust`.
pub fn check_password_rules(init: &InitConfig) -> Result<()> {
    let has_password = init
        .password
        .as_ref()
        .is_some_and(|p| !p.expose().is_empty());
    if !has_password && init.host_auth_method.as_deref() != Some("trust") {
        bail!(
            "database is uninitialized and superuser password is not specified\n\
             HINT: set POSTGRES_PASSWORD (or postgres.init.password / password_file) to a non-empty value for the superuser. \
             To allow all connections without a password, set POSTGRES_HOST_AUTH_METHOD=trust (or postgres.init.host_auth_method: trust); \
             this is not recommended. See PostgreSQL documentation about \"trust\": https://www.postgresql.org/docs/current/auth-trust.html"
        );
    }
    if !has_password {
        tracing::warn!(
            "POSTGRES_HOST_AUTH_METHOD has been set to \"trust\": all connections are allowed without a password. \
             This is not recommended for anything but development"
        );
    }
    Ok(())
}

/// Bootstraps the empty data directory of `server`; every process it starts gets `env`.
pub async fn bootstrap(
    server: &Server,
    init: &InitConfig,
    replication_allow: &[String],
    sink: &LogSink,
    env: &ChildEnv,
) -> Result<()> {
    check_password_rules(init)?;
    let data_dir = &server.data_dir;
    if fs::read_dir(data_dir)
        .with_context(|| format!("list {}", data_dir.display()))?
        .next()
        .is_some()
    {
        bail!(
            "data directory {} is not empty but holds no PG_VERSION: refusing to initialize over it\n\
             HINT: point postgres.data_dir (PGDATA) at an empty directory or a subdirectory of this mount",
            data_dir.display()
        );
    }
    tracing::info!(data_dir = %data_dir.display(), superuser = %init.superuser, "initializing a new cluster");
    initdb(server, init, sink, env).await?;
    // initdb wants an empty directory, so the marker can only be written after it.
    let marker = data_dir.join(INCOMPLETE_MARKER);
    let text = Marker {
        work: Unfinished::Initdb,
        backup: None,
    }
    .text();
    fs::write(&marker, text).with_context(|| format!("write {}", marker.display()))?;
    append_hba_line(server, init, replication_allow, sink, env).await?;
    run_with_temp_server(server, init, sink, env).await?;
    fs::remove_file(&marker).with_context(|| format!("remove {}", marker.display()))?;
    crate::fsutil::sync_dir(data_dir)?;
    tracing::info!("PostgreSQL init process complete; ready for start up");
    Ok(())
}

async fn initdb(server: &Server, init: &InitConfig, sink: &LogSink, env: &ChildEnv) -> Result<()> {
    if let Some(waldir) = &init.waldir {
        fs::create_dir_all(waldir)
            .with_context(|| format!("create WAL directory {}", waldir.display()))?;
        if let Some(user) = &server.run_as {
            user.chown(waldir)?;
        }
    }
    // The password travels in a private file the server's user can read, never on a command
    // line. A trailing newline as in the image (initdb refuses an empty file).
    let pwfile = PwFile::create(server, init)?;
    let mut spec = Spec::new("initdb", server.bin.tool("initdb"))
        .arg("-D")
        .arg(&server.data_dir)
        .arg(format!("--username={}", init.superuser))
        .arg(format!("--pwfile={}", pwfile.path.display()))
        .run_as(server.run_as.clone())
        .child_env(env);
    if let Some(waldir) = &init.waldir {
        spec = spec.arg("--waldir").arg(waldir);
    }
    spec = spec.args(&init.initdb_args);
    process::run_ok(&spec, sink, None).await
}

/// A temporary password file, removed on drop.
struct PwFile {
    path: PathBuf,
}

impl PwFile {
    fn create(server: &Server, init: &InitConfig) -> Result<PwFile> {
        let dir = &server.socket_dir;
        let path = dir.join(format!(".pgward-initdb-pw.{}", std::process::id()));
        let password = init.password.as_ref().map(|p| p.expose()).unwrap_or("");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        let guard = PwFile { path };
        file.write_all(format!("{password}\n").as_bytes())
            .with_context(|| format!("write {}", guard.path.display()))?;
        if let Some(user) = &server.run_as {
            user.chown(&guard.path)?;
        }
        Ok(guard)
    }
}

impl Drop for PwFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The image's `pg_setup_hba_conf`: allow every host with the chosen method, which defaults
/// to the server's `password_encryption` (scram-sha-256 on 14+); and replication from each of
/// `replication_allow` (`postgres.replication.allow`) with the same method (the `all`
/// database of the first line does not match replication connections).
async fn append_hba_line(
    server: &Server,
    init: &InitConfig,
    replication_allow: &[String],
    sink: &LogSink,
    env: &ChildEnv,
) -> Result<()> {
    let method = match &init.host_auth_method {
        Some(method) => method.clone(),
        None => {
            let spec = Spec::new("postgres -C", server.bin.tool("postgres"))
                .arg("-C")
                .arg("password_encryption")
                .arg("-D")
                .arg(&server.data_dir)
                .run_as(server.run_as.clone())
                .child_env(env);
            let (status, out) = process::capture(&spec, sink).await?;
            if !status.success() {
                bail!("reading password_encryption failed: {status}");
            }
            match out.trim() {
                "on" | "" => "md5".to_owned(),
                other => other.to_owned(),
            }
        }
    };
    let mut text = String::from("\n");
    if method == "trust" {
        text.push_str("# warning trust is enabled for all connections\n");
        text.push_str("# see https://www.postgresql.org/docs/current/auth-trust.html\n");
    }
    text.push_str(&format!("host all all all {method}\n"));
    for network in replication_allow {
        text.push_str(&format!("host replication all {network} {method}\n"));
    }
    let hba = server.data_dir.join("pg_hba.conf");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&hba)
        .with_context(|| format!("open {}", hba.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("append to {}", hba.display()))?;
    file.sync_all()
        .with_context(|| format!("fsync {}", hba.display()))?;
    Ok(())
}

/// Starts a server that listens on the socket only, creates the database, runs the scripts,
/// and stops it fast. The server is stopped on every path, also when a script fails.
async fn run_with_temp_server(
    server: &Server,
    init: &InitConfig,
    sink: &LogSink,
    env: &ChildEnv,
) -> Result<()> {
    let spec = server
        .spec("postgres-init", &[("listen_addresses", "")])
        .child_env(env);
    let running = process::spawn(&spec, sink)?;
    let pid = running.pid;
    let mut exit = running.exit;
    let target = Target {
        socket_dir: server.socket_dir.clone(),
        port: server.port,
        user: init.superuser.clone(),
        password: init.password.clone(),
        dbname: "postgres".into(),
    };
    let work = async {
        tokio::select! {
            () = ready::wait_ready(&target, &server.data_dir, pid) => {}
            status = &mut exit => bail!(
                "the temporary server exited during start-up: {}\nHINT: its own lines just \
                 above in this log say why (a bad postgres.parameters value, a port in use, \
                 memory)",
                status.map(|s| s.to_string()).unwrap_or_default()
            ),
        }
        create_database(&target, &init.database).await?;
        run_scripts(server, init, sink, env).await
    };
    let result = work.await;
    process::signal(pid, nix::sys::signal::Signal::SIGINT);
    let status = exit
        .await
        .expect("the global reaper never drops a registered child");
    result?;
    if !status.success() {
        bail!("the temporary server did not stop cleanly: {status}");
    }
    Ok(())
}

/// The image's `docker_setup_db`.
async fn create_database(target: &Target, database: &str) -> Result<()> {
    if database == "postgres" {
        return Ok(());
    }
    let client = target
        .connect()
        .await
        .context("connect to the temporary server")?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .context("look up the database")?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", database.replace('"', "\"\""));
        client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
            .with_context(|| format!("create database {database}"))?;
        tracing::info!(database, "created database");
    }
    Ok(())
}

/// The image's `docker_process_init_files`, in name order.
async fn run_scripts(
    server: &Server,
    init: &InitConfig,
    sink: &LogSink,
    env: &ChildEnv,
) -> Result<()> {
    let dir = &init.scripts_dir;
    let mut entries: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("list init scripts in {}", dir.display())),
    };
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(kind) = ScriptKind::of(&name) else {
            tracing::info!(script = %path.display(), "ignoring (not *.sh, *.sql or *.sql.gz)");
            continue;
        };
        tracing::info!(script = %path.display(), "running init script");
        run_script(server, init, sink, env, &path, kind)
            .await
            .with_context(|| format!("init script {} failed", path.display()))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScriptKind {
    Shell,
    Sql,
    SqlGz,
}

impl ScriptKind {
    /// The kind of an init script by its name; `None` for files the image ignores.
    fn of(name: &str) -> Option<ScriptKind> {
        if name.ends_with(".sh") {
            Some(ScriptKind::Shell)
        } else if name.ends_with(".sql") {
            Some(ScriptKind::Sql)
        } else if name.ends_with(".sql.gz") {
            Some(ScriptKind::SqlGz)
        } else {
            None
        }
    }
}

async fn run_script(
    server: &Server,
    init: &InitConfig,
    sink: &LogSink,
    env: &ChildEnv,
    path: &Path,
    kind: ScriptKind,
) -> Result<()> {
    let name = format!(
        "initdb.d/{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut spec = match kind {
        ScriptKind::Shell => {
            let executable = fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            // The image runs executable scripts and sources the others; a separate shell is
            // the closest a non-shell entrypoint can get to sourcing.
            if executable {
                Spec::new(name, path)
            } else {
                Spec::new(name, "sh").arg(path)
            }
        }
        ScriptKind::Sql | ScriptKind::SqlGz => Spec::new(name, server.bin.tool("psql"))
            .args(["-v", "ON_ERROR_STOP=1", "--no-password", "--no-psqlrc"])
            .arg(format!("--username={}", init.superuser))
            .arg(format!("--dbname={}", init.database)),
    };
    // What the image's scripts may rely on, the superuser's password included (the image
    // exports it to them; they run once, before any client can connect, and are the image
    // builder's or operator's own code). It wins over `env`, which removed it.
    spec = spec
        .child_env(env)
        .env("PGHOST", &server.socket_dir)
        .env("PGPORT", server.port.to_string())
        .env("PGUSER", &init.superuser)
        .env("PGDATA", &server.data_dir)
        .env("POSTGRES_USER", &init.superuser)
        .env("POSTGRES_DB", &init.database)
        .run_as(server.run_as.clone());
    if let Some(password) = &init.password {
        spec = spec
            .env("PGPASSWORD", password.expose())
            .env("POSTGRES_PASSWORD", password.expose());
    }
    spec.working_dir = Some(init.scripts_dir.clone());
    let input: Option<Box<dyn Read + Send>> = match kind {
        ScriptKind::Sql => Some(Box::new(
            fs::File::open(path).with_context(|| format!("open {}", path.display()))?,
        )),
        ScriptKind::SqlGz => Some(Box::new(GzDecoder::new(
            fs::File::open(path).with_context(|| format!("open {}", path.display()))?,
        ))),
        _ => None,
    };
    process::run_ok(&spec, sink, input).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(password: Option<&str>, method: Option<&str>) -> InitConfig {
        InitConfig {
            superuser: "postgres".into(),
            password: password.map(|p| Secret::new(p.into())),
            database: "postgres".into(),
            initdb_args: vec![],
            waldir: None,
            host_auth_method: method.map(Into::into),
            scripts_dir: "/nonexistent".into(),
            from_backup: None,
            restore_as: RestoreAs::Copy,
        }
    }

    #[test]
    fn password_is_required_unless_trust_is_explicit() {
        assert!(check_password_rules(&init(None, None)).is_err());
        assert!(check_password_rules(&init(Some(""), Some("scram-sha-256"))).is_err());
        assert!(check_password_rules(&init(Some("s3cret"), None)).is_ok());
        assert!(check_password_rules(&init(None, Some("trust"))).is_ok());
    }

    #[test]
    fn script_kinds_follow_the_image() {
        assert_eq!(ScriptKind::of("01-users.sh"), Some(ScriptKind::Shell));
        assert_eq!(ScriptKind::of("02-schema.sql"), Some(ScriptKind::Sql));
        assert_eq!(ScriptKind::of("03-data.sql.gz"), Some(ScriptKind::SqlGz));
        assert_eq!(ScriptKind::of("README.md"), None);
    }
}
