//! Which keys a backing directory may be used with: its binding to the
//! keystore it was first mounted with (the marker, `.kmsfs.json`), the choice
//! of the key service (a local keystore or a remote KMS), and the CMK for new
//! files, checked usable before anything is served or written.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{BackingMarker, MountError, Survey, read_marker};
use crate::crypto::SecretBytes;
use crate::kms::remote::{RemoteKms, RemoteOptions};
use crate::kms::{
    Caller, CreateMode, KeyService, KeyServiceExt, KeyState, KmsError, LocalKeyStore, Origin,
    RequestContext,
};
use crate::tree::Choices;

/// What a backing directory's marker says when it is bound to a remote KMS
/// (its keys live there, not in a local keystore).
pub const REMOTE_MARKER_ID: &str = "remote-kms";

/// Asked for the keystore's passphrase when it is sealed with one.
pub type Passphrase = Arc<dyn Fn() -> Result<SecretBytes, KmsError> + Send + Sync>;

/// Where the keys of a mount (or an import) come from.
#[derive(Clone)]
pub enum KeySource {
    /// A local keystore directory.
    Local {
        /// The keystore directory.
        dir: PathBuf,
        /// Gives the passphrase if the keystore is sealed with one.
        passphrase: Passphrase,
        /// No keystore in `dir` yet: one may be created there (sealed with a
        /// root key file) for a new, empty backing directory. The command
        /// line allows it only at the default location.
        may_create: bool,
    },
    /// A service speaking the AWS KMS protocol (AWS KMS, `kmsfs kms serve`).
    Remote {
        /// Its URL.
        endpoint_url: String,
        /// How long an unwrapped data key may be served from the cache (the
        /// most a disabled key keeps opening files); zero: no cache.
        cache: Duration,
        /// The CAs its https certificate must chain to (`--kms-ca-bundle`);
        /// None: AWS_CA_BUNDLE, else the system's roots.
        ca_bundle: Option<crate::kms::remote::CaBundle>,
    },
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Local {
                dir, may_create, ..
            } => f
                .debug_struct("Local")
                .field("dir", dir)
                .field("may_create", may_create)
                .finish_non_exhaustive(),
            KeySource::Remote {
                endpoint_url,
                cache,
                ca_bundle,
            } => f
                .debug_struct("Remote")
                .field("endpoint_url", endpoint_url)
                .field("cache", cache)
                .field("ca_bundle", ca_bundle)
                .finish(),
        }
    }
}

/// A backing directory's key service and CMK for new files, as the binding
/// rules allow them.
pub struct Binding {
    /// The key service.
    pub ks: Arc<dyn KeyService>,
    /// The same service when it is a local keystore.
    pub local: Option<Arc<LocalKeyStore>>,
    /// The CMK for new files (its key id), enabled.
    pub key_id: String,
    /// The marker to write: the backing directory has none yet.
    pub new_marker: Option<BackingMarker>,
    /// What the user should know (a keystore was created).
    pub notices: Vec<String>,
}

/// The identity of this process, for key policies and the audit trail.
pub fn this_process() -> Caller {
    let (uid, gid) = crate::os::ids::ids();
    Caller {
        uid,
        gid,
        pid: std::process::id(),
        access_key: None,
    }
}

/// The context of the checks a mount makes for itself.
fn checks() -> RequestContext<'static> {
    RequestContext::new(this_process(), Origin::Mount)
}

/// The key service and CMK for `backing` from `source`. A backing directory
/// is bound to the keystore it was first used with (its marker): another
/// keystore, or a remote KMS for a local one and the reverse, is refused. A
/// keystore is created (zero setup, where `source` allows it) only for a
/// new, empty backing directory; one that holds files but no marker must be
/// used with a keystore that holds their keys. The key is checked enabled.
pub fn bind(
    source: &KeySource,
    key_id: Option<&str>,
    backing: &Path,
    survey: &Survey,
) -> Result<Binding, MountError> {
    let marker = read_marker(backing)?;
    match source {
        KeySource::Remote {
            endpoint_url,
            cache,
            ca_bundle,
        } => bind_remote(endpoint_url, key_id, marker, *cache, ca_bundle.clone()),
        KeySource::Local {
            dir,
            passphrase,
            may_create,
        } => {
            let local = Local {
                dir,
                passphrase,
                may_create: *may_create,
            };
            match marker {
                Some(m) => local.marked(key_id, backing, m),
                None if survey.entries == 0 => local.first_use(key_id),
                None => local.unmarked_files(key_id, backing, survey),
            }
        }
    }
}

/// A local keystore as a key source.
struct Local<'a> {
    dir: &'a Path,
    passphrase: &'a Passphrase,
    may_create: bool,
}

impl Local<'_> {
    fn open(&self) -> Result<Arc<LocalKeyStore>, KmsError> {
        let ask = || (self.passphrase)();
        LocalKeyStore::open_shared(self.dir, &ask)
    }

    fn keystore_error(&self, e: KmsError) -> MountError {
        MountError::Key {
            context: String::new(),
            source: Box::new(e),
            keystore: Some(self.dir.to_path_buf()),
            hint: None,
        }
    }

    /// A new, empty backing directory: the keystore (created when there is
    /// none and that is allowed) and `key_id` or its default key.
    fn first_use(&self, key_id: Option<&str>) -> Result<Binding, MountError> {
        let mut notices = Vec::new();
        let ks = match self.open() {
            Ok(ks) => ks,
            Err(KmsError::KeystoreNotFound { .. }) if key_id.is_none() => {
                self.create(&mut notices)?
            }
            Err(e) => return Err(self.keystore_error(e)),
        };
        let key = match key_id {
            Some(k) => k.to_string(),
            None => ks
                .ensure_default_key(&this_process())
                .map_err(|e| self.keystore_error(e))?,
        };
        let key = usable_key(&*ks, &key)?;
        Ok(Binding {
            new_marker: Some(marker(ks.keystore_id(), &key)),
            ks: ks.clone(),
            local: Some(ks),
            key_id: key,
            notices,
        })
    }

    /// Zero setup: a keystore sealed with a root key file, where allowed.
    fn create(&self, notices: &mut Vec<String>) -> Result<Arc<LocalKeyStore>, MountError> {
        let dir = self.dir;
        if !self.may_create {
            return Err(MountError::Key {
                context: String::new(),
                source: Box::new(KmsError::KeystoreNotFound {
                    path: dir.to_path_buf(),
                }),
                keystore: Some(dir.to_path_buf()),
                hint: Some(format!(
                    "kmsfs makes a keystore by itself only at the default location; to start \
                     one in {} run `kmsfs init --keystore {}`, or correct --keystore",
                    dir.display(),
                    dir.display()
                )),
            });
        }
        match LocalKeyStore::create_shared(dir, CreateMode::RootKeyFile) {
            Ok(ks) => {
                notices.push(format!(
                    "created a keystore in {} sealed with the root key file {}; back up both",
                    dir.display(),
                    dir.join(crate::kms::store::ROOT_KEY_FILE).display()
                ));
                Ok(ks)
            }
            // Another process created it meanwhile.
            Err(KmsError::AlreadyExists { .. }) => self.open().map_err(|e| self.keystore_error(e)),
            Err(e) => Err(self.keystore_error(e)),
        }
    }

    /// A backing directory with marker `m`: only the keystore it names.
    fn marked(
        &self,
        key_id: Option<&str>,
        backing: &Path,
        m: BackingMarker,
    ) -> Result<Binding, MountError> {
        let b = backing.display();
        let hint = format!(
            "pass the --keystore DIR that holds keystore {} (the one {b} was first mounted with)",
            m.keystore_id
        );
        if m.keystore_id == REMOTE_MARKER_ID {
            return Err(MountError::Refused(
                format!("{b} belongs to a remote KMS, not to a local keystore"),
                "mount it with --kms-endpoint URL, the KMS it was first mounted with".into(),
            ));
        }
        let ks = self.open().map_err(|e| MountError::Key {
            context: format!("{b} belongs to keystore {}: ", m.keystore_id),
            source: Box::new(e),
            keystore: Some(self.dir.to_path_buf()),
            hint: Some(hint.clone()),
        })?;
        if ks.keystore_id() != m.keystore_id {
            return Err(MountError::Refused(
                format!(
                    "{b} belongs to keystore {}, but the keystore in {} is {}: its files could \
                     not be read and new files would be under another keystore",
                    m.keystore_id,
                    self.dir.display(),
                    ks.keystore_id()
                ),
                hint,
            ));
        }
        let key = match key_id {
            Some(k) => usable_key(&*ks, k)?,
            None => default_key_of(&*ks, backing, &m.default_key_id)?,
        };
        Ok(Binding {
            ks: ks.clone(),
            local: Some(ks),
            key_id: key,
            new_marker: None,
            notices: Vec::new(),
        })
    }

    /// A backing directory without a marker that holds files already
    /// (mounted before markers existed, or plain files): no new keystore,
    /// and the files' keys must be in this one.
    fn unmarked_files(
        &self,
        key_id: Option<&str>,
        backing: &Path,
        survey: &Survey,
    ) -> Result<Binding, MountError> {
        let ks = self.open().map_err(|e| MountError::Key {
            context: format!("{}: ", backing.display()),
            source: Box::new(e),
            keystore: Some(self.dir.to_path_buf()),
            hint: Some(format!(
                "kmsfs creates a keystore only for a new, empty backing directory: pass the \
                 --keystore DIR these files were written with, or run `kmsfs init` first to \
                 start a new keystore ({} already holds files)",
                backing.display()
            )),
        })?;
        let caller = checks();
        if let Some(first) = survey.key_ids.iter().next()
            && !survey
                .key_ids
                .iter()
                .any(|k| ks.describe_key(&caller, k).is_ok())
        {
            return Err(MountError::Refused(
                format!(
                    "the kmsfs files in {} are encrypted under keys that the keystore in {} ({}) \
                     does not hold (e.g. {first})",
                    backing.display(),
                    self.dir.display(),
                    ks.keystore_id()
                ),
                "pass the --keystore DIR these files were written with".into(),
            ));
        }
        let key = match key_id {
            Some(k) => k.to_string(),
            None => ks
                .ensure_default_key(&caller.caller)
                .map_err(|e| self.keystore_error(e))?,
        };
        let key = usable_key(&*ks, &key)?;
        Ok(Binding {
            new_marker: Some(marker(ks.keystore_id(), &key)),
            ks: ks.clone(),
            local: Some(ks),
            key_id: key,
            notices: Vec::new(),
        })
    }
}

/// The marker to write on a backing directory's first use.
fn marker(ks_id: &str, key: &str) -> BackingMarker {
    BackingMarker::new(ks_id.to_string(), key.to_string())
}

/// The key service and CMK of a backing directory bound (or to be bound) to
/// the remote KMS at `url`. A backing directory bound to a local keystore is
/// refused (its files' keys are not in the remote KMS).
fn bind_remote(
    url: &str,
    key_id: Option<&str>,
    marker: Option<BackingMarker>,
    cache: Duration,
    ca_bundle: Option<crate::kms::remote::CaBundle>,
) -> Result<Binding, MountError> {
    if let Some(m) = &marker
        && m.keystore_id != REMOTE_MARKER_ID
    {
        return Err(MountError::Refused(
            format!(
                "this backing directory belongs to the local keystore {}, not to a remote KMS",
                m.keystore_id
            ),
            "mount it without --kms-endpoint, with the --keystore it was made with".into(),
        ));
    }
    let key = key_id
        .map(str::to_string)
        .or_else(|| marker.as_ref().map(|m| m.default_key_id.clone()))
        .ok_or_else(|| {
            MountError::Usage(
                "--kms-endpoint needs --key-id K: the key id, ARN or alias/NAME of the CMK in \
                 the remote KMS"
                    .into(),
            )
        })?;
    let ks = RemoteKms::connect(RemoteOptions {
        endpoint_url: Some(url.to_string()),
        cache_lifetime: cache,
        ca_bundle,
        ..RemoteOptions::default()
    })
    .map_err(|e| MountError::Key {
        context: String::new(),
        source: Box::new(e),
        keystore: None,
        hint: Some(
            "set AWS_REGION and credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a \
             profile), as for the aws CLI"
                .into(),
        ),
    })?;
    let meta = ks.describe_key(&checks(), &key).map_err(MountError::kms)?;
    if meta.key_state != KeyState::Enabled {
        return Err(MountError::Refused(
            format!(
                "key {key} is {} in the KMS at {url}: new files could not be encrypted under it",
                meta.key_state.as_str()
            ),
            "enable it in that KMS, or pick another key with --key-id".into(),
        ));
    }
    // The daemon is forked single-threaded: the client's threads go now and
    // come back in the daemon on its first call.
    ks.release();
    let new_marker = marker
        .is_none()
        .then(|| BackingMarker::new(REMOTE_MARKER_ID.into(), key.clone()));
    Ok(Binding {
        ks: Arc::new(ks),
        local: None,
        key_id: meta.key_id,
        new_marker,
        notices: Vec::new(),
    })
}

/// Refuses a key that is not enabled: a mount never starts only to refuse
/// every create. Returns the key's id.
pub fn usable_key(ks: &dyn KeyService, k: &str) -> Result<String, MountError> {
    let meta = ks.describe_key(&checks(), k).map_err(MountError::kms)?;
    if meta.key_state != KeyState::Enabled {
        return Err(MountError::Refused(
            format!(
                "key {k} is {}: new files could not be encrypted under it",
                meta.key_state.as_str()
            ),
            format!(
                "{}, or pick another key with --key-id",
                key_remedy(meta.key_state, &meta.key_id)
            ),
        ));
    }
    Ok(meta.key_id)
}

/// The backing directory's own default key `id`, checked usable; refused
/// with how to change it.
fn default_key_of(ks: &dyn KeyService, backing: &Path, id: &str) -> Result<String, MountError> {
    usable_key(ks, id).map_err(|e| {
        let state = ks
            .describe_key(&checks(), id)
            .map(|k| k.key_state)
            .unwrap_or(KeyState::Disabled);
        let b = backing.display();
        let hint = format!(
            "{}; or give {b} another key for new files with `kmsfs set-default-key {b} \
             --key-id NEW` (`kmsfs rewrap {b} --to-key-id NEW` moves its files too)",
            key_remedy(state, id)
        );
        e.in_context(&format!("the default key of {b}: "), Some(hint))
    })
}

/// How to make key `id`, in `state`, usable again.
pub fn key_remedy(state: KeyState, id: &str) -> String {
    match state {
        KeyState::PendingDeletion => format!(
            "keep the key with `kmsfs kms cancel-key-deletion --key-id {id}`, then `kmsfs kms \
             enable-key --key-id {id}`"
        ),
        KeyState::PendingImport => {
            format!("import its key material (`kmsfs kms import-key-material --key-id {id} ...`)")
        }
        _ => format!("enable it with `kmsfs kms enable-key --key-id {id}`"),
    }
}

/// The marker of `backing` to rewrite with `key_id` (resolved, checked
/// enabled) as its default key, and that key: no marker when it names that
/// key already. Refused when `backing` has no marker or belongs to a
/// keystore other than `ks`.
pub fn new_default_key(
    ks: &LocalKeyStore,
    dir: &Path,
    backing: &Path,
    key_id: &str,
) -> Result<(Option<BackingMarker>, String), MountError> {
    let Some(m) = read_marker(backing)? else {
        return Err(MountError::NotFound(format!(
            "{} has no {}: it has never been mounted, so it has no default key; mount it once \
             with `kmsfs mount {} MOUNTPOINT --key-id {key_id}`",
            backing.display(),
            crate::fs::BACKING_MARKER,
            backing.display()
        )));
    };
    if ks.keystore_id() != m.keystore_id {
        return Err(MountError::Refused(
            format!(
                "{} belongs to keystore {}, but the keystore in {} is {}",
                backing.display(),
                m.keystore_id,
                dir.display(),
                ks.keystore_id()
            ),
            format!(
                "pass the --keystore DIR that holds keystore {}",
                m.keystore_id
            ),
        ));
    }
    let key = usable_key(ks, key_id)?;
    if key == m.default_key_id {
        return Ok((None, key));
    }
    Ok((Some(dir_key_mac_under(ks, m, &key)), key))
}

/// `m` with its directory-key MAC key (if any) wrapped again under `key`
/// (ReEncrypt: the MAC key never leaves the key service), since the mount
/// trusts a MAC key only under the tree's default key or its own. If the
/// old key refuses, the MAC key stays as it was and a warning says what
/// that means.
fn dir_key_mac_under(ks: &LocalKeyStore, mut m: BackingMarker, key: &str) -> BackingMarker {
    use crate::kms::KeyServiceExt;
    use base64::Engine;
    let Ok(Some(wrapped)) = m.wrapped_dir_key_mac() else {
        return m;
    };
    let ctx = crate::kms::EncryptionContext::with(
        crate::envelope::dirkey::PURPOSE_KEY,
        crate::envelope::dirkey::MAC_KEY_PURPOSE,
    );
    match ks.re_encrypt(&checks(), &wrapped, &ctx, key, &ctx) {
        Ok(e) => {
            m.dir_key_mac =
                Some(base64::engine::general_purpose::STANDARD.encode(&e.ciphertext_blob));
        }
        Err(e) => log::warn!(
            "the directory-key MAC key could not be moved to {key} ({e}): directories with a key \
             of their own refuse new files until their keys are set again"
        ),
    }
    m
}

/// The choices the binding file `m` makes, as a keystore's record keeps them.
pub fn choices_of(m: &BackingMarker) -> Result<Choices, MountError> {
    let key = m.wrapped_name_key()?;
    Ok(Choices {
        encrypted_names: m.encrypted_names == Some(true) || key.is_some(),
        block_format: m.block_format,
        name_key_sha256: key.as_deref().map(Choices::digest),
    })
}

/// What the binding file says and the record does not, in words (None: the
/// binding file keeps every recorded choice; a name key the record does not
/// know yet is one a mount made since).
fn changed_choice(now: &Choices, recorded: &Choices) -> Option<String> {
    let names = |e: bool| if e { "encrypted names" } else { "plain names" };
    if now.encrypted_names != recorded.encrypted_names {
        return Some(format!(
            "it says {}, but the tree was made with {}",
            names(now.encrypted_names),
            names(recorded.encrypted_names)
        ));
    }
    if now.block_format != recorded.block_format {
        return Some(format!(
            "it says block format {}, but the tree was made with block format {}",
            now.block_format, recorded.block_format
        ));
    }
    match (&now.name_key_sha256, &recorded.name_key_sha256) {
        (None, Some(_)) => Some("its name key (NameKey) was removed".into()),
        (Some(a), Some(b)) if a != b => {
            Some("its name key (NameKey) is not the one the tree's names are under".into())
        }
        _ => None,
    }
}

/// Refuses a backing directory whose binding file no longer makes the
/// choices the keystore in `dir` recorded for it (names mode, block format,
/// name key): someone who can write the backing tree but not the keystore
/// changed or removed it. `fresh`: the directory is empty and has no
/// binding file, a new tree at a path used before (recorded anew).
pub fn check_recorded(dir: &Path, backing: &Path, fresh: bool) -> Result<(), MountError> {
    let file = backing.join(crate::fs::BACKING_MARKER);
    let recorded = crate::tree::recorded_choices(dir, backing).map_err(|e| {
        MountError::io(
            format!("the record of {} in {}", backing.display(), dir.display()),
            e,
        )
    })?;
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let hint = format!(
        "someone who can write {} changed it: restore it from a backup (nothing was \
         mounted); if the change was yours and the tree is to be bound anew, remove the \
         record {}",
        backing.display(),
        crate::tree::record_path(dir, backing).display()
    );
    let Some(m) = read_marker(backing)? else {
        if fresh {
            return Ok(());
        }
        return Err(MountError::Refused(
            format!(
                "{} is missing, but the keystore in {} recorded one for this tree at its first \
                 mount",
                file.display(),
                dir.display()
            ),
            hint,
        ));
    };
    match changed_choice(&choices_of(&m)?, &recorded) {
        None => Ok(()),
        Some(what) => Err(MountError::Refused(
            format!(
                "{} was changed since the tree's first mount: {what} (as the keystore in {} \
                 recorded)",
                file.display(),
                dir.display()
            ),
            hint,
        )),
    }
}

/// Records in the keystore directory `dir` the choices the binding file of
/// `backing` makes now. A failure costs only a warning in the log.
pub fn record_choices(dir: &Path, backing: &Path) {
    let r = read_marker(backing).and_then(|m| m.as_ref().map(choices_of).transpose());
    let r = match r {
        Ok(Some(c)) => crate::tree::record_choices(dir, backing, &c),
        Ok(None) => return,
        Err(e) => Err(std::io::Error::other(e.to_string())),
    };
    if let Err(e) = r {
        log::warn!(
            "could not record the choices of {} in {}: {e}",
            crate::logtext::escaped(backing),
            crate::logtext::escaped(dir)
        );
    }
}

/// Records `backing` in the keystore directory `dir`, so that
/// `schedule-key-deletion` can count the files a key still protects there.
/// A failure costs only a warning in the log.
pub fn remember_backing(dir: &Path, backing: &Path) {
    if let Err(e) = crate::tree::remember_backing(dir, backing) {
        log::warn!(
            "could not record {} in {}: {e}",
            crate::logtext::escaped(backing),
            crate::logtext::escaped(dir)
        );
    }
}

/// The mount keeps its list of directory keys in the keystore's record of
/// the tree (tree/known.rs).
impl crate::fs::DirKeyList for crate::tree::DirKeyList {
    fn get(
        &self,
        id: crate::envelope::dirkey::DirId,
    ) -> std::io::Result<Option<crate::envelope::dirkey::Listed>> {
        crate::tree::DirKeyList::get(self, id)
    }

    fn set(
        &self,
        id: crate::envelope::dirkey::DirId,
        to: Option<crate::envelope::dirkey::Listed>,
    ) -> std::io::Result<Option<crate::envelope::dirkey::Listed>> {
        crate::tree::DirKeyList::set(self, id, to)
    }

    fn path(&self) -> &Path {
        crate::tree::DirKeyList::path(self)
    }

    fn version(&self) -> std::io::Result<u64> {
        crate::tree::DirKeyList::version(self)
    }
}
