//! `kmsfs set-key` and `get-key` on a directory inside a running mount:
//! they ask the mount through the directory's xattr `DIR_KEY_XATTR`, so the
//! daemon hears who asks from the kernel (the caller's uid, gid and pid)
//! and decides (fs/dirkeys.rs); nothing here decides anything.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::fs::DIR_KEY_XATTR;
use crate::os;

/// Longest answer read.
const ANSWER_MAX: usize = 4096;

#[allow(clippy::disallowed_methods)] // a directory the user named inside a mount: the daemon checks who asks and what it is
fn open_dir(dir: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
}

/// Sets the key of `dir` (a directory in a kmsfs mount) to `key_id`, or
/// (None) clears it so that the parent's key applies again.
pub fn set_dir_key(dir: &Path, key_id: Option<&str>) -> std::io::Result<()> {
    let d = open_dir(dir)?;
    let name = OsStr::new(DIR_KEY_XATTR);
    match key_id {
        Some(k) => os::xattr::setxattr_node(&d, name, k.as_bytes(), 0),
        None => os::xattr::removexattr_node(&d, name),
    }
}

/// Where the key of `dir` comes from, as the mount answers (JSON:
/// `KeyId`, `Source`, `From`).
pub fn get_dir_key(dir: &Path) -> std::io::Result<serde_json::Value> {
    let d = open_dir(dir)?;
    let mut buf = vec![0u8; ANSWER_MAX];
    let n = os::xattr::getxattr_node(&d, OsStr::new(DIR_KEY_XATTR), &mut buf)?;
    serde_json::from_slice(&buf[..n])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
