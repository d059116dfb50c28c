//! Path trust for the keystore directory: nobody but root and this user may
//! be able to swap it between two writes (`crate::trust`).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use super::dir::io_err;
use crate::kms::KmsError;

/// Resolves `dir` once and checks that nobody but root and this process's
/// user can change the path to it (`crate::trust`): every directory above it
/// must belong to one of them and be writable by no one else, except a sticky
/// directory (such as /tmp) whose entry on the path belongs to one of them.
/// Otherwise another user could swap the keystore directory for another one
/// between two of this process's writes; a root process would then write (and
/// give away) keystore files wherever that user pointed it. With `create`, the
/// missing tail of `dir` is checked as the place it will be created in.
/// Returns the resolved path, which the keystore then uses throughout.
pub fn trusted_path(dir: &Path, create: bool) -> Result<PathBuf, KmsError> {
    use crate::trust::{Scope, TrustError};
    crate::trust::trusted_path(dir, create, Scope::Ancestors).map_err(|e| match e {
        TrustError::Io { what, path, source } => io_err(what, &path, source),
        TrustError::Untrusted { dir: d, uid, mode } => KmsError::UntrustedKeystorePath {
            keystore: dir.to_path_buf(),
            dir: d,
            owner_uid: uid,
            mode,
        },
    })
}
