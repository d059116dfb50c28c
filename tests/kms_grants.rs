//! Grants from the command line (issue 19, item 2): `kmsfs kms create-grant,
//! list-grants, list-retirable-grants, retire-grant, revoke-grant` with the
//! aws CLI's flags, through the real binary. A key policy that does not
//! allow this process's user Decrypt; a grant does, within its constraints
//! (EncryptionContextEquals, EncryptionContextSubset), until it is retired
//! or revoked; grant tokens are checked on the call that carries them; the
//! trail names the grant. Another user, through `kmsfs kms serve` and the
//! real aws CLI, cannot retire or revoke a grant that is not his to end.

mod common;

use std::process::Output;

use common::{EXIT_REFUSED, Ks, Server, access_key, b64, command, describe, fails, venv};
use serde_json::Value;

/// This test process's uid (the command line's caller).
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap()
}

fn decrypt(ks: &Ks, blob: &str, ctx: &str, tokens: &[&str]) -> Output {
    let mut args = vec![
        "kms",
        "decrypt",
        "--ciphertext-blob",
        blob,
        "--encryption-context",
        ctx,
        "--query",
        "Plaintext",
        "--output",
        "text",
    ];
    if !tokens.is_empty() {
        args.push("--grant-tokens");
        args.extend_from_slice(tokens);
    }
    ks.run(&args)
}

fn plaintext(o: &Output) -> Vec<u8> {
    assert!(o.status.success(), "{}", describe(o));
    b64(String::from_utf8_lossy(&o.stdout).trim())
}

/// Fails, saying `code` on stderr. (The command line names a refusal by
/// its AWS exception, as the server answers it: tests/server_grants.rs.)
fn refused(o: &Output, code: &str) {
    assert!(!o.status.success(), "expected {code}: {}", describe(o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(code),
        "expected {code}: {}",
        describe(o)
    );
}

fn create_grant(ks: &Ks, key: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["kms", "create-grant", "--key-id", key];
    args.extend_from_slice(extra);
    let v = ks.json(&args);
    (
        v["GrantId"].as_str().expect("GrantId").to_string(),
        v["GrantToken"].as_str().expect("GrantToken").to_string(),
    )
}

#[test]
fn grants_from_the_command_line_allow_what_they_name_until_retired() {
    let ks = Ks::new();
    let me = format!("uid:{}", own_uid());
    let key = ks.create_key();
    let blob_a = ks.encrypt(&key, b"secret-a", "project=a");
    let blob_b = ks.encrypt(&key, b"secret-b", "project=b,n=1");
    // The policy lets this user administer the key and encrypt, not decrypt.
    let policy = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"kmsfs":"{me}"}},
        "Action":["kms:Encrypt","kms:DescribeKey","kms:GetKeyPolicy","kms:PutKeyPolicy",
        "kms:CreateGrant","kms:ListGrants","kms:RetireGrant","kms:RevokeGrant"]}}]}}"#
    );
    ks.ok(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &key,
        "--policy",
        &policy,
    ]);
    fails(
        &decrypt(&ks, &blob_a, "project=a", &[]),
        EXIT_REFUSED,
        "AccessDeniedException",
    );

    // A grant with EncryptionContextEquals, retirable by this user.
    let dry = ks.run(&[
        "kms",
        "create-grant",
        "--key-id",
        &key,
        "--grantee-principal",
        &me,
        "--operations",
        "Decrypt",
        "--dry-run",
    ]);
    refused(&dry, "DryRun flag is set");
    assert_eq!(
        ks.json(&["kms", "list-grants", "--key-id", &key])["Grants"],
        serde_json::json!([])
    );
    let (g1, token1) = create_grant(
        &ks,
        &key,
        &[
            "--grantee-principal",
            &me,
            "--retiring-principal",
            &me,
            "--operations",
            "Decrypt",
            "--constraints",
            r#"{"EncryptionContextEquals":{"project":"a"}}"#,
            "--name",
            "cli-equals",
        ],
    );
    assert_eq!(g1.len(), 64, "{g1}");
    // The token is honoured on the call that carries it; a forged one is not.
    assert_eq!(
        plaintext(&decrypt(&ks, &blob_a, "project=a", &[&token1])),
        b"secret-a"
    );
    assert_eq!(
        plaintext(&decrypt(&ks, &blob_a, "project=a", &[])),
        b"secret-a"
    );
    let forged = format!("kmsfs-grant:{g1}:{}", "0".repeat(32));
    refused(
        &decrypt(&ks, &blob_a, "project=a", &[&forged]),
        "InvalidGrantTokenException: the grant token is not one this keystore issued",
    );
    // A malformed token too, as the aws CLI would print it.
    refused(
        &decrypt(&ks, &blob_a, "project=a", &["not-a-token"]),
        "InvalidGrantTokenException",
    );
    // The constraint: another context is refused.
    fails(
        &decrypt(&ks, &blob_b, "project=b,n=1", &[&token1]),
        EXIT_REFUSED,
        "AccessDeniedException",
    );

    // Listed with the aws CLI's fields and filters.
    let listed = ks.json(&["kms", "list-grants", "--key-id", &key]);
    let g = &listed["Grants"][0];
    assert_eq!(g["GrantId"], g1.as_str(), "{listed}");
    assert_eq!(g["GranteePrincipal"], me.as_str());
    assert_eq!(g["RetiringPrincipal"], me.as_str());
    assert_eq!(g["Name"], "cli-equals");
    assert_eq!(g["Operations"], serde_json::json!(["Decrypt"]));
    assert_eq!(
        g["Constraints"]["EncryptionContextEquals"]["project"], "a",
        "{listed}"
    );
    assert!(g["KeyId"].as_str().unwrap().ends_with(&key));
    assert!(
        g["IssuingAccount"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:iam::")
    );
    let none = ks.json(&[
        "kms",
        "list-grants",
        "--key-id",
        &key,
        "--grantee-principal",
        "uid:4242",
    ]);
    assert_eq!(none["Grants"], serde_json::json!([]), "{none}");
    let one = ks.json(&["kms", "list-grants", "--key-id", &key, "--grant-id", &g1]);
    assert_eq!(one["Grants"].as_array().unwrap().len(), 1, "{one}");
    let retirable = ks.json(&["kms", "list-retirable-grants", "--retiring-principal", &me]);
    assert_eq!(
        retirable["Grants"][0]["GrantId"],
        g1.as_str(),
        "{retirable}"
    );

    // A subset constraint; two grants page one at a time.
    let (g2, _) = create_grant(
        &ks,
        &key,
        &[
            "--grantee-principal",
            &me,
            "--operations",
            "Decrypt",
            "--constraints",
            r#"{"EncryptionContextSubset":{"project":"b"}}"#,
        ],
    );
    assert_eq!(
        plaintext(&decrypt(&ks, &blob_b, "project=b,n=1", &[])),
        b"secret-b"
    );
    let page = ks.json(&["kms", "list-grants", "--key-id", &key, "--limit", "1"]);
    assert_eq!(page["Truncated"], true, "{page}");
    let marker = page["NextMarker"].as_str().unwrap().to_string();
    let rest = ks.json(&[
        "kms",
        "list-grants",
        "--key-id",
        &key,
        "--limit",
        "1",
        "--marker",
        &marker,
    ]);
    assert_eq!(rest["Truncated"], false, "{rest}");
    let mut ids = vec![
        page["Grants"][0]["GrantId"].as_str().unwrap().to_string(),
        rest["Grants"][0]["GrantId"].as_str().unwrap().to_string(),
    ];
    ids.sort();
    let mut want = vec![g1.clone(), g2.clone()];
    want.sort();
    assert_eq!(ids, want);

    // Another user cannot end either grant through the server.
    if let Some(venv) = venv("cli_grants") {
        let (ak, sk) = access_key(&ks, 4242);
        let mut server = Server::start(&ks, "127.0.0.1:0", &[]);
        let ep = server.endpoint();
        let aws = |args: &[&str]| {
            command(venv.join("bin/aws"))
                .arg("kms")
                .args(args)
                .args(["--endpoint-url", &ep, "--region", "us-east-1"])
                .env("AWS_ACCESS_KEY_ID", &ak)
                .env("AWS_SECRET_ACCESS_KEY", &sk)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AWS_CONFIG_FILE", "/nonexistent")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
                .env_remove("AWS_PROFILE")
                .output()
                .expect("run aws")
        };
        for id in [&g1, &g2] {
            refused(
                &aws(&["retire-grant", "--key-id", &key, "--grant-id", id]),
                "AccessDeniedException",
            );
            refused(
                &aws(&["revoke-grant", "--key-id", &key, "--grant-id", id]),
                "AccessDeniedException",
            );
        }
        refused(
            &aws(&["retire-grant", "--grant-token", &token1]),
            "AccessDeniedException",
        );
        server.stop();
        assert_eq!(
            ks.json(&["kms", "list-grants", "--key-id", &key])["Grants"]
                .as_array()
                .unwrap()
                .len(),
            2,
            "another user ended a grant"
        );
    }

    // Retired by its token, revoked by id: refused again, the token dead.
    ks.ok(&["kms", "retire-grant", "--grant-token", &token1]);
    fails(
        &decrypt(&ks, &blob_a, "project=a", &[]),
        EXIT_REFUSED,
        "AccessDeniedException",
    );
    refused(
        &decrypt(&ks, &blob_a, "project=a", &[&token1]),
        "InvalidGrantTokenException: the grant token is not one this keystore issued",
    );
    ks.ok(&["kms", "revoke-grant", "--key-id", &key, "--grant-id", &g2]);
    fails(
        &decrypt(&ks, &blob_b, "project=b,n=1", &[]),
        EXIT_REFUSED,
        "AccessDeniedException",
    );
    refused(
        &ks.run(&["kms", "revoke-grant", "--key-id", &key, "--grant-id", &g2]),
        "does not exist on this key",
    );

    // The trail: each Decrypt a grant allowed names it; the changes too.
    let trail = ks.ok(&["--output", "json", "audit", "show", "--event", "Decrypt"]);
    let granted: Vec<Value> = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r.get("errorCode").is_none())
        .collect();
    assert_eq!(granted.len(), 3, "{trail}");
    let by = |id: &str| {
        granted
            .iter()
            .filter(|r| r["additionalEventData"]["grantId"] == id)
            .count()
    };
    assert_eq!((by(&g1), by(&g2)), (2, 1), "{trail}");
    for op in ["CreateGrant", "RetireGrant", "RevokeGrant"] {
        let out = ks.ok(&["--output", "json", "audit", "show", "--event", op]);
        assert!(!out.trim().is_empty(), "{op} not audited");
    }
}
