//! The AWS KMS protocol server, `kmsfs kms serve`: AWS JSON 1.1 over HTTP/1.1
//! (POST /, `X-Amz-Target: TrentService.<Operation>`) on a Unix socket or a
//! loopback TCP port, serving the local keystore to boto3, the aws CLI and
//! the AWS SDKs. Callers are the socket peer's credentials (Unix) or the
//! principal of a SigV4 access key (TCP, `auth`); operations in `ops`,
//! errors in `error`. Built on tokio and hyper 1; the keystore's blocking
//! work runs on tokio's blocking pool.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::kms::{Caller, CallerSource, LocalKeyStore};

mod auth;
mod error;
mod ops;

pub use auth::MAX_SKEW;
use error::ApiError;
use ops::Reply;

/// Largest request body accepted (AWS's largest, a policy, is 32 KiB).
pub const MAX_BODY: usize = 256 * 1024;
/// Most connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path; the peer's credentials are the caller.
    Unix(PathBuf),
    /// A TCP address; callers sign with an access key.
    Tcp(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a path, as in unix:/run/kmsfs/kms.sock".into());
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        s.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            format!("{s:?} is neither unix:PATH nor an address such as 127.0.0.1:4599")
        })
    }
}

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: Listen,
    /// Accept a TCP address that is not loopback (plain HTTP: data keys
    /// would cross the network unencrypted).
    pub allow_remote: bool,
    /// Permissions of the Unix socket (0600: only this user and root connect).
    pub socket_mode: u32,
    /// Worker threads of the runtime.
    pub threads: usize,
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
#[derive(Debug, Default)]
struct Stats {
    ops: [AtomicU64; ops::OPERATIONS.len()],
    errors: AtomicU64,
    auth_refused: AtomicU64,
}

impl Stats {
    fn count(&self, op: &str) {
        if let Some(i) = ops::OPERATIONS.iter().position(|o| *o == op) {
            self.ops[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn summary(&self) -> String {
        let mut parts: Vec<String> = ops::OPERATIONS
            .iter()
            .zip(&self.ops)
            .filter_map(|(name, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| format!("{name}={n}"))
            })
            .collect();
        parts.push(format!("errors={}", self.errors.load(Ordering::Relaxed)));
        parts.push(format!(
            "auth_refused={}",
            self.auth_refused.load(Ordering::Relaxed)
        ));
        parts.join(" ")
    }
}

struct State {
    ks: Arc<LocalKeyStore>,
    stats: Stats,
    /// Operations answered with ThrottlingException (fault injection for
    /// tests: `KMSFS_TEST_THROTTLE=Decrypt,GenerateDataKey`, debug builds only).
    throttled: Vec<String>,
    /// The server's own uid: with root, the only caller allowed
    /// administrative operations (`ops::ADMINISTRATIVE`).
    owner: u32,
}

/// The test-only throttling switch; always empty in release builds.
fn throttled_operations() -> Vec<String> {
    #[cfg(debug_assertions)]
    if let Ok(v) = std::env::var("KMSFS_TEST_THROTTLE") {
        log::warn!("KMSFS_TEST_THROTTLE: answering {v} with ThrottlingException");
        return v.split(',').map(str::to_string).collect();
    }
    Vec::new()
}

#[derive(Clone, Copy)]
enum Peer {
    /// A Unix socket peer: its credentials are the caller.
    Unix(Caller),
    /// A TCP peer: the request's signature says who it is.
    Tcp(SocketAddr),
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix(c) => write!(f, "unix peer uid {} pid {}", c.uid, c.pid),
            Peer::Tcp(a) => write!(f, "{a}"),
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

async fn handle(
    st: Arc<State>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let op = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("TrentService."))
        .unwrap_or("")
        .to_string();
    let result = async {
        if parts.method != http::Method::POST || parts.uri.path() != "/" {
            return Err(ApiError::new(
                "UnknownOperationException",
                404,
                "the AWS KMS protocol is POST / with X-Amz-Target",
            ));
        }
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|_| {
                ApiError::new(
                    "SerializationException",
                    413,
                    format!("the request body could not be read or exceeds {MAX_BODY} bytes"),
                )
            })?
            .to_bytes();
        let st2 = st.clone();
        let op2 = op.clone();
        tokio::task::spawn_blocking(move || {
            let caller = match peer {
                Peer::Unix(c) => c,
                Peer::Tcp(_) => auth::verify(
                    &st2.ks,
                    parts.method.as_str(),
                    &parts.uri.to_string(),
                    &parts.headers,
                    &body,
                    SystemTime::now(),
                )
                .inspect_err(|e| {
                    st2.stats.auth_refused.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "refused a request from {peer:?} for {op2}: {}: {}",
                        e.kind,
                        e.message
                    );
                })?,
            };
            if st2.throttled.contains(&op2) {
                return Err(ApiError::new("ThrottlingException", 400, "Rate exceeded"));
            }
            if op2.is_empty() {
                return Err(ApiError::new(
                    "UnknownOperationException",
                    400,
                    "X-Amz-Target must be TrentService.<Operation>",
                ));
            }
            let key_has_policy = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("KeyId")?.as_str().map(|k| st2.ks.has_own_policy(k)))
                .unwrap_or(false);
            let r = ops::check_administrator(&op2, &caller, st2.owner, key_has_policy)
                .and_then(|()| ops::dispatch(&st2.ks, &caller, &op2, &body));
            log::info!(
                "{op2} by uid {} gid {} pid {}: {}",
                caller.uid,
                caller.gid,
                caller.pid,
                match &r {
                    Ok(_) => "ok",
                    Err(e) => e.kind,
                }
            );
            r
        })
        .await
        .map_err(|_| ApiError::new("KMSInternalException", 500, "the operation failed"))?
    }
    .await;
    st.stats.count(&op);
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

fn serve_connection<S>(
    st: &Arc<State>,
    io: S,
    peer: Peer,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let st = st.clone();
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| handle(st.clone(), peer, req));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(io), svc);
        if let Err(e) = conn.await {
            log::debug!("connection from {peer:?} ended: {e}");
        }
        drop(permit);
    });
}

fn is_loopback(a: &SocketAddr) -> bool {
    a.ip().is_loopback()
}

/// Binds a Unix socket at `p`: a stale socket (nothing listening) is
/// replaced; anything else there is refused.
fn bind_unix(p: &Path, mode: u32) -> Result<tokio::net::UnixListener, ServerError> {
    if let Ok(m) = std::fs::symlink_metadata(p) {
        if !m.file_type().is_socket() {
            return Err(ServerError::Usage(format!(
                "{} exists and is not a socket; give another path",
                p.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(p).is_ok() {
            return Err(ServerError::Usage(format!(
                "{} is in use by a running server",
                p.display()
            )));
        }
        std::fs::remove_file(p)
            .map_err(|e| ServerError::Io(format!("removing stale socket {}: {e}", p.display())))?;
    }
    let l = tokio::net::UnixListener::bind(p)
        .map_err(|e| ServerError::Io(format!("binding {}: {e}", p.display())))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ServerError::Io(format!("chmod {}: {e}", p.display())))?;
    Ok(l)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// Serves `ks` until SIGTERM or SIGINT. `on_ready` is called with the bound
/// address (`unix:PATH` or `IP:PORT`, useful with port 0) once clients can
/// connect. Logs a summary of the requests served on the way out.
pub fn serve(
    ks: Arc<LocalKeyStore>,
    opts: &ServeOptions,
    on_ready: &mut dyn FnMut(&str),
) -> Result<(), ServerError> {
    if let Listen::Tcp(a) = &opts.listen
        && !is_loopback(a)
        && !opts.allow_remote
    {
        return Err(ServerError::Usage(format!(
            "{a} is not a loopback address: the protocol runs over plain HTTP, so data keys \
             would cross the network unencrypted; listen on 127.0.0.1 (and put a TLS proxy in \
             front), or pass --allow-remote if the network is trusted"
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .thread_name("kmsfs-serve")
        .enable_all()
        .build()
        .map_err(|e| ServerError::Io(format!("starting the runtime: {e}")))?;
    // Records say "server"; key policies govern administration here (a
    // network boundary), and crypto fails closed when the trail cannot be
    // written (docs/AUDIT.md).
    ks.set_caller_source(CallerSource::Server);
    ks.set_admin_policy_enforced(true);
    let st = Arc::new(State {
        ks,
        stats: Stats::default(),
        throttled: throttled_operations(),
        owner: crate::os::ids::effective_uid(),
    });
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let own_uid = crate::os::ids::effective_uid();
    let result = rt.block_on(async {
        match &opts.listen {
            Listen::Tcp(a) => accept_tcp(&st, &limit, a, on_ready).await,
            Listen::Unix(p) => accept_unix(&st, &limit, p, opts, own_uid, on_ready).await,
        }
    });
    let summary = st.stats.summary();
    log::info!("served: {summary}");
    eprintln!("kmsfs kms serve: stopped; served {summary}");
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Listens on TCP address `a` and serves each connection (within the
/// connection limit) until SIGTERM or SIGINT.
async fn accept_tcp(
    st: &Arc<State>,
    limit: &Arc<Semaphore>,
    a: &SocketAddr,
    on_ready: &mut dyn FnMut(&str),
) -> Result<(), ServerError> {
    let l = tokio::net::TcpListener::bind(a)
        .await
        .map_err(|e| ServerError::Io(format!("binding {a}: {e}")))?;
    let bound = l.local_addr().map_err(|e| ServerError::Io(e.to_string()))?;
    on_ready(&bound.to_string());
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
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    serve_connection(st, s, Peer::Tcp(peer), permit);
                }
                Err(e) => log::warn!("accept: {e}"),
            },
        }
    }
    Ok(())
}

/// Listens on the Unix socket `p` and serves each connection from an allowed
/// peer (within the connection limit) until SIGTERM or SIGINT; then removes
/// the socket.
async fn accept_unix(
    st: &Arc<State>,
    limit: &Arc<Semaphore>,
    p: &Path,
    opts: &ServeOptions,
    own_uid: u32,
    on_ready: &mut dyn FnMut(&str),
) -> Result<(), ServerError> {
    let l = bind_unix(p, opts.socket_mode)?;
    on_ready(&format!("unix:{}", p.display()));
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
                Ok((s, _)) => {
                    let cred = match s.peer_cred() {
                        Ok(c) => c,
                        Err(e) => {
                            log::warn!("peer credentials: {e}");
                            continue;
                        }
                    };
                    // With the default mode only this user and root
                    // can connect; check it too (the mode is set
                    // just after bind).
                    if opts.socket_mode & 0o077 == 0 && cred.uid() != own_uid && cred.uid() != 0 {
                        log::warn!("refused a connection from uid {} (socket mode {:o})", cred.uid(), opts.socket_mode);
                        continue;
                    }
                    let caller = Caller {
                        uid: cred.uid(),
                        gid: cred.gid(),
                        pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                    };
                    serve_connection(st, s, Peer::Unix(caller), permit);
                }
                Err(e) => log::warn!("accept: {e}"),
            },
        }
    }
    let _ = std::fs::remove_file(p);
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
