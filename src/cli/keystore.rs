//! `kmsfs init` and opening the keystore for a command (directory choice,
//! passphrase sources, zero-setup default).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{CliError, ErrorClass, GlobalArgs, OutputFormat, current_caller};
use crate::crypto::SecretBytes;
use crate::kms::{Argon2Params, CreateMode, KmsError, LocalKeyStore};

/// Environment variable naming the keystore directory.
pub const KEYSTORE_ENV: &str = "KMSFS_KEYSTORE";
/// Environment variable holding the keystore passphrase.
pub const PASSPHRASE_ENV: &str = "KMSFS_PASSPHRASE";

/// Arguments of `kmsfs init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Seal the keystore with a passphrase (Argon2id) instead of a root key file.
    /// The passphrase comes from --passphrase-file, $KMSFS_PASSPHRASE or a prompt.
    #[arg(long)]
    pub with_passphrase: bool,
}

/// Shortest new passphrase `kmsfs passwd` accepts without `--force`
/// (Argon2id slows guessing; it cannot make a short passphrase long).
pub const MIN_PASSPHRASE_LEN: usize = 12;

/// Environment variable holding the new passphrase for `kmsfs passwd`.
pub const NEW_PASSPHRASE_ENV: &str = "KMSFS_NEW_PASSPHRASE";

/// Arguments of `kmsfs passwd`.
#[derive(Debug, clap::Args)]
pub struct PasswdArgs {
    /// Seal with a root key file (a new random `root.key`) instead of a
    /// passphrase.
    #[arg(long)]
    pub to_root_key_file: bool,
    /// Read the new passphrase from this file (else $KMSFS_NEW_PASSPHRASE,
    /// else a prompt, twice).
    #[arg(long, value_name = "FILE", conflicts_with = "to_root_key_file")]
    pub new_passphrase_file: Option<PathBuf>,
    /// Accept a new passphrase shorter than 12 bytes.
    #[arg(long)]
    pub force: bool,
}

/// The keystore directory: --keystore, else $KMSFS_KEYSTORE, else
/// $XDG_DATA_HOME/kmsfs, else ~/.local/share/kmsfs.
pub fn keystore_dir(g: &GlobalArgs) -> PathBuf {
    if let Some(d) = &g.keystore {
        return d.clone();
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = env(KEYSTORE_ENV) {
        return PathBuf::from(d);
    }
    if let Some(d) = env("XDG_DATA_HOME") {
        return PathBuf::from(d).join("kmsfs");
    }
    let home = env("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/kmsfs")
}

/// Reads the passphrase: --passphrase-file (one trailing `\n` or `\r\n` stripped),
/// else $KMSFS_PASSPHRASE, else a no-echo prompt on the terminal (twice when
/// `confirm`), else an error saying how to give one.
fn read_passphrase(g: &GlobalArgs, confirm: bool) -> Result<SecretBytes, KmsError> {
    let check = |p: SecretBytes| {
        if p.is_empty() {
            Err(KmsError::invalid(
                "the passphrase is empty; give a non-empty passphrase".into(),
            ))
        } else {
            Ok(p)
        }
    };
    if let Some(f) = &g.passphrase_file {
        let mut bytes = read_passphrase_file(f, g.passphrase_file_private)?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        return check(SecretBytes::new(bytes));
    }
    if let Some(p) = std::env::var_os(PASSPHRASE_ENV) {
        use std::os::unix::ffi::OsStringExt;
        return check(SecretBytes::new(p.into_vec()));
    }
    // rpassword reads from /dev/tty; ask only when a person is plausibly there.
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        if !confirm {
            // Opening: the keystore cannot be opened (6), the remedy says how.
            return Err(KmsError::WrongRootKey {
                problem: crate::kms::RootKeyProblem::NoPassphrase,
            });
        }
        return Err(KmsError::invalid(
            "the new keystore needs a passphrase and there is no terminal to ask on; pass \
             --passphrase-file FILE or set KMSFS_PASSPHRASE"
                .into(),
        ));
    }
    let prompt = |msg: &str| {
        rpassword::prompt_password(msg)
            .map(|s| SecretBytes::new(s.into_bytes()))
            .map_err(|e| {
                KmsError::io_from("cannot read the passphrase from the terminal".into(), e)
            })
    };
    let p = check(prompt("kmsfs keystore passphrase: ")?)?;
    if confirm && prompt("again, to confirm: ")? != p {
        return Err(KmsError::invalid(
            "the two passphrases differ; run the command again".into(),
        ));
    }
    Ok(p)
}

/// The bytes of the passphrase file `f` a user named. With `private` (a
/// mount option: the docs say only root may read it), refused unless it is
/// a regular file owned by root or this user that neither group nor others
/// can read; checked on the file read, not on its name.
fn read_passphrase_file(f: &Path, private: bool) -> Result<Vec<u8>, KmsError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let failed = |e: std::io::Error| {
        KmsError::io_from(format!("cannot read passphrase file {}", f.display()), e)
    };
    // The passphrase file a user named.
    #[allow(clippy::disallowed_methods)]
    let mut file = std::fs::File::open(f).map_err(failed)?;
    let m = file.metadata().map_err(failed)?;
    if private && (!m.is_file() || m.mode() & 0o077 != 0 || !crate::trust::trusted_owner(m.uid())) {
        return Err(KmsError::invalid(format!(
            "refusing the passphrase file {}: owner uid {}, mode {:o}; a passphrase file \
             given as a mount option must be owned by root or you and readable by no one \
             else (chown root, chmod 600)",
            f.display(),
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(failed)?;
    Ok(bytes)
}

/// Opens the keystore that `g` names, asking for the passphrase only if it is
/// sealed with one. No keystore there: an error that says to run `kmsfs init`.
/// Within one process the same directory yields the same service.
pub fn open_key_service(g: &GlobalArgs) -> Result<Arc<LocalKeyStore>, CliError> {
    let dir = keystore_dir(g);
    LocalKeyStore::open_shared(&dir, &|| read_passphrase(g, false))
        .map_err(|e| CliError::keystore(&dir, e))
}

/// Where a keystore is made without `kmsfs init`: $KMSFS_KEYSTORE, else
/// $XDG_DATA_HOME/kmsfs, else ~/.local/share/kmsfs (what --keystore
/// defaults to).
pub fn default_keystore_dir() -> PathBuf {
    keystore_dir(&GlobalArgs {
        keystore: None,
        output: OutputFormat::Text,
        query: None,
        passphrase_file: None,
        passphrase_file_private: false,
    })
}

/// The keystore `g` names as the key source of a mount or an import: a
/// keystore is made by itself (for a new, empty backing directory) only at
/// the default location, since a --keystore that names a missing directory
/// elsewhere is more often a typo than a wish for a second keystore.
pub fn key_source(g: &GlobalArgs) -> crate::daemon::KeySource {
    let dir = keystore_dir(g);
    let here = std::path::absolute(&dir).ok() == std::path::absolute(default_keystore_dir()).ok();
    let g = g.clone();
    crate::daemon::KeySource::Local {
        dir,
        passphrase: Arc::new(move || read_passphrase(&g, false)),
        may_create: here,
    }
}

/// Zero setup: opens the keystore, creating it (root-key-file mode) when there
/// is none, and returns it with the id of the key aliased `alias/kmsfs/default`,
/// created when absent (as AWS creates `aws/ebs`). A keystore is created only
/// at the default location: a --keystore that names a missing directory
/// elsewhere is more often a typo than a wish for a second keystore.
pub fn open_or_create_default(g: &GlobalArgs) -> Result<(Arc<LocalKeyStore>, String), CliError> {
    let dir = keystore_dir(g);
    let default = default_keystore_dir();
    let here = std::path::absolute(&dir).ok() == std::path::absolute(&default).ok();
    let refuse = || {
        CliError::new(
            ErrorClass::Keystore,
            format!("no keystore in {}", dir.display()),
        )
        .hint(format!(
            "kmsfs makes a keystore by itself only at the default location ({}); to start \
             one in {} run `kmsfs init --keystore {}`, or correct --keystore",
            default.display(),
            dir.display(),
            dir.display()
        ))
    };
    open_or_create(g, &|| if here { Ok(()) } else { Err(refuse()) })
}

/// Opens the keystore `g` names, creating it when there is none and
/// `may_create` agrees, and its default key.
fn open_or_create(
    g: &GlobalArgs,
    may_create: &dyn Fn() -> Result<(), CliError>,
) -> Result<(Arc<LocalKeyStore>, String), CliError> {
    let dir = keystore_dir(g);
    let ks = match LocalKeyStore::open_shared(&dir, &|| read_passphrase(g, false)) {
        Ok(ks) => ks,
        Err(KmsError::KeystoreNotFound { .. }) => {
            may_create()?;
            match LocalKeyStore::create_shared(&dir, CreateMode::RootKeyFile) {
                Ok(ks) => {
                    eprintln!(
                        "kmsfs: created a keystore in {} sealed with the root key file {}; \
                         back up both",
                        dir.display(),
                        dir.join(crate::kms::store::ROOT_KEY_FILE).display()
                    );
                    ks
                }
                // Another process created it meanwhile.
                Err(KmsError::AlreadyExists { .. }) => open_key_service(g)?,
                Err(e) => return Err(CliError::keystore(&dir, e)),
            }
        }
        Err(e) => return Err(CliError::keystore(&dir, e)),
    };
    let id = ks
        .ensure_default_key(&current_caller())
        .map_err(|e| CliError::keystore(&dir, e))?;
    Ok((ks, id))
}

/// The new passphrase of `kmsfs passwd`: --new-passphrase-file, else
/// $KMSFS_NEW_PASSPHRASE, else a prompt (twice); at least
/// `MIN_PASSPHRASE_LEN` bytes unless forced.
fn new_passphrase(a: &PasswdArgs) -> Result<SecretBytes, CliError> {
    let p = if let Some(f) = &a.new_passphrase_file {
        let g = GlobalArgs {
            keystore: None,
            output: OutputFormat::Text,
            query: None,
            passphrase_file: Some(f.clone()),
            passphrase_file_private: false,
        };
        read_passphrase(&g, false).map_err(|e| CliError::new(ErrorClass::Usage, e.to_string()))?
    } else if let Some(p) = std::env::var_os(NEW_PASSPHRASE_ENV) {
        use std::os::unix::ffi::OsStringExt;
        SecretBytes::new(p.into_vec())
    } else if std::io::stdin().is_terminal() || std::io::stderr().is_terminal() {
        prompt_new()?
    } else {
        return Err(CliError::new(
            ErrorClass::Usage,
            "no new passphrase and no terminal to ask on",
        )
        .hint("pass --new-passphrase-file FILE or set KMSFS_NEW_PASSPHRASE"));
    };
    check_new(p, a.force)
}

fn prompt_new() -> Result<SecretBytes, CliError> {
    let prompt = |msg: &str| {
        rpassword::prompt_password(msg)
            .map(|s| SecretBytes::new(s.into_bytes()))
            .map_err(|e| CliError::new(ErrorClass::Io, format!("cannot read the passphrase: {e}")))
    };
    let p = prompt("new keystore passphrase: ")?;
    if prompt("again, to confirm: ")? != p {
        return Err(CliError::new(
            ErrorClass::Usage,
            "the two passphrases differ; run the command again",
        ));
    }
    Ok(p)
}

fn check_new(p: SecretBytes, force: bool) -> Result<SecretBytes, CliError> {
    if p.is_empty() {
        return Err(CliError::new(
            ErrorClass::Usage,
            "the new passphrase is empty",
        ));
    }
    if p.len() < MIN_PASSPHRASE_LEN && !force {
        return Err(CliError::new(
            ErrorClass::Usage,
            format!(
                "the new passphrase has {} bytes; kmsfs asks for at least {MIN_PASSPHRASE_LEN}",
                p.len()
            ),
        )
        .hint("choose a longer one (several words), or pass --force to accept it"));
    }
    Ok(p)
}

/// `kmsfs passwd`: seals the keystore under a new passphrase, or switches
/// between the root key file and a passphrase, atomically. Refused while a
/// running mount uses the keystore (it holds the old root key).
#[allow(clippy::disallowed_methods)] // the keystore path the user named, and /proc/self/mountinfo
pub fn passwd(g: &GlobalArgs, a: PasswdArgs) -> Result<(), CliError> {
    let dir = keystore_dir(g);
    let canon = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    for m in crate::daemon::parse_mountinfo(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
    )
    .into_iter()
    .filter(|m| m.is_kmsfs())
    {
        let Some(pid) = m.daemon_pid() else { continue };
        let Ok(v) = crate::daemon::control_request(pid, "status") else {
            continue;
        };
        let used = v["Keystore"]
            .as_str()
            .map(|k| std::fs::canonicalize(k).unwrap_or_else(|_| PathBuf::from(k)) == canon);
        if used == Some(true) {
            return Err(CliError::new(
                ErrorClass::General,
                format!(
                    "the keystore in {} is in use by the mount at {} (daemon {pid})",
                    dir.display(),
                    m.mountpoint.display()
                ),
            )
            .hint("unmount it first (`kmsfs unmount MOUNTPOINT`), then run passwd again"));
        }
    }
    let ks = LocalKeyStore::open(&dir, &|| read_passphrase(g, false))
        .map_err(|e| CliError::keystore(&dir, e))?;
    let from = ks.root_mode();
    let mode = if a.to_root_key_file {
        CreateMode::RootKeyFile
    } else {
        CreateMode::Passphrase {
            passphrase: new_passphrase(&a)?,
            params: Argon2Params::default(),
        }
    };
    let to = match mode {
        CreateMode::RootKeyFile => "root-key-file",
        CreateMode::Passphrase { .. } => "passphrase",
    };
    ks.change_root(mode).map_err(|e| match e {
        e @ KmsError::Validation { .. } => CliError::new(ErrorClass::Usage, e.to_string()),
        e => CliError::keystore(&dir, e),
    })?;
    match g.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({ "KeystoreDirectory": dir.display().to_string(), "From": from, "RootKeyMode": to })
        ),
        OutputFormat::Text => {
            println!(
                "keystore {} is now sealed with: {to} (was {from})",
                dir.display()
            );
            if to == "root-key-file" {
                println!(
                    "  back up {} with the keystore: without it nothing can be decrypted",
                    dir.join(crate::kms::store::ROOT_KEY_FILE).display()
                );
            }
        }
    }
    Ok(())
}

/// `kmsfs init`.
pub fn init(g: &GlobalArgs, a: InitArgs) -> Result<(), CliError> {
    let dir = keystore_dir(g);
    let mode = if a.with_passphrase {
        CreateMode::Passphrase {
            passphrase: read_passphrase(g, true)?,
            params: Argon2Params::default(),
        }
    } else {
        CreateMode::RootKeyFile
    };
    let ks = LocalKeyStore::create(&dir, mode).map_err(|e| match e {
        // Already there, as an existing mount (1): not a usage error.
        KmsError::AlreadyExists { what } => CliError::new(ErrorClass::General, what.to_string())
            .hint("use it as it is, or pass --keystore DIR to create another one elsewhere"),
        e => CliError::keystore(&dir, e),
    })?;
    match g.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "KeystoreDirectory": dir.display().to_string(),
                "KeystoreId": ks.keystore_id(),
                "RootKeyMode": ks.root_mode(),
            })
        ),
        OutputFormat::Text => {
            println!("created keystore {}", ks.keystore_id());
            println!("  directory: {}", dir.display());
            println!("  sealed with: {}", ks.root_mode());
            if !a.with_passphrase {
                println!(
                    "  back up {} with the keystore: without it nothing can be decrypted",
                    dir.join(crate::kms::store::ROOT_KEY_FILE).display()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn globals(dir: &Path) -> GlobalArgs {
        GlobalArgs {
            keystore: Some(dir.to_path_buf()),
            output: OutputFormat::Text,
            query: None,
            passphrase_file: None,
            passphrase_file_private: false,
        }
    }

    #[test]
    fn keystore_option_wins() {
        let g = globals(Path::new("/x/y"));
        assert_eq!(keystore_dir(&g), PathBuf::from("/x/y"));
    }

    #[test]
    fn open_or_create_default_is_zero_setup_and_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let g = globals(&t.path().join("ks"));
        let e = open_key_service(&g).unwrap_err();
        assert_eq!(e.class, ErrorClass::Keystore);
        assert!(e.hint.unwrap().contains("kmsfs init"));
        let (ks, id) = open_or_create(&g, &|| Ok(())).unwrap();
        assert_eq!(ks.root_mode(), "root-key-file");
        let (ks2, id2) = open_or_create(&g, &|| Ok(())).unwrap();
        assert_eq!(
            (id2.as_str(), ks2.keystore_id()),
            (id.as_str(), ks.keystore_id())
        );
        assert!(Arc::ptr_eq(&ks, &ks2), "opened twice in one process");
        let m = crate::kms::KeyServiceExt::describe_key(
            &*ks,
            &crate::cli::cli_context(),
            "alias/kmsfs/default",
        );
        assert_eq!(m.unwrap().key_id, id);
        assert_eq!(ks.list_keys(&current_caller()).unwrap().len(), 1);
        assert!(open_key_service(&g).is_ok());
    }

    #[test]
    fn concurrent_zero_setup_agrees_on_one_keystore_and_one_default_key() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("ks");
        let ids: Vec<(String, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let g = globals(&dir);
                    s.spawn(move || {
                        let (ks, id) = open_or_create(&g, &|| Ok(())).unwrap();
                        (ks.keystore_id().to_string(), id)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        let ks = LocalKeyStore::open(&dir, &|| unreachable!()).unwrap();
        assert_eq!(ks.list_keys(&current_caller()).unwrap().len(), 1);
    }

    #[test]
    fn passphrase_file_loses_one_trailing_newline_only() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("p");
        std::fs::write(&f, "pass word\n\n").unwrap();
        let mut g = globals(t.path());
        g.passphrase_file = Some(f.clone());
        assert_eq!(read_passphrase(&g, false).unwrap().expose(), b"pass word\n");
        // docs/KEYSTORE.md: one line ending, `\n` or `\r\n`; a lone `\r` is kept.
        std::fs::write(&f, "pass word\r\n").unwrap();
        assert_eq!(read_passphrase(&g, false).unwrap().expose(), b"pass word");
        std::fs::write(&f, "pass word\r").unwrap();
        assert_eq!(read_passphrase(&g, false).unwrap().expose(), b"pass word\r");
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(
            read_passphrase(&g, false),
            Err(KmsError::Validation { .. })
        ));
    }

    #[test]
    fn zero_setup_never_replaces_a_lost_keystore() {
        use crate::kms::store::{CURRENT_FILE, ROOT_KEY_FILE};
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("ks");
        let g = globals(&dir);
        let (ks, _) = open_or_create(&g, &|| Ok(())).unwrap();
        drop(ks);
        let rk = std::fs::read(dir.join(ROOT_KEY_FILE)).unwrap();
        // keystore.kms is a symbolic link to a volume that is not mounted.
        std::fs::remove_file(dir.join(CURRENT_FILE)).unwrap();
        std::os::unix::fs::symlink("/nonexistent/vol/keystore.kms", dir.join(CURRENT_FILE))
            .unwrap();
        let e = open_or_create(&g, &|| Ok(())).unwrap_err();
        assert_ne!(e.class, ErrorClass::Usage);
        assert!(!e.message.starts_with("KeystoreNotFound"), "{}", e.message);
        // Gone altogether, root.key still there: lost, not "no keystore".
        std::fs::remove_file(dir.join(CURRENT_FILE)).unwrap();
        std::fs::remove_file(dir.join(crate::kms::store::PREV_FILE)).unwrap();
        let e = open_key_service(&g).unwrap_err();
        assert!(e.message.contains("lost or unreadable"), "{}", e.message);
        let e = open_or_create(&g, &|| Ok(())).unwrap_err();
        assert!(e.message.contains("lost or unreadable"), "{}", e.message);
        assert!(std::fs::symlink_metadata(dir.join(CURRENT_FILE)).is_err());
        assert_eq!(std::fs::read(dir.join(ROOT_KEY_FILE)).unwrap(), rk);
    }
}
