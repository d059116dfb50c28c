//! Filesystem commands: mount, unmount, inspect, seal, unseal. Thin: they
//! open the keystore, then call `crate::daemon` (mount) or `crate::envelope`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{CliError, ErrorClass, GlobalArgs, OutputFormat, keystore};
use crate::daemon::{BackingMarker, KeySource, MountError, MountRequest};
use crate::envelope::{self, EncryptedFile, EnvelopeError};
use crate::kms::KeyService;

/// Arguments of `kmsfs mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// The directory that holds the ciphertext.
    pub backing: PathBuf,
    /// Where the plaintext view appears.
    pub mountpoint: PathBuf,
    /// CMK for new files (key id, ARN or alias/NAME) [default: alias/kmsfs/default,
    /// created with the keystore on first use].
    #[arg(long, value_name = "K")]
    pub key_id: Option<String>,
    /// Serve in this process until unmounted (else a daemon serves and this
    /// command returns once the mount is usable).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Mount options, comma-separated: allow_other, allow_root,
    /// default_permissions, ro, rw, auto_unmount, [no]dev, [no]suid, [no]exec,
    /// [no]atime, relatime, strictatime, nodiratime, lazytime, sync, async,
    /// dirsync, fsname=NAME, subtype=NAME, nonempty (mount over a non-empty
    /// directory), sharedstorage (several daemons or hosts on one backing
    /// directory; no attribute cache), io_uring (requests through FUSE over
    /// io_uring when the kernel offers it); keystore=DIR, key_id=K,
    /// passphrase_file=FILE, log_file=FILE, kms_endpoint=URL,
    /// kms_ca_bundle=FILE (as the flags); fstab's defaults,
    /// [no]auto, _netdev, nofail, x-*, noacl, dax, inlinecrypt... are ignored
    /// with a log line.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Where the daemon writes its log (corruption warnings name the backing
    /// file and block) [default: $XDG_STATE_HOME/kmsfs (else
    /// ~/.local/state/kmsfs)/mount-MOUNTPOINT.log; with --foreground: stderr].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Use the CMK --key-id in this AWS KMS protocol endpoint (AWS KMS,
    /// `kmsfs kms serve`, ...) instead of the local keystore; AWS credentials
    /// and region as for the aws CLI. See docs/PROTOCOL.md.
    #[arg(long, value_name = "URL")]
    pub kms_endpoint: Option<String>,
    /// With --kms-endpoint: seconds an unwrapped data key may be served from
    /// the cache (the most a disabled key keeps opening files); 0: no cache.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        requires = "kms_endpoint"
    )]
    pub kms_cache_seconds: u64,
    /// With --kms-endpoint https://...: trust only the CAs in this PEM file
    /// for the endpoint's certificate [default: AWS_CA_BUNDLE if set, else
    /// the system's roots].
    #[arg(long, value_name = "FILE")]
    pub kms_ca_bundle: Option<PathBuf>,
}
/// Arguments of `kmsfs unmount`.
#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
}
/// Arguments of `kmsfs inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A backing file (its header), or a backing directory (a summary of
    /// the whole tree: files, bytes, keys used and their states).
    pub file: PathBuf,
}
/// Arguments of `kmsfs set-default-key`.
#[derive(Debug, clap::Args)]
pub struct SetDefaultKeyArgs {
    /// The backing directory (mounted at least once: it has a .kmsfs.json).
    pub backing: PathBuf,
    /// The CMK for new files from now on (key id, ARN or alias/NAME); it
    /// must be enabled.
    #[arg(long, value_name = "K")]
    pub key_id: String,
}
/// Arguments of `kmsfs set-key`.
#[derive(Debug, clap::Args)]
pub struct SetKeyArgs {
    /// A directory inside a running kmsfs mount (yours, or you are root).
    pub dir: PathBuf,
    /// The CMK for files created under DIR from now on (key id, ARN or
    /// alias/NAME): its key policy must allow you GenerateDataKey.
    #[arg(
        long,
        value_name = "K",
        required_unless_present = "inherit",
        conflicts_with = "inherit"
    )]
    pub key_id: Option<String>,
    /// Forget DIR's own key: files created under it get its parent's again.
    #[arg(long, visible_alias = "clear")]
    pub inherit: bool,
}
/// Arguments of `kmsfs get-key`.
#[derive(Debug, clap::Args)]
pub struct GetKeyArgs {
    /// A directory inside a kmsfs mount.
    pub dir: PathBuf,
}
/// Arguments of `kmsfs seal`.
#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// Plain input.
    pub input: PathBuf,
    /// Sealed output (must not exist).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    /// CMK that wraps the file's data key [default: alias/kmsfs/default].
    #[arg(long, value_name = "K")]
    pub key_id: Option<String>,
    /// Block format of the output: 2 (XAES-256-GCM, what new backing
    /// directories hold) or 1 (for a backing directory made before
    /// version 2; `kmsfs inspect DIR` shows which).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=2))]
    pub block_format: u16,
}
/// Arguments of `kmsfs unseal`.
#[derive(Debug, clap::Args)]
pub struct UnsealArgs {
    /// Sealed input (a sealed file or a backing file of a mount).
    pub input: PathBuf,
    /// Plain output (must not exist; `-` writes to stdout).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
}

impl From<MountError> for CliError {
    fn from(e: MountError) -> Self {
        if let MountError::Key {
            context,
            source,
            keystore,
            hint,
        } = e
        {
            let mut err = match keystore {
                Some(dir) => CliError::keystore(&dir, *source),
                None => CliError::from(*source),
            };
            err.message = format!("{context}{}", err.message);
            return match hint {
                Some(h) => err.hint(h),
                None => err,
            };
        }
        let class = match &e {
            MountError::Usage(_) => ErrorClass::Usage,
            MountError::NotFound(_) => ErrorClass::NotFound,
            MountError::State(..) => ErrorClass::General,
            MountError::Io { .. } | MountError::Failed(_) => ErrorClass::Io,
            MountError::Refused(..) | MountError::NoDevFuse(_) => ErrorClass::Refused,
            MountError::Key { .. } => ErrorClass::General,
        };
        let hint = e.hint().map(str::to_string);
        let err = CliError::new(class, e.to_string());
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    }
}

fn envelope_error(what: &Path, e: EnvelopeError) -> CliError {
    match e {
        EnvelopeError::Kms(k) => {
            let mut err = CliError::from(k);
            err.message = format!("{}: {}", what.display(), err.message);
            err
        }
        EnvelopeError::Io(io) => {
            let mut err = CliError::from(io);
            err.message = format!("{}: {}", what.display(), err.message);
            err
        }
        other @ (EnvelopeError::CorruptHeader(_)
        | EnvelopeError::Mismatch(_)
        | EnvelopeError::BadDataKey { .. }
        | EnvelopeError::CorruptBlock { .. }) => CliError::new(
            ErrorClass::Corrupt,
            format!("{}: {other}", what.display()),
        )
        .hint("the file was modified, truncated, or is not a kmsfs file; restore it from a backup"),
    }
}

#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
pub(super) fn existing_dir(p: &Path, what: &str) -> Result<PathBuf, CliError> {
    let abs = std::fs::canonicalize(p).map_err(|e| {
        CliError::new(ErrorClass::NotFound, format!("{what} {}: {e}", p.display()))
            .hint(format!("check the path: the {what} must exist already"))
    })?;
    if !abs.is_dir() {
        return Err(CliError::new(
            ErrorClass::NotFound,
            format!("{what} {} is not a directory", p.display()),
        ));
    }
    Ok(abs)
}

/// The key service and the CMK for new files: `key_id`, or the zero-setup
/// default key (keystore and key created on first use), checked either way to
/// be usable now, so that a mount never starts only to refuse every create.
fn service_and_key(
    g: &GlobalArgs,
    key_id: Option<&str>,
) -> Result<(Arc<dyn KeyService>, String), CliError> {
    let (ks, k): (Arc<dyn KeyService>, String) = match key_id {
        None => {
            let (ks, id) = keystore::open_or_create_default(g)?;
            (ks, id)
        }
        Some(k) => (keystore::open_key_service(g)?, k.to_string()),
    };
    let id = crate::daemon::usable_key(&*ks, &k)?;
    Ok((ks, id))
}

/// `kmsfs mount`: the arguments and `-o` settings taken in, then the
/// daemon's checks (`crate::daemon::preflight`: every rule of what may be
/// mounted where), its notices printed, and the mount served.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
pub fn mount(g: &GlobalArgs, mut a: MountArgs) -> Result<(), CliError> {
    let g = settings_from_options(g, &mut a)?;
    let keys = match &a.kms_endpoint {
        Some(url) => KeySource::Remote {
            endpoint_url: url.clone(),
            cache: std::time::Duration::from_secs(a.kms_cache_seconds),
            ca_bundle: a
                .kms_ca_bundle
                .as_deref()
                .map(|p| crate::kms::remote::CaBundle::load(p, "--kms-ca-bundle"))
                .transpose()?,
        },
        None if a.kms_ca_bundle.is_some() => {
            return Err(CliError::new(
                ErrorClass::Usage,
                "--kms-ca-bundle is for a remote KMS: give --kms-endpoint URL too",
            ));
        }
        None => keystore::key_source(&g),
    };
    // For the remedy of a user without /dev/fuse, which names them.
    let full = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (backing, mountpoint) = (full(&a.backing), full(&a.mountpoint));
    let plan = crate::daemon::preflight(MountRequest {
        backing: a.backing,
        mountpoint: a.mountpoint,
        keys,
        key_id: a.key_id,
        options: a.options,
        foreground: a.foreground,
        log_file: a.log_file,
    })
    .map_err(|e| match e {
        MountError::NoDevFuse(m) => no_dev_fuse(m, &backing, &mountpoint),
        e => e.into(),
    })?;
    for n in plan.notices() {
        eprintln!("kmsfs: {n}");
    }
    let done = (!a.foreground).then(|| plan.summary().to_string());
    crate::daemon::start(plan)?;
    if let Some(line) = done {
        println!("{line}");
    }
    Ok(())
}

/// The refusal of a user who cannot open /dev/fuse, with the root commands
/// that mount the same directories and let the user into the mount. Root
/// refuses a keystore in the user's home (the user could swap it), so the
/// commands name one that root keeps for this user.
fn no_dev_fuse(message: String, backing: &Path, mp: &Path) -> CliError {
    let uid = super::current_caller().uid;
    let name = crate::kms::accounts::user_name(uid).unwrap_or_else(|| uid.to_string());
    let ks = format!("/var/lib/kmsfs/{name}");
    CliError::new(ErrorClass::Refused, message).hint(format!(
        "/dev/fuse is root's here. Mount as root, with a keystore root keeps for you (root \
         refuses one under your home, which you could swap) and -o allow_other (else only \
         root can enter the mount): `sudo kmsfs --keystore {ks} init` once, then `sudo kmsfs \
         --keystore {ks} mount {} {} -o allow_other`. Or give this user read-write access to \
         /dev/fuse (ls -l /dev/fuse shows its group)",
        backing.display(),
        mp.display()
    ))
}

/// The global arguments with kmsfs's settings given as -o options (fstab,
/// mount(8)) taken in; `a` takes its own. `-o remount` is refused here.
fn settings_from_options(g: &GlobalArgs, a: &mut MountArgs) -> Result<GlobalArgs, CliError> {
    // kmsfs's settings given as -o options (fstab, mount(8)).
    let parsed = crate::daemon::parse_options(&a.options)?;
    if parsed.remount {
        return Err(CliError::new(
            ErrorClass::Usage,
            "-o remount changes a running mount, it does not start one",
        )
        .hint(
            "`kmsfs remount MOUNTPOINT --read-only|--read-write`, or `mount -o remount,ro \
             MOUNTPOINT` once `kmsfs install-helper` has run",
        ));
    }
    let mut g = g.clone();
    let s = parsed.settings;
    g.passphrase_file_private = s.passphrase_file.is_some();
    set_once(&mut g.keystore, s.keystore.map(PathBuf::from), "keystore")?;
    set_once(
        &mut g.passphrase_file,
        s.passphrase_file.map(PathBuf::from),
        "passphrase_file",
    )?;
    set_once(&mut a.key_id, s.key_id, "key_id")?;
    set_once(&mut a.log_file, s.log_file.map(PathBuf::from), "log_file")?;
    set_once(&mut a.kms_endpoint, s.kms_endpoint, "kms_endpoint")?;
    set_once(
        &mut a.kms_ca_bundle,
        s.kms_ca_bundle.map(PathBuf::from),
        "kms_ca_bundle",
    )?;
    Ok(g)
}

/// Takes a setting given as `-o NAME=VALUE` unless the flag gave it; both,
/// differing, is a usage error.
fn set_once<T: PartialEq>(
    flag: &mut Option<T>,
    opt: Option<T>,
    name: &str,
) -> Result<(), CliError> {
    match (flag.as_ref(), opt) {
        (_, None) => Ok(()),
        (None, Some(v)) => {
            *flag = Some(v);
            Ok(())
        }
        (Some(f), Some(v)) if *f == v => Ok(()),
        (Some(_), Some(_)) => Err(CliError::new(
            ErrorClass::Usage,
            format!("-o {name}= and --{} disagree", name.replace('_', "-")),
        )
        .hint("give the setting once")),
    }
}

/// `kmsfs set-default-key`: the key a backing directory's new files are
/// encrypted under (its marker's default key), e.g. before the old one is
/// retired. Existing files keep their key: `kmsfs rewrap --to-key-id` moves
/// them (and sets the default key the same way).
pub fn set_default_key(g: &GlobalArgs, a: SetDefaultKeyArgs) -> Result<(), CliError> {
    let backing = existing_dir(&a.backing, "backing directory")?;
    let (m, key) = marker_for_new_default(g, &backing, &a.key_id)?;
    let Some(m) = m else {
        println!("{}: new files were already under {key}", backing.display());
        return Ok(());
    };
    let old = m.default_key_id.clone();
    crate::daemon::replace_marker(
        &backing,
        &BackingMarker {
            default_key_id: key.clone(),
            ..m
        },
    )?;
    println!(
        "{}: new files are now encrypted under {key} (was {old}); existing files keep their \
         key (`kmsfs rewrap {} --to-key-id {key}` moves them)",
        backing.display(),
        backing.display()
    );
    note_running_mount(&backing, &old);
    Ok(())
}

/// The marker of `backing` to rewrite with `key_id` (resolved, checked
/// enabled) as its default key: None when it names that key already.
/// Refused when `backing` has no marker or belongs to another keystore.
pub(super) fn marker_for_new_default(
    g: &GlobalArgs,
    backing: &Path,
    key_id: &str,
) -> Result<(Option<BackingMarker>, String), CliError> {
    let dir = keystore::keystore_dir(g);
    let ks = keystore::open_key_service(g)?;
    Ok(crate::daemon::new_default_key(&ks, &dir, backing, key_id)?)
}

/// What a refused `set-key` or `get-key` on `dir` means, by errno.
fn dir_key_error(dir: &Path, key: Option<&str>, e: std::io::Error) -> CliError {
    let d = dir.display();
    match e.raw_os_error() {
        Some(libc::EACCES) => CliError::new(
            ErrorClass::Refused,
            match key {
                Some(k) => format!(
                    "{d}: refused: key {k} does not exist, is not enabled, or its key policy \
                     does not allow you kms:GenerateDataKey (nothing was changed)"
                ),
                None => format!("{d}: refused: you may not read or change this directory"),
            },
        )
        .hint("`kmsfs kms get-key-policy --key-id K` shows who may use a key"),
        Some(libc::EPERM) => CliError::new(
            ErrorClass::Refused,
            format!("{d}: only the directory's owner or root may choose its key"),
        ),
        Some(libc::EROFS) => {
            CliError::new(ErrorClass::Refused, format!("{d}: the mount is read-only"))
        }
        Some(libc::EIO) => CliError::new(
            ErrorClass::Corrupt,
            format!(
                "{d}: the mount refused the key record of this directory or of the one it \
                 inherits from (written or removed outside the mount, or copied from \
                 elsewhere): files cannot be created under it"
            ),
        )
        .hint(
            "the mount's log (`kmsfs status` names it) says which directory and why; its owner \
             sets the key again with `kmsfs set-key DIR --key-id K`, or `--inherit`",
        ),
        Some(libc::ENODATA | libc::EOPNOTSUPP) => CliError::new(
            ErrorClass::Usage,
            format!("{d} is not a directory inside a kmsfs mount"),
        )
        .hint("name the directory under the mount point, not in the backing directory"),
        Some(libc::ENOENT) => {
            CliError::new(ErrorClass::NotFound, format!("{d}: no such directory"))
        }
        Some(libc::ENOTDIR) => CliError::new(ErrorClass::Usage, format!("{d} is not a directory")),
        _ => CliError::new(ErrorClass::Io, format!("{d}: {e}")),
    }
}

/// `kmsfs set-key`: asks the mount (the directory's xattr) to record DIR's
/// key; the mount checks the caller and the key's policy.
pub fn set_key(_g: &GlobalArgs, a: SetKeyArgs) -> Result<(), CliError> {
    let key = a.key_id.as_deref().filter(|_| !a.inherit);
    match crate::daemon::set_dir_key(&a.dir, key) {
        Ok(()) => {}
        Err(e) if key.is_none() && e.raw_os_error() == Some(libc::ENODATA) => {
            // No key of its own: it uses its parent's already (or this is
            // not a kmsfs mount: get-key tells).
            crate::daemon::get_dir_key(&a.dir).map_err(|e| dir_key_error(&a.dir, None, e))?;
        }
        Err(e) => return Err(dir_key_error(&a.dir, key, e)),
    }
    let v = crate::daemon::get_dir_key(&a.dir).map_err(|e| dir_key_error(&a.dir, None, e))?;
    println!("{}", describe_dir_key(&a.dir, &v));
    Ok(())
}

/// `kmsfs get-key`.
pub fn get_key(g: &GlobalArgs, a: GetKeyArgs) -> Result<(), CliError> {
    let v = crate::daemon::get_dir_key(&a.dir).map_err(|e| dir_key_error(&a.dir, None, e))?;
    if super::tree::printed_json(g, &v) {
        return Ok(());
    }
    println!("{}", describe_dir_key(&a.dir, &v));
    Ok(())
}

/// One line: which key files created under `dir` get, and why.
fn describe_dir_key(dir: &Path, v: &serde_json::Value) -> String {
    let key = v["KeyId"].as_str().unwrap_or("-");
    let from = v["From"].as_str().unwrap_or("-");
    let why = match v["Source"].as_str() {
        Some("directory") => "set on this directory".to_string(),
        Some("inherited") => format!("inherited from {from} (mount-relative)"),
        _ => "the mount's default key".to_string(),
    };
    format!("{}: new files under {key} ({why})", dir.display())
}

/// Says that a mount serving `backing` keeps encrypting new files under
/// `old` until it is mounted again.
pub(super) fn note_running_mount(backing: &Path, old: &str) {
    if let Some(mp) = crate::daemon::serving_mount(backing) {
        eprintln!(
            "kmsfs: the mount at {} keeps encrypting new files under {old} until it is \
             unmounted and mounted again",
            mp.display()
        );
    }
}

/// `kmsfs unmount`.
pub fn unmount(_g: &GlobalArgs, a: UnmountArgs) -> Result<(), CliError> {
    crate::daemon::unmount(&a.mountpoint)?;
    Ok(())
}

/// `kmsfs inspect` of a path inside a kmsfs mount: its plaintext, not a
/// backing file; the error names the mount and the backing file to inspect.
#[allow(clippy::disallowed_methods)] // a path the user named, /proc/self/mountinfo, and a backing path only named in a hint
fn inside_a_mount(path: &Path) -> Option<CliError> {
    let abs = std::fs::canonicalize(path).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let m = crate::daemon::parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.is_kmsfs() && abs.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.as_os_str().len())?;
    let rel = abs.strip_prefix(&m.mountpoint).ok()?;
    let backing = m.backing();
    let below = backing.as_ref().map(|b| b.join(rel)).filter(|p| p.exists());
    let hint = match (&below, &backing) {
        (Some(f), _) => format!("inspect the backing file: `kmsfs inspect {}`", f.display()),
        (None, Some(b)) => format!(
            "inspect its backing file under {} (or the whole tree: `kmsfs inspect {}`)",
            b.display(),
            b.display()
        ),
        (None, None) => "inspect the backing file, below the mount".into(),
    };
    Some(
        CliError::new(
            ErrorClass::Usage,
            format!(
                "{} is inside the kmsfs mount {}: a plaintext view, not a backing file",
                path.display(),
                m.mountpoint.display()
            ),
        )
        .hint(hint),
    )
}

/// `kmsfs inspect DIR`: the backing tree summarized from its headers (no
/// data key is unwrapped, no block read), with the state of each key in
/// the keystore at hand, like `gocryptfs -info`.
fn inspect_dir(g: &GlobalArgs, dir: &Path) -> Result<(), CliError> {
    let marker = crate::daemon::read_marker(dir)?;
    let tree = crate::tree::Tree::open(dir)?;
    // The walk leaves out kmsfs's marker and lock.
    let w = crate::tree::walk(&tree)?;
    let dir_keys = crate::tree::recorded_dir_keys(&tree, &w.dirs);
    // What the keystore lists of the keys set through a mount, against the
    // records found (as the mount checks them).
    // The path names the keystore's record of the tree; nothing is opened through it.
    #[allow(clippy::disallowed_methods)]
    let listed = std::fs::canonicalize(dir)
        .and_then(|abs| crate::tree::listed_dir_keys(&keystore::keystore_dir(g), &abs))
        .unwrap_or_default();
    let mismatches = crate::tree::dir_key_mismatches(&tree, &w.dirs, &listed);
    let files = w.files;
    let (ks, ks_error): (Arc<dyn KeyService>, Option<String>) = match keystore::open_key_service(g)
    {
        Ok(ks) => (ks, None),
        Err(e) => (Arc::new(NoKeystore), Some(e.message)),
    };
    let report = crate::tree::fsck_tree(
        &tree,
        &files,
        &*ks,
        &super::cli_context(),
        true,
        &mut |_| {},
    );
    // Files with no key and no finding: empty backing files.
    let keyed: u64 = report.keys.values().map(|k| k.files).sum();
    let unkeyed = report
        .findings
        .iter()
        .filter(|f| f.key_id.is_none())
        .count() as u64;
    let empty = report.files.saturating_sub(keyed + unkeyed);
    let not_kmsfs: Vec<&crate::tree::FileCheck> = report
        .findings
        .iter()
        .filter(|f| matches!(f.status, crate::tree::FileStatus::CorruptHeader { .. }))
        .collect();
    match g.output {
        OutputFormat::Json => print_inspect_json(
            dir,
            &marker,
            &report,
            empty,
            &not_kmsfs,
            &ks_error,
            (&w.errors, &dir_keys, &mismatches),
        ),
        OutputFormat::Text => {
            print_inspect_text(
                dir, &marker, &report, empty, &not_kmsfs, &ks_error, &w.errors,
            );
            print_dir_keys_text(&dir_keys, &mismatches);
        }
    }
    Ok(())
}

/// The directories with a key of their own, as `inspect DIR` prints them.
fn print_dir_keys_text(dir_keys: &[(PathBuf, Option<String>)], mismatches: &[(PathBuf, String)]) {
    for (d, k) in dir_keys {
        println!(
            "directory key:      /{} under {} (as recorded; the mount checks it)",
            d.display(),
            k.as_deref().unwrap_or("(not a key record)")
        );
    }
    for (d, why) in mismatches {
        println!(
            "directory key:      /{}: {why}: the mount refuses new files under it (its \
             owner runs `kmsfs set-key` again)",
            d.display()
        );
    }
}

/// What the walk of `inspect DIR` found beside files: the directories it
/// could not read (with why) and those with a key record (with its key).
type Walked<'a> = (
    &'a [(PathBuf, String)],
    &'a [(PathBuf, Option<String>)],
    &'a [(PathBuf, String)],
);

/// `kmsfs inspect DIR` in JSON.
fn print_inspect_json(
    dir: &Path,
    marker: &Option<BackingMarker>,
    report: &crate::tree::FsckReport,
    empty: u64,
    not_kmsfs: &[&crate::tree::FileCheck],
    ks_error: &Option<String>,
    walked: Walked<'_>,
) {
    let (unreadable, dir_keys, mismatches) = walked;
    let keys: serde_json::Map<String, serde_json::Value> = report
        .keys
        .iter()
        .map(|(id, k)| {
            (
                id.clone(),
                serde_json::json!({
                    "Files": k.files, "Bytes": k.bytes,
                    "State": if ks_error.is_none() { serde_json::json!(k.status) } else { serde_json::Value::Null },
                }),
            )
        })
        .collect();
    let v = serde_json::json!({
        "Backing": dir.display().to_string(),
        "KeystoreId": marker.as_ref().map(|m| m.keystore_id.clone()),
        "DefaultKeyId": marker.as_ref().map(|m| m.default_key_id.clone()),
        "DirectoryKeys": dir_keys
            .iter()
            .map(|(d, k)| serde_json::json!({ "Directory": format!("/{}", d.display()), "KeyId": k }))
            .collect::<Vec<_>>(),
        "DirectoryKeyProblems": mismatches
            .iter()
            .map(|(d, why)| serde_json::json!({ "Directory": format!("/{}", d.display()), "Problem": why }))
            .collect::<Vec<_>>(),
        "BlockFormat": marker.as_ref().map(|m| m.block_format),
        "EncryptedNames": marker
            .as_ref()
            .is_some_and(|m| m.name_key.is_some() || m.encrypted_names == Some(true)),
        "Files": report.files,
        "Bytes": report.bytes,
        "EmptyFiles": empty,
        "NotKmsfsFiles": not_kmsfs.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>(),
        "Keys": keys,
        "KeystoreError": ks_error,
        "UnreadableDirectories": unreadable.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>(),
    });
    crate::cli::output::print_report(&v);
}

/// `kmsfs inspect DIR` as text.
fn print_inspect_text(
    dir: &Path,
    marker: &Option<BackingMarker>,
    report: &crate::tree::FsckReport,
    empty: u64,
    not_kmsfs: &[&crate::tree::FileCheck],
    ks_error: &Option<String>,
    unreadable: &[(PathBuf, String)],
) {
    let state = |k: &crate::tree::KeySummary| match &ks_error {
        None => k.status.label(),
        Some(_) => "state unknown (no keystore)".to_string(),
    };
    println!("backing directory:  {}", dir.display());
    match marker {
        Some(m) => {
            println!("keystore id:        {}", m.keystore_id);
            println!("default key:        {}", m.default_key_id);
            println!("block format:       {}", m.block_format);
            println!(
                "names:              {}",
                if m.name_key.is_some() || m.encrypted_names == Some(true) {
                    "encrypted"
                } else {
                    "plain"
                }
            );
        }
        None => println!("keystore id:        (no .kmsfs.json: never mounted)"),
    }
    println!(
        "files:              {} ({} plaintext bytes), {} empty",
        report.files, report.bytes, empty
    );
    for (id, k) in &report.keys {
        println!(
            "key {id}: {} file{}, {} bytes, {}",
            k.files,
            if k.files == 1 { "" } else { "s" },
            k.bytes,
            state(k)
        );
    }
    if !not_kmsfs.is_empty() {
        println!(
            "not kmsfs files:    {} (e.g. {})",
            not_kmsfs.len(),
            not_kmsfs
                .iter()
                .take(3)
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (p, e) in unreadable {
        println!("unreadable:         {}: {e}", p.display());
    }
    if let Some(e) = ks_error {
        println!("key states unknown: {e}");
    }
}

/// Stands in for a keystore that could not be opened: `inspect DIR` still
/// summarizes headers.
struct NoKeystore;

impl KeyService for NoKeystore {
    fn call(
        &self,
        _: &crate::kms::RequestContext<'_>,
        _: crate::kms::Request<'_>,
    ) -> Result<crate::kms::Response, crate::kms::KmsError> {
        Err(crate::kms::KmsError::internal("no keystore".into()))
    }
    fn flush_audit(&self) {}
    fn audits_file_access(&self) -> bool {
        false
    }
    fn generation(&self) -> u64 {
        0
    }
}

/// `kmsfs inspect`: a file's header, or a backing tree's summary, without
/// unwrapping or decrypting anything.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
pub fn inspect(g: &GlobalArgs, a: InspectArgs) -> Result<(), CliError> {
    if let Some(err) = inside_a_mount(&a.file) {
        return Err(err);
    }
    if a.file.is_dir() {
        return inspect_dir(g, &a.file);
    }
    let named = |e: std::io::Error| {
        let mut err = CliError::from(e);
        err.message = format!("{}: {}", a.file.display(), err.message);
        err
    };
    let f = File::open(&a.file).map_err(named)?;
    let len = f.metadata().map_err(named)?.len();
    let h = EncryptedFile::read_header(&f).map_err(|e| envelope_error(&a.file, e))?;
    let active = h.active_index();
    let slot = active.and_then(|i| h.slots[i].as_ref());
    let file_id = crate::crypto::hex(&h.file_id);
    let layout = h.layout();
    let plain = layout.plain_size_from_backing(len);
    let key_id = slot.map(|s| s.key_id.as_str()).unwrap_or("");
    let version = slot.map(|s| s.key_material_version).unwrap_or(0);
    match g.output {
        OutputFormat::Json => {
            let slots: Vec<_> = h
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Some(s) => serde_json::json!({
                        "Slot": i, "Sequence": s.seq, "KeyId": s.key_id,
                        "KeyMaterialVersion": s.key_material_version,
                        "WrappedKeyLength": s.wrapped_key.len(), "Active": active == Some(i),
                    }),
                    None => serde_json::json!({ "Slot": i, "Empty": true }),
                })
                .collect();
            let v = serde_json::json!({
                "File": a.file.display().to_string(),
                "FormatVersion": h.version,
                "FileId": file_id,
                "KeyId": key_id,
                "KeyMaterialVersion": version,
                "PlaintextSize": plain,
                "BackingSize": len,
                "ValidBackingSize": layout.is_valid_backing_size(len),
                "Slots": slots,
            });
            crate::cli::output::print_report(&v);
        }
        OutputFormat::Text => {
            println!("file:                 {}", a.file.display());
            println!("format version:       {}", h.version);
            println!("file id:              {file_id}");
            println!("key id:               {key_id}");
            println!("key material version: {version}");
            println!("plaintext size:       {plain}");
            println!("backing size:         {len}");
            if !layout.is_valid_backing_size(len) {
                println!(
                    "warning:              the backing size is not one this format makes (truncated?)"
                );
            }
            for (i, s) in h.slots.iter().enumerate() {
                match s {
                    Some(s) => println!(
                        "slot {i}:               seq {} key {} v{}{}",
                        s.seq,
                        s.key_id,
                        s.key_material_version,
                        if active == Some(i) { " (active)" } else { "" }
                    ),
                    None => println!("slot {i}:               empty"),
                }
            }
        }
    }
    Ok(())
}

/// A new output file, readable by its owner only: an unsealed output holds
/// plaintext, and a sealed one need not be more visible than its input.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
fn create_new(p: &Path) -> Result<File, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| {
            let exists = e.kind() == std::io::ErrorKind::AlreadyExists;
            let err = CliError::from(e);
            let err = CliError::new(err.class, format!("{}: {}", p.display(), err.message));
            if exists {
                err.hint("choose another output name or remove the file first")
            } else {
                err
            }
        })
}

/// `kmsfs seal`.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
pub fn seal(g: &GlobalArgs, a: SealArgs) -> Result<(), CliError> {
    let mut input = File::open(&a.input)
        .map_err(|e| CliError::new(ErrorClass::NotFound, format!("{}: {e}", a.input.display())))?;
    let (ks, key_id) = service_and_key(g, a.key_id.as_deref())?;
    let out = create_new(&a.out)?;
    let layout = crate::format::Layout::from_version(a.block_format)
        .ok_or_else(|| CliError::new(ErrorClass::Usage, "--block-format is 1 or 2"))?;
    match envelope::seal(
        &mut input,
        out,
        &*ks,
        &super::cli_context(),
        &key_id,
        layout,
    ) {
        Ok(n) => {
            log::info!("sealed {n} bytes into {}", crate::logtext::escaped(&a.out));
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&a.out);
            Err(envelope_error(&a.out, e))
        }
    }
}

/// `kmsfs unseal`.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
pub fn unseal(g: &GlobalArgs, a: UnsealArgs) -> Result<(), CliError> {
    let input = File::open(&a.input)
        .map_err(|e| CliError::new(ErrorClass::NotFound, format!("{}: {e}", a.input.display())))?;
    let ks = keystore::open_key_service(g)?;
    let caller = super::cli_context();
    if a.out.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        envelope::unseal(input, &mut lock, &*ks, &caller)
            .map_err(|e| envelope_error(&a.input, e))?;
        lock.flush()?;
        return Ok(());
    }
    let mut out = create_new(&a.out)?;
    let r = envelope::unseal(input, &mut out, &*ks, &caller)
        .map_err(|e| envelope_error(&a.input, e))
        .and_then(|_| out.sync_all().map_err(CliError::from));
    if r.is_err() {
        // Never leave a partial plaintext behind.
        let _ = std::fs::remove_file(&a.out);
    }
    r
}
