//! The audit trail: who used which key, when, for what. `Operation` names
//! every key operation by its AWS API name; `Requester` is who asked (from
//! /proc); `record` builds one CloudTrail-shaped record; `trail` appends
//! records to the hash-chained, signed files beside the keystore; `verify`
//! checks such a trail and `read` reads it back for `kmsfs audit show`.
//! `AuditSink` lets a test or an embedder see every event as well.
#![forbid(unsafe_code)]

use super::Caller;

pub mod read;
pub mod record;
pub mod time;
pub mod trail;
pub mod verify;

pub use trail::{Durability, Trail};

/// The operation being performed, named as the AWS KMS API action.
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
    /// ReEncrypt, on the source key (decrypt side).
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

    /// Every operation.
    pub const ALL: [Operation; 30] = [
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
        Operation::DeleteKey,
        Operation::RotateKey,
        Operation::DeleteExpiredKeyMaterial,
    ];

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

    /// True for the cryptographic operations.
    pub fn is_crypto(self) -> bool {
        Self::CRYPTO.contains(&self)
    }

    /// True for operations that change the keystore (their records are
    /// durable before the operation returns).
    pub fn is_change(self) -> bool {
        use Operation as O;
        matches!(
            self,
            O::CreateKey
                | O::EnableKey
                | O::DisableKey
                | O::ScheduleKeyDeletion
                | O::CancelKeyDeletion
                | O::PutKeyPolicy
                | O::CreateAlias
                | O::UpdateAlias
                | O::DeleteAlias
                | O::EnableKeyRotation
                | O::DisableKeyRotation
                | O::RotateKeyOnDemand
                | O::GetParametersForImport
                | O::ImportKeyMaterial
                | O::DeleteImportedKeyMaterial
                | O::DeleteKey
                | O::RotateKey
                | O::DeleteExpiredKeyMaterial
        )
    }

    /// True for operations a key policy governs (as in AWS: not CreateKey,
    /// ListKeys or ListAliases, which concern no one key, nor what the
    /// keystore does by itself when a date is reached).
    pub fn is_governed(self) -> bool {
        !matches!(
            self,
            Operation::CreateKey
                | Operation::ListKeys
                | Operation::ListAliases
                | Operation::DeleteKey
                | Operation::RotateKey
                | Operation::DeleteExpiredKeyMaterial
        )
    }
}

/// Which kind of program asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerSource {
    /// The command line, with direct access to the keystore.
    Cli,
    /// The mount daemon, on behalf of a program opening a file.
    Mount,
    /// A protocol server, on behalf of a network client.
    Server,
}

impl CallerSource {
    /// `cli`, `mount` or `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallerSource::Cli => "cli",
            CallerSource::Mount => "mount",
            CallerSource::Server => "server",
        }
    }
}

/// What /proc says about the process that asked: its groups (primary and
/// supplementary, for policies), its name and executable (for the trail).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    /// The process (thread group) id, when /proc had it.
    pub pid: Option<u32>,
    /// Supplementary groups; None when they could not be read for the
    /// caller's uid (a group Deny then applies, a group Allow does not).
    pub groups: Option<Vec<u32>>,
    /// The process name (`comm`).
    pub process_name: Option<String>,
    /// The executable (`/proc/PID/exe`).
    pub executable: Option<String>,
}

impl Requester {
    /// Reads /proc for `caller.pid`. The groups are believed only when the
    /// status there shows the caller's uid and gid (its filesystem ids, as
    /// FUSE reports them): a pid reused by another process gives none.
    pub fn of(caller: &Caller) -> Self {
        let mut r = Self::of_status(caller);
        if r.pid.is_some() {
            r.executable = crate::os::process::executable(caller.pid);
        }
        r
    }

    fn of_status(caller: &Caller) -> Self {
        if caller.pid == 0 {
            return Self::default();
        }
        let Some(status) = crate::os::process::status(caller.pid) else {
            return Self::default();
        };
        let field = |n: &str| crate::os::process::status_field(&status, n);
        // Uid: real effective saved filesystem.
        let id_matches = |n: &str, want: u32| {
            field(n)
                .and_then(|v| v.split_whitespace().nth(3))
                .and_then(|v| v.parse::<u32>().ok())
                == Some(want)
        };
        let groups = if id_matches("Uid", caller.uid) && id_matches("Gid", caller.gid) {
            field("Groups").map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse::<u32>().ok())
                    .collect()
            })
        } else {
            None
        };
        Self {
            pid: field("Tgid").and_then(|v| v.parse().ok()),
            groups,
            process_name: field("Name").map(str::to_string),
            executable: None,
        }
    }

    /// Only the groups (what a key policy needs), without the process's
    /// name and executable: for a service that does not audit.
    pub fn groups_of(caller: &Caller) -> Self {
        let mut r = Self::of_status(caller);
        r.process_name = None;
        r
    }

    /// True when `gid` is the caller's primary group or one of its
    /// supplementary groups (None: unknown).
    pub fn in_group(&self, caller: &Caller, gid: u32) -> Option<bool> {
        if caller.gid == gid {
            return Some(true);
        }
        self.groups.as_ref().map(|g| g.contains(&gid))
    }
}

/// A file open that needs a data key, as the mount saw it.
#[derive(Debug, Clone, Copy)]
pub struct FileAccess<'a> {
    /// The path the program opened, relative to the mount point.
    pub path: &'a str,
    /// Who, from /proc.
    pub requester: &'a Requester,
}

/// One use (or refused use) of a key, as an `AuditSink` sees it.
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

/// Receives every key use besides the trail. Implementations must not block
/// for long: they are called on the path of every cryptographic operation.
pub trait AuditSink: Send + Sync {
    /// Records one event.
    fn record(&self, event: &AuditEvent<'_>);
}
