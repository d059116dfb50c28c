//! Grants through boto3 against `kmsfs kms serve` (tests/server/grants.py):
//! another user with a grant can decrypt and without it cannot; a retired
//! or revoked grant refuses; a constraint mismatch refuses; an explicit
//! Deny in the key policy wins; grant tokens are checked.

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
}
