//! The usual mistakes of a new user, refused (or made harmless) before
//! anything is written: a mistyped --keystore, swapped arguments, a non-empty
//! mount point, a second daemon on one backing directory, a read-only backing
//! directory, plain files in the backing directory, no access to /dev/fuse,
//! and output to a closed pipe.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{Mount, MountGuard, is_mounted, kmsfs, require_root};

const MARKER: &str = ".kmsfs.json";
const LOCK: &str = ".kmsfs.lock";

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `kmsfs --keystore KS mount BACKING MNT ARGS`.
fn mount_with(ks: &Path, backing: &Path, mnt: &Path, log: &Path, args: &[&str]) -> Output {
    kmsfs()
        .arg("--keystore")
        .arg(ks)
        .arg("mount")
        .arg(backing)
        .arg(mnt)
        .arg("--log-file")
        .arg(log)
        .args(args)
        .output()
        .expect("run kmsfs mount")
}

#[test]
fn a_mistyped_keystore_is_refused_and_creates_nothing() {
    let Some(mut m) = Mount::new("mistyped-ks") else {
        return;
    };
    fs::write(m.p("a"), b"kept").unwrap();
    m.unmount();
    assert!(m.b(MARKER).exists(), "the first mount binds the directory");
    let other = m.tmp.path().join("mnt2");
    fs::create_dir(&other).unwrap();
    let _g = MountGuard(other.clone());
    let log = m.tmp.path().join("log2");

    // A keystore path that does not exist: nothing is created there.
    let typo = m.tmp.path().join("keystroe");
    let o = mount_with(&typo, &m.backing, &other, &log, &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("belongs to keystore"), "{}", text(&o));
    assert!(!typo.exists(), "a keystore was created for a mistyped path");
    assert!(!is_mounted(&other));

    // Another keystore that exists: refused, naming both.
    let ks2 = m.tmp.path().join("ks2");
    let o = kmsfs()
        .arg("--keystore")
        .arg(&ks2)
        .arg("init")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = mount_with(&ks2, &m.backing, &other, &log, &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("belongs to keystore"), "{}", text(&o));
    assert!(
        text(&o).contains("hint: pass the --keystore"),
        "{}",
        text(&o)
    );
    assert!(!is_mounted(&other));

    // A directory mounted before markers existed (and so before the
    // keystore recorded a tree's choices in `backings/`): its headers name
    // keys the other keystore lacks.
    fs::remove_file(m.b(MARKER)).unwrap();
    fs::remove_dir_all(m.keystore.join("backings")).unwrap();
    let o = mount_with(&ks2, &m.backing, &other, &log, &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("does not hold"), "{}", text(&o));
    assert!(!m.b(MARKER).exists());

    // The right keystore still mounts it, and binds it again.
    m.mount();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"kept");
    assert!(m.b(MARKER).exists());
}

#[test]
fn zero_setup_only_for_an_empty_backing_directory() {
    let Some(m) = Mount::new("zero-setup") else {
        return;
    };
    let backing = m.tmp.path().join("old");
    let mnt = m.tmp.path().join("mnt2");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(backing.join("notes.txt"), b"plain").unwrap();
    let _g = MountGuard(mnt.clone());
    let ks = m.tmp.path().join("new-ks");
    let o = mount_with(&ks, &backing, &mnt, &m.tmp.path().join("l"), &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        text(&o).contains("creates a keystore only for a new, empty backing directory"),
        "{}",
        text(&o)
    );
    assert!(!ks.exists());
    assert!(!is_mounted(&mnt));
    assert_eq!(fs::read(backing.join("notes.txt")).unwrap(), b"plain");
}

#[test]
fn swapped_arguments_and_a_non_empty_mount_point_are_refused() {
    let Some(mut m) = Mount::new("swapped") else {
        return;
    };
    fs::write(m.p("a"), b"x").unwrap();
    m.unmount();
    let log = m.tmp.path().join("l");
    // Swapped: the "mount point" is the backing directory.
    let o = mount_with(&m.keystore, &m.mnt, &m.backing, &log, &[]);
    assert!(!is_mounted(&m.backing));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("looks like a backing directory"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("did you mean `kmsfs mount"),
        "{}",
        text(&o)
    );

    // Non-empty: refused unless -o nonempty.
    let full = m.tmp.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("thesis.tex"), b"mine").unwrap();
    let _g = MountGuard(full.clone());
    let o = mount_with(&m.keystore, &m.backing, &full, &log, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is not empty"), "{}", text(&o));
    assert!(text(&o).contains("-o nonempty"), "{}", text(&o));
    assert!(!is_mounted(&full));
    let o = mount_with(&m.keystore, &m.backing, &full, &log, &["-o", "nonempty"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fs::read(full.join("a")).unwrap(), b"x");
}

#[test]
fn a_second_daemon_on_one_backing_directory_is_refused_whatever_the_options() {
    let Some(m) = Mount::with_args("second-daemon", &["-o", "fsname=mine"]) else {
        return;
    };
    let other = m.tmp.path().join("mnt2");
    fs::create_dir(&other).unwrap();
    let _g = MountGuard(other.clone());
    let log = m.tmp.path().join("l");
    for args in [&["-o", "fsname=other"][..], &["-o", "sharedstorage"]] {
        let o = mount_with(&m.keystore, &m.backing, &other, &log, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("already served by another kmsfs daemon"),
            "{}",
            text(&o)
        );
        assert!(text(&o).contains("-o sharedstorage"), "{}", text(&o));
        assert!(!is_mounted(&other), "{args:?}");
    }
}

#[test]
fn shared_storage_mounts_see_each_others_writes() {
    let Some(m) = Mount::with_args("shared", &["-o", "sharedstorage"]) else {
        return;
    };
    let other = m.tmp.path().join("mnt2");
    fs::create_dir(&other).unwrap();
    let _g = MountGuard(other.clone());
    let o = mount_with(
        &m.keystore,
        &m.backing,
        &other,
        &m.tmp.path().join("l"),
        &["-o", "sharedstorage"],
    );
    assert!(o.status.success(), "{}", text(&o));
    fs::write(m.p("f"), b"one").unwrap();
    assert_eq!(fs::read(other.join("f")).unwrap(), b"one");
    // No entry or attribute cache outlives a change made by the other daemon.
    fs::write(other.join("f"), b"two, longer").unwrap();
    assert_eq!(fs::metadata(m.p("f")).unwrap().len(), 11);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"two, longer");
    fs::remove_file(other.join("f")).unwrap();
    assert!(!m.p("f").exists());
}

#[test]
fn reserved_names_are_hidden_and_kept() {
    let Some(m) = Mount::new("reserved") else {
        return;
    };
    fs::write(m.p("visible"), b"v").unwrap();
    let names: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["visible".to_string()]);
    for name in [MARKER, LOCK] {
        let p = m.p(name);
        assert_eq!(
            fs::symlink_metadata(&p).unwrap_err().raw_os_error(),
            Some(libc::ENOENT),
            "{name}"
        );
        assert!(fs::write(&p, b"x").is_err(), "{name} created");
        assert!(fs::remove_file(&p).is_err(), "{name} removed");
        assert!(fs::rename(m.p("visible"), &p).is_err(), "{name} replaced");
        assert!(m.b(name).exists(), "{name} gone from the backing directory");
    }
    // Only in the root: elsewhere these are ordinary names.
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d").join(MARKER), b"ok").unwrap();
    assert_eq!(fs::read(m.p("d").join(MARKER)).unwrap(), b"ok");
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(m.b(MARKER)).unwrap()).unwrap();
    assert!(marker["KeystoreId"].is_string() && marker["DefaultKeyId"].is_string());
}

#[test]
fn plain_files_are_reported_and_never_written() {
    let Some(mut m) = Mount::new("plain") else {
        return;
    };
    fs::write(m.p("enc"), b"secret").unwrap();
    m.unmount();
    fs::write(m.b("notes.txt"), b"plain text").unwrap();
    fs::write(m.b("empty"), b"").unwrap();
    fs::create_dir(m.b("d")).unwrap();
    fs::write(m.b("d/readme"), b"plain too").unwrap();
    let o = mount_with(&m.keystore, &m.backing, &m.mnt, &m.log, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let err = text(&o);
    assert!(
        err.contains("3 files in") && err.contains("are not kmsfs files"),
        "{err}"
    );
    assert!(err.contains("left untouched"), "{err}");
    // Reading never writes: the empty plain file stays empty.
    assert!(fs::read(m.p("empty")).is_err());
    assert!(fs::read(m.p("notes.txt")).is_err());
    assert_eq!(fs::metadata(m.b("empty")).unwrap().len(), 0);
    assert_eq!(fs::read(m.b("notes.txt")).unwrap(), b"plain text");
    assert_eq!(fs::read(m.p("enc")).unwrap(), b"secret");
    // The log gives the file's size and the header's.
    let log = m.log_text();
    assert!(
        log.contains("file of 0 bytes is shorter than a kmsfs header (1024 bytes)"),
        "{log}"
    );
}

#[test]
fn no_access_to_dev_fuse_is_named_before_anything_is_created() {
    let Some(m) = Mount::new("dev-fuse") else {
        return;
    };
    let backing = m.tmp.path().join("new");
    let mnt = m.tmp.path().join("mnt2");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    let ks = m.tmp.path().join("ks-new");
    let o = kmsfs()
        .env("KMSFS_TEST_DEV_FUSE", m.tmp.path().join("no-fuse"))
        .arg("--keystore")
        .arg(&ks)
        .arg("mount")
        .arg(&backing)
        .arg(&mnt)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("cannot open"), "{}", text(&o));
    assert!(text(&o).contains("modprobe fuse"), "{}", text(&o));
    assert!(!ks.exists(), "a keystore was created");
    assert_eq!(fs::read_dir(&backing).unwrap().count(), 0);
    assert!(!is_mounted(&mnt));
}

#[test]
fn a_read_only_backing_directory_is_served_read_only() {
    if !require_root("ro-backing", "a read-only bind mount") {
        return;
    }
    let Some(mut m) = Mount::new("ro-backing") else {
        return;
    };
    fs::write(m.p("a"), b"readable").unwrap();
    m.unmount();
    let ro = m.tmp.path().join("ro");
    fs::create_dir(&ro).unwrap();
    let _ro_guard = MountGuard(ro.clone());
    common::sh(
        m.tmp.path(),
        &format!(
            "mount --bind {0} {1} && mount -o remount,bind,ro {1}",
            m.backing.display(),
            ro.display()
        ),
    );
    let mnt = m.tmp.path().join("mnt2");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    let o = mount_with(&m.keystore, &ro, &mnt, &m.tmp.path().join("l"), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cannot be written: mounting it read-only"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(mnt.join("a")).unwrap(), b"readable");
    let e = fs::write(mnt.join("b"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    common::force_unmount(&mnt, true);
}

fn closed_stdout(m: &Mount, args: &[&str]) -> Output {
    let mut child = m
        .kmsfs()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let Some(m) = Mount::new("epipe") else {
        return;
    };
    fs::write(m.p("big"), vec![7u8; 256 * 1024]).unwrap();
    let backing_file = m.b("big");
    for args in [
        vec!["kms", "list-aliases"],
        vec!["unseal", backing_file.to_str().unwrap(), "-"],
    ] {
        let o = closed_stdout(&m, &args);
        let quiet = o.status.success() || o.status.signal() == Some(libc::SIGPIPE);
        assert!(quiet, "{args:?}: {:?} {}", o.status, text(&o));
        assert_eq!(text(&o), "", "{args:?}");
    }
}
