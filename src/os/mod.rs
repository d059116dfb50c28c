//! Every system call that needs `unsafe`, and the reads of /proc that go
//! with them: the rest of the crate denies unsafe code and calls these
//! wrappers. Each `unsafe` block
//! carries a `// SAFETY:` comment saying why it holds.
// The path-based calls clippy.toml keeps out of the rest of the crate live here.
#![allow(clippy::disallowed_methods)]

pub(crate) mod at;
pub(crate) mod beneath;
pub(crate) mod dir;
pub(crate) mod ids;
pub(crate) mod mount;
pub(crate) mod net;
pub(crate) mod node;
pub(crate) mod process;
pub(crate) mod space;
pub(crate) mod uring;
pub(crate) mod xattr;

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A path as a C string; a path with an interior NUL is refused with EINVAL.
pub(crate) fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A file name as a C string; a name with an interior NUL is refused with EINVAL.
pub(crate) fn name_cstr(n: &OsStr) -> io::Result<CString> {
    CString::new(n.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A C return code as a Result: negative means errno.
pub(crate) fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The /proc path of an open descriptor: resolving it reaches exactly the
/// inode the descriptor holds, whatever happened to its name since.
pub(crate) fn proc_fd(fd: &impl AsRawFd) -> CString {
    use std::os::unix::ffi::OsStringExt;
    CString::new(proc_fd_path(fd).into_os_string().into_vec()).expect("no NUL in a number")
}

/// `proc_fd` as a path, for std's calls (listing a directory descriptor).
pub(crate) fn proc_fd_path(fd: &impl AsRawFd) -> std::path::PathBuf {
    format!("/proc/self/fd/{}", fd.as_raw_fd()).into()
}

/// True when the O_PATH node `node` holds is a symlink itself.
pub(crate) fn is_symlink(node: &std::fs::File) -> io::Result<bool> {
    Ok(node.metadata()?.file_type().is_symlink())
}

/// A file offset or length as off_t; too big is EFBIG.
pub(crate) fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// An empty relative path as ".", which is what the *at calls and opens
/// need for "this directory".
pub(crate) fn or_dot(p: &Path) -> &Path {
    if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    }
}
