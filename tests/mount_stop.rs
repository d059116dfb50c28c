//! Stopping a mount is visible and clean: SIGTERM with files open detaches
//! lazily and says so (with the number of open files) in the log at the
//! default level; the log has a time and pid on every line and mode 0600; a
//! foreground mount exits 0 on every one of 20 SIGTERMs sent while programs
//! write and read through it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, is_mounted, kill, process_alive, wait_until};

#[test]
fn sigterm_with_files_open_detaches_lazily_and_says_so() {
    let Some(mut m) = Mount::new("stop_lazy") else {
        return;
    };
    // The default log level: no RUST_LOG.
    m.unmount();
    let o = m
        .kmsfs()
        .env_remove("RUST_LOG")
        .arg("mount")
        .arg(&m.backing)
        .arg(&m.mnt)
        .arg("--log-file")
        .arg(&m.log)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid = m.daemon_pid().expect("daemon pid");
    std::fs::write(m.p("held"), b"still here").unwrap();
    let held = std::fs::File::open(m.p("held")).unwrap();
    let held2 = std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("held"))
        .unwrap();
    kill("-TERM", pid);
    wait_until("the lazy detach", || !is_mounted(&m.mnt));
    m.forget_mounted();
    assert!(process_alive(pid), "the daemon serves the open files");
    use std::io::Write;
    (&held2).write_all(b" and written").unwrap();
    let mut s = String::new();
    use std::io::Read;
    (&held).read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here and written");
    drop(held);
    drop(held2);
    wait_until("the daemon to exit", || !process_alive(pid));
    let log = m.log_text();
    assert!(
        log.contains("detached lazily with 2 files still open"),
        "{log}"
    );
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(
        log.contains("mounted ") && log.contains("unmounted "),
        "{log}"
    );
    let tag = format!(" kmsfs[{pid}] ");
    for line in log.lines().filter(|l| l.contains(&tag)) {
        // 2026-12-02T01:02:03.456Z kmsfs[PID] LEVEL target: message
        let ts = line.split(' ').next().unwrap();
        assert!(
            ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "no timestamp: {line}"
        );
    }
    assert!(
        log.lines().filter(|l| l.contains(&tag)).count() >= 3,
        "{log}"
    );
    let mode = std::fs::metadata(&m.log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The data reached the backing file.
    let out = m.tmp.path().join("out");
    m.ok(&[
        "unseal",
        m.b("held").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(out).unwrap(), b"still here and written");
}

fn busy_writers(m: &Mount, n: usize) -> Vec<Child> {
    (0..n)
        .map(|i| {
            let script = format!(
                "exec 3>>w{i}; while echo x >&3 && cat big >/dev/null && ls >/dev/null; do :; done"
            );
            Command::new("timeout")
                .arg("0.6")
                .arg("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&m.mnt)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect()
}

#[test]
fn twenty_sigterms_under_load_all_exit_zero() {
    let Some(mut m) = Mount::new("stop_loop") else {
        return;
    };
    std::fs::write(m.p("big"), vec![5u8; 2 << 20]).unwrap();
    m.unmount();
    for round in 0..20 {
        let mut child = m
            .kmsfs()
            .arg("mount")
            .arg("--foreground")
            .arg(&m.backing)
            .arg(&m.mnt)
            .arg("--log-file")
            .arg(&m.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the foreground mount", || is_mounted(&m.mnt));
        let writers = busy_writers(&m, 6);
        std::thread::sleep(Duration::from_millis(250));
        kill("-TERM", child.id());
        for mut w in writers {
            let _ = w.wait();
        }
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "round {round}: the mount did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            status.success(),
            "round {round}: exit status {status}: {err}"
        );
        assert!(!is_mounted(&m.mnt));
    }
    assert!(
        !m.log_text().contains("connection abort"),
        "{}",
        m.log_text()
    );
}
