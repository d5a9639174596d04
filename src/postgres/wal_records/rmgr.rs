//! The main data of records, by resource manager: what `RM_XLOG` (WAL switch, parameter
//! change, overwritten continuation record), `RM_XACT`, `RM_SMGR` (relation files created
//! and truncated) and `RM_DBASE` (whole databases) records say beyond their block references,
//! and the refusal of any other record flagged `XLR_SPECIAL_REL_UPDATE`. Block references are
//! `record`'s.

use super::record::{After, Records, MAX_FORKNUM};
use super::{bad, rel_at, u32_at, u64_at, Problem};
use crate::postgres::wal::Lsn;

// xl_info bits (`xlogrecord.h`). The constants the tests' WAL writer also uses are
// `pub(super)`.
pub(super) const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
const XLR_RMGR_INFO_MASK: u8 = 0xF0;

// Resource managers (`access/rmgrlist.h`) and the record kinds read here.
pub(super) const RM_XLOG_ID: u8 = 0;
pub(super) const RM_XACT_ID: u8 = 1;
pub(super) const RM_SMGR_ID: u8 = 2;
pub(super) const RM_DBASE_ID: u8 = 4;
pub(super) const XLOG_SWITCH: u8 = 0x40;
pub(super) const XLOG_PARAMETER_CHANGE: u8 = 0x60;
pub(super) const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
pub(super) const XLOG_SMGR_CREATE: u8 = 0x10;
pub(super) const XLOG_SMGR_TRUNCATE: u8 = 0x20;
// `xl_smgr_truncate.flags` (`catalog/storage_xlog.h`).
const SMGR_TRUNCATE_HEAP: i32 = 0x1;
const SMGR_TRUNCATE_VM: i32 = 0x2;
const SMGR_TRUNCATE_FSM: i32 = 0x4;
/// Offset of `wal_level` in `xl_parameter_change` (five `int`s before it since 12).
const PARAMETER_CHANGE_WAL_LEVEL_OFFSET: usize = 20;
const WAL_LEVEL_MINIMAL: i32 = 0;

/// Names of the built-in resource managers, by id (the same list in 13 to 18).
const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// A resource manager's name for messages.
pub(super) fn rmgr_name(rmid: u8) -> &'static str {
    match RMGR_NAMES.get(usize::from(rmid)) {
        Some(name) => name,
        // `RM_MIN_CUSTOM_ID`: extensions register their own from 128 (15+).
        None if rmid >= 128 => "custom",
        None => "unknown",
    }
}

impl Records {
    /// What the record's main data says, for the resource managers whose records change
    /// relation files beyond their block references.
    pub(super) fn contents(&mut self, rmid: u8, info: u8, main: &[u8]) -> Result<After, Problem> {
        let kind = info & XLR_RMGR_INFO_MASK;
        if let Some(aborted) = self.aborted.take() {
            overwrite_contrecord(aborted, rmid, kind, main)?;
        }
        let understood = match rmid {
            RM_XLOG_ID if kind == XLOG_SWITCH => return Ok(After::Switch),
            RM_XLOG_ID if kind == XLOG_PARAMETER_CHANGE => {
                parameter_change(rmid, info, main)?;
                false
            }
            // Commit and abort records that drop relations: a dropped relation's files are
            // gone, nothing to back up.
            RM_XACT_ID => true,
            RM_SMGR_ID => {
                self.storage(rmid, info, main)?;
                true
            }
            RM_DBASE_ID => {
                need(main, "database record", 4)?;
                self.result.databases.insert(u32_at(main, 0));
                true
            }
            _ => false,
        };
        if info & XLR_SPECIAL_REL_UPDATE != 0 && !understood {
            return Err(Problem::Unsupported {
                rmid,
                info,
                reason: "changes relation files in a way its block references do not \
                         describe (XLR_SPECIAL_REL_UPDATE)",
            });
        }
        Ok(After::Next)
    }

    /// `RM_SMGR`: a relation fork (re)created, or a relation truncated.
    fn storage(&mut self, rmid: u8, info: u8, main: &[u8]) -> Result<(), Problem> {
        match info & XLR_RMGR_INFO_MASK {
            XLOG_SMGR_CREATE => {
                // xl_smgr_create { RelFileLocator; ForkNumber }
                need(main, "XLOG_SMGR_CREATE", 16)?;
                let fork = u32_at(main, 12) as i32;
                if !(0..=i32::from(MAX_FORKNUM)).contains(&fork) {
                    return Err(bad(format!("XLOG_SMGR_CREATE of fork {fork}")));
                }
                self.result.created.insert(rel_at(main, 0));
            }
            XLOG_SMGR_TRUNCATE => {
                // xl_smgr_truncate { BlockNumber; RelFileLocator; int flags }
                need(main, "XLOG_SMGR_TRUNCATE", 20)?;
                let blocks = u32_at(main, 0);
                let rel = rel_at(main, 4);
                let flags = u32_at(main, 16) as i32;
                let known = SMGR_TRUNCATE_HEAP | SMGR_TRUNCATE_VM | SMGR_TRUNCATE_FSM;
                if flags & !known != 0 {
                    return Err(Problem::Unsupported {
                        rmid,
                        info,
                        reason: "truncates with flags this scanner does not know",
                    });
                }
                if flags & SMGR_TRUNCATE_HEAP != 0 {
                    self.result
                        .truncated
                        .entry(rel)
                        .and_modify(|b| *b = (*b).min(blocks))
                        .or_insert(blocks);
                }
                if flags & (SMGR_TRUNCATE_VM | SMGR_TRUNCATE_FSM) != 0 {
                    self.result.other_forks.insert(rel);
                }
            }
            _ => {
                return Err(Problem::Unsupported {
                    rmid,
                    info,
                    reason: "is a storage record this scanner does not know",
                })
            }
        }
        Ok(())
    }
}

/// After a record cut off at an `XLP_FIRST_IS_OVERWRITE_CONTRECORD` page: the record read
/// next must be the `XLOG_OVERWRITE_CONTRECORD` naming the one cut off, at `aborted`.
fn overwrite_contrecord(aborted: u64, rmid: u8, kind: u8, main: &[u8]) -> Result<(), Problem> {
    if rmid != RM_XLOG_ID || kind != XLOG_OVERWRITE_CONTRECORD {
        return Err(bad(format!(
            "the record at {} was cut off (XLP_FIRST_IS_OVERWRITE_CONTRECORD), but what \
             follows is not XLOG_OVERWRITE_CONTRECORD",
            Lsn(aborted)
        )));
    }
    need(main, "XLOG_OVERWRITE_CONTRECORD", 8)?;
    let overwritten = u64_at(main, 0);
    if overwritten != aborted {
        return Err(bad(format!(
            "XLOG_OVERWRITE_CONTRECORD names {} as cut off, but the record cut off was at {}",
            Lsn(overwritten),
            Lsn(aborted)
        )));
    }
    Ok(())
}

/// `XLOG_PARAMETER_CHANGE`: WAL written under `wal_level=minimal` cannot be scanned.
fn parameter_change(rmid: u8, info: u8, main: &[u8]) -> Result<(), Problem> {
    let at = PARAMETER_CHANGE_WAL_LEVEL_OFFSET;
    need(main, "XLOG_PARAMETER_CHANGE", at + 4)?;
    if u32_at(main, at) as i32 == WAL_LEVEL_MINIMAL {
        return Err(Problem::Unsupported {
            rmid,
            info,
            reason: "sets wal_level=minimal, under which some relation changes are not \
                     WAL-logged",
        });
    }
    Ok(())
}

/// Main data at least `len` bytes long, or why `what` is malformed.
fn need(main: &[u8], what: &str, len: usize) -> Result<(), Problem> {
    if main.len() < len {
        return Err(bad(format!(
            "{what} with {} bytes of main data, fewer than {len}",
            main.len()
        )));
    }
    Ok(())
}
