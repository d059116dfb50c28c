//! `kmsfs audit verify`: checks a trail's hash chain, its sequence numbers,
//! its signed digest records and its signed `HEAD`, and names the file and
//! line of every break. An edited record breaks the chain at the next line
//! (or at `HEAD` when it was the last); a deleted, inserted or moved record
//! breaks the chain and the sequence; records cut from the end fall short
//! of `HEAD`; a chain rewritten consistently fails at the next signed digest.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::read::all_lines;
use super::record::DIGEST_EVENT_TYPE;
use super::trail::{GENESIS, HEAD_FILE, digest_signature, file_name, head_signature};
use crate::crypto::{constant_time_eq, hex, sha256};

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
}

impl Report {
    /// True when no break was found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the trail in `dir` (the keystore's `audit` directory) with the
/// keystore's id and signing key (None: signatures cannot be checked, which
/// is itself reported).
pub fn verify(dir: &Path, keystore_id: &str, key: Option<&[u8]>) -> std::io::Result<Report> {
    let mut r = Report::default();
    if key.is_none() {
        r.notes
            .push("the keystore has no audit signing key: signatures were not checked".to_string());
    }
    let files = match all_lines(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    r.files = files.len();
    let problem = |file: &str, line: usize, what: String| Problem {
        file: file.to_string(),
        line,
        what,
    };
    let mut prev_hash = GENESIS;
    let mut prev_seq = 0u64;
    let mut prev_loc: Option<(String, usize)> = None;
    let mut at: HashMap<u64, (String, usize)> = HashMap::new();
    let mut expected_no = 1u32;
    let mut last_size = 0u64;
    let mut last_file = None;
    for (n, lines) in &files {
        let name = file_name(*n);
        if *n != expected_no {
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
        expected_no = n + 1;
        last_size = std::fs::symlink_metadata(dir.join(&name)).map_or(0, |m| m.len());
        last_file = Some(name.clone());
        for l in lines {
            let loc = |p: &Option<(String, usize)>| match p {
                Some((f, l)) => format!("{f}:{l}"),
                None => "the start of the trail".to_string(),
            };
            if !l.complete {
                let p = problem(
                    &name,
                    l.line,
                    "a partial record with no end of line: a write cut short (crash, full \
                     disk) or the file was truncated here"
                        .into(),
                );
                r.problems.push(p);
                continue;
            }
            let Some(v) = l.record() else {
                let p = problem(&name, l.line, "not a JSON record".into());
                r.problems.push(p);
                prev_hash = sha256(&[&l.bytes]);
                prev_loc = Some((name.clone(), l.line));
                continue;
            };
            r.records += 1;
            let seq = v.get("sequence").and_then(Value::as_u64).unwrap_or(0);
            let pd = v
                .get("previousDigest")
                .and_then(Value::as_str)
                .unwrap_or("");
            if pd != hex(&prev_hash) {
                let p = problem(
                    &name,
                    l.line,
                    format!(
                        "does not chain to the record before it ({}): that record was \
                         changed, or records were deleted, inserted or moved between them",
                        loc(&prev_loc)
                    ),
                );
                r.problems.push(p);
            }
            if seq != prev_seq + 1 {
                let p = problem(
                    &name,
                    l.line,
                    format!(
                        "sequence {seq} follows {prev_seq}: records were deleted, inserted \
                         or reordered"
                    ),
                );
                r.problems.push(p);
            }
            if v.get("eventType").and_then(Value::as_str) == Some(DIGEST_EVENT_TYPE)
                && let Some(k) = key
            {
                let want = digest_signature(k, keystore_id, seq, &prev_hash);
                let got = v
                    .get("digestSignature")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if constant_time_eq(want.as_bytes(), got.as_bytes()) {
                    r.digests_verified += 1;
                    r.signed_through = r.signed_through.max(seq);
                } else {
                    let p = problem(
                        &name,
                        l.line,
                        format!(
                            "the signed digest does not verify: records up to here were \
                             rewritten (their chain recomputed) or the digest was forged \
                             (last good signature: record {})",
                            r.signed_through
                        ),
                    );
                    r.problems.push(p);
                }
            }
            prev_hash = sha256(&[&l.bytes]);
            prev_seq = seq;
            prev_loc = Some((name.clone(), l.line));
            at.insert(seq, (name.clone(), l.line));
        }
    }
    // HEAD: the signed end of the trail.
    let head = std::fs::read(dir.join(HEAD_FILE)).ok();
    let head: Option<Value> = head.as_deref().and_then(|b| serde_json::from_slice(b).ok());
    match (head, files.is_empty()) {
        (None, true) => {}
        (None, false) => r.problems.push(problem(
            HEAD_FILE,
            0,
            "missing or unreadable: the end of the trail cannot be checked (records may have \
             been cut from the end)"
                .into(),
        )),
        (Some(h), _) => {
            let hfile = h.get("file").and_then(Value::as_str).unwrap_or("");
            let hsize = h.get("size").and_then(Value::as_u64).unwrap_or(0);
            let hseq = h.get("sequence").and_then(Value::as_u64).unwrap_or(0);
            let hdig = h.get("digest").and_then(Value::as_str).unwrap_or("");
            let sig = h.get("signature").and_then(Value::as_str);
            let mut head_ok = true;
            if let Some(k) = key {
                let want = crate::kms::audit::trail::hex_to_bytes(hdig)
                    .map(|d| head_signature(k, keystore_id, hfile, hsize, hseq, &d));
                if !want.is_some_and(|w| {
                    sig.is_some_and(|s| constant_time_eq(w.as_bytes(), s.as_bytes()))
                }) {
                    head_ok = false;
                    r.problems.push(problem(
                        HEAD_FILE,
                        0,
                        "its signature does not verify: it was written by someone without the \
                         keystore's signing key"
                            .into(),
                    ));
                }
            }
            let end = prev_loc
                .as_ref()
                .map(|(f, l)| format!("{f}:{l}"))
                .unwrap_or_else(|| "the start".into());
            if hseq > prev_seq {
                r.problems.push(problem(
                    last_file.as_deref().unwrap_or(hfile),
                    prev_loc.as_ref().map_or(0, |p| p.1),
                    format!(
                        "the trail ends at record {prev_seq} ({end}) but HEAD says it ends at \
                         record {hseq} of {hfile}: {} record(s) were cut from the end",
                        hseq - prev_seq
                    ),
                ));
            } else if hseq < prev_seq {
                let (f, l) = at.get(&(hseq + 1)).cloned().unwrap_or_default();
                r.problems.push(problem(
                    &f,
                    l,
                    format!(
                        "{} record(s) from here on come after the signed HEAD (record {hseq}): \
                         appended by someone else, or by a process that crashed before signing",
                        prev_seq - hseq
                    ),
                ));
            } else if hdig != hex(&prev_hash) {
                r.problems.push(problem(
                    &prev_loc.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
                    prev_loc.as_ref().map_or(0, |p| p.1),
                    "the last record is not the one HEAD signed: it was changed".into(),
                ));
            } else if Some(hfile) != last_file.as_deref() || hsize != last_size {
                r.problems.push(problem(
                    hfile,
                    0,
                    format!(
                        "HEAD says this file is {hsize} bytes; {} is {last_size}",
                        last_file.as_deref().unwrap_or("the last file")
                    ),
                ));
            } else if head_ok && key.is_some() {
                r.signed_through = r.signed_through.max(hseq);
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretBytes;
    use crate::kms::audit::trail::{DIR_NAME, Durability, Trail};
    use serde_json::json;
    use std::path::PathBuf;

    const KEY: [u8; 32] = [7; 32];
    const KS: &str = "ks-test";

    /// A trail of `n` records (every fifth durable, so digests are signed
    /// along the way) in files of at most `limit` bytes.
    fn trail(n: usize, limit: u64) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let tr = Trail::with_limit(t.path(), KS, Some(SecretBytes::new(KEY.to_vec())), limit);
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
        verify(dir, KS, Some(&KEY)).unwrap()
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
        let r = verify(&dir, KS, None).unwrap();
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
        assert!(!verify(&dir, KS, Some(&[8; 32])).unwrap().ok());
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
    fn two_writers_one_chain() {
        // Two processes' writers (two Trail values) appending at once, one
        // batching in the background, keep one valid chain.
        let t = tempfile::tempdir().unwrap();
        let key = || Some(SecretBytes::new(KEY.to_vec()));
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
