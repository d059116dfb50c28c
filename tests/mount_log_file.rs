//! The root daemon's log: created 0600, never opened through a symbolic link
//! or in a directory another user can change (a root mount run with a user's
//! environment, `sudo -E`), and a file name cannot forge a log line.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use common::{Mount, is_mounted};
use kmsfs::format::Layout;

/// A root-only file that the attacks below try to get the daemon to write into.
fn secret(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("root-only");
    std::fs::write(&p, b"root's own data\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The default log's name for a mount point (as `kmsfs mount` derives it).
fn default_log_name(mnt: &Path) -> String {
    let real = std::fs::canonicalize(mnt).unwrap();
    let name: String = real
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("mount-{name}.log")
}

#[test]
fn log_is_private_and_names_cannot_forge_lines() {
    let Some(mut m) = Mount::new("log_private") else {
        return;
    };
    let mode = std::fs::metadata(&m.log).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the log holds file names: owner only");

    // A name that would start a forged line if logged as it is.
    let name = "evil\n[ERROR kmsfs::fs] forged line";
    std::fs::write(m.p(name), vec![5u8; 2 * 4096]).unwrap();
    m.unmount();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.b(name))
        .unwrap();
    let at = Layout::NEW.block_backing_offset(0) + 40;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    m.mount();
    let e = std::fs::read(m.p(name)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));

    let log = m.log_text();
    let want = format!(
        "{}/evil\\n[ERROR kmsfs::fs] forged line: block 0 failed authentication",
        m.backing.display()
    );
    assert!(log.contains(&want), "name not escaped in the log:\n{log}");
    assert!(
        !log.lines()
            .any(|l| l.trim_start().starts_with("[ERROR kmsfs::fs] forged")),
        "a file name forged a log line:\n{log}"
    );
}

#[test]
fn log_never_follows_a_symlink_or_trusts_another_users_directory() {
    let Some(mut m) = Mount::new("log_symlink") else {
        return;
    };
    m.unmount();
    let secret = secret(m.tmp.path());
    let before = std::fs::read(&secret).unwrap();

    // 1. --log-file names a symbolic link to a root-only file.
    let link = m.tmp.path().join("link.log");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let o = m
        .kmsfs()
        .arg("mount")
        .arg(&m.backing)
        .arg(&m.mnt)
        .arg("--log-file")
        .arg(&link)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "mounted with a symlinked log");
    assert!(!is_mounted(&m.mnt));
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&secret).unwrap(), before);

    // 2. The default log under a directory another user owns ($XDG_STATE_HOME
    // of a user, kept by `sudo -E`), with a symbolic link at the log's path.
    let state = m.tmp.path().join("state");
    let dir = state.join("kmsfs");
    std::fs::create_dir_all(&dir).unwrap();
    let nobody = 65534;
    for d in [&state, &dir] {
        std::os::unix::fs::chown(d, Some(nobody), Some(nobody)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let planted = dir.join(default_log_name(&m.mnt));
    std::os::unix::fs::symlink(&secret, &planted).unwrap();
    std::os::unix::fs::lchown(&planted, Some(nobody), Some(nobody)).unwrap();
    let o = m
        .kmsfs()
        .arg("mount")
        .arg(&m.backing)
        .arg(&m.mnt)
        .env("XDG_STATE_HOME", &state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "mounted with a log in another user's directory"
    );
    assert!(!is_mounted(&m.mnt));
    assert!(
        err.contains("can be changed by another user") && err.contains("hint:"),
        "{err}"
    );
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert_eq!(std::fs::read(&secret).unwrap(), before);
}
