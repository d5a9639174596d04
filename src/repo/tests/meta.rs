//! `repo.json`: created once then checked, plain JSON at its key, a stable format, old
//! framed copies still read, racing initializers.

use super::*;

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
