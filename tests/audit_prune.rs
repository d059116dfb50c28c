//! Audit trail retention through the real binary (issue 20 item 10):
//! `audit prune --before TIME [--archive FILE]` removes old records behind
//! a signed checkpoint; the pruned trail and its archives verify, alone and
//! as one chain; `verify` names (exit 5) records edited after the
//! checkpoint, an edited or forged checkpoint, records removed without
//! one, an archive cut short and a trail rolled back; only root or the
//! keystore's owner may prune; a crash mid-prune leaves the old or the new
//! trail, and either verifies.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{EXIT_CORRUPT, EXIT_REFUSED, Ks, fails};
use serde_json::Value;

/// Runs at a given (test) time.
fn at(ks: &Ks, now: &str, args: &[&str]) -> std::process::Output {
    ks.run_env(args, &[("KMSFS_TEST_NOW", now)])
}

fn ok_at(ks: &Ks, now: &str, args: &[&str]) -> String {
    common::ok(at(ks, now, args), args)
}

/// A keystore with a key made, and described three times, on each of
/// 2030-01-01, -02 and -03.
fn three_days() -> Ks {
    let ks = Ks::new();
    for d in ["2030-01-01", "2030-01-02", "2030-01-03"] {
        let now = format!("{d}T00:00:00Z");
        let out = ok_at(&ks, &now, &["--output", "json", "kms", "create-key"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let id = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        for _ in 0..3 {
            ok_at(&ks, &now, &["kms", "describe-key", "--key-id", &id]);
        }
    }
    ks
}

const DAY4: &str = "2030-01-04T00:00:00Z";

fn prune(ks: &Ks, before: &str, archive: Option<&Path>) -> Value {
    let mut args = vec!["--output", "json", "audit", "prune", "--before", before];
    let a = archive.map(|a| a.to_str().unwrap().to_string());
    if let Some(a) = &a {
        args.extend_from_slice(&["--archive", a]);
    }
    serde_json::from_str(&ok_at(ks, DAY4, &args)).unwrap()
}

fn verify(ks: &Ks, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--output", "json", "audit", "verify"];
    args.extend_from_slice(extra);
    at(ks, DAY4, &args)
}

fn verify_ok(ks: &Ks, extra: &[&str]) -> Value {
    let o = verify(ks, extra);
    assert!(o.status.success(), "{}", common::describe(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `verify` fails with exit 5 and names `needle`.
fn verify_fails(ks: &Ks, extra: &[&str], needle: &str) -> String {
    let o = verify(ks, extra);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(EXIT_CORRUPT),
        "{}",
        common::describe(&o)
    );
    assert!(out.contains(needle), "{needle:?} not in {out}");
    out
}

fn trail_file(ks: &Ks) -> PathBuf {
    ks.path.join("audit").join("trail-000001.jsonl")
}

fn lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(p: &Path, l: &[String]) {
    fs::write(p, l.join("\n") + "\n").unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir(to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o700)).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_pruned_trail_and_its_archives_verify_alone_and_as_one_chain() {
    let ks = three_days();
    let before = verify_ok(&ks, &[]);
    let total = before["Records"].as_u64().unwrap();
    // 2d before day 4: day 1's records go (relative time).
    let a1 = ks.file("a1.jsonl");
    let p = prune(&ks, "2d", Some(&a1));
    assert_eq!(p["Pruned"], true, "{p}");
    assert_eq!(p["PrunedFrom"], 1);
    assert_eq!(p["FirstEventTime"], "2030-01-01T00:00:00Z");
    assert!(p["LastEventTime"].as_str().unwrap() < "2030-01-02");
    let through = p["PrunedThrough"].as_u64().unwrap();
    assert_eq!(p["PrunedRecords"].as_u64().unwrap(), through);
    assert!(p["BytesAfter"].as_u64() < p["BytesBefore"].as_u64());
    // The trail starts at the checkpoint and verifies from there.
    let first: Value = serde_json::from_str(&lines(&trail_file(&ks))[0]).unwrap();
    assert_eq!(first["eventType"], "kmsfsCheckpoint");
    assert_eq!(first["checkpoint"]["prunedThrough"].as_u64(), Some(through));
    let v = verify_ok(&ks, &[]);
    assert_eq!(
        v["StartsAtCheckpoint"]["PrunedThrough"].as_u64(),
        Some(through)
    );
    assert_eq!(v["CheckpointsVerified"], 1);
    // `audit show` shows the checkpoint and the prune's own record.
    let shown = ok_at(&ks, DAY4, &["audit", "show"]);
    assert!(shown.contains("Checkpoint") && shown.contains(&format!("records 1-{through}")));
    assert!(shown.contains("PruneAuditTrail"), "{shown}");
    assert!(
        !shown.contains("2030-01-01T00:00:00Z  CreateKey"),
        "{shown}"
    );
    // The archive alone, with the keystore and with the public key only.
    let a1s = a1.to_str().unwrap();
    let v = verify_ok(&ks, &["--trail", a1s]);
    assert_eq!(v["Records"].as_u64(), Some(through));
    assert_eq!(v["SignedThrough"].as_u64(), Some(through));
    let pk = ks.file("trail.pub");
    fs::write(&pk, ok_at(&ks, DAY4, &["audit", "public-key"])).unwrap();
    let pks = pk.to_str().unwrap();
    verify_ok(&ks, &["--trail", a1s, "--public-key", pks]);
    // Archive and trail: one chain, every record of before and since.
    let v = verify_ok(&ks, &["--archive", a1s]);
    assert!(v["Records"].as_u64().unwrap() > total, "{v}");
    assert!(v["StartsAtCheckpoint"].is_null());
    // A second prune (day 2); its archive starts with the first checkpoint.
    let a2 = ks.file("a2.jsonl");
    let p2 = prune(&ks, "2030-01-03T00:00:00Z", Some(&a2));
    assert_eq!(p2["PrunedFrom"].as_u64(), Some(through + 1));
    let a2s = a2.to_str().unwrap();
    verify_ok(&ks, &["--trail", a2s]);
    let v = verify_ok(&ks, &["--archive", a1s, "--archive", a2s]);
    assert!(v["Records"].as_u64().unwrap() > total);
    // Out of order, or one missing between: named.
    verify_fails(
        &ks,
        &["--archive", a2s, "--archive", a1s],
        "stands for records",
    );
    verify_fails(&ks, &["--archive", a1s], "stands for records");
    // Nothing older than the first record left: nothing is pruned.
    let p3 = prune(&ks, "2029-01-01", None);
    assert_eq!(p3["Pruned"], false);
    // An archive is never overwritten.
    let o = at(
        &ks,
        DAY4,
        &["audit", "prune", "--before", "1d", "--archive", a1s],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    verify_ok(&ks, &["--archive", a1s, "--archive", a2s]);
}

#[test]
fn tampering_with_a_pruned_trail_is_named() {
    let ks = three_days();
    let pre_prune = ks.file("pre-prune");
    copy_dir(&ks.path.join("audit"), &pre_prune);
    let a1 = ks.file("a1.jsonl");
    prune(&ks, "2030-01-02", Some(&a1));
    let audit = ks.path.join("audit");
    let saved = ks.file("saved");
    copy_dir(&audit, &saved);
    let p = trail_file(&ks);
    let orig = lines(&p);
    let restore = || copy_dir(&saved, &audit);

    // A record after the checkpoint edited: the next line names it.
    let mut l = orig.clone();
    l[2] = l[2].replace("\"eventVersion\":\"1.08\"", "\"eventVersion\":\"1.09\"");
    write_lines(&p, &l);
    verify_fails(&ks, &[], "\"line\":4,\"problem\":\"does not chain");
    restore();

    // The checkpoint edited (its count): its signature fails.
    let mut l = orig.clone();
    let cp: Value = serde_json::from_str(&l[0]).unwrap();
    let n = cp["checkpoint"]["prunedRecords"].as_u64().unwrap();
    l[0] = l[0].replace(
        &format!("\"prunedRecords\":{n}"),
        &format!("\"prunedRecords\":{}", n - 1),
    );
    write_lines(&p, &l);
    verify_fails(&ks, &[], "checkpoint's signature does not verify");
    restore();

    // A checkpoint forged: another keystore's, standing for more records.
    let other = three_days();
    prune(&other, "2030-01-03", None);
    let mut l = orig.clone();
    l[0] = lines(&trail_file(&other))[0].clone();
    write_lines(&p, &l);
    verify_fails(&ks, &[], "not this one");
    restore();

    // Records removed without a checkpoint (the checkpoint and two records).
    write_lines(&p, &orig[3..]);
    verify_fails(&ks, &[], "without a checkpoint");
    restore();

    // The archive cut short: its end is gone.
    let a = lines(&a1);
    let cut = ks.file("cut.jsonl");
    write_lines(&cut, &a[..a.len() - 2]);
    verify_fails(
        &ks,
        &["--trail", cut.to_str().unwrap()],
        "does not end with",
    );

    // Rolled back: the trail as it was before the prune, or as the first
    // prune left it after a second one: the keystore recorded more.
    restore();
    verify_ok(&ks, &[]);
    copy_dir(&pre_prune, &audit);
    verify_fails(&ks, &[], "the keystore recorded at its last change");
    restore();
    prune(&ks, "2030-01-03", None);
    copy_dir(&saved, &audit);
    verify_fails(&ks, &[], "the keystore recorded at its last change");
    // And no key is used on a trail that ends before what the keystore recorded.
    let o = at(&ks, DAY4, &["kms", "list-keys"]);
    assert!(!o.status.success(), "{}", common::describe(&o));
}

#[test]
fn only_root_or_the_keystores_owner_may_prune() {
    let Some(users) = common::test_users("auditprune") else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    let tmp = common::tempdir("auditprune");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path().to_path_buf();
    let ks = home.join("ks");
    fs::create_dir(&ks).unwrap();
    std::os::unix::fs::chown(&ks, Some(a.uid), Some(a.gid)).unwrap();
    fs::set_permissions(&ks, fs::Permissions::from_mode(0o700)).unwrap();
    let bin = env!("CARGO_BIN_EXE_kmsfs");
    let ks_arg = ks.to_str().unwrap().to_string();
    let run = |u: &common::TestUser, args: &str| {
        u.sh(&home, &format!("{bin} --keystore {ks_arg} {args}"))
    };
    let o = run(a, "init");
    assert!(o.status.success(), "{}", common::describe(&o));
    let o = run(a, "kms create-key");
    assert!(o.status.success(), "{}", common::describe(&o));
    let trail_before = fs::read(ks.join("audit/trail-000001.jsonl")).unwrap();
    // B is refused, clearly, and nothing changes.
    let o = run(b, "audit prune --before 1s");
    fails(
        &o,
        EXIT_REFUSED,
        "only root or the keystore's owner (kmsfs-a)",
    );
    assert_eq!(
        fs::read(ks.join("audit/trail-000001.jsonl")).unwrap(),
        trail_before
    );
    // Root prunes A's trail: what it leaves is still A's, and A goes on.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = common::kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .args(["--output", "json", "audit", "prune", "--before", "0s"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::describe(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Pruned"], true, "{v}");
    for e in fs::read_dir(ks.join("audit")).unwrap() {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(e.unwrap().path()).unwrap();
        assert_eq!(m.uid(), a.uid);
    }
    for args in ["kms list-keys", "audit verify", "audit prune --before 0s"] {
        let o = run(a, args);
        assert!(o.status.success(), "{args}: {}", common::describe(&o));
    }
}

#[test]
fn a_crash_mid_prune_leaves_the_old_or_the_new_trail() {
    let ks = three_days();
    let env = |point: &str| {
        ks.run_env(
            &["audit", "prune", "--before", "2030-01-02"],
            &[
                ("KMSFS_TEST_NOW", DAY4),
                ("KMSFS_TEST_AUDIT_PRUNE_CRASH", point),
            ],
        )
    };
    let before = lines(&trail_file(&ks));
    // Killed before the exchange: the old trail, whole; the new one beside.
    let o = env("before-swap");
    assert!(!o.status.success(), "{}", common::describe(&o));
    assert!(ks.path.join("audit.prune").is_dir());
    assert_eq!(lines(&trail_file(&ks)), before);
    let v = verify_ok(&ks, &[]);
    assert!(v["StartsAtCheckpoint"].is_null());
    ok_at(&ks, DAY4, &["kms", "list-keys"]);
    // Killed after it: the new trail, starting at its checkpoint; the old
    // one left beside it under audit.prune. Keys work, the trail verifies.
    let o = env("after-swap");
    assert!(!o.status.success(), "{}", common::describe(&o));
    let v = verify_ok(&ks, &[]);
    assert!(v["StartsAtCheckpoint"]["PrunedThrough"].is_u64(), "{v}");
    ok_at(&ks, DAY4, &["kms", "list-keys"]);
    verify_ok(&ks, &[]);
    // The next prune clears what the crash left.
    prune(&ks, "2030-01-03", None);
    assert!(!ks.path.join("audit.prune").exists());
    verify_ok(&ks, &[]);
}

#[test]
fn the_console_shows_a_pruned_trail_and_its_checkpoint() {
    let ks = three_days();
    prune(&ks, "2030-01-02", None);
    let c = common::Console::start(&ks, "127.0.0.1:0");
    let s = c.session();
    let t = c.get(&s, "/api/trail?limit=200").json();
    let rows = t["Rows"].as_array().unwrap();
    let cp = rows
        .iter()
        .find(|r| r["Event"] == "Checkpoint")
        .unwrap_or_else(|| panic!("no checkpoint row in {t}"));
    assert!(
        cp["Message"].as_str().unwrap().contains("were pruned"),
        "{cp}"
    );
    assert!(rows.iter().any(|r| r["Event"] == "PruneAuditTrail"), "{t}");
    let v = c.post(&s, "/api/trail/verify", "{}").json();
    assert_eq!(v["Valid"], true, "{v}");
    assert!(v["StartsAtCheckpoint"].is_string(), "{v}");
}
