//! Staging the segment postgres is writing, so that archiving it costs milliseconds.
//!
//! Compressing and storing a finished 16 MiB segment takes tens of milliseconds, and postgres
//! waits that long on each `archive_command`. Most of a segment is final long before the
//! segment is: WAL is written front to back, and a page is complete once postgres has begun
//! the page after it. The stager follows the segment after the newest one archived, feeds
//! each complete page into a [`StagedObject`] (hashed, compressed, written out) as it
//! appears, and keeps a copy of what it fed.
//!
//! When postgres then asks for the segment, [`Stage::complete`] reads the finished file
//! once, compares it with what was staged, and appends only the pages that came since. The
//! comparison is what makes this safe rather than the page heuristic: if anything staged
//! differs from the final file (postgres rewrote WAL after a crash restart, say), the stage is
//! dropped and the segment is archived whole, as without staging.
//!
//! Memory: one segment's copy (`wal_segment_size`, 16 MiB by default), plus the compressed
//! segment for object stores (a `file://` repository stages into a temp file instead).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::postgres::wal::{SegmentName, WalFileName, WalSegSize};
use crate::postgres::wal_header::{check_segment_header, ExpectedHeader, LONG_HEADER_SIZE};
use crate::repo::{layout, Repo, StagedObject};

/// Most bytes fed per step while holding the lock, so a request waits at most that long.
const SLICE: usize = 256 << 10;
/// Pause after a step that fed pages; idle steps back off from there to [`IDLE_MAX`].
const BUSY_PAUSE: Duration = Duration::from_millis(2);
const IDLE_MAX: Duration = Duration::from_millis(100);
/// Offset of `xlp_pageaddr` in every page header (after magic, info and timeline).
const PAGEADDR_OFFSET: usize = 8;

/// Counters for `pgward status`.
#[derive(Debug, Default)]
pub struct StageCounters {
    /// Segments archived from a stage.
    pub used: AtomicU64,
    /// Stages dropped because the finished file differed from what was staged.
    pub discarded: AtomicU64,
}

/// Handle to the staging thread. Cheap to clone.
#[derive(Clone)]
pub struct SegmentStager {
    shared: Arc<Shared>,
}

struct Shared {
    repo: Repo,
    wal_dir: PathBuf,
    system_identifier: u64,
    seg_size: WalSegSize,
    state: Mutex<State>,
    counters: StageCounters,
}

#[derive(Default)]
struct State {
    /// The segment to stage: the one after the newest segment archived.
    target: Option<SegmentName>,
    stage: Option<Stage>,
    /// The copy buffer of the last stage, reused so each segment does not fault in a new one.
    spare: Vec<u8>,
}

/// One segment being staged.
pub struct Stage {
    name: SegmentName,
    file: File,
    object: StagedObject,
    /// Everything fed to `object`, for the comparison with the finished file.
    staged: Vec<u8>,
    page_size: usize,
    magic: u16,
    /// LSN of the segment's first byte.
    start: u64,
    seg_size: usize,
}

impl SegmentStager {
    /// Starts staging in `wal_dir` on a thread of its own; it ends when `cancel` fires.
    pub fn start(
        repo: Repo,
        wal_dir: &Path,
        system_identifier: u64,
        seg_size: WalSegSize,
        cancel: CancellationToken,
    ) -> Result<SegmentStager> {
        let stager = SegmentStager {
            shared: Arc::new(Shared {
                repo,
                wal_dir: wal_dir.to_owned(),
                system_identifier,
                seg_size,
                state: Mutex::new(State::default()),
                counters: StageCounters::default(),
            }),
        };
        let this = stager.clone();
        std::thread::Builder::new()
            .name("pgward-wal-stage".into())
            .spawn(move || this.run(&cancel))
            .context("start the WAL staging thread")?;
        Ok(stager)
    }

    /// Tells the stager that `file_name` is archived: staging moves on to the segment after
    /// it, unless a newer one is the target already.
    pub fn archived(&self, file_name: &str) {
        let Ok(WalFileName::Segment(segment)) = WalFileName::parse(file_name) else {
            return;
        };
        let Ok(next) = segment.next_segment(self.shared.seg_size) else {
            return;
        };
        let mut state = self.lock();
        if state.target.is_none_or(|t| t < next) {
            state.target = Some(next);
        }
    }

    /// The stage of `file_name`, if it was being staged. Blocking: waits for a feeding step
    /// in progress (at most one feeding slice, 256 KiB).
    pub fn take(&self, file_name: &str) -> Option<Stage> {
        let mut state = self.lock();
        let name = state.stage.as_ref()?.name;
        if name.to_string() != file_name {
            return None;
        }
        // Postgres is done with it: stage the next one rather than this one again.
        if let Ok(next) = name.next_segment(self.shared.seg_size) {
            state.target = state.target.max(Some(next));
        }
        state.stage.take()
    }

    /// Whether `file_name` is the segment being staged. Blocking like [`SegmentStager::take`].
    pub fn is_staging(&self, file_name: &str) -> bool {
        self.lock()
            .stage
            .as_ref()
            .is_some_and(|s| s.name.to_string() == file_name)
    }

    /// Counts the outcome of completing a stage.
    pub fn record(&self, used: bool) {
        let counter = match used {
            true => &self.shared.counters.used,
            false => &self.shared.counters.discarded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (segments archived from a stage, stages discarded).
    pub fn counts(&self) -> (u64, u64) {
        let c = &self.shared.counters;
        (
            c.used.load(Ordering::Relaxed),
            c.discarded.load(Ordering::Relaxed),
        )
    }

    /// Returns a finished stage's buffer for reuse.
    pub fn recycle(&self, buffer: Vec<u8>) {
        let mut state = self.lock();
        if buffer.capacity() > state.spare.capacity() {
            state.spare = buffer;
        }
    }

    fn run(&self, cancel: &CancellationToken) {
        self.shared.repo.remove_stale_staging(layout::WAL_PREFIX);
        self.start_from_archive_status();
        let mut pause = BUSY_PAUSE;
        while !cancel.is_cancelled() {
            pause = match self.step() {
                // A whole slice: postgres is ahead, catch up without pausing (the lock was
                // released in between, so a request is not held up).
                Ok(fed) if fed >= SLICE => continue,
                Ok(0) => (pause * 2).min(IDLE_MAX),
                Ok(_) => BUSY_PAUSE,
                Err(e) => {
                    // Staging is an optimisation: on trouble the segment is archived whole.
                    tracing::debug!("WAL staging paused: {e:#}");
                    self.lock().stage = None;
                    IDLE_MAX
                }
            };
            std::thread::sleep(pause);
        }
        self.lock().stage = None;
    }

    /// The first target, before anything was archived by this process: after the newest
    /// segment postgres has marked ready or done.
    fn start_from_archive_status(&self) {
        let Ok(entries) = std::fs::read_dir(self.shared.wal_dir.join("archive_status")) else {
            return;
        };
        let newest = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let stem = name
                    .strip_suffix(".ready")
                    .or_else(|| name.strip_suffix(".done"))?;
                SegmentName::parse(stem).ok()
            })
            .max();
        if let Some(newest) = newest {
            self.archived(&newest.to_string());
        }
    }

    /// One round: begins the target's stage when its file has begun, then feeds complete
    /// pages. Returns the bytes fed.
    fn step(&self) -> Result<usize> {
        let mut state = self.lock();
        let Some(target) = state.target else {
            return Ok(0);
        };
        if state.stage.as_ref().is_some_and(|s| s.name != target) {
            // Archived by another path, or its timeline ended: no one will ask for it.
            state.stage = None;
        }
        if state.stage.is_none() {
            let spare = std::mem::take(&mut state.spare);
            match self.begin(target, spare)? {
                Some(stage) => state.stage = Some(stage),
                None => return Ok(0),
            }
        }
        let stage = state.stage.as_mut().expect("set above");
        stage.feed_complete_pages()
    }

    /// A stage for `name` once postgres has begun writing it, `None` before that.
    fn begin(&self, name: SegmentName, mut buffer: Vec<u8>) -> Result<Option<Stage>> {
        let shared = &self.shared;
        let path = shared.wal_dir.join(name.to_string());
        // Never through a symlink: the server's user can put one where the segment goes.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .and_then(|file| match file.metadata()?.is_file() {
                true => Ok(file),
                false => Err(io::Error::other("not a regular file")),
            });
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        };
        let mut head = [0u8; LONG_HEADER_SIZE];
        if file.read_exact_at(&mut head, 0).is_err() {
            return Ok(None);
        }
        let expected = ExpectedHeader {
            system_id: shared.system_identifier,
            tli: name.tli(),
            segno: name.segno(shared.seg_size)?,
            seg_size: shared.seg_size,
        };
        // A recycled or pre-allocated file carries an old page address (or zeros) until
        // postgres writes the segment's first page.
        let Ok(header) = check_segment_header(&head, &expected) else {
            return Ok(None);
        };
        let page_size = header.xlog_blcksz as usize;
        let seg_size = shared.seg_size.bytes() as usize;
        if !page_size.is_power_of_two() || page_size < 1024 || seg_size % page_size != 0 {
            bail!("unexpected WAL page size {page_size} in {name}");
        }
        let object = shared.repo.stage(&layout::wal_key(&name.to_string())?)?;
        buffer.clear();
        buffer.reserve(seg_size);
        tracing::trace!(segment = %name, "staging");
        Ok(Some(Stage {
            name,
            file,
            object,
            staged: buffer,
            page_size,
            magic: header.magic,
            start: name.start_lsn(shared.seg_size)?.0,
            seg_size,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A stage is consistent between steps; a poisoned lock holds no half-made state
        // that the comparison at completion would not catch.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Stage {
    /// Feeds the pages that are complete (postgres has begun the page after them), at most
    /// one [`SLICE`]; returns how much. The last page of the segment is left to
    /// [`Stage::complete`].
    fn feed_complete_pages(&mut self) -> Result<usize> {
        let fed = self.staged.len();
        let pages_left = (self.seg_size - fed) / self.page_size;
        // Headers first, one small read each, content after: a page whose successor has a
        // header was complete before that header was written, so reading in this order never
        // catches a page half-written. Most rounds find nothing new and cost one small read.
        let mut written = 0;
        while written < pages_left.min(SLICE / self.page_size + 1)
            && self.is_written(fed + written * self.page_size)?
        {
            written += 1;
        }
        let complete = written.saturating_sub(1) * self.page_size;
        if complete == 0 {
            return Ok(0);
        }
        self.staged.resize(fed + complete, 0);
        let read = read_at_most(&self.file, &mut self.staged[fed..], fed as u64);
        if !matches!(read, Ok(n) if n == complete) {
            self.staged.truncate(fed);
            return Err(read
                .err()
                .unwrap_or_else(|| io::ErrorKind::UnexpectedEof.into()))
            .with_context(|| format!("read WAL segment {}", self.name));
        }
        self.object.append(&self.staged[fed..])?;
        Ok(complete)
    }

    /// Whether postgres has written the page at segment offset `offset` in this segment's
    /// current life: its header carries this file's magic and the page's own address.
    fn is_written(&self, offset: usize) -> Result<bool> {
        let mut header = [0u8; PAGEADDR_OFFSET + 8];
        match self.file.read_exact_at(&mut header, offset as u64) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => {
                return Err(e).with_context(|| format!("read WAL segment {}", self.name));
            }
        }
        let addr = self.start + offset as u64;
        Ok(u16::from_ne_bytes([header[0], header[1]]) == self.magic
            && header[PAGEADDR_OFFSET..] == addr.to_ne_bytes())
    }

    /// Reads the finished segment at `path` once: `Some` (ready to commit) when it starts with
    /// exactly what was staged, with the rest appended; `None` when it differs, and the
    /// copy buffer for reuse either way. Blocking.
    pub fn complete(mut self, file: &File, path: &Path) -> Result<(Option<StagedObject>, Vec<u8>)> {
        let mut chunk = vec![0u8; SLICE];
        let mut offset = 0usize;
        loop {
            let n = read_at_most(file, &mut chunk, offset as u64)
                .with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                break;
            }
            let data = &chunk[..n];
            let staged = self.staged.get(offset..).unwrap_or_default();
            let staged_here = staged.len().min(n);
            if data[..staged_here] != staged[..staged_here] {
                tracing::warn!(
                    segment = %self.name,
                    "WAL segment changed after its pages were staged (a crash restart \
                     rewrites WAL); archiving it whole instead"
                );
                return Ok((None, self.staged));
            }
            self.object.append(&data[staged_here..])?;
            offset += n;
        }
        if offset != self.seg_size {
            tracing::warn!(segment = %self.name, bytes = offset, "WAL segment has an unexpected size; archiving it whole instead");
            return Ok((None, self.staged));
        }
        Ok((Some(self.object), self.staged))
    }
}

/// Fills `buf` from `file` at `offset` as far as the file goes.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;
    use crate::postgres::wal::TimelineId;
    use crate::repo::Codec;

    const SYSID: u64 = 7_300_000_000_000_000_001;
    const PAGE: usize = 8192;
    const MAGIC: u16 = 0xD110;
    /// Larger than a feeding slice, so completion crosses slices.
    const SEG: usize = 4 << 20;

    fn seg_size() -> WalSegSize {
        WalSegSize::new(SEG as u32).unwrap()
    }

    /// Page `i` of segment 3 on timeline 1, as postgres would write it: header, then
    /// content that differs per page.
    fn page(i: usize) -> Vec<u8> {
        let mut p = vec![(i % 251) as u8; PAGE];
        let start = 3 * SEG as u64;
        p[0..2].copy_from_slice(&MAGIC.to_ne_bytes());
        let info: u16 = if i == 0 { 0x0002 } else { 0 };
        p[2..4].copy_from_slice(&info.to_ne_bytes());
        p[4..8].copy_from_slice(&1u32.to_ne_bytes());
        p[8..16].copy_from_slice(&(start + (i * PAGE) as u64).to_ne_bytes());
        if i == 0 {
            p[24..32].copy_from_slice(&SYSID.to_ne_bytes());
            p[32..36].copy_from_slice(&(SEG as u32).to_ne_bytes());
            p[36..40].copy_from_slice(&(PAGE as u32).to_ne_bytes());
        }
        p
    }

    /// A stager over a memory repository, not running its thread, following segment 3.
    fn stager(wal_dir: &Path) -> SegmentStager {
        let repo = Repo::open_with_store(Arc::new(InMemory::new()), "", Codec::Zstd, 3);
        let stager = SegmentStager {
            shared: Arc::new(Shared {
                repo,
                wal_dir: wal_dir.to_owned(),
                system_identifier: SYSID,
                seg_size: seg_size(),
                state: Mutex::new(State::default()),
                counters: StageCounters::default(),
            }),
        };
        stager.archived(&segment(2).to_string());
        stager
    }

    fn segment(n: u64) -> SegmentName {
        SegmentName::new(
            TimelineId(1),
            crate::postgres::wal::SegmentNo(n),
            seg_size(),
        )
        .unwrap()
    }

    /// Writes pages `from..to` into the segment file, the rest of the file as a recycled
    /// file would have it (stale bytes).
    fn write_pages(path: &Path, from: usize, to: usize) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap();
        file.set_len(SEG as u64).unwrap();
        for i in from..to {
            file.write_all_at(&page(i), (i * PAGE) as u64).unwrap();
        }
    }

    fn feed_until_idle(stager: &SegmentStager) {
        while stager.step().unwrap() > 0 {}
    }

    #[tokio::test]
    async fn a_staged_segment_completes_to_the_finished_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment(3).to_string());
        let stager = stager(dir.path());
        // Nothing written yet: a recycled file of stale bytes is not staged.
        std::fs::write(&path, vec![7u8; SEG]).unwrap();
        assert_eq!(stager.step().unwrap(), 0);
        assert!(stager.lock().stage.is_none());

        write_pages(&path, 0, 40);
        feed_until_idle(&stager);
        // The last written page may still grow: it is not staged.
        assert_eq!(
            stager.lock().stage.as_ref().unwrap().staged.len(),
            39 * PAGE
        );
        write_pages(&path, 40, SEG / PAGE);
        feed_until_idle(&stager);
        assert_eq!(
            stager.lock().stage.as_ref().unwrap().staged.len(),
            SEG - PAGE
        );

        let stage = stager.take(&segment(3).to_string()).expect("staged");
        let (object, _) = stage.complete(&File::open(&path).unwrap(), &path).unwrap();
        let object = object.expect("the file matches what was staged");
        let repo = stager.shared.repo.clone();
        object.commit(&CancellationToken::new()).await.unwrap();
        let key = layout::wal_key(&segment(3).to_string()).unwrap();
        let stored = repo.get_bytes(&key).await.unwrap().unwrap();
        assert!(stored == std::fs::read(&path).unwrap());
    }

    #[tokio::test]
    async fn a_segment_finished_quickly_completes_from_a_short_stage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment(3).to_string());
        let stager = stager(dir.path());
        write_pages(&path, 0, 40);
        feed_until_idle(&stager);
        // A switch fills the rest of the segment at once.
        write_pages(&path, 40, SEG / PAGE);
        let stage = stager.take(&segment(3).to_string()).expect("staged");
        let (object, _) = stage.complete(&File::open(&path).unwrap(), &path).unwrap();
        let mut object = object.expect("the file matches what was staged");
        assert_eq!(object.len(), SEG as u64);
        assert!(!object.is_empty());
        // Postgres is done with segment 3: the stager moves on rather than stage it again.
        assert_eq!(stager.lock().target, Some(segment(4)));
        object.append(b"").unwrap();
    }

    #[tokio::test]
    async fn a_segment_that_changed_after_staging_is_not_completed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment(3).to_string());
        let stager = stager(dir.path());
        write_pages(&path, 0, 64);
        feed_until_idle(&stager);
        // Postgres rewrites WAL after a crash restart: a staged page changes.
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(b"rewritten", (10 * PAGE + 100) as u64)
                .unwrap();
        }
        write_pages(&path, 64, SEG / PAGE);
        let stage = stager.take(&segment(3).to_string()).expect("staged");
        let (object, buffer) = stage.complete(&File::open(&path).unwrap(), &path).unwrap();
        assert!(object.is_none());
        assert!(buffer.capacity() >= 63 * PAGE);
    }

    #[test]
    fn the_target_only_moves_forward_and_follows_new_timelines() {
        let dir = tempfile::tempdir().unwrap();
        let stager = stager(dir.path());
        stager.archived(&segment(1).to_string());
        assert_eq!(stager.lock().target, Some(segment(3)));
        stager.archived(&format!("{}.partial", segment(5)));
        stager.archived("00000002.history");
        assert_eq!(stager.lock().target, Some(segment(3)));
        let on_tli_2 = SegmentName::new(
            TimelineId(2),
            crate::postgres::wal::SegmentNo(3),
            seg_size(),
        )
        .unwrap();
        stager.archived(&on_tli_2.to_string());
        assert_eq!(
            stager.lock().target.unwrap().to_string(),
            "000000020000000000000004"
        );
    }
}
