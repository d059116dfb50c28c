//! `CliError`: a failure as the user sees it, with the exit code and the remedy
//! chosen by the variant of the error it came from (never by its text).

use std::path::Path;

use crate::kms::{KmsError, RootKeyProblem, StateProblem, ValidationCode};

/// Classes of failure, one exit code each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Anything else.
    General = 1,
    /// Bad arguments or input (clap uses 2 too).
    Usage = 2,
    /// No such key, alias, file or keystore.
    NotFound = 3,
    /// The key refuses: disabled, pending deletion, policy.
    Refused = 4,
    /// Ciphertext or file is corrupt, modified, or from elsewhere.
    Corrupt = 5,
    /// The keystore cannot be opened or is damaged.
    Keystore = 6,
    /// Operating-system I/O failure (disk full, permissions).
    Io = 7,
    /// Nothing is wrong but some work was skipped (files open through a
    /// mount during `rewrap`): run the same command again.
    Retry = 8,
}

/// An error as the user sees it: what happened and what to do about it.
#[derive(Debug)]
pub struct CliError {
    /// Which exit code.
    pub class: ErrorClass,
    /// What went wrong (no secrets).
    pub message: String,
    /// What the user can do about it.
    pub hint: Option<String>,
    /// The key service error it came from, if any: what remedies match on.
    pub cause: Option<KmsError>,
}

impl CliError {
    /// A new error without a hint.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            hint: None,
            cause: None,
        }
    }

    /// Adds a remedy.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The error of opening or creating the keystore in `dir`: the remedies
    /// that need to name the directory or its root key file.
    pub fn keystore(dir: &Path, e: KmsError) -> Self {
        let hint = match &e {
            KmsError::KeystoreNotFound { .. } => Some(format!(
                "create one with `kmsfs init` (or pass --keystore DIR); looked in {}",
                dir.display()
            )),
            KmsError::WrongRootKey { problem } if problem.is_key_file() => {
                Some("the keystore was not changed; restore root.key from your backup".into())
            }
            KmsError::WrongRootKey {
                problem: RootKeyProblem::NoPassphrase,
            } => Some(
                "pass --passphrase-file FILE (a file only you can read) or set KMSFS_PASSPHRASE"
                    .into(),
            ),
            _ => None,
        };
        let err = CliError::from(e);
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    }

    /// Gives an error of `kmsfs kms <command>` the remedy that fits it best:
    /// one that the key service error calls for first, then the one it already
    /// has, then one by class. `dir` is the keystore directory.
    pub fn with_kms_remedy(self, command: &str, dir: &Path) -> Self {
        if let Some(h) = self.cause.as_ref().and_then(|c| kms_command_remedy(c, dir)) {
            return self.hint(h);
        }
        if self.hint.is_some() {
            return self;
        }
        let hint = match (&self.cause, self.class) {
            (Some(KmsError::InvalidCiphertext { .. }), _) => {
                "give the same --encryption-context as when it was made, an unmodified blob, and \
                 the --keystore that made it"
                    .to_string()
            }
            (Some(KmsError::IncorrectKey { .. }), _) => {
                "omit --key-id, or give the key the ciphertext was made under".to_string()
            }
            (Some(KmsError::AccessDenied { key_id, .. }), _) => format!(
                "the key's policy does not allow this user; see `kmsfs kms get-key-policy \
                 --key-id {key_id}`"
            ),
            (Some(KmsError::AlreadyExists { .. }), _) => {
                "choose another alias name, or move it with `kmsfs kms update-alias`".to_string()
            }
            (_, ErrorClass::Usage) => format!("see `kmsfs kms {command} --help`"),
            (_, ErrorClass::Io) => {
                "check the path, its permissions and free space, then retry".to_string()
            }
            _ => return self,
        };
        self.hint(hint)
    }
}

/// The remedies of `kmsfs kms` commands that win over any other.
fn kms_command_remedy(e: &KmsError, dir: &Path) -> Option<String> {
    match e {
        KmsError::CorruptKeystore {
            change_refused: true,
            ..
        } => Some(repair_hint(dir)),
        KmsError::InvalidState {
            key_id,
            problem: StateProblem::NotAllowed { .. },
            ..
        } => Some(format!(
            "see the key's state with `kmsfs kms describe-key --key-id {key_id}`"
        )),
        KmsError::InvalidState { problem, .. } if problem.awaits_import() => Some(
            "import its key material: `kmsfs kms get-parameters-for-import`, then \
             `kmsfs kms import-key-material`"
                .into(),
        ),
        _ => None,
    }
}

/// The remedy for a change refused because the current generation is unreadable.
pub fn repair_hint(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "the keystore was not changed; restore {d}/keystore.kms from a backup, or continue \
         from the previous generation with `cp {d}/keystore.prev {d}/keystore.kms` (changes \
         made after it are lost: re-apply them, e.g. disable a key again). Keep no copy of the \
         damaged file: it holds key material that deleting a key never purges; if you copy it \
         aside to inspect it, delete the copy afterwards"
    )
}

fn class_of(e: &KmsError) -> ErrorClass {
    match e {
        KmsError::NotFound { .. } => ErrorClass::NotFound,
        KmsError::Disabled { .. }
        | KmsError::InvalidState { .. }
        | KmsError::AccessDenied { .. }
        | KmsError::OwnerOnly { .. }
        | KmsError::UntrustedKeystorePath { .. }
        | KmsError::IncorrectKey { .. } => ErrorClass::Refused,
        KmsError::InvalidCiphertext { .. } => ErrorClass::Corrupt,
        KmsError::Validation { .. } | KmsError::AlreadyExists { .. } => ErrorClass::Usage,
        KmsError::KeystoreNotFound { .. }
        | KmsError::WrongRootKey { .. }
        | KmsError::CorruptKeystore { .. } => ErrorClass::Keystore,
        KmsError::Io { .. } | KmsError::AuditTrail { .. } => ErrorClass::Io,
        KmsError::Internal { .. } => ErrorClass::General,
    }
}

/// The key an error is about, for remedies that name it.
fn key_of(e: &KmsError) -> Option<&str> {
    match e {
        KmsError::Disabled { key_id }
        | KmsError::InvalidState { key_id, .. }
        | KmsError::AccessDenied { key_id, .. } => Some(key_id),
        _ => None,
    }
}

/// Remedies that name the real key (not a placeholder).
fn key_remedy(e: &KmsError) -> Option<String> {
    let k = key_of(e)?;
    Some(match e {
        KmsError::Disabled { .. } => format!("enable it with `kmsfs kms enable-key --key-id {k}`"),
        KmsError::InvalidState {
            problem: StateProblem::PendingDeletion { .. },
            ..
        } => format!(
            "restore it with `kmsfs kms cancel-key-deletion --key-id {k}`, then `kmsfs kms \
             enable-key --key-id {k}`"
        ),
        _ => return None,
    })
}

fn general_remedy(e: &KmsError) -> Option<&'static str> {
    match e {
        KmsError::KeystoreNotFound { .. } => {
            Some("create one with `kmsfs init` (or pass --keystore DIR)")
        }
        KmsError::WrongRootKey {
            problem: RootKeyProblem::NoPassphrase,
        } => Some("pass --passphrase-file FILE (a file only you can read) or set KMSFS_PASSPHRASE"),
        KmsError::WrongRootKey { .. } => {
            Some("check --passphrase-file / KMSFS_PASSPHRASE; the keystore was not changed")
        }
        KmsError::CorruptKeystore { .. } => Some(
            "the keystore was not changed; restore it from a backup (keystore.prev is the previous generation)",
        ),
        KmsError::Disabled { .. } => Some("enable it with `kmsfs kms enable-key --key-id K`"),
        KmsError::InvalidState { .. } => Some(
            "a key pending deletion can be restored with `kmsfs kms cancel-key-deletion` and `enable-key`",
        ),
        KmsError::NotFound { .. } => Some("list keys with `kmsfs kms list-keys`"),
        KmsError::Validation {
            code: Some(ValidationCode::PlaintextTooLarge),
            ..
        } => Some(
            "for a file, `kmsfs seal IN OUT --key-id K` does envelope encryption in the \
                 mount's format (and `kmsfs unseal` reverses it); otherwise use `kmsfs kms \
                 generate-data-key` and encrypt the data locally with the data key",
        ),
        _ => None,
    }
}

impl From<KmsError> for CliError {
    fn from(e: KmsError) -> Self {
        CliError {
            class: class_of(&e),
            message: format!("{}: {}", e.aws_code(), e),
            hint: key_remedy(&e).or_else(|| general_remedy(&e).map(str::to_string)),
            cause: Some(e),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        let class = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorClass::NotFound,
            _ => ErrorClass::Io,
        };
        CliError::new(class, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::KeyState;

    #[test]
    fn repair_hint_does_not_ask_to_keep_key_material_around() {
        let h = repair_hint(Path::new("/k"));
        assert!(!h.contains("keystore.kms.damaged"), "{h}");
        assert!(
            h.contains("delete the copy") && h.contains("never purges"),
            "{h}"
        );
        assert!(h.contains("cp /k/keystore.prev /k/keystore.kms"), "{h}");
    }

    #[test]
    fn errors_keep_their_source() {
        use std::error::Error;
        let t = tempfile::tempdir().unwrap();
        // A marker under a regular file: ENOTDIR, kept as the source.
        let file = t.path().join("f");
        std::fs::write(&file, b"short").unwrap();
        let e = crate::daemon::read_marker(&file).unwrap_err();
        let os = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            os.and_then(|o| o.raw_os_error()),
            Some(libc::ENOTDIR),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(&file.display().to_string()),
            "{e}"
        );
        assert_eq!(CliError::from(e).class, ErrorClass::Io);
        // A header too short: the format's reason is the source.
        let h = crate::envelope::EncryptedFile::read_header(&std::fs::File::open(&file).unwrap())
            .unwrap_err();
        let why = h
            .source()
            .and_then(|s| s.downcast_ref::<crate::format::FormatError>());
        assert_eq!(why, Some(&crate::format::FormatError::Short(5)), "{h}");
        // The keystore's I/O errors keep the OS error too, shown after what failed.
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let k = KmsError::io_from("cannot write /k/keystore.kms".into(), enospc);
        let os = k.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(os.and_then(|o| o.raw_os_error()), Some(libc::ENOSPC));
        assert!(
            k.to_string().starts_with("cannot write /k/keystore.kms: "),
            "{k}"
        );
        assert_eq!(CliError::from(k).class, ErrorClass::Io);
    }

    #[test]
    fn remedies_follow_the_variant_not_the_wording() {
        let dir = Path::new("/k");
        let refused = KmsError::CorruptKeystore {
            problem: "whatever words".into(),
            change_refused: true,
        };
        let e = CliError::from(refused).with_kms_remedy("disable-key", dir);
        assert!(e.hint.unwrap().contains("cp /k/keystore.prev"));
        let e = CliError::from(KmsError::corrupt("the change was refused".into()))
            .with_kms_remedy("disable-key", dir);
        assert!(!e.hint.unwrap().contains("cp /k/keystore.prev"));
        let not_allowed = KmsError::InvalidState {
            key_id: "k".into(),
            state: KeyState::PendingImport,
            problem: StateProblem::NotAllowed {
                operation: "EnableKey",
            },
        };
        let e = CliError::from(not_allowed).with_kms_remedy("enable-key", dir);
        assert!(e.hint.unwrap().contains("describe-key"));
        let awaiting = KmsError::InvalidState {
            key_id: "k".into(),
            state: KeyState::PendingImport,
            problem: StateProblem::MaterialExpired,
        };
        let e = CliError::from(awaiting).with_kms_remedy("encrypt", dir);
        assert!(e.hint.unwrap().contains("import-key-material"));
        let missing = KmsError::WrongRootKey {
            problem: RootKeyProblem::KeyFileMissing {
                path: "/k/root.key".into(),
            },
        };
        assert!(
            CliError::keystore(dir, missing)
                .hint
                .unwrap()
                .contains("restore root.key")
        );
        let passphrase = KmsError::WrongRootKey {
            problem: RootKeyProblem::WrongPassphrase,
        };
        let h = CliError::keystore(dir, passphrase).hint.unwrap();
        assert!(h.contains("--passphrase-file"), "{h}");
    }
}
