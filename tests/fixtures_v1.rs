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

fn fixture_v2(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/blocks_v2")
        .join(name)
}

#[test]
fn block_format_2_sealed_file_unseals_to_its_plaintext() {
    let tmp = common::tempdir("v2-sealed");
    let ks = keystore_copy(tmp.path());
    let out = tmp.path().join("plain.out");
    let sealed = fixture_v2("sealed.kmsfs");
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
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["FormatVersion"], 2);
    assert_eq!(v["PlaintextSize"], 12388);
    assert_eq!(v["BackingSize"], 13572);
    assert_eq!(v["ValidBackingSize"], true);
}

/// The header format version of backing file `p` (bytes 6..8).
fn header_version(p: &Path) -> u16 {
    let b = std::fs::read(p).unwrap();
    u16::from_be_bytes([b[6], b[7]])
}

fn mount(ks: &Path, backing: &Path, mnt: &Path) {
    let o = kmsfs(
        ks,
        &["mount", backing.to_str().unwrap(), mnt.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn unmount(ks: &Path, mnt: &Path) {
    let o = kmsfs(ks, &["unmount", mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A backing directory from before block format 2 (its marker names no
/// block format, its files are version 1) keeps reading and writing in
/// version 1, new files included; a version-2 file copied into it is
/// refused (its size would be computed with the wrong layout), and the
/// other way round in a new tree.
#[test]
fn a_tree_from_before_block_format_2_stays_version_1() {
    if !common::fuse_available("v1-tree") {
        return;
    }
    let tmp = common::tempdir("v1-tree");
    let ks = keystore_copy(tmp.path());
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let _guard = common::MountGuard(mnt.clone());
    let key_id = std::fs::read_to_string(fixture("key-id.txt")).unwrap();
    let key_id = key_id.trim();
    // A first mount of the empty directory writes today's marker: format 2.
    let o = kmsfs(
        &ks,
        &[
            "mount",
            backing.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "--key-id",
            key_id,
            // the v1 file is copied in by its plain name
            "-o",
            "plaintextnames",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(mnt.join("new-tree"), b"v2").unwrap();
    std::fs::copy(fixture("sealed.kmsfs"), backing.join("v1-file")).unwrap();
    let e = std::fs::read(mnt.join("v1-file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "v1 file in a v2 tree");
    unmount(&ks, &mnt);
    assert_eq!(header_version(&backing.join("new-tree")), 2);
    let marker_path = backing.join(".kmsfs.json");
    let mut marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker_path).unwrap()).unwrap();
    assert_eq!(marker["BlockFormat"], 2);

    // The same directory as an older build left it: no block format in the
    // marker, version-1 files only, and no choices recorded in the
    // keystore's `backings/` (which would refuse the changed marker).
    marker.as_object_mut().unwrap().remove("BlockFormat");
    std::fs::remove_dir_all(ks.join("backings")).unwrap();
    std::fs::write(&marker_path, serde_json::to_vec(&marker).unwrap()).unwrap();
    std::fs::remove_file(backing.join("new-tree")).unwrap();
    let plain = std::fs::read(fixture("plain.bin")).unwrap();
    mount(&ks, &backing, &mnt);
    assert_eq!(
        std::fs::metadata(mnt.join("v1-file")).unwrap().len(),
        plain.len() as u64
    );
    assert!(std::fs::read(mnt.join("v1-file")).unwrap() == plain);
    // Rewritten in the middle and extended: still version 1.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("v1-file"))
            .unwrap();
        f.write_all_at(b"rewritten", 5000).unwrap();
        f.write_all_at(b"tail", plain.len() as u64 + 10_000)
            .unwrap();
    }
    std::fs::write(mnt.join("made-in-v1-tree"), vec![7u8; 10_000]).unwrap();
    std::fs::copy(fixture_v2("sealed.kmsfs"), backing.join("v2-file")).unwrap();
    let e = std::fs::read(mnt.join("v2-file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "v2 file in a v1 tree");
    unmount(&ks, &mnt);
    assert_eq!(header_version(&backing.join("v1-file")), 1);
    assert_eq!(header_version(&backing.join("made-in-v1-tree")), 1);
    let text = std::fs::read_to_string(&marker_path).unwrap();
    assert!(!text.contains("BlockFormat"), "{text}");
    std::fs::remove_file(backing.join("v2-file")).unwrap();

    mount(&ks, &backing, &mnt);
    let mut expect = plain.clone();
    expect[5000..5009].copy_from_slice(b"rewritten");
    expect.resize(plain.len() + 10_000, 0);
    expect.extend_from_slice(b"tail");
    assert!(std::fs::read(mnt.join("v1-file")).unwrap() == expect);
    assert_eq!(
        std::fs::read(mnt.join("made-in-v1-tree")).unwrap(),
        vec![7u8; 10_000]
    );
    unmount(&ks, &mnt);
    // Unseal reads either format without a mount.
    let out = tmp.path().join("out");
    let o = kmsfs(
        &ks,
        &[
            "unseal",
            backing.join("v1-file").to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == expect);
}
