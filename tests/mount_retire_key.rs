//! Retiring a backing directory's default key through the real binary:
//! `rewrap --to-key-id NEW` moves the files and makes NEW the key new files
//! get, so the old key can be disabled and scheduled for deletion and a
//! plain `kmsfs mount BACKING MNT` still works; a mount refused because the
//! default key is pending deletion names `cancel-key-deletion` and
//! `set-default-key`, and `set-default-key` alone gets it going again.

mod common;

use common::{EXIT_REFUSED, Mount, fails};
use serde_json::Value;

fn create_key(m: &Mount) -> String {
    m.ok(&[
        "kms",
        "create-key",
        "--query",
        "KeyMetadata.KeyId",
        "--output",
        "text",
    ])
    .trim()
    .to_string()
}

fn key_of(m: &Mount, rel: &str) -> String {
    let o = m.ok(&["--output", "json", "inspect", m.b(rel).to_str().unwrap()]);
    let v: Value = serde_json::from_str(&o).unwrap();
    v["KeyId"].as_str().unwrap().to_string()
}

fn default_key(m: &Mount) -> String {
    let o = m.ok(&["--output", "json", "inspect", m.backing.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&o).unwrap();
    v["DefaultKeyId"].as_str().unwrap().to_string()
}

#[test]
fn rewrap_to_a_new_key_makes_it_the_default_and_the_old_one_can_go() {
    let Some(mut m) = Mount::new("retire") else {
        return;
    };
    std::fs::write(m.p("old.txt"), b"written under the old key").unwrap();
    m.unmount();
    let old = m
        .ok(&[
            "kms",
            "describe-key",
            "--key-id",
            "alias/kmsfs/default",
            "--query",
            "KeyMetadata.KeyId",
            "--output",
            "text",
        ])
        .trim()
        .to_string();
    assert_eq!(default_key(&m), old);
    let new = create_key(&m);
    let out = m.ok(&["rewrap", m.backing.to_str().unwrap(), "--to-key-id", &new]);
    assert!(
        out.contains(&format!("now encrypted under {new} (was {old}")),
        "{out}"
    );
    assert_eq!(default_key(&m), new);
    m.ok(&["kms", "disable-key", "--key-id", &old]);
    m.ok(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &old,
        "--pending-window-in-days",
        "7",
    ]);
    // No --key-id: the backing directory's default is NEW now.
    m.mount();
    std::fs::write(m.p("new.txt"), b"written after the rotation").unwrap();
    assert_eq!(
        std::fs::read(m.p("old.txt")).unwrap(),
        b"written under the old key"
    );
    m.unmount();
    assert_eq!(key_of(&m, "old.txt"), new);
    assert_eq!(key_of(&m, "new.txt"), new);
    // The default alias can follow (seal and new backing directories use
    // it); it still cannot be deleted or made anew.
    m.ok(&[
        "kms",
        "update-alias",
        "--alias-name",
        "alias/kmsfs/default",
        "--target-key-id",
        &new,
    ]);
    let plain = m.tmp.path().join("plain");
    let sealed = m.tmp.path().join("sealed");
    std::fs::write(&plain, b"sealed after the rotation").unwrap();
    m.ok(&["seal", plain.to_str().unwrap(), sealed.to_str().unwrap()]);
    let o = m.ok(&["--output", "json", "inspect", sealed.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["KeyId"], new.as_str());
    let o = m.run(&["kms", "delete-alias", "--alias-name", "alias/kmsfs/default"]);
    fails(&o, common::EXIT_USAGE, "reserved");
}

#[test]
fn a_default_key_pending_deletion_is_refused_with_the_ways_out() {
    let Some(mut m) = Mount::new("retire-hint") else {
        return;
    };
    std::fs::write(m.p("a"), b"a").unwrap();
    m.unmount();
    let old = default_key(&m);
    m.ok(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &old,
        "--pending-window-in-days",
        "7",
    ]);
    let o = m
        .kmsfs()
        .arg("mount")
        .arg(&m.backing)
        .arg(&m.mnt)
        .output()
        .unwrap();
    let err = fails(&o, EXIT_REFUSED, "PendingDeletion");
    assert!(
        err.contains(&format!("kmsfs kms cancel-key-deletion --key-id {old}")),
        "{err}"
    );
    assert!(err.contains("kmsfs set-default-key"), "{err}");
    assert!(!common::is_mounted(&m.mnt));
    // A key that is not enabled is refused as a default too.
    let o = m.run(&[
        "set-default-key",
        m.backing.to_str().unwrap(),
        "--key-id",
        &old,
    ]);
    fails(&o, EXIT_REFUSED, "PendingDeletion");
    let new = create_key(&m);
    let out = m.ok(&[
        "set-default-key",
        m.backing.to_str().unwrap(),
        "--key-id",
        &new,
    ]);
    assert!(out.contains(&format!("now encrypted under {new}")), "{out}");
    m.mount();
    std::fs::write(m.p("b"), b"b").unwrap();
    m.unmount();
    assert_eq!(key_of(&m, "a"), old);
    assert_eq!(key_of(&m, "b"), new);
}
