//! Grants: a key's permission for one principal to run some operations,
//! optionally only with an encryption context (AWS's CreateGrant), kept in
//! the sealed body beside the keys; `service::authz::decide` consults them
//! after the key policy.
#![forbid(unsafe_code)]

use super::*;
use crate::kms::{EncryptionContext, KmsError, Operation, ValidationCode};

/// Most grants a key may carry (AWS: 50,000; kept small here, every grant
/// is in the sealed body).
pub const MAX_GRANTS_PER_KEY: usize = 500;

/// The operations a grant may allow (AWS's GrantOperation values that
/// apply to a symmetric key, less CreateGrant: a grant does not delegate).
pub const GRANT_OPERATIONS: [Operation; 8] = [
    Operation::Decrypt,
    Operation::Encrypt,
    Operation::GenerateDataKey,
    Operation::GenerateDataKeyWithoutPlaintext,
    Operation::ReEncryptFrom,
    Operation::ReEncryptTo,
    Operation::DescribeKey,
    Operation::RetireGrant,
];

/// AWS's GrantOperation values kmsfs has no use for (asymmetric and HMAC
/// keys, and CreateGrant, which kmsfs grants do not delegate).
const OTHER_GRANT_OPERATIONS: [&str; 11] = [
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "Encapsulate",
    "Decapsulate",
];

/// A grant's encryption context constraints (AWS's GrantConstraints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GrantConstraints {
    /// The request's context must be exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
    /// The request's context must include these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
}

impl GrantConstraints {
    /// True when `ctx` satisfies both constraints. As in AWS, context keys
    /// compare without case, values with it.
    pub fn hold(&self, ctx: Option<&EncryptionContext>) -> bool {
        let lower = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| (k.to_lowercase(), v.clone()))
                .collect()
        };
        let given = ctx.map(|c| lower(&c.0)).unwrap_or_default();
        let equals = self
            .encryption_context_equals
            .as_ref()
            .is_none_or(|m| lower(m) == given);
        let subset = self.encryption_context_subset.as_ref().is_none_or(|m| {
            lower(m)
                .iter()
                .all(|(k, v)| given.get(k).is_some_and(|g| g == v))
        });
        equals && subset
    }
}

/// One grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRecord {
    /// 64 hex digits.
    pub grant_id: String,
    /// The key it is on.
    pub key_id: String,
    /// A name for people (AWS: CreateGrant with the same name is idempotent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Epoch seconds.
    pub creation_date: i64,
    /// Who it allows: `uid:N`, `user:NAME`, `gid:N` or `group:NAME`.
    pub grantee: String,
    /// Who may retire it besides root, the owner and a key policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring: Option<String>,
    /// The operations it allows (`GRANT_OPERATIONS`), by AWS name.
    pub operations: Vec<String>,
    /// Encryption context constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<GrantConstraints>,
    /// The uid that created it.
    pub issuer_uid: u32,
    /// The random part of its grant token (hex).
    pub token: String,
}

impl GrantRecord {
    /// True when the grant allows `op` with context `ctx` (the principal is
    /// matched by the caller of this).
    pub fn allows(&self, op: Operation, ctx: Option<&EncryptionContext>) -> bool {
        self.operations.iter().any(|o| o == op.as_str())
            && self.constraints.as_ref().is_none_or(|c| c.hold(ctx))
    }

    /// The grant token handed out by CreateGrant: `kmsfs-grant:` then the
    /// grant id and the random token part.
    pub fn grant_token(&self) -> String {
        format!("kmsfs-grant:{}:{}", self.grant_id, self.token)
    }
}

/// Parses the Operations of a CreateGrant request (each once, AWS's names).
pub fn parse_grant_operations(ops: &[String]) -> Result<Vec<String>, KmsError> {
    if ops.is_empty() {
        return Err(KmsError::invalid(
            "1 validation error detected: Value '[]' at 'operations' failed to satisfy \
             constraint: Member must have length greater than or equal to 1"
                .into(),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for o in ops {
        if GRANT_OPERATIONS.iter().any(|g| g.as_str() == o) {
            if !out.contains(o) {
                out.push(o.clone());
            }
        } else if OTHER_GRANT_OPERATIONS.contains(&o.as_str()) {
            return Err(KmsError::invalid(format!(
                "the grant operation {o} is not valid for this key: kmsfs keys are symmetric \
                 and kmsfs grants allow {}",
                GRANT_OPERATIONS.map(|g| g.as_str()).join(", ")
            )));
        } else {
            return Err(KmsError::invalid(format!(
                "1 validation error detected: Value '{o}' at 'operations' failed to satisfy \
                 constraint: Member must satisfy enum value set"
            )));
        }
    }
    Ok(out)
}

/// Parses a grant token: the grant id it names, when it is one of kmsfs's.
pub fn parse_grant_token(token: &str) -> Result<(&str, &str), KmsError> {
    let bad = || {
        KmsError::invalid_with(
            ValidationCode::InvalidGrantToken,
            "the grant token is not one this keystore issued".into(),
        )
    };
    let rest = token.strip_prefix("kmsfs-grant:").ok_or_else(bad)?;
    let (id, secret) = rest.split_once(':').ok_or_else(bad)?;
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit());
    if !(hex64(id) && secret.len() == 32 && secret.bytes().all(|c| c.is_ascii_hexdigit())) {
        return Err(bad());
    }
    Ok((id, secret))
}

impl StoreState {
    /// The grants of key `key_id`, oldest first.
    pub fn grants_of(&self, key_id: &str) -> Vec<&GrantRecord> {
        let mut v: Vec<&GrantRecord> = self
            .grants
            .values()
            .filter(|g| g.key_id == key_id)
            .collect();
        v.sort_by(|a, b| (a.creation_date, &a.grant_id).cmp(&(b.creation_date, &b.grant_id)));
        v
    }
}
