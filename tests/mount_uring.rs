//! `-o io_uring`: FUSE over io_uring (Linux 6.14+). The kernel offers it
//! only while /sys/module/fuse/parameters/enable_uring is Y, the operator's
//! choice: these tests set it and put back what they found (one test at a
//! time, the parameter being the machine's). Requests then come through the
//! daemon's rings, which the log says and counts; data written that way
//! reads back through /dev/fuse after a remount; unmount and a killed
//! daemon end the rings (no hang); without the parameter the mount serves
//! through /dev/fuse and says why.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use common::{Mount, Rng, ok_as, process_alive, test_users, wait_until};

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// The parameter is one for the machine: one test at a time changes it.
static SERIAL: Mutex<()> = Mutex::new(());

/// Sets enable_uring for the test's length and puts the old value back.
struct Param(String);

impl Param {
    fn set(test: &str, value: &str) -> Option<Param> {
        let Ok(old) = fs::read_to_string(PARAM) else {
            common::skip(
                test,
                "this kernel has no FUSE over io_uring (no enable_uring)",
            );
            return None;
        };
        fs::write(PARAM, value).expect("set enable_uring (root)");
        Some(Param(old.trim().to_string()))
    }
}

impl Drop for Param {
    fn drop(&mut self) {
        let _ = fs::write(PARAM, &self.0);
    }
}

/// Runs `f` on a thread of its own and fails the test when it has not
/// returned after a minute: a hang is the failure these tests look for.
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} hung (no answer in a minute)"))
}

/// The number in the daemon's "FUSE over io_uring served N requests".
fn served(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("FUSE over io_uring served"))?;
    let tail = line.split("served ").nth(1)?;
    tail.split(' ').next()?.parse().ok()
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// Files of several sizes (under a page, over the 1 MiB payload), written
/// from four threads at once, then a rename and an unlink.
fn workload(mnt: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let sizes = [1usize, 4095, 4096, 70_000, 1 << 20, 3 * (1 << 20) + 17];
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let dir = mnt.join(format!("t{t}"));
            std::thread::spawn(move || {
                fs::create_dir(&dir).expect("mkdir");
                let mut made = Vec::new();
                for (i, n) in sizes.iter().enumerate() {
                    let p = dir.join(format!("f{i}"));
                    let data = random(*n, t * 100 + i as u64 + 1);
                    let mut f = fs::File::create(&p).expect("create");
                    f.write_all(&data).expect("write");
                    f.sync_all().expect("fsync");
                    assert_eq!(fs::read(&p).expect("read back"), data, "{}", p.display());
                    made.push((p, data));
                }
                made
            })
        })
        .collect();
    let mut all: Vec<(PathBuf, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect();
    let (from, data) = all.remove(0);
    let to = mnt.join("renamed");
    fs::rename(&from, &to).expect("rename");
    all.push((to, data));
    let (gone, _) = all.remove(0);
    fs::remove_file(&gone).expect("unlink");
    assert!(fs::metadata(&gone).is_err(), "unlinked file still there");
    let listed = fs::read_dir(mnt.join("t1")).expect("readdir").count();
    assert_eq!(
        listed,
        sizes.len() - usize::from(gone.starts_with(mnt.join("t1")))
    );
    all
}

/// "0-3,5" as [0, 1, 2, 3, 5].
fn cpu_list(s: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
        cpus.extend(a..=b);
    }
    cpus
}

/// The daemon's ring threads (`kmsfs-uring-N`), each with the CPUs it may
/// run on (`Cpus_allowed_list` of /proc/PID/task/TID/status).
fn ring_threads_cpus(pid: u32) -> Vec<(String, Vec<u32>)> {
    let mut found = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let status = fs::read_to_string(task.expect("task").path().join("status"));
        let Ok(status) = status else { continue };
        let field = |f: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(f))
                .map(|v| v.trim().to_string())
        };
        if let (Some(name), Some(cpus)) = (field("Name:"), field("Cpus_allowed_list:"))
            && name.starts_with("kmsfs-uring")
        {
            found.push((name, cpu_list(&cpus)));
        }
    }
    found
}

#[test]
fn requests_go_through_the_rings_and_the_data_reads_back_through_dev_fuse() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "uring-serves";
    let Some(_param) = Param::set(test, "Y") else {
        return;
    };
    let Some(mut m) = Mount::with_log_level(test, "info", &["-o", "io_uring"]) else {
        return;
    };
    let mnt = m.mnt.clone();
    let files = within_a_minute("the workload", move || workload(&mnt));
    assert!(
        m.log_text().contains("serving through FUSE over io_uring"),
        "the log does not say the rings serve:\n{}",
        m.log_text()
    );
    let pid = m.daemon_pid().expect("the daemon's pid");
    let pinned = ring_threads_cpus(pid);
    // Each ring's thread runs on its queue's CPU only, and every CPU's
    // queue has one (the kernel queues a request on its caller's CPU). A
    // queue of a CPU that is possible but offline cannot be pinned.
    let read = |f: &str| fs::read_to_string(format!("/sys/devices/system/cpu/{f}"));
    let online = cpu_list(read("online").expect("online CPUs").trim());
    let possible = cpu_list(read("possible").expect("possible CPUs").trim());
    assert!(!pinned.is_empty(), "no ring threads in /proc/{pid}/task");
    if possible == online {
        for (name, allowed) in &pinned {
            assert_eq!(allowed.len(), 1, "{name} runs on CPUs {allowed:?}, not one");
        }
    }
    let mut covered: Vec<u32> = pinned
        .iter()
        .filter(|(_, a)| a.len() == 1)
        .map(|(_, a)| a[0])
        .collect();
    covered.sort_unstable();
    covered.dedup();
    assert_eq!(covered, online, "ring threads pinned to {pinned:?}");
    let mut m = within_a_minute("kmsfs unmount", move || {
        m.unmount();
        m
    });
    let log = m.log_text();
    let n = served(&log).unwrap_or_else(|| panic!("no count of ring requests in:\n{log}"));
    // At least a create, a write, a flush and a release per file.
    assert!(
        n >= 4 * files.len() as u64,
        "the rings served only {n} requests for {} files",
        files.len()
    );
    // Read back by a mount without the rings: what they wrote is on disk.
    m.set_args(&[]);
    m.mount();
    for (p, data) in &files {
        assert_eq!(
            &fs::read(p).expect("read after remount"),
            data,
            "{}",
            p.display()
        );
    }
    assert!(
        m.log_text().contains("serving through /dev/fuse"),
        "the second mount (no -o io_uring) should serve through /dev/fuse"
    );
}

#[test]
fn a_killed_daemon_leaves_a_dead_mount_not_a_hang() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "uring-kill";
    let Some(_param) = Param::set(test, "Y") else {
        return;
    };
    let Some(mut m) = Mount::with_log_level(test, "info", &["-o", "io_uring"]) else {
        return;
    };
    fs::write(m.p("kept"), b"before the kill").expect("write");
    let f = fs::File::open(m.p("kept")).expect("open");
    f.sync_all().expect("fsync");
    drop(f);
    assert!(m.log_text().contains("serving through FUSE over io_uring"));
    let pid = m.daemon_pid().expect("daemon pid");
    common::kill("-KILL", pid);
    wait_until("the daemon to die", || !process_alive(pid));
    let mnt = m.mnt.clone();
    let e = within_a_minute("readdir of the dead mount", move || {
        fs::read_dir(&mnt)
            .map(|_| ())
            .expect_err("the dead mount still answers")
    });
    // A request that met the ring of the dead daemon while the kernel was
    // still tearing it down ends with ECANCELED (io_uring cancelled the
    // entry); the connection's abort follows, and then every access gives
    // ENOTCONN, as through /dev/fuse.
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)
        ),
        "the dead mount gives {e}, not ENOTCONN"
    );
    let mnt = m.mnt.clone();
    wait_until("the dead mount to answer ENOTCONN", move || {
        matches!(
            fs::read_dir(&mnt).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOTCONN | libc::ECONNABORTED))
        )
    });
    // Mounting again over it (kmsfs detaches the dead mount) with the rings.
    m.forget_mounted();
    m.mount();
    assert_eq!(fs::read(m.p("kept")).expect("read"), b"before the kill");
    assert!(m.log_text().contains("serving through FUSE over io_uring"));
}

#[test]
fn without_enable_uring_the_mount_serves_through_dev_fuse_and_says_why() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "uring-off";
    let Some(_param) = Param::set(test, "N") else {
        return;
    };
    let Some(mut m) = Mount::with_log_level(test, "info", &["-o", "io_uring"]) else {
        return;
    };
    fs::write(m.p("f"), b"through /dev/fuse").expect("write");
    assert_eq!(fs::read(m.p("f")).expect("read"), b"through /dev/fuse");
    m.unmount();
    let log = m.log_text();
    assert!(
        log.contains("kernel does not offer FUSE over io_uring"),
        "no reason logged:\n{log}"
    );
    assert!(log.contains("serving through /dev/fuse"), "{log}");
    assert!(!log.contains("serving through FUSE over io_uring"), "{log}");
}

/// Through the rings, each request still carries its caller: on a shared
/// mount (allow_other, default_permissions) a file user A creates is A's,
/// and user B can neither read nor replace A's private file.
#[test]
fn the_rings_keep_each_callers_identity() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "uring-users";
    let Some(_param) = Param::set(test, "Y") else {
        return;
    };
    let Some(m) = Mount::with_log_level(test, "info", &["-o", "io_uring", "-o", "allow_other"])
    else {
        return;
    };
    let Some(users) = test_users(test) else {
        return;
    };
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod tmp");
    fs::create_dir(m.p("shared")).expect("mkdir");
    fs::set_permissions(m.p("shared"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    let shared = m.p("shared");
    ok_as(&users.a, &shared, "umask 077; echo secret > a.txt");
    let md = fs::metadata(m.p("shared/a.txt")).expect("stat");
    assert_eq!(
        (md.uid(), md.gid()),
        (users.a.uid, users.a.gid),
        "owner of A's file"
    );
    assert_eq!(md.mode() & 0o777, 0o600);
    let o = users.b.sh(&shared, "cat a.txt");
    assert!(!o.status.success(), "B read A's private file");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = users
        .b
        .sh(&shared, "echo mine > a.txt || exit 1; rm -f a.txt");
    assert!(!o.status.success(), "B overwrote or removed A's file");
    assert_eq!(fs::read(m.p("shared/a.txt")).expect("read"), b"secret\n");
    assert!(m.log_text().contains("serving through FUSE over io_uring"));
}
