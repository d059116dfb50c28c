//! The one authorization decision of `LocalKeyStore`, made on the parsed
//! request of each operation for every front end (command line, mount,
//! protocol server): the key policy first (explicit Deny wins, then Allow,
//! else denied), and at a boundary (a protocol server, `set_boundary`) what
//! a key without a policy, or an operation that names no key, allows: root
//! and the keystore's owner only. ReEncrypt is judged as Decrypt on the
//! source key plus Encrypt on the destination, besides kms:ReEncryptFrom and
//! kms:ReEncryptTo, so that no sequence of operations gives a principal the
//! plaintext of a key that denies it Decrypt.
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;

use super::LocalKeyStore;
use super::snapshot::Snapshot;
use crate::kms::audit::Requester;
use crate::kms::model::KeyRecord;
use crate::kms::policy::{self, Verdict};
use crate::kms::{Caller, EncryptionContext, KmsError, Operation};

/// No boundary: the command line and the mount (`LocalKeyStore::boundary`).
pub(super) const NO_BOUNDARY: u64 = u64::MAX;

/// What `decide` allows (a refusal that is enforced is its `Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Allowed.
    Allow,
    /// Allowed by a grant (its id, which the trail records): the key
    /// policy alone did not allow it.
    Granted(String),
    /// The key policy refuses an administration from the command line,
    /// whose user holds the keystore anyway: recorded, not enforced.
    AdvisoryDeny,
}

impl LocalKeyStore {
    /// Makes this service a boundary (a protocol server): key policies
    /// govern administration too, and a key without a policy, or an
    /// administration that names no key (CreateKey), serves only root and
    /// the keystore's owner (the owner of the keystore directory).
    #[allow(clippy::disallowed_methods)] // the keystore directory's owner, only looked at
    pub fn set_boundary(&self) -> Result<(), KmsError> {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(self.dir())
            .map_err(|e| KmsError::io_from(self.dir().display().to_string(), e))?
            .uid();
        self.boundary.store(u64::from(owner), Ordering::Release);
        Ok(())
    }

    /// The keystore's owner when this service is a boundary.
    pub(super) fn boundary_owner(&self) -> Option<u32> {
        u32::try_from(self.boundary.load(Ordering::Acquire)).ok()
    }

    /// Decides whether `caller` may run `op` on `key` (None: the operation
    /// names no key): the key policy first (an explicit Deny wins), then
    /// the key's grants (principal, operation, encryption context
    /// constraints), then, at a boundary, what a key without a policy
    /// allows. `grant` is the grant RetireGrant or RevokeGrant removes: its
    /// retiring principal may retire it. `Err` carries the refusal to report.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decide(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        who: &Requester,
        op: Operation,
        key: Option<&KeyRecord>,
        ctx: Option<&EncryptionContext>,
        grant: Option<&str>,
    ) -> Result<Decision, KmsError> {
        let owner = self.boundary_owner();
        let privileged = owner.is_none_or(|o| caller.uid == 0 || caller.uid == o);
        let policy = key.and_then(|k| snap.policies.get(&k.key_id));
        // The first grant of the key (by id) that names the caller and
        // allows `a` with `ctx`.
        let grant_for = |a: Operation| {
            key.and_then(|k| {
                snap.state
                    .grants
                    .values()
                    .filter(|g| {
                        g.key_id == k.key_id
                            && g.allows(a, ctx)
                            && policy::grant_principal_is(&g.grantee, caller, who)
                    })
                    .map(|g| g.grant_id.as_str())
                    .min()
            })
        };
        // What the grants alone allowed: the grant the trail names.
        let used: std::cell::RefCell<Option<String>> = std::cell::RefCell::new(None);
        let granted = |a: Operation| match grant_for(a) {
            Some(id) => {
                used.borrow_mut().get_or_insert_with(|| id.to_string());
                true
            }
            None => false,
        };
        let allowed = || match used.borrow_mut().take() {
            Some(id) => Decision::Granted(id),
            None => Decision::Allow,
        };
        // The retiring principal of the grant being retired.
        let retiring = op == Operation::RetireGrant
            && grant
                .and_then(|id| snap.state.grants.get(id))
                .and_then(|g| g.retiring.as_deref())
                .is_some_and(|p| policy::grant_principal_is(p, caller, who));
        match (key, policy) {
            (Some(k), Some(p)) if op.is_governed() => {
                let refused = std::iter::once(op).chain(op.also_requires()).find(|a| {
                    match p.verdict(caller, who, *a, ctx) {
                        Verdict::Allow => false,
                        Verdict::Deny => true,
                        Verdict::NoAllow => !(granted(*a) || retiring),
                    }
                });
                match refused {
                    None => Ok(allowed()),
                    Some(_) if !op.is_crypto() && owner.is_none() => Ok(Decision::AdvisoryDeny),
                    Some(action) => Err(KmsError::AccessDenied {
                        key_id: k.key_id.clone(),
                        action,
                        principal: (caller.uid, caller.gid),
                    }),
                }
            }
            // Without a policy (or for what no policy governs), the boundary
            // decides: root and the owner only, except for listing and
            // random bytes, which name no key's secrets.
            _ if privileged
                || matches!(
                    op,
                    Operation::ListKeys | Operation::ListAliases | Operation::GenerateRandom
                ) =>
            {
                Ok(Decision::Allow)
            }
            // A key without a policy at a boundary: its grants.
            (Some(_), None)
                if op.is_governed()
                    && (retiring || std::iter::once(op).chain(op.also_requires()).all(granted)) =>
            {
                Ok(allowed())
            }
            _ => Err(KmsError::OwnerOnly {
                key_id: key.map(|k| k.key_id.clone()),
                action: op,
                principal: (caller.uid, caller.gid),
                owner: owner.unwrap_or(0),
            }),
        }
    }
}
