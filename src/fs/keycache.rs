//! The data-key cache: recently unwrapped data keys, so that reopening a hot
//! file does not call the key service every time.
//!
//! Bounded in entries and in age; keyed by the file id, a digest of the wrapped
//! key and the caller's uid/gid (a key policy may allow one user and not
//! another, so one user's unwrap never serves another). Whenever the key
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
}

#[derive(Debug, Default)]
struct Inner {
    generation: Option<u64>,
    map: HashMap<CacheKey, (Arc<FileKey>, Instant)>,
}

/// The cache; cheap to share behind `&`.
#[derive(Debug, Default)]
pub struct KeyCache {
    inner: Mutex<Inner>,
}

impl KeyCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(file_id: &FileId, wrapped: &[u8], caller: &Caller) -> CacheKey {
        CacheKey {
            file_id: *file_id,
            wrapped: sha256(&[wrapped]),
            uid: caller.uid,
            gid: caller.gid,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only a map behind: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached key, if the key service is still at `generation` and the
    /// entry is younger than `MAX_AGE`. A new generation empties the cache.
    pub fn get(
        &self,
        generation: u64,
        file_id: &FileId,
        wrapped: &[u8],
        caller: &Caller,
    ) -> Option<Arc<FileKey>> {
        let mut g = self.lock();
        if g.generation != Some(generation) {
            g.map.clear();
            g.generation = Some(generation);
            return None;
        }
        let k = Self::key(file_id, wrapped, caller);
        match g.map.get(&k) {
            Some((key, at)) if at.elapsed() < MAX_AGE => Some(key.clone()),
            Some(_) => {
                g.map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Remembers a key unwrapped at `generation` (ignored if the generation has
    /// moved on meanwhile); evicts the oldest entry when full.
    pub fn insert(
        &self,
        generation: u64,
        file_id: &FileId,
        wrapped: &[u8],
        caller: &Caller,
        key: Arc<FileKey>,
    ) {
        let mut g = self.lock();
        if g.generation != Some(generation) {
            g.map.clear();
            g.generation = Some(generation);
        }
        g.map.retain(|_, (_, at)| at.elapsed() < MAX_AGE);
        if g.map.len() >= MAX_ENTRIES
            && let Some(oldest) = g
                .map
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            g.map.remove(&oldest);
        }
        g.map
            .insert(Self::key(file_id, wrapped, caller), (key, Instant::now()));
    }

    /// Drops every key (unmount).
    pub fn clear(&self) {
        self.lock().map.clear();
    }

    /// Number of cached keys.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }
}
