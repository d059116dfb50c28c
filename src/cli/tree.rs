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

/// A progress bar (files done, files/s, ETA) on stderr when it is a
/// terminal; cleared when dropped.
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(total: usize) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let pb = ProgressBar::new(total as u64);
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} files  {per_sec}  ETA {eta}  {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(Some(pb))
    }

    fn tick(&self) {
        if let Some(pb) = &self.0 {
            pb.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

/// Prints `report` as JSON when asked for JSON; false when text is wanted.
fn printed_json(g: &GlobalArgs, report: &impl serde::Serialize) -> bool {
    if g.output != OutputFormat::Json {
        return false;
    }
    println!(
        "{}",
        serde_json::to_string_pretty(report).unwrap_or_default()
    );
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
    let progress = Progress::new(w.files.len());
    let start = std::time::Instant::now();
    let report = rw.run(&t, &w.files, &mut |_| progress.tick())?;
    drop(progress);
    finish_audit(g)?;
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
    let progress = Progress::new(w.files.len());
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
    finish_audit(g)?;
    let secs = start.elapsed().as_secs_f64();
    if !printed_json(g, &report) {
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
    if report.corrupt > 0 || report.io > 0 {
        Err(CliError::new(
            ErrorClass::Corrupt,
            format!("{} damaged files", report.corrupt + report.io),
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

/// `kmsfs export`.
pub fn export(g: &GlobalArgs, a: ExportArgs) -> Result<(), CliError> {
    let backing = existing_dir(&a.backing, "backing directory")?;
    let _lock = lock_unmounted(&backing, "export")?;
    if let Some(m) = crate::daemon::read_marker(&backing)? {
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
    let (dest_tree, dest) = empty_dest(&a.dest)?;
    if dest.starts_with(&backing) {
        return Err(CliError::new(
            ErrorClass::Usage,
            "the destination must not be inside the backing directory",
        ));
    }
    let ks = bulk_key_service(g)?;
    let (t, w) = open_and_walk(&backing, "backing directory")?;
    let progress = Progress::new(w.files.len());
    let start = std::time::Instant::now();
    let report = tree::export_tree(&t, &w, &dest_tree, &*ks, &super::cli_context(), &mut || {
        progress.tick()
    });
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
    let bound = crate::daemon::bind(
        &keystore::key_source(g),
        a.key_id.as_deref(),
        &backing,
        &survey,
    )?;
    for n in &bound.notices {
        eprintln!("kmsfs: {n}");
    }
    let (ks, key_id, marker) = (bound.ks, bound.key_id, bound.new_marker);
    // The same (shared) keystore instance: batch its records.
    bulk_key_service(g)?;
    let layout = crate::daemon::tree_layout(&backing, &survey)?;
    if let Some(m) = marker {
        let m = crate::daemon::BackingMarker {
            block_format: layout.version(),
            ..m
        };
        crate::daemon::write_marker(&backing, &m)?;
    }
    crate::daemon::remember_backing(&keystore::keystore_dir(g), &backing);
    let (src_tree, w) = open_and_walk(&src, "source directory")?;
    let backing_tree = tree::Tree::open(&backing).map_err(|e| {
        CliError::new(
            ErrorClass::NotFound,
            format!("backing directory {}: {e}", backing.display()),
        )
    })?;
    let progress = Progress::new(w.files.len());
    let start = std::time::Instant::now();
    let report = tree::import_tree(
        &src_tree,
        &w,
        &backing_tree,
        &*ks,
        &super::cli_context(),
        tree::NewFiles {
            key_id: &key_id,
            layout,
        },
        &mut || progress.tick(),
    );
    drop(progress);
    finish_audit(g)?;
    finish_copy(g, &format!("import under {key_id}"), &report, start)
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
                "{} files were not copied: their key is not usable",
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
