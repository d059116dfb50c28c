//! The service's view of the keystore: immutable snapshots, loading with
//! fallback to the previous generation, freshness checks and reloads that fail
//! closed, and `update`, the one path of every change (lock, re-read, write).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::FRESHNESS_INTERVAL_MS;
use super::LocalKeyStore;
use crate::crypto::{SecretBytes, hex};
use crate::kms::audit::sign::SigningKeys;
use crate::kms::blob::MaterialKeys;
use crate::kms::model::{AuditPosition, StoreState};
use crate::kms::policy::KeyPolicy;
use crate::kms::store::{self, CURRENT_FILE, Fingerprint, Frame, KeystoreDir, PREV_FILE, RootKey};
use crate::kms::{KmsError, clock};

/// An immutable view of the keystore, swapped whole on every change.
pub(super) struct Snapshot {
    pub(super) state: StoreState,
    /// Ready AES-GCM keys: key id → (material version, key).
    pub(super) ciphers: HashMap<String, Vec<(u32, MaterialKeys)>>,
    /// Parsed key policies of the keys that have one.
    pub(super) policies: HashMap<String, KeyPolicy>,
    /// Stat of the current generation this snapshot matches.
    pub(super) fingerprint: Option<Fingerprint>,
    /// Why we run from the previous generation (read-only), if we do.
    pub(super) fallback: Option<String>,
    /// Why no state is usable at all (both generations unreadable on reload).
    pub(super) broken: Option<String>,
    /// When a deletion or an automatic rotation is next due.
    pub(super) next_due: Option<i64>,
    /// The write counter of the file this snapshot was read from.
    pub(super) file_generation: u64,
}

impl Snapshot {
    pub(super) fn new(
        state: StoreState,
        fingerprint: Option<Fingerprint>,
        fallback: Option<String>,
        file_generation: u64,
    ) -> Result<Self, KmsError> {
        let mut ciphers = HashMap::with_capacity(state.keys.len());
        for (id, k) in &state.keys {
            let mut v = Vec::with_capacity(k.materials.len());
            for m in &k.materials {
                let aead = MaterialKeys::new(m.material.expose()).map_err(|_| {
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

    pub(super) fn broken(why: String, fingerprint: Option<Fingerprint>) -> Self {
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
pub(super) struct Loaded {
    pub(super) state: StoreState,
    pub(super) file_generation: u64,
    pub(super) keystore_id: [u8; 16],
    pub(super) fingerprint: Option<Fingerprint>,
    pub(super) fallback: Option<String>,
}

/// What a reload read.
pub(super) enum Reloaded {
    /// The current generation, ready to install.
    Fresh(Snapshot),
    /// Only the previous generation: the current one is damaged.
    FellBack(Loaded),
}

/// A current generation the service found damaged and refused to fall back
/// from, so that it is not re-read (and re-reported) until it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KnownDamage {
    /// None: every change of the file is reloaded.
    Nothing,
    /// The file with this fingerprint (`None`: absent) is damaged.
    File(Option<Fingerprint>),
}

/// Reads the current generation, or the previous one (with a warning) when the
/// current is unreadable. A wrong root key or an unknown format version is
/// returned as is: the previous generation would not help.
pub(super) fn load(
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
            if store::unknown_version(bytes) {
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
            let claimed = cur.as_ref().and_then(|(b, _)| store::claimed_generation(b));
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
pub(super) fn fallback_warning(
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

pub(super) fn no_passphrase() -> Result<SecretBytes, KmsError> {
    Err(KmsError::internal(
        "the root key is already unsealed; no passphrase is needed".into(),
    ))
}

impl LocalKeyStore {
    pub(super) fn snapshot(&self) -> Arc<Snapshot> {
        match self.snap.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Swaps in a new snapshot. Callers hold `reload_lock`, so a reload that
    /// read an older file cannot land after an update's newer snapshot.
    pub(super) fn install(&self, snap: Snapshot) {
        let mut g = match self.snap.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(t) = self.trail.get() {
            t.set_keys(signing_keys(&snap.state));
            if let Some((seq, hash)) = audit_floor(&snap.state) {
                t.set_floor(seq, hash);
            }
        }
        *g = Arc::new(snap);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Rate-limited freshness check: one stat per interval while requests
    /// come one at a time. Requests that arrive while a check is running
    /// check too (one stat each; the reload itself is done once, under
    /// `reload_lock`, and waited for): none is answered from the state held
    /// before, which may be much older than the interval after an idle spell
    /// (a key disabled meanwhile was served to the second of two concurrent
    /// GenerateDataKey requests, tests/mount_datakey_pool.rs).
    pub(super) fn refresh_if_stale(&self) {
        let now = self.base.elapsed().as_nanos() as u64 + 1;
        let last = self.last_check_ns.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < FRESHNESS_INTERVAL_MS * 1_000_000 {
            return;
        }
        match self.refresh() {
            Err(e) => self.warn_once(&format!("keystore refresh failed: {e}")),
            // Healthy again: a recurrence of the same problem is worth a new warning.
            Ok(()) => *self.last_warning.lock().unwrap_or_else(|p| p.into_inner()) = None,
        }
        // Only once the check is done: a request arriving meanwhile checks too.
        self.last_check_ns.fetch_max(now, Ordering::AcqRel);
    }

    /// Logs `msg` unless it is the same as the last warning (no repeats every
    /// freshness interval while a problem persists).
    pub(super) fn warn_once(&self, msg: &str) {
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
        let known_damaged =
            *self.known_damage.lock().unwrap_or_else(|p| p.into_inner()) == KnownDamage::File(fp);
        if fp != self.snapshot().fingerprint && !known_damaged {
            self.reload()?;
        }
        self.apply_due()
    }

    pub(super) fn reload(&self) -> Result<(), KmsError> {
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
                return Ok(Reloaded::FellBack(l));
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
            Snapshot::new(l.state, l.fingerprint, l.fallback, l.file_generation)
                .map(Reloaded::Fresh)
        });
        match result {
            Ok(Reloaded::Fresh(s)) => {
                *self.known_damage.lock().unwrap_or_else(|p| p.into_inner()) = KnownDamage::Nothing;
                self.install(s);
                Ok(())
            }
            Ok(Reloaded::FellBack(l)) => self.keep_on_damage(l, fp),
            Err(e) => {
                // Fail closed: a key disabled on disk must not stay usable here.
                self.install(Snapshot::broken(e.to_string(), fp));
                Err(e)
            }
        }
    }

    /// A reload found the current generation damaged and only the previous one
    /// readable. A running process never goes back to it: what it holds is at
    /// least as new (otherwise damaging the file would re-enable a key that
    /// was disabled). When the previous generation is as new as what we hold, the
    /// damaged file is a change we never read (perhaps a key disabled): fail closed.
    pub(super) fn keep_on_damage(
        &self,
        l: Loaded,
        fp: Option<Fingerprint>,
    ) -> Result<(), KmsError> {
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
        *self.known_damage.lock().unwrap_or_else(|p| p.into_inner()) = KnownDamage::File(fp);
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
    pub(super) fn apply_due(&self) -> Result<(), KmsError> {
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
    pub(super) fn update<T>(
        &self,
        f: impl FnOnce(&mut StoreState, i64) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let now = clock::now()?;
        let _lock = self.dir.lock()?;
        let (bytes, old, old_generation) = self.read_current_for_update()?;
        let mut state = old.clone();
        let purged = state.purge_due(now);
        let rotated = state.rotate_due(now)?;
        let expired = state.expire_due(now);
        let result = f(&mut state, now);
        if result.is_err() && purged.is_empty() && rotated.is_empty() && expired.is_empty() {
            return result;
        }
        ensure_audit_signing_key(&mut state)?;
        if state.account_id.is_none() {
            // A keystore made before account ids keeps the one it was
            // named by (derived from its id) from now on.
            state.account_id = Some(self.account_id().to_string());
        }
        self.record_trail_position(&mut state)?;
        // The kept generation must not keep material that this update
        // removes (a purge, an expiry, DeleteImportedKeyMaterial): it is what a
        // later process falls back to when the current generation is damaged.
        let mut p = old;
        let shredded = !p.purge_due(now).is_empty() | p.forget_material_gone_from(&state);
        let prev_bytes = if shredded {
            store::encode(&self.keystore_id, &self.root, old_generation, &p)?
        } else {
            bytes.clone()
        };
        let new_bytes = store::encode(&self.keystore_id, &self.root, old_generation + 1, &state)?;
        self.dir.remove_stale_temporaries();
        let fp = self.dir.write_generations(Some(&prev_bytes), &new_bytes)?;
        log_dates_reached(&purged, &rotated, &expired);
        let snap = Snapshot::new(state, Some(fp), None, old_generation + 1)?;
        {
            let _reloads = match self.reload_lock.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            self.install(snap);
        }
        use crate::kms::audit::Operation as O;
        for (op, ids) in [
            (O::DeleteKey, &purged),
            (O::RotateKey, &rotated),
            (O::DeleteExpiredKeyMaterial, &expired),
        ] {
            for id in ids {
                self.record_date_reached(op, id);
            }
        }
        result
    }

    /// Seals the trail (what is queued, then a signed digest, durably) and
    /// records where it ends in `state`, so that a trail deleted or cut
    /// later falls short of what the keystore says. Refuses the change
    /// when the trail cannot be written.
    fn record_trail_position(&self, state: &mut StoreState) -> Result<(), KmsError> {
        let Some(t) = self.trail.get() else {
            return Ok(());
        };
        let at = t.seal_position().map_err(|e| KmsError::AuditTrail {
            problem: format!("{e}; nothing was changed"),
        })?;
        if let Some((sequence, hash)) = at {
            state.audit_position = Some(AuditPosition {
                sequence,
                digest: hex(&hash),
            });
            t.set_floor(sequence, hash);
        }
        Ok(())
    }

    /// Reads the current generation for an update (under the exclusive
    /// lock): its bytes, its state and its generation number; damage refuses
    /// the change.
    fn read_current_for_update(&self) -> Result<(Vec<u8>, StoreState, u64), KmsError> {
        let (bytes, _) = self
            .dir
            .read(CURRENT_FILE)?
            .ok_or_else(|| KmsError::CorruptKeystore {
                problem: format!("{} is missing", self.dir.file(CURRENT_FILE).display()),
                change_refused: true,
            })?;
        let frame = Frame::parse(CURRENT_FILE, &bytes).map_err(refuse_change)?;
        if frame.keystore_id != self.keystore_id {
            return Err(KmsError::corrupt(format!(
                "the keystore in {} was replaced by another one; nothing was written",
                self.dir.path().display()
            )));
        }
        let old = frame
            .unseal(CURRENT_FILE, &self.root)
            .map_err(refuse_change)?;
        let old_generation = frame.generation;
        Ok((bytes, old, old_generation))
    }

    pub(super) fn fresh_snapshot(&self) -> Result<Arc<Snapshot>, KmsError> {
        self.refresh_if_stale();
        let snap = self.snapshot();
        match &snap.broken {
            Some(why) => Err(KmsError::corrupt(why.clone())),
            None => Ok(snap),
        }
    }
}

/// A damaged keystore found while updating: the change is refused.
fn refuse_change(e: KmsError) -> KmsError {
    match e {
        KmsError::CorruptKeystore { problem, .. } => KmsError::CorruptKeystore {
            problem,
            change_refused: true,
        },
        other => other,
    }
}

/// Gives a keystore older than the audit trail its signing key with its
/// first change.
fn ensure_audit_signing_key(state: &mut StoreState) -> Result<(), KmsError> {
    let new = || {
        crate::crypto::random_array::<32>()
            .map(|k| SecretBytes::new(k.to_vec()))
            .map_err(|e| KmsError::internal(format!("cannot make the audit key: {e}")))
    };
    if state.audit_signing_key.is_none() {
        state.audit_signing_key = Some(new()?);
    }
    if state.audit_ed25519_seed.is_none() {
        state.audit_ed25519_seed = Some(new()?);
    }
    Ok(())
}

/// The trail's signing keys as the keystore holds them.
pub(super) fn signing_keys(state: &StoreState) -> SigningKeys {
    SigningKeys::new(
        state.audit_signing_key.as_ref(),
        state.audit_ed25519_seed.as_ref(),
    )
}

/// The trail position the keystore recorded (sequence, line hash).
pub(super) fn audit_floor(state: &StoreState) -> Option<(u64, [u8; 32])> {
    let p = state.audit_position.as_ref()?;
    let h = crate::kms::audit::trail::hex_to_bytes(&p.digest)?;
    Some((p.sequence, h.try_into().ok()?))
}

/// Logs the keys whose dates were reached in an update.
fn log_dates_reached(purged: &[String], rotated: &[String], expired: &[String]) {
    for id in purged {
        log::info!("key {id} reached its deletion date and was deleted for good");
    }
    for id in rotated {
        log::info!("key {id} was rotated automatically");
    }
    for id in expired {
        log::info!("the imported material of key {id} expired and was deleted");
    }
}
