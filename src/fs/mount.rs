//! The mount's lifecycle: checks before mounting (missing directories, an
//! existing mount, a stale mount whose daemon died), `-o` options, serving in
//! the foreground or as a daemon that reports readiness to its parent, clean
//! unmount on SIGINT/SIGTERM/SIGHUP, and `unmount`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL};

use super::filesystem::{FsConfig, KmsFs};
use crate::kms::KeyService;
use crate::logtext::escaped;
use crate::os;
use crate::trust::{self, Scope, TrustError};

/// Serving threads (each costs about 1 MiB of RSS).
pub const SERVING_THREADS: usize = 4;
/// Entry and attribute time-to-live: changes made beside the mount in the
/// backing directory show within this time.
pub const TTL: Duration = Duration::from_secs(1);

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
    /// A system call failed.
    #[error("{0}")]
    Io(String),
    /// A path the daemon would write to can be changed by another user.
    #[error("{0}")]
    Refused(String, String),
}

impl MountError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&str> {
        match self {
            MountError::State(_, h) | MountError::Refused(_, h) => Some(h),
            _ => None,
        }
    }
}

/// Everything `mount` needs.
pub struct MountRequest {
    /// The backing directory (absolute).
    pub backing: PathBuf,
    /// The mount point (absolute).
    pub mountpoint: PathBuf,
    /// The key service, already unsealed.
    pub ks: Arc<dyn KeyService>,
    /// The CMK for new files.
    pub key_id: String,
    /// Raw `-o` options (comma-separated lists).
    pub options: Vec<String>,
    /// Serve in this process instead of a daemon.
    pub foreground: bool,
    /// Where the daemon's log goes (else /dev/null); opened with `open_log`.
    pub log_file: Option<PathBuf>,
}

/// Checks the directory of the daemon's log (`create`: the directory is yet
/// to be made) with the keystore's rule (`crate::trust`), the directory itself
/// included: whoever can change it could put a link where the root daemon
/// opens its log. Returns the resolved directory.
pub fn check_log_dir(dir: &Path, create: bool) -> Result<PathBuf, MountError> {
    trust::trusted_path(dir, create, Scope::WithSelf).map_err(|e| match e {
        TrustError::Untrusted { dir: d, uid, mode } => MountError::Refused(
            format!(
                "refusing the log directory {}: {} can be changed by another user (owner uid \
                 {uid}, mode {mode:o}), who could put a link to another file where the daemon \
                 opens its log",
                dir.display(),
                d.display()
            ),
            "pass --log-file FILE in a directory only root and you can change (e.g. under \
             /var/log), or mount without another user's environment (sudo without -E)"
                .into(),
        ),
        TrustError::Io { what, path, source } => MountError::Io(format!(
            "log directory {}: cannot {what} {}: {source}",
            dir.display(),
            path.display()
        )),
    })
}

/// Opens the daemon's log for appending: in a directory that passes
/// `check_log_dir`, never through a symbolic link (O_NOFOLLOW), created 0600,
/// and only a regular file that root or this user owns.
pub fn open_log(path: &Path) -> Result<File, MountError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(MountError::Usage(format!(
            "log file {} does not name a file",
            path.display()
        )));
    };
    let real = check_log_dir(os::or_dot(dir), false)?.join(name);
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&real)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => MountError::Refused(
                format!(
                    "refusing the log file {}: it is a symbolic link, and the daemon never \
                     follows one to its log (someone may be trying to redirect its writes)",
                    path.display()
                ),
                "check who made it and remove it, or pass another --log-file".into(),
            ),
            _ => MountError::Io(format!("log file {}: {e}", path.display())),
        })?;
    let m = f
        .metadata()
        .map_err(|e| MountError::Io(format!("log file {}: {e}", path.display())))?;
    if !m.is_file() || !trust::trusted_owner(m.uid()) {
        return Err(MountError::Refused(
            format!(
                "refusing the log file {}: it is not a regular file owned by root or you \
                 (owner uid {}, mode {:o})",
                path.display(),
                m.uid(),
                m.mode()
            ),
            "check who made it and remove it, or pass another --log-file".into(),
        ));
    }
    Ok(f)
}

/// Parsed `-o` options.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    /// Options for fuser.
    pub mount: Vec<MountOption>,
    /// allow_other / allow_root.
    pub acl: SessionACL,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Parses `-o a,b,c` lists into fuser options; unknown options are refused.
pub fn parse_options(raw: &[String]) -> Result<Options, MountError> {
    let mut o = Options::default();
    for opt in raw
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        let m = match opt {
            "allow_other" => {
                o.acl = SessionACL::All;
                continue;
            }
            "allow_root" => {
                o.acl = SessionACL::RootAndOwner;
                continue;
            }
            "ro" => {
                o.read_only = true;
                MountOption::RO
            }
            "rw" => MountOption::RW,
            "default_permissions" => MountOption::DefaultPermissions,
            "auto_unmount" => MountOption::AutoUnmount,
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            o if o.starts_with("fsname=") => MountOption::FSName(o[7..].to_string()),
            o if o.starts_with("subtype=") => MountOption::Subtype(o[8..].to_string()),
            other => {
                return Err(MountError::Usage(format!(
                    "unknown mount option {other:?} (known: allow_other, allow_root, \
                     default_permissions, ro, rw, auto_unmount, [no]dev, [no]suid, [no]exec, \
                     [no]atime, sync, async, dirsync, fsname=, subtype=)"
                )));
            }
        };
        o.mount.push(m);
    }
    if o.mount.contains(&MountOption::AutoUnmount) && o.acl == SessionACL::Owner {
        return Err(MountError::Usage(
            "auto_unmount needs allow_other or allow_root as well".into(),
        ));
    }
    Ok(o)
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq)]
pub struct MountInfo {
    /// Mount point.
    pub mountpoint: PathBuf,
    /// File system type ("fuse", "fuse.x", ...).
    pub fstype: String,
    /// The source ("kmsfs:PID:BACKING" for our mounts).
    pub source: String,
}

impl MountInfo {
    /// True for mounts made by kmsfs (type fuse.kmsfs, or a kmsfs source name).
    pub fn is_kmsfs(&self) -> bool {
        self.fstype == "fuse.kmsfs" || self.source.starts_with("kmsfs:")
    }

    /// The serving daemon's pid, for kmsfs mounts.
    pub fn daemon_pid(&self) -> Option<u32> {
        let rest = self.source.strip_prefix("kmsfs:")?;
        rest.split(':').next()?.parse().ok()
    }
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountInfo {
                mountpoint: PathBuf::from(unescape(f.get(4)?)),
                fstype: f.get(sep + 1)?.to_string(),
                source: unescape(f.get(sep + 2)?),
            })
        })
        .collect()
}

/// The mount at exactly `path`, if any (the last one wins when stacked).
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rfind(|m| m.mountpoint == path)
}

/// The error of any access to a FUSE mount whose daemon is gone.
pub fn is_enotconn(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
}

/// Checks a mount point before mounting: it must be an existing directory
/// with nothing live mounted on it. A dead FUSE mount (its daemon died: every
/// access fails with ENOTCONN) is detached lazily; if that fails the error
/// says what to run.
pub fn prepare_mountpoint(mp: &Path) -> Result<(), MountError> {
    match std::fs::metadata(mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(MountError::NotFound(format!(
                "mount point {} is not a directory",
                mp.display()
            )));
        }
        Err(e) if is_enotconn(&e) => {
            log::warn!(
                "{}: stale mount (its daemon died); detaching it",
                escaped(mp)
            );
            eprintln!(
                "kmsfs: {} held a dead mount (its daemon had exited); detached it",
                mp.display()
            );
            return os::mount::umount2(mp, libc::MNT_DETACH).map_err(|e| {
                MountError::State(
                    format!(
                        "{} holds a dead mount that could not be detached: {e}",
                        mp.display()
                    ),
                    format!(
                        "run `fusermount3 -u -z {0}` (or as root `umount -l {0}`)",
                        mp.display()
                    ),
                )
            });
        }
        Err(e) => {
            return Err(MountError::NotFound(format!(
                "mount point {}: {e}",
                mp.display()
            )));
        }
    }
    if let Some(m) = mount_at(mp) {
        return Err(MountError::State(
            format!(
                "{} is already a mount point ({} from {})",
                mp.display(),
                m.fstype,
                m.source
            ),
            format!("unmount it first: `kmsfs unmount {}`", mp.display()),
        ));
    }
    Ok(())
}

/// Refuses a backing directory that another kmsfs mount serves: two daemons
/// over one directory would each trust their own caches.
fn check_backing_unused(backing: &Path) -> Result<(), MountError> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    let suffix = format!(":{}", backing.display());
    let other = parse_mountinfo(&text).into_iter().find(|m| {
        m.daemon_pid().is_some() && m.source.ends_with(&suffix) && m.source.starts_with("kmsfs:")
    });
    match other {
        Some(m) => Err(MountError::State(
            format!(
                "{} is already mounted at {}",
                backing.display(),
                m.mountpoint.display()
            ),
            format!(
                "use that mount, or unmount it first: `kmsfs unmount {}`",
                m.mountpoint.display()
            ),
        )),
        None => Ok(()),
    }
}

fn session_config(req: &MountRequest, o: &Options) -> Config {
    let mut cfg = Config::default();
    cfg.mount_options = o.mount.clone();
    // The daemon runs as root and opens every backing file itself: the kernel
    // must check permissions against the attributes (gocryptfs does the same).
    if !o.mount.contains(&MountOption::DefaultPermissions) {
        cfg.mount_options.push(MountOption::DefaultPermissions);
    }
    if !o.mount.iter().any(|m| matches!(m, MountOption::FSName(_))) {
        cfg.mount_options
            .push(MountOption::FSName(source_name(req, o)));
    }
    if !o.mount.iter().any(|m| matches!(m, MountOption::Subtype(_))) {
        cfg.mount_options.push(MountOption::Subtype("kmsfs".into()));
    }
    cfg.acl = o.acl;
    cfg.n_threads = Some(SERVING_THREADS);
    cfg.clone_fd = true;
    cfg
}

/// The source name of the mount: names the daemon, so `unmount` can wait for it.
fn source_name(req: &MountRequest, o: &Options) -> String {
    o.mount
        .iter()
        .find_map(|m| match m {
            MountOption::FSName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("kmsfs:{}:{}", std::process::id(), req.backing.display()))
}

/// mount(2) flags and fuse mount data for the options (as root).
fn kernel_mount_args(o: &Options, fd: i32, rootmode: u32) -> (u64, String, String) {
    let has = |m: MountOption| o.mount.contains(&m);
    let mut flags = 0u64;
    if !has(MountOption::Suid) {
        flags |= libc::MS_NOSUID;
    }
    if !has(MountOption::Dev) {
        flags |= libc::MS_NODEV;
    }
    for (opt, f) in [
        (MountOption::RO, libc::MS_RDONLY),
        (MountOption::NoSuid, libc::MS_NOSUID),
        (MountOption::NoDev, libc::MS_NODEV),
        (MountOption::NoExec, libc::MS_NOEXEC),
        (MountOption::NoAtime, libc::MS_NOATIME),
        (MountOption::Sync, libc::MS_SYNCHRONOUS),
        (MountOption::DirSync, libc::MS_DIRSYNC),
    ] {
        if has(opt) {
            flags |= f;
        }
    }
    let (uid, gid) = os::ids::ids();
    // The daemon opens every backing file as root: the kernel checks permissions.
    let mut data =
        format!("fd={fd},rootmode={rootmode:o},user_id={uid},group_id={gid},default_permissions");
    if o.acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    let subtype = o
        .mount
        .iter()
        .find_map(|m| match m {
            MountOption::Subtype(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "kmsfs".into());
    (flags, data, format!("fuse.{subtype}"))
}

/// Mounts and performs the FUSE handshake. As root we call mount(2) ourselves
/// (type `fuse.kmsfs`) and hand fuser the connection, so that fuser never
/// unmounts on its own: its drop-time unmount could hit a newer mount at the
/// same place. Otherwise (or with auto_unmount) fuser mounts via fusermount3.
fn new_session(fs: KmsFs, req: &MountRequest, o: &Options) -> std::io::Result<Session<KmsFs>> {
    let cfg = session_config(req, o);
    if !os::ids::is_root() || o.mount.contains(&MountOption::AutoUnmount) {
        return Session::new(fs, &req.mountpoint, &cfg);
    }
    let fd = os::mount::open_dev_fuse()?;
    let rootmode =
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&req.mountpoint)?) & libc::S_IFMT;
    let (flags, data, fstype) =
        kernel_mount_args(o, std::os::fd::AsRawFd::as_raw_fd(&fd), rootmode);
    os::mount::mount(&source_name(req, o), &req.mountpoint, &fstype, flags, &data)?;
    Session::from_fd(fs, fd, o.acl, cfg).inspect_err(|_| {
        let _ = os::mount::umount2(&req.mountpoint, libc::MNT_DETACH);
    })
}

/// Mounts and serves until unmounted. `ready` is told once the mount is usable
/// (or why it failed).
fn serve(req: &MountRequest, ready: &mut dyn FnMut(Result<(), String>)) -> Result<(), MountError> {
    let o = parse_options(&req.options)?;
    // Data keys and the unsealed keystore live in this process: no core dumps.
    if let Err(e) = os::process::forbid_core_dumps() {
        log::warn!("could not disable core dumps: {e}");
    }
    // Threads made from here on (fuser's) inherit the mask: only the signal
    // thread below receives the stop signals.
    os::process::block_stop_signals().map_err(|e| MountError::Io(format!("signal setup: {e}")))?;
    let mut fs = KmsFs::new(FsConfig {
        backing: req.backing.clone(),
        ks: req.ks.clone(),
        key_id: req.key_id.clone(),
        read_only: o.read_only,
        noatime: o.mount.contains(&MountOption::NoAtime),
        ttl: TTL,
    })
    .map_err(|e| MountError::Io(format!("{}: {e}", req.backing.display())))?;
    fs.enter_backing()
        .map_err(|e| MountError::Io(format!("{}: {e}", req.backing.display())))?;
    let session = match new_session(fs, req, &o) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("mounting {} failed: {e}", req.mountpoint.display());
            ready(Err(msg.clone()));
            return Err(MountError::Io(msg));
        }
    };
    log::info!(
        "mounted {} on {}",
        escaped(&req.backing),
        escaped(&req.mountpoint)
    );
    ready(Ok(()));
    super::readahead::raise(&req.mountpoint);
    let mp = req.mountpoint.clone();
    std::thread::Builder::new()
        .name("kmsfs-signals".into())
        .spawn(move || stop_on_signal(&mp))
        .map_err(|e| MountError::Io(format!("signal thread: {e}")))?;
    let r = session.run();
    log::info!("unmounted {}", escaped(&req.mountpoint));
    r.map_err(|e| MountError::Io(format!("serving {}: {e}", req.mountpoint.display())))
}

fn stop_on_signal(mp: &Path) {
    loop {
        match os::process::wait_stop_signal() {
            Ok(sig) => {
                log::info!("signal {sig}: unmounting {}", escaped(mp));
                // Unmounting writes back the kernel's dirty pages through us and
                // then ends the session; with files still open, detach lazily.
                if let Err(e) = os::mount::umount2(mp, 0) {
                    log::info!("umount {}: {e}; detaching lazily", escaped(mp));
                    if let Err(e) = os::mount::umount2(mp, libc::MNT_DETACH) {
                        log::warn!("could not unmount {}: {e}", escaped(mp));
                        continue;
                    }
                }
                return;
            }
            Err(e) => {
                log::warn!("waiting for signals failed: {e}");
                return;
            }
        }
    }
}

/// Mounts: in the foreground (returns after unmount) or as a daemon (returns
/// once the mount is usable; the daemon serves until unmounted).
pub fn mount(req: MountRequest) -> Result<(), MountError> {
    parse_options(&req.options)?;
    prepare_mountpoint(&req.mountpoint)?;
    check_backing_unused(&req.backing)?;
    // Opened here, before any fork, so that a refusal reaches the user.
    let log = req.log_file.as_deref().map(open_log).transpose()?;
    if req.foreground {
        if let Some(f) = &log {
            os::process::redirect_stderr(f)
                .map_err(|e| MountError::Io(format!("log file: {e}")))?;
        }
        return serve(&req, &mut |_| {});
    }
    let (mut rx, tx) = std::io::pipe().map_err(|e| MountError::Io(format!("pipe: {e}")))?;
    match os::process::fork().map_err(|e| MountError::Io(e.to_string()))? {
        os::process::Forked::Parent(child) => {
            drop(tx);
            let mut msg = String::new();
            let _ = rx.read_to_string(&mut msg);
            match msg.strip_prefix("OK") {
                Some(_) => {
                    log::info!("mount daemon {child} is serving");
                    Ok(())
                }
                None => match msg.strip_prefix("ERR ") {
                    Some(m) => Err(MountError::Io(m.trim_end().to_string())),
                    None => Err(MountError::Io(format!(
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
            let code = daemon_main(&req, log.as_ref(), tx);
            std::process::exit(code);
        }
    }
}

fn daemon_main(req: &MountRequest, log: Option<&File>, mut tx: std::io::PipeWriter) -> i32 {
    if let Err(e) = os::process::setsid().and_then(|()| os::process::redirect_stdio(log)) {
        let _ = write!(tx, "ERR cannot start the mount daemon: {e}");
        return 1;
    }
    let mut tx = Some(tx);
    let mut ready = |r: Result<(), String>| {
        if let Some(mut t) = tx.take() {
            let _ = match r {
                Ok(()) => t.write_all(b"OK\n"),
                Err(m) => write!(t, "ERR {m}"),
            };
        }
    };
    match serve(req, &mut ready) {
        Ok(()) => 0,
        Err(e) => {
            ready(Err(e.to_string()));
            log::error!("{e}");
            1
        }
    }
}

/// Unmounts `mp` and waits (up to 10 s) for its kmsfs daemon to exit.
pub fn unmount(mp: &Path) -> Result<(), MountError> {
    let abs = std::path::absolute(mp).map_err(|e| MountError::Io(e.to_string()))?;
    let path = match std::fs::canonicalize(&abs) {
        Ok(p) => p,
        Err(e) if is_enotconn(&e) => abs.clone(),
        Err(e) => return Err(MountError::NotFound(format!("{}: {e}", abs.display()))),
    };
    let Some(info) = mount_at(&path) else {
        return Err(MountError::State(
            format!("{} is not mounted", path.display()),
            "list mounts with `grep kmsfs /proc/self/mountinfo`".into(),
        ));
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
                .map_err(|e| MountError::Io(format!("fusermount3: {e}")))?;
            if !st.success() {
                return Err(MountError::Io(format!(
                    "fusermount3 -u {} failed",
                    path.display()
                )));
            }
        }
        Err(e) => return Err(MountError::Io(format!("umount {}: {e}", path.display()))),
    }
    if let Some(pid) = info.daemon_pid() {
        let t0 = Instant::now();
        while os::process::process_alive(pid) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse() {
        let o = parse_options(&["ro,allow_other".into(), "default_permissions".into()]).unwrap();
        assert!(o.read_only);
        assert_eq!(o.acl, SessionACL::All);
        assert_eq!(
            o.mount,
            vec![MountOption::RO, MountOption::DefaultPermissions]
        );
        assert!(parse_options(&["bogus".into()]).is_err());
        assert!(parse_options(&["auto_unmount".into()]).is_err());
    }

    #[test]
    fn kernel_mount_arguments() {
        let o = parse_options(&["ro,allow_other,noexec".into()]).unwrap();
        let (flags, data, ty) = kernel_mount_args(&o, 7, 0o40000);
        let want = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        assert_eq!(flags, want);
        assert!(data.starts_with("fd=7,rootmode=40000,"), "{data}");
        assert!(data.ends_with(",default_permissions,allow_other"), "{data}");
        assert_eq!(ty, "fuse.kmsfs");
        let o = parse_options(&["suid,dev,subtype=x".into()]).unwrap();
        let (flags, data, ty) = kernel_mount_args(&o, 3, 0o40000);
        assert_eq!(flags, 0);
        assert!(!data.contains("allow_other"));
        assert_eq!(ty, "fuse.x");
    }

    #[test]
    fn mountinfo_parsing() {
        let t = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse kmsfs:123:/data/x rw,user_id=0\n\
                 37 35 98:0 / /other rw - ext4 /dev/sda1 rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "fuse");
        assert_eq!(m[0].daemon_pid(), Some(123));
        assert_eq!(m[1].daemon_pid(), None);
    }
}
