//! `aws kms` fidelity for scripts: `--query` (JMESPath) with `--output text`
//! in the AWS CLI's tab-separated shape and `--output table`; validation as
//! AWS (GenerateDataKey needs a size, SYMMETRIC_DEFAULT only, --grant-tokens
//! checked); --limit/--marker pages; generate-random; hints that name the
//! real key and catch a base64 file given as fileb://; the aws CLI's global
//! options (--region, --profile, --cli-binary-format, --no-cli-pager,
//! --output yaml) and JMESPath's backtick string literal, beside the real
//! aws CLI when the venv has it.

mod common;

use common::{
    EXIT_REFUSED, EXIT_USAGE, Ks, Server, access_key, b64, command, describe, fails, kmsfs, venv,
};

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
    assert_eq!(f.len(), 5, "{line}");
    assert!(
        f[0].ends_with(":alias/app")
            && f[1] == "alias/app"
            && f[2].ends_with('Z')
            && f[3].ends_with('Z')
            && f[4] == id,
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
    // Grant tokens are checked as the server checks them: one this keystore
    // issued passes, another is refused (tests/kms_grants.rs).
    let token = ks.json(&[
        "kms",
        "create-grant",
        "--key-id",
        &k1,
        "--grantee-principal",
        "uid:4242",
        "--operations",
        "Encrypt",
    ])["GrantToken"]
        .as_str()
        .unwrap()
        .to_string();
    let with_tokens = |tokens: &[&str]| {
        let mut args = vec![
            "kms",
            "encrypt",
            "--key-id",
            &k1,
            "--plaintext",
            &fileb,
            "--encryption-algorithm",
            "SYMMETRIC_DEFAULT",
            "--grant-tokens",
        ];
        args.extend_from_slice(tokens);
        ks.run(&args)
    };
    assert!(with_tokens(&[&token]).status.success());
    fails(
        &with_tokens(&[&token, "t2"]),
        EXIT_USAGE,
        "grant token is not one this keystore issued",
    );
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

/// The aws CLI's global options that scripts carry are accepted; those
/// with no meaning for the local keystore are said once on stderr; the
/// JMESPath backtick string literal and `--output yaml` work; inline blobs
/// are raw text with `--cli-binary-format raw-in-base64-out`.
#[test]
fn aws_cli_global_options_and_legacy_literals() {
    let ks = Ks::new();
    let id = ks.create_key();
    ks.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/app",
        "--target-key-id",
        &id,
    ]);
    let query = "Aliases[?AliasName==`alias/app`].TargetKeyId";
    let o = ks.run(&[
        "kms",
        "list-aliases",
        "--region",
        "eu-west-1",
        "--profile",
        "prod",
        "--no-cli-pager",
        "--query",
        query,
        "--output",
        "text",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), id);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("ignored").count(), 1, "{err}");
    assert!(err.contains("--region and --profile"), "{err}");
    // --no-cli-pager alone asks for what kmsfs does anyway: nothing said.
    let o = ks.run(&["kms", "list-aliases", "--no-cli-pager"]);
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}",
        describe(&o)
    );
    // The literal as JSON and as a raw string give the same.
    for q in [
        "Aliases[?AliasName==`\"alias/app\"`].TargetKeyId",
        "Aliases[?AliasName=='alias/app'].TargetKeyId",
        "Aliases[?AliasName==` alias/app`].TargetKeyId",
    ] {
        let out = ks.ok(&["kms", "list-aliases", "--query", q, "--output", "text"]);
        assert_eq!(out.trim(), id, "{q}");
    }
    fails(
        &ks.run(&[
            "kms",
            "list-aliases",
            "--query",
            "Aliases[?AliasName==`alias",
        ]),
        EXIT_USAGE,
        "invalid --query",
    );

    // raw-in-base64-out: the inline text is the plaintext; without it, base64.
    let blob = ks.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        "alias/app",
        "--plaintext",
        "hello",
        "--cli-binary-format",
        "raw-in-base64-out",
        "--query",
        "CiphertextBlob",
        "--output",
        "text",
    ]);
    let raw = ks.file("blob.bin");
    std::fs::write(&raw, b64(blob.trim())).unwrap();
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
    assert_eq!(b64(plain.trim()), b"hello");
    fails(
        &ks.run(&[
            "kms",
            "encrypt",
            "--key-id",
            "alias/app",
            "--plaintext",
            "hello!",
        ]),
        EXIT_USAGE,
        "not valid base64",
    );

    // YAML: block style, key: value, lists under their key.
    let y = ks.ok(&["kms", "describe-key", "--key-id", &id, "--output", "yaml"]);
    assert!(y.starts_with("KeyMetadata:\n  AWSAccountId: \""), "{y}");
    assert!(y.contains("\n  Arn: arn:aws:kms:local:"), "{y}");
    assert!(
        y.contains("\n  EncryptionAlgorithms:\n  - SYMMETRIC_DEFAULT\n"),
        "{y}"
    );
    // A string YAML would read as something else (a leading digit) is quoted.
    let plain = format!("\n  KeyId: {id}\n");
    let quoted = format!("\n  KeyId: \"{id}\"\n");
    assert!(y.contains(&plain) || y.contains(&quoted), "{y}");
    assert!(y.contains("\n  CreationDate: \"20"), "{y}");
    assert!(y.contains("\n  Enabled: true\n"), "{y}");
    // Other commands print JSON for yaml, which YAML readers read.
    let s = ks.ok(&["kms", "list-keys", "--output", "yaml", "--query", "Keys[0]"]);
    assert!(s.starts_with("KeyArn: arn:"), "{s}");
}

/// Set beside the real aws CLI (the venv's): the same command lines, with
/// --region, --profile and a backtick literal, print the same; blobs pass
/// between the two; kmsfs's YAML reads back (PyYAML) as its JSON.
#[test]
fn the_aws_cli_and_kmsfs_kms_agree() {
    let test = "the_aws_cli_and_kmsfs_kms_agree";
    let Some(venv) = venv(test) else { return };
    let ks = Ks::new();
    let id = ks.create_key();
    ks.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/app",
        "--target-key-id",
        &id,
    ]);
    let (ak, sk) = access_key(&ks, 0);
    let server = Server::start(&ks, "127.0.0.1:0", &[]);
    let ep = server.endpoint();
    // Credentials only in the profile "app": --profile must be honoured.
    let config = ks.file("aws-config");
    std::fs::write(&config, "[profile app]\nregion = eu-west-1\n").unwrap();
    let creds = ks.file("aws-credentials");
    std::fs::write(
        &creds,
        format!("[app]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n"),
    )
    .unwrap();
    let aws_env = |c: &mut std::process::Command| {
        c.env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION");
    };
    let aws = |args: &[&str]| {
        let mut c = command(venv.join("bin/aws"));
        aws_env(&mut c);
        let o = c
            .args(args)
            .args(["--endpoint-url", &ep])
            .output()
            .expect("run aws");
        assert!(o.status.success(), "aws {args:?}: {}", describe(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let query = "Aliases[?AliasName==`alias/app`].TargetKeyId";
    let common = [
        "kms",
        "list-aliases",
        "--region",
        "eu-west-1",
        "--profile",
        "app",
        "--query",
        query,
        "--output",
        "text",
    ];
    let theirs = aws(&common);
    assert_eq!(theirs.trim(), id);
    assert_eq!(ks.ok(&common), theirs);

    // AWS CLI v1 takes inline blobs as raw text: kmsfs does with
    // --cli-binary-format raw-in-base64-out (v2's switch for the same).
    let blob = aws(&[
        "kms",
        "encrypt",
        "--profile",
        "app",
        "--key-id",
        "alias/app",
        "--plaintext",
        "from aws",
        "--query",
        "CiphertextBlob",
        "--output",
        "text",
    ]);
    let raw = ks.file("aws.bin");
    std::fs::write(&raw, b64(blob.trim())).unwrap();
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
    assert_eq!(b64(plain.trim()), b"from aws");
    let ours = ks.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        "alias/app",
        "--plaintext",
        "from kmsfs",
        "--cli-binary-format",
        "raw-in-base64-out",
        "--no-cli-pager",
        "--query",
        "CiphertextBlob",
        "--output",
        "text",
    ]);
    let raw = ks.file("kmsfs.bin");
    std::fs::write(&raw, b64(ours.trim())).unwrap();
    let plain = aws(&[
        "kms",
        "decrypt",
        "--profile",
        "app",
        "--ciphertext-blob",
        &format!("fileb://{}", raw.display()),
        "--query",
        "Plaintext",
        "--output",
        "text",
    ]);
    assert_eq!(b64(plain.trim()), b"from kmsfs");

    // kmsfs against the endpoint: region and credentials from --profile.
    let mut c = kmsfs();
    aws_env(&mut c);
    let o = c
        .args(["kms", "describe-key", "--key-id", &id, "--profile", "app"])
        .args(["--endpoint-url", &ep, "--output", "json"])
        .env("KMSFS_KEYSTORE", "/nonexistent")
        .output()
        .expect("run kmsfs");
    assert!(o.status.success(), "{}", describe(&o));
    assert!(o.stderr.is_empty(), "{}", describe(&o));
    let mut c = kmsfs();
    aws_env(&mut c);
    let o = c
        .args([
            "kms",
            "describe-key",
            "--key-id",
            &id,
            "--profile",
            "nobody",
        ])
        .args(["--endpoint-url", &ep])
        .env("KMSFS_KEYSTORE", "/nonexistent")
        .output()
        .expect("run kmsfs");
    assert!(!o.status.success(), "a missing profile worked");

    // YAML reads back as the JSON (the venv's PyYAML).
    for args in [
        &["kms", "describe-key", "--key-id", &id][..],
        &["kms", "list-aliases"][..],
        &["kms", "list-keys", "--query", "Keys[0]"][..],
    ] {
        let yaml = ks.file("out.yaml");
        let y = ks.ok(&[args, &["--output", "yaml"][..]].concat());
        std::fs::write(&yaml, &y).unwrap();
        let o = command(venv.join("bin/python"))
            .args([
                "-c",
                "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            ])
            .arg(&yaml)
            .output()
            .expect("run python");
        assert!(o.status.success(), "{}", describe(&o));
        let from_yaml: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(from_yaml, ks.json(args), "{y}");
    }
}
