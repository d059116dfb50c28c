//! The key state machine: creation, metadata, the states a key moves
//! through (enable, disable, scheduled deletion) and rotation.
#![forbid(unsafe_code)]

use super::*;
use crate::kms::{KeyMetadata, KeyOrigin, KeyState, KmsError, StateProblem, ValidationCode};

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
            tags: Default::default(),
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

    /// The public view of this key (`arn_prefix` from `model::arn_prefix`).
    pub fn metadata(&self, arn_prefix: &str) -> KeyMetadata {
        KeyMetadata {
            key_id: self.key_id.clone(),
            arn: key_arn(arn_prefix, &self.key_id),
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

    pub(super) fn wrong_state(&self, operation: &'static str, state: KeyState) -> KmsError {
        KmsError::InvalidState {
            key_id: self.key_id.clone(),
            state,
            problem: StateProblem::NotAllowed { operation },
        }
    }

    pub(super) fn invalid_state(&self, problem: StateProblem) -> KmsError {
        KmsError::InvalidState {
            key_id: self.key_id.clone(),
            state: self.state,
            problem,
        }
    }
}
