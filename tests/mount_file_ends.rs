//! The end of a file is authenticated too: a backing file cut inside its
//! final block or extended with zeros reads as EIO at its end, while the
//! file's own holes (punched or from growing) still read as zeros.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use common::{Mount, sh};

fn read_all(path: &std::path::Path) -> Result<Vec<u8>, i32> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .map(|_| v)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[test]
fn cut_or_zero_extended_backing_files_give_eio_at_their_end() {
    let Some(mut m) = Mount::new("ends") else {
        return;
    };
    let data: Vec<u8> = (0..(8192 + 100)).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.p("cut"), &data).unwrap();
    std::fs::write(m.p("ext"), &data[..8192]).unwrap();
    std::fs::write(m.p("tail"), &data[..100]).unwrap();
    m.unmount();
    let backing_len = |name: &str| std::fs::metadata(m.b(name)).unwrap().len();
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(m.b("cut"))
        .unwrap();
    cut.set_len(backing_len("cut") - 5).unwrap();
    let ext = std::fs::OpenOptions::new()
        .write(true)
        .open(m.b("ext"))
        .unwrap();
    ext.set_len(backing_len("ext") + 500).unwrap();
    // Cut to the header plus 12 bytes: a damaged tail and no plaintext at all.
    let tail = std::fs::OpenOptions::new()
        .write(true)
        .open(m.b("tail"))
        .unwrap();
    tail.set_len(kmsfs::format::HEADER_LEN + 12).unwrap();
    m.mount();

    assert_eq!(
        read_all(&m.p("cut")),
        Err(libc::EIO),
        "cut file read to its end"
    );
    assert_eq!(
        read_all(&m.p("ext")),
        Err(libc::EIO),
        "zero-extended file read to its end"
    );
    assert_eq!(
        read_all(&m.p("tail")),
        Err(libc::EIO),
        "a damaged tail alone read as an empty file"
    );
    // What is before the damage still reads.
    let f = File::open(m.p("cut")).unwrap();
    let mut first = vec![0u8; 4096];
    f.read_exact_at(&mut first, 0).unwrap();
    assert!(first == data[..4096], "first block of the cut file");
}

#[test]
fn punched_and_grown_files_read_zeros_not_eio() {
    let Some(mut m) = Mount::new("holes") else {
        return;
    };
    let data = vec![0x5Au8; 5 * 4096];
    std::fs::write(m.p("p"), &data).unwrap();
    // Punch everything, the final block included.
    sh(&m.mnt, "fallocate --punch-hole --offset 0 --length 20480 p");
    std::fs::write(m.p("g"), b"abc").unwrap();
    sh(&m.mnt, "truncate -s 40960 g");
    m.remount();
    assert_eq!(read_all(&m.p("p")).unwrap(), vec![0u8; 5 * 4096]);
    let g = read_all(&m.p("g")).unwrap();
    assert_eq!(g.len(), 40960);
    assert_eq!(&g[..3], b"abc");
    assert!(g[3..].iter().all(|&b| b == 0));
}
