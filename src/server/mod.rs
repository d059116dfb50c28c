//! The AWS KMS protocol server, `kmsfs kms serve`: AWS JSON 1.1 over HTTP/1.1
//! (POST /, `X-Amz-Target: TrentService.<Operation>`) on a Unix socket or a
//! loopback TCP port, serving the local keystore to boto3, the aws CLI and
//! the AWS SDKs. Callers are the socket peer's credentials (Unix) or the
//! principal of a SigV4 access key (TCP, `auth`, whose header is checked
//! before the body is read); operations in `ops` (parsed into
//! `kms::Operation`; the key service authorizes each), errors in `error`.
//! Slow or idle clients are cut off (`HEADER_TIMEOUT`, `BODY_TIMEOUT`) and
//! no one peer holds more than `MAX_PER_PEER` connections. Built on tokio and hyper 1; the keystore's blocking
//! work runs on tokio's blocking pool.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::kms::{Caller, CallerSource, LocalKeyStore, Operation};

mod auth;
mod error;
mod ops;
mod tls;

pub use auth::MAX_SKEW;
use error::ApiError;
use ops::Reply;

/// Largest request body accepted (AWS's largest, a policy, is 32 KiB).
pub const MAX_BODY: usize = 256 * 1024;
/// Most connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 512;
/// Most connections of one peer at once (a local user, found from
/// the kernel's sock_diag for loopback TCP, or the socket peer's uid; else the
/// address): more are closed as soon as they are accepted, so that no one
/// peer can take the slots of the others.
pub const MAX_PER_PEER: usize = 64;
/// How long a client may take to send a request's headers, and how long
/// a connection may stay idle between two requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body, once its
/// signature's header was accepted.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::listen::Listen;
use crate::listen::{BindError, bind_unix, shutdown_signal};

impl From<BindError> for ServerError {
    fn from(e: BindError) -> Self {
        match e {
            BindError::Usage(m) => ServerError::Usage(m),
            BindError::Io(m) => ServerError::Io(m),
        }
    }
}

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: Listen,
    /// The certificate chain and private key (PEM) to serve TCP over TLS
    /// with; a TCP address that is not loopback requires them.
    pub tls: Option<TlsFiles>,
    /// Permissions of the Unix socket (0600: only this user and root connect).
    pub socket_mode: u32,
    /// Worker threads of the runtime.
    pub threads: usize,
    /// The region of ARNs; None: each request's signing region.
    pub region: Option<String>,
}

/// `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key, readable by its owner only.
    pub key: std::path::PathBuf,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A refused setting.
    #[error("{0}")]
    Usage(String),
    /// A system error (bind, socket file).
    #[error("{0}")]
    Io(String),
}

/// Requests served, by operation, and refusals.
#[derive(Debug)]
struct Stats {
    ops: [AtomicU64; Operation::ALL.len()],
    errors: AtomicU64,
    auth_refused: AtomicU64,
    peer_refused: AtomicU64,
    /// Connections accepted (clients keep theirs open between requests:
    /// far fewer than requests).
    connections: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            ops: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: AtomicU64::new(0),
            auth_refused: AtomicU64::new(0),
            peer_refused: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }
}

impl Stats {
    fn count(&self, op: Option<Operation>) {
        if let Some(op) = op {
            self.ops[op.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn summary(&self) -> String {
        let mut parts: Vec<String> = Operation::served()
            .filter_map(|(op, name)| {
                let n = self.ops[op.index()].load(Ordering::Relaxed);
                (n > 0).then(|| format!("{name}={n}"))
            })
            .collect();
        for (name, n) in [
            ("errors", &self.errors),
            ("auth_refused", &self.auth_refused),
            ("peer_refused", &self.peer_refused),
            ("connections", &self.connections),
        ] {
            parts.push(format!("{name}={}", n.load(Ordering::Relaxed)));
        }
        parts.join(" ")
    }
}

struct State {
    ks: Arc<LocalKeyStore>,
    stats: Stats,
    /// Operations answered with ThrottlingException (fault injection for
    /// tests: `KMSFS_TEST_THROTTLE=Decrypt,GenerateDataKey`, debug builds only).
    throttled: Vec<Operation>,
    /// Open connections per peer (`MAX_PER_PEER`).
    peers: Mutex<HashMap<PeerId, usize>>,
    /// True when `--region` fixed the region of ARNs.
    region_fixed: bool,
}

/// The test-only throttling switch; always empty in release builds.
fn throttled_operations() -> Vec<Operation> {
    #[cfg(debug_assertions)]
    if let Ok(v) = std::env::var("KMSFS_TEST_THROTTLE") {
        log::warn!("KMSFS_TEST_THROTTLE: answering {v} with ThrottlingException");
        return v.split(',').filter_map(Operation::from_target).collect();
    }
    Vec::new()
}

#[derive(Clone, Copy)]
enum Peer {
    /// A Unix socket peer: its credentials are the caller.
    Unix(Caller),
    /// A TCP peer (`remote`, connected to `local`): the request's
    /// signature says who it is.
    Tcp {
        local: SocketAddr,
        remote: SocketAddr,
    },
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix(c) => write!(f, "unix peer uid {} pid {}", c.uid, c.pid),
            Peer::Tcp { remote, .. } => write!(f, "{remote}"),
        }
    }
}

/// Whom `MAX_PER_PEER` counts connections of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerId {
    Uid(u32),
    Ip(std::net::IpAddr),
}

impl Peer {
    /// The local user behind the connection when the system says (a Unix
    /// socket's credentials, the kernel's sock_diag for loopback TCP), else
    /// the address.
    fn id(self) -> PeerId {
        match self {
            Peer::Unix(c) => PeerId::Uid(c.uid),
            Peer::Tcp { local, remote } if remote.ip().is_loopback() => {
                crate::os::net::tcp_peer_uid(local, remote)
                    .map_or(PeerId::Ip(remote.ip()), PeerId::Uid)
            }
            Peer::Tcp { remote, .. } => PeerId::Ip(remote.ip()),
        }
    }
}

/// One of a peer's `MAX_PER_PEER` connections, given back on drop.
struct PeerSlot {
    st: Arc<State>,
    id: PeerId,
}

impl PeerSlot {
    fn take(st: &Arc<State>, id: PeerId) -> Option<Self> {
        let mut peers = st.peers.lock().unwrap_or_else(|e| e.into_inner());
        let n = peers.entry(id).or_insert(0);
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self { st: st.clone(), id })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.st.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = peers.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.id);
            }
        }
    }
}

/// A response body that zeroizes its bytes when hyper is done with them.
struct ZeroizingBody(zeroize::Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn response(status: u16, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("x-amzn-requestid", v);
    }
    r
}

/// One request: its operation parsed from `X-Amz-Target`, answered, counted.
async fn handle(
    st: Arc<State>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let op = operation(req.headers());
    let counted = op.as_ref().ok().copied();
    let result = answer(&st, peer, op, req).await;
    st.stats.count(counted);
    Ok(match result {
        Ok(Reply::Json(v)) => {
            response(200, Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
        }
        Ok(Reply::Secret(b)) => response(200, Bytes::from_owner(ZeroizingBody(b))),
        Err(e) => {
            st.stats.errors.fetch_add(1, Ordering::Relaxed);
            response(e.status, Bytes::from(e.body()))
        }
    })
}

/// The operation `X-Amz-Target: TrentService.<Operation>` names: the one
/// place the header is read; what is counted, authorized and dispatched.
fn operation(headers: &http::HeaderMap) -> Result<Operation, ApiError> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("TrentService."));
    match target {
        Some(t) => Operation::from_target(t).ok_or_else(|| ops::unknown_operation(t)),
        None => Err(ApiError::new(
            "UnknownOperationException",
            400,
            "X-Amz-Target must be TrentService.<Operation>",
        )),
    }
}

/// Who signs a request: a Unix peer is its credentials; a TCP request's
/// signature header is checked before the body is read.
enum Signer {
    Unix(Caller),
    Tcp(Box<auth::Presigned>),
}

/// A request whose headers were checked and whose body was read, once:
/// what is verified, then dispatched.
struct Checked {
    op: Result<Operation, ApiError>,
    signer: Signer,
    parts: http::request::Parts,
    body: Bytes,
}

/// Checks the request's route and signature header, reads its body (within
/// `BODY_TIMEOUT`), then verifies and runs it on the blocking pool.
async fn answer(
    st: &Arc<State>,
    peer: Peer,
    op: Result<Operation, ApiError>,
    req: Request<Incoming>,
) -> Result<Reply, ApiError> {
    let (parts, body) = req.into_parts();
    if parts.method != http::Method::POST || parts.uri.path() != "/" {
        return Err(ApiError::new(
            "UnknownOperationException",
            404,
            "the AWS KMS protocol is POST / with X-Amz-Target",
        ));
    }
    let signer = match peer {
        Peer::Unix(c) => Signer::Unix(c),
        Peer::Tcp { .. } => Signer::Tcp(Box::new(
            auth::precheck(&st.ks, &parts.headers, SystemTime::now())
                .inspect_err(|e| refused(st, peer, e))?,
        )),
    };
    let body = read_body(body).await?;
    let req = Checked {
        op,
        signer,
        parts,
        body,
    };
    let st = st.clone();
    tokio::task::spawn_blocking(move || verify_and_run(&st, peer, req))
        .await
        .map_err(|_| ApiError::new("KMSInternalException", 500, "the operation failed"))?
}

/// The body, at most `MAX_BODY` bytes, within `BODY_TIMEOUT`.
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err(ApiError::new(
            "SerializationException",
            413,
            format!("the request body could not be read or exceeds {MAX_BODY} bytes"),
        )),
        Err(_) => Err(ApiError::new(
            "RequestTimeoutException",
            408,
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    }
}

/// Verifies a TCP request's signature over the body it read, then runs
/// the operation for the caller, ARNs named in the signing region.
fn verify_and_run(st: &State, peer: Peer, req: Checked) -> Result<Reply, ApiError> {
    let Checked {
        op,
        signer,
        parts,
        body,
    } = req;
    let (caller, region) = match signer {
        Signer::Unix(c) => (c, None),
        Signer::Tcp(p) => {
            let c = p
                .verify(
                    parts.method.as_str(),
                    &parts.uri.to_string(),
                    &parts.headers,
                    &body,
                )
                .inspect_err(|e| refused(st, peer, e))?;
            (c, Some(p.region().to_string()))
        }
    };
    let arns = arns_for(st, region.as_deref()).inspect_err(|e| refused(st, peer, e))?;
    let r = run(st, &caller, op?, &body);
    match &arns {
        Some((from, to)) => rename_arns(r, from, to),
        None => r,
    }
}

/// The ARN prefix to rename in an answer to a request signed for `region`:
/// None when the service's region is the one (or the caller is a Unix peer);
/// a request signed for another region than `--region` is refused, as AWS
/// refuses a credential scoped to another region.
fn arns_for(st: &State, region: Option<&str>) -> Result<Option<(String, String)>, ApiError> {
    let Some(region) = region else {
        return Ok(None);
    };
    if region == st.ks.region() {
        return Ok(None);
    }
    if st.region_fixed || !crate::kms::service::valid_region(region) {
        return Err(ApiError::new(
            "InvalidSignatureException",
            400,
            format!(
                "Credential should be scoped to a valid region: this server answers for {}",
                st.ks.region()
            ),
        ));
    }
    Ok(Some((
        st.ks.arn_prefix(),
        crate::kms::model::arn_prefix(region, st.ks.account_id()),
    )))
}

/// An answer with every ARN of this keystore named in the request's region.
fn rename_arns(r: Result<Reply, ApiError>, from: &str, to: &str) -> Result<Reply, ApiError> {
    fn walk(v: &mut serde_json::Value, from: &str, to: &str) {
        match v {
            serde_json::Value::String(s) if s.contains(from) => *s = s.replace(from, to),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, from, to)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|x| walk(x, from, to)),
            _ => {}
        }
    }
    match r {
        Ok(Reply::Json(mut v)) => {
            walk(&mut v, from, to);
            Ok(Reply::Json(v))
        }
        Ok(Reply::Secret(b)) => {
            let n = b
                .windows(from.len())
                .filter(|w| *w == from.as_bytes())
                .count();
            // Sized once: no reallocation leaves a copy of the plaintext behind.
            let mut out = zeroize::Zeroizing::new(Vec::with_capacity(b.len() + n * to.len()));
            let mut rest: &[u8] = &b;
            while let Some(i) = rest.windows(from.len()).position(|w| w == from.as_bytes()) {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(to.as_bytes());
                rest = &rest[i + from.len()..];
            }
            out.extend_from_slice(rest);
            Ok(Reply::Secret(out))
        }
        Err(mut e) => {
            e.message = e.message.replace(from, to);
            Err(e)
        }
    }
}

/// Counts and logs a request whose signature was refused.
fn refused(st: &State, peer: Peer, e: &ApiError) {
    st.stats.auth_refused.fetch_add(1, Ordering::Relaxed);
    log::warn!("refused a request from {peer:?}: {}: {}", e.kind, e.message);
}

/// Runs `op` for `caller` (the key service authorizes it) and logs it.
fn run(st: &State, caller: &Caller, op: Operation, body: &[u8]) -> Result<Reply, ApiError> {
    if st.throttled.contains(&op) {
        return Err(ApiError::new("ThrottlingException", 400, "Rate exceeded"));
    }
    let r = ops::dispatch(&st.ks, caller, op, body);
    log::info!(
        "{} by uid {} gid {} pid {}{}{}: {}",
        op.event_name(),
        caller.uid,
        caller.gid,
        caller.pid,
        if caller.access_key.is_some() {
            " access key "
        } else {
            ""
        },
        caller.access_key.as_ref().map_or("", |k| k.as_str()),
        match &r {
            Ok(_) => "ok",
            Err(e) => e.kind,
        }
    );
    r
}

/// Serves one accepted connection, unless its peer already holds
/// `MAX_PER_PEER`: then it is closed at once. The connection is made ready
/// (`Listener::Ready`, e.g. a TLS handshake) in its own task, within
/// `HEADER_TIMEOUT`, so a slow peer never holds up the accept loop.
fn serve_connection<R, S>(
    st: &Arc<State>,
    ready: R,
    peer: Peer,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    R: Future<Output = std::io::Result<S>> + Send + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let st = st.clone();
    st.stats.connections.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let id = peer.id();
        let Some(slot) = PeerSlot::take(&st, id) else {
            st.stats.peer_refused.fetch_add(1, Ordering::Relaxed);
            log::debug!("closed a connection from {peer:?}: {id:?} holds {MAX_PER_PEER} already");
            return;
        };
        let io = match tokio::time::timeout(HEADER_TIMEOUT, ready).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                // A failed TLS handshake (a client that does not trust the
                // certificate, plain HTTP on a TLS port) is worth a line.
                log::info!("connection from {peer:?} not ready: {e}");
                return;
            }
            Err(_) => {
                log::debug!("connection from {peer:?} not ready within {HEADER_TIMEOUT:?}");
                return;
            }
        };
        let st2 = st.clone();
        let svc = hyper::service::service_fn(move |req| handle(st2.clone(), peer, req));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(io), svc);
        if let Err(e) = conn.await {
            log::debug!("connection from {peer:?} ended: {e}");
        }
        drop(slot);
        drop(permit);
    });
}

fn is_loopback(a: &SocketAddr) -> bool {
    a.ip().is_loopback()
}

/// Serves `ks` until SIGTERM or SIGINT. `on_ready` is called with the
/// server's URL (`unix:PATH`, `http://IP:PORT`, or `https://IP:PORT` with
/// TLS; the port is the bound one, useful with port 0) once clients can
/// connect. Logs a summary of the requests served on the way out.
pub fn serve(
    ks: Arc<LocalKeyStore>,
    opts: &ServeOptions,
    on_ready: &mut dyn FnMut(&str),
) -> Result<(), ServerError> {
    // A client that hangs up before its answer is written makes that write
    // fail with EPIPE, not end the server (the command line lets SIGPIPE
    // end commands whose reader has gone: any client could stop the server).
    crate::os::process::sigpipe_kills(false);
    if let Listen::Tcp(a) = &opts.listen
        && !is_loopback(a)
        && opts.tls.is_none()
    {
        return Err(ServerError::Usage(format!(
            "{a} is not a loopback address, and without TLS data keys would cross the \
             network unencrypted; hint: give --tls-cert FILE --tls-key FILE (PEM), or listen \
             on 127.0.0.1"
        )));
    }
    let tls = match (&opts.tls, &opts.listen) {
        (Some(_), Listen::Unix(_)) => {
            return Err(ServerError::Usage(
                "--tls-cert is for a TCP address: a Unix socket's peers are local and known \
                 by their credentials"
                    .into(),
            ));
        }
        (Some(f), Listen::Tcp(_)) => Some(tls::acceptor(&f.cert, &f.key)?),
        (None, _) => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .thread_name("kmsfs-serve")
        .enable_all()
        .build()
        .map_err(|e| ServerError::Io(format!("starting the runtime: {e}")))?;
    // Access-key secrets and CMKs live in this process: no core file, no
    // ptrace by other processes of this user (as the mount daemon).
    if let Err(e) = crate::os::process::forbid_core_dumps() {
        return Err(ServerError::Io(format!(
            "could not disable core dumps: {e}"
        )));
    }
    // Records say "server"; the key service is a boundary here: key
    // policies govern administration, keys without one serve only root and
    // the keystore's owner, and crypto fails closed when the trail cannot
    // be written (docs/AUDIT.md).
    ks.set_caller_source(CallerSource::Server);
    if let Some(r) = &opts.region {
        ks.set_region(r)
            .map_err(|e| ServerError::Usage(format!("--region: {e}")))?;
    }
    ks.set_boundary()
        .map_err(|e| ServerError::Io(format!("the keystore's owner: {e}")))?;
    let st = Arc::new(State {
        ks,
        stats: Stats::default(),
        throttled: throttled_operations(),
        peers: Mutex::new(HashMap::new()),
        region_fixed: opts.region.is_some(),
    });
    let result = rt.block_on(listen(&st, opts, tls, on_ready));
    let summary = st.stats.summary();
    log::info!("served: {summary}");
    eprintln!("kmsfs kms serve: stopped; served {summary}");
    rt.shutdown_timeout(Duration::from_secs(2));
    // The batched records (every call that changes nothing) are written now,
    // not whenever the last holder of the key service lets it go.
    st.ks.flush_audit_trail();
    result
}

/// Binds `opts.listen`, says so through `on_ready` and serves until
/// SIGTERM or SIGINT; a Unix socket file is removed on the way out.
#[allow(clippy::disallowed_methods)] // a socket path the operator named; a link in its place is refused
async fn listen(
    st: &Arc<State>,
    opts: &ServeOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
    on_ready: &mut dyn FnMut(&str),
) -> Result<(), ServerError> {
    match &opts.listen {
        Listen::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| ServerError::Io(format!("binding {a}: {e}")))?;
            let local = l.local_addr().map_err(|e| ServerError::Io(e.to_string()))?;
            let tcp = TcpListener { l, local };
            match tls {
                Some(acceptor) => {
                    on_ready(&format!("https://{local}"));
                    accept_loop(st, &TlsListener { tcp, acceptor }).await
                }
                None => {
                    on_ready(&format!("http://{local}"));
                    accept_loop(st, &tcp).await
                }
            }
        }
        Listen::Unix(p) => {
            let l = bind_unix(p, opts.socket_mode, "server")?;
            on_ready(&format!("unix:{}", p.display()));
            let a = UnixListener {
                l,
                open_to_others: opts.socket_mode & 0o077 != 0,
                own_uid: crate::os::ids::effective_uid(),
            };
            let r = accept_loop(st, &a).await;
            let _ = std::fs::remove_file(p);
            r
        }
    }
}

/// Where `accept_loop` takes connections from: a TCP port or a Unix
/// socket. Another transport (TLS over TCP) is one more implementation:
/// its `accept` returns the raw connection and its peer at once, and its
/// `Ready` (the handshake) runs in the connection's own task.
trait Listener {
    /// The stream HTTP is served on.
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// What makes an accepted connection ready to serve.
    type Ready: Future<Output = std::io::Result<Self::Io>> + Send + 'static;
    /// The next connection and its peer; None for one refused here.
    fn accept(&self) -> impl Future<Output = std::io::Result<Option<(Self::Ready, Peer)>>> + Send;
}

struct TcpListener {
    l: tokio::net::TcpListener,
    local: SocketAddr,
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    type Ready = std::future::Ready<std::io::Result<Self::Io>>;
    async fn accept(&self) -> std::io::Result<Option<(Self::Ready, Peer)>> {
        let (s, remote) = self.l.accept().await?;
        let _ = s.set_nodelay(true);
        let local = self.local;
        Ok(Some((
            std::future::ready(Ok(s)),
            Peer::Tcp { local, remote },
        )))
    }
}

/// TCP with a TLS handshake (`--tls-cert`), made in the connection's task.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Ready = std::pin::Pin<Box<dyn Future<Output = std::io::Result<Self::Io>> + Send>>;
    async fn accept(&self) -> std::io::Result<Option<(Self::Ready, Peer)>> {
        let (s, remote) = self.tcp.l.accept().await?;
        let _ = s.set_nodelay(true);
        let local = self.tcp.local;
        let handshake = self.acceptor.accept(s);
        let ready: Self::Ready = Box::pin(async move {
            handshake
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))
        });
        Ok(Some((ready, Peer::Tcp { local, remote })))
    }
}

struct UnixListener {
    l: tokio::net::UnixListener,
    /// The socket's mode lets others than this user connect.
    open_to_others: bool,
    own_uid: u32,
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    type Ready = std::future::Ready<std::io::Result<Self::Io>>;
    async fn accept(&self) -> std::io::Result<Option<(Self::Ready, Peer)>> {
        let (s, _) = self.l.accept().await?;
        let cred = s.peer_cred()?;
        // With the default mode only this user and root can connect; check
        // it too (the mode is set just after bind).
        if !self.open_to_others && cred.uid() != self.own_uid && cred.uid() != 0 {
            log::warn!(
                "refused a connection from uid {} (socket mode 0600)",
                cred.uid()
            );
            return Ok(None);
        }
        let caller = Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            access_key: None,
        };
        Ok(Some((std::future::ready(Ok(s)), Peer::Unix(caller))))
    }
}

/// Serves each connection `l` accepts (within `MAX_CONNECTIONS`) until
/// SIGTERM or SIGINT.
async fn accept_loop(st: &Arc<State>, l: &impl Listener) -> Result<(), ServerError> {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = limit.clone().acquire_owned() => p.map_err(|e| ServerError::Io(e.to_string()))?,
        };
        tokio::select! {
            _ = &mut stop => break,
            r = l.accept() => match r {
                Ok(Some((ready, peer))) => serve_connection(st, ready, peer, permit),
                Ok(None) => {}
                Err(e) => log::warn!("accept: {e}"),
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:/run/k.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/k.sock".into())
        );
        assert_eq!(
            "127.0.0.1:4599".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:4599".parse().unwrap())
        );
        assert!("unix:".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
        assert!(is_loopback(&"[::1]:1".parse().unwrap()));
        assert!(!is_loopback(&"10.0.0.1:1".parse().unwrap()));
    }
}
