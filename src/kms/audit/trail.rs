//! The trail on disk: JSON lines in `<keystore>/audit/trail-NNNNNN.jsonl`,
//! each record carrying its `sequence` and the SHA-256 of the line before it
//! (`previousDigest`), across files (a new file when one passes its size
//! limit), signed digest records now and then and a signed `HEAD` naming the
//! last record, both HMAC-SHA256 under a key sealed in the keystore.
//!
//! Writers in several processes (the command line, the mount, a server)
//! append under one flock, each chaining from the line actually last in the
//! trail. Files are created 0600 without following links, in a directory
//! made 0700 inside the (trusted) keystore directory and given its owner,
//! so a root daemon never leaves the owner's trail unreadable to them.
//!
//! Three durabilities: `Batched` (the mount's cryptographic events: a
//! background thread writes them every `FLUSH_INTERVAL`, or sooner when
//! `FLUSH_AT` are waiting; a crash loses at most that interval's records),
//! `Written` (written before the call returns, not fsynced: the command
//! line's reads and cryptographic operations) and `Durable` (fsynced, with
//! `HEAD`, before the call returns: every change to the keystore).
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::record::{DIGEST_EVENT_TYPE, EVENT_SOURCE, EVENT_VERSION};
use crate::crypto::{SecretBytes, hex, hmac_sha256, sha256};

/// The trail's directory, inside the keystore directory.
pub const DIR_NAME: &str = "audit";
/// The signed pointer to the last record.
pub const HEAD_FILE: &str = "HEAD";
const HEAD_TMP: &str = "HEAD.tmp";
const LOCK_FILE: &str = "trail.lock";
/// Trail files are `trail-NNNNNN.jsonl`, numbered from 1.
pub const FILE_PREFIX: &str = "trail-";
/// See `FILE_PREFIX`.
pub const FILE_SUFFIX: &str = ".jsonl";
/// A file is closed and the next begun once it would pass this size.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The background writer writes at least this often: the most a crash can
/// lose of the mount's cryptographic events.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// ... or as soon as this many records wait.
pub const FLUSH_AT: usize = 512;
/// Records waiting beyond this while the trail cannot be written are
/// dropped (and counted, and the count recorded once it can).
pub const MAX_QUEUED: usize = 100_000;
/// A signed digest record follows at least every this many records ...
pub const DIGEST_EVERY: u64 = 1000;
/// ... or this often, and after every change to the keystore.
pub const DIGEST_INTERVAL: Duration = Duration::from_secs(60);
/// `previousDigest` of the first record of a trail.
pub const GENESIS: [u8; 32] = [0; 32];
/// Labels of the two HMACs, so that one can never pass for the other.
pub const DIGEST_LABEL: &[u8] = b"kmsfs-audit-digest-v1\0";
/// See `DIGEST_LABEL`.
pub const HEAD_LABEL: &[u8] = b"kmsfs-audit-head-v1\0";

/// When a record must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Queued for the background writer.
    Batched,
    /// Written before returning.
    Written,
    /// Written and fsynced (with `HEAD`) before returning.
    Durable,
}

/// The name of trail file `n`.
pub fn file_name(n: u32) -> String {
    format!("{FILE_PREFIX}{n:06}{FILE_SUFFIX}")
}

/// The number of a trail file's name.
pub fn file_number(name: &str) -> Option<u32> {
    let n = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    (n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// The trail files in `dir`, in order.
pub fn list_files(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(n) = e.file_name().to_str().and_then(file_number) {
            v.push((n, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// The signature of a digest record numbered `sequence` that follows the
/// record whose line hashes to `previous`.
pub fn digest_signature(key: &[u8], keystore_id: &str, sequence: u64, previous: &[u8]) -> String {
    hex(&hmac_sha256(
        key,
        &[
            DIGEST_LABEL,
            keystore_id.as_bytes(),
            b"\0",
            &sequence.to_be_bytes(),
            previous,
        ],
    ))
}

/// The signature of `HEAD`.
pub fn head_signature(
    key: &[u8],
    keystore_id: &str,
    file: &str,
    size: u64,
    sequence: u64,
    digest: &[u8],
) -> String {
    hex(&hmac_sha256(
        key,
        &[
            HEAD_LABEL,
            keystore_id.as_bytes(),
            b"\0",
            file.as_bytes(),
            b"\0",
            &size.to_be_bytes(),
            &sequence.to_be_bytes(),
            digest,
        ],
    ))
}

/// Where the trail ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tail {
    file_no: u32,
    size: u64,
    sequence: u64,
    hash: [u8; 32],
    /// The file ends in a partial line (a write cut short): end it first.
    torn: bool,
}

#[derive(Debug)]
struct Writer {
    cache: Option<Tail>,
    last_digest_seq: u64,
    last_digest: Instant,
}

#[derive(Debug, Default)]
struct Queue {
    records: Vec<Value>,
    lost: u64,
}

/// The audit trail of one keystore.
pub struct Trail {
    dir: PathBuf,
    owner: Option<(u32, u32)>,
    keystore_id: String,
    key: Mutex<Option<SecretBytes>>,
    max_file_bytes: u64,
    writer: Mutex<Writer>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The process whose background writer runs (a fork has none).
    thread: Mutex<Option<u32>>,
    failing: AtomicBool,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trail")
            .field("dir", &self.dir)
            .field("signed", &lock(&self.key).is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn invalid(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Trail {
    /// The trail of the keystore in `keystore_dir` (nothing is touched until
    /// the first record). `key`: the signing key, when the keystore has one.
    pub fn new(keystore_dir: &Path, keystore_id: &str, key: Option<SecretBytes>) -> Arc<Self> {
        Self::with_limit(keystore_dir, keystore_id, key, max_file_bytes())
    }

    /// `new` with another file size limit.
    pub(crate) fn with_limit(
        keystore_dir: &Path,
        keystore_id: &str,
        key: Option<SecretBytes>,
        max_file_bytes: u64,
    ) -> Arc<Self> {
        let owner = fs::metadata(keystore_dir).ok().map(|m| (m.uid(), m.gid()));
        Arc::new(Self {
            dir: keystore_dir.join(DIR_NAME),
            owner,
            keystore_id: keystore_id.to_string(),
            key: Mutex::new(key),
            max_file_bytes,
            writer: Mutex::new(Writer {
                cache: None,
                last_digest_seq: 0,
                last_digest: Instant::now(),
            }),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            thread: Mutex::new(None),
            failing: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// Gives the trail its signing key, once the keystore has one.
    pub fn set_key(&self, key: &SecretBytes) {
        let mut k = lock(&self.key);
        if k.is_none() {
            *k = Some(key.clone());
        }
    }

    /// The trail's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True while the last attempt to write failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Appends one record with the given durability.
    pub fn append(self: &Arc<Self>, record: Value, d: Durability) -> io::Result<()> {
        match d {
            Durability::Batched => {
                self.start_thread();
                let mut q = lock(&self.queue);
                if q.records.len() >= MAX_QUEUED {
                    q.lost += 1;
                } else {
                    q.records.push(record);
                }
                if q.records.len() >= FLUSH_AT {
                    self.wake.notify_one();
                }
                Ok(())
            }
            Durability::Written | Durability::Durable => {
                // Whatever is queued goes first, so the order holds.
                let mut batch = self.take_queue();
                batch.push(record);
                self.write_logged(batch, d == Durability::Durable)
            }
        }
    }

    /// Checks that the trail can be written now (before a change to the
    /// keystore, which fails closed otherwise): the directory, the lock and
    /// the current file open, and some space is free.
    pub fn probe(&self) -> io::Result<()> {
        let _g = lock(&self.writer);
        let _l = self.lock_files()?;
        let n = list_files(&self.dir)?.last().map_or(1, |f| f.0);
        self.open_append(&self.dir.join(file_name(n)), true)?;
        if !self.has_space()? {
            return Err(invalid(format!(
                "{} has almost no free space left",
                self.dir.display()
            )));
        }
        Ok(())
    }

    fn has_space(&self) -> io::Result<bool> {
        let d = File::open(&self.dir)?;
        let s = crate::os::space::fstatvfs(&d)?;
        Ok(s.bavail.saturating_mul(u64::from(s.frsize)) >= 1 << 20 || s.blocks == 0)
    }

    /// Writes every queued record now.
    pub fn flush(&self) -> io::Result<()> {
        let batch = self.take_queue();
        if batch.is_empty() {
            return Ok(());
        }
        self.write_logged(batch, false)
    }

    fn take_queue(&self) -> Vec<Value> {
        let mut q = lock(&self.queue);
        let mut batch = std::mem::take(&mut q.records);
        if q.lost > 0 {
            batch.push(json!({
                "eventVersion": EVENT_VERSION,
                "eventTime": super::time::format(crate::kms::clock::now().unwrap_or(0)),
                "eventSource": EVENT_SOURCE,
                "eventName": "AuditRecordsLost",
                "eventType": "kmsfsTrail",
                "eventID": uuid::Uuid::new_v4().to_string(),
                "additionalEventData": {"lostRecords": q.lost},
            }));
            q.lost = 0;
        }
        batch
    }

    fn write_logged(&self, batch: Vec<Value>, durable: bool) -> io::Result<()> {
        match self.write_batch(&batch, durable) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    log::warn!("the audit trail in {} is written again", self.dir.display());
                }
                Ok(())
            }
            Err(e) => {
                self.failing.store(true, Ordering::Release);
                self.errors.fetch_add(1, Ordering::Relaxed);
                let msg = format!(
                    "AUDIT TRAIL NOT WRITTEN: {} record(s) for {} could not be written: {e}",
                    batch.len(),
                    self.dir.display()
                );
                let mut last = lock(&self.last_error);
                if last.as_deref() != Some(msg.as_str()) {
                    log::error!("{msg}");
                    *last = Some(msg);
                }
                Err(e)
            }
        }
    }

    fn start_thread(self: &Arc<Self>) {
        let mut started = lock(&self.thread);
        let me = std::process::id();
        if *started == Some(me) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("kmsfs-audit".into())
            .spawn(move || background(weak));
        match spawned {
            Ok(_) => *started = Some(me),
            Err(e) => log::error!("cannot start the audit writer thread: {e}"),
        }
    }

    fn lock_files(&self) -> io::Result<File> {
        self.ensure_dir()?;
        let p = self.dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)?;
        self.give_owner(&f)?;
        f.lock()?;
        Ok(f)
    }

    fn ensure_dir(&self) -> io::Result<()> {
        let check = |m: fs::Metadata| {
            if !m.is_dir() || !self.owner_ok(m.uid()) {
                return Err(invalid(format!(
                    "{} is not a directory owned by root, this user or the keystore's \
                     owner (a link?); refusing to write the audit trail there",
                    self.dir.display()
                )));
            }
            Ok(())
        };
        match fs::symlink_metadata(&self.dir) {
            Ok(m) => check(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
                    Ok(()) => {
                        let d = File::open(&self.dir)?;
                        self.give_owner(&d)
                    }
                    // Another process made it first: check what it made.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        check(fs::symlink_metadata(&self.dir)?)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Who may own the trail's directory and files: root, this user, and
    /// the keystore directory's owner (a root daemon serving a user's
    /// keystore writes files that user owns).
    fn owner_ok(&self, uid: u32) -> bool {
        crate::trust::trusted_owner(uid) || self.owner.is_some_and(|(o, _)| o == uid)
    }

    /// A file or directory this process made gets the keystore directory's
    /// owner (only root can do that; for anyone else they already match).
    fn give_owner(&self, f: &File) -> io::Result<()> {
        let Some((uid, gid)) = self.owner else {
            return Ok(());
        };
        let m = f.metadata()?;
        if (m.uid(), m.gid()) == (uid, gid) || !crate::os::ids::is_root() {
            return Ok(());
        }
        std::os::unix::fs::fchown(f, Some(uid), Some(gid))
    }

    fn open_append(&self, p: &Path, create: bool) -> io::Result<File> {
        let f = OpenOptions::new()
            .append(true)
            .read(true)
            .create(create)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)?;
        let m = f.metadata()?;
        if !m.is_file() || !self.owner_ok(m.uid()) || m.nlink() != 1 {
            return Err(invalid(format!(
                "{} is not a regular file with one link owned by root, this user or the \
                 keystore's owner; refusing to append to it",
                p.display()
            )));
        }
        self.give_owner(&f)?;
        Ok(f)
    }

    /// Where the trail ends now: the cached tail when the files did not
    /// change since this process wrote, else read from the last line.
    fn tail(&self, cache: Option<Tail>) -> io::Result<Tail> {
        if let Some(c) = cache {
            let size = fs::symlink_metadata(self.dir.join(file_name(c.file_no))).map(|m| m.len());
            let next = fs::symlink_metadata(self.dir.join(file_name(c.file_no + 1)));
            if size.ok() == Some(c.size) && next.is_err() {
                return Ok(c);
            }
        }
        let files = list_files(&self.dir)?;
        let Some((n, path)) = files.last().cloned() else {
            return Ok(Tail {
                file_no: 1,
                size: 0,
                sequence: 0,
                hash: GENESIS,
                torn: false,
            });
        };
        let size = fs::symlink_metadata(&path)?.len();
        for (_, p) in files.iter().rev() {
            if let Some((sequence, hash, torn)) = last_line(p)? {
                return Ok(Tail {
                    file_no: n,
                    size,
                    sequence,
                    hash,
                    torn: torn && p == &path,
                });
            }
        }
        Ok(Tail {
            file_no: n,
            size,
            sequence: 0,
            hash: GENESIS,
            torn: size > 0,
        })
    }

    fn write_batch(&self, batch: &[Value], durable: bool) -> io::Result<()> {
        if batch.is_empty() && !durable {
            return Ok(());
        }
        let mut w = lock(&self.writer);
        let _l = self.lock_files()?;
        let mut t = self.tail(w.cache)?;
        let mut buf: Vec<u8> = Vec::new();
        if t.torn {
            buf.push(b'\n');
        }
        let mut new_file = false;
        let mut file = self.open_append(&self.dir.join(file_name(t.file_no)), true)?;
        let mut tt = t;
        for r in batch {
            let Value::Object(m) = r else { continue };
            let mut m = m.clone();
            tt.sequence += 1;
            m.insert("sequence".into(), json!(tt.sequence));
            m.insert("previousDigest".into(), json!(hex(&tt.hash)));
            if self.emit(m, &mut tt, &mut buf, &mut file, durable)? {
                new_file = true;
            }
        }
        let due = tt.sequence.saturating_sub(w.last_digest_seq) >= DIGEST_EVERY
            || w.last_digest.elapsed() >= DIGEST_INTERVAL
            || durable;
        let key = lock(&self.key).clone();
        if let (Some(key), true) = (&key, due && tt.sequence > w.last_digest_seq) {
            let seq = tt.sequence + 1;
            let sig = digest_signature(key.expose(), &self.keystore_id, seq, &tt.hash);
            let m = digest_record(seq, sig, &tt.hash);
            tt.sequence = seq;
            if self.emit(m, &mut tt, &mut buf, &mut file, durable)? {
                new_file = true;
            }
            w.last_digest_seq = tt.sequence;
            w.last_digest = Instant::now();
        }
        file.write_all(&buf)?;
        tt.size = file.metadata()?.len();
        tt.torn = false;
        if durable {
            file.sync_data()?;
            if new_file || t.size == 0 {
                File::open(&self.dir)?.sync_all()?;
            }
        }
        self.write_head(&tt, durable)?;
        t = tt;
        w.cache = Some(t);
        Ok(())
    }

    /// Encodes `rec` as one line of the batch in `buf`, first writing out
    /// `buf` and moving to the next trail file when the line would make the
    /// current one too big; true when it moved to a new file.
    fn emit(
        &self,
        rec: Map<String, Value>,
        t: &mut Tail,
        buf: &mut Vec<u8>,
        file: &mut File,
        durable: bool,
    ) -> io::Result<bool> {
        let mut new_file = false;
        let line = serde_json::to_string(&Value::Object(rec))
            .map_err(|e| invalid(format!("cannot encode an audit record: {e}")))?;
        let len = line.len() as u64 + 1;
        if t.size + buf.len() as u64 + len > self.max_file_bytes && t.size + buf.len() as u64 > 0 {
            file.write_all(buf)?;
            if durable {
                file.sync_data()?;
            }
            buf.clear();
            t.file_no += 1;
            t.size = 0;
            *file = self.open_append(&self.dir.join(file_name(t.file_no)), true)?;
            new_file = true;
        }
        t.hash = sha256(&[line.as_bytes()]);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        Ok(new_file)
    }

    fn write_head(&self, t: &Tail, durable: bool) -> io::Result<()> {
        let name = file_name(t.file_no);
        let sig = lock(&self.key).as_ref().map(|k| {
            head_signature(
                k.expose(),
                &self.keystore_id,
                &name,
                t.size,
                t.sequence,
                &t.hash,
            )
        });
        let head = json!({
            "file": name,
            "size": t.size,
            "sequence": t.sequence,
            "digest": hex(&t.hash),
            "signature": sig,
        });
        let tmp = self.dir.join(HEAD_TMP);
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        self.give_owner(&f)?;
        f.write_all(head.to_string().as_bytes())?;
        f.write_all(b"\n")?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(HEAD_FILE))?;
        if durable {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The signed digest record `seq`, carrying signature `sig` over the chain
/// up to the record whose hash is `previous`.
fn digest_record(seq: u64, sig: String, previous: &[u8]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("eventVersion".into(), json!(EVENT_VERSION));
    m.insert(
        "eventTime".into(),
        json!(super::time::format(crate::kms::clock::now().unwrap_or(0))),
    );
    m.insert("eventSource".into(), json!(EVENT_SOURCE));
    m.insert("eventName".into(), json!("Digest"));
    m.insert("eventType".into(), json!(DIGEST_EVENT_TYPE));
    m.insert("eventID".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("digestAlgorithm".into(), json!("HMAC-SHA256"));
    m.insert("digestSignature".into(), json!(sig));
    m.insert("sequence".into(), json!(seq));
    m.insert("previousDigest".into(), json!(hex(previous)));
    m
}

impl Drop for Trail {
    /// What is still queued is written when the last user lets go.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The size limit of a trail file (a debug build takes
/// `KMSFS_TEST_AUDIT_MAX_BYTES`, so tests can see rotation).
fn max_file_bytes() -> u64 {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("KMSFS_TEST_AUDIT_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    MAX_FILE_BYTES
}

/// The background writer: every `FLUSH_INTERVAL`, or when woken, writes
/// what is queued. Ends when the trail is dropped.
fn background(weak: Weak<Trail>) {
    loop {
        let Some(t) = weak.upgrade() else { return };
        {
            let q = lock(&t.queue);
            if q.records.len() < FLUSH_AT {
                let _ = t.wake.wait_timeout(q, FLUSH_INTERVAL);
            }
        }
        let batch = t.take_queue();
        if batch.is_empty() {
            continue;
        }
        if t.write_logged(batch.clone(), false).is_err() {
            // Kept for the next try, within the bound; beyond it counted as lost.
            let mut q = lock(&t.queue);
            let room = MAX_QUEUED.saturating_sub(q.records.len());
            let keep = batch.len().min(room);
            q.lost += (batch.len() - keep) as u64;
            let mut again: Vec<Value> = batch.into_iter().take(keep).collect();
            again.append(&mut q.records);
            q.records = again;
        }
    }
}

/// The sequence and line hash of the last complete line of a trail file,
/// and whether a partial line follows it.
fn last_line(p: &Path) -> io::Result<Option<(u64, [u8; 32], bool)>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)?;
    let size = f.metadata()?.len();
    let mut window: u64 = 256 << 10;
    loop {
        let start = size.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        (&mut f).take(size - start).read_to_end(&mut buf)?;
        let torn = buf.last().is_some_and(|b| *b != b'\n');
        let complete = match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => &buf[..i],
            None if start == 0 => return Ok(None),
            None => {
                window *= 4;
                continue;
            }
        };
        let line_start = match complete.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if start == 0 => 0,
            None => {
                window *= 4;
                continue;
            }
        };
        let line = &complete[line_start..];
        let seq = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v.get("sequence").and_then(Value::as_u64))
            .ok_or_else(|| {
                invalid(format!(
                    "the last record of {} is not a trail record; run `kmsfs audit verify`",
                    p.display()
                ))
            })?;
        return Ok(Some((seq, sha256(&[line]), torn)));
    }
}

/// Decodes lowercase or uppercase hex.
pub fn hex_to_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
