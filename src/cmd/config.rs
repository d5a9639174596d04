//! `pgward config check`, `config print` and `config schema`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;

use crate::cli::ConfigCommand;
use crate::config::{self, Config};

pub fn run(command: ConfigCommand, path: Option<&Path>) -> ExitCode {
    match command {
        // Exit 2 with `file:line:column` per problem (see `super::load`), the users that
        // `pgward run` would start children as included.
        ConfigCommand::Check => match super::load_checking_users(path) {
            Ok(config) => {
                if let Some(warning) = readable_secrets_warning(&config) {
                    eprintln!("{warning}");
                }
                println!("{}: ok", source_name(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        ConfigCommand::Print => match super::load(path) {
            Ok(config) => {
                print!("{}", config::redacted_yaml(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        ConfigCommand::Schema => {
            print!("{}", config::json_schema());
            ExitCode::SUCCESS
        }
    }
}

fn source_name(config: &Config) -> String {
    match &config.source {
        Some(path) => path.display().to_string(),
        None => "built-in defaults".into(),
    }
}

/// The warning for a config file that holds secrets written in it (not `_file`, not `${VAR}`)
/// and that the server's OS user (`postgres.user`) can read: every database superuser can run
/// programs as that user, and so read the file. By the mode bits that apply to that user
/// (owner, else group, its primary or a supplementary one, else other); `None` when the file
/// holds no such secret, cannot be read, or the user does not exist here.
fn readable_secrets_warning(config: &Config) -> Option<String> {
    let path = config.source.as_deref()?;
    if config.literal_secrets.is_empty() {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    let user = nix::unistd::User::from_name(&config.postgres.user).ok()??;
    let mode = meta.mode() & 0o7777;
    let readable = if meta.uid() == user.uid.as_raw() {
        mode & 0o400 != 0
    } else if meta.gid() == user.gid.as_raw() || in_group(&user.name, meta.gid()) {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    };
    if !readable {
        return None;
    }
    Some(format!(
        "warning: {path} is readable by the server's OS user {user} (mode {mode:04o}) and holds \
         secrets: {keys}; every database superuser can read them\n\
         HINT: chmod 600 {path} (readable only by the user pgward runs as), or give each secret \
         as `<key>_file: PATH` or `${{VAR}}` from the environment",
        path = path.display(),
        user = user.name,
        keys = config.literal_secrets.join(", "),
    ))
}

/// Whether `user` is a supplementary member of group `gid`.
fn in_group(user: &str, gid: u32) -> bool {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .is_some_and(|group| group.mem.iter().any(|member| member == user))
}
