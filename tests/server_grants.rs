//! Grants through boto3 against `kmsfs kms serve` (tests/server/grants.py):
//! another user with a grant can decrypt and without it cannot; a retired
//! or revoked grant refuses; a constraint mismatch refuses; an explicit
//! Deny in the key policy wins; grant tokens are checked; the trail names
//! the grant that allowed a call. Access keys are principals of their own
//! (tests/server/access_keys.py). GenerateRandom is audited like any call.

mod common;

use std::process::Command;

use common::*;

#[test]
fn grants_allow_what_they_name_and_nothing_once_gone() {
    let test = "grants_allow_what_they_name_and_nothing_once_gone";
    let Some(venv) = venv(test) else { return };
    let ks = Ks::new();
    let (ak, sk) = access_key(&ks, 0);
    let (ak2, sk2) = access_key(&ks, 4242);
    let mut server = Server::start(&ks, "127.0.0.1:0", &[]);
    let out = Command::new(venv.join("bin/python"))
        .arg(script("grants.py"))
        .args([&server.endpoint(), &ak, &sk, &ak2, &sk2])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("grants: all steps passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
    // Every grant change is in the trail.
    let trail = ks.ok(&["audit", "show", "--output", "json"]);
    for op in ["CreateGrant", "RetireGrant", "RevokeGrant"] {
        assert!(trail.contains(&format!("\"{op}\"")), "{op} not audited");
    }
    // Each call of uid 4242 that only a grant allowed names the grant.
    let granted: Vec<serde_json::Value> = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| {
            r["userIdentity"]["uid"] == 4242
                && r.get("errorCode").is_none()
                && (r["eventName"] == "Decrypt" || r["eventName"] == "Encrypt")
        })
        .collect();
    assert!(granted.len() >= 5, "{granted:?}");
    for r in &granted {
        let id = r["additionalEventData"]["grantId"].as_str().unwrap_or("");
        assert_eq!(id.len(), 64, "no grant named: {r}");
    }
}

/// Two access keys of one user (uid 4242): a grant, a policy Allow and a
/// policy Deny naming `access-key:ID` apply to that key alone, and the trail
/// names the access key of every call (tests/server/access_keys.py).
#[test]
fn access_keys_are_principals_of_their_own() {
    let test = "access_keys_are_principals_of_their_own";
    let Some(venv) = venv(test) else { return };
    let ks = Ks::new();
    let (ak, sk) = access_key(&ks, 0);
    let (k1, s1) = access_key(&ks, 4242);
    let (k2, s2) = access_key(&ks, 4242);
    let mut server = Server::start(&ks, "127.0.0.1:0", &[]);
    let out = Command::new(venv.join("bin/python"))
        .arg(script("access_keys.py"))
        .args([&server.endpoint(), &ak, &sk, &k1, &s1, &k2, &s2])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("access keys: all steps passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
    let trail = ks.ok(&["audit", "show", "--output", "json"]);
    let records: Vec<serde_json::Value> = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    let decrypts = |id: &str, ok: bool| {
        records
            .iter()
            .filter(|r| {
                r["eventName"] == "Decrypt"
                    && r["userIdentity"]["accessKeyId"] == id
                    && r.get("errorCode").is_none() == ok
            })
            .count()
    };
    // Key 1: allowed by its grant, then by the user's Allow; refused
    // without a grant and once the grant was revoked.
    assert!(decrypts(&k1, true) >= 2, "{trail}");
    assert!(decrypts(&k1, false) >= 2, "{trail}");
    // Key 2: never allowed.
    assert_eq!(decrypts(&k2, true), 0, "{trail}");
    assert!(decrypts(&k2, false) >= 4, "{trail}");
    for r in &records {
        let who = &r["userIdentity"];
        if who["accessKeyId"] == k1.as_str() || who["accessKeyId"] == k2.as_str() {
            assert_eq!(who["uid"], 4242, "{r}");
            assert_eq!(who["source"], "server", "{r}");
        }
    }
    // The grant to key 1 is in the trail with its principal.
    assert!(
        trail.contains(&format!("\"access-key:{k1}\"")),
        "no grant to key 1 in the trail"
    );
}

/// AWS records GenerateRandom in CloudTrail: so does kmsfs, for the caller
/// its access key names, with the size asked and never the bytes.
#[test]
fn generate_random_through_the_server_is_audited() {
    let test = "generate_random_through_the_server_is_audited";
    let Some(venv) = venv(test) else { return };
    let ks = Ks::new();
    let (ak, sk) = access_key(&ks, 4242);
    let mut server = Server::start(&ks, "127.0.0.1:0", &[]);
    let code = "import base64, sys, boto3\n\
        k = boto3.client('kms', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
            aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n\
        for n in (17, 33): assert len(k.generate_random(NumberOfBytes=n)['Plaintext']) == n\n\
        print(base64.b64encode(k.generate_random(NumberOfBytes=32)['Plaintext']).decode())\n";
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", code, &server.endpoint(), &ak, &sk])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run python");
    assert!(out.status.success(), "{}", common::describe(&out));
    let last = String::from_utf8_lossy(&out.stdout).trim().to_string();
    server.stop();
    let trail = ks.ok(&[
        "--output",
        "json",
        "audit",
        "show",
        "--event",
        "GenerateRandom",
    ]);
    let recs: Vec<serde_json::Value> = trail
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(recs.len(), 3, "{trail}");
    let sizes: Vec<u64> = recs
        .iter()
        .map(|r| {
            r["requestParameters"]["numberOfBytes"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(sizes, [17, 33, 32], "{trail}");
    for r in &recs {
        assert_eq!(r["userIdentity"]["uid"], 4242, "{r}");
        assert_eq!(r["userIdentity"]["source"], "server", "{r}");
    }
    assert!(!trail.contains(&last), "the random bytes reached the trail");
    assert!(ks.ok(&["audit", "verify"]).contains("verifies"));
}
