//! Dropping setuid/setgid when a caller without CAP_FSETID changes a file's
//! content (write, truncate, fallocate, open with O_TRUNC), as the kernel's
//! VFS does for ext4. The mount asks for FUSE_HANDLE_KILLPRIV_V2, which hands
//! that duty to the server (and spares a GETXATTR security.capability before
//! every write): the daemon, root and so never losing bits to the backing
//! file system, clears them itself.
//!
//! The kernel says on each write whether the caller lacks CAP_FSETID
//! (FUSE_WRITE_KILL_SUIDGID), and before a write or fallocate to a setid file
//! it sends a setattr whose only content, FATTR_KILL_SUIDGID, fuser 0.18 does
//! not show: a setattr that carries nothing else. For a truncate (an O_TRUNC
//! open is one too: the mount does not ask for ATOMIC_O_TRUNC) it says so in
//! the same flag, which fuser does not pass on, and for fallocate not at all,
//! so there the daemon asks /proc about the calling thread, and only when the
//! file has a setid bit at all.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::error::FsError;
use crate::kms::Caller;
use crate::os;

const CAP_FSETID: u32 = 4;
const CAP_SYS_ADMIN: u32 = 21;

/// Who decided that bits go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kill {
    /// The kernel: a write with FUSE_WRITE_KILL_SUIDGID (its caller lacks
    /// CAP_FSETID), or a setattr that carries nothing else, which the kernel
    /// sends when it found bits to kill (before a write or fallocate by a
    /// caller without CAP_FSETID, and for chown(-1, -1), which drops setuid
    /// even for root).
    Asked,
    /// The daemon, for a truncate, fallocate or open with O_TRUNC: only a
    /// caller without CAP_FSETID loses bits.
    IfUnprivileged,
}

/// The bits of `mode` (a regular file with group `file_gid`) that go:
/// S_ISUID; S_ISGID when the group may execute, or when the caller is
/// neither in the file's group nor privileged (Linux 6.2 and later; before,
/// a setgid file without group execute was a locking mark). Nothing when
/// `kill` is IfUnprivileged and the caller is privileged.
/// `privileged` and `in_group` are asked only when needed.
pub(super) fn bits_to_drop(
    mode: u32,
    file_gid: u32,
    kill: Kill,
    privileged: impl Fn() -> bool,
    in_group: impl FnOnce(u32) -> bool,
) -> u32 {
    if mode & (libc::S_ISUID | libc::S_ISGID) == 0 || (kill == Kill::IfUnprivileged && privileged())
    {
        return 0;
    }
    let mut drop = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0
        && (mode & libc::S_IXGRP != 0 || !(in_group(file_gid) || privileged()))
    {
        drop |= libc::S_ISGID;
    }
    drop
}

/// The caller's thread status from /proc (None once it is gone).
fn status(caller: &Caller) -> Option<String> {
    if caller.pid == 0 {
        return None;
    }
    os::process::status(caller.pid)
}

/// True when the caller holds CAP_FSETID: root whose effective
/// capabilities include it. Anything uncertain (another uid, a thread that
/// is gone, an unreadable status) counts as unprivileged: dropping the bits
/// is the safe side.
fn has_fsetid(caller: &Caller, status: Option<&str>) -> bool {
    has_cap(caller, status, CAP_FSETID)
}

/// True when the caller is root with capability `cap` effective (anything
/// uncertain: false).
fn has_cap(caller: &Caller, status: Option<&str>, cap: u32) -> bool {
    if caller.uid != 0 {
        return false;
    }
    status
        .and_then(|s| os::process::status_field(s, "CapEff"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// True when the caller holds CAP_SYS_ADMIN (who may see `trusted.*`
/// extended attributes), from /proc; anything uncertain counts as not.
pub(super) fn has_sys_admin(caller: &Caller) -> bool {
    caller.uid == 0 && has_cap(caller, status(caller).as_deref(), CAP_SYS_ADMIN)
}

/// True when `gid` is the caller's group or one of its supplementary groups.
fn in_group(caller: &Caller, status: Option<&str>, gid: u32) -> bool {
    caller.gid == gid
        || status
            .and_then(|s| os::process::status_field(s, "Groups"))
            .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

/// The mode a content change by `caller` leaves on a regular file of `mode`
/// and group `gid`, if bits go (/proc is read only for a setid file).
pub(super) fn mode_after(mode: u32, gid: u32, caller: &Caller, kill: Kill) -> Option<u32> {
    if mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
        return None;
    }
    let status = status(caller);
    let status = status.as_deref();
    let drop = bits_to_drop(
        mode,
        gid,
        kill,
        || has_fsetid(caller, status),
        |g| in_group(caller, status, g),
    );
    (drop != 0).then_some(mode & 0o7777 & !drop)
}

/// Drops the setid bits that a content change by `caller` takes from open
/// backing file `file`; true when it changed the mode (the kernel's cached
/// mode is then stale). Costs one fstat when the file has none.
pub(super) fn drop_for(file: &File, caller: &Caller, kill: Kill) -> Result<bool, FsError> {
    let m = file.metadata()?;
    if !m.is_file() {
        return Ok(false);
    }
    match mode_after(m.mode(), m.gid(), caller, kill) {
        Some(mode) => {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUID: u32 = libc::S_ISUID;
    const SGID: u32 = libc::S_ISGID;

    /// bits_to_drop for a caller with `privileged` and group membership `member`.
    fn drop(mode: u32, kill: Kill, privileged: bool, member: bool) -> u32 {
        bits_to_drop(mode, 0, kill, || privileged, |_| member)
    }

    #[test]
    fn the_rule_of_the_vfs() {
        use Kill::{Asked, IfUnprivileged};
        for kill in [Asked, IfUnprivileged] {
            // setuid always goes from an unprivileged caller's change.
            assert_eq!(drop(SUID | 0o777, kill, false, true), SUID);
            assert_eq!(drop(SUID | 0o644, kill, false, true), SUID);
            // setgid with group execute goes, member or not.
            assert_eq!(drop(SGID | 0o775, kill, false, true), SGID);
            assert_eq!(drop(SUID | SGID | 0o777, kill, false, false), SUID | SGID);
            // setgid without group execute stays for a member only.
            assert_eq!(drop(SGID | 0o765, kill, false, true), 0);
            assert_eq!(drop(SGID | 0o765, kill, false, false), SGID);
            assert_eq!(drop(0o777, kill, false, false), 0);
        }
        // A privileged caller keeps everything, unless the kernel asked
        // (chown(-1, -1)): then setuid goes, and setgid if group-executable.
        assert_eq!(drop(SUID | SGID | 0o777, IfUnprivileged, true, false), 0);
        assert_eq!(drop(SUID | SGID | 0o777, Asked, true, false), SUID | SGID);
        assert_eq!(drop(SUID | SGID | 0o767, Asked, true, false), SUID);
    }

    const STATUS: &str = "Name:\tsh\nUid:\t0\t0\t0\t0\nGroups:\t4 24 27 \nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffef\n";

    #[test]
    fn proc_status_fields() {
        let root = Caller {
            uid: 0,
            gid: 0,
            pid: 1,
            access_key: None,
        };
        // CapEff without bit 4 (0x...ef): no CAP_FSETID.
        assert!(!has_fsetid(&root, Some(STATUS)));
        let full = STATUS.replace("ffffffffef", "ffffffffff");
        assert!(has_fsetid(&root, Some(&full)));
        // Not root, or nothing known: unprivileged.
        assert!(!has_fsetid(&Caller { uid: 5, ..root }, Some(&full)));
        assert!(!has_fsetid(&root, None));
        assert!(in_group(&root, Some(STATUS), 27));
        assert!(in_group(&root, None, 0));
        assert!(!in_group(&root, Some(STATUS), 2));
    }
}
