//! mount(8) and fstab: scripts/fstab_test.sh mounts kmsfs from an fstab line
//! (a temporary fstab, `mount -T`) through the mount.fuse.kmsfs helper, with
//! the options fstab lines carry, remounts it read-only and read-write with
//! `mount -o remount` (no second daemon), unmounts with umount(8) and mounts
//! again.

mod common;

use common::{BIN, fuse_available, require_root, require_tool};

#[test]
fn fstab_line_mounts_through_the_helper() {
    if !fuse_available("fstab") || !require_root("fstab", "mount(8) and /sbin") {
        return;
    }
    if require_tool("fstab", "mount").is_none() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fstab_test.sh");
    let o = std::process::Command::new("bash")
        .arg(script)
        .env("KMSFS", BIN)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("fstab mount ok"), "{out}\n{err}");
    assert!(out.contains("key for new files:"), "status ran: {out}");
}
