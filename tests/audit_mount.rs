//! Key policies and the audit trail through a real shared mount (issue 9):
//! `-o allow_other`, two real unprivileged users (kmsfs-a, kmsfs-b in group
//! kmsfs-g) run through setpriv. A file under a key only A may use stays
//! closed to B even at mode 0666, and B's refusal is in the trail with B's
//! uid, process and path; a group Allow lets the group in; a group Deny holds
//! for a member whichever group is primary (the mount reads supplementary
//! groups from /proc); every open that needs the key is one Decrypt record,
//! cache hits included.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Mount, TestUser, TestUsers};
use serde_json::Value;

/// A group the test gives a user's process explicitly (setpriv --groups).
const DENY_GROUP: &str = "kmsfs-d";
/// The overflow group id (nogroup): a primary group in no policy.
const NOGROUP: u32 = 65534;

fn gid_of(group: &str) -> u32 {
    let o = common::command("getent")
        .args(["group", group])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no group {group}"))
}

/// Runs `script` with `sh -c` as `u` with primary group `gid` and exactly
/// the supplementary groups `groups`, in `dir`.
fn sh_with_groups(u: &TestUser, gid: u32, groups: &[u32], dir: &Path, script: &str) -> Output {
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    common::command("setpriv")
        .arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={gid}"))
        .arg(format!("--groups={}", list.join(",")))
        .args(["--", "sh", "-c", script])
        .current_dir(dir)
        .env("HOME", "/")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .output()
        .unwrap()
}

/// A key with `policy` (created with the lockout check bypassed: root, who
/// administers it from the command line, is not named), and a mount with
/// allow_other whose new files are under it, with a shared directory 2777.
fn setup(test: &str, policy: &dyn Fn(&TestUsers) -> String) -> Option<(Mount, TestUsers, String)> {
    let users = common::test_users(test)?;
    let mut m = Mount::with_args(test, &["-o", "allow_other"])?;
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let p = m.tmp.path().join("policy.json");
    fs::write(&p, policy(&users)).unwrap();
    let created = m.ok(&[
        "--output",
        "json",
        "kms",
        "create-key",
        "--policy",
        &format!("file://{}", p.display()),
        "--bypass-policy-lockout-safety-check",
    ]);
    let key: Value = serde_json::from_str(&created).unwrap();
    let key = key["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    m.set_args(&["-o", "allow_other", "--key-id", &key]);
    m.remount();
    fs::create_dir(m.p("shared")).unwrap();
    fs::set_permissions(m.p("shared"), fs::Permissions::from_mode(0o2777)).unwrap();
    Some((m, users, key))
}

/// The trail's Decrypt records matching `want`, waiting for the mount's
/// background writer (it writes at least every second) up to 20 s.
fn wait_for(m: &Mount, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    wait_for_event(m, "Decrypt", want)
}

/// `wait_for` for another event.
fn wait_for_event(m: &Mount, event: &str, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let out = m.ok(&["--output", "json", "audit", "show", "--event", event]);
        let found: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| want(r))
            .collect();
        if !found.is_empty() || t0.elapsed() > Duration::from_secs(20) {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_file_under_a_key_only_a_may_use_stays_closed_to_b_and_the_trail_says_who() {
    let policy = |u: &TestUsers| {
        format!(
            r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"kmsfs":"user:{}"}},"Action":"kms:*"}}]}}"#,
            u.a.name
        )
    };
    let Some((mut m, users, key)) = setup("auditonly", &policy) else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    let o = a.sh(
        &m.p("shared"),
        "printf secret-of-a > a.txt && chmod 666 a.txt",
    );
    assert!(o.status.success(), "{}", common::describe(&o));
    // B may open the file as far as its mode says, but not use the key.
    let o = b.sh(&m.p("shared"), "cat a.txt");
    assert!(
        !o.status.success(),
        "B read A's file: {}",
        common::describe(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        common::describe(&o)
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("secret"));
    // A reads twice: the second open is served from the mount's cache.
    for _ in 0..2 {
        let o = a.sh(&m.p("shared"), "cat a.txt");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "secret-of-a",
            "{}",
            common::describe(&o)
        );
    }

    let refusals = wait_for(&m, |r| r["userIdentity"]["uid"] == b.uid);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let r = &refusals[0];
    assert_eq!(r["errorCode"], "AccessDeniedException");
    assert_eq!(r["userIdentity"]["userName"], b.name);
    assert_eq!(r["userIdentity"]["source"], "mount");
    assert_eq!(r["userIdentity"]["processName"], "cat");
    assert!(
        r["userIdentity"]["executable"]
            .as_str()
            .unwrap()
            .ends_with("/cat"),
        "{r}"
    );
    assert!(r["userIdentity"]["pid"].as_u64().unwrap() > 1);
    assert_eq!(r["additionalEventData"]["path"], "shared/a.txt", "{r}");
    assert_eq!(r["additionalEventData"]["cacheHit"], false);
    assert!(
        r["resources"][0]["ARN"]
            .as_str()
            .unwrap()
            .ends_with(&format!("key/{key}"))
    );

    // Every open by A that needed the key is in the trail: the first
    // unwrapped it (after the create), the second was a cache hit, folded
    // into an aggregated record written when its window closes (here: at
    // unmount; docs/AUDIT.md, "Growth").
    m.unmount();
    let by_a = wait_for(&m, |r| {
        r["userIdentity"]["uid"] == a.uid && r["additionalEventData"]["cacheHit"] == true
    });
    assert!(!by_a.is_empty(), "no cache-hit record for A");
    assert!(by_a.iter().all(
        |r| r["additionalEventData"]["path"] == "shared/a.txt" && r.get("errorCode").is_none()
    ));
    // A's create: a GenerateDataKey naming the file and A's shell.
    let created = wait_for_event(&m, "GenerateDataKey", |r| {
        r["additionalEventData"]["path"] == "shared/a.txt"
    });
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["userIdentity"]["uid"], a.uid);
    assert_eq!(created[0]["userIdentity"]["processName"], "sh");
    // Refusals by user, from the table.
    let table = m.ok(&["audit", "show", "--refused", "--user", b.name]);
    assert!(
        table.contains("shared/a.txt") && table.contains("cat["),
        "{table}"
    );
    assert!(m.ok(&["audit", "verify"]).contains("verifies"));
}

#[test]
fn a_group_allow_and_a_group_deny_that_holds_whichever_group_is_primary() {
    // kmsfs-d: a group no user is a member of in /etc/group; B's processes
    // get it through setpriv --groups, as newgrp or sg would give it.
    let o = common::command("groupadd")
        .args(["-f", DENY_GROUP])
        .output();
    if !o.is_ok_and(|o| o.status.success()) {
        if common::tools_required() {
            panic!("groupadd {DENY_GROUP} failed");
        }
        return;
    }
    let policy = |u: &TestUsers| {
        format!(
            r#"{{"Statement":[
            {{"Effect":"Allow","Principal":{{"kmsfs":"group:{}"}},"Action":"kms:*"}},
            {{"Effect":"Deny","Principal":{{"kmsfs":"group:{DENY_GROUP}"}},"Action":"kms:Decrypt"}}]}}"#,
            u.group
        )
    };
    let Some((m, users, _key)) = setup("auditgroup", &policy) else {
        return;
    };
    let (a, b, g) = (&users.a, &users.b, users.gid);
    let d = gid_of(DENY_GROUP);
    let dir = m.p("shared");
    // A, in the group, makes a file under the key: the group Allow.
    let o = a.sh(&dir, "printf group-data > g.txt && chmod 666 g.txt");
    assert!(o.status.success(), "{}", common::describe(&o));
    // A and B read it (group members).
    for u in [a, b] {
        let o = u.sh(&dir, "cat g.txt");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "group-data",
            "{}: {}",
            u.name,
            common::describe(&o)
        );
    }
    // A process of A whose primary group is another (nogroup), with
    // kmsfs-g only as a supplementary group, is still in the group.
    let o = sh_with_groups(a, NOGROUP, &[g], &dir, "cat g.txt");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "group-data",
        "{}",
        common::describe(&o)
    );
    // B with kmsfs-d as a supplementary group and kmsfs-g primary (the
    // kernel's FUSE request names only kmsfs-g): refused.
    let o = sh_with_groups(b, g, &[g, d], &dir, "cat g.txt");
    assert!(
        !o.status.success(),
        "the Deny did not hold: {}",
        common::describe(&o)
    );
    // B switched primary group to kmsfs-d: refused too.
    let o = sh_with_groups(b, d, &[g, d], &dir, "cat g.txt");
    assert!(
        !o.status.success(),
        "the Deny did not hold: {}",
        common::describe(&o)
    );
    // B without kmsfs-d reads again (its earlier unwrap was cached for
    // those groups only).
    let o = b.sh(&dir, "cat g.txt");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "group-data",
        "{}",
        common::describe(&o)
    );

    let refused = wait_for(&m, |r| {
        r["userIdentity"]["uid"] == b.uid && r.get("errorCode").is_some()
    });
    let t0 = Instant::now();
    let mut refused = refused;
    while refused.len() < 2 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(300));
        refused = wait_for(&m, |r| {
            r["userIdentity"]["uid"] == b.uid && r.get("errorCode").is_some()
        });
    }
    assert_eq!(refused.len(), 2, "{refused:?}");
    for r in &refused {
        let groups: Vec<u64> = r["userIdentity"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert!(groups.contains(&u64::from(d)), "{r}");
        assert_eq!(r["additionalEventData"]["path"], "shared/g.txt");
    }
    assert_eq!(refused[0]["userIdentity"]["gid"], g);
    assert_eq!(refused[1]["userIdentity"]["gid"], d);
}

/// The mount fails open when the trail cannot be written: opens keep
/// working, the daemon's log says so loudly, and the records it kept are
/// written once the trail can be written again (docs/AUDIT.md).
#[test]
fn the_mount_keeps_serving_and_logs_loudly_when_the_trail_cannot_be_written() {
    let Some(mut m) = Mount::new("auditfull") else {
        return;
    };
    fs::write(m.p("f.txt"), b"still readable").unwrap();
    let dir = m.keystore.join("audit");
    // The mount command's own records (DescribeKey of the mount's key) are
    // on disk; make the current trail file unwritable (a directory in its
    // place) and let the background writer fail on what comes next.
    assert!(dir.exists());
    std::thread::sleep(Duration::from_millis(1500));
    let current = {
        let mut v: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".jsonl"))
            .collect();
        v.sort();
        v.pop().unwrap()
    };
    let kept = m.tmp.path().join("kept.jsonl");
    fs::rename(&current, &kept).unwrap();
    fs::create_dir(&current).unwrap();
    for _ in 0..3 {
        assert_eq!(fs::read(m.p("f.txt")).unwrap(), b"still readable");
    }
    let t0 = Instant::now();
    while !m.log_text().contains("AUDIT TRAIL NOT WRITTEN") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "nothing logged: {}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    fs::remove_dir(&current).unwrap();
    fs::rename(&kept, &current).unwrap();
    // The records kept meanwhile arrive (the repeated opens of one file as
    // one record and an aggregated one, written at unmount at the latest),
    // and the trail verifies.
    let t0 = Instant::now();
    loop {
        let out = m.ok(&["--output", "json", "audit", "show", "--event", "Decrypt"]);
        if out.lines().any(|l| l.contains("f.txt")) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no record: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    m.unmount();
    let out = m.ok(&["--output", "json", "audit", "show", "--event", "Decrypt"]);
    let opens: u64 = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["additionalEventData"]["path"] == "f.txt")
        .map(|r| {
            r["additionalEventData"]["aggregated"]["repeats"]
                .as_u64()
                .unwrap_or(1)
        })
        .sum();
    assert!(opens >= 3, "{opens} opens recorded: {out}");
    assert!(m.ok(&["audit", "verify"]).contains("verifies"));
}

/// A user's keystore used by root (the mount daemon, `sudo kmsfs kms ...`):
/// what root adds to the trail belongs to the keystore's owner, who can read
/// it and write to it next, and nobody else can read it.
#[test]
fn root_leaves_a_users_trail_owned_by_that_user() {
    use std::os::unix::fs::MetadataExt;
    let Some(users) = common::test_users("audituser") else {
        return;
    };
    let a = &users.a;
    let tmp = common::tempdir("audituser");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The keystore directory is A's; the directories above it are root's
    // (root refuses a keystore whose path another user can change).
    let home = tmp.path().to_path_buf();
    let ks = home.join("ks");
    fs::create_dir(&ks).unwrap();
    std::os::unix::fs::chown(&ks, Some(a.uid), Some(a.gid)).unwrap();
    fs::set_permissions(&ks, fs::Permissions::from_mode(0o700)).unwrap();
    let ks_arg = ks.to_str().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_kmsfs");
    let as_a = |args: &str| a.sh(&home, &format!("{bin} --keystore {ks_arg} {args}"));
    let o = as_a("init");
    assert!(o.status.success(), "{}", common::describe(&o));
    // Root creates a key in A's keystore: the trail's first files.
    let o = common::kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .args(["kms", "create-key"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::describe(&o));
    for e in fs::read_dir(ks.join("audit")).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (a.uid, a.gid), "{}", p.display());
        assert_eq!(m.mode() & 0o077, 0, "{} is {:o}", p.display(), m.mode());
    }
    let m = fs::metadata(ks.join("audit")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (a.uid, 0o700));
    // A reads and extends it; the chain holds across the two writers.
    let o = as_a("kms list-keys");
    assert!(o.status.success(), "{}", common::describe(&o));
    let o = as_a("--output json audit show");
    assert!(o.status.success(), "{}", common::describe(&o));
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        shown.contains("\"CreateKey\"") && shown.contains("\"ListKeys\""),
        "{shown}"
    );
    assert!(shown.contains("\"uid\":0") && shown.contains(&format!("\"uid\":{}", a.uid)));
    let o = as_a("audit verify");
    assert!(o.status.success(), "{}", common::describe(&o));
    // B cannot read it.
    let o = users.b.sh(
        tmp.path(),
        &format!("cat {}/audit/trail-000001.jsonl", ks_arg),
    );
    assert!(!o.status.success());
}
