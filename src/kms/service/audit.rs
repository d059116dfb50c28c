//! How `LocalKeyStore` feeds the audit trail: the trail is set up when the
//! keystore opens (with the signing key sealed in the keystore, made on
//! first use), every operation ends in `record`, and `admin` wraps every
//! key administration: the trail must be writable before a change (fail
//! closed), the key policy is evaluated (enforced at a boundary, advisory
//! from the command line), and the record is durable before returning.
#![forbid(unsafe_code)]

use std::cell::OnceCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value, json};

use super::LocalKeyStore;
use super::authz::Decision;
use super::resolve::resolve;
use super::snapshot::Snapshot;
use crate::kms::audit::prune::{Plan, PruneError, Pruned, prune};
use crate::kms::audit::record::{self, Event};
use crate::kms::audit::sign::VerifyKeys;
use crate::kms::audit::verify::{self, Expected, Report};
use crate::kms::audit::{AuditEvent, CallerSource, Durability, Operation, Requester, Trail};
use crate::kms::model::KeyRecord;
use crate::kms::{Caller, KmsError, clock};

/// The environment variable that turns the trail off (`off`): for the
/// owner's measurements; anyone who can set it for a process that opens the
/// keystore can read the keystore anyway.
pub const AUDIT_ENV: &str = "KMSFS_AUDIT";

/// Why `prune_audit_trail` did nothing.
#[derive(Debug)]
pub enum PruneFailure {
    /// The trail does not verify (what verify found).
    Corrupt(Box<Report>),
    /// The keystore or the trail refused or failed.
    Kms(KmsError),
}

/// A key administration, as `admin` records it.
pub(super) struct Admin<'a> {
    pub(super) op: Operation,
    pub(super) caller: &'a Caller,
    /// The key as named (id, ARN or alias), when the operation has one.
    pub(super) key: Option<&'a str>,
    /// A second key the operation touches, as named: the alias whose
    /// current key UpdateAlias moves it away from. Authorized as `key` is.
    pub(super) also: Option<&'a str>,
    /// The grant RetireGrant or RevokeGrant removes (its id).
    pub(super) grant: Option<&'a str>,
    pub(super) request: Value,
}

/// The key ids an administration was authorized on (`Admin::key` and
/// `Admin::also`), None for a name that did not resolve.
pub(super) struct Checked {
    pub(super) key: Option<String>,
    pub(super) also: Option<String>,
}

/// What a finished operation tells its record.
pub(super) struct Outcome<'a> {
    pub(super) op: Operation,
    pub(super) caller: &'a Caller,
    pub(super) requester: &'a Requester,
    pub(super) request: Value,
    pub(super) response: Option<Value>,
    pub(super) key_id: Option<&'a str>,
    /// The key as the caller named it, for the sink when it did not resolve.
    pub(super) named: Option<&'a str>,
    pub(super) material_version: Option<u32>,
    pub(super) error: Option<&'a KmsError>,
    pub(super) extra: Map<String, Value>,
}

fn source_from(n: u8) -> CallerSource {
    match n {
        1 => CallerSource::Mount,
        2 => CallerSource::Server,
        3 => CallerSource::Console,
        _ => CallerSource::Cli,
    }
}

impl LocalKeyStore {
    /// Sets up the trail beside the keystore.
    pub(super) fn init_trail(&self) {
        if std::env::var(AUDIT_ENV).is_ok_and(|v| v == "off") {
            log::warn!(
                "{AUDIT_ENV}=off: key use through this process is not written to the audit trail"
            );
            return;
        }
        // A keystore made before the trail had a signing key gets one with
        // its next change (`update`): opening to read never writes.
        let snap = self.snapshot();
        let trail = Trail::new(
            self.dir(),
            self.keystore_id(),
            super::snapshot::signing_keys(&snap.state),
        );
        if let Some((seq, hash)) = super::snapshot::audit_floor(&snap.state) {
            trail.set_floor(seq, hash);
        }
        let _ = self.trail.set(trail);
    }

    /// The trail, unless turned off.
    pub fn audit_trail(&self) -> Option<&Arc<Trail>> {
        self.trail.get()
    }

    /// Who uses this service: the command line (the default), the mount or
    /// a server. Decides the records' `source` and how they are written
    /// (`Batched` for the mount and a server).
    pub fn set_caller_source(&self, source: CallerSource) {
        let n = match source {
            CallerSource::Cli => 0,
            CallerSource::Mount => 1,
            CallerSource::Server => 2,
            CallerSource::Console => 3,
        };
        self.source.store(n, Ordering::Release);
    }

    /// See `set_caller_source`.
    pub fn caller_source(&self) -> CallerSource {
        source_from(self.source.load(Ordering::Acquire))
    }

    /// Writes whatever the trail holds queued.
    pub fn flush_audit_trail(&self) {
        if let Some(t) = self.trail.get() {
            let _ = t.flush();
        }
    }

    /// For a command-line process that makes many cryptographic operations
    /// (rewrap, fsck, export, import): their records go to the background
    /// writer, as the mount's do, instead of one write each (which made a
    /// 10,000-file rewrap six times slower). The command calls
    /// [`Self::finish_audit_trail`] before it reports success.
    pub fn batch_crypto_audit(&self) {
        self.crypto_audit_batched.store(true, Ordering::Release);
    }

    /// Writes whatever the trail holds queued; an error when it cannot.
    pub fn finish_audit_trail(&self) -> std::io::Result<()> {
        match self.trail.get() {
            Some(t) => t.flush(),
            None => Ok(()),
        }
    }

    /// Verifies this keystore's trail with its signing keys, and that it
    /// reaches the position the keystore recorded at its last change.
    pub fn verify_audit_trail(&self) -> std::io::Result<Report> {
        self.verify_audit_trail_in(&self.dir().join(crate::kms::audit::trail::DIR_NAME))
    }

    /// `verify_audit_trail` of a copy of the trail in `dir`.
    pub fn verify_audit_trail_in(&self, dir: &std::path::Path) -> std::io::Result<Report> {
        verify::verify(dir, &self.audit_expected())
    }

    /// What this keystore's trail is checked against: its keys and the
    /// position it recorded at its last change.
    pub fn audit_expected(&self) -> Expected {
        let snap = self.snapshot();
        Expected {
            keys: VerifyKeys {
                hmac: snap.state.audit_signing_key.clone(),
                ed25519: super::snapshot::signing_keys(&snap.state).public_key(),
                keystore_id: Some(self.keystore_id().to_string()),
            },
            floor: super::snapshot::audit_floor(&snap.state),
        }
    }

    /// Prunes the trail: removes the records written before `before`,
    /// leaving a signed checkpoint (and writing them to `archive` first,
    /// when given). A change to the keystore: it records where the pruned
    /// trail ends, so a rollback to the trail as it was fails `verify`.
    /// The caller's right to do this is the command line's to check (it
    /// holds the root key, so it could rewrite the trail anyway).
    pub fn prune_audit_trail(
        &self,
        caller: &Caller,
        before: i64,
        archive: Option<&std::path::Path>,
    ) -> Result<Option<Pruned>, PruneFailure> {
        let Some(trail) = self.trail.get() else {
            return Err(PruneFailure::Kms(KmsError::AuditTrail {
                problem: format!("it is turned off in this process ({AUDIT_ENV}=off)"),
            }));
        };
        if self.audit_public_key().is_none() {
            self.ensure_audit_public_key().map_err(PruneFailure::Kms)?;
        }
        trail.flush().map_err(|e| {
            PruneFailure::Kms(KmsError::AuditTrail {
                problem: e.to_string(),
            })
        })?;
        let mut corrupt = None;
        let result = self.update(|state, now| {
            let keys = super::snapshot::signing_keys(state);
            let expected = Expected {
                keys: VerifyKeys {
                    hmac: state.audit_signing_key.clone(),
                    ed25519: keys.public_key(),
                    keystore_id: Some(self.keystore_id().to_string()),
                },
                floor: super::snapshot::audit_floor(state),
            };
            let plan = Plan {
                before,
                now,
                keys: &keys,
                keystore_id: self.keystore_id(),
                expected: &expected,
                archive,
            };
            match prune(trail, &plan) {
                Ok(Some(p)) => {
                    trail
                        .append(
                            self.prune_record(caller, before, archive, &p, now),
                            Durability::Durable,
                        )
                        .map_err(|e| KmsError::AuditTrail {
                            problem: format!(
                                "the trail WAS pruned, but its record could not be written: {e}"
                            ),
                        })?;
                    Ok(Some(p))
                }
                Ok(None) => Ok(None),
                Err(PruneError::Corrupt(r)) => {
                    corrupt = Some(r);
                    Err(KmsError::AuditTrail {
                        problem: "it does not verify; nothing was pruned".into(),
                    })
                }
                Err(PruneError::Io(e)) => Err(KmsError::AuditTrail {
                    problem: format!("cannot prune it: {e}"),
                }),
            }
        });
        match (result, corrupt) {
            (_, Some(r)) => Err(PruneFailure::Corrupt(r)),
            (r, None) => r.map_err(PruneFailure::Kms),
        }
    }

    /// The record of a prune: who, before when, what went.
    fn prune_record(
        &self,
        caller: &Caller,
        before: i64,
        archive: Option<&std::path::Path>,
        p: &Pruned,
        now: i64,
    ) -> Value {
        let requester = Requester::of(caller);
        json!({
            "eventVersion": record::EVENT_VERSION,
            "eventTime": crate::kms::audit::time::format(now),
            "eventSource": record::EVENT_SOURCE,
            "eventName": "PruneAuditTrail",
            "eventType": "kmsfsTrail",
            "eventCategory": "Management",
            "readOnly": false,
            "eventID": uuid::Uuid::new_v4().to_string(),
            "userIdentity": record::identity(caller, &requester, self.caller_source()),
            "requestParameters": {
                "before": crate::kms::audit::time::format(before),
                "archive": archive.map(|a| a.display().to_string()),
            },
            "responseElements": {
                "prunedFrom": p.from,
                "prunedThrough": p.through,
                "prunedRecords": p.records,
                "firstEventTime": crate::kms::audit::time::format(p.first_time),
                "lastEventTime": crate::kms::audit::time::format(p.last_time),
                "bytesBefore": p.bytes_before,
                "bytesAfter": p.bytes_after,
            },
        })
    }

    /// Gives a keystore made before Ed25519 signing its key (a change with
    /// nothing else in it) and returns the public key.
    pub fn ensure_audit_public_key(
        &self,
    ) -> Result<[u8; crate::crypto::ED25519_PUBLIC_LEN], KmsError> {
        self.update(|_, _| Ok(()))?;
        self.audit_public_key()
            .ok_or_else(|| KmsError::internal("the audit signing key was not made".into()))
    }

    /// The Ed25519 public key that checks the trail's signatures, when the
    /// keystore has one (a keystore made before gets it with its next change).
    pub fn audit_public_key(&self) -> Option<[u8; crate::crypto::ED25519_PUBLIC_LEN]> {
        super::snapshot::signing_keys(&self.snapshot().state).public_key()
    }

    /// Refuses a cryptographic operation up front when the trail is failing
    /// and this is a server (fail closed there; the mount fails open, loudly).
    /// Refuses every key use, whoever asks, while the trail the keystore
    /// recorded is missing (deleted or cut): a new trail is never started
    /// in its place.
    pub(super) fn audit_gate(&self) -> Result<(), KmsError> {
        if let Some(why) = self.trail.get().and_then(|t| t.missing()) {
            self.warn_once(&why);
            return Err(KmsError::AuditTrail { problem: why });
        }
        match self.trail.get() {
            Some(t) if t.failing() && self.caller_source() == CallerSource::Server => {
                Err(KmsError::AuditTrail {
                    problem: "its last write failed; cryptographic operations are refused \
                              until it can be written again"
                        .into(),
                })
            }
            _ => Ok(()),
        }
    }

    fn durability(&self, op: Operation) -> Durability {
        if op.is_change() {
            Durability::Durable
        } else if self.caller_source() == CallerSource::Cli
            && !self.crypto_audit_batched.load(Ordering::Acquire)
        {
            Durability::Written
        } else {
            Durability::Batched
        }
    }

    /// Appends one record (and tells the installed sink). An error means the
    /// record could not be written when it had to be before returning.
    pub(super) fn record(&self, o: Outcome<'_>) -> Result<(), KmsError> {
        let time = clock::now().unwrap_or(0);
        let arn = o.key_id.map(|k| self.key_arn(k));
        let code_and_text = o.error.map(|e| (e.aws_code(), e.to_string()));
        if let Some(sink) = self.audit.get() {
            sink.record(&AuditEvent {
                caller: o.caller,
                operation: o.op,
                key_id: o.key_id.or(o.named).unwrap_or(""),
                material_version: o.material_version,
                result: match &code_and_text {
                    Some((c, _)) => Err(c),
                    None => Ok(()),
                },
                time,
            });
        }
        let Some(trail) = self.trail.get() else {
            return Ok(());
        };
        let rec = record::build(&Event {
            op: o.op,
            caller: o.caller,
            requester: o.requester,
            source: self.caller_source(),
            time,
            request: o.request,
            response: o.response,
            key_arn: arn,
            material_version: o.material_version,
            error: code_and_text,
            extra: o.extra,
        });
        trail
            .append(rec, self.durability(o.op))
            .map_err(|e| KmsError::AuditTrail {
                problem: e.to_string(),
            })
    }

    /// Records what the keystore did by itself when a date was reached (a
    /// deletion, an automatic rotation, an expiry), as the process that
    /// applied it. Durable; a failure is logged (the change is due anyway).
    pub(super) fn record_date_reached(&self, op: Operation, key_id: &str) {
        let (uid, gid) = crate::os::ids::ids();
        let caller = Caller {
            uid,
            gid,
            pid: std::process::id(),
            access_key: None,
        };
        let mut extra = Map::new();
        extra.insert("automatic".into(), json!(true));
        if let Err(e) = self.record(Outcome {
            op,
            caller: &caller,
            requester: &Requester::of(&caller),
            request: json!({ "keyId": key_id }),
            response: None,
            key_id: Some(key_id),
            named: None,
            material_version: None,
            error: None,
            extra,
        }) {
            log::error!(
                "the {} of key {key_id} is not in the audit trail: {e}",
                op.as_str()
            );
        }
    }

    /// Runs a key administration: checks the trail can be written (a change
    /// is refused otherwise), authorizes the caller on every key the
    /// operation names (`authz`: refusing, or at the command line recording
    /// a policy's refusal), runs `f` and records the outcome (durably for a
    /// change). `out` names the key the result concerns and the response
    /// elements.
    pub(super) fn admin<T>(
        &self,
        a: Admin<'_>,
        f: impl FnOnce() -> Result<T, KmsError>,
        out: impl FnOnce(&T) -> (Option<String>, Option<Value>),
    ) -> Result<T, KmsError> {
        self.admin_keys(a, |_| f(), out)
    }

    /// `admin`, where `f` gets the key ids that were authorized (`key`,
    /// `also`; None when a name did not resolve), to check in its update
    /// that they are still the ones named.
    pub(super) fn admin_keys<T>(
        &self,
        a: Admin<'_>,
        f: impl FnOnce(Checked) -> Result<T, KmsError>,
        out: impl FnOnce(&T) -> (Option<String>, Option<Value>),
    ) -> Result<T, KmsError> {
        self.refuse_change_without_trail(a.op)?;
        let requester: OnceCell<Requester> = OnceCell::new();
        let who = || requester.get_or_init(|| Requester::of(a.caller));
        let mut extra = Map::new();
        let snap = match self.fresh_snapshot() {
            Ok(s) => s,
            Err(_) => self.snapshot(),
        };
        let find = |n: Option<&str>| n.and_then(|k| resolve(&snap.state, &self.ids(), k).ok());
        let (named, also) = (find(a.key), find(a.also));
        let checked = Checked {
            key: named.map(|k| k.key_id.clone()),
            also: also.map(|k| k.key_id.clone()),
        };
        let mut key_id = checked.key.clone();
        let denial = self.authorize_admin(&a, &snap, named, also, &who, &mut extra);
        drop(snap);
        if let Err(e) = denial {
            let _ = self.record(Outcome {
                op: a.op,
                caller: a.caller,
                requester: who(),
                request: a.request,
                response: None,
                key_id: key_id.as_deref(),
                named: a.key,
                material_version: None,
                error: Some(&e),
                extra,
            });
            return Err(e);
        }
        let result = f(checked);
        let response = match &result {
            Ok(t) => {
                let (k, r) = out(t);
                if k.is_some() {
                    key_id = k;
                }
                r
            }
            Err(_) => None,
        };
        let recorded = self.record(Outcome {
            op: a.op,
            caller: a.caller,
            requester: who(),
            request: a.request,
            response,
            key_id: key_id.as_deref(),
            named: a.key,
            material_version: None,
            error: result.as_ref().err(),
            extra,
        });
        match (result, recorded) {
            (Ok(_), Err(e)) if a.op.is_change() => Err(KmsError::AuditTrail {
                problem: format!(
                    "the {} WAS made, but its audit record could not be written: {e}",
                    a.op.as_str()
                ),
            }),
            (Ok(_), Err(e)) => Err(e),
            (r, _) => r,
        }
    }

    /// Refuses a change when the audit trail cannot be written (fail
    /// closed): nothing is changed that would go unrecorded.
    fn refuse_change_without_trail(&self, op: Operation) -> Result<(), KmsError> {
        if op.is_change()
            && let Some(t) = self.trail.get()
            && let Err(e) = t.probe()
        {
            log::error!(
                "refusing {}: the audit trail cannot be written: {e}",
                op.as_str()
            );
            return Err(KmsError::AuditTrail {
                problem: format!("{e}; nothing was changed"),
            });
        }
        Ok(())
    }

    /// Authorizes administration `a` on the keys it names (`authz`): the
    /// refusal when one is enforced; a policy's refusal that is only
    /// advisory (the command line) is noted in `extra`.
    fn authorize_admin<'r>(
        &self,
        a: &Admin<'_>,
        snap: &Snapshot,
        named: Option<&KeyRecord>,
        also: Option<&KeyRecord>,
        who: &impl Fn() -> &'r Requester,
        extra: &mut Map<String, Value>,
    ) -> Result<(), KmsError> {
        let mut keys = vec![named];
        if a.also.is_some() {
            keys.push(also);
        }
        for k in keys {
            match self.decide(snap, a.caller, who(), a.op, k, None, a.grant)? {
                Decision::AdvisoryDeny => {
                    extra.insert(
                        "policyDecision".into(),
                        json!("Deny (not enforced: the caller has direct access to the keystore)"),
                    );
                }
                Decision::Granted(id) => {
                    extra.insert("grantId".into(), json!(id));
                }
                Decision::Allow => {}
            }
        }
        Ok(())
    }
}
