//! The mount's own count of the FUSE requests it served, by opcode: one
//! relaxed atomic add per request, so that a benchmark can say how many
//! round trips a workload cost without kernel tracing. Read on the mount's
//! root as the xattr `REQUESTS_XATTR`, by root only (the kernel lets only
//! CAP_SYS_ADMIN read `trusted.*`, and the daemon checks the caller's uid
//! too). Requests fuser answers by itself (INIT, INTERRUPT, operations kmsfs
//! does not implement) are not counted.

use std::sync::atomic::{AtomicU64, Ordering};

use super::error::FsError;
use super::xattr::{XattrValue, answer};

/// The xattr of the mount's root that reports the counts: one line per
/// opcode served at least once, `name count`, in opcode order.
pub(super) const REQUESTS_XATTR: &str = "trusted.kmsfs.requests";

macro_rules! ops {
    ($($op:ident => $name:literal),* $(,)?) => {
        /// A request the adapter serves.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(super) enum Op { $($op),* }
        const NAMES: &[&str] = &[$($name),*];
    };
}

ops!(
    Lookup => "lookup", Forget => "forget", Getattr => "getattr", Setattr => "setattr",
    Readlink => "readlink", Mknod => "mknod", Mkdir => "mkdir", Unlink => "unlink",
    Rmdir => "rmdir", Symlink => "symlink", Rename => "rename", Link => "link",
    Open => "open", Read => "read", Write => "write", Flush => "flush",
    Release => "release", Fsync => "fsync", Opendir => "opendir", Readdir => "readdir",
    Readdirplus => "readdirplus", Releasedir => "releasedir", Fsyncdir => "fsyncdir",
    Statfs => "statfs", Setxattr => "setxattr", Getxattr => "getxattr",
    Listxattr => "listxattr", Removexattr => "removexattr", Access => "access",
    Create => "create", Fallocate => "fallocate", CopyFileRange => "copy_file_range",
    Lseek => "lseek",
);

static COUNTS: [AtomicU64; NAMES.len()] = [const { AtomicU64::new(0) }; NAMES.len()];

impl Op {
    /// The opcode's name, as logged.
    pub(super) fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    /// Counts one request of this opcode.
    pub(super) fn count(self) {
        COUNTS[self as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Gauges and counters of the mount's life, for `kmsfs status` and the
/// stop message: process-global, as one process serves one mount.
static OPEN_HANDLES: AtomicU64 = AtomicU64::new(0);
static KEY_CACHE_HITS: AtomicU64 = AtomicU64::new(0);
static KEY_CACHE_MISSES: AtomicU64 = AtomicU64::new(0);
static IO_ERRORS: AtomicU64 = AtomicU64::new(0);

/// What the mount has done so far (see `counters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// File handles open now.
    pub open_files: u64,
    /// Data keys found in the cache.
    pub key_cache_hits: u64,
    /// Data keys that had to be asked of the key service.
    pub key_cache_misses: u64,
    /// Requests answered EIO (corruption, backing I/O errors).
    pub io_errors: u64,
}

/// The mount's counters now.
pub fn counters() -> Counters {
    Counters {
        open_files: OPEN_HANDLES.load(Ordering::Relaxed),
        key_cache_hits: KEY_CACHE_HITS.load(Ordering::Relaxed),
        key_cache_misses: KEY_CACHE_MISSES.load(Ordering::Relaxed),
        io_errors: IO_ERRORS.load(Ordering::Relaxed),
    }
}

/// A file handle was opened (`true`) or released.
pub(super) fn handle(opened: bool) {
    if opened {
        OPEN_HANDLES.fetch_add(1, Ordering::Relaxed);
    } else {
        let _ = OPEN_HANDLES.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
    }
}

/// Every handle was closed (unmount).
pub(super) fn no_handles() {
    OPEN_HANDLES.store(0, Ordering::Relaxed);
}

/// A data-key lookup hit (`true`) or missed the cache.
pub(super) fn key_cache(hit: bool) {
    let c = if hit {
        &KEY_CACHE_HITS
    } else {
        &KEY_CACHE_MISSES
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// A request was answered EIO.
pub(super) fn io_error() {
    IO_ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// The number of requests served so far, all opcodes together.
pub fn requests_served() -> u64 {
    COUNTS.iter().map(|n| n.load(Ordering::Relaxed)).sum()
}

/// The counts so far, `name count` per line, opcodes never served left out.
pub(super) fn report() -> String {
    let mut out = String::new();
    for (name, n) in NAMES.iter().zip(&COUNTS) {
        let n = n.load(Ordering::Relaxed);
        if n > 0 {
            out.push_str(&format!("{name} {n}\n"));
        }
    }
    out
}

/// The getxattr answer for `REQUESTS_XATTR` to a caller of `uid`: the
/// report, or ENODATA (as for any name kmsfs reserves) to anyone but root.
pub(super) fn requests_xattr(uid: u32, size: u32) -> Result<XattrValue, FsError> {
    if uid != 0 {
        return Err(FsError::NoAttribute);
    }
    let r = report().into_bytes();
    answer(r.len(), size, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_of(name: &str) -> u64 {
        report()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn counts_are_reported_by_name_and_only_to_root() {
        let before = count_of("copy_file_range");
        Op::CopyFileRange.count();
        Op::CopyFileRange.count();
        // Other tests count too, concurrently: at least our two.
        assert!(count_of("copy_file_range") >= before + 2);
        assert_eq!(Op::CopyFileRange.name(), "copy_file_range");
        assert_eq!(NAMES.len(), Op::Lseek as usize + 1);
        match requests_xattr(0, 4096) {
            Ok(XattrValue::Data(d)) => {
                assert!(String::from_utf8_lossy(&d).contains("copy_file_range "))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(requests_xattr(0, 0), Ok(XattrValue::Size(n)) if n > 0));
        assert!(matches!(
            requests_xattr(1000, 4096),
            Err(FsError::NoAttribute)
        ));
    }
}
