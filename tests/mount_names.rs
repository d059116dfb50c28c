//! Encrypted names: a new backing directory shows no file name, directory
//! name or symlink target; names behave as on ext4 in both modes (255-byte
//! names, renames with RENAME_EXCHANGE and RENAME_NOREPLACE across
//! directories, every byte but '/' and NUL, names that differ by case or
//! normalization, seekdir/telldir/rewinddir); a name moved, copied or edited
//! in the backing directory is refused, never shown as another name; a
//! disabled CMK refuses the next lookup.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Mount, Names};

const KEY: &str = "alias/kmsfs/default";

/// Every path under `dir` (relative, as bytes), and the targets of its symlinks.
fn backing_names(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in entries_under(dir) {
        out.push(p.strip_prefix(dir).unwrap().as_os_str().as_bytes().to_vec());
        if let Ok(t) = fs::read_link(&p) {
            out.push(t.as_os_str().as_bytes().to_vec());
        }
    }
    out
}

/// Every entry under `dir` (directories, files, symlinks, ...).
fn entries_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
    out
}

/// Every directory under `dir`.
fn walkdirs(dir: &Path) -> Vec<PathBuf> {
    entries_under(dir)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().is_dir())
        .collect()
}

/// The entries of `dir` but kmsfs's own (names starting with ".kmsfs.").
fn user_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().as_bytes();
            !n.starts_with(b".kmsfs.") || (n.starts_with(b".kmsfs.ln.") && !n.ends_with(b".name"))
        })
        .collect();
    v.sort();
    v
}

/// Runs python3 code with `args`; its stdout (asserts success).
fn py(code: &str, args: &[&OsStr]) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "python: {}", common::describe(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_new_backing_directory_shows_no_name_and_another_user_reads_none() {
    let Some(m) = Mount::with_names("names-hidden", Names::Encrypted, &[]) else {
        return;
    };
    fs::create_dir_all(m.p("patients/alice")).unwrap();
    fs::write(m.p("patients/alice/payroll-2026.xlsx"), b"salaries").unwrap();
    std::os::unix::fs::symlink("patients/alice/payroll-2026.xlsx", m.p("latest-payroll")).unwrap();
    fs::write(m.p(&"P".repeat(255)), b"long").unwrap();
    assert_eq!(
        fs::read_link(m.p("latest-payroll")).unwrap(),
        Path::new("patients/alice/payroll-2026.xlsx")
    );
    assert_eq!(
        fs::symlink_metadata(m.p("latest-payroll")).unwrap().len(),
        "patients/alice/payroll-2026.xlsx".len() as u64
    );
    assert_eq!(fs::read(m.p("latest-payroll")).unwrap(), b"salaries");
    let marker = fs::read_to_string(m.b(".kmsfs.json")).unwrap();
    assert!(marker.contains("\"EncryptedNames\": true"), "{marker}");
    assert!(marker.contains("\"NameKey\""), "{marker}");
    let words: [&[u8]; 5] = [b"patients", b"alice", b"payroll", b"latest", b"PPPP"];
    for n in backing_names(&m.backing) {
        for w in words {
            assert!(
                !common::contains(&n, w),
                "backing name shows {:?}: {}",
                String::from_utf8_lossy(w),
                String::from_utf8_lossy(&n)
            );
        }
    }
    // Another user who may read the whole backing directory learns none of
    // the names or targets either.
    let Some(u) = common::test_users("names-hidden") else {
        return;
    };
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for d in std::iter::once(m.backing.clone()).chain(walkdirs(&m.backing)) {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let listing = common::ok_as(
        &u.b,
        &m.backing,
        "find . -printf '%p %l\\n'; cat .kmsfs.json",
    );
    assert!(listing.contains(".kmsfs.dirid"), "{listing}");
    for w in ["patients", "alice", "payroll", "latest", "PPPP"] {
        assert!(!listing.contains(w), "kmsfs-b read {w}: {listing}");
    }
}

#[test]
fn plaintextnames_keeps_names_in_clear_and_the_choice_stays() {
    let Some(mut m) = Mount::with_names("names-plain", Names::Plain, &[]) else {
        return;
    };
    fs::write(m.p("visible-name"), b"x").unwrap();
    assert!(m.b("visible-name").exists());
    let marker = fs::read_to_string(m.b(".kmsfs.json")).unwrap();
    assert!(marker.contains("\"EncryptedNames\": false"), "{marker}");
    assert!(!marker.contains("NameKey"), "{marker}");
    // Mounted again without the option: the recorded choice holds.
    m.names = Names::Encrypted;
    m.remount();
    fs::write(m.p("second"), b"y").unwrap();
    assert!(m.b("second").exists());
}

#[test]
fn long_names_are_created_renamed_linked_and_deleted() {
    for names in Names::BOTH {
        let Some(m) = Mount::with_names("names-long", names, &[]) else {
            return;
        };
        fs::create_dir(m.p("d1")).unwrap();
        fs::create_dir(m.p("d2")).unwrap();
        let long = |c: char| c.to_string().repeat(255);
        let (a, b, c) = (long('a'), long('b'), long('c'));
        fs::write(m.p(&format!("d1/{a}")), b"content").unwrap();
        fs::create_dir(m.p(&format!("d1/{c}"))).unwrap();
        fs::write(m.p(&format!("d1/{c}/{a}")), b"inner").unwrap();
        fs::rename(m.p(&format!("d1/{a}")), m.p(&format!("d2/{b}"))).unwrap();
        fs::hard_link(m.p(&format!("d2/{b}")), m.p(&format!("d1/{a}"))).unwrap();
        assert_eq!(fs::read(m.p(&format!("d1/{a}"))).unwrap(), b"content");
        assert_eq!(fs::read(m.p(&format!("d2/{b}"))).unwrap(), b"content");
        fs::rename(m.p(&format!("d1/{c}")), m.p(&format!("d2/{c}"))).unwrap();
        assert_eq!(fs::read(m.p(&format!("d2/{c}/{a}"))).unwrap(), b"inner");
        let mut listed: Vec<String> = fs::read_dir(m.p("d2"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        assert_eq!(listed, [b.as_str(), c.as_str()], "{}", names.word());
        // One byte longer than NAME_MAX: refused, as on ext4.
        let e = fs::write(m.p(&format!("d1/{}", long('x') + "x")), b"").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENAMETOOLONG),
            "{}",
            names.word()
        );
        fs::remove_file(m.p(&format!("d1/{a}"))).unwrap();
        fs::remove_file(m.p(&format!("d2/{b}"))).unwrap();
        fs::remove_dir_all(m.p(&format!("d2/{c}"))).unwrap();
        assert_eq!(fs::read_dir(m.p("d1")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(m.p("d2")).unwrap().count(), 0);
        // Nothing left behind: no side file of a name that is gone.
        for d in walkdirs(&m.backing) {
            let left: Vec<_> = fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n != ".kmsfs.dirid")
                .collect();
            assert!(left.is_empty(), "{} left {left:?}", names.word());
        }
        fs::remove_dir(m.p("d1")).unwrap();
        fs::remove_dir(m.p("d2")).unwrap();
    }
}

/// renameat2 through ctypes: python3 script taking FROM TO FLAGS; prints errno.
const RENAMEAT2: &str = "import ctypes, os, sys\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
r = libc.renameat2(-100, os.fsencode(sys.argv[1]), -100, os.fsencode(sys.argv[2]), int(sys.argv[3]))\n\
print(0 if r == 0 else ctypes.get_errno())";

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    py(
        RENAMEAT2,
        &[
            from.as_os_str(),
            to.as_os_str(),
            OsStr::new(&flags.to_string()),
        ],
    )
    .parse()
    .unwrap()
}

#[test]
fn rename_exchange_and_noreplace_across_directories() {
    for names in Names::BOTH {
        let Some(m) = Mount::with_names("names-rename", names, &[]) else {
            return;
        };
        fs::create_dir_all(m.p("x/sub")).unwrap();
        fs::create_dir(m.p("y")).unwrap();
        let long = "L".repeat(250);
        fs::write(m.p("x/sub/f"), b"in-sub").unwrap();
        fs::write(m.p(&format!("y/{long}")), b"long-y").unwrap();
        fs::write(m.p("y/g"), b"g").unwrap();
        // NOREPLACE onto an existing name: EEXIST, nothing moved.
        let no_replace = libc::RENAME_NOREPLACE;
        assert_eq!(
            renameat2(&m.p("y/g"), &m.p(&format!("y/{long}")), no_replace),
            libc::EEXIST
        );
        assert_eq!(renameat2(&m.p("y/g"), &m.p("x/g2"), no_replace), 0);
        assert_eq!(fs::read(m.p("x/g2")).unwrap(), b"g");
        // EXCHANGE of a directory and a long-named file across directories.
        let exchange = libc::RENAME_EXCHANGE;
        assert_eq!(
            renameat2(&m.p("x/sub"), &m.p(&format!("y/{long}")), exchange),
            0
        );
        assert_eq!(fs::read(m.p("x/sub")).unwrap(), b"long-y");
        assert_eq!(fs::read(m.p(&format!("y/{long}/f"))).unwrap(), b"in-sub");
        // And back, after a remount (nothing cached).
        let mut m = m;
        m.remount();
        assert_eq!(fs::read(m.p(&format!("y/{long}/f"))).unwrap(), b"in-sub");
        assert_eq!(
            renameat2(&m.p("x/sub"), &m.p(&format!("y/{long}")), exchange),
            0
        );
        assert_eq!(fs::read(m.p("x/sub/f")).unwrap(), b"in-sub");
        assert_eq!(fs::read(m.p(&format!("y/{long}"))).unwrap(), b"long-y");
        // A directory renamed over an empty one replaces it; over one that
        // is not empty, ENOTEMPTY, as on ext4.
        fs::create_dir_all(m.p("x/full/inside")).unwrap();
        fs::create_dir(m.p("y/empty")).unwrap();
        let e = fs::rename(m.p("y/empty"), m.p("x/full")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{}", names.word());
        fs::rename(m.p("x/full"), m.p("y/empty")).unwrap();
        assert!(m.p("y/empty/inside").is_dir());
        fs::remove_dir(m.p("y/empty/inside")).unwrap();
        fs::remove_dir(m.p("y/empty")).unwrap();
        // A plain rename over an existing file replaces it.
        fs::rename(m.p(&format!("y/{long}")), m.p("x/g2")).unwrap();
        assert_eq!(fs::read(m.p("x/g2")).unwrap(), b"long-y");
        assert_eq!(
            fs::read_dir(m.p("y")).unwrap().count(),
            0,
            "{}",
            names.word()
        );
    }
}

const EVERY_BYTE: &str = "import os, sys, unicodedata\n\
d = os.fsencode(sys.argv[1])\n\
names = set()\n\
b = bytes(x for x in range(1, 256) if x != 0x2f)\n\
for i in range(0, len(b), 40):\n    names.add(b[i:i+40])\n\
for x in b:\n    names.add(bytes([x]) * 3)\n\
names.discard(b'...')\n\
for s in ['Readme', 'README', 'readme', 'caf\\u00e9', unicodedata.normalize('NFD', 'caf\\u00e9'), '\\u00c5', '\\u212b']:\n    names.add(s.encode())\n\
for n in names:\n    open(os.path.join(d, n), 'wb').write(n)\n\
got = set(os.listdir(d))\n\
assert got == names, (len(got), len(names), sorted(got ^ names)[:5])\n\
for n in names:\n    assert open(os.path.join(d, n), 'rb').read() == n, n\n\
print(len(names))";

#[test]
fn every_byte_but_slash_and_nul_and_case_and_normalization_stay_distinct() {
    for names in Names::BOTH {
        let Some(mut m) = Mount::with_names("names-bytes", names, &[]) else {
            return;
        };
        fs::create_dir(m.p("d")).unwrap();
        let n: usize = py(EVERY_BYTE, &[m.p("d").as_os_str()]).parse().unwrap();
        assert!(n > 250, "{n}");
        m.remount();
        let listed = fs::read_dir(m.p("d")).unwrap().count();
        assert_eq!(listed, n, "{}", names.word());
    }
}

/// Perl's opendir, readdir, telldir, seekdir and rewinddir over DIR.
const SEEKDIR: &str = r#"
opendir(my $d, $ARGV[0]) or die "opendir: $!";
my @first; for (1..100) { push @first, scalar readdir($d) }
my $pos = telldir($d);
my @rest; while (defined(my $e = readdir($d))) { push @rest, $e }
seekdir($d, $pos);
my @again; while (defined(my $e = readdir($d))) { push @again, $e }
die "seekdir: @rest[0..2] vs @again[0..2]" unless "@rest" eq "@again";
rewinddir($d);
my @all; while (defined(my $e = readdir($d))) { push @all, $e }
die "rewinddir: " . scalar(@all) unless "@all" eq join(' ', @first, @rest);
print scalar(@all), "\n";
"#;

#[test]
fn readdir_with_seekdir_telldir_and_rewinddir() {
    for names in Names::BOTH {
        let Some(m) = Mount::with_names("names-seekdir", names, &[]) else {
            return;
        };
        fs::create_dir(m.p("d")).unwrap();
        for i in 0..300 {
            let n = if i % 7 == 0 {
                format!("{i}-{}", "n".repeat(200))
            } else {
                format!("entry-{i}")
            };
            fs::write(m.p(&format!("d/{n}")), b"").unwrap();
        }
        let o = Command::new("perl")
            .args(["-e", SEEKDIR])
            .arg(m.p("d"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            names.word(),
            common::describe(&o)
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "302");
    }
}

#[test]
fn a_name_moved_copied_or_edited_in_the_backing_directory_is_refused() {
    let Some(mut m) = Mount::with_names("names-moved", Names::Encrypted, &[]) else {
        return;
    };
    // Each entry is made alone: the one new backing path is its own.
    let all = |m: &Mount| -> std::collections::BTreeSet<PathBuf> {
        entries_under(&m.backing)
            .into_iter()
            .filter(|p| !p.file_name().unwrap().as_bytes().starts_with(b".kmsfs."))
            .collect()
    };
    let made = |m: &Mount, make: &dyn Fn(&Mount)| -> PathBuf {
        let before = all(m);
        make(m);
        let new: Vec<PathBuf> = all(m).difference(&before).cloned().collect();
        assert_eq!(new.len(), 1, "{new:?}");
        new[0].clone()
    };
    let ba = made(&m, &|m| fs::create_dir(m.p("a")).unwrap());
    let bb = made(&m, &|m| fs::create_dir(m.p("b")).unwrap());
    let secret = made(&m, &|m| fs::write(m.p("a/secret"), b"s").unwrap());
    let edited = made(&m, &|m| fs::write(m.p("a/edited"), b"e").unwrap());
    fs::write(m.p("a/kept"), b"k").unwrap();
    let link = made(&m, &|m| {
        std::os::unix::fs::symlink("kept", m.p("a/link")).unwrap()
    });
    let inner = made(&m, &|m| fs::create_dir(m.p("b/inner")).unwrap());
    m.unmount();
    // Copied into another directory; a directory moved into another; a
    // name edited; a symlink's target edited.
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&secret)
            .arg(&bb)
            .status()
            .unwrap()
            .success()
    );
    fs::rename(&inner, ba.join(inner.file_name().unwrap())).unwrap();
    let mut e = edited.file_name().unwrap().as_bytes().to_vec();
    e[5] = if e[5] == b'A' { b'B' } else { b'A' };
    fs::rename(&edited, ba.join(OsStr::from_bytes(&e))).unwrap();
    let t = fs::read_link(&link).unwrap();
    let mut t = t.as_os_str().as_bytes().to_vec();
    t[20] = if t[20] == b'A' { b'B' } else { b'A' };
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(&t), &link).unwrap();
    m.mount();
    let list = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(m.p(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("a"), ["kept", "link", "secret"]);
    assert_eq!(list("b"), Vec::<String>::new());
    assert_eq!(fs::read(m.p("a/secret")).unwrap(), b"s");
    assert!(fs::metadata(m.p("b/secret")).is_err());
    assert!(fs::metadata(m.p("a/edited")).is_err());
    assert!(fs::metadata(m.p("b/inner")).is_err());
    assert_eq!(
        fs::read_link(m.p("a/link")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    let log = m.log_text();
    let hidden = log
        .lines()
        .filter(|l| l.contains("entry hidden from the listing"))
        .count();
    assert!(hidden >= 3, "{log}");
    assert!(log.contains("symlink target fails authentication"), "{log}");
    assert!(
        log.contains(&bb.join(secret.file_name().unwrap()).display().to_string()),
        "{log}"
    );
    // The copied entry is still in b's backing directory: hidden, not removed.
    assert_eq!(user_entries(&bb).len(), 1);
    // fsck names each refused name and target.
    m.unmount();
    let o = m.run(&["fsck", m.backing.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(5), "{}", common::describe(&o));
    assert_eq!(out.matches("name refused").count(), 4, "{out}");
    assert!(out.contains("4 refused"), "{out}");
}

#[test]
fn a_disabled_key_refuses_the_next_lookup_and_listing() {
    let Some(m) = Mount::with_names("names-disabled", Names::Encrypted, &[]) else {
        return;
    };
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"x").unwrap();
    m.ok(&["kms", "disable-key", "--key-id", KEY]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut i = 0;
    let err = loop {
        // A name never looked up before: the kernel must ask the daemon.
        i += 1;
        match fs::symlink_metadata(m.p(&format!("never-{i}"))) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => break e,
            r => assert!(
                std::time::Instant::now() < deadline,
                "lookup after disable-key: {r:?}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    assert_eq!(
        fs::read_dir(m.p("d")).unwrap_err().raw_os_error(),
        Some(libc::EACCES)
    );
    m.ok(&["kms", "enable-key", "--key-id", KEY]);
    assert_eq!(fs::read(m.p("d/f")).unwrap(), b"x");
    assert_eq!(fs::read_dir(m.p("d")).unwrap().count(), 1);
}

#[test]
fn rewrap_moves_the_name_key_without_renaming_fsck_opens_every_name_export_and_import_carry_names()
{
    let Some(mut m) = Mount::with_names("names-tree", Names::Encrypted, &[]) else {
        return;
    };
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"content").unwrap();
    fs::write(m.p(&"q".repeat(230)), b"long").unwrap();
    std::os::unix::fs::symlink("d/f", m.p("link")).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let new = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    m.unmount();
    let mut before = backing_names(&m.backing);
    before.sort();
    let b = m.backing.to_str().unwrap().to_string();
    let out = m.ok(&["rewrap", &b, "--to-key-id", &new]);
    assert!(
        out.contains(&format!("the name key is now under {new}")),
        "{out}"
    );
    let mut after = backing_names(&m.backing);
    after.sort();
    assert_eq!(before, after, "rewrap renamed nothing");
    // The old key disabled: names and files open under the new one.
    m.ok(&["kms", "disable-key", "--key-id", KEY]);
    m.mount();
    assert_eq!(fs::read(m.p("link")).unwrap(), b"content");
    assert_eq!(fs::read(m.p(&"q".repeat(230))).unwrap(), b"long");
    m.unmount();
    // fsck opens every name and target.
    let out = m.ok(&["fsck", &b]);
    assert!(
        out.contains("names: 4 names and 1 symlink targets open, 0 refused"),
        "{out}"
    );
    // export writes plaintext names and targets; import into the tree
    // encrypts the new name: nothing in the backing shows it, fsck opens it.
    let dest = m.tmp.path().join("exported");
    let src = m.tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("plain-name"), b"x").unwrap();
    m.ok(&["export", b.as_str(), dest.to_str().unwrap()]);
    assert_eq!(fs::read(dest.join("d/f")).unwrap(), b"content");
    assert_eq!(fs::read(dest.join("q".repeat(230))).unwrap(), b"long");
    assert_eq!(fs::read_link(dest.join("link")).unwrap(), Path::new("d/f"));
    m.ok(&["import", src.to_str().unwrap(), b.as_str()]);
    let now = backing_names(&m.backing);
    assert!(
        !now.iter().any(|n| common::contains(n, b"plain-name")),
        "a plaintext name in the backing directory"
    );
    assert_eq!(now.len(), before.len() + 1);
    let out = m.ok(&["fsck", &b]);
    assert!(
        out.contains("names: 5 names and 1 symlink targets open, 0 refused"),
        "{out}"
    );
}

/// The audit trail names a file as the program did, not by its encrypted
/// backing name: each component is decrypted in its own directory, long
/// names included.
#[test]
fn the_trail_names_files_by_their_plaintext_path() {
    let Some(m) = Mount::with_names("names-trail", Names::Encrypted, &[]) else {
        return;
    };
    let long = "L".repeat(240);
    fs::create_dir_all(m.p(&format!("patients/{long}"))).unwrap();
    fs::write(
        m.p(&format!("patients/{long}/payroll-2026.xlsx")),
        b"salaries",
    )
    .unwrap();
    let trail_names = |want: &str| {
        let t0 = std::time::Instant::now();
        loop {
            let out = m.ok(&[
                "--output",
                "json",
                "audit",
                "show",
                "--event",
                "GenerateDataKey",
            ]);
            if out.contains(want) {
                assert!(
                    !out.contains(".kmsfs.ln."),
                    "an encrypted long name reached the trail: {out}"
                );
                break;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "no GenerateDataKey record names {want}: {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    trail_names(&format!("patients/{long}/payroll-2026.xlsx"));
    // The mount remembers directories' plaintext paths: a directory made
    // again under the same name (a new id), and a renamed one, are still
    // named right.
    fs::remove_dir_all(m.p(&format!("patients/{long}"))).unwrap();
    fs::create_dir(m.p(&format!("patients/{long}"))).unwrap();
    fs::write(m.p(&format!("patients/{long}/second.txt")), b"2").unwrap();
    trail_names(&format!("patients/{long}/second.txt"));
    fs::rename(m.p("patients"), m.p("wards")).unwrap();
    fs::write(m.p(&format!("wards/{long}/third.txt")), b"3").unwrap();
    trail_names(&format!("wards/{long}/third.txt"));
}

/// The binding file lies in the backing directory, which another user may
/// be able to write: B, who can write the backing root but not the
/// keystore, replaces `.kmsfs.json` with one that drops the name key (new
/// names would go in clear), drops the block format (new files in the old
/// format), carries another tree's name key, or is gone. The next mount
/// refuses each, naming the file, and mounts again once it is restored.
#[test]
fn a_binding_file_changed_by_another_user_is_refused_at_the_next_mount() {
    let test = "names-binding";
    let Some(mut m) = Mount::with_names(test, Names::Encrypted, &[]) else {
        return;
    };
    let Some(users) = common::test_users(test) else {
        return;
    };
    fs::write(m.p("f"), b"content").unwrap();
    // A second tree of the same keystore, for its name key.
    let other = m.tmp.path().join("other");
    let other_mnt = m.tmp.path().join("other-mnt");
    fs::create_dir(&other).unwrap();
    fs::create_dir(&other_mnt).unwrap();
    {
        let _guard = common::MountGuard(other_mnt.clone());
        let mut c = m.kmsfs();
        let o = c.arg("mount").arg(&other).arg(&other_mnt).output().unwrap();
        assert!(o.status.success(), "{}", common::describe(&o));
        fs::write(other_mnt.join("g"), b"other").unwrap();
        m.ok(&["unmount", other_mnt.to_str().unwrap()]);
    }
    m.unmount();
    let marker = m.b(".kmsfs.json");
    let original = fs::read(&marker).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    assert!(v["NameKey"].is_string() && v["BlockFormat"] == 2, "{v}");
    let other_v: serde_json::Value =
        serde_json::from_slice(&fs::read(other.join(".kmsfs.json")).unwrap()).unwrap();
    assert_ne!(v["NameKey"], other_v["NameKey"]);
    // B may write the backing root (not the binding file itself: it
    // replaces it, as anyone who can write the directory can).
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&m.backing, Some(0), Some(users.gid)).unwrap();
    fs::set_permissions(&m.backing, fs::Permissions::from_mode(0o2775)).unwrap();
    let forged = m.tmp.path().join("forged.json");
    let drop_fields = |fields: &[&str]| {
        let mut f = v.clone();
        for k in fields {
            f.as_object_mut().unwrap().remove(*k);
        }
        f
    };
    let mut swapped = v.clone();
    swapped["NameKey"] = other_v["NameKey"].clone();
    let cases: Vec<(&str, Option<serde_json::Value>, &str)> = vec![
        (
            "no name key",
            Some(drop_fields(&["NameKey", "EncryptedNames"])),
            "it says plain names",
        ),
        (
            "name key alone dropped",
            Some(drop_fields(&["NameKey"])),
            "name key (NameKey) was removed",
        ),
        (
            "no block format",
            Some(drop_fields(&["BlockFormat"])),
            "block format 1",
        ),
        (
            "another tree's name key",
            Some(swapped),
            "not the one the tree's names are under",
        ),
        ("no binding file", None, "is missing"),
    ];
    for (what, forged_json, needle) in cases {
        let script = match &forged_json {
            Some(j) => {
                fs::write(&forged, serde_json::to_vec_pretty(j).unwrap()).unwrap();
                fs::set_permissions(&forged, fs::Permissions::from_mode(0o644)).unwrap();
                format!(
                    "cp {} .kmsfs.json.new && mv -f .kmsfs.json.new .kmsfs.json",
                    forged.display()
                )
            }
            None => "rm -f .kmsfs.json".to_string(),
        };
        common::ok_as(&users.b, &m.backing, &script);
        let o = m
            .kmsfs()
            .arg("mount")
            .arg(&m.backing)
            .arg(&m.mnt)
            .output()
            .unwrap();
        let _guard = common::MountGuard(m.mnt.clone());
        assert!(
            !o.status.success(),
            "{what}: mounted: {}",
            common::describe(&o)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&marker.display().to_string()) && err.contains(needle),
            "{what}: {err}"
        );
        assert!(!common::is_mounted(&m.mnt), "{what}");
        // Restored (as its owner would from a backup): it mounts again.
        fs::write(&marker, &original).unwrap();
        drop(_guard);
    }
    m.mount();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"content");
    fs::write(m.p("new-name"), b"x").unwrap();
    m.unmount();
    assert!(
        user_entries(&m.backing)
            .iter()
            .all(|p| !p.as_os_str().as_bytes().ends_with(b"new-name")),
        "a new name went in clear"
    );
}

/// `kmsfs rewrap --to-key-id` while the tree is mounted: the running mount
/// keeps serving names once the old CMK is disabled, from the binding
/// file's new wrapping of the same name key; a binding file then
/// holding another tree's name key is not used.
#[test]
fn a_running_mount_follows_a_rewrap_of_the_name_key() {
    let Some(m) = Mount::with_names("names-rewrap-live", Names::Encrypted, &[]) else {
        return;
    };
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"content").unwrap();
    fs::write(m.p(&"q".repeat(230)), b"long").unwrap();
    std::os::unix::fs::symlink("d/f", m.p("link")).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let new = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let b = m.backing.to_str().unwrap().to_string();
    let before = fs::read(m.b(".kmsfs.json")).unwrap();
    let out = m.ok(&["rewrap", &b, "--to-key-id", &new]);
    assert!(
        out.contains(&format!("the name key is now under {new}")),
        "{out}"
    );
    let rewrapped = fs::read(m.b(".kmsfs.json")).unwrap();
    assert_ne!(before, rewrapped);
    m.ok(&["kms", "disable-key", "--key-id", KEY]);
    // New lookups (not in the kernel's cache: the names are new to it).
    let mut listed: Vec<_> = fs::read_dir(m.p("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    listed.sort();
    assert_eq!(listed, vec![std::ffi::OsString::from("f")]);
    assert_eq!(fs::read_link(m.p("link")).unwrap(), Path::new("d/f"));
    assert_eq!(fs::read(m.p(&"q".repeat(230))).unwrap(), b"long");
    fs::create_dir(m.p("made-after")).unwrap();
    // Another tree's name key (under a third, enabled key) swapped into the
    // binding file, then the new key disabled too: that key is not used.
    let v: serde_json::Value =
        serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let third = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let other = m.tmp.path().join("other");
    let other_mnt = m.tmp.path().join("other-mnt");
    fs::create_dir(&other).unwrap();
    fs::create_dir(&other_mnt).unwrap();
    {
        let _guard = common::MountGuard(other_mnt.clone());
        let o = m
            .kmsfs()
            .args(["mount", "--key-id", &third])
            .arg(&other)
            .arg(&other_mnt)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::describe(&o));
        m.ok(&["unmount", other_mnt.to_str().unwrap()]);
    }
    let mut marker: serde_json::Value = serde_json::from_slice(&rewrapped).unwrap();
    let other_v: serde_json::Value =
        serde_json::from_slice(&fs::read(other.join(".kmsfs.json")).unwrap()).unwrap();
    marker["NameKey"] = other_v["NameKey"].clone();
    fs::write(m.b(".kmsfs.json"), serde_json::to_vec(&marker).unwrap()).unwrap();
    m.ok(&["kms", "disable-key", "--key-id", &new]);
    assert!(fs::create_dir(m.p("after-swap")).is_err());
    assert!(
        m.log_text()
            .contains("holds a name key other than the one this mount serves"),
        "{}",
        m.log_text()
    );
    assert_eq!(user_entries(&m.backing).len(), 4, "nothing was made");
    fs::write(m.b(".kmsfs.json"), &rewrapped).unwrap();
}

/// Perl's telldir before every readdir of DIR, then seekdir to 300 of
/// those positions at random (and to the end), each followed by readdir,
/// which must give the very entry (and the next) of the first pass;
/// rewinddir and the whole listing again; every name once. Prints the count.
const BIG_SEEKDIR: &str = r#"
opendir(my $d, $ARGV[0]) or die "opendir: $!";
my (@pos, @names);
while (1) { my $p = telldir($d); my $e = readdir($d); last unless defined $e; push @pos, $p; push @names, $e }
my $end = telldir($d);
srand(17);
for (1..300) {
    my $k = int(rand(@names));
    seekdir($d, $pos[$k]);
    my $e = readdir($d);
    die "seekdir to entry $k gave $e, not $names[$k]" unless defined $e && $e eq $names[$k];
    my $f = readdir($d);
    die "after entry $k: $f" unless $k + 1 == @names ? !defined $f : defined $f && $f eq $names[$k + 1];
}
seekdir($d, $end);
die "seekdir to the end gave an entry" if defined readdir($d);
rewinddir($d);
my @all; while (defined(my $e = readdir($d))) { push @all, $e }
die "rewinddir: " . scalar(@all) . " entries, not " . scalar(@names) unless "@all" eq "@names";
my %seen; for (@names) { die "listed twice: $_" if $seen{$_}++ }
print scalar(@names), "\n";
"#;

/// A directory of 100,000 entries in each mode (with `KMSFS_LONG_TESTS=1`;
/// 10,000 otherwise: 100,000 take over two minutes a mode in a debug build
/// on two cores): made, listed (`ls | wc -l`), one looked up at random
/// after a remount (nothing cached), seekdir/telldir/rewinddir over the
/// whole listing (`BIG_SEEKDIR`), removed with `rm -rf`. Entries are
/// symlinks: each is a name and a target to encrypt, without a data key per
/// entry. The counts must agree between the modes; the times are printed,
/// not checked.
#[test]
fn a_directory_of_100000_entries_in_both_modes() {
    let n: u64 = if std::env::var_os("KMSFS_LONG_TESTS").is_some() {
        100_000
    } else {
        10_000
    };
    let mut counts = Vec::new();
    for names in Names::BOTH {
        let test = format!("names-100k-{}", names.word());
        let Some(mut m) = Mount::with_names(&test, names, &[]) else {
            return;
        };
        let t0 = std::time::Instant::now();
        fs::create_dir(m.p("big")).unwrap();
        for i in 0..n {
            std::os::unix::fs::symlink(format!("t{i}"), m.p(&format!("big/entry-{i:06}"))).unwrap();
        }
        let made = t0.elapsed();
        let listed = common::sh(&m.mnt, "ls big | wc -l");
        // The directory's backing entry (its name encrypted or not).
        let big = user_entries(&m.backing);
        assert_eq!(big.len(), 1, "{big:?}");
        let seen = fs::read_dir(&big[0]).unwrap().count();
        m.remount();
        let mut rng = common::Rng::new(17);
        let r = rng.below(n);
        assert_eq!(
            fs::read_link(m.p(&format!("big/entry-{r:06}"))).unwrap(),
            Path::new(&format!("t{r}"))
        );
        assert_eq!(
            fs::read_link(m.p(&format!("big/entry-{n:06}"))).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOENT))
        );
        let o = Command::new("perl")
            .args(["-e", BIG_SEEKDIR])
            .arg(m.p("big"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            names.word(),
            common::describe(&o)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            (n + 2).to_string(),
            "{}",
            names.word()
        );
        let t1 = std::time::Instant::now();
        common::sh(&m.mnt, "rm -rf big");
        eprintln!(
            "{}: made {n} in {made:?}, removed in {:?}",
            names.word(),
            t1.elapsed()
        );
        assert!(!m.p("big").exists());
        assert!(user_entries(&m.backing).is_empty());
        counts.push((listed.trim().to_string(), seen));
    }
    if counts.len() == 2 {
        assert_eq!(counts[0].0, n.to_string());
        assert_eq!(counts[1].0, n.to_string());
        // The encrypted directory holds its id file beside the entries.
        assert_eq!(counts[0].1, n as usize + 1);
        assert_eq!(counts[1].1, n as usize);
    }
}

/// Python3 script over DIR (empty): names with every byte but '/' and NUL,
/// names that differ only by case or Unicode normalization, 255-byte names
/// (and 256-byte ones, refused), each created, renamed (plainly and with
/// RENAME_NOREPLACE) into another directory under a transformed name,
/// linked back under its own name and half of them unlinked; prints every
/// call's errno (0: success) and then the final state (each name with its
/// content and link count), one JSON document, for comparison with ext4.
const NAME_OPS: &str = r#"
import ctypes, errno, json, os, sys, unicodedata
libc = ctypes.CDLL(None, use_errno=True)
d = os.fsencode(sys.argv[1])
a, b = os.path.join(d, b'a'), os.path.join(d, b'b')
os.mkdir(a); os.mkdir(b)
every = bytes(x for x in range(1, 256) if x != 0x2f)
names = set(every[i:i + 40] for i in range(0, len(every), 40))
names |= set(bytes([x]) * 3 for x in every)
for s in ['Readme', 'README', 'readme', 'caf\u00e9', unicodedata.normalize('NFD', 'caf\u00e9'),
          '\u00c5', '\u212b', 'A\u030a', 'stra\u00dfe', 'STRASSE', '\u0130', 'i\u0307']:
    names.add(s.encode())
names |= {b'\xff' * 255, 'é'.encode() * 127 + b'x', every + b'!', b'!' + every, b'L' * 255}
too_long = [b'\xff' * 256, b'M' * 256, 'é'.encode() * 128]
log = []
def call(what, f):
    try:
        f(); log.append([what, 0])
    except OSError as e:
        log.append([what, errno.errorcode.get(e.errno, e.errno)])
def renameat2(src, dst, flags):
    if libc.renameat2(-100, src, -100, dst, flags) != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
def create(p, data):
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, data); os.close(fd)
def swapped(n):
    return n.swapcase() if n.swapcase() != n else n[::-1]
order = sorted(names)
for n in order + too_long:
    call(['create', n.hex()], lambda: create(os.path.join(a, n), n))
for i, n in enumerate(order + too_long):
    flags = 1 if i % 2 else 0
    call(['rename', n.hex(), flags], lambda: renameat2(os.path.join(a, n), os.path.join(b, swapped(n)), flags))
for n in order + too_long:
    call(['link', n.hex()], lambda: os.link(os.path.join(b, swapped(n)), os.path.join(a, n)))
for i, n in enumerate(order + too_long):
    if i % 2:
        call(['unlink', n.hex()], lambda: os.unlink(os.path.join(b, swapped(n))))
# Lookups of names never made that differ only by case or normalization.
for s in ['readMe', unicodedata.normalize('NFKC', '\u212b') + 'x', 'CAF\u00c9']:
    call(['stat', s], lambda: os.stat(os.path.join(a, s.encode())))
state = {}
for sub in (a, b):
    for n in sorted(os.listdir(sub)):
        p = os.path.join(sub, n)
        st = os.lstat(p)
        state[os.path.basename(sub).decode() + '/' + n.hex()] = [open(p, 'rb').read().hex(), st.st_nlink]
print(json.dumps({'log': log, 'state': state}))
"#;

/// The final state alone (after a remount, nothing cached): each name of
/// DIR/a and DIR/b with its content and link count, as NAME_OPS prints it.
const NAME_STATE: &str = r#"
import json, os, sys
d = os.fsencode(sys.argv[1])
state = {}
for sub in (b'a', b'b'):
    for n in sorted(os.listdir(os.path.join(d, sub))):
        p = os.path.join(d, sub, n)
        state[sub.decode() + '/' + n.hex()] = [open(p, 'rb').read().hex(), os.lstat(p).st_nlink]
print(json.dumps(state))
"#;

common::in_both_names_modes!(names_of_every_byte_case_normalization_and_length_behave_as_on_ext4);

/// Create, rename (with and without RENAME_NOREPLACE), link and unlink of
/// names of every byte, of case and normalization variants and of 255 and
/// 256 bytes, on the mount and on the backing ext4 beside it: every call's
/// result and the final listing, contents and link counts the same; the
/// same again after a remount.
fn names_of_every_byte_case_normalization_and_length_behave_as_on_ext4(names: Names) {
    let Some(mut m) = Mount::with_names("names-ext4", names, &[]) else {
        return;
    };
    let plain = m.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let ext4: serde_json::Value =
        serde_json::from_str(&py(NAME_OPS, &[plain.as_os_str()])).unwrap();
    let mount: serde_json::Value =
        serde_json::from_str(&py(NAME_OPS, &[m.mnt.as_os_str()])).unwrap();
    // ext4 refuses only the names of 256 bytes (3 each of create, rename,
    // link, and the unlinks of those renamed) and the lookups of names
    // never made.
    let refused: Vec<&serde_json::Value> = ext4["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e[e.as_array().unwrap().len() - 1] != 0)
        .collect();
    assert!(
        refused.iter().all(|e| {
            let r = &e[e.as_array().unwrap().len() - 1];
            r == "ENAMETOOLONG" || r == "ENOENT"
        }),
        "{refused:?}"
    );
    assert!(
        ext4["state"].as_object().unwrap().len() > 300,
        "{}",
        ext4["state"]
    );
    let (el, ml) = (
        ext4["log"].as_array().unwrap(),
        mount["log"].as_array().unwrap(),
    );
    assert_eq!(el.len(), ml.len());
    for (e, got) in el.iter().zip(ml) {
        assert_eq!(got, e, "{}: the mount differs from ext4", names.word());
    }
    assert_eq!(mount["state"], ext4["state"], "{}", names.word());
    m.remount();
    let again: serde_json::Value =
        serde_json::from_str(&py(NAME_STATE, &[m.mnt.as_os_str()])).unwrap();
    assert_eq!(again, ext4["state"], "{}: after a remount", names.word());
}

/// What a crash between mkdir's temporary directory and its rename leaves
/// in the directory it was made in (docs/FORMAT.md, "Directory ids").
fn leftover_of_a_crashed_mkdir(dir: &Path) {
    let tmp = dir.join(".kmsfs.tmp.AAAAAAAAAAAAAAAA");
    fs::create_dir(&tmp).unwrap();
    fs::write(tmp.join(".kmsfs.dirid"), [7u8; 16]).unwrap();
}

/// A directory that lists empty but holds the temporary directory of a
/// crashed mkdir (with its id) is removed by rmdir and replaced by a
/// directory renamed over it, as an empty directory on ext4; one that also
/// holds something that is not kmsfs's own is ENOTEMPTY and keeps its id
/// (its entries still open after a remount, new ones can be made).
#[test]
fn a_crashed_mkdir_leaves_no_directory_that_cannot_be_removed() {
    let Some(mut m) = Mount::with_names("names-leftover", Names::Encrypted, &[]) else {
        return;
    };
    for d in ["p/d", "p/e", "p/f", "p/g"] {
        fs::create_dir_all(m.p(d)).unwrap();
    }
    fs::write(m.p("p/f/x"), b"moved").unwrap();
    fs::write(m.p("p/g/kept"), b"kept").unwrap();
    let (d, e, g) = (
        m.backing_of("p/d"),
        m.backing_of("p/e"),
        m.backing_of("p/g"),
    );
    for dir in [&d, &e, &g] {
        leftover_of_a_crashed_mkdir(dir);
    }
    // Not kmsfs's own: nothing a crash leaves.
    fs::write(g.join(".kmsfs.tmp.AAAAAAAAAAAAAAAA").join("stranger"), b"").unwrap();
    m.remount();
    assert_eq!(fs::read_dir(m.p("p/d")).unwrap().count(), 0);
    fs::remove_dir(m.p("p/d")).unwrap();
    assert!(!d.exists());
    fs::rename(m.p("p/f"), m.p("p/e")).unwrap();
    assert_eq!(fs::read(m.p("p/e/x")).unwrap(), b"moved");
    let err = fs::remove_dir(m.p("p/g")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    m.remount();
    assert_eq!(fs::read(m.p("p/g/kept")).unwrap(), b"kept");
    fs::write(m.p("p/g/new"), b"new").unwrap();
    assert_eq!(fs::read(m.p("p/g/new")).unwrap(), b"new");
    assert!(g.join(".kmsfs.dirid").exists());
}
