//! The trail against someone who can write it but not read the keystore
//! (issue 15, items 6 and 7), through the real binary: deleting the whole
//! trail (or cutting it) no longer verifies and stops every key use, since
//! the sealed keystore records where the trail stood at its last change; a
//! copy of the trail verifies with the Ed25519 public key alone, on a
//! machine without the keystore; a trail of the HMAC era (a fixture) still
//! verifies, and is continued with Ed25519.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{EXIT_CORRUPT, Ks, kmsfs};

const EXIT_IO: i32 = 7;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `kmsfs audit verify ARGS` with no keystore at all (a machine that only
/// has the copy and the public key).
fn verify_without_keystore(args: &[&str]) -> Output {
    kmsfs()
        .args([
            "--keystore",
            "/nonexistent/kmsfs-keystore",
            "audit",
            "verify",
        ])
        .args(args)
        .output()
        .expect("run kmsfs")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn trail_files(ks: &Ks) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(ks.path.join("audit"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("trail-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_deleted_trail_fails_verify_and_stops_key_use_until_restored() {
    let ks = Ks::new();
    let id = ks.create_key();
    ks.encrypt(&id, b"secret", "");
    ks.ok(&["kms", "disable-key", "--key-id", &id]);
    ks.ok(&["kms", "enable-key", "--key-id", &id]);
    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
    let kept = ks.file("audit-backup");
    copy_dir(&ks.path.join("audit"), &kept);

    // The attacker (who can write the trail, not read the keystore)
    // deletes it whole.
    fs::remove_dir_all(ks.path.join("audit")).unwrap();
    let o = ks.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(EXIT_CORRUPT), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("the keystore recorded at its last change that the trail reached"),
        "{}",
        stdout(&o)
    );

    // Using a key fails closed, with a clear error, and starts no new trail.
    let pt = ks.file("p.bin");
    fs::write(&pt, b"more").unwrap();
    let pt = format!("fileb://{}", pt.display());
    for args in [
        vec!["kms", "encrypt", "--key-id", &id, "--plaintext", &pt],
        vec!["kms", "disable-key", "--key-id", &id],
        vec!["kms", "create-key"],
    ] {
        let o = ks.run(&args);
        assert_eq!(o.status.code(), Some(EXIT_IO), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is not there: the keystore recorded that it reached record"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(trail_files(&ks).is_empty(), "{:?}", trail_files(&ks));
    }

    // Cutting the trail's last records (HEAD rewritten to match) is the
    // same: short of what the keystore recorded.
    copy_dir(&kept, &ks.path.join("audit"));
    let f = ks.path.join("audit/trail-000001.jsonl");
    let text = fs::read_to_string(&f).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    fs::write(&f, lines[..lines.len() - 3].join("\n") + "\n").unwrap();
    fs::remove_file(ks.path.join("audit/HEAD")).unwrap();
    let o = ks.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(EXIT_CORRUPT));
    assert!(stdout(&o).contains("reached record"), "{}", stdout(&o));
    let o = ks.run(&["kms", "encrypt", "--key-id", &id, "--plaintext", &pt]);
    assert_eq!(o.status.code(), Some(EXIT_IO), "{}", stderr(&o));

    // Restored from the backup: keys work again and the trail verifies.
    fs::remove_dir_all(ks.path.join("audit")).unwrap();
    copy_dir(&kept, &ks.path.join("audit"));
    let m = ks.json(&["kms", "describe-key", "--key-id", &id]);
    assert_eq!(
        m["KeyMetadata"]["KeyState"], "Enabled",
        "the refused change was not made"
    );
    ks.encrypt(&id, b"again", "");
    ks.ok(&["kms", "disable-key", "--key-id", &id]);
    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
}

#[test]
fn a_copy_verifies_with_the_public_key_alone() {
    let ks = Ks::new();
    let id = ks.create_key();
    for i in 0..5 {
        ks.encrypt(&id, format!("n{i}").as_bytes(), "");
    }
    ks.ok(&["kms", "disable-key", "--key-id", &id]);
    let pem = ks.ok(&["audit", "public-key"]);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    let pk = ks.file("trail.pub");
    fs::write(&pk, &pem).unwrap();
    if let Some(openssl) = common::which("openssl") {
        // A standard SubjectPublicKeyInfo: openssl reads it as ED25519.
        let o = std::process::Command::new(openssl)
            .args(["pkey", "-pubin", "-noout", "-text", "-in"])
            .arg(&pk)
            .output()
            .unwrap();
        assert!(stdout(&o).contains("ED25519"), "{}", stderr(&o));
    }
    let json = ks.json(&["audit", "public-key"]);
    assert_eq!(json["PublicKey"], pem.as_str());

    // A copy, elsewhere, checked without the keystore.
    let copy = ks.file("copy");
    copy_dir(&ks.path.join("audit"), &copy);
    let pk_arg = pk.to_str().unwrap();
    let copy_arg = copy.to_str().unwrap();
    let o = verify_without_keystore(&["--trail", copy_arg, "--public-key", pk_arg]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("the audit trail verifies"));

    // An edited record, re-chained by someone without the private key, or
    // HEAD re-signed with another key: refused.
    let f = copy.join("trail-000001.jsonl");
    let orig = fs::read_to_string(&f).unwrap();
    fs::write(&f, orig.replacen("\"Encrypt\"", "\"Decrypt\"", 1)).unwrap();
    let o = verify_without_keystore(&["--trail", copy_arg, "--public-key", pk_arg]);
    assert_eq!(o.status.code(), Some(EXIT_CORRUPT), "{}", stdout(&o));
    assert!(stdout(&o).contains("trail-000001.jsonl:"), "{}", stdout(&o));
    fs::write(&f, &orig).unwrap();
    let other = Ks::new();
    other.create_key();
    let other_pk = ks.file("other.pub");
    fs::write(&other_pk, other.ok(&["audit", "public-key"])).unwrap();
    let o = verify_without_keystore(&[
        "--trail",
        copy_arg,
        "--public-key",
        other_pk.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(EXIT_CORRUPT), "{}", stdout(&o));
    assert!(stdout(&o).contains("names signing key"), "{}", stdout(&o));
    // The keystore directory itself may be named too (its audit/ is used).
    let o =
        verify_without_keystore(&["--trail", ks.path.to_str().unwrap(), "--public-key", pk_arg]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = verify_without_keystore(&["--trail", copy_arg, "--public-key", copy_arg]);
    assert!(!o.status.success());
}

#[test]
fn an_hmac_trail_of_before_still_verifies_and_goes_on_with_ed25519() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit_hmac_v1");
    let ks = Ks::empty();
    copy_dir(&fixture.join("ks"), &ks.path);
    let key_id = fs::read_to_string(fixture.join("key-id.txt")).unwrap();
    let key_id = key_id.trim();
    let out = ks.ok(&["audit", "verify"]);
    assert!(
        out.contains("9 record(s) in 1 file(s); 4 signed digest(s) verified"),
        "{out}"
    );

    // The first change gives the keystore its Ed25519 key; what follows is
    // signed with it, and the copy then verifies with the public key alone
    // (the HMAC digests before are noted, covered by the signed HEAD).
    let pem = ks.ok(&["audit", "public-key"]);
    let pk = ks.file("trail.pub");
    fs::write(&pk, &pem).unwrap();
    ks.encrypt(key_id, b"later", "");
    ks.ok(&["kms", "disable-key", "--key-id", key_id]);
    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
    let trail = ks.path.join("audit");
    let o = verify_without_keystore(&[
        "--trail",
        trail.to_str().unwrap(),
        "--public-key",
        pk.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("not checked"), "{}", stdout(&o));
    let text = fs::read_to_string(trail.join("trail-000001.jsonl")).unwrap();
    assert!(text.contains("\"digestAlgorithm\":\"HMAC-SHA256\""));
    assert!(text.contains("\"digestAlgorithm\":\"Ed25519\""));
}

#[test]
fn a_mount_refuses_opens_while_its_trail_is_deleted_cached_keys_included() {
    let Some(m) = common::Mount::new("trailgone") else {
        return;
    };
    fs::write(m.p("f.txt"), b"kept").unwrap();
    // Opened once: its data key is now in the mount's cache.
    assert_eq!(fs::read(m.p("f.txt")).unwrap(), b"kept");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let audit = m.keystore.join("audit");
    let kept = m.tmp.path().join("audit-kept");
    copy_dir(&audit, &kept);
    fs::remove_dir_all(&audit).unwrap();
    let err = fs::read(m.p("f.txt")).unwrap_err();
    println!("open with the trail gone: {err}");
    assert!(m.log_text().contains("is not there"), "{}", m.log_text());
    assert!(!audit.join("trail-000001.jsonl").exists());
    // Restored: the file opens again.
    let _ = fs::remove_dir_all(&audit);
    copy_dir(&kept, &audit);
    assert_eq!(fs::read(m.p("f.txt")).unwrap(), b"kept");
}
