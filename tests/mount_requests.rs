//! Performance plumbing: the daemon's own request counters, which
//! scripts/bench.sh reads to say how many FUSE round trips a workload cost
//! (the xattr trusted.kmsfs.requests on the mount's root, `opcode count` per
//! line), and the read-ahead window a root daemon sets after mounting.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{Mount, require_root, sh};

fn requests(m: &Mount) -> BTreeMap<String, u64> {
    let out = sh(
        &m.mnt,
        "python3 -c 'import os; print(os.getxattr(\".\", \"trusted.kmsfs.requests\").decode(), end=\"\")'",
    );
    out.lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("`opcode count`");
            (k.to_string(), v.parse().expect("a count"))
        })
        .collect()
}

#[test]
fn the_mount_counts_the_requests_it_serves_by_opcode() {
    if !require_root("requests", "trusted.* xattrs are root's") {
        return;
    }
    let Some(m) = Mount::new("requests") else {
        return;
    };
    let before = requests(&m);
    for i in 0..5 {
        fs::write(m.p(&format!("f{i}")), vec![7u8; 3 * 4096]).unwrap();
    }
    let after = requests(&m);
    let grew =
        |op: &str| after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0);
    // Five files made by open(O_CREAT) and written once each; the getxattr
    // that reads the counters counts itself.
    assert_eq!(grew("create"), 5, "{before:?} -> {after:?}");
    assert_eq!(grew("write"), 5, "{before:?} -> {after:?}");
    assert!(grew("getxattr") >= 1);
    // The name is the mount's own: no other node has it, and listing the
    // root does not show it.
    let other = sh(
        &m.mnt,
        "python3 -c 'import os\ntry:\n  os.getxattr(\"f0\", \"trusted.kmsfs.requests\")\nexcept OSError as e:\n  print(e.errno)'",
    );
    assert_eq!(other.trim(), libc::ENODATA.to_string());
    let listed = sh(&m.mnt, "python3 -c 'import os; print(os.listxattr(\".\"))'");
    assert!(!listed.contains("kmsfs"), "{listed}");
}

#[test]
fn a_root_mount_raises_its_read_ahead_window() {
    if !require_root("readahead", "only root may write sysfs") {
        return;
    }
    let Some(m) = Mount::new("readahead") else {
        return;
    };
    // The mount's device, from mountinfo: no request to the daemon.
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = m.mnt.to_str().expect("a plain temp path");
    let dev = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[4] == mnt).then(|| f[2].to_string())
        })
        .next_back()
        .expect("the mount in mountinfo");
    let kb = fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
    // The kernel's default for a FUSE mount is 128 KiB.
    assert_eq!(kb.trim(), "4096");
}
