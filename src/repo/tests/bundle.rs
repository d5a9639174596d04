//! Bundles: many files in one object, read whole or one member at a time.

use super::*;

/// Files of a few sizes (one empty, one compressible, one random) in `dir`.
fn inputs(dir: &Path) -> Vec<(BundleInput, Vec<u8>)> {
    [
        ("base/1/1259", content(1, 8192, 8192)),
        ("base/1/empty", Vec::new()),
        ("global/pg_filenode.map", content(2, 512, 0)),
        ("base/1/16384_fsm", content(3, 0, 24576)),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, data))| {
        let src = write_file(dir, &format!("f{i}"), &data);
        let input = BundleInput {
            name: name.to_owned(),
            src,
            ranges: vec![(0, u64::MAX)],
        };
        (input, data)
    })
    .collect()
}

fn members(inputs: &[(BundleInput, Vec<u8>)], packed: &[Option<Packed>]) -> Vec<Member> {
    inputs
        .iter()
        .zip(packed)
        .filter_map(|((input, _), p)| {
            p.as_ref().map(|p| Member {
                name: input.name.clone(),
                offset: p.offset,
                stored_len: p.stored_len,
            })
        })
        .collect()
}

/// Every member of bundle `key`, decoded into memory.
async fn read_all(repo: &Repo, key: &str, members: Vec<Member>) -> Result<Vec<Vec<u8>>, RepoError> {
    let out = Arc::new(std::sync::Mutex::new(vec![Vec::new(); members.len()]));
    let sink = out.clone();
    let found = repo
        .get_bundle(
            key,
            members,
            &never(),
            |_| Ok(Some(Vec::new())),
            move |i, content: Vec<u8>, verified| {
                assert_eq!(verified.len, content.len() as u64);
                sink.lock().expect("lock")[i] = content;
                Ok(())
            },
        )
        .await?;
    assert!(found, "the bundle is there");
    let out = out.lock().expect("lock").clone();
    Ok(out)
}

#[tokio::test]
async fn a_bundle_round_trips_whole_and_member_by_member() {
    for (name, store, _keep) in stores() {
        for codec in Codec::ALL {
            let repo = Repo::open_with_store(store.clone(), "pfx", codec, 3);
            let dir = tempfile::tempdir().expect("temp dir");
            let inputs = inputs(dir.path());
            let key = format!("backups/20261207T000000F/bundles/{}", codec.name());
            let batch = inputs.iter().map(|(i, _)| i.clone()).collect();
            let (outcome, packed) = repo.put_bundle(&key, batch, &never()).await.expect("put");
            assert!(matches!(outcome, PutOutcome::Created { .. }), "{name}");
            for ((_, data), p) in inputs.iter().zip(&packed) {
                let p = p.as_ref().expect("packed");
                assert_eq!(p.len, data.len() as u64, "{name} {codec:?}");
                assert_eq!(p.checksum, Checksum::of(data));
            }
            let all = read_all(&repo, &key, members(&inputs, &packed))
                .await
                .expect("read whole");
            for ((_, data), got) in inputs.iter().zip(&all) {
                assert_eq!(data, got, "{name} {codec:?}");
            }
            // One member alone, with a ranged read, into the middle of a file.
            let (input, data) = &inputs[2];
            let member = &members(&inputs, &packed)[2];
            let dest_path = dir.path().join("dest");
            let dest = std::fs::File::create(&dest_path).expect("dest");
            let at = 100u64;
            let found = repo
                .get_member_to_ranges(
                    &key,
                    member,
                    dest,
                    &dest_path,
                    vec![(at, data.len() as u64)],
                    &never(),
                )
                .await
                .expect("ranged member read");
            assert!(found, "{}", input.name);
            let written = std::fs::read(&dest_path).expect("read dest");
            assert_eq!(&written[at as usize..], &data[..]);
        }
    }
}

#[tokio::test]
async fn a_vanished_file_is_left_out_and_members_can_be_skipped() {
    let repo = Repo::open_with_store(Arc::new(InMemory::new()), "", Codec::Zstd, 3);
    let dir = tempfile::tempdir().expect("temp dir");
    let inputs = inputs(dir.path());
    std::fs::remove_file(&inputs[1].0.src).expect("remove");
    let key = "backups/20261207T000000F/bundles/0";
    let batch = inputs.iter().map(|(i, _)| i.clone()).collect();
    let (_, packed) = repo.put_bundle(key, batch, &never()).await.expect("put");
    assert!(packed[1].is_none(), "a vanished file is not packed");
    let members = members(&inputs, &packed);
    assert_eq!(members.len(), 3);
    // Only the last member wanted: the others are read past and still checked.
    let wanted = members.len() - 1;
    let got = Arc::new(std::sync::Mutex::new(None));
    let sink = got.clone();
    repo.get_bundle(
        key,
        members,
        &never(),
        move |i| Ok((i == wanted).then(Vec::new)),
        move |_, content: Vec<u8>, _| {
            *sink.lock().expect("lock") = Some(content);
            Ok(())
        },
    )
    .await
    .expect("read");
    assert_eq!(got.lock().expect("lock").as_deref(), Some(&inputs[3].1[..]));
}

#[tokio::test]
async fn a_damaged_bundle_names_the_member_or_the_files_it_holds() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let repo = Repo::open_with_store(store.clone(), "", Codec::None, 3);
    let dir = tempfile::tempdir().expect("temp dir");
    let inputs = inputs(dir.path());
    let key = "backups/20261207T000000F/bundles/0";
    let batch = inputs.iter().map(|(i, _)| i.clone()).collect();
    let (_, packed) = repo.put_bundle(key, batch, &never()).await.expect("put");
    let members = members(&inputs, &packed);
    let path = ObjectPath::from(format!("{key}.raw"));
    let stored = store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");

    // A byte inside the third member's payload: that member is named.
    let mut damaged = BytesMut::from(&stored[..]);
    let inside = frame::HEADER_LEN as u64 + members[2].offset + frame::HEADER_LEN as u64 + 10;
    damaged[inside as usize] ^= 0xff;
    store
        .put(&path, PutPayload::from(damaged.freeze()))
        .await
        .expect("put damaged");
    let err = read_all(&repo, key, members.clone())
        .await
        .expect_err("damaged member");
    assert!(
        err.to_string().contains("global/pg_filenode.map"),
        "names the member: {err}"
    );

    // Bytes after the last member that no member covers: the bundle's checksum fails and
    // the error lists what the bundle holds.
    let mut padded = BytesMut::from(&stored[..stored.len() - TRAILER_LEN]);
    padded.extend_from_slice(b"junk");
    padded.extend_from_slice(&stored[stored.len() - TRAILER_LEN..]);
    store
        .put(&path, PutPayload::from(padded.freeze()))
        .await
        .expect("put padded");
    let err = read_all(&repo, key, members).await.expect_err("bad bundle");
    let text = err.to_string();
    assert!(text.contains("bundle checksum mismatch"), "{text}");
    assert!(
        text.contains("base/1/1259") && text.contains("base/1/16384_fsm"),
        "{text}"
    );
}

#[tokio::test]
async fn members_a_manifest_misplaces_are_refused_not_read_past_the_bundle() {
    // A manifest is untrusted input: offsets and lengths that overlap or reach past the end
    // of the bundle are errors naming the bundle, never a read of something else.
    let repo = Repo::open_with_store(Arc::new(InMemory::new()), "", Codec::Zstd, 3);
    let dir = tempfile::tempdir().expect("temp dir");
    let inputs = inputs(dir.path());
    let key = "backups/20261207T000000F/bundles/0";
    let batch = inputs.iter().map(|(i, _)| i.clone()).collect();
    let (_, packed) = repo.put_bundle(key, batch, &never()).await.expect("put");
    let good = members(&inputs, &packed);

    let mut overlapping = good.clone();
    overlapping[1].offset = overlapping[0].offset + 1;
    let err = read_all(&repo, key, overlapping)
        .await
        .expect_err("overlap");
    assert!(matches!(err, RepoError::Corrupt { .. }), "{err}");

    let mut too_long = good.clone();
    let last = too_long.len() - 1;
    too_long[last].stored_len += 1 << 30;
    let err = read_all(&repo, key, too_long)
        .await
        .expect_err("past the end");
    assert!(
        matches!(&err, RepoError::Corrupt { key: k, .. } if k == key),
        "{err}"
    );

    let mut beyond = good;
    beyond[0].offset = 1 << 40;
    beyond.truncate(1);
    let err = read_all(&repo, key, beyond)
        .await
        .expect_err("beyond the end");
    assert!(matches!(err, RepoError::Corrupt { .. }), "{err}");
}
