//! The manifest of one backup: what it holds and where in the WAL it starts and stops.
//!
//! A backup lives under `backups/<id>/` in the repository: small files packed into bundles
//! (`bundles/<n>`, see `repo::bundle`), larger ones one object each (`data/<path>`, large
//! files in slices), `backup_label` and `tablespace_map` as `pg_backup_stop` returned them,
//! and `manifest.json`, written last. A backup without a manifest is not a backup: it
//! was interrupted, and no listing or restore treats it as one.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::layout::{backup_prefix, BackupId};

/// Manifest format this pgward writes and the newest it reads: 2 adds bundles (format 1
/// manifests, one object per file, are read as they are).
pub const MANIFEST_VERSION: u32 = 2;

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    Full,
    Incremental,
}

impl BackupKind {
    /// Its name, as the manifest and `--json` outputs spell it (`full`, `incremental`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        }
    }

    /// The letter that ends a backup id (`F`/`I`).
    fn letter(self) -> char {
        match self {
            BackupKind::Full => 'F',
            BackupKind::Incremental => 'I',
        }
    }
}

/// One regular file of the data directory (or of a tablespace, under `pg_tblspc/<oid>/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory, `/`-separated.
    pub path: String,
    /// Bytes read (a file may change while an online backup reads it; WAL replay fixes that).
    pub size: u64,
    /// Modification time when read, seconds since the epoch, and its nanoseconds: an
    /// incremental backup compares both.
    pub mtime: i64,
    #[serde(default)]
    pub mtime_nsec: i64,
    /// Unix permission bits.
    pub mode: u32,
    /// BLAKE3 of the content, lowercase hex; empty for a file stored in `parts`.
    #[serde(default)]
    pub checksum: String,
    /// Size of the stored object (of the parts stored in `stored_in`, for a parted file).
    pub stored_size: u64,
    /// The backup whose objects hold the content: this one, or for an unchanged file of an
    /// incremental backup, an earlier one of its chain. For a parted file, the backup that
    /// stored its newest part.
    pub stored_in: String,
    /// Blocks whose data page checksum did not match when the file was read (clusters with
    /// data checksums only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_blocks: Vec<u32>,
    /// A file stored as several objects: a large file cut into slices stored in parallel,
    /// and for a relation changed since the parent backup, the parent's parts followed by
    /// one part with the changed blocks. Restored in order, a later part overwriting what
    /// it overlaps; the file is then cut to `size`. Empty: one object holds the whole file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// The content is a member of a bundle of `stored_in` rather than an object of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<InBundle>,
}

/// Where in a bundle (see `repo::bundle`) a file's or a part's content is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InBundle {
    /// The bundle's number within its backup: its key is [`bundle_key`].
    pub bundle: u32,
    /// Offset of the member within the bundle's content.
    pub offset: u64,
    /// Bytes the member takes in the bundle.
    pub stored_len: u64,
}

impl InBundle {
    /// The member, for reading it from the bundle; `name` is shown in errors.
    pub fn member(&self, name: &str) -> crate::repo::Member {
        crate::repo::Member {
            name: name.to_owned(),
            offset: self.offset,
            stored_len: self.stored_len,
        }
    }
}

/// One object holding byte ranges of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// `[offset, length]` pairs, ascending and disjoint: the object's content is these
    /// ranges of the file, concatenated. Never empty.
    pub ranges: Vec<[u64; 2]>,
    /// BLAKE3 of the content, lowercase hex.
    pub checksum: String,
    pub stored_size: u64,
    /// The backup that stored the object.
    pub stored_in: String,
    /// The object is the one that backup stored for the whole file (its key has no
    /// `@offset`): the first part of a file whose changed blocks a later backup stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole_object: bool,
    /// The content is a member of a bundle of `stored_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<InBundle>,
}

impl Part {
    /// Bytes of the file the part holds.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r[1]).sum()
    }

    /// Where the object is: beside a whole file's, named by the first byte it holds; or the
    /// bundle holding it.
    pub fn key(&self, path: &str) -> String {
        if let Some(at) = &self.bundle {
            return bundle_key(&self.stored_in, at.bundle);
        }
        let whole = file_key(&self.stored_in, path);
        if self.whole_object {
            return whole;
        }
        let first = self.ranges.first().map_or(0, |r| r[0]);
        format!("{whole}@{first}")
    }

    /// The ranges as `(offset, length)`.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|r| (r[0], r[1])).collect()
    }

    /// Whether the two parts hold a byte in common.
    pub fn overlaps(&self, other: &Part) -> bool {
        let (mut a, mut b) = (
            self.ranges.iter().peekable(),
            other.ranges.iter().peekable(),
        );
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            if x[0] < y[0] + y[1] && y[0] < x[0] + x[1] {
                return true;
            }
            if x[0] + x[1] <= y[0] + y[1] {
                a.next();
            } else {
                b.next();
            }
        }
        false
    }
}

/// One object a file of a backup needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef<'a> {
    pub key: String,
    /// BLAKE3 of its content, lowercase hex.
    pub checksum: &'a str,
    /// Bytes of content.
    pub len: u64,
    pub stored_size: u64,
    pub stored_in: &'a str,
    /// Where in the object (a bundle) the content is; `None`: the object holds only it.
    pub bundle: Option<InBundle>,
}

/// A directory to recreate at restore (excluded directories are kept, empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub path: String,
    pub mode: u32,
}

/// A tablespace: `pg_tblspc/<oid>` is a symlink to `location`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub location: String,
}

/// The content of `manifest.json`.
pub type Manifest = ManifestOf<Vec<FileEntry>>;

/// A manifest without its list of files: what a backup that just completed reports.
pub type ManifestHead = ManifestOf<()>;

/// A manifest whose list of files is `F`: held (`Vec<FileEntry>`, a [`Manifest`]), left out
/// ([`ManifestHead`]), or read from elsewhere as it is written ([`StreamedFiles`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestOf<F> {
    pub format_version: u32,
    pub id: String,
    pub kind: BackupKind,
    /// The backup this incremental one builds on.
    pub parent: Option<String>,
    pub pg_major: u32,
    /// As a string, like `repo.json`: above 2^53.
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// First and last WAL segment the backup needs.
    pub start_wal: String,
    pub stop_wal: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// Whether the cluster has data checksums.
    pub data_checksums: bool,
    pub tablespaces: Vec<Tablespace>,
    pub directories: Vec<DirEntry>,
    pub files: F,
    /// `--annotate key=value`.
    pub annotations: BTreeMap<String, String>,
    /// `--keep`: never expired.
    pub keep: bool,
    /// Sum of `files[].size`.
    pub size: u64,
    /// Sum of the stored sizes of the objects this backup wrote itself.
    pub stored_size: u64,
    /// Bytes this backup read from the data directory (the content of those objects).
    #[serde(default)]
    pub read_size: u64,
    /// `pgward <version>` that took it.
    pub created_by: String,
}

impl<F> ManifestOf<F> {
    /// The same manifest with `files` as its list of files.
    pub fn with_files<G>(self, files: G) -> ManifestOf<G> {
        ManifestOf {
            format_version: self.format_version,
            id: self.id,
            kind: self.kind,
            parent: self.parent,
            pg_major: self.pg_major,
            system_identifier: self.system_identifier,
            timeline: self.timeline,
            start_lsn: self.start_lsn,
            stop_lsn: self.stop_lsn,
            start_wal: self.start_wal,
            stop_wal: self.stop_wal,
            start_time: self.start_time,
            stop_time: self.stop_time,
            data_checksums: self.data_checksums,
            tablespaces: self.tablespaces,
            directories: self.directories,
            files,
            annotations: self.annotations,
            keep: self.keep,
            size: self.size,
            stored_size: self.stored_size,
            read_size: self.read_size,
            created_by: self.created_by,
        }
    }
}

/// A list of files serialized as it is read from `I`, once: a manifest of many files is
/// written without holding them all.
pub struct StreamedFiles<I>(std::cell::RefCell<Option<I>>);

impl<I> StreamedFiles<I> {
    pub fn new(files: I) -> StreamedFiles<I> {
        StreamedFiles(std::cell::RefCell::new(Some(files)))
    }
}

impl<I, E> Serialize for StreamedFiles<I>
where
    I: Iterator<Item = Result<FileEntry, E>>,
    E: std::fmt::Display,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let files = self
            .0
            .borrow_mut()
            .take()
            .ok_or_else(|| S::Error::custom("the list of files was already written"))?;
        let mut seq = serializer.serialize_seq(None)?;
        for file in files {
            seq.serialize_element(&file.map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

impl FileEntry {
    /// Whether `self` (from an earlier backup that started at `taken_at`) still describes a
    /// file of `size` bytes modified at `mtime`.`mtime_nsec`: then its stored object can serve
    /// a later backup without reading the file.
    ///
    /// File times come from a coarse clock (a few milliseconds on Linux), so a write in the
    /// same tick as the earlier backup's read would leave them unchanged: a file modified less
    /// than [`UNSTABLE_WINDOW_SECS`] before that backup started, or after, is never trusted
    /// and is copied again.
    pub fn unchanged(
        &self,
        size: u64,
        mtime: i64,
        mtime_nsec: i64,
        taken_at: DateTime<Utc>,
    ) -> bool {
        let stable = self.mtime < taken_at.timestamp() - UNSTABLE_WINDOW_SECS;
        stable && self.size == size && self.mtime == mtime && self.mtime_nsec == mtime_nsec
    }
}

impl FileEntry {
    /// The objects holding the file: one, or its parts.
    pub fn objects(&self) -> Vec<ObjectRef<'_>> {
        if self.parts.is_empty() {
            return vec![ObjectRef {
                key: self.key(),
                checksum: &self.checksum,
                len: self.size,
                stored_size: self.stored_size,
                stored_in: &self.stored_in,
                bundle: self.bundle,
            }];
        }
        self.parts
            .iter()
            .map(|p| ObjectRef {
                key: p.key(&self.path),
                checksum: &p.checksum,
                len: p.bytes(),
                stored_size: p.stored_size,
                stored_in: &p.stored_in,
                bundle: p.bundle,
            })
            .collect()
    }

    /// The object holding a file stored whole: its own, or the bundle it is a member of.
    pub fn key(&self) -> String {
        match &self.bundle {
            Some(at) => bundle_key(&self.stored_in, at.bundle),
            None => file_key(&self.stored_in, &self.path),
        }
    }

    /// For each part, the round it is restored in: after every earlier part it overlaps
    /// (parts of one round are disjoint and may be written at once).
    pub fn part_rounds(&self) -> Vec<usize> {
        let mut rounds: Vec<usize> = Vec::with_capacity(self.parts.len());
        for (i, part) in self.parts.iter().enumerate() {
            let round = self.parts[..i]
                .iter()
                .zip(&rounds)
                .filter(|(earlier, _)| earlier.overlaps(part))
                .map(|(_, r)| r + 1)
                .max()
                .unwrap_or(0);
            rounds.push(round);
        }
        rounds
    }
}

/// What a restore must not do with a manifest: an entry whose path is not one pgward writes
/// (`..`, absolute, NUL, empty or `.` components), a backup id that is not one, a tablespace
/// location that is not an absolute normalized path, or (for a restore, see [`Placement`]) a
/// tablespace in a system directory or in the repository.
///
/// Shown as `backup <id>: manifest entry "<entry>" (<what>) <problem>`, then the `HINT:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backup {backup}: manifest entry {entry:?} ({what}) {problem}\nHINT: {hint}")]
pub struct InvalidManifest {
    pub backup: String,
    /// The offending path or id, as the manifest spells it.
    pub entry: String,
    /// Which entry: `a file`, `a directory`, `tablespace 16385's location`, ...
    pub what: String,
    pub problem: String,
    pub hint: String,
}

/// Where a restore would put a backup's tablespaces, for [`Manifest::validate`].
#[derive(Debug, Clone, Default)]
pub struct Placement<'a> {
    /// Tablespaces moved elsewhere (`--tablespace-map`): their original location is not used.
    pub relocated: Vec<u32>,
    /// Root directory of a `file://` repository: no tablespace goes inside it.
    pub repo_root: Option<&'a Path>,
}

/// What to do about an entry pgward never writes.
const TAMPERED_HINT: &str = "pgward never writes such an entry: someone who can write to the \
                             repository changed this manifest; restore another backup (`pgward \
                             list`) and find out who can write to the repository";

/// The system directories no tablespace of a manifest is restored into (the root itself,
/// and these with everything below them); `lib` stands for every `/lib*`.
pub const SYSTEM_DIRECTORIES: [&str; 10] = [
    "bin", "boot", "dev", "etc", "lib", "proc", "root", "sbin", "sys", "usr",
];

/// The system directory `path` (absolute, normalized) is, or is inside: `/`, `/etc`, `/lib64`...
pub fn system_directory(path: &Path) -> Option<String> {
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return None;
    }
    let Some(Component::Normal(first)) = components.next() else {
        return Some("/".to_owned());
    };
    let first = first.to_string_lossy();
    SYSTEM_DIRECTORIES
        .iter()
        .any(|dir| {
            if *dir == "lib" {
                first.starts_with("lib")
            } else {
                first == *dir
            }
        })
        .then(|| format!("/{first}"))
}

/// What is wrong with `path` as a relative path of the data directory, `/`-separated and
/// normalized (no `.`, `..` or empty component, not absolute, no NUL).
fn relative_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    if path.contains('\0') {
        return Some("holds a NUL byte");
    }
    if path.starts_with('/') {
        return Some(
            "is an absolute path; the manifest's paths are relative to the data directory",
        );
    }
    for component in path.split('/') {
        match component {
            ".." => return Some("climbs out of the data directory with \"..\""),
            "." => return Some("is not normalized (a \".\" component)"),
            "" => return Some("is not normalized (an empty component)"),
            _ => {}
        }
    }
    None
}

/// What is wrong with `location` as a tablespace location: absolute, normalized, no NUL.
fn location_problem(location: &str) -> Option<&'static str> {
    if location.contains('\0') {
        return Some("holds a NUL byte");
    }
    if !location.starts_with('/') {
        return Some("is not an absolute path");
    }
    if location.len() > 1
        && location[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Some("is not a normalized path (an empty, \".\" or \"..\" component)");
    }
    None
}

impl Manifest {
    /// Objects this backup stored itself: its data objects and bundles, `backup_label`,
    /// `tablespace_map` when it has tablespaces, and the manifest.
    pub fn objects_stored(&self) -> usize {
        let data: std::collections::BTreeSet<String> = self
            .files
            .iter()
            .flat_map(|f| f.objects())
            .filter(|o| o.stored_in == self.id)
            .map(|o| o.key)
            .collect();
        data.len() + 2 + usize::from(!self.tablespaces.is_empty())
    }

    /// Checks every path and id the manifest names as untrusted input (whoever can write to
    /// the repository can write a manifest): file, directory and part paths relative and
    /// normalized, the backups holding objects and the parent real backup ids, tablespace
    /// locations absolute and normalized. With a `placement` (a restore), also where the
    /// tablespaces not relocated would go: never into a system directory
    /// ([`SYSTEM_DIRECTORIES`], `/`) or the repository. The one check every reader of a
    /// manifest relies on; the first entry that fails it.
    pub fn validate(&self, placement: Option<&Placement>) -> Result<(), InvalidManifest> {
        self.validate_head(placement)?;
        self.files
            .iter()
            .try_for_each(|file| validate_file(&self.id, file))
    }
}

/// [`Manifest::validate`] of one file entry of backup `id`.
pub fn validate_file(id: &str, file: &FileEntry) -> Result<(), InvalidManifest> {
    if let Some(problem) = relative_path_problem(&file.path) {
        return Err(InvalidManifest::tampered(id, &file.path, "a file", problem));
    }
    check_holder(
        id,
        &file.stored_in,
        &format!("the backup holding {}", file.path),
    )?;
    for part in &file.parts {
        check_holder(
            id,
            &part.stored_in,
            &format!("the backup holding a part of {}", file.path),
        )?;
    }
    Ok(())
}

impl InvalidManifest {
    /// Entry `entry` (`what`) of backup `backup`'s manifest, which pgward never writes so.
    fn tampered(backup: &str, entry: &str, what: &str, problem: &str) -> InvalidManifest {
        InvalidManifest {
            backup: backup.to_owned(),
            entry: entry.to_owned(),
            what: what.to_owned(),
            problem: problem.to_owned(),
            hint: TAMPERED_HINT.to_owned(),
        }
    }
}

/// That `id`, named in backup `backup`'s manifest as `what`, is a backup id.
fn check_holder(backup: &str, id: &str, what: &str) -> Result<(), InvalidManifest> {
    BackupId::parse(id)
        .map(|_| ())
        .map_err(|_| InvalidManifest::tampered(backup, id, what, "is not a backup id"))
}

impl<F> ManifestOf<F> {
    /// [`Manifest::validate`] of all but the files (see [`validate_file`]).
    pub fn validate_head(&self, placement: Option<&Placement>) -> Result<(), InvalidManifest> {
        let invalid = |entry: &str, what: &str, problem: &str, hint: &str| InvalidManifest {
            hint: hint.to_owned(),
            ..InvalidManifest::tampered(&self.id, entry, what, problem)
        };
        let check_id = |id: &str, what: &str| check_holder(&self.id, id, what);
        check_id(&self.id, "the backup's id")?;
        if let Some(parent) = &self.parent {
            check_id(parent, "the parent backup")?;
        }
        for tablespace in &self.tablespaces {
            let oid = tablespace.oid;
            let what = format!("tablespace {oid}'s location");
            let location = &tablespace.location;
            if let Some(problem) = location_problem(location) {
                return Err(invalid(location, &what, problem, TAMPERED_HINT));
            }
            let Some(placement) = placement else { continue };
            if placement.relocated.contains(&oid) {
                continue;
            }
            let move_hint = format!(
                "if this backup is yours, restore the tablespace elsewhere with \
                 --tablespace-map {oid}=DIR; if not, someone who can write to the repository \
                 changed its manifest"
            );
            if let Some(dir) = system_directory(Path::new(location)) {
                let problem = format!("is inside the system directory {dir}");
                return Err(invalid(location, &what, &problem, &move_hint));
            }
            if let Some(root) = placement.repo_root {
                let (location, root) = (Path::new(location), lexical(root));
                if location.starts_with(&root) || root.starts_with(location) {
                    let problem = format!("overlaps the repository {}", root.display());
                    return Err(invalid(&tablespace.location, &what, &problem, &move_hint));
                }
            }
        }
        for dir in &self.directories {
            if let Some(problem) = relative_path_problem(&dir.path) {
                return Err(invalid(&dir.path, "a directory", problem, TAMPERED_HINT));
            }
        }
        Ok(())
    }
}

/// `path` with `.` and `..` folded, without touching the filesystem.
fn lexical(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// See [`FileEntry::unchanged`].
pub const UNSTABLE_WINDOW_SECS: i64 = 2;

/// A backup id for `kind` started at `at`: `20261130T035500F`. Ids sort by start time.
pub fn backup_id(at: DateTime<Utc>, kind: BackupKind) -> String {
    format!("{}{}", at.format("%Y%m%dT%H%M%S"), kind.letter())
}

/// Checks that `id` has the shape [`backup_id`] makes (it becomes part of object keys); the
/// rule is [`BackupId`]'s.
pub fn check_backup_id(id: &str) -> Result<()> {
    BackupId::parse(id)?;
    Ok(())
}

/// Key of a backup's manifest.
pub fn manifest_key(id: &str) -> String {
    format!("{}/manifest.json", backup_prefix(id))
}

/// Key of the object holding the file at `path` (relative to the data directory).
pub fn file_key(id: &str, path: &str) -> String {
    format!("{}/data/{path}", backup_prefix(id))
}

/// Key of bundle number `n` of backup `id`.
pub fn bundle_key(id: &str, n: u32) -> String {
    format!("{}/bundles/{n:06}", backup_prefix(id))
}

/// Key of the backup label or tablespace map returned by `pg_backup_stop`.
pub fn label_key(id: &str, name: &str) -> String {
    format!("{}/{name}", backup_prefix(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time_and_are_checked() {
        let at = DateTime::parse_from_rfc3339("2026-11-30T03:55:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let full = backup_id(at, BackupKind::Full);
        assert_eq!(full, "20261130T035500F");
        check_backup_id(&full).unwrap();
        check_backup_id("20261130T035501I").unwrap();
        assert!(full.as_str() < "20261130T035501I");
        for bad in [
            "",
            "latest",
            "20261130T035500X",
            "20261130-035500F",
            "../../etc/passwd",
        ] {
            assert!(check_backup_id(bad).is_err(), "{bad}");
        }
        assert_eq!(
            file_key(&full, "base/1/1259"),
            "backups/20261130T035500F/data/base/1/1259"
        );
        assert_eq!(
            manifest_key(&full),
            "backups/20261130T035500F/manifest.json"
        );
    }

    #[test]
    fn a_kind_reads_as_the_manifest_spells_it() {
        for kind in [BackupKind::Full, BackupKind::Incremental] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn only_files_settled_before_the_earlier_backup_are_trusted_unchanged() {
        let taken_at = DateTime::parse_from_rfc3339("2026-11-30T03:55:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let entry = |mtime: i64| FileEntry {
            path: "base/1/1259".into(),
            size: 8192,
            mtime,
            mtime_nsec: 5,
            mode: 0o600,
            checksum: "00".into(),
            stored_size: 100,
            stored_in: "20261130T035500F".into(),
            bad_blocks: vec![],
            parts: vec![],
            bundle: None,
        };
        let old = taken_at.timestamp() - 60;
        assert!(entry(old).unchanged(8192, old, 5, taken_at));
        assert!(!entry(old).unchanged(16384, old, 5, taken_at));
        assert!(!entry(old).unchanged(8192, old, 6, taken_at));
        assert!(!entry(old).unchanged(8192, old + 1, 5, taken_at));
        // Written just before (or while) the earlier backup ran: copied again.
        let recent = taken_at.timestamp() - 1;
        assert!(!entry(recent).unchanged(8192, recent, 5, taken_at));
    }

    fn part(ranges: &[[u64; 2]], stored_in: &str) -> Part {
        Part {
            ranges: ranges.to_vec(),
            checksum: "00".into(),
            stored_size: 1,
            stored_in: stored_in.into(),
            whole_object: false,
            bundle: None,
        }
    }

    #[test]
    fn parts_are_restored_in_rounds_of_disjoint_parts() {
        let full = "20261130T035500F";
        let incr = "20261130T045500I";
        let entry = FileEntry {
            path: "base/5/16384".into(),
            size: 300,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o600,
            checksum: String::new(),
            stored_size: 3,
            stored_in: incr.into(),
            bad_blocks: vec![],
            bundle: None,
            parts: vec![
                part(&[[0, 100]], full),
                part(&[[100, 100]], full),
                part(&[[200, 100]], full),
                // Changed blocks: over the first and the third slice.
                part(&[[10, 5], [250, 10]], incr),
                // Over the changed blocks again, and the untouched second slice.
                part(&[[12, 1]], incr),
                part(&[[150, 1]], incr),
            ],
        };
        assert_eq!(entry.part_rounds(), vec![0, 0, 0, 1, 2, 1]);
        assert!(!entry.parts[0].overlaps(&entry.parts[1]));
        assert!(entry.parts[3].overlaps(&entry.parts[2]));
        let keys: Vec<String> = entry.objects().into_iter().map(|o| o.key).collect();
        assert_eq!(keys[0], format!("backups/{full}/data/base/5/16384@0"));
        assert_eq!(keys[3], format!("backups/{incr}/data/base/5/16384@10"));
        assert_eq!(entry.objects()[3].len, 15);
    }

    fn manifest() -> Manifest {
        let at = DateTime::parse_from_rfc3339("2026-11-30T03:55:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let file = |path: &str| FileEntry {
            path: path.into(),
            size: 8192,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o600,
            checksum: "00".into(),
            stored_size: 10,
            stored_in: "20261130T035500F".into(),
            bad_blocks: vec![],
            parts: vec![],
            bundle: None,
        };
        Manifest {
            format_version: MANIFEST_VERSION,
            id: "20261130T035500F".into(),
            kind: BackupKind::Full,
            parent: None,
            pg_major: 17,
            system_identifier: "7312".into(),
            timeline: 1,
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            start_wal: "000000010000000000000002".into(),
            stop_wal: "000000010000000000000002".into(),
            start_time: at,
            stop_time: at,
            data_checksums: true,
            tablespaces: vec![Tablespace {
                oid: 16385,
                location: "/var/lib/postgresql/ts1".into(),
            }],
            directories: vec![
                DirEntry {
                    path: "base".into(),
                    mode: 0o700,
                },
                DirEntry {
                    path: "pg_tblspc/16385".into(),
                    mode: 0o700,
                },
            ],
            files: vec![
                file("PG_VERSION"),
                file("base/1/1259"),
                file("pg_tblspc/16385/PG_17_202406281/5/16390"),
            ],
            annotations: BTreeMap::new(),
            keep: false,
            size: 0,
            stored_size: 0,
            read_size: 0,
            created_by: "pgward test".into(),
        }
    }

    /// The message `validate` refuses `m` with, placed as a restore without relocations.
    fn refusal(m: &Manifest) -> String {
        let placement = Placement {
            relocated: vec![],
            repo_root: Some(Path::new("/var/lib/pgward/repo")),
        };
        m.validate(Some(&placement))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_format_1_manifest_reads_as_one_object_per_file() {
        let mut v1 = serde_json::to_value(manifest()).expect("JSON");
        v1["format_version"] = 1.into();
        for file in v1["files"].as_array_mut().expect("files") {
            file.as_object_mut().expect("an entry").remove("bundle");
        }
        let read: Manifest = serde_json::from_value(v1).expect("a format 1 manifest reads");
        assert!(read.files.iter().all(|f| f.bundle.is_none()));
        assert_eq!(
            read.files[1].key(),
            "backups/20261130T035500F/data/base/1/1259"
        );
    }

    #[test]
    fn bundled_files_are_found_in_their_bundle_and_counted_once() {
        let mut m = manifest();
        for (i, file) in m.files.iter_mut().enumerate() {
            file.bundle = Some(InBundle {
                bundle: 3,
                offset: 100 * i as u64,
                stored_len: 100,
            });
        }
        let keys: Vec<String> = m.files.iter().map(|f| f.key()).collect();
        assert!(keys
            .iter()
            .all(|k| k == "backups/20261130T035500F/bundles/000003"));
        // One bundle, the label, the tablespace map and the manifest.
        assert_eq!(m.objects_stored(), 4);
        let json = serde_json::to_string(&m).expect("JSON");
        let back: Manifest = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, m);
    }

    #[test]
    fn a_manifest_as_pgward_writes_it_is_valid() {
        let m = manifest();
        m.validate(None).expect("valid");
        m.validate(Some(&Placement::default())).expect("valid");
    }

    #[test]
    fn paths_that_leave_the_data_directory_are_refused_naming_backup_and_entry() {
        for (bad, problem) in [
            (
                "../etc/passwd",
                "climbs out of the data directory with \"..\"",
            ),
            (
                "base/../../etc/passwd",
                "climbs out of the data directory with \"..\"",
            ),
            ("base/..", "climbs out of the data directory with \"..\""),
            (
                "/etc/passwd",
                "is an absolute path; the manifest's paths are relative to the data directory",
            ),
            ("base//1259", "is not normalized (an empty component)"),
            ("base/1/", "is not normalized (an empty component)"),
            ("./base", "is not normalized (a \".\" component)"),
            ("", "is empty"),
            ("base/1\0/etc", "holds a NUL byte"),
        ] {
            let mut m = manifest();
            m.files[1].path = bad.into();
            assert_eq!(
                refusal(&m),
                format!(
                    "backup 20261130T035500F: manifest entry {bad:?} (a file) {problem}\n\
                     HINT: {TAMPERED_HINT}"
                ),
            );
            // Refused by every reader, not only a restore.
            assert!(m.validate(None).is_err(), "{bad}");
            let mut m = manifest();
            m.directories[0].path = bad.into();
            assert!(
                refusal(&m).starts_with(&format!(
                    "backup 20261130T035500F: manifest entry {bad:?} (a directory) {problem}"
                )),
                "{bad}"
            );
        }
        assert!(TAMPERED_HINT.contains("restore another backup"));
    }

    #[test]
    fn ids_that_would_reach_other_objects_are_refused() {
        let mut m = manifest();
        m.files[0].stored_in = "../../wal".into();
        assert!(refusal(&m).starts_with(
            "backup 20261130T035500F: manifest entry \"../../wal\" (the backup holding \
             PG_VERSION) is not a backup id\n"
        ));
        let mut m = manifest();
        m.files[0].parts = vec![part(&[[0, 1]], "20261130T035500F/../x")];
        assert!(
            refusal(&m).contains("(the backup holding a part of PG_VERSION) is not a backup id")
        );
        let mut m = manifest();
        m.parent = Some("/etc".into());
        assert!(refusal(&m).contains("\"/etc\" (the parent backup) is not a backup id"));
        let mut m = manifest();
        m.id = "x".into();
        assert!(refusal(&m).starts_with("backup x: manifest entry \"x\" (the backup's id)"));
    }

    #[test]
    fn tablespace_locations_are_absolute_normalized_and_outside_system_directories() {
        let with_location = |location: &str| {
            let mut m = manifest();
            m.tablespaces[0].location = location.into();
            m
        };
        for (bad, problem) in [
            ("relative/ts", "is not an absolute path"),
            ("", "is not an absolute path"),
            (
                "/srv/../etc",
                "is not a normalized path (an empty, \".\" or \"..\" component)",
            ),
            (
                "/srv//ts",
                "is not a normalized path (an empty, \".\" or \"..\" component)",
            ),
            (
                "/srv/ts/",
                "is not a normalized path (an empty, \".\" or \"..\" component)",
            ),
            ("/srv/\0", "holds a NUL byte"),
        ] {
            let m = with_location(bad);
            assert_eq!(
                refusal(&m),
                format!(
                    "backup 20261130T035500F: manifest entry {bad:?} (tablespace 16385's \
                     location) {problem}\nHINT: {TAMPERED_HINT}"
                )
            );
            assert!(m.validate(None).is_err(), "{bad}");
        }
        for (bad, dir) in [
            ("/", "/"),
            ("/etc", "/etc"),
            ("/etc/cron.d", "/etc"),
            ("/root/.ssh", "/root"),
            ("/usr/local/pgsql/ts", "/usr"),
            ("/lib64/x", "/lib64"),
            ("/lib/x", "/lib"),
            ("/bin", "/bin"),
            ("/boot/x", "/boot"),
            ("/dev/shm/x", "/dev"),
            ("/proc/1/root", "/proc"),
            ("/sbin/x", "/sbin"),
            ("/sys/x", "/sys"),
        ] {
            let m = with_location(bad);
            assert_eq!(
                refusal(&m),
                format!(
                    "backup 20261130T035500F: manifest entry {bad:?} (tablespace 16385's \
                     location) is inside the system directory {dir}\nHINT: if this backup is \
                     yours, restore the tablespace elsewhere with --tablespace-map 16385=DIR; \
                     if not, someone who can write to the repository changed its manifest"
                )
            );
            // Well-formed: readers that write nothing accept it; so does a restore that
            // puts the tablespace elsewhere.
            m.validate(None).expect("well-formed");
            let moved = Placement {
                relocated: vec![16385],
                repo_root: None,
            };
            m.validate(Some(&moved)).expect("relocated");
        }
        for bad in [
            "/var/lib/pgward/repo/backups",
            "/var/lib/pgward/repo",
            "/var/lib/pgward",
        ] {
            assert!(
                refusal(&with_location(bad))
                    .contains("location) overlaps the repository /var/lib/pgward/repo\n"),
                "{bad}"
            );
        }
        for good in [
            "/var/lib/postgresql/ts",
            "/srv/pg/ts1",
            "/mnt/fast",
            "/opt/lib/ts",
        ] {
            with_location(good)
                .validate(Some(&Placement {
                    relocated: vec![],
                    repo_root: Some(Path::new("/var/lib/pgward/repo")),
                }))
                .expect(good);
        }
    }
}
