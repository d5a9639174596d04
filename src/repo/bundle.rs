//! Bundles: many small files (or ranges of files) in one object, so that a backup of
//! thousands of small files costs a few requests rather than one per file.
//!
//! ```text
//! header   8 bytes   as every object, codec "none": the bundle itself is not compressed
//! members            one after the other, each a complete object of its own (header,
//!                    payload compressed by the repository's codec, trailer with its length
//!                    and BLAKE3)
//! trailer 48 bytes   length and BLAKE3 of everything between header and trailer
//! ```
//!
//! A member is found by its offset and stored length within the content (after the
//! bundle's header), which the caller records (a backup's manifest does). So one member can
//! be read alone with a ranged read, and a whole bundle streamed once writes all of its
//! members; both check the member's own trailer, and a whole read also the bundle's. The
//! bundle's trailer sits where every object's does, so the existence and create checks of
//! [`Repo`] treat a bundle like any other object.
//!
//! Encoding and decoding run on one blocking thread per bundle, streaming: a member is read
//! from its file while it is compressed and sent, never held whole.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::codec::{Codec, Compressor, Decompressor};
use super::frame::{self, DecodeError, Digest, HEADER_LEN, TRAILER_LEN};
use super::get::{decode_error, ChannelReader};
use super::put::ChunkSink;
use super::tally::{Counted, Hashed};
use super::{ranges, Checksum, PutMode, PutOutcome, Repo, RepoError, Verified};

/// What goes into a bundle: ranges of a local file (`[(0, u64::MAX)]` for all of it).
#[derive(Debug, Clone)]
pub struct BundleInput {
    /// Named in errors (a data directory's relative path).
    pub name: String,
    pub src: PathBuf,
    pub ranges: Vec<ranges::Range>,
}

/// Where a member was stored and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Offset of the member within the bundle's content (after the bundle's header).
    pub offset: u64,
    /// Bytes the member takes in the bundle (its own header, payload and trailer).
    pub stored_len: u64,
    /// Length and checksum of the member's content (the ranges read, concatenated).
    pub len: u64,
    pub checksum: Checksum,
    /// The ranges actually read: a prefix of the ones asked for (the file may have shrunk).
    pub read: Vec<ranges::Range>,
}

/// One member to read from a bundle.
#[derive(Debug, Clone)]
pub struct Member {
    /// Named in errors.
    pub name: String,
    pub offset: u64,
    pub stored_len: u64,
}

/// What a stored bundle holds: the put's outcome and, per input in order, where it went
/// (`None`: the file was gone when its turn came).
pub type PackedBundle = (PutOutcome, Vec<Option<Packed>>);

impl Repo {
    /// Packs `inputs` into the bundle `key`, each member compressed with the repository's
    /// codec, overwriting what may be there: only for keys no one else writes or reads yet
    /// (a backup's own objects, before its manifest exists), so no request checks first.
    /// A file that no longer exists is left out; any other read error fails the bundle,
    /// naming the file.
    ///
    /// Cancel safety: cancelling leaves no object, or a complete one.
    pub async fn put_bundle(
        &self,
        key: &str,
        inputs: Vec<BundleInput>,
        cancel: &CancellationToken,
    ) -> Result<PackedBundle, RepoError> {
        let path = self.path(key, self.inner.codec)?;
        if cancel.is_cancelled() {
            return Err(RepoError::Cancelled);
        }
        let (codec, level) = (self.inner.codec, self.inner.level);
        let bundle_key = key.to_owned();
        let encode = move |sink: ChunkSink| encode_bundle(&bundle_key, inputs, codec, level, sink);
        let (outcome, packed) = self
            .upload_with(key, path.clone(), PutMode::Overwrite, cancel, encode)
            .await?;
        self.make_durable(key, &path, &outcome).await?;
        Ok((outcome, packed))
    }

    /// Streams the bundle `key` once and decodes `members` (ascending offsets) from it: each
    /// into the writer `open` returns for its index (`None`: not wanted, only checked as part
    /// of the bundle), then hands the writer and what the member held (length, checksum,
    /// stored size; its own trailer checked) to `finish`. The
    /// bundle's own checksum is checked at the end, so a bundle damaged outside the members
    /// asked for is reported too. `Ok(false)` when `key` is absent.
    ///
    /// Cancel safety: cancelling stops the read; members finished before stay finished.
    pub async fn get_bundle<W, O, F>(
        &self,
        key: &str,
        members: Vec<Member>,
        cancel: &CancellationToken,
        open: O,
        finish: F,
    ) -> Result<bool, RepoError>
    where
        W: Write + Send + 'static,
        O: FnMut(usize) -> Result<Option<W>, RepoError> + Send + 'static,
        F: FnMut(usize, W, Verified) -> Result<(), RepoError> + Send + 'static,
    {
        let Some(get) = self.open_object(key, cancel).await? else {
            return Ok(false);
        };
        let key_owned = key.to_owned();
        self.decode_stream(key, get, cancel, move |reader| {
            decode_bundle(&key_owned, reader, &members, open, finish)
        })
        .await?;
        Ok(true)
    }

    /// Reads one member of the bundle `key` with a ranged read, decoding and verifying it
    /// into `ranges` of `dest` (as [`Repo::get_to_ranges`]). `Ok(false)` when the bundle is
    /// absent.
    pub async fn get_member_to_ranges(
        &self,
        key: &str,
        member: &Member,
        dest: File,
        dest_name: &Path,
        ranges: Vec<ranges::Range>,
        cancel: &CancellationToken,
    ) -> Result<bool, RepoError> {
        let start = HEADER_LEN as u64 + member.offset;
        let range = start..start + member.stored_len;
        let Some(get) = self.open_object_range(key, Some(range), cancel).await? else {
            return Ok(false);
        };
        let (key_owned, name) = (key.to_owned(), dest_name.to_owned());
        let member_name = member.name.clone();
        self.decode_stream(key, get, cancel, move |reader| {
            let mut writer = ranges::RangesWriter::new(&dest, &ranges);
            frame::decode(reader, &mut writer)
                .map_err(|e| member_error(&key_owned, &member_name, &name, e))?;
            writer.finish().map_err(|e| RepoError::Corrupt {
                key: key_owned.clone(),
                reason: format!("member {member_name}: {e}"),
            })
        })
        .await?;
        Ok(true)
    }
}

/// Writes the bundle of `inputs` into `sink` (on a blocking thread).
fn encode_bundle(
    key: &str,
    inputs: Vec<BundleInput>,
    codec: Codec,
    level: i32,
    sink: ChunkSink,
) -> Result<(Digest, Vec<Option<Packed>>), RepoError> {
    let sink_error = |e: io::Error| RepoError::io(key, e);
    let mut out = Counted::new(sink);
    out.inner
        .write_all(&frame::header(Codec::None))
        .map_err(sink_error)?;
    let mut packed = Vec::with_capacity(inputs.len());
    let mut compressor = Compressor::new(codec, level).map_err(sink_error)?;
    for input in inputs {
        let file = match File::open(&input.src) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                packed.push(None);
                continue;
            }
            Err(e) => return Err(RepoError::io(&input.src, e)),
        };
        let offset = out.tally.len;
        let read = Arc::new(AtomicU64::new(0));
        let reader = ranges::RangesReader::new(file, input.ranges.clone(), read.clone());
        let mut reader = frame::Tracked::new(reader);
        let digest = match frame::encode_with(&mut reader, &mut compressor, &mut out) {
            Ok((digest, _)) => digest,
            Err(e) => {
                return Err(match reader.failed.take() {
                    Some(read_error) => RepoError::io(&input.src, read_error),
                    None => sink_error(e),
                })
            }
        };
        packed.push(Some(Packed {
            offset,
            stored_len: out.tally.len - offset,
            len: digest.len,
            checksum: digest.checksum,
            read: ranges::read_prefix(&input.ranges, read.load(Ordering::Relaxed)),
        }));
    }
    let digest = out.tally.digest();
    let mut sink = out.inner;
    sink.write_all(&frame::trailer(digest))
        .and_then(|()| sink.flush())
        .map_err(sink_error)?;
    Ok((digest, packed))
}

/// Reads a bundle from `reader` (on a blocking thread), decoding `members`.
fn decode_bundle<W: Write>(
    key: &str,
    reader: ChannelReader,
    members: &[Member],
    mut open: impl FnMut(usize) -> Result<Option<W>, RepoError>,
    mut finish: impl FnMut(usize, W, Verified) -> Result<(), RepoError>,
) -> Result<(), RepoError> {
    let corrupt = |reason: String| RepoError::Corrupt {
        key: key.to_owned(),
        reason,
    };
    let mut reader = frame::Tracked::new(reader);
    let mut head = [0u8; HEADER_LEN];
    read_fully(&mut reader, &mut head, key, "the bundle's header")?;
    if frame::parse_header(&head).map_err(&corrupt)? != Codec::None {
        return Err(corrupt("not a bundle (its header names a codec)".into()));
    }
    let mut content = Hashed::new(reader);
    let mut decompressor = Decompressor::default();
    for (index, member) in members.iter().enumerate() {
        let skip = member
            .offset
            .checked_sub(content.tally.len)
            .ok_or_else(|| {
                corrupt(format!(
                    "member {} at offset {} overlaps the one before",
                    member.name, member.offset
                ))
            })?;
        skip_bytes(&mut content, skip, key)?;
        let mut slice = (&mut content).take(member.stored_len);
        match open(index)? {
            Some(mut writer) => {
                let digest = frame::decode_with(&mut slice, &mut decompressor, &mut writer)
                    .map_err(|e| member_error(key, &member.name, Path::new(&member.name), e))?;
                let verified = Verified {
                    len: digest.len,
                    checksum: digest.checksum,
                    stored_bytes: member.stored_len,
                };
                finish(index, writer, verified)?;
            }
            None => skip_bytes(&mut slice, member.stored_len, key)?,
        }
        if content.tally.len != member.offset + member.stored_len {
            return Err(corrupt(format!(
                "the bundle ends inside member {} (offset {}, {} bytes)",
                member.name, member.offset, member.stored_len
            )));
        }
    }
    // The rest of the content, holding back what may be the trailer.
    let mut tail: Vec<u8> = Vec::with_capacity(2 * TRAILER_LEN);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = content
            .inner
            .read(&mut buf)
            .map_err(|e| read_error(key, e))?;
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > TRAILER_LEN {
            let spill = tail.len() - TRAILER_LEN;
            content.tally.add(&tail[..spill]);
            tail.drain(..spill);
        }
    }
    let expected = frame::parse_trailer(&tail).map_err(&corrupt)?;
    let actual = content.tally.digest();
    if actual != expected {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        return Err(corrupt(format!(
            "bundle checksum mismatch (stored {} bytes {}, read {} bytes {}); it holds {}",
            expected.len,
            expected.checksum,
            actual.len,
            actual.checksum,
            name_list(&names)
        )));
    }
    Ok(())
}

/// `names`, the first ten of them, for an error.
pub fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 10;
    let mut list = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    list
}

/// A member's decode error, naming the member.
fn member_error(key: &str, member: &str, dest: &Path, e: DecodeError) -> RepoError {
    match e {
        DecodeError::Corrupt(reason) => RepoError::Corrupt {
            key: key.to_owned(),
            reason: format!("member {member}: {reason}"),
        },
        other => decode_error(key, dest, other),
    }
}

fn read_error(key: &str, e: io::Error) -> RepoError {
    decode_error(key, Path::new("<bundle>"), DecodeError::Read(e))
}

fn read_fully(
    reader: &mut impl Read,
    buf: &mut [u8],
    key: &str,
    what: &str,
) -> Result<(), RepoError> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            RepoError::Corrupt {
                key: key.to_owned(),
                reason: format!("the bundle is too short for {what}"),
            }
        } else {
            read_error(key, e)
        }
    })
}

/// Reads and drops `n` bytes (hashed on the way when `reader` hashes).
fn skip_bytes(reader: &mut impl Read, n: u64, key: &str) -> Result<(), RepoError> {
    let copied = io::copy(&mut reader.take(n), &mut io::sink()).map_err(|e| read_error(key, e))?;
    if copied != n {
        return Err(RepoError::Corrupt {
            key: key.to_owned(),
            reason: format!("the bundle ends {} bytes early", n - copied),
        });
    }
    Ok(())
}
