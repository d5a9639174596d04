//! Repository behaviour on `InMemory` and on `LocalFileSystem` in a temp dir: round trips,
//! create-only semantics, corruption, metadata, listing, store building (offline).
//!
//! `objects`: what a put, get, verify, list and delete do; `meta`: `repo.json`; `stores`:
//! clients built from settings, and stores that lack conditional puts or suffix ranges.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::put::ChunkSink;
use super::*;
use crate::secret::Secret;

mod bundle;
mod meta;
mod objects;
mod stores;

const MIB: usize = 1 << 20;

/// Pseudo-random (incompressible) bytes, then a compressible run.
fn content(seed: u64, random: usize, text: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v: Vec<u8> = (0..random).map(|_| rng.u8(..)).collect();
    v.extend((0..text).map(|i| b"pgward WAL "[i % 11]));
    v
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write source");
    path
}

struct Local {
    dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
}

fn local() -> Local {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("local store"));
    Local { dir, store }
}

fn stores() -> Vec<(&'static str, Arc<dyn ObjectStore>, Option<Local>)> {
    let l = local();
    vec![
        ("memory", Arc::new(InMemory::new()), None),
        ("local", l.store.clone(), Some(l)),
    ]
}

fn never() -> CancellationToken {
    CancellationToken::new()
}

const SEGMENT: &str = "wal/00000001/000000010000000000000003";

/// Settings for `url` with nothing else set, codec `codec`.
fn storage(url: &str, codec: Codec) -> StorageConfig {
    StorageConfig {
        url: StorageUrl::parse(url).expect("a valid storage url"),
        s3: S3Config::default(),
        gcs: GcsConfig::default(),
        azure: AzureConfig::default(),
        compression: codec,
        compression_level: 3,
        retry: StorageRetryConfig {
            max_retries: 5,
            initial_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(15),
            timeout: std::time::Duration::from_secs(60),
            idle_timeout: std::time::Duration::from_secs(60),
        },
    }
}
