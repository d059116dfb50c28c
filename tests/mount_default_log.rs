//! A background mount started without --log-file still keeps its log (under
//! $XDG_STATE_HOME/kmsfs): an authentication failure is named there with the
//! backing file and the block.

mod common;

use std::os::unix::fs::FileExt;
use std::process::Command;

use common::{BIN, fuse_available, is_mounted};
use kmsfs::format::block_backing_offset;

/// Unmounts on drop, even when the test fails.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new(BIN).arg("unmount").arg(&self.0).status();
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn background_mount_logs_corruption_by_default() {
    if !fuse_available("default_log") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (backing, mnt, state) = (
        t.path().join("b"),
        t.path().join("m"),
        t.path().join("state"),
    );
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    // A background mount with no --log-file, logging under `state`.
    let mount = || {
        let o = Command::new(BIN)
            .arg("--keystore")
            .arg(t.path().join("ks"))
            .arg("mount")
            .arg(&backing)
            .arg(&mnt)
            .env("XDG_STATE_HOME", &state)
            .env_remove("KMSFS_KEYSTORE")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    mount();
    let _guard = Unmount(mnt.clone());

    std::fs::write(mnt.join("f"), vec![7u8; 3 * 4096]).unwrap();
    Command::new(BIN).arg("unmount").arg(&mnt).status().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(backing.join("f"))
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, block_backing_offset(1) + 40)
        .unwrap();
    f.write_all_at(&[byte[0] ^ 1], block_backing_offset(1) + 40)
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
