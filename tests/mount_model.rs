//! Thousands of random writes, reads and truncates through std::fs on the
//! mount, checked against an in-memory model; then again after a remount.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use common::{Mount, Rng};

const FILES: usize = 3;
const OPS: usize = 3000;
const MAX_SIZE: u64 = 300_000;

fn open(m: &Mount, i: usize) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.p(&format!("model{i}")))
        .unwrap()
}

fn offset(rng: &mut Rng, size: u64) -> u64 {
    // Favour block edges, the end of file, and beyond it.
    match rng.below(5) {
        0 => (rng.below(MAX_SIZE / 4096) * 4096).saturating_sub(rng.below(3)),
        1 => size.saturating_sub(rng.below(100)),
        2 => size + rng.below(10_000),
        _ => rng.below(MAX_SIZE),
    }
}

#[test]
fn random_ops_match_a_model() {
    let Some(mut m) = Mount::new("model") else {
        return;
    };
    let mut rng = Rng::new(0x5eed);
    let mut model: Vec<Vec<u8>> = vec![Vec::new(); FILES];
    // Two handles per file: writes through one must be seen through the other.
    let mut handles: Vec<[File; 2]> = (0..FILES).map(|i| [open(&m, i), open(&m, i)]).collect();
    for op in 0..OPS {
        let i = rng.below(FILES as u64) as usize;
        let h = &handles[i][rng.below(2) as usize];
        let size = model[i].len() as u64;
        match rng.below(10) {
            0..=4 => {
                let off = offset(&mut rng, size).min(MAX_SIZE);
                let len = match rng.below(3) {
                    0 => rng.below(16) + 1,
                    1 => rng.below(5000) + 1,
                    _ => rng.below(70_000) + 1,
                } as usize;
                let data = rng.bytes(len);
                h.write_all_at(&data, off).unwrap();
                let end = off as usize + len;
                if model[i].len() < end {
                    model[i].resize(end, 0);
                }
                model[i][off as usize..end].copy_from_slice(&data);
            }
            5..=7 => {
                let off = offset(&mut rng, size);
                let len = rng.below(80_000) as usize + 1;
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    let n = h.read_at(&mut buf[got..], off + got as u64).unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let want = model[i].get(off as usize..).unwrap_or(&[]);
                let want = &want[..want.len().min(len)];
                assert!(
                    &buf[..got] == want,
                    "op {op}: read of file {i} at {off}+{len} differs"
                );
            }
            8 => {
                let new = offset(&mut rng, size).min(MAX_SIZE);
                h.set_len(new).unwrap();
                model[i].resize(new as usize, 0);
            }
            _ => {
                assert_eq!(
                    h.metadata().unwrap().len(),
                    size,
                    "op {op}: size of file {i}"
                );
                if rng.below(4) == 0 {
                    handles[i] = [open(&m, i), open(&m, i)];
                }
            }
        }
    }
    drop(handles);
    m.remount();
    for (i, want) in model.iter().enumerate() {
        let got = std::fs::read(m.p(&format!("model{i}"))).unwrap();
        assert_eq!(got.len(), want.len(), "file {i} size after remount");
        assert!(&got == want, "file {i} content after remount");
    }
}

#[test]
fn threads_on_one_file_stay_consistent() {
    let Some(m) = Mount::new("threads") else {
        return;
    };
    let path = m.p("shared");
    std::fs::write(&path, vec![0u8; 64 * 4096]).unwrap();
    // Each thread owns every 8th block and rewrites it many times while the
    // others do the same; a reader checks that every read authenticates and
    // returns only bytes that block's owner wrote (never another block's or
    // garbage). Two rounds of the same owner may mix within a page: the
    // kernel's writeback (6.14 and later write straight from the page cache)
    // can send a page to the daemon while a writer is copying into it, as a
    // buffered read can tear on ext4; the final content is checked below.
    let owner_bytes = |b: u64| -> Vec<u8> {
        let t = (b % 8) as u8;
        let mut v: Vec<u8> = (1..=40u8).map(|r| r.wrapping_mul(t + 1)).collect();
        v.push(0);
        v
    };
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let path = path.clone();
            s.spawn(move || {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                for round in 1..=40u8 {
                    for b in (t as u64..64).step_by(8) {
                        f.write_all_at(&[round.wrapping_mul(t + 1); 4096], b * 4096)
                            .unwrap();
                    }
                }
            });
        }
        let path = path.clone();
        s.spawn(move || {
            // O_DIRECT: the read goes to the daemon and its per-inode lock.
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .unwrap();
            let mut buf = vec![0u8; 4096];
            for i in 0..2000u64 {
                let b = i % 64;
                f.read_exact_at(&mut buf, b * 4096)
                    .unwrap_or_else(|e| panic!("block {b}: {e}"));
                let allowed = owner_bytes(b);
                assert!(
                    buf.iter().all(|x| allowed.contains(x)),
                    "block {b} holds bytes its owner never wrote"
                );
            }
        });
    });
    let all = std::fs::read(&path).unwrap();
    for b in 0..64u64 {
        let t = (b % 8) as u8;
        let want = 40u8.wrapping_mul(t + 1);
        assert!(
            all[(b * 4096) as usize..((b + 1) * 4096) as usize]
                .iter()
                .all(|&x| x == want)
        );
    }
}

#[test]
fn appends_from_several_processes_keep_every_record() {
    let Some(mut m) = Mount::new("append") else {
        return;
    };
    // Four processes append 500 records each to one file through their own
    // O_APPEND descriptors. With the writeback cache the kernel appends at
    // the size it keeps itself: no record may be lost, torn or written over
    // another, and the file must hold exactly them, also after a remount.
    let script = r#"
import os
for p in range(4):
    if os.fork() == 0:
        fd = os.open("log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for n in range(500):
            os.write(fd, f"{p}:{n:04d}:{'x' * (17 + 29 * p + n % 7)}\n".encode())
        os.close(fd)
        os._exit(0)
for p in range(4):
    os.wait()
"#;
    common::sh(
        &m.mnt,
        &format!("python3 -c '{}'", script.replace('\'', "'\\''")),
    );
    let want: std::collections::BTreeSet<String> = (0..4)
        .flat_map(|p| {
            (0..500).map(move |n| format!("{p}:{n:04}:{}", "x".repeat(17 + 29 * p + n % 7)))
        })
        .collect();
    let want_len: usize = want.iter().map(|l| l.len() + 1).sum();
    for when in ["written", "after a remount"] {
        let got = std::fs::read_to_string(m.p("log")).unwrap();
        assert_eq!(got.len(), want_len, "size {when}");
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 2000, "records {when}");
        let set: std::collections::BTreeSet<String> = lines.iter().map(|l| l.to_string()).collect();
        assert!(set == want, "records {when} are not the ones appended");
        if when == "written" {
            m.remount();
        }
    }
}
