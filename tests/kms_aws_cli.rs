//! `aws kms` fidelity for scripts: `--query` (JMESPath) with `--output text`
//! in the AWS CLI's tab-separated shape and `--output table`; validation as
//! AWS (GenerateDataKey needs a size, SYMMETRIC_DEFAULT only, --grant-tokens
//! accepted); --limit/--marker pages; generate-random; hints that name the
//! real key and catch a base64 file given as fileb://.

mod common;

use common::{EXIT_REFUSED, EXIT_USAGE, Ks, b64, fails};

#[test]
fn query_and_text_output_as_the_aws_cli() {
    let ks = Ks::new();
    let id = ks
        .ok(&[
            "kms",
            "create-key",
            "--query",
            "KeyMetadata.KeyId",
            "--output",
            "text",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 36, "{id}");
    ks.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/app",
        "--target-key-id",
        &id,
    ]);
    let pt = ks.file("pt");
    std::fs::write(&pt, b"for scripts").unwrap();
    let fileb = format!("fileb://{}", pt.display());
    // The README's flow: --query CiphertextBlob --output text, then base64 -d.
    let blob_b64 = ks.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        "alias/app",
        "--plaintext",
        &fileb,
        "--query",
        "CiphertextBlob",
        "--output",
        "text",
    ]);
    let raw = ks.file("blob.bin");
    std::fs::write(&raw, b64(blob_b64.trim())).unwrap();
    let plain = ks.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &format!("fileb://{}", raw.display()),
        "--query",
        "Plaintext",
        "--output",
        "text",
    ]);
    assert_eq!(b64(plain.trim()), b"for scripts");

    // An explicit --output text is the AWS shape; no --output, kmsfs's layout.
    let aws = ks.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        "alias/app",
        "--plaintext",
        &fileb,
        "--output",
        "text",
    ]);
    let f: Vec<&str> = aws.trim_end().split('\t').collect();
    assert_eq!(f.len(), 3, "{aws}");
    assert_eq!(f[1], "SYMMETRIC_DEFAULT");
    assert!(f[2].starts_with("arn:") && f[2].ends_with(&id), "{aws}");
    let plain_layout = ks.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        "alias/app",
        "--plaintext",
        &fileb,
    ]);
    assert!(!plain_layout.contains('\t'), "{plain_layout}");
    // Text: an object's scalars on one line, tab separated, in key order.
    let line = ks.ok(&[
        "kms",
        "list-aliases",
        "--query",
        "Aliases[0]",
        "--output",
        "text",
    ]);
    let f: Vec<&str> = line.trim_end().split('\t').collect();
    assert_eq!(f.len(), 3, "{line}");
    assert!(
        f[0].ends_with(":alias/app") && f[1] == "alias/app" && f[2] == id,
        "{line}"
    );
    // A list of objects: one line per element, prefixed by its key in capitals.
    let keys = ks.ok(&[
        "kms",
        "list-keys",
        "--output",
        "text",
        "--query",
        "{Keys: Keys}",
    ]);
    assert!(keys.starts_with("KEYS\tarn:"), "{keys}");
    let table = ks.ok(&["kms", "describe-key", "--key-id", &id, "--output", "table"]);
    assert!(table.contains("| KeyId") && table.contains(&id), "{table}");
    let o = ks.run(&["kms", "list-keys", "--query", "Keys[?"]);
    fails(&o, EXIT_USAGE, "invalid --query");

    // Text output names the same KeyId as JSON (the ARN).
    let json = ks.json(&[
        "kms",
        "generate-data-key",
        "--key-id",
        "alias/app",
        "--key-spec",
        "AES_256",
    ]);
    let text = ks.ok(&[
        "kms",
        "generate-data-key",
        "--key-id",
        "alias/app",
        "--key-spec",
        "AES_256",
    ]);
    let arn = json["KeyId"].as_str().unwrap();
    assert!(arn.starts_with("arn:"));
    assert!(text.contains(&format!("KeyId\t{arn}")), "{text}");
}

#[test]
fn validation_paging_and_hints_as_aws() {
    let ks = Ks::new();
    let k1 = ks.create_key();
    let k2 = ks.create_key();
    let pt = ks.file("pt");
    std::fs::write(&pt, b"x").unwrap();
    let fileb = format!("fileb://{}", pt.display());
    ks.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        &k1,
        "--plaintext",
        &fileb,
        "--encryption-algorithm",
        "SYMMETRIC_DEFAULT",
        "--grant-tokens",
        "t1",
        "t2",
    ]);
    let o = ks.run(&[
        "kms",
        "encrypt",
        "--key-id",
        &k1,
        "--plaintext",
        &fileb,
        "--encryption-algorithm",
        "RSAES_OAEP_SHA_256",
    ]);
    assert_eq!(o.status.code(), Some(EXIT_USAGE));
    let o = ks.run(&["kms", "generate-data-key", "--key-id", &k1]);
    fails(&o, EXIT_USAGE, "key spec");

    // Pages.
    let p1 = ks.json(&["kms", "list-keys", "--limit", "1"]);
    assert_eq!(p1["Keys"].as_array().unwrap().len(), 1);
    assert_eq!(p1["Truncated"], true);
    let marker = p1["NextMarker"].as_str().unwrap().to_string();
    let p2 = ks.json(&["kms", "list-keys", "--limit", "1", "--marker", &marker]);
    assert_eq!(p2["Truncated"], false);
    assert!(p2.get("NextMarker").is_none());
    let ids: Vec<&str> = [&p1, &p2]
        .iter()
        .map(|p| p["Keys"][0]["KeyId"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&k1.as_str()) && ids.contains(&k2.as_str()),
        "{ids:?}"
    );
    fails(
        &ks.run(&["kms", "list-keys", "--marker", "bogus"]),
        EXIT_USAGE,
        "InvalidMarker",
    );

    let r = ks.json(&["kms", "generate-random", "--number-of-bytes", "16"]);
    assert_eq!(b64(r["Plaintext"].as_str().unwrap()).len(), 16);
    assert_eq!(
        ks.run(&["kms", "generate-random", "--number-of-bytes", "0"])
            .status
            .code(),
        Some(EXIT_USAGE)
    );

    // A base64 text file given as fileb://: the hint says to decode it.
    let b64file = ks.file("blob.b64");
    let text = ks.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        &k1,
        "--plaintext",
        &fileb,
        "--query",
        "CiphertextBlob",
        "--output",
        "text",
    ]);
    std::fs::write(&b64file, text).unwrap();
    let o = ks.run(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &format!("fileb://{}", b64file.display()),
    ]);
    let err = fails(&o, 5, "InvalidCiphertext");
    assert!(
        err.contains("base64 -d") && err.contains("holds base64 text"),
        "{err}"
    );

    // The 4 KiB limit points at kmsfs seal.
    let big = ks.file("big");
    std::fs::write(&big, vec![0u8; 5000]).unwrap();
    let o = ks.run(&[
        "kms",
        "encrypt",
        "--key-id",
        &k1,
        "--plaintext",
        &format!("fileb://{}", big.display()),
    ]);
    let err = fails(&o, EXIT_USAGE, "4096");
    assert!(err.contains("kmsfs seal"), "{err}");

    // Hints name the real key.
    ks.ok(&["kms", "disable-key", "--key-id", &k2]);
    let o = ks.run(&["kms", "encrypt", "--key-id", &k2, "--plaintext", &fileb]);
    let err = fails(&o, EXIT_REFUSED, "Disabled");
    assert!(err.contains(&format!("enable-key --key-id {k2}")), "{err}");
}

#[test]
fn descriptions_and_tags() {
    let ks = Ks::new();
    let id = ks.create_key();
    ks.ok(&[
        "kms",
        "update-key-description",
        "--key-id",
        &id,
        "--description",
        "orders db",
    ]);
    let d = ks.json(&["kms", "describe-key", "--key-id", &id]);
    assert_eq!(d["KeyMetadata"]["Description"], "orders db");
    ks.ok(&[
        "kms",
        "tag-resource",
        "--key-id",
        &id,
        "--tags",
        "TagKey=team,TagValue=db",
        "TagKey=env,TagValue=prod",
    ]);
    ks.ok(&[
        "kms",
        "tag-resource",
        "--key-id",
        &id,
        "--tags",
        r#"[{"TagKey":"env","TagValue":"dev"}]"#,
    ]);
    let t = ks.json(&["kms", "list-resource-tags", "--key-id", &id]);
    assert_eq!(
        t["Tags"],
        serde_json::json!([
            {"TagKey": "env", "TagValue": "dev"},
            {"TagKey": "team", "TagValue": "db"}
        ])
    );
    ks.ok(&[
        "kms",
        "untag-resource",
        "--key-id",
        &id,
        "--tag-keys",
        "env",
        "absent",
    ]);
    let keys = ks.ok(&[
        "kms",
        "list-resource-tags",
        "--key-id",
        &id,
        "--query",
        "Tags[].TagKey",
        "--output",
        "text",
    ]);
    assert_eq!(keys.trim(), "team");
    fails(
        &ks.run(&[
            "kms",
            "tag-resource",
            "--key-id",
            &id,
            "--tags",
            "TagKey=aws:x,TagValue=1",
        ]),
        EXIT_USAGE,
        "reserved",
    );
    fails(
        &ks.run(&["kms", "tag-resource", "--key-id", &id, "--tags", "Key=x"]),
        EXIT_USAGE,
        "cannot read the tag",
    );
    // Tags survive in the keystore (another process reads them).
    let again = ks.json(&["kms", "list-resource-tags", "--key-id", &id]);
    assert_eq!(again["Tags"][0]["TagKey"], "team");
}
