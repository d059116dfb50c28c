//! Version-1 artefacts made by an earlier build (tests/fixtures/v1: a keystore,
//! a sealed file and a ciphertext blob) must keep opening in every later build.

mod common;

use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v1")
        .join(name)
}

/// A private copy of the fixture keystore (git does not keep its 0600 modes,
/// and a test must not change the fixture).
fn keystore_copy(tmp: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp.join("keystore");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for f in ["keystore.kms", "keystore.prev", "root.key"] {
        std::fs::copy(fixture("keystore").join(f), dir.join(f)).unwrap();
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

fn kmsfs(keystore: &Path, args: &[&str]) -> std::process::Output {
    common::kmsfs()
        .arg("--keystore")
        .arg(keystore)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn v1_sealed_file_unseals_to_its_plaintext() {
    let tmp = common::tempdir("v1-sealed");
    let ks = keystore_copy(tmp.path());
    let out = tmp.path().join("plain.out");
    let sealed = fixture("sealed.kmsfs");
    let o = kmsfs(
        &ks,
        &["unseal", sealed.to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(out).unwrap(),
        std::fs::read(fixture("plain.bin")).unwrap()
    );

    let o = kmsfs(
        &ks,
        &["inspect", sealed.to_str().unwrap(), "--output", "json"],
    );
    assert!(o.status.success());
    let key_id = std::fs::read_to_string(fixture("key-id.txt")).unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains(key_id.trim()));
}

#[test]
fn v1_blob_decrypts_with_its_context_only() {
    let tmp = common::tempdir("v1-blob");
    let ks = keystore_copy(tmp.path());
    let blob = format!("fileb://{}", fixture("blob.bin").display());
    let o = kmsfs(
        &ks,
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &blob,
            "--encryption-context",
            "purpose=fixture",
            "--output",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    use base64::Engine;
    let plain = base64::engine::general_purpose::STANDARD
        .decode(v["Plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(plain, std::fs::read(fixture("small.txt")).unwrap());

    let o = kmsfs(&ks, &["kms", "decrypt", "--ciphertext-blob", &blob]);
    assert!(
        !o.status.success(),
        "decrypt without the context must be refused"
    );
}
