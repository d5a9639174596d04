//! Restoring a backup into a data directory, and the recovery settings that make postgres
//! replay the archived WAL on top of it (to the end, or to a point in time).
//!
//! Every file comes back through the repository's verified download (checksum, atomic
//! write); the backup label, tablespace links, permissions and owner are restored;
//! `recovery.signal` and the recovery settings are written last, so an interrupted restore
//! never looks startable.
//!
//! A restore never harms a live or half-done cluster (`prepare`): a data directory a
//! postmaster runs on is refused (told across PID namespaces, from its lock file and its
//! socket), and so is a non-empty one unless `--force` or `--delta`; the marker that makes
//! a start refuse the directory is written before anything in it is removed, and goes last.
//! An interrupted restore is finished by a delta restore over what it left: `pgward restore
//! --delta`, or by itself at the next start for `postgres.init.from_backup`. At most
//! 2 × `concurrency` files are open at once (`files`), however many the backup holds.
//!
//! A manifest is untrusted input (whoever can write to the repository writes manifests, and
//! a restore runs as root): before anything is written, every path in it is checked (as
//! [`Manifest::validate`](crate::backup::manifest::Manifest::validate) does; the files as
//! the manifest is read) and so is where it leads on this host (no tablespace into a
//! system directory, no symlink made by another user on the way). While the restore runs,
//! the data directory and the tablespace locations belong to root alone; a path of the
//! manifest is never reached through a symlink the restore did not make (a tablespace's
//! files are written under its location, not through `pg_tblspc`), and permissions are set
//! through `O_NOFOLLOW` handles.

mod files;
mod prepare;
pub mod target;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::backup::catalog::FileList;
use crate::backup::entries::SpilledManifest;
use crate::backup::manifest::{label_key, system_directory, ManifestOf, Placement};
use crate::postgres::bootstrap::INCOMPLETE_MARKER;
use crate::postgres::data_dir::{Marker, Unfinished};
use crate::process::RunAs;
use crate::repo::{Repo, RetryPolicy};
use target::RecoverySettings;

/// How a restore runs.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    /// Empty a non-empty data directory first.
    pub force: bool,
    /// Restore over what the data directory holds: files whose content already matches the
    /// backup's are kept, the rest rewritten, anything else removed.
    pub delta: bool,
    /// Files downloaded at once; at most twice as many are open.
    pub concurrency: usize,
    /// Owner of the restored files when running as root (the server's user).
    pub owner: Option<RunAs>,
    pub recovery: RecoverySettings,
    /// New locations of tablespaces, by oid; the others go back where they were.
    pub tablespace_map: std::collections::HashMap<u32, PathBuf>,
    /// A first start's restore (`postgres.init.from_backup`): its marker says so, and the
    /// next start resumes it if it is interrupted.
    pub first_start: bool,
    /// Each object's download is retried as a whole on transient failures (`storage.retry`).
    pub retry: RetryPolicy,
}

impl RestoreOptions {
    /// A restore into `data_dir`, which must be empty: nothing forced, nothing moved.
    pub fn new(
        data_dir: PathBuf,
        concurrency: usize,
        owner: Option<RunAs>,
        recovery: RecoverySettings,
    ) -> RestoreOptions {
        RestoreOptions {
            data_dir,
            force: false,
            delta: false,
            concurrency,
            owner,
            recovery,
            tablespace_map: Default::default(),
            first_start: false,
            retry: RetryPolicy::default(),
        }
    }
}

/// `postgres.init.from_backup`: restores `manifest` into the empty data directory of
/// `options` before `pgward run` starts postgres, which then recovers from the archive (a
/// disaster-recovery host, or a copy, in one command). With `resume`, the directory holds
/// what an interrupted earlier attempt left: the restore goes on over it as a delta restore.
pub async fn bootstrap_from_backup(
    repo: &Repo,
    manifest: &SpilledManifest,
    options: &RestoreOptions,
    resume: bool,
) -> Result<()> {
    let data_dir = options.data_dir.display();
    if resume {
        tracing::warn!(backup = %manifest.id, data_dir = %data_dir, "an earlier restore from the repository at first start did not complete: resuming it over what it left (files already restored are kept)");
    } else {
        tracing::info!(backup = %manifest.id, data_dir = %data_dir, "empty data directory: restoring from the repository instead of initdb");
    }
    let options = RestoreOptions {
        first_start: true,
        delta: resume,
        ..options.clone()
    };
    restore(repo, manifest, &options, &CancellationToken::new()).await?;
    tracing::info!(backup = %manifest.id, "restored; postgres recovers from the archive when it starts");
    Ok(())
}

/// Where tablespace `oid` of a backup is restored.
fn location_of<'a>(options: &'a RestoreOptions, oid: u32, original: &'a str) -> &'a Path {
    options
        .tablespace_map
        .get(&oid)
        .map(PathBuf::as_path)
        .unwrap_or_else(|| Path::new(original))
}

/// The `tablespace_map` postgres recreates the links from (`<oid> <path>` lines, as
/// `pg_backup_stop` writes them: `\\`, newline and carriage return escaped with a
/// backslash), made from the checked manifest and the relocations, never from the stored
/// object; `None` without tablespaces.
fn tablespace_map_text<F>(manifest: &ManifestOf<F>, options: &RestoreOptions) -> Option<String> {
    if manifest.tablespaces.is_empty() {
        return None;
    }
    let mut out = String::new();
    for tablespace in &manifest.tablespaces {
        let location = location_of(options, tablespace.oid, &tablespace.location);
        out.push_str(&format!("{} ", tablespace.oid));
        for c in location.to_string_lossy().chars() {
            if matches!(c, '\\' | '\n' | '\r') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\n');
    }
    Some(out)
}

/// Restores `manifest`'s backup from `repo`.
pub async fn restore(
    repo: &Repo,
    manifest: &SpilledManifest,
    options: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<()> {
    let data_dir = &options.data_dir;
    // Nothing is written before every path of the manifest, and where it leads, is checked,
    // nor before the directory is known to be no live cluster's.
    let placement = Placement {
        relocated: options.tablespace_map.keys().copied().collect(),
        repo_root: repo.local_root(),
    };
    manifest.validate_head(Some(&placement))?;
    manifest.files.validate(&manifest.id)?;
    let layout = Layout::checked(manifest, options, repo.local_root())?;
    prepare::check_data_dir(data_dir, options).await?;
    fence(data_dir, options)?;
    // Until the end, the directory holds a cluster that must not start (no backup_label
    // yet: postgres would "recover" from the copied pg_control and serve torn data). The
    // marker makes `pgward run` refuse it (or resume the restore, at a first start), as it
    // does a half-done initdb; it is on disk before anything is removed.
    let marker = Marker {
        work: if options.first_start {
            Unfinished::FromBackup
        } else {
            Unfinished::Restore
        },
        backup: Some(manifest.id.clone()),
    };
    prepare::write_marker(data_dir, &marker)?;
    if options.delta {
        prepare::clear_for_delta(data_dir, manifest, options)?;
    } else if options.force {
        prepare::empty(data_dir)?;
    }
    for tablespace in &manifest.tablespaces {
        let link = data_dir.join("pg_tblspc").join(tablespace.oid.to_string());
        layout.make_dir("pg_tblspc", None)?;
        let location = location_of(options, tablespace.oid, &tablespace.location);
        if options.delta && std::fs::read_link(&link).is_ok_and(|l| l == location) {
            fence(location, options)?;
            continue;
        }
        // Never emptied, not even with --force: on the original's host the location is the
        // running cluster's own tablespace.
        let oid = tablespace.oid;
        let hint = format!(
            "HINT: empty it, or restore tablespace {oid} elsewhere with --tablespace-map \
             {oid}=DIR (--force does not empty a tablespace's location)"
        );
        prepare::empty_or_refused(location, &hint).with_context(|| format!("tablespace {oid}"))?;
        fence(location, options)?;
        std::os::unix::fs::symlink(location, &link)
            .with_context(|| format!("link {} to {}", link.display(), location.display()))?;
    }
    for dir in &manifest.directories {
        layout.make_dir(&dir.path, Some(dir.mode))?;
    }
    layout.make_dir("pg_wal/archive_status", None)?;

    files::restore_files(repo, manifest, &layout, options, cancel).await?;

    let label = label_key(&manifest.id, "backup_label");
    match repo
        .get_bytes(&label)
        .await
        .with_context(|| format!("read {label}"))?
    {
        Some(content) => write_file(&data_dir.join("backup_label"), &content)?,
        None => bail!(
            "backup {} has no backup_label in {}\n{}",
            manifest.id,
            repo.describe(),
            damaged_hint(&manifest.id)
        ),
    }
    if let Some(map) = tablespace_map_text(manifest, options) {
        write_file(&data_dir.join("tablespace_map"), map.as_bytes())?;
    }
    finish(data_dir, manifest, options)
}

/// The end of a restore whose files are all in place: the recovery settings (last: with
/// `recovery.signal` the directory is a cluster that recovers), the owner, then the marker
/// goes.
fn finish<F>(data_dir: &Path, manifest: &ManifestOf<F>, options: &RestoreOptions) -> Result<()> {
    crate::failpoint!("restore-before-recovery-settings");
    options.recovery.write(data_dir)?;
    if let Some(owner) = &options.owner {
        // The directories themselves when the given paths are (checked) symlinks to them:
        // `chown_tree` follows no symlink.
        let real = |dir: &Path| {
            dir.canonicalize()
                .with_context(|| format!("resolve {}", dir.display()))
        };
        crate::postgres::server::chown_tree(&real(data_dir)?, owner)?;
        for tablespace in &manifest.tablespaces {
            let location = location_of(options, tablespace.oid, &tablespace.location);
            crate::postgres::server::chown_tree(&real(location)?, owner)?;
        }
    }
    sync_restored(data_dir, manifest, options)?;
    let marker = data_dir.join(INCOMPLETE_MARKER);
    std::fs::remove_file(&marker).with_context(|| format!("remove {}", marker.display()))?;
    crate::fsutil::sync_dir(data_dir)
}

/// Makes the restored files durable: they were renamed into place without an fsync each
/// (two per file measured five times the rest of a restore of 100,000 small files on a
/// rotational disk), so each filesystem written is synced once, before the marker that
/// makes the directory an unfinished restore goes.
fn sync_restored<F>(
    data_dir: &Path,
    manifest: &ManifestOf<F>,
    options: &RestoreOptions,
) -> Result<()> {
    crate::failpoint!("restore-before-sync");
    let mut written = vec![data_dir.to_owned(), data_dir.join("pg_wal")];
    for tablespace in &manifest.tablespaces {
        written.push(location_of(options, tablespace.oid, &tablespace.location).to_owned());
    }
    let mut synced = std::collections::BTreeSet::new();
    for dir in written {
        let device = std::fs::metadata(&dir)
            .with_context(|| format!("stat {}", dir.display()))?
            .dev();
        if synced.insert(device) {
            crate::fsutil::sync_filesystem(&dir)?;
        }
    }
    Ok(())
}

/// Sets the mode of `path` through a handle opened with `O_NOFOLLOW`: a symlink put there
/// is refused, never followed.
fn set_mode_nofollow(path: &Path, mode: u32) -> Result<()> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let permissions = std::fs::Permissions::from_mode(mode);
    match opened {
        Ok(file) => file.set_permissions(permissions),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "{} is a symlink; a restore sets no mode through a symlink it did not make",
            path.display()
        ),
        // Unreadable to a restore not running as root: checked, then changed by name (a
        // process without privileges gains nothing from a symlink).
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let meta = std::fs::symlink_metadata(path)
                .with_context(|| format!("stat {}", path.display()))?;
            if meta.file_type().is_symlink() {
                bail!("{} is a symlink", path.display());
            }
            std::fs::set_permissions(path, permissions)
        }
        Err(e) => Err(e),
    }
    .with_context(|| format!("set the mode of {}", path.display()))
}

/// What to do about a backup with an object missing.
fn damaged_hint(id: &str) -> String {
    format!("HINT: `pgward verify {id}` lists what is wrong with it; restore another backup")
}

/// Writes a small file durably (temp, fsync, rename).
fn write_file(path: &Path, content: &[u8]) -> Result<()> {
    let mut file = crate::fsutil::AtomicFile::create(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(content)
        .and_then(|()| file.commit())
        .with_context(|| format!("write {}", path.display()))?;
    set_mode_nofollow(path, 0o600)
}

/// Where a restore writes on this host: the data directory, and each tablespace's location
/// (where the manifest says, or where `--tablespace-map` moves it), both checked.
#[derive(Debug)]
struct Layout {
    data_dir: PathBuf,
    /// Location of each tablespace, by oid as `pg_tblspc/<oid>` spells it.
    locations: HashMap<String, PathBuf>,
}

impl Layout {
    /// The layout of `manifest` restored with `options`, refused when a path on the way to
    /// the data directory or a tablespace location is a symlink another user made, or when a
    /// tablespace left where the manifest says resolves (symlinks followed) into a system
    /// directory or the repository.
    fn checked<F>(
        manifest: &ManifestOf<F>,
        options: &RestoreOptions,
        repo_root: Option<&Path>,
    ) -> Result<Layout> {
        let data_dir = std::path::absolute(&options.data_dir)
            .with_context(|| format!("make {} absolute", options.data_dir.display()))?;
        no_foreign_symlink(&data_dir).context("the data directory")?;
        let mut locations = HashMap::new();
        for tablespace in &manifest.tablespaces {
            let oid = tablespace.oid;
            let location = location_of(options, oid, &tablespace.location);
            let location = std::path::absolute(location)
                .with_context(|| format!("make {} absolute", location.display()))?;
            no_foreign_symlink(&location).with_context(|| format!("tablespace {oid}"))?;
            if !options.tablespace_map.contains_key(&oid) {
                let real = crate::fsutil::resolved(&location);
                let repo = repo_root.map(crate::fsutil::resolved);
                let refused = match (system_directory(&real), repo) {
                    (Some(dir), _) => Some(format!("the system directory {dir}")),
                    (None, Some(repo)) if real.starts_with(&repo) || repo.starts_with(&real) => {
                        Some(format!("the repository {}", repo.display()))
                    }
                    _ => None,
                };
                if let Some(what) = refused {
                    bail!(
                        "backup {}: manifest entry {:?} (tablespace {oid}'s location) is {}, \
                         inside {what}\nHINT: if this backup is yours, restore the tablespace \
                         elsewhere with --tablespace-map {oid}=DIR",
                        manifest.id,
                        tablespace.location,
                        real.display()
                    );
                }
            }
            locations.insert(oid.to_string(), location);
        }
        Ok(Layout {
            data_dir,
            locations,
        })
    }

    /// Where the manifest's (checked) relative `rel` is: under a tablespace's location for
    /// `pg_tblspc/<oid>/...`, never through the link, else under the data directory; as the
    /// directory it starts from and the components below it.
    fn split<'r>(&self, rel: &'r str) -> (&Path, Vec<&'r str>) {
        let components: Vec<&str> = rel.split('/').collect();
        if let ["pg_tblspc", oid, rest @ ..] = components.as_slice() {
            if let Some(location) = self.locations.get(*oid) {
                return (location, rest.to_vec());
            }
        }
        (&self.data_dir, components)
    }

    /// The path on this host of the manifest's `rel`.
    fn path(&self, rel: &str) -> PathBuf {
        let (base, components) = self.split(rel);
        components.iter().fold(base.to_path_buf(), |p, c| p.join(c))
    }

    /// Makes directory `rel` (missing parents too, mode 0700) and gives it `mode`, through
    /// real directories only: an existing symlink on the way is refused, never followed.
    fn make_dir(&self, rel: &str, mode: Option<u32>) -> Result<PathBuf> {
        let (base, components) = self.split(rel);
        let mut path = base.to_path_buf();
        for component in components {
            path.push(component);
            real_dir(&path)?;
        }
        if let Some(mode) = mode {
            set_mode_nofollow(&path, mode)?;
        }
        Ok(path)
    }

    /// Where the file `rel` goes, its directory made as [`Layout::make_dir`] does.
    fn file(&self, rel: &str) -> Result<PathBuf> {
        match rel.rsplit_once('/') {
            Some((dir, _)) => self.make_dir(dir, None)?,
            None => self.data_dir.clone(),
        };
        Ok(self.path(rel))
    }
}

/// `path` is a directory, not a symlink: made (mode 0700) when missing.
fn real_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    loop {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(meta) if meta.file_type().is_symlink() => bail!(
                "{} is a symlink; a restore goes through no symlink it did not make\nHINT: \
                 remove it, or restore into an empty directory",
                path.display()
            ),
            Ok(_) => bail!(
                "{} is in the way of a directory of the backup",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::DirBuilder::new().mode(0o700).create(path) {
                    Ok(()) => return Ok(()),
                    // Made meanwhile: looked at again.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e).with_context(|| format!("create {}", path.display())),
                }
            }
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        }
    }
}

/// Refuses `path` (absolute) when one of its existing components is a symlink made by a
/// user other than root or this process's: a restore running as root must not be led
/// elsewhere by, say, the database's OS user.
fn no_foreign_symlink(path: &Path) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let mut prefix = PathBuf::new();
    for component in path.components() {
        prefix.push(component);
        match std::fs::symlink_metadata(&prefix) {
            Ok(meta) if meta.file_type().is_symlink() && meta.uid() != 0 && meta.uid() != me => {
                bail!(
                    "{} is a symlink made by uid {}; a restore follows no symlink another user \
                     made\nHINT: replace it by the directory it points to (as root), or \
                     restore elsewhere",
                    prefix.display(),
                    meta.uid()
                )
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("stat {}", prefix.display())),
        }
    }
    Ok(())
}

/// While a restore running as root writes, `dir` belongs to root alone (mode 0700): no other
/// user can put a symlink in its way. The owner gets it back at the end.
fn fence(dir: &Path, options: &RestoreOptions) -> Result<()> {
    if options.owner.is_none() || !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    // The directory itself, when `dir` is a (checked) symlink to it.
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolve {}", dir.display()))?;
    std::os::unix::fs::lchown(&dir, Some(0), Some(0))
        .with_context(|| format!("chown {} to root while restoring", dir.display()))?;
    set_mode_nofollow(&dir, 0o700)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn options(data_dir: &Path) -> RestoreOptions {
        RestoreOptions::new(
            data_dir.to_path_buf(),
            1,
            None,
            RecoverySettings {
                restore_command: "true".into(),
                target: target::RecoveryTarget::EndOfWal,
                action: None,
                backup_id: "20261130T035500F".into(),
                timeline: Default::default(),
                standby: None,
            },
        )
    }

    fn with_tablespace(location: &Path) -> crate::backup::manifest::Manifest {
        let mut m = crate::backup::retention::tests::full(1, 1);
        m.tablespaces = vec![crate::backup::manifest::Tablespace {
            oid: 16385,
            location: location.to_str().unwrap().to_owned(),
        }];
        m
    }

    #[test]
    fn a_tablespace_s_files_are_written_under_its_location_not_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let (data, ts) = (dir.path().join("data"), dir.path().join("ts"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&ts).unwrap();
        let layout = Layout::checked(&with_tablespace(&ts), &options(&data), None).unwrap();
        assert_eq!(layout.path("base/1/1259"), data.join("base/1/1259"));
        assert_eq!(layout.path("pg_tblspc/16385"), ts);
        assert_eq!(
            layout.path("pg_tblspc/16385/PG_17_1/5/16390"),
            ts.join("PG_17_1/5/16390")
        );
        // Not a tablespace of the backup: a plain directory of the data directory.
        assert_eq!(layout.path("pg_tblspc/9/x"), data.join("pg_tblspc/9/x"));
        assert_eq!(
            layout.file("pg_tblspc/16385/PG_17_1/5/16390").unwrap(),
            ts.join("PG_17_1/5/16390")
        );
        assert!(ts.join("PG_17_1/5").is_dir());
        let made = layout.make_dir("base/1", Some(0o750)).unwrap();
        assert_eq!(
            std::fs::metadata(&made).unwrap().permissions().mode() & 0o777,
            0o750
        );
    }

    #[test]
    fn a_symlink_where_a_directory_or_file_of_the_backup_goes_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (data, outside) = (dir.path().join("data"), dir.path().join("outside"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("base")).unwrap();
        let layout = Layout::checked(
            &with_tablespace(&dir.path().join("ts")),
            &options(&data),
            None,
        )
        .unwrap();
        let e = layout.make_dir("base/1", Some(0o777)).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "{} is a symlink; a restore goes through no symlink it did not make\nHINT: \
                 remove it, or restore into an empty directory",
                data.join("base").display()
            )
        );
        assert!(layout.file("base/1/1259").is_err());
        assert!(!outside.join("1").exists());
        // A mode is never set through a symlink.
        let e = set_mode_nofollow(&data.join("base"), 0o777).unwrap_err();
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
        assert_eq!(
            std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn a_tablespace_that_resolves_into_a_system_directory_is_refused_unless_moved() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // A symlink root made (here: this process), to /etc: the location is checked where it
        // leads.
        std::os::unix::fs::symlink("/etc", dir.path().join("etc-link")).unwrap();
        let location = dir.path().join("etc-link/pgward-ts");
        let manifest = with_tablespace(&location);
        let e = Layout::checked(&manifest, &options(&data), None).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "backup {}: manifest entry {:?} (tablespace 16385's location) is \
                 /etc/pgward-ts, inside the system directory /etc\nHINT: if this backup is \
                 yours, restore the tablespace elsewhere with --tablespace-map 16385=DIR",
                manifest.id,
                location.to_str().unwrap()
            )
        );
        let repo = dir.path().join("repo");
        let manifest = with_tablespace(&repo.join("ts"));
        let e = Layout::checked(&manifest, &options(&data), Some(&repo)).unwrap_err();
        assert!(format!("{e:#}").contains("inside the repository"), "{e:#}");
        let mut moved = options(&data);
        moved.tablespace_map.insert(16385, dir.path().join("ts"));
        Layout::checked(&manifest, &moved, Some(&repo)).expect("moved elsewhere");
    }

    #[test]
    fn a_symlink_another_user_made_on_the_way_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        no_foreign_symlink(&link.join("data")).expect("made by root");
        std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
        let e = no_foreign_symlink(&link.join("data")).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "{} is a symlink made by uid 65534; a restore follows no symlink another user \
                 made\nHINT: replace it by the directory it points to (as root), or restore \
                 elsewhere",
                link.display()
            )
        );
        let e = Layout::checked(
            &with_tablespace(&link.join("ts")),
            &options(dir.path()),
            None,
        )
        .unwrap_err();
        assert!(format!("{e:#}").starts_with("tablespace 16385: "), "{e:#}");
    }

    #[test]
    fn the_tablespace_map_comes_from_the_manifest_escaped_as_postgres_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut manifest = with_tablespace(Path::new("/srv/ts\\one"));
        manifest
            .tablespaces
            .push(crate::backup::manifest::Tablespace {
                oid: 16386,
                location: "/srv/ts2".into(),
            });
        assert_eq!(
            tablespace_map_text(&manifest, &options(&data)).unwrap(),
            "16385 /srv/ts\\\\one\n16386 /srv/ts2\n"
        );
        let mut moved = options(&data);
        moved
            .tablespace_map
            .insert(16386, PathBuf::from("/mnt/new\nline"));
        assert_eq!(
            tablespace_map_text(&manifest, &moved).unwrap(),
            "16385 /srv/ts\\\\one\n16386 /mnt/new\\\nline\n"
        );
        manifest.tablespaces.clear();
        assert_eq!(tablespace_map_text(&manifest, &options(&data)), None);
    }
}
