//! The mount daemon's lifecycle, apart from the filesystem it serves: what
//! may be mounted where (the backing directory's binding to its keystore,
//! the checks before mounting), `-o` options, serving in the foreground or
//! as a daemon that reports readiness to its parent, clean unmount on
//! signals, and `unmount`.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fs::BACKING_LOCK;
use crate::kms::{KeyService, KmsError};
use crate::os;

mod backing;
mod binding;
mod control;
mod dirkey;
mod logfile;
mod mountinfo;
mod options;
mod preflight;
mod readahead;
mod serve;

pub use self::backing::{
    BackingMarker, Prepared, SURVEY_LIMIT, Survey, check_before_mount, lock_backing, read_marker,
    replace_marker, survey, tree_layout, write_marker,
};
pub use self::binding::{
    Binding, KeySource, Passphrase, REMOTE_MARKER_ID, bind, check_recorded, choices_of, key_remedy,
    new_default_key, record_choices, remember_backing, this_process, usable_key,
};
pub use self::control::{ControlError, control_request, socket_path};
pub use self::dirkey::{get_dir_key, set_dir_key};
pub use self::logfile::{check_log_dir, open_log};
pub use self::mountinfo::{
    MountInfo, is_enotconn, mount_at, parse_mountinfo, prepare_mountpoint, serving_mount,
};
pub use self::options::{Options, Settings, parse_options};
pub use self::preflight::{MountRequest, Plan, preflight};

/// Serving threads (each costs about 1 MiB of RSS).
pub const SERVING_THREADS: usize = 4;
/// Entry and attribute time-to-live (and how long a cached directory
/// listing may go unchecked): the kernel updates its caches itself for every
/// change made through the mount, and the daemon tells it of the changes it
/// makes on its own (fs/filesystem.rs, KernelCache); changes made beside the
/// mount in the backing directory show within this time (docs/PERFORMANCE.md).
/// `-o sharedstorage` sets 0.
pub const TTL: Duration = Duration::from_secs(30);

/// Why a mount or unmount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A bad `-o` option or argument.
    #[error("{0}")]
    Usage(String),
    /// A directory is missing or is not a directory.
    #[error("{0}")]
    NotFound(String),
    /// Something is mounted there already (or nothing is, for unmount).
    #[error("{0}")]
    State(String, String),
    /// A system call failed: `what` names the path (or the step) as the
    /// message shows it, `source` is the OS error.
    #[error("{what}: {source}")]
    Io {
        /// The path, or the step, that failed.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The mount failed without an OS error to show (the daemon's own report).
    #[error("{0}")]
    Failed(String),
    /// A path the daemon would write to can be changed by another user.
    #[error("{0}")]
    Refused(String, String),
    /// /dev/fuse exists but cannot be opened by this user (the command line
    /// knows the keystore and paths the remedy must name).
    #[error("{0}")]
    NoDevFuse(String),
    /// The key service refused or failed: opening the keystore, or the key
    /// for new files.
    #[error("{context}{source}")]
    Key {
        /// What it was about (a prefix of the message, may be empty).
        context: String,
        /// The key service's error.
        source: Box<KmsError>,
        /// The local keystore's directory, when opening it failed.
        keystore: Option<PathBuf>,
        /// What the user can do about it, when the binding knows better
        /// than the key service's error.
        hint: Option<String>,
    },
}

impl MountError {
    /// A system call failed on `what` (a path, or a step such as `pipe`).
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        MountError::Io {
            what: what.into(),
            source,
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<&str> {
        match self {
            MountError::State(_, h) | MountError::Refused(_, h) => Some(h),
            MountError::Key { hint, .. } => hint.as_deref(),
            _ => None,
        }
    }

    /// A key service error, as it is.
    pub fn kms(source: KmsError) -> Self {
        MountError::Key {
            context: String::new(),
            source: Box::new(source),
            keystore: None,
            hint: None,
        }
    }

    /// The error with `prefix` before its message and, if given, another
    /// remedy.
    pub(crate) fn in_context(self, prefix: &str, new_hint: Option<String>) -> Self {
        match self {
            MountError::Key {
                context,
                source,
                keystore,
                hint,
            } => MountError::Key {
                context: format!("{prefix}{context}"),
                source,
                keystore,
                hint: new_hint.or(hint),
            },
            MountError::Refused(m, h) => {
                MountError::Refused(format!("{prefix}{m}"), new_hint.unwrap_or(h))
            }
            MountError::State(m, h) => {
                MountError::State(format!("{prefix}{m}"), new_hint.unwrap_or(h))
            }
            MountError::Usage(m) => MountError::Usage(format!("{prefix}{m}")),
            MountError::NotFound(m) => MountError::NotFound(format!("{prefix}{m}")),
            MountError::Io { what, source } => MountError::Io {
                what: format!("{prefix}{what}"),
                source,
            },
            MountError::Failed(m) => MountError::Failed(format!("{prefix}{m}")),
            MountError::NoDevFuse(m) => MountError::NoDevFuse(format!("{prefix}{m}")),
        }
    }
}

/// A checked mount, as the daemon serves it (made only by [`preflight`]).
pub(crate) struct Serving {
    /// The backing directory (absolute).
    pub backing: PathBuf,
    /// The mount point (absolute).
    pub mountpoint: PathBuf,
    /// The key service, already unsealed.
    pub ks: Arc<dyn KeyService>,
    /// The keystore directory, for `kmsfs status` (None: not a local one).
    pub keystore: Option<PathBuf>,
    /// The CMK for new files.
    pub key_id: String,
    /// How the tree's files store their blocks (`tree_layout`).
    pub layout: crate::format::Layout,
    /// Raw `-o` options (comma-separated lists).
    pub options: Vec<String>,
    /// Serve in this process instead of a daemon.
    pub foreground: bool,
    /// Where the daemon's log goes (else /dev/null); opened with `open_log`.
    pub log_file: Option<PathBuf>,
    /// The lock on the backing directory, held while the daemon serves.
    pub lock: Option<std::fs::File>,
    /// The backing directory cannot be written: serve read-only.
    pub backing_read_only: bool,
    /// With a remote KMS: how long its data keys may be served from the
    /// cache, which also bounds the age of a key from the data-key pool
    /// (None: a local keystore, no pool).
    pub remote_cache: Option<std::time::Duration>,
}

/// Mounts: in the foreground (returns after unmount) or as a daemon (returns
/// once the mount is usable; the daemon serves until unmounted). Everything
/// the command line checks is checked ([`preflight`]); its notices go to
/// the log.
pub fn mount(req: MountRequest) -> Result<(), MountError> {
    let plan = preflight(req)?;
    for n in plan.notices() {
        log::warn!("{n}");
    }
    start(plan)
}

/// Serves a checked mount: in the foreground or as a daemon, as [`mount`].
/// A refusal leaves nothing behind in the backing directory.
pub fn start(plan: Plan) -> Result<(), MountError> {
    let backing = plan.serving.backing.clone();
    let r = serve_checked(&plan.serving);
    if r.is_err() {
        backing::Prepared::undo(&backing, plan.new_lock);
    }
    r
}

fn serve_checked(req: &Serving) -> Result<(), MountError> {
    let o = parse_options(&req.options)?;
    // Checked again: time has passed since the preflight (a passphrase prompt).
    prepare_mountpoint(&req.mountpoint)?;
    if !o.shared_storage && req.lock.is_none() {
        mountinfo::check_backing_unused(&req.backing)?;
    }
    // Opened here, before any fork, so that a refusal reaches the user.
    let log = req.log_file.as_deref().map(open_log).transpose()?;
    if req.foreground {
        if let Some(f) = &log {
            os::process::redirect_stderr(f).map_err(|e| MountError::io("log file", e))?;
        }
        return serve::serve(req, &mut |_| {});
    }
    let (mut rx, tx) = std::io::pipe().map_err(|e| MountError::io("pipe", e))?;
    match os::process::fork().map_err(|e| MountError::io("fork", e))? {
        os::process::Forked::Parent(child) => {
            drop(tx);
            let mut msg = String::new();
            let _ = rx.read_to_string(&mut msg);
            match msg.strip_prefix("OK") {
                Some(_) => {
                    log::debug!("mount daemon {child} is serving");
                    Ok(())
                }
                None => match msg.strip_prefix("ERR ") {
                    Some(m) => Err(MountError::Failed(m.trim_end().to_string())),
                    None => Err(MountError::Failed(format!(
                        "the mount daemon (pid {child}) exited before the mount was ready{}",
                        req.log_file
                            .as_ref()
                            .map(|p| format!("; see {}", p.display()))
                            .unwrap_or_default()
                    ))),
                },
            }
        }
        os::process::Forked::Child => {
            drop(rx);
            let code = serve::daemon_main(req, log.as_ref(), tx);
            std::process::exit(code);
        }
    }
}

/// Makes the running kmsfs mount at `mp` read-only or read-write (what
/// `mount -o remount,ro|rw` asks of the helper): the daemon is told through
/// its control socket, and the kernel's mount flags change by a remount that
/// keeps the others (nosuid, nodev, noexec, the atime options).
#[allow(clippy::disallowed_methods)] // the mount point the user named, used as given
pub fn remount(mp: &Path, read_only: bool) -> Result<(), MountError> {
    let path = std::fs::canonicalize(mp)
        .map_err(|e| MountError::NotFound(format!("{}: {e}", mp.display())))?;
    let info = match mount_at(&path) {
        Some(i) if i.is_kmsfs() => i,
        _ => {
            return Err(MountError::State(
                format!("{} is not a kmsfs mount", path.display()),
                "`kmsfs status` lists the kmsfs mounts".into(),
            ));
        }
    };
    let pid = info.daemon_pid();
    let tell = |on: bool| -> Result<(), MountError> {
        let Some(pid) = pid else {
            return Err(MountError::State(
                format!("no daemon of this user serves {}", path.display()),
                "unmount it and mount it again with the options wanted".into(),
            ));
        };
        let req = if on { "read-only on" } else { "read-only off" };
        control_request(pid, req).map(drop).map_err(|e| match e {
            ControlError::Refused(m) => MountError::Refused(
                m,
                "make the backing directory writable, then unmount and mount again".into(),
            ),
            e => MountError::State(
                format!("cannot reach the daemon of {}: {e}", path.display()),
                "unmount it and mount it again with the options wanted".into(),
            ),
        })
    };
    if !read_only {
        tell(false)?;
    }
    let mut flags = libc::MS_REMOUNT;
    for opt in info.options.split(',') {
        flags |= match opt {
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            _ => 0,
        };
    }
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    os::mount::mount("", &path, "", flags, "")
        .map_err(|e| MountError::io(format!("remounting {}", path.display()), e))?;
    if read_only && let Err(e) = tell(true) {
        // The kernel refuses every write already.
        log::warn!("{e}");
    }
    Ok(())
}

/// Unmounts `mp` and waits (up to 10 s) for its kmsfs daemon to exit.
#[allow(clippy::disallowed_methods)] // the mount point the user named, used as given
pub fn unmount(mp: &Path) -> Result<(), MountError> {
    let abs = std::path::absolute(mp).map_err(|e| MountError::io("fork", e))?;
    let path = match std::fs::canonicalize(&abs) {
        Ok(p) => p,
        Err(e) if is_enotconn(&e) => abs.clone(),
        Err(e) => return Err(MountError::NotFound(format!("{}: {e}", abs.display()))),
    };
    let Some(info) = mount_at(&path) else {
        return Err(MountError::NotFound(format!(
            "{} is not mounted (`kmsfs status` lists the kmsfs mounts)",
            path.display()
        )));
    };
    if !info.is_kmsfs() {
        return Err(MountError::State(
            format!(
                "{} is not a kmsfs mount ({} from {})",
                path.display(),
                info.fstype,
                info.source
            ),
            "unmount other file systems with umount".into(),
        ));
    }
    // Found while the mount is there (by its device), to wait for it after.
    let daemon = info.daemon_pid();
    match os::mount::umount2(&path, 0) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(MountError::State(
                format!(
                    "{} is busy: files or directories under it are in use",
                    path.display()
                ),
                format!(
                    "close them (`fuser -vm {0}` lists the processes) or detach lazily with `umount -l {0}`",
                    path.display()
                ),
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(&path)
                .status()
                .map_err(|e| MountError::io("fusermount3", e))?;
            if !st.success() {
                return Err(MountError::Failed(format!(
                    "fusermount3 -u {} failed",
                    path.display()
                )));
            }
        }
        Err(e) => return Err(MountError::io(format!("umount {}", path.display()), e)),
    }
    let t0 = Instant::now();
    let waiting = || t0.elapsed() < Duration::from_secs(10);
    if let Some(pid) = daemon {
        while os::process::process_alive(pid) && waiting() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // The backing directory is free for the next mount only once the
    // daemon's lock is gone with the last descriptor that held it.
    if let Some(lock) = info.backing().and_then(|b| {
        backing::root_file(&b, BACKING_LOCK, libc::O_RDONLY | libc::O_NONBLOCK, 0).ok()
    }) {
        while lock.try_lock_shared().is_err() && waiting() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}
