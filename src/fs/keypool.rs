//! A pool of data keys generated ahead for new files, for a mount whose CMK
//! is behind a remote key service: a create takes one instead of waiting
//! for a GenerateDataKey round trip. Each key is made exactly as a create
//! makes it (a random file id, the file's encryption context), goes to one
//! file, and is zeroized when used, discarded or dropped with the pool.
//!
//! What bounds a key that was disabled meanwhile: a pooled key older than
//! `max_age` is discarded unused (a key disabled at time D serves no create
//! after D + `max_age`: the age counts from before the call was sent), and
//! any refusal the mount meets (the filler's, a create's, an open's)
//! discards the whole pool. The filler only refills while creates come:
//! an idle mount lets its pool age out and asks nothing.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::envelope::FreshKey;
use crate::kms::{Caller, KeyService, Origin, RequestContext};

/// Keys kept ready when `-o datakey_pool` is not given: enough for a burst
/// of creates while the filler catches up, few enough that an idle mount
/// holds little and asks for few keys that then age out unused.
pub const DEFAULT_POOL_SIZE: usize = 32;

/// How long the filler waits after a failed call before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The pool's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Keys kept ready (at least 1).
    pub size: usize,
    /// The oldest a key may be when a create takes it.
    pub max_age: Duration,
}

/// What the pool did, for `kmsfs status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Keys ready now.
    pub ready: usize,
    /// Keys the filler generated.
    pub generated: u64,
    /// Keys that went to a new file.
    pub used: u64,
    /// Keys discarded unused (aged out, or dropped after a refusal).
    pub discarded: u64,
    /// Times the whole pool was dropped after a refusal.
    pub refusals: u64,
}

struct Ready {
    /// When the call that made it was sent.
    asked: Instant,
    key: FreshKey,
}

#[derive(Default)]
struct State {
    keys: VecDeque<Ready>,
    /// The last create that asked, for the filler's "creates are coming".
    last_take: Option<Instant>,
    /// Calls of the filler in flight that a refusal made stale: the key
    /// they bring back is discarded.
    epoch: u64,
    /// After a failed call: the filler asks again from then on.
    retry_at: Option<Instant>,
    filler: bool,
    stopped: bool,
}

struct Shared {
    ks: Arc<dyn KeyService>,
    key_id: String,
    cfg: PoolConfig,
    state: Mutex<State>,
    wake: Condvar,
    generated: AtomicU64,
    used: AtomicU64,
    discarded: AtomicU64,
    refusals: AtomicU64,
}

/// The pool of one mount, for its CMK for new files (creates under a
/// directory's own key ask the key service directly).
pub struct DataKeyPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DataKeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyPool")
            .field("key_id", &self.shared.key_id)
            .field("cfg", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Drops the keys older than `max_age`; counts them.
    fn expire(&self, st: &mut State, now: Instant) {
        let before = st.keys.len();
        st.keys
            .retain(|r| now.saturating_duration_since(r.asked) < self.cfg.max_age);
        let gone = before - st.keys.len();
        self.discarded.fetch_add(gone as u64, Ordering::Relaxed);
    }

    /// Whether creates came lately enough to be worth keys.
    fn wanted(&self, st: &State, now: Instant) -> bool {
        st.keys.len() < self.cfg.size
            && st
                .last_take
                .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.max_age)
    }

    /// Drops every key (zeroized), and what the filler is fetching.
    fn drop_all(&self, st: &mut State) {
        self.discarded
            .fetch_add(st.keys.len() as u64, Ordering::Relaxed);
        st.keys.clear();
        st.epoch += 1;
    }

    /// The filler: one GenerateDataKey at a time while creates come.
    fn fill(self: Arc<Self>) {
        let (uid, gid) = crate::os::ids::ids();
        let me = Caller::local(uid, gid, std::process::id());
        let rc = RequestContext::new(me, Origin::Mount);
        let mut st = lock(&self.state);
        loop {
            if st.stopped {
                return;
            }
            let now = Instant::now();
            self.expire(&mut st, now);
            if let Some(t) = st.retry_at.filter(|t| *t > now) {
                st = self
                    .wake
                    .wait_timeout(st, t - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            if !self.wanted(&st, now) {
                // Wake when the oldest key ages out, or when a create asks.
                let wait = st
                    .keys
                    .front()
                    .map(|r| self.cfg.max_age.saturating_sub(now - r.asked))
                    .unwrap_or(self.cfg.max_age)
                    .max(Duration::from_millis(10));
                st = self
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            let epoch = st.epoch;
            drop(st);
            let asked = Instant::now();
            let r = FreshKey::generate(&*self.ks, &rc, &self.key_id);
            st = lock(&self.state);
            match r {
                Ok(key) if st.epoch == epoch && !st.stopped => {
                    st.retry_at = None;
                    self.generated.fetch_add(1, Ordering::Relaxed);
                    st.keys.push_back(Ready { asked, key });
                }
                Ok(_) => {
                    self.generated.fetch_add(1, Ordering::Relaxed);
                    self.discarded.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let refused = matches!(&e, crate::envelope::EnvelopeError::Kms(k) if k.is_access_refusal());
                    if refused {
                        self.refusals.fetch_add(1, Ordering::Relaxed);
                        self.drop_all(&mut st);
                    }
                    log::warn!(
                        "data-key pool: no key generated ahead under {} ({}): {e}",
                        self.key_id,
                        if refused {
                            "the pool is emptied"
                        } else {
                            "creates ask the key service themselves meanwhile"
                        }
                    );
                    st.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
    }
}

impl DataKeyPool {
    /// A pool of keys under `key_id` from `ks` (the mount's counting
    /// service). Its filler thread starts at the first create, in the
    /// process that serves (the mount daemon, after its fork).
    pub fn new(ks: Arc<dyn KeyService>, key_id: String, cfg: PoolConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                ks,
                key_id,
                cfg: PoolConfig {
                    size: cfg.size.max(1),
                    max_age: cfg.max_age,
                },
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                generated: AtomicU64::new(0),
                used: AtomicU64::new(0),
                discarded: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
            }),
        }
    }

    /// A key for a new file under `key_id`, if the pool holds one young
    /// enough (None: the create asks the key service itself). Tells the
    /// filler that creates are coming either way.
    pub fn take(&self, key_id: &str) -> Option<FreshKey> {
        let s = &self.shared;
        if key_id != s.key_id {
            return None;
        }
        let now = Instant::now();
        let mut st = lock(&s.state);
        st.last_take = Some(now);
        s.expire(&mut st, now);
        let got = st.keys.pop_front();
        if !st.filler && !st.stopped {
            let shared = s.clone();
            match std::thread::Builder::new()
                .name("kmsfs-keypool".into())
                .spawn(move || shared.fill())
            {
                Ok(_) => st.filler = true,
                Err(e) => log::warn!("data-key pool: no filler thread: {e}"),
            }
        }
        drop(st);
        s.wake.notify_one();
        got.map(|r| {
            s.used.fetch_add(1, Ordering::Relaxed);
            r.key
        })
    }

    /// The key service refused a call of the mount (a create, an open):
    /// the key may have been disabled, so no key made before serves a
    /// create.
    pub fn refused(&self) {
        let s = &self.shared;
        let mut st = lock(&s.state);
        s.refusals.fetch_add(1, Ordering::Relaxed);
        s.drop_all(&mut st);
    }

    /// What the pool did so far.
    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        PoolStats {
            ready: lock(&s.state).keys.len(),
            generated: s.generated.load(Ordering::Relaxed),
            used: s.used.load(Ordering::Relaxed),
            discarded: s.discarded.load(Ordering::Relaxed),
            refusals: s.refusals.load(Ordering::Relaxed),
        }
    }

    /// The settings.
    pub fn config(&self) -> PoolConfig {
        self.shared.cfg
    }
}

impl Drop for DataKeyPool {
    /// Stops the filler and zeroizes the keys now (a call in flight brings
    /// back a key that is dropped at once).
    fn drop(&mut self) {
        let s = &self.shared;
        let mut st = lock(&s.state);
        st.stopped = true;
        st.keys.clear();
        drop(st);
        s.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::file_context;
    use crate::kms::{DataKey, KmsError, Request, Response};
    use std::sync::atomic::AtomicBool;

    /// Gives keys until `disabled` is set, then refuses; counts calls.
    struct Keys {
        disabled: AtomicBool,
        calls: AtomicU64,
    }

    impl KeyService for Keys {
        fn call(&self, _: &RequestContext<'_>, r: Request<'_>) -> Result<Response, KmsError> {
            let Request::GenerateDataKey {
                key_id, context, ..
            } = r
            else {
                return Err(KmsError::internal("only GenerateDataKey here".into()));
            };
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.disabled.load(Ordering::Relaxed) {
                return Err(KmsError::Disabled {
                    key_id: key_id.into(),
                });
            }
            let n = self.calls.load(Ordering::Relaxed);
            // The wrapped key carries the context, so a test can check it.
            let mut blob = n.to_le_bytes().to_vec();
            blob.extend(context.0.values().flat_map(|v| v.bytes()));
            Ok(Response::DataKey(DataKey {
                key_id: key_id.into(),
                key_material_version: 1,
                plaintext: crate::crypto::SecretBytes::new(vec![n as u8; 32]),
                ciphertext_blob: blob,
            }))
        }
        fn flush_audit(&self) {}
        fn audits_file_access(&self) -> bool {
            false
        }
        fn generation(&self) -> u64 {
            0
        }
    }

    fn pool(size: usize, max_age: Duration) -> (Arc<Keys>, DataKeyPool) {
        let ks = Arc::new(Keys {
            disabled: AtomicBool::new(false),
            calls: AtomicU64::new(0),
        });
        let p = DataKeyPool::new(ks.clone(), "k".into(), PoolConfig { size, max_age });
        (ks, p)
    }

    fn until(what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(20), "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn keys_are_made_as_a_create_makes_them_and_used_once() {
        let (_ks, p) = pool(4, Duration::from_secs(60));
        assert!(p.take("k").is_none(), "an empty pool gives nothing");
        until("refilled", || p.stats().ready == 4);
        assert!(p.take("other-key").is_none());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let k = p.take("k").expect("a pooled key");
            // Bound to its own file id, as a create binds it.
            let ctx = file_context(&k.file_id);
            let hex = ctx.0.values().next().expect("file id").clone();
            assert!(k.key.ciphertext_blob.ends_with(hex.as_bytes()));
            assert!(
                seen.insert(k.key.ciphertext_blob.clone()),
                "a key given twice"
            );
        }
        until("refilled again", || p.stats().ready == 4);
        let s = p.stats();
        assert_eq!(s.used, 4);
        assert!(s.generated >= 8, "{s:?}");
    }

    #[test]
    fn a_refusal_empties_the_pool_and_old_keys_age_out() {
        let (ks, p) = pool(4, Duration::from_secs(60));
        p.take("k");
        until("filled", || p.stats().ready == 4);
        p.refused();
        assert_eq!(p.stats().ready, 0);
        assert!(p.take("k").is_none());
        // The filler's own refusal empties it too.
        until("filled", || p.stats().ready == 4);
        ks.disabled.store(true, Ordering::Relaxed);
        p.take("k").expect("made before the disable");
        until("emptied", || {
            p.stats().ready == 0 && p.stats().refusals == 2
        });
        assert!(p.take("k").is_none());

        let (_ks, p) = pool(2, Duration::from_millis(200));
        p.take("k");
        until("one made", || p.stats().generated >= 1);
        // Keys are made only within 200 ms of the take: all are older than
        // 200 ms after 450.
        std::thread::sleep(Duration::from_millis(450));
        let k = p.take("k");
        assert!(k.is_none(), "a key older than the bound was given");
        assert!(p.stats().discarded >= 1);
    }

    #[test]
    fn an_idle_pool_asks_for_nothing() {
        let (ks, p) = pool(3, Duration::from_millis(100));
        p.take("k");
        until("one made", || p.stats().generated >= 1);
        // Aged out (nothing takes): the last take is as old.
        until("aged out", || p.stats().ready == 0);
        let calls = ks.calls.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            ks.calls.load(Ordering::Relaxed),
            calls,
            "an idle pool kept asking"
        );
    }
}
