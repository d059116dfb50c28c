//! Processes: control for the mount daemon (core dumps, umask, stop signals,
//! fork and setsid, standard descriptors), and what /proc says about a
//! process (its status fields, whether it is alive).

use std::io;
use std::os::fd::AsRawFd;

use super::check;

/// Marks the process non-dumpable: no core file (which would hold key
/// material) and no ptrace by non-root users.
pub(crate) fn forbid_core_dumps() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })
}

/// What a write to a closed pipe does: `true`, kill the process quietly
/// (SIGPIPE's default, what Unix tools do, for the commands that print);
/// `false`, fail with EPIPE (Rust's default, for the mount daemon).
pub(crate) fn sigpipe_kills(kills: bool) {
    let h = if kills { libc::SIG_DFL } else { libc::SIG_IGN };
    // SAFETY: installs one of the two predefined dispositions.
    unsafe { libc::signal(libc::SIGPIPE, h) };
}

/// Raises the soft limit of open descriptors to the hard limit; the soft
/// limit now, or the one that stays and why it could not be raised.
pub(crate) fn raise_fd_limit() -> Result<u64, (u64, std::io::Error)> {
    // SAFETY: an all-zero rlimit is a valid value for getrlimit to fill.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rlimit the kernel writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err((1024, std::io::Error::last_os_error()));
    }
    if lim.rlim_cur >= lim.rlim_max {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: a valid pointer to an rlimit the kernel reads.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err((lim.rlim_cur, std::io::Error::last_os_error()));
    }
    Ok(raised.rlim_cur)
}

/// The signals that end a mount cleanly.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn stop_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset adds valid
    // signal numbers to that initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread, so that threads it
/// spawns afterwards inherit the mask and only `wait_stop_signal` sees them.
pub(crate) fn block_stop_signals() -> io::Result<()> {
    let set = stop_sigset();
    // SAFETY: `set` is an initialised sigset; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for one of the blocked stop signals and returns its number.
pub(crate) fn wait_stop_signal() -> io::Result<i32> {
    let set = stop_sigset();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised sigset and `sig` a writable int.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// Number of threads of this process (fork is only safe with one).
pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Which side of a fork we are on.
#[derive(Debug)]
pub(crate) enum Forked {
    /// The original process; the child has this pid.
    Parent(u32),
    /// The new process.
    Child,
}

/// fork(2). Callers must be single-threaded (checked) so the child inherits no
/// lock held by another thread.
pub(crate) fn fork() -> io::Result<Forked> {
    if thread_count() != 1 {
        return Err(io::Error::other(
            "cannot daemonize: the process already runs several threads",
        ));
    }
    // SAFETY: the process is single-threaded (checked above), so the child starts
    // in a consistent state; both sides continue with ordinary Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        p if p < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        p => Ok(Forked::Parent(p as u32)),
    }
}

/// setsid(2): a new session without a controlling terminal.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: no arguments; fails only if already a process group leader.
    check(unsafe { libc::setsid() })
}

/// Points stdin at /dev/null and stdout/stderr at `log` (or /dev/null).
pub(crate) fn redirect_stdio(log: Option<&std::fs::File>) -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let out = match log {
        Some(f) => f.as_raw_fd(),
        None => null.as_raw_fd(),
    };
    // SAFETY: dup2 onto the standard descriptors from descriptors that stay open
    // for the call; afterwards the standard descriptors refer to the new files.
    unsafe {
        check(libc::dup2(null.as_raw_fd(), 0))?;
        check(libc::dup2(out, 1))?;
        check(libc::dup2(out, 2))?;
    }
    Ok(())
}

/// Points stderr (where the log goes) at `log`.
pub(crate) fn redirect_stderr(log: &std::fs::File) -> io::Result<()> {
    // SAFETY: dup2 onto fd 2 from a descriptor that stays open for the call.
    check(unsafe { libc::dup2(log.as_raw_fd(), 2) })
}

/// The status text of process (or thread) `pid` from /proc (None once it
/// is gone).
pub(crate) fn status(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The value of field `name` ("CapEff", "Groups", "Umask") of a /proc
/// status text, trimmed.
pub(crate) fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The executable of a process (`/proc/PID/exe`), when it can be read.
pub(crate) fn executable(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// True when a process with this pid exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(s) => match s.rfind(')') {
            Some(i) => !matches!(
                s[i + 1..].trim_start().chars().next(),
                Some('Z') | Some('X')
            ),
            None => true,
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }
}

/// NS_GET_PARENT: `_IO(0xb7, 0x2)`, a descriptor of a namespace's parent.
const NS_GET_PARENT: libc::c_ulong = 0xb702;
/// NS_GET_OWNER_UID: `_IO(0xb7, 0x4)`, the owner of a user namespace.
const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;

/// Where the user namespace of process `pid` stands to this process's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UserNs {
    /// The same namespace as this process.
    Same,
    /// Another namespace; the uids (as this process sees them) that own it
    /// and each of its ancestors below this process's namespace, innermost
    /// first. `reaches_ours` is false when the walk stopped before this
    /// process's namespace (not an ancestor of the caller's, or a step
    /// failed): the list is then not the whole chain.
    Other {
        owners: Vec<u32>,
        reaches_ours: bool,
    },
}

/// The user namespace of `pid` compared with this process's, through
/// /proc/PID/ns/user and the NS_GET_OWNER_UID and NS_GET_PARENT ioctls.
/// None when /proc has no such process.
pub(crate) fn user_ns(pid: u32) -> Option<UserNs> {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata("/proc/self/ns/user").ok()?;
    let mut ns = std::fs::File::open(format!("/proc/{pid}/ns/user")).ok()?;
    let id = |f: &std::fs::File| f.metadata().ok().map(|m| (m.dev(), m.ino()));
    let ours = (ours.dev(), ours.ino());
    if id(&ns)? == ours {
        return Some(UserNs::Same);
    }
    let mut owners = Vec::new();
    // A chain of nested user namespaces is at most 32 deep (the kernel's limit).
    for _ in 0..33 {
        if id(&ns) == Some(ours) {
            return Some(UserNs::Other {
                owners,
                reaches_ours: true,
            });
        }
        let mut uid: libc::uid_t = 0;
        // SAFETY: NS_GET_OWNER_UID writes one uid_t to the pointer, which
        // points at a live local; the descriptor is borrowed from `ns`.
        let r = unsafe {
            libc::ioctl(
                ns.as_raw_fd(),
                NS_GET_OWNER_UID,
                &mut uid as *mut libc::uid_t,
            )
        };
        if r < 0 {
            break;
        }
        owners.push(uid);
        // SAFETY: NS_GET_PARENT takes no argument and returns a new
        // descriptor (owned below) or -1; `ns` stays open across the call.
        let parent = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_PARENT) };
        if parent < 0 {
            break;
        }
        // SAFETY: `parent` is a descriptor the kernel just opened for us
        // and nothing else owns.
        ns = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(parent) };
    }
    Some(UserNs::Other {
        owners,
        reaches_ours: false,
    })
}
