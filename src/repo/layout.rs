//! Where things live inside the repository: key names only, no I/O.
//!
//! ```text
//! repo.json                                  RepoMeta, plain JSON (no codec extension)
//! wal/<TTTTTTTT>/<24 hex>                    WAL segments (and .partial, .backup files)
//! wal/<TTTTTTTT>/<TTTTTTTT>.history          timeline history files
//! backups/<id>/...                           one backup; its manifest is written last
//! locks/<name>/<generation>                  a lease (see `lease`): who runs a backup now
//! ```
//! Keys carry no codec extension; [`Repo`](super::Repo) appends it, except to the plain
//! objects a human reads (`repo.json`), which are stored under their key. The timeline
//! directory keeps listings per timeline short. Names follow PostgreSQL's `XLogFileName` and
//! friends (uppercase hex); this module validates them without depending on `postgres/`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use super::RepoError;

/// Key of the repository's metadata object.
pub const REPO_META: &str = "repo.json";
/// Prefix of everything WAL.
pub const WAL_PREFIX: &str = "wal";
/// Prefix of everything backup.
pub const BACKUPS_PREFIX: &str = "backups";

fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// The key of a file postgres hands to `archive_command` or asks of `restore_command`:
/// a segment (`000000010000000000000003`), a partial segment (`….partial`), a history file
/// (`00000002.history`) or a backup label (`…3.00000028.backup`).
pub fn wal_key(file_name: &str) -> Result<String, RepoError> {
    let invalid = |reason: &str| RepoError::InvalidKey {
        key: file_name.to_owned(),
        reason: reason.to_owned(),
    };
    let timeline = if let Some(tli) = file_name.strip_suffix(".history") {
        (tli.len() == 8 && is_upper_hex(tli)).then_some(tli)
    } else {
        let (segment, rest) = file_name.split_at_checked(24).unwrap_or((file_name, ""));
        let ok_rest = match rest {
            "" | ".partial" => true,
            _ => rest
                .strip_prefix('.')
                .and_then(|r| r.strip_suffix(".backup"))
                .is_some_and(|offset| offset.len() == 8 && is_upper_hex(offset)),
        };
        (segment.len() == 24 && is_upper_hex(segment) && ok_rest).then(|| &segment[..8])
    };
    match timeline {
        Some("00000000") => Err(invalid("timeline 0 does not exist")),
        Some(tli) => Ok(format!("{WAL_PREFIX}/{tli}/{file_name}")),
        None => Err(invalid(
            "not a WAL file name (expected a 24-hex-digit segment, optionally with .partial, \
             a <timeline>.history or a <segment>.<offset>.backup file, uppercase hex)",
        )),
    }
}

/// A backup's id, `YYYYMMDDTHHMMSS` (UTC) then `F` (full) or `I` (incremental), e.g.
/// `20261130T035500F`: ids sort by time, and become part of object keys, so only this shape
/// is ever accepted. Serialized as the plain string; deserializing checks the shape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct BackupId(String);

/// A string that is not a [`BackupId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a backup id (expected e.g. 20261130T035500F)")]
pub struct InvalidBackupId(pub String);

impl BackupId {
    /// `id` if it has the shape of a backup id.
    pub fn parse(id: &str) -> Result<BackupId, InvalidBackupId> {
        // Bytes, not string slices: a multi-byte character must fail the check, not panic.
        let b = id.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        let ok = b.len() == 16
            && digits(0..8)
            && b[8] == b'T'
            && digits(9..15)
            && matches!(b[15], b'F' | b'I');
        if ok {
            Ok(BackupId(id.to_owned()))
        } else {
            Err(InvalidBackupId(id.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BackupId {
    type Err = InvalidBackupId;
    fn from_str(s: &str) -> Result<BackupId, InvalidBackupId> {
        BackupId::parse(s)
    }
}

impl AsRef<str> for BackupId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BackupId, D::Error> {
        let id = String::deserialize(d)?;
        BackupId::parse(&id).map_err(serde::de::Error::custom)
    }
}

/// Prefix of one backup's objects.
pub fn backup_prefix(id: &str) -> String {
    format!("{BACKUPS_PREFIX}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_keys() {
        let cases = [
            (
                "000000010000000000000003",
                "wal/00000001/000000010000000000000003",
            ),
            (
                "0000000A00000001000000FF.partial",
                "wal/0000000A/0000000A00000001000000FF.partial",
            ),
            ("00000002.history", "wal/00000002/00000002.history"),
            (
                "000000010000000000000003.00000028.backup",
                "wal/00000001/000000010000000000000003.00000028.backup",
            ),
        ];
        for (name, key) in cases {
            assert_eq!(wal_key(name).expect(name), key);
        }
        for bad in [
            "",
            "00000001000000000000003",
            "0000000100000000000000030",
            "000000010000000000000003.zst",
            "000000010000000000000003.partial.x",
            "00000001000000000000000a",
            "0000001.history",
            "00000000.history",
            "000000000000000000000001",
            "000000010000000000000003.0000028.backup",
            "../00000001.history",
            "archive_status",
            "ééééééééééééééééééééééééé",
        ] {
            let err = wal_key(bad).expect_err(bad);
            assert!(
                matches!(&err, RepoError::InvalidKey { key, .. } if key == bad),
                "{bad}: {err}"
            );
        }
        assert!(wal_key("x")
            .unwrap_err()
            .to_string()
            .starts_with("invalid repository key \"x\": not a WAL file name"));
        assert_eq!(
            backup_prefix("20240101T000000F"),
            "backups/20240101T000000F"
        );
    }

    #[test]
    fn backup_ids_are_checked_printed_and_serialized_as_strings() {
        for good in ["20261130T035500F", "20261130T035501I"] {
            let id = BackupId::parse(good).expect(good);
            assert_eq!(id.as_str(), good);
            assert_eq!(id.to_string(), good);
            assert_eq!(good.parse::<BackupId>(), Ok(id.clone()));
            assert_eq!(
                serde_json::to_string(&id).expect("json"),
                format!("\"{good}\"")
            );
            let back: BackupId = serde_json::from_str(&format!("\"{good}\"")).expect("json");
            assert_eq!(back, id);
        }
        for bad in [
            "",
            "latest",
            "20261130T035500X",
            "20261130-035500F",
            "20261130T035500FF",
            "../../etc/passwd",
            "2026113\u{e9}T35500F",
            // The 'T' position inside a multi-byte character: a string slice there panics.
            "20261130\u{e9}123456",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            assert_eq!(
                BackupId::parse(bad),
                Err(InvalidBackupId(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(
            BackupId::parse("x").unwrap_err().to_string(),
            "\"x\" is not a backup id (expected e.g. 20261130T035500F)"
        );
        assert!(serde_json::from_str::<BackupId>("\"latest\"").is_err());
    }
}
