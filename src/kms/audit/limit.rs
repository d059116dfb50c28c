//! What keeps one user from filling the disk through the trail: the
//! mount's and a server's records (never the command line's, nor a change
//! to the keystore) pass through a `Limiter` before they are queued.
//!
//! - **Aggregation**: a file access repeated by the same user (uid, gid) on
//!   the same path, key, key version, operation and outcome within `window`
//!   of the first is not written again: the first is written as it was, and
//!   when the window closes one record says how many repeats followed
//!   (`additionalEventData.aggregated`), as CloudTrail summarizes repeated
//!   events. The chain and signatures cover both.
//! - **Rate**: each uid but root has a token bucket (`rate` records a
//!   second, `burst` at once); records beyond it are counted, not written,
//!   and one `AuditRecordsSuppressed` record per uid and window says how
//!   many, of which operations, keys and paths.
//! - **Size cap**: once the trail's files pass `max_bytes`, every user but
//!   root gets only those per-window summaries; the crossing is logged at
//!   error level and recorded (`AuditTrailSizeCapReached`).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::record::{EVENT_SOURCE, EVENT_VERSION};

/// How long repeats of one access are folded into one record.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Records a second one uid may have written (sustained) ...
pub const RATE: f64 = 10.0;
/// ... and at once.
pub const BURST: f64 = 5000.0;
/// The trail's size past which users get only summaries: 4 GiB.
pub const MAX_BYTES: u64 = 4 << 30;
/// Most aggregation windows open at once (memory bound: each keeps its
/// first record as compact JSON, about 1 KiB, and two keys of its path;
/// past the bound records are written without folding, nothing is lost).
const MAX_WINDOWS: usize = 8_192;
/// Most distinct paths a suppression summary counts, keys it names, and
/// process ids an aggregated record lists.
const MAX_PATHS: usize = 10_000;
const MAX_KEYS: usize = 16;
const MAX_PIDS: usize = 16;
/// The environment variables that set the limits (read when the trail is
/// set up; the mount daemon's environment).
pub const RATE_ENV: &str = "KMSFS_AUDIT_RATE";
/// See `RATE_ENV`: records at once.
pub const BURST_ENV: &str = "KMSFS_AUDIT_BURST";
/// See `RATE_ENV`: bytes.
pub const MAX_BYTES_ENV: &str = "KMSFS_AUDIT_MAX_BYTES";
/// See `RATE_ENV`: seconds.
pub const WINDOW_ENV: &str = "KMSFS_AUDIT_WINDOW";

/// The limits in force.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Aggregation and summary window.
    pub window: Duration,
    /// Records a second per uid.
    pub rate: f64,
    /// Records at once per uid.
    pub burst: f64,
    /// The size cap of the trail's files, in bytes.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            window: WINDOW,
            rate: RATE,
            burst: BURST,
            max_bytes: MAX_BYTES,
        }
    }
}

impl Limits {
    /// The defaults, with what the environment sets (a value that does not
    /// parse is ignored, with a warning).
    pub fn from_env() -> Self {
        fn get<T: std::str::FromStr>(name: &str) -> Option<T> {
            let v = std::env::var(name).ok()?;
            let parsed = v.trim().parse().ok();
            if parsed.is_none() {
                log::warn!("{name}={v:?} is not a number; the default is used");
            }
            parsed
        }
        let d = Self::default();
        Self {
            window: get::<u64>(WINDOW_ENV).map_or(d.window, Duration::from_secs),
            rate: get(RATE_ENV).unwrap_or(d.rate),
            burst: get(BURST_ENV).unwrap_or(d.burst),
            max_bytes: get(MAX_BYTES_ENV).unwrap_or(d.max_bytes),
        }
    }
}

/// Repeats of one access, folded.
struct Window {
    opened: Instant,
    /// Who did what to which file under which key, whatever the outcome.
    subject: String,
    /// The first record, which was written, as compact JSON (a `Value`
    /// costs several times its text: 20,000 of them held 90 MB).
    first: String,
    repeats: u64,
    cache_hits: u64,
    last_time: Value,
    pids: BTreeSet<u64>,
}

/// One uid's token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What was not written for one uid in the current window.
struct Suppressed {
    since: Instant,
    identity: Value,
    first_time: Value,
    last_time: Value,
    count: u64,
    refused: u64,
    events: BTreeMap<String, u64>,
    keys: BTreeSet<String>,
    paths: HashSet<String>,
    paths_beyond: bool,
    over_cap: bool,
}

/// Counters for `kmsfs status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Repeats folded into aggregated records.
    pub repeats: u64,
    /// Records suppressed (rate or size cap).
    pub suppressed: u64,
}

/// The limiter of one trail.
pub struct Limiter {
    limits: Limits,
    windows: HashMap<String, Window>,
    buckets: HashMap<u64, Bucket>,
    suppressed: HashMap<u64, Suppressed>,
    /// The window open for each subject (at most one: another outcome closes it).
    by_subject: HashMap<String, String>,
    /// Summaries of windows closed early, written with the next due ones.
    closed: Vec<Value>,
    over_cap: bool,
    counts: Counts,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

impl Limiter {
    /// A limiter with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            windows: HashMap::new(),
            buckets: HashMap::new(),
            suppressed: HashMap::new(),
            by_subject: HashMap::new(),
            closed: Vec::new(),
            over_cap: false,
            counts: Counts::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counters so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// True while the trail is over its size cap.
    pub fn over_cap(&self) -> bool {
        self.over_cap
    }

    /// Tells the limiter the trail's size; true when it just passed the cap.
    pub fn set_size(&mut self, bytes: u64) -> bool {
        let over = bytes >= self.limits.max_bytes;
        let crossed = over && !self.over_cap;
        self.over_cap = over;
        crossed
    }

    /// Decides one record of the mount or a server: `Some` to write it now,
    /// `None` when it was folded into a count.
    pub fn admit(&mut self, rec: Value, now: Instant) -> Option<Value> {
        let source = str_at(&rec, &["userIdentity", "source"]);
        if !matches!(source, Some("mount" | "server")) {
            return Some(rec);
        }
        let uid = u64_at(&rec, &["userIdentity", "uid"]).unwrap_or(u64::MAX);
        let key = access_key(&rec);
        if let Some(k) = &key
            && let Some(w) = self.windows.get_mut(k)
            && now.duration_since(w.opened) < self.limits.window
        {
            w.repeats += 1;
            self.counts.repeats += 1;
            if rec["additionalEventData"]["cacheHit"].as_bool() == Some(true) {
                w.cache_hits += 1;
            }
            w.last_time = rec["eventTime"].clone();
            if let Some(p) = u64_at(&rec, &["userIdentity", "pid"])
                && w.pids.len() < MAX_PIDS
            {
                w.pids.insert(p);
            }
            return None;
        }
        // Only repeats in a row fold: the same access with another outcome
        // (refused after allowed, or a new key version) closes the window of
        // the old one, so that "allowed, refused, allowed" reads as such.
        let subject = subject_of(&rec);
        if let Some(sub) = &subject {
            self.close_subject(sub);
        }
        if uid != 0 && (self.over_cap || !self.take_token(uid, now)) {
            self.suppress(uid, &rec, now);
            return None;
        }
        if let (Some(k), Some(subject)) = (key, subject)
            && self.windows.len() < MAX_WINDOWS
        {
            self.by_subject.insert(subject.clone(), k.clone());
            self.windows.insert(
                k,
                Window {
                    opened: now,
                    subject,
                    first: rec.to_string(),
                    repeats: 0,
                    cache_hits: 0,
                    last_time: rec["eventTime"].clone(),
                    pids: BTreeSet::new(),
                },
            );
        }
        Some(rec)
    }

    fn take_token(&mut self, uid: u64, now: Instant) -> bool {
        let (rate, burst) = (self.limits.rate, self.limits.burst);
        let b = self.buckets.entry(uid).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let dt = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn suppress(&mut self, uid: u64, rec: &Value, now: Instant) {
        self.counts.suppressed += 1;
        let over_cap = self.over_cap;
        let s = self.suppressed.entry(uid).or_insert_with(|| {
            let why = if over_cap {
                "the trail is over its size cap".to_string()
            } else {
                format!(
                    "it passes {} records a second (burst {})",
                    self.limits.rate, self.limits.burst
                )
            };
            log::warn!(
                "audit trail: records of uid {uid} are counted, not written, for {} s: {why}",
                self.limits.window.as_secs()
            );
            Suppressed {
                since: now,
                identity: rec["userIdentity"].clone(),
                first_time: rec["eventTime"].clone(),
                last_time: Value::Null,
                count: 0,
                refused: 0,
                events: BTreeMap::new(),
                keys: BTreeSet::new(),
                paths: HashSet::new(),
                paths_beyond: false,
                over_cap,
            }
        });
        s.count += 1;
        s.last_time = rec["eventTime"].clone();
        if rec.get("errorCode").is_some() {
            s.refused += 1;
        }
        let name = str_at(rec, &["eventName"]).unwrap_or("?").to_string();
        *s.events.entry(name).or_insert(0) += 1;
        if let Some(arn) =
            str_at(rec, &["resources", "0", "ARN"]).or_else(|| rec["resources"][0]["ARN"].as_str())
            && s.keys.len() < MAX_KEYS
        {
            s.keys.insert(arn.to_string());
        }
        if let Some(p) = str_at(rec, &["additionalEventData", "path"]) {
            if s.paths.len() < MAX_PATHS {
                s.paths.insert(p.to_string());
            } else if !s.paths.contains(p) {
                s.paths_beyond = true;
            }
        }
    }

    /// Closes every window of `subject` (another outcome of the same access
    /// ends them); their summaries go out with the next due records.
    fn close_subject(&mut self, subject: &str) {
        if let Some(k) = self.by_subject.remove(subject)
            && let Some(w) = self.windows.remove(&k)
            && w.repeats > 0
        {
            self.closed.push(aggregated(w, self.limits.window));
        }
    }

    /// The records now due: the summary of every window closed (all of
    /// them when `all`, at a flush) and of every suppression period ended.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<Value> {
        let window = self.limits.window;
        let mut out = std::mem::take(&mut self.closed);
        let closed: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, w)| all || now.duration_since(w.opened) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        for k in closed {
            if let Some(w) = self.windows.remove(&k) {
                if self.by_subject.get(&w.subject) == Some(&k) {
                    self.by_subject.remove(&w.subject);
                }
                if w.repeats > 0 {
                    out.push(aggregated(w, window));
                }
            }
        }
        let ended: Vec<u64> = self
            .suppressed
            .iter()
            .filter(|(_, s)| all || now.duration_since(s.since) >= window)
            .map(|(u, _)| *u)
            .collect();
        for u in ended {
            if let Some(s) = self.suppressed.remove(&u) {
                out.push(suppressed(s, &self.limits));
            }
        }
        // Buckets full again are forgotten (memory bound).
        let (rate, burst) = (self.limits.rate, self.limits.burst);
        self.buckets
            .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        out
    }
}

/// What makes two accesses "the same": user, operation, key and version,
/// path and outcome. None for a record that is not a file access.
fn access_key(rec: &Value) -> Option<String> {
    let path = str_at(rec, &["additionalEventData", "path"])?;
    let id = &rec["userIdentity"];
    Some(format!(
        "{}\0{}\0{}\0{}\0{}\0{}\0{}",
        id["uid"],
        id["gid"],
        rec["eventName"],
        rec["resources"][0]["ARN"],
        rec["resources"][0]["keyMaterialId"],
        rec["errorCode"],
        path
    ))
}

/// Who did what to which file under which key: `access_key` without the
/// outcome and the key version.
fn subject_of(rec: &Value) -> Option<String> {
    let path = str_at(rec, &["additionalEventData", "path"])?;
    let id = &rec["userIdentity"];
    Some(format!(
        "{}\0{}\0{}\0{}\0{}",
        id["uid"], id["gid"], rec["eventName"], rec["resources"][0]["ARN"], path
    ))
}

/// The record of a window's repeats: the first record's fields, a new id,
/// the last repeat's time, and `aggregated`.
fn aggregated(w: Window, window: Duration) -> Value {
    // The text was made from a Value just above: it parses back.
    let mut r: Value = serde_json::from_str(&w.first).unwrap_or_else(|_| json!({}));
    let first_time = r["eventTime"].clone();
    r["eventID"] = json!(uuid::Uuid::new_v4().to_string());
    r["eventTime"] = w.last_time.clone();
    if !r["additionalEventData"].is_object() {
        r["additionalEventData"] = json!({});
    }
    r["additionalEventData"]["cacheHit"] = json!(w.cache_hits == w.repeats);
    r["additionalEventData"]["aggregated"] = json!({
        "repeats": w.repeats,
        "cacheHits": w.cache_hits,
        "after": first_time,
        "lastTime": w.last_time,
        "windowSeconds": window.as_secs(),
        "pids": w.pids.into_iter().collect::<Vec<_>>(),
    });
    r
}

/// The record of what one uid had suppressed.
fn suppressed(s: Suppressed, l: &Limits) -> Value {
    json!({
        "eventVersion": EVENT_VERSION,
        "eventTime": s.last_time,
        "eventSource": EVENT_SOURCE,
        "eventName": "AuditRecordsSuppressed",
        "eventType": "kmsfsTrail",
        "eventID": uuid::Uuid::new_v4().to_string(),
        "userIdentity": s.identity,
        "resources": s.keys.iter().map(|k| json!({"ARN": k, "type": "AWS::KMS::Key"})).collect::<Vec<_>>(),
        "additionalEventData": {
            "suppressedRecords": s.count,
            "refused": s.refused,
            "events": s.events,
            "distinctPaths": s.paths.len(),
            "distinctPathsAtLeast": s.paths_beyond,
            "firstTime": s.first_time,
            "lastTime": s.last_time,
            "reason": if s.over_cap { "sizeCap" } else { "rateLimit" },
            "limit": {"recordsPerSecond": l.rate, "burst": l.burst, "maxBytes": l.max_bytes},
        },
    })
}

/// The record written when the trail passes its size cap.
pub fn cap_reached(bytes: u64, max: u64) -> Value {
    json!({
        "eventVersion": EVENT_VERSION,
        "eventTime": super::time::format(crate::kms::clock::now().unwrap_or(0)),
        "eventSource": EVENT_SOURCE,
        "eventName": "AuditTrailSizeCapReached",
        "eventType": "kmsfsTrail",
        "eventID": uuid::Uuid::new_v4().to_string(),
        "additionalEventData": {"bytes": bytes, "maxBytes": max},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(uid: u64, path: &str, t: &str) -> Value {
        json!({
            "eventName": "Decrypt", "eventTime": t,
            "userIdentity": {"uid": uid, "gid": 1, "pid": 7, "source": "mount"},
            "resources": [{"ARN": "arn:k", "keyMaterialId": "1"}],
            "additionalEventData": {"path": path, "cacheHit": true},
        })
    }

    #[test]
    fn repeats_fold_into_one_record_with_their_count() {
        let mut l = Limiter::new(Limits::default());
        let t0 = Instant::now();
        assert!(l.admit(open(5, "a", "t0"), t0).is_some());
        for i in 0..999 {
            assert!(l.admit(open(5, "a", &format!("t{i}")), t0).is_none());
        }
        // Another user, another path: written.
        assert!(l.admit(open(6, "a", "t"), t0).is_some());
        assert!(l.admit(open(5, "b", "t"), t0).is_some());
        assert!(l.due(t0, false).is_empty());
        let due = l.due(t0 + WINDOW, false);
        assert_eq!(due.len(), 1);
        let a = &due[0]["additionalEventData"]["aggregated"];
        assert_eq!(
            (a["repeats"].as_u64(), a["after"].as_str()),
            (Some(999), Some("t0"))
        );
        assert_eq!(due[0]["eventTime"], "t998");
        // The window is closed: the next access is written again.
        assert!(l.admit(open(5, "a", "x"), t0 + WINDOW).is_some());
    }

    #[test]
    fn only_repeats_in_a_row_fold_another_outcome_closes_the_window() {
        let mut l = Limiter::new(Limits::default());
        let t0 = Instant::now();
        let refused = |t: &str| {
            let mut r = open(5, "a", t);
            r["errorCode"] = json!("DisabledException");
            r
        };
        assert!(l.admit(open(5, "a", "1"), t0).is_some());
        assert!(l.admit(open(5, "a", "2"), t0).is_none());
        // Refused after allowed: written, and the allowed window's count is due.
        assert!(l.admit(refused("3"), t0).is_some());
        let due = l.due(t0, false);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0]["additionalEventData"]["aggregated"]["repeats"], 1);
        // Allowed again: written at once, not folded into the first.
        assert!(l.admit(open(5, "a", "4"), t0).is_some());
        assert!(l.admit(open(5, "a", "5"), t0).is_none());
        let due = l.due(t0, true);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0]["eventTime"], "5");
    }

    #[test]
    fn a_uid_past_its_rate_is_counted_and_root_is_not_limited() {
        let mut l = Limiter::new(Limits {
            rate: 1.0,
            burst: 10.0,
            ..Limits::default()
        });
        let t0 = Instant::now();
        let written = (0..100)
            .filter(|i| l.admit(open(5, &format!("f{i}"), "t"), t0).is_some())
            .count();
        assert_eq!(written, 10);
        assert_eq!(
            (0..100)
                .filter(|i| l.admit(open(0, &format!("f{i}"), "t"), t0).is_some())
                .count(),
            100
        );
        let due = l.due(t0, true);
        let s = due
            .iter()
            .find(|r| r["eventName"] == "AuditRecordsSuppressed")
            .unwrap();
        assert_eq!(s["additionalEventData"]["suppressedRecords"], 90);
        assert_eq!(s["additionalEventData"]["distinctPaths"], 90);
        assert_eq!(s["userIdentity"]["uid"], 5);
        // Over the size cap, users get only summaries; root still writes.
        assert!(l.set_size(MAX_BYTES));
        assert!(!l.set_size(MAX_BYTES + 1));
        assert!(l.admit(open(5, "new", "t"), t0 + WINDOW * 10).is_none());
        assert!(l.admit(open(0, "new", "t"), t0 + WINDOW * 10).is_some());
        // The command line is never limited.
        let mut cli = open(5, "z", "t");
        cli["userIdentity"]["source"] = json!("cli");
        assert!(l.admit(cli, t0 + WINDOW * 10).is_some());
    }
}
