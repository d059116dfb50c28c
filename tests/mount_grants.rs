//! Grants through a real shared mount (issue 19, item 2): `-o allow_other`,
//! two real unprivileged users (kmsfs-a, kmsfs-b in group kmsfs-g) run
//! through setpriv. The mount attributes each open to the calling process's
//! user, and the key service weighs the key policy, then the key's grants,
//! for that user (docs/MOUNT.md, "Hardening"). B, whom the policy does not
//! name, can neither read A's file nor create one; a grant for B (Decrypt,
//! GenerateDataKey) lets B do both, and the trail names the grant; once the
//! grant is retired (or revoked), B's next open is refused.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Mount, TestUser, TestUsers};
use serde_json::Value;

/// A key whose policy allows A only (created with the lockout check
/// bypassed: root administers it from the command line, where a policy's
/// refusal of an administration is recorded, not enforced), and a mount
/// with allow_other whose new files are under it, with a shared directory.
fn setup(test: &str) -> Option<(Mount, TestUsers, String)> {
    let users = common::test_users(test)?;
    let mut m = Mount::with_args(test, &["-o", "allow_other"])?;
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let policy = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"kmsfs":"user:{}"}},"Action":"kms:*"}}]}}"#,
        users.a.name
    );
    let created = m.ok(&[
        "--output",
        "json",
        "kms",
        "create-key",
        "--policy",
        &policy,
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

/// `cat NAME` as `u` in the shared directory.
fn cat(m: &Mount, u: &TestUser, name: &str) -> Output {
    u.sh(&m.p("shared"), &format!("cat {name}"))
}

/// `cat NAME` as `u` until it succeeds (`ok`) or fails, for at most the
/// 1 s within which the mount sees another process's keystore change
/// (docs/KEYSTORE.md; it checks every 20 ms): returns the last outcome.
fn cat_until(m: &Mount, u: &TestUser, name: &str, ok: bool) -> Output {
    let t0 = Instant::now();
    loop {
        let o = cat(m, u, name);
        if o.status.success() == ok || t0.elapsed() > Duration::from_secs(1) {
            return o;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn refused(o: &Output, what: &str) {
    assert!(
        !o.status.success(),
        "{what} worked: {}",
        common::describe(o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{what}: {}",
        common::describe(o)
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("secret"),
        "{what}: {}",
        common::describe(o)
    );
}

/// Creates a grant for `u` on `key` from the command line (root); returns
/// (grant id, grant token).
fn grant(m: &Mount, key: &str, u: &TestUser, name: &str) -> (String, String) {
    let out = m.ok(&[
        "--output",
        "json",
        "kms",
        "create-grant",
        "--key-id",
        key,
        "--grantee-principal",
        &format!("user:{}", u.name),
        "--operations",
        "Decrypt",
        "GenerateDataKey",
        "--name",
        name,
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    (
        v["GrantId"].as_str().unwrap().to_string(),
        v["GrantToken"].as_str().unwrap().to_string(),
    )
}

/// The trail's records of `event` matching `want`, waiting for the mount's
/// background writer (it writes at least every second) up to 20 s.
fn wait_for(m: &Mount, event: &str, want: impl Fn(&Value) -> bool) -> Vec<Value> {
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
fn a_grant_opens_the_mount_to_b_until_it_is_retired_or_revoked() {
    let Some((m, users, key)) = setup("mgrants") else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    let o = a.sh(
        &m.p("shared"),
        "printf secret-of-a > a.txt && chmod 666 a.txt",
    );
    assert!(o.status.success(), "{}", common::describe(&o));

    // No grant: the mode lets B open the file, the key does not.
    refused(&cat(&m, b, "a.txt"), "B's read without a grant");
    refused(
        &b.sh(&m.p("shared"), "printf mine > b.txt"),
        "B's create without a grant",
    );
    assert!(
        !m.b("shared/b.txt").exists(),
        "a refused create left a file"
    );

    // A grant for B: B reads A's file and creates its own.
    let (g1, _) = grant(&m, &key, b, "b-on-mount");
    let o = cat_until(&m, b, "a.txt", true);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "secret-of-a",
        "{}",
        common::describe(&o)
    );
    let o = b.sh(&m.p("shared"), "printf mine > b.txt && cat b.txt");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "mine",
        "{}",
        common::describe(&o)
    );
    let listed = m.ok(&["--output", "json", "kms", "list-grants", "--key-id", &key]);
    assert!(listed.contains(&g1), "{listed}");

    // The trail names the grant on B's opens and B's create.
    let by_grant = |r: &Value| r["userIdentity"]["uid"] == b.uid && r.get("errorCode").is_none();
    let opens = wait_for(&m, "Decrypt", by_grant);
    assert!(!opens.is_empty(), "no Decrypt record of B");
    assert!(
        opens
            .iter()
            .all(|r| r["additionalEventData"]["grantId"] == g1.as_str()),
        "{opens:?}"
    );
    let made = wait_for(&m, "GenerateDataKey", by_grant);
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["additionalEventData"]["grantId"], g1.as_str());
    assert_eq!(made[0]["additionalEventData"]["path"], "shared/b.txt");
    // A's own opens were the policy's doing: no grant named.
    let by_a = wait_for(&m, "GenerateDataKey", |r| r["userIdentity"]["uid"] == a.uid);
    assert!(
        by_a.iter()
            .all(|r| r["additionalEventData"].get("grantId").is_none()),
        "{by_a:?}"
    );

    // Retired: B's next open and create are refused (an open file's
    // cached key is not used for another open once the keystore changed).
    m.ok(&["kms", "retire-grant", "--key-id", &key, "--grant-id", &g1]);
    refused(
        &cat_until(&m, b, "a.txt", false),
        "B's read after RetireGrant",
    );
    refused(
        &cat(&m, b, "b.txt"),
        "B's read of its own file after RetireGrant",
    );
    refused(
        &b.sh(&m.p("shared"), "printf again > c.txt"),
        "B's create after RetireGrant",
    );
    // A is untouched.
    let o = cat(&m, a, "b.txt");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "mine");

    // Another grant, revoked: the same.
    let (g2, _) = grant(&m, &key, b, "b-again");
    assert_ne!(g1, g2);
    let o = cat_until(&m, b, "a.txt", true);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "secret-of-a");
    m.ok(&["kms", "revoke-grant", "--key-id", &key, "--grant-id", &g2]);
    refused(
        &cat_until(&m, b, "a.txt", false),
        "B's read after RevokeGrant",
    );
    let gone = m.ok(&["--output", "json", "kms", "list-grants", "--key-id", &key]);
    let gone: Value = serde_json::from_str(&gone).unwrap();
    assert_eq!(gone["Grants"], serde_json::json!([]), "{gone}");

    // The grant changes are in the trail with their grant ids.
    for (event, id) in [("RetireGrant", &g1), ("RevokeGrant", &g2)] {
        let r = wait_for(&m, event, |r| r.get("errorCode").is_none());
        assert_eq!(r.len(), 1, "{event}: {r:?}");
        assert!(r[0].to_string().contains(id.as_str()), "{event}: {}", r[0]);
    }
    // B's refusals are there too (repeated ones folded into one record
    // per window: docs/AUDIT.md, "Growth").
    let refusals = wait_for(&m, "Decrypt", |r| {
        r["userIdentity"]["uid"] == b.uid && r["errorCode"] == "AccessDeniedException"
    });
    assert!(!refusals.is_empty(), "no refusal of B in the trail");
    assert!(m.ok(&["audit", "verify"]).contains("verifies"));
}
