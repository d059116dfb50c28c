//! Mounting a FUSE file system: /dev/fuse, mount(2), umount2(2).

use std::ffi::CString;
use std::io;
use std::path::Path;

use super::{check, cstr};

/// Opens /dev/fuse for a new connection.
pub(crate) fn open_dev_fuse() -> io::Result<std::os::fd::OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    Ok(f.into())
}

/// mount(2).
pub(crate) fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: u64,
    data: &str,
) -> io::Result<()> {
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
pub(crate) fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid C string that outlives the call.
    check(unsafe { libc::umount2(p.as_ptr(), flags) })
}
