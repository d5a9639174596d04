//! A storage fault proxy: an HTTP/1.1 proxy in the test process between pgward and a real
//! storage server (`TestS3`, given by its port), whose faults a test switches at runtime.
//!
//! Faults ([`Fault`]): refuse (the connection closed at once), stall (accepted, never
//! answered), `503 SlowDown` with S3's XML error body, slow (a link of so many bytes per
//! second, each direction on its own), and cut (a body closed after so many bytes, request or
//! response). A [`Rule`] applies one fault to the requests matching a method and a path
//! substring, optionally only to one in N of them (and never to two requests in a row for
//! one path: faults that the client's retries absorb), optionally only for a window of time
//! ([`FaultProxy::set_for`]: a SlowDown storm that passes); the proxy counts every request it
//! saw and every request it faulted, in all and per path ([`FaultProxy::counts_for`]).
//!
//! Requests are forwarded unchanged, `Host` included: an S3 client signs the host it talks
//! to (the proxy's), and the server checks the signature over the headers it receives, so a
//! rewritten `Host` would be refused. Each request gets its own upstream connection.
//!
//! The proxy runs on a runtime of its own (two threads), so it serves while the test blocks
//! on a child process; it stops when dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// What the proxy does to a request a [`Rule`] matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The connection is closed without an answer: at once when the rule matches every
    /// request, else as soon as the request's head is read.
    Refuse,
    /// The request is read and never answered.
    Stall,
    /// `503 Slow Down` with S3's `SlowDown` XML error body; the request is not forwarded.
    SlowDown,
    /// Forwarded through a link of this many bytes per second, in each direction (request
    /// bodies up, response bodies down), shared by all the requests it applies to.
    Slow { bytes_per_sec: u64 },
    /// Forwarded, but the request body and the response body are each cut (the connection
    /// closed) after this many bytes.
    Cut { after_bytes: u64 },
    /// Forwarded, but a `412 Precondition Failed` answer becomes a closed connection: a store
    /// that refuses a conditional put before reading its body and hangs up, so that the
    /// client sees a broken request instead of the refusal. Other answers pass.
    HideRefusal,
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub fault: Fault,
    /// `GET`, `PUT`, ...; `None` for any method.
    pub method: Option<String>,
    /// A substring of the path and query; `None` for any.
    pub path_contains: Option<String>,
    /// Only one in this many matching requests (the Nth, 2Nth, ...); 1 for every one.
    pub one_in: u64,
    /// Forward a request whose path's previous request was faulted: faults that one retry
    /// of the storage client absorbs.
    pub never_twice_in_a_row: bool,
}

impl Rule {
    /// `fault` on every request.
    pub fn all(fault: Fault) -> Rule {
        Rule {
            fault,
            method: None,
            path_contains: None,
            one_in: 1,
            never_twice_in_a_row: false,
        }
    }

    /// Only requests of `method`.
    pub fn method(mut self, method: &str) -> Rule {
        self.method = Some(method.to_owned());
        self
    }

    /// Only requests whose path (with query) contains `part`.
    pub fn path_contains(mut self, part: &str) -> Rule {
        self.path_contains = Some(part.to_owned());
        self
    }

    /// Only one in `n` matching requests.
    pub fn one_in(mut self, n: u64) -> Rule {
        self.one_in = n.max(1);
        self
    }

    /// Never two faulted requests in a row for one path (see [`Rule::never_twice_in_a_row`]).
    pub fn never_twice_in_a_row(mut self) -> Rule {
        self.never_twice_in_a_row = true;
        self
    }

    /// Whether this rule applies to every request, whatever its head says.
    fn unconditional(&self) -> bool {
        self.method.is_none()
            && self.path_contains.is_none()
            && self.one_in == 1
            && !self.never_twice_in_a_row
    }
}

/// What the proxy counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests (or, under an unconditional refuse, connections) seen.
    pub requests: u64,
    /// Of those, the ones a rule applied to.
    pub faulted: u64,
}

/// A throttled direction of the link: the time by which what was sent so far has passed.
struct Link {
    free_at: tokio::sync::Mutex<Instant>,
}

impl Link {
    /// Waits until `n` bytes at `rate` bytes/s have passed after what went before.
    async fn pass(&self, n: usize, rate: u64) {
        let cost = Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
        let until = {
            let mut free_at = self.free_at.lock().await;
            let start = (*free_at).max(Instant::now());
            *free_at = start + cost;
            *free_at
        };
        tokio::time::sleep_until(until).await;
    }
}

struct State {
    upstream: SocketAddr,
    rule: Mutex<Option<Rule>>,
    /// When the rule stops applying (`set_for`); `None`: until changed.
    rule_until: Mutex<Option<Instant>>,
    /// Every request's path (with query) and whether it was faulted, in arrival order.
    seen: Mutex<Vec<(String, bool)>>,
    /// Whether the last request of each path was faulted.
    last_faulted: Mutex<std::collections::HashMap<String, bool>>,
    requests: AtomicU64,
    faulted: AtomicU64,
    /// Matching requests so far, for `one_in`.
    matched: AtomicU64,
    /// Forward with `Host` naming the upstream server (what a proxy must not do: see
    /// [`FaultProxy::rewrite_host`]).
    rewrite_host: AtomicBool,
    up: Link,
    down: Link,
}

impl State {
    /// The fault for a request with this head, counting it.
    fn fault_for(&self, method: &str, path: &str) -> Option<Fault> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut seen = self.seen.lock().expect("seen lock");
        let mut fault = self.matching_fault(method, path);
        let spare = fault.is_some()
            && self
                .rule
                .lock()
                .expect("rule lock")
                .as_ref()
                .is_some_and(|r| r.never_twice_in_a_row)
            && self
                .last_faulted
                .lock()
                .expect("seen lock")
                .get(path)
                .is_some_and(|faulted| *faulted);
        if spare {
            fault = None;
        } else if fault.is_some() {
            self.faulted.fetch_add(1, Ordering::SeqCst);
        }
        seen.push((path.to_owned(), fault.is_some()));
        (self.last_faulted.lock().expect("seen lock")).insert(path.to_owned(), fault.is_some());
        fault
    }

    fn matching_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let ended = self
            .rule_until
            .lock()
            .expect("rule lock")
            .is_some_and(|until| Instant::now() >= until);
        if ended {
            return None;
        }
        let rule = self.rule.lock().expect("rule lock").clone()?;
        if rule.method.as_deref().is_some_and(|m| m != method)
            || rule
                .path_contains
                .as_deref()
                .is_some_and(|p| !path.contains(p))
        {
            return None;
        }
        let n = self.matched.fetch_add(1, Ordering::SeqCst) + 1;
        if n % rule.one_in != 0 {
            return None;
        }
        Some(rule.fault)
    }
}

/// The proxy; see the module documentation.
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// A proxy on a free 127.0.0.1 port forwarding to `127.0.0.1:upstream_port`, no fault set.
    pub fn start(upstream_port: u16) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("build the fault proxy's runtime");
        // Bound here, not with `block_on`: the caller may be a test's own runtime.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let now = Instant::now();
        let state = Arc::new(State {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            rule: Mutex::new(None),
            rule_until: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            last_faulted: Mutex::new(Default::default()),
            requests: AtomicU64::new(0),
            faulted: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            rewrite_host: AtomicBool::new(false),
            up: Link {
                free_at: tokio::sync::Mutex::new(now),
            },
            down: Link {
                free_at: tokio::sync::Mutex::new(now),
            },
        });
        let accepting = state.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("listen on the runtime");
            accept_loop(listener, accepting).await
        });
        FaultProxy {
            port,
            state,
            runtime: Some(runtime),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`: the endpoint to give pgward instead of the server's.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Applies `rule` from the next request on (requests in flight keep what they had).
    pub fn set(&self, rule: Rule) {
        self.state.matched.store(0, Ordering::SeqCst);
        *self.state.rule_until.lock().expect("rule lock") = None;
        *self.state.rule.lock().expect("rule lock") = Some(rule);
    }

    /// Applies `rule` from the next request on, for `window`; then forwards every request
    /// unchanged (a storm that passes by itself, whatever the test is doing meanwhile).
    pub fn set_for(&self, rule: Rule, window: Duration) {
        self.set(rule);
        *self.state.rule_until.lock().expect("rule lock") = Some(Instant::now() + window);
    }

    /// Forwards every request unchanged from now on.
    pub fn clear(&self) {
        *self.state.rule.lock().expect("rule lock") = None;
        *self.state.rule_until.lock().expect("rule lock") = None;
    }

    /// Whether a rule applies now (set, and its window, if any, not over).
    pub fn faulting(&self) -> bool {
        let until = *self.state.rule_until.lock().expect("rule lock");
        self.state.rule.lock().expect("rule lock").is_some()
            && until.is_none_or(|until| Instant::now() < until)
    }

    /// What the proxy counted of the requests whose path (with query) contains `part`.
    pub fn counts_for(&self, part: &str) -> Counts {
        let seen = self.state.seen.lock().expect("seen lock");
        let matching = seen.iter().filter(|(path, _)| path.contains(part));
        let (requests, faulted) = matching.fold((0, 0), |(n, f), (_, faulted)| {
            (n + 1, f + u64::from(*faulted))
        });
        Counts { requests, faulted }
    }

    /// Forwards requests with their `Host` rewritten to the upstream server's address, as a
    /// reverse proxy commonly does: an S3 server then refuses them, since the client signed
    /// the host it talked to. Only for showing that the proxy must not do it.
    pub fn rewrite_host(&self, on: bool) {
        self.state.rewrite_host.store(on, Ordering::SeqCst);
    }

    pub fn counts(&self) -> Counts {
        Counts {
            requests: self.state.requests.load(Ordering::SeqCst),
            faulted: self.state.faulted.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Not a plain drop: that blocks, and panics inside a test's own runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let refuse_all = state
            .rule
            .lock()
            .expect("rule lock")
            .as_ref()
            .is_some_and(|r| r.fault == Fault::Refuse && r.unconditional());
        if refuse_all {
            state.requests.fetch_add(1, Ordering::SeqCst);
            state.faulted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            // Errors here are the faults themselves, or the client going away.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One request: faulted as the rule says, or forwarded.
async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let fault = state.fault_for(req.method().as_str(), &path);
    let shape = match fault {
        None | Some(Fault::HideRefusal) => Shape::default(),
        Some(Fault::Refuse) => return Err("refused by the fault proxy".into()),
        Some(Fault::Stall) => return std::future::pending().await,
        Some(Fault::SlowDown) => return Ok(slow_down(&path)),
        Some(Fault::Slow { bytes_per_sec }) => Shape {
            rate: Some(bytes_per_sec),
            cut_after: None,
        },
        Some(Fault::Cut { after_bytes }) => Shape {
            rate: None,
            cut_after: Some(after_bytes),
        },
    };
    let (mut parts, body) = req.into_parts();
    if state.rewrite_host.load(Ordering::SeqCst) {
        let host = hyper::header::HeaderValue::from_str(&state.upstream.to_string())?;
        parts.headers.insert(hyper::header::HOST, host);
    }
    let body = shaped(body, shape, state.clone(), Direction::Up);
    let upstream = TcpStream::connect(state.upstream).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::spawn(connection);
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    if fault == Some(Fault::HideRefusal) && response.status() == StatusCode::PRECONDITION_FAILED {
        return Err("a refusal hidden by the fault proxy".into());
    }
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        shaped(body, shape, state, Direction::Down),
    ))
}

/// S3's answer to a client it wants slower.
fn slow_down(path: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
         <Message>Please reduce your request rate.</Message><Resource>{path}</Resource>\
         <RequestId>fault-proxy</RequestId></Error>"
    );
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("content-type", "application/xml")
        .header("content-length", body.len())
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e: Infallible| match e {})
                .boxed_unsync(),
        )
        .expect("a valid response")
}

/// What happens to a forwarded body.
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    rate: Option<u64>,
    cut_after: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// The largest piece a throttled body is passed on in: a tenth of a second of the link.
fn step(rate: u64) -> usize {
    (rate / 10).clamp(1024, 1 << 20) as usize
}

/// `body`, throttled and cut as `shape` says.
fn shaped(body: Incoming, shape: Shape, state: Arc<State>, direction: Direction) -> ProxyBody {
    if shape.rate.is_none() && shape.cut_after.is_none() {
        return body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
    }
    struct Feed {
        body: Incoming,
        pending: Bytes,
        passed: u64,
        done: bool,
    }
    let feed = Feed {
        body,
        pending: Bytes::new(),
        passed: 0,
        done: false,
    };
    let stream = futures_util::stream::unfold(feed, move |mut feed| {
        let state = state.clone();
        async move {
            if feed.done {
                return None;
            }
            while feed.pending.is_empty() {
                match feed.body.frame().await {
                    None => return None,
                    Some(Err(e)) => {
                        feed.done = true;
                        return Some((Err(Box::new(e) as BoxError), feed));
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => feed.pending = data,
                        Err(frame) => return Some((Ok(frame), feed)),
                    },
                }
            }
            if let Some(limit) = shape.cut_after {
                if feed.passed >= limit {
                    feed.done = true;
                    // A pause first: hyper writes what it holds when the body is pending,
                    // so the bytes before the cut reach the other side.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let cut: BoxError = "body cut by the fault proxy".into();
                    return Some((Err(cut), feed));
                }
            }
            let mut n = feed.pending.len();
            if let Some(rate) = shape.rate {
                n = n.min(step(rate));
            }
            if let Some(limit) = shape.cut_after {
                n = n.min((limit - feed.passed) as usize);
            }
            let piece = feed.pending.split_to(n);
            if let Some(rate) = shape.rate {
                let link = match direction {
                    Direction::Up => &state.up,
                    Direction::Down => &state.down,
                };
                link.pass(piece.len(), rate).await;
            }
            feed.passed += piece.len() as u64;
            Some((Ok(Frame::data(piece)), feed))
        }
    });
    StreamBody::new(stream).boxed_unsync()
}
