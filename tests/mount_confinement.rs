//! The daemon (root here) never acts on a file outside the backing directory:
//! a backing entry swapped for a symlink to a victim file, or a backing
//! directory swapped for a symlink to a victim directory, while the mount
//! holds the old node, must leave the victim's mode, owner, times, xattrs and
//! existence alone (the attack of review finding C1, with the swap done by
//! the test itself). The swaps of an entry made through the mount run in
//! both names modes (with encrypted names the daemon reaches entries by
//! their encrypted names and reads each directory's id file).

mod common;

use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Mount, Names};

fn c(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

/// A root-owned 0600 file outside the backing directory, with an old mtime.
fn victim(m: &Mount, dir: &str) -> PathBuf {
    let d = m.tmp.path().join(dir);
    fs::create_dir_all(&d).unwrap();
    let v = d.join("victim");
    fs::write(&v, b"secret").unwrap();
    fs::set_permissions(&v, fs::Permissions::from_mode(0o600)).unwrap();
    File::options()
        .write(true)
        .open(&v)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    v
}

fn assert_untouched(v: &Path) {
    let md = fs::symlink_metadata(v).unwrap_or_else(|e| panic!("{}: {e}", v.display()));
    assert!(md.is_file(), "{} replaced", v.display());
    assert_eq!(md.mode() & 0o7777, 0o600, "{} mode changed", v.display());
    assert_eq!(
        (md.uid(), md.gid()),
        (0, 0),
        "{} owner changed",
        v.display()
    );
    assert_eq!(md.mtime(), 1_000_000, "{} mtime changed", v.display());
    let p = c(v);
    let mut buf = [0u8; 256];
    // SAFETY: valid C string; `buf` writable for its length.
    let n = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        n <= 0 || !buf[..n as usize].windows(4).any(|w| w == b"evil"),
        "{} got an xattr",
        v.display()
    );
}

/// Every metadata change through a path that reaches the mount's node
/// directly (the /proc link of an O_PATH descriptor: no lookup by name).
fn meddle_by_path(p: &Path) -> Vec<std::io::Result<()>> {
    let p = c(p);
    let ts = [libc::timespec {
        tv_sec: 5,
        tv_nsec: 0,
    }; 2];
    let rc = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: valid C strings and timespecs that outlive each call.
    unsafe {
        vec![
            rc(libc::chmod(p.as_ptr(), 0o666)),
            rc(libc::chown(p.as_ptr(), 65534, 65534)),
            rc(libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0)),
            rc(libc::setxattr(
                p.as_ptr(),
                c"user.evil".as_ptr(),
                b"x".as_ptr().cast(),
                1,
                0,
            )),
            rc(libc::truncate(p.as_ptr(), 0)),
        ]
    }
}

common::in_both_names_modes!(
    open_file_whose_backing_entry_became_a_symlink_changes_only_itself,
    node_whose_backing_entry_became_a_symlink_never_reaches_the_target,
    directory_swapped_for_a_symlink_is_not_walked_through,
);

fn open_file_whose_backing_entry_became_a_symlink_changes_only_itself(names: Names) {
    let Some(m) = Mount::with_names("confine-fd", names, &[]) else {
        return;
    };
    let v = victim(&m, "vdir");
    // Created through the mount and kept open, then swapped in the backing dir.
    let f = File::create(m.p("y")).unwrap();
    let y = m.backing_of("y");
    fs::remove_file(&y).unwrap();
    std::os::unix::fs::symlink(&v, &y).unwrap();
    let fd = f.as_raw_fd();
    let ts = [libc::timespec {
        tv_sec: 5,
        tv_nsec: 0,
    }; 2];
    // SAFETY: a live descriptor; valid strings and timespecs.
    unsafe {
        libc::fchmod(fd, 0o666);
        libc::fchown(fd, 65534, 65534);
        libc::futimens(fd, ts.as_ptr());
        libc::fsetxattr(fd, c"user.evil".as_ptr(), b"x".as_ptr().cast(), 1, 0);
        libc::ftruncate(fd, 0);
    }
    assert_untouched(&v);
    assert_eq!(fs::read(&v).unwrap(), b"secret");
    // The open file itself did change.
    let md = f.metadata().unwrap();
    assert_eq!(md.mode() & 0o7777, 0o666);
    assert_eq!(md.uid(), 65534);
}

fn node_whose_backing_entry_became_a_symlink_never_reaches_the_target(names: Names) {
    let Some(m) = Mount::with_names("confine-path", names, &[]) else {
        return;
    };
    let v = victim(&m, "vdir");
    fs::write(m.p("z"), b"mine").unwrap();
    let node = File::options()
        .custom_flags(libc::O_PATH)
        .read(true)
        .open(m.p("z"))
        .unwrap();
    let z = m.backing_of("z");
    fs::remove_file(&z).unwrap();
    std::os::unix::fs::symlink(&v, &z).unwrap();
    let via = PathBuf::from(format!("/proc/self/fd/{}", node.as_raw_fd()));
    let results = meddle_by_path(&via);
    assert_untouched(&v);
    assert_eq!(fs::read(&v).unwrap(), b"secret");
    // The node's file is no longer at its name (a symlink is): every change
    // is ESTALE, whatever it would have done to a symlink.
    for r in &results {
        assert_eq!(r.as_ref().unwrap_err().raw_os_error(), Some(libc::ESTALE));
    }
}

fn directory_swapped_for_a_symlink_is_not_walked_through(names: Names) {
    let Some(m) = Mount::with_names("confine-dir", names, &[]) else {
        return;
    };
    let v = victim(&m, "vdir");
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/victim"), b"mine").unwrap();
    let node = File::options()
        .custom_flags(libc::O_PATH)
        .read(true)
        .open(m.p("d/victim"))
        .unwrap();
    // Names below d are used through a descriptor of the mount's d, so the
    // kernel asks the daemon about d's node, never looks d up again (it would
    // see the symlink then, and following it is the caller's own business).
    let d = File::options()
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .read(true)
        .open(m.p("d"))
        .unwrap();
    // The backing directory d now leads to the victim's directory.
    let bd = m.backing_of("d");
    fs::rename(&bd, m.b("d.orig")).unwrap();
    std::os::unix::fs::symlink(v.parent().unwrap(), &bd).unwrap();
    let via = PathBuf::from(format!("/proc/self/fd/{}", node.as_raw_fd()));
    for r in meddle_by_path(&via) {
        assert!(r.is_err(), "a change went through the swapped directory");
    }
    // Names below it: no new entries, no removal, no rename, no link.
    let outside = v.parent().unwrap();
    let dfd = d.as_raw_fd();
    let root = File::open(&m.mnt).unwrap();
    // SAFETY: live descriptors and valid C strings for every call.
    let results = unsafe {
        [
            libc::mkdirat(dfd, c"sub".as_ptr(), 0o755),
            libc::openat(dfd, c"new".as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644),
            libc::mknodat(dfd, c"fifo".as_ptr(), libc::S_IFIFO | 0o644, 0),
            libc::symlinkat(c"x".as_ptr(), dfd, c"sl".as_ptr()),
            libc::renameat(dfd, c"victim".as_ptr(), root.as_raw_fd(), c"taken".as_ptr()),
            libc::unlinkat(dfd, c"victim".as_ptr(), 0),
        ]
    };
    assert!(results.iter().all(|r| *r < 0), "{results:?}");
    fs::write(m.p("hl"), b"x").unwrap();
    // SAFETY: live descriptors and valid C strings.
    let r = unsafe { libc::linkat(root.as_raw_fd(), c"hl".as_ptr(), dfd, c"hl".as_ptr(), 0) };
    assert!(r < 0);
    for n in ["sub", "new", "fifo", "sl", "hl"] {
        assert!(!outside.join(n).exists(), "{n} made outside");
    }
    assert_untouched(&v);
    assert_eq!(fs::read(&v).unwrap(), b"secret");
}

/// The reported attack itself: a root daemon, an `allow_other` mount over a
/// backing directory owned by `nobody`, and `nobody` swapping its own file for
/// a symlink to a root-owned 0600 file while holding it open.
#[test]
fn nobody_cannot_chmod_a_root_file_through_an_allow_other_mount() {
    if common::require_tool("confine-nobody", "runuser").is_none() {
        return;
    }
    let Some(mut m) = Mount::new("confine-nobody") else {
        return;
    };
    let v = victim(&m, "vdir");
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&m.backing, Some(65534), Some(65534)).unwrap();
    m.set_args(&["-o", "allow_other"]);
    m.remount();
    let script = format!(
        "set -e; exec 3<>{mnt}/y; rm {bk}/y; ln -s {v} {bk}/y; \
         chmod 666 /proc/self/fd/3 || true; chown 65534:65534 /proc/self/fd/3 || true; \
         touch -d @5 /proc/self/fd/3 || true; exec 3>&-; \
         chmod 666 {mnt}/y || true",
        mnt = m.mnt.display(),
        bk = m.backing.display(),
        v = v.display()
    );
    let o = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_untouched(&v);
    assert_eq!(fs::read(&v).unwrap(), b"secret");
}
