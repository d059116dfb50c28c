//! Key states through the binary: disable/enable, deletion windows, cancel, and
//! deletion for good once the window has passed (KMSFS_TEST_NOW), from both
//! keystore generations.

mod common;

use common::*;

fn state(ks: &Ks, key: &str) -> String {
    ks.json(&["kms", "describe-key", "--key-id", key])["KeyMetadata"]["KeyState"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn disable_refuses_encrypt_and_decrypt_and_enable_restores() {
    let ks = Ks::new();
    let k = ks.create_key();
    let blob = ks.encrypt(&k, b"data", "");
    ks.ok(&["kms", "disable-key", "--key-id", &k]);
    assert_eq!(state(&ks, &k), "Disabled");
    let out = ks.run(&["kms", "encrypt", "--key-id", &k, "--plaintext", "eA=="]);
    fails(&out, EXIT_REFUSED, "DisabledException");
    fails(
        &ks.decrypt(&blob, "", &[]),
        EXIT_REFUSED,
        "DisabledException",
    );
    let out = ks.run(&[
        "kms",
        "generate-data-key",
        "--key-id",
        &k,
        "--key-spec",
        "AES_256",
    ]);
    fails(&out, EXIT_REFUSED, "DisabledException");
    ks.ok(&["kms", "enable-key", "--key-id", &k]);
    assert_eq!(state(&ks, &k), "Enabled");
    assert_eq!(b64(&ok(ks.decrypt(&blob, "", &[]), &["decrypt"])), b"data");
}

#[test]
fn deletion_window_must_be_7_to_30_days() {
    let ks = Ks::new();
    for bad in ["6", "31", "0"] {
        let k = ks.create_key();
        let out = ks.run(&[
            "kms",
            "schedule-key-deletion",
            "--key-id",
            &k,
            "--pending-window-in-days",
            bad,
        ]);
        fails(&out, EXIT_USAGE, "PendingWindowInDays");
        assert_eq!(state(&ks, &k), "Enabled");
    }
    for good in ["7", "30"] {
        let k = ks.create_key();
        let v = ks.json(&[
            "kms",
            "schedule-key-deletion",
            "--key-id",
            &k,
            "--pending-window-in-days",
            good,
        ]);
        assert_eq!(v["PendingWindowInDays"].to_string(), good);
        assert_eq!(state(&ks, &k), "PendingDeletion");
    }
    let k = ks.create_key();
    let v = ks.json(&["kms", "schedule-key-deletion", "--key-id", &k]);
    assert_eq!(v["PendingWindowInDays"], 30);
}

#[test]
fn pending_deletion_refuses_and_cancel_leaves_disabled() {
    let ks = Ks::new();
    let k = ks.create_key();
    let blob = ks.encrypt(&k, b"data", "");
    ks.ok(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &k,
        "--pending-window-in-days",
        "7",
    ]);
    fails(
        &ks.decrypt(&blob, "", &[]),
        EXIT_REFUSED,
        "KMSInvalidStateException",
    );
    let out = ks.run(&["kms", "encrypt", "--key-id", &k, "--plaintext", "eA=="]);
    fails(&out, EXIT_REFUSED, "KMSInvalidStateException");
    let out = ks.run(&["kms", "enable-key", "--key-id", &k]);
    fails(&out, EXIT_REFUSED, "KMSInvalidStateException");
    let c = ks.json(&["kms", "cancel-key-deletion", "--key-id", &k]);
    let arn = c["KeyId"].as_str().unwrap();
    assert!(
        arn.starts_with("arn:") && arn.ends_with(&k),
        "AWS returns the key ARN: {c}"
    );
    assert_eq!(state(&ks, &k), "Disabled");
    fails(
        &ks.decrypt(&blob, "", &[]),
        EXIT_REFUSED,
        "DisabledException",
    );
    let out = ks.run(&["kms", "cancel-key-deletion", "--key-id", &k]);
    fails(&out, EXIT_REFUSED, "KMSInvalidStateException");
    ks.ok(&["kms", "enable-key", "--key-id", &k]);
    assert_eq!(b64(&ok(ks.decrypt(&blob, "", &[]), &["decrypt"])), b"data");
}

/// Runs `args` on a copy of the keystore in which the previous generation has
/// taken the place of the current one: what a fallback would see.
fn run_on_prev_generation(ks: &Ks, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let copy = ks.file("prev-only");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(ks.prev_file(), copy.join("keystore.kms")).unwrap();
    std::fs::copy(ks.path.join("root.key"), copy.join("root.key")).unwrap();
    // The trail goes along: a keystore that records a trail refuses to work
    // without it (docs/AUDIT.md, "A lost trail").
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(ks.path.join("audit"))
        .arg(copy.join("audit"))
        .status()
        .unwrap();
    assert!(cp.success());
    let mut c = kmsfs();
    c.arg("--keystore").arg(&copy).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
    out
}

#[test]
fn after_the_window_the_key_is_gone_from_both_generations() {
    let ks = Ks::new();
    let doomed = ks.create_key();
    let keep = ks.create_key();
    ks.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/doomed",
        "--target-key-id",
        &doomed,
    ]);
    let blob = ks.encrypt(&doomed, b"shred me", "f=1");
    let v = ks.json(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &doomed,
        "--pending-window-in-days",
        "7",
    ]);
    let date = kmsfs::kms::clock::parse_rfc3339(v["DeletionDate"].as_str().unwrap()).unwrap();
    let before = kmsfs::kms::clock::format_rfc3339(date - 60);
    let after = kmsfs::kms::clock::format_rfc3339(date + 1);
    // The previous generation holds the key now: the check below is meaningful.
    let out = run_on_prev_generation(&ks, &["kms", "describe-key", "--key-id", &doomed], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A minute before the date nothing happens.
    let out = ks.run_env(
        &["kms", "describe-key", "--key-id", &doomed],
        &[("KMSFS_TEST_NOW", &before)],
    );
    assert!(out.status.success());
    // After it, the next use deletes the key, its material and its alias.
    let out = ks.run_env(
        &["kms", "list-keys", "--output", "json"],
        &[("KMSFS_TEST_NOW", &after)],
    );
    let listed = ok(out, &["list-keys"]);
    assert!(
        !listed.contains(&doomed) && listed.contains(&keep),
        "{listed}"
    );
    // Gone for good, even with the clock back to normal.
    fails(
        &ks.run(&["kms", "describe-key", "--key-id", &doomed]),
        EXIT_NOT_FOUND,
        "NotFoundException",
    );
    fails(
        &ks.decrypt(&blob, "f=1", &[]),
        EXIT_NOT_FOUND,
        "NotFoundException",
    );
    let out = ks.run(&["kms", "describe-key", "--key-id", "alias/doomed"]);
    fails(&out, EXIT_NOT_FOUND, "NotFoundException");
    let aliases = ks.json(&["kms", "list-aliases"]);
    assert_eq!(aliases["Aliases"].as_array().unwrap().len(), 0);
    // And the kept previous generation does not have it either.
    let out = run_on_prev_generation(&ks, &["kms", "describe-key", "--key-id", &doomed], &[]);
    fails(&out, EXIT_NOT_FOUND, "NotFoundException");
    let c = [
        "kms",
        "decrypt",
        "--ciphertext-blob",
        blob.as_str(),
        "--encryption-context",
        "f=1",
    ];
    let out = run_on_prev_generation(&ks, &c, &[]);
    fails(&out, EXIT_NOT_FOUND, "NotFoundException");
    let out = run_on_prev_generation(&ks, &["kms", "describe-key", "--key-id", &keep], &[]);
    assert!(out.status.success());
}

#[test]
fn invalid_test_clock_is_a_clear_error() {
    let ks = Ks::new();
    let k = ks.create_key();
    let out = ks.run_env(&["kms", "create-key"], &[("KMSFS_TEST_NOW", "tomorrow")]);
    fails(&out, EXIT_USAGE, "KMSFS_TEST_NOW");
    assert_eq!(state(&ks, &k), "Enabled");
}

#[test]
fn rotation_on_demand_and_automatic_keeps_old_ciphertexts() {
    let ks = Ks::new();
    let k = ks.create_key();
    let v1_blob = ks.encrypt(&k, b"before", "");
    let v = ks.json(&["kms", "rotate-key-on-demand", "--key-id", &k]);
    assert_eq!(
        v["KeyId"],
        k.as_str(),
        "AWS returns the key id, not the ARN"
    );
    let m = ks.json(&["kms", "describe-key", "--key-id", &k]);
    assert_eq!(m["KeyMetadata"]["CurrentKeyMaterialVersion"], 2);
    assert_eq!(
        b64(&ok(ks.decrypt(&v1_blob, "", &[]), &["decrypt"])),
        b"before"
    );
    // The blob names its material version (byte 37..41 of the header).
    let v2_blob = b64(&ks.encrypt(&k, b"after", ""));
    assert_eq!(&v2_blob[37..41], &[0, 0, 0, 2]);

    for bad in ["89", "2561"] {
        let out = ks.run(&[
            "kms",
            "enable-key-rotation",
            "--key-id",
            &k,
            "--rotation-period-in-days",
            bad,
        ]);
        fails(&out, EXIT_USAGE, "RotationPeriodInDays");
    }
    ks.ok(&[
        "kms",
        "enable-key-rotation",
        "--key-id",
        &k,
        "--rotation-period-in-days",
        "90",
    ]);
    let st = ks.json(&["kms", "get-key-rotation-status", "--key-id", &k]);
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["RotationPeriodInDays"], 90);
    let next = kmsfs::kms::clock::parse_rfc3339(st["NextRotationDate"].as_str().unwrap()).unwrap();
    let after = kmsfs::kms::clock::format_rfc3339(next + 1);
    // The first use after the due date rotates.
    let m = ks.run_env(
        &["--output", "json", "kms", "describe-key", "--key-id", &k],
        &[("KMSFS_TEST_NOW", &after)],
    );
    let m: serde_json::Value = serde_json::from_str(&ok(m, &["describe-key"])).unwrap();
    assert_eq!(m["KeyMetadata"]["CurrentKeyMaterialVersion"], 3);
    let r = ks.json(&["kms", "list-key-rotations", "--key-id", &k]);
    let types: Vec<&str> = r["Rotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["RotationType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ON_DEMAND", "AUTOMATIC"]);
    assert!(
        r["Rotations"][0]["RotationDate"]
            .as_str()
            .and_then(kmsfs::kms::clock::parse_rfc3339)
            .is_some()
            && r["Rotations"][0]["KeyId"] == k.as_str()
    );
    assert_eq!(
        b64(&ok(ks.decrypt(&v1_blob, "", &[]), &["decrypt"])),
        b"before"
    );
    ks.ok(&["kms", "disable-key-rotation", "--key-id", &k]);
    let st = ks.json(&["kms", "get-key-rotation-status", "--key-id", &k]);
    assert_eq!(st["KeyRotationEnabled"], false);
    // A disabled key refuses rotation.
    ks.ok(&["kms", "disable-key", "--key-id", &k]);
    fails(
        &ks.run(&["kms", "rotate-key-on-demand", "--key-id", &k]),
        EXIT_REFUSED,
        "DisabledException",
    );
}
