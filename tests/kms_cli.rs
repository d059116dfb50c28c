//! `kmsfs kms` as a user sees it: AWS-shaped options and JSON, binary inputs,
//! the Encrypt size limit, contexts, foreign blobs, aliases and data keys.

mod common;

use common::*;

#[test]
fn json_output_uses_aws_field_names() {
    let ks = Ks::new();
    let v = ks.json(&["kms", "create-key", "--description", "d1"]);
    let m = &v["KeyMetadata"];
    for f in [
        "KeyId",
        "Arn",
        "KeyState",
        "Enabled",
        "Description",
        "CreationDate",
        "KeyUsage",
        "KeySpec",
        "Origin",
    ] {
        assert!(!m[f].is_null(), "KeyMetadata.{f} missing in {v}");
    }
    assert_eq!(m["KeyState"], "Enabled");
    assert_eq!(m["Enabled"], true);
    assert_eq!(m["Description"], "d1");
    assert_eq!(m["Origin"], "AWS_KMS");
    let id = m["KeyId"].as_str().unwrap().to_string();
    assert!(m["Arn"].as_str().unwrap().ends_with(&format!(":key/{id}")));

    let keys = ks.json(&["kms", "list-keys"]);
    assert_eq!(keys["Keys"][0]["KeyId"], id.as_str());
    assert_eq!(keys["Keys"][0]["KeyArn"], m["Arn"]);

    ks.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/app",
        "--target-key-id",
        &id,
    ]);
    let al = ks.json(&["kms", "list-aliases"]);
    assert_eq!(al["Aliases"][0]["AliasName"], "alias/app");
    assert_eq!(al["Aliases"][0]["TargetKeyId"], id.as_str());
    assert!(
        al["Aliases"][0]["AliasArn"]
            .as_str()
            .unwrap()
            .ends_with(":alias/app")
    );

    let f = ks.file("p");
    std::fs::write(&f, b"abc").unwrap();
    let pt = format!("fileb://{}", f.display());
    let e = ks.json(&[
        "kms",
        "encrypt",
        "--key-id",
        "alias/app",
        "--plaintext",
        &pt,
    ]);
    assert_eq!(e["KeyId"], m["Arn"]);
    let blob = e["CiphertextBlob"].as_str().unwrap().to_string();
    let d = ks.json(&["kms", "decrypt", "--ciphertext-blob", &blob]);
    assert_eq!(b64(d["Plaintext"].as_str().unwrap()), b"abc");
    assert_eq!(d["KeyId"], m["Arn"]);
    assert_eq!(d["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");

    let g = ks.json(&[
        "kms",
        "generate-data-key",
        "--key-id",
        &id,
        "--key-spec",
        "AES_256",
    ]);
    assert_eq!(b64(g["Plaintext"].as_str().unwrap()).len(), 32);
    assert!(g["CiphertextBlob"].is_string() && g["KeyId"].is_string());
    let s = ks.json(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &id,
        "--pending-window-in-days",
        "7",
    ]);
    assert_eq!(s["KeyState"], "PendingDeletion");
    assert_eq!(s["PendingWindowInDays"], 7);
    // Timestamps are RFC 3339 strings, as AWS CLI v2 prints them.
    assert!(kmsfs::kms::clock::parse_rfc3339(s["DeletionDate"].as_str().unwrap()).is_some());
    assert!(s["KeyId"].as_str().unwrap().starts_with("arn:"));
    let d = ks.json(&["kms", "describe-key", "--key-id", &id]);
    assert_eq!(d["KeyMetadata"]["KeyState"], "PendingDeletion");
    assert_eq!(d["KeyMetadata"]["DeletionDate"], s["DeletionDate"]);
    assert!(
        kmsfs::kms::clock::parse_rfc3339(d["KeyMetadata"]["CreationDate"].as_str().unwrap())
            .is_some()
    );
}

#[test]
fn global_options_before_or_after_the_subcommand() {
    let ks = Ks::new();
    let dir = ks.path.to_str().unwrap();
    let after = kmsfs()
        .args(["kms", "create-key", "--keystore", dir, "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(after, &["after"])).unwrap();
    let id = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let before = kmsfs()
        .args([
            "--output",
            "json",
            "--keystore",
            dir,
            "kms",
            "describe-key",
            "--key-id",
            &id,
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(before, &["before"])).unwrap();
    assert_eq!(v["KeyMetadata"]["KeyId"], id.as_str());
    let middle = kmsfs()
        .args(["kms", "--keystore", dir, "list-keys", "--output", "json"])
        .output()
        .unwrap();
    assert!(ok(middle, &["middle"]).contains(&id));
    // And through the environment.
    let env = kmsfs()
        .env("KMSFS_KEYSTORE", dir)
        .args(["kms", "list-keys"])
        .output()
        .unwrap();
    assert!(ok(env, &["env"]).contains(&id));
}

#[test]
fn encrypt_takes_4096_bytes_and_refuses_4097() {
    let ks = Ks::new();
    let id = ks.create_key();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let blob = ks.encrypt(&id, &data, "");
    let out = ks.decrypt(&blob, "", &[]);
    assert_eq!(b64(&ok(out, &["decrypt"])), data);
    let f = ks.file("big");
    std::fs::write(&f, vec![1u8; 4097]).unwrap();
    let pt = format!("fileb://{}", f.display());
    let out = ks.run(&["kms", "encrypt", "--key-id", &id, "--plaintext", &pt]);
    let err = fails(&out, EXIT_USAGE, "4096");
    assert!(err.contains("generate-data-key"), "{err}");
}

#[test]
fn plaintext_and_blobs_as_base64_or_fileb() {
    let ks = Ks::new();
    let id = ks.create_key();
    // "aGVsbG8=" is base64 for "hello".
    let blob = ks.ok(&["kms", "encrypt", "--key-id", &id, "--plaintext", "aGVsbG8="]);
    let f = ks.file("blob.bin");
    std::fs::write(&f, b64(&blob)).unwrap();
    let by_file = format!("fileb://{}", f.display());
    let out = ks.ok(&["kms", "decrypt", "--ciphertext-blob", &by_file]);
    assert_eq!(b64(&out), b"hello");
    let out = ks.run(&["kms", "decrypt", "--ciphertext-blob", "not base64!"]);
    fails(&out, EXIT_USAGE, "base64");
}

#[test]
fn decrypt_with_another_context_is_refused() {
    let ks = Ks::new();
    let id = ks.create_key();
    let blob = ks.encrypt(&id, b"secret", "file=a,dir=b");
    // Same map in JSON and in another order: accepted.
    let out = ks.decrypt(&blob, r#"{"dir":"b","file":"a"}"#, &[]);
    assert_eq!(b64(&ok(out, &["decrypt"])), b"secret");
    for other in ["file=a", "file=a,dir=c", "file=a,dir=b,x=y", ""] {
        let out = ks.decrypt(&blob, other, &[]);
        fails(&out, EXIT_CORRUPT, "InvalidCiphertextException");
    }
}

#[test]
fn blob_from_another_keystore_or_modified_is_refused() {
    let a = Ks::new();
    let b = Ks::new();
    let ka = a.create_key();
    b.create_key();
    let blob = a.encrypt(&ka, b"secret", "");
    let err = fails(
        &b.decrypt(&blob, "", &[]),
        EXIT_CORRUPT,
        "InvalidCiphertextException",
    );
    assert!(err.contains("another keystore"), "{err}");
    use base64::Engine;
    let mut raw = b64(&blob);
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let bad = base64::engine::general_purpose::STANDARD.encode(&raw);
    fails(
        &a.decrypt(&bad, "", &[]),
        EXIT_CORRUPT,
        "InvalidCiphertextException",
    );
    let short = base64::engine::general_purpose::STANDARD.encode(&raw[..20]);
    fails(
        &a.decrypt(&short, "", &[]),
        EXIT_CORRUPT,
        "InvalidCiphertextException",
    );
}

#[test]
fn decrypt_with_another_key_id_is_refused() {
    let ks = Ks::new();
    let k1 = ks.create_key();
    let k2 = ks.create_key();
    let blob = ks.encrypt(&k1, b"x", "");
    let out = ks.run(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blob,
        "--key-id",
        &k2,
    ]);
    fails(&out, EXIT_REFUSED, "IncorrectKeyException");
    let out = ks.run(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blob,
        "--key-id",
        &k1,
    ]);
    assert_eq!(b64(&ok(out, &["decrypt"])), b"x");
}

#[test]
fn data_keys_and_re_encrypt() {
    let ks = Ks::new();
    let k1 = ks.create_key();
    let k2 = ks.create_key();
    for (args, len) in [
        (vec!["--key-spec", "AES_128"], 16),
        (vec!["--number-of-bytes", "1"], 1),
        (vec!["--number-of-bytes", "1024"], 1024),
        (vec!["--key-spec", "AES_256"], 32),
    ] {
        let mut a = vec![
            "kms",
            "generate-data-key",
            "--key-id",
            k1.as_str(),
            "--encryption-context",
            "f=1",
        ];
        a.extend(args);
        let g = ks.json(&a);
        let pt = b64(g["Plaintext"].as_str().unwrap());
        assert_eq!(pt.len(), len);
        let d = ks.json(&[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            g["CiphertextBlob"].as_str().unwrap(),
            "--encryption-context",
            "f=1",
        ]);
        assert_eq!(b64(d["Plaintext"].as_str().unwrap()), pt);
    }
    for n in ["0", "1025"] {
        let out = ks.run(&[
            "kms",
            "generate-data-key",
            "--key-id",
            &k1,
            "--number-of-bytes",
            n,
        ]);
        fails(&out, EXIT_USAGE, "NumberOfBytes");
    }
    // As AWS: one of --key-spec and --number-of-bytes is required.
    for cmd in ["generate-data-key", "generate-data-key-without-plaintext"] {
        let out = ks.run(&["kms", cmd, "--key-id", &k1]);
        fails(
            &out,
            EXIT_USAGE,
            "specify either number of bytes or key spec",
        );
    }
    let w = ks.json(&[
        "kms",
        "generate-data-key-without-plaintext",
        "--key-id",
        &k1,
        "--key-spec",
        "AES_256",
    ]);
    assert!(w["Plaintext"].is_null() && w["CiphertextBlob"].is_string());

    let blob = ks.encrypt(&k1, b"moved", "a=1");
    let r = ks.json(&[
        "kms",
        "re-encrypt",
        "--ciphertext-blob",
        &blob,
        "--destination-key-id",
        &k2,
        "--source-encryption-context",
        "a=1",
        "--destination-encryption-context",
        "b=2",
    ]);
    assert!(r["SourceKeyId"].as_str().unwrap().ends_with(&k1));
    assert!(r["KeyId"].as_str().unwrap().ends_with(&k2));
    let nb = r["CiphertextBlob"].as_str().unwrap();
    let out = ks.run(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        nb,
        "--encryption-context",
        "b=2",
        "--key-id",
        &k2,
    ]);
    assert_eq!(b64(&ok(out, &["decrypt"])), b"moved");
    let out = ks.run(&[
        "kms",
        "re-encrypt",
        "--ciphertext-blob",
        &blob,
        "--destination-key-id",
        &k2,
        "--source-key-id",
        &k2,
        "--source-encryption-context",
        "a=1",
    ]);
    fails(&out, EXIT_REFUSED, "IncorrectKeyException");
}

#[test]
fn aliases_follow_the_aws_rules() {
    let ks = Ks::new();
    let k = ks.create_key();
    for bad in [
        "noprefix",
        "alias/",
        "alias/sp ace",
        "alias/co:lon",
        "alias/aws/ebs",
        "alias/kmsfs/default",
    ] {
        let out = ks.run(&[
            "kms",
            "create-alias",
            "--alias-name",
            bad,
            "--target-key-id",
            &k,
        ]);
        fails(&out, EXIT_USAGE, "ValidationException");
    }
    ks.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/ok_1/x/y-z",
        "--target-key-id",
        &k,
    ]);
    let out = ks.run(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/ok_1/x/y-z",
        "--target-key-id",
        &k,
    ]);
    fails(&out, EXIT_USAGE, "AlreadyExistsException");
    let v = ks.json(&["kms", "describe-key", "--key-id", "alias/ok_1/x/y-z"]);
    assert_eq!(v["KeyMetadata"]["KeyId"], k.as_str());
    let k2 = ks.create_key();
    ks.ok(&[
        "kms",
        "update-alias",
        "--alias-name",
        "alias/ok_1/x/y-z",
        "--target-key-id",
        &k2,
    ]);
    let v = ks.json(&["kms", "list-aliases", "--key-id", &k2]);
    assert_eq!(v["Aliases"].as_array().unwrap().len(), 1);
    ks.ok(&["kms", "delete-alias", "--alias-name", "alias/ok_1/x/y-z"]);
    let out = ks.run(&["kms", "describe-key", "--key-id", "alias/ok_1/x/y-z"]);
    fails(&out, EXIT_NOT_FOUND, "NotFoundException");
}

#[test]
fn no_keystore_says_how_to_make_one_and_init_refuses_twice() {
    let ks = Ks::empty();
    let out = ks.run(&["kms", "list-keys"]);
    fails(&out, EXIT_KEYSTORE, "kmsfs init");
    assert!(
        !ks.path.exists(),
        "a command other than init created a keystore"
    );
    ks.ok(&["init"]);
    let before = snapshot(&ks.path);
    let out = ks.run(&["init"]);
    // "Already there", as an existing mount: 1, not a usage error.
    fails(&out, 1, "exists already");
    assert_eq!(snapshot(&ks.path), before);
}

#[test]
fn key_policy_refuses_the_calling_uid() {
    let ks = Ks::new();
    let k = ks.create_key();
    let blob = ks.encrypt(&k, b"x", "");
    let v = ks.json(&["kms", "get-key-policy", "--key-id", &k]);
    assert_eq!(v["PolicyName"], "default");
    let doc: serde_json::Value = serde_json::from_str(v["Policy"].as_str().unwrap()).unwrap();
    assert_eq!(doc["Statement"][0]["Effect"], "Allow");
    // Deny this process's own uid (the tests run as some uid; deny exactly it).
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let deny = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"kms:*"}},
            {{"Effect":"Deny","Principal":{{"kmsfs":"uid:{uid}"}},"Action":"kms:Decrypt"}}]}}"#
    );
    let f = ks.file("policy.json");
    std::fs::write(&f, &deny).unwrap();
    ks.ok(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &k,
        "--policy",
        &format!("file://{}", f.display()),
    ]);
    let err = fails(
        &ks.decrypt(&blob, "", &[]),
        EXIT_REFUSED,
        "AccessDeniedException",
    );
    assert!(err.contains("get-key-policy"), "{err}");
    // Encrypt is still allowed by the first statement.
    ks.encrypt(&k, b"y", "");
    let out = ks.run(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &k,
        "--policy",
        r#"{"Statement":[]}"#,
    ]);
    fails(&out, EXIT_USAGE, "MalformedPolicyDocumentException");
    let allow_all = r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*"}]}"#;
    ks.ok(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &k,
        "--policy",
        allow_all,
    ]);
    assert_eq!(b64(&ok(ks.decrypt(&blob, "", &[]), &["decrypt"])), b"x");
}
