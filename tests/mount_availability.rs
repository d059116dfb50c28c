//! What one local user can do to the others' use of a shared root mount
//! (`-o allow_other`) (issue 23): lock backing files, swap a FIFO in for a
//! file, hold as many handles as he can, list a large directory through
//! hundreds of handles. In each test user B attacks while user A works on
//! her own files; A's work must finish (each wait is bounded, and a test
//! that would hang fails instead), and B gets an error, never the mount.
//! Also the low items: setuid after copy_file_range, trusted.* names.
//! The checks are on outcomes and errnos, never on timings.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Mount, TestUser, TestUsers};

/// How long A's work may take at most before the test calls the mount hung
/// (her work takes well under a second on a mount that serves her).
const HUNG: Duration = Duration::from_secs(120);

/// A mount with `-o allow_other` plus `opts`, whose test directory the
/// users can reach, with a shared directory `shared` (mode 1777) in it.
fn setup(test: &str, opts: &str) -> Option<(Mount, TestUsers, String)> {
    let python = common::python3(test)?;
    let m = Mount::with_args(test, &["-o", &format!("allow_other{opts}")])?;
    let users = common::test_users(test)?;
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.p("shared")).unwrap();
    fs::set_permissions(m.p("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    Some((m, users, python))
}

/// `script` as `u` in `dir`, started (stdout piped).
fn spawn_as(u: &TestUser, dir: &Path, script: &str) -> Child {
    u.command(dir, "sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` at most `HUNG`: its output, or None (then it is killed).
fn bounded(mut child: Child) -> Option<Output> {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let read = |r: Option<Box<dyn std::io::Read>>| {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        };
        let out = read(stdout.map(|s| Box::new(s) as Box<dyn std::io::Read>));
        let err = read(stderr.map(|s| Box::new(s) as Box<dyn std::io::Read>));
        let status = child.wait();
        let _ = tx.send(status.map(|status| Output {
            status,
            stdout: out,
            stderr: err,
        }));
    });
    match rx.recv_timeout(HUNG) {
        Ok(o) => Some(o.unwrap()),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            None
        }
    }
}

/// A's work on her own files in `dir` of the mount: writes, reads back and
/// lists, 40 files; must finish within `HUNG`.
fn alice_works(m: &Mount, a: &TestUser, dir: &str) {
    let script = "for i in $(seq 40); do printf \"alice $i\" > f$i && \
                  [ \"$(cat f$i)\" = \"alice $i\" ] || exit 1; done; ls | wc -l";
    let child = spawn_as(a, &m.p(dir), script);
    let o = bounded(child).unwrap_or_else(|| {
        panic!(
            "{}'s reads and writes did not finish in {HUNG:?}: the mount hangs\n{}",
            a.name,
            m.log_text()
        )
    });
    assert!(
        o.status.success(),
        "A's work failed: {}",
        common::describe(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "40");
}

/// Reads one line from `child`'s stdout, within `HUNG`.
fn line_of(child: &mut Child) -> Option<String> {
    let out = child.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut l = String::new();
        let _ = r.read_line(&mut l);
        let _ = tx.send(l);
    });
    rx.recv_timeout(HUNG).ok()
}

/// Issue 23, item 1: B, who may read a backing file (his own, 0644), holds
/// an exclusive flock on it and opens the file through the mount from 16
/// processes at once. Before, each open waited in a serving thread for the
/// daemon's shared flock, and once all four waited, every user's requests
/// hung. Now the daemon's lock is an OFD read lock, which a flock does not
/// touch: B's opens succeed and A's work goes on. B then takes a write lock
/// (he owns the file, so he may open it for writing): his opens of that
/// file fail with EAGAIN (no thread waits for long), and A's work goes on.
#[test]
fn a_lock_on_a_backing_file_does_not_hang_the_mount() {
    let Some((m, users, python)) = setup("lockhang", "") else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    common::ok_as(a, &m.p("shared"), "mkdir alice");
    common::ok_as(b, &m.p("shared"), "printf bob > bobs && chmod 644 bobs");
    let backing = m.b("shared/bobs");
    let mnt = m.p("shared/bobs");
    let opens = format!(
        "for i in $(seq 16); do cat {} > /dev/null & done; wait; echo opened; read x",
        mnt.display()
    );
    let mut holder = b
        .command(&m.p("shared"), "flock")
        .arg("-x")
        .arg(&backing)
        .args(["sh", "-c", &opens])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    alice_works(&m, a, "shared/alice");
    let l = line_of(&mut holder);
    assert_eq!(
        l.as_deref().map(str::trim),
        Some("opened"),
        "B's opens under his flock did not finish"
    );
    drop(holder.stdin.take());
    holder.wait().unwrap();

    // A write lock: held by B's python, which then opens through the mount.
    let script = format!(
        r#"
import errno, fcntl, os, struct, sys
fd = os.open({backing:?}, os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
got = []
for i in range(16):
    try:
        os.close(os.open({mnt:?}, os.O_RDONLY))
        got.append("ok")
    except OSError as e:
        got.append(errno.errorcode[e.errno])
print(" ".join(sorted(set(got))), flush=True)
sys.stdin.readline()
"#
    );
    let mut locker = b
        .command(&m.p("shared"), &python)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let l = line_of(&mut locker);
    assert_eq!(
        l.as_deref().map(str::trim),
        Some("EAGAIN"),
        "B's opens of a file he locked for writing"
    );
    alice_works(&m, a, "shared/alice");
    drop(locker.stdin.take());
    locker.wait().unwrap();
    // The lock gone, the file opens again.
    assert_eq!(common::ok_as(a, &m.p("shared"), "cat bobs"), "bob");
}

/// Issue 23, item 1, FIFOs: on a `-o ro` mount (where the daemon opens
/// backing files read-only, and opening a FIFO read-only waits for a
/// writer), B stats eight files of a directory he owns, swaps a FIFO in for
/// each in the backing directory and opens them all through the mount at
/// once. The daemon checks what it opens on an O_PATH descriptor first and
/// never opens the FIFO: A keeps reading her files. (B's own cats wait on
/// the FIFOs in the kernel, as on any file system, until `timeout` ends them.)
#[test]
fn a_fifo_swapped_in_does_not_block_the_daemon() {
    let Some((mut m, users, _)) = setup("fifohang", "") else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    common::ok_as(
        a,
        &m.p("shared"),
        "mkdir alice && for i in $(seq 40); do printf \"alice $i\" > alice/f$i; done",
    );
    common::ok_as(
        b,
        &m.p("shared"),
        "mkdir bobdir && for i in $(seq 8); do echo bob > bobdir/f$i; done",
    );
    m.unmount();
    m.set_args(&["-o", "allow_other,ro"]);
    m.mount();
    let swap = format!(
        "cd {mnt} && stat f1 f2 f3 f4 f5 f6 f7 f8 > /dev/null && cd {back} && \
         for i in $(seq 8); do mv f$i f$i.aside && mkfifo f$i; done && cd {mnt} && \
         for i in $(seq 8); do timeout 10 cat f$i > /dev/null & done; wait; echo tried",
        mnt = m.p("shared/bobdir").display(),
        back = m.b("shared/bobdir").display()
    );
    let attacker = spawn_as(b, &m.p("shared"), &swap);
    let reads = "for r in 1 2 3; do for i in $(seq 40); do \
                 [ \"$(cat f$i)\" = \"alice $i\" ] || exit 1; done; done; echo read";
    let o = bounded(spawn_as(a, &m.p("shared/alice"), reads)).unwrap_or_else(|| {
        panic!(
            "A's reads did not finish in {HUNG:?}: the mount hangs\n{}",
            m.log_text()
        )
    });
    assert!(o.status.success(), "A's reads: {}", common::describe(&o));
    let o = bounded(attacker).expect("B's cats end with their timeout");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "tried");
    // No serving thread is left waiting on a FIFO: the mount still serves.
    assert_eq!(common::ok_as(a, &m.p("shared/alice"), "cat f1"), "alice 1");
}

/// Python run as a user: opens `path` (a file or a directory) again and
/// again, keeping every descriptor, until an open fails; prints how many
/// succeeded and the errno's name, then waits for a line on stdin.
fn hoarder(paths: &[&Path]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    format!(
        r#"
import errno, os, sys
paths = [{}]
fds = []
err = "none"
while len(fds) < 100000:
    try:
        fds.append(os.open(paths[len(fds) % len(paths)], os.O_RDONLY))
    except OSError as e:
        err = errno.errorcode[e.errno]
        break
print(len(fds), err, flush=True)
sys.stdin.readline()
"#,
        list.join(", ")
    )
}

/// Issue 23, item 2: B opens files and directories through the mount and
/// keeps them until the daemon refuses: he gets EMFILE at his budget
/// (`-o max_user_handles=50` here), while A opens 45 files at once and
/// lists directories; the handles B closes are his again.
#[test]
fn one_user_past_his_handle_budget_gets_emfile_and_the_others_do_not() {
    let Some((m, users, python)) = setup("budget", ",max_user_handles=50") else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    common::ok_as(
        a,
        &m.p("shared"),
        "mkdir alice && for i in $(seq 60); do printf \"alice $i\" > alice/f$i; done",
    );
    common::ok_as(b, &m.p("shared"), "mkdir bobdir && echo bob > bobdir/f");
    let (f, d) = (m.p("shared/bobdir/f"), m.p("shared/bobdir"));
    let mut hog = b
        .command(&m.p("shared"), &python)
        .args(["-c", &hoarder(&[&f, &d])])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let l = line_of(&mut hog).expect("B's opens finished");
    assert_eq!(l.trim(), "50 EMFILE", "B's handles before the refusal");
    // A holds 45 files open at once and lists.
    let script = format!(
        "{python} -c \"import os; fds = [os.open('f%d' % i, os.O_RDONLY) for i in range(1, 46)]; \
         print(len(fds), len(os.listdir('.')), len(os.listdir('..')))\""
    );
    let o = bounded(spawn_as(a, &m.p("shared/alice"), &script)).expect("A's opens finished");
    assert!(o.status.success(), "A's opens: {}", common::describe(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "45 60 2");
    drop(hog.stdin.take());
    hog.wait().unwrap();
    // B's handles are closed: his budget is his again.
    let mut again = b
        .command(&m.p("shared"), &python)
        .args(["-c", &hoarder(&[&f])])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(line_of(&mut again).unwrap().trim(), "50 EMFILE");
    drop(again.stdin.take());
    again.wait().unwrap();
}

/// The daemon's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Issue 23, item 3: B opens as many handles as his budget allows (the
/// default, 4096) on a directory of 20,000 names of 200 bytes that he owns,
/// and has each handle read the start of the listing, touching the
/// directory in between so that the kernel's cached listing is dropped and
/// each read reaches the daemon. Before, each handle held a copy of the
/// whole directory (about 5 MiB here). Now listings are read from the
/// directory: the daemon's peak RSS stays under 64 MiB.
#[test]
fn handles_on_a_large_directory_cost_the_daemon_no_copy_of_it() {
    let Some((m, users, python)) = setup("dirmem", "") else {
        return;
    };
    let b = &users.b;
    common::ok_as(b, &m.p("shared"), "mkdir big");
    for i in 0..20_000 {
        // Beside the mount (names are not encrypted in this backing
        // directory): only the listing matters here.
        fs::write(m.b(&format!("shared/big/{i:0>200}")), b"").unwrap();
    }
    let pid = m.daemon_pid().expect("daemon pid");
    let before = peak_rss_kib(pid);
    let script = format!(
        r#"
import errno, os, sys
d = {big:?}
fds = []
err = "none"
while True:
    os.utime(d)
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError as e:
        err = errno.errorcode[e.errno]
        break
    fds.append(fd)
    with os.scandir(fd) as it:
        next(it)
print(len(fds), err, flush=True)
"#,
        big = m.p("shared/big")
    );
    let o = bounded(
        b.command(&m.p("shared"), &python)
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
    .expect("B's opens finished");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.trim(), "4096 EMFILE", "{}", common::describe(&o));
    let peak = peak_rss_kib(pid);
    eprintln!(
        "daemon peak RSS: {} KiB before, {} KiB after 4096 handles on 20,000 names",
        before, peak
    );
    assert!(peak < 64 * 1024, "daemon peak RSS {peak} KiB");
}

/// Issue 23, item 6: a setuid bit set beside the mount while the kernel
/// holds the file's old mode (within the attribute TTL) goes when A writes
/// into the file with copy_file_range, as it goes with write and fallocate.
#[test]
fn copy_file_range_drops_setuid_like_write() {
    let Some((m, users, python)) = setup("cfrsuid", "") else {
        return;
    };
    let a = &users.a;
    common::ok_as(
        a,
        &m.p("shared"),
        "printf 'new content' > src && printf 'old program' > prog && chmod 755 prog && stat prog > /dev/null",
    );
    fs::set_permissions(m.b("shared/prog"), fs::Permissions::from_mode(0o4755)).unwrap();
    let copy = format!(
        "{python} -c \"import os; s = os.open('src', os.O_RDONLY); d = os.open('prog', os.O_WRONLY); \
         print(os.copy_file_range(s, d, 11, 0, 0))\""
    );
    assert_eq!(common::ok_as(a, &m.p("shared"), &copy).trim(), "11");
    let mode = fs::metadata(m.b("shared/prog")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755, "mode after copy_file_range: {mode:o}");
    assert_eq!(fs::read(m.p("shared/prog")).unwrap(), b"new content");
}

/// Issue 23, item 7: `trusted.*` names are listed only to callers with
/// CAP_SYS_ADMIN, as ext4 lists them.
#[test]
fn listxattr_hides_trusted_names_from_users() {
    let Some((m, users, python)) = setup("trusted", "") else {
        return;
    };
    let a = &users.a;
    common::ok_as(a, &m.p("shared"), "printf x > f && chmod 644 f");
    let p = m.p("shared/f");
    xattr_set(&p, "trusted.note", b"root's");
    xattr_set(&p, "user.note", b"anyone's");
    let list = format!("{python} -c \"import os; print(sorted(os.listxattr('f')))\"");
    assert_eq!(
        common::ok_as(a, &m.p("shared"), &list).trim(),
        "['user.note']",
        "A's listing"
    );
    let root = common::sh(&m.p("shared"), &list);
    assert!(
        root.contains("trusted.note") && root.contains("user.note"),
        "root's listing: {root}"
    );
}

/// setxattr as root (through the mount).
fn xattr_set(p: &Path, name: &str, value: &[u8]) {
    let o = std::process::Command::new("setfattr")
        .args(["-n", name, "-v"])
        .arg(String::from_utf8_lossy(value).as_ref())
        .arg(p)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "setfattr {name}: {}",
        common::describe(&o)
    );
}

/// Issue 23, item 2: started with a soft descriptor limit of 256, the
/// daemon serves with its hard limit, and says what budgets follow.
#[test]
fn the_daemon_raises_its_descriptor_limit_to_the_hard_limit() {
    let test = "fdlimit";
    if !common::fuse_available(test) || !common::require_root(test, "mounting") {
        return;
    }
    let Some(prlimit) = common::require_tool(test, "prlimit") else {
        return;
    };
    let tmp = common::tempdir(test);
    let (backing, mnt) = (tmp.path().join("backing"), tmp.path().join("mnt"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("kmsfs.log");
    let _guard = common::MountGuard(mnt.clone());
    let keystore = tmp.path().join("keystore");
    // The keystore is the default one too, so that the first mount may
    // create it (as `Mount::kmsfs` does).
    let o = common::command(prlimit)
        .env("KMSFS_KEYSTORE", &keystore)
        .env("RUST_LOG", "info")
        .arg("--nofile=256:")
        .arg("--")
        .arg(common::BIN)
        .arg("--keystore")
        .arg(&keystore)
        .arg("mount")
        .arg(&backing)
        .arg(&mnt)
        .arg("--log-file")
        .arg(&log)
        .output()
        .unwrap();
    assert!(o.status.success(), "mount: {}", common::describe(&o));
    let pid = common::daemon_pid(&mnt).expect("daemon pid");
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap();
    let (soft, hard) = (nofile[0], nofile[1]);
    assert!(hard > 256, "this machine's hard limit is {hard}");
    assert_eq!(soft, hard, "the daemon's soft limit");
    let logged = fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("(descriptor limit {hard})")),
        "{logged}"
    );
}
