//! `aws kms` fidelity for scripts: the fields and refusals AWS gives.

mod common;

use common::Ks;

#[test]
fn cancel_key_deletion_returns_the_key_arn_once() {
    let ks = Ks::new();
    let v = ks.json(&["kms", "create-key"]);
    let arn = v["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    let id = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    ks.ok(&["kms", "schedule-key-deletion", "--key-id", &id]);
    let c = ks.json(&["kms", "cancel-key-deletion", "--key-id", &id]);
    assert_eq!(c["KeyId"].as_str(), Some(arn.as_str()), "{c}");
    assert_eq!(arn.matches("arn:").count(), 1, "{arn}");
}

#[test]
fn encrypt_refuses_an_empty_plaintext() {
    let ks = Ks::new();
    let v = ks.json(&["kms", "create-key"]);
    let id = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let empty = ks.file("empty");
    std::fs::write(&empty, b"").unwrap();
    let o = ks.run(&[
        "kms",
        "encrypt",
        "--key-id",
        &id,
        "--plaintext",
        &format!("fileb://{}", empty.display()),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(common::EXIT_USAGE), "{err}");
    assert!(
        err.contains("Member must have length greater than or equal to 1"),
        "{err}"
    );
}
