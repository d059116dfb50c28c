//! Imported key material through the binary, wrapped the way AWS documents it:
//! `openssl pkeyutl` with RSA-OAEP-SHA-256 under the import public key (or the
//! library's own wrap helper when openssl is not installed, outside CI only).

mod common;

use common::*;

fn wrap(ks: &Ks, public_b64: &str, material: &[u8]) -> Vec<u8> {
    let public = b64(public_b64);
    let (pubf, keyf, outf) = (
        ks.file("pub.der"),
        ks.file("material.bin"),
        ks.file("wrapped.bin"),
    );
    std::fs::write(&pubf, &public).unwrap();
    std::fs::write(&keyf, material).unwrap();
    let Some(openssl) = which_openssl() else {
        return kmsfs::crypto::rsa_oaep_sha256_wrap(&public, material).unwrap();
    };
    let o = std::process::Command::new(openssl)
        .args(["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey"])
        .arg(&pubf)
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
            "-in",
        ])
        .arg(&keyf)
        .arg("-out")
        .arg(&outf)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl pkeyutl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(&outf).unwrap()
}

/// openssl, looked for once per test process (and said once when missing).
fn which_openssl() -> Option<std::path::PathBuf> {
    static FOUND: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| require_tool("import (wrapping with openssl)", "openssl"))
        .clone()
}

fn import(ks: &Ks, key: &str, material: &[u8], extra: &[&str]) -> std::process::Output {
    let p = ks.json(&[
        "kms",
        "get-parameters-for-import",
        "--key-id",
        key,
        "--wrapping-algorithm",
        "RSAES_OAEP_SHA_256",
        "--wrapping-key-spec",
        "RSA_2048",
    ]);
    let valid = p["ParametersValidTo"].as_str().unwrap_or_default();
    assert!(kmsfs::kms::clock::parse_rfc3339(valid).is_some(), "{p}");
    assert!(p["KeyId"].as_str().unwrap().starts_with("arn:"), "{p}");
    let wrapped = wrap(ks, p["PublicKey"].as_str().unwrap(), material);
    let wf = ks.file("wrapped-material.bin");
    std::fs::write(&wf, wrapped).unwrap();
    let w = format!("fileb://{}", wf.display());
    let token = p["ImportToken"].as_str().unwrap().to_string();
    let mut args = vec![
        "kms",
        "import-key-material",
        "--key-id",
        key,
        "--encrypted-key-material",
        &w,
        "--import-token",
        &token,
    ];
    args.extend_from_slice(extra);
    ks.run(&args)
}

#[test]
fn import_use_expire_and_reimport_the_same_material() {
    let ks = Ks::new();
    let v = ks.json(&[
        "kms",
        "create-key",
        "--origin",
        "EXTERNAL",
        "--description",
        "byok",
    ]);
    let m = &v["KeyMetadata"];
    assert_eq!(
        (m["Origin"].as_str(), m["KeyState"].as_str()),
        (Some("EXTERNAL"), Some("PendingImport"))
    );
    let key = m["KeyId"].as_str().unwrap().to_string();
    let out = ks.run(&["kms", "encrypt", "--key-id", &key, "--plaintext", "eA=="]);
    fails(&out, EXIT_REFUSED, "KMSInvalidStateException");

    let material = [0x5au8; 32];
    let valid_to = "2031-01-01T00:00:00Z";
    ok(
        import(
            &ks,
            &key,
            &material,
            &[
                "--expiration-model",
                "KEY_MATERIAL_EXPIRES",
                "--valid-to",
                valid_to,
            ],
        ),
        &["import"],
    );
    let d = ks.json(&["kms", "describe-key", "--key-id", &key]);
    assert_eq!(d["KeyMetadata"]["KeyState"], "Enabled");
    assert_eq!(d["KeyMetadata"]["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    assert_eq!(
        d["KeyMetadata"]["ValidTo"]
            .as_str()
            .and_then(kmsfs::kms::clock::parse_rfc3339),
        kmsfs::kms::clock::parse_rfc3339(valid_to)
    );
    let blob = ks.encrypt(&key, b"imported", "");
    assert_eq!(
        b64(&ok(ks.decrypt(&blob, "", &[]), &["decrypt"])),
        b"imported"
    );

    // After ValidTo the material is gone and the key waits for it again.
    let later = [("KMSFS_TEST_NOW", "2031-01-02T00:00:00Z")];
    fails(
        &ks.decrypt(&blob, "", &later),
        EXIT_REFUSED,
        "pending import",
    );
    fails(
        &ks.decrypt(&blob, "", &[]),
        EXIT_REFUSED,
        "KMSInvalidStateException",
    );
    // Other material is refused; the same material brings old ciphertexts back.
    let out = import(&ks, &key, &[0x5bu8; 32], &[]);
    fails(&out, EXIT_USAGE, "IncorrectKeyMaterial");
    ok(import(&ks, &key, &material, &[]), &["re-import"]);
    assert_eq!(
        b64(&ok(ks.decrypt(&blob, "", &[]), &["decrypt"])),
        b"imported"
    );
    let d = ks.json(&["kms", "describe-key", "--key-id", &key]);
    assert_eq!(
        d["KeyMetadata"]["ExpirationModel"],
        "KEY_MATERIAL_DOES_NOT_EXPIRE"
    );

    ks.ok(&["kms", "delete-imported-key-material", "--key-id", &key]);
    fails(
        &ks.decrypt(&blob, "", &[]),
        EXIT_REFUSED,
        "KMSInvalidStateException",
    );
}

#[test]
fn import_refusals() {
    let ks = Ks::new();
    let own = ks.create_key();
    let out = ks.run(&["kms", "get-parameters-for-import", "--key-id", &own]);
    fails(&out, EXIT_USAGE, "EXTERNAL");
    let v = ks.json(&["kms", "create-key", "--origin", "EXTERNAL"]);
    let key = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let out = ks.run(&[
        "kms",
        "get-parameters-for-import",
        "--key-id",
        &key,
        "--wrapping-key-spec",
        "RSA_1024",
    ]);
    fails(&out, EXIT_USAGE, "WrappingKeySpec");
    // Wrong length of material, contradictory expiry options.
    fails(&import(&ks, &key, &[1u8; 16], &[]), EXIT_USAGE, "32 bytes");
    let out = import(
        &ks,
        &key,
        &[1u8; 32],
        &["--expiration-model", "KEY_MATERIAL_EXPIRES"],
    );
    fails(&out, EXIT_USAGE, "--valid-to");
    let before = snapshot(&ks.path);
    let out = ks.run(&[
        "kms",
        "import-key-material",
        "--key-id",
        &key,
        "--encrypted-key-material",
        "AAAA",
        "--import-token",
        "AAAA",
    ]);
    fails(&out, EXIT_USAGE, "InvalidImportToken");
    assert_eq!(snapshot(&ks.path), before);
    let out = ks.run(&["kms", "rotate-key-on-demand", "--key-id", &key]);
    fails(&out, EXIT_REFUSED, "KMSInvalidStateException");
}

/// Damages the current generation, so that the next process falls back to
/// keystore.prev.
fn damage_current(ks: &Ks) {
    let p = ks.keystore_file();
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&p, b).unwrap();
}

/// Deleted or expired material is removed from the kept previous generation
/// too: a damaged keystore.kms must not bring it back through the fallback.
#[test]
fn deleted_material_does_not_come_back_from_the_previous_generation() {
    for how in ["delete", "expire"] {
        let ks = Ks::new();
        let v = ks.json(&["kms", "create-key", "--origin", "EXTERNAL"]);
        let key = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        let expiry: &[&str] = if how == "expire" {
            &[
                "--expiration-model",
                "KEY_MATERIAL_EXPIRES",
                "--valid-to",
                "2031-01-01T00:00:00Z",
            ]
        } else {
            &[]
        };
        ok(import(&ks, &key, &[0x3cu8; 32], expiry), &["import"]);
        let blob = ks.encrypt(&key, b"shred me", "");
        if how == "delete" {
            ks.ok(&["kms", "delete-imported-key-material", "--key-id", &key]);
        } else {
            // A command after ValidTo writes the expiry.
            let later = [("KMSFS_TEST_NOW", "2031-01-02T00:00:00Z")];
            let out = ks.run_env(&["kms", "describe-key", "--key-id", &key], &later);
            ok(out, &["describe-key"]);
        }
        damage_current(&ks);
        // Today (before ValidTo) the previous generation is all there is.
        let out = ks.decrypt(&blob, "", &[]);
        let err = fails(&out, EXIT_REFUSED, "KMSInvalidStateException");
        assert!(
            err.contains("READ-ONLY from the previous generation"),
            "{how}: {err}"
        );
    }
}
