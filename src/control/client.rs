//! The client side: one request, one response (or a stream of them for `job_run`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Request, Response, VERSION_HINT};

/// Sends `request` to the daemon at `socket` and returns its answer.
pub async fn call(socket: &Path, request: &Request) -> Result<Response> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| unreachable(socket, &e))?;
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
        Err(e) => Err(unreachable(socket, &e)),
    }
}

/// The error of a failed connection to the daemon at `socket`, with what to do.
fn unreachable(socket: &Path, e: &std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        // The socket is the daemon's and the server's user's only (mode 0600).
        std::io::ErrorKind::PermissionDenied => {
            "HINT: only root and the server's OS user (postgres.user) may use the control \
             socket: run this command as one of them"
        }
        _ => "HINT: is `pgward run` running with the same config (control.socket)?",
    };
    anyhow::anyhow!(
        "cannot reach the pgward daemon at {}: {e}\n{hint}",
        socket.display()
    )
}

/// The error for an answer line that is not a response: none at all (the daemon closed the
/// connection), or one of another pgward version.
fn bad_answer(line: &str, e: &serde_json::Error) -> anyhow::Error {
    if line.trim().is_empty() {
        return anyhow::anyhow!(
            "the daemon closed the connection without answering\nHINT: pgward's log says \
             why (was it shutting down?)"
        );
    }
    let line = line.trim();
    anyhow::anyhow!("bad answer from the daemon: {line:?} ({e})\n{VERSION_HINT}")
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
        .map_err(|_| {
            anyhow::anyhow!(
                "the daemon did not answer within {}\nHINT: pgward's log says what it is busy \
                 with",
                humantime::format_duration(patience)
            )
        })?
        .context("read the daemon's answer")?;
    serde_json::from_str(answer.trim()).map_err(|e| bad_answer(&answer, &e))
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
        Err(e) => return Err(unreachable(socket, &e)),
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
        .map_err(|e| bad_answer(&answer, &e))
}

/// Sends `request` to the daemon at `socket` and hands each response line to `each` until
/// the daemon closes the connection (no time limit: a job may run for hours).
pub async fn call_streaming(
    socket: &Path,
    request: &Request,
    mut each: impl FnMut(Response),
) -> Result<()> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| unreachable(socket, &e))?;
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
        let response = serde_json::from_str(line.trim()).map_err(|e| bad_answer(&line, &e))?;
        each(response);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_permission_is_not_taken_for_a_missing_daemon() {
        let socket = Path::new("/run/postgresql/pgward.sock");
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            format!("{:#}", unreachable(socket, &e)),
            "cannot reach the pgward daemon at /run/postgresql/pgward.sock: permission denied\n\
             HINT: only root and the server's OS user (postgres.user) may use the control \
             socket: run this command as one of them"
        );
    }
}
