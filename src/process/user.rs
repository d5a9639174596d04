//! Running children as another OS user when pgward is root.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use nix::unistd::{Gid, Uid, User};

/// A resolved OS user: ids, supplementary groups and the login environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

impl RunAs {
    /// Looks `name` up in the user database (a name or a numeric uid); fails when there is
    /// no such user.
    pub fn resolve(name: &str) -> Result<RunAs> {
        Self::lookup(name)?.ok_or_else(|| {
            anyhow!("user {name:?} does not exist\nHINT: create it, or set the user key to an existing account")
        })
    }

    /// Looks `name` up in the user database (a name or a numeric uid): `None` when it holds
    /// no such user, an error when the lookup itself fails.
    pub fn lookup(name: &str) -> Result<Option<RunAs>> {
        let user = match name.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(name),
        }
        .with_context(|| format!("look up user {name:?}"))?;
        let Some(user) = user else {
            return Ok(None);
        };
        let cname = std::ffi::CString::new(user.name.clone()).context("user name contains NUL")?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .with_context(|| format!("list groups of user {name:?}"))?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        Ok(Some(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir,
        }))
    }

    /// The user children should run as: `name` when pgward is root, nobody else otherwise (an
    /// unprivileged pgward runs everything as itself).
    pub fn for_child(name: Option<&str>) -> Result<Option<RunAs>> {
        match name {
            Some(name) if Uid::effective().is_root() => Ok(Some(RunAs::resolve(name)?)),
            _ => Ok(None),
        }
    }

    /// Sets the login variables on `cmd` (the ids are switched in `process::Spec`).
    pub fn set_login_env(&self, cmd: &mut Command) {
        cmd.env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
    }

    /// Gives `path` to this user (not recursive).
    pub fn chown(&self, path: &std::path::Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("chown {} to {}", path.display(), self.name))
    }
}
