//! `kmsfs passwd`: the keystore sealed under a new passphrase, or switched
//! between the root key file and a passphrase; what was encrypted before
//! still decrypts, the old secret opens nothing (neither generation), a
//! short passphrase is refused unless forced, and a keystore in use by a
//! mount is refused.

mod common;

use common::{Ks, Mount, b64, fails};

#[test]
fn passwd_switches_and_changes_the_root_key() {
    let ks = Ks::new();
    let key = ks.create_key();
    let blob = ks.encrypt(&key, b"kept across passwd", "");
    let np = ks.file("np");
    std::fs::write(&np, "short\n").unwrap();
    let o = ks.run(&["passwd", "--new-passphrase-file", np.to_str().unwrap()]);
    fails(&o, 2, "at least 12");
    assert!(ks.path.join("root.key").exists(), "nothing changed");

    // Root key file -> passphrase: root.key goes.
    std::fs::write(&np, "correct horse battery staple\n").unwrap();
    ks.ok(&["passwd", "--new-passphrase-file", np.to_str().unwrap()]);
    assert!(!ks.path.join("root.key").exists());
    let o = ks.run(&["kms", "list-keys"]);
    assert!(!o.status.success(), "a passphrase is needed now");
    let with = |p: &std::path::Path, args: &[&str]| {
        let mut a = vec!["--passphrase-file", p.to_str().unwrap()];
        a.extend_from_slice(args);
        ks.run(&a)
    };
    let o = with(
        &np,
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &blob,
            "--output",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b64(v["Plaintext"].as_str().unwrap()), b"kept across passwd");

    // Passphrase -> another passphrase; the old one opens neither generation.
    let np2 = ks.file("np2");
    std::fs::write(&np2, "a different long passphrase").unwrap();
    let o = with(
        &np,
        &["passwd", "--new-passphrase-file", np2.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fails(&with(&np, &["kms", "list-keys"]), 6, "wrong passphrase");
    for generation in ["keystore.kms", "keystore.prev"] {
        let only = ks.file(&format!("only-{generation}"));
        std::fs::create_dir(&only).unwrap();
        std::fs::copy(ks.path.join(generation), only.join("keystore.kms")).unwrap();
        let o = common::kmsfs()
            .arg("--keystore")
            .arg(&only)
            .args([
                "--passphrase-file",
                np.to_str().unwrap(),
                "kms",
                "list-keys",
            ])
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "the old passphrase opened {generation}"
        );
    }
    let short = ks.file("short");
    std::fs::write(&short, "tiny").unwrap();
    let o = with(
        &np2,
        &[
            "passwd",
            "--force",
            "--new-passphrase-file",
            short.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "--force accepts a short one");

    // Passphrase -> root key file.
    let o = with(&short, &["passwd", "--to-root-key-file"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ks.path.join("root.key").exists());
    let out = ks.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blob,
        "--output",
        "json",
    ]);
    assert!(out.contains("Plaintext"));
    fails(
        &ks.run(&["passwd", "--to-root-key-file"]),
        2,
        "root key file already",
    );
}

#[test]
fn passwd_refuses_a_keystore_a_mount_uses() {
    let Some(m) = Mount::new("passwd_busy") else {
        return;
    };
    std::fs::write(m.p("f"), b"x").unwrap();
    let np = m.tmp.path().join("np");
    std::fs::write(&np, "correct horse battery staple").unwrap();
    let o = m.run(&["passwd", "--new-passphrase-file", np.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("in use by the mount at"), "{err}");
    assert!(m.keystore.join("root.key").exists());
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"x");
}
