//! POSIX details where the mount must behave as the backing ext4 does, or
//! refuse plainly: POSIX ACLs (not supported: refused, hidden), the group of
//! entries made in a setgid directory, setuid/setgid bits of new files.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::Mount;

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

#[test]
fn posix_acls_are_refused_and_never_shown() {
    let Some(m) = Mount::new("acl") else { return };
    fs::write(m.p("f"), b"x").unwrap();
    fs::create_dir(m.p("d")).unwrap();
    // Setting either ACL is EOPNOTSUPP, as on a file system without ACLs:
    // the kernel would not enforce it.
    for (name, attr) in [
        ("f", "system.posix_acl_access"),
        ("d", "system.posix_acl_access"),
        ("d", "system.posix_acl_default"),
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
    let backing = py(
        &m.backing,
        "import os; print(os.listxattr('f'), os.listxattr('d'))",
    );
    assert!(!backing.contains("posix_acl"), "{backing}");
    assert_eq!(fs::metadata(m.b("f")).unwrap().mode() & 0o777, 0o644);
    // An ACL the backing file got beside the mount is neither listed nor returned.
    py(
        &m.backing,
        &format!("{ACL}import os; os.setxattr('f', 'system.posix_acl_access', acl)"),
    );
    assert!(py(&m.backing, "import os; print(os.listxattr('f'))").contains("posix_acl_access"));
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
    assert_eq!(got, format!("errno {}", libc::ENODATA));
}
