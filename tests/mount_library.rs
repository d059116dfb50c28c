//! A program that mounts through the library (`kmsfs::mount`) is refused
//! what the command line refuses, because the rules live below the command
//! line (src/daemon/preflight.rs, src/daemon/binding.rs): a backing
//! directory bound to another keystore or to a remote KMS, a non-empty mount
//! point, a keystore under a directory another user controls, a keystore
//! that is missing where none may be created. Each refusal leaves nothing
//! behind and mounts nothing; the command line refuses the same setup with
//! the same words.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use common::{MountGuard, fuse_available, is_mounted, kmsfs, require_root, tempdir, test_users};
use kmsfs::daemon::{BackingMarker, KeySource, REMOTE_MARKER_ID, write_marker};
use kmsfs::{CreateMode, KmsError, LocalKeyStore, MountError, MountRequest};

const MARKER: &str = ".kmsfs.json";

/// A backing directory, a mount point and a log path in a fresh directory.
struct Setup {
    tmp: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
}

impl Setup {
    fn new(test: &str) -> Option<Self> {
        if !require_root(test, "mounting") || !fuse_available(test) {
            return None;
        }
        let tmp = tempdir(test);
        let backing = tmp.path().join("backing");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        Some(Setup { tmp, backing, mnt })
    }

    fn log(&self) -> PathBuf {
        self.tmp.path().join("log")
    }

    /// `kmsfs::mount` of this backing directory on this mount point with
    /// the keystore in `ks`, in the background, as a program would call it.
    fn library_mount(&self, ks: &Path, may_create: bool) -> Result<(), MountError> {
        let _g = MountGuard(self.mnt.clone());
        let r = kmsfs::mount(MountRequest {
            backing: self.backing.clone(),
            mountpoint: self.mnt.clone(),
            keys: KeySource::Local {
                dir: ks.to_path_buf(),
                passphrase: Arc::new(|| Err(KmsError::invalid("no passphrase here".into()))),
                may_create,
            },
            key_id: None,
            options: Vec::new(),
            foreground: false,
            log_file: Some(self.log()),
        });
        assert!(!is_mounted(&self.mnt), "the library mounted: {r:?}");
        r
    }

    /// `kmsfs --keystore KS mount BACKING MNT`.
    fn cli_mount(&self, ks: &Path) -> Output {
        let _g = MountGuard(self.mnt.clone());
        let o = kmsfs()
            .arg("--keystore")
            .arg(ks)
            .arg("mount")
            .arg(&self.backing)
            .arg(&self.mnt)
            .arg("--log-file")
            .arg(self.log())
            .output()
            .unwrap();
        assert!(!is_mounted(&self.mnt), "the command line mounted");
        o
    }

    /// The names in the backing directory.
    fn backing_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.backing)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The library refused with `needle` in its message, and so did the command
/// line, with exit code `code`.
fn both_refuse(lib: Result<(), MountError>, cli: &Output, code: i32, needle: &str) {
    let e = lib.expect_err("the library mount was not refused");
    assert!(e.to_string().contains(needle), "library: {e}");
    assert_eq!(cli.status.code(), Some(code), "{}", stderr(cli));
    assert!(
        stderr(cli).contains(needle),
        "command line: {}",
        stderr(cli)
    );
}

fn new_keystore(dir: &Path) -> String {
    let ks = LocalKeyStore::create(dir, CreateMode::RootKeyFile).unwrap();
    ks.keystore_id().to_string()
}

#[test]
fn a_backing_directory_bound_to_another_keystore_is_refused() {
    let Some(s) = Setup::new("library_other_keystore") else {
        return;
    };
    let (ks1, ks2) = (s.tmp.path().join("ks1"), s.tmp.path().join("ks2"));
    let id1 = new_keystore(&ks1);
    new_keystore(&ks2);
    let marker = BackingMarker::new(id1.clone(), "k".into());
    write_marker(&s.backing, &marker).unwrap();
    let lib = s.library_mount(&ks2, false);
    assert!(
        matches!(lib, Err(MountError::Refused(..))),
        "library: {lib:?}"
    );
    let cli = s.cli_mount(&ks2);
    both_refuse(lib, &cli, 4, &format!("belongs to keystore {id1}"));
    // The lock the checks took is gone again; the marker is unchanged.
    assert_eq!(s.backing_names(), [MARKER]);
    assert_eq!(
        kmsfs::daemon::read_marker(&s.backing).unwrap(),
        Some(marker)
    );
}

#[test]
fn a_backing_directory_bound_to_a_remote_kms_is_refused_a_local_keystore() {
    let Some(s) = Setup::new("library_remote_marker") else {
        return;
    };
    let ks = s.tmp.path().join("ks");
    new_keystore(&ks);
    write_marker(
        &s.backing,
        &BackingMarker::new(REMOTE_MARKER_ID.into(), "k".into()),
    )
    .unwrap();
    let lib = s.library_mount(&ks, false);
    let cli = s.cli_mount(&ks);
    both_refuse(lib, &cli, 4, "belongs to a remote KMS");
    assert_eq!(s.backing_names(), [MARKER]);
}

#[test]
fn a_non_empty_mount_point_is_refused_before_anything_is_written() {
    let Some(s) = Setup::new("library_nonempty") else {
        return;
    };
    let ks = s.tmp.path().join("ks");
    new_keystore(&ks);
    std::fs::write(s.mnt.join("notes.txt"), b"written while unmounted").unwrap();
    let lib = s.library_mount(&ks, false);
    assert!(
        matches!(lib, Err(MountError::State(..))),
        "library: {lib:?}"
    );
    let cli = s.cli_mount(&ks);
    both_refuse(lib, &cli, 1, "is not empty");
    assert!(s.backing_names().is_empty(), "{:?}", s.backing_names());
}

#[test]
fn a_keystore_under_a_directory_another_user_controls_is_refused() {
    let Some(s) = Setup::new("library_untrusted_keystore") else {
        return;
    };
    let Some(users) = test_users("library_untrusted_keystore") else {
        return;
    };
    // Made while its parent was root's, then the parent handed to kmsfs-a,
    // who could now swap the keystore for one of theirs.
    let home = s.tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let ks = home.join("ks");
    new_keystore(&ks);
    std::os::unix::fs::chown(&home, Some(users.a.uid), Some(users.a.gid)).unwrap();
    let lib = s.library_mount(&ks, false);
    assert!(
        matches!(&lib, Err(MountError::Key { source, .. })
            if matches!(**source, KmsError::UntrustedKeystorePath { .. })),
        "library: {lib:?}"
    );
    let cli = s.cli_mount(&ks);
    both_refuse(lib, &cli, 4, "can be changed by another user");
    assert!(s.backing_names().is_empty(), "{:?}", s.backing_names());
}

#[test]
fn a_missing_keystore_is_created_only_where_allowed() {
    let Some(s) = Setup::new("library_missing_keystore") else {
        return;
    };
    let ks = s.tmp.path().join("keystroe");
    let lib = s.library_mount(&ks, false);
    assert!(
        matches!(&lib, Err(MountError::Key { source, .. })
            if matches!(**source, KmsError::KeystoreNotFound { .. })),
        "library: {lib:?}"
    );
    let cli = s.cli_mount(&ks);
    both_refuse(lib, &cli, 6, "there is no keystore in");
    assert!(
        stderr(&cli).contains("only at the default location"),
        "{}",
        stderr(&cli)
    );
    assert!(!ks.exists(), "a keystore was created for a mistyped path");
    assert!(s.backing_names().is_empty(), "{:?}", s.backing_names());
}
