//! Objects: round trips, create-only, corruption, verify, listing, cancellation, bounded
//! memory.

use super::*;

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
        // A repo now writing lz4 does not look under the zstd name (a put is one request):
        // it stores its own object, and reads find the one under its own name first.
        let lz4 = Repo::open_with_store(store.clone(), "", Codec::Lz4, 3);
        assert!(matches!(
            lz4.put_file_create(SEGMENT, &a, &never()).await,
            Ok(PutOutcome::Created { .. })
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

/// A line-per-number text, to parse back: what a manifest is to these functions.
fn numbers_text(out: &mut dyn std::io::Write, n: u32) -> std::io::Result<u32> {
    for i in 0..n {
        writeln!(out, "{i}")?;
    }
    Ok(n)
}

fn sum_numbers(content: &mut dyn std::io::Read) -> Result<u64, String> {
    let mut text = String::new();
    content
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    text.lines()
        .map(|l| l.parse::<u64>().map_err(|e| format!("{l:?}: {e}")))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_is_put_and_parsed_back_as_a_stream() {
    let l = local();
    for codec in Codec::ALL {
        let repo = Repo::open_with_store(l.store.clone(), "w", codec, 3);
        let key = format!("backups/x/manifest-{}.json", codec.name());
        // Over 1 MB of text: several chunks through the decoder and the parser's channel.
        let mut expected = Vec::new();
        let n = numbers_text(&mut expected, 200_000).unwrap();
        assert_eq!(n, 200_000);
        for mode in [PutMode::Create, PutMode::Create] {
            repo.put_bytes(&key, expected.clone(), mode)
                .await
                .expect("put, and a retry finds its own object");
        }
        assert!(repo.get_bytes(&key).await.expect("get").unwrap() == expected);
        let sum = repo.get_parsed(&key, sum_numbers).await.expect("read");
        assert_eq!(sum, Some(Ok(199_999 * 200_000 / 2)), "{codec:?}");
        assert!(matches!(
            repo.get_parsed("backups/none/manifest.json", sum_numbers)
                .await,
            Ok(None)
        ));

        // A damaged object is corrupt, whatever the parser made of it.
        let stored = l.dir.path().join(format!("w/{key}.{}", codec.extension()));
        let mut damaged = std::fs::read(&stored).unwrap();
        let at = damaged.len() - 60;
        damaged[at] ^= 0x01;
        std::fs::write(&stored, &damaged).unwrap();
        match repo.get_parsed(&key, sum_numbers).await {
            Err(RepoError::Corrupt { key: named, .. }) => assert_eq!(named, key),
            other => panic!("{codec:?}: expected corrupt, got {other:?}"),
        }
        // A parser that stops early still gets its answer checked against the whole object.
        let first_line = |content: &mut dyn std::io::Read| -> Result<u8, String> {
            let mut one = [0u8; 1];
            content.read_exact(&mut one).map_err(|e| e.to_string())?;
            Ok(one[0])
        };
        assert!(matches!(
            repo.get_parsed(&key, first_line).await,
            Err(RepoError::Corrupt { .. })
        ));
    }
}

/// The repository may have been tampered with: an object stored larger than what is read or
/// parsed whole is refused before it is downloaded, by both readers.
#[tokio::test]
async fn an_oversized_small_object_is_refused_before_it_is_read() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let repo = Repo::open_with_store(store.clone(), "big", Codec::Zstd, 3);
    let key = "backups/x/manifest.json";
    let oversized = vec![0u8; GET_BYTES_MAX as usize + 1];
    store
        .put(
            &repo.path(key, Codec::Zstd).expect("path"),
            oversized.into(),
        )
        .await
        .expect("store it behind the repository's back");
    assert!(matches!(
        repo.get_parsed(key, sum_numbers).await,
        Err(RepoError::InvalidKey { .. })
    ));
    assert!(matches!(
        repo.get_bytes(key).await,
        Err(RepoError::InvalidKey { .. })
    ));
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

#[tokio::test]
async fn an_incomplete_object_is_replaced_by_a_create_only_put_and_a_complete_one_is_not() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let a = write_file(scratch.path(), "a", &content(7, 1000, 50_000));
    let b = write_file(scratch.path(), "b", &content(8, 1000, 50_000));
    for (name, store, _keep) in stores() {
        let repo = Repo::open_with_store(store.clone(), "", Codec::Zstd, 3);
        let path = repo.path(SEGMENT, Codec::Zstd).expect("path");
        let good = {
            let created = repo
                .put_file_create(SEGMENT, &a, &never())
                .await
                .expect("put");
            let stored = store
                .get(&path)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            repo.delete(SEGMENT).await.expect("delete");
            (created.checksum(), stored)
        };
        // What a crash leaves: nothing written yet, a header only, everything but the trailer.
        let leftovers = [
            Bytes::new(),
            good.1.slice(..8),
            good.1.slice(..good.1.len() - TRAILER_LEN),
        ];
        for leftover in leftovers {
            store
                .put(&path, PutPayload::from(leftover.clone()))
                .await
                .expect("leave an incomplete object");
            let outcome = repo
                .put_file_create(SEGMENT, &a, &never())
                .await
                .unwrap_or_else(|e| panic!("{name}, {} bytes left: {e}", leftover.len()));
            assert!(matches!(outcome, PutOutcome::Created { .. }), "{name}");
            assert_eq!(repo.exists(SEGMENT).await.expect("exists"), Some(good.0));
            repo.delete(SEGMENT).await.expect("delete");
        }
        // A staged object (one conditional put, no check before it) replaces one too.
        store
            .put(&path, PutPayload::from(Bytes::new()))
            .await
            .expect("leave an empty object");
        let mut staged = repo.stage(SEGMENT).expect("stage");
        staged
            .append(&std::fs::read(&a).expect("a"))
            .expect("append");
        let committed = staged.commit(&never()).await.expect("commit");
        assert!(matches!(committed, PutOutcome::Created { .. }), "{name}");
        assert_eq!(repo.exists(SEGMENT).await.expect("exists"), Some(good.0));
        repo.delete(SEGMENT).await.expect("delete");
        // A whole object of other content is kept, whatever the new one is.
        repo.put_file_create(SEGMENT, &a, &never())
            .await
            .expect("put");
        assert!(matches!(
            repo.put_file_create(SEGMENT, &b, &never()).await,
            Err(RepoError::Conflict { .. })
        ));
        assert_eq!(repo.exists(SEGMENT).await.expect("exists"), Some(good.0));
    }
}

#[test]
fn an_incomplete_local_object_is_replaced_by_a_staged_commit() {
    let l = local();
    let root = l.dir.path().to_owned();
    let repo =
        Repo::open(&storage(&format!("file://{}", root.display()), Codec::Zstd)).expect("open");
    let data = content(9, 1000, 50_000);
    let stored = root.join(format!("{SEGMENT}.{}", repo.codec().extension()));
    std::fs::create_dir_all(stored.parent().expect("a directory")).expect("mkdir");
    std::fs::write(&stored, b"").expect("leave an empty object");
    let mut staged = repo.stage(SEGMENT).expect("stage");
    staged.append(&data).expect("append");
    let outcome = staged.commit_local().expect("commit");
    assert!(matches!(outcome, PutOutcome::Created { .. }));
    // Once whole, the same content is identical, and other content a conflict.
    let mut again = repo.stage(SEGMENT).expect("stage");
    again.append(&data).expect("append");
    assert!(matches!(
        again.commit_local(),
        Ok(PutOutcome::AlreadyIdentical { .. })
    ));
    let mut other = repo.stage(SEGMENT).expect("stage");
    other.append(b"other").expect("append");
    assert!(matches!(
        other.commit_local(),
        Err(RepoError::Conflict { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_streams_the_content_and_checks_the_whole_object() {
    let l = local();
    let scratch = tempfile::tempdir().expect("temp dir");
    let data = content(10, 3 * MIB, MIB);
    let src = write_file(scratch.path(), "src", &data);
    let repo = Repo::open_with_store(l.store.clone(), "c", Codec::Zstd, 3);
    let absent = repo
        .consume(SEGMENT, &never(), |_| Ok::<_, String>(()))
        .await
        .expect("consume");
    assert!(absent.is_none());
    repo.put_file_create(SEGMENT, &src, &never())
        .await
        .expect("put");
    let read = repo
        .consume(SEGMENT, &never(), |r| {
            let mut all = Vec::new();
            r.read_to_end(&mut all)
                .map(|_| all)
                .map_err(|e| e.to_string())
        })
        .await
        .expect("consume")
        .expect("present")
        .expect("read");
    assert!(read == data, "the streamed content differs");
    // A consumer that stops early still gets its answer; its own error is passed on.
    let first = repo
        .consume(SEGMENT, &never(), |r| {
            let mut head = [0u8; 16];
            r.read_exact(&mut head)
                .map(|_| head)
                .map_err(|e| e.to_string())
        })
        .await
        .expect("consume")
        .expect("present")
        .expect("read");
    assert_eq!(first[..], data[..16]);
    let refused = repo
        .consume(SEGMENT, &never(), |_| Err::<(), _>("not what I wanted"))
        .await
        .expect("consume")
        .expect("present");
    assert_eq!(refused, Err("not what I wanted"));
    // Damage past what the consumer reads is still found: the whole object is checked.
    let stored = l.dir.path().join(format!("c/{SEGMENT}.zst"));
    let mut bytes = std::fs::read(&stored).expect("stored");
    let at = bytes.len() - TRAILER_LEN - 100;
    bytes[at] ^= 0x40;
    std::fs::write(&stored, &bytes).expect("damage it");
    let damaged = repo
        .consume(SEGMENT, &never(), |r| {
            let mut head = [0u8; 16];
            r.read_exact(&mut head).map_err(|e| e.to_string())
        })
        .await;
    assert!(
        matches!(damaged, Err(RepoError::Corrupt { ref key, .. }) if key == SEGMENT),
        "{damaged:?}"
    );
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
            permit: Default::default(),
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
