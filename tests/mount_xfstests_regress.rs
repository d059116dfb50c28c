//! Behaviours that xfstests' generic group found wrong on the mount, each
//! reproduced directly and compared with the backing ext4 (a plain directory
//! beside the mount) where that says what is right:
//! - generic/003: the times shown are the times stored, across a remount;
//! - generic/120: under noatime, reads and execs leave atime alone;
//! - generic/035: fstat of an open directory (or file) that a rename replaced;
//! - rewinddir on an open directory lists the names made since opendir;
//! - pjdfstest open::etxtbsy: a refused open(O_TRUNC) leaves a running
//!   program alone;
//! - generic/683, 684 (and write, truncate, O_TRUNC): a change by a user
//!   without CAP_FSETID drops setuid/setgid as ext4 does.
//!
//! Those that make, rename, link or list names run in both names modes.

mod common;

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mount, Names, sh};

/// (atime, mtime, ctime) of `p` in nanoseconds.
fn times(p: &Path) -> (i128, i128, i128) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    (
        ns(m.atime(), m.atime_nsec()),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec()),
    )
}

/// (mtime, ctime) in nanoseconds of the backing file `p` as the mount keeps
/// them: its own mtime, and the ctime the kernel handed back under the
/// writeback cache (the record `user.kmsfs.times` beside the file, while the
/// record's mtime is still the file's), else its own ctime.
fn stored(p: &Path) -> (i128, i128) {
    let script = r#"
import os, struct, sys
p = sys.argv[1]
st = os.lstat(p)
m, c = st.st_mtime_ns, st.st_ctime_ns
try:
    ms, mn, cs, cn = struct.unpack('<qIqI', os.getxattr(p, 'user.kmsfs.times', follow_symlinks=False))
    if ms * 10**9 + mn == m:
        c = cs * 10**9 + cn
except OSError:
    pass
print(m, c)
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let v: Vec<i128> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0], v[1])
}

common::in_both_names_modes!(
    times_shown_are_the_times_stored_and_survive_a_remount,
    fstat_of_a_handle_whose_name_a_rename_replaced,
    rewinddir_lists_names_made_after_opendir,
    inode_numbers_survive_the_kernel_forgetting_the_inode,
);

fn times_shown_are_the_times_stored_and_survive_a_remount(names: Names) {
    let Some(mut m) = Mount::with_names("times", names, &[]) else {
        return;
    };
    // generic/003 wrote with `echo`; many files, since a divergence showed
    // only when the write and the creation fell in different clock ticks.
    sh(
        &m.mnt,
        "for i in $(seq 1 20); do echo aaa > f$i; done; mkdir d; echo bbb > d/g; chmod 600 f1",
    );
    let names: Vec<String> = (1..=20)
        .map(|i| format!("f{i}"))
        .chain(["d".into(), "d/g".into()])
        .collect();
    let shown: Vec<_> = names.iter().map(|n| times(&m.p(n))).collect();
    for (n, t) in names.iter().zip(&shown) {
        assert_eq!(
            (t.1, t.2),
            stored(&m.backing_of(n)),
            "{n}: mtime and ctime shown differ from the ones stored"
        );
    }
    m.remount();
    for (n, t) in names.iter().zip(&shown) {
        assert_eq!(times(&m.p(n)), *t, "{n}: times changed across the remount");
    }
}

#[test]
fn chmod_and_reads_change_the_times_as_on_ext4() {
    let Some(m) = Mount::new("ctime") else {
        return;
    };
    let plain = m.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    for dir in [plain.as_path(), m.mnt.as_path()] {
        let f = dir.join("f");
        fs::write(&f, b"aaa").unwrap();
        let written = times(&f);
        // Beyond the clock tick, so a changed time is a different time.
        std::thread::sleep(Duration::from_millis(20));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        let chmodded = times(&f);
        assert_eq!(
            chmodded.1,
            written.1,
            "{}: chmod changed mtime",
            f.display()
        );
        assert!(chmodded.2 > written.2, "{}: chmod kept ctime", f.display());
        std::thread::sleep(Duration::from_millis(20));
        // relatime: the first read after a change updates atime, the
        // second does not; reads never touch mtime or ctime.
        assert_eq!(fs::read(&f).unwrap(), b"aaa");
        let read = times(&f);
        assert!(
            read.0 > chmodded.0,
            "{}: first read kept atime",
            f.display()
        );
        assert_eq!(
            (read.1, read.2),
            (chmodded.1, chmodded.2),
            "{}",
            f.display()
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(fs::read(&f).unwrap(), b"aaa");
        assert_eq!(
            times(&f),
            read,
            "{}: second read changed a time",
            f.display()
        );
    }
    // What the mount showed is what it stored.
    let shown = times(&m.p("f"));
    assert_eq!(shown.0, times(&m.b("f")).0, "atime");
    assert_eq!((shown.1, shown.2), stored(&m.b("f")));
}

#[test]
fn noatime_mount_reads_and_execs_leave_atime_alone() {
    // generic/120: with noatime, neither executing nor reading a file
    // changes its atime. The kernel leaves atime to the daemon, whose reads
    // of the backing file would set it (relatime: the first read after a
    // write does).
    let Some(m) = Mount::with_args("noatime", &["-o", "noatime"]) else {
        return;
    };
    fs::write(m.p("script"), b"#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(m.p("script"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(m.p("data"), b"some data").unwrap();
    let before = [times(&m.p("script")), times(&m.p("data"))];
    std::thread::sleep(Duration::from_millis(20));
    let o = Command::new(m.p("script")).output().unwrap();
    assert!(o.status.success(), "executing the script failed");
    assert_eq!(fs::read(m.p("data")).unwrap(), b"some data");
    let after = [times(&m.p("script")), times(&m.p("data"))];
    assert_eq!(after, before, "exec or read changed a time under noatime");
    assert_eq!(
        times(&m.b("data")).0,
        before[1].0,
        "the backing file's atime moved"
    );
    assert_eq!((before[1].1, before[1].2), stored(&m.b("data")));
}

/// (nlink, mode, size) by fstat of `f`; panics when fstat fails.
fn fstat(f: &File, what: &str) -> (u64, u32, u64) {
    let m = f
        .metadata()
        .unwrap_or_else(|e| panic!("fstat of {what} after the rename: {e}"));
    (m.nlink(), m.mode(), m.len())
}

/// In `dir`: opens directory b and file f, renames a over b and g over f,
/// and returns what fstat then says of both handles.
fn replaced_handles(dir: &Path) -> [(u64, u32, u64); 2] {
    fs::create_dir(dir.join("a")).unwrap();
    fs::create_dir(dir.join("b")).unwrap();
    fs::set_permissions(dir.join("b"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(dir.join("f"), b"old").unwrap();
    fs::write(dir.join("g"), b"newer").unwrap();
    let b = File::open(dir.join("b")).unwrap();
    let f = File::open(dir.join("f")).unwrap();
    fs::rename(dir.join("a"), dir.join("b")).unwrap();
    fs::rename(dir.join("g"), dir.join("f")).unwrap();
    let mut got = [fstat(&b, "directory b"), fstat(&f, "file f")];
    assert_eq!(got[0].1 & libc::S_IFMT, libc::S_IFDIR);
    // A directory's size is the backing file system's business.
    got[0].2 = 0;
    got
}

fn fstat_of_a_handle_whose_name_a_rename_replaced(names: Names) {
    let Some(m) = Mount::with_names("replaced", names, &[]) else {
        return;
    };
    let plain = m.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let ext4 = replaced_handles(&plain);
    let mount = replaced_handles(&m.mnt);
    assert_eq!(mount, ext4, "fstat on the mount differs from ext4's");
    // ext4 says the replaced directory and file have no links left.
    assert_eq!((ext4[0].0, ext4[1].0), (0, 0));
    assert_eq!(ext4[1].2, 3);
}

/// An open directory stream (libc's DIR).
struct Dir(*mut libc::DIR);

impl Dir {
    fn open(p: &Path) -> Self {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        let d = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!d.is_null(), "opendir {}", p.display());
        Dir(d)
    }

    /// Every name from here to the end of the stream.
    fn names(&mut self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        loop {
            // SAFETY: self.0 is an open stream; the entry is read before the next call.
            let e = unsafe { libc::readdir(self.0) };
            if e.is_null() {
                return out;
            }
            // SAFETY: d_name is NUL-terminated within the entry.
            let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) };
            out.insert(name.to_string_lossy().into_owned());
        }
    }

    fn rewind(&mut self) {
        // SAFETY: self.0 is an open stream.
        unsafe { libc::rewinddir(self.0) };
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: self.0 is an open stream, closed once.
        unsafe { libc::closedir(self.0) };
    }
}

fn rewinddir_lists_names_made_after_opendir(names: Names) {
    let Some(m) = Mount::with_names("rewinddir", names, &[]) else {
        return;
    };
    let d = m.p("d");
    fs::create_dir(&d).unwrap();
    for i in 0..10 {
        fs::write(d.join(format!("old{i}")), b"").unwrap();
    }
    let mut dir = Dir::open(&d);
    assert_eq!(dir.names().len(), 12);
    for i in 0..500 {
        fs::write(d.join(format!("new{i}")), b"").unwrap();
    }
    fs::remove_file(d.join("old0")).unwrap();
    dir.rewind();
    let again = dir.names();
    let want: BTreeSet<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .chain([".".into(), "..".into()])
        .collect();
    assert_eq!(want.len(), 511);
    let missing = want.difference(&again).count();
    let gone = again.difference(&want).count();
    assert_eq!(
        (missing, gone),
        (0, 0),
        "after rewinddir: names missing, names listed that are gone"
    );
}

#[test]
fn open_with_o_trunc_of_a_running_program_is_etxtbsy_and_cuts_nothing() {
    // Found through pjdfstest's open::etxtbsy, which failed now and then:
    // the daemon truncated in OPEN (ATOMIC_O_TRUNC), before the kernel
    // refused the open with ETXTBSY, and the running program crashed.
    let Some(m) = Mount::new("etxtbsy") else {
        return;
    };
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("sleep is installed");
    let program = fs::read(sleep).unwrap();
    fs::write(m.p("sleep"), &program).unwrap();
    fs::set_permissions(m.p("sleep"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut running = Command::new(m.p("sleep")).arg("10").spawn().unwrap();
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(m.p("sleep"));
    let exited = running.try_wait().unwrap();
    running.kill().unwrap();
    running.wait().unwrap();
    assert_eq!(
        opened.err().and_then(|e| e.raw_os_error()),
        Some(libc::ETXTBSY),
        "open(O_TRUNC) of a running program (which exited early: {exited:?})"
    );
    assert!(
        fs::read(m.p("sleep")).unwrap() == program,
        "the refused open(O_TRUNC) changed the program"
    );
}

/// True when `prog` runs here; under CI a missing tool fails the test.
fn need(test: &str, prog: &str) -> bool {
    common::require_tool(test, prog).is_some()
}

/// Content changes, each as a shell command on file "$F".
const CHANGES: [(&str, &str); 7] = [
    (
        "write",
        "dd if=/dev/zero of=\"$F\" bs=1 count=1 conv=notrunc status=none",
    ),
    ("append", "echo x >> \"$F\""),
    ("fallocate", "fallocate -o 0 -l 65536 \"$F\""),
    ("punch", "fallocate -p -o 0 -l 4096 \"$F\""),
    ("truncate down", "truncate -s 100 \"$F\""),
    ("truncate up", "truncate -s 100000 \"$F\""),
    ("open O_TRUNC", ": > \"$F\""),
];

/// Modes to start from: setuid, setgid with and without group execute
/// (nobody is not in the file's group), both.
const MODES: [u32; 5] = [0o4777, 0o2777, 0o2767, 0o6777, 0o6767];

/// For each change and mode: makes `dir`/NAME as root with that mode, runs
/// the change as `user` (None: root), and returns (change, mode before, mode
/// after) in octal, as a mode-only stat shows it (xfstests' `stat -c %a`;
/// the kernel answers that from its cache unless told the mode changed).
fn modes_after_changes(dir: &Path, user: Option<u32>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (change, cmd) in CHANGES {
        for mode in MODES {
            let f: PathBuf = dir.join(format!("{}-{mode:o}", change.replace(' ', "_")));
            fs::write(&f, vec![7u8; 8192]).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            let mut c = match user {
                Some(id) => {
                    let mut c = Command::new("setpriv");
                    c.arg(format!("--reuid={id}"))
                        .arg(format!("--regid={id}"))
                        .args(["--clear-groups", "sh", "-c", cmd]);
                    c
                }
                None => {
                    let mut c = Command::new("sh");
                    c.args(["-c", cmd]);
                    c
                }
            };
            let o = c.env("F", &f).output().unwrap();
            assert!(
                o.status.success(),
                "{change} on {}: {}",
                f.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            let shown = sh(dir, &format!("stat -c %a '{}'", f.display()));
            out.push((
                change.to_string(),
                format!("{mode:o}"),
                shown.trim().to_string(),
            ));
        }
    }
    out
}

#[test]
fn changes_by_an_unprivileged_user_drop_setuid_and_setgid_as_on_ext4() {
    if !need("killpriv", "setpriv") || !need("killpriv", "fallocate") {
        return;
    }
    let Some(mut m) = Mount::new("killpriv") else {
        return;
    };
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    m.set_args(&["-o", "allow_other"]);
    m.remount();
    let plain = m.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    const NOBODY: u32 = 65534;
    let ext4 = modes_after_changes(&plain, Some(NOBODY));
    // ext4 here drops setuid, and setgid unless it is a mere locking mark
    // of a group the user is in (it is in none).
    for (change, mode, after) in &ext4 {
        assert_eq!(after, &mode[1..], "ext4, {change} of {mode}");
    }
    let mount = modes_after_changes(&m.mnt, Some(NOBODY));
    assert_eq!(mount, ext4, "the mount keeps bits ext4 drops");
    // What the mount showed is what it stored.
    for (change, mode, after) in &mount {
        let name = format!("{}-{mode}", change.replace(' ', "_"));
        let stored = fs::metadata(m.b(&name)).unwrap().mode() & 0o7777;
        assert_eq!(&format!("{stored:o}"), after, "{name}: stored mode");
    }
    // Root (CAP_FSETID) keeps them, on both.
    let root_ext4 = modes_after_changes(&plain, None);
    assert!(root_ext4.iter().all(|(_, mode, after)| after == mode));
    assert_eq!(modes_after_changes(&m.mnt, None), root_ext4);
}

/// tar -x compares a directory's st_ino before and after extracting into it
/// ("Directory renamed before its status could be extracted"), git keeps
/// st_ino in its index: a file's inode number must not change when the
/// kernel forgets its inode (memory pressure; here drop_caches) and looks it
/// up again.
fn inode_numbers_survive_the_kernel_forgetting_the_inode(names: Names) {
    if !common::require_root("inode numbers", "drop_caches is root's") {
        return;
    }
    let Some(m) = Mount::with_names("stable-ino", names, &[]) else {
        return;
    };
    sh(&m.mnt, "mkdir -p d/e && echo x > d/e/f && ln d/e/f d/g");
    let names = ["d", "d/e", "d/e/f", "d/g"];
    let before: Vec<u64> = names
        .iter()
        .map(|n| fs::metadata(m.p(n)).unwrap().ino())
        .collect();
    assert_eq!(before[2], before[3], "hard links share an inode number");
    for _ in 0..3 {
        fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        let after: Vec<u64> = names
            .iter()
            .map(|n| fs::metadata(m.p(n)).unwrap().ino())
            .collect();
        assert_eq!(after, before);
    }
}
