//! The identity of this process: real and effective user and group ids.

/// Real user and group id of this process.
pub(crate) fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid take no arguments and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Effective user id of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// True when this process runs as root (the mount chowns new files to the caller).
pub(crate) fn is_root() -> bool {
    effective_uid() == 0
}

/// Effective group id of this process.
pub(crate) fn effective_gid() -> u32 {
    // SAFETY: getegid takes no arguments and cannot fail.
    unsafe { libc::getegid() }
}
