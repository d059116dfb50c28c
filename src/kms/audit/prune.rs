//! Retention: `kmsfs audit prune --before TIME [--archive FILE]` removes
//! the records written before TIME from the start of the trail and leaves
//! a signed checkpoint (`checkpoint`) that stands for them at the new
//! start. Optionally the removed records go to an archive first: the old
//! checkpoint (if the trail was pruned before), the removed lines as they
//! were, and the new checkpoint, so that the archive verifies on its own
//! and joins the pruned trail into one chain.
//!
//! The trail is verified first (a checkpoint must not vouch for a chain
//! that was already broken) and pruned with every writer locked out. The
//! new trail is written whole beside the old one (`audit.prune`: the kept
//! files, the first starting with the checkpoint, a re-signed HEAD),
//! fsynced, and exchanged with the old directory in one renameat2
//! (RENAME_EXCHANGE), then the parent directory is fsynced: a crash leaves
//! either the old trail or the new one. The old one, then named
//! `audit.prune`, is removed afterwards (or by the next prune).
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::checkpoint::{self, Checkpoint};
use super::read::{Line, all_lines};
use super::sign::{CheckpointFields, SigningKeys};
use super::trail::{HEAD_FILE, Trail, file_name, head_value};
use super::verify::{Expected, Report, verify};
use crate::crypto::sha256;
use crate::kms::clock;

/// Where the new trail is built, and where the old one is left until it is
/// removed.
pub const PRUNE_DIR: &str = "audit.prune";
/// Debug builds only: `before-swap` or `after-swap` aborts the process
/// there (the crash tests).
pub const CRASH_ENV: &str = "KMSFS_TEST_AUDIT_PRUNE_CRASH";

/// What a prune removed.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// The first and last record removed, and how many.
    pub from: u64,
    /// See `from`.
    pub through: u64,
    /// See `from`.
    pub records: u64,
    /// The first and last removed record's times.
    pub first_time: i64,
    /// See `first_time`.
    pub last_time: i64,
    /// The trail files' total size before and after.
    pub bytes_before: u64,
    /// See `bytes_before`.
    pub bytes_after: u64,
}

/// Why a prune did nothing.
#[derive(Debug)]
pub enum PruneError {
    /// The trail does not verify: nothing is pruned.
    Corrupt(Box<Report>),
    /// Reading or writing failed (the trail is unchanged, or already the new one).
    Io(io::Error),
}

impl From<io::Error> for PruneError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// What to prune, with what.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Records written before this time go (epoch seconds).
    pub before: i64,
    /// The prune's time.
    pub now: i64,
    /// The keystore's signing keys (Ed25519 needed).
    pub keys: &'a SigningKeys,
    /// The keystore's id.
    pub keystore_id: &'a str,
    /// What the trail is verified against first.
    pub expected: &'a Expected,
    /// Where the removed records go, if anywhere (must not exist).
    pub archive: Option<&'a Path>,
}

/// Prunes `trail` as `p` says; None when no record is old enough (the
/// last record of the trail always stays).
pub fn prune(trail: &Trail, p: &Plan<'_>) -> Result<Option<Pruned>, PruneError> {
    let mut outcome = Ok(None);
    trail.exclusive(|dir| {
        outcome = prune_locked(trail, dir, p);
        Ok(())
    })?;
    outcome
}

/// Where the cut falls: the last removed line is `line` of file `file`.
struct Cut<'a> {
    file: usize,
    line: usize,
    fields: CheckpointFields<'a>,
}

fn time_of(v: &Value) -> Option<i64> {
    v.get("eventTime")
        .and_then(Value::as_str)
        .and_then(clock::parse_rfc3339)
}

/// The records older than `before` at the start of the trail (stopping at
/// the first that is not, and before the last record).
fn find_cut<'a>(files: &'a [(u32, Vec<Line>)], before: i64, now: i64) -> Option<Cut<'a>> {
    let mut records: Vec<(usize, usize, u64, i64, &'a Line)> = Vec::new();
    for (fi, (_, lines)) in files.iter().enumerate() {
        for (li, l) in lines.iter().enumerate() {
            let v = l.record()?;
            if Checkpoint::parse(&v).is_some() {
                continue;
            }
            let seq = v.get("sequence").and_then(Value::as_u64)?;
            records.push((fi, li, seq, time_of(&v).unwrap_or(i64::MAX), l));
        }
    }
    let keep_last = records.len().checked_sub(1)?;
    let n = records[..keep_last]
        .iter()
        .take_while(|r| r.3 < before)
        .count();
    let (first, last) = (records.first()?, records.get(n.checked_sub(1)?)?);
    Some(Cut {
        file: last.0,
        line: last.1,
        fields: CheckpointFields {
            from: first.2,
            through: last.2,
            records: last.2 - first.2 + 1,
            first_time: first.3,
            last_time: last.3,
            pruned_at: now,
            last_digest: &[],
        },
    })
}

#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
fn prune_locked(trail: &Trail, dir: &Path, p: &Plan<'_>) -> Result<Option<Pruned>, PruneError> {
    let report = verify(dir, p.expected)?;
    if !report.ok() {
        return Err(PruneError::Corrupt(Box::new(report)));
    }
    let files = all_lines(dir)?;
    let Some(mut cut) = find_cut(&files, p.before, p.now) else {
        return Ok(None);
    };
    let last_removed = &files[cut.file].1[cut.line];
    let digest = sha256(&[&last_removed.bytes]);
    cut.fields.last_digest = &digest;
    let sig = p
        .keys
        .sign_checkpoint(p.keystore_id, &cut.fields)
        .ok_or_else(|| io::Error::other("the keystore has no Ed25519 audit signing key"))?;
    let cp_line = checkpoint::record(&cut.fields, &sig, p.keystore_id).to_string();
    if let Some(a) = p.archive {
        write_archive(a, &files, &cut, cp_line.as_bytes())?;
    }
    let parent = dir
        .parent()
        .ok_or_else(|| io::Error::other("the audit directory has no parent"))?;
    let bytes_before = total_size(dir);
    build_new_trail(trail, &parent.join(PRUNE_DIR), &files, &cut, &cp_line, p)?;
    crash_point("before-swap");
    let pf = File::open(parent)?;
    crate::os::beneath::renameat2(
        &pf,
        OsStr::new(PRUNE_DIR),
        &pf,
        OsStr::new(super::trail::DIR_NAME),
        libc::RENAME_EXCHANGE,
    )?;
    pf.sync_all()?;
    crash_point("after-swap");
    fs::remove_dir_all(parent.join(PRUNE_DIR))?;
    pf.sync_all()?;
    Ok(Some(Pruned {
        from: cut.fields.from,
        through: cut.fields.through,
        records: cut.fields.records,
        first_time: cut.fields.first_time,
        last_time: cut.fields.last_time,
        bytes_before,
        bytes_after: total_size(dir),
    }))
}

/// Writes the new trail into `new` (made afresh): from the file holding the
/// first kept record on, that file starting with the checkpoint, and HEAD
/// signed again; everything fsynced.
#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
fn build_new_trail(
    trail: &Trail,
    new: &Path,
    files: &[(u32, Vec<Line>)],
    cut: &Cut<'_>,
    cp_line: &str,
    p: &Plan<'_>,
) -> io::Result<()> {
    match fs::remove_dir_all(new) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::DirBuilder::new().mode(0o700).create(new)?;
    trail.give_owner(&File::open(new)?)?;
    // The first kept record: the line after the cut, or the next file's first.
    let (first_file, first_line) = if cut.line + 1 < files[cut.file].1.len() {
        (cut.file, cut.line + 1)
    } else {
        (cut.file + 1, 0)
    };
    let mut last = None;
    for (fi, (n, lines)) in files.iter().enumerate().skip(first_file) {
        let kept = if fi == first_file {
            &lines[first_line..]
        } else {
            &lines[..]
        };
        let head = (fi == first_file).then_some(cp_line.as_bytes());
        let body = head
            .into_iter()
            .chain(kept.iter().map(|l| l.bytes.as_slice()));
        let size = write_lines(trail, &new.join(file_name(*n)), body)?;
        if let Some(l) = kept.last() {
            last = Some((*n, size, l));
        }
    }
    let (n, size, l) = last.ok_or_else(|| io::Error::other("nothing would be left"))?;
    let v = l
        .record()
        .ok_or_else(|| io::Error::other("the last line is not a record"))?;
    let seq = v.get("sequence").and_then(Value::as_u64).unwrap_or(0);
    let head = head_value(
        p.keys,
        p.keystore_id,
        &file_name(n),
        size,
        seq,
        &sha256(&[&l.bytes]),
    );
    write_lines(trail, &new.join(HEAD_FILE), [head.to_string().as_bytes()])?;
    write_lines(trail, &new.join("trail.lock"), std::iter::empty())?;
    File::open(new)?.sync_all()
}

/// Writes the archive: the old checkpoint, the removed lines, the new
/// checkpoint; to a temporary name, then linked to `to` (which must not
/// exist), both fsynced.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
fn write_archive(
    to: &Path,
    files: &[(u32, Vec<Line>)],
    cut: &Cut<'_>,
    cp_line: &[u8],
) -> io::Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already exists; an archive is never overwritten",
                to.display()
            ),
        ));
    }
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = to.file_name().unwrap_or(OsStr::new("archive"));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let removed = files
        .iter()
        .enumerate()
        .take(cut.file + 1)
        .flat_map(|(fi, (_, lines))| {
            let end = if fi == cut.file {
                cut.line + 1
            } else {
                lines.len()
            };
            lines[..end].iter()
        })
        .map(|l| l.bytes.as_slice());
    // The old checkpoint, if any, is the first of these lines already.
    let body = removed.chain([cp_line]);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let r = write_body(&mut f, body)
        .and_then(|_| fs::hard_link(&tmp, to))
        .and_then(|()| File::open(&dir)?.sync_all());
    let _ = fs::remove_file(&tmp);
    r
}

fn write_body<'a>(f: &mut File, body: impl IntoIterator<Item = &'a [u8]>) -> io::Result<u64> {
    let mut w = BufWriter::new(&mut *f);
    let mut size = 0u64;
    for l in body {
        w.write_all(l)?;
        w.write_all(b"\n")?;
        size += l.len() as u64 + 1;
    }
    w.flush()?;
    drop(w);
    f.sync_all()?;
    Ok(size)
}

/// Writes a new file of the trail (0600, the keystore's owner), fsynced.
#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
fn write_lines<'a>(
    trail: &Trail,
    p: &Path,
    body: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<u64> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)?;
    trail.give_owner(&f)?;
    write_body(&mut f, body)
}

#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
fn total_size(dir: &Path) -> u64 {
    super::trail::list_files(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, p)| fs::symlink_metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Debug builds: dies here when `CRASH_ENV` names this point.
fn crash_point(name: &str) {
    if cfg!(debug_assertions) && std::env::var(CRASH_ENV).is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretBytes;
    use crate::kms::audit::sign::VerifyKeys;
    use crate::kms::audit::trail::{DIR_NAME, Durability};
    use serde_json::json;

    const KS: &str = "ks-prune";

    fn keys() -> SigningKeys {
        SigningKeys::new(None, Some(&SecretBytes::new(vec![9; 32])))
    }

    /// A writer of another process (another `Trail`, holding a cached end
    /// of the trail) appending while a prune runs keeps one chain with the
    /// pruned trail. (One writer only: this does not reach the case the
    /// lock's re-check in `lock_files` is for, two writers across the
    /// exchange.)
    #[test]
    fn a_writer_during_a_prune_keeps_one_chain() {
        let t = tempfile::tempdir().unwrap();
        let a = Trail::with_limit(t.path(), KS, keys(), 3000);
        for i in 0..60 {
            let r = json!({"eventName": "Decrypt", "eventTime": "2030-01-01T00:00:00Z", "n": i});
            a.append(r, Durability::Written).unwrap();
        }
        let b = Trail::with_limit(t.path(), KS, keys(), 3000);
        // B has written before: it holds a cached end of the trail.
        let r = json!({"eventName": "Decrypt", "eventTime": "2030-01-01T00:00:00Z", "b": 0});
        b.append(r, Durability::Written).unwrap();
        let expected = Expected {
            keys: VerifyKeys {
                hmac: None,
                ed25519: keys().public_key(),
                keystore_id: Some(KS.into()),
            },
            floor: None,
        };
        let k = keys();
        let plan = Plan {
            before: clock::parse_rfc3339("2030-01-01T12:00:00Z").unwrap(),
            now: 0,
            keys: &k,
            keystore_id: KS,
            expected: &expected,
            archive: None,
        };
        let pruned = std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..200 {
                    let r = json!({"eventName": "Decrypt", "eventTime": "2030-01-02T00:00:00Z", "w": i});
                    b.append(r, Durability::Written).unwrap();
                }
            });
            prune(&a, &plan).unwrap()
        });
        let p = pruned.expect("records were old enough");
        assert_eq!(p.from, 1);
        // Every old record but the last at the time (which always stays).
        assert!(p.records >= 60, "{p:?}");
        let r = verify(&t.path().join(DIR_NAME), &expected).unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.starts_at.map(|c| c.through), Some(p.through));
        assert!(r.records >= 200);
    }
}
