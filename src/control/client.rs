//! The client side: one request, one response.

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
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).context("encode request")?;
    line.push(b'\n');
    write.write_all(&line).await.context("send request")?;
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(read).read_line(&mut answer),
    )
    .await
    .context("the daemon did not answer within 30s")?
    .context("read the daemon's answer")?;
    serde_json::from_str(answer.trim())
        .with_context(|| format!("bad answer from the daemon: {answer:?}"))
}
