//! Repository behaviour on `InMemory` and on `LocalFileSystem` in a temp dir: round trips,
//! create-only semantics, corruption, metadata, listing, store building (offline).

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::ObjectStore;

use super::*;
use crate::secret::Secret;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_every_codec_small_and_multipart() {
    let scratch = tempfile::tempdir().expect("temp dir");
    // 10 MiB of random bytes encode above SINGLE_PUT_MAX whatever the codec: a multipart
    // upload. The small file is one put.
    let big = content(1, 10 * MIB, 3 * MIB);
    let small = content(2, 100_000, 2 * MIB);
    let big_src = write_file(scratch.path(), "big", &big);
    let small_src = write_file(scratch.path(), "small", &small);
    for (name, store, _keep) in stores() {
        for codec in Codec::ALL {
            let repo = Repo::open_with_store(store.clone(), "cluster/a", codec, 3);
            for (src, data, label) in [(&big_src, &big, "big"), (&small_src, &small, "small")] {
                let key = format!("{}-{label}-{}", SEGMENT, codec.name());
                let outcome = repo
                    .put_file_create(&key, src, &never())
                    .await
                    .expect("put");
                let PutOutcome::Created {
                    checksum,
                    stored_bytes,
                } = outcome
                else {
                    panic!("{name} {codec:?}: expected created, got {outcome:?}");
                };
                assert_eq!(checksum.0, *blake3::hash(data).as_bytes());
                let head = store
                    .head(&repo.path(&key, codec).expect("path"))
                    .await
                    .expect("stored under its codec extension");
                assert_eq!(head.size, stored_bytes, "{name} {codec:?} {label}");
                if label == "small" && codec != Codec::None {
                    assert!(stored_bytes < data.len() as u64 / 2, "compressed");
                }
                assert_eq!(repo.exists(&key).await.expect("exists"), Some(checksum));
                let dest = scratch.path().join(format!("out-{name}-{label}"));
                assert!(repo.get_to_file(&key, &dest, &never()).await.expect("get"));
                assert!(
                    std::fs::read(&dest).expect("read back") == **data,
                    "{name} {codec:?} {label}: content differs"
                );
            }
        }
    }
    // Only the sources and the outputs: no temp files left behind.
    let mut names: Vec<String> = std::fs::read_dir(scratch.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "big",
            "out-local-big",
            "out-local-small",
            "out-memory-big",
            "out-memory-small",
            "small"
        ]
    );
}

#[tokio::test]
async fn create_only_identical_and_conflict() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let a = write_file(scratch.path(), "a", &content(3, 1000, 50_000));
    let b = write_file(scratch.path(), "b", &content(4, 1000, 50_000));
    for (name, store, _keep) in stores() {
        let repo = Repo::open_with_store(store.clone(), "", Codec::Zstd, 3);
        let first = repo
            .put_file_create(SEGMENT, &a, &never())
            .await
            .expect("put");
        assert!(matches!(first, PutOutcome::Created { .. }), "{name}");
        let again = repo
            .put_file_create(SEGMENT, &a, &never())
            .await
            .expect("again");
        assert_eq!(
            again,
            PutOutcome::AlreadyIdentical {
                checksum: first.checksum()
            }
        );
        match repo.put_file_create(SEGMENT, &b, &never()).await {
            Err(RepoError::Conflict { key, existing, new }) => {
                assert_eq!(key, SEGMENT);
                assert_eq!(existing, first.checksum());
                assert_eq!(
                    new.0,
                    *blake3::hash(&std::fs::read(&b).expect("b")).as_bytes()
                );
                assert!(RepoError::Conflict { key, existing, new }.is_permanent());
            }
            other => panic!("{name}: expected a conflict, got {other:?}"),
        }
        // A repo now writing lz4 still sees the zstd object: create-only spans codecs.
        let lz4 = Repo::open_with_store(store.clone(), "", Codec::Lz4, 3);
        assert!(matches!(
            lz4.put_file_create(SEGMENT, &a, &never()).await,
            Ok(PutOutcome::AlreadyIdentical { .. })
        ));
        assert!(matches!(
            lz4.put_file_create(SEGMENT, &b, &never()).await,
            Err(RepoError::Conflict { .. })
        ));
        // The conditional put itself (no prior check) is create-only too.
        let digest = frame::digest(&b"x"[..]).expect("digest");
        let (_, encoded) = frame::encode_bytes(b"y", Codec::Zstd, 3).expect("encode");
        let path = repo.path(SEGMENT, Codec::Zstd).expect("path");
        let err = repo
            .put_encoded(
                SEGMENT,
                &path,
                vec![Bytes::from(encoded)],
                digest,
                PutMode::Create,
            )
            .await
            .expect_err("conflict");
        assert!(matches!(err, RepoError::Conflict { .. }), "{name}: {err}");
        // The stored object is still the first one.
        let dest = scratch.path().join("check");
        repo.get_to_file(SEGMENT, &dest, &never())
            .await
            .expect("get");
        assert_eq!(
            std::fs::read(&dest).expect("read"),
            std::fs::read(&a).expect("a")
        );
    }
}

#[tokio::test]
async fn put_bytes_modes_and_get_bytes() {
    let repo = Repo::open_with_store(Arc::new(InMemory::new()), "p", Codec::Zstd, 3);
    assert_eq!(
        repo.get_bytes("backups/x/manifest.json")
            .await
            .expect("get"),
        None
    );
    let created = repo
        .put_bytes("backups/x/manifest.json", b"one".to_vec(), PutMode::Create)
        .await
        .expect("create");
    assert!(matches!(created, PutOutcome::Created { .. }));
    assert!(matches!(
        repo.put_bytes("backups/x/manifest.json", b"one".to_vec(), PutMode::Create)
            .await,
        Ok(PutOutcome::AlreadyIdentical { .. })
    ));
    assert!(matches!(
        repo.put_bytes("backups/x/manifest.json", b"two".to_vec(), PutMode::Create)
            .await,
        Err(RepoError::Conflict { .. })
    ));
    repo.put_bytes(
        "backups/x/manifest.json",
        b"two".to_vec(),
        PutMode::Overwrite,
    )
    .await
    .expect("overwrite");
    assert_eq!(
        repo.get_bytes("backups/x/manifest.json")
            .await
            .expect("get"),
        Some(b"two".to_vec())
    );
    // Empty content round-trips too.
    repo.put_bytes("empty", Vec::new(), PutMode::Create)
        .await
        .expect("empty");
    assert_eq!(
        repo.get_bytes("empty").await.expect("get"),
        Some(Vec::new())
    );
}

#[tokio::test]
async fn absent_objects() {
    let scratch = tempfile::tempdir().expect("temp dir");
    for (_, store, _keep) in stores() {
        let repo = Repo::open_with_store(store, "x", Codec::Zstd, 3);
        let dest = scratch.path().join("never");
        assert!(!repo
            .get_to_file(SEGMENT, &dest, &never())
            .await
            .expect("get"));
        assert!(!dest.exists());
        assert_eq!(repo.exists(SEGMENT).await.expect("exists"), None);
        assert_eq!(repo.get_bytes(SEGMENT).await.expect("get"), None);
        repo.delete(SEGMENT)
            .await
            .expect("deleting nothing succeeds");
    }
}

#[tokio::test]
async fn corrupted_and_truncated_objects_are_reported_by_key() {
    let l = local();
    let scratch = tempfile::tempdir().expect("temp dir");
    let data = content(5, 300_000, 300_000);
    let src = write_file(scratch.path(), "src", &data);
    for codec in Codec::ALL {
        let repo = Repo::open_with_store(l.store.clone(), "r", codec, 3);
        repo.put_file_create(SEGMENT, &src, &never())
            .await
            .expect("put");
        let stored = l
            .dir
            .path()
            .join(format!("r/{SEGMENT}.{}", codec.extension()));
        let good = std::fs::read(&stored).expect("stored object");
        let dest = scratch.path().join("dest");
        std::fs::write(&dest, b"previous").expect("write");

        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        std::fs::write(&stored, &flipped).expect("corrupt it");
        match repo.get_to_file(SEGMENT, &dest, &never()).await {
            Err(RepoError::Corrupt { key, reason }) => {
                assert_eq!(key, SEGMENT);
                let e = RepoError::Corrupt { key, reason };
                assert!(e
                    .to_string()
                    .starts_with(&format!("object {SEGMENT} is corrupt: ")));
            }
            other => panic!("{codec:?}: expected corrupt, got {other:?}"),
        }
        // The destination is untouched and no temp file is left.
        assert_eq!(std::fs::read(&dest).expect("dest"), b"previous");
        assert_eq!(std::fs::read_dir(scratch.path()).expect("ls").count(), 2);

        std::fs::write(&stored, &good[..good.len() - 10]).expect("truncate it");
        assert!(matches!(
            repo.get_to_file(SEGMENT, &dest, &never()).await,
            Err(RepoError::Corrupt { ref key, .. }) if key == SEGMENT
        ));
        assert!(matches!(
            repo.exists(SEGMENT).await,
            Err(RepoError::Corrupt { .. })
        ));
        std::fs::write(&stored, &good[..20]).expect("truncate more");
        assert!(matches!(
            repo.exists(SEGMENT).await,
            Err(RepoError::Corrupt { .. })
        ));
        assert!(matches!(
            repo.get_bytes(SEGMENT).await,
            Err(RepoError::Corrupt { .. })
        ));
        repo.delete(SEGMENT).await.expect("delete");
        assert!(!stored.exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_decodes_into_nothing_and_reports_what_it_found() {
    let l = local();
    let scratch = tempfile::tempdir().expect("temp dir");
    // Larger than the decoder's channel holds: the stream must be fed, not buffered whole.
    let data = content(6, 3 * MIB, MIB);
    let src = write_file(scratch.path(), "src", &data);
    for codec in Codec::ALL {
        let repo = Repo::open_with_store(l.store.clone(), "v", codec, 3);
        assert_eq!(repo.verify(SEGMENT, &never()).await.expect("verify"), None);
        let outcome = repo
            .put_file_create(SEGMENT, &src, &never())
            .await
            .expect("put");
        let found = repo
            .verify(SEGMENT, &never())
            .await
            .expect("verify")
            .expect("present");
        let stored = l
            .dir
            .path()
            .join(format!("v/{SEGMENT}.{}", codec.extension()));
        let good = std::fs::read(&stored).expect("stored object");
        assert_eq!(
            found,
            Verified {
                len: data.len() as u64,
                checksum: outcome.checksum(),
                stored_bytes: good.len() as u64,
            }
        );

        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        std::fs::write(&stored, &flipped).expect("corrupt it");
        assert!(matches!(
            repo.verify(SEGMENT, &never()).await,
            Err(RepoError::Corrupt { ref key, .. }) if key == SEGMENT
        ));
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            repo.verify(SEGMENT, &cancelled).await,
            Err(RepoError::Cancelled)
        ));
        repo.delete(SEGMENT).await.expect("delete");
    }
}

#[tokio::test]
async fn list_strips_the_prefix_and_extensions() {
    for (name, store, _keep) in stores() {
        let zstd = Repo::open_with_store(store.clone(), "pre/fix", Codec::Zstd, 3);
        let lz4 = Repo::open_with_store(store.clone(), "pre/fix", Codec::Lz4, 3);
        let other = Repo::open_with_store(store.clone(), "other", Codec::Zstd, 3);
        for (repo, key) in [
            (&zstd, "wal/00000001/000000010000000000000002"),
            (&lz4, "wal/00000001/000000010000000000000001"),
            (&zstd, "wal/00000002/00000002.history"),
            (&zstd, REPO_META),
            (&other, "wal/00000001/000000010000000000000009"),
        ] {
            repo.put_bytes(key, key.as_bytes().to_vec(), PutMode::Create)
                .await
                .expect("put");
        }
        // Not pgward's: no codec extension.
        store
            .put(
                &ObjectPath::from("pre/fix/wal/00000001/README"),
                PutPayload::from_static(b"x"),
            )
            .await
            .expect("put foreign");
        let keys = |list: Vec<ObjectSummary>| list.into_iter().map(|o| o.key).collect::<Vec<_>>();
        assert_eq!(
            keys(zstd.list("wal/00000001").await.expect("list")),
            [
                "wal/00000001/000000010000000000000001",
                "wal/00000001/000000010000000000000002"
            ],
            "{name}"
        );
        assert_eq!(
            keys(zstd.list("").await.expect("list")),
            [
                REPO_META,
                "wal/00000001/000000010000000000000001",
                "wal/00000001/000000010000000000000002",
                "wal/00000002/00000002.history",
            ],
            "{name}"
        );
        assert_eq!(zstd.list("wal/00000003").await.expect("list"), []);
        let one = zstd.list("wal/00000002/").await.expect("list");
        assert!(one[0].size > TRAILER_LEN as u64);
        // An lz4 object reads back through the zstd repo.
        assert_eq!(
            zstd.get_bytes("wal/00000001/000000010000000000000001")
                .await
                .expect("get"),
            Some(b"wal/00000001/000000010000000000000001".to_vec())
        );
    }
}

#[tokio::test]
async fn repo_meta_created_once_then_checked() {
    let repo = Repo::open_with_store(Arc::new(InMemory::new()), "", Codec::Zstd, 3);
    assert_eq!(repo.read_meta().await.expect("read"), None);
    let mine = RepoMeta::new(16, 7_312_345_678_901_234_567);
    let stored = repo.ensure_meta(&mine).await.expect("create");
    assert_eq!(stored, mine);
    // A later start (new created_at) finds and accepts the stored one.
    let later = RepoMeta {
        created_at: "2099-01-01T00:00:00Z".into(),
        ..mine.clone()
    };
    assert_eq!(repo.ensure_meta(&later).await.expect("check"), mine);
    let json = repo
        .get_plain(REPO_META)
        .await
        .expect("get")
        .expect("present");
    let text = String::from_utf8(json).expect("utf8");
    assert!(
        text.contains("\"system_identifier\": \"7312345678901234567\""),
        "{text}"
    );
    assert!(text.contains("\"created_by\": \"pgward "), "{text}");

    let other_system = RepoMeta::new(16, 7_299_000_000_000_000_001);
    let err = repo.ensure_meta(&other_system).await.expect_err("mismatch");
    assert_eq!(
        err.to_string(),
        "repository at InMemory belongs to system identifier 7312345678901234567, this cluster \
         is 7299000000000000001\nHINT: do two clusters share storage.url?"
    );
    assert!(err.is_permanent());
    let upgraded = RepoMeta::new(17, mine.system_identifier);
    let err = repo.ensure_meta(&upgraded).await.expect_err("major");
    assert!(
        err.to_string().starts_with(
            "repository at InMemory holds PostgreSQL 16 WAL and backups, this cluster runs \
             PostgreSQL 17\nHINT: after a major upgrade, start a new repository"
        ),
        "{err}"
    );
    let newer = RepoMeta {
        format_version: FORMAT_VERSION + 1,
        ..mine.clone()
    };
    repo.put_plain(REPO_META, newer.to_file(), PutMode::Overwrite)
        .await
        .expect("overwrite");
    let err = repo.ensure_meta(&mine).await.expect_err("newer format");
    assert!(
        err.to_string()
            .starts_with("repository at InMemory has format version 2, newer than this pgward"),
        "{err}"
    );
    // A newer format may checksum differently (or not at all): the format error, not corrupt.
    repo.put_plain(
        REPO_META,
        br#"{"format_version":2,"pg_major":16,"system_identifier":"1","created_at":"x","created_by":"pgward 9"}"#.to_vec(),
        PutMode::Overwrite,
    )
    .await
    .expect("overwrite");
    assert!(matches!(
        repo.ensure_meta(&mine).await,
        Err(RepoError::Meta(m)) if m.contains("newer than this pgward")
    ));
    // A hand-written file with a numeric identifier reads too: the checksum covers the
    // canonical form, where the identifier is a string.
    let numeric = RepoMeta {
        format_version: 1,
        pg_major: 16,
        system_identifier: 42,
        created_at: "x".into(),
        created_by: "y".into(),
    };
    let hand_written = format!(
        r#"{{ "created_by": "y", "created_at": "x", "system_identifier": 42, "pg_major": 16,
             "format_version": 1, "checksum": "{}" }}"#,
        numeric.checksum()
    );
    repo.put_plain(REPO_META, hand_written.into_bytes(), PutMode::Overwrite)
        .await
        .expect("overwrite");
    assert_eq!(repo.read_meta().await.expect("read"), Some(numeric.clone()));
    let corrupt_reason = |content: &[u8]| {
        let content = content.to_vec();
        let repo = &repo;
        async move {
            repo.put_plain(REPO_META, content, PutMode::Overwrite)
                .await
                .expect("overwrite");
            match repo.read_meta().await {
                Err(RepoError::Corrupt { key, reason }) => {
                    assert_eq!(key, REPO_META);
                    reason
                }
                other => panic!("expected corrupt, got {other:?}"),
            }
        }
    };
    assert!(corrupt_reason(b"{not json")
        .await
        .starts_with("invalid JSON: "));
    let mut no_checksum = serde_json::to_value(&numeric).expect("json");
    assert_eq!(
        corrupt_reason(no_checksum.to_string().as_bytes()).await,
        "no \"checksum\" field; the file was edited or damaged"
    );
    no_checksum["checksum"] = numeric.checksum().to_string().into();
    no_checksum
        .as_object_mut()
        .expect("object")
        .remove("pg_major");
    assert_eq!(
        corrupt_reason(no_checksum.to_string().as_bytes()).await,
        "missing field `pg_major`"
    );
}

/// `repo.json` is pretty JSON at exactly `<prefix>/repo.json`, readable as it is, carrying
/// the checksum of its fields; it is not listed among pgward's framed objects.
#[tokio::test]
async fn repo_meta_is_plain_json_at_its_exact_key() {
    for (name, store, keep) in stores() {
        let repo = Repo::open_with_store(store.clone(), "pre/fix", Codec::Zstd, 3);
        let mine = RepoMeta::new(16, 7_312_345_678_901_234_567);
        repo.ensure_meta(&mine).await.expect("create");
        let stored = store
            .get(&ObjectPath::from("pre/fix/repo.json"))
            .await
            .expect("stored at the exact key")
            .bytes()
            .await
            .expect("read");
        let text = std::str::from_utf8(&stored).expect("utf8");
        let expected = format!(
            "{{\n  \"format_version\": 1,\n  \"pg_major\": 16,\n  \"system_identifier\": \
             \"7312345678901234567\",\n  \"created_at\": \"{}\",\n  \"created_by\": \"{}\",\n  \
             \"checksum\": \"{}\"\n}}\n",
            mine.created_at,
            mine.created_by,
            blake3::hash(&serde_json::to_vec(&mine).expect("json")).to_hex()
        );
        assert_eq!(text, expected, "{name}");
        for codec in Codec::ALL {
            let framed = format!("pre/fix/repo.json.{}", codec.extension());
            assert!(
                matches!(
                    store.head(&ObjectPath::from(framed.as_str())).await,
                    Err(object_store::Error::NotFound { .. })
                ),
                "{name}: {framed}"
            );
        }
        if let Some(local) = &keep {
            let on_disk = std::fs::read_to_string(local.dir.path().join("pre/fix/repo.json"))
                .expect("a plain file");
            assert_eq!(on_disk, expected);
        }
        assert_eq!(repo.list("").await.expect("list"), []);
        // Create-only: the same content is accepted, other content is a conflict.
        let again = repo
            .put_plain(REPO_META, mine.to_file(), PutMode::Create)
            .await;
        assert!(
            matches!(again, Ok(PutOutcome::AlreadyIdentical { .. })),
            "{name}: {again:?}"
        );
        assert!(matches!(
            repo.put_plain(REPO_META, b"{}".to_vec(), PutMode::Create)
                .await,
            Err(RepoError::Conflict { .. })
        ));
        assert!(matches!(
            repo.put_plain("repo.json.zst", b"{}".to_vec(), PutMode::Create)
                .await,
            Err(RepoError::InvalidKey { .. })
        ));
    }
}

/// The checksum's canonical form is a stored format: files already written must keep
/// verifying. This is the example of docs/wal-archiving.md, byte for byte.
#[test]
fn repo_meta_file_format_is_stable() {
    let example = RepoMeta {
        format_version: 1,
        pg_major: 16,
        system_identifier: 7_312_345_678_901_234_567,
        created_at: "2025-01-01T00:00:00Z".into(),
        created_by: "pgward 0.1.0".into(),
    };
    let file = r#"{
  "format_version": 1,
  "pg_major": 16,
  "system_identifier": "7312345678901234567",
  "created_at": "2025-01-01T00:00:00Z",
  "created_by": "pgward 0.1.0",
  "checksum": "ba8663fed9ba3ac8101db05605919b21ebe819ba131df5185ab55283e5a7bda7"
}
"#;
    assert_eq!(String::from_utf8(example.to_file()).expect("utf8"), file);
    assert_eq!(RepoMeta::from_file(file.as_bytes()), Ok(example));
}

/// An edited or damaged `repo.json` is refused, naming it and saying what is wrong.
#[tokio::test]
async fn repo_meta_checksum_mismatch_is_reported() {
    let repo = Repo::open_with_store(Arc::new(InMemory::new()), "", Codec::Zstd, 3);
    let mine = RepoMeta::new(16, 7_312_345_678_901_234_567);
    repo.ensure_meta(&mine).await.expect("create");
    let text = String::from_utf8(
        repo.get_plain(REPO_META)
            .await
            .expect("get")
            .expect("present"),
    )
    .expect("utf8");
    let edited = text.replace("\"pg_major\": 16", "\"pg_major\": 17");
    assert_ne!(edited, text);
    repo.put_plain(REPO_META, edited.into_bytes(), PutMode::Overwrite)
        .await
        .expect("overwrite");
    let err = repo.ensure_meta(&mine).await.expect_err("edited");
    let content_hash = RepoMeta {
        pg_major: 17,
        ..mine.clone()
    }
    .checksum();
    assert_eq!(
        err.to_string(),
        format!(
            "object repo.json is corrupt: checksum mismatch: stored {}, content hashes to \
             {content_hash}; the file was edited or damaged",
            mine.checksum()
        )
    );
    assert!(err.is_permanent());
}

/// A repository initialized by an earlier build holds a framed `repo.json.<codec>`: it is
/// read and checked, and no plain `repo.json` is added beside it.
#[tokio::test]
async fn legacy_framed_repo_meta_is_still_read() {
    for codec in Codec::ALL {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let repo = Repo::open_with_store(store.clone(), "p", codec, 3);
        let legacy = RepoMeta::new(16, 99);
        repo.put_bytes(
            REPO_META,
            serde_json::to_vec_pretty(&legacy).expect("json"),
            PutMode::Create,
        )
        .await
        .expect("framed put");
        // A repo now writing another codec still finds it.
        let other_codec = Codec::ALL.into_iter().find(|c| *c != codec).expect("three");
        let repo = Repo::open_with_store(store.clone(), "p", other_codec, 3);
        assert_eq!(repo.read_meta().await.expect("read"), Some(legacy.clone()));
        let later = RepoMeta::new(16, 99);
        assert_eq!(repo.ensure_meta(&later).await.expect("check"), legacy);
        assert!(matches!(
            repo.ensure_meta(&RepoMeta::new(16, 98)).await,
            Err(RepoError::Meta(m)) if m.contains("belongs to system identifier 99")
        ));
        assert_eq!(
            repo.get_plain(REPO_META).await.expect("get"),
            None,
            "{codec:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_initializers_agree() {
    for (name, store, _keep) in stores() {
        let a = Repo::open_with_store(store.clone(), "", Codec::Zstd, 3);
        let b = Repo::open_with_store(store, "", Codec::Lz4, 3);
        let meta_a = RepoMeta::new(16, 1);
        let meta_b = RepoMeta {
            created_at: "other".into(),
            ..meta_a.clone()
        };
        let (ra, rb) = tokio::join!(a.ensure_meta(&meta_a), b.ensure_meta(&meta_b));
        let (ra, rb) = (ra.expect("a"), rb.expect("b"));
        assert_eq!(ra, rb, "{name}: both see the one stored");
        assert_eq!(a.read_meta().await.expect("read"), Some(ra), "{name}");
    }
}

/// In a `file://` repository, `repo.json` is a plain file given to the local owner.
#[tokio::test]
async fn local_repo_meta_is_a_plain_file_of_the_local_owner() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("repo");
    let url = format!("file://{}", root.display());
    let owner = std::fs::metadata(dir.path()).expect("stat");
    let repo = Repo::open(&storage(&url, Codec::Zstd))
        .expect("file")
        .with_local_owner(Some((owner.uid(), owner.gid())));
    let mine = RepoMeta::new(16, 3);
    repo.ensure_meta(&mine).await.expect("create");
    let file = root.join(REPO_META);
    let stat = std::fs::metadata(&file).expect("repo.json is a file");
    assert_eq!((stat.uid(), stat.gid()), (owner.uid(), owner.gid()));
    assert_eq!(std::fs::read(&file).expect("read"), mine.to_file());
    assert_eq!(repo.ensure_meta(&mine).await.expect("check"), mine);
}

#[tokio::test]
async fn cancelled_transfers_leave_nothing() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let src = write_file(scratch.path(), "src", &content(6, 3 * MIB, 0));
    let repo = Repo::open_with_store(Arc::new(InMemory::new()), "", Codec::Lz4, 3);
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    assert!(matches!(
        repo.put_file_create(SEGMENT, &src, &cancelled).await,
        Err(RepoError::Cancelled)
    ));
    assert_eq!(repo.exists(SEGMENT).await.expect("exists"), None);
    repo.put_file_create(SEGMENT, &src, &never())
        .await
        .expect("put");
    let dest = scratch.path().join("dest");
    assert!(matches!(
        repo.get_to_file(SEGMENT, &dest, &cancelled).await,
        Err(RepoError::Cancelled)
    ));
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(scratch.path()).expect("ls").count(), 1);
}

#[tokio::test]
async fn a_missing_source_is_an_io_error_naming_it() {
    let repo = Repo::open_with_store(Arc::new(InMemory::new()), "", Codec::Zstd, 3);
    let missing = Path::new("/nonexistent/pgward/000000010000000000000003");
    match repo.put_file_create(SEGMENT, missing, &never()).await {
        Err(RepoError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an io error, got {other:?}"),
    }
    assert!(matches!(
        repo.put_bytes("/abs", vec![], PutMode::Create).await,
        Err(RepoError::InvalidKey { .. })
    ));
}

/// The encoder's output reaches the uploader in bounded chunks, whatever the file size: a
/// 64 MiB sparse file (no disk used) goes through as 64+ chunks of at most CHUNK bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoding_streams_in_bounded_chunks() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let path = scratch.path().join("sparse");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(64 * MIB as u64).expect("sparse");
    drop(file);
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let encoder = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).expect("open");
        let sink = ChunkSink {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
            cancel: CancellationToken::new(),
        };
        frame::encode(file, Codec::None, 0, sink).map(|(d, _)| d)
    });
    let (mut chunks, mut total, mut largest) = (0usize, 0usize, 0usize);
    while let Some(chunk) = rx.recv().await {
        chunks += 1;
        total += chunk.len();
        largest = largest.max(chunk.len());
        // A slow consumer: the encoder must wait, not buffer ahead.
        assert!(rx.len() <= CHANNEL_DEPTH);
        tokio::task::yield_now().await;
    }
    let digest = encoder.await.expect("join").expect("encode");
    assert_eq!(digest.len, 64 * MIB as u64);
    assert_eq!(total, 64 * MIB + frame::HEADER_LEN + TRAILER_LEN);
    assert_eq!(largest, CHUNK);
    assert!(chunks > 64, "{chunks}");
}

// ---- building stores from settings (offline) ----

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
        },
    }
}

#[tokio::test]
async fn opens_every_kind_of_store_without_network() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("a/b/repo");
    let file = storage(&format!("file://{}", root.display()), Codec::Lz4);
    let repo = Repo::open(&file).expect("file");
    assert!(root.is_dir(), "the root is created");
    assert_eq!(repo.codec(), Codec::Lz4);
    assert_eq!(repo.describe(), format!("file://{}", root.display()));
    repo.put_bytes("k", b"v".to_vec(), PutMode::Create)
        .await
        .expect("put");
    assert!(root.join("k.lz4").is_file());

    let mut s3 = storage("s3://bucket-1/pg/main", Codec::Zstd);
    s3.s3 = S3Config {
        endpoint: Some("http://127.0.0.1:9".into()),
        region: Some("eu-west-3".into()),
        access_key_id: Some("AKIA".into()),
        secret_access_key: Some(Secret::new("s3cr3t-value".into())),
        path_style: true,
        allow_http: true,
        ..S3Config::default()
    };
    let repo = Repo::open(&s3).expect("s3");
    assert_eq!(
        repo.describe(),
        "s3://bucket-1/pg/main (endpoint http://127.0.0.1:9)"
    );
    assert!(!format!("{repo:?}").contains("s3cr3t"));

    let mut az = storage("az://container1/x", Codec::Zstd);
    az.azure = AzureConfig {
        account: Some("devstoreaccount1".into()),
        access_key: Some(Secret::new("a2V5".into())),
        endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
        allow_http: true,
        ..AzureConfig::default()
    };
    assert_eq!(
        Repo::open(&az).expect("azure").describe(),
        "az://container1/x (endpoint http://127.0.0.1:10000/devstoreaccount1)"
    );
    let mut emulator = storage("az://container1", Codec::Zstd);
    emulator.azure.use_emulator = true;
    Repo::open(&emulator).expect("azurite");

    let gs = storage("gs://bucket-2/p", Codec::Zstd);
    assert_eq!(Repo::open(&gs).expect("gcs").describe(), "gs://bucket-2/p");
    let mut bad_key = gs.clone();
    bad_key.gcs.service_account_key = Some(Secret::new("{\"type\": \"service_account\"}".into()));
    match Repo::open(&bad_key) {
        Err(RepoError::Config(msg)) => {
            assert!(
                msg.starts_with("cannot set up storage for gs://bucket-2/p: "),
                "{msg}"
            )
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// An object that appears while a large (multipart) upload is being encoded: the upload
/// stops sending, finishes the checksum, and compares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_racing_a_creator_compares_instead_of_replacing() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let data = content(8, 9 * MIB, 0);
    let other = content(9, 9 * MIB, 0);
    let src = write_file(scratch.path(), "src", &data);
    let other_src = write_file(scratch.path(), "other", &other);
    for (name, store, _keep) in stores() {
        let repo = Repo::open_with_store(store, "", Codec::None, 3);
        let path = repo.path(SEGMENT, Codec::None).expect("path");
        let cancel = never();
        // Skips put_file_create's own check, as a writer racing it would.
        let upload = |src: &Path| {
            let file = std::fs::File::open(src).expect("open");
            repo.upload(
                SEGMENT,
                path.clone(),
                file,
                src.to_owned(),
                PutMode::Create,
                &cancel,
            )
        };
        let first = upload(&src).await.expect("first upload");
        assert!(matches!(first, PutOutcome::Created { .. }), "{name}");
        assert_eq!(
            upload(&src).await.expect("same content"),
            PutOutcome::AlreadyIdentical {
                checksum: first.checksum()
            }
        );
        match upload(&other_src).await {
            Err(RepoError::Conflict { existing, new, .. }) => {
                assert_eq!(existing, first.checksum());
                assert_eq!(new.0, *blake3::hash(&other).as_bytes());
            }
            other => panic!("{name}: expected a conflict, got {other:?}"),
        }
        let dest = scratch.path().join("dest");
        repo.get_to_file(SEGMENT, &dest, &never())
            .await
            .expect("get");
        assert!(
            std::fs::read(&dest).expect("read") == data,
            "{name}: replaced"
        );
    }
}

/// A store like S3-compatible servers without conditional puts and like Azure without suffix
/// ranges: InMemory refusing both.
#[derive(Debug)]
struct Limited(InMemory);

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limited")
    }
}

#[async_trait::async_trait]
impl ObjectStore for Limited {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        if opts.mode == object_store::PutMode::Create {
            return Err(object_store::Error::NotImplemented {
                operation: "conditional put".into(),
                implementer: "Limited".into(),
            });
        }
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        if let Some(GetRange::Suffix(_)) = options.range {
            return Err(object_store::Error::NotSupported {
                source: "no suffix ranges".into(),
            });
        }
        self.0.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
        self.0.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
    {
        self.0.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<object_store::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn stores_without_conditional_put_or_suffix_ranges_still_work() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let a = write_file(scratch.path(), "a", &content(10, 10_000, 10_000));
    let b = write_file(scratch.path(), "b", &content(11, 10_000, 10_000));
    let repo = Repo::open_with_store(Arc::new(Limited(InMemory::new())), "", Codec::Zstd, 3);
    let first = repo
        .put_file_create(SEGMENT, &a, &never())
        .await
        .expect("put");
    assert!(matches!(first, PutOutcome::Created { .. }));
    assert!(repo.inner.no_conditional_put.load(Ordering::Relaxed));
    assert_eq!(
        repo.exists(SEGMENT).await.expect("exists"),
        Some(first.checksum())
    );
    assert!(repo.inner.no_suffix_range.load(Ordering::Relaxed));
    assert!(matches!(
        repo.put_file_create(SEGMENT, &a, &never()).await,
        Ok(PutOutcome::AlreadyIdentical { .. })
    ));
    assert!(matches!(
        repo.put_file_create(SEGMENT, &b, &never()).await,
        Err(RepoError::Conflict { .. })
    ));
    let meta = RepoMeta::new(16, 5);
    assert_eq!(repo.ensure_meta(&meta).await.expect("meta"), meta);
    assert_eq!(repo.ensure_meta(&meta).await.expect("again"), meta);
    assert!(matches!(
        repo.put_plain(REPO_META, b"{}".to_vec(), PutMode::Create)
            .await,
        Err(RepoError::Conflict { .. })
    ));
    assert_eq!(repo.read_meta().await.expect("read"), Some(meta));
    let dest = scratch.path().join("dest");
    assert!(repo
        .get_to_file(SEGMENT, &dest, &never())
        .await
        .expect("get"));
    assert_eq!(
        std::fs::read(&dest).expect("read"),
        std::fs::read(&a).expect("a")
    );
}
