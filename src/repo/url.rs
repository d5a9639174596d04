//! `storage.url`: which store, which bucket or container, which prefix inside it.
//!
//! Pure parsing, no I/O and no credentials: `config` uses it to validate `storage.url`, and
//! `store` turns it into a client. It must not grow knowledge of any cloud's SDK.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// `file:///absolute/path`: a local (or mounted) directory, the repository root.
    File(PathBuf),
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
    /// `gs://bucket/prefix`.
    Gcs { bucket: String, prefix: String },
    /// `az://container/prefix` (the account comes from `storage.azure`).
    Azure { container: String, prefix: String },
}

impl StorageUrl {
    /// Parses `file:///path`, `s3://bucket[/prefix]`, `gs://bucket[/prefix]` or
    /// `az://container[/prefix]`. The error is one lowercase line, fit for a config problem.
    pub fn parse(s: &str) -> Result<StorageUrl, String> {
        let s = s.trim();
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!(
                "invalid storage url {s:?} (expected file:///path, s3://bucket/prefix, \
                 gs://bucket/prefix or az://container/prefix)"
            ));
        };
        if let Some(c) = rest
            .chars()
            .find(|c| matches!(c, '?' | '#' | '\\') || c.is_control())
        {
            return Err(format!(
                "invalid storage url {s:?}: character {c:?} is not allowed"
            ));
        }
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(format!(
                        "invalid storage url {s:?}: a file url needs an absolute path and no \
                         host (file:///var/lib/pgward/repo)"
                    ));
                }
                let path = rest.trim_end_matches('/');
                let path = if path.is_empty() { "/" } else { path };
                check_segments(s, path.trim_start_matches('/'))?;
                Ok(StorageUrl::File(PathBuf::from(path)))
            }
            "s3" | "gs" | "az" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let what = if scheme == "az" {
                    "container"
                } else {
                    "bucket"
                };
                check_bucket(s, what, bucket)?;
                let prefix = prefix.trim_matches('/').to_owned();
                check_segments(s, &prefix)?;
                let bucket = bucket.to_owned();
                Ok(match scheme {
                    "s3" => StorageUrl::S3 { bucket, prefix },
                    "gs" => StorageUrl::Gcs { bucket, prefix },
                    _ => StorageUrl::Azure {
                        container: bucket,
                        prefix,
                    },
                })
            }
            other => Err(format!(
                "unsupported storage url scheme {other:?} in {s:?} (use file, s3, gs or az)"
            )),
        }
    }

    /// `file`, `s3`, `gs` or `az`.
    pub fn scheme(&self) -> &'static str {
        match self {
            StorageUrl::File(_) => "file",
            StorageUrl::S3 { .. } => "s3",
            StorageUrl::Gcs { .. } => "gs",
            StorageUrl::Azure { .. } => "az",
        }
    }

    /// The key prefix inside the bucket or container, without leading or trailing `/`; empty
    /// for `file://` (the directory itself is the root).
    pub fn prefix(&self) -> &str {
        match self {
            StorageUrl::File(_) => "",
            StorageUrl::S3 { prefix, .. }
            | StorageUrl::Gcs { prefix, .. }
            | StorageUrl::Azure { prefix, .. } => prefix,
        }
    }
}

/// Bucket and container names: 3 to 63 lowercase letters, digits, `.`, `-` or `_`. Looser
/// than each cloud's own rules (the store has the last word), strict enough to catch a
/// missing bucket or a typo such as `s3:///prefix`.
fn check_bucket(url: &str, what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "invalid storage url {url:?}: the {what} name is missing"
        ));
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if !ok_chars || !(3..=63).contains(&name.len()) {
        return Err(format!(
            "invalid storage url {url:?}: invalid {what} name {name:?} (3 to 63 lowercase \
             letters, digits, '.', '-' or '_')"
        ));
    }
    Ok(())
}

/// No empty, `.` or `..` segments: they would name a different place than they seem to.
fn check_segments(url: &str, path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    for segment in path.split('/') {
        if matches!(segment, "" | "." | "..") {
            return Err(format!(
                "invalid storage url {url:?}: empty, '.' and '..' path segments are not allowed"
            ));
        }
    }
    Ok(())
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (bucket, prefix) = match self {
            StorageUrl::File(path) => return write!(f, "file://{}", path.display()),
            StorageUrl::S3 { bucket, prefix } | StorageUrl::Gcs { bucket, prefix } => {
                (bucket, prefix)
            }
            StorageUrl::Azure { container, prefix } => (container, prefix),
        };
        write!(f, "{}://{bucket}", self.scheme())?;
        if !prefix.is_empty() {
            write!(f, "/{prefix}")?;
        }
        Ok(())
    }
}

impl FromStr for StorageUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        StorageUrl::parse(s)
    }
}

impl Serialize for StorageUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> StorageUrl {
        StorageUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_each_scheme_and_prints_it_back() {
        let cases = [
            (
                "file:///var/lib/pgward/repo/",
                StorageUrl::File(PathBuf::from("/var/lib/pgward/repo")),
                "file:///var/lib/pgward/repo",
            ),
            ("file:///", StorageUrl::File(PathBuf::from("/")), "file:///"),
            (
                "s3://my-bucket/pg/main/",
                StorageUrl::S3 {
                    bucket: "my-bucket".into(),
                    prefix: "pg/main".into(),
                },
                "s3://my-bucket/pg/main",
            ),
            (
                "s3://my-bucket",
                StorageUrl::S3 {
                    bucket: "my-bucket".into(),
                    prefix: String::new(),
                },
                "s3://my-bucket",
            ),
            (
                "gs://b.example/x",
                StorageUrl::Gcs {
                    bucket: "b.example".into(),
                    prefix: "x".into(),
                },
                "gs://b.example/x",
            ),
            (
                "az://backups/cluster-1",
                StorageUrl::Azure {
                    container: "backups".into(),
                    prefix: "cluster-1".into(),
                },
                "az://backups/cluster-1",
            ),
        ];
        for (input, want, printed) in cases {
            let url = ok(input);
            assert_eq!(url, want, "{input}");
            assert_eq!(url.to_string(), printed);
            assert_eq!(ok(printed), want, "round trip of {printed}");
        }
        assert_eq!(ok("s3://b12/a/b").prefix(), "a/b");
        assert_eq!(ok("file:///x").prefix(), "");
        assert_eq!(ok("az://c12").scheme(), "az");
    }

    #[test]
    fn rejects_with_a_specific_reason() {
        let cases = [
            ("/var/lib/repo", "expected file:///path"),
            ("ftp://host/x", "unsupported storage url scheme \"ftp\""),
            ("file://host/x", "needs an absolute path and no host"),
            ("file:relative", "expected file:///path"),
            ("s3:///prefix", "the bucket name is missing"),
            ("az://", "the container name is missing"),
            ("gs://My_Bucket/x", "invalid bucket name \"My_Bucket\""),
            ("s3://ab", "invalid bucket name \"ab\""),
            ("s3://bucket/a//b", "empty, '.' and '..' path segments"),
            ("s3://bucket/a/../b", "empty, '.' and '..' path segments"),
            ("file:///a/./b", "empty, '.' and '..' path segments"),
            ("s3://bucket/x?versionId=1", "character '?' is not allowed"),
        ];
        for (input, want) in cases {
            let err = StorageUrl::parse(input).expect_err(input);
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}
