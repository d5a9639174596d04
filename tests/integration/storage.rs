//! The repository layer against real storage servers: s3s-fs (S3) and Azurite (Azure Blob).
//! Round trips byte for byte, create-only semantics, corruption detection, listing, the plain
//! `repo.json`.

use std::path::Path;

use pgward::repo::{PutMode, PutOutcome, Repo, RepoError, RepoMeta, REPO_META};
use tokio_util::sync::CancellationToken;

use crate::common::TestDir;
use crate::storage_servers::{TestAzurite, TestS3};

fn open(storage_yaml: &str) -> Repo {
    let config = pgward::config::from_str(storage_yaml, "test.yaml", &|_| None)
        .expect("valid storage config");
    Repo::open(&config.storage).expect("open repository")
}

/// Pseudo-random content that does not compress to nothing.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half random, half repetitive, like real WAL.
            if i % 2 == 0 {
                x as u8
            } else {
                (i / 512) as u8
            }
        })
        .collect()
}

async fn exercise(repo: &Repo, dir: &TestDir) {
    let cancel = CancellationToken::new();
    // Larger than one single put (8 MiB encoded): a multipart upload.
    for (name, len) in [
        ("000000010000000000000001", 16 << 20),
        ("00000002.history", 100),
    ] {
        let src = dir.join(name);
        std::fs::write(&src, content(len, len as u64)).unwrap();
        let key = format!("wal/00000001/{name}");
        let created = repo.put_file_create(&key, &src, &cancel).await.unwrap();
        assert!(matches!(created, PutOutcome::Created { .. }), "{name}");
        // Same content again: identical, nothing rewritten.
        let again = repo.put_file_create(&key, &src, &cancel).await.unwrap();
        assert!(
            matches!(again, PutOutcome::AlreadyIdentical { .. }),
            "{name}"
        );
        assert_eq!(repo.exists(&key).await.unwrap(), Some(created.checksum()));

        let dest = dir.join(&format!("{name}.fetched"));
        assert!(repo.get_to_file(&key, &dest, &cancel).await.unwrap());
        assert!(
            std::fs::read(&src).unwrap() == std::fs::read(&dest).unwrap(),
            "{name} round trip"
        );

        // Different content under the same key is refused with both checksums.
        let other = dir.join(&format!("{name}.other"));
        std::fs::write(&other, content(len, 7)).unwrap();
        match repo.put_file_create(&key, &other, &cancel).await {
            Err(RepoError::Conflict { existing, new, .. }) => {
                assert_eq!(existing, created.checksum());
                assert_ne!(existing, new);
            }
            other => panic!("expected a conflict for {name}, got {other:?}"),
        }
    }
    let listed: Vec<String> = repo
        .list("wal/00000001")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        listed,
        vec![
            "wal/00000001/000000010000000000000001",
            "wal/00000001/00000002.history"
        ]
    );
    assert!(!repo
        .get_to_file("wal/00000001/missing", &dir.join("missing"), &cancel)
        .await
        .unwrap());
    assert!(!dir.join("missing").exists());

    // repo.json: created once (the store's conditional create), then checked, never listed.
    let meta = RepoMeta::new(16, 7_312_345_678_901_234_567);
    assert_eq!(repo.ensure_meta(&meta).await.unwrap(), meta);
    let later = RepoMeta {
        created_at: "2099-01-01T00:00:00Z".into(),
        ..meta.clone()
    };
    assert_eq!(repo.ensure_meta(&later).await.unwrap(), meta);
    match repo
        .put_plain(REPO_META, b"{}".to_vec(), PutMode::Create)
        .await
    {
        Err(RepoError::Conflict { .. }) => {}
        other => panic!("expected a conflict for repo.json, got {other:?}"),
    }
    assert_eq!(repo.read_meta().await.unwrap(), Some(meta));
    let all: Vec<String> = repo
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(all, listed, "repo.json is not a framed object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_round_trip_create_only_and_corruption() {
    let s3 = TestS3::start();
    let dir = TestDir::new();
    let repo = open(&s3.config_yaml("repo-test"));
    exercise(&repo, &dir).await;

    // s3s-fs keeps objects as plain files: damage one and the read must fail, naming it.
    let key = "wal/00000001/00000002.history";
    let stored = find_with_prefix(&s3.object_path(&format!("repo-test/{key}")));
    let mut bytes = std::fs::read(&stored).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();
    let err = repo
        .get_to_file(key, &dir.join("corrupt"), &CancellationToken::new())
        .await
        .expect_err("corruption must be detected");
    assert!(matches!(err, RepoError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(key), "{err}");
    assert!(!dir.join("corrupt").exists());

    // repo.json is the plain file a human reads, under its exact key.
    let plain = std::fs::read_to_string(s3.object_path("repo-test/repo.json")).unwrap();
    assert!(
        plain.starts_with("{\n  \"format_version\": 1,\n"),
        "{plain}"
    );
    assert!(
        plain.contains("\"system_identifier\": \"7312345678901234567\""),
        "{plain}"
    );
    assert!(plain.contains("\"checksum\": \""), "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_round_trip_and_create_only() {
    let azurite = TestAzurite::start();
    let dir = TestDir::new();
    let repo = open(&azurite.config_yaml("repo-test"));
    exercise(&repo, &dir).await;
}

/// The stored file for `path` (the repository appends the codec extension).
fn find_with_prefix(path: &Path) -> std::path::PathBuf {
    let parent = path.parent().unwrap();
    let stem = path.file_name().unwrap().to_str().unwrap();
    std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(stem))
        .unwrap_or_else(|| panic!("no stored object for {}", path.display()))
}
