//! Reading `global/pg_control` (`ControlFileData` in `src/include/catalog/pg_control.h`):
//! the cluster's system identifier, versions, state, latest checkpoint and WAL geometry,
//! with PostgreSQL's own CRC-32C check.
//!
//! Knows nothing of storage or processes; [`ControlFile::read`] is one blocking read.
//!
//! Layouts: `pg_control_version` 1300 (PostgreSQL 13–16), 1700 (17) and 1800 (18). All
//! fields read here sit at the same offsets in the three; 17 only moved `wal_level` into
//! padding of the embedded `CheckPoint`, and 18 added `default_char_signedness`, which
//! moves the CRC from byte 288 to 292. The file is a C struct in the server's native byte
//! order and is read in native order (pgward runs beside the server that wrote it); the
//! `floatFormat` constant PostgreSQL stores for the same purpose doubles as a check that the
//! offsets below are right.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use thiserror::Error;

use super::wal::{Lsn, NameError, TimelineId, WalSegSize};

/// Path of the control file inside a data directory (`XLOG_CONTROL_FILE`).
pub const CONTROL_FILE_PATH: &str = "global/pg_control";

/// Offsets into `ControlFileData` (x86_64/aarch64 alignment: `MAXALIGN` 8).
mod offset {
    pub const SYSTEM_IDENTIFIER: usize = 0;
    pub const PG_CONTROL_VERSION: usize = 8;
    pub const CATALOG_VERSION_NO: usize = 12;
    pub const STATE: usize = 16;
    pub const CHECKPOINT: usize = 32;
    /// `checkPointCopy` starts at 40: `redo` is its first field, `ThisTimeLineID` follows.
    pub const CHECKPOINT_REDO: usize = 40;
    pub const CHECKPOINT_TLI: usize = 48;
    pub const FLOAT_FORMAT: usize = 208;
    pub const BLCKSZ: usize = 216;
    pub const RELSEG_SIZE: usize = 220;
    pub const XLOG_BLCKSZ: usize = 224;
    pub const XLOG_SEG_SIZE: usize = 228;
    pub const DATA_CHECKSUM_VERSION: usize = 252;
}

/// `FLOATFORMAT_VALUE`, stored so that an incompatible float format is caught.
const FLOAT_FORMAT_VALUE: f64 = 1_234_567.0;

/// The `pg_control_version` values this module can read, and where each keeps its CRC
/// (`offsetof(ControlFileData, crc)`).
pub const SUPPORTED_VERSIONS: &[(u32, usize)] = &[(1300, 288), (1700, 288), (1800, 292)];

/// `DBState`: what the cluster was doing when `pg_control` was last written. Unchanged
/// from PostgreSQL 9.1 to 18.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbState {
    /// `DB_STARTUP`
    StartingUp,
    /// `DB_SHUTDOWNED`: cleanly stopped.
    ShutDown,
    /// `DB_SHUTDOWNED_IN_RECOVERY`: a standby cleanly stopped.
    ShutDownInRecovery,
    /// `DB_SHUTDOWNING`
    ShuttingDown,
    /// `DB_IN_CRASH_RECOVERY`
    InCrashRecovery,
    /// `DB_IN_ARCHIVE_RECOVERY`: a standby or a restore replaying archived WAL.
    InArchiveRecovery,
    /// `DB_IN_PRODUCTION`: running, or stopped without a shutdown checkpoint.
    InProduction,
    /// A value no known version writes.
    Unknown(u32),
}

impl DbState {
    fn from_raw(raw: u32) -> DbState {
        match raw {
            0 => DbState::StartingUp,
            1 => DbState::ShutDown,
            2 => DbState::ShutDownInRecovery,
            3 => DbState::ShuttingDown,
            4 => DbState::InCrashRecovery,
            5 => DbState::InArchiveRecovery,
            6 => DbState::InProduction,
            other => DbState::Unknown(other),
        }
    }
}

impl fmt::Display for DbState {
    /// The words of `pg_controldata`'s "Database cluster state".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbState::StartingUp => f.write_str("starting up"),
            DbState::ShutDown => f.write_str("shut down"),
            DbState::ShutDownInRecovery => f.write_str("shut down in recovery"),
            DbState::ShuttingDown => f.write_str("shutting down"),
            DbState::InCrashRecovery => f.write_str("in crash recovery"),
            DbState::InArchiveRecovery => f.write_str("in archive recovery"),
            DbState::InProduction => f.write_str("in production"),
            DbState::Unknown(raw) => write!(f, "unrecognized status code {raw}"),
        }
    }
}

/// What pgward needs from `pg_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFile {
    /// `system_identifier`: unique per initdb; stamped on every WAL segment.
    pub system_identifier: u64,
    /// `pg_control_version`: the file's format (1300, 1700 or 1800).
    pub pg_control_version: u32,
    /// `catalog_version_no`: the system catalogs' format, `YYYYMMDDN`.
    pub catalog_version_no: u32,
    /// `state`.
    pub state: DbState,
    /// `checkPoint`: LSN of the latest checkpoint record.
    pub checkpoint: Lsn,
    /// `checkPointCopy.redo`: where replay from that checkpoint starts.
    pub checkpoint_redo: Lsn,
    /// `checkPointCopy.ThisTimeLineID`: the timeline of that checkpoint.
    pub checkpoint_tli: TimelineId,
    /// `blcksz`: data page size.
    pub blcksz: u32,
    /// `relseg_size`: blocks per segment file of a relation.
    pub relseg_size: u32,
    /// `xlog_blcksz`: WAL page size.
    pub xlog_blcksz: u32,
    /// `xlog_seg_size`: `wal_segment_size`.
    pub xlog_seg_size: WalSegSize,
    /// `data_checksum_version`: 0 when data checksums are off.
    pub data_checksum_version: u32,
}

/// Why the bytes of `pg_control` cannot be trusted.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ControlFileError {
    /// Shorter than the layout it claims.
    #[error("pg_control is {len} bytes, shorter than the {needed} its format needs")]
    TooShort { len: usize, needed: usize },
    /// A format this build does not know.
    #[error(
        "pg_control has format version {version}, which pgward cannot read (it reads {})\n\
         HINT: this data directory is from a PostgreSQL major version pgward does not support",
        supported_list()
    )]
    UnknownVersion { version: u32 },
    /// Torn write or corruption.
    #[error(
        "pg_control has a bad checksum: stored CRC-32C {stored:#010X}, computed {computed:#010X}"
    )]
    CrcMismatch { stored: u32, computed: u32 },
    /// The CRC is right but the float check value is not where this layout puts it.
    #[error(
        "pg_control format {version} does not have the layout pgward expects \
         (floatFormat reads {found} instead of 1234567)"
    )]
    LayoutMismatch { version: u32, found: f64 },
    /// `xlog_seg_size` is not a valid segment size.
    #[error("pg_control holds an invalid WAL segment size: {0}")]
    SegSize(#[from] NameError),
}

fn supported_list() -> String {
    SUPPORTED_VERSIONS
        .iter()
        .map(|(v, _)| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl ControlFile {
    /// Reads `<data_dir>/global/pg_control`. Blocking.
    pub fn read(data_dir: &Path) -> Result<ControlFile> {
        let path = data_dir.join(CONTROL_FILE_PATH);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        ControlFile::parse(&bytes).with_context(|| format!("check {}", path.display()))
    }

    /// Decodes and verifies the contents of `pg_control`: known version, CRC, layout.
    pub fn parse(bytes: &[u8]) -> Result<ControlFile, ControlFileError> {
        let u32_at =
            |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4-byte slice"));
        let u64_at =
            |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8-byte slice"));
        let header = offset::PG_CONTROL_VERSION + 4;
        if bytes.len() < header {
            return Err(ControlFileError::TooShort {
                len: bytes.len(),
                needed: header,
            });
        }
        let version = u32_at(offset::PG_CONTROL_VERSION);
        let crc_at = SUPPORTED_VERSIONS
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, crc_at)| *crc_at)
            .ok_or(ControlFileError::UnknownVersion { version })?;
        if bytes.len() < crc_at + 4 {
            return Err(ControlFileError::TooShort {
                len: bytes.len(),
                needed: crc_at + 4,
            });
        }
        let stored = u32_at(crc_at);
        let computed = crc32c::crc32c(&bytes[..crc_at]);
        if stored != computed {
            return Err(ControlFileError::CrcMismatch { stored, computed });
        }
        let float_format = f64::from_bits(u64_at(offset::FLOAT_FORMAT));
        if float_format != FLOAT_FORMAT_VALUE {
            return Err(ControlFileError::LayoutMismatch {
                version,
                found: float_format,
            });
        }
        Ok(ControlFile {
            system_identifier: u64_at(offset::SYSTEM_IDENTIFIER),
            pg_control_version: version,
            catalog_version_no: u32_at(offset::CATALOG_VERSION_NO),
            state: DbState::from_raw(u32_at(offset::STATE)),
            checkpoint: Lsn(u64_at(offset::CHECKPOINT)),
            checkpoint_redo: Lsn(u64_at(offset::CHECKPOINT_REDO)),
            checkpoint_tli: TimelineId(u32_at(offset::CHECKPOINT_TLI)),
            blcksz: u32_at(offset::BLCKSZ),
            relseg_size: u32_at(offset::RELSEG_SIZE),
            xlog_blcksz: u32_at(offset::XLOG_BLCKSZ),
            xlog_seg_size: WalSegSize::new(u32_at(offset::XLOG_SEG_SIZE))?,
            data_checksum_version: u32_at(offset::DATA_CHECKSUM_VERSION),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8192-byte `pg_control` of format `version` with the fields of `c`, CRC filled in.
    fn encode(c: &ControlFile) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(
            offset::SYSTEM_IDENTIFIER,
            &c.system_identifier.to_ne_bytes(),
        );
        put(
            offset::PG_CONTROL_VERSION,
            &c.pg_control_version.to_ne_bytes(),
        );
        put(
            offset::CATALOG_VERSION_NO,
            &c.catalog_version_no.to_ne_bytes(),
        );
        let state: u32 = match c.state {
            DbState::StartingUp => 0,
            DbState::ShutDown => 1,
            DbState::ShutDownInRecovery => 2,
            DbState::ShuttingDown => 3,
            DbState::InCrashRecovery => 4,
            DbState::InArchiveRecovery => 5,
            DbState::InProduction => 6,
            DbState::Unknown(raw) => raw,
        };
        put(offset::STATE, &state.to_ne_bytes());
        put(offset::CHECKPOINT, &c.checkpoint.0.to_ne_bytes());
        put(offset::CHECKPOINT_REDO, &c.checkpoint_redo.0.to_ne_bytes());
        put(offset::CHECKPOINT_TLI, &c.checkpoint_tli.0.to_ne_bytes());
        put(offset::FLOAT_FORMAT, &FLOAT_FORMAT_VALUE.to_ne_bytes());
        put(offset::BLCKSZ, &c.blcksz.to_ne_bytes());
        put(offset::RELSEG_SIZE, &c.relseg_size.to_ne_bytes());
        put(offset::XLOG_BLCKSZ, &c.xlog_blcksz.to_ne_bytes());
        put(
            offset::XLOG_SEG_SIZE,
            &c.xlog_seg_size.bytes().to_ne_bytes(),
        );
        put(
            offset::DATA_CHECKSUM_VERSION,
            &c.data_checksum_version.to_ne_bytes(),
        );
        seal(&mut b);
        b
    }

    /// Recomputes the CRC for the version in the bytes.
    fn seal(b: &mut [u8]) {
        let version = u32::from_ne_bytes(b[8..12].try_into().unwrap());
        let (_, crc_at) = SUPPORTED_VERSIONS
            .iter()
            .find(|(v, _)| *v == version)
            .unwrap();
        let crc = crc32c::crc32c(&b[..*crc_at]);
        b[*crc_at..*crc_at + 4].copy_from_slice(&crc.to_ne_bytes());
    }

    fn sample(version: u32) -> ControlFile {
        ControlFile {
            system_identifier: 7_312_345_678_901_234_567,
            pg_control_version: version,
            catalog_version_no: 202_307_071,
            state: DbState::InProduction,
            checkpoint: Lsn(0x16_B374_D848),
            checkpoint_redo: Lsn(0x16_B374_D810),
            checkpoint_tli: TimelineId(3),
            blcksz: 8192,
            relseg_size: 131_072,
            xlog_blcksz: 8192,
            xlog_seg_size: WalSegSize::DEFAULT,
            data_checksum_version: 1,
        }
    }

    #[test]
    fn reads_each_supported_version() {
        for (version, _) in SUPPORTED_VERSIONS {
            let want = sample(*version);
            assert_eq!(ControlFile::parse(&encode(&want)), Ok(want), "{version}");
        }
    }

    #[test]
    fn the_crc_moves_in_version_1800() {
        // A 1700 file relabelled 1800 keeps its CRC at 288, so the check at 292 fails.
        let mut b = encode(&sample(1700));
        b[8..12].copy_from_slice(&1800u32.to_ne_bytes());
        assert!(matches!(
            ControlFile::parse(&b),
            Err(ControlFileError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn every_state_reads_back() {
        for (raw, state, text) in [
            (0, DbState::StartingUp, "starting up"),
            (1, DbState::ShutDown, "shut down"),
            (2, DbState::ShutDownInRecovery, "shut down in recovery"),
            (3, DbState::ShuttingDown, "shutting down"),
            (4, DbState::InCrashRecovery, "in crash recovery"),
            (5, DbState::InArchiveRecovery, "in archive recovery"),
            (6, DbState::InProduction, "in production"),
            (9, DbState::Unknown(9), "unrecognized status code 9"),
        ] {
            let c = ControlFile {
                state,
                ..sample(1300)
            };
            assert_eq!(ControlFile::parse(&encode(&c)).unwrap().state, state);
            assert_eq!(DbState::from_raw(raw), state);
            assert_eq!(state.to_string(), text);
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut b = encode(&sample(1300));
        b[8..12].copy_from_slice(&1201u32.to_ne_bytes());
        let err = ControlFile::parse(&b).unwrap_err();
        assert_eq!(err, ControlFileError::UnknownVersion { version: 1201 });
        assert_eq!(
            err.to_string(),
            "pg_control has format version 1201, which pgward cannot read (it reads 1300, \
             1700, 1800)\nHINT: this data directory is from a PostgreSQL major version \
             pgward does not support"
        );
    }

    #[test]
    fn too_short() {
        assert_eq!(
            ControlFile::parse(&[0; 11]),
            Err(ControlFileError::TooShort {
                len: 11,
                needed: 12
            })
        );
        let b = encode(&sample(1800));
        let err = ControlFile::parse(&b[..295]).unwrap_err();
        assert_eq!(
            err,
            ControlFileError::TooShort {
                len: 295,
                needed: 296
            }
        );
        assert_eq!(
            err.to_string(),
            "pg_control is 295 bytes, shorter than the 296 its format needs"
        );
        // Exactly up to the CRC is enough.
        assert!(ControlFile::parse(&encode(&sample(1300))[..292]).is_ok());
    }

    #[test]
    fn corruption_fails_the_crc() {
        let mut b = encode(&sample(1300));
        b[offset::CHECKPOINT] ^= 1;
        let err = ControlFile::parse(&b).unwrap_err();
        let ControlFileError::CrcMismatch { stored, computed } = err else {
            panic!("{err:?}");
        };
        assert_ne!(stored, computed);
        assert_eq!(
            err.to_string(),
            format!(
                "pg_control has a bad checksum: stored CRC-32C {stored:#010X}, computed \
                 {computed:#010X}"
            )
        );
        // Bytes past the CRC are not covered.
        let mut b = encode(&sample(1300));
        b[4000] = 0xFF;
        assert!(ControlFile::parse(&b).is_ok());
    }

    #[test]
    fn crc_matches_a_known_check_value() {
        // CRC-32C of "123456789" is 0xE3069283: the same algorithm as PostgreSQL's
        // INIT_CRC32C / COMP_CRC32C / FIN_CRC32C.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn wrong_layout_is_caught_by_float_format() {
        let mut b = encode(&sample(1300));
        b[offset::FLOAT_FORMAT..offset::FLOAT_FORMAT + 8].copy_from_slice(&2.5f64.to_ne_bytes());
        seal(&mut b);
        let err = ControlFile::parse(&b).unwrap_err();
        assert_eq!(
            err,
            ControlFileError::LayoutMismatch {
                version: 1300,
                found: 2.5
            }
        );
        assert_eq!(
            err.to_string(),
            "pg_control format 1300 does not have the layout pgward expects (floatFormat \
             reads 2.5 instead of 1234567)"
        );
    }

    #[test]
    fn invalid_segment_size() {
        let mut b = encode(&sample(1300));
        b[offset::XLOG_SEG_SIZE..offset::XLOG_SEG_SIZE + 4]
            .copy_from_slice(&(3u32 << 20).to_ne_bytes());
        seal(&mut b);
        let err = ControlFile::parse(&b).unwrap_err();
        assert_eq!(
            err,
            ControlFileError::SegSize(NameError::InvalidSegSize { bytes: 3 << 20 })
        );
        assert_eq!(
            err.to_string(),
            "pg_control holds an invalid WAL segment size: invalid WAL segment size 3145728 \
             bytes: must be a power of two from 1 MiB to 1 GiB"
        );
    }

    #[test]
    fn read_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ControlFile::read(dir.path()).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("read ") && text.contains("global/pg_control"),
            "{text}"
        );

        std::fs::create_dir(dir.path().join("global")).unwrap();
        std::fs::write(dir.path().join(CONTROL_FILE_PATH), [0u8; 100]).unwrap();
        let text = format!("{:#}", ControlFile::read(dir.path()).unwrap_err());
        assert!(
            text.starts_with("check ") && text.contains("format version 0"),
            "{text}"
        );

        std::fs::write(dir.path().join(CONTROL_FILE_PATH), encode(&sample(1700))).unwrap();
        assert_eq!(ControlFile::read(dir.path()).unwrap(), sample(1700));
    }
}

/// Checks against a cluster made by the installed `initdb`; `make test` installs
/// PostgreSQL, so a machine without it fails here rather than skipping.
#[cfg(test)]
mod real_cluster_tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;
    use crate::postgres::wal::{WalFileName, WalSegSize};
    use crate::postgres::wal_header::{check_segment_header, ExpectedHeader};

    /// The newest `/usr/lib/postgresql/<major>/bin` holding `initdb` (Debian's layout).
    fn bin_dir() -> PathBuf {
        let root = Path::new("/usr/lib/postgresql");
        let newest = std::fs::read_dir(root).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let major: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((major, bin))
                })
                .max_by_key(|(major, _)| *major)
        });
        match newest {
            Some((_, bin)) => bin,
            None => panic!(
                "no PostgreSQL server found: expected /usr/lib/postgresql/<major>/bin/initdb \
                 (make test installs it)"
            ),
        }
    }

    /// Runs `program args` as the postgres user when we are root (initdb refuses root).
    fn run(program: &Path, args: &[&str]) -> String {
        let mut cmd = if nix::unistd::Uid::effective().is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        let out = cmd
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}\n{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn controldata(text: &str) -> HashMap<&str, &str> {
        text.lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect()
    }

    #[test]
    fn matches_pg_controldata_and_the_first_wal_segment() {
        let bin = bin_dir();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .expect("look up the postgres user")
                .expect("a postgres user exists where PostgreSQL is installed");
            nix::unistd::chown(&data, Some(user.uid), Some(user.gid)).unwrap();
        }
        let data_arg = data.to_str().expect("utf-8 temp path");
        // A 2 MiB segment size so nothing below can be passing on the 16 MiB default.
        run(
            &bin.join("initdb"),
            &[
                "-D",
                data_arg,
                "--no-sync",
                "--auth=trust",
                "--username=postgres",
                "--locale=C",
                "--encoding=UTF8",
                "--wal-segsize=2",
            ],
        );

        let control = ControlFile::read(&data).unwrap();
        let text = run(&bin.join("pg_controldata"), &[data_arg]);
        let fields = controldata(&text);
        let field = |key: &str| {
            *fields
                .get(key)
                .unwrap_or_else(|| panic!("pg_controldata has no {key:?}:\n{text}"))
        };
        assert_eq!(control.xlog_seg_size, WalSegSize::new(2 << 20).unwrap());
        for (ours, key) in [
            (
                control.system_identifier.to_string(),
                "Database system identifier",
            ),
            (
                control.pg_control_version.to_string(),
                "pg_control version number",
            ),
            (
                control.catalog_version_no.to_string(),
                "Catalog version number",
            ),
            (control.state.to_string(), "Database cluster state"),
            (control.checkpoint.to_string(), "Latest checkpoint location"),
            (
                control.checkpoint_redo.to_string(),
                "Latest checkpoint's REDO location",
            ),
            (
                control.checkpoint_tli.to_string(),
                "Latest checkpoint's TimeLineID",
            ),
            (
                control.xlog_seg_size.bytes().to_string(),
                "Bytes per WAL segment",
            ),
            (control.xlog_blcksz.to_string(), "WAL block size"),
            (control.blcksz.to_string(), "Database block size"),
            (
                control.relseg_size.to_string(),
                "Blocks per segment of large relation",
            ),
            (
                control.data_checksum_version.to_string(),
                "Data page checksum version",
            ),
        ] {
            assert_eq!(ours, field(key), "{key}");
        }

        let first = std::fs::read_dir(data.join("pg_wal"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| match WalFileName::parse(&name) {
                Ok(WalFileName::Segment(segment)) => Some(segment),
                _ => None,
            })
            .min()
            .expect("initdb leaves a WAL segment in pg_wal");
        let path = data.join("pg_wal").join(first.to_string());
        let header = crate::postgres::wal_header::read_segment_header(&path).unwrap();
        let expected = ExpectedHeader {
            system_id: control.system_identifier,
            tli: first.tli(),
            segno: first.segno(control.xlog_seg_size).unwrap(),
            seg_size: control.xlog_seg_size,
        };
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(check_segment_header(&bytes, &expected), Ok(header));
        assert_eq!(header.xlog_blcksz, control.xlog_blcksz);
        let major: u32 = bin
            .parent()
            .and_then(|p| p.file_name()?.to_str()?.parse().ok())
            .expect("major version directory");
        assert_eq!(header.major(), Some(major), "magic {:#06X}", header.magic);

        let foreign = ExpectedHeader {
            system_id: control.system_identifier ^ 1,
            ..expected
        };
        assert!(check_segment_header(&bytes, &foreign)
            .unwrap_err()
            .to_string()
            .contains("HINT: do two clusters share storage.url?"));
    }
}
