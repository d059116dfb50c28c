//! A background mount started without --log-file still keeps its log (under
//! $XDG_STATE_HOME/kmsfs): an authentication failure is named there with the
//! backing file and the block.

mod common;

use std::os::unix::fs::FileExt;

use common::{MountGuard, fuse_available, kmsfs};
use kmsfs::format::Layout;

#[test]
fn background_mount_logs_corruption_by_default() {
    if !fuse_available("default_log") {
        return;
    }
    let t = common::tempdir("default_log");
    let (backing, mnt, state) = (
        t.path().join("b"),
        t.path().join("m"),
        t.path().join("state"),
    );
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let init = kmsfs()
        .arg("--keystore")
        .arg(t.path().join("ks"))
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success());
    // A background mount with no --log-file, logging under `state`.
    let mount = || {
        let o = kmsfs()
            .arg("--keystore")
            .arg(t.path().join("ks"))
            .arg("mount")
            .arg(&backing)
            .arg(&mnt)
            // the test flips a bit of the backing file by its plain name
            .args(["-o", "plaintextnames"])
            .env("XDG_STATE_HOME", &state)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    mount();
    let _guard = MountGuard(mnt.clone());

    std::fs::write(mnt.join("f"), vec![7u8; 3 * 4096]).unwrap();
    kmsfs().arg("unmount").arg(&mnt).status().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(backing.join("f"))
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, Layout::NEW.block_backing_offset(1) + 40)
        .unwrap();
    f.write_all_at(&[byte[0] ^ 1], Layout::NEW.block_backing_offset(1) + 40)
        .unwrap();
    mount();

    let e = std::fs::read(mnt.join("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    let logs: Vec<_> = std::fs::read_dir(state.join("kmsfs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(logs.len(), 1, "one log per mount point");
    let text = std::fs::read_to_string(logs[0].path()).unwrap();
    let line = format!(
        "{}: block 1 failed authentication",
        backing.join("f").display()
    );
    assert!(
        text.contains(&line),
        "log does not name the file and block: {text}"
    );
}
