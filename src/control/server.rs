//! The daemon side of the control socket.

use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Request, Response};
use crate::process::RunAs;

/// The future of one answer.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// Answers one request. Answers may take long (a WAL upload): each connection has its own task.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Answer<'_>;

    /// For a request answered as it goes (`job_run`): the response lines, the last one
    /// final; `None` (the default) for requests answered once by [`Handler::handle`].
    fn stream(&self, _request: &Request) -> Option<mpsc::UnboundedReceiver<Response>> {
        None
    }
}

/// A bound control socket; the file is removed on drop.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path`. A stale socket file from a previous run is replaced; a live one (another
    /// pgward answers) is an error, so two daemons never share a socket.
    pub async fn bind(path: &Path, owner: Option<&RunAs>) -> Result<ControlServer> {
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                bail!(
                    "another pgward is already listening on {}\nHINT: stop it first, or set control.socket to another path",
                    path.display()
                );
            }
            fs::remove_file(path)
                .with_context(|| format!("remove stale control socket {}", path.display()))?;
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("bind control socket {}", path.display()))?;
        // Only pgward and the server's user (archive_command runs as that user) may talk to it.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
        if let Some(owner) = owner {
            owner.chown(path)?;
        }
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves until `cancel` fires. Cancel safe.
    pub async fn serve(self, handler: Arc<dyn Handler>, cancel: CancellationToken) {
        loop {
            let stream = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("control socket accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, handler.as_ref()).await {
                    tracing::debug!("control request failed: {e:#}");
                }
            });
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

async fn answer(stream: UnixStream, handler: &dyn Handler) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A client that connects and says nothing must not hold a task forever.
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(read).read_line(&mut line),
    )
    .await
    .context("request timed out")?
    .context("read request")?;
    let request = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => request,
        Err(e) => {
            let response = Response::Error {
                message: format!("bad request: {e}"),
            };
            return send(&mut write, &response).await;
        }
    };
    if let Some(mut responses) = handler.stream(&request) {
        // A client that goes away stops the stream here, not the work behind it.
        while let Some(response) = responses.recv().await {
            send(&mut write, &response).await?;
        }
        return Ok(());
    }
    let response = handler.handle(request).await;
    send(&mut write, &response).await
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> Result<()> {
    let mut out = serde_json::to_vec(response).context("encode response")?;
    out.push(b'\n');
    write.write_all(&out).await.context("write response")
}
