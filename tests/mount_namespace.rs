//! Names and metadata: rename with RENAME_NOREPLACE and RENAME_EXCHANGE,
//! directory renames with open files, hard links sharing content, symlinks,
//! FIFOs and sockets, chmod/chown/utimens, xattrs (with the reserved prefix
//! refused), statfs, readdir.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::Mount;

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let f = CString::new(from.to_str().unwrap()).unwrap();
    let t = CString::new(to.to_str().unwrap()).unwrap();
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn rename_variants() {
    let Some(mut m) = Mount::new("rename") else {
        return;
    };
    fs::write(m.p("a"), b"A").unwrap();
    fs::write(m.p("b"), b"B").unwrap();
    // Plain rename over an existing file.
    fs::rename(m.p("a"), m.p("c")).unwrap();
    assert!(!m.p("a").exists());
    assert_eq!(fs::read(m.p("c")).unwrap(), b"A");
    // NOREPLACE refuses an existing target, accepts a new one.
    let e = renameat2(&m.p("c"), &m.p("b"), libc::RENAME_NOREPLACE).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    renameat2(&m.p("c"), &m.p("d"), libc::RENAME_NOREPLACE).unwrap();
    // EXCHANGE swaps two names, files or directories.
    renameat2(&m.p("d"), &m.p("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.p("b")).unwrap(), b"A");
    assert_eq!(fs::read(m.p("d")).unwrap(), b"B");
    fs::create_dir_all(m.p("dir/sub")).unwrap();
    fs::write(m.p("dir/sub/f"), b"deep").unwrap();
    renameat2(&m.p("dir"), &m.p("d"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.p("d/sub/f")).unwrap(), b"deep");
    assert_eq!(fs::read(m.p("dir")).unwrap(), b"B");
    // A directory rename while a file under it is open.
    let mut open = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("d/sub/f"))
        .unwrap();
    fs::rename(m.p("d"), m.p("moved")).unwrap();
    open.write_all(b"!!").unwrap();
    drop(open);
    assert_eq!(fs::read(m.p("moved/sub/f")).unwrap(), b"!!ep");
    fs::rename(m.p("moved/sub/f"), m.p("top")).unwrap();
    m.remount();
    assert_eq!(fs::read(m.p("top")).unwrap(), b"!!ep");
    let names: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["b", "dir", "moved", "top"]);
}

#[test]
fn hard_links_share_content_and_survive_unlink() {
    let Some(mut m) = Mount::new("links") else {
        return;
    };
    fs::write(m.p("x"), b"first").unwrap();
    fs::create_dir(m.p("d")).unwrap();
    fs::hard_link(m.p("x"), m.p("d/y")).unwrap();
    assert_eq!(fs::metadata(m.p("x")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(m.p("x")).unwrap().ino(),
        fs::metadata(m.p("d/y")).unwrap().ino()
    );
    // Writes through one name show through the other, with both open at once.
    let mut a = fs::OpenOptions::new().write(true).open(m.p("x")).unwrap();
    let mut b = fs::File::open(m.p("d/y")).unwrap();
    a.write_all(b"FIRST, longer").unwrap();
    a.flush().unwrap();
    drop(a);
    let mut s = String::new();
    b.read_to_string(&mut s).unwrap();
    assert_eq!(s, "FIRST, longer");
    drop(b);
    fs::remove_file(m.p("x")).unwrap();
    assert_eq!(fs::read(m.p("d/y")).unwrap(), b"FIRST, longer");
    assert_eq!(fs::metadata(m.p("d/y")).unwrap().nlink(), 1);
    m.remount();
    assert_eq!(fs::read(m.p("d/y")).unwrap(), b"FIRST, longer");
}

#[test]
fn symlinks_fifos_sockets_and_unlinked_open_files() {
    let Some(m) = Mount::new("special") else {
        return;
    };
    fs::write(m.p("target"), b"T").unwrap();
    std::os::unix::fs::symlink("target", m.p("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/abs", m.p("dangling")).unwrap();
    assert_eq!(fs::read_link(m.p("link")).unwrap(), Path::new("target"));
    assert_eq!(fs::read(m.p("link")).unwrap(), b"T");
    assert!(
        fs::symlink_metadata(m.p("dangling"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // A FIFO carries data between two processes through the mount.
    common::sh(
        &m.mnt,
        "mkfifo fifo && (echo through-the-fifo > fifo &) && cat fifo > out",
    );
    assert!(
        fs::symlink_metadata(m.p("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(fs::read(m.p("out")).unwrap(), b"through-the-fifo\n");
    // A Unix socket can be bound on the mount.
    let l = std::os::unix::net::UnixListener::bind(m.p("sock")).unwrap();
    assert!(
        fs::symlink_metadata(m.p("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    drop(l);
    // An open file survives its unlink.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("tmp"))
        .unwrap();
    fs::remove_file(m.p("tmp")).unwrap();
    f.write_all(b"still here").unwrap();
    let mut s = String::new();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    assert_eq!(f.metadata().unwrap().len(), 10);
    // fchmod, ftruncate and futimens still work on it.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    f.set_len(5).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.len(), md.mtime()),
        (0o600, 5, 1_000_000)
    );
}

#[test]
fn attributes_xattrs_and_statfs() {
    let Some(m) = Mount::new("attrs") else { return };
    fs::write(m.p("f"), b"0123456789").unwrap();
    fs::set_permissions(m.p("f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(m.p("f")).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(m.p("f"), Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(m.p("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    common::sh(&m.mnt, "touch -d '2001-02-03 04:05:06 UTC' f");
    assert_eq!(fs::metadata(m.p("f")).unwrap().mtime(), 981_173_106);
    assert_eq!(fs::metadata(m.p("f")).unwrap().len(), 10);
    // Truncate through the path (no open handle).
    fs::OpenOptions::new()
        .write(true)
        .open(m.p("f"))
        .unwrap()
        .set_len(4)
        .unwrap();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"0123");
    // xattrs pass through to the backing file; the reserved prefix is refused.
    common::sh(
        &m.mnt,
        "setfattr -n user.color -v blue f 2>/dev/null || python3 -c \"import os; os.setxattr('f', 'user.color', b'blue')\"",
    );
    let py = |code: &str| common::sh(&m.mnt, &format!("python3 -c \"{code}\""));
    assert_eq!(
        py("import os; print(os.getxattr('f', 'user.color').decode())").trim(),
        "blue"
    );
    assert!(py("import os; print(os.listxattr('f'))").contains("user.color"));
    let refused = py(
        "import os\ntry:\n    os.setxattr('f', 'user.kmsfs.x', b'v'); print('allowed')\nexcept OSError as e:\n    print('refused', e.errno)",
    );
    assert!(refused.starts_with("refused"), "{refused}");
    py("import os; os.removexattr('f', 'user.color')");
    assert!(!py("import os; print(os.listxattr('f'))").contains("user.color"));
    // statfs reports the backing file system.
    let out = common::sh(&m.mnt, "stat -f -c '%b %S' .");
    let blocks: u64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(blocks > 0, "{out}");
    // access(2)
    assert!(py("import os; print(os.access('f', os.R_OK))").contains("True"));
}

#[test]
fn other_users_get_kernel_permission_checks_and_own_their_files() {
    if common::require_tool("users", "runuser").is_none() {
        return;
    }
    let Some(mut m) = Mount::new("users") else {
        return;
    };
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    m.set_args(&["-o", "allow_other"]);
    m.remount();
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(m.p("secret"), b"root only").unwrap();
    fs::set_permissions(m.p("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.p("public"), b"everyone").unwrap();
    fs::set_permissions(m.p("public"), fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |cmd: &str| {
        std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", "sh", "-c", cmd])
            .current_dir(&m.mnt)
            .output()
            .unwrap()
    };
    assert!(!as_nobody("cat secret").status.success());
    assert_eq!(as_nobody("cat public").stdout, b"everyone");
    assert!(as_nobody("echo mine > mine").status.success());
    let md = fs::metadata(m.b("mine")).unwrap();
    let nobody = fs::metadata(m.p("mine")).unwrap().uid();
    assert_eq!(md.uid(), nobody);
    assert_ne!(nobody, 0);
    assert_eq!(fs::read(m.p("mine")).unwrap(), b"mine\n");
}
