//! Extended-attribute system calls on the object an O_PATH descriptor holds.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use super::{name_cstr, proc_fd};

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
pub(crate) fn getxattr_node(
    node: &impl AsRawFd,
    attr: &OsStr,
    buf: &mut [u8],
) -> io::Result<usize> {
    let a = name_cstr(attr)?;
    let (ptr, len) = (buf.as_mut_ptr(), buf.len());
    // SAFETY: valid C strings; `buf` is writable for `len` bytes.
    xattr_node(node, |p| unsafe {
        libc::getxattr(p.as_ptr(), a.as_ptr(), ptr.cast(), len)
    })
}

/// setxattr of the object `node` holds (`flags`: XATTR_CREATE, XATTR_REPLACE).
pub(crate) fn setxattr_node(
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
pub(crate) fn listxattr_node(node: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    let (ptr, len) = (buf.as_mut_ptr(), buf.len());
    // SAFETY: a valid C string; `buf` is writable for `len` bytes.
    xattr_node(node, |p| unsafe {
        libc::listxattr(p.as_ptr(), ptr.cast(), len)
    })
}

/// removexattr of the object `node` holds.
pub(crate) fn removexattr_node(node: &impl AsRawFd, attr: &OsStr) -> io::Result<()> {
    let a = name_cstr(attr)?;
    // SAFETY: valid C strings that outlive the call.
    xattr_node(node, |p| unsafe {
        libc::removexattr(p.as_ptr(), a.as_ptr()) as libc::ssize_t
    })
    .map(drop)
}

/// Copies every extended attribute of the object `from` holds onto the one
/// `to` holds (O_PATH descriptors will do: a symlink re-made elsewhere
/// keeps its trusted.* and security.* names).
pub(crate) fn copy_xattrs(from: &impl AsRawFd, to: &impl AsRawFd) -> io::Result<()> {
    let n = listxattr_node(from, &mut [])?;
    if n == 0 {
        return Ok(());
    }
    let mut list = vec![0u8; n];
    let n = listxattr_node(from, &mut list)?;
    list.truncate(n);
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let len = getxattr_node(from, name, &mut [])?;
        let mut value = vec![0u8; len];
        let len = getxattr_node(from, name, &mut value)?;
        value.truncate(len);
        setxattr_node(to, name, &value, 0)?;
    }
    Ok(())
}
