//! Rewrap: every file's data key wrapped again (ReEncrypt, with the file's
//! encryption context) under another key or its own key's newest material.
//! Only headers change; content is never read.
//!
//! Crash safety, per batch of files: (1) each file is locked (an OFD write
//! lock and `LOCK_EX`, never waiting: a file the mount holds open is
//! skipped as busy), its new
//! wrapped key written to the inactive slot with a higher sequence number;
//! (2) one `syncfs` makes those slots durable; (3) the old slots are zeroed;
//! (4) one more `syncfs`; then the locks go. A crash before (2) leaves the
//! old slot current (a torn new slot fails its checksum); after it, the new
//! slot wins by its sequence number whether the old one was cleared or not.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{KeyStatus, Tree};
use crate::envelope::{EncryptedFile, EnvelopeError, file_context};
use crate::format::{Header, SLOT_LEN};
use crate::kms::{KeyMetadata, KeyService, KeyServiceExt, KmsError, RequestContext};

/// Files locked and rewritten together between two `syncfs` calls.
const BATCH: usize = 128;

/// What to rewrap and under which key.
#[derive(Debug, Clone, Default)]
pub struct RewrapOptions {
    /// The key every file moves to (key id, ARN or alias); None: each
    /// file's own key, current material.
    pub to_key: Option<String>,
    /// Only files whose data key is wrapped under this key.
    pub from_key: Option<String>,
}

/// What happened to one file that needs no attention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Outcome")]
pub enum RewrapOutcome {
    /// The data key is now wrapped under `to` (material version `version`).
    Rewrapped {
        /// The key it was under.
        #[serde(rename = "FromKeyId")]
        from: String,
        /// The key it is under now.
        #[serde(rename = "ToKeyId")]
        to: String,
        /// That key's material version.
        #[serde(rename = "KeyMaterialVersion")]
        version: u32,
    },
    /// Already under the target key's current material.
    Current,
    /// Under another key than `--from-key-id`: left alone.
    OtherKey,
    /// An empty backing file (no header yet: the mount gives it one).
    Empty,
}

/// Why one file was not rewrapped. The file is unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Problem")]
pub enum Problem {
    /// Open through a mount (or locked by another rewrap): run again later.
    Busy,
    /// The header is not a valid kmsfs header, or its wrapped key does not
    /// open with the file's context.
    CorruptHeader {
        /// Why.
        #[serde(rename = "Reason")]
        reason: String,
    },
    /// The source or destination key refuses.
    Key {
        /// The key's problem.
        #[serde(rename = "KeyStatus")]
        status: KeyStatus,
        /// The key service's message.
        #[serde(rename = "Message")]
        message: String,
    },
    /// The backing file system failed.
    Io {
        /// The OS error.
        #[serde(rename = "Message")]
        message: String,
    },
}

/// The result for one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    /// Path relative to the backing directory.
    #[serde(rename = "Path")]
    pub path: PathBuf,
    /// Outcome or problem.
    #[serde(flatten, serialize_with = "outcome_or_problem")]
    pub result: Result<RewrapOutcome, Problem>,
}

fn outcome_or_problem<S: serde::Serializer>(
    r: &Result<RewrapOutcome, Problem>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match r {
        Ok(o) => o.serialize(s),
        Err(p) => p.serialize(s),
    }
}

/// Counts over a whole run and the files that need attention.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RewrapReport {
    /// Files looked at.
    #[serde(rename = "Files")]
    pub files: u64,
    /// Files rewrapped.
    #[serde(rename = "Rewrapped")]
    pub rewrapped: u64,
    /// Files left as they were (already current, other key, empty).
    #[serde(rename = "Unchanged")]
    pub unchanged: u64,
    /// Files skipped because they were open: run again.
    #[serde(rename = "Busy")]
    pub busy: u64,
    /// Files with a corrupt header.
    #[serde(rename = "CorruptHeaders")]
    pub corrupt: u64,
    /// Files whose key refused.
    #[serde(rename = "KeyRefused")]
    pub refused: u64,
    /// Files with an I/O error.
    #[serde(rename = "IoErrors")]
    pub io: u64,
    /// Every file with a problem.
    #[serde(rename = "Problems")]
    pub problems: Vec<FileResult>,
}

impl RewrapReport {
    fn add(&mut self, r: &FileResult) {
        self.files += 1;
        match &r.result {
            Ok(RewrapOutcome::Rewrapped { .. }) => self.rewrapped += 1,
            Ok(_) => self.unchanged += 1,
            Err(p) => {
                match p {
                    Problem::Busy => self.busy += 1,
                    Problem::CorruptHeader { .. } => self.corrupt += 1,
                    Problem::Key { .. } => self.refused += 1,
                    Problem::Io { .. } => self.io += 1,
                }
                self.problems.push(r.clone());
            }
        }
    }
}

/// A file whose new slot is written but not yet durable.
struct Pending {
    path: PathBuf,
    file: File,
    old_slot: usize,
    outcome: RewrapOutcome,
}

/// Rewraps files of one backing tree through a key service.
pub struct Rewrapper<'a> {
    ks: &'a dyn KeyService,
    rc: RequestContext<'a>,
    opts: RewrapOptions,
    /// `--to-key-id` and `--from-key-id` resolved to key ids.
    to: Option<KeyMetadata>,
    from: Option<String>,
    /// DescribeKey answers per key id, for the current material version.
    described: HashMap<String, Result<KeyMetadata, Problem>>,
    /// New slots written so far (for the debug build's crash points).
    slots_written: usize,
}

impl<'a> Rewrapper<'a> {
    /// Resolves the options' keys (aliases, ARNs) once; refuses a
    /// destination key that is not enabled before any file is touched.
    pub fn new(
        ks: &'a dyn KeyService,
        rc: RequestContext<'a>,
        opts: RewrapOptions,
    ) -> Result<Self, KmsError> {
        let to = match &opts.to_key {
            Some(k) => {
                let m = ks.describe_key(&rc, k)?;
                if m.key_state != crate::kms::KeyState::Enabled {
                    return Err(KmsError::Disabled { key_id: m.key_id });
                }
                Some(m)
            }
            None => None,
        };
        let from = match &opts.from_key {
            Some(k) => Some(ks.describe_key(&rc, k)?.key_id),
            None => None,
        };
        Ok(Self {
            ks,
            rc,
            opts,
            to,
            from,
            described: HashMap::new(),
            slots_written: 0,
        })
    }

    /// The options this rewrapper runs with.
    pub fn options(&self) -> &RewrapOptions {
        &self.opts
    }

    /// Rewraps `files` (from [`super::walk`] of `tree`), calling `progress`
    /// after each file.
    pub fn run(
        &mut self,
        tree: &Tree,
        files: &[PathBuf],
        progress: &mut dyn FnMut(&FileResult),
    ) -> std::io::Result<RewrapReport> {
        let sync_handle = tree.root();
        let mut report = RewrapReport::default();
        let mut batches_synced = 0;
        for batch in files.chunks(BATCH) {
            let mut pending = Vec::new();
            let mut done = Vec::new();
            for p in batch {
                match self.prepare(tree, p) {
                    Ok(Ok(pend)) => pending.push(pend),
                    Ok(Err(outcome)) => done.push(FileResult {
                        path: p.clone(),
                        result: Ok(outcome),
                    }),
                    Err(problem) => done.push(FileResult {
                        path: p.clone(),
                        result: Err(problem),
                    }),
                }
            }
            done.extend(finish(sync_handle, pending, &mut batches_synced));
            for r in &done {
                report.add(r);
                progress(r);
            }
        }
        Ok(report)
    }

    fn describe(&mut self, key_id: &str) -> Result<KeyMetadata, Problem> {
        if let Some(r) = self.described.get(key_id) {
            return r.clone();
        }
        let r = self.ks.describe_key(&self.rc, key_id).map_err(key_problem);
        self.described.insert(key_id.to_string(), r.clone());
        r
    }

    /// Locks `path`, reads its header and writes the new wrapped key to the
    /// inactive slot (not yet synced). Ok(Err(outcome)): nothing to do.
    fn prepare(
        &mut self,
        tree: &Tree,
        path: &Path,
    ) -> Result<Result<Pending, RewrapOutcome>, Problem> {
        let file = tree.open_file(path, true).map_err(io_problem)?;
        // The mount holds an OFD read lock on every file it has open; the
        // flock is for mounts of earlier versions, which took a shared flock.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Problem::Busy),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_problem(e)),
        }
        match crate::os::beneath::try_ofd_lock(&file, true) {
            Ok(true) => {}
            Ok(false) => return Err(Problem::Busy),
            Err(e) => return Err(io_problem(e)),
        }
        if file.metadata().map_err(io_problem)?.len() == 0 {
            return Ok(Err(RewrapOutcome::Empty));
        }
        let header = EncryptedFile::read_header(&file).map_err(envelope_problem)?;
        let (old_slot, slot) = match (header.active_index(), header.active()) {
            (Some(i), Some(s)) => (i, s.clone()),
            _ => {
                return Err(Problem::CorruptHeader {
                    reason: "no valid key slot".into(),
                });
            }
        };
        if self.from.as_ref().is_some_and(|f| *f != slot.key_id) {
            return Ok(Err(RewrapOutcome::OtherKey));
        }
        let target = match &self.to {
            Some(m) => m.clone(),
            None => self.describe(&slot.key_id)?,
        };
        if target.key_id == slot.key_id
            && target.current_key_material_version == slot.key_material_version
        {
            // A run killed between its two syncs left the old slot valid:
            // clear it now (the current one is durable already).
            if header.slots[1 - old_slot].is_some() {
                return Ok(Ok(Pending {
                    path: path.to_path_buf(),
                    file,
                    old_slot: 1 - old_slot,
                    outcome: RewrapOutcome::Current,
                }));
            }
            return Ok(Err(RewrapOutcome::Current));
        }
        let ctx = file_context(&header.file_id);
        let enc = self
            .ks
            .re_encrypt(&self.rc, &slot.wrapped_key, &ctx, &target.key_id, &ctx)
            .map_err(key_problem)?;
        let (idx, new_slot) = header
            .next_slot(
                enc.key_id.clone(),
                target.current_key_material_version,
                enc.ciphertext_blob,
            )
            .map_err(|e| Problem::CorruptHeader {
                reason: e.to_string(),
            })?;
        let mut new_header = header.clone();
        new_header.slots[idx] = Some(new_slot);
        let bytes = new_header.encode_slot(idx).map_err(|e| Problem::Io {
            message: e.to_string(),
        })?;
        file.write_all_at(&bytes, Header::slot_range(idx).start as u64)
            .map_err(io_problem)?;
        self.slots_written += 1;
        crash_point("write", self.slots_written);
        Ok(Ok(Pending {
            path: path.to_path_buf(),
            file,
            old_slot,
            outcome: RewrapOutcome::Rewrapped {
                from: slot.key_id,
                to: enc.key_id,
                version: target.current_key_material_version,
            },
        }))
    }
}

/// Steps (2) to (4) of the module comment for one batch.
/// Tests of crash safety (debug builds only): `KMSFS_TEST_REWRAP_DIE=STAGE:N`
/// aborts the process, leaving everything as a SIGKILL would, at the N-th
/// point of STAGE: `write` (after the N-th new slot is written, before its
/// batch is synced), `synced` (after the first syncfs of the N-th batch,
/// from 0, that had work; before the old slots are cleared), `cleared`
/// (after they are cleared, before the second syncfs). A release build has
/// no such switch.
#[cfg(debug_assertions)]
fn crash_point(stage: &str, n: usize) {
    if std::env::var("KMSFS_TEST_REWRAP_DIE").is_ok_and(|v| v == format!("{stage}:{n}")) {
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
fn crash_point(_stage: &str, _n: usize) {}

fn finish(
    sync_handle: &File,
    pending: Vec<Pending>,
    batches_synced: &mut usize,
) -> Vec<FileResult> {
    if pending.is_empty() {
        return Vec::new();
    }
    let batch_no = *batches_synced;
    *batches_synced += 1;
    let synced = crate::os::space::syncfs(sync_handle);
    crash_point("synced", batch_no);
    if let Err(e) = synced {
        // Either slot may be current now; both are valid, nothing is cleared.
        let message = format!("the new key slot could not be made durable: {e}");
        return pending
            .into_iter()
            .map(|p| FileResult {
                path: p.path.clone(),
                result: Err(Problem::Io {
                    message: message.clone(),
                }),
            })
            .collect();
    }
    let zeros = [0u8; SLOT_LEN];
    let cleared: Vec<_> = pending
        .into_iter()
        .map(|p| {
            let r = p
                .file
                .write_all_at(&zeros, Header::slot_range(p.old_slot).start as u64);
            (p, r)
        })
        .collect();
    crash_point("cleared", batch_no);
    let synced = crate::os::space::syncfs(sync_handle);
    cleared
        .into_iter()
        .map(|(p, r)| {
            let failed = match (r, &synced) {
                (Ok(()), Ok(())) => None,
                (Err(e), _) => Some(e.to_string()),
                (_, Err(e)) => Some(e.to_string()),
            };
            let result = match failed {
                None => Ok(p.outcome),
                // Rewrapped and durable: the old slot, still valid, loses
                // by its lower sequence number; a rerun clears it.
                Some(e) => Err(Problem::Io {
                    message: format!(
                        "rewrapped, but the old key slot could not be cleared (run again): {e}"
                    ),
                }),
            };
            FileResult {
                path: p.path.clone(),
                result,
            }
        })
        .collect()
}

fn io_problem(e: std::io::Error) -> Problem {
    Problem::Io {
        message: e.to_string(),
    }
}

fn key_problem(e: KmsError) -> Problem {
    match KeyStatus::of_error(&e) {
        Some(status) => Problem::Key {
            status,
            message: e.to_string(),
        },
        None => match e {
            KmsError::InvalidCiphertext { reason } => Problem::CorruptHeader {
                reason: format!("the wrapped data key does not open: {reason}"),
            },
            other => Problem::Io {
                message: other.to_string(),
            },
        },
    }
}

fn envelope_problem(e: EnvelopeError) -> Problem {
    match e {
        EnvelopeError::Io(e) => io_problem(e),
        EnvelopeError::Kms(k) => key_problem(k),
        other => Problem::CorruptHeader {
            reason: other.to_string(),
        },
    }
}
