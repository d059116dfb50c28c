//! Handle budgets: how many open handles (files and directories) each user
//! may hold through the mount at once, so that one user cannot take the
//! daemon's descriptors or memory from the others. A user past his budget
//! gets EMFILE; root is not counted, and all other users together stay
//! below the daemon's descriptor limit by a reserve that root and the
//! daemon itself (lookups, the keystore, the log) keep.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::error::FsError;
use super::filesystem::lock;

/// Per-user budget when `-o max_user_handles` is not given (and the
/// descriptor limit allows it).
pub const DEFAULT_USER_HANDLES: usize = 4096;

/// Descriptors kept for root and the daemon's own use, at least.
const MIN_RESERVE: usize = 256;

/// The limits of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleLimits {
    /// Handles one user (other than root) may hold.
    pub per_user: usize,
    /// Handles all users but root may hold together.
    pub all_users: usize,
}

impl HandleLimits {
    /// Limits for a daemon whose descriptor limit is `fd_limit`: every user
    /// but root together may hold all but a reserve (an eighth, at least
    /// `MIN_RESERVE`); one user `per_user` (default: `DEFAULT_USER_HANDLES`,
    /// or a quarter of the limit when that is smaller).
    pub fn for_fd_limit(fd_limit: u64, per_user: Option<usize>) -> Self {
        let limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
        let reserve = (limit / 8).max(MIN_RESERVE);
        let all_users = limit.saturating_sub(reserve).max(1);
        let per_user = per_user
            .unwrap_or_else(|| DEFAULT_USER_HANDLES.min(limit / 4))
            .clamp(1, all_users);
        Self {
            per_user,
            all_users,
        }
    }

    /// No limit (tests of the filesystem alone).
    pub fn unlimited() -> Self {
        Self {
            per_user: usize::MAX,
            all_users: usize::MAX,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    by_uid: HashMap<u32, usize>,
    total: usize,
}

/// The handles each user holds now.
#[derive(Debug)]
pub(super) struct Budget {
    limits: HandleLimits,
    counts: Mutex<Counts>,
}

/// One handle charged to a user; given back when dropped.
#[derive(Debug)]
pub(super) struct Charge {
    budget: Arc<Budget>,
    uid: u32,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.uid == 0 {
            return;
        }
        let mut c = lock(&self.budget.counts);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_uid.remove(&self.uid);
            }
        }
    }
}

impl Budget {
    /// A budget with `limits`.
    pub(super) fn new(limits: HandleLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Charges one handle to `uid`: EMFILE when `uid` holds its budget
    /// already, or when all users together hold theirs (root never).
    pub(super) fn charge(self: &Arc<Self>, uid: u32) -> Result<Charge, FsError> {
        if uid != 0 {
            let mut c = lock(&self.counts);
            let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
            if mine >= self.limits.per_user || c.total >= self.limits.all_users {
                drop(c);
                log::info!("uid {uid} holds {mine} handles, its budget: EMFILE");
                return Err(FsError::TooManyOpen);
            }
            *c.by_uid.entry(uid).or_insert(0) += 1;
            c.total += 1;
        }
        Ok(Charge {
            budget: self.clone(),
            uid,
        })
    }

    /// Handles `uid` holds now.
    #[cfg(test)]
    pub(super) fn held(&self, uid: u32) -> usize {
        lock(&self.counts).by_uid.get(&uid).copied().unwrap_or(0)
    }
}

/// Open file handles: the handle number the kernel holds to the inode it
/// opens and the charge of the user who opened it (the kernel's RELEASE
/// does not say who).
#[derive(Debug, Default)]
pub(super) struct FileHandles {
    map: Mutex<HashMap<u64, (u64, Charge)>>,
    next: std::sync::atomic::AtomicU64,
}

impl FileHandles {
    /// A new handle of inode `ino`, paid by `charge`.
    pub(super) fn add(&self, ino: u64, charge: Charge) -> u64 {
        let fh = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        lock(&self.map).insert(fh, (ino, charge));
        fh
    }

    /// Removes handle `fh`, giving its charge back; its inode.
    pub(super) fn remove(&self, fh: u64) -> Option<u64> {
        lock(&self.map).remove(&fh).map(|(ino, _)| ino)
    }

    /// Drops every handle (unmount).
    pub(super) fn clear(&self) {
        lock(&self.map).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_past_his_budget_gets_emfile_and_the_others_do_not() {
        let b = Budget::new(HandleLimits {
            per_user: 3,
            all_users: 5,
        });
        let bob: Vec<Charge> = (0..3).map(|_| b.charge(1002).unwrap()).collect();
        assert_eq!(b.charge(1002).err().map(|e| e.errno()), Some(libc::EMFILE));
        let alice = [b.charge(1001).unwrap(), b.charge(1001).unwrap()];
        // All users together are at their limit; root is not counted.
        assert_eq!(b.charge(1003).err().map(|e| e.errno()), Some(libc::EMFILE));
        let root: Vec<Charge> = (0..100).map(|_| b.charge(0).unwrap()).collect();
        drop(bob);
        assert_eq!(b.held(1002), 0);
        assert!(b.charge(1003).is_ok());
        drop((alice, root));
        assert_eq!(b.held(1001), 0);
    }

    #[test]
    fn limits_follow_the_descriptor_limit() {
        let l = HandleLimits::for_fd_limit(20_000, None);
        assert_eq!(l.per_user, DEFAULT_USER_HANDLES);
        assert_eq!(l.all_users, 20_000 - 2_500);
        let small = HandleLimits::for_fd_limit(1024, None);
        assert_eq!((small.per_user, small.all_users), (256, 768));
        let set = HandleLimits::for_fd_limit(1 << 20, Some(100_000));
        assert_eq!(set.per_user, 100_000);
        // Never more than all users together may hold.
        assert_eq!(HandleLimits::for_fd_limit(1024, Some(5000)).per_user, 768);
    }
}
