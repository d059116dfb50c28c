//! `kmsfs audit verify`: checks a trail's hash chain, its sequence numbers,
//! its signed digest records and its signed `HEAD`, and names the file and
//! line of every break. An edited record breaks the chain at the next line
//! (or at `HEAD` when it was the last); a deleted, inserted or moved record
//! breaks the chain and the sequence; records cut from the end fall short
//! of `HEAD`; a chain rewritten consistently fails at the next signed digest;
//! a trail that does not reach the position the keystore recorded at its
//! last change (deleted, or cut and re-signed by no one) fails there.
//! A pruned trail starts at a signed checkpoint that stands for the
//! records removed; the archives a prune wrote, checked before the trail,
//! join it into one chain through those checkpoints.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::checkpoint::{self, Checkpoint};
use super::read::{Line, all_lines, file_lines};
use super::record::DIGEST_EVENT_TYPE;
use super::sign::{Check, HMAC_ALG, HeadFields, VerifyKeys};
use super::trail::{GENESIS, HEAD_FILE, file_name, hex_to_bytes};
use crate::crypto::{hex, sha256};

/// One break in the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The trail file (or `HEAD`).
    pub file: String,
    /// The 1-based line (0 for `HEAD` or a missing file).
    pub line: usize,
    /// What is wrong, in plain words.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.what)
        } else {
            write!(f, "{}: {}", self.file, self.what)
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Trail files read.
    pub files: usize,
    /// Records read (digest records included).
    pub records: u64,
    /// Signed digest records whose signature verified.
    pub digests_verified: u64,
    /// The last record covered by a verified signature (digest or HEAD).
    pub signed_through: u64,
    /// Every break found, in order.
    pub problems: Vec<Problem>,
    /// Things worth knowing that are not breaks (no signing key, ...).
    pub notes: Vec<String>,
    /// Digest records whose signature could not be checked with the keys
    /// given (HMACs, without the keystore).
    pub digests_unchecked: u64,
    /// The checkpoint the chain starts from, when what was checked begins
    /// with one (a pruned trail, or an archive of a trail pruned before).
    pub starts_at: Option<Checkpoint>,
    /// Signed checkpoints verified (the start, and where pieces join).
    pub checkpoints_verified: u64,
}

impl Report {
    /// True when no break was found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a trail is checked against: the keys, and the position the
/// keystore recorded at its last change (sequence, line hash), which the
/// trail must reach.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// The keys signatures are checked with.
    pub keys: VerifyKeys,
    /// The keystore's recorded position; None without the keystore.
    pub floor: Option<(u64, [u8; 32])>,
}

impl Expected {
    /// True when only a public key is at hand (no keystore).
    fn public_only(&self) -> bool {
        self.keys.keystore_id.is_none()
    }
}

/// Verifies the trail in `dir` (the keystore's `audit` directory) against
/// `e`. Without any key, signatures cannot be checked, which is reported.
#[allow(clippy::disallowed_methods)] // a trail directory the user named, only read
pub fn verify(dir: &Path, e: &Expected) -> std::io::Result<Report> {
    verify_with_archives(&[], Some(dir), e)
}

/// Verifies the archives a prune wrote (`archives`, oldest first), then
/// the trail in `dir` when given, as one chain: each archive ends with the
/// signed checkpoint the next piece starts with.
#[allow(clippy::disallowed_methods)] // a trail directory the user named, only read
pub fn verify_with_archives(
    archives: &[PathBuf],
    dir: Option<&Path>,
    e: &Expected,
) -> std::io::Result<Report> {
    let mut r = Report::default();
    if e.keys.hmac.is_none() && e.keys.ed25519.is_none() {
        r.notes
            .push("the keystore has no audit signing key: signatures were not checked".to_string());
    }
    let mut w = new_walk();
    for a in archives {
        let name = a.display().to_string();
        let lines = file_lines(a, &name)?;
        r.files += 1;
        for l in &lines {
            check_line(&mut r, &mut w, &name, l, e);
        }
        if !w.at_checkpoint {
            r.problems.push(problem(
                &name,
                lines.len(),
                "the archive does not end with the signed checkpoint of its prune: records \
                 were cut from its end, or it is not an archive"
                    .into(),
            ));
        }
    }
    if let Some(dir) = dir {
        verify_dir(&mut r, &mut w, dir, e)?;
        let no_files = r.files == archives.len();
        check_head(&mut r, &w, dir, no_files, e);
        check_floor(&mut r, &w, e);
    }
    if let Some(why) = &w.unchecked_why {
        r.notes.push(format!(
            "{} digest signature(s) not checked: {why}; a verified HEAD covers the records \
             before them through the chain",
            r.digests_unchecked
        ));
    }
    if let Some(c) = &r.starts_at {
        r.notes.push(format!(
            "the chain starts at a signed checkpoint: {}",
            checkpoint::describe(c)
        ));
    }
    Ok(r)
}

fn new_walk() -> Walk {
    Walk {
        prev_hash: GENESIS,
        prev_seq: 0,
        prev_loc: None,
        at: HashMap::new(),
        expected_no: 1,
        last_size: 0,
        last_file: None,
        floor_line: None,
        unchecked_why: None,
        at_checkpoint: false,
    }
}

/// Walks the trail files in `dir`: a pruned trail's first file starts
/// with its checkpoint and may have any number.
#[allow(clippy::disallowed_methods)] // a trail directory the user named, only read
fn verify_dir(r: &mut Report, w: &mut Walk, dir: &Path, e: &Expected) -> std::io::Result<()> {
    let files = match all_lines(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    r.files += files.len();
    for (i, (n, lines)) in files.iter().enumerate() {
        let name = file_name(*n);
        let starts_pruned = i == 0
            && lines
                .first()
                .and_then(Line::record)
                .is_some_and(|v| Checkpoint::parse(&v).is_some());
        if starts_pruned {
            w.expected_no = *n;
        }
        check_file_number(r, w, *n, &name);
        w.last_size = std::fs::symlink_metadata(dir.join(&name)).map_or(0, |m| m.len());
        w.last_file = Some(name.clone());
        for l in lines {
            check_line(r, w, &name, l, e);
        }
    }
    Ok(())
}

/// Checks that the trail reaches the position the keystore recorded at its
/// last change, with the same record there.
fn check_floor(r: &mut Report, w: &Walk, e: &Expected) {
    let Some((seq, hash)) = e.floor else {
        if e.public_only() {
            public_only_note(r);
        }
        return;
    };
    // A prune removed the record the keystore recorded: the checkpoint
    // that verified stands for it (and the walk began after it).
    if w.floor_line.is_none() && r.starts_at.as_ref().is_some_and(|c| c.through >= seq) {
        return;
    }
    check_floor_line(r, w, seq, hash);
}

fn public_only_note(r: &mut Report) {
    r.notes.push(
        "checked without the keystore: whether records were cut from the end and \
         HEAD re-signed by the keystore's holder cannot be told"
            .into(),
    );
}

/// The trail reaches record `seq` and holds the line the keystore recorded there.
fn check_floor_line(r: &mut Report, w: &Walk, seq: u64, hash: [u8; 32]) {
    let end = describe_loc(&w.prev_loc);
    if w.prev_seq < seq {
        r.problems.push(problem(
            w.last_file.as_deref().unwrap_or(super::trail::DIR_NAME),
            w.prev_loc.as_ref().map_or(0, |p| p.1),
            format!(
                "the keystore recorded at its last change that the trail reached record \
                 {seq}, but it ends at record {} ({end}): records, files or the whole trail \
                 were deleted",
                w.prev_seq
            ),
        ));
    } else if w.floor_line != Some(hash) {
        r.problems.push(problem(
            w.last_file.as_deref().unwrap_or(super::trail::DIR_NAME),
            0,
            format!(
                "record {seq} is not the one the keystore recorded at its last change: the \
                 trail was replaced"
            ),
        ));
    }
}

/// How far the walk through the trail has got: the last record read, where
/// each sequence number was seen, and the last file.
struct Walk {
    /// The hash of the last line read (GENESIS before the first).
    prev_hash: [u8; 32],
    /// The sequence number of the last record read.
    prev_seq: u64,
    /// The file and line of the last line read.
    prev_loc: Option<(String, usize)>,
    /// The file and line of each sequence number.
    at: HashMap<u64, (String, usize)>,
    /// The number the next trail file should have.
    expected_no: u32,
    /// The size of the last file, as found on disk.
    last_size: u64,
    /// The name of the last file.
    last_file: Option<String>,
    /// The hash of the line with the keystore's recorded sequence number.
    floor_line: Option<[u8; 32]>,
    /// Why some digest signatures could not be checked.
    unchecked_why: Option<String>,
    /// The last line read was a checkpoint that verified and joined.
    at_checkpoint: bool,
}

/// A break at `line` of `file`.
fn problem(file: &str, line: usize, what: String) -> Problem {
    Problem {
        file: file.to_string(),
        line,
        what,
    }
}

/// Names a location for a message: `file:line`, or the start of the trail.
fn describe_loc(p: &Option<(String, usize)>) -> String {
    match p {
        Some((f, l)) => format!("{f}:{l}"),
        None => "the start of the trail".to_string(),
    }
}

/// Reports a gap before trail file `n` (named `name`) and expects `n + 1` next.
fn check_file_number(r: &mut Report, w: &mut Walk, n: u32, name: &str) {
    let expected_no = w.expected_no;
    if n != expected_no {
        let p = problem(
            &file_name(expected_no),
            0,
            if expected_no == 1 {
                format!("missing: the trail starts at {name}; its beginning was deleted")
            } else {
                format!(
                    "missing: the trail goes from {} to {name}",
                    file_name(expected_no - 1)
                )
            },
        );
        r.problems.push(p);
    }
    w.expected_no = n + 1;
}

/// Checks one line of trail file `name`: complete, a JSON record, chained to
/// the one before, next in sequence, and a digest record's signature.
fn check_line(r: &mut Report, w: &mut Walk, name: &str, l: &Line, e: &Expected) {
    if !l.complete {
        let p = problem(
            name,
            l.line,
            "a partial record with no end of line: a write cut short (crash, full \
             disk) or the file was truncated here"
                .into(),
        );
        r.problems.push(p);
        return;
    }
    let Some(v) = l.record() else {
        let p = problem(name, l.line, "not a JSON record".into());
        r.problems.push(p);
        w.prev_hash = sha256(&[&l.bytes]);
        w.prev_loc = Some((name.to_string(), l.line));
        return;
    };
    if let Some(c) = Checkpoint::parse(&v) {
        check_checkpoint(r, w, name, l.line, c, &e.keys);
        return;
    }
    w.at_checkpoint = false;
    r.records += 1;
    let seq = v.get("sequence").and_then(Value::as_u64).unwrap_or(0);
    let pd = v
        .get("previousDigest")
        .and_then(Value::as_str)
        .unwrap_or("");
    if w.prev_loc.is_none() && seq > 1 {
        r.problems.push(problem(
            name,
            l.line,
            format!(
                "the trail starts at record {seq} without a checkpoint: records 1-{} were \
                 removed, but not by `kmsfs audit prune` (which leaves a signed checkpoint)",
                seq - 1
            ),
        ));
    } else if pd != hex(&w.prev_hash) {
        let p = problem(
            name,
            l.line,
            format!(
                "does not chain to the record before it ({}): that record was \
                 changed, or records were deleted, inserted or moved between them",
                describe_loc(&w.prev_loc)
            ),
        );
        r.problems.push(p);
    }
    if seq != w.prev_seq + 1 && !(w.prev_loc.is_none() && seq > 1) {
        let prev_seq = w.prev_seq;
        let p = problem(
            name,
            l.line,
            format!(
                "sequence {seq} follows {prev_seq}: records were deleted, inserted \
                 or reordered"
            ),
        );
        r.problems.push(p);
    }
    if v.get("eventType").and_then(Value::as_str) == Some(DIGEST_EVENT_TYPE) {
        check_digest_signature(r, w, name, l.line, &v, seq, &e.keys);
    }
    w.prev_hash = sha256(&[&l.bytes]);
    if e.floor.is_some_and(|f| f.0 == seq) {
        w.floor_line = Some(w.prev_hash);
    }
    w.prev_seq = seq;
    w.prev_loc = Some((name.to_string(), l.line));
    w.at.insert(seq, (name.to_string(), l.line));
}

/// Checks a prune's checkpoint at `line` of `name`: signed, and either the
/// start of what is checked (the chain then continues from the record it
/// stands for) or standing for exactly the record read last (where an
/// archive ends and the trail it was pruned from goes on).
fn check_checkpoint(
    r: &mut Report,
    w: &mut Walk,
    name: &str,
    line: usize,
    c: Result<Checkpoint, String>,
    keys: &VerifyKeys,
) {
    let c = match c {
        Ok(c) => c,
        Err(why) => {
            r.problems.push(problem(
                name,
                line,
                format!("a malformed checkpoint ({why})"),
            ));
            return;
        }
    };
    let check = keys.check_checkpoint(
        &c.algorithm,
        &c.signature,
        c.signing_key.as_deref(),
        c.keystore_id.as_deref(),
        &c.fields(),
    );
    let count_ok = c.through >= c.from && c.records == c.through - c.from + 1;
    match check {
        Check::Valid if count_ok => {}
        Check::Valid => {
            r.problems.push(problem(
                name,
                line,
                "the checkpoint's count does not match its range".into(),
            ));
            return;
        }
        Check::Invalid(why) | Check::Unchecked(why) => {
            r.problems.push(problem(
                name,
                line,
                format!(
                    "the checkpoint's signature does not verify ({why}): it was edited or \
                     forged, so the records before the ones that follow cannot be accounted for"
                ),
            ));
            return;
        }
    }
    r.checkpoints_verified += 1;
    if w.prev_loc.is_none() {
        w.prev_hash = c.last_digest;
        w.prev_seq = c.through;
        r.signed_through = c.through;
        r.starts_at = Some(c);
    } else if c.through == w.prev_seq && c.last_digest == w.prev_hash {
        // It signs the chain up to here (what ends an archive).
        r.signed_through = r.signed_through.max(c.through);
    } else {
        r.problems.push(problem(
            name,
            line,
            format!(
                "the checkpoint stands for records {}-{}, but the chain before it ends at \
                 record {} ({}) with another record: pieces of different prunes, or records \
                 missing between them",
                c.from,
                c.through,
                w.prev_seq,
                describe_loc(&w.prev_loc)
            ),
        ));
    }
    w.prev_loc = Some((name.to_string(), line));
    w.at_checkpoint = true;
}

/// Checks the signature of digest record `v` (sequence `seq`, at `line` of
/// `name`, following the line `w` read last); a valid one extends what is
/// signed.
fn check_digest_signature(
    r: &mut Report,
    w: &mut Walk,
    name: &str,
    line: usize,
    v: &Value,
    seq: u64,
    keys: &VerifyKeys,
) {
    let field = |f: &str| v.get(f).and_then(Value::as_str);
    let check = keys.check_digest(
        field("digestAlgorithm").unwrap_or(HMAC_ALG),
        field("digestSignature").unwrap_or(""),
        field("signingKey"),
        field("keystoreId"),
        seq,
        &w.prev_hash,
    );
    match check {
        Check::Valid => {
            r.digests_verified += 1;
            r.signed_through = r.signed_through.max(seq);
        }
        Check::Invalid(why) => {
            let p = problem(
                name,
                line,
                format!(
                    "the signed digest does not verify ({why}): records up to here were \
                     rewritten (their chain recomputed) or the digest was forged \
                     (last good signature: record {})",
                    r.signed_through
                ),
            );
            r.problems.push(p);
        }
        Check::Unchecked(why) => {
            r.digests_unchecked += 1;
            w.unchecked_why = Some(why);
        }
    }
}

/// The fields of a `HEAD` file as read (a missing one empty or zero).
struct HeadRead<'a> {
    /// The trail file HEAD says is last.
    file: &'a str,
    /// That file's size.
    size: u64,
    /// The last record's sequence number.
    sequence: u64,
    /// The last record's hash, in hex.
    digest: &'a str,
    /// HEAD's signature, in hex.
    signature: Option<&'a str>,
    /// Its algorithm (absent: HMAC-SHA256, as before Ed25519).
    algorithm: &'a str,
    /// The signing key's fingerprint and the keystore id (Ed25519).
    signing_key: Option<&'a str>,
    /// See `signing_key`.
    keystore_id: Option<&'a str>,
}

/// Checks `HEAD`, the signed end of the trail, against where the walk ended.
#[allow(clippy::disallowed_methods)] // a trail directory the user named, only read
fn check_head(r: &mut Report, w: &Walk, dir: &Path, no_files: bool, e: &Expected) {
    let head = std::fs::read(dir.join(HEAD_FILE)).ok();
    let head: Option<Value> = head.as_deref().and_then(|b| serde_json::from_slice(b).ok());
    match (head, no_files) {
        (None, true) => {}
        (None, false) => r.problems.push(problem(
            HEAD_FILE,
            0,
            "missing or unreadable: the end of the trail cannot be checked (records may have \
             been cut from the end)"
                .into(),
        )),
        (Some(h), _) => {
            let s = |f: &str| h.get(f).and_then(Value::as_str);
            let head = HeadRead {
                file: s("file").unwrap_or(""),
                size: h.get("size").and_then(Value::as_u64).unwrap_or(0),
                sequence: h.get("sequence").and_then(Value::as_u64).unwrap_or(0),
                digest: s("digest").unwrap_or(""),
                signature: s("signature"),
                algorithm: s("algorithm").unwrap_or(HMAC_ALG),
                signing_key: s("signingKey"),
                keystore_id: s("keystoreId"),
            };
            let signed = check_head_signature(r, &head, e);
            check_head_end(r, w, &head, signed);
        }
    }
}

/// Checks HEAD's signature; true when it verifies. One that does not is a
/// problem; one that cannot be checked is a problem without the keystore
/// (nothing else vouches for the end of the trail), a note with it.
fn check_head_signature(r: &mut Report, head: &HeadRead<'_>, e: &Expected) -> bool {
    let Some(digest) = hex_to_bytes(head.digest) else {
        r.problems
            .push(problem(HEAD_FILE, 0, "its digest is not hex".into()));
        return false;
    };
    let fields = HeadFields {
        file: head.file,
        size: head.size,
        sequence: head.sequence,
        digest: &digest,
    };
    let check = match head.signature {
        None => Check::Unchecked("HEAD carries no signature".into()),
        Some(sig) => e.keys.check_head(
            head.algorithm,
            sig,
            head.signing_key,
            head.keystore_id,
            &fields,
        ),
    };
    match check {
        Check::Valid => true,
        Check::Invalid(why) => {
            r.problems.push(problem(
                HEAD_FILE,
                0,
                format!(
                    "its signature does not verify ({why}): it was written by someone \
                     without the keystore's signing key"
                ),
            ));
            false
        }
        Check::Unchecked(why) if e.public_only() => {
            r.problems.push(problem(
                HEAD_FILE,
                0,
                format!(
                    "its signature cannot be checked with a public key ({why}): the trail \
                     was last written before Ed25519 signing; check it with the keystore \
                     (`kmsfs audit verify`)"
                ),
            ));
            false
        }
        Check::Unchecked(_) => false,
    }
}

/// Compares where the trail ends with where HEAD says it ends; when they
/// agree and HEAD's signature verified (`signed`), HEAD extends what is signed.
fn check_head_end(r: &mut Report, w: &Walk, head: &HeadRead<'_>, signed: bool) {
    let HeadRead {
        file: hfile,
        size: hsize,
        sequence: hseq,
        digest: hdig,
        ..
    } = *head;
    let (prev_seq, prev_loc, last_size) = (w.prev_seq, &w.prev_loc, w.last_size);
    let end = prev_loc
        .as_ref()
        .map(|(f, l)| format!("{f}:{l}"))
        .unwrap_or_else(|| "the start".into());
    if hseq > prev_seq {
        r.problems.push(problem(
            w.last_file.as_deref().unwrap_or(hfile),
            prev_loc.as_ref().map_or(0, |p| p.1),
            format!(
                "the trail ends at record {prev_seq} ({end}) but HEAD says it ends at \
                 record {hseq} of {hfile}: {} record(s) were cut from the end",
                hseq - prev_seq
            ),
        ));
    } else if hseq < prev_seq {
        let (f, l) = w.at.get(&(hseq + 1)).cloned().unwrap_or_default();
        r.problems.push(problem(
            &f,
            l,
            format!(
                "{} record(s) from here on come after the signed HEAD (record {hseq}): \
                 appended by someone else, or by a process that crashed before signing",
                prev_seq - hseq
            ),
        ));
    } else if hdig != hex(&w.prev_hash) {
        r.problems.push(problem(
            &prev_loc.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
            prev_loc.as_ref().map_or(0, |p| p.1),
            "the last record is not the one HEAD signed: it was changed".into(),
        ));
    } else if Some(hfile) != w.last_file.as_deref() || hsize != last_size {
        r.problems.push(problem(
            hfile,
            0,
            format!(
                "HEAD says this file is {hsize} bytes; {} is {last_size}",
                w.last_file.as_deref().unwrap_or("the last file")
            ),
        ));
    } else if signed {
        r.signed_through = r.signed_through.max(hseq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretBytes;
    use crate::kms::audit::trail::{DIR_NAME, Durability, Trail};
    use serde_json::json;
    use std::path::PathBuf;

    use crate::kms::audit::sign::SigningKeys;

    const KEY: [u8; 32] = [7; 32];
    const SEED: [u8; 32] = [9; 32];

    /// The keys of a keystore: HMAC (older trails) and Ed25519.
    fn keys_of(hmac: [u8; 32], seed: Option<[u8; 32]>) -> SigningKeys {
        SigningKeys::new(
            Some(&SecretBytes::new(hmac.to_vec())),
            seed.map(|s| SecretBytes::new(s.to_vec())).as_ref(),
        )
    }

    /// What `kmsfs audit verify` checks with, holding the keystore.
    fn with_keystore(hmac: [u8; 32], seed: [u8; 32]) -> Expected {
        Expected {
            keys: VerifyKeys {
                hmac: Some(SecretBytes::new(hmac.to_vec())),
                ed25519: keys_of(hmac, Some(seed)).public_key(),
                keystore_id: Some(KS.into()),
            },
            floor: None,
        }
    }

    /// What `--public-key` checks with.
    fn public_only(seed: [u8; 32]) -> Expected {
        Expected {
            keys: VerifyKeys {
                hmac: None,
                ed25519: keys_of(KEY, Some(seed)).public_key(),
                keystore_id: None,
            },
            floor: None,
        }
    }
    const KS: &str = "ks-test";

    /// A trail of `n` records (every fifth durable, so digests are signed
    /// along the way) in files of at most `limit` bytes.
    fn trail(n: usize, limit: u64) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let tr = Trail::with_limit(t.path(), KS, keys_of(KEY, Some(SEED)), limit);
        for i in 0..n {
            let d = if i % 5 == 4 {
                Durability::Durable
            } else {
                Durability::Written
            };
            tr.append(json!({"eventName": "Decrypt", "n": i}), d)
                .unwrap();
        }
        let dir = t.path().join(DIR_NAME);
        (t, dir)
    }

    fn check(dir: &Path) -> Report {
        verify(dir, &with_keystore(KEY, SEED)).unwrap()
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(p: &Path, l: &[String]) {
        let mut s = l.join("\n");
        s.push('\n');
        std::fs::write(p, s).unwrap();
    }

    fn first(r: &Report) -> (String, usize) {
        let p = r.problems.first().expect("a problem");
        (p.file.clone(), p.line)
    }

    const F1: &str = "trail-000001.jsonl";

    #[test]
    fn untouched_trail_verifies_across_rotation() {
        let (_t, dir) = trail(40, 2000);
        let r = check(&dir);
        assert!(r.ok(), "{:?}", r.problems);
        assert!(r.files > 2, "{} files", r.files);
        assert!(r.digests_verified >= 8);
        assert_eq!(r.signed_through, r.records);
        // Without the key the chain still verifies, and says so.
        let no_keys = Expected {
            keys: VerifyKeys {
                keystore_id: Some(KS.into()),
                ..VerifyKeys::default()
            },
            floor: None,
        };
        let r = verify(&dir, &no_keys).unwrap();
        assert!(r.ok() && !r.notes.is_empty());
    }

    #[test]
    fn edited_record_is_named() {
        let (_t, dir) = trail(12, 1 << 20);
        let p = dir.join(F1);
        let mut l = lines(&p);
        l[3] = l[3].replace("\"n\":3", "\"n\":33");
        write_lines(&p, &l);
        let r = check(&dir);
        assert!(!r.ok());
        // Line 4 was changed: line 5 no longer chains to it.
        assert_eq!(first(&r), (F1.to_string(), 5));
        assert!(r.problems[0].what.contains(&format!("{F1}:4")));
    }

    #[test]
    fn edited_last_record_fails_at_head() {
        let (_t, dir) = trail(7, 1 << 20);
        let p = dir.join(F1);
        let mut l = lines(&p);
        let last = l.len() - 1;
        l[last] = l[last].replace("Digest", "Digesx");
        write_lines(&p, &l);
        let r = check(&dir);
        assert!(!r.ok());
        assert!(
            r.problems.iter().any(|p| p.line == last + 1),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn deleted_inserted_and_swapped_records_are_named() {
        // Deleted: line 6 goes; the record now on line 6 does not chain.
        let (_t, dir) = trail(12, 1 << 20);
        let p = dir.join(F1);
        let orig = lines(&p);
        let mut l = orig.clone();
        l.remove(5);
        write_lines(&p, &l);
        let r = check(&dir);
        assert_eq!(first(&r), (F1.to_string(), 6));
        assert!(r.problems.iter().any(|p| p.what.contains("sequence")));
        // Inserted: a copy of line 2 after line 3.
        let mut l = orig.clone();
        l.insert(3, orig[1].clone());
        write_lines(&p, &l);
        let r = check(&dir);
        assert_eq!(first(&r), (F1.to_string(), 4));
        // Swapped: lines 7 and 8.
        let mut l = orig.clone();
        l.swap(6, 7);
        write_lines(&p, &l);
        let r = check(&dir);
        assert_eq!(first(&r), (F1.to_string(), 7));
        // Restored: verifies again.
        write_lines(&p, &orig);
        assert!(check(&dir).ok());
    }

    #[test]
    fn truncation_is_found() {
        // Whole records cut from the end: HEAD says more.
        let (_t, dir) = trail(12, 1 << 20);
        let p = dir.join(F1);
        let orig = lines(&p);
        write_lines(&p, &orig[..orig.len() - 2]);
        let r = check(&dir);
        assert!(!r.ok());
        assert!(
            r.problems[0].what.contains("cut from the end"),
            "{:?}",
            r.problems
        );
        assert_eq!(r.problems[0].line, orig.len() - 2);
        // Cut mid-record: a partial line, named.
        let mut s = orig.join("\n");
        s.truncate(s.len() - 10);
        std::fs::write(&p, s).unwrap();
        let r = check(&dir);
        assert_eq!(first(&r), (F1.to_string(), orig.len()));
        // A whole file deleted from the middle of a rotated trail.
        let (_t2, dir2) = trail(40, 2000);
        std::fs::remove_file(dir2.join("trail-000002.jsonl")).unwrap();
        let r = check(&dir2);
        assert_eq!(first(&r), ("trail-000002.jsonl".to_string(), 0));
    }

    #[test]
    fn a_rewritten_chain_fails_at_the_next_signature() {
        // Someone who can write the trail but lacks the key edits a record
        // and recomputes every previousDigest after it.
        let (_t, dir) = trail(12, 1 << 20);
        let p = dir.join(F1);
        let mut l = lines(&p);
        l[1] = l[1].replace("\"n\":1", "\"n\":100");
        let mut prev = sha256(&[l[1].as_bytes()]);
        for line in l.iter_mut().skip(2) {
            let mut v: Value = serde_json::from_str(line).unwrap();
            v["previousDigest"] = json!(hex(&prev));
            *line = serde_json::to_string(&v).unwrap();
            prev = sha256(&[line.as_bytes()]);
        }
        write_lines(&p, &l);
        let r = check(&dir);
        assert!(!r.ok());
        let (_, line) = first(&r);
        let digest_line = l.iter().position(|x| x.contains("kmsfsDigest")).unwrap() + 1;
        assert_eq!(line, digest_line, "{:?}", r.problems);
        assert!(r.problems[0].what.contains("signed digest"));
        // A forged key verifies nothing.
        assert!(!verify(&dir, &with_keystore([8; 32], [8; 32])).unwrap().ok());
        assert!(!verify(&dir, &public_only([8; 32])).unwrap().ok());
    }

    #[test]
    fn records_after_head_are_reported() {
        let (_t, dir) = trail(6, 1 << 20);
        let p = dir.join(F1);
        let mut l = lines(&p);
        let last: Value = serde_json::from_str(l.last().unwrap()).unwrap();
        let forged = json!({
            "eventName": "Decrypt",
            "sequence": last["sequence"].as_u64().unwrap() + 1,
            "previousDigest": hex(&sha256(&[l.last().unwrap().as_bytes()])),
        });
        l.push(forged.to_string());
        write_lines(&p, &l);
        let r = check(&dir);
        assert_eq!(first(&r), (F1.to_string(), l.len()));
        assert!(r.problems[0].what.contains("after the signed HEAD"));
    }

    #[test]
    fn a_copy_verifies_with_the_public_key_alone() {
        let (_t, dir) = trail(12, 1 << 20);
        let r = verify(&dir, &public_only(SEED)).unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.signed_through, r.records);
        assert!(r.digests_verified >= 2 && r.digests_unchecked == 0);
        // An edit and a re-chained rewrite fail as with the keystore.
        let p = dir.join(F1);
        let mut l = lines(&p);
        l[1] = l[1].replace("\"n\":1", "\"n\":100");
        let mut prev = sha256(&[l[1].as_bytes()]);
        for line in l.iter_mut().skip(2) {
            let mut v: Value = serde_json::from_str(line).unwrap();
            v["previousDigest"] = json!(hex(&prev));
            *line = serde_json::to_string(&v).unwrap();
            prev = sha256(&[line.as_bytes()]);
        }
        write_lines(&p, &l);
        let r = verify(&dir, &public_only(SEED)).unwrap();
        assert!(
            r.problems[0].what.contains("signed digest"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn an_hmac_trail_verifies_with_the_keystore_and_is_continued_with_ed25519() {
        let t = tempfile::tempdir().unwrap();
        let old = Trail::with_limit(t.path(), KS, keys_of(KEY, None), 1 << 20);
        for i in 0..6 {
            old.append(json!({"n": i}), Durability::Durable).unwrap();
        }
        drop(old);
        let dir = t.path().join(DIR_NAME);
        assert!(check(&dir).ok());
        let r = verify(&dir, &public_only(SEED)).unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.file == HEAD_FILE && p.what.contains("public key")),
            "{:?}",
            r.problems
        );
        // Continued by a writer holding the Ed25519 key: its HEAD covers the
        // HMAC-signed records before through the chain.
        let new = Trail::with_limit(t.path(), KS, keys_of(KEY, Some(SEED)), 1 << 20);
        new.append(json!({"n": 6}), Durability::Durable).unwrap();
        let r = check(&dir);
        assert!(r.ok(), "{:?}", r.problems);
        let r = verify(&dir, &public_only(SEED)).unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert!(r.digests_unchecked >= 6 && r.digests_verified == 1);
        assert_eq!(r.signed_through, r.records);
    }

    #[test]
    fn a_trail_short_of_the_keystores_position_fails() {
        let (_t, dir) = trail(10, 1 << 20);
        let l = lines(&dir.join(F1));
        let seq = l.len() as u64 - 2;
        let hash = sha256(&[l[seq as usize - 1].as_bytes()]);
        let mut e = with_keystore(KEY, SEED);
        e.floor = Some((seq, hash));
        assert!(verify(&dir, &e).unwrap().ok());
        // Another line at that sequence: a replaced trail.
        e.floor = Some((seq, [1; 32]));
        assert!(
            verify(&dir, &e).unwrap().problems[0]
                .what
                .contains("not the one")
        );
        // The whole trail deleted.
        e.floor = Some((seq, hash));
        std::fs::remove_dir_all(&dir).unwrap();
        let r = verify(&dir, &e).unwrap();
        assert!(!r.ok());
        assert!(
            r.problems[0].what.contains("ends at record 0"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn two_writers_one_chain() {
        // Two processes' writers (two Trail values) appending at once, one
        // batching in the background, keep one valid chain.
        let t = tempfile::tempdir().unwrap();
        let key = || keys_of(KEY, Some(SEED));
        let a = Trail::with_limit(t.path(), KS, key(), 4000);
        let b = Trail::with_limit(t.path(), KS, key(), 4000);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..30 {
                    a.append(json!({"w": "a", "i": i}), Durability::Written)
                        .unwrap();
                }
            });
            s.spawn(|| {
                for i in 0..30 {
                    b.append(json!({"w": "b", "i": i}), Durability::Batched)
                        .unwrap();
                }
                b.flush().unwrap();
            });
        });
        let r = check(&t.path().join(DIR_NAME));
        assert!(r.ok(), "{:?}", r.problems);
        assert!(r.records >= 60);
    }
}
