//! Calls on the object an O_PATH descriptor holds (a symlink itself
//! included), whatever its name leads to by now: link, readlink, chmod,
//! chown, utimens.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::AsRawFd;
use std::time::SystemTime;

use super::{check, is_symlink, name_cstr, proc_fd};

/// A new name `to` in directory `tfd` for the object `node` holds (an
/// O_PATH descriptor will do; a symlink gets a new name itself): linkat of
/// its /proc path with AT_SYMLINK_FOLLOW, which reaches exactly that inode,
/// whatever its name leads to by now.
pub(crate) fn link_node(node: &impl AsRawFd, tfd: &impl AsRawFd, to: &OsStr) -> io::Result<()> {
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

/// The target of the symlink `node` holds (an O_PATH|O_NOFOLLOW descriptor
/// of the symlink itself): readlinkat with an empty path.
pub(crate) fn readlink_node(node: &impl AsRawFd) -> io::Result<Vec<u8>> {
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

/// chmod of the object `node` holds (an O_PATH descriptor will do), with
/// fchmodat2(AT_EMPTY_PATH), or through its /proc path before Linux 6.6. A
/// symlink itself has no mode to change (EOPNOTSUPP).
pub(crate) fn chmod_node(node: &std::fs::File, mode: u32) -> io::Result<()> {
    if fchmodat2(node, c"", mode, libc::AT_EMPTY_PATH)? {
        return Ok(());
    }
    if is_symlink(node)? {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let p = proc_fd(node);
    // SAFETY: a valid C string that outlives the call.
    check(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) })
}

/// fchmodat2(2) of `path` in directory `fd` with `flags`: Ok(false) on
/// kernels without it (before Linux 6.6), which must fall back.
pub(crate) fn fchmodat2(
    fd: &impl AsRawFd,
    path: &CStr,
    mode: u32,
    flags: libc::c_int,
) -> io::Result<bool> {
    // SAFETY: a valid C string that outlives the call; integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            path.as_ptr(),
            mode as libc::mode_t,
            flags,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOSYS) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// chown of the object `node` holds (an O_PATH descriptor will do; a
/// symlink itself): fchownat(AT_EMPTY_PATH). None leaves that id unchanged.
pub(crate) fn chown_node(
    node: &impl AsRawFd,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: an empty C string literal; integer arguments (-1 keeps an id).
    check(unsafe { libc::fchownat(node.as_raw_fd(), c"".as_ptr(), u, g, libc::AT_EMPTY_PATH) })
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
pub(crate) fn utimens_node(node: &impl AsRawFd, atime: Utime, mtime: Utime) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::beneath::{fchmodat_nofollow, open_node};
    use crate::os::ids::is_root;
    use crate::os::xattr::{getxattr_node, listxattr_node, removexattr_node, setxattr_node};

    #[test]
    fn utime_before_epoch_is_normalised() {
        let t = SystemTime::UNIX_EPOCH - std::time::Duration::from_millis(1500);
        let ts = timespec(Utime::At(t));
        assert_eq!(ts.tv_sec, -2);
        assert_eq!(ts.tv_nsec, 500_000_000);
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
