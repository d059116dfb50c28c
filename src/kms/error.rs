//! `KmsError`: every failure of the key service, one variant per AWS KMS
//! exception, each carrying the data its remedy needs (never a secret).
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

use super::{KeyState, Operation, clock};

/// Errors of the key service. Variants are named after the AWS KMS exceptions
/// they stand for; `aws_code()` gives that name. Callers decide by variant and
/// field, never by the text, which is for people.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// No key, alias or key material by that name.
    #[error("{what}")]
    NotFound {
        /// What is missing.
        what: Missing,
    },
    /// The key is disabled.
    #[error("key {key_id} is disabled")]
    Disabled {
        /// The disabled key.
        key_id: String,
    },
    /// The key's state does not allow the operation (pending deletion, pending import, ...).
    #[error("{}", problem.describe(key_id, *state))]
    InvalidState {
        /// The key.
        key_id: String,
        /// Its state when it refused.
        state: KeyState,
        /// What its state forbids.
        problem: StateProblem,
    },
    /// The ciphertext blob is malformed, was modified, was made by another
    /// keystore, or its encryption context differs.
    #[error("{reason}")]
    InvalidCiphertext {
        /// Why it cannot be decrypted.
        reason: String,
    },
    /// A key id was given to Decrypt and the blob was made under another key.
    #[error("the ciphertext was made under key {made_under}, not {given}")]
    IncorrectKey {
        /// The key the ciphertext names.
        made_under: String,
        /// The key the caller said it was made under.
        given: String,
    },
    /// The caller is not allowed by the key's policy.
    #[error(
        "uid {} gid {} is not allowed {} on key {key_id} by its key policy",
        principal.0,
        principal.1,
        action.action()
    )]
    AccessDenied {
        /// The key whose policy refused.
        key_id: String,
        /// The operation refused.
        action: Operation,
        /// The caller's (uid, gid).
        principal: (u32, u32),
    },
    /// At a boundary (a protocol server): the caller is neither root nor
    /// the keystore's owner, and no key policy grants it the operation (a
    /// key without a policy, or an operation that names no key).
    #[error(
        "uid {} gid {} is not allowed {}{}: through this server, CreateKey and keys without a \
         key policy are for root and uid {owner} (the keystore's owner); a key policy can \
         grant others rights on a key",
        principal.0,
        principal.1,
        action.action(),
        key_id.as_deref().map(|k| format!(" on key {k}")).unwrap_or_default()
    )]
    OwnerOnly {
        /// The key concerned, when the operation names one.
        key_id: Option<String>,
        /// The operation refused.
        action: Operation,
        /// The caller's (uid, gid).
        principal: (u32, u32),
        /// The keystore's owner.
        owner: u32,
    },
    /// The audit trail cannot be written: a change to the keystore is
    /// refused (or, when it was already made, reported as unrecorded).
    #[error("the audit trail cannot be written: {problem}")]
    AuditTrail {
        /// What failed, and whether the change was made.
        problem: String,
    },
    /// A directory on the path to the keystore can be changed by another user.
    #[error(
        "refusing the keystore {}: {} can be changed by another user (owner uid {owner_uid}, mode {mode:o}), \
         who could swap the keystore directory between two writes; keep the keystore on a \
         path that only root and you can change, or run kmsfs as that directory's owner",
        keystore.display(),
        dir.display()
    )]
    UntrustedKeystorePath {
        /// The keystore directory asked for.
        keystore: PathBuf,
        /// The directory on its path that others can change.
        dir: PathBuf,
        /// That directory's owner.
        owner_uid: u32,
        /// That directory's mode.
        mode: u32,
    },
    /// An argument is out of range or malformed.
    #[error("{}{message}", code.map(ValidationCode::prefix).unwrap_or(""))]
    Validation {
        /// Which kind, for the errors a caller may act on.
        code: Option<ValidationCode>,
        /// What is wrong with the argument.
        message: String,
    },
    /// An alias or keystore with that name exists already.
    #[error("{what}")]
    AlreadyExists {
        /// What exists.
        what: Existing,
    },
    /// There is no keystore at the given place.
    #[error("there is no keystore in {}", path.display())]
    KeystoreNotFound {
        /// Where none was found.
        path: PathBuf,
    },
    /// The passphrase or root key does not open the keystore.
    #[error("{problem}")]
    WrongRootKey {
        /// Which root key is wrong or missing.
        problem: RootKeyProblem,
    },
    /// The keystore file is damaged or of an unknown version.
    #[error("{problem}{}", if *change_refused { "; the change was refused and nothing was written" } else { "" })]
    CorruptKeystore {
        /// What is damaged.
        problem: String,
        /// True when a change was refused because of it (the current
        /// generation must be repaired before any change is written).
        change_refused: bool,
    },
    /// An I/O error on the keystore (disk full, permissions, ...).
    #[error("{message}{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Io {
        /// What failed (the OS error, when there is one, is `source`).
        message: String,
        /// The OS error.
        source: Option<std::io::Error>,
    },
    /// A failure of the service that is not the caller's fault.
    #[error("{message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

impl KmsError {
    /// A damaged keystore (no change was being made).
    pub fn corrupt(problem: String) -> Self {
        KmsError::CorruptKeystore {
            problem,
            change_refused: false,
        }
    }

    /// An I/O failure on the keystore.
    pub fn io(message: String) -> Self {
        KmsError::Io {
            message,
            source: None,
        }
    }

    /// An I/O failure on the keystore: `message` says what failed, `source`
    /// how (shown after it, and kept as the error's source).
    pub fn io_from(message: String, source: std::io::Error) -> Self {
        KmsError::Io {
            message,
            source: Some(source),
        }
    }

    /// A failure that is not the caller's fault.
    pub fn internal(message: String) -> Self {
        KmsError::Internal { message }
    }

    /// An invalid argument without an AWS sub-code.
    pub fn invalid(message: String) -> Self {
        KmsError::Validation {
            code: None,
            message,
        }
    }

    /// An invalid argument with an AWS sub-code.
    pub fn invalid_with(code: ValidationCode, message: String) -> Self {
        KmsError::Validation {
            code: Some(code),
            message,
        }
    }

    /// A key policy's parse error as AWS's MalformedPolicyDocumentException
    /// (other errors unchanged).
    pub fn into_malformed_policy(self) -> Self {
        match self {
            KmsError::Validation {
                code: None,
                message,
            } => KmsError::invalid_with(ValidationCode::MalformedPolicy, message),
            e => e,
        }
    }

    /// A ciphertext that cannot be decrypted.
    pub fn invalid_ciphertext(reason: String) -> Self {
        KmsError::InvalidCiphertext { reason }
    }

    /// No such key, alias or material.
    pub fn not_found(what: Missing) -> Self {
        KmsError::NotFound { what }
    }

    /// The AWS KMS exception name this error stands for.
    pub fn aws_code(&self) -> &'static str {
        match self {
            KmsError::NotFound { .. } => "NotFoundException",
            KmsError::Disabled { .. } => "DisabledException",
            KmsError::InvalidState { .. } => "KMSInvalidStateException",
            KmsError::InvalidCiphertext { .. } => "InvalidCiphertextException",
            KmsError::IncorrectKey { .. } => "IncorrectKeyException",
            KmsError::AccessDenied { .. }
            | KmsError::OwnerOnly { .. }
            | KmsError::UntrustedKeystorePath { .. } => "AccessDeniedException",
            KmsError::Validation { code: Some(c), .. } => c.aws_exception(),
            KmsError::Validation { code: None, .. } => "ValidationException",
            KmsError::AlreadyExists { .. } => "AlreadyExistsException",
            KmsError::KeystoreNotFound { .. } => "KeystoreNotFound",
            KmsError::WrongRootKey { .. } => "KeystoreAccessDenied",
            KmsError::CorruptKeystore { .. } => "KeystoreCorrupt",
            KmsError::Io { .. } => "KeystoreIOError",
            KmsError::AuditTrail { .. } => "AuditTrailUnavailable",
            KmsError::Internal { .. } => "KMSInternalException",
        }
    }

    /// True for errors that mean "this caller may not use this key now"
    /// (the mount maps them to EACCES); false for corruption and I/O.
    pub fn is_access_refusal(&self) -> bool {
        matches!(
            self,
            KmsError::NotFound { .. }
                | KmsError::Disabled { .. }
                | KmsError::InvalidState { .. }
                | KmsError::AccessDenied { .. }
                | KmsError::OwnerOnly { .. }
                | KmsError::UntrustedKeystorePath { .. }
                | KmsError::IncorrectKey { .. }
        )
    }
}

/// What `NotFound` did not find.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// No key with this id.
    Key {
        /// The id asked for.
        key_id: String,
    },
    /// An alias names a key that does not exist.
    AliasTarget {
        /// The key the alias names.
        key_id: String,
        /// The alias.
        alias: String,
    },
    /// No alias of this name.
    Alias {
        /// The alias name.
        name: String,
    },
    /// Not a key id, ARN or alias.
    InvalidKeyId {
        /// What was given.
        given: String,
    },
    /// An ARN of another keystore.
    ForeignArn {
        /// The ARN given.
        arn: String,
        /// This keystore's id.
        keystore_id: String,
    },
    /// An ARN of this keystore naming neither a key nor an alias.
    ArnNamesNothing {
        /// The ARN given.
        arn: String,
    },
    /// The key reached its deletion date and was deleted.
    Deleted {
        /// The deleted key.
        key_id: String,
    },
    /// No key policy of that name.
    PolicyName {
        /// The name asked for.
        name: String,
    },
    /// An alias where the operation takes only a key id or key ARN.
    AliasNotAccepted {
        /// What was given.
        given: String,
    },
    /// No grant with this id (or token) on the key.
    Grant {
        /// The grant id or a description of the token.
        grant: String,
    },
    /// No access key (of the protocol server) with this id.
    AccessKey {
        /// The access key id asked for.
        access_key_id: String,
    },
    /// The key a ciphertext names was deleted.
    BlobKeyDeleted {
        /// The deleted key.
        key_id: String,
        /// When (seconds since the epoch).
        deleted_on: i64,
    },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Key { key_id } => write!(f, "key {key_id} does not exist"),
            Missing::AliasTarget { key_id, alias } => {
                write!(f, "key {key_id} (alias {alias}) does not exist")
            }
            Missing::Alias { name } => write!(f, "alias {name} does not exist"),
            Missing::InvalidKeyId { given } => write!(
                f,
                "invalid key id {given:?}: give a key id (UUID), a key ARN or alias/NAME"
            ),
            Missing::ForeignArn { arn, keystore_id } => write!(
                f,
                "ARN {arn} does not name a key of this keystore ({keystore_id})"
            ),
            Missing::ArnNamesNothing { arn } => write!(f, "ARN {arn} names no key or alias"),
            Missing::PolicyName { name } => write!(
                f,
                "no policy named {name:?}; the only key policy name is \"{}\"",
                super::policy::POLICY_NAME
            ),
            Missing::AliasNotAccepted { given } => write!(
                f,
                "{given} is an alias: this operation takes a key id or key ARN only"
            ),
            Missing::Grant { grant } => write!(f, "grant {grant} does not exist"),
            Missing::AccessKey { access_key_id } => {
                write!(f, "access key {access_key_id} does not exist")
            }
            Missing::Deleted { key_id } => {
                write!(f, "key {key_id} reached its deletion date and was deleted")
            }
            Missing::BlobKeyDeleted { key_id, deleted_on } => write!(
                f,
                "the key this ciphertext was made with ({key_id}) was deleted on {}; it can no \
                 longer be decrypted",
                clock::format_rfc3339(*deleted_on)
            ),
        }
    }
}

/// What a key's state forbids (`InvalidState`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateProblem {
    /// An administrative operation that the state does not allow.
    NotAllowed {
        /// The AWS action name (`EnableKey`, ...).
        operation: &'static str,
    },
    /// Pending deletion: no cryptographic operation.
    PendingDeletion {
        /// When it will be deleted (seconds since the epoch), if known.
        deletion_date: Option<i64>,
    },
    /// Pending import: no material was imported yet.
    NoMaterialYet,
    /// Pending import again: the imported material expired.
    MaterialExpired,
    /// The current material version is not held (a damaged record).
    NoCurrentMaterial,
    /// An alias cannot point at a key pending deletion.
    AliasToPendingDeletion,
    /// The policy of a key pending deletion cannot change.
    PolicyOfPendingDeletion,
}

impl StateProblem {
    /// True when importing key material is the remedy.
    pub fn awaits_import(&self) -> bool {
        matches!(
            self,
            StateProblem::NoMaterialYet | StateProblem::MaterialExpired
        )
    }

    fn describe(&self, key_id: &str, state: KeyState) -> String {
        match self {
            StateProblem::NotAllowed { operation } => format!(
                "{operation} is not allowed for key {key_id} in state {}",
                state.as_str()
            ),
            StateProblem::PendingDeletion { deletion_date } => format!(
                "key {key_id} is pending deletion (scheduled for {})",
                deletion_date
                    .map(clock::format_rfc3339)
                    .unwrap_or_else(|| "an unknown date".into())
            ),
            StateProblem::NoMaterialYet => {
                format!("key {key_id} is pending import: it has no key material yet")
            }
            StateProblem::MaterialExpired => {
                format!("key {key_id} is pending import: its imported key material expired")
            }
            StateProblem::NoCurrentMaterial => {
                format!("key {key_id} has no current key material")
            }
            StateProblem::AliasToPendingDeletion => {
                format!("key {key_id} is pending deletion; an alias cannot point at it")
            }
            StateProblem::PolicyOfPendingDeletion => {
                format!("key {key_id} is pending deletion; its policy cannot change")
            }
        }
    }
}

/// Kinds of `ValidationException` a caller may act on: the AWS sub-codes
/// (written before the message) and kmsfs's own, unwritten ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValidationCode {
    /// Encrypt was given more than `MAX_ENCRYPT_PLAINTEXT` bytes (no AWS
    /// sub-code: the remedy is envelope encryption).
    PlaintextTooLarge,
    /// The operation does not apply to this kind of key.
    UnsupportedOperation,
    /// The import token is not the right one.
    InvalidImportToken,
    /// The import token has expired.
    ExpiredImportToken,
    /// The key material is not the right one.
    IncorrectKeyMaterial,
    /// A key policy that would lock the caller out of changing it
    /// (AWS: MalformedPolicyDocumentException).
    PolicyLockout,
    /// A key policy that does not parse or is not one kmsfs takes
    /// (AWS: MalformedPolicyDocumentException).
    MalformedPolicy,
    /// A limit reached (AWS: LimitExceededException): tags, grants.
    LimitExceeded,
    /// A tag key or value refused (AWS: TagException).
    Tag,
    /// A request with DryRun that would have succeeded
    /// (AWS: DryRunOperationException).
    DryRun,
    /// A grant token this keystore did not issue (AWS: InvalidGrantTokenException).
    InvalidGrantToken,
    /// A grant id that names no grant of the key (AWS: InvalidGrantIdException).
    InvalidGrantId,
}

impl ValidationCode {
    /// The AWS exception this refusal is (what the server answers, the
    /// command line prints and the trail records): its own exception where
    /// AWS has one, else ValidationException.
    pub fn aws_exception(self) -> &'static str {
        match self {
            ValidationCode::UnsupportedOperation => "UnsupportedOperationException",
            ValidationCode::InvalidImportToken => "InvalidImportTokenException",
            ValidationCode::ExpiredImportToken => "ExpiredImportTokenException",
            ValidationCode::IncorrectKeyMaterial => "IncorrectKeyMaterialException",
            ValidationCode::PolicyLockout | ValidationCode::MalformedPolicy => {
                "MalformedPolicyDocumentException"
            }
            ValidationCode::LimitExceeded => "LimitExceededException",
            ValidationCode::Tag => "TagException",
            ValidationCode::DryRun => "DryRunOperationException",
            ValidationCode::InvalidGrantToken => "InvalidGrantTokenException",
            ValidationCode::InvalidGrantId => "InvalidGrantIdException",
            ValidationCode::PlaintextTooLarge => "ValidationException",
        }
    }

    /// The AWS sub-code, when AWS has one.
    pub fn aws_sub_code(self) -> Option<&'static str> {
        match self {
            ValidationCode::PlaintextTooLarge => None,
            ValidationCode::UnsupportedOperation => Some("UnsupportedOperation"),
            ValidationCode::InvalidImportToken => Some("InvalidImportToken"),
            ValidationCode::ExpiredImportToken => Some("ExpiredImportToken"),
            ValidationCode::IncorrectKeyMaterial => Some("IncorrectKeyMaterial"),
            ValidationCode::PolicyLockout | ValidationCode::MalformedPolicy => {
                Some("MalformedPolicyDocument")
            }
            ValidationCode::LimitExceeded => Some("LimitExceeded"),
            ValidationCode::Tag => Some("Tag"),
            ValidationCode::DryRun => Some("DryRunOperation"),
            ValidationCode::InvalidGrantToken => Some("InvalidGrantToken"),
            ValidationCode::InvalidGrantId => Some("InvalidGrantId"),
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            ValidationCode::PlaintextTooLarge => "",
            ValidationCode::UnsupportedOperation => "UnsupportedOperation: ",
            ValidationCode::InvalidImportToken => "InvalidImportToken: ",
            ValidationCode::ExpiredImportToken => "ExpiredImportToken: ",
            ValidationCode::IncorrectKeyMaterial => "IncorrectKeyMaterial: ",
            ValidationCode::PolicyLockout
            | ValidationCode::MalformedPolicy
            | ValidationCode::LimitExceeded
            | ValidationCode::Tag
            | ValidationCode::DryRun
            | ValidationCode::InvalidGrantToken
            | ValidationCode::InvalidGrantId => "",
        }
    }
}

/// What `AlreadyExists` found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Existing {
    /// An alias of that name.
    Alias {
        /// The alias name.
        name: String,
    },
    /// A keystore in that directory.
    Keystore {
        /// The directory.
        path: PathBuf,
    },
}

impl fmt::Display for Existing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Existing::Alias { name } => write!(
                f,
                "alias {name} already exists; use update-alias to point it at another key"
            ),
            Existing::Keystore { path } => write!(
                f,
                "a keystore exists already in {}; it was left untouched",
                path.display()
            ),
        }
    }
}

/// Why the root key does not open the keystore (`WrongRootKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootKeyProblem {
    /// The keystore is sealed with `root.key`, which is missing.
    KeyFileMissing {
        /// Where it should be.
        path: PathBuf,
    },
    /// `root.key` is not a root key file.
    NotAKeyFile {
        /// The file.
        path: PathBuf,
    },
    /// `root.key` belongs to another keystore.
    KeyFileMismatch,
    /// The passphrase does not open the keystore.
    WrongPassphrase,
    /// The keystore is sealed with a passphrase and none was given (no
    /// file, no environment variable, no terminal to ask on).
    NoPassphrase,
    /// The file was sealed with another root key than the one held (replaced keystore).
    SealedWithAnother {
        /// The keystore file name.
        file: String,
    },
}

impl RootKeyProblem {
    /// True when `root.key` is what is wrong (restoring it is the remedy).
    pub fn is_key_file(&self) -> bool {
        matches!(
            self,
            RootKeyProblem::KeyFileMissing { .. }
                | RootKeyProblem::NotAKeyFile { .. }
                | RootKeyProblem::KeyFileMismatch
        )
    }
}

impl fmt::Display for RootKeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootKeyProblem::KeyFileMissing { path } => write!(
                f,
                "the keystore is sealed with a root key file, and {} is missing; restore \
                 root.key from your backup (without it the keystore cannot be opened)",
                path.display()
            ),
            RootKeyProblem::NotAKeyFile { path } => write!(
                f,
                "{} is not a kmsfs root key file (wrong size or magic); restore it from your backup",
                path.display()
            ),
            RootKeyProblem::KeyFileMismatch => f.write_str(
                "the root key file does not open this keystore (root.key belongs to another keystore?)",
            ),
            RootKeyProblem::WrongPassphrase => {
                f.write_str("wrong passphrase: it does not open this keystore")
            }
            RootKeyProblem::NoPassphrase => f.write_str(
                "the keystore is sealed with a passphrase, none was given and there is no \
                 terminal to ask on",
            ),
            RootKeyProblem::SealedWithAnother { file } => write!(
                f,
                "keystore file {file} was sealed with another root key than the one this \
                 process holds (was the keystore replaced?); restart the command"
            ),
        }
    }
}
