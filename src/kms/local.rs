//! `LocalKeyStore`: the key service over a keystore directory. Holds the unsealed
//! root key (Argon2id runs once, at open) and an immutable snapshot of the key model
//! with ready AES key schedules; every cryptographic operation passes through one
//! function (`use_key`) that checks state, authorizes and audits. Another process's
//! changes are noticed by a rate-limited stat of the keystore file and reloaded;
//! updates re-read the file under the exclusive lock and write both generations.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use super::blob::{self, BlobHeader};
use super::hooks::{self, AuditEvent, AuditSink, Operation};
use super::keystore::{
    self, CURRENT_FILE, CreateMode, Fingerprint, Frame, KeystoreDir, PREV_FILE, RootKey,
};
use super::model::{self, KeyRecord, StoreState, Usage};
use super::{
    Caller, DataKey, DataKeySpec, Decrypted, Encrypted, EncryptionContext, KeyMetadata, KeyService,
    KeyState, KmsError, MAX_ENCRYPT_PLAINTEXT, clock,
};
use crate::crypto::{AeadKey, SecretBytes};

/// How often (at most) an operation stats the keystore file to notice another
/// process's changes. `generation()` and `refresh()` share it; worst-case staleness
/// is this interval (well under the mount's one-second requirement).
pub const FRESHNESS_INTERVAL_MS: u64 = 20;

/// One entry of ListKeys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyListEntry {
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub key_arn: String,
}

/// One entry of ListAliases.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasListEntry {
    /// `alias/...`.
    pub alias_name: String,
    /// The alias ARN.
    pub alias_arn: String,
    /// The key it points at.
    pub target_key_id: String,
}

/// Result of ScheduleKeyDeletion.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduledDeletion {
    /// The key ARN (as AWS returns it).
    pub key_id: String,
    /// When the key will be deleted (epoch seconds).
    pub deletion_date: i64,
    /// Always PendingDeletion.
    pub key_state: KeyState,
    /// The waiting period.
    pub pending_window_in_days: u32,
}

/// Result of GetKeyRotationStatus.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyRotationStatus {
    /// The key ARN.
    pub key_id: String,
    /// Whether automatic rotation is on.
    pub key_rotation_enabled: bool,
    /// The automatic rotation period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    /// When the next automatic rotation is due (epoch seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_date: Option<i64>,
}

/// One entry of ListKeyRotations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyRotation {
    /// The key id.
    pub key_id: String,
    /// When the new material was made (epoch seconds).
    pub rotation_date: i64,
    /// ON_DEMAND or AUTOMATIC.
    pub rotation_type: model::RotationType,
    /// The material version the rotation created (kmsfs extension).
    pub key_material_version: u32,
}

/// An immutable view of the keystore, swapped whole on every change.
struct Snapshot {
    state: StoreState,
    /// Ready AES-GCM keys: key id → (material version, key).
    ciphers: HashMap<String, Vec<(u32, AeadKey)>>,
    /// Stat of the current generation this snapshot matches.
    fingerprint: Option<Fingerprint>,
    /// Why we run from the previous generation (read-only), if we do.
    fallback: Option<String>,
    /// Why no state is usable at all (both generations unreadable on reload).
    broken: Option<String>,
    /// When a deletion or an automatic rotation is next due.
    next_due: Option<i64>,
    /// The write counter of the file this snapshot was read from.
    file_generation: u64,
}

impl Snapshot {
    fn new(
        state: StoreState,
        fingerprint: Option<Fingerprint>,
        fallback: Option<String>,
        file_generation: u64,
    ) -> Result<Self, KmsError> {
        let mut ciphers = HashMap::with_capacity(state.keys.len());
        for (id, k) in &state.keys {
            let mut v = Vec::with_capacity(k.materials.len());
            for m in &k.materials {
                let aead = AeadKey::from_bytes(m.material.expose()).map_err(|_| {
                    KmsError::CorruptKeystore(format!("key {id} has material of a wrong length"))
                })?;
                v.push((m.version, aead));
            }
            ciphers.insert(id.clone(), v);
        }
        let next_due = state.next_due();
        Ok(Self {
            state,
            ciphers,
            fingerprint,
            fallback,
            broken: None,
            next_due,
            file_generation,
        })
    }

    fn broken(why: String, fingerprint: Option<Fingerprint>) -> Self {
        Self {
            state: StoreState::default(),
            ciphers: HashMap::new(),
            fingerprint,
            fallback: None,
            broken: Some(why),
            next_due: None,
            file_generation: 0,
        }
    }
}

/// What reading the directory produced.
struct Loaded {
    state: StoreState,
    file_generation: u64,
    keystore_id: [u8; 16],
    fingerprint: Option<Fingerprint>,
    fallback: Option<String>,
}

/// How a crypto operation names its key.
enum KeyRef<'a> {
    /// Key id, ARN or alias given by the caller.
    Name(&'a str),
    /// The key a ciphertext blob names.
    Blob(&'a BlobHeader),
}

/// The local key service: a keystore directory, unsealed once.
pub struct LocalKeyStore {
    dir: KeystoreDir,
    root: RootKey,
    keystore_id: [u8; 16],
    keystore_id_hex: String,
    snap: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    base: Instant,
    last_check_ns: AtomicU64,
    reload_lock: Mutex<()>,
    audit: OnceLock<Arc<dyn AuditSink>>,
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads the current generation, or the previous one (with a warning) when the
/// current is unreadable. A wrong root key or an unknown format version is
/// returned as is: the previous generation would not help.
fn load(
    dir: &KeystoreDir,
    given: Option<&RootKey>,
    obtained: &mut Option<RootKey>,
    passphrase: &dyn Fn() -> Result<SecretBytes, KmsError>,
) -> Result<Loaded, KmsError> {
    let mut unseal = |name: &str, bytes: &[u8]| -> Result<(StoreState, [u8; 16], u64), KmsError> {
        let frame = Frame::parse(name, bytes)?;
        if given.is_none() && obtained.is_none() {
            *obtained = Some(RootKey::obtain(dir, frame.mode, passphrase)?);
        }
        let r = given
            .or(obtained.as_ref())
            .ok_or_else(|| KmsError::Internal("root key missing".into()))?;
        Ok((frame.unseal(name, r)?, frame.keystore_id, frame.generation))
    };
    let cur = dir.read(CURRENT_FILE)?;
    let fingerprint = cur.as_ref().map(|c| c.1);
    let primary = match &cur {
        Some((bytes, _)) => {
            if keystore::unknown_version(bytes) {
                // A newer format is not damage: falling back would hide it.
                Frame::parse(CURRENT_FILE, bytes)?;
            }
            match unseal(CURRENT_FILE, bytes) {
                Ok((state, keystore_id, file_generation)) => {
                    return Ok(Loaded {
                        state,
                        file_generation,
                        keystore_id,
                        fingerprint,
                        fallback: None,
                    });
                }
                // Only damage falls back: a wrong root key, a missing passphrase
                // or an I/O error would be the same for the previous generation.
                Err(KmsError::CorruptKeystore(m)) => m,
                Err(e) => return Err(e),
            }
        }
        None => format!("{CURRENT_FILE} is missing"),
    };
    let Some((pbytes, _)) = dir.read(PREV_FILE)? else {
        return Err(match cur {
            None => KmsError::KeystoreNotFound(format!(
                "there is no keystore in {}",
                dir.path().display()
            )),
            Some(_) => KmsError::CorruptKeystore(format!(
                "{primary}; there is no previous generation ({PREV_FILE}) to fall back to, \
                 and nothing was written"
            )),
        });
    };
    match unseal(PREV_FILE, &pbytes) {
        Ok((state, keystore_id, file_generation)) => {
            log::warn!(
                "{primary}; using the previous generation {} instead (read-only: changes are \
                 refused until the current generation is repaired or restored)",
                dir.file(PREV_FILE).display()
            );
            Ok(Loaded {
                state,
                file_generation,
                keystore_id,
                fingerprint,
                fallback: Some(primary),
            })
        }
        Err(KmsError::CorruptKeystore(e)) => Err(KmsError::CorruptKeystore(format!(
            "{primary}; and the previous generation is unreadable too: {e}; nothing was written"
        ))),
        Err(e) => Err(e),
    }
}

fn no_passphrase() -> Result<SecretBytes, KmsError> {
    Err(KmsError::Internal(
        "the root key is already unsealed; no passphrase is needed".into(),
    ))
}

/// Finds a key by id, ARN or alias in `state`.
fn resolve<'s>(
    state: &'s StoreState,
    keystore_id_hex: &str,
    key_ref: &str,
) -> Result<&'s KeyRecord, KmsError> {
    let mut name = key_ref;
    if key_ref.starts_with("arn:") {
        let prefix = format!("arn:kmsfs:kms:local:{keystore_id_hex}:");
        name = key_ref.strip_prefix(&prefix).ok_or_else(|| {
            KmsError::NotFound(format!(
                "ARN {key_ref} does not name a key of this keystore ({keystore_id_hex})"
            ))
        })?;
        if let Some(id) = name.strip_prefix("key/") {
            name = id;
        } else if !name.starts_with(model::ALIAS_PREFIX) {
            return Err(KmsError::NotFound(format!(
                "ARN {key_ref} names no key or alias"
            )));
        }
    }
    let id = if name.starts_with(model::ALIAS_PREFIX) {
        state
            .aliases
            .get(name)
            .ok_or_else(|| KmsError::NotFound(format!("alias {name} does not exist")))?
            .as_str()
    } else {
        let u = uuid::Uuid::parse_str(name).map_err(|_| {
            KmsError::NotFound(format!(
                "invalid key id {name:?}: give a key id (UUID), a key ARN or alias/NAME"
            ))
        })?;
        return state
            .keys
            .get(&u.hyphenated().to_string())
            .ok_or_else(|| KmsError::NotFound(format!("key {name} does not exist")));
    };
    state
        .keys
        .get(id)
        .ok_or_else(|| KmsError::NotFound(format!("key {id} (alias {name}) does not exist")))
}

fn resolve_mut<'s>(
    state: &'s mut StoreState,
    keystore_id_hex: &str,
    key_ref: &str,
) -> Result<&'s mut KeyRecord, KmsError> {
    let id = resolve(state, keystore_id_hex, key_ref)?.key_id.clone();
    state
        .keys
        .get_mut(&id)
        .ok_or_else(|| KmsError::Internal("key vanished".into()))
}

impl LocalKeyStore {
    /// Opens the keystore in `dir`. `passphrase` is called (once) only if the
    /// keystore is sealed with a passphrase. Keys whose deletion date has passed
    /// are deleted for good before this returns.
    pub fn open(
        dir: &Path,
        passphrase: &dyn Fn() -> Result<SecretBytes, KmsError>,
    ) -> Result<Self, KmsError> {
        let kdir = KeystoreDir::new(dir);
        if !kdir.exists() {
            return Err(KmsError::KeystoreNotFound(format!(
                "there is no keystore in {}",
                dir.display()
            )));
        }
        let mut root = None;
        let loaded = load(&kdir, None, &mut root, passphrase)?;
        let root = root.ok_or_else(|| KmsError::Internal("root key not obtained".into()))?;
        let ks = Self::assemble(kdir, root, loaded)?;
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
        let kdir = KeystoreDir::new(dir);
        let (keystore_id, root, state, fp) = keystore::create(&kdir, mode)?;
        Self::assemble(
            kdir,
            root,
            Loaded {
                state,
                file_generation: 1,
                keystore_id,
                fingerprint: Some(fp),
                fallback: None,
            },
        )
    }

    fn assemble(dir: KeystoreDir, root: RootKey, l: Loaded) -> Result<Self, KmsError> {
        let snap = Snapshot::new(l.state, l.fingerprint, l.fallback, l.file_generation)?;
        Ok(Self {
            dir,
            root,
            keystore_id: l.keystore_id,
            keystore_id_hex: hex(&l.keystore_id),
            snap: RwLock::new(Arc::new(snap)),
            generation: AtomicU64::new(1),
            base: Instant::now(),
            last_check_ns: AtomicU64::new(0),
            reload_lock: Mutex::new(()),
            audit: OnceLock::new(),
            purge_warned: std::sync::atomic::AtomicBool::new(false),
            last_warning: Mutex::new(None),
        })
    }

    /// The keystore's random id (32 hex digits), as it appears in ARNs and blobs.
    pub fn keystore_id(&self) -> &str {
        &self.keystore_id_hex
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

    /// Installs the audit sink that every key use is reported to (once).
    pub fn set_audit_sink(&self, sink: Arc<dyn AuditSink>) -> Result<(), KmsError> {
        self.audit
            .set(sink)
            .map_err(|_| KmsError::Internal("an audit sink is already installed".into()))
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match self.snap.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Swaps in a new snapshot. Callers hold `reload_lock`, so a reload that
    /// read an older file cannot land after an update's newer snapshot.
    fn install(&self, snap: Snapshot) {
        let mut g = match self.snap.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(snap);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Rate-limited freshness check: at most one stat per interval.
    fn refresh_if_stale(&self) {
        let now = self.base.elapsed().as_nanos() as u64 + 1;
        let last = self.last_check_ns.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < FRESHNESS_INTERVAL_MS * 1_000_000 {
            return;
        }
        if self
            .last_check_ns
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread is checking
        }
        if let Err(e) = self.refresh() {
            self.warn_once(&format!("keystore refresh failed: {e}"));
        }
    }

    /// Logs `msg` unless it is the same as the last warning (no repeats every
    /// freshness interval while a problem persists).
    fn warn_once(&self, msg: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(msg) {
            log::warn!("{msg}");
            *last = Some(msg.to_string());
        }
    }

    /// Checks now (one stat) whether another process changed the keystore and
    /// reloads it if so; deletes keys whose deletion date has passed.
    pub fn refresh(&self) -> Result<(), KmsError> {
        let fp = self.dir.fingerprint();
        if fp != self.snapshot().fingerprint {
            self.reload()?;
        }
        self.apply_due()
    }

    fn reload(&self) -> Result<(), KmsError> {
        let _g = match self.reload_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let fp = self.dir.fingerprint();
        if fp == self.snapshot().fingerprint {
            return Ok(()); // another thread reloaded meanwhile
        }
        let result = load(&self.dir, Some(&self.root), &mut None, &no_passphrase).and_then(|l| {
            if l.keystore_id != self.keystore_id {
                return Err(KmsError::CorruptKeystore(format!(
                    "the keystore in {} was replaced by another one (id {}); restart to use it",
                    self.dir.path().display(),
                    hex(&l.keystore_id)
                )));
            }
            Snapshot::new(l.state, l.fingerprint, l.fallback, l.file_generation)
        });
        match result {
            Ok(s) => {
                self.install(s);
                Ok(())
            }
            Err(e) => {
                // Fail closed: a key disabled on disk must not stay usable here.
                self.install(Snapshot::broken(e.to_string(), fp));
                Err(e)
            }
        }
    }

    /// Deletes keys whose deletion date has passed and rotates keys whose
    /// automatic rotation is due (one update), when anything is due.
    fn apply_due(&self) -> Result<(), KmsError> {
        let snap = self.snapshot();
        let Some(d) = snap.next_due else {
            return Ok(());
        };
        if clock::now()? < d {
            return Ok(());
        }
        if snap.fallback.is_some() {
            if self.purge_warned.swap(true, Ordering::Relaxed) {
                return Ok(());
            }
            log::warn!(
                "a key deletion or rotation is due but the keystore runs from its previous \
                 generation; a key past its deletion date is refused now, and both happen once \
                 the keystore is repaired"
            );
            return Ok(());
        }
        self.update(|_, _| Ok(()))
    }

    /// Applies `f` to the current state under the exclusive lock and writes the
    /// result durably, keeping the previous generation. Keys due for deletion are
    /// purged from both generations on the way. Refuses (writing nothing) when the
    /// current generation cannot be read.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut StoreState, i64) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let now = clock::now()?;
        let _lock = self.dir.lock()?;
        let refuse = |e: KmsError| match e {
            KmsError::CorruptKeystore(m) => KmsError::CorruptKeystore(format!(
                "{m}; the change was refused and nothing was written"
            )),
            other => other,
        };
        let (bytes, _) = self.dir.read(CURRENT_FILE)?.ok_or_else(|| {
            KmsError::CorruptKeystore(format!(
                "{} is missing; the change was refused and nothing was written",
                self.dir.file(CURRENT_FILE).display()
            ))
        })?;
        let frame = Frame::parse(CURRENT_FILE, &bytes).map_err(refuse)?;
        if frame.keystore_id != self.keystore_id {
            return Err(KmsError::CorruptKeystore(format!(
                "the keystore in {} was replaced by another one; nothing was written",
                self.dir.path().display()
            )));
        }
        let old = frame.unseal(CURRENT_FILE, &self.root).map_err(refuse)?;
        let old_generation = frame.generation;
        let mut state = old.clone();
        let purged = state.purge_due(now);
        let rotated = state.rotate_due(now)?;
        let result = f(&mut state, now);
        if result.is_err() && purged.is_empty() && rotated.is_empty() {
            return result;
        }
        let prev_bytes = if purged.is_empty() {
            bytes.clone()
        } else {
            // The kept generation must not keep the deleted material either.
            let mut p = old;
            p.purge_due(now);
            keystore::encode(&self.keystore_id, &self.root, old_generation, &p)?
        };
        let new_bytes =
            keystore::encode(&self.keystore_id, &self.root, old_generation + 1, &state)?;
        self.dir.remove_stale_temporaries();
        let fp = self.dir.write_generations(Some(&prev_bytes), &new_bytes)?;
        for id in &purged {
            log::info!("key {id} reached its deletion date and was deleted for good");
        }
        for id in &rotated {
            log::info!("key {id} was rotated automatically");
        }
        let snap = Snapshot::new(state, Some(fp), None, old_generation + 1)?;
        let _reloads = match self.reload_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        self.install(snap);
        result
    }

    /// The one path of every cryptographic operation: resolve the key, refuse
    /// what its state forbids, authorize the caller, run `f`, audit the outcome.
    fn use_key<T>(
        &self,
        caller: &Caller,
        op: Operation,
        key_ref: KeyRef<'_>,
        usage: Usage,
        f: impl FnOnce(&StoreState, &KeyRecord, &[(u32, AeadKey)]) -> Result<(T, u32), KmsError>,
    ) -> Result<T, KmsError> {
        self.refresh_if_stale();
        let snap = self.snapshot();
        let mut audit_key: Option<String> = None;
        let mut version = None;
        let result = (|| {
            if let Some(why) = &snap.broken {
                return Err(KmsError::CorruptKeystore(why.clone()));
            }
            let key = match key_ref {
                KeyRef::Name(n) => resolve(&snap.state, &self.keystore_id_hex, n)?,
                KeyRef::Blob(h) => {
                    let id = h.key_id_string();
                    let k = snap.state.keys.get(&id);
                    let deleted = snap.state.deleted.get(&id).copied();
                    audit_key = Some(id);
                    match (k, deleted) {
                        (Some(k), _) => k,
                        (None, Some(when)) => {
                            return Err(KmsError::NotFound(format!(
                                "the key this ciphertext was made with ({}) was deleted on {}; \
                                 it can no longer be decrypted",
                                h.key_id_string(),
                                clock::format_rfc3339(when)
                            )));
                        }
                        (None, None) => {
                            return Err(KmsError::InvalidCiphertext(
                                "the ciphertext blob cannot be decrypted: it names a key this \
                                 keystore never had (was it modified?)"
                                    .into(),
                            ));
                        }
                    }
                }
            };
            audit_key = Some(key.key_id.clone());
            if key.state == KeyState::PendingDeletion && key.deletion_due(clock::now()?) {
                self.apply_due()?;
                return Err(KmsError::NotFound(format!(
                    "key {} reached its deletion date and was deleted",
                    key.key_id
                )));
            }
            key.check_usable(usage)?;
            hooks::authorize(caller, key, op)?;
            let ciphers = snap
                .ciphers
                .get(&key.key_id)
                .ok_or_else(|| KmsError::Internal("key schedule missing".into()))?;
            let (out, v) = f(&snap.state, key, ciphers)?;
            version = Some(v);
            Ok(out)
        })();
        self.audit_event(caller, op, audit_key.as_deref(), &key_ref, version, &result);
        result
    }

    fn audit_event<T>(
        &self,
        caller: &Caller,
        op: Operation,
        key: Option<&str>,
        key_ref: &KeyRef<'_>,
        material_version: Option<u32>,
        result: &Result<T, KmsError>,
    ) {
        let named = match key_ref {
            KeyRef::Name(n) => n,
            KeyRef::Blob(_) => "(ciphertext blob)",
        };
        let key_id = key.unwrap_or(named);
        let result = result.as_ref().map(|_| ()).map_err(|e| e.aws_code());
        match self.audit.get() {
            Some(sink) => sink.record(&AuditEvent {
                caller,
                operation: op,
                key_id,
                material_version,
                result,
                time: clock::now().unwrap_or(0),
            }),
            None => log::trace!(
                "{} key={key_id} uid={} result={result:?}",
                op.as_str(),
                caller.uid
            ),
        }
    }

    fn seal_current(
        &self,
        key: &KeyRecord,
        ciphers: &[(u32, AeadKey)],
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<(Vec<u8>, u32), KmsError> {
        let v = key.current_version;
        let aead = ciphers
            .iter()
            .find(|(ver, _)| *ver == v)
            .map(|(_, a)| a)
            .ok_or_else(|| {
                KmsError::InvalidState(format!("key {} has no current key material", key.key_id))
            })?;
        let key_uuid = uuid::Uuid::parse_str(&key.key_id)
            .map_err(|_| KmsError::Internal("stored key id is not a UUID".into()))?;
        let header = BlobHeader {
            keystore_id: self.keystore_id,
            key_id: *key_uuid.as_bytes(),
            material_version: v,
        };
        Ok((blob::seal(aead, &header, plaintext, context)?, v))
    }

    fn open_blob(
        &self,
        caller: &Caller,
        op: Operation,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
    ) -> Result<(String, u32, SecretBytes), KmsError> {
        let header = BlobHeader::parse(ciphertext_blob)?;
        if header.keystore_id != self.keystore_id {
            return Err(KmsError::InvalidCiphertext(format!(
                "the ciphertext blob was made by another keystore ({}), not this one ({})",
                hex(&header.keystore_id),
                self.keystore_id_hex
            )));
        }
        self.use_key(
            caller,
            op,
            KeyRef::Blob(&header),
            Usage::Decrypt,
            |state, key, ciphers| {
                if let Some(want) = key_id {
                    let wanted = resolve(state, &self.keystore_id_hex, want)?;
                    if wanted.key_id != key.key_id {
                        return Err(KmsError::IncorrectKey(format!(
                            "the ciphertext was made under key {}, not {}",
                            key.key_id, wanted.key_id
                        )));
                    }
                }
                let v = header.material_version;
                let aead = ciphers
                    .iter()
                    .find(|(ver, _)| *ver == v)
                    .map(|(_, a)| a)
                    .ok_or_else(|| {
                        KmsError::InvalidCiphertext(format!(
                            "the ciphertext names key material version {v} of key {}, which this \
                         keystore does not hold",
                            key.key_id
                        ))
                    })?;
                let pt = blob::open(aead, ciphertext_blob, context)?;
                Ok(((key.key_id.clone(), v, pt), v))
            },
        )
    }

    /// GenerateDataKeyWithoutPlaintext: only the wrapped data key.
    pub fn generate_data_key_without_plaintext(
        &self,
        caller: &Caller,
        key_id: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let dk = self.gdk(
            caller,
            Operation::GenerateDataKeyWithoutPlaintext,
            key_id,
            spec,
            context,
        )?;
        Ok(Encrypted {
            key_id: dk.key_id,
            ciphertext_blob: dk.ciphertext_blob,
            source_key_id: None,
        })
    }

    fn gdk(
        &self,
        caller: &Caller,
        op: Operation,
        key_id: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let len = spec.byte_len()?;
        self.use_key(
            caller,
            op,
            KeyRef::Name(key_id),
            Usage::Encrypt,
            |_, key, ciphers| {
                let plaintext = SecretBytes::random(len)
                    .map_err(|e| KmsError::Internal(format!("cannot generate a data key: {e}")))?;
                let (ciphertext_blob, v) =
                    self.seal_current(key, ciphers, plaintext.expose(), context)?;
                Ok((
                    DataKey {
                        key_id: key.key_id.clone(),
                        key_material_version: v,
                        plaintext,
                        ciphertext_blob,
                    },
                    v,
                ))
            },
        )
    }

    // ---- administration (each takes the caller for the future policy/audit) ----

    /// CreateKey: a new Enabled key with fresh material.
    pub fn create_key(&self, _caller: &Caller, description: &str) -> Result<KeyMetadata, KmsError> {
        self.update(|s, now| {
            let k = KeyRecord::generate(description, now)?;
            let meta = k.metadata(&self.keystore_id_hex);
            s.keys.insert(k.key_id.clone(), k);
            Ok(meta)
        })
    }

    /// ListKeys, in creation order.
    pub fn list_keys(&self, _caller: &Caller) -> Result<Vec<KeyListEntry>, KmsError> {
        let snap = self.fresh_snapshot()?;
        let mut keys: Vec<&KeyRecord> = snap.state.keys.values().collect();
        keys.sort_by(|a, b| (a.creation_date, &a.key_id).cmp(&(b.creation_date, &b.key_id)));
        Ok(keys
            .into_iter()
            .map(|k| KeyListEntry {
                key_id: k.key_id.clone(),
                key_arn: model::key_arn(&self.keystore_id_hex, &k.key_id),
            })
            .collect())
    }

    /// The metadata of every key, in creation order (for readable listings).
    pub fn list_key_metadata(&self, caller: &Caller) -> Result<Vec<KeyMetadata>, KmsError> {
        let snap = self.fresh_snapshot()?;
        self.list_keys(caller)?
            .iter()
            .filter_map(|e| snap.state.keys.get(&e.key_id))
            .map(|k| Ok(k.metadata(&self.keystore_id_hex)))
            .collect()
    }

    /// EnableKey.
    pub fn enable_key(&self, _caller: &Caller, key_id: &str) -> Result<(), KmsError> {
        self.update(|s, _| resolve_mut(s, &self.keystore_id_hex, key_id)?.enable())
    }

    /// DisableKey.
    pub fn disable_key(&self, _caller: &Caller, key_id: &str) -> Result<(), KmsError> {
        self.update(|s, _| resolve_mut(s, &self.keystore_id_hex, key_id)?.disable())
    }

    /// ScheduleKeyDeletion with a waiting period of 7 to 30 days (default 30).
    pub fn schedule_key_deletion(
        &self,
        _caller: &Caller,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> Result<ScheduledDeletion, KmsError> {
        let days = pending_window_in_days.unwrap_or(model::MAX_PENDING_WINDOW_DAYS);
        self.update(|s, now| {
            let k = resolve_mut(s, &self.keystore_id_hex, key_id)?;
            let deletion_date = k.schedule_deletion(days, now)?;
            Ok(ScheduledDeletion {
                key_id: model::key_arn(&self.keystore_id_hex, &k.key_id),
                deletion_date,
                key_state: k.state,
                pending_window_in_days: days,
            })
        })
    }

    /// RotateKeyOnDemand: new key material becomes current; old versions stay
    /// for decryption. Returns the key id and the new material version.
    pub fn rotate_key_on_demand(
        &self,
        _caller: &Caller,
        key_id: &str,
    ) -> Result<(String, u32), KmsError> {
        self.update(|s, now| {
            let k = resolve_mut(s, &self.keystore_id_hex, key_id)?;
            let v = k.rotate(model::RotationType::OnDemand, now)?;
            Ok((k.key_id.clone(), v))
        })
    }

    /// EnableKeyRotation: automatic rotation every 90 to 2560 days (default 365).
    pub fn enable_key_rotation(
        &self,
        _caller: &Caller,
        key_id: &str,
        rotation_period_in_days: Option<u32>,
    ) -> Result<(), KmsError> {
        let days = rotation_period_in_days.unwrap_or(model::DEFAULT_ROTATION_PERIOD_DAYS);
        self.update(|s, now| {
            resolve_mut(s, &self.keystore_id_hex, key_id)?.enable_rotation(days, now)
        })
    }

    /// DisableKeyRotation.
    pub fn disable_key_rotation(&self, _caller: &Caller, key_id: &str) -> Result<(), KmsError> {
        self.update(|s, _| resolve_mut(s, &self.keystore_id_hex, key_id)?.disable_rotation())
    }

    /// GetKeyRotationStatus.
    pub fn get_key_rotation_status(
        &self,
        _caller: &Caller,
        key_id: &str,
    ) -> Result<KeyRotationStatus, KmsError> {
        let snap = self.fresh_snapshot()?;
        let k = resolve(&snap.state, &self.keystore_id_hex, key_id)?;
        Ok(KeyRotationStatus {
            key_id: model::key_arn(&self.keystore_id_hex, &k.key_id),
            key_rotation_enabled: k.rotation_period_days.is_some(),
            rotation_period_in_days: k.rotation_period_days,
            next_rotation_date: k.next_rotation,
        })
    }

    /// ListKeyRotations: every rotation the key has had, oldest first.
    pub fn list_key_rotations(
        &self,
        _caller: &Caller,
        key_id: &str,
    ) -> Result<Vec<KeyRotation>, KmsError> {
        let snap = self.fresh_snapshot()?;
        let k = resolve(&snap.state, &self.keystore_id_hex, key_id)?;
        let mut v: Vec<KeyRotation> = k
            .materials
            .iter()
            .filter_map(|m| {
                m.rotation.map(|t| KeyRotation {
                    key_id: k.key_id.clone(),
                    rotation_date: m.created,
                    rotation_type: t,
                    key_material_version: m.version,
                })
            })
            .collect();
        v.sort_by_key(|r| r.key_material_version);
        Ok(v)
    }

    /// CancelKeyDeletion: the key becomes Disabled. Returns its ARN.
    pub fn cancel_key_deletion(&self, _caller: &Caller, key_id: &str) -> Result<String, KmsError> {
        self.update(|s, _| {
            let k = resolve_mut(s, &self.keystore_id_hex, key_id)?;
            k.cancel_deletion()?;
            Ok(model::key_arn(&self.keystore_id_hex, &k.key_id))
        })
    }

    /// CreateAlias (user aliases: the reserved prefixes are refused).
    pub fn create_alias(
        &self,
        _caller: &Caller,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), KmsError> {
        model::validate_alias_name(alias_name, false)?;
        self.update(|s, _| {
            let id = resolve(s, &self.keystore_id_hex, target_key_id)?
                .key_id
                .clone();
            s.create_alias(alias_name, &id, false)
        })
    }

    /// UpdateAlias.
    pub fn update_alias(
        &self,
        _caller: &Caller,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), KmsError> {
        model::validate_alias_name(alias_name, false)?;
        self.update(|s, _| {
            let id = resolve(s, &self.keystore_id_hex, target_key_id)?
                .key_id
                .clone();
            s.update_alias(alias_name, &id)
        })
    }

    /// DeleteAlias.
    pub fn delete_alias(&self, _caller: &Caller, alias_name: &str) -> Result<(), KmsError> {
        model::validate_alias_name(alias_name, false)?;
        self.update(|s, _| s.delete_alias(alias_name))
    }

    /// ListAliases, optionally only those of one key.
    pub fn list_aliases(
        &self,
        _caller: &Caller,
        key_id: Option<&str>,
    ) -> Result<Vec<AliasListEntry>, KmsError> {
        let snap = self.fresh_snapshot()?;
        let only = match key_id {
            Some(k) => Some(
                resolve(&snap.state, &self.keystore_id_hex, k)?
                    .key_id
                    .clone(),
            ),
            None => None,
        };
        Ok(snap
            .state
            .aliases
            .iter()
            .filter(|(_, t)| only.as_ref().is_none_or(|o| o == *t))
            .map(|(name, t)| AliasListEntry {
                alias_name: name.clone(),
                alias_arn: model::alias_arn(&self.keystore_id_hex, name),
                target_key_id: t.clone(),
            })
            .collect())
    }

    /// The key aliased `alias/kmsfs/default`, created (with its alias) if absent,
    /// as AWS creates `aws/ebs` on first use. Returns its key id.
    pub fn ensure_default_key(&self, _caller: &Caller) -> Result<String, KmsError> {
        let snap = self.fresh_snapshot()?;
        if let Some(id) = snap.state.aliases.get(model::DEFAULT_ALIAS) {
            return Ok(id.clone());
        }
        self.update(|s, now| {
            if let Some(id) = s.aliases.get(model::DEFAULT_ALIAS) {
                return Ok(id.clone()); // another process made it meanwhile
            }
            let k =
                KeyRecord::generate("Default key for kmsfs mounts (created automatically)", now)?;
            let id = k.key_id.clone();
            s.keys.insert(id.clone(), k);
            s.create_alias(model::DEFAULT_ALIAS, &id, true)?;
            Ok(id)
        })
    }

    fn fresh_snapshot(&self) -> Result<Arc<Snapshot>, KmsError> {
        self.refresh_if_stale();
        let snap = self.snapshot();
        match &snap.broken {
            Some(why) => Err(KmsError::CorruptKeystore(why.clone())),
            None => Ok(snap),
        }
    }
}

impl KeyService for LocalKeyStore {
    fn generate_data_key(
        &self,
        caller: &Caller,
        key_id: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.gdk(caller, Operation::GenerateDataKey, key_id, spec, context)
    }

    fn decrypt(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
    ) -> Result<Decrypted, KmsError> {
        let (key_id, key_material_version, plaintext) =
            self.open_blob(caller, Operation::Decrypt, ciphertext_blob, context, key_id)?;
        Ok(Decrypted {
            key_id,
            key_material_version,
            plaintext,
        })
    }

    fn encrypt(
        &self,
        caller: &Caller,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        if plaintext.len() > MAX_ENCRYPT_PLAINTEXT {
            return Err(KmsError::Validation(format!(
                "plaintext is {} bytes, but Encrypt takes at most {MAX_ENCRYPT_PLAINTEXT}; for \
                 larger data use generate-data-key and encrypt the data with the data key \
                 (envelope encryption)",
                plaintext.len()
            )));
        }
        self.use_key(
            caller,
            Operation::Encrypt,
            KeyRef::Name(key_id),
            Usage::Encrypt,
            |_, key, ciphers| {
                let (ciphertext_blob, v) = self.seal_current(key, ciphers, plaintext, context)?;
                Ok((
                    Encrypted {
                        key_id: key.key_id.clone(),
                        ciphertext_blob,
                        source_key_id: None,
                    },
                    v,
                ))
            },
        )
    }

    fn re_encrypt(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        source_context: &EncryptionContext,
        destination_key_id: &str,
        destination_context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let (source, _, plaintext) = self.open_blob(
            caller,
            Operation::ReEncryptFrom,
            ciphertext_blob,
            source_context,
            None,
        )?;
        self.use_key(
            caller,
            Operation::ReEncryptTo,
            KeyRef::Name(destination_key_id),
            Usage::Encrypt,
            |_, key, ciphers| {
                let (blob, v) =
                    self.seal_current(key, ciphers, plaintext.expose(), destination_context)?;
                Ok((
                    Encrypted {
                        key_id: key.key_id.clone(),
                        ciphertext_blob: blob,
                        source_key_id: Some(source.clone()),
                    },
                    v,
                ))
            },
        )
    }

    fn describe_key(&self, _caller: &Caller, key_id: &str) -> Result<KeyMetadata, KmsError> {
        let snap = self.fresh_snapshot()?;
        let k = resolve(&snap.state, &self.keystore_id_hex, key_id)?;
        if k.deletion_due(clock::now()?) {
            self.apply_due()?;
            return Err(KmsError::NotFound(format!(
                "key {} reached its deletion date and was deleted",
                k.key_id
            )));
        }
        Ok(k.metadata(&self.keystore_id_hex))
    }

    fn generation(&self) -> u64 {
        self.refresh_if_stale();
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::keystore::CURRENT_FILE;

    const ME: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };

    fn new_store() -> (tempfile::TempDir, LocalKeyStore, String) {
        let t = tempfile::tempdir().unwrap();
        let ks = LocalKeyStore::create(&t.path().join("ks"), CreateMode::RootKeyFile).unwrap();
        let id = ks.create_key(&ME, "test").unwrap().key_id;
        (t, ks, id)
    }

    fn reopen(ks: &LocalKeyStore) -> LocalKeyStore {
        LocalKeyStore::open(ks.dir(), &no_passphrase).unwrap()
    }

    fn ctx() -> EncryptionContext {
        EncryptionContext::with("file", "f1")
    }

    #[test]
    fn data_key_round_trip_and_refusals() {
        let (_t, ks, id) = new_store();
        let dk = ks
            .generate_data_key(&ME, &id, DataKeySpec::Aes256, &ctx())
            .unwrap();
        assert_eq!(dk.plaintext.len(), 32);
        assert_eq!(dk.ciphertext_blob.len(), 32 + blob::BLOB_OVERHEAD);
        let d = ks.decrypt(&ME, &dk.ciphertext_blob, &ctx(), None).unwrap();
        assert_eq!(d.plaintext, dk.plaintext);
        assert_eq!(
            (d.key_id.as_str(), d.key_material_version),
            (id.as_str(), 1)
        );
        // Same key named by ARN: accepted. Another key: IncorrectKey.
        let arn = model::key_arn(ks.keystore_id(), &id);
        assert!(
            ks.decrypt(&ME, &dk.ciphertext_blob, &ctx(), Some(&arn))
                .is_ok()
        );
        let other = ks.create_key(&ME, "").unwrap().key_id;
        let e = ks
            .decrypt(&ME, &dk.ciphertext_blob, &ctx(), Some(&other))
            .unwrap_err();
        assert!(matches!(e, KmsError::IncorrectKey(_)), "{e}");
        // Other context: refused.
        let e = ks
            .decrypt(&ME, &dk.ciphertext_blob, &EncryptionContext::new(), None)
            .unwrap_err();
        assert!(matches!(e, KmsError::InvalidCiphertext(_)), "{e}");
        for (spec, n) in [
            (DataKeySpec::Aes128, 16),
            (DataKeySpec::Bytes(1), 1),
            (DataKeySpec::Bytes(1024), 1024),
        ] {
            assert_eq!(
                ks.generate_data_key(&ME, &id, spec, &ctx())
                    .unwrap()
                    .plaintext
                    .len(),
                n
            );
        }
        for bad in [0, 1025] {
            let e = ks
                .generate_data_key(&ME, &id, DataKeySpec::Bytes(bad), &ctx())
                .unwrap_err();
            assert!(matches!(e, KmsError::Validation(_)));
        }
        let w = ks
            .generate_data_key_without_plaintext(&ME, &id, DataKeySpec::Aes256, &ctx())
            .unwrap();
        assert_eq!(
            ks.decrypt(&ME, &w.ciphertext_blob, &ctx(), None)
                .unwrap()
                .plaintext
                .len(),
            32
        );
    }

    #[test]
    fn every_modified_blob_is_invalid_ciphertext() {
        let (_t, ks, id) = new_store();
        let dk = ks
            .generate_data_key(&ME, &id, DataKeySpec::Aes256, &ctx())
            .unwrap();
        let blob = dk.ciphertext_blob;
        for i in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[i / 8] ^= 1 << (i % 8);
            match ks.decrypt(&ME, &bad, &ctx(), None) {
                Err(KmsError::InvalidCiphertext(_)) => {}
                other => panic!("bit {i}: {other:?}"),
            }
        }
        for n in 0..blob.len() {
            assert!(matches!(
                ks.decrypt(&ME, &blob[..n], &ctx(), None),
                Err(KmsError::InvalidCiphertext(_))
            ));
        }
    }

    #[test]
    fn rotation_keeps_old_blobs_decryptable_and_new_ones_use_the_new_version() {
        let (_t, ks, id) = new_store();
        let old = ks
            .generate_data_key(&ME, &id, DataKeySpec::Aes256, &ctx())
            .unwrap();
        assert_eq!(old.key_material_version, 1);
        let g = ks.generation();
        assert_eq!(ks.rotate_key_on_demand(&ME, &id).unwrap(), (id.clone(), 2));
        assert_ne!(ks.generation(), g);
        let new = ks
            .generate_data_key(&ME, &id, DataKeySpec::Aes256, &ctx())
            .unwrap();
        assert_eq!(new.key_material_version, 2);
        assert_eq!(
            BlobHeader::parse(&new.ciphertext_blob)
                .unwrap()
                .material_version,
            2
        );
        let d_old = ks.decrypt(&ME, &old.ciphertext_blob, &ctx(), None).unwrap();
        assert_eq!(
            (d_old.key_material_version, &d_old.plaintext),
            (1, &old.plaintext)
        );
        let d_new = ks.decrypt(&ME, &new.ciphertext_blob, &ctx(), None).unwrap();
        assert_eq!(d_new.key_material_version, 2);
        // Re-encrypting under the same key moves an old blob to the new version.
        let r = ks
            .re_encrypt(&ME, &old.ciphertext_blob, &ctx(), &id, &ctx())
            .unwrap();
        assert_eq!(
            BlobHeader::parse(&r.ciphertext_blob)
                .unwrap()
                .material_version,
            2
        );
        // A reopened store (another process) agrees.
        let other = reopen(&ks);
        assert!(
            other
                .decrypt(&ME, &old.ciphertext_blob, &ctx(), None)
                .is_ok()
        );
        assert_eq!(
            other
                .describe_key(&ME, &id)
                .unwrap()
                .current_key_material_version,
            2
        );
        let rot = other.list_key_rotations(&ME, &id).unwrap();
        assert_eq!(rot.len(), 1);
        assert_eq!(
            (rot[0].rotation_type, rot[0].key_material_version),
            (model::RotationType::OnDemand, 2)
        );
        ks.disable_key(&ME, &id).unwrap();
        assert!(matches!(
            ks.rotate_key_on_demand(&ME, &id),
            Err(KmsError::Disabled(_))
        ));
    }

    #[test]
    fn automatic_rotation_happens_on_the_next_use_after_it_is_due() {
        let (_t, ks, id) = new_store();
        assert!(
            !ks.get_key_rotation_status(&ME, &id)
                .unwrap()
                .key_rotation_enabled
        );
        assert!(matches!(
            ks.enable_key_rotation(&ME, &id, Some(89)),
            Err(KmsError::Validation(_))
        ));
        ks.enable_key_rotation(&ME, &id, None).unwrap();
        let st = ks.get_key_rotation_status(&ME, &id).unwrap();
        assert_eq!(
            (st.key_rotation_enabled, st.rotation_period_in_days),
            (true, Some(365))
        );
        let old = ks.encrypt(&ME, &id, b"x", &ctx()).unwrap().ciphertext_blob;
        // Move the due date into the past, as if the period had elapsed.
        ks.update(|s, _| {
            s.keys.get_mut(&id).unwrap().next_rotation = Some(1);
            Ok(())
        })
        .unwrap();
        let fresh = reopen(&ks); // the next use rotates
        assert_eq!(
            fresh
                .describe_key(&ME, &id)
                .unwrap()
                .current_key_material_version,
            2
        );
        let rot = fresh.list_key_rotations(&ME, &id).unwrap();
        assert_eq!(rot[0].rotation_type, model::RotationType::Automatic);
        assert!(
            fresh
                .get_key_rotation_status(&ME, &id)
                .unwrap()
                .next_rotation_date
                .unwrap()
                > 1
        );
        assert!(fresh.decrypt(&ME, &old, &ctx(), None).is_ok());
        fresh.disable_key_rotation(&ME, &id).unwrap();
        assert!(
            !fresh
                .get_key_rotation_status(&ME, &id)
                .unwrap()
                .key_rotation_enabled
        );
    }

    #[test]
    fn encrypt_size_limit() {
        let (_t, ks, id) = new_store();
        let e = ks
            .encrypt(&ME, &id, &[7u8; MAX_ENCRYPT_PLAINTEXT], &ctx())
            .unwrap();
        let d = ks.decrypt(&ME, &e.ciphertext_blob, &ctx(), None).unwrap();
        assert_eq!(d.plaintext.expose(), &[7u8; MAX_ENCRYPT_PLAINTEXT][..]);
        let err = ks
            .encrypt(&ME, &id, &[7u8; MAX_ENCRYPT_PLAINTEXT + 1], &ctx())
            .unwrap_err();
        assert!(
            matches!(err, KmsError::Validation(_)) && err.to_string().contains("generate-data-key")
        );
    }

    #[test]
    fn every_state_refuses_with_its_own_error() {
        let (_t, ks, id) = new_store();
        let blob = ks.encrypt(&ME, &id, b"x", &ctx()).unwrap().ciphertext_blob;
        ks.disable_key(&ME, &id).unwrap();
        assert!(matches!(
            ks.encrypt(&ME, &id, b"x", &ctx()),
            Err(KmsError::Disabled(_))
        ));
        assert!(matches!(
            ks.decrypt(&ME, &blob, &ctx(), None),
            Err(KmsError::Disabled(_))
        ));
        assert!(matches!(
            ks.generate_data_key(&ME, &id, DataKeySpec::Aes256, &ctx()),
            Err(KmsError::Disabled(_))
        ));
        assert!(matches!(
            ks.re_encrypt(&ME, &blob, &ctx(), &id, &ctx()),
            Err(KmsError::Disabled(_))
        ));
        assert_eq!(
            ks.describe_key(&ME, &id).unwrap().key_state,
            KeyState::Disabled
        );
        ks.enable_key(&ME, &id).unwrap();
        assert!(ks.decrypt(&ME, &blob, &ctx(), None).is_ok());
        let s = ks.schedule_key_deletion(&ME, &id, Some(7)).unwrap();
        assert_eq!(s.key_state, KeyState::PendingDeletion);
        assert!(matches!(
            ks.decrypt(&ME, &blob, &ctx(), None),
            Err(KmsError::InvalidState(_))
        ));
        assert!(matches!(
            ks.encrypt(&ME, &id, b"x", &ctx()),
            Err(KmsError::InvalidState(_))
        ));
        assert!(matches!(
            ks.enable_key(&ME, &id),
            Err(KmsError::InvalidState(_))
        ));
        ks.cancel_key_deletion(&ME, &id).unwrap();
        assert_eq!(
            ks.describe_key(&ME, &id).unwrap().key_state,
            KeyState::Disabled
        );
        for bad in [6, 31] {
            assert!(matches!(
                ks.schedule_key_deletion(&ME, &id, Some(bad)),
                Err(KmsError::Validation(_))
            ));
        }
        assert_eq!(
            ks.schedule_key_deletion(&ME, &id, None)
                .unwrap()
                .pending_window_in_days,
            30
        );
        let missing = uuid::Uuid::new_v4().to_string();
        assert!(matches!(
            ks.disable_key(&ME, &missing),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            ks.encrypt(&ME, "not-a-key", b"x", &ctx()),
            Err(KmsError::NotFound(_))
        ));
    }

    #[test]
    fn blob_from_another_keystore_is_refused() {
        let (_t, a, ida) = new_store();
        let (_t2, b, _) = new_store();
        let blob = a.encrypt(&ME, &ida, b"x", &ctx()).unwrap().ciphertext_blob;
        let e = b.decrypt(&ME, &blob, &ctx(), None).unwrap_err();
        assert!(matches!(e, KmsError::InvalidCiphertext(_)), "{e}");
        // Even with the keystore id forged, the wrong key cannot open it.
        let mut forged = blob.clone();
        let bid: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&b.keystore_id()[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        forged[5..21].copy_from_slice(&bid);
        assert!(b.decrypt(&ME, &forged, &ctx(), None).is_err());
    }

    #[test]
    fn re_encrypt_moves_to_the_destination_key_and_context() {
        let (_t, ks, a) = new_store();
        let b = ks.create_key(&ME, "dest").unwrap().key_id;
        let blob = ks
            .encrypt(&ME, &a, b"secret", &ctx())
            .unwrap()
            .ciphertext_blob;
        let dctx = EncryptionContext::with("file", "f2");
        let r = ks.re_encrypt(&ME, &blob, &ctx(), &b, &dctx).unwrap();
        assert_eq!(r.source_key_id.as_deref(), Some(a.as_str()));
        assert_eq!(r.key_id, b);
        let d = ks.decrypt(&ME, &r.ciphertext_blob, &dctx, None).unwrap();
        assert_eq!(
            (d.key_id.as_str(), d.plaintext.expose()),
            (b.as_str(), &b"secret"[..])
        );
        assert!(ks.decrypt(&ME, &r.ciphertext_blob, &ctx(), None).is_err());
        assert!(matches!(
            ks.re_encrypt(&ME, &blob, &dctx, &b, &dctx),
            Err(KmsError::InvalidCiphertext(_))
        ));
    }

    #[test]
    fn aliases_and_key_references() {
        let (_t, ks, id) = new_store();
        ks.create_alias(&ME, "alias/app", &id).unwrap();
        assert!(matches!(
            ks.create_alias(&ME, "alias/kmsfs/x", &id),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            ks.create_alias(&ME, "alias/aws/ebs", &id),
            Err(KmsError::Validation(_))
        ));
        let alias_arn = model::alias_arn(ks.keystore_id(), "alias/app");
        for r in ["alias/app", alias_arn.as_str(), &id.to_uppercase()] {
            assert_eq!(ks.describe_key(&ME, r).unwrap().key_id, id, "{r}");
        }
        let foreign = format!("arn:kmsfs:kms:local:{}:key/{id}", "0".repeat(32));
        assert!(matches!(
            ks.describe_key(&ME, &foreign),
            Err(KmsError::NotFound(_))
        ));
        let other = ks.create_key(&ME, "").unwrap().key_id;
        ks.update_alias(&ME, "alias/app", &other).unwrap();
        assert_eq!(ks.describe_key(&ME, "alias/app").unwrap().key_id, other);
        assert_eq!(ks.list_aliases(&ME, Some(&id)).unwrap().len(), 0);
        ks.delete_alias(&ME, "alias/app").unwrap();
        assert!(matches!(
            ks.describe_key(&ME, "alias/app"),
            Err(KmsError::NotFound(_))
        ));
        let d1 = ks.ensure_default_key(&ME).unwrap();
        assert_eq!(ks.ensure_default_key(&ME).unwrap(), d1);
        assert_eq!(reopen(&ks).ensure_default_key(&ME).unwrap(), d1);
        assert_eq!(
            ks.describe_key(&ME, model::DEFAULT_ALIAS).unwrap().key_id,
            d1
        );
    }

    #[test]
    fn another_instance_sees_changes_and_generation_moves() {
        let (_t, a, id) = new_store();
        let b = reopen(&a);
        let blob = b.encrypt(&ME, &id, b"x", &ctx()).unwrap().ciphertext_blob;
        let g0 = b.generation();
        a.disable_key(&ME, &id).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(FRESHNESS_INTERVAL_MS + 5));
        assert_ne!(b.generation(), g0);
        assert!(matches!(
            b.decrypt(&ME, &blob, &ctx(), None),
            Err(KmsError::Disabled(_))
        ));
        a.enable_key(&ME, &id).unwrap();
        b.refresh().unwrap();
        assert!(b.decrypt(&ME, &blob, &ctx(), None).is_ok());
        // A key created elsewhere is usable here after a refresh.
        let k2 = a.create_key(&ME, "").unwrap().key_id;
        b.refresh().unwrap();
        assert!(b.encrypt(&ME, &k2, b"y", &ctx()).is_ok());
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let (_t, a, _) = new_store();
        let stores: Vec<LocalKeyStore> = (0..4).map(|_| reopen(&a)).collect();
        std::thread::scope(|s| {
            for st in &stores {
                s.spawn(move || {
                    for _ in 0..5 {
                        st.create_key(&ME, "c").unwrap();
                    }
                });
            }
        });
        a.refresh().unwrap();
        assert_eq!(a.list_keys(&ME).unwrap().len(), 21);
        // init wrote generation 1, then 21 creations.
        assert_eq!(a.file_generation(), 22);
    }

    #[test]
    fn corrupt_current_falls_back_read_only() {
        let (_t, ks, id) = new_store();
        let blob = ks.encrypt(&ME, &id, b"x", &ctx()).unwrap().ciphertext_blob;
        ks.create_alias(&ME, "alias/later", &id).unwrap(); // current = prev + alias
        let cur = ks.dir().join(CURRENT_FILE);
        let mut bytes = std::fs::read(&cur).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&cur, &bytes).unwrap();
        let fb = reopen(&ks);
        assert!(fb.fallback_reason().unwrap().contains("checksum"));
        assert!(fb.decrypt(&ME, &blob, &ctx(), None).is_ok());
        assert!(fb.describe_key(&ME, "alias/later").is_err()); // prev generation's view
        let e = fb.create_key(&ME, "").unwrap_err();
        assert!(matches!(e, KmsError::CorruptKeystore(_)), "{e}");
        assert_eq!(
            std::fs::read(&cur).unwrap(),
            bytes,
            "a damaged keystore was overwritten"
        );
    }

    #[test]
    fn due_deletion_purges_both_generations_and_aliases() {
        let (_t, ks, id) = new_store();
        let keep = ks.create_key(&ME, "keep").unwrap().key_id;
        ks.create_alias(&ME, "alias/doomed", &id).unwrap();
        let blob = ks.encrypt(&ME, &id, b"x", &ctx()).unwrap().ciphertext_blob;
        ks.schedule_key_deletion(&ME, &id, Some(7)).unwrap();
        // Move the deletion date into the past (as if the window had elapsed).
        ks.update(|s, _| {
            s.keys.get_mut(&id).unwrap().deletion_date = Some(1);
            Ok(())
        })
        .unwrap();
        let fresh = reopen(&ks); // opening purges
        assert!(matches!(
            fresh.describe_key(&ME, &id),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            fresh.decrypt(&ME, &blob, &ctx(), None),
            Err(KmsError::NotFound(_))
        ));
        assert!(fresh.list_aliases(&ME, None).unwrap().is_empty());
        assert!(fresh.describe_key(&ME, &keep).is_ok());
        for name in [CURRENT_FILE, keystore::PREV_FILE] {
            let bytes = std::fs::read(ks.dir().join(name)).unwrap();
            let state = Frame::parse(name, &bytes)
                .unwrap()
                .unseal(name, &ks.root)
                .unwrap();
            assert!(!state.keys.contains_key(&id), "{name} still holds the key");
            assert!(state.keys.contains_key(&keep));
        }
    }

    #[test]
    fn audit_sink_sees_every_use_and_refusal() {
        type Seen = (Operation, String, Result<(), &'static str>);
        struct Sink(Mutex<Vec<Seen>>);
        impl AuditSink for Sink {
            fn record(&self, e: &AuditEvent<'_>) {
                self.0
                    .lock()
                    .unwrap()
                    .push((e.operation, e.key_id.to_string(), e.result));
            }
        }
        let (_t, ks, id) = new_store();
        let sink = Arc::new(Sink(Mutex::new(Vec::new())));
        ks.set_audit_sink(sink.clone()).unwrap();
        let blob = ks.encrypt(&ME, &id, b"x", &ctx()).unwrap().ciphertext_blob;
        ks.disable_key(&ME, &id).unwrap();
        let _ = ks.decrypt(&ME, &blob, &ctx(), None);
        let _ = ks.encrypt(&ME, "alias/none", b"x", &ctx());
        let ev = sink.0.lock().unwrap().clone();
        assert_eq!(
            ev,
            vec![
                (Operation::Encrypt, id.clone(), Ok(())),
                (Operation::Decrypt, id.clone(), Err("DisabledException")),
                (
                    Operation::Encrypt,
                    "alias/none".to_string(),
                    Err("NotFoundException")
                ),
            ]
        );
    }

    #[test]
    fn debug_shows_no_secrets() {
        let (_t, ks, id) = new_store();
        let dk = ks
            .generate_data_key(&ME, &id, DataKeySpec::Aes256, &ctx())
            .unwrap();
        let s = format!("{ks:?} {dk:?}");
        assert!(s.contains("redacted") && s.contains("SecretBytes(len=32)"));
        let hex: String = dk
            .plaintext
            .expose()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!s.contains(&hex));
    }
}
