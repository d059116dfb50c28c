//! Sparse files: fallocate (allocate, KEEP_SIZE, PUNCH_HOLE) and
//! lseek SEEK_DATA/SEEK_HOLE through the mount.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};

use common::{Mount, sh};

fn seek(m: &Mount, name: &str, off: u64, whence: &str) -> String {
    sh(
        &m.mnt,
        &format!(
            "python3 -c \"import os\nfd = os.open('{name}', os.O_RDONLY)\ntry:\n    print(os.lseek(fd, {off}, os.{whence}))\nexcept OSError as e:\n    print('errno', e.errno)\""
        ),
    )
    .trim()
    .to_string()
}

#[test]
fn punch_hole_zeroes_the_range_and_frees_backing_space() {
    let Some(mut m) = Mount::new("punch") else {
        return;
    };
    let size = 64 * 4096;
    fs::write(m.p("f"), vec![b'x'; size]).unwrap();
    sh(&m.mnt, "sync f");
    let before = fs::metadata(m.b("f")).unwrap().blocks();
    let (off, len) = (10_000usize, 100_000usize);
    sh(&m.mnt, &format!("fallocate -p -o {off} -l {len} f"));
    let check = |m: &Mount| {
        let got = fs::read(m.p("f")).unwrap();
        assert_eq!(got.len(), size);
        for (i, &b) in got.iter().enumerate() {
            let want = if (off..off + len).contains(&i) {
                0
            } else {
                b'x'
            };
            assert_eq!(b, want, "byte {i}");
        }
    };
    check(&m);
    let after = fs::metadata(m.b("f")).unwrap().blocks();
    assert!(
        after < before,
        "backing blocks {before} -> {after}: nothing freed"
    );
    m.remount();
    check(&m);
    // SEEK_HOLE finds the punched range (whole blocks only, conservatively).
    let hole: u64 = seek(&m, "f", 0, "SEEK_HOLE").parse().unwrap();
    assert!(
        (off as u64..(off + len) as u64).contains(&hole),
        "hole at {hole}"
    );
    let data: u64 = seek(&m, "f", hole, "SEEK_DATA").parse().unwrap();
    assert!(data > hole && data <= (off + len) as u64, "data at {data}");
}

#[test]
fn seek_data_and_hole_on_a_file_with_a_gap() {
    let Some(m) = Mount::new("seek") else { return };
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("g"))
        .unwrap();
    f.write_all_at(&[1u8; 4096], 0).unwrap();
    f.write_all_at(&[2u8; 4096], 1 << 20).unwrap();
    drop(f);
    let size = (1u64 << 20) + 4096;
    assert_eq!(fs::metadata(m.p("g")).unwrap().len(), size);
    let hole: u64 = seek(&m, "g", 0, "SEEK_HOLE").parse().unwrap();
    assert!((4096..1 << 20).contains(&hole), "hole at {hole}");
    let data: u64 = seek(&m, "g", hole, "SEEK_DATA").parse().unwrap();
    assert!(data > hole && data <= 1 << 20, "data at {data}");
    assert_eq!(seek(&m, "g", 1 << 20, "SEEK_HOLE"), size.to_string());
    assert_eq!(
        seek(&m, "g", size, "SEEK_DATA"),
        format!("errno {}", libc::ENXIO)
    );
    let got = fs::read(m.p("g")).unwrap();
    assert!(got[..4096].iter().all(|&b| b == 1));
    assert!(got[4096..1 << 20].iter().all(|&b| b == 0));
    assert!(got[1 << 20..].iter().all(|&b| b == 2));
    // cp --sparse=always keeps the content.
    sh(&m.mnt, "cp --sparse=always g g2 && cmp g g2");
}

#[test]
fn allocate_and_keep_size() {
    let Some(mut m) = Mount::new("alloc") else {
        return;
    };
    fs::write(m.p("k"), b"0123456789").unwrap();
    sh(&m.mnt, "fallocate -n -o 0 -l 1000000 k");
    assert_eq!(fs::metadata(m.p("k")).unwrap().len(), 10);
    assert_eq!(fs::read(m.p("k")).unwrap(), b"0123456789");
    sh(&m.mnt, "fallocate -o 5 -l 100000 k");
    assert_eq!(fs::metadata(m.p("k")).unwrap().len(), 100_005);
    m.remount();
    let got = fs::read(m.p("k")).unwrap();
    assert_eq!(&got[..10], b"0123456789");
    assert!(got[10..].iter().all(|&b| b == 0));
    assert_eq!(got.len(), 100_005);
}

#[test]
fn copy_file_range_between_files() {
    let Some(mut m) = Mount::new("cfr") else {
        return;
    };
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.p("src"), &data).unwrap();
    // Python's os.copy_file_range is the syscall, without a userspace fallback.
    sh(
        &m.mnt,
        "python3 -c \"import os\ns = os.open('src', os.O_RDONLY); d = os.open('dst', os.O_WRONLY | os.O_CREAT, 0o644)\noff = 0\nwhile True:\n    n = os.copy_file_range(s, d, 1 << 22, off, off + 10)\n    if n == 0: break\n    off += n\"",
    );
    m.remount();
    let got = fs::read(m.p("dst")).unwrap();
    assert_eq!(got.len(), data.len() + 10);
    assert!(got[..10].iter().all(|&b| b == 0));
    assert!(got[10..] == data[..]);
    assert!(
        !m.log_text().contains("Not Implemented"),
        "{}",
        m.log_text()
    );
}

/// lseek(fd, off, whence): the offset, or the errno.
fn lseek_raw(f: &fs::File, off: u64, whence: i32) -> Result<u64, i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: integer arguments on a descriptor that `f` keeps open.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r as u64)
    }
}

/// One step of building a sparse file.
#[derive(Clone, Copy, Debug)]
enum Step {
    Write(u64, usize),
    Truncate(u64),
    Punch(u64, u64),
}

fn build(path: &std::path::Path, steps: &[Step]) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let mut byte = 0u8;
    for s in steps {
        match *s {
            Step::Write(off, len) => {
                byte = byte.wrapping_add(1).max(1);
                f.write_all_at(&vec![byte; len], off).unwrap();
            }
            Step::Truncate(len) => f.set_len(len).unwrap(),
            Step::Punch(off, len) => {
                use std::os::fd::AsRawFd;
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                // SAFETY: integer arguments on a descriptor `f` keeps open.
                let r = unsafe {
                    libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t)
                };
                assert_eq!(
                    r,
                    0,
                    "punch {off}+{len}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

#[test]
fn seek_data_and_hole_match_ext4_for_holes_of_every_making() {
    let Some(m) = Mount::new("seek-ext4") else {
        return;
    };
    const B: u64 = 4096;
    // The reference: the same steps on a plain file beside the mount (ext4).
    let plain = m.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let cases: Vec<(&str, Vec<Step>)> = vec![
        // Large holes from seek-and-write, and gaps of one, two and three blocks.
        (
            "written",
            vec![
                Step::Write(0, B as usize),
                Step::Write(300 * B, B as usize),
                Step::Write(302 * B, 2 * B as usize),
                Step::Write(306 * B, B as usize),
                Step::Write(310 * B + 100, 50),
                Step::Write(1000 * B, 100),
            ],
        ),
        // Holes left by extending with truncate, then written after.
        (
            "truncated",
            vec![
                Step::Write(0, 5 * B as usize + 10),
                Step::Truncate(200 * B),
                Step::Write(120 * B, B as usize),
                Step::Truncate(130 * B + 7),
                Step::Truncate(400 * B),
                Step::Write(401 * B, 3),
            ],
        ),
        // Punched holes of one, two and many blocks, aligned or not.
        (
            "punched",
            vec![
                Step::Write(0, 400 * B as usize),
                Step::Punch(10 * B, B),
                Step::Punch(20 * B, 2 * B),
                Step::Punch(30 * B, 3 * B),
                Step::Punch(50 * B + 100, 100 * B),
                Step::Punch(200 * B - 1, 2 * B + 2),
                Step::Punch(390 * B, 20 * B),
            ],
        ),
    ];
    for (name, steps) in &cases {
        build(&plain.join(name), steps);
        build(&m.p(name), steps);
        let want = fs::File::open(plain.join(name)).unwrap();
        let got = fs::File::open(m.p(name)).unwrap();
        let size = want.metadata().unwrap().len();
        assert_eq!(got.metadata().unwrap().len(), size, "{name}: size");
        let mut checked = 0;
        let mut differ = Vec::new();
        for blk in 0..=size.div_ceil(B) {
            for off in [blk * B, blk * B + 1, blk * B + B - 1] {
                for (whence, w) in [(libc::SEEK_DATA, "DATA"), (libc::SEEK_HOLE, "HOLE")] {
                    let e = lseek_raw(&want, off, whence);
                    let k = lseek_raw(&got, off, whence);
                    checked += 1;
                    if e != k {
                        differ.push(format!("SEEK_{w} from {off}: ext4 {e:?}, kmsfs {k:?}"));
                    }
                }
            }
        }
        assert!(checked > 1000);
        assert!(
            differ.is_empty(),
            "{name}: {} of {checked} answers differ, first: {:?}",
            differ.len(),
            &differ[..differ.len().min(8)]
        );
        // The content matches too.
        assert!(fs::read(plain.join(name)).unwrap() == fs::read(m.p(name)).unwrap());
    }
}
