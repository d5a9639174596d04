//! Sorting more items than memory should hold: items gather in memory up to a run's length,
//! full runs are sorted and appended to an unnamed temporary file (JSON, one value after
//! another), and the sorted whole is read back as a merge of the runs, as often as needed.
//! One open file per spill, however many runs it holds: the runs are ranges of it, each read
//! at its own position.
//!
//! A backup lists every file of the data directory, and a data directory may hold millions:
//! with runs on disk, what a backup holds in memory no longer grows with the file count. A
//! list that fits in one run never touches the disk.
//!
//! The files are made with `O_TMPFILE` where the file system has it (`tempfile::tempfile`):
//! they have no name another user could open, replace or link to, and vanish with the
//! process. They go in `TMPDIR` (`/tmp` without it), which the caller documents.
//!
//! Blocking: writing a run and reading the merge do file I/O; [`Spill::push`],
//! [`Spill::finish`] and [`Sorted::stream`] move that off the async runtime, [`Sorted::iter`]
//! is for blocking code.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How two items compare: the order of the sorted whole.
pub type Order<T> = fn(&T, &T) -> Ordering;

/// Runs merged at once at most: past this many, the runs so far are merged into one, so
/// that a merge never holds more open files and read buffers than this.
const MERGE_WIDTH: usize = 64;

/// Read buffer of each run during a merge.
const RUN_READ_BUFFER: usize = 16 * 1024;

/// Items being gathered, to be read back sorted (see the module doc). Fed either from async
/// code ([`Spill::push`], [`Spill::finish`]) or from blocking code (the `_blocking` ones),
/// not both.
pub struct Spill<T> {
    buffer: Vec<T>,
    run_len: usize,
    runs: Vec<Run>,
    /// The run being written on a blocking thread, with the runs before it (async pushes).
    writing: Option<tokio::task::JoinHandle<io::Result<Vec<Run>>>>,
    order: Order<T>,
    len: u64,
}

/// One sorted run: a range of a temporary file, and how many items it holds.
#[derive(Clone)]
struct Run {
    file: Arc<File>,
    start: u64,
    end: u64,
    len: u64,
}

impl<T> Spill<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// An empty spill of items in `order`, holding at most `run_len` of them in memory.
    pub fn new(order: Order<T>, run_len: usize) -> Spill<T> {
        Spill {
            buffer: Vec::new(),
            run_len: run_len.max(1),
            runs: Vec::new(),
            writing: None,
            order,
            len: 0,
        }
    }

    /// Items pushed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `item`; a full run goes to disk on a blocking thread while the next one fills
    /// (the caller waits only when the run before is still being written).
    pub async fn push(&mut self, item: T) -> io::Result<()> {
        self.add(item);
        if self.buffer.len() < self.run_len {
            return Ok(());
        }
        self.written().await?;
        let full = std::mem::take(&mut self.buffer);
        let (order, mut runs) = (self.order, std::mem::take(&mut self.runs));
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let run = write_run(full, order, &runs)?;
            runs.push(run);
            compact(runs, order)
        }));
        Ok(())
    }

    /// Waits for the run being written, if any.
    async fn written(&mut self) -> io::Result<()> {
        if let Some(writing) = self.writing.take() {
            self.runs = writing.await.map_err(io::Error::other)??;
        }
        Ok(())
    }

    /// [`Spill::push`] for blocking code.
    pub fn push_blocking(&mut self, item: T) -> io::Result<()> {
        debug_assert!(self.writing.is_none(), "pushed from async code before");
        self.add(item);
        if self.buffer.len() < self.run_len {
            return Ok(());
        }
        let full = std::mem::take(&mut self.buffer);
        let mut runs = std::mem::take(&mut self.runs);
        let run = write_run(full, self.order, &runs)?;
        runs.push(run);
        self.runs = compact(runs, self.order)?;
        Ok(())
    }

    fn add(&mut self, item: T) {
        if self.buffer.capacity() == 0 {
            self.buffer.reserve_exact(self.run_len.min(1024));
        }
        self.buffer.push(item);
        self.len += 1;
    }

    /// Everything pushed, sorted; the last run is sorted on a blocking thread.
    pub async fn finish(mut self) -> io::Result<Sorted<T>> {
        self.written().await?;
        tokio::task::spawn_blocking(move || self.finish_blocking())
            .await
            .map_err(io::Error::other)?
    }

    /// [`Spill::finish`] for blocking code.
    pub fn finish_blocking(self) -> io::Result<Sorted<T>> {
        debug_assert!(self.writing.is_none(), "pushed from async code before");
        let Spill {
            mut buffer,
            runs,
            order,
            len,
            ..
        } = self;
        if runs.is_empty() {
            buffer.sort_by(order);
            return Ok(Sorted {
                held: Arc::new(buffer),
                runs: Vec::new(),
                order,
                len,
            });
        }
        let mut runs = runs;
        if !buffer.is_empty() {
            let run = write_run(buffer, order, &runs)?;
            runs.push(run);
        }
        Ok(Sorted {
            held: Arc::new(Vec::new()),
            runs,
            order,
            len,
        })
    }
}

/// Sorts `items` and appends them to the file of `runs` (a new temporary file for the first).
fn write_run<T: Serialize>(mut items: Vec<T>, order: Order<T>, runs: &[Run]) -> io::Result<Run> {
    items.sort_by(order);
    let len = items.len() as u64;
    let file = match runs.last() {
        Some(run) => run.file.clone(),
        None => Arc::new(tempfile::tempfile()?),
    };
    write_items(file, items.into_iter().map(Ok), len)
}

/// Appends `items` (in the order given) to `file`, as one run.
fn write_items<T: Serialize>(
    file: Arc<File>,
    items: impl Iterator<Item = io::Result<T>>,
    len: u64,
) -> io::Result<Run> {
    // Only the spill writes, at the end; readers read at their own positions.
    let start = (&*file).seek(SeekFrom::End(0))?;
    let mut out = BufWriter::new(&*file);
    for item in items {
        serde_json::to_writer(&mut out, &item?)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    let end = (&*file).stream_position()?;
    Ok(Run {
        file,
        start,
        end,
        len,
    })
}

/// With [`MERGE_WIDTH`] runs, merges them into one, in a new temporary file (the old one,
/// the runs' only holder, goes).
fn compact<T: DeserializeOwned + Serialize>(
    runs: Vec<Run>,
    order: Order<T>,
) -> io::Result<Vec<Run>> {
    if runs.len() < MERGE_WIDTH {
        return Ok(runs);
    }
    let len = runs.iter().map(|r| r.len).sum();
    let merged = Merge::new(&runs, order)?;
    let file = Arc::new(tempfile::tempfile()?);
    Ok(vec![write_items(file, merged, len)?])
}

/// What a [`Spill`] gathered, sorted: read it with [`Sorted::iter`], as often as needed.
/// Cheap to clone (the runs are shared).
pub struct Sorted<T> {
    /// Everything, when it fit in one run (no file then).
    held: Arc<Vec<T>>,
    runs: Vec<Run>,
    order: Order<T>,
    len: u64,
}

impl<T> Clone for Sorted<T> {
    fn clone(&self) -> Self {
        Sorted {
            held: self.held.clone(),
            runs: self.runs.clone(),
            order: self.order,
            len: self.len,
        }
    }
}

impl<T: DeserializeOwned + Clone> Sorted<T> {
    /// How many items there are.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The items in order. Blocking when they were spilled.
    pub fn iter(&self) -> io::Result<Box<dyn Iterator<Item = io::Result<T>> + Send + '_>>
    where
        T: Send + Sync,
    {
        if self.runs.is_empty() {
            return Ok(Box::new(self.held.iter().cloned().map(Ok)));
        }
        Ok(Box::new(Merge::new(&self.runs, self.order)?))
    }

    /// The items in order, for async code: read on a blocking thread at most `ahead` items
    /// before the reader. Reading stops at the first error, or when the stream is dropped;
    /// past its end the stream keeps saying so.
    pub fn stream(self, ahead: usize) -> impl Stream<Item = io::Result<T>> + Send + 'static
    where
        T: Send + Sync + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<T>>(ahead.max(1));
        tokio::task::spawn_blocking(move || {
            let items = match self.iter() {
                Ok(items) => items,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            for item in items {
                let failed = item.is_err();
                // Nobody reads on: the stream was dropped.
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        // Fused: it may be asked again after its end.
        futures_util::StreamExt::fuse(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|i| (i, rx))
        }))
    }
}

/// A k-way merge of sorted runs.
struct Merge<T> {
    readers: Vec<RunReader<T>>,
    heap: BinaryHeap<Head<T>>,
    order: Order<T>,
    failed: bool,
}

type RunReader<T> =
    serde_json::StreamDeserializer<'static, serde_json::de::IoRead<BufReader<PositionedReader>>, T>;

/// The next item of one run, ordered for a min-heap (ties: the earlier run first).
struct Head<T> {
    item: T,
    run: usize,
    order: Order<T>,
}

impl<T> PartialEq for Head<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Head<T> {}
impl<T> PartialOrd for Head<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Head<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.order)(&other.item, &self.item).then(other.run.cmp(&self.run))
    }
}

impl<T: DeserializeOwned> Merge<T> {
    fn new(runs: &[Run], order: Order<T>) -> io::Result<Merge<T>> {
        let mut readers: Vec<RunReader<T>> = runs
            .iter()
            .map(|run| {
                let reader = PositionedReader {
                    file: run.file.clone(),
                    at: run.start,
                    end: run.end,
                };
                serde_json::Deserializer::from_reader(BufReader::with_capacity(
                    RUN_READ_BUFFER,
                    reader,
                ))
                .into_iter()
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (run, reader) in readers.iter_mut().enumerate() {
            if let Some(item) = reader.next() {
                heap.push(Head {
                    item: item.map_err(io::Error::other)?,
                    run,
                    order,
                });
            }
        }
        Ok(Merge {
            readers,
            heap,
            order,
            failed: false,
        })
    }
}

impl<T: DeserializeOwned> Iterator for Merge<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<io::Result<T>> {
        if self.failed {
            return None;
        }
        let Head { item, run, .. } = self.heap.pop()?;
        match self.readers[run].next() {
            Some(Ok(next)) => self.heap.push(Head {
                item: next,
                run,
                order: self.order,
            }),
            Some(Err(e)) => {
                self.failed = true;
                return Some(Err(io::Error::other(e)));
            }
            None => {}
        }
        Some(Ok(item))
    }
}

/// Reads a range of a shared file from its own position (`pread`), so that the readers of
/// the runs of one file do not move each other.
struct PositionedReader {
    file: Arc<File>,
    at: u64,
    end: u64,
}

impl Read for PositionedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = usize::try_from(self.end - self.at).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_value(a: &(u32, String), b: &(u32, String)) -> Ordering {
        a.0.cmp(&b.0)
    }

    fn item(n: u32) -> (u32, String) {
        (n, format!("item {n}"))
    }

    /// Numbers 0..n in a scrambled order.
    fn scrambled(n: u32) -> impl Iterator<Item = u32> {
        (0..n).map(move |i| (i * 7919) % n)
    }

    #[test]
    fn a_list_that_fits_one_run_stays_in_memory() {
        let mut spill = Spill::new(by_value, 100);
        for n in scrambled(50) {
            spill.push_blocking(item(n)).unwrap();
        }
        let sorted = spill.finish_blocking().unwrap();
        assert!(sorted.runs.is_empty());
        let read: Vec<u32> = sorted.iter().unwrap().map(|i| i.unwrap().0).collect();
        assert_eq!(read, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn runs_on_disk_merge_in_order_and_read_again() {
        let mut spill = Spill::new(by_value, 7);
        for n in scrambled(1000) {
            spill.push_blocking(item(n)).unwrap();
        }
        assert_eq!(spill.len(), 1000);
        let sorted = spill.finish_blocking().unwrap();
        // 143 runs of 7 were compacted each time 64 had gathered; one file holds them all.
        assert!(sorted.runs.len() < MERGE_WIDTH, "{}", sorted.runs.len());
        assert!(sorted
            .runs
            .iter()
            .all(|r| Arc::ptr_eq(&r.file, &sorted.runs[0].file)));
        for _ in 0..2 {
            let read: Vec<(u32, String)> = sorted.iter().unwrap().map(|i| i.unwrap()).collect();
            assert_eq!(read, (0..1000).map(item).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn pushes_from_async_code_write_runs_off_the_runtime() {
        let mut spill = Spill::new(by_value, 10);
        for n in scrambled(95) {
            spill.push(item(n)).await.unwrap();
        }
        let sorted = spill.finish().await.unwrap();
        assert_eq!(sorted.runs.len(), 10, "9 full runs and the rest");
        let read: Vec<u32> = sorted.iter().unwrap().map(|i| i.unwrap().0).collect();
        assert_eq!(read, (0..95).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_stream_reads_the_runs_in_order_off_the_runtime() {
        use futures_util::StreamExt;
        let mut spill = Spill::new(by_value, 10);
        for n in scrambled(95) {
            spill.push(item(n)).await.unwrap();
        }
        let sorted = spill.finish().await.unwrap();
        let read: Vec<u32> = sorted.stream(3).map(|i| i.unwrap().0).collect().await;
        assert_eq!(read, (0..95).collect::<Vec<_>>());
    }

    #[test]
    fn equal_items_keep_the_order_they_came_in() {
        let mut spill = Spill::new(by_value, 3);
        for i in 0..10 {
            spill.push_blocking((1, format!("{i}"))).unwrap();
        }
        let sorted = spill.finish_blocking().unwrap();
        let read: Vec<String> = sorted.iter().unwrap().map(|i| i.unwrap().1).collect();
        assert_eq!(read, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    }
}
