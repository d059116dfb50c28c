//! Thin wrappers over the system calls that std does not offer (renameat2,
//! mknod, utimensat, fallocate, lseek, xattrs, statvfs, umount2, signals,
//! fork). Every `unsafe` block of the mount lives here, each with its reason.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

/// A path as a C string; a path with an interior NUL is refused with EINVAL.
pub fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn name_cstr(n: &OsStr) -> io::Result<CString> {
    CString::new(n.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// renameat2(2) of `from` in directory `fd` to `to` in directory `tfd`, with
/// `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE).
pub fn renameat2(
    fd: &impl AsRawFd,
    from: &OsStr,
    tfd: &impl AsRawFd,
    to: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let (f, t) = (name_cstr(from)?, name_cstr(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the
    // call; the descriptors are borrowed from live files.
    check(unsafe {
        libc::renameat2(
            fd.as_raw_fd(),
            f.as_ptr(),
            tfd.as_raw_fd(),
            t.as_ptr(),
            flags as libc::c_uint,
        )
    })
}

/// A new name `to` in directory `tfd` for the object `node` holds (an
/// O_PATH descriptor will do; a symlink gets a new name itself): linkat of
/// its /proc path with AT_SYMLINK_FOLLOW, which reaches exactly that inode,
/// whatever its name leads to by now.
pub fn link_node(node: &impl AsRawFd, tfd: &impl AsRawFd, to: &OsStr) -> io::Result<()> {
    let (f, t) = (proc_fd(node), name_cstr(to)?);
    // SAFETY: valid C strings that outlive the call; borrowed descriptors.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            f.as_ptr(),
            tfd.as_raw_fd(),
            t.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
}

/// unlinkat(2): a file, or with `dir` an empty directory, in directory `fd`.
pub fn unlinkat(fd: &impl AsRawFd, name: &OsStr, dir: bool) -> io::Result<()> {
    let n = name_cstr(name)?;
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: a valid C string that outlives the call; a borrowed descriptor.
    check(unsafe { libc::unlinkat(fd.as_raw_fd(), n.as_ptr(), flags) })
}

/// mkdirat(2).
pub fn mkdirat(fd: &impl AsRawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let n = name_cstr(name)?;
    // SAFETY: a valid C string that outlives the call; a borrowed descriptor.
    check(unsafe { libc::mkdirat(fd.as_raw_fd(), n.as_ptr(), mode as libc::mode_t) })
}

/// symlinkat(2): `name` in directory `fd` pointing at `target`.
pub fn symlinkat(target: &Path, fd: &impl AsRawFd, name: &OsStr) -> io::Result<()> {
    let (t, n) = (cstr(target)?, name_cstr(name)?);
    // SAFETY: valid C strings that outlive the call; a borrowed descriptor.
    check(unsafe { libc::symlinkat(t.as_ptr(), fd.as_raw_fd(), n.as_ptr()) })
}

/// The target of the symlink `node` holds (an O_PATH|O_NOFOLLOW descriptor
/// of the symlink itself): readlinkat with an empty path.
pub fn readlink_node(node: &impl AsRawFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: an empty C string literal; `buf` is writable for `buf.len()` bytes.
    let r = unsafe {
        libc::readlinkat(
            node.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// Opens `name` in directory `fd` as an O_PATH descriptor of the entry itself
/// (a symlink is not followed): for fstat and for naming it in /proc.
pub fn open_node(fd: &impl AsRawFd, name: &OsStr) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let n = name_cstr(name)?;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid C string that outlives the call; a borrowed descriptor.
    let r = unsafe { libc::openat(fd.as_raw_fd(), n.as_ptr(), flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(r) })
}

/// The /proc path of an open descriptor: resolving it reaches exactly the
/// inode the descriptor holds, whatever happened to its name since.
fn proc_fd(fd: &impl AsRawFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

fn is_symlink(node: &std::fs::File) -> io::Result<bool> {
    Ok(node.metadata()?.file_type().is_symlink())
}

/// chmod of `name` in directory `fd`, never through a symlink: a symlink
/// itself has no mode to change (EOPNOTSUPP, as Linux answers).
pub fn fchmodat_nofollow(fd: &impl AsRawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let n = name_cstr(name)?;
    // SAFETY: a valid C string that outlives the call; integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            n.as_ptr(),
            mode as libc::mode_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    // Before Linux 6.6: pin the entry, refuse a symlink, chmod what was pinned.
    let node = open_node(fd, name)?;
    if is_symlink(&node)? {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let p = proc_fd(&node);
    // SAFETY: a valid C string that outlives the call.
    check(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) })
}

/// fchownat(2) of `name` in directory `fd` without following a symlink;
/// None leaves that id unchanged.
pub fn fchownat_nofollow(
    fd: &impl AsRawFd,
    name: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    let n = name_cstr(name)?;
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: a valid C string that outlives the call; integer arguments
    // (-1 keeps an id).
    check(unsafe { libc::fchownat(fd.as_raw_fd(), n.as_ptr(), u, g, libc::AT_SYMLINK_NOFOLLOW) })
}

/// chmod of the object `node` holds (an O_PATH descriptor will do), with
/// fchmodat2(AT_EMPTY_PATH), or through its /proc path before Linux 6.6. A
/// symlink itself has no mode to change (EOPNOTSUPP).
pub fn chmod_node(node: &std::fs::File, mode: u32) -> io::Result<()> {
    // SAFETY: an empty C string literal; integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            node.as_raw_fd(),
            c"".as_ptr(),
            mode as libc::mode_t,
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    if is_symlink(node)? {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let p = proc_fd(node);
    // SAFETY: a valid C string that outlives the call.
    check(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) })
}

/// chown of the object `node` holds (an O_PATH descriptor will do; a
/// symlink itself): fchownat(AT_EMPTY_PATH). None leaves that id unchanged.
pub fn chown_node(node: &impl AsRawFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: an empty C string literal; integer arguments (-1 keeps an id).
    check(unsafe { libc::fchownat(node.as_raw_fd(), c"".as_ptr(), u, g, libc::AT_EMPTY_PATH) })
}

/// Opens `rel` below the directory `root` with openat2(RESOLVE_BENEATH): even
/// if a directory of the backing tree is swapped for a symlink while the mount
/// runs, the daemon never opens or creates a file outside the backing
/// directory. Falls back to openat on kernels without openat2.
pub fn open_beneath(
    root: &impl AsRawFd,
    rel: &Path,
    flags: i32,
    mode: u32,
) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let p = cstr(rel)?;
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: an all-zero open_how is valid (no flags, no mode, no resolve).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode)
    } else {
        0
    };
    // The mount never hands the daemon a path through a symlink (the kernel
    // follows symlinks of the mount itself), so a symlink anywhere on the way
    // is a swap made behind the mount's back.
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `p` is a valid C string and `how` a valid open_how of the size
    // passed; the kernel only reads them.
    let mut fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        // SAFETY: `p` is a valid C string; mode is passed as the variadic third argument.
        fd = unsafe { libc::c_long::from(libc::openat(root.as_raw_fd(), p.as_ptr(), flags, mode)) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd as RawFd) })
}

/// mknodat(2): FIFOs, sockets and (as root, if the mount allows) devices.
pub fn mknodat(fd: &impl AsRawFd, name: &OsStr, mode: u32, rdev: u32) -> io::Result<()> {
    let n = name_cstr(name)?;
    // SAFETY: `n` is a valid NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mknodat(
            fd.as_raw_fd(),
            n.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })
}

/// A time for `utimens`: unchanged, now, or a given time.
#[derive(Debug, Clone, Copy)]
pub enum Utime {
    /// Leave unchanged.
    Omit,
    /// The current time.
    Now,
    /// This time.
    At(SystemTime),
}

fn timespec(t: Utime) -> libc::timespec {
    match t {
        Utime::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Utime::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Utime::At(t) => {
            let (sec, nsec) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                Err(e) => {
                    let d = e.duration();
                    let (s, n) = (d.as_secs() as i64, i64::from(d.subsec_nanos()));
                    if n == 0 {
                        (-s, 0)
                    } else {
                        (-s - 1, 1_000_000_000 - n)
                    }
                }
            };
            libc::timespec {
                tv_sec: sec as libc::time_t,
                tv_nsec: nsec as _,
            }
        }
    }
}

/// utimensat(2) of the object `node` holds (an O_PATH descriptor will do; a
/// symlink itself), with AT_EMPTY_PATH.
pub fn utimens_node(node: &impl AsRawFd, atime: Utime, mtime: Utime) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: an empty C string literal and an array of two timespecs, both
    // live for the duration of the call.
    check(unsafe {
        libc::utimensat(
            node.as_raw_fd(),
            c"".as_ptr(),
            ts.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// lseek(2) on an open file (used for SEEK_DATA/SEEK_HOLE on the backing file).
pub fn lseek(fd: &impl AsRawFd, offset: u64, whence: i32) -> io::Result<u64> {
    let o = to_off(offset)?;
    let raw: RawFd = fd.as_raw_fd();
    // SAFETY: plain integer arguments; the fd is borrowed from a live File. SEEK_DATA
    // and SEEK_HOLE only report a position, but they do move this fd's offset, which
    // the mount never uses (all I/O is positioned).
    let r = unsafe { libc::lseek(raw, o, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// An extended-attribute call on the object `node` holds (an O_PATH
/// descriptor will do), through its /proc path: following that magic link
/// reaches exactly that inode, a symlink itself included, whatever its name
/// leads to by now (the *xattrat calls refuse O_PATH descriptors).
fn xattr_node(
    node: &impl AsRawFd,
    call: impl FnOnce(&CString) -> libc::ssize_t,
) -> io::Result<usize> {
    let r = call(&proc_fd(node));
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// getxattr of the object `node` holds; `buf` empty asks for the size.
pub fn getxattr_node(node: &impl AsRawFd, attr: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
    let a = name_cstr(attr)?;
    let (ptr, len) = (buf.as_mut_ptr(), buf.len());
    // SAFETY: valid C strings; `buf` is writable for `len` bytes.
    xattr_node(node, |p| unsafe {
        libc::getxattr(p.as_ptr(), a.as_ptr(), ptr.cast(), len)
    })
}

/// setxattr of the object `node` holds (`flags`: XATTR_CREATE, XATTR_REPLACE).
pub fn setxattr_node(
    node: &impl AsRawFd,
    attr: &OsStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let a = name_cstr(attr)?;
    // SAFETY: valid C strings; `value` is readable for its length.
    xattr_node(node, |p| unsafe {
        libc::setxattr(
            p.as_ptr(),
            a.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        ) as libc::ssize_t
    })
    .map(drop)
}

/// listxattr of the object `node` holds: NUL-separated names; `buf` empty
/// asks for the size.
pub fn listxattr_node(node: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    let (ptr, len) = (buf.as_mut_ptr(), buf.len());
    // SAFETY: a valid C string; `buf` is writable for `len` bytes.
    xattr_node(node, |p| unsafe {
        libc::listxattr(p.as_ptr(), ptr.cast(), len)
    })
}

/// removexattr of the object `node` holds.
pub fn removexattr_node(node: &impl AsRawFd, attr: &OsStr) -> io::Result<()> {
    let a = name_cstr(attr)?;
    // SAFETY: valid C strings that outlive the call.
    xattr_node(node, |p| unsafe {
        libc::removexattr(p.as_ptr(), a.as_ptr()) as libc::ssize_t
    })
    .map(drop)
}

/// What statfs reports.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    /// Total blocks (in `frsize` units).
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Preferred block size.
    pub bsize: u32,
    /// Longest name.
    pub namemax: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// fstatvfs(3) of the backing file system (through the backing root's fd).
pub fn fstatvfs(fd: &impl AsRawFd) -> io::Result<FsStats> {
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a borrowed descriptor and a writable statvfs.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut s) })?;
    Ok(FsStats {
        blocks: s.f_blocks,
        bfree: s.f_bfree,
        bavail: s.f_bavail,
        files: s.f_files,
        ffree: s.f_ffree,
        bsize: s.f_bsize as u32,
        namemax: s.f_namemax as u32,
        frsize: s.f_frsize as u32,
    })
}

/// Opens /dev/fuse for a new connection.
pub fn open_dev_fuse() -> io::Result<std::os::fd::OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    Ok(f.into())
}

/// mount(2).
pub fn mount(source: &str, target: &Path, fstype: &str, flags: u64, data: &str) -> io::Result<()> {
    let src = CString::new(source).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let tgt = cstr(target)?;
    let ty = CString::new(fstype).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let dat = CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: four valid NUL-terminated strings that outlive the call; the data
    // string is what the fuse file system type expects.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            flags as libc::c_ulong,
            dat.as_ptr().cast(),
        )
    })
}

/// umount2(2) with `flags` (0 or MNT_DETACH).
pub fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid C string that outlives the call.
    check(unsafe { libc::umount2(p.as_ptr(), flags) })
}

/// Marks the process non-dumpable: no core file (which would hold key
/// material) and no ptrace by non-root users.
pub fn forbid_core_dumps() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })
}

/// Real user and group id of this process.
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid take no arguments and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// The process's umask: from /proc/self/status, else by setting it and
/// setting it back (call while no other thread creates files).
pub fn umask() -> u32 {
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
    if let Some(m) = from_proc {
        return m;
    }
    // SAFETY: umask only swaps the process's file mode creation mask.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old as u32
    }
}

/// True when this process runs as root (the mount chowns new files to the caller).
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
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
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_sigset();
    // SAFETY: `set` is an initialised sigset; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for one of the blocked stop signals and returns its number.
pub fn wait_stop_signal() -> io::Result<i32> {
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
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Which side of a fork we are on.
#[derive(Debug)]
pub enum Forked {
    /// The original process; the child has this pid.
    Parent(u32),
    /// The new process.
    Child,
}

/// fork(2). Callers must be single-threaded (checked) so the child inherits no
/// lock held by another thread.
pub fn fork() -> io::Result<Forked> {
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
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments; fails only if already a process group leader.
    check(unsafe { libc::setsid() })
}

/// Points stdin at /dev/null and stdout/stderr at `log` (or /dev/null).
pub fn redirect_stdio(log: Option<&std::fs::File>) -> io::Result<()> {
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
pub fn redirect_stderr(log: &std::fs::File) -> io::Result<()> {
    // SAFETY: dup2 onto fd 2 from a descriptor that stays open for the call.
    check(unsafe { libc::dup2(log.as_raw_fd(), 2) })
}

/// True when a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
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
    fn utime_before_epoch_is_normalised() {
        let t = SystemTime::UNIX_EPOCH - std::time::Duration::from_millis(1500);
        let ts = timespec(Utime::At(t));
        assert_eq!(ts.tv_sec, -2);
        assert_eq!(ts.tv_nsec, 500_000_000);
    }

    #[test]
    fn open_beneath_refuses_to_leave_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let out = t.path().join("out");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("f"), b"").unwrap();
        std::fs::write(root.join("d/f"), b"in").unwrap();
        std::os::unix::fs::symlink(&out, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../out", root.join("rel")).unwrap();
        let r = std::fs::File::open(&root).unwrap();
        assert!(open_beneath(&r, Path::new("d/f"), libc::O_RDWR, 0).is_ok());
        for p in ["abs/f", "rel/f", "../out/f", "/etc/passwd"] {
            assert!(
                open_beneath(&r, Path::new(p), libc::O_RDWR, 0).is_err(),
                "{p}"
            );
        }
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        assert!(open_beneath(&r, Path::new("abs/new"), flags, 0o600).is_err());
        assert!(!out.join("new").exists());
        let f = open_beneath(&r, Path::new("d/new"), flags, 0o600).unwrap();
        assert!(f.metadata().unwrap().is_file());
    }

    #[test]
    fn umask_is_read_without_changing_it() {
        let m = umask();
        assert_eq!(m & !0o777, 0);
        assert_eq!(umask(), m);
    }

    #[test]
    fn own_process_is_alive() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }

    #[test]
    fn node_calls_act_on_the_object_held_not_on_the_name() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let f = dir.join("x");
        std::fs::write(&f, b"").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&f, dir.join("l")).unwrap();
        let d = std::fs::File::open(dir).unwrap();
        let x = open_node(&d, OsStr::new("x")).unwrap();
        let l = open_node(&d, OsStr::new("l")).unwrap();
        // The name "x" now leads to another file: calls on the node still
        // reach the one held.
        std::fs::rename(&f, dir.join("held")).unwrap();
        std::fs::write(&f, b"other").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mode = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap().mode() & 0o7777;
        chmod_node(&x, 0o604).unwrap();
        assert_eq!((mode("held"), mode("x")), (0o604, 0o600));
        let e = chmod_node(&l, 0o666).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        utimens_node(&l, Utime::Omit, Utime::At(t0)).unwrap();
        let mtime = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap().mtime();
        assert_eq!(mtime("l"), 1_000_000);
        assert_ne!(mtime("held"), 1_000_000);
        utimens_node(&x, Utime::Omit, Utime::At(t0)).unwrap();
        assert_eq!(mtime("held"), 1_000_000);
        assert_ne!(mtime("x"), 1_000_000);
        assert_eq!(readlink_node(&l).unwrap(), f.as_os_str().as_encoded_bytes());
        link_node(&x, &d, OsStr::new("x2")).unwrap();
        let ino = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap().ino();
        assert_eq!(ino("x2"), ino("held"));
        link_node(&l, &d, OsStr::new("l2")).unwrap();
        assert_eq!(ino("l2"), ino("l"));
        if is_root() {
            chown_node(&x, Some(1), None).unwrap();
            chown_node(&l, Some(2), Some(2)).unwrap();
            let owner = |p: &str| {
                let m = std::fs::symlink_metadata(dir.join(p)).unwrap();
                (m.uid(), m.gid())
            };
            assert_eq!(owner("held"), (1, 0));
            assert_eq!(owner("x"), (0, 0));
            assert_eq!(owner("l"), (2, 2));
        }
        if setxattr_node(&x, OsStr::new("user.t"), b"v", 0).is_ok() {
            let mut b = [0u8; 8];
            assert_eq!(getxattr_node(&x, OsStr::new("user.t"), &mut b).unwrap(), 1);
            assert_eq!(&b[..1], b"v");
            assert_eq!(listxattr_node(&x, &mut []).unwrap(), 7);
            let other = open_node(&d, OsStr::new("x")).unwrap();
            assert_eq!(listxattr_node(&other, &mut []).unwrap(), 0);
            removexattr_node(&x, OsStr::new("user.t")).unwrap();
            assert_eq!(listxattr_node(&x, &mut []).unwrap(), 0);
        }
        // Through the symlink's node: the symlink's own (user.* is refused
        // on symlinks), never the target's.
        assert!(setxattr_node(&l, OsStr::new("user.t"), b"v", 0).is_err());
        assert_eq!(listxattr_node(&x, &mut []).unwrap(), 0);
        // The by-name chmod still never follows a symlink.
        let e = fchmodat_nofollow(&d, OsStr::new("l"), 0o666).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    }
}
