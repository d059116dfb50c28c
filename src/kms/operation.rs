//! The one list of key-service operations. Every surface derives from it:
//! the policy action (`action`), the audit trail's event name, the AWS
//! protocol's `X-Amz-Target` name that the server parses (`from_target`)
//! and dispatches with an exhaustive match, the server's request counters
//! (`index`), the administration rule the key service applies
//! (`is_administrative`), and the `kmsfs kms` subcommands (a test checks
//! that each served operation has one). docs/ARCHITECTURE.md says how to
//! add one.
#![forbid(unsafe_code)]

/// An operation of the key service, named as the AWS KMS API action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// GenerateDataKey.
    GenerateDataKey,
    /// GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyWithoutPlaintext,
    /// ReEncrypt, on the source key (decrypt side). The protocol's
    /// `ReEncrypt` parses to this half.
    ReEncryptFrom,
    /// ReEncrypt, on the destination key (encrypt side).
    ReEncryptTo,
    /// DescribeKey.
    DescribeKey,
    /// CreateKey.
    CreateKey,
    /// ListKeys.
    ListKeys,
    /// EnableKey.
    EnableKey,
    /// DisableKey.
    DisableKey,
    /// ScheduleKeyDeletion.
    ScheduleKeyDeletion,
    /// CancelKeyDeletion.
    CancelKeyDeletion,
    /// PutKeyPolicy.
    PutKeyPolicy,
    /// GetKeyPolicy.
    GetKeyPolicy,
    /// CreateAlias.
    CreateAlias,
    /// UpdateAlias.
    UpdateAlias,
    /// DeleteAlias.
    DeleteAlias,
    /// ListAliases.
    ListAliases,
    /// EnableKeyRotation.
    EnableKeyRotation,
    /// DisableKeyRotation.
    DisableKeyRotation,
    /// GetKeyRotationStatus.
    GetKeyRotationStatus,
    /// ListKeyRotations.
    ListKeyRotations,
    /// RotateKeyOnDemand.
    RotateKeyOnDemand,
    /// GetParametersForImport.
    GetParametersForImport,
    /// ImportKeyMaterial.
    ImportKeyMaterial,
    /// DeleteImportedKeyMaterial.
    DeleteImportedKeyMaterial,
    /// GenerateRandom (uses no key).
    GenerateRandom,
    /// UpdateKeyDescription.
    UpdateKeyDescription,
    /// TagResource.
    TagResource,
    /// UntagResource.
    UntagResource,
    /// ListResourceTags.
    ListResourceTags,
    /// ListKeyPolicies.
    ListKeyPolicies,
    /// CreateGrant.
    CreateGrant,
    /// ListGrants.
    ListGrants,
    /// ListRetirableGrants.
    ListRetirableGrants,
    /// RetireGrant.
    RetireGrant,
    /// RevokeGrant.
    RevokeGrant,
    /// The end of a key's deletion waiting period (CloudTrail's DeleteKey).
    DeleteKey,
    /// An automatic rotation (CloudTrail's RotateKey).
    RotateKey,
    /// Imported material reaching its ValidTo (CloudTrail's
    /// DeleteExpiredKeyMaterial).
    DeleteExpiredKeyMaterial,
}

impl Operation {
    /// The cryptographic operations, in the order of the AWS API reference.
    pub const CRYPTO: [Operation; 6] = [
        Operation::Encrypt,
        Operation::Decrypt,
        Operation::GenerateDataKey,
        Operation::GenerateDataKeyWithoutPlaintext,
        Operation::ReEncryptFrom,
        Operation::ReEncryptTo,
    ];

    /// Every operation, in declaration order (`ALL[op.index()] == op`).
    pub const ALL: [Operation; 41] = [
        Operation::Encrypt,
        Operation::Decrypt,
        Operation::GenerateDataKey,
        Operation::GenerateDataKeyWithoutPlaintext,
        Operation::ReEncryptFrom,
        Operation::ReEncryptTo,
        Operation::DescribeKey,
        Operation::CreateKey,
        Operation::ListKeys,
        Operation::EnableKey,
        Operation::DisableKey,
        Operation::ScheduleKeyDeletion,
        Operation::CancelKeyDeletion,
        Operation::PutKeyPolicy,
        Operation::GetKeyPolicy,
        Operation::CreateAlias,
        Operation::UpdateAlias,
        Operation::DeleteAlias,
        Operation::ListAliases,
        Operation::EnableKeyRotation,
        Operation::DisableKeyRotation,
        Operation::GetKeyRotationStatus,
        Operation::ListKeyRotations,
        Operation::RotateKeyOnDemand,
        Operation::GetParametersForImport,
        Operation::ImportKeyMaterial,
        Operation::DeleteImportedKeyMaterial,
        Operation::GenerateRandom,
        Operation::UpdateKeyDescription,
        Operation::TagResource,
        Operation::UntagResource,
        Operation::ListResourceTags,
        Operation::ListKeyPolicies,
        Operation::CreateGrant,
        Operation::ListGrants,
        Operation::ListRetirableGrants,
        Operation::RetireGrant,
        Operation::RevokeGrant,
        Operation::DeleteKey,
        Operation::RotateKey,
        Operation::DeleteExpiredKeyMaterial,
    ];

    /// The position in `ALL` (for tables indexed by operation, such as the
    /// server's request counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The policy action name, `kms:` included.
    pub fn action(self) -> &'static str {
        use Operation as O;
        match self {
            O::Encrypt => "kms:Encrypt",
            O::Decrypt => "kms:Decrypt",
            O::GenerateDataKey => "kms:GenerateDataKey",
            O::GenerateDataKeyWithoutPlaintext => "kms:GenerateDataKeyWithoutPlaintext",
            O::ReEncryptFrom => "kms:ReEncryptFrom",
            O::ReEncryptTo => "kms:ReEncryptTo",
            O::DescribeKey => "kms:DescribeKey",
            O::CreateKey => "kms:CreateKey",
            O::ListKeys => "kms:ListKeys",
            O::EnableKey => "kms:EnableKey",
            O::DisableKey => "kms:DisableKey",
            O::ScheduleKeyDeletion => "kms:ScheduleKeyDeletion",
            O::CancelKeyDeletion => "kms:CancelKeyDeletion",
            O::PutKeyPolicy => "kms:PutKeyPolicy",
            O::GetKeyPolicy => "kms:GetKeyPolicy",
            O::CreateAlias => "kms:CreateAlias",
            O::UpdateAlias => "kms:UpdateAlias",
            O::DeleteAlias => "kms:DeleteAlias",
            O::ListAliases => "kms:ListAliases",
            O::EnableKeyRotation => "kms:EnableKeyRotation",
            O::DisableKeyRotation => "kms:DisableKeyRotation",
            O::GetKeyRotationStatus => "kms:GetKeyRotationStatus",
            O::ListKeyRotations => "kms:ListKeyRotations",
            O::RotateKeyOnDemand => "kms:RotateKeyOnDemand",
            O::GetParametersForImport => "kms:GetParametersForImport",
            O::ImportKeyMaterial => "kms:ImportKeyMaterial",
            O::DeleteImportedKeyMaterial => "kms:DeleteImportedKeyMaterial",
            O::GenerateRandom => "kms:GenerateRandom",
            O::UpdateKeyDescription => "kms:UpdateKeyDescription",
            O::TagResource => "kms:TagResource",
            O::UntagResource => "kms:UntagResource",
            O::ListResourceTags => "kms:ListResourceTags",
            O::ListKeyPolicies => "kms:ListKeyPolicies",
            O::CreateGrant => "kms:CreateGrant",
            O::ListGrants => "kms:ListGrants",
            O::ListRetirableGrants => "kms:ListRetirableGrants",
            O::RetireGrant => "kms:RetireGrant",
            O::RevokeGrant => "kms:RevokeGrant",
            O::DeleteKey => "kms:DeleteKey",
            O::RotateKey => "kms:RotateKey",
            O::DeleteExpiredKeyMaterial => "kms:DeleteExpiredKeyMaterial",
        }
    }

    /// The AWS action name (`kms:Decrypt` without the prefix).
    pub fn as_str(self) -> &'static str {
        let action = self.action();
        action.strip_prefix("kms:").unwrap_or(action)
    }

    /// The CloudTrail `eventName`: the API called (both halves of ReEncrypt
    /// are `ReEncrypt`).
    pub fn event_name(self) -> &'static str {
        match self {
            Operation::ReEncryptFrom | Operation::ReEncryptTo => "ReEncrypt",
            o => o.as_str(),
        }
    }

    /// The protocol's `X-Amz-Target` name (after `TrentService.`) of the
    /// operations a client can call; None for what the keystore does by
    /// itself and for ReEncrypt's destination half (the call is one).
    pub fn target(self) -> Option<&'static str> {
        use Operation as O;
        match self {
            O::ReEncryptFrom => Some("ReEncrypt"),
            O::ReEncryptTo | O::DeleteKey | O::RotateKey | O::DeleteExpiredKeyMaterial => None,
            O::Encrypt
            | O::Decrypt
            | O::GenerateDataKey
            | O::GenerateDataKeyWithoutPlaintext
            | O::DescribeKey
            | O::CreateKey
            | O::ListKeys
            | O::EnableKey
            | O::DisableKey
            | O::ScheduleKeyDeletion
            | O::CancelKeyDeletion
            | O::PutKeyPolicy
            | O::GetKeyPolicy
            | O::CreateAlias
            | O::UpdateAlias
            | O::DeleteAlias
            | O::ListAliases
            | O::EnableKeyRotation
            | O::DisableKeyRotation
            | O::GetKeyRotationStatus
            | O::ListKeyRotations
            | O::RotateKeyOnDemand
            | O::GetParametersForImport
            | O::ImportKeyMaterial
            | O::DeleteImportedKeyMaterial
            | O::GenerateRandom
            | O::UpdateKeyDescription
            | O::TagResource
            | O::UntagResource
            | O::ListResourceTags
            | O::ListKeyPolicies
            | O::CreateGrant
            | O::ListGrants
            | O::ListRetirableGrants
            | O::RetireGrant
            | O::RevokeGrant => Some(self.as_str()),
        }
    }

    /// The operation an `X-Amz-Target` name (after `TrentService.`) calls.
    pub fn from_target(name: &str) -> Option<Operation> {
        Self::ALL.into_iter().find(|o| o.target() == Some(name))
    }

    /// The operations a client can call, by their `X-Amz-Target` name.
    pub fn served() -> impl Iterator<Item = (Operation, &'static str)> {
        Self::ALL
            .into_iter()
            .filter_map(|o| o.target().map(|t| (o, t)))
    }

    /// What a key policy must allow besides the operation itself.
    /// ReEncrypt's halves also need their plaintext side, Decrypt on the
    /// source and Encrypt on the destination (stricter than AWS), so that
    /// no sequence of operations gives a principal the plaintext of a key
    /// whose policy does not allow it Decrypt.
    pub fn also_requires(self) -> Option<Operation> {
        match self {
            Operation::ReEncryptFrom => Some(Operation::Decrypt),
            Operation::ReEncryptTo => Some(Operation::Encrypt),
            _ => None,
        }
    }

    /// True for the cryptographic operations.
    pub fn is_crypto(self) -> bool {
        Self::CRYPTO.contains(&self)
    }

    /// True for operations that change keys, aliases or policies. At a
    /// boundary (a protocol server) the key service allows them to root
    /// and the keystore's owner, and to others only as a key policy grants
    /// on every key they touch; one that names no key (CreateKey) only to
    /// root and the owner.
    pub fn is_administrative(self) -> bool {
        use Operation as O;
        match self {
            O::CreateKey
            | O::CreateAlias
            | O::UpdateAlias
            | O::DeleteAlias
            | O::EnableKey
            | O::DisableKey
            | O::ScheduleKeyDeletion
            | O::CancelKeyDeletion
            | O::EnableKeyRotation
            | O::DisableKeyRotation
            | O::RotateKeyOnDemand
            | O::PutKeyPolicy
            | O::GetParametersForImport
            | O::ImportKeyMaterial
            | O::DeleteImportedKeyMaterial
            | O::UpdateKeyDescription
            | O::TagResource
            | O::UntagResource
            | O::CreateGrant
            | O::RetireGrant
            | O::RevokeGrant => true,
            O::Encrypt
            | O::Decrypt
            | O::GenerateDataKey
            | O::GenerateDataKeyWithoutPlaintext
            | O::ReEncryptFrom
            | O::ReEncryptTo
            | O::DescribeKey
            | O::ListKeys
            | O::GetKeyPolicy
            | O::ListAliases
            | O::GetKeyRotationStatus
            | O::ListKeyRotations
            | O::GenerateRandom
            | O::ListResourceTags
            | O::ListKeyPolicies
            | O::ListGrants
            | O::ListRetirableGrants
            | O::DeleteKey
            | O::RotateKey
            | O::DeleteExpiredKeyMaterial => false,
        }
    }

    /// True for operations that change the keystore (their records are
    /// durable before the operation returns).
    pub fn is_change(self) -> bool {
        use Operation as O;
        self.is_administrative()
            || matches!(
                self,
                O::DeleteKey | O::RotateKey | O::DeleteExpiredKeyMaterial
            )
    }

    /// True for operations a key policy governs (as in AWS: not CreateKey,
    /// ListKeys, ListAliases or GenerateRandom, which concern no one key,
    /// nor what the keystore does by itself when a date is reached).
    pub fn is_governed(self) -> bool {
        !matches!(
            self,
            Operation::CreateKey
                | Operation::ListKeys
                | Operation::ListAliases
                | Operation::ListRetirableGrants
                | Operation::GenerateRandom
                | Operation::DeleteKey
                | Operation::RotateKey
                | Operation::DeleteExpiredKeyMaterial
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_and_complete() {
        for (i, op) in Operation::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
        let names: std::collections::HashSet<&str> =
            Operation::ALL.iter().map(|o| o.action()).collect();
        assert_eq!(
            names.len(),
            Operation::ALL.len(),
            "two operations share an action"
        );
    }

    #[test]
    fn targets_round_trip() {
        for (op, t) in Operation::served() {
            assert_eq!(Operation::from_target(t), Some(op), "{t}");
        }
        assert_eq!(
            Operation::from_target("ReEncrypt"),
            Some(Operation::ReEncryptFrom)
        );
        assert_eq!(Operation::from_target("ReEncryptTo"), None);
        assert_eq!(Operation::from_target("DeleteKey"), None);
        assert_eq!(Operation::from_target(""), None);
        assert_eq!(Operation::served().count(), 37);
    }

    #[test]
    fn administration_is_a_change_and_served() {
        for op in Operation::ALL.into_iter().filter(|o| o.is_administrative()) {
            assert!(op.is_change(), "{op:?}");
            assert!(op.target().is_some(), "{op:?}");
        }
    }
}
