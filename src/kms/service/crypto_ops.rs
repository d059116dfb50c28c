//! The cryptographic operations (GenerateDataKey, Encrypt, Decrypt,
//! ReEncrypt, DescribeKey): every one passes through `use_key`, which resolves
//! the key, refuses what its state forbids, authorizes the caller and audits.
#![forbid(unsafe_code)]

use std::cell::OnceCell;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value, json};

use super::LocalKeyStore;
use super::audit::{Admin, Outcome};
use super::authz::Decision;
use super::resolve::resolve;
use super::snapshot::Snapshot;
use crate::crypto::{SecretBytes, hex};
use crate::kms::audit::{FileAccess, Operation, Requester};
use crate::kms::blob::{self, BlobHeader, MaterialKeys};
use crate::kms::model::{KeyRecord, StoreState, Usage};
use crate::kms::request::{KeyServiceExt, Request, RequestContext, Response};
use crate::kms::{
    Caller, DataKey, DataKeySpec, Decrypted, Encrypted, EncryptionContext, KeyMetadata, KeyService,
    KeyState, KmsError, MAX_ENCRYPT_PLAINTEXT, Missing, StateProblem, ValidationCode, clock,
};

/// What a cryptographic operation was asked, for its policy conditions and
/// its audit record.
struct Call<'a> {
    /// `requestParameters` (no secrets).
    request: Value,
    /// The encryption context the policy's conditions look at.
    ctx: Option<&'a EncryptionContext>,
    /// DryRun: authorize, then stop with DryRunOperationException.
    dry_run: bool,
}

impl<'a> Call<'a> {
    fn new(request: Value, ctx: &'a EncryptionContext) -> Self {
        Self {
            request,
            ctx: Some(ctx),
            dry_run: false,
        }
    }
}

/// What a DryRun names: a key (Encrypt, GenerateDataKey*, ReEncrypt's
/// destination) or a ciphertext blob (Decrypt, ReEncrypt's source).
#[derive(Debug, Clone, Copy)]
pub enum DryRunTarget<'a> {
    /// A key id, key ARN or alias.
    Key(&'a str),
    /// A ciphertext blob.
    Blob(&'a [u8]),
}

/// The audit record's view of an encryption context.
fn context_json(ctx: &EncryptionContext) -> Value {
    json!(ctx.0)
}

/// `additionalEventData` of a file open in the mount.
fn access_extra(access: Option<&FileAccess<'_>>, cache_hit: bool) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(a) = access {
        m.insert("path".into(), json!(a.path));
        m.insert("cacheHit".into(), json!(cache_hit));
    }
    m
}

/// `extra` with the grant that allowed the operation, as `grantId`.
fn with_grant(mut extra: Map<String, Value>, grant: Option<String>) -> Map<String, Value> {
    if let Some(g) = grant {
        extra.insert("grantId".into(), json!(g));
    }
    extra
}

/// How a crypto operation names its key.
enum KeyRef<'a> {
    /// Key id, ARN or alias given by the caller.
    Name(&'a str),
    /// The key a ciphertext blob names.
    Blob(&'a BlobHeader),
}

/// The cipher of material version `v` among a key's schedules: the one
/// lookup sealing (`seal_current`) and opening (`open_version`) share.
fn material(ciphers: &[(u32, MaterialKeys)], v: u32) -> Option<&MaterialKeys> {
    ciphers.iter().find(|(ver, _)| *ver == v).map(|(_, m)| m)
}

/// Opens `ciphertext_blob` with material version `v` of `key`.
fn open_version(
    key: &KeyRecord,
    ciphers: &[(u32, MaterialKeys)],
    v: u32,
    ciphertext_blob: &[u8],
    context: &EncryptionContext,
) -> Result<SecretBytes, KmsError> {
    let aead = material(ciphers, v).ok_or_else(|| {
        KmsError::invalid_ciphertext(format!(
            "the ciphertext names key material version {v} of key {}, which this keystore \
             does not hold",
            key.key_id
        ))
    })?;
    blob::open(aead, ciphertext_blob, context)
}

impl LocalKeyStore {
    /// The one path of every cryptographic operation: resolve the key, refuse
    /// what its state forbids, authorize the caller, run `f`, audit the outcome.
    fn use_key<T>(
        &self,
        rc: &RequestContext<'_>,
        op: Operation,
        key_ref: KeyRef<'_>,
        usage: Usage,
        call: Call<'_>,
        f: impl FnOnce(&StoreState, &KeyRecord, &[(u32, MaterialKeys)]) -> Result<(T, u32), KmsError>,
    ) -> Result<T, KmsError> {
        self.audit_gate()?;
        self.refresh_if_stale();
        let snap = self.snapshot();
        let mut audit_key: Option<String> = None;
        let mut version = None;
        let mut grant_id = None;
        let caller = &rc.caller;
        let access = rc.access();
        let owned: OnceCell<Requester> = OnceCell::new();
        let who = || match access {
            Some(a) => a.requester,
            None => owned.get_or_init(|| Requester::of(caller)),
        };
        let result = (|| {
            let key = self.find_key(&snap, &key_ref, &mut audit_key)?;
            audit_key = Some(key.key_id.clone());
            if let KeyRef::Blob(h) = key_ref {
                version = Some(h.material_version);
            }
            self.refuse_if_due(key)?;
            key.check_usable(usage)?;
            if let Decision::Granted(id) =
                self.decide(&snap, caller, who(), op, Some(key), call.ctx, None)?
            {
                grant_id = Some(id);
            }
            if call.dry_run {
                return Err(KmsError::invalid_with(
                    ValidationCode::DryRun,
                    "The request would have succeeded, but the DryRun flag is set.".into(),
                ));
            }
            let ciphers = snap
                .ciphers
                .get(&key.key_id)
                .ok_or_else(|| KmsError::internal("key schedule missing".into()))?;
            let (out, v) = f(&snap.state, key, ciphers)?;
            version = Some(v);
            Ok(out)
        })();
        let recorded = self.record(Outcome {
            op,
            caller,
            requester: who(),
            request: call.request,
            response: None,
            key_id: audit_key.as_deref(),
            named: match key_ref {
                KeyRef::Name(n) => Some(n),
                KeyRef::Blob(_) => Some("(ciphertext blob)"),
            },
            material_version: version,
            error: result.as_ref().err(),
            extra: with_grant(access_extra(access, false), grant_id),
        });
        match (result, recorded) {
            // The command line fails closed: no result without its record.
            (Ok(_), Err(e)) => Err(e),
            (r, _) => r,
        }
    }

    /// GenerateRandom: `n` random bytes (1 to 1024, checked by the caller),
    /// recorded in the trail like every other call (AWS logs GenerateRandom
    /// in CloudTrail): the request's size, never the bytes.
    pub fn generate_random(&self, caller: &Caller, n: usize) -> Result<SecretBytes, KmsError> {
        self.audit_gate()?;
        self.admin(
            Admin {
                op: Operation::GenerateRandom,
                caller,
                key: None,
                also: None,
                grant: None,
                request: json!({ "numberOfBytes": n }),
            },
            || SecretBytes::random(n).map_err(|e| KmsError::internal(e.to_string())),
            |_| (None, None),
        )
    }

    /// The key `key_ref` names in `snap`, refused when the snapshot is broken;
    /// `audit_key` learns a blob's key id even when that key is gone.
    fn find_key<'s>(
        &self,
        snap: &'s Snapshot,
        key_ref: &KeyRef<'_>,
        audit_key: &mut Option<String>,
    ) -> Result<&'s KeyRecord, KmsError> {
        if let Some(why) = &snap.broken {
            return Err(KmsError::corrupt(why.clone()));
        }
        let key = match key_ref {
            KeyRef::Name(n) => resolve(&snap.state, &self.ids(), n)?,
            KeyRef::Blob(h) => {
                let id = h.key_id_string();
                let k = snap.state.keys.get(&id);
                let deleted = snap.state.deleted.get(&id).copied();
                *audit_key = Some(id);
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
        Ok(key)
    }

    /// Refuses a key whose deletion date or imported material's expiry has
    /// passed, writing the change now rather than at the next refresh.
    fn refuse_if_due(&self, key: &KeyRecord) -> Result<(), KmsError> {
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
        if key.origin == crate::kms::KeyOrigin::External && key.material_expired(clock::now()?) {
            if let Err(e) = self.apply_due() {
                self.warn_once(&format!("an expiry could not be written: {e}"));
            }
            return Err(KmsError::InvalidState {
                key_id: key.key_id.clone(),
                state: KeyState::PendingImport,
                problem: StateProblem::MaterialExpired,
            });
        }
        Ok(())
    }

    fn seal_current(
        &self,
        key: &KeyRecord,
        ciphers: &[(u32, MaterialKeys)],
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<(Vec<u8>, u32), KmsError> {
        let v = key.current_version;
        let aead = material(ciphers, v).ok_or_else(|| KmsError::InvalidState {
            key_id: key.key_id.clone(),
            state: key.state,
            problem: StateProblem::NoCurrentMaterial,
        })?;
        let key_uuid = uuid::Uuid::parse_str(&key.key_id)
            .map_err(|_| KmsError::internal("stored key id is not a UUID".into()))?;
        let header = BlobHeader::new(self.keystore_id, *key_uuid.as_bytes(), v)?;
        Ok((blob::seal(aead, &header, plaintext, context)?, v))
    }

    /// The header of a blob this keystore made; another keystore's blob
    /// is refused before any key is looked up.
    fn own_blob_header(&self, ciphertext_blob: &[u8]) -> Result<BlobHeader, KmsError> {
        let header = BlobHeader::parse(ciphertext_blob)?;
        if header.keystore_id != self.keystore_id {
            return Err(KmsError::invalid_ciphertext(format!(
                "the ciphertext blob was made by another keystore ({}), not this one ({})",
                hex(&header.keystore_id),
                self.keystore_id_hex
            )));
        }
        Ok(header)
    }

    fn open_blob(
        &self,
        rc: &RequestContext<'_>,
        op: Operation,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
    ) -> Result<(String, u32, SecretBytes), KmsError> {
        let header = self.own_blob_header(ciphertext_blob)?;
        let mut request = json!({
            "encryptionContext": context_json(context),
            "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
        });
        if let Some(k) = key_id {
            request["keyId"] = json!(k);
        }
        let call = Call {
            request,
            ctx: Some(context),
            dry_run: false,
        };
        self.use_key(
            rc,
            op,
            KeyRef::Blob(&header),
            Usage::Decrypt,
            call,
            |state, key, ciphers| {
                if let Some(want) = key_id {
                    let wanted = resolve(state, &self.ids(), want)?;
                    if wanted.key_id != key.key_id {
                        return Err(KmsError::IncorrectKey {
                            made_under: key.key_id.clone(),
                            given: wanted.key_id.clone(),
                        });
                    }
                }
                let v = header.material_version;
                let pt = open_version(key, ciphers, v, ciphertext_blob, context)?;
                Ok(((key.key_id.clone(), v, pt), v))
            },
        )
    }

    /// DryRun of cryptographic operation `op` on `target`: the key is
    /// resolved, its state checked and the caller authorized (key policy
    /// and grants, with `context`), as the operation would; nothing is
    /// encrypted or decrypted. Returns the refusal, or DryRunOperation
    /// (`ValidationCode::DryRun`) when the operation would have been allowed.
    /// Recorded in the trail like the operation.
    pub fn dry_run(
        &self,
        rc: &RequestContext<'_>,
        op: Operation,
        target: DryRunTarget<'_>,
        context: &EncryptionContext,
    ) -> KmsError {
        let header;
        let (key_ref, usage, named) = match target {
            DryRunTarget::Key(k) => (KeyRef::Name(k), Usage::Encrypt, Some(k)),
            DryRunTarget::Blob(b) => {
                header = match self.own_blob_header(b) {
                    Ok(h) => h,
                    Err(e) => return e,
                };
                (KeyRef::Blob(&header), Usage::Decrypt, None)
            }
        };
        let mut request = json!({
            "encryptionContext": context_json(context),
            "dryRun": true,
        });
        if let Some(k) = named {
            request["keyId"] = json!(k);
        }
        let call = Call {
            request,
            ctx: Some(context),
            dry_run: true,
        };
        match self.use_key(rc, op, key_ref, usage, call, |_, _, _| {
            Err::<((), u32), _>(KmsError::internal("a dry run ran its operation".into()))
        }) {
            Ok(()) => KmsError::internal("a dry run ran its operation".into()),
            Err(e) => e,
        }
    }

    /// Refuses a ciphertext blob not made under `key_id` (a key id, ARN or
    /// alias), before anything is decrypted: ReEncrypt's SourceKeyId.
    pub fn check_ciphertext_key(
        &self,
        rc: &RequestContext<'_>,
        ciphertext_blob: &[u8],
        key_id: &str,
    ) -> Result<(), KmsError> {
        let header = BlobHeader::parse(ciphertext_blob)?;
        let wanted = self.describe_key(rc, key_id)?;
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
        rc: &RequestContext<'_>,
        key_id: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let dk = self.gdk(
            rc,
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
        rc: &RequestContext<'_>,
        op: Operation,
        key_id: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let len = spec.byte_len()?;
        let mut request = json!({
            "keyId": key_id,
            "encryptionContext": context_json(context),
        });
        match spec {
            DataKeySpec::Aes256 => request["keySpec"] = json!("AES_256"),
            DataKeySpec::Aes128 => request["keySpec"] = json!("AES_128"),
            DataKeySpec::Bytes(n) => request["numberOfBytes"] = json!(n),
        }
        self.use_key(
            rc,
            op,
            KeyRef::Name(key_id),
            Usage::Encrypt,
            Call {
                request,
                ctx: Some(context),
                dry_run: false,
            },
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
}

impl LocalKeyStore {
    fn encrypt_small(
        &self,
        rc: &RequestContext<'_>,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        // As AWS: the plaintext of Encrypt is 1 to 4096 bytes.
        if plaintext.is_empty() {
            return Err(KmsError::invalid(
                "1 validation error detected: Value at 'plaintext' failed to satisfy \
                 constraint: Member must have length greater than or equal to 1"
                    .into(),
            ));
        }
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
        let request = json!({
            "keyId": key_id,
            "encryptionContext": context_json(context),
            "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
        });
        self.use_key(
            rc,
            Operation::Encrypt,
            KeyRef::Name(key_id),
            Usage::Encrypt,
            Call::new(request, context),
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

    fn re_encrypt_blob(
        &self,
        rc: &RequestContext<'_>,
        ciphertext_blob: &[u8],
        source_context: &EncryptionContext,
        destination_key_id: &str,
        destination_context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let (source, _, plaintext) = self.open_blob(
            rc,
            Operation::ReEncryptFrom,
            ciphertext_blob,
            source_context,
            None,
        )?;
        let request = json!({
            "destinationKeyId": destination_key_id,
            "sourceEncryptionContext": context_json(source_context),
            "destinationEncryptionContext": context_json(destination_context),
        });
        self.use_key(
            rc,
            Operation::ReEncryptTo,
            KeyRef::Name(destination_key_id),
            Usage::Encrypt,
            Call::new(request, destination_context),
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

    fn describe(&self, caller: &Caller, key_id: &str) -> Result<KeyMetadata, KmsError> {
        self.admin(
            Admin {
                op: Operation::DescribeKey,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || {
                let snap = self.fresh_snapshot()?;
                let k = resolve(&snap.state, &self.ids(), key_id)?;
                if k.deletion_due(clock::now()?) {
                    self.apply_due()?;
                    return Err(KmsError::not_found(Missing::Deleted {
                        key_id: k.key_id.clone(),
                    }));
                }
                Ok(k.metadata(&self.arn_prefix()))
            },
            |m| (Some(m.key_id.clone()), None),
        )
    }

    /// Records an open served from the mount's cache (`Request::CachedOpen`).
    /// A record that cannot be written is the trail's to report.
    fn record_cached(
        &self,
        rc: &RequestContext<'_>,
        key_id: &str,
        key_material_version: u32,
        context: &EncryptionContext,
    ) {
        let owned: OnceCell<Requester> = OnceCell::new();
        let access = rc.access();
        let _ = self.record(Outcome {
            op: Operation::Decrypt,
            caller: &rc.caller,
            requester: match access {
                Some(a) => a.requester,
                None => owned.get_or_init(|| Requester::of(&rc.caller)),
            },
            request: json!({
                "encryptionContext": context_json(context),
                "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
            }),
            response: None,
            key_id: Some(key_id),
            named: None,
            material_version: Some(key_material_version),
            error: None,
            extra: access_extra(access, true),
        });
    }
}

impl KeyService for LocalKeyStore {
    fn call(&self, rc: &RequestContext<'_>, request: Request<'_>) -> Result<Response, KmsError> {
        match request {
            Request::GenerateDataKey {
                key_id,
                spec,
                context,
            } => self
                .gdk(rc, Operation::GenerateDataKey, key_id, spec, context)
                .map(Response::DataKey),
            Request::Decrypt {
                blob,
                context,
                key_id,
            } => {
                let (key_id, key_material_version, plaintext) =
                    self.open_blob(rc, Operation::Decrypt, blob, context, key_id)?;
                Ok(Response::Decrypted(Decrypted {
                    key_id,
                    key_material_version,
                    plaintext,
                }))
            }
            Request::Encrypt {
                key_id,
                plaintext,
                context,
            } => self
                .encrypt_small(rc, key_id, plaintext, context)
                .map(Response::Encrypted),
            Request::ReEncrypt {
                blob,
                source_context,
                destination_key_id,
                destination_context,
            } => self
                .re_encrypt_blob(
                    rc,
                    blob,
                    source_context,
                    destination_key_id,
                    destination_context,
                )
                .map(Response::Encrypted),
            Request::DescribeKey { key_id } => {
                self.describe(&rc.caller, key_id).map(Response::Metadata)
            }
            Request::CachedOpen {
                key_id,
                key_material_version,
                context,
            } => {
                self.record_cached(rc, key_id, key_material_version, context);
                Ok(Response::Recorded)
            }
        }
    }

    fn flush_audit(&self) {
        self.flush_audit_trail();
    }

    fn audits_file_access(&self) -> bool {
        self.audit_trail().is_some()
    }

    fn generation(&self) -> u64 {
        self.refresh_if_stale();
        // While the trail is missing every open must reach `use_key` (and be
        // refused there), not be served from a cache of data keys.
        if self.trail.get().is_some_and(|t| t.missing().is_some()) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.generation.load(Ordering::Acquire)
    }
}
