//! Record assembly: the records of each checked page, put together across page and segment
//! boundaries the way `XLogDecodeNextRecord` does (continuation flags, `xlp_rem_len`, the
//! `XLOG_SWITCH` padding, a record cut off by `XLP_FIRST_IS_OVERWRITE_CONTRECORD`), each
//! whole record handed to `record` once, and where the next one starts. Knows nothing of
//! what a record says.

use super::reader::{
    PageHeader, State, XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD,
};
use super::record::After;
use super::{
    align, bad, len_u32, u32_at, Problem, ScanError, WalScanner, MAX_RECORD_LEN,
    RECORD_HEADER_SIZE, XLOG_BLCKSZ,
};
use crate::postgres::wal::Lsn;

impl WalScanner {
    /// Reads the records of the (checked) page in `self.page`: the rest of the record being
    /// reassembled, then each record starting on the page.
    pub(super) fn read_page(&mut self, page_lsn: u64, header: PageHeader) -> Result<(), ScanError> {
        if let State::InRecord {
            start,
            total,
            header_checked,
        } = self.state
        {
            if header.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                // The rest of this record was lost (a crash mid-record, then recovery wrote
                // new WAL here): it was never replayed, so it changed nothing. Scanning goes
                // on at this page, whose first record must say so (`XLogDecodeNextRecord`'s
                // "goto restart").
                self.records.aborted = Some(start);
                self.record.clear();
                self.state = State::Between(page_lsn);
            } else {
                self.continue_record(page_lsn, header, start, total, header_checked)?;
            }
        }
        self.records_on_page(page_lsn, header)
    }

    /// Adds this page's part of the record at `start`, `total` bytes long, reassembled so
    /// far in `self.record`; reads it once whole.
    fn continue_record(
        &mut self,
        page_lsn: u64,
        header: PageHeader,
        start: u64,
        total: u32,
        header_checked: bool,
    ) -> Result<(), ScanError> {
        let header_len = self.header_len(page_lsn);
        let record_error = |reason: String| ScanError::BadRecord {
            segment: self.segment_of(start),
            lsn: Lsn(start),
            reason,
        };
        if header.info & XLP_FIRST_IS_CONTRECORD == 0 {
            return Err(record_error(format!(
                "it continues on the page at {}, which lacks XLP_FIRST_IS_CONTRECORD",
                Lsn(page_lsn)
            )));
        }
        let left = total - len_u32(&self.record);
        if header.rem_len != left {
            return Err(record_error(format!(
                "the page at {} continues it with xlp_rem_len {}, but {left} of its {total} \
                 bytes are left",
                Lsn(page_lsn),
                header.rem_len
            )));
        }
        let take = u64::from(left).min(XLOG_BLCKSZ - header_len);
        let from = header_len as usize;
        self.record
            .extend_from_slice(&self.page[from..from + take as usize]);
        let mut header_checked = header_checked;
        if !header_checked && self.record.len() >= RECORD_HEADER_SIZE {
            self.records
                .check_header(start, &self.record)
                .map_err(|p| self.problem(start, p))?;
            header_checked = true;
        }
        if self.record.len() < total as usize {
            self.state = State::InRecord {
                start,
                total,
                header_checked,
            };
            return Ok(());
        }
        let record_end = page_lsn + header_len + take;
        if record_end > self.end {
            return Err(self.end_inside_record(start));
        }
        let record = std::mem::take(&mut self.record);
        let after = self.records.decode(&record);
        self.record = record;
        self.record.clear();
        // A rare huge record should not pin its memory for the rest of the scan.
        if self.record.capacity() > 4 * XLOG_BLCKSZ as usize {
            self.record = Vec::new();
        }
        let after = after.map_err(|p| self.problem(start, p))?;
        self.records.prev_record = Some(start);
        self.state = State::Between(self.next_record(record_end, after));
        Ok(())
    }

    /// Reads each record that starts on the page, the last maybe only begun (it continues on
    /// the next page), until the scan leaves the page or reaches `end`.
    fn records_on_page(&mut self, page_lsn: u64, header: PageHeader) -> Result<(), ScanError> {
        let page_end = page_lsn + XLOG_BLCKSZ;
        loop {
            let State::Between(at) = self.state else {
                return Ok(());
            };
            let at = self.past_header(at);
            if at >= self.end {
                self.state = State::Done;
                return Ok(());
            }
            if at >= page_end {
                self.state = State::Between(at);
                return Ok(());
            }
            let total = self.record_length(page_lsn, header, at)?;
            let offset = (at - page_lsn) as usize;
            let on_page = XLOG_BLCKSZ as usize - offset;
            if on_page < total as usize {
                self.record.clear();
                self.record.extend_from_slice(&self.page[offset..]);
                let header_checked = on_page >= RECORD_HEADER_SIZE;
                if header_checked {
                    self.records
                        .check_header(at, &self.record)
                        .map_err(|p| self.problem(at, p))?;
                }
                self.state = State::InRecord {
                    start: at,
                    total,
                    header_checked,
                };
                return Ok(());
            }
            let record_end = at + u64::from(total);
            if record_end > self.end {
                return Err(self.end_inside_record(at));
            }
            let record = &self.page[offset..offset + total as usize];
            let checked = self.records.check_header(at, record);
            let after = checked
                .and_then(|()| self.records.decode(record))
                .map_err(|p| self.problem(at, p))?;
            self.records.prev_record = Some(at);
            self.state = State::Between(self.next_record(record_end, after));
        }
    }

    /// The `xl_tot_len` of a record that must start at `at` on the page at `page_lsn`, after
    /// checking one can start there.
    fn record_length(&self, page_lsn: u64, header: PageHeader, at: u64) -> Result<u32, ScanError> {
        let header_len = self.header_len(page_lsn);
        if header.info & XLP_FIRST_IS_CONTRECORD != 0 {
            let continued_to = header_len + align(u64::from(header.rem_len));
            if at < page_lsn + continued_to {
                return Err(self.problem(
                    at,
                    bad(format!(
                        "the page continues a record from the previous page up to {}, so none \
                         starts here",
                        Lsn(page_lsn + continued_to)
                    )),
                ));
            }
        }
        // Records are 8-aligned, so their first 4 bytes (`xl_tot_len`) are on this page.
        let total = u32_at(&self.page, (at - page_lsn) as usize);
        if total == 0 {
            return Err(ScanError::EndsEarly {
                segment: self.segment_of(at),
                lsn: Lsn(at),
                end: Lsn(self.end),
            });
        }
        if (total as usize) < RECORD_HEADER_SIZE || total > MAX_RECORD_LEN {
            return Err(self.problem(at, bad(format!("invalid xl_tot_len {total}"))));
        }
        Ok(total)
    }

    /// Where the record after one ending at `record_end` starts.
    fn next_record(&self, record_end: u64, after: After) -> u64 {
        match after {
            After::Next => align(record_end),
            // PostgreSQL pads the segment after a switch; the next record opens the next one.
            After::Switch => {
                let seg = u64::from(self.seg_size.bytes());
                record_end.div_ceil(seg) * seg
            }
        }
    }

    /// The record at `start` runs past `end`.
    pub(super) fn end_inside_record(&self, start: u64) -> ScanError {
        ScanError::EndInsideRecord {
            segment: self.segment_of(start),
            lsn: Lsn(start),
            end: Lsn(self.end),
        }
    }

    /// A record problem with where it happened.
    fn problem(&self, lsn: u64, problem: Problem) -> ScanError {
        let segment = self.segment_of(lsn);
        match problem {
            Problem::Bad(reason) => ScanError::BadRecord {
                segment,
                lsn: Lsn(lsn),
                reason,
            },
            Problem::Unsupported { rmid, info, reason } => ScanError::Unsupported {
                segment,
                lsn: Lsn(lsn),
                rmid,
                info,
                reason,
            },
        }
    }
}
