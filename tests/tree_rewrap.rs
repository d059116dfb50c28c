//! `kmsfs rewrap` through the real binary: files move to a new key and stay
//! readable once the old key is disabled, content bytes never change, a
//! corrupt header is listed and untouched, a file open through the mount is
//! skipped as busy and rewrapped after close, and SIGKILL at random points
//! followed by a rerun leaves every file readable under the new key.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Mount, Rng};
use serde_json::Value;

const EXIT_CORRUPT: i32 = 5;
const EXIT_RETRY: i32 = 8;

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn key_of(m: &Mount, backing_file: &Path) -> String {
    let o = m.ok(&[
        "--output",
        "json",
        "inspect",
        backing_file.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(&o).unwrap();
    v["KeyId"].as_str().unwrap().to_string()
}

fn create_key(m: &Mount) -> String {
    let v: Value = serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// Writes `n` files of various sizes through the mount; returns their contents.
fn populate(m: &Mount, n: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let mut rng = Rng::new(seed);
    let mut files = BTreeMap::new();
    for i in 0..n {
        let dir = format!("d{}", i % 7);
        std::fs::create_dir_all(m.p(&dir)).unwrap();
        let rel = format!("{dir}/f{i}");
        let len = [0, 1, 4095, 4096, 9000][i % 5] + rng.below(50) as usize;
        let data = rng.bytes(len);
        std::fs::write(m.p(&rel), &data).unwrap();
        files.insert(rel, data);
    }
    files
}

fn rewrap(m: &Mount, args: &[&str]) -> std::process::Output {
    let mut a = vec!["--output", "json", "rewrap", m.backing.to_str().unwrap()];
    a.extend_from_slice(args);
    m.run(&a)
}

fn assert_reads(m: &Mount, files: &BTreeMap<String, Vec<u8>>) {
    for (rel, data) in files {
        let got = std::fs::read(m.p(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(got == *data, "{rel}: content differs");
    }
}

#[test]
fn rewrap_to_a_new_key_survives_disabling_the_old_one() {
    let Some(mut m) = Mount::new("rewrap_new_key") else {
        return;
    };
    let files = populate(&m, 20, 1);
    let old = key_of(&m, &m.b("d0/f0"));
    std::fs::write(m.p("bad"), b"to be damaged").unwrap();
    m.unmount();
    // A header without its magic: listed, never changed.
    let mut bad = std::fs::read(m.b("bad")).unwrap();
    bad[0] = b'X';
    std::fs::write(m.b("bad"), &bad).unwrap();
    let content_before: BTreeMap<_, _> = files
        .keys()
        .map(|r| (r.clone(), std::fs::read(m.b(r)).unwrap()[1024..].to_vec()))
        .collect();
    m.mount();

    let new = create_key(&m);
    let o = rewrap(&m, &["--to-key-id", &new]);
    assert_eq!(o.status.code(), Some(EXIT_CORRUPT), "{o:?}");
    let v = json_of(&o);
    assert_eq!(v["Rewrapped"], 20, "{v}");
    assert_eq!(v["CorruptHeaders"], 1, "{v}");
    assert_eq!(v["Problems"][0]["Path"], "bad", "{v}");
    assert_eq!(v["Problems"][0]["Problem"], "CorruptHeader", "{v}");
    assert_eq!(
        std::fs::read(m.b("bad")).unwrap(),
        bad,
        "corrupt file changed"
    );
    for (rel, content) in &content_before {
        assert_eq!(key_of(&m, &m.b(rel)), new, "{rel}");
        assert!(
            std::fs::read(m.b(rel)).unwrap()[1024..] == content[..],
            "{rel}: content bytes changed"
        );
    }

    m.ok(&["kms", "disable-key", "--key-id", &old]);
    // Live mount: each open reads the header anew.
    assert_reads(&m, &files);
    // The default key is disabled: new files of the next mount go to `new`.
    m.set_args(&["--key-id", &new]);
    m.remount();
    assert_reads(&m, &files);
    // A second run has nothing to do. (Unmounted first: the kernel sends
    // the release of the files just read after close(2) returns, so the
    // mount may still hold one, and rewrap would rightly skip it as busy.)
    m.unmount();
    std::fs::remove_file(m.b("bad")).unwrap();
    let v = json_of(&rewrap(&m, &["--to-key-id", &new]));
    assert_eq!(
        (v["Rewrapped"].as_u64(), v["Unchanged"].as_u64()),
        (Some(0), Some(20))
    );
}

#[test]
fn a_file_open_through_the_mount_is_busy_then_rewrapped_after_close() {
    let Some(mut m) = Mount::new("rewrap_busy") else {
        return;
    };
    std::fs::write(m.p("open"), b"first ").unwrap();
    std::fs::write(m.p("closed"), b"other").unwrap();
    let old = key_of(&m, &m.b("open"));
    let new = create_key(&m);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("open"))
        .unwrap();
    let o = rewrap(&m, &["--to-key-id", &new]);
    assert_eq!(o.status.code(), Some(EXIT_RETRY), "{o:?}");
    let v = json_of(&o);
    assert_eq!(
        (v["Rewrapped"].as_u64(), v["Busy"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(v["Problems"][0]["Path"], "open");
    assert_eq!(key_of(&m, &m.b("open")), old);
    use std::io::Write;
    f.write_all(b"second").unwrap();
    f.sync_all().unwrap();
    drop(f);
    // The release reaches the daemon asynchronously: retry as an operator would.
    let mut code = None;
    for _ in 0..50 {
        let o = rewrap(&m, &["--to-key-id", &new]);
        code = o.status.code();
        if code == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(code, Some(0));
    assert_eq!(key_of(&m, &m.b("open")), new);
    m.ok(&["kms", "disable-key", "--key-id", &old]);
    assert_eq!(std::fs::read(m.p("open")).unwrap(), b"first second");
    m.set_args(&["--key-id", &new]);
    m.remount();
    assert_eq!(std::fs::read(m.p("open")).unwrap(), b"first second");
    assert_eq!(std::fs::read(m.p("closed")).unwrap(), b"other");
}

#[test]
fn sigkill_at_random_points_then_rerun_leaves_every_file_under_the_new_key() {
    let n: usize = std::env::var("KMSFS_REWRAP_KILL_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let Some(mut m) = Mount::new("rewrap_kill") else {
        return;
    };
    let files = populate(&m, n, 7);
    let old = key_of(&m, &m.b("d0/f0"));
    m.unmount();
    let new = create_key(&m);
    let mut rng = Rng::new(99);
    // A debug build dies where it is told: after a new slot is written but
    // not synced, after a batch's sync, after the old slots are cleared but
    // before the second sync. Each run picks up what the last left.
    let batches = n.div_ceil(128) as u64;
    for die in [
        format!("write:{}", 1 + rng.below(n as u64 / 3)),
        format!("synced:{}", rng.below(batches / 2)),
        format!("cleared:{}", rng.below(batches / 2)),
    ] {
        let o = m
            .kmsfs()
            .args(["rewrap", m.backing.to_str().unwrap(), "--to-key-id", &new])
            .env("KMSFS_TEST_REWRAP_DIE", &die)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{die}: rewrap did not die: {o:?}");
        let o = m.run(&[
            "--output",
            "json",
            "fsck",
            "--quick",
            m.backing.to_str().unwrap(),
        ]);
        let under_new = json_of(&o)["Keys"][&new]["Files"].as_u64().unwrap_or(0);
        eprintln!("died at {die}: {under_new} of {n} files under the new key");
        assert!(under_new < n as u64, "{die}: the run finished before dying");
    }
    // And SIGKILL from outside at random times.
    for round in 0..3 {
        let mut child = m
            .kmsfs()
            .args(["rewrap", m.backing.to_str().unwrap(), "--to-key-id", &new])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let _ = child.kill();
        let st = child.wait().unwrap();
        eprintln!("round {round}: {st:?}");
    }
    let o = m.run(&["rewrap", m.backing.to_str().unwrap(), "--to-key-id", &new]);
    assert!(o.status.success(), "{o:?}");
    m.ok(&["kms", "disable-key", "--key-id", &old]);
    // fsck with the old key disabled: every file is under the new key and reads.
    let o = m.run(&["--output", "json", "fsck", m.backing.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let v = json_of(&o);
    assert_eq!(v["Keys"][&new]["Files"].as_u64(), Some(n as u64), "{v}");
    assert!(v["Keys"].get(&old).is_none(), "{v}");
    m.set_args(&["--key-id", &new]);
    m.mount();
    assert_reads(&m, &files);
}
