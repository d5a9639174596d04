//! The backups a repository holds: those with a manifest. An interrupted backup has objects
//! but no manifest and is never listed (nor restored).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;

use super::entries::SpilledFiles;
use super::lineage::Lineage;
use super::manifest::{
    check_backup_id, manifest_key, validate_file, FileEntry, InvalidManifest, Manifest, ManifestOf,
    MANIFEST_VERSION,
};
use crate::repo::layout::BACKUPS_PREFIX;
use crate::repo::Repo;

/// Ids of the complete backups, oldest first.
pub async fn backup_ids(repo: &Repo) -> Result<Vec<String>> {
    Ok(split_by_completion(objects_by_backup(repo).await?).0)
}

/// (complete, unfinished) backup ids, each oldest first: complete ones have a manifest;
/// unfinished ones have objects but none (interrupted, or running now in another process),
/// are never listed or restored, and are reported so the space they take is known.
pub fn split_by_completion(objects: BTreeMap<String, Vec<String>>) -> (Vec<String>, Vec<String>) {
    let (complete, unfinished): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|(id, keys)| keys.contains(&manifest_key(id)));
    let ids = |v: Vec<(String, Vec<String>)>| v.into_iter().map(|(id, _)| id).collect();
    (ids(complete), ids(unfinished))
}

/// Where to find the backups a command can name.
const LIST_HINT: &str = "HINT: `pgward list` shows the complete backups; latest names the newest";

/// `id` is a backup id (`20261130T035500F`), or an error that says where to find one.
pub fn check_id(id: &str) -> Result<()> {
    check_backup_id(id).map_err(|e| anyhow!("{e}\n{LIST_HINT}"))
}

/// How a reader holds a manifest's list of files: in memory (`Vec<FileEntry>`, a
/// [`Manifest`]), set aside on disk ([`SpilledFiles`], for readers that must not hold
/// millions of entries: a backup's parent, a restore), or not at all (`IgnoredAny`).
pub trait FileList: DeserializeOwned + Send + 'static {
    /// The first entry of backup `id` that [`validate_file`] refuses.
    fn validate(&self, id: &str) -> Result<(), InvalidManifest>;
}

impl FileList for Vec<FileEntry> {
    fn validate(&self, id: &str) -> Result<(), InvalidManifest> {
        self.iter().try_for_each(|file| validate_file(id, file))
    }
}

impl FileList for SpilledFiles {
    /// Checked as they were read.
    fn validate(&self, id: &str) -> Result<(), InvalidManifest> {
        match &self.first_invalid {
            Some(invalid) => Err(InvalidManifest {
                backup: id.to_owned(),
                ..invalid.clone()
            }),
            None => Ok(()),
        }
    }
}

impl FileList for serde::de::IgnoredAny {
    /// Skipped as they were read: for readers of the rest only.
    fn validate(&self, _: &str) -> Result<(), InvalidManifest> {
        Ok(())
    }
}

/// The manifest of backup `id`, checked ([`Manifest::validate`]): a manifest naming a path
/// pgward never writes is refused, whatever the reader.
pub async fn read_manifest<F: FileList>(repo: &Repo, id: &str) -> Result<ManifestOf<F>> {
    let manifest: ManifestOf<F> = read_as_stored(repo, id).await?;
    manifest.validate_head(None)?;
    manifest.files.validate(&manifest.id)?;
    Ok(manifest)
}

/// The manifest of backup `id` as stored: parsed and its format checked, its paths not.
async fn read_as_stored<F>(repo: &Repo, id: &str) -> Result<ManifestOf<F>>
where
    F: DeserializeOwned + Send + 'static,
{
    check_id(id)?;
    // Parsed as it is read: a manifest of many files is never held whole as text.
    let manifest: ManifestOf<F> = repo
        .get_parsed(&manifest_key(id), |content| {
            serde_json::from_reader::<_, ManifestOf<F>>(content)
        })
        .await
        .with_context(|| format!("read the manifest of backup {id}"))?
        .with_context(|| {
            format!(
                "backup {id} is not in {} (or incomplete)\n{LIST_HINT}",
                repo.describe()
            )
        })?
        .with_context(|| format!("the manifest of backup {id} is not valid"))?;
    if manifest.format_version > MANIFEST_VERSION {
        bail!(
            "backup {id} has manifest format {}; this pgward reads up to {MANIFEST_VERSION}\n\
             HINT: a newer pgward wrote it: upgrade this one",
            manifest.format_version
        );
    }
    Ok(manifest)
}

/// All complete backups' manifests, oldest first.
pub async fn manifests(repo: &Repo) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for id in backup_ids(repo).await? {
        out.push(read_manifest(repo, &id).await?);
    }
    Ok(out)
}

/// The newest complete backup of `lineage` that ended before `at`: the one to restore for a
/// recovery to that time.
pub async fn newest_before<F: FileList>(
    repo: &Repo,
    at: chrono::DateTime<chrono::Utc>,
    lineage: &Lineage,
) -> Result<ManifestOf<F>> {
    let mut found = None;
    for id in backup_ids(repo).await? {
        let manifest = read_manifest(repo, &id).await?;
        if manifest.stop_time < at && lineage.holds(&manifest) {
            found = Some(manifest);
        }
    }
    found.with_context(|| {
        format!(
            "no backup of the lineage of {} in {} ended before {at}; recovery to that time \
             needs an older backup\n\
             HINT: `pgward list` shows when each backup ended, and on which timeline",
            lineage.describe(),
            repo.describe()
        )
    })
}

/// The newest complete backup `lineage` holds (`None` without one), and the newer backups of
/// other branches passed over on the way (`<id> (timeline N)`, newest first).
pub async fn newest_on<F: FileList>(
    repo: &Repo,
    lineage: &Lineage,
) -> Result<(Option<ManifestOf<F>>, Vec<String>)> {
    newest_among(repo, &backup_ids(repo).await?, lineage).await
}

/// [`newest_on`] among `ids` (complete backups, oldest first), listed by the caller.
pub async fn newest_among<F: FileList>(
    repo: &Repo,
    ids: &[String],
    lineage: &Lineage,
) -> Result<(Option<ManifestOf<F>>, Vec<String>)> {
    let mut off_lineage = Vec::new();
    for id in ids.iter().rev() {
        let manifest: ManifestOf<F> = read_manifest(repo, id).await?;
        if lineage.holds(&manifest) {
            return Ok((Some(manifest), off_lineage));
        }
        off_lineage.push(format!("{} (timeline {})", manifest.id, manifest.timeline));
    }
    Ok((None, off_lineage))
}

/// `latest` (the newest complete backup `lineage` holds) or an id, resolved to a checked
/// manifest. A backup of another branch is never `latest`; named by its id, it is restored.
pub async fn resolve_for<F: FileList>(
    repo: &Repo,
    which: &str,
    lineage: &Lineage,
) -> Result<ManifestOf<F>> {
    if which != "latest" {
        return resolve(repo, which).await;
    }
    let (newest, off_lineage) = newest_on(repo, lineage).await?;
    if let Some(manifest) = newest {
        if !off_lineage.is_empty() {
            tracing::info!(
                backup = %manifest.id,
                "latest of {}: newer backups of other branches passed over: {}",
                lineage.describe(),
                off_lineage.join(", ")
            );
        }
        return Ok(manifest);
    }
    // No backup at all: the catalogue's own message.
    if off_lineage.is_empty() {
        return resolve(repo, which).await;
    }
    bail!(
        "no complete backup in {} is on the lineage of {}; the backups there are of other \
         branches: {}\nHINT: take a backup of this cluster (`pgward backup`), or name a backup \
         by its id to restore another branch",
        repo.describe(),
        lineage.describe(),
        off_lineage.join(", ")
    )
}

/// `latest` or an id, resolved to a checked manifest (see [`read_manifest`]).
pub async fn resolve<F: FileList>(repo: &Repo, which: &str) -> Result<ManifestOf<F>> {
    let id = resolve_id(repo, which).await?;
    read_manifest(repo, &id).await
}

/// `latest` or an id, resolved to its manifest as stored, paths unchecked: for `verify`,
/// which reports what [`Manifest::validate`] finds among the backup's problems.
pub async fn resolve_as_stored(repo: &Repo, which: &str) -> Result<Manifest> {
    let id = resolve_id(repo, which).await?;
    read_as_stored(repo, &id).await
}

/// `latest` (the newest complete backup) or an id.
async fn resolve_id(repo: &Repo, which: &str) -> Result<String> {
    if which != "latest" {
        return Ok(which.to_owned());
    }
    let ids = backup_ids(repo).await?;
    match ids.last() {
        Some(id) => Ok(id.clone()),
        None => bail!(
            "there is no complete backup in {}\nHINT: take one with `pgward backup`; is \
             storage.url the repository the backups went to?",
            repo.describe()
        ),
    }
}

/// Keys of every object under `backups/`, by backup id, complete or not (one listing).
pub async fn objects_by_backup(repo: &Repo) -> Result<BTreeMap<String, Vec<String>>> {
    let objects = repo
        .list(BACKUPS_PREFIX)
        .await
        .with_context(|| format!("list backups in {}", repo.describe()))?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in objects {
        let id = o
            .key
            .strip_prefix(BACKUPS_PREFIX)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.split('/').next())
            .filter(|id| check_backup_id(id).is_ok());
        if let Some(id) = id {
            out.entry(id.to_owned()).or_default().push(o.key.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_that_is_no_backup_id_points_at_pgward_list() {
        check_id("20261130T035500F").expect("an id");
        assert_eq!(
            format!("{:#}", check_id("yesterday").unwrap_err()),
            "\"yesterday\" is not a backup id (expected e.g. 20261130T035500F)\n\
             HINT: `pgward list` shows the complete backups; latest names the newest"
        );
    }
}
