//! What a local user who can write part of a tree can do to the tools root
//! runs over it (issue 15, items 1 and 2): kmsfs-b swaps his directory for
//! a symbolic link to a root-only directory, in a loop, while root runs
//! import, export, rewrap, fsck and inspect; and polls an export's
//! destination for kmsfs-a's plaintext. Nothing outside the trees may
//! change, nothing may be read from outside them, nothing made may get
//! kmsfs-b's uid unless its source had it, and the destination shows
//! nothing before the export is complete. Checks are on bytes, names,
//! owners and modes, never on timings.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use common::{Ks, TestUser, TestUsers};

/// The content of the victim tree's files: must never leave it.
const VICTIM: &str = "VICTIM-PLAIN";
/// kmsfs-a's plaintext, in a 0700 directory of hers.
const ALICE: &str = "ALICE-PLAIN";
/// A root-only file name outside the trees: must never appear in one.
const ROOT_ONLY: &str = "root-only-secret";
/// Files in kmsfs-b's directory (and in the victim tree, by the same names).
const FILES: usize = 150;

/// kmsfs-b's loop: swaps DIR/NAME for a symbolic link to TARGET and back
/// until STOP exists; prints how many times the link was in place.
const SWAP: &str = r#"
import os, sys
d, name, target, stop = sys.argv[1:5]
p = os.path.join(d, name); real = os.path.join(d, '.' + name + '.real')
n = 0
while not os.path.exists(stop):
    try:
        os.rename(p, real)
    except OSError:
        continue
    try:
        os.symlink(target, p)
        n += 1
        os.unlink(p)
    except OSError:
        pass
    try:
        os.rename(real, p)
    except OSError:
        pass
if os.path.islink(p):
    os.unlink(p)
if os.path.lexists(real) and not os.path.lexists(p):
    os.rename(real, p)
print(n)
"#;

/// kmsfs-b's poll: reads every file under DEST until STOP exists; prints
/// how many reads found MARK, and how many reads succeeded.
const POLL: &str = r#"
import os, sys
dest, mark, stop = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
seen = reads = listed = 0
while not os.path.exists(stop):
    for root, dirs, files in os.walk(dest):
        listed += len(files)
        for f in files:
            try:
                with open(os.path.join(root, f), 'rb') as h:
                    reads += 1
                    if mark in h.read():
                        seen += 1
            except OSError:
                pass
print(seen, reads, listed)
"#;

struct Scene {
    tmp: tempfile::TempDir,
    ks: Ks,
    users: TestUsers,
    python: String,
    /// A root-only kmsfs tree (0700) under its own key, the same file names
    /// as kmsfs-b's directory.
    victim: PathBuf,
    victim_key: String,
    /// A root-only plain directory holding `ROOT_ONLY`.
    root_only: PathBuf,
    /// The plain source: `shared/` (root, group-writable), `shared/bob/`
    /// (kmsfs-b's files), `alice/private/` (kmsfs-a's, 0700).
    plain: PathBuf,
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every entry under `dir` (not following links): path -> (uid, gid, mode,
/// mtime, content of regular files and link targets).
type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, i64, Vec<u8>)>;

fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = p.symlink_metadata().unwrap();
            let content = if m.is_file() {
                fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            out.insert(rel, (m.uid(), m.gid(), m.mode(), m.mtime(), content));
        }
    }
    out
}

fn setup(test: &str) -> Option<Scene> {
    let users = common::test_users(test)?;
    let python = common::python3(test)?;
    let tmp = common::tempdir(test);
    chmod(tmp.path(), 0o755);
    let ks = Ks::new();
    let victim_key = ks.create_key();
    let t = tmp.path();
    // The victim: a plain tree imported as root under its own key into a
    // root-only directory; then the plain copy is removed.
    let vplain = t.join("vplain");
    fs::create_dir(&vplain).unwrap();
    for i in 0..FILES {
        fs::write(vplain.join(format!("f{i:03}")), format!("{VICTIM} {i}")).unwrap();
    }
    let victim = t.join("victim");
    fs::create_dir(&victim).unwrap();
    chmod(&victim, 0o700);
    let args = ["import", vplain.to_str().unwrap(), victim.to_str().unwrap()];
    let mut a = args.to_vec();
    a.extend(["--key-id", &victim_key]);
    ks.ok(&a);
    fs::remove_dir_all(&vplain).unwrap();
    let root_only = t.join("root-only");
    fs::create_dir(&root_only).unwrap();
    chmod(&root_only, 0o700);
    fs::write(root_only.join(ROOT_ONLY), b"root's").unwrap();
    chmod(&root_only.join(ROOT_ONLY), 0o644);
    // The plain source.
    let plain = t.join("plain");
    let (a_, b_) = (&users.a, &users.b);
    fs::create_dir_all(plain.join("shared/bob")).unwrap();
    fs::create_dir_all(plain.join("alice/private")).unwrap();
    chown(&plain.join("shared"), 0, users.gid);
    chmod(&plain.join("shared"), 0o2775);
    for i in 0..FILES {
        let f = plain.join(format!("shared/bob/f{i:03}"));
        fs::write(&f, format!("bob's {i}").repeat(100)).unwrap();
        chown(&f, b_.uid, b_.gid);
        chmod(&f, 0o666);
        let f = plain.join(format!("alice/private/a{i:03}"));
        fs::write(&f, format!("{ALICE} {i} ").repeat(500)).unwrap();
        chown(&f, a_.uid, a_.gid);
        chmod(&f, 0o644);
    }
    std::os::unix::fs::symlink("/etc/ld.so.preload", plain.join("shared/bob/preload")).unwrap();
    chown(&plain.join("shared/bob/preload"), b_.uid, b_.gid);
    chown(&plain.join("shared/bob"), b_.uid, b_.gid);
    chown(&plain.join("alice/private"), a_.uid, a_.gid);
    chmod(&plain.join("alice/private"), 0o700);
    Some(Scene {
        tmp,
        ks,
        users,
        python,
        victim,
        victim_key,
        root_only,
        plain,
    })
}

impl Scene {
    fn p(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A file whose existence stops kmsfs-b's loops.
    fn stop_file(&self, name: &str) -> PathBuf {
        self.p(&format!("stop-{name}"))
    }

    /// Starts a python script as `u`.
    fn spawn(&self, u: &TestUser, script: &str, args: &[&Path]) -> Child {
        u.command(self.tmp.path(), &self.python)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python as a test user")
    }

    /// Runs `f` while kmsfs-b swaps `dir/name` for a link to `target`;
    /// returns `f`'s result and how often the link was in place.
    fn while_swapping<T>(&self, dir: &Path, name: &str, target: &Path, f: impl FnOnce() -> T) -> T {
        let stop = self.stop_file(name);
        let _ = fs::remove_file(&stop);
        let child = self.spawn(&self.users.b, SWAP, &[dir, Path::new(name), target, &stop]);
        // Let the loop get going: wait until the link has been seen once.
        let link = dir.join(name);
        common::wait_until("kmsfs-b's swap loop to run", || {
            link.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
        });
        let r = f();
        fs::write(&stop, b"").unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "swap loop: {}", common::describe(&o));
        let n: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        assert!(n > 0, "the swap loop never swapped");
        assert!(
            dir.join(name).is_dir(),
            "the swap loop left {name} as it was"
        );
        r
    }

    fn kmsfs(&self, args: &[&str]) -> Output {
        self.ks.run(args)
    }

    /// Imports the plain source into `backing` as root.
    fn import(&self, src: &Path, backing: &Path) -> Output {
        self.kmsfs(&[
            "--output",
            "json",
            "import",
            src.to_str().unwrap(),
            backing.to_str().unwrap(),
        ])
    }

    fn assert_untouched(&self, victim: &Snapshot, root_only: &Snapshot, what: &str) {
        assert!(
            *victim == snapshot(&self.victim),
            "{what} changed the root-only tree outside"
        );
        assert!(
            *root_only == snapshot(&self.root_only),
            "{what} changed the root-only directory outside"
        );
    }

    /// No entry of `tree` is kmsfs-b's unless its source in `src` was,
    /// and no entry holds what was only outside.
    fn assert_owners_follow_sources(&self, tree: &Path, src: &Path) {
        for (rel, (uid, ..)) in snapshot(tree) {
            assert!(
                rel.file_name().is_none_or(|n| n != ROOT_ONLY),
                "{} came from the root-only directory",
                rel.display()
            );
            if uid != self.users.b.uid {
                continue;
            }
            // A temporary name of an interrupted file is its file's, and
            // `.NAME.real` is kmsfs-b's own NAME, put aside by his swap loop
            // (which leaves it there when the tool made NAME meanwhile).
            let source_rel: PathBuf = rel
                .components()
                .map(|c| {
                    let c = c.as_os_str().to_string_lossy();
                    if let Some(n) = c.strip_suffix(".kmsfs-import") {
                        n.trim_start_matches('.').to_string()
                    } else if let Some(n) =
                        c.strip_prefix('.').and_then(|n| n.strip_suffix(".real"))
                    {
                        n.to_string()
                    } else {
                        c.into_owned()
                    }
                })
                .collect();
            let s = src.join(source_rel);
            let src_uid = s.symlink_metadata().map(|m| m.uid());
            assert_eq!(
                src_uid.ok(),
                Some(self.users.b.uid),
                "{} in {} is kmsfs-b's, its source is not",
                rel.display(),
                tree.display()
            );
        }
    }
}

/// The backing tree of the plain source, imported as root with plain
/// names, with its `shared/` group-writable as in the source (kmsfs-b may
/// rename his directory in it, which he finds by its name).
fn backing_of(s: &Scene, name: &str) -> PathBuf {
    let backing = s.p(name);
    let o = s.kmsfs(&[
        "--output",
        "json",
        "import",
        s.plain.to_str().unwrap(),
        backing.to_str().unwrap(),
        "--plaintextnames",
    ]);
    assert!(o.status.success(), "import: {}", common::describe(&o));
    let shared = backing.join("shared");
    assert_eq!(shared.metadata().unwrap().mode() & 0o7777, 0o2775);
    assert_eq!(
        backing.join("shared/bob").metadata().unwrap().uid(),
        s.users.b.uid
    );
    backing
}

#[test]
fn import_follows_no_link_a_user_put_or_swaps_in() {
    let Some(s) = setup("tree_attack_import") else {
        return;
    };
    let (victim, root_only) = (snapshot(&s.victim), snapshot(&s.root_only));
    let b = &s.users.b;
    // A link put in place before the run: kmsfs-b's directory in BACKING
    // leads to the root-only tree.
    let backing = s.p("b1");
    fs::create_dir_all(backing.join("shared")).unwrap();
    chown(&backing.join("shared"), 0, s.users.gid);
    chmod(&backing.join("shared"), 0o2775);
    let link = backing.join("shared/bob");
    let o = b.sh(
        s.tmp.path(),
        &format!("ln -s {} {}", s.victim.display(), link.display()),
    );
    assert!(o.status.success(), "{}", common::describe(&o));
    let o = s.import(&s.plain, &backing);
    assert_ne!(
        o.status.code(),
        Some(0),
        "import through a link: {}",
        common::describe(&o)
    );
    s.assert_untouched(&victim, &root_only, "import into a linked directory");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    s.assert_owners_follow_sources(&backing, &s.plain);

    // The same while kmsfs-b swaps his directory in BACKING, and in the
    // source a directory of his (the source is user-writable too) for a
    // link to a root-only directory.
    let src = s.p("plain2");
    common::sh(
        s.tmp.path(),
        &format!("cp -a {} {}", s.plain.display(), src.display()),
    );
    let backing = s.p("b2");
    fs::create_dir_all(backing.join("shared")).unwrap();
    chown(&backing.join("shared"), 0, s.users.gid);
    chmod(&backing.join("shared"), 0o2775);
    let o = b.sh(&backing.join("shared"), "mkdir bob");
    assert!(o.status.success(), "{}", common::describe(&o));
    for _ in 0..2 {
        let o = s.while_swapping(&backing.join("shared"), "bob", &s.victim, || {
            s.while_swapping(&src.join("shared"), "bob", &s.root_only, || {
                s.import(&src, &backing)
            })
        });
        assert!(
            matches!(o.status.code(), Some(0) | Some(7)),
            "import while swapped: {}",
            common::describe(&o)
        );
        s.assert_untouched(&victim, &root_only, "import while kmsfs-b swapped");
        s.assert_owners_follow_sources(&backing, &src);
    }
    // What was imported is complete and kmsfs-a's stays hers.
    let m = backing.join("alice/private").symlink_metadata().unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (s.users.a.uid, 0o700));
}

#[test]
fn export_dest_stays_private_and_follows_no_link() {
    let Some(s) = setup("tree_attack_export") else {
        return;
    };
    let (victim, root_only) = (snapshot(&s.victim), snapshot(&s.root_only));
    let backing = backing_of(&s, "backing");
    let b = &s.users.b;
    // kmsfs-b's own directory, where he made the (empty) destination.
    let home = s.p("bhome");
    fs::create_dir(&home).unwrap();
    chown(&home, b.uid, b.gid);
    for round in 0..2 {
        let dest = home.join(format!("out{round}"));
        let o = b.sh(&home, &format!("mkdir -m 755 {}", dest.display()));
        assert!(o.status.success(), "{}", common::describe(&o));
        let stop = s.stop_file("poll");
        let _ = fs::remove_file(&stop);
        let poll = s.spawn(b, POLL, &[&dest, Path::new(ALICE), &stop]);
        let o = s.while_swapping(&backing.join("shared"), "bob", &s.victim, || {
            s.kmsfs(&[
                "--output",
                "json",
                "export",
                backing.to_str().unwrap(),
                dest.to_str().unwrap(),
            ])
        });
        fs::write(&stop, b"").unwrap();
        let p = poll.wait_with_output().unwrap();
        assert!(p.status.success(), "poll: {}", common::describe(&p));
        let polled = String::from_utf8_lossy(&p.stdout).to_string();
        let seen: u64 = polled.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(
            seen, 0,
            "kmsfs-b read kmsfs-a's plaintext mid-export ({polled})"
        );
        assert!(
            matches!(o.status.code(), Some(0) | Some(7)),
            "export while swapped: {}",
            common::describe(&o)
        );
        s.assert_untouched(&victim, &root_only, "export while kmsfs-b swapped");
        // Nothing from the victim tree, all of kmsfs-a's with her modes.
        for (rel, (uid, _, mode, _, content)) in snapshot(&dest) {
            assert!(
                !common::contains(&content, VICTIM.as_bytes()),
                "{} holds the victim's plaintext",
                rel.display()
            );
            if rel.starts_with("alice/private") && rel != Path::new("alice/private") {
                assert_eq!((uid, mode & 0o777), (s.users.a.uid, 0o644), "{rel:?}");
            }
        }
        let m = dest.join("alice/private").symlink_metadata().unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (s.users.a.uid, 0o700));
        let files = common::files_under(&dest.join("alice/private"));
        assert_eq!(files.len(), FILES);
        // The destination ends with the backing directory's owner and mode.
        let (d, bk) = (dest.metadata().unwrap(), backing.metadata().unwrap());
        assert_eq!((d.uid(), d.mode()), (bk.uid(), bk.mode()));
    }
}

#[test]
fn rewrap_fsck_and_inspect_follow_no_link() {
    let Some(s) = setup("tree_attack_rewrap") else {
        return;
    };
    let (victim, root_only) = (snapshot(&s.victim), snapshot(&s.root_only));
    let backing = backing_of(&s, "backing");
    let owners: Vec<_> = snapshot(&backing)
        .into_iter()
        .map(|(p, (u, g, m, ..))| (p, u, g, m))
        .collect();
    let new_key = s.ks.create_key();
    let shared = backing.join("shared");
    for round in 0..2 {
        let (rw, fsck, inspect) = s.while_swapping(&shared, "bob", &s.victim, || {
            let mut args = vec!["--output", "json", "rewrap", backing.to_str().unwrap()];
            // Once to another key, once to each file's own newest material.
            if round == 0 {
                args.extend(["--to-key-id", new_key.as_str()]);
            }
            let rw = s.kmsfs(&args);
            let fsck = s.kmsfs(&["--output", "json", "fsck", backing.to_str().unwrap()]);
            let inspect = s.kmsfs(&["--output", "json", "inspect", backing.to_str().unwrap()]);
            (rw, fsck, inspect)
        });
        assert!(
            matches!(rw.status.code(), Some(0) | Some(7)),
            "rewrap while swapped: {}",
            common::describe(&rw)
        );
        s.assert_untouched(&victim, &root_only, "rewrap while kmsfs-b swapped");
        for (what, o) in [("rewrap", &rw), ("fsck", &fsck), ("inspect", &inspect)] {
            assert!(
                !common::contains(&o.stdout, s.victim_key.as_bytes()),
                "{what} looked at the root-only tree's files: {}",
                common::describe(o)
            );
            assert!(!o.stdout.is_empty(), "{what}: {}", common::describe(o));
        }
    }
    // No owner or mode changed in the tree.
    let after: Vec<_> = snapshot(&backing)
        .into_iter()
        .map(|(p, (u, g, m, ..))| (p, u, g, m))
        .collect();
    assert_eq!(owners, after);
}
