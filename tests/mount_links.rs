//! Symlink targets bound to their link (issue 17): under encrypted names a
//! target is sealed for its directory and its stored name, so a target
//! copied onto another link in the backing directory, or two links'
//! targets swapped by another user, read as EIO with a log line naming the
//! link, never as another target; a rename (plain, RENAME_NOREPLACE,
//! RENAME_EXCHANGE, across directories, long names) re-seals the target
//! for its new place; link(2) of a symlink is EPERM; targets of the old
//! form (tests/fixtures/names_v1, made by an earlier build) still read,
//! fsck names them and rewrap re-seals them.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Mount, MountGuard, Names};

/// The marker that starts a stored target of the new form (docs/FORMAT.md).
const FORM2: &[u8] = b"~v2~";

/// Every entry under `dir` but kmsfs's own files.
fn user_entries(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let n = e.file_name();
            let n = n.as_bytes();
            let long_entry = n.starts_with(b".kmsfs.ln.") && !n.ends_with(b".name");
            let own = n.starts_with(b".kmsfs.") && !long_entry;
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
            if !own {
                out.insert(e.path());
            }
        }
    }
    out
}

/// Every kmsfs temporary (`.kmsfs.tmp.*`) under `dir`.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_name().as_bytes().starts_with(b".kmsfs.tmp.") {
                out.push(e.path());
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
    out
}

/// The one backing entry `make` adds.
fn made(m: &Mount, make: impl FnOnce()) -> PathBuf {
    let before = user_entries(&m.backing);
    make();
    let new: Vec<PathBuf> = user_entries(&m.backing)
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    new[0].clone()
}

/// The stored target of backing symlink `p`.
fn stored(p: &Path) -> Vec<u8> {
    fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec()
}

/// Replaces backing symlink `p` by one holding `target`.
fn plant(p: &Path, target: &[u8]) {
    fs::remove_file(p).unwrap();
    symlink(OsStr::from_bytes(target), p).unwrap();
}

fn errno_of_readlink(p: &Path) -> Option<i32> {
    fs::read_link(p).err().and_then(|e| e.raw_os_error())
}

/// renameat2 through ctypes: python3 script taking FROM TO FLAGS; prints errno.
const RENAMEAT2: &str = "import ctypes, os, sys\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
r = libc.renameat2(-100, os.fsencode(sys.argv[1]), -100, os.fsencode(sys.argv[2]), int(sys.argv[3]))\n\
print(0 if r == 0 else ctypes.get_errno())";

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let o = Command::new("python3")
        .arg("-c")
        .arg(RENAMEAT2)
        .arg(from)
        .arg(to)
        .arg(flags.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "python: {}", common::describe(&o));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

#[test]
fn a_target_copied_onto_another_link_is_eio_and_logged_never_another_target() {
    let Some(mut m) = Mount::with_names("links-copied", Names::Encrypted, &[]) else {
        return;
    };
    fs::create_dir(m.p("a")).unwrap();
    fs::create_dir(m.p("b")).unwrap();
    let one = made(&m, || symlink("one", m.p("a/one")).unwrap());
    let two = made(&m, || symlink("two", m.p("a/two")).unwrap());
    let three = made(&m, || symlink("three", m.p("b/three")).unwrap());
    assert!(stored(&one).starts_with(FORM2));
    m.unmount();
    // one's target onto two (same directory) and onto three (another one).
    let t1 = stored(&one);
    plant(&two, &t1);
    plant(&three, &t1);
    m.mount();
    assert_eq!(fs::read_link(m.p("a/one")).unwrap(), Path::new("one"));
    assert_eq!(errno_of_readlink(&m.p("a/two")), Some(libc::EIO));
    assert_eq!(errno_of_readlink(&m.p("b/three")), Some(libc::EIO));
    let log = m.log_text();
    for link in [&two, &three] {
        let rel = link.strip_prefix(&m.backing).unwrap().display().to_string();
        let line = log
            .lines()
            .find(|l| l.contains(&rel))
            .unwrap_or_else(|| panic!("no log line names {rel}: {log}"));
        assert!(
            line.contains("symlink target fails authentication at this link"),
            "{line}"
        );
    }
    // fsck names both, and only them.
    m.unmount();
    let o = m.run(&["fsck", m.backing.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(5), "{}", common::describe(&o));
    assert_eq!(out.matches("name refused").count(), 2, "{out}");
    for link in [&two, &three] {
        let rel = link.strip_prefix(&m.backing).unwrap().display().to_string();
        assert!(out.contains(&format!("{rel}: name refused")), "{out}");
    }
}

#[test]
fn renamed_links_read_right_across_directories_with_exchange_and_after_a_remount() {
    let Some(mut m) = Mount::with_names("links-renamed", Names::Encrypted, &[]) else {
        return;
    };
    let long = "L".repeat(220);
    fs::create_dir(m.p("d1")).unwrap();
    fs::create_dir(m.p("d2")).unwrap();
    symlink("target-x", m.p("d1/x")).unwrap();
    symlink("target-y", m.p("d2/y")).unwrap();
    fs::write(m.p("d2/f"), b"file-f").unwrap();
    let owner = fs::symlink_metadata(m.p("d1/x")).unwrap();
    // A plain rename across directories keeps the node (st_ino), owner and
    // times, as ext4 does.
    std::os::unix::fs::lchown(m.p("d1/x"), Some(1234), Some(2345)).unwrap();
    let before = fs::symlink_metadata(m.p("d1/x")).unwrap();
    fs::rename(m.p("d1/x"), m.p("d2/x2")).unwrap();
    let after = fs::symlink_metadata(m.p("d2/x2")).unwrap();
    assert_eq!(
        (
            after.ino(),
            after.uid(),
            after.gid(),
            after.size(),
            after.mtime()
        ),
        (before.ino(), 1234, 2345, before.size(), before.mtime())
    );
    assert_eq!(owner.size(), "target-x".len() as u64);
    assert_eq!(fs::read_link(m.p("d2/x2")).unwrap(), Path::new("target-x"));
    assert!(fs::symlink_metadata(m.p("d1/x")).is_err());
    // RENAME_NOREPLACE: onto an existing name EEXIST, else moved; to a
    // long name and back.
    let noreplace = libc::RENAME_NOREPLACE;
    assert_eq!(
        renameat2(&m.p("d2/x2"), &m.p("d2/y"), noreplace),
        libc::EEXIST
    );
    assert_eq!(fs::read_link(m.p("d2/x2")).unwrap(), Path::new("target-x"));
    let long_x = m.p(&format!("d1/{long}"));
    assert_eq!(renameat2(&m.p("d2/x2"), &long_x, noreplace), 0);
    assert_eq!(fs::read_link(&long_x).unwrap(), Path::new("target-x"));
    fs::rename(&long_x, m.p("d1/x")).unwrap();
    // RENAME_EXCHANGE of two links in two directories.
    let exchange = libc::RENAME_EXCHANGE;
    assert_eq!(renameat2(&m.p("d1/x"), &m.p("d2/y"), exchange), 0);
    assert_eq!(fs::read_link(m.p("d1/x")).unwrap(), Path::new("target-y"));
    assert_eq!(fs::read_link(m.p("d2/y")).unwrap(), Path::new("target-x"));
    // RENAME_EXCHANGE of a link with a file, both ways.
    assert_eq!(renameat2(&m.p("d1/x"), &m.p("d2/f"), exchange), 0);
    assert_eq!(fs::read_link(m.p("d2/f")).unwrap(), Path::new("target-y"));
    assert_eq!(fs::read(m.p("d1/x")).unwrap(), b"file-f");
    assert_eq!(renameat2(&m.p("d1/x"), &m.p("d2/f"), exchange), 0);
    assert_eq!(fs::read_link(m.p("d1/x")).unwrap(), Path::new("target-y"));
    assert_eq!(fs::read(m.p("d2/f")).unwrap(), b"file-f");
    // A plain rename over another link replaces it.
    symlink("target-z", m.p("d1/z")).unwrap();
    fs::rename(m.p("d1/z"), m.p("d2/y")).unwrap();
    assert_eq!(fs::read_link(m.p("d2/y")).unwrap(), Path::new("target-z"));
    // No temporary is left, every stored target is of the new form.
    assert_eq!(temporaries(&m.backing), Vec::<PathBuf>::new());
    let want = [("d1/x", "target-y"), ("d2/y", "target-z")];
    let check = |m: &Mount| {
        for (link, target) in want {
            assert_eq!(fs::read_link(m.p(link)).unwrap(), Path::new(target));
        }
        assert_eq!(fs::read(m.p("d2/f")).unwrap(), b"file-f");
        let mut names: Vec<String> = fs::read_dir(m.p("d1"))
            .unwrap()
            .chain(fs::read_dir(m.p("d2")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["f", "x", "y"]);
    };
    check(&m);
    m.remount();
    check(&m);
    m.unmount();
    for p in user_entries(&m.backing) {
        if fs::symlink_metadata(&p).unwrap().file_type().is_symlink() {
            assert!(stored(&p).starts_with(FORM2), "{}", p.display());
        }
    }
    let out = m.ok(&["fsck", m.backing.to_str().unwrap()]);
    assert!(
        out.contains("names: 5 names and 2 symlink targets open, 0 refused"),
        "{out}"
    );
    assert!(!out.contains("old form"), "{out}");
}

#[test]
fn a_symlink_gets_no_second_name_under_encrypted_names_only() {
    for names in Names::BOTH {
        let Some(m) = Mount::with_names("links-hard", names, &[]) else {
            return;
        };
        symlink("t", m.p("l")).unwrap();
        let r = fs::hard_link(m.p("l"), m.p("l2"));
        match names {
            Names::Encrypted => {
                assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM));
                assert!(fs::symlink_metadata(m.p("l2")).is_err());
            }
            Names::Plain => {
                r.unwrap();
                assert_eq!(fs::read_link(m.p("l2")).unwrap(), Path::new("t"));
            }
        }
        // A regular file still gets one in both modes.
        fs::write(m.p("f"), b"x").unwrap();
        fs::hard_link(m.p("f"), m.p("f2")).unwrap();
        assert_eq!(fs::read(m.p("f2")).unwrap(), b"x");
    }
}

#[test]
fn another_user_who_swaps_two_links_targets_gets_eio_for_both() {
    let Some(mut m) = Mount::with_names("links-swapped", Names::Encrypted, &["-o", "allow_other"])
    else {
        return;
    };
    let Some(u) = common::test_users("links-swapped") else {
        return;
    };
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&m.backing, fs::Permissions::from_mode(0o755)).unwrap();
    let shared = made(&m, || fs::create_dir(m.p("shared")).unwrap());
    std::os::unix::fs::chown(m.p("shared"), Some(0), Some(u.gid)).unwrap();
    fs::set_permissions(m.p("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    // A's two links, made through the mount.
    common::ok_as(
        &u.a,
        &m.p("shared"),
        "ln -s report-2026.pdf current && ln -s /etc/passwd other",
    );
    let backing_links: Vec<PathBuf> = user_entries(&shared).into_iter().collect();
    assert_eq!(backing_links.len(), 2);
    // B, who may write the backing directory but holds no key, swaps the
    // two stored targets.
    let [p, q] = [&backing_links[0], &backing_links[1]];
    let script = format!(
        "a=$(readlink {p}) && b=$(readlink {q}) && rm {p} {q} && ln -s \"$b\" {p} && ln -s \"$a\" {q}",
        p = p.file_name().unwrap().to_str().unwrap(),
        q = q.file_name().unwrap().to_str().unwrap(),
    );
    common::ok_as(&u.b, &shared, &script);
    assert_eq!(fs::symlink_metadata(p).unwrap().uid(), u.b.uid);
    // A's next readlink of each: EIO, never the other's target.
    let read = |m: &Mount| {
        let o = u.a.sh(
            &m.p("shared"),
            "readlink -v current; readlink -v other; echo done",
        );
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(out.trim(), "done", "{}", common::describe(&o));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(err.matches("Input/output error").count(), 2, "{err}");
    };
    read(&m);
    m.remount();
    read(&m);
    let log = m.log_text();
    for link in [p, q] {
        let rel = link.strip_prefix(&m.backing).unwrap().display().to_string();
        assert!(
            log.lines()
                .any(|l| l.contains(&rel) && l.contains("fails authentication at this link")),
            "no log line names {rel}: {log}"
        );
    }
}

/// tests/fixtures/names_v1: a tree with encrypted names made by the build
/// before targets were bound to their links, under the CMK of
/// tests/fixtures/v1/keystore.
fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

#[test]
fn old_form_targets_still_read_fsck_names_them_and_rename_and_rewrap_reseal_them() {
    let test = "links-old-form";
    if !common::fuse_available(test) {
        return;
    }
    let tmp = common::tempdir(test);
    let (ks, backing, mnt) = (
        tmp.path().join("keystore"),
        tmp.path().join("backing"),
        tmp.path().join("mnt"),
    );
    let cp = |from: &Path, to: &Path| {
        let o = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::describe(&o));
    };
    cp(&fixture("v1/keystore"), &ks);
    fs::set_permissions(&ks, fs::Permissions::from_mode(0o700)).unwrap();
    for f in ["keystore.kms", "keystore.prev", "root.key"] {
        fs::set_permissions(ks.join(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
    cp(&fixture("names_v1/backing"), &backing);
    fs::create_dir(&mnt).unwrap();
    let key = fs::read_to_string(fixture("v1/key-id.txt")).unwrap();
    let kmsfs = |args: &[&OsStr]| {
        let o = common::kmsfs()
            .arg("--keystore")
            .arg(&ks)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "kmsfs {args:?}: {}",
            common::describe(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let long = "L".repeat(200);
    let want = [
        ("latest", "notes.txt".to_string()),
        ("sub/up", "../notes.txt".to_string()),
        (&*format!("sub/{long}"), "../latest".to_string()),
    ];
    let mount = || {
        kmsfs(&[
            OsStr::new("mount"),
            backing.as_os_str(),
            mnt.as_os_str(),
            OsStr::new("--key-id"),
            OsStr::new(key.trim()),
        ]);
        MountGuard(mnt.clone())
    };
    let unmount = |g: MountGuard| {
        kmsfs(&[OsStr::new("unmount"), mnt.as_os_str()]);
        drop(g);
    };
    // Every old target reads, through the links too.
    let g = mount();
    for (link, target) in &want {
        assert_eq!(fs::read_link(mnt.join(link)).unwrap(), Path::new(target));
    }
    assert_eq!(
        fs::read(mnt.join(format!("sub/{long}"))).unwrap(),
        b"notes of round four\n"
    );
    unmount(g);
    // fsck opens them and names each as old.
    let out = kmsfs(&[OsStr::new("fsck"), backing.as_os_str()]);
    assert!(out.contains("3 symlink targets open, 0 refused"), "{out}");
    assert_eq!(
        out.matches("symlink target of the old form").count(),
        3,
        "{out}"
    );
    // A rename through the mount re-seals that one.
    let g = mount();
    fs::rename(mnt.join("sub/up"), mnt.join("up")).unwrap();
    assert_eq!(
        fs::read_link(mnt.join("up")).unwrap(),
        Path::new("../notes.txt")
    );
    unmount(g);
    let out = kmsfs(&[OsStr::new("fsck"), backing.as_os_str()]);
    assert_eq!(
        out.matches("symlink target of the old form").count(),
        2,
        "{out}"
    );
    // rewrap re-seals the rest for their links; nothing else changes.
    let out = kmsfs(&[OsStr::new("rewrap"), backing.as_os_str()]);
    assert!(
        out.contains("2 symlink targets re-sealed for their links"),
        "{out}"
    );
    let out = kmsfs(&[OsStr::new("fsck"), backing.as_os_str()]);
    assert!(!out.contains("old form"), "{out}");
    assert!(out.contains("3 symlink targets open, 0 refused"), "{out}");
    let g = mount();
    assert_eq!(
        fs::read_link(mnt.join("latest")).unwrap(),
        Path::new("notes.txt")
    );
    assert_eq!(
        fs::read_link(mnt.join("up")).unwrap(),
        Path::new("../notes.txt")
    );
    assert_eq!(
        fs::read(mnt.join(format!("sub/{long}"))).unwrap(),
        b"notes of round four\n"
    );
    unmount(g);
}
