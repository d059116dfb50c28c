//! Whole-tree commands: rewrap and fsck. Thin: they parse, call
//! `crate::tree`, show a progress bar on a terminal and print the result.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use super::fs::existing_dir;
use super::{CliError, ErrorClass, GlobalArgs, OutputFormat, keystore};
use crate::kms::LocalKeyStore;
use crate::tree::{self, FileStatus, Problem, RewrapOptions, Rewrapper};

/// Arguments of `kmsfs rewrap`.
#[derive(Debug, clap::Args)]
pub struct RewrapArgs {
    /// The backing directory.
    pub backing: PathBuf,
    /// Move every file to this key (key id, ARN or alias/NAME) [default:
    /// each file's own key, current material].
    #[arg(long, value_name = "K")]
    pub to_key_id: Option<String>,
    /// Only files whose data key is wrapped under this key.
    #[arg(long, value_name = "K")]
    pub from_key_id: Option<String>,
    /// With --to-key-id: leave the backing directory's default key (the one
    /// its new files get) as it is. Without this, moving every file (or
    /// every file of the default key) to a new key makes it the default too.
    #[arg(long, requires = "to_key_id")]
    pub keep_default_key: bool,
}

/// Arguments of `kmsfs fsck`.
#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// The backing directory.
    pub backing: PathBuf,
    /// Headers and key states only: no data key is unwrapped, no block read.
    #[arg(long)]
    pub quick: bool,
}

/// Arguments of `kmsfs export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The backing directory (not served by a mount while this runs).
    pub backing: PathBuf,
    /// Where the plaintext tree goes: a new or empty directory.
    pub dest: PathBuf,
}

/// Arguments of `kmsfs import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The plain tree to encrypt.
    pub src: PathBuf,
    /// The backing directory (made if missing; not served by a mount while
    /// this runs). Names that exist there are left alone.
    pub backing: PathBuf,
    /// The CMK new files are encrypted under [default: the backing
    /// directory's default key, or the keystore's].
    #[arg(long, value_name = "K")]
    pub key_id: Option<String>,
    /// A new backing directory keeps its names in clear (as `-o
    /// plaintextnames` at a first mount) [default: encrypted names]. No
    /// effect on a backing directory used before.
    #[arg(long)]
    pub plaintextnames: bool,
}

/// The key service for a whole-tree command: its thousands of records go to
/// the audit trail's background writer; [`finish_audit`] writes them out
/// before the command reports.
fn bulk_key_service(g: &GlobalArgs) -> Result<Arc<LocalKeyStore>, CliError> {
    let ks = keystore::open_key_service(g)?;
    ks.batch_crypto_audit();
    Ok(ks)
}

/// Writes the records a whole-tree command queued; a command whose records
/// cannot be written fails (exit 7), though its work on the tree is done.
fn finish_audit(g: &GlobalArgs) -> Result<(), CliError> {
    keystore::open_key_service(g)?
        .finish_audit_trail()
        .map_err(|e| {
            CliError::new(
                ErrorClass::Io,
                format!("the audit trail could not be written: {e}"),
            )
        })
}

/// A progress bar on stderr when it is a terminal: bytes done of the
/// tree's bytes in binary units, an integer rate, the ETA from bytes; one
/// line within 80 columns. Cleared when dropped. The tools call `tick`
/// once per file, in the order of the walk's list, so the n-th tick is the
/// n-th file's bytes.
struct Progress {
    bar: Option<ProgressBar>,
    sizes: Vec<u64>,
    done: std::cell::Cell<usize>,
}

/// The bar's template: at most 20 + 1 + 23 + 2 + 10 + 6 + 8 = 70 columns.
const PROGRESS_TEMPLATE: &str = "{bar:20} {bytes}/{total_bytes}  {rate}  ETA {eta_precise}";

/// Bytes in binary units without decimals, as rates are shown ("45 MiB").
fn human_integer_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024 && u + 1 < UNITS.len() {
        v /= 1024;
        u += 1;
    }
    format!("{v} {}", UNITS[u])
}

fn progress_style() -> ProgressStyle {
    ProgressStyle::with_template(PROGRESS_TEMPLATE)
        .map(|s| {
            s.with_key(
                "rate",
                |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}/s", human_integer_bytes(st.per_sec() as u64));
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress {
    /// A bar over the files `files` of `t` (their sizes read through the
    /// tree's descriptors; a file that cannot be read counts 0 bytes).
    fn for_files(t: &tree::Tree, files: &[PathBuf]) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                bar: None,
                sizes: Vec::new(),
                done: 0.into(),
            };
        }
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| t.node(f).and_then(|n| n.metadata()).map_or(0, |m| m.len()))
            .collect();
        let pb = ProgressBar::new(sizes.iter().sum());
        pb.set_style(progress_style());
        Self {
            bar: Some(pb),
            sizes,
            done: 0.into(),
        }
    }

    fn tick(&self) {
        if let Some(pb) = &self.bar {
            let i = self.done.get();
            pb.inc(self.sizes.get(i).copied().unwrap_or(0));
            self.done.set(i + 1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}

/// Prints `report` as JSON when asked for JSON; false when text is wanted.
pub(super) fn printed_json(g: &GlobalArgs, report: &impl serde::Serialize) -> bool {
    if g.output != OutputFormat::Json {
        return false;
    }
    match serde_json::to_value(report) {
        Ok(v) => crate::cli::output::print_report(&v),
        Err(e) => log::error!("the report does not serialize: {e}"),
    }
    true
}

/// Opens the tree `path` names and lists it through its descriptor.
fn open_and_walk(path: &Path, what: &str) -> Result<(tree::Tree, tree::Walk), CliError> {
    let failed = |e: std::io::Error| {
        CliError::new(
            ErrorClass::NotFound,
            format!("{what} {}: {e}", path.display()),
        )
    };
    let t = tree::Tree::open(path).map_err(failed)?;
    let w = tree::walk(&t).map_err(failed)?;
    for (dir, e) in &w.errors {
        eprintln!("kmsfs: cannot read {}: {e}", path.join(dir).display());
    }
    Ok((t, w))
}

/// `kmsfs rewrap`.
pub fn rewrap(g: &GlobalArgs, a: RewrapArgs) -> Result<(), CliError> {
    let ks = bulk_key_service(g)?;
    let new_default = a
        .to_key_id
        .clone()
        .filter(|_| !a.keep_default_key)
        .map(|to| (to, a.from_key_id.clone()));
    let mut rw = Rewrapper::new(
        &*ks,
        super::cli_context(),
        RewrapOptions {
            to_key: a.to_key_id,
            from_key: a.from_key_id,
        },
    )?;
    let (t, w) = open_and_walk(&a.backing, "backing directory")?;
    let progress = Progress::for_files(&t, &w.files);
    let start = std::time::Instant::now();
    let report = rw.run(&t, &w.files, &mut |_| progress.tick())?;
    drop(progress);
    let names = rewrap_name_key(&ks, &keystore::keystore_dir(g), &a.backing, rw.options());
    let resealed = names
        .as_ref()
        .ok()
        .map(|_| reseal_old_targets(&a.backing, &t, &w, &*ks));
    finish_audit(g)?;
    let names = names?;
    let resealed = resealed.transpose()?.flatten();
    let secs = start.elapsed().as_secs_f64();
    if !printed_json(g, &report) {
        for p in &report.problems {
            if let Err(problem) = &p.result {
                println!("{}: {}", p.path.display(), describe_problem(problem));
            }
        }
        println!(
            "rewrap: {} files, {} rewrapped, {} unchanged, {} busy, {} corrupt, {} refused by their key, {} I/O errors ({:.1} s)",
            report.files,
            report.rewrapped,
            report.unchanged,
            report.busy,
            report.corrupt,
            report.refused,
            report.io,
            secs
        );
        print_rewrap_names(names.as_deref(), resealed.as_ref());
    }
    if let Some((to, from)) = new_default {
        follow_default_key(g, &a.backing, &to, from.as_deref(), &ks);
    }
    let fail = |class, what: &str| Err(CliError::new(class, what.to_string()));
    if report.corrupt > 0 {
        fail(
            ErrorClass::Corrupt,
            "some files have a corrupt header and were left unchanged",
        )
    } else if report.refused > 0 {
        fail(
            ErrorClass::Refused,
            "some files' keys refused; those files were left unchanged",
        )
    } else if report.io > 0 {
        fail(ErrorClass::Io, "some files could not be rewritten")
    } else if report.busy > 0 {
        Err(CliError::new(
            ErrorClass::Retry,
            format!(
                "{} files were open through a mount and skipped",
                report.busy
            ),
        )
        .hint("run the same command again once they are closed"))
    } else {
        Ok(())
    }
}

/// The name key of a tree with encrypted names, wrapped again (ReEncrypt:
/// its plaintext never leaves the key service) under `--to-key-id` or its
/// own key's newest material, and recorded in the binding file by an
/// atomic replace; no name changes. Returns the key it is now under (None:
/// plain names, or not under `--from-key-id`).
fn rewrap_name_key(
    ks: &LocalKeyStore,
    dir: &Path,
    backing: &Path,
    o: &RewrapOptions,
) -> Result<Option<String>, CliError> {
    use crate::kms::KeyServiceExt;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(m) = crate::daemon::read_marker(backing)? else {
        return Ok(None);
    };
    let Some(wrapped) = m.wrapped_name_key()? else {
        return Ok(None);
    };
    // The keystore's record knows the tree by the path its mounts resolved.
    #[allow(clippy::disallowed_methods)] // the operator's own argument
    let abs = std::fs::canonicalize(backing)
        .map_err(|e| CliError::new(ErrorClass::NotFound, format!("{}: {e}", backing.display())))?;
    // Never wraps again (and so records) a name key someone swapped in.
    crate::daemon::check_recorded(dir, &abs, false)?;
    let caller = super::cli_context();
    let ctx = crate::envelope::names::names_context();
    let source = crate::kms::blob::BlobHeader::parse(&wrapped)?.key_id_string();
    if let Some(from) = &o.from_key {
        let from = ks.describe_key(&caller, from)?.key_id;
        if from != source {
            return Ok(None);
        }
    }
    let to = match &o.to_key {
        Some(k) => ks.describe_key(&caller, k)?.key_id,
        None => source,
    };
    let e = ks.re_encrypt(&caller, &wrapped, &ctx, &to, &ctx)?;
    crate::daemon::replace_marker(
        backing,
        &crate::daemon::BackingMarker {
            name_key: Some(b64.encode(&e.ciphertext_blob)),
            ..m
        },
    )?;
    crate::daemon::record_choices(dir, &abs);
    Ok(Some(e.key_id))
}

/// rewrap's lines about a tree's names: the key its name key is now under,
/// the symlink targets re-sealed and those that could not be.
fn print_rewrap_names(key: Option<&str>, resealed: Option<&(u64, Vec<tree::NameFinding>)>) {
    if let Some(key) = key {
        println!("rewrap: the name key is now under {key}");
    }
    if let Some((n, failed)) = resealed {
        for f in failed {
            println!(
                "{}: symlink target not re-sealed: {}",
                f.path.display(),
                f.reason
            );
        }
        if *n > 0 {
            println!("rewrap: {n} symlink targets re-sealed for their links");
        }
    }
}

/// Symlink targets of the old form (bound to the tree only) re-sealed for
/// their links, in a tree with encrypted names that no mount serves (a
/// mount's nodes would go stale under it); None otherwise. The count, and
/// the links that could not be (left as they were).
fn reseal_old_targets(
    backing: &Path,
    t: &tree::Tree,
    w: &tree::Walk,
    ks: &dyn crate::kms::KeyService,
) -> Result<Option<(u64, Vec<tree::NameFinding>)>, CliError> {
    let Ok(Some(wrapped)) = t.wrapped_name_key() else {
        return Ok(None);
    };
    if crate::daemon::serving_mount(backing).is_some() {
        return Ok(None);
    }
    tree::reseal_old_targets(t, w, &wrapped, ks, &super::cli_context())
        .map(Some)
        .map_err(|e| match e {
            crate::envelope::names::NameError::Kms(k) => CliError::from(k),
            e => CliError::new(ErrorClass::Corrupt, format!("the name key: {e}")),
        })
}

/// After `rewrap --to-key-id TO`: makes TO the backing directory's default
/// key (the one its new files get), when the rewrap moved every file or
/// every file of the old default key, and says so. A backing directory
/// without a marker (never mounted) is left alone; a failure is a warning,
/// the rewrap itself is done.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
fn follow_default_key(
    g: &GlobalArgs,
    backing: &Path,
    to: &str,
    from: Option<&str>,
    ks: &LocalKeyStore,
) {
    use crate::kms::KeyServiceExt;
    let Ok(backing) = std::fs::canonicalize(backing) else {
        return;
    };
    let Ok(Some(m)) = crate::daemon::read_marker(&backing) else {
        return;
    };
    if let Some(from) = from {
        let from = ks
            .describe_key(&super::cli_context(), from)
            .map(|k| k.key_id)
            .unwrap_or_default();
        if from != m.default_key_id {
            return;
        }
    }
    let r = super::fs::marker_for_new_default(g, &backing, to).and_then(|(m, key)| match m {
        None => Ok(None),
        Some(m) => {
            let old = m.default_key_id.clone();
            crate::daemon::replace_marker(
                &backing,
                &crate::daemon::BackingMarker {
                    default_key_id: key.clone(),
                    ..m
                },
            )?;
            Ok(Some((old, key)))
        }
    });
    match r {
        Ok(None) => {}
        Ok(Some((old, key))) => {
            let line = format!(
                "default key: new files in {} are now encrypted under {key} (was {old}; \
                 --keep-default-key leaves it)",
                backing.display()
            );
            if g.output == OutputFormat::Json {
                eprintln!("kmsfs: {line}");
            } else {
                println!("{line}");
            }
            super::fs::note_running_mount(&backing, &old);
        }
        Err(e) => eprintln!(
            "kmsfs: the default key of {} was left as it was: {}{}",
            backing.display(),
            e.message,
            e.hint
                .map(|h| format!(" ({h}; or `kmsfs set-default-key`)"))
                .unwrap_or_default()
        ),
    }
}

fn describe_problem(p: &Problem) -> String {
    match p {
        Problem::Busy => "busy (open through a mount): skipped, run again".into(),
        Problem::CorruptHeader { reason } => format!("corrupt header, unchanged: {reason}"),
        Problem::Key { status, message } => {
            format!("key {}, unchanged: {message}", status.label())
        }
        Problem::Io { message } => format!("I/O error: {message}"),
    }
}

/// `kmsfs fsck`.
pub fn fsck(g: &GlobalArgs, a: FsckArgs) -> Result<(), CliError> {
    let ks = bulk_key_service(g)?;
    let (t, w) = open_and_walk(&a.backing, "backing directory")?;
    let progress = Progress::for_files(&t, &w.files);
    let start = std::time::Instant::now();
    let report = tree::fsck_tree(
        &t,
        &w.files,
        &*ks,
        &super::cli_context(),
        a.quick,
        &mut |_| progress.tick(),
    );
    drop(progress);
    let names = fsck_names(&a.backing, &t, &w, &*ks)?;
    finish_audit(g)?;
    let secs = start.elapsed().as_secs_f64();
    #[derive(serde::Serialize)]
    struct WithNames<'a> {
        #[serde(flatten)]
        files: &'a tree::FsckReport,
        #[serde(rename = "EncryptedNames", skip_serializing_if = "Option::is_none")]
        names: &'a Option<tree::NamesReport>,
    }
    let shown = WithNames {
        files: &report,
        names: &names,
    };
    if !printed_json(g, &shown) {
        print_fsck(&report, names.as_ref(), secs);
    }
    fsck_verdict(&report, names.as_ref())
}

/// Encrypted names: every name opened in its directory, every symlink
/// target; None for a tree with plain names.
fn fsck_names(
    backing: &Path,
    t: &tree::Tree,
    w: &tree::Walk,
    ks: &dyn crate::kms::KeyService,
) -> Result<Option<tree::NamesReport>, CliError> {
    let wrapped = t
        .wrapped_name_key()
        .map_err(|e| CliError::new(ErrorClass::Corrupt, format!("{}: {e}", backing.display())))?;
    let Some(k) = &wrapped else {
        return Ok(None);
    };
    tree::check_names(t, w, k, ks, &super::cli_context())
        .map(Some)
        .map_err(|e| match e {
            crate::envelope::names::NameError::Kms(k) => CliError::from(k),
            e => CliError::new(ErrorClass::Corrupt, format!("the name key: {e}")),
        })
}

/// fsck's findings for people: refused names, damaged or unreadable
/// files, each key's files, the totals.
fn print_fsck(report: &tree::FsckReport, names: Option<&tree::NamesReport>, secs: f64) {
    if let Some(n) = names {
        for f in &n.refused {
            println!("{}: name refused: {}", f.path.display(), f.reason);
        }
        for p in &n.old_targets {
            println!(
                "{}: symlink target of the old form (bound to the tree, not to its link)",
                p.display()
            );
        }
        println!(
            "names: {} names and {} symlink targets open, {} refused",
            n.names,
            n.targets,
            n.refused.len()
        );
        if !n.old_targets.is_empty() {
            println!(
                "names: {} symlink targets of the old form, bound to the tree only \
                 (`kmsfs rewrap` re-seals them for their links)",
                n.old_targets.len()
            );
        }
    }
    for f in &report.findings {
        let what = match &f.status {
            FileStatus::Ok | FileStatus::Empty => continue,
            FileStatus::KeyUnusable { key } => format!(
                "unreadable: key {} is {}",
                f.key_id.as_deref().unwrap_or("?"),
                key.label()
            ),
            other => describe_status(other),
        };
        println!("{}: {what}", f.path.display());
    }
    for (k, s) in &report.keys {
        println!(
            "key {k}: {} files, {} bytes, {}",
            s.files,
            s.bytes,
            s.status.label()
        );
    }
    println!(
        "fsck: {} files, {} bytes, {} corrupt, {} unreadable, {} I/O errors ({:.1} s)",
        report.files, report.bytes, report.corrupt, report.unreadable, report.io, secs
    );
}

/// fsck's exit: damage first, then refused names, then unusable keys.
fn fsck_verdict(
    report: &tree::FsckReport,
    names: Option<&tree::NamesReport>,
) -> Result<(), CliError> {
    let bad_names = names.map_or(0, |n| n.refused.len());
    if report.corrupt > 0 || report.io > 0 {
        Err(CliError::new(
            ErrorClass::Corrupt,
            format!("{} damaged files", report.corrupt + report.io),
        ))
    } else if bad_names > 0 {
        Err(CliError::new(
            ErrorClass::Corrupt,
            format!("{bad_names} names or symlink targets refused (moved, copied or edited)"),
        ))
    } else if report.unreadable > 0 {
        Err(CliError::new(
            ErrorClass::Refused,
            format!(
                "{} files cannot be read: their key is not usable",
                report.unreadable
            ),
        ))
    } else {
        Ok(())
    }
}

/// Takes the backing directory's lock, so that no mount serves it while a
/// whole-tree copy runs; refused, naming the mount, when one does.
fn lock_unmounted(backing: &Path, command: &str) -> Result<Option<std::fs::File>, CliError> {
    if let Some(mp) = crate::daemon::serving_mount(backing) {
        return Err(CliError::new(
            ErrorClass::General,
            format!(
                "{} is mounted at {}: `kmsfs {command}` works on an unmounted tree",
                backing.display(),
                mp.display()
            ),
        )
        .hint(format!(
            "unmount it first (`kmsfs unmount {}`), or work through the mount",
            mp.display()
        )));
    }
    match crate::daemon::lock_backing(backing, false) {
        Ok((lock, _read_only)) => Ok(lock),
        // Served, but by no mount this process can see (another mount
        // namespace, another host on shared storage).
        Err(crate::daemon::MountError::State(m, _)) => Err(CliError::new(ErrorClass::General, m)
            .hint(format!(
                "unmount it wherever it is mounted (`kmsfs status` lists this host's mounts), \
                 then run `kmsfs {command}` again"
            ))),
        Err(e) => Err(e.into()),
    }
}

fn describe_status(s: &FileStatus) -> String {
    match s {
        FileStatus::Ok | FileStatus::Empty => "ok".into(),
        FileStatus::CorruptHeader { reason } => format!("corrupt header: {reason}"),
        FileStatus::CorruptName { reason } => format!("refused: {reason}"),
        FileStatus::CorruptBlocks { offsets } => format!(
            "corrupt blocks at plaintext offsets {}",
            offsets
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        FileStatus::KeyUnusable { key } => format!("key {}", key.label()),
        FileStatus::Io { message } => message.clone(),
    }
}

/// The export's destination, made (or taken when empty) and made this
/// process's own, 0700, before anything goes into it (`tree::open_dest`).
fn empty_dest(dest: &Path) -> Result<(tree::Tree, PathBuf), CliError> {
    let t = tree::open_dest(dest).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTEMPTY) {
            CliError::new(
                ErrorClass::Usage,
                format!("{} is not empty", dest.display()),
            )
            .hint("export into a new or empty directory: nothing there is replaced")
        } else {
            CliError::new(ErrorClass::NotFound, format!("{}: {e}", dest.display()))
        }
    })?;
    Ok((t, existing_dir(dest, "destination")?))
}

/// The name key of the tree `t` with encrypted names (`empty`: it holds
/// nothing, so a missing key is no error),
/// unwrapped for the caller as the mount unwraps it (the key service checks
/// the CMK's state and policy, and records it); None for plain names.
fn name_key(
    backing: &Path,
    t: &tree::Tree,
    empty: bool,
    ks: &dyn crate::kms::KeyService,
) -> Result<Option<crate::envelope::names::NameKey>, CliError> {
    use crate::envelope::names::{NameError, NameKey};
    let corrupt =
        |e: String| CliError::new(ErrorClass::Corrupt, format!("{}: {e}", backing.display()));
    if !t.names_encrypted().map_err(|e| corrupt(e.to_string()))? {
        return Ok(None);
    }
    let Some(wrapped) = t.wrapped_name_key().map_err(|e| corrupt(e.to_string()))? else {
        // Marked for encrypted names but never served: nothing was named yet.
        if empty {
            return Ok(None);
        }
        return Err(corrupt(
            "marked for encrypted names but its binding file holds no name key".into(),
        ));
    };
    NameKey::unwrap(ks, &super::cli_context(), &wrapped)
        .map(Some)
        .map_err(|e| match e {
            NameError::Kms(k) => {
                let c = CliError::from(k);
                CliError {
                    message: format!(
                        "{}: its names do not open (the name key is refused): {}",
                        backing.display(),
                        c.message
                    ),
                    ..c
                }
            }
            e => corrupt(format!("the name key: {e}")),
        })
}

/// The tree's directory-key MAC key, unwrapped for the caller under the
/// binding file's default key only (as the mount trusts it); None when the
/// tree has none or it does not open (said on stderr: directories' key
/// records are then refused, each listed).
fn record_key(
    backing: &Path,
    m: Option<&crate::daemon::BackingMarker>,
    ks: &dyn crate::kms::KeyService,
) -> Option<tree::RecordKey> {
    let m = m?;
    let wrapped = match m.wrapped_dir_key_mac() {
        Ok(w) => w?,
        Err(e) => {
            eprintln!("kmsfs: {}: {e}", backing.display());
            return None;
        }
    };
    match tree::RecordKey::unwrap(ks, &super::cli_context(), &wrapped, &m.default_key_id) {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!(
                "kmsfs: {}: the directory-key MAC key does not open ({e}): directories' own \
                 keys are refused",
                backing.display()
            );
            None
        }
    }
}

/// `kmsfs export`.
pub fn export(g: &GlobalArgs, a: ExportArgs) -> Result<(), CliError> {
    let backing = existing_dir(&a.backing, "backing directory")?;
    let _lock = lock_unmounted(&backing, "export")?;
    let marker = crate::daemon::read_marker(&backing)?;
    if let Some(m) = &marker {
        let ks = keystore::open_key_service(g)?;
        if ks.keystore_id() != m.keystore_id {
            return Err(CliError::new(
                ErrorClass::Refused,
                format!(
                    "{} belongs to keystore {}, not to {}",
                    backing.display(),
                    m.keystore_id,
                    ks.keystore_id()
                ),
            )
            .hint("pass the --keystore DIR the directory was mounted with"));
        }
    }
    let ks = bulk_key_service(g)?;
    let (t, w) = open_and_walk(&backing, "backing directory")?;
    // Names first: a caller the name key refuses gets no destination made.
    let names = name_key(
        &backing,
        &t,
        w.files.is_empty() && w.dirs.is_empty() && w.links.is_empty(),
        &*ks,
    );
    let names = match names {
        Ok(n) => n,
        Err(e) => {
            // The refusal is the answer; a trail that cannot be written
            // (said on stderr) does not hide it.
            let _ = finish_audit(g);
            return Err(e);
        }
    };
    let (dest_tree, dest) = empty_dest(&a.dest)?;
    if dest.starts_with(&backing) {
        return Err(CliError::new(
            ErrorClass::Usage,
            "the destination must not be inside the backing directory",
        ));
    }
    let keys = tree::TreeKeys {
        names,
        records: record_key(&backing, marker.as_ref(), &*ks),
        dir_key_list: None,
    };
    let progress = Progress::for_files(&t, &w.files);
    let start = std::time::Instant::now();
    let report = tree::export_tree(
        &t,
        &w,
        &dest_tree,
        &*ks,
        &super::cli_context(),
        keys,
        &mut || progress.tick(),
    );
    drop(progress);
    finish_audit(g)?;
    finish_copy(g, "export", &report, start)
}

/// `kmsfs import`.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
pub fn import(g: &GlobalArgs, a: ImportArgs) -> Result<(), CliError> {
    let src = existing_dir(&a.src, "source directory")?;
    if let Err(e) = std::fs::create_dir_all(&a.backing) {
        return Err(CliError::new(
            ErrorClass::NotFound,
            format!("backing directory {}: {e}", a.backing.display()),
        ));
    }
    let backing = existing_dir(&a.backing, "backing directory")?;
    if backing.starts_with(&src) || src.starts_with(&backing) {
        return Err(CliError::new(
            ErrorClass::Usage,
            "the source and the backing directory must not contain each other",
        ));
    }
    let _lock = lock_unmounted(&backing, "import")?;
    let survey = crate::daemon::survey(&backing);
    let fresh = survey.entries == 0 && crate::daemon::read_marker(&backing)?.is_none();
    let bound = crate::daemon::bind(
        &keystore::key_source(g),
        a.key_id.as_deref(),
        &backing,
        &survey,
    )?;
    let keystore_dir = keystore::keystore_dir(g);
    // Never encrypts names under a name key someone swapped into the
    // binding file (the keystore recorded the tree's at its first use).
    if !fresh {
        crate::daemon::check_recorded(&keystore_dir, &backing, false)?;
    }
    for n in &bound.notices {
        eprintln!("kmsfs: {n}");
    }
    let (ks, key_id, marker) = (bound.ks, bound.key_id, bound.new_marker);
    // The same (shared) keystore instance: batch its records.
    bulk_key_service(g)?;
    let rc = super::cli_context();
    let layout = crate::daemon::tree_layout(&backing, &survey)?;
    let mut m = import_marker(&backing, &a, marker, layout, survey.entries, &*ks, &key_id)?;
    crate::daemon::remember_backing(&keystore_dir, &backing);
    crate::daemon::record_choices(&keystore_dir, &backing);
    let (src_tree, w) = open_and_walk(&src, "source directory")?;
    let backing_tree = tree::Tree::open(&backing).map_err(|e| {
        CliError::new(
            ErrorClass::NotFound,
            format!("backing directory {}: {e}", backing.display()),
        )
    })?;
    let records = import_record_key(&backing, m.as_mut(), &src_tree, &w, &*ks)?;
    let keys = tree::TreeKeys {
        names: name_key(&backing, &backing_tree, false, &*ks)?,
        records,
        dir_key_list: Some(keystore_dir.clone()),
    };
    let progress = Progress::for_files(&src_tree, &w.files);
    let start = std::time::Instant::now();
    let report = tree::import_tree(
        &src_tree,
        &w,
        &backing_tree,
        &*ks,
        &rc,
        tree::NewFiles {
            key_id: &key_id,
            layout,
        },
        keys,
        &mut || progress.tick(),
    );
    drop(progress);
    finish_audit(g)?;
    finish_copy(g, &format!("import under {key_id}"), &report, start)
}

/// The binding file of an import's backing directory: a new one (`new`)
/// written as a first mount writes it (encrypted names for an empty
/// directory unless --plaintextnames), and a name key made for a tree marked
/// for encrypted names that has none yet (nothing was named in it).
fn import_marker(
    backing: &Path,
    a: &ImportArgs,
    new: Option<crate::daemon::BackingMarker>,
    layout: crate::format::Layout,
    entries: usize,
    ks: &dyn crate::kms::KeyService,
    key_id: &str,
) -> Result<Option<crate::daemon::BackingMarker>, CliError> {
    if let Some(m) = new {
        let m = crate::daemon::BackingMarker {
            block_format: layout.version(),
            encrypted_names: Some(entries == 0 && !a.plaintextnames),
            ..m
        };
        crate::daemon::write_marker(backing, &m)?;
    } else if a.plaintextnames {
        eprintln!(
            "kmsfs: --plaintextnames has no effect on {}: its names stay as its first use chose",
            backing.display()
        );
    }
    let mut m = crate::daemon::read_marker(backing)?;
    if let Some(m) = &mut m
        && m.encrypted_names == Some(true)
        && m.name_key.is_none()
        && entries == 0
    {
        use base64::Engine;
        let (_, wrapped) =
            crate::envelope::names::NameKey::generate(ks, &super::cli_context(), key_id).map_err(
                |e| match e {
                    crate::envelope::names::NameError::Kms(k) => CliError::from(k),
                    e => CliError::new(ErrorClass::Io, format!("making the name key: {e}")),
                },
            )?;
        m.name_key = Some(base64::engine::general_purpose::STANDARD.encode(&wrapped));
        crate::daemon::replace_marker(backing, m)?;
    }
    Ok(m)
}

/// The MAC key of the directory key records an import checks and makes:
/// the tree's, or, when the source asks for a directory key and the tree
/// has none, a new one under the tree's default key, stored in the binding
/// file (as the mount's first `set-key` does).
fn import_record_key(
    backing: &Path,
    m: Option<&mut crate::daemon::BackingMarker>,
    src: &tree::Tree,
    w: &tree::Walk,
    ks: &dyn crate::kms::KeyService,
) -> Result<Option<tree::RecordKey>, CliError> {
    use base64::Engine;
    let Some(m) = m else { return Ok(None) };
    if m.dir_key_mac.is_some() || !tree::asks_dir_keys(src, w) {
        return Ok(record_key(backing, Some(m), ks));
    }
    let (key, wrapped) = tree::RecordKey::generate(ks, &super::cli_context(), &m.default_key_id)?;
    m.dir_key_mac = Some(base64::engine::general_purpose::STANDARD.encode(&wrapped));
    crate::daemon::replace_marker(backing, m)?;
    Ok(Some(key))
}

/// Prints what an export or import did and gives its exit status: 5 for
/// corrupt files, 4 for keys that refused, 7 for I/O errors, else 0.
fn finish_copy(
    g: &GlobalArgs,
    what: &str,
    report: &tree::CopyReport,
    start: std::time::Instant,
) -> Result<(), CliError> {
    if !printed_json(g, report) {
        for s in &report.skipped {
            println!("{}: {}", s.path.display(), describe_status(&s.status));
        }
        println!(
            "{what}: {} files ({} bytes), {} directories, {} links; not copied: {} corrupt, \
                 {} unreadable, {} existing, {} I/O errors, {} special ({:.1} s)",
            report.files,
            report.bytes,
            report.dirs,
            report.links,
            report.corrupt,
            report.unreadable,
            report.existing,
            report.io,
            report.special,
            start.elapsed().as_secs_f64()
        );
    }
    if report.corrupt > 0 {
        Err(CliError::new(
            ErrorClass::Corrupt,
            format!("{} corrupt files were not copied", report.corrupt),
        )
        .hint("`kmsfs fsck BACKING` lists the damaged blocks; restore those files from a backup"))
    } else if report.unreadable > 0 {
        Err(CliError::new(
            ErrorClass::Refused,
            format!(
                "{} entries were not copied: their key is not usable (under a directory whose \
                 own key refused, none is)",
                report.unreadable
            ),
        ))
    } else if report.io > 0 {
        Err(CliError::new(
            ErrorClass::Io,
            format!("{} entries could not be copied", report.io),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A terminal of 80 columns that keeps what is drawn.
    #[derive(Debug, Default)]
    struct Term80(std::sync::Mutex<Vec<String>>);

    impl indicatif::TermLike for Term80 {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if let Ok(mut v) = self.0.lock() {
                v.push(s.to_string());
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rates_are_integers_in_binary_units() {
        assert_eq!(human_integer_bytes(0), "0 B");
        assert_eq!(human_integer_bytes(1023), "1023 B");
        assert_eq!(human_integer_bytes(1536), "1 KiB");
        assert_eq!(human_integer_bytes(45 * 1024 * 1024 + 999), "45 MiB");
        assert_eq!(human_integer_bytes(u64::MAX), "16383 PiB");
    }

    #[test]
    fn the_bar_counts_bytes_on_one_line_of_80_columns() {
        let term = std::sync::Arc::new(Term80::default());
        struct Shared(std::sync::Arc<Term80>);
        impl std::fmt::Debug for Shared {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Shared")
            }
        }
        impl indicatif::TermLike for Shared {
            fn width(&self) -> u16 {
                self.0.width()
            }
            fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
                self.0.move_cursor_up(n)
            }
            fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
                self.0.move_cursor_down(n)
            }
            fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
                self.0.move_cursor_right(n)
            }
            fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
                self.0.move_cursor_left(n)
            }
            fn write_line(&self, s: &str) -> std::io::Result<()> {
                self.0.write_line(s)
            }
            fn write_str(&self, s: &str) -> std::io::Result<()> {
                self.0.write_str(s)
            }
            fn clear_line(&self) -> std::io::Result<()> {
                self.0.clear_line()
            }
            fn flush(&self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        // The widest numbers: 1023.99 MiB of 1023.99 MiB.
        let total = 1024 * 1024 * 1024 - 10 * 1024;
        let pb = ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::term_like(Box::new(Shared(term.clone()))),
        );
        pb.set_style(progress_style());
        pb.set_position(total - 1);
        pb.force_draw();
        let drawn = term.0.lock().map(|v| v.join("\n")).unwrap_or_default();
        let line = drawn
            .lines()
            .rfind(|l| l.contains("ETA"))
            .unwrap_or_default();
        assert!(!line.is_empty(), "nothing drawn: {drawn:?}");
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line:?}",
            line.chars().count()
        );
        assert!(
            line.contains("MiB/1023.99 MiB") || line.contains("MiB/1.00 GiB"),
            "{line:?}"
        );
        // The rate: an integer and a unit, per second.
        let rate = line
            .split("  ")
            .find(|f| f.ends_with("/s"))
            .unwrap_or_else(|| panic!("no rate: {line:?}"));
        let number = rate.split(' ').next().unwrap_or_default();
        assert!(number.parse::<u64>().is_ok(), "{rate:?}");
    }
}
