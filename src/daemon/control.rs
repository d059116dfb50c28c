//! The running mount's control socket: `kmsfs status` asks it what the mount
//! is doing, and a remount (`mount -o remount,ro|rw`) switches the daemon
//! read-only or read-write. One socket per daemon, `/run/kmsfs/PID.sock` for
//! root (else `$XDG_RUNTIME_DIR/kmsfs/PID.sock`), 0600 in a 0700 directory
//! its owner alone may enter. One request per connection, one JSON line back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::kms::{
    Caller, KeyService, KeyServiceExt, KmsError, Origin, Request, RequestContext, Response,
};
use crate::logtext::escaped;
use crate::os;

/// A key service that counts the calls made to it and the refusals.
pub(super) struct CountingService {
    inner: Arc<dyn KeyService>,
    calls: AtomicU64,
    errors: AtomicU64,
}

impl CountingService {
    /// Wraps `inner`.
    pub(super) fn new(inner: Arc<dyn KeyService>) -> Self {
        Self {
            inner,
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn count<T>(&self, r: Result<T, KmsError>) -> Result<T, KmsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if r.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl KeyService for CountingService {
    fn call(&self, ctx: &RequestContext<'_>, request: Request<'_>) -> Result<Response, KmsError> {
        match request {
            // A cache hit is recorded, not a call: not counted.
            Request::CachedOpen { .. } => self.inner.call(ctx, request),
            _ => self.count(self.inner.call(ctx, request)),
        }
    }

    fn flush_audit(&self) {
        self.inner.flush_audit();
    }

    fn audits_file_access(&self) -> bool {
        self.inner.audits_file_access()
    }

    fn generation(&self) -> u64 {
        self.inner.generation()
    }
}

/// What the control socket reports and changes.
pub(super) struct MountState {
    pub(super) backing: PathBuf,
    pub(super) mountpoint: PathBuf,
    pub(super) keystore: Option<PathBuf>,
    pub(super) key_id: String,
    pub(super) log_file: Option<PathBuf>,
    pub(super) started: i64,
    pub(super) read_only: Arc<AtomicBool>,
    /// The backing directory cannot be written: never read-write.
    pub(super) backing_read_only: bool,
    pub(super) shared_storage: bool,
    pub(super) ks: Arc<CountingService>,
    /// The mount's device (`MAJ:MIN` in mountinfo), known once mounted:
    /// what a client matches to find this daemon from a mount point.
    pub(super) device: std::sync::OnceLock<String>,
    /// The directory keys the mount has read or set.
    pub(super) dir_keys: crate::fs::DirKeysSeen,
    /// Data keys generated ahead (a remote KMS).
    pub(super) datakey_pool: Option<Arc<crate::fs::DataKeyPool>>,
}

impl MountState {
    fn status(&self) -> Value {
        let c = crate::fs::counters();
        let (uid, gid) = os::ids::ids();
        let caller = Caller {
            uid,
            gid,
            pid: std::process::id(),
            access_key: None,
        };
        // Asked of the keystore itself: not a call the mount made.
        let ctx = RequestContext::new(caller, Origin::Mount);
        let key_state = match self.ks.inner.describe_key(&ctx, &self.key_id) {
            Ok(m) => m.key_state.as_str().to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let requests: u64 = crate::fs::requests_served();
        let dir_keys: Vec<Value> = crate::fs::lock_seen(&self.dir_keys)
            .iter()
            .map(|(dir, key)| json!({ "Directory": dir, "KeyId": key }))
            .collect();
        json!({
            "Pid": std::process::id(),
            "MountPoint": self.mountpoint.display().to_string(),
            "Device": self.device.get(),
            "Backing": self.backing.display().to_string(),
            "Keystore": self.keystore.as_ref().map(|p| p.display().to_string()),
            "KeyId": self.key_id,
            "KeyState": key_state,
            "DirectoryKeys": dir_keys,
            "ReadOnly": self.read_only.load(Ordering::Relaxed),
            "SharedStorage": self.shared_storage,
            "MountedAt": crate::kms::clock::format_rfc3339(self.started),
            "OpenFiles": c.open_files,
            "Requests": requests,
            "KeyCacheHits": c.key_cache_hits,
            "KeyCacheMisses": c.key_cache_misses,
            "KeyServiceCalls": self.ks.calls.load(Ordering::Relaxed),
            "KeyServiceErrors": self.ks.errors.load(Ordering::Relaxed),
            "IoErrors": c.io_errors,
            "DataKeyPool": self.datakey_pool.as_ref().map(|p| {
                let (c, s) = (p.config(), p.stats());
                json!({
                    "Size": c.size,
                    "MaxAgeSeconds": c.max_age.as_secs_f64(),
                    "Ready": s.ready,
                    "Generated": s.generated,
                    "Used": s.used,
                    "Discarded": s.discarded,
                    "Refusals": s.refusals,
                })
            }),
            "LogFile": self.log_file.as_ref().map(|p| p.display().to_string()),
            "AuditTrail": crate::kms::audit::trail::current_status(),
        })
    }

    fn answer(&self, request: &str) -> Value {
        match request.trim() {
            "status" => self.status(),
            // What `daemon_of` matches: cheap, no key-service call.
            "identity" => json!({
                "Pid": std::process::id(),
                "MountPoint": self.mountpoint.display().to_string(),
                "Device": self.device.get(),
            }),
            "read-only on" => {
                self.read_only.store(true, Ordering::SeqCst);
                log::info!("remounted {} read-only", escaped(&self.mountpoint));
                json!({ "ReadOnly": true })
            }
            "read-only off" if self.backing_read_only => json!({
                "Error": format!(
                    "{} cannot be written: the mount stays read-only",
                    self.backing.display()
                )
            }),
            "read-only off" => {
                self.read_only.store(false, Ordering::SeqCst);
                log::info!("remounted {} read-write", escaped(&self.mountpoint));
                json!({ "ReadOnly": false })
            }
            other => json!({ "Error": format!("unknown request {other:?}") }),
        }
    }
}

/// The directory of the control sockets of this user's daemons.
fn socket_dir() -> Option<PathBuf> {
    if os::ids::is_root() {
        return Some(PathBuf::from("/run/kmsfs"));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(|d| PathBuf::from(d).join("kmsfs"))
}

/// The control socket of the daemon `pid` (of this user).
pub fn socket_path(pid: u32) -> Option<PathBuf> {
    socket_dir().map(|d| d.join(format!("{pid}.sock")))
}

/// True when `dir` is a directory of this user's alone (0700 or tighter):
/// only this user (or root) can have put a socket in it.
#[allow(clippy::disallowed_methods)] // this user's socket directory, whose owner and mode are what is checked
fn ours_alone(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == os::ids::ids().0 && m.mode() & 0o077 == 0)
}

/// The daemon serving the mount `info` describes, found by the mount's
/// device and mount point among this user's own daemons: those whose
/// sockets are in this user's private socket directory (root's for root).
/// The mount's source names nothing here: whoever made the mount chose it,
/// so it cannot point this lookup at a daemon, and another user's daemon is
/// never asked (its sockets are in its own directory).
#[allow(clippy::disallowed_methods)] // this user's socket directory, checked by ours_alone first
pub(super) fn daemon_of(info: &super::MountInfo) -> Option<u32> {
    let dir = socket_dir()?;
    if !ours_alone(&dir) {
        return None;
    }
    let mountpoint = info.mountpoint.display().to_string();
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".sock"))
                .and_then(|p| p.parse::<u32>().ok())
        })
        .find(|&pid| {
            control_request(pid, "identity").is_ok_and(|v| {
                v["Device"].as_str() == Some(info.device.as_str())
                    && v["MountPoint"].as_str() == Some(mountpoint.as_str())
            })
        })
}

/// Makes the socket directory (0700) and checks that it is ours alone.
#[allow(clippy::disallowed_methods)] // the daemon's socket directory, made 0700 and checked to be this user's alone
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != os::ids::ids().0 || m.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of this user's alone (owner uid {}, mode {:o})",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Removes the sockets of daemons that are gone (killed, so they could not
/// remove their own), in a directory `private_dir` checked to be ours.
#[allow(clippy::disallowed_methods)] // the daemon's socket directory, made 0700 and checked to be this user's alone
fn remove_stale(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A bound control socket; removed when dropped.
pub(super) struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    #[allow(clippy::disallowed_methods)] // the daemon's socket directory, made 0700 and checked to be this user's alone
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds this daemon's control socket and serves it on a thread. None (with
/// a warning) when there is nowhere safe to put it: the mount serves anyway,
/// without status or remount.
#[allow(clippy::disallowed_methods)] // the daemon's socket directory, made 0700 and checked to be this user's alone
pub(super) fn start(state: Arc<MountState>) -> Option<ControlSocket> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(std::process::id())?;
    let dir = path.parent()?;
    let bound = private_dir(dir).and_then(|()| {
        remove_stale(dir);
        // A socket of an earlier process that had this pid.
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(l)
    });
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            log::warn!(
                "no control socket ({}: {e}): `kmsfs status` and remount will not reach this mount",
                escaped(&path)
            );
            return None;
        }
    };
    let sock = ControlSocket { path };
    let spawned = std::thread::Builder::new()
        .name("kmsfs-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = serve_one(&state, c) {
                            log::debug!("control request: {e}");
                        }
                    }
                    Err(e) => log::debug!("control socket: {e}"),
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no control socket thread: {e}");
        return None;
    }
    Some(sock)
}

fn serve_one(state: &MountState, conn: UnixStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&conn).take_line(&mut line, 256)?;
    let mut out = state.answer(&line).to_string();
    out.push('\n');
    (&conn).write_all(out.as_bytes())
}

trait TakeLine {
    fn take_line(&mut self, buf: &mut String, max: u64) -> std::io::Result<usize>;
}

impl<R: BufRead> TakeLine for R {
    fn take_line(&mut self, buf: &mut String, max: u64) -> std::io::Result<usize> {
        use std::io::Read;
        self.take(max).read_line(buf)
    }
}

/// Why the control socket of a daemon could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// This user has no socket directory, or the daemon made no socket.
    #[error("no control socket for daemon {0} reachable by this user")]
    NoSocket(u32),
    /// Connecting or talking failed.
    #[error("control socket {0}: {1}")]
    Io(String, std::io::Error),
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
}

/// Sends `request` to the daemon `pid` and returns its answer.
pub fn control_request(pid: u32, request: &str) -> Result<Value, ControlError> {
    let path = socket_path(pid).ok_or(ControlError::NoSocket(pid))?;
    let io = |e| ControlError::Io(path.display().to_string(), e);
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ControlError::NoSocket(pid));
        }
        Err(e) => return Err(io(e)),
    };
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    (&conn)
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(&conn)
        .take_line(&mut line, 1 << 20)
        .map_err(io)?;
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    if let Some(e) = v.get("Error").and_then(Value::as_str) {
        return Err(ControlError::Refused(e.to_string()));
    }
    Ok(v)
}
