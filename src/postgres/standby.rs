//! A hot standby of a primary (`postgres.standby`), made from the repository with
//! `postgres.init.from_backup`: what it streams from (`primary_conninfo`, a replication slot)
//! and the password file libpq reads for that connection.
//!
//! The password never goes into `postgresql.auto.conf`, where `SHOW primary_conninfo` shows it
//! to every member of `pg_read_all_settings`, nor into the data directory, which backups copy:
//! it lives in [`PASSFILE`] in the socket directory, owned by the server's user, mode 0600,
//! written at each start before postgres starts, and named by `passfile=` in
//! `primary_conninfo`. The server's user can read it, as it can read anything postgres itself
//! needs (a superuser with `pg_read_file`); no one else can.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::fsutil::Dir;
use crate::process::RunAs;
use crate::secret::Secret;

/// The password file's name in the socket directory.
pub const PASSFILE: &str = "pgward-primary.pgpass";

/// The file whose presence in the data directory makes postgres start as a standby; postgres
/// removes it when it is promoted.
pub const STANDBY_SIGNAL: &str = "standby.signal";

/// SQL (a boolean) on a server in recovery: it streams WAL from its primary now.
pub const STREAMING_SQL: &str =
    "coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false)";

/// SQL (a number of bytes) on a server in recovery: WAL received, or reported by the primary
/// as written, but not replayed yet; 0 when nothing is known beyond what was replayed.
pub const LAG_BYTES_SQL: &str = "coalesce(greatest(0, pg_wal_lsn_diff(greatest(\
     (SELECT latest_end_lsn FROM pg_stat_wal_receiver), pg_last_wal_receive_lsn()), \
     pg_last_wal_replay_lsn())), 0)";

/// Whether the cluster in `data_dir` is a hot standby (holds [`STANDBY_SIGNAL`]).
pub fn is_standby(data_dir: &Path) -> bool {
    data_dir.join(STANDBY_SIGNAL).exists()
}

/// `postgres.standby:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandbyConfig {
    /// libpq connection string to the primary, without a password (`host=... port=...
    /// user=...`).
    pub primary_conninfo: String,
    /// The replication user's password, kept out of `primary_conninfo` (see the module doc).
    pub password: Option<Secret>,
    /// A physical replication slot on the primary (`primary_slot_name`).
    pub slot: Option<String>,
}

impl StandbyConfig {
    /// `primary_conninfo` as postgres gets it: the configured one, with `passfile=` naming the
    /// password file in `socket_dir` when a password is configured.
    pub fn conninfo(&self, socket_dir: &Path) -> String {
        match &self.password {
            Some(_) => format!(
                "{} passfile={}",
                self.primary_conninfo.trim_end(),
                conninfo_value(&passfile(socket_dir).to_string_lossy())
            ),
            None => self.primary_conninfo.clone(),
        }
    }

    /// Writes the password file into `socket_dir` (when a password is configured), for
    /// `run_as` (the server's user when root): a new file renamed over the name, so that
    /// whatever stood there (a symlink planted by the server's user) is replaced, never
    /// followed.
    pub fn write_passfile(&self, socket_dir: &Path, run_as: Option<&RunAs>) -> Result<()> {
        let Some(password) = &self.password else {
            return Ok(());
        };
        let dir = Dir::open(socket_dir)
            .with_context(|| format!("open socket directory {}", socket_dir.display()))?;
        let (temp, mut file) = dir
            .create_temp(PASSFILE)
            .with_context(|| format!("create a password file in {}", socket_dir.display()))?;
        let written = (|| -> Result<()> {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            if let Some(user) = run_as {
                std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid))?;
            }
            file.write_all(pgpass_line(password.expose()).as_bytes())?;
            file.sync_all()?;
            Ok(dir.rename(&temp, &dir, PASSFILE)?)
        })();
        if written.is_err() {
            let _ = dir.remove_file(&temp);
        }
        written.with_context(|| format!("write {}", passfile(socket_dir).display()))
    }
}

/// Where the password file of a standby with `socket_dir` is.
pub fn passfile(socket_dir: &Path) -> PathBuf {
    socket_dir.join(PASSFILE)
}

/// A `.pgpass` line for any host, port, database and user, with `:` and `\` escaped.
fn pgpass_line(password: &str) -> String {
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:*:{escaped}\n")
}

/// A conninfo value, single-quoted (with `\` and `'` escaped) when it holds a space or quote.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\']) {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Whether `conninfo` (`key=value` pairs or a `postgres://` URI) carries a password: refused
/// in the config, where `password`/`password_file` keep it out of postgres's settings.
pub fn has_password(conninfo: &str) -> bool {
    let trimmed = conninfo.trim();
    if let Some(rest) = trimmed
        .strip_prefix("postgresql://")
        .or_else(|| trimmed.strip_prefix("postgres://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| u)
            .unwrap_or_default();
        return userinfo.contains(':') || rest.contains("password=");
    }
    conninfo_keys(trimmed)
        .iter()
        .any(|key| key.eq_ignore_ascii_case("password"))
}

/// The keywords of a `key = value` conninfo, as libpq reads it: spaces allowed around `=`,
/// values bare or single-quoted with `\` escapes. Parsing stops at anything else (libpq
/// then refuses the string itself).
fn conninfo_keys(conninfo: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if key.is_empty() || chars.next() != Some('=') {
            return keys;
        }
        keys.push(key);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => break,
                    _ => {}
                }
            }
        } else {
            while chars.next_if(|c| !c.is_whitespace()).is_some() {}
        }
    }
}

/// Whether `name` is a valid replication slot name (lower-case letters, digits, `_`, at most
/// 63 bytes: postgres's rule).
pub fn is_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(password: Option<&str>) -> StandbyConfig {
        StandbyConfig {
            primary_conninfo: "host=db-0 port=5432 user=replicator".into(),
            password: password.map(|p| Secret::new(p.to_owned())),
            slot: None,
        }
    }

    #[test]
    fn the_conninfo_names_the_password_file_never_the_password() {
        let dir = Path::new("/run/post gres");
        assert_eq!(
            standby(Some("s3cret")).conninfo(dir),
            "host=db-0 port=5432 user=replicator passfile='/run/post gres/pgward-primary.pgpass'"
        );
        assert_eq!(
            standby(None).conninfo(Path::new("/run/pg")),
            "host=db-0 port=5432 user=replicator"
        );
        assert!(!standby(Some("s3cret")).conninfo(dir).contains("s3cret"));
    }

    #[test]
    fn pgpass_lines_escape_colons_and_backslashes() {
        assert_eq!(pgpass_line("a:b\\c"), "*:*:*:*:a\\:b\\\\c\n");
    }

    #[test]
    fn a_password_in_the_conninfo_is_found_in_either_form() {
        assert!(has_password("host=a password=x user=r"));
        assert!(has_password("host=a PASSWORD = x"));
        assert!(has_password("postgresql://r:x@db-0/postgres"));
        assert!(has_password("postgres://db-0/postgres?password=x"));
        assert!(has_password("application_name='a b' password='x y'"));
        assert!(!has_password("host=a user=r passfile=/p"));
        assert!(!has_password("application_name='password=x'"));
        assert!(!has_password("postgresql://r@db-0:5432/postgres"));
    }

    #[test]
    fn slot_names_follow_postgres() {
        assert!(is_slot_name("standby_1"));
        assert!(!is_slot_name("Standby"));
        assert!(!is_slot_name("a-b"));
        assert!(!is_slot_name(&"a".repeat(64)));
    }

    #[test]
    fn the_password_file_replaces_a_planted_symlink_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root's file").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(PASSFILE)).unwrap();
        standby(Some("pw"))
            .write_passfile(dir.path(), None)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's file");
        let written = dir.path().join(PASSFILE);
        assert!(!written.is_symlink());
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "*:*:*:*:pw\n");
        let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
