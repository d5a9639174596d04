//! The client side: one request, one response (or a stream of them for `job_run`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Request, Response};

/// Sends `request` to the daemon at `socket` and returns its answer.
pub async fn call(socket: &Path, request: &Request) -> Result<Response> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the pgward daemon at {}\nHINT: is `pgward run` running with the same config (control.socket)?",
            socket.display()
        )
    })?;
    exchange(stream, request, Duration::from_secs(30)).await
}

/// Connects to the daemon; `Ok(None)` when no daemon listens there (no socket file, or a
/// stale one), so callers can do the work themselves.
pub async fn connect_if_running(socket: &Path) -> Result<Option<UnixStream>> {
    match UnixStream::connect(socket).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => {
            Err(e).with_context(|| format!("connect to the pgward daemon at {}", socket.display()))
        }
    }
}

/// One request and its answer on an open connection, waiting at most `patience`.
pub async fn exchange(
    stream: UnixStream,
    request: &Request,
    patience: Duration,
) -> Result<Response> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).context("encode request")?;
    line.push(b'\n');
    write.write_all(&line).await.context("send request")?;
    let mut answer = String::new();
    tokio::time::timeout(patience, BufReader::new(read).read_line(&mut answer))
        .await
        .with_context(|| {
            format!(
                "the daemon did not answer within {}",
                humantime::format_duration(patience)
            )
        })?
        .context("read the daemon's answer")?;
    serde_json::from_str(answer.trim())
        .with_context(|| format!("bad answer from the daemon: {answer:?}"))
}

/// [`exchange`] without an async runtime, for the one hot client (`wal-push`, run by postgres
/// for every segment): connect, send, read one line. `Ok(None)` when no daemon listens at
/// `socket`.
pub fn exchange_blocking(
    socket: &Path,
    request: &Request,
    patience: Duration,
) -> Result<Option<Response>> {
    use std::io::{BufRead, Write};
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("connect to the pgward daemon at {}", socket.display()))
        }
    };
    stream
        .set_read_timeout(Some(patience))
        .context("set the read timeout")?;
    let mut line = serde_json::to_vec(request).context("encode request")?;
    line.push(b'\n');
    (&stream).write_all(&line).context("send request")?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .context("read the daemon's answer")?;
    serde_json::from_str(answer.trim())
        .map(Some)
        .with_context(|| format!("bad answer from the daemon: {answer:?}"))
}

/// Sends `request` to the daemon at `socket` and hands each response line to `each` until
/// the daemon closes the connection (no time limit: a job may run for hours).
pub async fn call_streaming(
    socket: &Path,
    request: &Request,
    mut each: impl FnMut(Response),
) -> Result<()> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the pgward daemon at {}\nHINT: is `pgward run` running with the same config (control.socket)?",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).context("encode request")?;
    line.push(b'\n');
    write.write_all(&line).await.context("send request")?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .context("read the daemon's answer")?
    {
        let response = serde_json::from_str(line.trim())
            .with_context(|| format!("bad answer from the daemon: {line:?}"))?;
        each(response);
    }
    Ok(())
}
