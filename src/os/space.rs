//! Space of open files and of the backing file system: fallocate (reserve,
//! punch holes), lseek SEEK_DATA/SEEK_HOLE, fstatvfs, syncfs.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::{check, to_off};

/// fallocate(2) on an open file: `mode` is 0 or FALLOC_FL_* flags.
pub(crate) fn fallocate(file: &impl AsRawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (off, len) = (to_off(offset)?, to_off(len)?);
    // SAFETY: integer arguments only; the descriptor is borrowed from a file
    // that outlives the call.
    check(unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) })
}

/// syncfs(2): makes everything written to the file system that holds
/// `fd` durable (one journal commit for a whole batch of files).
pub(crate) fn syncfs(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: an integer argument only; the descriptor is borrowed from a
    // live file.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })
}

/// lseek(2) on an open file (used for SEEK_DATA/SEEK_HOLE on the backing file).
pub(crate) fn lseek(fd: &impl AsRawFd, offset: u64, whence: i32) -> io::Result<u64> {
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
pub(crate) fn fstatvfs(fd: &impl AsRawFd) -> io::Result<FsStats> {
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
