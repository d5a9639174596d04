//! Every request the repository makes of its store, counted by operation and outcome in
//! process-wide counters: what object storage bills by, and what shows a client retrying
//! harder than it should.
//!
//! [`CountedStore`] decorates any `ObjectStore` (`file://`, S3, GCS, Azure, `InMemory`); the
//! repository wraps each client it builds or is given, so nothing reaches a store uncounted.
//! [`snapshot`] reads the counters (the daemon exports them as
//! `pgward_storage_requests_total{op,result}`).
//!
//! What one count is: one call on the store, as the repository makes it. A call the storage
//! client retries inside itself (`storage.retry`) counts once, with its final outcome; a
//! listing counts once however many pages it reads; a bulk delete counts once per batch the
//! store sends (S3's `DeleteObjects` takes 1,000 objects; elsewhere each object is its own
//! request), and once more for each object it could not delete. A download counts when the
//! store answers, not when its body has been read.
//!
//! Owns nothing else: no retries, no timing, no knowledge of keys.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

/// What a request asked of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestOp {
    /// A whole object.
    Get,
    /// Part of an object: a range, a suffix (a trailer), an offset, or several ranges.
    GetRange,
    /// An object's metadata.
    Head,
    /// A whole object in one request.
    Put,
    /// The start of a multipart upload.
    PutMultipartStart,
    /// One part of a multipart upload.
    PutPart,
    /// The completion of a multipart upload.
    PutMultipartComplete,
    /// The abandonment of a multipart upload.
    PutMultipartAbort,
    /// A listing, whole (however many pages).
    List,
    /// The deletion of one object.
    Delete,
    /// A server-side copy (or rename).
    Copy,
}

impl RequestOp {
    /// Every operation, in the order [`snapshot`] reports them.
    pub const ALL: [RequestOp; 11] = [
        RequestOp::Get,
        RequestOp::GetRange,
        RequestOp::Head,
        RequestOp::Put,
        RequestOp::PutMultipartStart,
        RequestOp::PutPart,
        RequestOp::PutMultipartComplete,
        RequestOp::PutMultipartAbort,
        RequestOp::List,
        RequestOp::Delete,
        RequestOp::Copy,
    ];

    /// The `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOp::Get => "get",
            RequestOp::GetRange => "get_range",
            RequestOp::Head => "head",
            RequestOp::Put => "put",
            RequestOp::PutMultipartStart => "put_multipart_start",
            RequestOp::PutPart => "put_part",
            RequestOp::PutMultipartComplete => "put_multipart_complete",
            RequestOp::PutMultipartAbort => "put_multipart_abort",
            RequestOp::List => "list",
            RequestOp::Delete => "delete",
            RequestOp::Copy => "copy",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestResult {
    Ok,
    /// The object (or what the request needed) is not there.
    NotFound,
    /// A create-only request found the object there (already exists, precondition failed).
    Exists,
    /// Any other failure, after the storage client's own retries.
    Error,
}

impl RequestResult {
    /// Every outcome, in the order [`snapshot`] reports them.
    pub const ALL: [RequestResult; 4] = [
        RequestResult::Ok,
        RequestResult::NotFound,
        RequestResult::Exists,
        RequestResult::Error,
    ];

    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Ok => "ok",
            RequestResult::NotFound => "not_found",
            RequestResult::Exists => "exists",
            RequestResult::Error => "error",
        }
    }

    fn of<T>(result: &object_store::Result<T>) -> RequestResult {
        use object_store::Error as E;
        match result {
            Ok(_) => RequestResult::Ok,
            Err(E::NotFound { .. }) => RequestResult::NotFound,
            Err(E::AlreadyExists { .. } | E::Precondition { .. }) => RequestResult::Exists,
            Err(_) => RequestResult::Error,
        }
    }
}

/// One counter of [`snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCount {
    pub op: RequestOp,
    pub result: RequestResult,
    /// Requests since the process started.
    pub count: u64,
}

const CELLS: usize = RequestOp::ALL.len() * RequestResult::ALL.len();

/// A set of counters, one per (operation, outcome).
#[derive(Debug)]
pub struct Counters([AtomicU64; CELLS]);

impl Counters {
    pub const fn new() -> Counters {
        Counters([const { AtomicU64::new(0) }; CELLS])
    }

    fn add(&self, op: RequestOp, result: RequestResult) {
        let cell = op as usize * RequestResult::ALL.len() + result as usize;
        self.0[cell].fetch_add(1, Ordering::Relaxed);
    }

    /// Every (operation, outcome) with its count, zeros included, in a fixed order.
    pub fn snapshot(&self) -> Vec<RequestCount> {
        RequestOp::ALL
            .iter()
            .flat_map(|&op| RequestResult::ALL.iter().map(move |&result| (op, result)))
            .map(|(op, result)| RequestCount {
                op,
                result,
                count: self.0[op as usize * RequestResult::ALL.len() + result as usize]
                    .load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Default for Counters {
    fn default() -> Counters {
        Counters::new()
    }
}

/// The process's counters: every repository's requests.
static REQUESTS: Counters = Counters::new();

/// The process's request counts: every (operation, outcome), zeros included.
pub fn snapshot() -> Vec<RequestCount> {
    REQUESTS.snapshot()
}

/// `store`, its requests counted in the process's counters.
pub fn counted(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    Arc::new(CountedStore::new(store, &REQUESTS))
}

/// [`counted`] for a store that deletes up to `batch` objects in one request.
pub fn counted_bulk_delete(store: Arc<dyn ObjectStore>, batch: usize) -> Arc<dyn ObjectStore> {
    Arc::new(CountedStore::new(store, &REQUESTS).with_delete_batch(batch))
}

/// An `ObjectStore` that counts the requests made of the one it wraps; see the module
/// documentation.
#[derive(Debug)]
pub struct CountedStore {
    inner: Arc<dyn ObjectStore>,
    counters: &'static Counters,
    /// Objects the store deletes in one request.
    delete_batch: usize,
}

impl CountedStore {
    /// `inner`, counted in `counters` (the process's are [`counted`]'s).
    pub fn new(inner: Arc<dyn ObjectStore>, counters: &'static Counters) -> CountedStore {
        CountedStore {
            inner,
            counters,
            delete_batch: 1,
        }
    }

    /// Counts a bulk delete as one request per `batch` objects (the store's batch size).
    pub fn with_delete_batch(mut self, batch: usize) -> CountedStore {
        self.delete_batch = batch.max(1);
        self
    }

    fn count<T>(&self, op: RequestOp, result: object_store::Result<T>) -> object_store::Result<T> {
        self.counters.add(op, RequestResult::of(&result));
        result
    }
}

/// As the wrapped store: the repository's description of itself shows the store's.
impl fmt::Display for CountedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

/// Which operation a get with `options` is.
fn get_op(options: &GetOptions) -> RequestOp {
    if options.head {
        RequestOp::Head
    } else if options.range.is_some() {
        RequestOp::GetRange
    } else {
        RequestOp::Get
    }
}

#[async_trait::async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for CountedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await;
        self.count(RequestOp::Put, result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let result = self.inner.put_multipart_opts(location, opts).await;
        let upload = self.count(RequestOp::PutMultipartStart, result)?;
        Ok(Box::new(CountedUpload {
            inner: upload,
            counters: self.counters,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = get_op(&options);
        let result = self.inner.get_opts(location, options).await;
        self.count(op, result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let result = self.inner.get_ranges(location, ranges).await;
        self.count(RequestOp::GetRange, result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (counters, batch) = (self.counters, self.delete_batch);
        // The store answers object by object, a batch's answers together and in order: the
        // first answer of each batch stands for its request, and a failure for its own.
        let mut answered = 0usize;
        self.inner
            .delete_stream(locations)
            .inspect(move |result| {
                if answered % batch == 0 || result.is_err() {
                    counters.add(RequestOp::Delete, RequestResult::of(result));
                }
                answered += 1;
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        CountedList::new(self.inner.list(prefix), self.counters).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        CountedList::new(self.inner.list_with_offset(prefix, offset), self.counters).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let result = self.inner.list_with_delimiter(prefix).await;
        self.count(RequestOp::List, result)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let result = self.inner.copy_opts(from, to, options).await;
        self.count(RequestOp::Copy, result)
    }

    /// The wrapped store's own rename (a local rename stays one), counted as a copy.
    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let result = self.inner.rename_opts(from, to, options).await;
        self.count(RequestOp::Copy, result)
    }
}

/// A multipart upload whose parts, completion and abandonment are counted.
#[derive(Debug)]
struct CountedUpload {
    inner: Box<dyn MultipartUpload>,
    counters: &'static Counters,
}

#[async_trait::async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.inner.put_part(data);
        let counters = self.counters;
        Box::pin(async move {
            let result = part.await;
            counters.add(RequestOp::PutPart, RequestResult::of(&result));
            result
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.inner.complete().await;
        self.counters
            .add(RequestOp::PutMultipartComplete, RequestResult::of(&result));
        result
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let result = self.inner.abort().await;
        self.counters
            .add(RequestOp::PutMultipartAbort, RequestResult::of(&result));
        result
    }
}

/// A listing, counted once: at its first error, at its end, or when it is dropped before
/// either (the caller had what it wanted).
struct CountedList {
    inner: BoxStream<'static, object_store::Result<ObjectMeta>>,
    counters: &'static Counters,
    counted: bool,
}

impl CountedList {
    fn new(
        inner: BoxStream<'static, object_store::Result<ObjectMeta>>,
        counters: &'static Counters,
    ) -> CountedList {
        CountedList {
            inner,
            counters,
            counted: false,
        }
    }

    fn record(&mut self, result: RequestResult) {
        if !self.counted {
            self.counted = true;
            self.counters.add(RequestOp::List, result);
        }
    }
}

impl Stream for CountedList {
    type Item = object_store::Result<ObjectMeta>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        match &next {
            Poll::Ready(None) => self.record(RequestResult::Ok),
            Poll::Ready(Some(Err(e))) => {
                let result = match e {
                    object_store::Error::NotFound { .. } => RequestResult::NotFound,
                    _ => RequestResult::Error,
                };
                self.record(result);
            }
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        next
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl Drop for CountedList {
    fn drop(&mut self) {
        self.record(RequestResult::Ok);
    }
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutMode};

    use super::*;

    /// A store counted in counters of its own, so tests running at once do not mix.
    fn store() -> (CountedStore, &'static Counters) {
        let counters: &'static Counters = Box::leak(Box::new(Counters::new()));
        (
            CountedStore::new(Arc::new(InMemory::new()), counters),
            counters,
        )
    }

    /// The non-zero counts, as `(op, result, count)`.
    fn counts(counters: &Counters) -> Vec<(&'static str, &'static str, u64)> {
        counters
            .snapshot()
            .into_iter()
            .filter(|c| c.count > 0)
            .map(|c| (c.op.as_str(), c.result.as_str(), c.count))
            .collect()
    }

    #[tokio::test]
    async fn each_request_counts_once_by_operation_and_outcome() {
        let (store, counters) = store();
        let (a, b) = (Path::from("a"), Path::from("b"));
        store
            .put(&a, PutPayload::from_static(b"hello"))
            .await
            .unwrap();
        let create = PutOptions::from(PutMode::Create);
        let exists = store
            .put_opts(&a, PutPayload::from_static(b"again"), create)
            .await;
        assert!(matches!(
            exists,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        store.get(&a).await.unwrap().bytes().await.unwrap();
        assert!(store.get(&b).await.is_err());
        assert_eq!(store.get_range(&a, 1..3).await.unwrap(), "el");
        store.get_ranges(&a, &[0..1, 2..4]).await.unwrap();
        store.head(&a).await.unwrap();
        assert!(store.head(&b).await.is_err());
        store.copy(&a, &b).await.unwrap();
        let listed: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 2);
        store.list_with_delimiter(None).await.unwrap();
        store.delete(&b).await.unwrap();
        assert_eq!(
            counts(counters),
            [
                ("get", "ok", 1),
                ("get", "not_found", 1),
                ("get_range", "ok", 2),
                ("head", "ok", 1),
                ("head", "not_found", 1),
                ("put", "ok", 1),
                ("put", "exists", 1),
                ("list", "ok", 2),
                ("delete", "ok", 1),
                ("copy", "ok", 1),
            ]
        );
    }

    #[tokio::test]
    async fn failures_count_as_errors_and_refused_preconditions_as_exists() {
        let (store, counters) = store();
        let a = Path::from("a");
        store
            .put(&a, PutPayload::from_static(b"hello"))
            .await
            .unwrap();
        let past_the_end = store.get_range(&a, 100..200).await;
        assert!(past_the_end.is_err());
        let stale = PutOptions::from(PutMode::Update(object_store::UpdateVersion {
            e_tag: Some("not-the-etag".into()),
            version: None,
        }));
        let refused = store
            .put_opts(&a, PutPayload::from_static(b"new"), stale)
            .await;
        assert!(
            matches!(refused, Err(object_store::Error::Precondition { .. })),
            "{refused:?}"
        );
        assert_eq!(
            counts(counters),
            [
                ("get_range", "error", 1),
                ("put", "ok", 1),
                ("put", "exists", 1)
            ]
        );
    }

    #[tokio::test]
    async fn a_multipart_upload_counts_its_start_each_part_and_its_end() {
        let (store, counters) = store();
        let path = Path::from("big");
        let mut upload = store.put_multipart(&path).await.unwrap();
        for part in [b"one".as_slice(), b"two", b"three"] {
            upload
                .put_part(PutPayload::from(part.to_vec()))
                .await
                .unwrap();
        }
        upload.complete().await.unwrap();
        let mut abandoned = store.put_multipart(&Path::from("other")).await.unwrap();
        abandoned
            .put_part(PutPayload::from_static(b"x"))
            .await
            .unwrap();
        abandoned.abort().await.unwrap();
        assert_eq!(
            counts(counters),
            [
                ("put_multipart_start", "ok", 2),
                ("put_part", "ok", 4),
                ("put_multipart_complete", "ok", 1),
                ("put_multipart_abort", "ok", 1),
            ]
        );
        assert_eq!(
            store.get(&path).await.unwrap().bytes().await.unwrap(),
            "onetwothree"
        );
    }

    #[tokio::test]
    async fn a_listing_counts_once_whether_read_to_its_end_or_dropped() {
        let (store, counters) = store();
        for key in ["p/1", "p/2", "p/3"] {
            store
                .put(&Path::from(key), PutPayload::from_static(b"x"))
                .await
                .unwrap();
        }
        let mut listing = store.list(Some(&Path::from("p")));
        listing.next().await.unwrap().unwrap();
        drop(listing);
        let all: Vec<ObjectMeta> = store
            .list_with_offset(Some(&Path::from("p")), &Path::from("p/1"))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
        let deleted: Vec<Path> = store
            .delete_stream(
                futures_util::stream::iter(["p/1", "p/2"].map(|k| Ok(Path::from(k)))).boxed(),
            )
            .try_collect()
            .await
            .unwrap();
        assert_eq!(deleted.len(), 2);
        assert_eq!(
            counts(counters),
            [("put", "ok", 3), ("list", "ok", 2), ("delete", "ok", 2)]
        );
    }

    #[tokio::test]
    async fn a_bulk_delete_counts_once_per_batch_the_store_sends() {
        let (store, counters) = store();
        let store = store.with_delete_batch(2);
        let keys = ["d/1", "d/2", "d/3", "d/4", "d/5"];
        let deleted: Vec<Path> = store
            .delete_stream(futures_util::stream::iter(keys.map(|k| Ok(Path::from(k)))).boxed())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(deleted.len(), 5);
        // Batches of 2, 2 and 1.
        assert_eq!(counts(counters), [("delete", "ok", 3)]);
    }

    #[test]
    fn the_snapshot_has_every_label_pair_and_the_labels_are_the_documented_ones() {
        let all = Counters::new().snapshot();
        assert_eq!(all.len(), 44);
        assert!(all.iter().all(|c| c.count == 0));
        let ops: Vec<&str> = RequestOp::ALL.iter().map(|op| op.as_str()).collect();
        assert_eq!(
            ops,
            [
                "get",
                "get_range",
                "head",
                "put",
                "put_multipart_start",
                "put_part",
                "put_multipart_complete",
                "put_multipart_abort",
                "list",
                "delete",
                "copy"
            ]
        );
        let results: Vec<&str> = RequestResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(results, ["ok", "not_found", "exists", "error"]);
    }
}
