//! Names inside the backing directory: openat2(RESOLVE_BENEATH) and the
//! *at calls that create, rename, remove and change entries by name in a
//! directory descriptor, never following a symlink.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use super::node::{chmod_node, fchmodat2};
use super::{check, cstr, name_cstr};

/// renameat2(2) of `from` in directory `fd` to `to` in directory `tfd`, with
/// `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE).
pub(crate) fn renameat2(
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

/// unlinkat(2): a file, or with `dir` an empty directory, in directory `fd`.
pub(crate) fn unlinkat(fd: &impl AsRawFd, name: &OsStr, dir: bool) -> io::Result<()> {
    let n = name_cstr(name)?;
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: a valid C string that outlives the call; a borrowed descriptor.
    check(unsafe { libc::unlinkat(fd.as_raw_fd(), n.as_ptr(), flags) })
}

/// mkdirat(2).
pub(crate) fn mkdirat(fd: &impl AsRawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let n = name_cstr(name)?;
    // SAFETY: a valid C string that outlives the call; a borrowed descriptor.
    check(unsafe { libc::mkdirat(fd.as_raw_fd(), n.as_ptr(), mode as libc::mode_t) })
}

/// symlinkat(2): `name` in directory `fd` pointing at `target`.
pub(crate) fn symlinkat(target: &Path, fd: &impl AsRawFd, name: &OsStr) -> io::Result<()> {
    let (t, n) = (cstr(target)?, name_cstr(name)?);
    // SAFETY: valid C strings that outlive the call; a borrowed descriptor.
    check(unsafe { libc::symlinkat(t.as_ptr(), fd.as_raw_fd(), n.as_ptr()) })
}

/// Opens `name` in directory `fd` as an O_PATH descriptor of the entry itself
/// (a symlink is not followed): for fstat and for naming it in /proc.
pub(crate) fn open_node(fd: &impl AsRawFd, name: &OsStr) -> io::Result<std::fs::File> {
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

/// chmod of `name` in directory `fd`, never through a symlink: a symlink
/// itself has no mode to change (EOPNOTSUPP, as Linux answers).
pub(crate) fn fchmodat_nofollow(fd: &impl AsRawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let n = name_cstr(name)?;
    if fchmodat2(fd, &n, mode, libc::AT_SYMLINK_NOFOLLOW)? {
        return Ok(());
    }
    // Before Linux 6.6: pin the entry and chmod what was pinned (a symlink
    // is refused there).
    chmod_node(&open_node(fd, name)?, mode)
}

/// fchownat(2) of `name` in directory `fd` without following a symlink;
/// None leaves that id unchanged.
pub(crate) fn fchownat_nofollow(
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

/// Opens `rel` below the directory `root` with openat2(RESOLVE_BENEATH): even
/// if a directory of the backing tree is swapped for a symlink while the mount
/// runs, the daemon never opens or creates a file outside the backing
/// directory. Falls back to openat on kernels without openat2.
pub(crate) fn open_beneath(
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

/// `open_beneath` for a `rel` of any length: a path longer than the
/// kernel takes in one call (PATH_MAX; encrypted names make backing paths
/// longer than the mount's) is walked a part at a time, each part opened as
/// an O_PATH directory beneath the one before, with the same rules.
pub(crate) fn open_beneath_deep(
    root: &std::fs::File,
    rel: &Path,
    flags: i32,
    mode: u32,
) -> io::Result<std::fs::File> {
    use std::os::unix::ffi::OsStrExt;
    const PART_MAX: usize = 3072;
    if rel.as_os_str().len() < PART_MAX {
        return open_beneath(root, rel, flags, mode);
    }
    let mut dir: Option<std::fs::File> = None;
    let mut part = std::path::PathBuf::new();
    let mut comps = rel.components().peekable();
    while let Some(c) = comps.next() {
        let c = c.as_os_str();
        let last = comps.peek().is_none();
        if !part.as_os_str().is_empty() && part.as_os_str().len() + 1 + c.len() >= PART_MAX {
            let d = open_beneath(
                dir.as_ref().unwrap_or(root),
                &part,
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )?;
            dir = Some(d);
            part = std::path::PathBuf::new();
        }
        if c.as_bytes().contains(&b'/') {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        part.push(c);
        if last {
            break;
        }
    }
    open_beneath(dir.as_ref().unwrap_or(root), &part, flags, mode)
}

/// Opens again, with `flags`, the object that the O_PATH descriptor `node`
/// holds, through its /proc path: exactly that inode, whatever its name
/// leads to by now, so the caller can check the object (fstat, type) before
/// opening it for I/O. Opened with O_NONBLOCK, so that the open itself never
/// waits on what another user controls (a lease the file's owner holds
/// answers EWOULDBLOCK instead of waiting out lease-break-time); the flag is
/// taken off again once the descriptor exists.
pub(crate) fn reopen(node: &impl AsRawFd, flags: i32) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let p = super::proc_fd(node);
    let flags = (flags & !(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CREAT))
        | libc::O_CLOEXEC
        | libc::O_NONBLOCK;
    // SAFETY: `p` is a valid C string that outlives the call; no O_CREAT, so
    // no mode argument is read.
    let fd = unsafe { libc::openat(libc::AT_FDCWD, p.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    // SAFETY: fcntl on a descriptor we own, integer arguments only.
    let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    check(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) })?;
    Ok(file)
}

/// Whole-file open-file-description lock (fcntl F_OFD_SETLK, never
/// waiting): a read lock (`write` false) or a write lock. Ok(false) when a
/// conflicting lock is held. Unlike flock, a read lock needs no more than a
/// readable descriptor and conflicts only with write locks, which need a
/// descriptor open for writing: a user who may only read a file cannot keep
/// its read locks from others. These locks and flock(2) do not see each other.
pub(crate) fn try_ofd_lock(file: &impl AsRawFd, write: bool) -> io::Result<bool> {
    // SAFETY: an all-zero flock is a valid value (whole file from offset 0,
    // pid 0 as F_OFD_SETLK requires).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: a borrowed live descriptor and a valid flock the kernel reads.
    let r = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_OFD_SETLK,
            &fl as *const libc::flock,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// mknodat(2): FIFOs, sockets and (as root, if the mount allows) devices.
pub(crate) fn mknodat(fd: &impl AsRawFd, name: &OsStr, mode: u32, rdev: u32) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
