//! Reading an object as a stream of its decoded content, for a consumer that reads it once
//! from the start (the WAL scan of an incremental backup) and needs no local copy.
//!
//! The decoder runs on one blocking thread and hands its output, through a bounded channel,
//! to the consumer on a second one: memory is a download's plus [`HANDOFF_DEPTH`] decoded
//! chunks. The whole object is always decoded, so its checksum is checked even when the
//! consumer stops early; a corrupt object is reported as such, whatever the consumer made of
//! the content it saw before the end.

use std::io::{self, Read, Write};
use std::sync::mpsc;

use tokio_util::sync::CancellationToken;

use super::frame::{self, DecodeError};
use super::{Repo, RepoError};

/// Decoded chunks (of up to 256 KiB) in flight between the decoder and the consumer.
const HANDOFF_DEPTH: usize = 4;

impl Repo {
    /// Streams the decoded content of `key` to `consume` (on a blocking thread). `Ok(None)`
    /// when `key` is absent under every codec; `Ok(Some(Err(_)))` when the object was sound
    /// and `consume` failed.
    ///
    /// Cancel safety: nothing is written; cancelling stops the read.
    pub async fn consume<T, E>(
        &self,
        key: &str,
        cancel: &CancellationToken,
        consume: impl FnOnce(&mut dyn Read) -> Result<T, E> + Send + 'static,
    ) -> Result<Option<Result<T, E>>, RepoError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let Some(get) = self.open_object(key, cancel).await? else {
            return Ok(None);
        };
        let key_owned = key.to_owned();
        self.decode_stream(key, get, cancel, move |encoded| {
            let (tx, rx) = mpsc::sync_channel(HANDOFF_DEPTH);
            std::thread::scope(|scope| {
                let decoder = scope.spawn(move || frame::decode(encoded, Handoff { tx }));
                let mut content = Received {
                    rx,
                    current: Vec::new(),
                    at: 0,
                };
                let consumed = consume(&mut content);
                if consumed.is_ok() {
                    // The rest, so the checksum in the trailer is checked.
                    let _ = io::copy(&mut content, &mut io::sink());
                }
                drop(content);
                let decoded = decoder.join().map_err(|_| {
                    RepoError::io("<decoder thread>", io::Error::other("the decoder panicked"))
                })?;
                match (decoded, consumed) {
                    (Ok(_), consumed) => Ok(Some(consumed)),
                    // The consumer stopped reading: its own error says why.
                    (Err(DecodeError::Write(_)), Err(e)) => Ok(Some(Err(e))),
                    (Err(e), _) => Err(super::get::decode_error(
                        &key_owned,
                        std::path::Path::new("<stream>"),
                        e,
                    )),
                }
            })
        })
        .await
    }
}

/// The decoder's output, sent on in chunks.
struct Handoff {
    tx: mpsc::SyncSender<Vec<u8>>,
}

impl Write for Handoff {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.tx
            .send(data.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the consumer stopped"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The decoded content on the consumer's side; ends where the decoder stopped (the decoder's
/// result says whether that was the end of a sound object).
struct Received {
    rx: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for Received {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
