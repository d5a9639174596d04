//! The daemon side of the control socket, and who is asking: the socket is the server's
//! user's (mode 0600, so its `wal-push` can reach it), and every database superuser can run
//! programs as that user, so a request is weighed by the caller's uid ([`Caller`], from
//! `SO_PEERCRED`), never by its words alone.

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

use super::{Request, Response, VERSION_HINT};
use crate::process::RunAs;

/// The future of one answer.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// Who sent a request: the connected process's credentials, as the kernel reports them
/// (`SO_PEERCRED`, taken when it connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Caller {
    /// Root or pgward's own user: may have the daemon act (run a job, name any path), since
    /// the daemon can do nothing for them they cannot do themselves.
    pub fn is_trusted(&self) -> bool {
        self.uid == 0 || self.uid == nix::unistd::geteuid().as_raw()
    }

    /// Refuses `request` from this caller: logs why (WARN, with the uid) and answers it.
    pub fn refuse(&self, request: &str, reason: &str) -> Response {
        let pid = self.pid.map_or_else(|| "?".to_owned(), |p| p.to_string());
        tracing::warn!(
            uid = self.uid,
            pid = %pid,
            request,
            "refused {request} from uid {} (pid {pid}): {reason}",
            self.uid
        );
        Response::Error {
            message: reason.to_owned(),
        }
    }

    /// The refusal of a request that acts, from a caller that is neither root nor pgward's
    /// own user.
    pub fn refuse_untrusted(&self, request: &str) -> Response {
        let me = nix::unistd::geteuid().as_raw();
        let (only, hint) = match me {
            0 => (
                "root only".to_owned(),
                "as root (`docker exec -u root ...`)".to_owned(),
            ),
            _ => (
                format!("root and uid {me} only"),
                format!("as uid {me}, pgward's user"),
            ),
        };
        self.refuse(
            request,
            &format!(
                "{request} is for {only}, not uid {}\nHINT: run the command {hint}",
                self.uid
            ),
        )
    }
}

/// Answers one request. Answers may take long (a WAL upload): each connection has its own task.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, caller: Caller, request: Request) -> Answer<'_>;

    /// For a request answered as it goes (`job_run`): the response lines, the last one
    /// final; `None` (the default) for requests answered once by [`Handler::handle`].
    fn stream(
        &self,
        _caller: Caller,
        _request: &Request,
    ) -> Option<mpsc::UnboundedReceiver<Response>> {
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
        let listener = UnixListener::bind(path).map_err(|e| bind_error(path, &e))?;
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

/// The error of a control socket that cannot be bound at `path`, with what to do when that
/// is known.
fn bind_error(path: &Path, e: &std::io::Error) -> anyhow::Error {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied => Some(format!(
            "let pgward's user write {}, or set control.socket to a path in a directory it \
             can write",
            dir.display()
        )),
        // A unix socket's path is limited to 107 bytes (`sun_path`).
        std::io::ErrorKind::InvalidInput => Some(
            "set control.socket to a shorter path (a unix socket's is 107 bytes at most)".into(),
        ),
        _ => None,
    };
    match hint {
        Some(hint) => anyhow::anyhow!("bind control socket {}: {e}\nHINT: {hint}", path.display()),
        None => anyhow::anyhow!("bind control socket {}: {e}", path.display()),
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

async fn answer(stream: UnixStream, handler: &dyn Handler) -> Result<()> {
    // Who connected: without it, nothing is answered.
    let credentials = stream
        .peer_cred()
        .context("read the caller's credentials")?;
    let caller = Caller {
        uid: credentials.uid(),
        gid: credentials.gid(),
        pid: credentials.pid(),
    };
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
                message: format!("bad request: {e}\n{VERSION_HINT}"),
            };
            return send(&mut write, &response).await;
        }
    };
    if let Some(mut responses) = handler.stream(caller, &request) {
        // A client that goes away stops the stream here, not the work behind it.
        while let Some(response) = responses.recv().await {
            send(&mut write, &response).await?;
        }
        return Ok(());
    }
    let response = handler.handle(caller, request).await;
    send(&mut write, &response).await
}

/// Writes one response line. Everything that leaves the daemon here is scrubbed of what looks
/// like a secret ([`crate::redact`]): a status quotes errors and job output, a refusal may
/// quote what it refused.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> Result<()> {
    let mut value = serde_json::to_value(response).context("encode response")?;
    crate::redact::scrub_json(&mut value);
    let mut out = serde_json::to_vec(&value).context("encode response")?;
    out.push(b'\n');
    write.write_all(&out).await.context("write response")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Handler for Nothing {
        fn handle(&self, caller: Caller, _request: Request) -> Answer<'_> {
            Box::pin(async move {
                Response::Error {
                    message: format!("uid {}", caller.uid),
                }
            })
        }
    }

    #[tokio::test]
    async fn a_request_this_daemon_cannot_read_is_refused_with_the_version_hint() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("pgward.sock");
        let server = ControlServer::bind(&socket, None).await.expect("bind");
        let cancel = CancellationToken::new();
        let serving = tokio::spawn(server.serve(Arc::new(Nothing), cancel.clone()));
        let mut stream = UnixStream::connect(&socket).await.expect("connect");
        stream
            .write_all(b"{\"request\":\"frobnicate\"}\n")
            .await
            .expect("send");
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .await
            .expect("read");
        let Ok(Response::Error { message }) = serde_json::from_str(answer.trim()) else {
            panic!("{answer}");
        };
        assert!(message.starts_with("bad request: "), "{message}");
        assert!(message.ends_with(&format!("\n{VERSION_HINT}")), "{message}");
        cancel.cancel();
        serving.await.expect("the server stops");
    }

    #[tokio::test]
    async fn the_handler_learns_who_asks_from_the_kernel() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("pgward.sock");
        let server = ControlServer::bind(&socket, None).await.expect("bind");
        let cancel = CancellationToken::new();
        let serving = tokio::spawn(server.serve(Arc::new(Nothing), cancel.clone()));
        let stream = UnixStream::connect(&socket).await.expect("connect");
        let answer =
            crate::control::client::exchange(stream, &Request::Status, Duration::from_secs(5))
                .await
                .expect("answer");
        let Response::Error { message } = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(message, format!("uid {}", nix::unistd::geteuid().as_raw()));
        cancel.cancel();
        serving.await.expect("the server stops");
    }

    #[test]
    fn only_root_and_pgward_itself_are_trusted_to_act() {
        let me = nix::unistd::geteuid().as_raw();
        let caller = |uid| Caller {
            uid,
            gid: 0,
            pid: Some(42),
        };
        assert!(caller(0).is_trusted());
        assert!(caller(me).is_trusted());
        let stranger = if me == 0 { 101 } else { me + 1 };
        assert!(!caller(stranger).is_trusted());
        let Response::Error { message } = caller(stranger).refuse_untrusted("job_run") else {
            panic!("not an error");
        };
        let (only, hint) = match me {
            0 => (
                "root only".to_owned(),
                "as root (`docker exec -u root ...`)".to_owned(),
            ),
            _ => (
                format!("root and uid {me} only"),
                format!("as uid {me}, pgward's user"),
            ),
        };
        assert_eq!(
            message,
            format!("job_run is for {only}, not uid {stranger}\nHINT: run the command {hint}")
        );
    }

    #[test]
    fn a_socket_that_cannot_be_bound_says_what_to_change() {
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            format!("{:#}", bind_error(Path::new("/run/pgward/pgward.sock"), &e)),
            "bind control socket /run/pgward/pgward.sock: permission denied\n\
             HINT: let pgward's user write /run/pgward, or set control.socket to a path in a \
             directory it can write"
        );
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            format!("{:#}", bind_error(Path::new("/run/pgward.sock"), &e)),
            "bind control socket /run/pgward.sock: connection reset"
        );
    }
}
