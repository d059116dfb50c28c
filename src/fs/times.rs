//! The change time the kernel keeps for a regular file under the writeback
//! cache, stored beside the backing file (the xattr `user.kmsfs.times`) and
//! shown again once the kernel has forgotten the inode (a remount, an
//! eviction).
//!
//! With FUSE_WRITEBACK_CACHE the kernel owns a regular file's mtime and
//! ctime while it holds the inode: it sets them at write(2), chmod, rename,
//! and hands them back with SETATTR (FATTR_MTIME and FATTR_CTIME) when it
//! writes the inode back. The mtime is set on the backing file; no program
//! can set a ctime, so the kernel's is kept here, with the backing file's
//! mtime at the moment it was stored. The record is shown only while the
//! backing file still has that mtime: a write made since (through the
//! mount and not yet handed back, or beside the mount) gives the mtime
//! away, and the backing file's own times are shown.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::attr::{Attr, Kind, time};
use super::error::FsError;
use crate::os;

/// The xattr that holds the record. Under the reserved `user.kmsfs.`
/// prefix: hidden through the mount and refused to set there. A `user.`
/// name, so a daemon run by a user may keep it on the user's own files.
pub(super) const TIMES_XATTR: &str = "user.kmsfs.times";

/// Bytes of a record: the backing mtime (seconds i64, nanoseconds u32) and
/// the kernel's ctime, little-endian.
const RECORD_LEN: usize = 24;

fn split(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    }
}

fn encode(mtime: (i64, u32), ctime: (i64, u32)) -> [u8; RECORD_LEN] {
    let mut b = [0u8; RECORD_LEN];
    b[0..8].copy_from_slice(&mtime.0.to_le_bytes());
    b[8..12].copy_from_slice(&mtime.1.to_le_bytes());
    b[12..20].copy_from_slice(&ctime.0.to_le_bytes());
    b[20..24].copy_from_slice(&ctime.1.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<((i64, u32), (i64, u32))> {
    if b.len() != RECORD_LEN {
        return None;
    }
    let i64_at = |i: usize| b.get(i..i + 8)?.try_into().ok().map(i64::from_le_bytes);
    let u32_at = |i: usize| b.get(i..i + 4)?.try_into().ok().map(u32::from_le_bytes);
    let (mn, cn) = (u32_at(8)?, u32_at(20)?);
    if mn >= 1_000_000_000 || cn >= 1_000_000_000 {
        return None;
    }
    Some(((i64_at(0)?, mn), (i64_at(12)?, cn)))
}

fn mtime_of(m: &Metadata) -> (i64, u32) {
    (m.mtime(), m.mtime_nsec().clamp(0, 999_999_999) as u32)
}

/// The ctime stored for the regular file `node` (with metadata `m`), when
/// the record is still the file's: its mtime is the backing file's. A file
/// whose mtime is its ctime was last changed by a write or created, after
/// any record (which is stored after the mtime is set): not read.
pub(super) fn stored_ctime(node: &File, m: &Metadata) -> Option<SystemTime> {
    if !m.file_type().is_file() || (m.mtime(), m.mtime_nsec()) == (m.ctime(), m.ctime_nsec()) {
        return None;
    }
    let mut buf = [0u8; RECORD_LEN + 1];
    let n = os::xattr::getxattr_node(node, OsStr::new(TIMES_XATTR), &mut buf).ok()?;
    let (mtime, ctime) = decode(buf.get(..n)?)?;
    (mtime == mtime_of(m)).then(|| time(ctime.0, i64::from(ctime.1)))
}

/// `a` with the ctime stored for it, if any (`stored_ctime`).
pub(super) fn shown(mut a: Attr, node: &File, m: &Metadata) -> Attr {
    if a.kind == Kind::RegularFile
        && let Some(c) = stored_ctime(node, m)
    {
        a.ctime = c;
    }
    a
}

/// Stores `ctime`, the kernel's, for the regular file `node`, whose
/// metadata after the change is `m`. Failing (a backing file system
/// without user xattrs, a file the daemon may not write) only logs: the
/// backing file's ctime is shown after a remount, as before.
pub(super) fn store(node: &File, m: &Metadata, ctime: SystemTime) {
    if !m.file_type().is_file() {
        return;
    }
    let rec = encode(mtime_of(m), split(ctime));
    if let Err(e) = os::xattr::setxattr_node(node, OsStr::new(TIMES_XATTR), &rec, 0) {
        log::debug!("keeping the kernel's ctime beside a file: {e}");
    }
}

/// Runs `body`, a write to the regular file `node` that the kernel's
/// writeback sends, and leaves the times the mount shows as they were: the
/// kernel owns them and hands them back by SETATTR when they changed, and
/// only then (it may find the write's time equal to the one it has, and
/// send nothing). So the backing file's mtime is set back, and its ctime,
/// moved by the write, is kept as it was shown: the stored one, or else the
/// backing file's own from before the write.
pub(super) fn keeping<T>(
    node: &File,
    body: impl FnOnce() -> Result<T, FsError>,
) -> Result<T, FsError> {
    let before = node.metadata()?;
    let shown_ctime =
        stored_ctime(node, &before).unwrap_or(time(before.ctime(), before.ctime_nsec()));
    let r = body()?;
    let after = node.metadata()?;
    if mtime_of(&after) != mtime_of(&before) {
        let mtime = time(before.mtime(), before.mtime_nsec());
        os::node::utimens_node(node, os::node::Utime::Omit, os::node::Utime::At(mtime))?;
        store(node, &node.metadata()?, shown_ctime);
    }
    Ok(r)
}

/// Drops a record that a change without the kernel's ctime (the writeback
/// cache off) would leave standing for a file whose mtime it kept.
pub(super) fn drop_record(node: &File, m: &Metadata) {
    if m.file_type().is_file() && (m.mtime(), m.mtime_nsec()) != (m.ctime(), m.ctime_nsec()) {
        match os::xattr::removexattr_node(node, OsStr::new(TIMES_XATTR)) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => {
                log::debug!("dropping a stored ctime: {e}")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn records_round_trip_and_bad_ones_are_ignored() {
        let m = (1_700_000_000, 5);
        let c = split(UNIX_EPOCH + Duration::new(1_700_000_001, 999_999_999));
        assert_eq!(
            decode(&encode(m, c)),
            Some((m, (1_700_000_001, 999_999_999)))
        );
        assert_eq!(
            split(UNIX_EPOCH - Duration::from_millis(1500)),
            (-2, 500_000_000)
        );
        assert_eq!(decode(&encode(m, c)[..23]), None);
        let mut bad = encode(m, c);
        bad[20..24].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert_eq!(decode(&bad), None);
    }

    #[test]
    fn a_record_is_shown_only_while_the_file_keeps_its_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let f = File::open(&p).unwrap();
        // The kernel hands back an mtime in the past and its own ctime.
        let mtime = UNIX_EPOCH + Duration::new(1_600_000_000, 7);
        os::node::utimens_node(&f, os::node::Utime::Omit, os::node::Utime::At(mtime)).unwrap();
        let kernel_ctime = UNIX_EPOCH + Duration::new(1_600_000_100, 9);
        let m = f.metadata().unwrap();
        store(&f, &m, kernel_ctime);
        if os::xattr::getxattr_node(&f, OsStr::new(TIMES_XATTR), &mut []).is_err() {
            eprintln!("SKIPPED: no user xattrs on the temporary directory's file system");
            return;
        }
        let m = f.metadata().unwrap();
        assert_eq!(stored_ctime(&f, &m), Some(kernel_ctime));
        // A write beside the mount moves the mtime: the record is not the file's.
        std::fs::write(&p, b"changed").unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(stored_ctime(&f, &m), None);
        // A record stored for the file as it is now is shown, until dropped.
        store(&f, &m, kernel_ctime);
        let m = f.metadata().unwrap();
        assert_eq!(stored_ctime(&f, &m), Some(kernel_ctime));
        drop_record(&f, &m);
        assert_eq!(stored_ctime(&f, &f.metadata().unwrap()), None);
    }
}
