//! Checks of the parsers of untrusted input, shared by the cargo-fuzz targets
//! (fuzz/fuzz_targets/*.rs, which include this file) and the deterministic
//! parser test in the suite (tests/fuzz_parsers.rs). Each check takes
//! arbitrary bytes, feeds them to one parser and panics only when a property
//! fails; a panic inside kmsfs is a finding as much as a failed assertion.
//!
//! The binary formats end in checksums or AEAD tags that random mutation never
//! gets past, so their inputs are a flags byte and an edit script applied to a
//! valid object from the [`Fixture`] (bit 0), with the checksums recomputed
//! after the edits (bit 1): that is how a fuzzer reaches the slot and frame
//! fields behind the checksums. Without bit 0 the rest of the input is parsed
//! as it is.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use kmsfs::crypto::sha256;
use kmsfs::envelope;
use kmsfs::format::{self, FIXED_LEN, HEADER_LEN, Header};
use kmsfs::kms::blob::BlobHeader;
use kmsfs::kms::keystore::{self, Frame, KeystoreDir, RootKey, RootMode};
use kmsfs::kms::model::{KeyRecord, StoreState};
use kmsfs::kms::policy::KeyPolicy;
use kmsfs::kms::{
    Caller, CreateMode, DataKeySpec, EncryptionContext, KeyServiceExt, KeyState, LocalKeyStore,
    Operation, RequestContext,
};
use serde_json::Value;

/// Flags byte: start from the fixture's valid object and apply the edit script.
pub const FLAG_BASE: u8 = 1;
/// Flags byte: recompute the checksums after the edits.
pub const FLAG_REPAIR: u8 = 2;
/// Flags byte (header, keystore): the second form of the target (a whole
/// sealed file read through `EncryptedFile`; a keystore body through a keystore open).
pub const FLAG_ALT: u8 = 4;

/// Longest input an edit script may grow an object to, beyond its base.
const MAX_GROWTH: usize = 4096;

/// Valid objects to mutate, and the keys to check them with. Made once per
/// process (a fuzz target keeps it in a static).
pub struct Fixture {
    tmp: tempfile::TempDir,
    /// The fixture's keystore (root-key-file mode, one key).
    pub ks: LocalKeyStore,
    root: RootKey,
    keystore_id: [u8; 16],
    /// The caller of every operation (no key policy: allowed).
    pub caller: Caller,
    /// The key everything is wrapped under.
    pub key_id: String,
    /// A data key wrapped by `ks` under `ctx`, and its plaintext.
    pub blob: Vec<u8>,
    blob_plain: Vec<u8>,
    /// The context `blob` was made with.
    pub ctx: EncryptionContext,
    /// A whole sealed file (two and a half blocks) and its plaintext.
    pub sealed: Vec<u8>,
    sealed_plain: Vec<u8>,
    /// The keystore file `keystore.kms` of `ks`.
    pub keystore_file: Vec<u8>,
    /// A keystore body (JSON) with keys in every state, to mutate.
    pub body_seed: Vec<u8>,
    /// A keystore directory (root.key of `ks`) where keystore bodies are opened.
    scratch_ks: PathBuf,
    /// Where sealed files are written to be read.
    scratch_file: PathBuf,
}

impl Fixture {
    /// A keystore with one key, a wrapped data key and a sealed file, in a
    /// temporary directory (under $TMPDIR).
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("kmsfs-fuzz-")
            .tempdir()
            .expect("temp dir");
        let ks_dir = tmp.path().join("ks");
        let ks = LocalKeyStore::create(&ks_dir, CreateMode::RootKeyFile).expect("keystore");
        let caller = Caller {
            uid: 0,
            gid: 0,
            pid: std::process::id(),
            access_key: None,
        };
        let key_id = ks.create_key(&caller, "fuzz").expect("key").key_id;
        let ctx = EncryptionContext::with("kmsfs:file", "00112233445566778899aabbccddeeff");
        let dk = ks
            .generate_data_key(
                &RequestContext::cli(caller),
                &key_id,
                DataKeySpec::Aes256,
                &ctx,
            )
            .expect("data key");

        let sealed_plain: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let sealed_path = tmp.path().join("sealed");
        let out = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&sealed_path)
            .expect("sealed file");
        envelope::seal(
            &mut &sealed_plain[..],
            out,
            &ks,
            &RequestContext::cli(caller),
            &key_id,
            format::Layout::NEW,
        )
        .expect("seal");
        let sealed = std::fs::read(&sealed_path).expect("read sealed");

        let keystore_file =
            std::fs::read(ks_dir.join(keystore::CURRENT_FILE)).expect("read keystore");
        let keystore_id = Frame::parse("fixture", &keystore_file)
            .expect("fixture keystore parses")
            .keystore_id;
        let root = RootKey::obtain(&KeystoreDir::new(&ks_dir), RootMode::KeyFile, &|| {
            unreachable!("no passphrase in key-file mode")
        })
        .expect("root key");

        let scratch_ks = tmp.path().join("scratch-ks");
        std::fs::create_dir(&scratch_ks).expect("scratch keystore dir");
        set_mode(&scratch_ks, 0o700);
        let root_key_file = scratch_ks.join(keystore::ROOT_KEY_FILE);
        std::fs::copy(ks_dir.join(keystore::ROOT_KEY_FILE), &root_key_file).expect("root.key");
        set_mode(&root_key_file, 0o600);
        let scratch_file = tmp.path().join("scratch-file");
        let body_seed = body_seed();
        Fixture {
            tmp,
            ks,
            root,
            keystore_id,
            caller,
            key_id,
            blob: dk.ciphertext_blob,
            blob_plain: dk.plaintext.expose().to_vec(),
            ctx,
            sealed,
            sealed_plain,
            keystore_file,
            body_seed,
            scratch_ks,
            scratch_file,
        }
    }

    /// The fixture's valid header (the first 1 KiB of its sealed file).
    pub fn header(&self) -> &[u8] {
        &self.sealed[..HEADER_LEN as usize]
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// A keystore body with an Enabled key (aliased, rotated, with a policy and
/// a rotation period), a key waiting for import, one pending deletion, a
/// disabled one and a tombstone.
fn body_seed() -> Vec<u8> {
    let now = 1_700_000_000;
    let mut s = StoreState::default();
    let mut a = KeyRecord::generate("enabled", now).expect("key");
    a.policy = Some(serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "kms:*"},
            {"Effect": "Deny", "Principal": {"kmsfs": ["uid:1000", "gid:50"]}, "Action": "kms:Decrypt"}
        ]
    }));
    a.rotation_period_days = Some(90);
    a.next_rotation = Some(now + 90 * 86_400);
    let mut second = a.materials[0].clone();
    second.version = 2;
    second.material = kmsfs::crypto::SecretBytes::random(32).expect("random");
    second.rotation = Some(kmsfs::kms::model::RotationType::OnDemand);
    a.materials.push(second);
    a.current_version = 2;
    let b = KeyRecord::new_external("external", now).expect("key");
    let mut c = KeyRecord::generate("pending deletion", now).expect("key");
    c.state = KeyState::PendingDeletion;
    c.deletion_date = Some(now + 30 * 86_400);
    c.pending_window_days = Some(30);
    let mut d = KeyRecord::generate("disabled", now).expect("key");
    d.state = KeyState::Disabled;
    s.aliases.insert("alias/fuzz".into(), a.key_id.clone());
    s.deleted
        .insert("5a3c1e0e-0000-4000-8000-000000000000".into(), now);
    for k in [a, b, c, d] {
        s.keys.insert(k.key_id.clone(), k);
    }
    s.to_sealed_json().expect("serialize").to_vec()
}

fn set_mode(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Splits an input into its flags byte and the rest.
fn flags(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((f, rest)) => (*f, rest),
        None => (0, data),
    }
}

/// Applies an edit script to `base`: 4-byte operations `[kind, pos_hi, pos_lo,
/// value]`; kind 0 XORs a byte, 1 sets one, 2 truncates, 3 inserts one.
/// Positions wrap around the current length.
pub fn apply_edits(base: &[u8], script: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for op in script.chunks_exact(4) {
        let pos = usize::from(u16::from_be_bytes([op[1], op[2]]));
        let v = op[3];
        match op[0] % 4 {
            0 if !b.is_empty() => {
                let i = pos % b.len();
                b[i] ^= v;
            }
            1 if !b.is_empty() => {
                let i = pos % b.len();
                b[i] = v;
            }
            2 => b.truncate(pos % (b.len() + 1)),
            3 if b.len() < base.len() + MAX_GROWTH => {
                let i = pos % (b.len() + 1);
                b.insert(i, v);
            }
            _ => {}
        }
    }
    b
}

/// The input of a binary target: the raw bytes, or the edited base.
fn input(data: &[u8], base: &[u8]) -> (u8, Vec<u8>) {
    let (f, rest) = flags(data);
    if f & FLAG_BASE != 0 {
        (f, apply_edits(base, rest))
    } else {
        (f, rest.to_vec())
    }
}

/// Recomputes the checksum of both header slots (SHA-256 of the fixed part
/// and the slot, in the slot's last 32 bytes).
fn repair_header(b: &mut [u8]) {
    if b.len() < HEADER_LEN as usize {
        return;
    }
    for i in 0..2 {
        let r = Header::slot_range(i);
        let body_end = r.end - 32;
        let sum = sha256(&[&b[..FIXED_LEN], &b[r.start..body_end]]);
        b[body_end..r.end].copy_from_slice(&sum);
    }
}

/// The file header parser (`format::Header::decode`), or with [`FLAG_ALT`] a
/// whole sealed file read through `envelope::EncryptedFile`.
///
/// Properties: a decoded header has a current slot, re-encodes, and decodes
/// from its encoding to itself; a sealed file reads, if at all, only as a
/// prefix of the plaintext it was made from (truncation at a block boundary
/// is a documented limit; any other change must fail).
pub fn header(fx: &Fixture, data: &[u8]) {
    if flags(data).0 & FLAG_ALT != 0 {
        return sealed_file(fx, data);
    }
    let (f, mut b) = input(data, fx.header());
    if f & FLAG_REPAIR != 0 {
        repair_header(&mut b);
    }
    let Ok(h) = Header::decode(&b) else {
        return;
    };
    let active = h.active().expect("a decoded header has a current slot");
    let enc = h.encode().expect("a decoded header encodes again");
    assert_eq!(
        Header::decode(&enc).expect("an encoded header decodes"),
        h,
        "decode(encode(h)) != h"
    );
    let (idx, next) = match h.next_slot(active.key_id.clone(), 1, active.wrapped_key.clone()) {
        Ok(n) => n,
        Err(_) => {
            assert_eq!(
                active.seq,
                u64::MAX,
                "only an exhausted sequence may refuse"
            );
            return;
        }
    };
    assert_ne!(
        Some(idx),
        h.active_index(),
        "a rewrap writes the inactive slot"
    );
    let mut h2 = h.clone();
    h2.slots[idx] = Some(next);
    let h2 = Header::decode(&h2.encode().expect("rewrapped header encodes")).expect("decodes");
    assert_eq!(
        h2.active_index(),
        Some(idx),
        "the rewrapped slot is current"
    );
}

fn sealed_file(fx: &Fixture, data: &[u8]) {
    let (f, mut b) = input(data, &fx.sealed);
    if f & FLAG_REPAIR != 0 {
        repair_header(&mut b);
    }
    let _ = std::fs::remove_file(&fx.scratch_file);
    std::fs::write(&fx.scratch_file, &b).expect("write scratch file");
    let file = std::fs::File::open(&fx.scratch_file).expect("open scratch file");
    // What `unseal` and the mount do, with a small buffer (unseal's 1 MiB one
    // is zeroized on drop: slow in debug builds).
    let read_all = || -> Result<Vec<u8>, envelope::EnvelopeError> {
        let enc = envelope::EncryptedFile::open(file, &fx.ks, &RequestContext::cli(fx.caller))?;
        let size = enc.plain_size()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 3000];
        while (out.len() as u64) < size {
            let n = enc.read_at(&mut buf, out.len() as u64)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    };
    if let Ok(out) = read_all() {
        assert!(
            fx.sealed_plain.starts_with(&out),
            "a changed sealed file read as {} bytes that are not the plaintext's",
            out.len()
        );
    }
}

/// The ciphertext blob: `BlobHeader::parse`, then Decrypt by the keystore
/// with the fixture's context (or, with [`FLAG_ALT`], the empty one).
///
/// Property: only the unchanged blob with its own context decrypts, and to
/// the data key it was made with.
pub fn blob(fx: &Fixture, data: &[u8]) {
    let (f, b) = input(data, &fx.blob);
    if let Ok(h) = BlobHeader::parse(&b) {
        assert!(b.len() >= h.overhead(), "a parsed blob has a full header");
        assert_eq!(h.encode()[..], b[..h.encoded_len()], "header round trip");
    }
    let ctx = if f & FLAG_ALT != 0 {
        EncryptionContext::new()
    } else {
        fx.ctx.clone()
    };
    if let Ok(d) = fx
        .ks
        .decrypt(&RequestContext::cli(fx.caller), &b, &ctx, None)
    {
        assert_eq!(b, fx.blob, "a changed blob decrypted");
        assert_eq!(ctx, fx.ctx, "the blob decrypted under another context");
        assert_eq!(d.plaintext.expose(), &fx.blob_plain[..]);
        assert_eq!(d.key_id, fx.key_id);
    }
}

/// The keystore file: `Frame::parse` and `unseal` with the keystore's root
/// key (checksum trailer recomputed with [`FLAG_REPAIR`]). With [`FLAG_ALT`]
/// the rest of the input is a keystore body (the JSON that the sealed part
/// holds): `StoreState::from_json`, and if it parses, a keystore sealed with
/// it is opened and its keys used.
///
/// Properties: only the unchanged file unseals; a body that parses survives
/// its own round trip; an Enabled key of a body that opens wraps and unwraps
/// a data key.
pub fn keystore(fx: &Fixture, data: &[u8]) {
    let (f, rest) = flags(data);
    if f & FLAG_ALT != 0 {
        return keystore_body(fx, rest);
    }
    let (f, mut b) = input(data, &fx.keystore_file);
    if f & FLAG_REPAIR != 0 && b.len() >= 32 {
        let n = b.len() - 32;
        let sum = sha256(&[&b[..n]]);
        b[n..].copy_from_slice(&sum);
    }
    let _ = keystore::unknown_version(&b);
    let _ = keystore::claimed_generation(&b);
    if let Ok(frame) = Frame::parse("fuzz", &b) {
        assert!(b.len() >= 32, "a parsed frame holds its checksum");
        if frame.unseal("fuzz", &fx.root).is_ok() {
            assert_eq!(b, fx.keystore_file, "a changed keystore file unsealed");
        }
    }
}

fn keystore_body(fx: &Fixture, body: &[u8]) {
    let Ok(state) = StoreState::from_json(body) else {
        return;
    };
    let json = state.to_sealed_json().expect("a parsed body serializes");
    let again = StoreState::from_json(&json).expect("a serialized body parses");
    assert_eq!(
        again.to_sealed_json().expect("serializes").as_slice(),
        json.as_slice(),
        "body round trip"
    );
    let Ok(file) = keystore::encode(&fx.keystore_id, &fx.root, 2, &state) else {
        return;
    };
    for name in [keystore::CURRENT_FILE, keystore::PREV_FILE] {
        let _ = std::fs::remove_file(fx.scratch_ks.join(name));
    }
    std::fs::write(fx.scratch_ks.join(keystore::CURRENT_FILE), &file).expect("write keystore");
    let Ok(ks) = LocalKeyStore::open(&fx.scratch_ks, &|| {
        unreachable!("no passphrase in key-file mode")
    }) else {
        return;
    };
    let Ok(keys) = ks.list_keys(&fx.caller) else {
        return;
    };
    for k in keys.iter().take(8) {
        let Ok(meta) = ks.describe_key(&RequestContext::cli(fx.caller), &k.key_id) else {
            continue;
        };
        if meta.key_state != KeyState::Enabled {
            continue;
        }
        // A key that the keystore calls Enabled may still refuse (no policy
        // grant, material expired): fine. If it wraps, it must unwrap.
        if let Ok(dk) = ks.generate_data_key(
            &RequestContext::cli(fx.caller),
            &k.key_id,
            DataKeySpec::Aes128,
            &fx.ctx,
        ) {
            let d = ks
                .decrypt(
                    &RequestContext::cli(fx.caller),
                    &dk.ciphertext_blob,
                    &fx.ctx,
                    None,
                )
                .expect("a data key just generated decrypts");
            assert_eq!(d.plaintext.expose(), dk.plaintext.expose());
        }
    }
}

/// Key policy JSON: `KeyPolicy::parse`. Property: a policy that parses is
/// evaluated for every operation and a spread of callers exactly as an
/// independent reading of the document says (explicit Deny wins, then any
/// Allow, else deny), and its stored form (`from_value`) evaluates the same.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((p, value)) = KeyPolicy::parse(text) else {
        return;
    };
    let stored = KeyPolicy::from_value(&value).expect("a parsed policy loads from its value");
    // The reference reads uid:N, gid:N and * only; names and conditions are
    // covered by the table in src/kms/policy.rs.
    if text.contains("Condition") || text.contains("user:") || text.contains("group:") {
        return;
    }
    let no_groups = kmsfs::kms::Requester {
        groups: Some(Vec::new()),
        ..Default::default()
    };
    let mut ids: Vec<u32> = vec![0, 1, 1000, u32::MAX];
    collect_ids(&value, &mut ids);
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(32);
    for op in OPERATIONS {
        for &uid in &ids {
            for &gid in &ids {
                let caller = Caller {
                    uid,
                    gid,
                    pid: 1,
                    access_key: None,
                };
                let want = reference_allows(&value, uid, gid, op.action());
                assert_eq!(
                    p.allows(&caller, &no_groups, op, None),
                    want,
                    "{} for uid {uid} gid {gid} in {text}",
                    op.action()
                );
                assert_eq!(
                    stored.allows(&caller, &no_groups, op, None),
                    want,
                    "stored form differs"
                );
            }
        }
    }
}

/// Every operation a key policy governs.
pub const OPERATIONS: [Operation; 6] = [
    Operation::Encrypt,
    Operation::Decrypt,
    Operation::GenerateDataKey,
    Operation::GenerateDataKeyWithoutPlaintext,
    Operation::ReEncryptFrom,
    Operation::ReEncryptTo,
];

/// Numbers named by `uid:N` / `gid:N` anywhere in the document.
fn collect_ids(v: &Value, out: &mut Vec<u32>) {
    match v {
        Value::String(s) => {
            if let Some(n) = s
                .strip_prefix("uid:")
                .or_else(|| s.strip_prefix("gid:"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                out.push(n);
                out.push(n.wrapping_add(1));
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_ids(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_ids(x, out)),
        _ => {}
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The documented meaning of an (accepted) policy, read straight from the JSON.
fn reference_allows(doc: &Value, uid: u32, gid: u32, action: &str) -> bool {
    let statements: Vec<&Value> = match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(one) => vec![one],
        None => Vec::new(),
    };
    let mut allowed = false;
    for st in statements {
        let principal_matches = match st.get("Principal") {
            Some(Value::String(s)) => s == "*",
            Some(Value::Object(m)) => strings(m.get("kmsfs")).iter().any(|p| {
                *p == "*"
                    || p.strip_prefix("uid:").and_then(|n| n.parse::<u32>().ok()) == Some(uid)
                    || p.strip_prefix("gid:").and_then(|n| n.parse::<u32>().ok()) == Some(gid)
            }),
            _ => false,
        };
        let action_matches = strings(st.get("Action")).iter().any(|a| {
            *a == "*"
                || *a == action
                || a.strip_suffix('*')
                    .is_some_and(|pre| action.starts_with(pre))
        });
        if principal_matches && action_matches {
            match st.get("Effect").and_then(Value::as_str) {
                Some("Deny") => return false,
                Some("Allow") => allowed = true,
                other => panic!("an accepted policy has Effect {other:?}"),
            }
        }
    }
    allowed
}

/// The encryption-context parser (`EncryptionContext::parse`); an input with
/// a NUL byte is two contexts. Properties: the canonical encoding decodes
/// back to exactly the parsed map (so it is unambiguous), the JSON form of a
/// parsed context parses to the same context, and two contexts encode alike
/// only when they are equal.
pub fn context(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(2, '\0');
    let a = parts.next().map(check_one_context);
    let b = parts.next().map(check_one_context);
    if let (Some(Some(a)), Some(Some(b))) = (a, b) {
        assert_eq!(
            a == b,
            a.encode() == b.encode(),
            "encoding is not injective: {a:?} vs {b:?}"
        );
    }
}

fn check_one_context(s: &str) -> Option<EncryptionContext> {
    let ctx = EncryptionContext::parse(s).ok()?;
    assert!(
        ctx.0.keys().all(|k| !k.is_empty()),
        "an empty key was accepted"
    );
    assert_eq!(
        decode_context(&ctx.encode()).as_ref(),
        Some(&ctx.0),
        "encoding does not decode to the map"
    );
    let json = serde_json::to_string(&ctx).expect("a context serializes");
    assert_eq!(
        EncryptionContext::parse(&json).expect("its JSON form parses"),
        ctx,
        "JSON round trip"
    );
    Some(ctx)
}

/// Inverse of the documented canonical encoding; None if it does not read
/// exactly (a trailing byte, a length past the end, pairs out of order).
fn decode_context(b: &[u8]) -> Option<BTreeMap<String, String>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (x, rest) = b.split_at(n);
        *b = rest;
        Some(x)
    }
    fn u32_be(b: &mut &[u8]) -> Option<usize> {
        let x = take(b, 4)?;
        Some(u32::from_be_bytes([x[0], x[1], x[2], x[3]]) as usize)
    }
    let mut b = b;
    let n = u32_be(&mut b)?;
    let mut out = BTreeMap::new();
    let mut last: Option<String> = None;
    for _ in 0..n {
        let kl = u32_be(&mut b)?;
        let k = String::from_utf8(take(&mut b, kl)?.to_vec()).ok()?;
        let vl = u32_be(&mut b)?;
        let v = String::from_utf8(take(&mut b, vl)?.to_vec()).ok()?;
        if last.as_ref().is_some_and(|l| *l >= k) {
            return None;
        }
        last = Some(k.clone());
        out.insert(k, v);
    }
    b.is_empty().then_some(out)
}

/// The size and offset arithmetic of the format, on the ranges the kernel can
/// pass (offsets and sizes below 2^63). Properties: a range splits into
/// contiguous in-block spans that cover it exactly; backing and plaintext
/// sizes convert back and forth; every backing size converts without panic.
pub fn offsets(data: &[u8]) {
    let mut w = [0u64; 3];
    for (i, c) in data.chunks(8).take(3).enumerate() {
        let mut a = [0u8; 8];
        a[..c.len()].copy_from_slice(c);
        w[i] = u64::from_be_bytes(a);
    }
    let backing = w[2];
    let l = if w[2] & 1 == 0 {
        format::Layout::V1
    } else {
        format::Layout::V2
    };
    let plain_size = l.plain_size_from_backing(backing);
    assert!(plain_size <= backing);
    let valid = l.is_valid_backing_size(backing);
    if backing < HEADER_LEN {
        assert!(!valid && plain_size == 0, "{backing} bytes hold no header");
    } else if plain_size <= l.max_plain_size() {
        let back = l.backing_size_from_plain(plain_size);
        assert!(back <= backing, "size from {backing} grew to {back}");
        assert_eq!(valid, back == backing);
        assert_eq!(l.plain_size_from_backing(back), plain_size);
    }
    let offset = w[0] % (l.max_plain_size() + 1);
    // Reads and writes are at most a few MiB; keep the span count small.
    let len = (w[1] % (1 << 24)).min(l.max_plain_size() - offset);
    let mut next = offset;
    let mut count = 0u64;
    for s in format::split_range(offset, len) {
        assert!(s.skip < format::BLOCK_SIZE && s.len > 0 || len == 0);
        assert!(s.skip + s.len <= format::BLOCK_SIZE, "{s:?}");
        assert_eq!(s.block * format::BLOCK_SIZE + s.skip, next, "gap at {s:?}");
        assert_eq!(format::block_of(next), s.block);
        next += s.len;
        count += 1;
    }
    assert_eq!(next, offset + len, "spans cover the range");
    assert!(count <= len / format::BLOCK_SIZE + 2);
    let size = offset + len;
    assert!(format::block_count(size) * format::BLOCK_SIZE >= size);
    let last = format::block_of(size.max(1) - 1);
    assert!(format::block_plain_len(last, size) > 0 || size == 0);
    assert!(l.block_backing_offset(format::block_count(size)) >= HEADER_LEN);
}
