//! Format compatibility: keystores and blobs written by format version 1 (files
//! in tests/fixtures/kms_v1, made with the commands of this release) must stay
//! readable by every later kmsfs. Never regenerate these files; add new ones
//! for new versions.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kms_v1");

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
    // And it still takes writes.
    ks.create_key();
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
