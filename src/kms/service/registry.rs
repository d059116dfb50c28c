//! The keystores this process has open, by directory: a command or mount that
//! asks again for the same directory gets the same service, so the root key is
//! unsealed (Argon2id) once per process.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::LocalKeyStore;
use crate::crypto::SecretBytes;
use crate::kms::{CreateMode, KmsError};

type Registry = Mutex<HashMap<PathBuf, Weak<LocalKeyStore>>>;

fn opened() -> &'static Registry {
    static OPENED: OnceLock<Registry> = OnceLock::new();
    OPENED.get_or_init(|| Mutex::new(HashMap::new()))
}

#[allow(clippy::disallowed_methods)] // the keystore path, resolved only to name it
fn registry_key(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn remember(dir: &Path, ks: LocalKeyStore) -> Arc<LocalKeyStore> {
    let ks = Arc::new(ks);
    let mut map = opened().lock().unwrap_or_else(|p| p.into_inner());
    map.insert(registry_key(dir), Arc::downgrade(&ks));
    ks
}

impl LocalKeyStore {
    /// Like [`LocalKeyStore::open`], but once per process: while a service
    /// opened for `dir` is alive, it is returned again (and `passphrase` is
    /// not called).
    pub fn open_shared(
        dir: &Path,
        passphrase: &dyn Fn() -> Result<SecretBytes, KmsError>,
    ) -> Result<Arc<Self>, KmsError> {
        let known = {
            let map = opened().lock().unwrap_or_else(|p| p.into_inner());
            map.get(&registry_key(dir)).and_then(Weak::upgrade)
        };
        match known {
            Some(ks) => Ok(ks),
            None => Self::open(dir, passphrase).map(|ks| remember(dir, ks)),
        }
    }

    /// Like [`LocalKeyStore::create`], and registers the new service for
    /// [`LocalKeyStore::open_shared`].
    pub fn create_shared(dir: &Path, mode: CreateMode) -> Result<Arc<Self>, KmsError> {
        Self::create(dir, mode).map(|ks| remember(dir, ks))
    }
}
