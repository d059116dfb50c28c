//! The data-key cache: recently unwrapped data keys, so that reopening a hot
//! file does not call the key service every time.
//!
//! Bounded in entries and in age; keyed by the file id, a digest of the wrapped
//! key and the caller's uid, gid and supplementary groups (a key policy may
//! allow one user or group and not another, so one caller's unwrap never
//! serves a caller the policy might treat differently). Whenever the key
//! service's generation changes (another process changed the keystore: a key
//! was disabled, scheduled for deletion, a policy changed) the whole cache is
//! dropped, so the next open asks the key service again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::crypto::sha256;
use crate::envelope::FileKey;
use crate::format::FileId;
use crate::kms::Caller;

/// Most entries kept.
pub const MAX_ENTRIES: usize = 64;
/// Oldest entry served.
pub const MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    file_id: FileId,
    wrapped: [u8; 32],
    uid: u32,
    gid: u32,
    /// The supplementary groups (None: unknown).
    groups: Option<Vec<u32>>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: Option<u64>,
    map: HashMap<CacheKey, (Arc<FileKey>, Instant)>,
}

/// The cache; cheap to share behind `&`.
#[derive(Debug)]
pub(super) struct KeyCache {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_age: Duration,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::with_limits(MAX_ENTRIES, MAX_AGE)
    }
}

impl KeyCache {
    /// An empty cache with the default limits.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// An empty cache with other limits.
    pub(super) fn with_limits(max_entries: usize, max_age: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_entries: max_entries.max(1),
            max_age,
        }
    }

    fn key(file_id: &FileId, wrapped: &[u8], caller: &Caller, groups: Option<&[u32]>) -> CacheKey {
        CacheKey {
            file_id: *file_id,
            wrapped: sha256(&[wrapped]),
            uid: caller.uid,
            gid: caller.gid,
            groups: groups.map(<[u32]>::to_vec),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only a map behind: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached key, if the key service is still at `generation` and the
    /// entry is younger than `MAX_AGE`. A new generation empties the cache.
    pub(super) fn get(
        &self,
        generation: u64,
        file_id: &FileId,
        wrapped: &[u8],
        caller: &Caller,
        groups: Option<&[u32]>,
    ) -> Option<Arc<FileKey>> {
        let mut g = self.lock();
        if g.generation != Some(generation) {
            g.map.clear();
            g.generation = Some(generation);
            return None;
        }
        let k = Self::key(file_id, wrapped, caller, groups);
        match g.map.get(&k) {
            Some((key, at)) if at.elapsed() < self.max_age => Some(key.clone()),
            Some(_) => {
                g.map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Remembers a key unwrapped at `generation` (a different generation
    /// empties the cache first, so a stale entry never outlives a change);
    /// evicts the oldest entry when full.
    pub(super) fn insert(
        &self,
        generation: u64,
        file_id: &FileId,
        wrapped: &[u8],
        caller: &Caller,
        groups: Option<&[u32]>,
        key: Arc<FileKey>,
    ) {
        let mut g = self.lock();
        if g.generation != Some(generation) {
            g.map.clear();
            g.generation = Some(generation);
        }
        let max_age = self.max_age;
        g.map.retain(|_, (_, at)| at.elapsed() < max_age);
        if g.map.len() >= self.max_entries
            && let Some(oldest) = g
                .map
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            g.map.remove(&oldest);
        }
        g.map.insert(
            Self::key(file_id, wrapped, caller, groups),
            (key, Instant::now()),
        );
    }

    /// Drops every key (unmount).
    pub(super) fn clear(&self) {
        self.lock().map.clear();
    }

    /// Number of cached keys.
    pub(super) fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EncryptedFile;
    use crate::envelope::tests::TestKeys;

    fn key(ks: &TestKeys, caller: &Caller) -> (FileId, Vec<u8>, Arc<FileKey>) {
        let f = tempfile::tempfile().unwrap();
        let rc = crate::kms::RequestContext::cli(*caller);
        let ef = EncryptedFile::create(f, ks, &rc, "test", crate::format::Layout::NEW).unwrap();
        let h = EncryptedFile::read_header(ef.file()).unwrap();
        let wrapped = h.active().unwrap().wrapped_key.clone();
        (h.file_id, wrapped, ef.key().clone())
    }

    const ALICE: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: 1,
        access_key: None,
    };
    const BOB: Caller = Caller {
        uid: 1001,
        gid: 1001,
        pid: 2,
        access_key: None,
    };

    #[test]
    fn hit_miss_generation_and_caller() {
        let ks = TestKeys::new();
        let c = KeyCache::new();
        let (id, w, k) = key(&ks, &ALICE);
        assert!(c.get(1, &id, &w, &ALICE, None).is_none());
        c.insert(1, &id, &w, &ALICE, None, k.clone());
        assert!(Arc::ptr_eq(&c.get(1, &id, &w, &ALICE, None).unwrap(), &k));
        // Another user never gets Alice's unwrap.
        assert!(c.get(1, &id, &w, &BOB, None).is_none());
        // The same user with other supplementary groups is another entry.
        assert!(c.get(1, &id, &w, &ALICE, Some(&[7])).is_none());
        // Another wrapped key (a rewrap) is another entry.
        assert!(c.get(1, &id, b"other blob", &ALICE, None).is_none());
        // Any keystore change empties the cache.
        assert!(c.get(2, &id, &w, &ALICE, None).is_none());
        assert_eq!(c.len(), 0);
        // An insert made at an old generation does not survive a newer one.
        c.insert(2, &id, &w, &ALICE, None, k.clone());
        c.insert(3, &id, &w, &BOB, None, k);
        assert!(c.get(3, &id, &w, &ALICE, None).is_none());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bounded_in_entries_and_age() {
        let ks = TestKeys::new();
        let c = KeyCache::with_limits(3, Duration::from_secs(3600));
        let keys: Vec<_> = (0..5).map(|_| key(&ks, &ALICE)).collect();
        for (id, w, k) in &keys {
            c.insert(7, id, w, &ALICE, None, k.clone());
        }
        assert_eq!(c.len(), 3);
        // The newest stay.
        let (id, w, _) = &keys[4];
        assert!(c.get(7, id, w, &ALICE, None).is_some());
        let aged = KeyCache::with_limits(3, Duration::ZERO);
        aged.insert(7, id, w, &ALICE, None, keys[4].2.clone());
        assert!(aged.get(7, id, w, &ALICE, None).is_none());
        aged.clear();
        assert_eq!(aged.len(), 0);
    }
}
