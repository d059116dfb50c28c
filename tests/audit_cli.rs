//! The audit trail through the real binary (issue 9): every key operation,
//! allowed or refused, administrative or cryptographic, is one record of the
//! CloudTrail shape with no secret in it; `audit show` filters; `audit
//! verify` passes an untouched trail and names file and line of an edited,
//! deleted, inserted, swapped or cut record with a non-zero exit; a change
//! fails closed when the trail cannot be written; rotation keeps the chain;
//! the lockout safety check of put-key-policy and create-key --policy.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{EXIT_CORRUPT, EXIT_USAGE, Ks, b64};
use serde_json::Value;

fn records(ks: &Ks, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["--output", "json", "audit", "show"];
    a.extend_from_slice(args);
    ks.ok(&a)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn trail_file(ks: &Ks) -> std::path::PathBuf {
    ks.path.join("audit").join("trail-000001.jsonl")
}

#[test]
fn every_operation_is_recorded_without_secrets() {
    let ks = Ks::new();
    let id = ks.create_key();
    let blob = ks.encrypt(&id, b"PLAINTEXT-NEVER-LOGGED", "purpose=audit");
    let out = ks.json(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blob,
        "--encryption-context",
        "purpose=audit",
    ]);
    assert_eq!(
        b64(out["Plaintext"].as_str().unwrap()),
        b"PLAINTEXT-NEVER-LOGGED"
    );
    let dk = ks.json(&[
        "kms",
        "generate-data-key",
        "--key-id",
        &id,
        "--key-spec",
        "AES_256",
    ]);
    let dk_plain = dk["Plaintext"].as_str().unwrap().to_string();
    ks.ok(&["kms", "disable-key", "--key-id", &id]);
    let refused = ks.run(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blob,
        "--encryption-context",
        "purpose=audit",
    ]);
    assert!(!refused.status.success());
    ks.ok(&["kms", "enable-key", "--key-id", &id]);
    ks.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/audited",
        "--target-key-id",
        &id,
    ]);
    ks.ok(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &id,
        "--pending-window-in-days",
        "7",
    ]);
    ks.ok(&["kms", "cancel-key-deletion", "--key-id", &id]);

    let all = records(&ks, &[]);
    let names: Vec<&str> = all
        .iter()
        .map(|r| r["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "CreateKey",
            "Encrypt",
            "Decrypt",
            "GenerateDataKey",
            "DisableKey",
            "Decrypt",
            "EnableKey",
            "CreateAlias",
            "ScheduleKeyDeletion",
            "CancelKeyDeletion"
        ]
    );
    let me = my_uid();
    for r in &all {
        assert_eq!(r["eventSource"], "kmsfs");
        assert_eq!(r["eventVersion"], "1.08");
        assert_eq!(r["userIdentity"]["uid"], me);
        assert_eq!(r["userIdentity"]["source"], "cli");
        assert_eq!(r["userIdentity"]["processName"], "kmsfs");
        assert!(r["eventTime"].as_str().unwrap().ends_with('Z'));
        assert!(
            r["resources"][0]["ARN"]
                .as_str()
                .unwrap()
                .ends_with(&format!("key/{id}")),
            "{r}"
        );
    }
    let decrypt = &all[2];
    assert_eq!(
        decrypt["requestParameters"]["encryptionContext"]["purpose"],
        "audit"
    );
    assert_eq!(decrypt["resources"][0]["keyMaterialId"], "1");
    let refusal = &all[5];
    assert_eq!(refusal["errorCode"], "DisabledException");
    assert!(refusal["errorMessage"].as_str().unwrap().contains(&id));
    // Neither the plaintext nor the data key is anywhere in the trail.
    let text = fs::read_to_string(trail_file(&ks)).unwrap();
    assert!(!text.contains("PLAINTEXT-NEVER-LOGGED"));
    assert!(!text.contains(&dk_plain));
    assert!(!text.contains(&blob), "ciphertext blobs stay out too");
    // Owner-only, in an owner-only directory.
    for p in [
        ks.path.join("audit"),
        trail_file(&ks),
        ks.path.join("audit/HEAD"),
    ] {
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
    }

    // Filters.
    let refused = records(&ks, &["--refused"]);
    assert_eq!(refused.len(), 1);
    assert_eq!(records(&ks, &["--event", "decrypt"]).len(), 2);
    // An alias means the key it names now: every record about that key.
    assert_eq!(
        records(&ks, &["--key-id", "alias/audited"]).len(),
        all.len()
    );
    assert_eq!(records(&ks, &["--key-id", &id]).len(), all.len());
    assert_eq!(records(&ks, &["--user", &me.to_string()]).len(), all.len());
    assert_eq!(records(&ks, &["--user", "nobody-kmsfs"]).len(), 0);
    assert_eq!(
        records(&ks, &["--since", "2001-01-01", "--until", "2999-01-01"]).len(),
        all.len()
    );
    assert_eq!(records(&ks, &["--until", "2001-01-01"]).len(), 0);
    // Relative times: every record is from the last hour, none from before.
    assert_eq!(records(&ks, &["--since", "1h"]).len(), all.len());
    assert_eq!(records(&ks, &["--until", "1h"]).len(), 0);
    assert_eq!(
        records(&ks, &["--since", "2d", "--until", "0s"]).len(),
        all.len()
    );
    let bad = ks.run(&["audit", "show", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(EXIT_USAGE));
    let table = ks.ok(&["audit", "show", "--refused"]);
    assert!(
        table.contains("DisabledException") && table.contains("Decrypt"),
        "{table}"
    );

    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
}

fn my_uid() -> u32 {
    common::euid().expect("uid")
}

/// Runs `audit verify`, which must fail naming `file:line`.
fn verify_fails_at(ks: &Ks, at: &str) {
    let o = ks.run(&["audit", "verify"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(EXIT_CORRUPT), "{out}");
    let first = out.lines().next().unwrap_or("");
    assert!(first.starts_with(at), "expected {at}, got: {out}");
}

#[test]
fn verify_names_the_place_of_every_kind_of_tampering() {
    let ks = Ks::new();
    let id = ks.create_key();
    for i in 0..6 {
        ks.encrypt(&id, format!("x{i}").as_bytes(), "");
    }
    ks.ok(&["kms", "disable-key", "--key-id", &id]);
    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
    let f = trail_file(&ks);
    let orig: Vec<String> = fs::read_to_string(&f)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let put = |l: &[String]| fs::write(&f, l.join("\n") + "\n").unwrap();
    let name = "trail-000001.jsonl";
    // The first Encrypt record (0-based line e; signed digests come before).
    let e = orig.iter().position(|x| x.contains("\"Encrypt\"")).unwrap();
    assert!(e >= 1);
    // Edited (line e+1): line e+2 no longer chains to it.
    let mut l = orig.clone();
    l[e] = l[e].replace("\"Encrypt\"", "\"Decrypt\"");
    put(&l);
    verify_fails_at(&ks, &format!("{name}:{}:", e + 2));
    // Deleted (line e+1).
    let mut l = orig.clone();
    l.remove(e);
    put(&l);
    verify_fails_at(&ks, &format!("{name}:{}:", e + 1));
    // Inserted (a copy of the line before it).
    let mut l = orig.clone();
    l.insert(e, orig[e - 1].clone());
    put(&l);
    verify_fails_at(&ks, &format!("{name}:{}:", e + 1));
    // Swapped (lines e+2 and e+3).
    let mut l = orig.clone();
    l.swap(e + 1, e + 2);
    put(&l);
    verify_fails_at(&ks, &format!("{name}:{}:", e + 2));
    // Truncated: the last two records cut.
    put(&orig[..orig.len() - 2]);
    verify_fails_at(&ks, &format!("{name}:{}:", orig.len() - 2));
    // Untouched again: verifies.
    put(&orig);
    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
}

#[test]
fn rotation_carries_the_chain_and_verify_spans_files() {
    let ks = Ks::new();
    let id = ks.create_key();
    for i in 0..8 {
        let o = ks.run_env(
            &["kms", "encrypt", "--key-id", &id, "--plaintext", "eHl6"],
            &[("KMSFS_TEST_AUDIT_MAX_BYTES", "1500")],
        );
        assert!(o.status.success(), "{i}");
    }
    let files: Vec<_> = fs::read_dir(ks.path.join("audit"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("trail-"))
        .collect();
    assert!(files.len() >= 3, "{} files", files.len());
    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
    assert_eq!(records(&ks, &["--event", "Encrypt"]).len(), 8);
    // The first record of file 2 chains to the last of file 1.
    fs::remove_file(ks.path.join("audit/trail-000001.jsonl")).unwrap();
    verify_fails_at(&ks, "trail-000001.jsonl: missing");
}

#[test]
fn a_change_fails_closed_when_the_trail_cannot_be_written() {
    let ks = Ks::new();
    let id = ks.create_key();
    // The current trail file replaced by a directory: nothing can be
    // appended (root included).
    let f = trail_file(&ks);
    let kept = ks.file("kept.jsonl");
    fs::rename(&f, &kept).unwrap();
    fs::create_dir(&f).unwrap();
    let o = ks.run(&["kms", "disable-key", "--key-id", &id]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("audit trail"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The command line's cryptographic operations fail closed too.
    let o = ks.run(&["kms", "encrypt", "--key-id", &id, "--plaintext", "eHl6"]);
    assert!(!o.status.success());
    fs::remove_dir(&f).unwrap();
    fs::rename(&kept, &f).unwrap();
    // Nothing was changed, and the trail is whole.
    let m = ks.json(&["kms", "describe-key", "--key-id", &id]);
    assert_eq!(m["KeyMetadata"]["KeyState"], "Enabled");
    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
}

#[test]
fn lockout_safety_check_and_create_key_with_policy() {
    let ks = Ks::new();
    let me = my_uid();
    let other = me.wrapping_add(4242);
    let locks_out = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"kmsfs":"uid:{other}"}},"Action":"kms:*"}}]}}"#
    );
    let p = ks.file("p.json");
    fs::write(&p, &locks_out).unwrap();
    let file_arg = format!("file://{}", p.display());
    let o = ks.run(&["kms", "create-key", "--policy", &file_arg]);
    assert_eq!(o.status.code(), Some(EXIT_USAGE));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--bypass-policy-lockout-safety-check"));
    assert!(
        ks.json(&["kms", "list-keys"])["Keys"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let k = ks.json(&[
        "kms",
        "create-key",
        "--policy",
        &file_arg,
        "--bypass-policy-lockout-safety-check",
    ])["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = ks.json(&["kms", "get-key-policy", "--key-id", &k]);
    assert!(
        doc["Policy"]
            .as_str()
            .unwrap()
            .contains(&format!("uid:{other}"))
    );
    // The owner is refused the key's use ...
    let o = ks.run(&["kms", "encrypt", "--key-id", &k, "--plaintext", "eHl6"]);
    assert!(!o.status.success());
    // ... but from the command line a policy cannot stop key administration
    // by the keystore's owner: it is done, and recorded as not enforced.
    ks.ok(&["kms", "disable-key", "--key-id", &k]);
    let r = records(&ks, &["--event", "DisableKey"]);
    assert!(
        r[0]["additionalEventData"]["policyDecision"]
            .as_str()
            .unwrap()
            .contains("not enforced")
    );
    // put-key-policy: the same check.
    let k2 = ks.create_key();
    let o = ks.run(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &k2,
        "--policy",
        &locks_out,
    ]);
    assert_eq!(o.status.code(), Some(EXIT_USAGE));
    let allows_me = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"kmsfs":["uid:{me}","user:root"]}},"Action":"kms:*"}}]}}"#
    );
    ks.ok(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &k2,
        "--policy",
        &allows_me,
    ]);
    let put = records(&ks, &["--event", "PutKeyPolicy"]);
    assert_eq!(put.len(), 2);
    assert_eq!(put[0]["errorCode"], "MalformedPolicyDocumentException");
    assert!(put[1].get("errorCode").is_none());
}

#[test]
fn show_follow_prints_records_as_they_are_written() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::Duration;
    let ks = Ks::new();
    let id = ks.create_key();
    let mut child = common::kmsfs()
        .arg("--keystore")
        .arg(&ks.path)
        .args([
            "--output",
            "json",
            "audit",
            "show",
            "--follow",
            "--event",
            "DisableKey",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        let line = rx.recv_timeout(Duration::from_secs(30));
        serde_json::from_str::<Value>(&line.expect("a followed record").unwrap()).unwrap()
    };
    ks.ok(&["kms", "disable-key", "--key-id", &id]);
    let first = next();
    // Written after the first was printed: only following can show it.
    ks.ok(&["kms", "enable-key", "--key-id", &id]);
    ks.ok(&["kms", "disable-key", "--key-id", &id]);
    let second = next();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(first["eventName"], "DisableKey");
    assert_eq!(second["eventName"], "DisableKey");
    assert!(second["sequence"].as_u64() > first["sequence"].as_u64());
}

#[test]
fn what_the_keystore_does_when_a_date_is_reached_is_recorded() {
    let ks = Ks::new();
    let id = ks.create_key();
    let start = "2030-01-01T00:00:00Z";
    let later = "2030-01-09T00:00:00Z";
    let o = ks.run_env(
        &[
            "kms",
            "schedule-key-deletion",
            "--key-id",
            &id,
            "--pending-window-in-days",
            "7",
        ],
        &[("KMSFS_TEST_NOW", start)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Eight days on, the next use of the keystore deletes the key for good.
    let o = ks.run_env(&["kms", "list-keys"], &[("KMSFS_TEST_NOW", later)]);
    assert!(o.status.success());
    let deleted = records(&ks, &["--event", "DeleteKey"]);
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    let r = &deleted[0];
    assert!(r["resources"][0]["ARN"].as_str().unwrap().ends_with(&id));
    assert_eq!(r["additionalEventData"]["automatic"], true);
    assert_eq!(r["eventTime"], later);
    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
}

#[test]
fn show_by_alias_means_the_key_the_alias_names() {
    let ks = Ks::new();
    let a = ks.create_key();
    let b = ks.create_key();
    ks.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/team",
        "--target-key-id",
        &a,
    ]);
    ks.encrypt(&a, b"one", "");
    ks.encrypt(&b, b"two", "");
    // Encrypt by key id, shown by alias: the records name the key, not the alias.
    let by_alias = records(&ks, &["--key-id", "alias/team", "--event", "Encrypt"]);
    assert_eq!(by_alias.len(), 1, "{by_alias:?}");
    assert!(
        by_alias[0]["resources"][0]["ARN"]
            .as_str()
            .unwrap()
            .ends_with(&a)
    );
    // An alias the keystore does not know matches nothing rather than everything.
    assert!(records(&ks, &["--key-id", "alias/nobody", "--event", "Encrypt"]).is_empty());
}
