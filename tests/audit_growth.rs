//! One user cannot fill the keystore's disk through the audit trail (issue
//! 23, item 5), through a real shared mount (`-o allow_other`) and two real
//! users: kmsfs-b opening one file in a loop adds one record and one
//! aggregated record with the count, not one record per open; kmsfs-b
//! creating files past his rate gets a record of what was suppressed;
//! kmsfs-a's accesses meanwhile are all recorded; `kmsfs status` shows it;
//! the trail still verifies.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::thread::sleep;
use std::time::Duration;

use common::{Mount, MountGuard};
use serde_json::Value;

const OPENS: u64 = 3000;
const CREATES: u64 = 400;
const BURST: u64 = 300;

fn trail_bytes(m: &Mount) -> u64 {
    fs::read_dir(m.keystore.join("audit"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("trail-"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn records(m: &Mount) -> Vec<Value> {
    m.ok(&["--output", "json", "audit", "show"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn uid_is(r: &Value, uid: u32) -> bool {
    r["userIdentity"]["uid"].as_u64() == Some(u64::from(uid))
}

fn path_is(r: &Value, p: &str) -> bool {
    r["additionalEventData"]["path"].as_str() == Some(p)
}

/// Accesses a record stands for: itself, or the repeats it aggregates.
fn accesses(r: &Value) -> u64 {
    r["additionalEventData"]["aggregated"]["repeats"]
        .as_u64()
        .unwrap_or(1)
}

#[test]
fn one_user_in_a_loop_grows_the_trail_boundedly_and_the_other_is_still_recorded() {
    let Some(users) = common::test_users("trailgrowth") else {
        return;
    };
    let Some(mut m) = Mount::with_args("trailgrowth", &["-o", "allow_other"]) else {
        return;
    };
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.p("shared")).unwrap();
    fs::set_permissions(m.p("shared"), fs::Permissions::from_mode(0o2777)).unwrap();
    // Again, with a small burst so that a test can pass it.
    m.unmount();
    let o = m
        .kmsfs()
        .env("KMSFS_AUDIT_BURST", BURST.to_string())
        .env("KMSFS_AUDIT_RATE", "1")
        .arg("mount")
        .arg(&m.backing)
        .arg(&m.mnt)
        .args(["-o", "allow_other", "--log-file"])
        .arg(&m.log)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::describe(&o));
    let _guard = MountGuard(m.mnt.clone());
    let (a, b) = (&users.a, &users.b);
    let dir = m.p("shared");
    let o = b.sh(&dir, "printf b > b.txt");
    assert!(o.status.success(), "{}", common::describe(&o));
    let o = a.sh(&dir, "printf 1 > a1.txt && printf 2 > a2.txt");
    assert!(o.status.success(), "{}", common::describe(&o));
    sleep(Duration::from_millis(1500));
    let before = trail_bytes(&m);

    // B opens his one file in a loop (the shell opens it, no process per open).
    let o = b.sh(
        &dir,
        &format!("i=0; while [ $i -lt {OPENS} ]; do : < b.txt || exit 1; i=$((i+1)); done"),
    );
    assert!(o.status.success(), "{}", common::describe(&o));
    // A's opens meanwhile.
    let o = a.sh(&dir, "cat a1.txt a2.txt a1.txt a2.txt > /dev/null");
    assert!(o.status.success(), "{}", common::describe(&o));
    sleep(Duration::from_millis(1500));
    let grown = trail_bytes(&m) - before;
    println!("{OPENS} opens by one user: the trail grew by {grown} bytes");
    assert!(
        grown < 16 << 10,
        "{OPENS} opens grew the trail by {grown} bytes"
    );

    // B creates more files than his burst allows.
    let o = b.sh(
        &dir,
        &format!("i=0; while [ $i -lt {CREATES} ]; do : > f$i || exit 1; i=$((i+1)); done"),
    );
    assert!(o.status.success(), "{}", common::describe(&o));
    let status: Value =
        serde_json::from_str(&m.ok(&["--output", "json", "status", m.mnt.to_str().unwrap()]))
            .unwrap();
    let t = &status["Mounts"][0]["AuditTrail"];
    assert!(t["RepeatsAggregated"].as_u64().unwrap() >= OPENS - 1, "{t}");
    assert!(t["RecordsSuppressed"].as_u64().unwrap() > 0, "{t}");
    assert_eq!(t["OverCap"], false);
    assert_eq!(t["SignedWith"], "Ed25519");

    // Unmounting writes what is still folded.
    m.ok(&["unmount", m.mnt.to_str().unwrap()]);
    let all = records(&m);
    let b_opens: Vec<&Value> = all
        .iter()
        .filter(|r| uid_is(r, b.uid) && r["eventName"] == "Decrypt" && path_is(r, "shared/b.txt"))
        .collect();
    assert!(b_opens.len() <= 3, "{} records for B's loop", b_opens.len());
    // Every open is counted. The trail counts the OPEN requests the daemon
    // served, which can be more than the shell's opens (the kernel adds its
    // own, e.g. for the write-back of B's first write): 3,028 seen here on a
    // quiet machine, 3,350 under a load of 17. Where the excess under load
    // comes from is not traced yet; no open may be missing.
    let counted = b_opens.iter().map(|r| accesses(r)).sum::<u64>();
    assert!(
        (OPENS..2 * OPENS).contains(&counted),
        "{counted} opens counted"
    );
    // Every one of A's opens is there.
    for f in ["shared/a1.txt", "shared/a2.txt"] {
        let n: u64 = all
            .iter()
            .filter(|r| uid_is(r, a.uid) && r["eventName"] == "Decrypt" && path_is(r, f))
            .map(accesses)
            .sum();
        assert!(n >= 2, "A's opens of {f}: {n}");
    }
    // B's creates: written up to his rate, the rest counted.
    let written = all
        .iter()
        .filter(|r| {
            uid_is(r, b.uid)
                && r["eventName"] == "GenerateDataKey"
                && r["additionalEventData"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("shared/f"))
        })
        .count() as u64;
    let suppressed: u64 = all
        .iter()
        .filter(|r| uid_is(r, b.uid) && r["eventName"] == "AuditRecordsSuppressed")
        .map(|r| {
            r["additionalEventData"]["events"]["GenerateDataKey"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(
        written < CREATES && suppressed > 0,
        "{written} written, {suppressed} suppressed"
    );
    assert_eq!(written + suppressed, CREATES);
    assert!(m.ok(&["audit", "verify"]).contains("verifies"));
}
