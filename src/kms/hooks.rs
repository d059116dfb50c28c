//! The two points every key use passes through: authorization (the future key
//! policy evaluation for the caller's uid/gid) and the audit hook (the future
//! hash-chained audit trail plugs in as an [`AuditSink`]).
#![forbid(unsafe_code)]

use super::policy::KeyPolicy;
use super::{Caller, KmsError};

/// The operation being performed, named as the AWS KMS API action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// GenerateDataKey.
    GenerateDataKey,
    /// GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyWithoutPlaintext,
    /// ReEncrypt, on the source key (decrypt side).
    ReEncryptFrom,
    /// ReEncrypt, on the destination key (encrypt side).
    ReEncryptTo,
}

impl Operation {
    /// The policy action name, `kms:` included.
    pub fn action(self) -> &'static str {
        match self {
            Operation::Encrypt => "kms:Encrypt",
            Operation::Decrypt => "kms:Decrypt",
            Operation::GenerateDataKey => "kms:GenerateDataKey",
            Operation::GenerateDataKeyWithoutPlaintext => "kms:GenerateDataKeyWithoutPlaintext",
            Operation::ReEncryptFrom => "kms:ReEncryptFrom",
            Operation::ReEncryptTo => "kms:ReEncryptTo",
        }
    }

    /// The AWS action name (`kms:Decrypt` without the prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Encrypt => "Encrypt",
            Operation::Decrypt => "Decrypt",
            Operation::GenerateDataKey => "GenerateDataKey",
            Operation::GenerateDataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
            Operation::ReEncryptFrom => "ReEncryptFrom",
            Operation::ReEncryptTo => "ReEncryptTo",
        }
    }
}

/// One use (or refused use) of a key, as the audit trail will record it.
/// Carries no secrets.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// Who asked.
    pub caller: &'a Caller,
    /// What.
    pub operation: Operation,
    /// The resolved key id, or what the caller named when it did not resolve.
    pub key_id: &'a str,
    /// Key material version used, when known.
    pub material_version: Option<u32>,
    /// `Ok` or the AWS error code of the refusal.
    pub result: Result<(), &'static str>,
    /// Epoch seconds, from `kms::clock` (0 if the clock override is invalid).
    pub time: i64,
}

/// Receives every key use. Implementations must not block for long: they are
/// called on the path of every cryptographic operation.
pub trait AuditSink: Send + Sync {
    /// Records one event.
    fn record(&self, event: &AuditEvent<'_>);
}

/// Decides whether `caller` may perform `op` with the key `key_id`, whose
/// policy is `policy`. A key without a policy allows every caller (the
/// keystore's file permissions and root key are the boundary); with one,
/// explicit Deny wins, then Allow, else the call is denied.
pub fn authorize(
    caller: &Caller,
    key_id: &str,
    policy: Option<&KeyPolicy>,
    op: Operation,
) -> Result<(), KmsError> {
    match policy {
        Some(p) if !p.allows(caller, op) => Err(KmsError::AccessDenied {
            key_id: key_id.to_string(),
            action: op,
            principal: (caller.uid, caller.gid),
        }),
        _ => Ok(()),
    }
}
