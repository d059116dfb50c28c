//! Whole trees through descriptors, for the tools root runs over trees that
//! users can write (import, export, rewrap, fsck, inspect): every name is
//! resolved beneath a directory descriptor, never through a symbolic link
//! and never across a mount, and entries are made and linked by the *at
//! calls in the directory descriptor that holds them.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::dir::{Dir, Type};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::dir::EntryKind;
use super::{check, cstr, name_cstr};

/// Opens `rel` below the directory `root` with openat2: RESOLVE_BENEATH (no
/// `..` above `root`, no absolute path), RESOLVE_NO_SYMLINKS (a symbolic
/// link anywhere on the way is refused with ELOOP, the last component too)
/// and RESOLVE_NO_XDEV (no crossing into another mount). An empty `rel` is
/// `root` itself. On a kernel without openat2 the same rules hold by a walk
/// of one component at a time (openat with O_NOFOLLOW, `..` refused), where
/// a mount crossing is not detected.
pub(crate) fn open_strictly_beneath(
    root: &impl AsRawFd,
    rel: &Path,
    flags: i32,
    mode: u32,
) -> io::Result<File> {
    openat2_resolving(root, rel, flags, mode, libc::RESOLVE_NO_XDEV)
}

/// `open_strictly_beneath` that may cross into other mounts: for a path
/// recorded resolved, opened from "/" through no symbolic link.
pub(crate) fn open_without_links(
    root: &impl AsRawFd,
    rel: &Path,
    flags: i32,
    mode: u32,
) -> io::Result<File> {
    openat2_resolving(root, rel, flags, mode, 0)
}

/// openat2 with RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, RESOLVE_NO_MAGICLINKS
/// and `extra`; the walk of `walk_components` without openat2.
fn openat2_resolving(
    root: &impl AsRawFd,
    rel: &Path,
    flags: i32,
    mode: u32,
    extra: u64,
) -> io::Result<File> {
    let rel = super::or_dot(rel);
    let p = cstr(rel)?;
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: an all-zero open_how is valid (no flags, no mode, no resolve).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve =
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS | extra;
    // A rename elsewhere on the file system while `..` was resolved makes
    // the kernel answer EAGAIN rather than risk an escape: try again.
    for _ in 0..16 {
        // SAFETY: `p` is a valid C string and `how` a valid open_how of the
        // size passed; the kernel only reads them.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                p.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
            return Ok(unsafe { File::from_raw_fd(fd as RawFd) });
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            e if e.raw_os_error() == Some(libc::ENOSYS) => {
                return walk_components(root, rel, flags, mode);
            }
            e => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// `open_strictly_beneath` without openat2: one component at a time.
fn walk_components(root: &impl AsRawFd, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
    let flags = flags | libc::O_NOFOLLOW;
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::CurDir => {}
            _ => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
        }
    }
    let Some(last) = names.pop() else {
        return openat(root, OsStr::new("."), flags, mode);
    };
    let dir_flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut dir: Option<File> = None;
    for n in names {
        let next = match &dir {
            Some(d) => openat(d, n, dir_flags, 0)?,
            None => openat(root, n, dir_flags, 0)?,
        };
        dir = Some(next);
    }
    match &dir {
        Some(d) => openat(d, last, flags, mode),
        None => openat(root, last, flags, mode),
    }
}

/// openat(2) of one name in directory `fd`.
fn openat(fd: &impl AsRawFd, name: &OsStr, flags: i32, mode: u32) -> io::Result<File> {
    let n = name_cstr(name)?;
    // SAFETY: a valid C string that outlives the call; a borrowed descriptor;
    // the mode is passed as the variadic third argument.
    let r = unsafe { libc::openat(fd.as_raw_fd(), n.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(r) })
}

/// The entries (without `.` and `..`) of the directory `dir` holds, read
/// through a descriptor of its own (so `dir`'s offset is untouched) and,
/// where the caller may ask for that (owner or root), without changing the
/// directory's access time. An entry whose type the file system does not
/// say is looked at (without following it).
pub(crate) fn list_dir(dir: &File) -> io::Result<Vec<(OsString, EntryKind)>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = dir.as_fd();
    let mut d = match Dir::openat(fd, ".", flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(nix::errno::Errno::EPERM) => Dir::openat(fd, ".", flags, Mode::empty()),
        r => r,
    }
    .map_err(io::Error::from)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(io::Error::from)?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let kind = match e.file_type() {
            Some(Type::Directory) => EntryKind::Dir,
            Some(Type::File) => EntryKind::File,
            Some(Type::Symlink) => EntryKind::Symlink,
            Some(_) => EntryKind::Other,
            // The file system does not say (DT_UNKNOWN): fstat the entry.
            None => match super::beneath::open_node(dir, name).and_then(|n| n.metadata()) {
                Ok(m) if m.is_dir() => EntryKind::Dir,
                Ok(m) if m.is_file() => EntryKind::File,
                Ok(m) if m.file_type().is_symlink() => EntryKind::Symlink,
                _ => EntryKind::Other,
            },
        };
        out.push((name.to_os_string(), kind));
    }
    Ok(out)
}

/// linkat(2) of `from` in directory `fd` as `to` in directory `tfd`, never
/// following a symbolic link (a link gets a new name itself) and never
/// replacing an existing name (EEXIST).
pub(crate) fn linkat(
    fd: &impl AsRawFd,
    from: &OsStr,
    tfd: &impl AsRawFd,
    to: &OsStr,
) -> io::Result<()> {
    let (f, t) = (name_cstr(from)?, name_cstr(to)?);
    // SAFETY: valid C strings that outlive the call; borrowed descriptors.
    check(unsafe { libc::linkat(fd.as_raw_fd(), f.as_ptr(), tfd.as_raw_fd(), t.as_ptr(), 0) })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures are made by path
mod tests {
    use super::*;

    #[test]
    fn strictly_beneath_refuses_links_escapes_and_mounts_of_the_way() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f"), b"in").unwrap();
        std::fs::create_dir(t.path().join("out")).unwrap();
        std::os::unix::fs::symlink(t.path().join("out"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("e", root.join("d/rel")).unwrap();
        std::os::unix::fs::symlink("f", root.join("d/e/lf")).unwrap();
        let r = File::open(&root).unwrap();
        let rd = libc::O_RDONLY;
        assert!(open_strictly_beneath(&r, Path::new("d/e/f"), rd, 0).is_ok());
        assert!(open_strictly_beneath(&r, Path::new(""), rd | libc::O_DIRECTORY, 0).is_ok());
        for p in [
            "abs",
            "abs/x",
            "d/rel/f",
            "d/e/lf",
            "../root/d/e/f",
            "/etc/passwd",
        ] {
            assert!(
                open_strictly_beneath(&r, Path::new(p), rd, 0).is_err(),
                "{p}"
            );
            assert!(walk_components(&r, Path::new(p), rd, 0).is_err(), "{p}");
        }
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        assert!(open_strictly_beneath(&r, Path::new("abs/new"), flags, 0o600).is_err());
        assert!(!t.path().join("out/new").exists());
        assert!(walk_components(&r, Path::new("d/e/f"), rd, 0).is_ok());
        let d = open_strictly_beneath(&r, Path::new("d"), rd | libc::O_DIRECTORY, 0).unwrap();
        let mut names: Vec<_> = list_dir(&d).unwrap();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            names,
            vec![
                ("e".into(), EntryKind::Dir),
                ("rel".into(), EntryKind::Symlink)
            ]
        );
        let e = open_strictly_beneath(&d, Path::new("e"), rd | libc::O_DIRECTORY, 0).unwrap();
        linkat(&e, OsStr::new("f"), &d, OsStr::new("g")).unwrap();
        assert_eq!(std::fs::read(root.join("d/g")).unwrap(), b"in");
        let err = linkat(&e, OsStr::new("f"), &d, OsStr::new("g")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    }
}
