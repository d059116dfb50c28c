//! The JSON shapes of AWS KMS API results that kmsfs produces, in one place:
//! the CLI's `--output json` and the protocol server (`kmsfs kms serve`) both
//! build their answers here, so the two never drift apart. Timestamps stay
//! epoch seconds (the wire form); the CLI turns them into RFC 3339 for people.
#![forbid(unsafe_code)]

use serde_json::{Value, json};

use super::KeyMetadata;

/// The encryption algorithm name AWS reports for symmetric keys.
pub const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// `KeyMetadata` as AWS returns it (with the fields kmsfs keys always have,
/// and the account id its ARN holds).
pub fn metadata_json(m: &KeyMetadata) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        if let Some(account) = arn_account(&m.arn) {
            o.insert("AWSAccountId".into(), json!(account));
        }
        o.insert("CustomerMasterKeySpec".into(), json!(m.key_spec));
        o.insert("KeyManager".into(), json!("CUSTOMER"));
        o.insert("EncryptionAlgorithms".into(), json!([SYMMETRIC_DEFAULT]));
        o.insert("MultiRegion".into(), json!(false));
        if m.current_key_material_version > 0 {
            o.insert(
                "CurrentKeyMaterialId".into(),
                json!(m.current_key_material_version.to_string()),
            );
        }
    }
    v
}

/// `KeyMetadata` exactly as botocore's model has it, for the protocol
/// server: `metadata_json` without kmsfs's `CurrentKeyMaterialVersion`
/// (`CurrentKeyMaterialId` says the same, as the trail's `keyMaterialId`).
pub fn metadata_json_aws(m: &KeyMetadata) -> Value {
    let mut v = metadata_json(m);
    if let Value::Object(o) = &mut v {
        o.remove("CurrentKeyMaterialVersion");
    }
    v
}

/// The account field of an `arn:aws:...` ARN.
pub fn arn_account(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:aws:")?;
    let mut parts = rest.splitn(4, ':');
    let (_service, _region, account) = (parts.next()?, parts.next()?, parts.next()?);
    (!account.is_empty()).then_some(account)
}

/// The result of Encrypt and GenerateDataKeyWithoutPlaintext (base64 blob,
/// key ARN).
pub fn ciphertext_json(blob_b64: &str, key_arn: &str, with_algorithm: bool) -> Value {
    let mut v = json!({ "CiphertextBlob": blob_b64, "KeyId": key_arn });
    if with_algorithm && let Value::Object(o) = &mut v {
        o.insert("EncryptionAlgorithm".into(), json!(SYMMETRIC_DEFAULT));
    }
    v
}

/// The result of ReEncrypt.
pub fn re_encrypted_json(blob_b64: &str, source_arn: Option<&str>, key_arn: &str) -> Value {
    json!({
        "CiphertextBlob": blob_b64,
        "SourceKeyId": source_arn,
        "KeyId": key_arn,
        "SourceEncryptionAlgorithm": SYMMETRIC_DEFAULT,
        "DestinationEncryptionAlgorithm": SYMMETRIC_DEFAULT,
    })
}

/// A page of a list: `field` holding `items[start..start+limit]`, with
/// `Truncated` and (when truncated) `NextMarker`, as AWS paginates. The
/// marker is the position of the next item.
pub fn page<T: serde::Serialize>(field: &str, items: &[T], start: usize, limit: usize) -> Value {
    let start = start.min(items.len());
    let end = start.saturating_add(limit).min(items.len());
    let mut o = serde_json::Map::new();
    o.insert(
        field.into(),
        serde_json::to_value(&items[start..end]).unwrap_or(Value::Null),
    );
    o.insert("Truncated".into(), json!(end < items.len()));
    if end < items.len() {
        o.insert("NextMarker".into(), json!(end.to_string()));
    }
    Value::Object(o)
}

/// A `GrantListEntry` as AWS returns it: `key_arn` is the key's ARN and
/// `account` the keystore's account id (the issuing account).
pub fn grant_json(g: &super::model::GrantRecord, key_arn: &str, account: &str) -> Value {
    let mut v = json!({
        "KeyId": key_arn,
        "GrantId": g.grant_id,
        "CreationDate": g.creation_date,
        "GranteePrincipal": g.grantee,
        "IssuingAccount": format!("arn:aws:iam::{account}:root"),
        "Operations": g.operations,
    });
    if let Some(n) = &g.name {
        v["Name"] = json!(n);
    }
    if let Some(p) = &g.retiring {
        v["RetiringPrincipal"] = json!(p);
    }
    if let Some(c) = &g.constraints {
        v["Constraints"] = json!(c);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_the_list_once() {
        let items: Vec<u32> = (0..5).collect();
        let p = page("Keys", &items, 0, 2);
        assert_eq!(p["Keys"], json!([0, 1]));
        assert_eq!(p["Truncated"], json!(true));
        assert_eq!(p["NextMarker"], json!("2"));
        let p = page("Keys", &items, 4, 2);
        assert_eq!(p["Keys"], json!([4]));
        assert_eq!(p["Truncated"], json!(false));
        assert!(p.get("NextMarker").is_none());
        let p = page("Keys", &items, 9, 2);
        assert_eq!(p["Keys"], json!([]));
    }
}
