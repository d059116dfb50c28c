//! Listing a directory through a descriptor kmsfs opened itself, so that a
//! look at a tree can be made with O_NOATIME (no trace left in it).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

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

/// The entries of directory `path` (without `.` and `..`), never through a
/// symbolic link, read without changing the directory's access time where
/// the caller may ask for that (its owner, or root).
pub(crate) fn list_noatime(path: &Path) -> std::io::Result<Vec<(OsString, EntryKind)>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = match Dir::open(path, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(nix::errno::Errno::EPERM) => Dir::open(path, flags, Mode::empty()),
        r => r,
    }
    .map_err(std::io::Error::from)?;
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e.map_err(std::io::Error::from)?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let kind = match e.file_type() {
            Some(Type::Directory) => EntryKind::Dir,
            Some(Type::File) => EntryKind::File,
            Some(Type::Symlink) => EntryKind::Symlink,
            Some(_) => EntryKind::Other,
            // The file system does not say (DT_UNKNOWN): ask lstat.
            None => match path.join(name).symlink_metadata().map(|m| m.file_type()) {
                Ok(t) if t.is_dir() => EntryKind::Dir,
                Ok(t) if t.is_file() => EntryKind::File,
                Ok(t) if t.is_symlink() => EntryKind::Symlink,
                _ => EntryKind::Other,
            },
        };
        out.push((name.to_os_string(), kind));
    }
    Ok(out)
}
