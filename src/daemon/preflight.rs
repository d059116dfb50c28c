//! Everything a mount checks before it serves, in one place for the command
//! line and for programs that call [`crate::mount`]: the paths, the options,
//! /dev/fuse, the mount point, the backing directory's lock, its binding to a
//! keystore and the key for new files, the log file. Only a [`Plan`] made
//! here can be served.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use super::binding::{self, KeySource};
use super::{MountError, Options, Prepared, Serving, Survey};
use crate::kms::CallerSource;

/// What to mount, where, with which keys: the library's mount request.
#[derive(Debug)]
pub struct MountRequest {
    /// The directory that holds the ciphertext.
    pub backing: PathBuf,
    /// Where the plaintext view appears.
    pub mountpoint: PathBuf,
    /// Where the keys come from.
    pub keys: KeySource,
    /// The CMK for new files (key id, ARN or alias); None: the backing
    /// directory's default key, else the keystore's `alias/kmsfs/default`.
    pub key_id: Option<String>,
    /// `-o` options (comma-separated lists). kmsfs's own settings among
    /// them (keystore=, key_id=, passphrase_file=, log_file=) are the
    /// caller's to take in: they are ignored here.
    pub options: Vec<String>,
    /// Serve in this process until unmounted (else a daemon serves, and
    /// mount returns once the mount is usable).
    pub foreground: bool,
    /// Where the daemon writes its log; None: in the foreground, stderr; in
    /// the background, `$XDG_STATE_HOME/kmsfs` (else
    /// `~/.local/state/kmsfs`)`/mount-MOUNTPOINT.log` when that directory
    /// can be made and only root and this user can change it.
    pub log_file: Option<PathBuf>,
}

/// A mount that passed every check, ready to serve ([`super::start`]).
/// Holds the backing directory's lock; dropped unserved, it leaves the lock
/// file it made behind (call [`Plan::abandon`] instead).
pub struct Plan {
    pub(super) serving: Serving,
    pub(super) new_lock: Option<(u64, u64)>,
    notices: Vec<String>,
    summary: String,
}

impl Plan {
    /// What the user should know before the mount serves (files that are
    /// not kmsfs files, a read-only backing directory, a keystore created,
    /// an owner shut out of their mount point).
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// One line saying what is mounted where, with which key and keystore.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Gives up the mount: removes what the checks created.
    pub fn abandon(self) {
        Prepared::undo(&self.serving.backing, self.new_lock);
    }
}

/// Checks `req` in full and binds what it needs: refused as the command
/// line refuses. Nothing is created before the options, /dev/fuse, the
/// mount point and the backing directory's lock are checked; a refusal
/// after that leaves nothing behind in the backing directory.
pub fn preflight(req: MountRequest) -> Result<Plan, MountError> {
    let o = super::parse_options(&req.options)?;
    if o.remount {
        return Err(MountError::Usage(
            "-o remount changes a running mount: use `mount -o remount,ro MOUNTPOINT` (with the \
             mount.fuse.kmsfs helper installed) or `kmsfs remount MOUNTPOINT --read-only`"
                .into(),
        ));
    }
    if matches!(o.datakey_pool, Some(n) if n > 0) && matches!(req.keys, KeySource::Local { .. }) {
        return Err(MountError::Usage(
            "-o datakey_pool is for a mount over a remote KMS (--kms-endpoint): a local \
             keystore makes each data key in-process, under the key policy of the user who \
             creates the file"
                .into(),
        ));
    }
    let (backing, mountpoint) = mount_paths(&req.backing, &req.mountpoint)?;
    let prepared = super::check_before_mount(&backing, &mountpoint, &req.options)?;
    let new_lock = prepared.new_lock;
    let r = bound(req, backing.clone(), mountpoint, prepared);
    if r.is_err() {
        Prepared::undo(&backing, new_lock);
    }
    r
}

/// The checks and the binding once the paths, options, mount point and lock
/// are checked.
fn bound(
    req: MountRequest,
    backing: PathBuf,
    mountpoint: PathBuf,
    prepared: Prepared,
) -> Result<Plan, MountError> {
    let survey = super::survey(&backing);
    let io = |what: &Path, e: std::io::Error| MountError::io(what.display().to_string(), e);
    let keys = absolute_keystore(req.keys)?;
    // Unseals the keystore (a passphrase prompt needs the terminal) before
    // the daemon leaves it.
    let fresh = survey.entries == 0 && super::read_marker(&backing)?.is_none();
    let b = binding::bind(&keys, req.key_id.as_deref(), &backing, &survey)?;
    if let KeySource::Local { dir, .. } = &keys {
        binding::check_recorded(dir, &backing, fresh)?;
    }
    let keystore = match &keys {
        KeySource::Local { dir, .. } => Some(dir.clone()),
        KeySource::Remote { .. } => None,
    };
    let remote_cache = match &keys {
        KeySource::Local { .. } => None,
        KeySource::Remote { cache, .. } => Some(*cache),
    };
    if let Some(ks) = &b.local {
        ks.set_caller_source(CallerSource::Mount);
    }
    let mut notices = b.notices;
    // The marker's block format, or for a tree without one the format its
    // files have (that of new files for an empty tree), which the new
    // marker records.
    let layout = super::tree_layout(&backing, &survey)?;
    if let Some(m) = &b.new_marker {
        write_new_marker(&backing, m, &prepared, &survey, layout)?;
    }
    if let Some(dir) = &keystore {
        binding::remember_backing(dir, &backing);
        binding::record_choices(dir, &backing);
    }
    if prepared.backing_read_only && !prepared.options.read_only {
        notices.push(format!(
            "{} cannot be written: mounting it read-only",
            backing.display()
        ));
    }
    notices.extend(plain_files(&survey, &backing));
    let log_file = match req.log_file {
        Some(p) => Some(std::path::absolute(&p).map_err(|e| io(&p, e))?),
        None if !req.foreground => default_log_file(&mountpoint)?,
        None => None,
    };
    notices.extend(owner_shut_out(&mountpoint, &prepared.options));
    let summary = format!(
        "mounted {} on {} (key {}, keystore {})",
        backing.display(),
        mountpoint.display(),
        b.key_id,
        match &keys {
            KeySource::Remote { endpoint_url, .. } => endpoint_url.clone(),
            KeySource::Local { dir, .. } => dir.display().to_string(),
        }
    );
    Ok(Plan {
        serving: Serving {
            backing,
            mountpoint,
            ks: b.ks,
            keystore,
            key_id: b.key_id,
            layout,
            options: req.options,
            foreground: req.foreground,
            log_file,
            lock: prepared.lock,
            backing_read_only: prepared.backing_read_only,
            remote_cache,
        },
        new_lock: prepared.new_lock,
        notices,
        summary,
    })
}

/// The key source with its keystore named absolutely: the daemon works
/// inside the backing directory.
fn absolute_keystore(keys: KeySource) -> Result<KeySource, MountError> {
    Ok(match keys {
        KeySource::Local {
            dir,
            passphrase,
            may_create,
        } => KeySource::Local {
            dir: std::path::absolute(&dir)
                .map_err(|e| MountError::io(dir.display().to_string(), e))?,
            passphrase,
            may_create,
        },
        remote => remote,
    })
}

/// Writes the marker of a backing directory bound now (none on a
/// read-only backing), with the names and block format it starts with.
fn write_new_marker(
    backing: &Path,
    m: &super::BackingMarker,
    prepared: &Prepared,
    survey: &Survey,
    layout: crate::format::Layout,
) -> Result<(), MountError> {
    if prepared.backing_read_only {
        log::info!("{} is read-only: no marker written", backing.display());
        return Ok(());
    }
    // A new, empty backing directory gets encrypted names unless
    // -o plaintextnames (the daemon makes the name key: the key
    // service's threads must not start before it forks); one that
    // holds files already keeps plain names (written in clear).
    let m = super::BackingMarker {
        encrypted_names: Some(survey.entries == 0 && !prepared.options.plain_names),
        block_format: layout.version(),
        ..m.clone()
    };
    super::write_marker(backing, &m)
}

/// An existing directory, made absolute.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
fn existing_dir(p: &Path, what: &str) -> Result<PathBuf, MountError> {
    let abs = std::fs::canonicalize(p).map_err(|e| {
        MountError::NotFound(format!(
            "{what} {}: {e} (create it first: mkdir -p {})",
            p.display(),
            p.display()
        ))
    })?;
    if !abs.is_dir() {
        return Err(MountError::NotFound(format!(
            "{what} {} is not a directory",
            p.display()
        )));
    }
    Ok(abs)
}

/// The backing directory and mount point, made absolute and checked not to
/// contain each other.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
fn mount_paths(backing: &Path, mountpoint: &Path) -> Result<(PathBuf, PathBuf), MountError> {
    let backing = existing_dir(backing, "backing directory")?;
    let mp = match std::fs::canonicalize(mountpoint) {
        Ok(p) => p,
        // A dead mount: `prepare_mountpoint` detaches it.
        Err(e) if super::is_enotconn(&e) => std::path::absolute(mountpoint)
            .map_err(|e| MountError::io(mountpoint.display().to_string(), e))?,
        Err(_) => existing_dir(mountpoint, "mount point")?,
    };
    if backing.starts_with(&mp) || mp.starts_with(&backing) {
        return Err(MountError::Usage(
            "the backing directory and the mount point must not contain each other".into(),
        ));
    }
    Ok((backing, mp))
}

/// Says that files in `backing` are not kmsfs files, so cannot be read
/// through the mount.
fn plain_files(survey: &Survey, backing: &Path) -> Option<String> {
    if survey.plain_count == 0 {
        return None;
    }
    let one = survey.plain_count == 1;
    let examples: Vec<String> = survey
        .plain
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Some(format!(
        "{} file{} in {} {} not {} (e.g. {}){}: left untouched, {} cannot be read through the \
         mount",
        survey.plain_count,
        if one { "" } else { "s" },
        backing.display(),
        if one { "is" } else { "are" },
        if one { "a kmsfs file" } else { "kmsfs files" },
        examples.join(", "),
        if survey.truncated {
            format!(" among the first {} entries", super::SURVEY_LIMIT)
        } else {
            String::new()
        },
        if one { "it" } else { "they" },
    ))
}

/// Says so when root mounts on a directory that belongs to another user
/// without letting anyone but root in: that user would get EACCES.
#[allow(clippy::disallowed_methods)] // the mount point the user named, used as given
fn owner_shut_out(mp: &Path, o: &Options) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let euid = crate::os::ids::ids().0;
    let md = std::fs::metadata(mp).ok()?;
    if euid != 0 || md.uid() == 0 || o.access == crate::fs::Access::All {
        return None;
    }
    let who = crate::kms::accounts::user_name(md.uid())
        .map(|n| format!("user {n}"))
        .unwrap_or_else(|| format!("uid {}", md.uid()));
    Some(format!(
        "warning: {} belongs to {who}, but without -o allow_other only root can enter the mount \
         ({who} gets \"Permission denied\"); unmount and mount again with -o allow_other to let \
         them in",
        mp.display()
    ))
}

/// The log of a background mount without a log file named: one file per
/// mount point under `$XDG_STATE_HOME/kmsfs` (else `~/.local/state/kmsfs`),
/// so that corruption warnings (backing file, block) are kept somewhere.
/// None, with a warning, when that directory cannot be made; refused when
/// another user could change it (a root mount run with a user's
/// environment, `sudo -E`).
#[allow(clippy::disallowed_methods)] // the log directory trust.rs (check_log_dir) accepted
fn default_log_file(mountpoint: &Path) -> Result<Option<PathBuf>, MountError> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(base) = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
    else {
        return Ok(None);
    };
    let base = base.join("kmsfs");
    let abs =
        std::path::absolute(&base).map_err(|e| MountError::io(base.display().to_string(), e))?;
    let dir = super::check_log_dir(&abs, true)?;
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        log::warn!(
            "no log for this mount: cannot create {}: {e}",
            dir.display()
        );
        return Ok(None);
    }
    let name: String = mountpoint
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(Some(dir.join(format!("mount-{name}.log"))))
}
