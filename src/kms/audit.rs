//! The audit sink every key use is reported to: the operations by their AWS
//! action names, the event (who, what, which key, the outcome) and the
//! [`AuditSink`] trait a trail implements.
#![forbid(unsafe_code)]

use super::Caller;

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
    /// Every operation, in the order of the AWS API reference.
    pub const ALL: [Operation; 6] = [
        Operation::Encrypt,
        Operation::Decrypt,
        Operation::GenerateDataKey,
        Operation::GenerateDataKeyWithoutPlaintext,
        Operation::ReEncryptFrom,
        Operation::ReEncryptTo,
    ];

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
        let action = self.action();
        action.strip_prefix("kms:").unwrap_or(action)
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
