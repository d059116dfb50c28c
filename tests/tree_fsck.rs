//! `kmsfs fsck` through the real binary: per-file findings (corrupt header,
//! corrupt blocks by plaintext offset, key disabled or pending deletion), the
//! per-key summary, and the exit codes.

mod common;

use std::path::Path;

use common::Mount;
use serde_json::Value;

const EXIT_REFUSED: i32 = 4;
const EXIT_CORRUPT: i32 = 5;

fn fsck(m: &Mount, extra: &[&str]) -> (Option<i32>, Value) {
    let mut a = vec!["--output", "json", "fsck", m.backing.to_str().unwrap()];
    a.extend_from_slice(extra);
    let o = m.run(&a);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {o:?}"));
    (o.status.code(), v)
}

fn key_of(m: &Mount, f: &Path) -> String {
    let o = m.ok(&["--output", "json", "inspect", f.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&o).unwrap();
    v["KeyId"].as_str().unwrap().to_string()
}

fn flip(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    b[at] ^= 0x40;
    std::fs::write(p, b).unwrap();
}

#[test]
fn fsck_reports_each_finding_and_the_keys_that_protect_the_tree() {
    let Some(mut m) = Mount::new("fsck_findings") else {
        return;
    };
    std::fs::write(m.p("good"), vec![1u8; 5000]).unwrap();
    std::fs::write(m.p("blocks"), vec![2u8; 3 * 4096]).unwrap();
    std::fs::write(m.p("header"), b"x").unwrap();
    let key = key_of(&m, &m.b("good"));
    m.unmount();
    let (code, v) = fsck(&m, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["Keys"][&key]["Files"], 3);
    assert_eq!(v["Keys"][&key]["Bytes"], 5000 + 3 * 4096 + 1);

    // Block 2 of "blocks" (plaintext offset 8192) and the header magic of "header".
    flip(&m.b("blocks"), 1024 + 2 * 4124 + 100);
    flip(&m.b("header"), 2);
    let (code, v) = fsck(&m, &[]);
    assert_eq!(code, Some(EXIT_CORRUPT), "{v}");
    let f = &v["Findings"];
    assert_eq!(f.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(f[0]["Path"], "blocks");
    assert_eq!(f[0]["Status"], "CorruptBlocks");
    assert_eq!(f[0]["Offsets"], serde_json::json!([8192]));
    assert_eq!(f[1]["Path"], "header");
    assert_eq!(f[1]["Status"], "CorruptHeader");
    // --quick reads no block: only the header is found.
    let (code, v) = fsck(&m, &["--quick"]);
    assert_eq!(code, Some(EXIT_CORRUPT), "{v}");
    assert_eq!(v["Findings"].as_array().unwrap().len(), 1, "{v}");
    std::fs::remove_file(m.b("blocks")).unwrap();
    std::fs::remove_file(m.b("header")).unwrap();

    // Unreadable keys: distinct exit code, with the state (and date).
    m.ok(&["kms", "disable-key", "--key-id", &key]);
    let (code, v) = fsck(&m, &[]);
    assert_eq!(code, Some(EXIT_REFUSED), "{v}");
    assert_eq!(v["Findings"][0]["KeyStatus"]["Status"], "Disabled", "{v}");
    m.ok(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &key,
        "--pending-window-in-days",
        "7",
    ]);
    let (code, v) = fsck(&m, &[]);
    assert_eq!(code, Some(EXIT_REFUSED), "{v}");
    let st = &v["Findings"][0]["KeyStatus"];
    assert_eq!(st["Status"], "PendingDeletion", "{v}");
    assert!(st["DeletionDate"].as_i64().is_some(), "{v}");
    assert_eq!(v["Keys"][&key]["Files"], 1);
    assert_eq!(v["Keys"][&key]["Bytes"], 5000);
}

#[test]
fn scheduling_the_deletion_of_a_key_that_still_protects_files_warns_with_the_count() {
    let Some(mut m) = Mount::new("deletion_warning") else {
        return;
    };
    std::fs::write(m.p("a"), b"one").unwrap();
    std::fs::write(m.p("b"), vec![7u8; 10_000]).unwrap();
    let key = key_of(&m, &m.b("a"));
    m.unmount();
    let other = m.ok(&["--output", "json", "kms", "create-key"]);
    let other: Value = serde_json::from_str(&other).unwrap();
    let other = other["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    // A key that protects nothing: no warning.
    let o = m.run(&["kms", "schedule-key-deletion", "--key-id", &other]);
    assert!(o.status.success(), "{o:?}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("still protects"));
    let o = m.run(&["kms", "schedule-key-deletion", "--key-id", &key]);
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("still protects 2 files (10003 bytes)")
            && err.contains(&m.backing.canonicalize().unwrap().display().to_string()),
        "{err}"
    );
    // After a rewrap to another key, the old key protects nothing.
    m.ok(&["kms", "cancel-key-deletion", "--key-id", &key]);
    m.ok(&["kms", "cancel-key-deletion", "--key-id", &other]);
    m.ok(&["kms", "enable-key", "--key-id", &key]);
    m.ok(&["kms", "enable-key", "--key-id", &other]);
    m.ok(&["rewrap", m.backing.to_str().unwrap(), "--to-key-id", &other]);
    let o = m.run(&["kms", "schedule-key-deletion", "--key-id", &key]);
    assert!(o.status.success(), "{o:?}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("still protects"));
}
