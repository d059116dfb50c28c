//! The key model as it is persisted inside the sealed keystore body: keys, their
//! key materials (one per version, for rotation), aliases, and the pure state
//! transitions (enable, disable, schedule/cancel deletion, purge). No I/O, no clock:
//! callers pass `now`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    Existing, KeyMetadata, KeyOrigin, KeyState, KmsError, Missing, StateProblem, ValidationCode,
};
use crate::crypto::SecretBytes;

/// Shortest deletion waiting period, in days (as AWS KMS).
pub const MIN_PENDING_WINDOW_DAYS: u32 = 7;
/// Longest deletion waiting period, in days; also the default.
pub const MAX_PENDING_WINDOW_DAYS: u32 = 30;
/// Longest alias name, in bytes.
pub const MAX_ALIAS_LEN: usize = 256;
/// Every alias name starts with this.
pub const ALIAS_PREFIX: &str = "alias/";
/// Alias prefixes that users may not create: AWS's own and kmsfs's own.
pub const RESERVED_ALIAS_PREFIXES: [&str; 2] = ["alias/aws/", "alias/kmsfs/"];
/// The alias of the key that `open_or_create_default` makes (like `aws/ebs`).
pub const DEFAULT_ALIAS: &str = "alias/kmsfs/default";
/// Shortest automatic rotation period, in days (as AWS KMS).
pub const MIN_ROTATION_PERIOD_DAYS: u32 = 90;
/// Longest automatic rotation period, in days (as AWS KMS).
pub const MAX_ROTATION_PERIOD_DAYS: u32 = 2560;
/// Default automatic rotation period, in days.
pub const DEFAULT_ROTATION_PERIOD_DAYS: u32 = 365;
/// How long import parameters (wrapping key and token) stay valid: 24 hours.
pub const IMPORT_PARAMETERS_VALIDITY_SECS: i64 = 24 * 3600;
/// Longest key description, in bytes (AWS: 8192 characters).
pub const MAX_DESCRIPTION_LEN: usize = 8192;

/// One version of a key's material. Rotation (later) appends versions; blobs name
/// the version they were made with, so old versions stay to decrypt old blobs.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyMaterial {
    /// 1 for the material a key was created with, then 2, 3, ...
    pub version: u32,
    /// The 32 secret bytes (hex inside the sealed body; zeroized on drop).
    #[serde(with = "secret_hex")]
    pub material: SecretBytes,
    /// When this material was generated or imported (epoch seconds).
    pub created: i64,
    /// For imported material: when it expires (epoch seconds; ValidTo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// How this version came to be: None for the first, else a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationType>,
}

/// The wrapping key and token handed out by GetParametersForImport.
#[derive(Clone, Serialize, Deserialize)]
pub struct ImportParams {
    /// Random id that the import token carries (hex).
    pub token_id: String,
    /// The RSA private key, PKCS#8 DER (hex inside the sealed body).
    #[serde(with = "secret_hex")]
    pub wrapping_key: SecretBytes,
    /// RSA_2048, RSA_3072 or RSA_4096.
    pub wrapping_key_spec: String,
    /// When these parameters stop being accepted (epoch seconds).
    pub valid_to: i64,
}

impl std::fmt::Debug for ImportParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportParams")
            .field("token_id", &self.token_id)
            .field("wrapping_key", &"<redacted>")
            .field("wrapping_key_spec", &self.wrapping_key_spec)
            .field("valid_to", &self.valid_to)
            .finish()
    }
}

/// Why a key material version was added (ListKeyRotations' RotationType).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationType {
    /// RotateKeyOnDemand.
    #[serde(rename = "ON_DEMAND")]
    OnDemand,
    /// The automatic rotation period elapsed.
    #[serde(rename = "AUTOMATIC")]
    Automatic,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("version", &self.version)
            .field("material", &"<redacted>")
            .field("created", &self.created)
            .field("expires", &self.expires)
            .finish()
    }
}

/// A customer master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    /// UUID, lowercase, hyphenated.
    pub key_id: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Epoch seconds.
    pub creation_date: i64,
    /// Current state.
    pub state: KeyState,
    /// Set while PendingDeletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<i64>,
    /// Set while PendingDeletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_window_days: Option<u32>,
    /// AWS_KMS or EXTERNAL.
    pub origin: KeyOrigin,
    /// Version of material that new ciphertexts use (0 = none yet, PendingImport).
    pub current_version: u32,
    /// All material versions still held.
    pub materials: Vec<KeyMaterial>,
    /// Key policy document (reserved for the policy feature; None = default policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// Pending import parameters (EXTERNAL keys between GetParametersForImport
    /// and ImportKeyMaterial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportParams>,
    /// For EXTERNAL keys once material was imported: a digest identifying that
    /// material, so that a re-import must bring the same material (as AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_material_digest: Option<String>,
    /// Automatic rotation period in days; None when automatic rotation is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_days: Option<u32>,
    /// When automatic rotation is next due (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<i64>,
}

/// Everything the sealed keystore body holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreState {
    /// Keys by key id.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Alias name (`alias/...`) to key id.
    pub aliases: BTreeMap<String, String>,
    /// Tombstones: key id → when it was deleted. No material, only so that a
    /// blob under a deleted key is told apart from a blob with a forged key id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deleted: BTreeMap<String, i64>,
}

/// What an operation needs the key's state to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Encrypt, GenerateDataKey*, ReEncrypt (destination).
    Encrypt,
    /// Decrypt, ReEncrypt (source).
    Decrypt,
}

impl KeyRecord {
    /// A new key with fresh material, state Enabled.
    pub fn generate(description: &str, now: i64) -> Result<Self, KmsError> {
        validate_description(description)?;
        let material = SecretBytes::random(crate::crypto::KEY_LEN)
            .map_err(|e| KmsError::internal(format!("cannot generate key material: {e}")))?;
        Ok(Self {
            key_id: uuid::Uuid::new_v4().to_string(),
            description: description.to_string(),
            creation_date: now,
            state: KeyState::Enabled,
            deletion_date: None,
            pending_window_days: None,
            origin: KeyOrigin::Kms,
            current_version: 1,
            materials: vec![KeyMaterial {
                version: 1,
                material,
                created: now,
                expires: None,
                rotation: None,
            }],
            policy: None,
            import: None,
            imported_material_digest: None,
            rotation_period_days: None,
            next_rotation: None,
        })
    }

    /// A new key with origin EXTERNAL: no material, state PendingImport.
    pub fn new_external(description: &str, now: i64) -> Result<Self, KmsError> {
        let mut k = Self::generate(description, now)?;
        k.origin = KeyOrigin::External;
        k.state = KeyState::PendingImport;
        k.current_version = 0;
        k.materials.clear();
        Ok(k)
    }

    fn require_external(&self, op: &str) -> Result<(), KmsError> {
        if self.origin != KeyOrigin::External {
            return Err(KmsError::invalid_with(
                ValidationCode::UnsupportedOperation,
                format!(
                    "{op} needs a key created with --origin EXTERNAL; key {} \
                 has origin AWS_KMS",
                    self.key_id
                ),
            ));
        }
        Ok(())
    }

    /// GetParametersForImport: records a wrapping key and token (valid 24 h).
    pub fn set_import_params(&mut self, params: ImportParams) -> Result<(), KmsError> {
        self.require_external("GetParametersForImport")?;
        if self.state != KeyState::PendingImport {
            return Err(self.wrong_state("GetParametersForImport", self.state));
        }
        self.import = Some(params);
        Ok(())
    }

    /// ImportKeyMaterial: installs unwrapped material as version 1 and makes
    /// the key Enabled. `token_id` must be the one the parameters carry, they
    /// must not have expired, and a re-import must bring the same material.
    pub fn import_material(
        &mut self,
        token_id: &str,
        material: SecretBytes,
        expires: Option<i64>,
        now: i64,
    ) -> Result<(), KmsError> {
        self.require_external("ImportKeyMaterial")?;
        if self.state != KeyState::PendingImport {
            return Err(self.wrong_state("ImportKeyMaterial", self.state));
        }
        let params = self.import.as_ref().ok_or_else(|| {
            KmsError::invalid_with(
                ValidationCode::InvalidImportToken,
                format!(
                    "key {} has no import parameters; run \
                 get-parameters-for-import first",
                    self.key_id
                ),
            )
        })?;
        if params.token_id != token_id {
            return Err(KmsError::invalid_with(
                ValidationCode::InvalidImportToken,
                "the import token is not the latest one issued for this key; \
                 use the token from the last get-parameters-for-import"
                    .into(),
            ));
        }
        if params.valid_to < now {
            return Err(KmsError::invalid_with(
                ValidationCode::ExpiredImportToken,
                "the import parameters have expired; run \
                 get-parameters-for-import again"
                    .into(),
            ));
        }
        if material.len() != crate::crypto::KEY_LEN {
            return Err(KmsError::invalid_with(
                ValidationCode::IncorrectKeyMaterial,
                format!(
                    "imported key material must be 32 bytes, got {}",
                    material.len()
                ),
            ));
        }
        if let Some(t) = expires
            && t <= now
        {
            return Err(KmsError::invalid("ValidTo must be in the future".into()));
        }
        let digest = material_digest(&self.key_id, &material);
        if let Some(d) = &self.imported_material_digest
            && !crate::crypto::constant_time_eq(d.as_bytes(), digest.as_bytes())
        {
            return Err(KmsError::invalid_with(
                ValidationCode::IncorrectKeyMaterial,
                format!(
                    "key {} had other key material before; a key can only \
                 ever hold the material first imported into it",
                    self.key_id
                ),
            ));
        }
        self.materials = vec![KeyMaterial {
            version: 1,
            material,
            created: now,
            expires,
            rotation: None,
        }];
        self.current_version = 1;
        self.state = KeyState::Enabled;
        self.import = None;
        self.imported_material_digest = Some(digest);
        Ok(())
    }

    /// DeleteImportedKeyMaterial: the material goes, the key waits for a
    /// re-import of the same material (PendingImport).
    pub fn delete_imported_material(&mut self) -> Result<(), KmsError> {
        self.require_external("DeleteImportedKeyMaterial")?;
        if self.state == KeyState::PendingDeletion {
            return Err(self.wrong_state("DeleteImportedKeyMaterial", self.state));
        }
        self.drop_material();
        Ok(())
    }

    fn drop_material(&mut self) {
        self.materials.clear();
        self.current_version = 0;
        self.state = KeyState::PendingImport;
    }

    /// True when imported material has reached its ValidTo.
    pub fn material_expired(&self, now: i64) -> bool {
        self.origin == KeyOrigin::External
            && self.state != KeyState::PendingDeletion
            && self
                .materials
                .iter()
                .any(|m| m.expires.is_some_and(|t| t <= now))
    }

    /// The public view of this key.
    pub fn metadata(&self, keystore_id: &str) -> KeyMetadata {
        KeyMetadata {
            key_id: self.key_id.clone(),
            arn: key_arn(keystore_id, &self.key_id),
            description: self.description.clone(),
            creation_date: self.creation_date,
            key_state: self.state,
            enabled: self.state == KeyState::Enabled,
            deletion_date: self.deletion_date,
            pending_deletion_window_in_days: self.pending_window_days,
            origin: self.origin,
            key_usage: "ENCRYPT_DECRYPT",
            key_spec: "SYMMETRIC_DEFAULT",
            current_key_material_version: self.current_version,
            expiration_model: match (self.origin, self.materials.first()) {
                (KeyOrigin::External, Some(m)) if m.expires.is_some() => {
                    Some("KEY_MATERIAL_EXPIRES")
                }
                (KeyOrigin::External, Some(_)) => Some("KEY_MATERIAL_DOES_NOT_EXPIRE"),
                _ => None,
            },
            valid_to: self.materials.first().and_then(|m| m.expires),
        }
    }

    /// Refuses a cryptographic operation the key's state does not allow, with
    /// the error AWS KMS gives for that state.
    pub fn check_usable(&self, _usage: Usage) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::Disabled {
                key_id: self.key_id.clone(),
            }),
            KeyState::PendingDeletion => Err(self.invalid_state(StateProblem::PendingDeletion {
                deletion_date: self.deletion_date,
            })),
            KeyState::PendingImport => Err(self.invalid_state(StateProblem::NoMaterialYet)),
        }
    }

    /// EnableKey: Disabled (or Enabled) becomes Enabled.
    pub fn enable(&mut self) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                self.state = KeyState::Enabled;
                Ok(())
            }
            s => Err(self.wrong_state("EnableKey", s)),
        }
    }

    /// DisableKey: Enabled (or Disabled) becomes Disabled.
    pub fn disable(&mut self) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                self.state = KeyState::Disabled;
                Ok(())
            }
            s => Err(self.wrong_state("DisableKey", s)),
        }
    }

    /// ScheduleKeyDeletion: any state but PendingDeletion becomes
    /// PendingDeletion, due `days` (7 to 30) after `now`.
    pub fn schedule_deletion(&mut self, days: u32, now: i64) -> Result<i64, KmsError> {
        if !(MIN_PENDING_WINDOW_DAYS..=MAX_PENDING_WINDOW_DAYS).contains(&days) {
            return Err(KmsError::invalid(format!(
                "PendingWindowInDays must be between {MIN_PENDING_WINDOW_DAYS} and \
                 {MAX_PENDING_WINDOW_DAYS}, got {days}"
            )));
        }
        if self.state == KeyState::PendingDeletion {
            return Err(self.wrong_state("ScheduleKeyDeletion", self.state));
        }
        let date = now + i64::from(days) * 86_400;
        self.state = KeyState::PendingDeletion;
        self.deletion_date = Some(date);
        self.pending_window_days = Some(days);
        Ok(date)
    }

    /// CancelKeyDeletion: PendingDeletion becomes Disabled (as in AWS KMS).
    pub fn cancel_deletion(&mut self) -> Result<(), KmsError> {
        if self.state != KeyState::PendingDeletion {
            return Err(self.wrong_state("CancelKeyDeletion", self.state));
        }
        self.state = if self.current_version == 0 {
            KeyState::PendingImport
        } else {
            KeyState::Disabled
        };
        self.deletion_date = None;
        self.pending_window_days = None;
        Ok(())
    }

    /// True when the key is pending deletion and its date has come.
    pub fn deletion_due(&self, now: i64) -> bool {
        self.state == KeyState::PendingDeletion && self.deletion_date.is_some_and(|d| d <= now)
    }

    /// Adds a new version of fresh material and makes it current. Old versions
    /// stay, so ciphertexts made with them still decrypt.
    pub fn rotate(&mut self, kind: RotationType, now: i64) -> Result<u32, KmsError> {
        self.check_usable(Usage::Encrypt)?;
        if self.origin == KeyOrigin::External {
            return Err(KmsError::invalid_with(
                ValidationCode::UnsupportedOperation,
                format!(
                    "key {} holds imported material, which kmsfs cannot rotate; \
                 create a new EXTERNAL key and import new material into it",
                    self.key_id
                ),
            ));
        }
        let version = self
            .materials
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| KmsError::internal("key material version overflow".into()))?;
        let material = SecretBytes::random(crate::crypto::KEY_LEN)
            .map_err(|e| KmsError::internal(format!("cannot generate key material: {e}")))?;
        self.materials.push(KeyMaterial {
            version,
            material,
            created: now,
            expires: None,
            rotation: Some(kind),
        });
        self.current_version = version;
        if let Some(days) = self.rotation_period_days {
            self.next_rotation = Some(now + i64::from(days) * 86_400);
        }
        Ok(version)
    }

    /// EnableKeyRotation: rotate automatically every `days` (90 to 2560).
    pub fn enable_rotation(&mut self, days: u32, now: i64) -> Result<(), KmsError> {
        if !(MIN_ROTATION_PERIOD_DAYS..=MAX_ROTATION_PERIOD_DAYS).contains(&days) {
            return Err(KmsError::invalid(format!(
                "RotationPeriodInDays must be between {MIN_ROTATION_PERIOD_DAYS} and \
                 {MAX_ROTATION_PERIOD_DAYS}, got {days}"
            )));
        }
        self.check_usable(Usage::Encrypt)?;
        if self.origin == KeyOrigin::External {
            return Err(KmsError::invalid_with(
                ValidationCode::UnsupportedOperation,
                format!(
                    "key {} holds imported material, which cannot rotate \
                 automatically",
                    self.key_id
                ),
            ));
        }
        self.rotation_period_days = Some(days);
        self.next_rotation = Some(now + i64::from(days) * 86_400);
        Ok(())
    }

    /// DisableKeyRotation.
    pub fn disable_rotation(&mut self) -> Result<(), KmsError> {
        self.check_usable(Usage::Encrypt)?;
        self.rotation_period_days = None;
        self.next_rotation = None;
        Ok(())
    }

    /// True when automatic rotation is on, due, and the key is Enabled
    /// (a disabled key rotates once it is enabled again).
    pub fn rotation_due(&self, now: i64) -> bool {
        self.state == KeyState::Enabled && self.next_rotation.is_some_and(|d| d <= now)
    }

    /// The material of `version`, if held.
    pub fn material(&self, version: u32) -> Option<&KeyMaterial> {
        self.materials.iter().find(|m| m.version == version)
    }

    fn wrong_state(&self, operation: &'static str, state: KeyState) -> KmsError {
        KmsError::InvalidState {
            key_id: self.key_id.clone(),
            state,
            problem: StateProblem::NotAllowed { operation },
        }
    }

    fn invalid_state(&self, problem: StateProblem) -> KmsError {
        KmsError::InvalidState {
            key_id: self.key_id.clone(),
            state: self.state,
            problem,
        }
    }
}

impl StoreState {
    /// Deletes for good every key whose deletion date has passed, with its
    /// material and its aliases. Returns the ids deleted.
    pub fn purge_due(&mut self, now: i64) -> Vec<String> {
        let due: Vec<String> = self
            .keys
            .values()
            .filter(|k| k.deletion_due(now))
            .map(|k| k.key_id.clone())
            .collect();
        for id in &due {
            if let Some(k) = self.keys.remove(id) {
                self.deleted
                    .insert(id.clone(), k.deletion_date.unwrap_or(now));
            }
        }
        self.aliases.retain(|_, target| !due.contains(target));
        due
    }

    /// Removes from this state (an older generation, kept for recovery) every
    /// key material that `newer` no longer holds: material deleted, expired
    /// or purged in between must not come back when the newer generation is
    /// damaged and this one is used instead. A key left without material
    /// becomes PendingImport, as DeleteImportedKeyMaterial leaves it; a key
    /// that `newer` no longer has goes with its aliases. Returns true when
    /// anything was removed.
    pub fn forget_material_gone_from(&mut self, newer: &StoreState) -> bool {
        let gone: Vec<String> = self
            .keys
            .keys()
            .filter(|id| !newer.keys.contains_key(*id))
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for id in &gone {
            self.keys.remove(id);
            if let Some(when) = newer.deleted.get(id) {
                self.deleted.insert(id.clone(), *when);
            }
        }
        self.aliases.retain(|_, target| !gone.contains(target));
        for k in self.keys.values_mut() {
            let Some(n) = newer.keys.get(&k.key_id) else {
                continue;
            };
            let before = k.materials.len();
            k.materials.retain(|m| {
                n.material(m.version).is_some_and(|nm| {
                    crate::crypto::constant_time_eq(nm.material.expose(), m.material.expose())
                })
            });
            if k.materials.len() == before {
                continue;
            }
            changed = true;
            if k.materials.is_empty() {
                k.drop_material();
            } else if k.material(k.current_version).is_none() {
                k.current_version = k.materials.iter().map(|m| m.version).max().unwrap_or(0);
            }
        }
        changed
    }

    /// The earliest deletion date of any key pending deletion.
    pub fn next_deletion(&self) -> Option<i64> {
        self.keys
            .values()
            .filter(|k| k.state == KeyState::PendingDeletion)
            .filter_map(|k| k.deletion_date)
            .min()
    }

    /// The earliest time at which something is due: a deletion or an
    /// automatic rotation of an Enabled key.
    pub fn next_due(&self) -> Option<i64> {
        let rotation = self
            .keys
            .values()
            .filter(|k| k.state == KeyState::Enabled)
            .filter_map(|k| k.next_rotation)
            .min();
        let expiry = self
            .keys
            .values()
            .filter(|k| k.origin == KeyOrigin::External && k.state != KeyState::PendingDeletion)
            .flat_map(|k| k.materials.iter().filter_map(|m| m.expires))
            .min();
        [self.next_deletion(), rotation, expiry]
            .into_iter()
            .flatten()
            .min()
    }

    /// Deletes imported material that reached its ValidTo (the key becomes
    /// PendingImport). Returns the ids.
    pub fn expire_due(&mut self, now: i64) -> Vec<String> {
        let mut done = Vec::new();
        for k in self.keys.values_mut().filter(|k| k.material_expired(now)) {
            k.drop_material();
            done.push(k.key_id.clone());
        }
        done
    }

    /// Rotates every Enabled key whose automatic rotation is due. Returns the ids.
    pub fn rotate_due(&mut self, now: i64) -> Result<Vec<String>, KmsError> {
        let mut done = Vec::new();
        for k in self.keys.values_mut().filter(|k| k.rotation_due(now)) {
            k.rotate(RotationType::Automatic, now)?;
            done.push(k.key_id.clone());
        }
        Ok(done)
    }

    /// CreateAlias (`internal` allows the reserved prefixes).
    pub fn create_alias(
        &mut self,
        name: &str,
        key_id: &str,
        internal: bool,
    ) -> Result<(), KmsError> {
        validate_alias_name(name, internal)?;
        self.check_alias_target(key_id)?;
        if self.aliases.contains_key(name) {
            return Err(KmsError::AlreadyExists {
                what: Existing::Alias {
                    name: name.to_string(),
                },
            });
        }
        self.aliases.insert(name.to_string(), key_id.to_string());
        Ok(())
    }

    /// UpdateAlias: points an existing alias at another key.
    pub fn update_alias(&mut self, name: &str, key_id: &str) -> Result<(), KmsError> {
        validate_alias_name(name, false)?;
        self.check_alias_target(key_id)?;
        match self.aliases.get_mut(name) {
            Some(t) => {
                *t = key_id.to_string();
                Ok(())
            }
            None => Err(no_alias(name)),
        }
    }

    /// DeleteAlias.
    pub fn delete_alias(&mut self, name: &str) -> Result<(), KmsError> {
        validate_alias_name(name, false)?;
        match self.aliases.remove(name) {
            Some(_) => Ok(()),
            None => Err(no_alias(name)),
        }
    }

    fn check_alias_target(&self, key_id: &str) -> Result<(), KmsError> {
        match self.keys.get(key_id) {
            None => Err(KmsError::not_found(Missing::Key {
                key_id: key_id.to_string(),
            })),
            Some(k) if k.state == KeyState::PendingDeletion => {
                Err(k.invalid_state(StateProblem::AliasToPendingDeletion))
            }
            Some(_) => Ok(()),
        }
    }

    /// Serializes to JSON into a buffer that is zeroized on drop. The size is
    /// measured first so the buffer never reallocates (no stray copies of
    /// key material in freed memory).
    pub fn to_sealed_json(&self) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let mut counter = CountingWriter(0);
        serde_json::to_writer(&mut counter, self)
            .map_err(|e| KmsError::internal(format!("cannot serialize keystore: {e}")))?;
        let mut buf = Zeroizing::new(Vec::with_capacity(counter.0));
        serde_json::to_writer(&mut *buf, self)
            .map_err(|e| KmsError::internal(format!("cannot serialize keystore: {e}")))?;
        Ok(buf)
    }

    /// Parses the JSON body (already authenticated by the AEAD).
    pub fn from_json(bytes: &[u8]) -> Result<Self, KmsError> {
        let state: StoreState = serde_json::from_slice(bytes)
            .map_err(|e| KmsError::corrupt(format!("keystore body does not parse: {e}")))?;
        for (id, k) in &state.keys {
            if *id != k.key_id
                || k.materials
                    .iter()
                    .any(|m| m.material.len() != crate::crypto::KEY_LEN)
            {
                return Err(KmsError::corrupt(format!(
                    "keystore body is inconsistent for key {id}"
                )));
            }
        }
        Ok(state)
    }
}

struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Identifies imported material without revealing it: SHA-256 over a label,
/// the key id and the material (hex).
fn material_digest(key_id: &str, material: &SecretBytes) -> String {
    crate::crypto::hex(&crate::crypto::sha256(&[
        b"kmsfs imported material v1\0",
        key_id.as_bytes(),
        material.expose(),
    ]))
}

/// `arn:kmsfs:kms:local:<keystore id>:`, what every ARN of a keystore starts with.
pub fn arn_prefix(keystore_id: &str) -> String {
    format!("arn:kmsfs:kms:local:{keystore_id}:")
}

/// `arn:kmsfs:kms:local:<keystore id>:key/<key id>`.
pub fn key_arn(keystore_id: &str, key_id: &str) -> String {
    format!("{}key/{key_id}", arn_prefix(keystore_id))
}

/// `arn:kmsfs:kms:local:<keystore id>:alias/<name>`.
pub fn alias_arn(keystore_id: &str, alias: &str) -> String {
    format!("{}{alias}", arn_prefix(keystore_id))
}

/// Checks an alias name: `alias/` then 1+ of `[a-zA-Z0-9:/_-]`, at most 256
/// bytes; the reserved prefixes only when `internal`.
pub fn validate_alias_name(name: &str, internal: bool) -> Result<(), KmsError> {
    let rest = name.strip_prefix(ALIAS_PREFIX).unwrap_or("");
    if rest.is_empty()
        || name.len() > MAX_ALIAS_LEN
        || !rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'/' | b'_' | b'-'))
    {
        return Err(KmsError::invalid(format!(
            "alias name {name:?} is invalid: it must be alias/ followed by letters, digits, \
             ':', '/', '_' or '-', at most {MAX_ALIAS_LEN} characters in all"
        )));
    }
    if !internal && RESERVED_ALIAS_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(KmsError::invalid(format!(
            "alias name {name:?} is reserved (alias/aws/ and alias/kmsfs/ belong to the service); \
             choose another name"
        )));
    }
    Ok(())
}

fn validate_description(d: &str) -> Result<(), KmsError> {
    if d.len() > MAX_DESCRIPTION_LEN {
        return Err(KmsError::invalid(format!(
            "description is {} bytes; at most {MAX_DESCRIPTION_LEN} are allowed",
            d.len()
        )));
    }
    Ok(())
}

/// Serde helper: secret bytes as a hex string, decoded straight into a
/// zeroizing buffer of the right size.
mod secret_hex {
    use serde::{Deserializer, Serializer, de};
    use zeroize::Zeroizing;

    use crate::crypto::SecretBytes;

    const HEX: &[u8; 16] = b"0123456789abcdef";

    pub fn serialize<S: Serializer>(s: &SecretBytes, ser: S) -> Result<S::Ok, S::Error> {
        let mut out = Zeroizing::new(String::with_capacity(s.len() * 2));
        for b in s.expose() {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
        ser.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretBytes, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = SecretBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a hex string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretBytes, E> {
                let b = v.as_bytes();
                if !b.len().is_multiple_of(2) {
                    return Err(E::custom("odd-length hex"));
                }
                let mut out = Zeroizing::new(Vec::with_capacity(b.len() / 2));
                for pair in b.chunks_exact(2) {
                    let hi = nibble(pair[0]).ok_or_else(|| E::custom("bad hex"))?;
                    let lo = nibble(pair[1]).ok_or_else(|| E::custom("bad hex"))?;
                    out.push(hi << 4 | lo);
                }
                Ok(SecretBytes::new(std::mem::take(&mut *out)))
            }
        }
        d.deserialize_str(V)
    }

    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
}

fn no_alias(name: &str) -> KmsError {
    KmsError::not_found(Missing::Alias {
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key() -> KeyRecord {
        KeyRecord::generate("test", NOW).unwrap()
    }

    #[test]
    fn new_key_is_enabled_with_version_1() {
        let k = key();
        assert_eq!(k.state, KeyState::Enabled);
        assert_eq!(k.current_version, 1);
        assert_eq!(k.material(1).unwrap().material.len(), 32);
        assert!(uuid::Uuid::parse_str(&k.key_id).is_ok());
        assert!(k.check_usable(Usage::Encrypt).is_ok());
        assert!(k.metadata("ks").enabled);
    }

    #[test]
    fn disable_refuses_and_enable_restores() {
        let mut k = key();
        k.disable().unwrap();
        assert_eq!(k.state, KeyState::Disabled);
        assert!(matches!(
            k.check_usable(Usage::Encrypt),
            Err(KmsError::Disabled { .. })
        ));
        assert!(matches!(
            k.check_usable(Usage::Decrypt),
            Err(KmsError::Disabled { .. })
        ));
        assert!(!k.metadata("ks").enabled);
        k.disable().unwrap(); // idempotent, as in AWS
        k.enable().unwrap();
        assert!(k.check_usable(Usage::Decrypt).is_ok());
        k.enable().unwrap();
    }

    #[test]
    fn deletion_window_bounds() {
        for bad in [0, 6, 31, 365] {
            let mut k = key();
            assert!(
                matches!(
                    k.schedule_deletion(bad, NOW),
                    Err(KmsError::Validation { .. })
                ),
                "{bad}"
            );
            assert_eq!(k.state, KeyState::Enabled);
        }
        for good in [7, 30] {
            let mut k = key();
            let d = k.schedule_deletion(good, NOW).unwrap();
            assert_eq!(d, NOW + i64::from(good) * 86_400);
            assert_eq!(k.state, KeyState::PendingDeletion);
            assert_eq!(k.metadata("ks").deletion_date, Some(d));
            assert_eq!(k.metadata("ks").pending_deletion_window_in_days, Some(good));
        }
    }

    #[test]
    fn pending_deletion_refuses_everything_but_cancel() {
        let mut k = key();
        k.schedule_deletion(7, NOW).unwrap();
        assert!(matches!(
            k.check_usable(Usage::Encrypt),
            Err(KmsError::InvalidState { .. })
        ));
        assert!(matches!(
            k.check_usable(Usage::Decrypt),
            Err(KmsError::InvalidState { .. })
        ));
        assert!(matches!(k.enable(), Err(KmsError::InvalidState { .. })));
        assert!(matches!(k.disable(), Err(KmsError::InvalidState { .. })));
        assert!(matches!(
            k.schedule_deletion(7, NOW),
            Err(KmsError::InvalidState { .. })
        ));
        k.cancel_deletion().unwrap();
        assert_eq!(k.state, KeyState::Disabled);
        assert_eq!(k.deletion_date, None);
        assert!(matches!(
            k.cancel_deletion(),
            Err(KmsError::InvalidState { .. })
        ));
        // A disabled key can be scheduled too.
        k.schedule_deletion(30, NOW).unwrap();
    }

    #[test]
    fn pending_import_refuses_crypto() {
        let mut k = key();
        k.state = KeyState::PendingImport;
        k.current_version = 0;
        k.materials.clear();
        assert!(matches!(
            k.check_usable(Usage::Encrypt),
            Err(KmsError::InvalidState { .. })
        ));
        assert!(matches!(k.enable(), Err(KmsError::InvalidState { .. })));
        k.schedule_deletion(7, NOW).unwrap();
        k.cancel_deletion().unwrap();
        assert_eq!(k.state, KeyState::PendingImport);
    }

    #[test]
    fn rotation_adds_versions_and_keeps_old_ones() {
        let mut k = key();
        let m1 = k.material(1).unwrap().material.clone();
        assert_eq!(k.rotate(RotationType::OnDemand, NOW).unwrap(), 2);
        assert_eq!(k.current_version, 2);
        assert_eq!(k.material(1).unwrap().material, m1);
        assert_ne!(k.material(2).unwrap().material, m1);
        assert_eq!(
            k.material(2).unwrap().rotation,
            Some(RotationType::OnDemand)
        );
        assert_eq!(k.next_rotation, None);
        k.disable().unwrap();
        assert!(matches!(
            k.rotate(RotationType::OnDemand, NOW),
            Err(KmsError::Disabled { .. })
        ));
        assert!(matches!(
            k.enable_rotation(365, NOW),
            Err(KmsError::Disabled { .. })
        ));
        k.enable().unwrap();
        k.schedule_deletion(7, NOW).unwrap();
        assert!(matches!(
            k.rotate(RotationType::OnDemand, NOW),
            Err(KmsError::InvalidState { .. })
        ));
        assert_eq!(k.materials.len(), 2);
    }

    #[test]
    fn automatic_rotation_period_bounds_and_due_dates() {
        let mut k = key();
        for bad in [0, 89, 2561] {
            assert!(
                matches!(
                    k.enable_rotation(bad, NOW),
                    Err(KmsError::Validation { .. })
                ),
                "{bad}"
            );
        }
        k.enable_rotation(90, NOW).unwrap();
        let due = NOW + 90 * 86_400;
        assert_eq!(k.next_rotation, Some(due));
        assert!(!k.rotation_due(due - 1) && k.rotation_due(due));
        let mut s = StoreState::default();
        let id = k.key_id.clone();
        s.keys.insert(id.clone(), k);
        assert_eq!(s.next_due(), Some(due));
        assert!(s.rotate_due(due - 1).unwrap().is_empty());
        s.keys.get_mut(&id).unwrap().disable().unwrap();
        assert!(
            s.rotate_due(due).unwrap().is_empty(),
            "a disabled key rotated"
        );
        assert_eq!(s.next_due(), None);
        s.keys.get_mut(&id).unwrap().enable().unwrap();
        assert_eq!(s.rotate_due(due + 5).unwrap(), vec![id.clone()]);
        let k = &s.keys[&id];
        assert_eq!(
            (k.current_version, k.next_rotation),
            (2, Some(due + 5 + 90 * 86_400))
        );
        assert_eq!(
            k.material(2).unwrap().rotation,
            Some(RotationType::Automatic)
        );
        let mut k = k.clone();
        k.disable_rotation().unwrap();
        assert_eq!((k.rotation_period_days, k.next_rotation), (None, None));
    }

    fn params(token: &str, valid_to: i64) -> ImportParams {
        ImportParams {
            token_id: token.into(),
            wrapping_key: SecretBytes::from(&b"der"[..]),
            wrapping_key_spec: "RSA_2048".into(),
            valid_to,
        }
    }

    #[test]
    fn external_key_import_lifecycle() {
        let mut k = KeyRecord::new_external("ext", NOW).unwrap();
        assert_eq!(
            (k.state, k.current_version, k.origin),
            (KeyState::PendingImport, 0, KeyOrigin::External)
        );
        assert!(matches!(
            k.check_usable(Usage::Encrypt),
            Err(KmsError::InvalidState { .. })
        ));
        let m = || SecretBytes::new(vec![5u8; 32]);
        // No parameters yet.
        assert!(k.import_material("t", m(), None, NOW).is_err());
        k.set_import_params(params("t1", NOW + 100)).unwrap();
        for (tok, mat, exp, now) in [
            ("t0", m(), None, NOW),                           // wrong token
            ("t1", m(), None, NOW + 101),                     // expired parameters
            ("t1", SecretBytes::new(vec![5; 16]), None, NOW), // wrong length
            ("t1", m(), Some(NOW), NOW),                      // ValidTo not in the future
        ] {
            assert!(matches!(
                k.import_material(tok, mat, exp, now),
                Err(KmsError::Validation { .. })
            ));
            assert_eq!(k.state, KeyState::PendingImport);
        }
        k.import_material("t1", m(), Some(NOW + 50), NOW).unwrap();
        assert_eq!((k.state, k.current_version), (KeyState::Enabled, 1));
        assert!(k.import.is_none());
        assert!(matches!(
            k.rotate(RotationType::OnDemand, NOW),
            Err(KmsError::Validation { .. })
        ));
        assert!(!k.material_expired(NOW + 49) && k.material_expired(NOW + 50));
        let mut s = StoreState::default();
        let id = k.key_id.clone();
        s.keys.insert(id.clone(), k);
        assert_eq!(s.next_due(), Some(NOW + 50));
        assert_eq!(s.expire_due(NOW + 50), vec![id.clone()]);
        let k = s.keys.get_mut(&id).unwrap();
        assert_eq!((k.state, k.materials.len()), (KeyState::PendingImport, 0));
        // Re-import: only the same material.
        k.set_import_params(params("t2", NOW + 200)).unwrap();
        let other = SecretBytes::new(vec![6u8; 32]);
        assert!(matches!(
            k.import_material("t2", other, None, NOW + 60),
            Err(KmsError::Validation { .. })
        ));
        k.import_material("t2", m(), None, NOW + 60).unwrap();
        k.delete_imported_material().unwrap();
        assert_eq!(k.state, KeyState::PendingImport);
        // AWS_KMS keys refuse all of it.
        let mut own = key();
        assert!(own.set_import_params(params("x", NOW)).is_err());
        assert!(own.delete_imported_material().is_err());
        let dbg = format!("{:?}", params("t", 0));
        assert!(dbg.contains("redacted") && !dbg.contains("100, 101"));
    }

    #[test]
    fn an_older_generation_forgets_material_the_newer_one_dropped() {
        let mut old = StoreState::default();
        let (mut a, b, mut c) = (key(), key(), key());
        a.rotate(RotationType::OnDemand, NOW).unwrap();
        let (ai, bi, ci) = (a.key_id.clone(), b.key_id.clone(), c.key_id.clone());
        c.state = KeyState::Disabled;
        for k in [a, b, c] {
            old.keys.insert(k.key_id.clone(), k);
        }
        old.aliases.insert("alias/b".into(), bi.clone());
        let mut new = old.clone();
        // Nothing dropped: nothing forgotten (disabling is not shredding).
        assert!(!old.clone().forget_material_gone_from(&new));
        // a loses version 1, b goes for good, c loses all its material.
        new.keys
            .get_mut(&ai)
            .unwrap()
            .materials
            .retain(|m| m.version == 2);
        new.keys.remove(&bi);
        new.deleted.insert(bi.clone(), NOW);
        new.keys.get_mut(&ci).unwrap().drop_material();
        assert!(old.forget_material_gone_from(&new));
        let a = &old.keys[&ai];
        assert_eq!(
            a.materials.iter().map(|m| m.version).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(a.current_version, 2);
        assert!(!old.keys.contains_key(&bi) && old.aliases.is_empty());
        assert_eq!(old.deleted.get(&bi), Some(&NOW));
        let c = &old.keys[&ci];
        assert!(c.materials.is_empty());
        assert_eq!((c.state, c.current_version), (KeyState::PendingImport, 0));
    }

    #[test]
    fn purge_removes_due_keys_and_their_aliases_only() {
        let mut s = StoreState::default();
        let mut a = key();
        let b = key();
        let mut c = key();
        a.schedule_deletion(7, NOW).unwrap();
        c.schedule_deletion(30, NOW).unwrap();
        let (ai, bi, ci) = (a.key_id.clone(), b.key_id.clone(), c.key_id.clone());
        for k in [a, b, c] {
            s.keys.insert(k.key_id.clone(), k);
        }
        s.create_alias("alias/b", &bi, false).unwrap();
        s.aliases.insert("alias/a".into(), ai.clone());
        assert_eq!(s.next_deletion(), Some(NOW + 7 * 86_400));
        assert!(s.purge_due(NOW + 7 * 86_400 - 1).is_empty());
        assert_eq!(s.purge_due(NOW + 7 * 86_400), vec![ai.clone()]);
        assert!(!s.keys.contains_key(&ai));
        assert_eq!(s.deleted.get(&ai), Some(&(NOW + 7 * 86_400)));
        assert!(s.keys.contains_key(&bi) && s.keys.contains_key(&ci));
        assert_eq!(s.aliases.len(), 1);
        assert_eq!(s.aliases.get("alias/b"), Some(&bi));
    }

    #[test]
    fn alias_rules() {
        let mut s = StoreState::default();
        let k = key();
        let id = k.key_id.clone();
        s.keys.insert(id.clone(), k);
        for bad in [
            "",
            "alias/",
            "foo",
            "alias/sp ace",
            "alias/é",
            "alias/aws/x",
            "alias/kmsfs/x",
        ] {
            assert!(
                matches!(
                    s.create_alias(bad, &id, false),
                    Err(KmsError::Validation { .. })
                ),
                "{bad}"
            );
        }
        let long = format!("alias/{}", "a".repeat(MAX_ALIAS_LEN - 6));
        s.create_alias(&long, &id, false).unwrap();
        let too_long = format!("alias/{}", "a".repeat(MAX_ALIAS_LEN - 5));
        assert!(s.create_alias(&too_long, &id, false).is_err());
        s.create_alias("alias/ok:a/b_c-D9", &id, false).unwrap();
        assert!(matches!(
            s.create_alias("alias/ok:a/b_c-D9", &id, false),
            Err(KmsError::AlreadyExists { .. })
        ));
        s.create_alias(DEFAULT_ALIAS, &id, true).unwrap();
        assert!(matches!(
            s.create_alias("alias/x", "nope", false),
            Err(KmsError::NotFound { .. })
        ));
        assert!(matches!(
            s.update_alias("alias/none", &id),
            Err(KmsError::NotFound { .. })
        ));
        assert!(matches!(
            s.delete_alias("alias/none"),
            Err(KmsError::NotFound { .. })
        ));
        s.delete_alias("alias/ok:a/b_c-D9").unwrap();
        let mut k2 = key();
        k2.schedule_deletion(7, NOW).unwrap();
        let id2 = k2.key_id.clone();
        s.keys.insert(id2.clone(), k2);
        assert!(matches!(
            s.create_alias("alias/y", &id2, false),
            Err(KmsError::InvalidState { .. })
        ));
    }

    #[test]
    fn json_round_trip_keeps_material_and_hides_it_from_debug() {
        let mut s = StoreState::default();
        let k = key();
        let id = k.key_id.clone();
        let m = k.material(1).unwrap().material.clone();
        s.keys.insert(id.clone(), k);
        let json = s.to_sealed_json().unwrap();
        assert_eq!(json.len(), json.capacity());
        let back = StoreState::from_json(&json).unwrap();
        assert_eq!(back.keys[&id].material(1).unwrap().material, m);
        let dbg = format!("{back:?}");
        let hex: String = m.expose().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.contains(&hex));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn inconsistent_body_is_corrupt() {
        let mut s = StoreState::default();
        let k = key();
        s.keys.insert("other".into(), k);
        let json = s.to_sealed_json().unwrap();
        assert!(matches!(
            StoreState::from_json(&json),
            Err(KmsError::CorruptKeystore { .. })
        ));
        assert!(matches!(
            StoreState::from_json(b"{"),
            Err(KmsError::CorruptKeystore { .. })
        ));
    }
}
