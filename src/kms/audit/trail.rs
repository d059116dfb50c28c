//! The trail on disk: JSON lines in `<keystore>/audit/trail-NNNNNN.jsonl`,
//! each record carrying its `sequence` and the SHA-256 of the line before it
//! (`previousDigest`), across files (a new file when one passes its size
//! limit), signed digest records now and then and a signed `HEAD` naming the
//! last record, both signed with Ed25519 under a key sealed in the keystore
//! (HMAC-SHA256 in trails written before; `sign`).
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

use super::limit::{Limiter, Limits};
use super::record::{DIGEST_EVENT_TYPE, EVENT_SOURCE, EVENT_VERSION};
use super::sign::{HeadFields, Signed, SigningKeys};
use crate::crypto::{hex, sha256};

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
#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
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

/// Where the trail ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tail {
    file_no: u32,
    size: u64,
    sequence: u64,
    hash: [u8; 32],
    /// The file ends in a partial line (a write cut short): end it first.
    torn: bool,
    /// The last record is a signed digest.
    digest: bool,
}

/// Where an empty trail ends.
const EMPTY: Tail = Tail {
    file_no: 1,
    size: 0,
    sequence: 0,
    hash: GENESIS,
    torn: false,
    digest: false,
};

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

/// The trail this process set up last (a mount has one), for `status`.
static LATEST: Mutex<Weak<Trail>> = Mutex::new(Weak::new());

/// The `status` of the trail this process writes, if any.
pub fn current_status() -> Option<Value> {
    lock(&LATEST).upgrade().map(|t| t.status())
}

/// The audit trail of one keystore.
pub struct Trail {
    dir: PathBuf,
    owner: Option<(u32, u32)>,
    keystore_id: String,
    keys: Mutex<Arc<SigningKeys>>,
    /// The last position the keystore recorded (sequence, line hash): the
    /// trail must reach it before anything is appended.
    floor: Mutex<Option<(u64, [u8; 32])>>,
    /// Set when the trail was found short of `floor` (deleted or cut).
    behind: AtomicBool,
    max_file_bytes: u64,
    writer: Mutex<Writer>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The process whose background writer runs (a fork has none).
    thread: Mutex<Option<u32>>,
    failing: AtomicBool,
    errors: AtomicU64,
    /// Aggregation, per-uid rate and size cap of the mount's and a
    /// server's records (`limit`).
    limiter: Mutex<Limiter>,
    /// The trail files' total size, as last measured.
    bytes: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trail")
            .field("dir", &self.dir)
            .field("signed", &!lock(&self.keys).is_empty())
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
    /// the first record). `keys`: the signing keys the keystore has.
    pub fn new(keystore_dir: &Path, keystore_id: &str, keys: SigningKeys) -> Arc<Self> {
        Self::with_limit(keystore_dir, keystore_id, keys, max_file_bytes())
    }

    /// `new` with another file size limit.
    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    pub(crate) fn with_limit(
        keystore_dir: &Path,
        keystore_id: &str,
        keys: SigningKeys,
        max_file_bytes: u64,
    ) -> Arc<Self> {
        let owner = fs::metadata(keystore_dir).ok().map(|m| (m.uid(), m.gid()));
        let t = Arc::new(Self {
            dir: keystore_dir.join(DIR_NAME),
            owner,
            keystore_id: keystore_id.to_string(),
            keys: Mutex::new(Arc::new(keys)),
            floor: Mutex::new(None),
            behind: AtomicBool::new(false),
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
            limiter: Mutex::new(Limiter::new(Limits::from_env())),
            bytes: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        *lock(&LATEST) = Arc::downgrade(&t);
        t
    }

    /// Gives the trail the keystore's signing keys, once it has them (a
    /// keystore made before the trail or before Ed25519 gets them with its
    /// next change); keys already held are never taken away.
    pub fn set_keys(&self, keys: SigningKeys) {
        let mut k = lock(&self.keys);
        if (k.is_empty() && !keys.is_empty()) || (!k.has_ed25519() && keys.has_ed25519()) {
            *k = Arc::new(keys);
        }
    }

    /// True when the trail has a key to sign with.
    pub fn signs_with_ed25519(&self) -> bool {
        lock(&self.keys).has_ed25519()
    }

    /// The position the keystore last recorded (`sequence`, the SHA-256 of
    /// that line): nothing is appended to a trail that does not reach it,
    /// so a deleted trail is never started afresh. Only ever raised.
    pub fn set_floor(&self, sequence: u64, hash: [u8; 32]) {
        let mut f = lock(&self.floor);
        if f.is_none_or(|(s, _)| s < sequence) {
            *f = Some((sequence, hash));
        }
    }

    /// Why the trail cannot be used, when the keystore says it reached a
    /// record that is not there (the trail deleted, or cut): a cheap check
    /// (one stat), made before every key use.
    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    pub fn missing(&self) -> Option<String> {
        let (seq, _) = (*lock(&self.floor))?;
        if seq == 0 {
            return None;
        }
        let gone = matches!(fs::symlink_metadata(self.dir.join(HEAD_FILE)),
            Err(e) if e.kind() == io::ErrorKind::NotFound);
        if gone || self.behind.load(Ordering::Acquire) {
            return Some(self.missing_message(seq, None));
        }
        None
    }

    fn missing_message(&self, floor: u64, ends: Option<u64>) -> String {
        let ends = match ends {
            Some(0) | None => "it is missing".to_string(),
            Some(n) => format!("it ends at record {n}"),
        };
        format!(
            "the audit trail in {} is not there: the keystore recorded that it reached record \
             {floor}, but {ends} (deleted or cut); no key is used and no new trail is started \
             until it is restored from a backup (see docs/AUDIT.md, \"A lost trail\")",
            self.dir.display()
        )
    }

    /// Refuses to append to a trail that ends before the keystore's floor.
    fn check_floor(&self, t: &Tail) -> io::Result<()> {
        if let Some((seq, _)) = *lock(&self.floor)
            && t.sequence < seq
        {
            self.behind.store(true, Ordering::Release);
            return Err(invalid(self.missing_message(seq, Some(t.sequence))));
        }
        self.behind.store(false, Ordering::Release);
        Ok(())
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
                let Some(record) = lock(&self.limiter).admit(record, Instant::now()) else {
                    return Ok(());
                };
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
                let mut batch = self.take_queue(false);
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
        let t = self.tail(None)?;
        self.check_floor(&t)?;
        self.open_append(&self.dir.join(file_name(t.file_no)), true)?;
        if !self.has_space()? {
            return Err(invalid(format!(
                "{} has almost no free space left",
                self.dir.display()
            )));
        }
        Ok(())
    }

    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn has_space(&self) -> io::Result<bool> {
        let d = File::open(&self.dir)?;
        let s = crate::os::space::fstatvfs(&d)?;
        Ok(s.bavail.saturating_mul(u64::from(s.frsize)) >= 1 << 20 || s.blocks == 0)
    }

    /// Writes every queued record now.
    pub fn flush(&self) -> io::Result<()> {
        let batch = self.take_queue(true);
        if batch.is_empty() {
            return Ok(());
        }
        self.write_logged(batch, false)
    }

    /// What is queued, with the summaries now due (every one when `all`).
    fn take_queue(&self, all: bool) -> Vec<Value> {
        let due = lock(&self.limiter).due(Instant::now(), all);
        let mut q = lock(&self.queue);
        let mut batch = std::mem::take(&mut q.records);
        batch.extend(due);
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

    /// Puts a batch that could not be written back in front of the queue
    /// for the next try, within the bound; beyond it counted as lost.
    fn requeue(&self, batch: Vec<Value>) {
        let mut q = lock(&self.queue);
        let room = MAX_QUEUED.saturating_sub(q.records.len());
        let keep = batch.len().min(room);
        q.lost += (batch.len() - keep) as u64;
        let mut again: Vec<Value> = batch.into_iter().take(keep).collect();
        again.append(&mut q.records);
        q.records = again;
    }

    fn write_logged(&self, batch: Vec<Value>, durable: bool) -> io::Result<()> {
        self.write_logged_at(&batch, durable).map(|_| ())
    }

    /// Writes `batch`, logging a failure once; where the trail then ends.
    fn write_logged_at(&self, batch: &[Value], durable: bool) -> io::Result<Tail> {
        match self.write_batch(batch, durable) {
            Ok(t) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    log::warn!("the audit trail in {} is written again", self.dir.display());
                }
                Ok(t)
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

    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn lock_files(&self) -> io::Result<File> {
        loop {
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
            // A prune swaps in a new directory (with its own lock file)
            // while writers wait: a lock on the old one guards nothing.
            let held = f.metadata()?;
            match fs::symlink_metadata(&p) {
                Ok(m) if (m.dev(), m.ino()) == (held.dev(), held.ino()) => return Ok(f),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` on the trail's directory with the trail to itself (this
    /// process's writer and the lock every writer takes); the end this
    /// process cached is read again afterwards. For a prune.
    pub(super) fn exclusive<T>(&self, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
        let mut w = lock(&self.writer);
        let _l = self.lock_files()?;
        let r = f(&self.dir);
        w.cache = None;
        drop(w);
        self.measure();
        r
    }

    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
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
    pub(super) fn give_owner(&self, f: &File) -> io::Result<()> {
        let Some((uid, gid)) = self.owner else {
            return Ok(());
        };
        let m = f.metadata()?;
        if (m.uid(), m.gid()) == (uid, gid) || !crate::os::ids::is_root() {
            return Ok(());
        }
        std::os::unix::fs::fchown(f, Some(uid), Some(gid))
    }

    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
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
    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
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
            return Ok(EMPTY);
        };
        let size = fs::symlink_metadata(&path)?.len();
        for (_, p) in files.iter().rev() {
            if let Some(l) = last_line(p)? {
                return Ok(Tail {
                    file_no: n,
                    size,
                    sequence: l.sequence,
                    hash: l.hash,
                    digest: l.digest && !l.torn,
                    torn: l.torn && p == &path,
                });
            }
        }
        Ok(Tail {
            file_no: n,
            size,
            sequence: 0,
            hash: GENESIS,
            torn: size > 0,
            digest: false,
        })
    }

    /// Writes what is queued, then a signed digest record, durably, and
    /// returns the position of that digest (sequence, line hash): what the
    /// keystore records at a change. None when nothing signs the trail.
    pub fn seal_position(&self) -> io::Result<Option<(u64, [u8; 32])>> {
        let batch = self.take_queue(false);
        let t = match self.write_logged_at(&batch, true) {
            Ok(t) => t,
            Err(e) => {
                self.requeue(batch);
                return Err(e);
            }
        };
        let signed = !lock(&self.keys).is_empty();
        Ok((signed && t.sequence > 0).then_some((t.sequence, t.hash)))
    }

    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn write_batch(&self, batch: &[Value], durable: bool) -> io::Result<Tail> {
        let mut w = lock(&self.writer);
        if batch.is_empty() && !durable {
            return Ok(w.cache.unwrap_or(EMPTY));
        }
        let _l = self.lock_files()?;
        let mut t = self.tail(w.cache)?;
        self.check_floor(&t)?;
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
            tt.digest = false;
        }
        let due = tt.sequence.saturating_sub(w.last_digest_seq) >= DIGEST_EVERY
            || w.last_digest.elapsed() >= DIGEST_INTERVAL
            || durable;
        // A durable write on an empty trail signs it too (a digest at 1),
        // so that the keystore can record a position a deletion falls short of.
        let fresh = durable && tt.sequence == 0;
        let keys = Arc::clone(&lock(&self.keys));
        let seq = tt.sequence + 1;
        // A trail that already ends in a signed digest needs no other.
        let signed = (due && !tt.digest && (tt.sequence > w.last_digest_seq || fresh))
            .then(|| keys.sign_digest(&self.keystore_id, seq, &tt.hash))
            .flatten();
        if let Some(sig) = signed {
            let m = digest_record(seq, &sig, &tt.hash, &self.keystore_id);
            tt.sequence = seq;
            if self.emit(m, &mut tt, &mut buf, &mut file, durable)? {
                new_file = true;
            }
            w.last_digest_seq = tt.sequence;
            tt.digest = true;
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
        drop(w);
        self.measure();
        Ok(t)
    }

    /// Measures the trail's files after a write and raises the alarm once
    /// they pass the size cap (an error in the log, a record in the trail).
    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn measure(&self) {
        let Ok(files) = list_files(&self.dir) else {
            return;
        };
        let bytes: u64 = files
            .iter()
            .filter_map(|(_, p)| fs::symlink_metadata(p).ok())
            .map(|m| m.len())
            .sum();
        self.bytes.store(bytes, Ordering::Relaxed);
        let mut l = lock(&self.limiter);
        if l.set_size(bytes) {
            let max = l.limits().max_bytes;
            drop(l);
            log::error!(
                "AUDIT TRAIL OVER ITS SIZE CAP: {} holds {bytes} bytes, the cap is {max} \
                 ({}); from now on only per-user summaries of file accesses are written for \
                 every user but root. Prune old records (`kmsfs audit prune --before 90d --archive FILE`) or \
                 raise the cap",
                self.dir.display(),
                super::limit::MAX_BYTES_ENV
            );
            lock(&self.queue)
                .records
                .push(super::limit::cap_reached(bytes, max));
        }
    }

    /// What `kmsfs status` shows of the trail: its size and cap, and what
    /// the limits folded or suppressed so far.
    pub fn status(&self) -> Value {
        let l = lock(&self.limiter);
        let (limits, counts) = (l.limits(), l.counts());
        json!({
            "Directory": self.dir.display().to_string(),
            "Bytes": self.bytes.load(Ordering::Relaxed),
            "MaxBytes": limits.max_bytes,
            "OverCap": l.over_cap(),
            "RepeatsAggregated": counts.repeats,
            "RecordsSuppressed": counts.suppressed,
            "RecordsPerSecondPerUser": limits.rate,
            "Burst": limits.burst,
            "WindowSeconds": limits.window.as_secs(),
            "Failing": self.failing(),
            "SignedWith": if lock(&self.keys).has_ed25519() { "Ed25519" } else { "HMAC-SHA256" },
        })
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

    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn write_head(&self, t: &Tail, durable: bool) -> io::Result<()> {
        let keys = Arc::clone(&lock(&self.keys));
        let head = head_value(
            &keys,
            &self.keystore_id,
            &file_name(t.file_no),
            t.size,
            t.sequence,
            &t.hash,
        );
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

/// The signed `HEAD` naming record `sequence` (line hash `hash`), the last
/// of trail file `name` of `size` bytes.
pub(super) fn head_value(
    keys: &SigningKeys,
    keystore_id: &str,
    name: &str,
    size: u64,
    sequence: u64,
    hash: &[u8; 32],
) -> Value {
    let fields = HeadFields {
        file: name,
        size,
        sequence,
        digest: hash,
    };
    let sig = keys.sign_head(keystore_id, &fields);
    let mut head = json!({
        "file": name,
        "size": size,
        "sequence": sequence,
        "digest": hex(hash),
        "signature": sig.as_ref().map(|s| s.signature.clone()),
    });
    // HMAC heads keep the old shape (no algorithm: HMAC-SHA256).
    if let Some(s) = sig.as_ref().filter(|s| s.key_fingerprint.is_some()) {
        head["algorithm"] = json!(s.algorithm);
        head["keystoreId"] = json!(keystore_id);
        head["signingKey"] = json!(s.key_fingerprint);
    }
    head
}

/// The signed digest record `seq`, carrying signature `sig` over the chain
/// up to the record whose hash is `previous`.
fn digest_record(seq: u64, sig: &Signed, previous: &[u8], keystore_id: &str) -> Map<String, Value> {
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
    m.insert("digestAlgorithm".into(), json!(sig.algorithm));
    m.insert("digestSignature".into(), json!(sig.signature));
    if let Some(f) = &sig.key_fingerprint {
        m.insert("keystoreId".into(), json!(keystore_id));
        m.insert("signingKey".into(), json!(f));
    }
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
        let batch = t.take_queue(false);
        if batch.is_empty() {
            continue;
        }
        if t.write_logged_at(&batch, false).is_err() {
            t.requeue(batch);
        }
    }
}

/// The last complete line of a trail file.
struct LastLine {
    sequence: u64,
    hash: [u8; 32],
    /// A partial line follows it.
    torn: bool,
    /// It is a digest record.
    digest: bool,
}

/// The sequence and line hash of the last complete line of a trail file,
/// whether a partial line follows it, and whether it is a digest record.
#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
fn last_line(p: &Path) -> io::Result<Option<LastLine>> {
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
        let v = serde_json::from_slice::<Value>(line).ok();
        let digest = v
            .as_ref()
            .and_then(|v| v.get("eventType"))
            .and_then(Value::as_str)
            == Some(DIGEST_EVENT_TYPE);
        let seq = v
            .and_then(|v| v.get("sequence").and_then(Value::as_u64))
            .ok_or_else(|| {
                invalid(format!(
                    "the last record of {} is not a trail record; run `kmsfs audit verify`",
                    p.display()
                ))
            })?;
        return Ok(Some(LastLine {
            sequence: seq,
            hash: sha256(&[line]),
            torn,
            digest,
        }));
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
