//! What a directory entry is (the kinds `os::at::list_dir` reports), and
//! reading a directory from a position (getdents64), for the mount's
//! listings, which hold no copy of a directory.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

/// What a directory entry is, as the directory says (no stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// Anything else, or not said by the file system.
    Other,
}

/// One entry as getdents64(2) gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEntry {
    /// Its name.
    pub(crate) name: OsString,
    /// Its inode number.
    pub(crate) ino: u64,
    /// Its type as the directory says (`libc::DT_*`; DT_UNKNOWN when the
    /// file system does not say).
    pub(crate) d_type: u8,
    /// Where the entry after it starts: the position to read on from.
    pub(crate) next: u64,
}

/// Bytes of entries read per call of `read_dir_at`.
const DIRENT_BUF: usize = 32 * 1024;

/// The entries of directory `dir` (a descriptor open for reading) from
/// position `pos` (0: the start; else a `next` an earlier call returned),
/// as many as one getdents64 call gives (`.` and `..` included); empty at
/// the end. The descriptor's position moves: callers sharing one serialise.
pub(crate) fn read_dir_at(dir: &impl AsRawFd, pos: u64) -> std::io::Result<Vec<RawEntry>> {
    let off = super::to_off(pos)?;
    // SAFETY: lseek on a borrowed live descriptor; integer arguments.
    if unsafe { libc::lseek(dir.as_raw_fd(), off, libc::SEEK_SET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; DIRENT_BUF];
    // SAFETY: `buf` is writable for `buf.len()` bytes; the descriptor is live.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(parse_dirents(&buf[..n as usize]))
}

/// Parses linux_dirent64 records: d_ino (8 bytes), d_off (8), d_reclen (2),
/// d_type (1), the name up to a NUL. A record that does not fit ends it.
fn parse_dirents(mut b: &[u8]) -> Vec<RawEntry> {
    let mut out = Vec::new();
    while b.len() >= 19 {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_ne_bytes(w)
        };
        let reclen = usize::from(u16::from_ne_bytes([b[16], b[17]]));
        if reclen < 19 || reclen > b.len() {
            break;
        }
        let name = &b[19..reclen];
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        out.push(RawEntry {
            name: OsStr::from_bytes(name).to_os_string(),
            ino: word(0),
            d_type: b[18],
            next: word(8),
        });
        b = &b[reclen..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_read_in_pieces_from_its_positions_is_the_whole_directory() {
        let t = tempfile::tempdir().unwrap();
        let mut want: Vec<String> = (0..3000).map(|i| format!("{i:0>200}")).collect();
        for n in &want {
            std::fs::write(t.path().join(n), b"").unwrap();
        }
        let dir = std::fs::File::open(t.path()).unwrap();
        let (mut got, mut pos, mut calls) = (Vec::new(), 0, 0);
        loop {
            let batch = read_dir_at(&dir, pos).unwrap();
            let Some(last) = batch.last() else { break };
            pos = last.next;
            calls += 1;
            got.extend(batch.into_iter().map(|e| e.name.into_string().unwrap()));
        }
        assert!(calls > 1, "3000 long names fit one call");
        // Read again from a position in the middle: the same rest.
        let all = read_dir_at(&dir, 0).unwrap();
        let rest = read_dir_at(&dir, all[5].next).unwrap();
        assert_eq!(rest[0].name, all[6].name);
        got.retain(|n| n != "." && n != "..");
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}
