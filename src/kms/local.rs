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
use super::policy::KeyPolicy;
use super::{
    Caller, DataKey, DataKeySpec, Decrypted, Encrypted, EncryptionContext, KeyMetadata, KeyService,
    KeyState, KmsError, MAX_ENCRYPT_PLAINTEXT, Missing, StateProblem, ValidationCode, clock,
};
use crate::crypto::{AeadKey, SecretBytes};

/// How often (at most) an operation stats the keystore file to notice another
/// process's changes. `generation()` and `refresh()` share it; worst-case staleness
/// is this interval (well under the mount's one-second requirement).
pub const FRESHNESS_INTERVAL_MS: u64 = 20;

mod admin;
mod registry;

pub use admin::{
    AliasListEntry, ImportParameters, KeyListEntry, KeyRotation, KeyRotationStatus,
    ScheduledDeletion,
};

/// An immutable view of the keystore, swapped whole on every change.
struct Snapshot {
    state: StoreState,
    /// Ready AES-GCM keys: key id → (material version, key).
    ciphers: HashMap<String, Vec<(u32, AeadKey)>>,
    /// Parsed key policies of the keys that have one.
    policies: HashMap<String, KeyPolicy>,
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
                    KmsError::corrupt(format!("key {id} has material of a wrong length"))
                })?;
                v.push((m.version, aead));
            }
            ciphers.insert(id.clone(), v);
        }
        let mut policies = HashMap::new();
        for (id, k) in &state.keys {
            if let Some(doc) = &k.policy {
                // A document an older release accepted (say with a field now
                // refused) fails closed for its key alone, not the whole keystore.
                let p = KeyPolicy::from_value(doc).unwrap_or_else(|e| {
                    log::warn!(
                        "the stored policy of key {id} is not accepted by this release ({e}); \
                         the key is refused to everyone until put-key-policy gives it a valid one"
                    );
                    KeyPolicy::deny_all()
                });
                policies.insert(id.clone(), p);
            }
        }
        let next_due = state.next_due();
        Ok(Self {
            state,
            ciphers,
            policies,
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
            policies: HashMap::new(),
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
    /// A damaged current generation that a reload refused to fall back from:
    /// not re-read until it changes.
    damaged: Mutex<Option<Option<Fingerprint>>>,
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
            .ok_or_else(|| KmsError::internal("root key missing".into()))?;
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
                Err(e @ KmsError::CorruptKeystore { .. }) => e.to_string(),
                Err(e) => return Err(e),
            }
        }
        None => format!("{CURRENT_FILE} is missing"),
    };
    let Some((pbytes, _)) = dir.read(PREV_FILE)? else {
        return Err(match cur {
            None => KmsError::KeystoreNotFound {
                path: dir.path().to_path_buf(),
            },
            Some(_) => KmsError::corrupt(format!(
                "{primary}; there is no previous generation ({PREV_FILE}) to fall back to, \
                 and nothing was written"
            )),
        });
    };
    match unseal(PREV_FILE, &pbytes) {
        Ok((state, keystore_id, file_generation)) => {
            let claimed = cur
                .as_ref()
                .and_then(|(b, _)| keystore::claimed_generation(b));
            Ok(Loaded {
                state,
                file_generation,
                keystore_id,
                fingerprint,
                fallback: Some(fallback_warning(dir, &primary, file_generation, claimed)),
            })
        }
        Err(e @ KmsError::CorruptKeystore { .. }) => Err(KmsError::corrupt(format!(
            "{primary}; and the previous generation is unreadable too: {e}; nothing was written"
        ))),
        Err(e) => Err(e),
    }
}

/// What running from the previous generation means, in plain words: the
/// states there may be older than the damaged file's. `claimed` is the
/// generation the damaged file's header claims (unauthenticated, may be junk).
fn fallback_warning(
    dir: &KeystoreDir,
    primary: &str,
    prev_gen: u64,
    claimed: Option<u64>,
) -> String {
    let missing = match claimed {
        Some(n) if n > prev_gen && n - prev_gen < 1_000_000 => format!(
            "the damaged file claims to be generation {n} (unverified), so at least {} change(s) \
             made after generation {prev_gen} are not seen here",
            n - prev_gen
        ),
        _ => format!("changes made after generation {prev_gen} are not seen here"),
    };
    format!(
        "{primary}; running READ-ONLY from the previous generation {} (generation {prev_gen}). \
         KEY STATES MAY BE OUT OF DATE: {missing} — a key disabled, scheduled for deletion or \
         given a stricter policy in the damaged generation may show here as enabled and usable. \
         Changes are refused until {CURRENT_FILE} is restored from a backup, or replaced by a \
         copy of {PREV_FILE} (then re-apply the lost changes, e.g. disable a key again; see \
         docs/KEYSTORE.md, \"Fallback\")",
        dir.file(PREV_FILE).display()
    )
}

fn no_passphrase() -> Result<SecretBytes, KmsError> {
    Err(KmsError::internal(
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
            KmsError::not_found(Missing::ForeignArn {
                arn: key_ref.to_string(),
                keystore_id: keystore_id_hex.to_string(),
            })
        })?;
        if let Some(id) = name.strip_prefix("key/") {
            name = id;
        } else if !name.starts_with(model::ALIAS_PREFIX) {
            return Err(KmsError::not_found(Missing::ArnNamesNothing {
                arn: key_ref.to_string(),
            }));
        }
    }
    let id = if name.starts_with(model::ALIAS_PREFIX) {
        state
            .aliases
            .get(name)
            .ok_or_else(|| {
                KmsError::not_found(Missing::Alias {
                    name: name.to_string(),
                })
            })?
            .as_str()
    } else {
        let u = uuid::Uuid::parse_str(name).map_err(|_| {
            KmsError::not_found(Missing::InvalidKeyId {
                given: name.to_string(),
            })
        })?;
        return state.keys.get(&u.hyphenated().to_string()).ok_or_else(|| {
            KmsError::not_found(Missing::Key {
                key_id: name.to_string(),
            })
        });
    };
    state.keys.get(id).ok_or_else(|| {
        KmsError::not_found(Missing::AliasTarget {
            key_id: id.to_string(),
            alias: name.to_string(),
        })
    })
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
        .ok_or_else(|| KmsError::internal("key vanished".into()))
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
            // root.key or the lock file without a generation: a keystore was
            // here. Wait for a writer that may be creating it right now, then
            // call it lost rather than "none" (which would invite a fresh one).
            if let Some(evidence) = kdir.lost_evidence() {
                kdir.wait_for_writers();
                if !kdir.exists() {
                    return Err(keystore::lost(&kdir, evidence));
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
        let kdir = KeystoreDir::new(keystore::trusted_path(dir, false)?);
        let mut root = None;
        let loaded = load(&kdir, None, &mut root, passphrase)?;
        if let Some(why) = &loaded.fallback {
            log::warn!("{why}");
        }
        let root = root.ok_or_else(|| KmsError::internal("root key not obtained".into()))?;
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
        let kdir = KeystoreDir::new(keystore::trusted_path(dir, true)?);
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
            damaged: Mutex::new(None),
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
            .map_err(|_| KmsError::internal("an audit sink is already installed".into()))
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
        match self.refresh() {
            Err(e) => self.warn_once(&format!("keystore refresh failed: {e}")),
            // Healthy again: a recurrence of the same problem is worth a new warning.
            Ok(()) => *self.last_warning.lock().unwrap_or_else(|p| p.into_inner()) = None,
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
        let known_damaged = *self.damaged.lock().unwrap_or_else(|p| p.into_inner()) == Some(fp);
        if fp != self.snapshot().fingerprint && !known_damaged {
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
                return Err(KmsError::corrupt(format!(
                    "the keystore in {} was replaced by another one (id {}); restart to use it",
                    self.dir.path().display(),
                    hex(&l.keystore_id)
                )));
            }
            if l.fallback.is_some() {
                return Ok(Err(l));
            }
            let held = self.snapshot();
            if held.broken.is_none() && l.file_generation < held.file_generation {
                // A valid but older generation (a copy of keystore.prev, a
                // restored backup) would re-enable keys disabled since, and
                // later changes made on top of it could sort below what we
                // hold and be ignored: refuse every key until a restart.
                return Err(KmsError::corrupt(format!(
                    "the keystore in {} went back from generation {} to {}; every key is \
                     refused until kmsfs is restarted (if you restored it on purpose, restart \
                     the mount; otherwise someone replaced it with an older copy)",
                    self.dir.path().display(),
                    held.file_generation,
                    l.file_generation
                )));
            }
            Snapshot::new(l.state, l.fingerprint, l.fallback, l.file_generation).map(Ok)
        });
        match result {
            Ok(Ok(s)) => {
                *self.damaged.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.install(s);
                Ok(())
            }
            Ok(Err(l)) => self.keep_on_damage(l, fp),
            Err(e) => {
                // Fail closed: a key disabled on disk must not stay usable here.
                self.install(Snapshot::broken(e.to_string(), fp));
                Err(e)
            }
        }
    }

    /// A reload found the current generation damaged and only the previous one
    /// readable. A running process never goes back to it: what it holds is at
    /// least as new (H1: otherwise damaging the file would re-enable a key that
    /// was disabled). When the previous generation is as new as what we hold, the
    /// damaged file is a change we never read (perhaps a key disabled): fail closed.
    fn keep_on_damage(&self, l: Loaded, fp: Option<Fingerprint>) -> Result<(), KmsError> {
        let cur = self.snapshot();
        let why = l.fallback.unwrap_or_default();
        if cur.broken.is_none() && cur.fallback.is_some() {
            // Opened from the previous generation already: a newer one is fine.
            if l.file_generation >= cur.file_generation {
                let snap = Snapshot::new(l.state, l.fingerprint, Some(why), l.file_generation)?;
                self.install(snap);
            }
            return Ok(());
        }
        *self.damaged.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp);
        if cur.broken.is_none() && l.file_generation < cur.file_generation {
            log::error!(
                "{} is damaged; this process keeps using generation {} it read before (newer \
                 than {PREV_FILE}, generation {}), and refuses changes until the file is \
                 repaired or restored from a backup",
                self.dir.file(CURRENT_FILE).display(),
                cur.file_generation,
                l.file_generation
            );
            return Ok(());
        }
        let msg = format!(
            "{} is damaged and holds a change this process never read (its previous generation \
             {} is as new as what this process holds); every key is refused until the file is \
             repaired or restored from a backup, since that change may have disabled a key",
            self.dir.file(CURRENT_FILE).display(),
            l.file_generation
        );
        log::error!("{msg}");
        self.install(Snapshot::broken(msg.clone(), fp));
        Err(KmsError::corrupt(msg))
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
    /// purged from both generations on the way, and any material the update
    /// removes is removed from the kept generation too. Refuses (writing nothing) when the
    /// current generation cannot be read.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut StoreState, i64) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let now = clock::now()?;
        let _lock = self.dir.lock()?;
        let refuse = |e: KmsError| match e {
            KmsError::CorruptKeystore { problem, .. } => KmsError::CorruptKeystore {
                problem,
                change_refused: true,
            },
            other => other,
        };
        let (bytes, _) = self
            .dir
            .read(CURRENT_FILE)?
            .ok_or_else(|| KmsError::CorruptKeystore {
                problem: format!("{} is missing", self.dir.file(CURRENT_FILE).display()),
                change_refused: true,
            })?;
        let frame = Frame::parse(CURRENT_FILE, &bytes).map_err(refuse)?;
        if frame.keystore_id != self.keystore_id {
            return Err(KmsError::corrupt(format!(
                "the keystore in {} was replaced by another one; nothing was written",
                self.dir.path().display()
            )));
        }
        let old = frame.unseal(CURRENT_FILE, &self.root).map_err(refuse)?;
        let old_generation = frame.generation;
        let mut state = old.clone();
        let purged = state.purge_due(now);
        let rotated = state.rotate_due(now)?;
        let expired = state.expire_due(now);
        let result = f(&mut state, now);
        if result.is_err() && purged.is_empty() && rotated.is_empty() && expired.is_empty() {
            return result;
        }
        // The kept generation must not keep material that this update
        // removes (a purge, an expiry, DeleteImportedKeyMaterial): it is what a
        // later process falls back to when the current generation is damaged.
        let mut p = old;
        let shredded = !p.purge_due(now).is_empty() | p.forget_material_gone_from(&state);
        let prev_bytes = if shredded {
            keystore::encode(&self.keystore_id, &self.root, old_generation, &p)?
        } else {
            bytes.clone()
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
        for id in &expired {
            log::info!("the imported material of key {id} expired and was deleted");
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
                return Err(KmsError::corrupt(why.clone()));
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
                            return Err(KmsError::not_found(Missing::BlobKeyDeleted {
                                key_id: h.key_id_string(),
                                deleted_on: when,
                            }));
                        }
                        (None, None) => {
                            return Err(KmsError::invalid_ciphertext(
                                "the ciphertext blob cannot be decrypted: it names a key this \
                                 keystore never had (was it modified?)"
                                    .into(),
                            ));
                        }
                    }
                }
            };
            audit_key = Some(key.key_id.clone());
            // Dates are also applied lazily every freshness interval; these checks
            // close the gap, and only keys with a date read the clock.
            if key.state == KeyState::PendingDeletion && key.deletion_due(clock::now()?) {
                if let Err(e) = self.apply_due() {
                    self.warn_once(&format!("a due key deletion could not be written: {e}"));
                }
                return Err(KmsError::not_found(Missing::Deleted {
                    key_id: key.key_id.clone(),
                }));
            }
            if key.origin == super::KeyOrigin::External && key.material_expired(clock::now()?) {
                if let Err(e) = self.apply_due() {
                    self.warn_once(&format!("an expiry could not be written: {e}"));
                }
                return Err(KmsError::InvalidState {
                    key_id: key.key_id.clone(),
                    state: KeyState::PendingImport,
                    problem: StateProblem::MaterialExpired,
                });
            }
            key.check_usable(usage)?;
            hooks::authorize(caller, &key.key_id, snap.policies.get(&key.key_id), op)?;
            let ciphers = snap
                .ciphers
                .get(&key.key_id)
                .ok_or_else(|| KmsError::internal("key schedule missing".into()))?;
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
            .ok_or_else(|| KmsError::InvalidState {
                key_id: key.key_id.clone(),
                state: key.state,
                problem: StateProblem::NoCurrentMaterial,
            })?;
        let key_uuid = uuid::Uuid::parse_str(&key.key_id)
            .map_err(|_| KmsError::internal("stored key id is not a UUID".into()))?;
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
            return Err(KmsError::invalid_ciphertext(format!(
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
                        return Err(KmsError::IncorrectKey {
                            made_under: key.key_id.clone(),
                            given: wanted.key_id.clone(),
                        });
                    }
                }
                let v = header.material_version;
                let aead = ciphers
                    .iter()
                    .find(|(ver, _)| *ver == v)
                    .map(|(_, a)| a)
                    .ok_or_else(|| {
                        KmsError::invalid_ciphertext(format!(
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

    /// Refuses a ciphertext blob not made under `key_id` (a key id, ARN or
    /// alias), before anything is decrypted: ReEncrypt's SourceKeyId.
    pub fn check_ciphertext_key(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        key_id: &str,
    ) -> Result<(), KmsError> {
        let header = BlobHeader::parse(ciphertext_blob)?;
        let wanted = self.describe_key(caller, key_id)?;
        if wanted.key_id != header.key_id_string() {
            return Err(KmsError::IncorrectKey {
                made_under: header.key_id_string(),
                given: wanted.key_id,
            });
        }
        Ok(())
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
                    .map_err(|e| KmsError::internal(format!("cannot generate a data key: {e}")))?;
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

    fn fresh_snapshot(&self) -> Result<Arc<Snapshot>, KmsError> {
        self.refresh_if_stale();
        let snap = self.snapshot();
        match &snap.broken {
            Some(why) => Err(KmsError::corrupt(why.clone())),
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
            return Err(KmsError::invalid_with(
                ValidationCode::PlaintextTooLarge,
                format!(
                    "plaintext is {} bytes, but Encrypt takes at most {MAX_ENCRYPT_PLAINTEXT}; for \
                     larger data use generate-data-key and encrypt the data with the data key \
                     (envelope encryption)",
                    plaintext.len()
                ),
            ));
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
            return Err(KmsError::not_found(Missing::Deleted {
                key_id: k.key_id.clone(),
            }));
        }
        Ok(k.metadata(&self.keystore_id_hex))
    }

    fn generation(&self) -> u64 {
        self.refresh_if_stale();
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests;
