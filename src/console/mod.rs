//! `kmsfs console`: a web page served by the binary for the keystore's owner
//! (and root) to see and steer keys, files and the audit trail. Local only:
//! a loopback TCP port or a Unix socket, a peer that is not the owner or
//! root refused at connect, a random login token exchanged for an HttpOnly,
//! SameSite=Strict cookie (`session`), a CSRF token on every POST, a strict
//! Content-Security-Policy, assets compiled in (`assets/`). Every action is a
//! call of the key service as the console's user (`keys`); the Files page
//! reads backing trees' headers (`files`); the Trail page pages the trail
//! from its end and follows it (`trail`). Built on tokio and hyper 1, as the
//! protocol server; blocking work runs on tokio's blocking pool.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::kms::{Caller, CallerSource, KmsError, LocalKeyStore};

mod api;
mod files;
mod keys;
pub mod session;
mod trail;

use session::Sessions;

/// Largest request body accepted (a key policy is at most 32 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The Content-Security-Policy of every answer: only this origin's own
/// files, no inline script or style, no frames, no plugins.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

pub use crate::listen::Listen;
use crate::listen::{BindError, bind_unix, shutdown_signal};

impl From<BindError> for ConsoleError {
    fn from(e: BindError) -> Self {
        match e {
            BindError::Usage(m) => ConsoleError::Usage(m),
            BindError::Io(m) => ConsoleError::Io(m),
        }
    }
}

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A refused setting.
    #[error("{0}")]
    Usage(String),
    /// A system error (bind, socket file, randomness).
    #[error("{0}")]
    Io(String),
}

/// What the console prints once it can be reached.
#[derive(Debug, Clone)]
pub struct Ready {
    /// `http://127.0.0.1:PORT` or `unix:PATH`.
    pub address: String,
    /// The login URL (with the token) for a TCP console; for a Unix socket,
    /// the path a proxy's URL takes the token on.
    pub login: String,
}

/// Shared by every request.
struct State {
    ks: Arc<LocalKeyStore>,
    sessions: Sessions,
    /// The console's own identity: every key-service call is made as it.
    caller: Caller,
    /// The users served: the keystore's owner, root, and the console's own.
    allowed: Vec<u32>,
    /// `Host` values accepted (against DNS rebinding); empty: any (a Unix
    /// socket, reached through a proxy).
    hosts: Vec<String>,
    files: files::Cache,
    verify: trail::VerifyState,
}

/// Serves the console for `ks` until SIGTERM or SIGINT. `on_ready` gets the
/// address and login URL once a browser can connect.
#[allow(clippy::disallowed_methods)] // the keystore directory the operator named
pub fn serve(
    ks: Arc<LocalKeyStore>,
    listen: &Listen,
    on_ready: &mut dyn FnMut(&Ready),
) -> Result<(), ConsoleError> {
    // A browser that hangs up before its answer is written makes that write
    // fail with EPIPE, not end the console (as for `kms serve`).
    crate::os::process::sigpipe_kills(false);
    if let Listen::Tcp(a) = listen
        && !a.ip().is_loopback()
    {
        return Err(ConsoleError::Usage(format!(
            "{a} is not a loopback address: the console speaks plain HTTP and has no TLS yet, \
             so its session cookie would cross the network readable; listen on 127.0.0.1 (or \
             a Unix socket) and reach it from elsewhere through `ssh -L`"
        )));
    }
    ks.set_caller_source(CallerSource::Console);
    let (uid, gid) = crate::os::ids::ids();
    let owner = std::fs::metadata(ks.dir())
        .map(|m| m.uid())
        .map_err(|e| ConsoleError::Io(format!("{}: {e}", ks.dir().display())))?;
    let mut allowed = vec![0, owner, crate::os::ids::effective_uid()];
    allowed.sort_unstable();
    allowed.dedup();
    let sessions = Sessions::new().map_err(|e| ConsoleError::Io(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kmsfs-console")
        .enable_all()
        .build()
        .map_err(|e| ConsoleError::Io(format!("starting the runtime: {e}")))?;
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let make_state = |hosts: Vec<String>| {
        Arc::new(State {
            ks: ks.clone(),
            sessions,
            caller: Caller {
                uid,
                gid,
                pid: std::process::id(),
                access_key: None,
            },
            allowed,
            hosts,
            files: files::Cache::default(),
            verify: trail::VerifyState::default(),
        })
    };
    let result = rt.block_on(listen_and_serve(listen, &limit, make_state, on_ready));
    ks.flush_audit_trail();
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Binds `listen`, makes the state with the `Host` values it answers for,
/// says so through `on_ready` and serves until SIGTERM or SIGINT; a Unix
/// socket file is removed on the way out.
#[allow(clippy::disallowed_methods)] // the socket path the operator named
async fn listen_and_serve(
    listen: &Listen,
    limit: &Arc<Semaphore>,
    make_state: impl FnOnce(Vec<String>) -> Arc<State>,
    on_ready: &mut dyn FnMut(&Ready),
) -> Result<(), ConsoleError> {
    match listen {
        Listen::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| ConsoleError::Io(format!("binding {a}: {e}")))?;
            let bound = l
                .local_addr()
                .map_err(|e| ConsoleError::Io(e.to_string()))?;
            let port = bound.port();
            let hosts = vec![
                bound.to_string(),
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ];
            let st = make_state(hosts);
            trail::start_verify(&st);
            on_ready(&Ready {
                address: format!("http://{bound}"),
                login: format!("http://{bound}/login?token={}", st.sessions.login_token()),
            });
            accept_tcp(&st, limit, l, bound).await
        }
        Listen::Unix(p) => {
            let l = bind_unix(p, 0o600, "console")?;
            let st = make_state(Vec::new());
            trail::start_verify(&st);
            on_ready(&Ready {
                address: format!("unix:{}", p.display()),
                login: format!("/login?token={}", st.sessions.login_token()),
            });
            let r = accept_unix(&st, limit, l).await;
            let _ = std::fs::remove_file(p);
            r
        }
    }
}

/// Serves each connection `accept` yields, with its peer's uid, within
/// `MAX_CONNECTIONS`, until SIGTERM or SIGINT.
async fn accept_loop<S>(
    st: &Arc<State>,
    limit: &Arc<Semaphore>,
    accept: impl AsyncFn() -> std::io::Result<(S, Option<u32>)>,
) -> Result<(), ConsoleError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = limit.clone().acquire_owned() => p.map_err(|e| ConsoleError::Io(e.to_string()))?,
        };
        tokio::select! {
            _ = &mut stop => break,
            r = accept() => match r {
                Ok((s, uid)) => serve_connection(st, s, uid, permit),
                Err(e) => log::warn!("accept: {e}"),
            },
        }
    }
    Ok(())
}

async fn accept_tcp(
    st: &Arc<State>,
    limit: &Arc<Semaphore>,
    l: tokio::net::TcpListener,
    bound: SocketAddr,
) -> Result<(), ConsoleError> {
    accept_loop(st, limit, async || {
        let (s, peer) = l.accept().await?;
        let _ = s.set_nodelay(true);
        // The other end is on this machine: the kernel names its owner.
        Ok((s, crate::os::net::tcp_peer_uid(bound, peer)))
    })
    .await
}

async fn accept_unix(
    st: &Arc<State>,
    limit: &Arc<Semaphore>,
    l: tokio::net::UnixListener,
) -> Result<(), ConsoleError> {
    accept_loop(st, limit, async || {
        let (s, _) = l.accept().await?;
        let uid = s.peer_cred().ok().map(|c| c.uid());
        Ok((s, uid))
    })
    .await
}

fn serve_connection<S>(
    st: &Arc<State>,
    io: S,
    peer_uid: Option<u32>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let st = st.clone();
    let allowed = peer_uid.is_some_and(|u| st.allowed.contains(&u));
    if !allowed {
        log::warn!(
            "refused a console connection from {} (served: uid {:?})",
            peer_uid.map_or("an unknown user".to_string(), |u| format!("uid {u}")),
            st.allowed
        );
    }
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| handle(st.clone(), allowed, req));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(io), svc);
        if let Err(e) = conn.await {
            log::debug!("console connection ended: {e}");
        }
        drop(permit);
    });
}

/// An answer with the headers every answer carries.
fn respond(status: u16, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    let fixed: [(&'static str, &'static str); 8] = [
        ("content-type", content_type),
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("cache-control", "no-store"),
    ];
    for (k, v) in fixed {
        h.insert(k, http::HeaderValue::from_static(v));
    }
    r
}

fn json_response(status: u16, v: &Value) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json",
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

/// A refusal or failure, as the page shows it.
#[derive(Debug)]
struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        json_response(
            self.status,
            &json!({ "error": self.code, "message": self.message }),
        )
    }
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> Self {
        let code = e.aws_code();
        let status = match code {
            "NotFoundException" => 404,
            "AccessDeniedException" => 403,
            "DisabledException" | "KMSInvalidStateException" | "AlreadyExistsException" => 409,
            "MalformedPolicyDocumentException"
            | "ValidationException"
            | "InvalidArnException"
            | "InvalidKeyUsageException" => 400,
            _ => 500,
        };
        ApiError::new(status, code, e.to_string())
    }
}

static INDEX_HTML: &str = include_str!("assets/index.html");
static LOGIN_HTML: &str = include_str!("assets/login.html");
static CONSOLE_JS: &str = include_str!("assets/console.js");
static CONSOLE_CSS: &str = include_str!("assets/console.css");

fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/assets/console.js" => Some(("text/javascript; charset=utf-8", CONSOLE_JS)),
        "/assets/console.css" => Some(("text/css; charset=utf-8", CONSOLE_CSS)),
        _ => None,
    }
}

fn header<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A query string parameter, percent-decoded.
fn query_param(parts: &http::request::Parts, name: &str) -> Option<String> {
    parts.uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when a state-changing request comes from this console's own page:
/// no other origin named in `Origin`, no cross-site `Sec-Fetch-Site`.
fn same_origin(parts: &http::request::Parts) -> bool {
    if let Some(site) = header(parts, "sec-fetch-site")
        && site != "same-origin"
    {
        return false;
    }
    match (header(parts, "origin"), header(parts, "host")) {
        (None, _) => true,
        (Some(o), Some(h)) => o == format!("http://{h}"),
        (Some(_), None) => false,
    }
}

/// An answer to a console request.
type Answer = Response<Full<Bytes>>;

async fn handle(
    st: Arc<State>,
    peer_allowed: bool,
    req: Request<Incoming>,
) -> Result<Answer, Infallible> {
    Ok(route(st, peer_allowed, req).await)
}

/// A request in order: who may reach the console, the pages served without
/// a session, the session, the page, then the API (a change checked for
/// origin and CSRF token first).
async fn route(st: Arc<State>, peer_allowed: bool, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    if let Some(refused) = admit(&st, peer_allowed, &parts) {
        return refused;
    }
    let path = parts.uri.path().to_string();
    if parts.method == http::Method::GET {
        if let Some((ct, text)) = asset(&path) {
            return respond(200, ct, Bytes::from_static(text.as_bytes()));
        }
        if path == "/login" {
            return login(&st, &parts);
        }
    }
    let Some(session) = st.sessions.find(header(&parts, "cookie")) else {
        return not_signed_in(&path);
    };
    if parts.method == http::Method::GET && (path == "/" || path == "/index.html") {
        return respond(
            200,
            "text/html; charset=utf-8",
            Bytes::from_static(INDEX_HTML.as_bytes()),
        );
    }
    if !path.starts_with("/api/") {
        return ApiError::new(404, "NotFound", "no such page").response();
    }
    if let Some(refused) = check_method(&parts, &session) {
        return refused;
    }
    if parts.method == http::Method::POST && path == "/api/logout" {
        return logout(&st, &parts);
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return ApiError::new(
                413,
                "TooLarge",
                format!("the request body could not be read or exceeds {MAX_BODY} bytes"),
            )
            .response();
        }
    };
    let st2 = st.clone();
    let r = tokio::task::spawn_blocking(move || api::route(&st2, &parts, &path, &body, &session))
        .await
        .unwrap_or_else(|_| Err(ApiError::new(500, "Internal", "the request failed")));
    match r {
        Ok(v) => json_response(200, &v),
        Err(e) => e.response(),
    }
}

/// The refusal of a peer the console does not serve, or of a `Host` it
/// does not answer for (DNS rebinding).
fn admit(st: &State, peer_allowed: bool, parts: &http::request::Parts) -> Option<Answer> {
    if !peer_allowed {
        return Some(respond(
            403,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"this console serves only the keystore's owner and root\n"),
        ));
    }
    if !st.hosts.is_empty()
        && !header(parts, "host").is_some_and(|h| st.hosts.iter().any(|a| a == h))
    {
        return Some(respond(
            421,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"unexpected Host header\n"),
        ));
    }
    None
}

/// The answer to a request without a session: the API says so, a page
/// shows the login page.
fn not_signed_in(path: &str) -> Answer {
    if path.starts_with("/api/") {
        ApiError::new(
            401,
            "NotSignedIn",
            "open the login URL `kmsfs console` printed",
        )
        .response()
    } else {
        respond(
            401,
            "text/html; charset=utf-8",
            Bytes::from_static(LOGIN_HTML.as_bytes()),
        )
    }
}

/// The refusal of a method: GET reads; POST changes, only from this console's page with the
/// session's CSRF token; any other method is refused.
fn check_method(parts: &http::request::Parts, session: &session::SessionInfo) -> Option<Answer> {
    if parts.method == http::Method::POST {
        if !same_origin(parts) {
            return Some(
                ApiError::new(403, "CrossOrigin", "refused: not from this console's page")
                    .response(),
            );
        }
        if !session::csrf_ok(session, header(parts, session::CSRF_HEADER)) {
            return Some(ApiError::new(
                403,
                "CsrfTokenInvalid",
                "refused: the request does not carry this session's CSRF token (reload the page)",
            )
            .response());
        }
    } else if parts.method != http::Method::GET {
        return Some(
            ApiError::new(405, "MethodNotAllowed", "GET to read, POST to change").response(),
        );
    }
    None
}

/// `POST /api/logout`: ends the session and clears its cookie.
fn logout(st: &State, parts: &http::request::Parts) -> Answer {
    st.sessions.logout(header(parts, "cookie"));
    let mut r = json_response(200, &json!({}));
    if let Ok(v) = http::HeaderValue::from_str(&session::clear_cookie()) {
        r.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    r
}

/// `GET /login?token=...`: the printed token opens a session; the answer
/// sets the cookie and sends the browser to the console without the token
/// in its address bar.
fn login(st: &State, parts: &http::request::Parts) -> Response<Full<Bytes>> {
    let token = query_param(parts, "token").unwrap_or_default();
    match st.sessions.login(&token) {
        Some(id) => {
            let mut r = respond(303, "text/plain; charset=utf-8", Bytes::new());
            let h = r.headers_mut();
            h.insert(http::header::LOCATION, http::HeaderValue::from_static("/"));
            if let Ok(v) = http::HeaderValue::from_str(&session::set_cookie(&id)) {
                h.insert(http::header::SET_COOKIE, v);
            }
            r
        }
        None => {
            log::warn!("console: a login with a wrong token was refused");
            respond(
                403,
                "text/html; charset=utf-8",
                Bytes::from_static(LOGIN_HTML.as_bytes()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:/run/c.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/c.sock".into())
        );
        assert!("unix:".parse::<Listen>().is_err());
        assert!("localhost:1".parse::<Listen>().is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("alias%2Fx"), "alias/x");
    }
}
