//! POSIX details where the mount must behave as the backing ext4 does, or
//! refuse plainly: POSIX ACLs (not supported: refused, hidden), the group of
//! entries made in a setgid directory, setuid/setgid bits of new files.
//! Each runs in both names modes.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output};

use common::{Mount, Names};

/// A mount other users can use (allow_other, world-writable root); None to skip.
fn shared_mount(test: &str, names: Names) -> Option<Mount> {
    common::require_tool(test, "runuser")?;
    let mut m = Mount::with_names(test, names, &[])?;
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    m.set_args(&["-o", "allow_other"]);
    m.remount();
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    Some(m)
}

/// Runs `script` with sh as `user` in the mount.
fn as_user(m: &Mount, user: &str, script: &str) -> Output {
    Command::new("runuser")
        .args(["-u", user, "--", "sh", "-c", script])
        .current_dir(&m.mnt)
        .output()
        .unwrap()
}

/// Runs a python3 snippet in `dir` and returns its stdout.
fn py(dir: &std::path::Path, code: &str) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(code)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// u::rw-, u:nobody:---, g::r--, m::r--, o::r-- in the kernel's xattr encoding.
const ACL: &str = "import struct\n\
acl = struct.pack('<I', 2) + b''.join(struct.pack('<HHI', t, p, i) for t, p, i in \
[(1, 6, 0xffffffff), (2, 0, 65534), (4, 4, 0xffffffff), (0x10, 4, 0xffffffff), (0x20, 4, 0xffffffff)])\n";

common::in_both_names_modes!(
    posix_acls_and_security_labels_are_refused_and_never_shown,
    setgid_directory_gives_new_entries_its_group,
    setuid_and_setgid_bits_of_new_files_are_kept,
);

fn posix_acls_and_security_labels_are_refused_and_never_shown(names: Names) {
    let Some(m) = Mount::with_names("acl", names, &[]) else {
        return;
    };
    fs::write(m.p("f"), b"x").unwrap();
    fs::create_dir(m.p("d")).unwrap();
    // Setting either ACL is EOPNOTSUPP, as on a file system without ACLs:
    // the kernel would not enforce it.
    for (name, attr) in [
        ("f", "system.posix_acl_access"),
        ("d", "system.posix_acl_access"),
        ("d", "system.posix_acl_default"),
        ("f", "security.selinux"),
    ] {
        let out = py(
            &m.mnt,
            &format!(
                "{ACL}import os\ntry:\n    os.setxattr('{name}', '{attr}', acl); print('set')\n\
                 except OSError as e:\n    print(e.errno)"
            ),
        );
        assert_eq!(out, libc::EOPNOTSUPP.to_string(), "{name} {attr}");
        let removed = py(
            &m.mnt,
            &format!(
                "import os\ntry:\n    os.removexattr('{name}', '{attr}'); print('removed')\n\
                 except OSError as e:\n    print(e.errno)"
            ),
        );
        assert_eq!(removed, libc::EOPNOTSUPP.to_string(), "{name} {attr}");
    }
    let (bf, bd) = (m.backing_of("f"), m.backing_of("d"));
    let (bf, bd) = (bf.display(), bd.display());
    let backing = py(
        &m.backing,
        &format!("import os; print(os.listxattr('{bf}'), os.listxattr('{bd}'))"),
    );
    assert!(!backing.contains("posix_acl"), "{backing}");
    assert_eq!(
        fs::metadata(m.backing_of("f")).unwrap().mode() & 0o777,
        0o644
    );
    // An ACL the backing file got beside the mount is neither listed nor returned.
    py(
        &m.backing,
        &format!("{ACL}import os; os.setxattr('{bf}', 'system.posix_acl_access', acl)"),
    );
    assert!(
        py(
            &m.backing,
            &format!("import os; print(os.listxattr('{bf}'))")
        )
        .contains("posix_acl_access")
    );
    assert_eq!(
        py(&m.mnt, "import os; print(os.listxattr('f'))"),
        "[]",
        "the ACL shows through the mount"
    );
    let got = py(
        &m.mnt,
        "import os\ntry:\n    print(len(os.getxattr('f', 'system.posix_acl_access')))\n\
         except OSError as e:\n    print('errno', e.errno)",
    );
    // Reading one is EOPNOTSUPP too, so that ls -l stops asking.
    assert_eq!(got, format!("errno {}", libc::EOPNOTSUPP));
    for (name, attr) in [("d", "system.posix_acl_default"), ("d", "security.selinux")] {
        let got = py(
            &m.mnt,
            &format!(
                "import os\ntry:\n    print(len(os.getxattr('{name}', '{attr}')))\n\
                 except OSError as e:\n    print('errno', e.errno)"
            ),
        );
        assert_eq!(got, format!("errno {}", libc::EOPNOTSUPP), "{name} {attr}");
    }
}

fn setgid_directory_gives_new_entries_its_group(names: Names) {
    let Some(m) = shared_mount("setgid", names) else {
        return;
    };
    fs::create_dir(m.p("sg")).unwrap();
    std::os::unix::fs::chown(m.p("sg"), None, Some(1)).unwrap();
    fs::set_permissions(m.p("sg"), fs::Permissions::from_mode(0o2777)).unwrap();
    let o = as_user(&m, "nobody", "touch sg/f && mkdir sg/d && mkfifo sg/p");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nobody = fs::metadata(m.p("sg/f")).unwrap().uid();
    assert_ne!(nobody, 0);
    for name in ["sg/f", "sg/d", "sg/p"] {
        let (mnt, backing) = (
            fs::metadata(m.p(name)).unwrap(),
            fs::metadata(m.backing_of(name)).unwrap(),
        );
        assert_eq!((mnt.uid(), mnt.gid()), (nobody, 1), "{name} on the mount");
        assert_eq!(
            (backing.uid(), backing.gid()),
            (nobody, 1),
            "{name} backing"
        );
    }
    // A new subdirectory stays setgid, as on ext4, so its own entries follow.
    let d = fs::metadata(m.p("sg/d")).unwrap().mode();
    assert_eq!(d & 0o7777, 0o2755, "sg/d mode {d:o}");
    let o = as_user(&m, "nobody", "mkdir sg/d/e && touch sg/d/e/g");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::metadata(m.p("sg/d/e/g")).unwrap().gid(), 1);
    // Outside the setgid directory, the caller's group as before.
    let o = as_user(&m, "nobody", "touch plain");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::metadata(m.p("plain")).unwrap().gid(), 65534);
}

fn setuid_and_setgid_bits_of_new_files_are_kept(names: Names) {
    let Some(m) = shared_mount("setuid", names) else {
        return;
    };
    let make = |name: &str, mode: &str| {
        format!(
            "import os; os.umask(0); os.close(os.open('{name}', os.O_CREAT | os.O_WRONLY, {mode}))"
        )
    };
    let mode = |name: &str| fs::metadata(m.p(name)).unwrap().mode() & 0o7777;
    // As root, and as another user (the daemon chowns every new file).
    py(&m.mnt, &make("root-suid", "0o4755"));
    assert_eq!(mode("root-suid"), 0o4755);
    py(&m.mnt, &make("root-sgid", "0o2750"));
    assert_eq!(mode("root-sgid"), 0o2750);
    let o = as_user(
        &m,
        "nobody",
        &format!("python3 -c \"{}\"", make("user-suid", "0o4711")),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode("user-suid"), 0o4711);
    assert_eq!(
        fs::metadata(m.backing_of("user-suid")).unwrap().mode() & 0o7777,
        0o4711
    );
}
