//! The daemon's own request counters, which scripts/bench.sh reads to say
//! how many FUSE round trips a workload cost: the xattr
//! trusted.kmsfs.requests on the mount's root, `opcode count` per line.

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
