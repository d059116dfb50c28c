//! `LocalKeyStore`, the local key service: a keystore directory opened once
//! (Argon2id runs at open), what it holds, and where each part of its work
//! lives: `snapshot` (views, reloads, updates), `crypto_ops` (the cryptographic
//! operations), `admin` (key administration), `authz` (the one authorization decision),
//! `resolve` (names to keys) and
//! `registry` (one service per directory and process).
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use super::KmsError;
use super::audit::{AuditSink, Trail};
use super::store::{self, CreateMode, KeystoreDir, RootKey};
use crate::crypto::{SecretBytes, hex};

/// How often (at most) an operation stats the keystore file to notice another
/// process's changes. `generation()` and `refresh()` share it; worst-case staleness
/// is this interval (well under the mount's one-second requirement).
pub const FRESHNESS_INTERVAL_MS: u64 = 20;

mod access_keys;
mod admin;
mod audit;
mod authz;
mod crypto_ops;
mod grants;
mod registry;
mod resolve;
mod snapshot;

use snapshot::{KnownDamage, Loaded, Snapshot, load};

pub use access_keys::{AccessKeyEntry, AccessKeySecret, NewAccessKey};
pub use audit::{AUDIT_ENV, PruneFailure};
pub use crypto_ops::DryRunTarget;
pub use grants::GrantRequest;

pub use admin::{
    AliasListEntry, ImportParameters, KeyListEntry, KeyRotation, KeyRotationStatus,
    ScheduledDeletion,
};

/// The region of ARNs when none was set.
pub const DEFAULT_REGION: &str = "local";

/// True for a region name: 1 to 32 of lowercase letters, digits and '-'.
pub fn valid_region(r: &str) -> bool {
    (1..=32).contains(&r.len())
        && r.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// The local key service: a keystore directory, unsealed once.
pub struct LocalKeyStore {
    dir: KeystoreDir,
    root: RootKey,
    keystore_id: [u8; 16],
    keystore_id_hex: String,
    /// The 12-digit account id of this keystore's ARNs.
    account_id: String,
    /// The region of this service's ARNs (`set_region`; "local" unless set).
    region: OnceLock<String>,
    snap: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    base: Instant,
    last_check_ns: AtomicU64,
    reload_lock: Mutex<()>,
    audit: OnceLock<Arc<dyn AuditSink>>,
    /// The audit trail beside the keystore (unset when turned off).
    trail: OnceLock<Arc<Trail>>,
    /// Who uses this service (`audit::CallerSource` as a number).
    source: AtomicU8,
    /// The keystore's owner when this service is a boundary (a protocol
    /// server), else `authz::NO_BOUNDARY`.
    boundary: AtomicU64,
    /// Cryptographic records of a command-line process batched (a whole-tree
    /// command's thousands of operations) rather than written one by one.
    crypto_audit_batched: AtomicBool,
    /// A damaged current generation that a reload refused to fall back from:
    /// not re-read until it changes.
    known_damage: Mutex<KnownDamage>,
    purge_warned: std::sync::atomic::AtomicBool,
    last_warning: Mutex<Option<String>>,
}

impl std::fmt::Debug for LocalKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyStore")
            .field("dir", &self.dir.path())
            .field("keystore_id", &self.keystore_id_hex)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl LocalKeyStore {
    /// Opens the keystore in `dir`. `passphrase` is called (once) only if the
    /// keystore is sealed with a passphrase. Keys whose deletion date has passed
    /// are deleted for good before this returns.
    #[allow(clippy::disallowed_methods)] // the keystore path the user named, only looked at
    pub fn open(
        dir: &Path,
        passphrase: &dyn Fn() -> Result<SecretBytes, KmsError>,
    ) -> Result<Self, KmsError> {
        let kdir = KeystoreDir::new(dir);
        if !kdir.exists() {
            // root.key or the lock file without a generation: a keystore was
            // here. Wait for a writer that may be creating it right now, then
            // call it lost rather than "none" (which would invite a fresh one).
            if let Some(evidence) = kdir.lost_evidence() {
                kdir.wait_for_writers();
                if !kdir.exists() {
                    return Err(store::lost(&kdir, evidence));
                }
            } else if std::fs::symlink_metadata(dir).is_ok() && std::fs::metadata(dir).is_err() {
                return Err(KmsError::corrupt(format!(
                    "the keystore directory {} cannot be reached (a symbolic link to a volume \
                     that is not mounted?); nothing was created or changed",
                    dir.display()
                )));
            } else {
                return Err(KmsError::KeystoreNotFound {
                    path: dir.to_path_buf(),
                });
            }
        }
        let kdir = KeystoreDir::new(store::trusted_path(dir, false)?);
        let mut root = None;
        let loaded = load(&kdir, None, &mut root, passphrase)?;
        if let Some(why) = &loaded.fallback {
            log::warn!("{why}");
        }
        let root = root.ok_or_else(|| KmsError::internal("root key not obtained".into()))?;
        let ks = Self::assemble(kdir, root, loaded)?;
        // The trail first: what is due is applied (and recorded) now.
        ks.init_trail();
        // A reader without write access still opens: due keys are refused in memory.
        if let Err(e) = ks.apply_due() {
            ks.warn_once(&format!(
                "a due key deletion or rotation could not be written: {e}"
            ));
        }
        Ok(ks)
    }

    /// Creates a new keystore in `dir` (refusing if one exists) and opens it.
    pub fn create(dir: &Path, mode: CreateMode) -> Result<Self, KmsError> {
        let kdir = KeystoreDir::new(store::trusted_path(dir, true)?);
        let (keystore_id, root, state, fp) = store::create(&kdir, mode)?;
        let ks = Self::assemble(
            kdir,
            root,
            Loaded {
                state,
                file_generation: 1,
                keystore_id,
                fingerprint: Some(fp),
                fallback: None,
            },
        )?;
        ks.init_trail();
        Ok(ks)
    }

    fn assemble(dir: KeystoreDir, root: RootKey, l: Loaded) -> Result<Self, KmsError> {
        let keystore_id_hex = hex(&l.keystore_id);
        let account_id = l
            .state
            .account_id
            .clone()
            .filter(|a| super::model::valid_account_id(a))
            .unwrap_or_else(|| super::model::derived_account_id(&keystore_id_hex));
        let snap = Snapshot::new(l.state, l.fingerprint, l.fallback, l.file_generation)?;
        Ok(Self {
            dir,
            root,
            keystore_id: l.keystore_id,
            keystore_id_hex,
            account_id,
            region: OnceLock::new(),
            snap: RwLock::new(Arc::new(snap)),
            generation: AtomicU64::new(1),
            base: Instant::now(),
            last_check_ns: AtomicU64::new(0),
            reload_lock: Mutex::new(()),
            audit: OnceLock::new(),
            trail: OnceLock::new(),
            source: AtomicU8::new(0),
            boundary: AtomicU64::new(authz::NO_BOUNDARY),
            crypto_audit_batched: AtomicBool::new(false),
            known_damage: Mutex::new(KnownDamage::Nothing),
            purge_warned: std::sync::atomic::AtomicBool::new(false),
            last_warning: Mutex::new(None),
        })
    }

    /// The keystore's random id (32 hex digits), as it appears in ARNs and blobs.
    pub fn keystore_id(&self) -> &str {
        &self.keystore_id_hex
    }

    /// The 12-digit account id in this keystore's ARNs
    /// (`arn:aws:kms:<region>:<account>:key/<id>`).
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The region in this service's ARNs: set once (`kmsfs kms serve
    /// --region`), else "local".
    pub fn region(&self) -> &str {
        self.region
            .get()
            .map(String::as_str)
            .unwrap_or(DEFAULT_REGION)
    }

    /// Sets the region of this service's ARNs (once; later calls change nothing).
    pub fn set_region(&self, region: &str) -> Result<(), KmsError> {
        if !valid_region(region) {
            return Err(KmsError::invalid(format!(
                "region {region:?} is not a region name (letters, digits and '-')"
            )));
        }
        let _ = self.region.set(region.to_string());
        Ok(())
    }

    /// `arn:aws:kms:<region>:<account>:`.
    pub fn arn_prefix(&self) -> String {
        super::model::arn_prefix(self.region(), &self.account_id)
    }

    /// The ARN of key `key_id`.
    pub fn key_arn(&self, key_id: &str) -> String {
        super::model::key_arn(&self.arn_prefix(), key_id)
    }

    /// The ARN of alias `name` (`alias/...`).
    pub fn alias_arn(&self, name: &str) -> String {
        super::model::alias_arn(&self.arn_prefix(), name)
    }

    /// What names this keystore in ARNs given to it.
    pub(crate) fn ids(&self) -> super::model::ArnIds<'_> {
        super::model::ArnIds {
            keystore_id: &self.keystore_id_hex,
            account: &self.account_id,
        }
    }

    /// The keystore directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// "root-key-file" or "passphrase".
    pub fn root_mode(&self) -> &'static str {
        self.root.mode().name()
    }

    /// The write counter of the keystore file the service currently uses.
    pub fn file_generation(&self) -> u64 {
        self.snapshot().file_generation
    }

    /// Why the keystore runs read-only from its previous generation, if it does.
    pub fn fallback_reason(&self) -> Option<String> {
        self.snapshot().fallback.clone()
    }

    /// Seals the keystore again under a new root key (`kmsfs passwd`): a new
    /// passphrase, or a switch between the root key file and a passphrase.
    /// Takes the service: it holds the old root key and is done with.
    pub fn change_root(self, new: CreateMode) -> Result<(), KmsError> {
        store::reseal(&self.dir, &self.root, new)
    }

    /// Installs the audit sink that every key use is reported to (once).
    pub fn set_audit_sink(&self, sink: Arc<dyn AuditSink>) -> Result<(), KmsError> {
        self.audit
            .set(sink)
            .map_err(|_| KmsError::internal("an audit sink is already installed".into()))
    }
}

#[cfg(test)]
mod tests;
