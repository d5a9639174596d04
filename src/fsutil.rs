//! Durable local writes. A rename is only durable once the directory holding it is fsynced,
//! and a file's content only once the file is; one helper so no caller forgets either.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// fsync a directory, making renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

/// Writes `path` atomically: temp file in the same directory, fsync, rename, fsync directory.
/// Readers see the old content or the new, never a mix.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    tmp.write_all(content)
        .with_context(|| format!("write {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("rename into {}", path.display()))?;
    sync_dir(dir)
}
