//! mount(8) and fstab: scripts/fstab_test.sh mounts kmsfs from an fstab line
//! (a temporary fstab, `mount -T`) through the mount.fuse.kmsfs helper, with
//! the options fstab lines carry, remounts it read-only and read-write with
//! `mount -o remount` (no second daemon), unmounts with umount(8) and mounts
//! again.

mod common;

use common::{BIN, Mount, fuse_available, require_root, require_tool, test_users};

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

/// The mount's source is whatever its maker wrote (`-o fsname=`, an fstab
/// line, or a user's own FUSE mount through fusermount3): when it named the
/// daemon ("kmsfs:PID:BACKING"), a forged one sent `kmsfs remount` to
/// another mount's daemon. The daemon is now found by the mount's device
/// among this user's own daemons, and another user's lookup never reaches
/// root's.
#[test]
fn a_source_naming_another_daemon_does_not_reach_it() {
    let Some(first) = Mount::new("source-first") else {
        return;
    };
    let pid1 = first.daemon_pid().expect("the first mount's daemon");
    let forged = format!("fsname=kmsfs:{pid1}:{}", first.backing.display());
    let Some(second) = Mount::with_args("source-forged", &["-o", &forged]) else {
        return;
    };
    let pid2 = second.daemon_pid().expect("the second mount's daemon");
    assert_ne!(pid1, pid2, "the forged source was believed");
    let mnt2 = second.mnt.to_str().unwrap();
    second.ok(&["remount", mnt2, "--read-only"]);
    assert!(
        std::fs::write(second.p("refused.txt"), b"x").is_err(),
        "the forged mount was not made read-only"
    );
    std::fs::write(first.p("still.txt"), b"x").expect("the first mount went read-only");
    let v: serde_json::Value =
        serde_json::from_str(&second.ok(&["status", mnt2, "--output", "json"])).unwrap();
    assert_eq!(v["Mounts"][0]["Pid"], pid2, "{v}");
    assert_eq!(
        v["Mounts"][0]["Backing"],
        second.backing.display().to_string(),
        "{v}"
    );

    // Another user, with a runtime directory of his own: root's daemon is
    // not his to ask, whatever the mount says.
    let Some(users) = test_users("source-other-user") else {
        return;
    };
    let run = users
        .a
        .sh(std::path::Path::new("/"), "d=$(mktemp -d) && echo $d");
    let runtime = String::from_utf8_lossy(&run.stdout).trim().to_string();
    let mnt1 = first.mnt.display().to_string();
    for args in [
        format!("status {mnt1} --output json"),
        format!("remount {mnt1} --read-only"),
    ] {
        let o = users.a.sh(
            std::path::Path::new("/"),
            &format!("XDG_RUNTIME_DIR={runtime} {BIN} {args}"),
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !out.contains("KeyId"),
            "user a reached root's daemon: {out}"
        );
        if args.starts_with("remount") {
            assert!(!o.status.success(), "user a remounted root's mount");
        }
    }
    std::fs::write(first.p("still2.txt"), b"x").expect("user a made the mount read-only");
    let _ = std::fs::remove_dir_all(&runtime);
}
