//! One whole record: its CRC-32C and `xl_prev` link (`ValidXLogRecord`,
//! `ValidXLogRecordHeader`), its block reference headers and their images (`DecodeXLogRecord`),
//! and the changed blocks they add to the result. The main data is handed to `rmgr`; where
//! the record's bytes come from (pages, segments) is `assembly`'s.

use super::{
    bad, rel_at, u16_at, u32_at, u64_at, ChangedBlocks, Problem, RelFileLocator, RECORD_CRC_OFFSET,
    RECORD_HEADER_SIZE,
};
use crate::postgres::wal::Lsn;

// Block ids and block header flags (`xlogrecord.h`). The ones the tests' WAL writer also
// encodes are `pub(super)`.
const XLR_MAX_BLOCK_ID: u8 = 32;
pub(super) const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
pub(super) const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
pub(super) const XLR_BLOCK_ID_ORIGIN: u8 = 253;
pub(super) const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_FORK_MASK: u8 = 0x0F;
pub(super) const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
pub(super) const BKPBLOCK_HAS_DATA: u8 = 0x20;
pub(super) const BKPBLOCK_SAME_REL: u8 = 0x80;

// Forks (`common/relpath.h`): main, FSM, visibility map, init.
const MAIN_FORKNUM: u8 = 0;
pub(super) const MAX_FORKNUM: u8 = 3;

/// How `bimg_info` spells "has a hole" and "is compressed": 15 replaced the one compression
/// bit with one per method and moved `BKPIMAGE_APPLY`.
#[derive(Debug, Clone, Copy)]
enum ImageFlags {
    /// 13, 14: `HAS_HOLE` 0x01, `IS_COMPRESSED` 0x02, `APPLY` 0x04.
    Pg13,
    /// 15+: `HAS_HOLE` 0x01, `APPLY` 0x02, `COMPRESS_PGLZ` 0x04, `COMPRESS_LZ4` 0x08,
    /// `COMPRESS_ZSTD` 0x10.
    Pg15,
}

impl ImageFlags {
    /// (has a hole, is compressed), or `None` for bits this version does not define.
    fn decode(self, bimg_info: u8) -> Option<(bool, bool)> {
        let has_hole = bimg_info & 0x01 != 0;
        match self {
            ImageFlags::Pg13 => {
                (bimg_info & !0x07 == 0).then_some((has_hole, bimg_info & 0x02 != 0))
            }
            ImageFlags::Pg15 => {
                let methods = bimg_info & 0x1C;
                // One method at most: PostgreSQL sets one, and two would be a misread.
                (bimg_info & !0x1F == 0 && methods.count_ones() <= 1)
                    .then_some((has_hole, methods != 0))
            }
        }
    }
}

/// What a record's content asks of the reader.
pub(super) enum After {
    Next,
    /// `XLOG_SWITCH`: the rest of the segment is padding.
    Switch,
}

/// The record-level half of the scan: decoding and the result.
pub(super) struct Records {
    images: ImageFlags,
    /// Start of the last record read whole: the next one's `xl_prev`.
    pub(super) prev_record: Option<u64>,
    /// A record abandoned at an `XLP_FIRST_IS_OVERWRITE_CONTRECORD` page: the next record
    /// must be the `XLOG_OVERWRITE_CONTRECORD` naming it.
    pub(super) aborted: Option<u64>,
    /// The last main-fork block inserted: consecutive records mostly touch the same block.
    last_block: Option<(RelFileLocator, u32)>,
    /// Bytes the result may hold (see [`ChangedBlocks::touch_main`]); `None`: no ceiling.
    pub(super) memory_ceiling: Option<u64>,
    pub(super) result: ChangedBlocks,
}

impl Records {
    /// Nothing read yet, for WAL of `pg_major`.
    pub(super) fn new(pg_major: u32) -> Records {
        Records {
            images: if pg_major >= 15 {
                ImageFlags::Pg15
            } else {
                ImageFlags::Pg13
            },
            prev_record: None,
            aborted: None,
            last_block: None,
            memory_ceiling: None,
            result: ChangedBlocks::default(),
        }
    }

    /// `ValidXLogRecordHeader`'s link check, on the first [`RECORD_HEADER_SIZE`] bytes: a
    /// stale record left on a torn or recycled page does not point at the one before it.
    pub(super) fn check_header(&self, lsn: u64, header: &[u8]) -> Result<(), Problem> {
        let prev = u64_at(header, 8);
        match self.prev_record {
            Some(expected) if prev != expected => Err(bad(format!(
                "xl_prev is {}, but the previous record starts at {}",
                Lsn(prev),
                Lsn(expected)
            ))),
            // The first record: its predecessor is unknown, but must come before it.
            None if prev >= lsn => Err(bad(format!(
                "xl_prev {} does not point before the record",
                Lsn(prev)
            ))),
            _ => Ok(()),
        }
    }

    /// Checks one whole record (`ValidXLogRecord`, `DecodeXLogRecord`) and adds what it
    /// changed to the result.
    pub(super) fn decode(&mut self, record: &[u8]) -> Result<After, Problem> {
        let stored = u32_at(record, RECORD_CRC_OFFSET);
        // The payload first, then the header up to the CRC field, as `ValidXLogRecord` does.
        let computed = crc32c::crc32c_append(
            crc32c::crc32c(&record[RECORD_HEADER_SIZE..]),
            &record[..RECORD_CRC_OFFSET],
        );
        if stored != computed {
            return Err(bad(format!(
                "CRC-32C mismatch: the record says {stored:#010X}, its bytes give {computed:#010X}"
            )));
        }
        let info = record[16];
        let rmid = record[17];

        let mut cursor = Cursor {
            bytes: record,
            pos: RECORD_HEADER_SIZE,
        };
        // Bytes of block images, block data and main data the headers announce.
        let mut data_total: u64 = 0;
        let mut main_len: u64 = 0;
        let mut last_block_id: Option<u8> = None;
        let mut last_rel: Option<RelFileLocator> = None;
        // Headers end at the main data header, or where only announced data is left.
        while cursor.left() > data_total {
            let block_id = cursor.u8()?;
            match block_id {
                XLR_BLOCK_ID_DATA_SHORT => {
                    main_len = u64::from(cursor.u8()?);
                    data_total += main_len;
                    break;
                }
                XLR_BLOCK_ID_DATA_LONG => {
                    main_len = u64::from(cursor.u32()?);
                    data_total += main_len;
                    break;
                }
                XLR_BLOCK_ID_ORIGIN => cursor.skip(2)?,
                XLR_BLOCK_ID_TOPLEVEL_XID => cursor.skip(4)?,
                0..=XLR_MAX_BLOCK_ID => {
                    if last_block_id.is_some_and(|last| block_id <= last) {
                        return Err(bad(format!("block reference {block_id} out of order")));
                    }
                    last_block_id = Some(block_id);
                    data_total += self.block_reference(block_id, &mut cursor, &mut last_rel)?;
                }
                _ => return Err(bad(format!("invalid block id {block_id}"))),
            }
        }
        if cursor.left() != data_total {
            return Err(bad(format!(
                "its headers announce {data_total} bytes of block and main data, but {} follow \
                 them within xl_tot_len {}",
                cursor.left(),
                record.len()
            )));
        }
        let main = &record[record.len() - main_len as usize..];
        self.result.records += 1;
        self.result.wal_bytes += record.len() as u64;
        self.contents(rmid, info, main)
    }

    /// Reads the rest of block reference `block_id`'s header (`XLogRecordBlockHeader`, its
    /// image header, the relation unless `BKPBLOCK_SAME_REL` repeats `last_rel`, the block
    /// number) and records the block as changed; returns the bytes of image and data it
    /// announces.
    fn block_reference(
        &mut self,
        block_id: u8,
        cursor: &mut Cursor<'_>,
        last_rel: &mut Option<RelFileLocator>,
    ) -> Result<u64, Problem> {
        let fork_flags = cursor.u8()?;
        let data_len = cursor.u16()?;
        if (fork_flags & BKPBLOCK_HAS_DATA != 0) != (data_len > 0) {
            return Err(bad(format!(
                "block reference {block_id}: BKPBLOCK_HAS_DATA disagrees with its data length \
                 {data_len}"
            )));
        }
        let mut announced = u64::from(data_len);
        if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
            announced += u64::from(self.image_header(block_id, cursor)?);
        }
        let rel = if fork_flags & BKPBLOCK_SAME_REL != 0 {
            last_rel.ok_or_else(|| {
                bad(format!(
                    "block reference {block_id} has BKPBLOCK_SAME_REL but no relation precedes it"
                ))
            })?
        } else {
            cursor.rel()?
        };
        *last_rel = Some(rel);
        let block = cursor.u32()?;
        let fork = fork_flags & BKPBLOCK_FORK_MASK;
        if fork > MAX_FORKNUM {
            return Err(bad(format!("block reference {block_id} names fork {fork}")));
        }
        self.touch(rel, fork, block);
        Ok(announced)
    }

    /// Reads an `XLogRecordBlockImageHeader` (and the hole length of a compressed image with
    /// a hole); returns the image's length in the record.
    fn image_header(&self, block_id: u8, cursor: &mut Cursor<'_>) -> Result<u16, Problem> {
        let length = cursor.u16()?;
        let hole_offset = cursor.u16()?;
        let bimg_info = cursor.u8()?;
        let (has_hole, compressed) = self.images.decode(bimg_info).ok_or_else(|| {
            bad(format!(
                "block reference {block_id}: image flags {bimg_info:#04X} are not ones this \
                 version writes"
            ))
        })?;
        if has_hole && compressed {
            let hole_length = cursor.u16()?;
            if hole_offset == 0 || hole_length == 0 {
                return Err(bad(format!(
                    "block reference {block_id}: compressed image with a hole at offset \
                     {hole_offset} of length {hole_length}"
                )));
            }
        } else if !has_hole && hole_offset != 0 {
            return Err(bad(format!(
                "block reference {block_id}: image without a hole has hole offset {hole_offset}"
            )));
        }
        Ok(length)
    }

    fn touch(&mut self, rel: RelFileLocator, fork: u8, block: u32) {
        if fork != MAIN_FORKNUM {
            self.result.other_forks.insert(rel);
        } else if self.last_block != Some((rel, block)) {
            self.last_block = Some((rel, block));
            self.result.touch_main(rel, block, self.memory_ceiling);
        }
    }
}

/// Bounds-checked reads through a record's headers.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Problem> {
        let end = self.pos + n;
        let taken = self.bytes.get(self.pos..end).ok_or_else(|| {
            bad(format!(
                "its headers run past xl_tot_len {}",
                self.bytes.len()
            ))
        })?;
        self.pos = end;
        Ok(taken)
    }

    fn skip(&mut self, n: usize) -> Result<(), Problem> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8, Problem> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Problem> {
        Ok(u16_at(self.take(2)?, 0))
    }

    fn u32(&mut self) -> Result<u32, Problem> {
        Ok(u32_at(self.take(4)?, 0))
    }

    fn rel(&mut self) -> Result<RelFileLocator, Problem> {
        Ok(rel_at(self.take(12)?, 0))
    }
}
