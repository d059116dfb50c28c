//! The checkpoint a prune leaves: one line at the new start of the trail
//! (and the same line at the end of the prune's archive) that stands for
//! the records removed. It carries the chain hash of the last removed
//! record, so the first kept record chains to it as it did before; the
//! count and time range of what was removed; and an Ed25519 signature over
//! all of it with the keystore's trail key, so whoever has the public key
//! can check it and whoever can only write the trail cannot forge one.
//! The line itself is outside the chain: nothing hashes it.
#![forbid(unsafe_code)]

use serde_json::{Map, Value, json};

use super::record::{CHECKPOINT_EVENT_TYPE, EVENT_SOURCE, EVENT_VERSION};
use super::sign::{CheckpointFields, Signed};
use super::time;
use super::trail::hex_to_bytes;
use crate::crypto::hex;
use crate::kms::clock;

/// A checkpoint as read from a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The first record it stands for.
    pub from: u64,
    /// The last: the next record chains to it.
    pub through: u64,
    /// How many records were removed.
    pub records: u64,
    /// The first and last removed record's times, and the prune's.
    pub first_time: i64,
    /// See `first_time`.
    pub last_time: i64,
    /// See `first_time`.
    pub pruned_at: i64,
    /// The SHA-256 of the last removed record's line.
    pub last_digest: [u8; 32],
    /// `checkpointAlgorithm`, `checkpointSignature`, `signingKey`, `keystoreId`.
    pub algorithm: String,
    /// See `algorithm`.
    pub signature: String,
    /// See `algorithm`.
    pub signing_key: Option<String>,
    /// See `algorithm`.
    pub keystore_id: Option<String>,
}

impl Checkpoint {
    /// The signed fields.
    pub fn fields(&self) -> CheckpointFields<'_> {
        CheckpointFields {
            from: self.from,
            through: self.through,
            records: self.records,
            first_time: self.first_time,
            last_time: self.last_time,
            pruned_at: self.pruned_at,
            last_digest: &self.last_digest,
        }
    }

    /// Reads a checkpoint record; None when `v` is not one. Err: it says it
    /// is one but a field is missing or malformed.
    pub fn parse(v: &Value) -> Option<Result<Self, String>> {
        if v.get("eventType").and_then(Value::as_str) != Some(CHECKPOINT_EVENT_TYPE) {
            return None;
        }
        Some(Self::fields_of(v))
    }

    fn fields_of(v: &Value) -> Result<Self, String> {
        let c = &v["checkpoint"];
        let n = |f: &str| c.get(f).and_then(Value::as_u64).ok_or(format!("no {f}"));
        let t = |f: &str| {
            c.get(f)
                .and_then(Value::as_str)
                .and_then(clock::parse_rfc3339)
                .ok_or(format!("no {f}"))
        };
        let s = |f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
        let last_digest = c
            .get("lastDigest")
            .and_then(Value::as_str)
            .and_then(hex_to_bytes)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or("no lastDigest")?;
        Ok(Self {
            from: n("prunedFrom")?,
            through: n("prunedThrough")?,
            records: n("prunedRecords")?,
            first_time: t("firstEventTime")?,
            last_time: t("lastEventTime")?,
            pruned_at: v
                .get("eventTime")
                .and_then(Value::as_str)
                .and_then(clock::parse_rfc3339)
                .ok_or("no eventTime")?,
            last_digest,
            algorithm: s("checkpointAlgorithm").unwrap_or_default(),
            signature: s("checkpointSignature").unwrap_or_default(),
            signing_key: s("signingKey"),
            keystore_id: s("keystoreId"),
        })
    }
}

/// The checkpoint record for `c`, signed `sig`.
pub fn record(c: &CheckpointFields<'_>, sig: &Signed, keystore_id: &str) -> Value {
    let mut m = Map::new();
    m.insert("eventVersion".into(), json!(EVENT_VERSION));
    m.insert("eventTime".into(), json!(time::format(c.pruned_at)));
    m.insert("eventSource".into(), json!(EVENT_SOURCE));
    m.insert("eventName".into(), json!("Checkpoint"));
    m.insert("eventType".into(), json!(CHECKPOINT_EVENT_TYPE));
    m.insert("eventID".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert(
        "checkpoint".into(),
        json!({
            "prunedFrom": c.from,
            "prunedThrough": c.through,
            "prunedRecords": c.records,
            "firstEventTime": time::format(c.first_time),
            "lastEventTime": time::format(c.last_time),
            "lastDigest": hex(c.last_digest),
        }),
    );
    m.insert("checkpointAlgorithm".into(), json!(sig.algorithm));
    m.insert("checkpointSignature".into(), json!(sig.signature));
    m.insert("keystoreId".into(), json!(keystore_id));
    m.insert("signingKey".into(), json!(sig.key_fingerprint));
    Value::Object(m)
}

/// One line describing a checkpoint, for `audit show` and `verify`.
pub fn describe(c: &Checkpoint) -> String {
    format!(
        "records {}-{} ({} record(s) from {} to {}) were pruned at {}",
        c.from,
        c.through,
        c.records,
        time::format(c.first_time),
        time::format(c.last_time),
        time::format(c.pruned_at)
    )
}
