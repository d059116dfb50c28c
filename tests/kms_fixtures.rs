//! Format compatibility: keystores and blobs written by format version 1 (files
//! in tests/fixtures/kms_v1) and version 2 (tests/fixtures/kms_v2: derived
//! one-time keys), each made with the commands of its release, must stay
//! readable by every later kmsfs. Never regenerate these files; add new ones
//! for new versions.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kms_v1");
const FIXTURES_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kms_v2");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// A temporary copy of a fixture keystore (commands may add a lock file).
fn copy_keystore(ks: &Ks, name: &str) {
    std::fs::create_dir_all(&ks.path).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ks.path.join(e.file_name())).unwrap();
    }
}

fn keys() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("keys.json")).unwrap()).unwrap()
}

fn blob(name: &str) -> String {
    format!("fileb://{}", fixture(name).display())
}

#[test]
fn root_key_file_keystore_v1_still_reads() {
    let ks = Ks::empty();
    copy_keystore(&ks, "keyfile");
    let before = snapshot(&ks.path);
    let k = keys();
    let id = |n: &str| k[n].as_str().unwrap().to_string();
    let listed = ks.json(&["kms", "list-keys"]);
    assert_eq!(listed["Keys"].as_array().unwrap().len(), 4);
    let state =
        |key: &str| ks.json(&["kms", "describe-key", "--key-id", key])["KeyMetadata"].clone();
    let main = state("alias/fixture");
    assert_eq!(main["KeyId"], id("main").as_str());
    assert_eq!(main["CurrentKeyMaterialVersion"], 2);
    assert_eq!(state(&id("disabled"))["KeyState"], "Disabled");
    let imported = state(&id("imported"));
    assert_eq!(
        (imported["Origin"].as_str(), imported["KeyState"].as_str()),
        (Some("EXTERNAL"), Some("Enabled"))
    );
    let policy = ks.json(&["kms", "get-key-policy", "--key-id", &id("policy")]);
    assert!(policy["Policy"].as_str().unwrap().contains("uid:4242"));

    for (name, ctx) in [
        ("blob_material_v1.bin", "file=f1,purpose=fixture"),
        ("blob_material_v2.bin", "purpose=fixture,file=f1"),
        ("blob_imported.bin", ""),
    ] {
        let b = blob(name);
        let mut args = vec!["kms", "decrypt", "--ciphertext-blob", b.as_str()];
        if !ctx.is_empty() {
            args.extend_from_slice(&["--encryption-context", ctx]);
        }
        assert_eq!(b64(&ks.ok(&args)), b"kmsfs fixture v1", "{name}");
    }
    let v2 = std::fs::read(fixture("blob_material_v2.bin")).unwrap();
    assert_eq!(
        (&v2[..5], &v2[37..41]),
        (&b"KMSb\x01"[..], &[0u8, 0, 0, 2][..])
    );
    // Reading changed nothing but the lock file's existence.
    let after: Vec<_> = snapshot(&ks.path)
        .into_iter()
        .filter(|(n, _)| n != "keystore.lock")
        .collect();
    assert_eq!(after, before);
    // And it still takes writes, which are version 2 from then on, and the
    // version-1 blobs still decrypt.
    ks.create_key();
    assert_eq!(&std::fs::read(ks.keystore_file()).unwrap()[8..10], &[0, 2]);
    let b = blob("blob_imported.bin");
    assert_eq!(
        b64(&ks.ok(&["kms", "decrypt", "--ciphertext-blob", b.as_str()])),
        b"kmsfs fixture v1"
    );
}

/// Version 2: keystore file sealed under keys derived per write, blobs
/// sealed under keys derived per blob (docs/KEYSTORE.md).
#[test]
fn keystore_and_blobs_v2_still_read() {
    let ks = Ks::empty();
    std::fs::create_dir_all(&ks.path).unwrap();
    let dir = Path::new(FIXTURES_V2);
    for e in std::fs::read_dir(dir.join("keyfile")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ks.path.join(e.file_name())).unwrap();
    }
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("keys.json")).unwrap()).unwrap();
    let file = std::fs::read(ks.keystore_file()).unwrap();
    assert_eq!(&file[..10], b"KMSFS-KS\x00\x02");
    let main =
        ks.json(&["kms", "describe-key", "--key-id", "alias/fixture"])["KeyMetadata"].clone();
    assert_eq!(main["KeyId"], keys["main"]);
    assert_eq!(main["CurrentKeyMaterialVersion"], 2);
    for (name, version) in [("blob_material_v1.bin", 1u8), ("blob_material_v2.bin", 2)] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        // Version 2, the material version, and a 32-byte salt before the ciphertext.
        assert_eq!(&bytes[..5], b"KMSb\x02", "{name}");
        assert_eq!(&bytes[37..41], &[0, 0, 0, version], "{name}");
        assert_eq!(bytes.len(), 89 + 16, "{name}");
        let b = format!("fileb://{}", dir.join(name).display());
        let args = [
            "kms",
            "decrypt",
            "--ciphertext-blob",
            b.as_str(),
            "--encryption-context",
            "file=f1,purpose=fixture",
        ];
        assert_eq!(b64(&ks.ok(&args)), b"kmsfs fixture v2", "{name}");
        let wrong = [
            &args[..4],
            &["--encryption-context", "file=f2,purpose=fixture"],
        ]
        .concat();
        let out = ks.run(&wrong);
        assert_ne!(out.status.code(), Some(0), "{name} under another context");
    }
}

#[test]
fn passphrase_keystore_v1_still_reads() {
    let ks = Ks::empty();
    copy_keystore(&ks, "passphrase");
    let b = blob("blob_passphrase.bin");
    let out = ks.run_env(
        &["kms", "decrypt", "--ciphertext-blob", &b],
        &[("KMSFS_PASSPHRASE", "fixture passphrase")],
    );
    assert_eq!(b64(&ok(out, &["decrypt"])), b"kmsfs fixture v1");
    let out = ks.run_env(&["kms", "list-keys"], &[("KMSFS_PASSPHRASE", "not it")]);
    fails(&out, EXIT_KEYSTORE, "wrong passphrase");
}
