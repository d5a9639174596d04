//! Finding the PostgreSQL binaries and their major version.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::process::{self, LogSink, Spec};

/// A directory holding `postgres`, `initdb`, `psql`... of one major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinDir {
    pub dir: PathBuf,
    /// Major version, e.g. 16 (read from `postgres --version`).
    pub major: u32,
}

impl BinDir {
    /// Finds the binaries: `configured` if given, else the directory of `postgres` on `PATH`
    /// (symlinks resolved, so `initdb` and `psql` come from the same installation), else the
    /// newest `/usr/lib/postgresql/*/bin` (Debian's layout).
    pub async fn find(
        configured: Option<&Path>,
        path_var: Option<&str>,
        sink: &LogSink,
    ) -> Result<BinDir> {
        let dir = match configured {
            Some(dir) => {
                if !dir.join("postgres").is_file() {
                    bail!(
                        "postgres.bin_dir {} holds no postgres binary",
                        dir.display()
                    );
                }
                dir.to_path_buf()
            }
            None => match on_path("postgres", path_var)
                .or_else(|| newest_debian(Path::new("/usr/lib/postgresql")))
            {
                Some(dir) => dir,
                None => bail!(
                    "cannot find the postgres binary on PATH or in /usr/lib/postgresql/*/bin\n\
                     HINT: install a PostgreSQL server package or set postgres.bin_dir"
                ),
            },
        };
        let major = read_major(&dir, sink).await?;
        Ok(BinDir { dir, major })
    }

    /// Path of one of the binaries.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn on_path(program: &str, path_var: Option<&str>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The `*/bin` with the highest numeric version under `root`.
fn newest_debian(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: f64 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, bin)| bin)
}

async fn read_major(dir: &Path, sink: &LogSink) -> Result<u32> {
    let postgres = dir.join("postgres");
    let spec = Spec::new("postgres --version", &postgres).arg("--version");
    let (status, stdout) = process::capture(&spec, sink).await?;
    if !status.success() {
        bail!("{} --version failed: {status}", postgres.display());
    }
    parse_major(&stdout)
        .with_context(|| format!("parse the version printed by {}", postgres.display()))
}

/// `postgres (PostgreSQL) 16.4 (Debian 16.4-1)` → 16; `... 9.6.24` → 9.
pub fn parse_major(version_line: &str) -> Result<u32> {
    let version = version_line
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .with_context(|| format!("no version number in {version_line:?}"))?;
    let major = version
        .split(['.', 'b', 'r', 'd'])
        .next()
        .unwrap_or(version);
    major
        .parse()
        .with_context(|| format!("bad version {version:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_versions() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 16.4 (Debian 16.4-1.pgdg120+1)\n").unwrap(),
            16
        );
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)").unwrap(),
            15
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 18beta1").unwrap(), 18);
        assert!(parse_major("nothing here").is_err());
    }

    #[test]
    fn picks_the_newest_debian_version() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9.6", "13", "16", "notaversion"] {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("postgres"), "").unwrap();
        }
        assert_eq!(newest_debian(root.path()), Some(root.path().join("16/bin")));
    }
}
