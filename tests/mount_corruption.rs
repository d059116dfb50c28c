//! Tampering with the backing directory: a flipped byte fails only the block
//! it is in (EIO, logged with the backing path and block), blocks swapped
//! within a file or moved between files fail, a cut file fails at its end.
//! Wrong bytes are never returned. The files are in block format 2.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::Mount;
use kmsfs::format::Layout;

const BLOCKS: u64 = 4;

fn block(i: u64, salt: u8) -> Vec<u8> {
    vec![b'a' + i as u8 + salt; 4096]
}

/// Writes `name` through the mount: a new tree's file, in block format 2
/// (XAES-256-GCM), which every test here tampers with.
fn write_file(m: &Mount, name: &str, salt: u8) {
    let data: Vec<u8> = (0..BLOCKS).flat_map(|i| block(i, salt)).collect();
    std::fs::write(m.p(name), data).unwrap();
    let backing = std::fs::read(m.b(name)).unwrap();
    assert_eq!(backing[6..8], Layout::V2.version().to_be_bytes());
    assert_eq!(
        backing.len() as u64,
        Layout::V2.backing_size_from_plain(BLOCKS * 4096)
    );
}

/// Reads block `i` through the mount: Ok(bytes) or the errno.
fn read_block(m: &Mount, name: &str, i: u64) -> Result<Vec<u8>, i32> {
    let f = File::open(m.p(name)).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, i * 4096)
        .map(|()| buf)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn stored(path: &Path, i: u64) -> Vec<u8> {
    let f = File::open(path).unwrap();
    let mut buf = vec![0u8; Layout::NEW.cipher_block_size() as usize];
    f.read_exact_at(&mut buf, Layout::NEW.block_backing_offset(i))
        .unwrap();
    buf
}

fn put_stored(path: &Path, i: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, Layout::NEW.block_backing_offset(i))
        .unwrap();
}

fn expect(m: &Mount, name: &str, salt: u8, bad: &[u64]) {
    for i in 0..BLOCKS {
        match read_block(m, name, i) {
            Ok(b) => {
                assert!(
                    !bad.contains(&i),
                    "{name} block {i}: tampered block was returned"
                );
                assert!(b == block(i, salt), "{name} block {i}: wrong bytes");
            }
            Err(e) => {
                assert!(
                    bad.contains(&i),
                    "{name} block {i}: intact block failed with errno {e}"
                );
                assert_eq!(e, libc::EIO, "{name} block {i}");
            }
        }
    }
}

#[test]
fn flipped_byte_fails_only_its_block() {
    let Some(mut m) = Mount::new("flip") else {
        return;
    };
    write_file(&m, "f", 0);
    m.unmount();
    let mut b = stored(&m.b("f"), 2);
    b[100] ^= 0x01;
    put_stored(&m.b("f"), 2, &b);
    m.mount();
    expect(&m, "f", 0, &[2]);
    let log = m.log_text();
    assert!(
        log.contains(&m.b("f").display().to_string()) && log.contains("block 2"),
        "log does not name the backing file and block:\n{log}"
    );
}

#[test]
fn swapped_blocks_fail() {
    let Some(mut m) = Mount::new("swap") else {
        return;
    };
    write_file(&m, "f", 0);
    m.unmount();
    let (b1, b2) = (stored(&m.b("f"), 1), stored(&m.b("f"), 2));
    put_stored(&m.b("f"), 1, &b2);
    put_stored(&m.b("f"), 2, &b1);
    m.mount();
    expect(&m, "f", 0, &[1, 2]);
}

#[test]
fn blocks_moved_between_files_fail() {
    let Some(mut m) = Mount::new("between") else {
        return;
    };
    write_file(&m, "a", 0);
    write_file(&m, "b", 5);
    m.unmount();
    put_stored(&m.b("b"), 3, &stored(&m.b("a"), 3));
    put_stored(&m.b("a"), 0, &stored(&m.b("b"), 0));
    m.mount();
    expect(&m, "a", 0, &[0]);
    expect(&m, "b", 5, &[3]);
}

#[test]
fn cut_file_fails_at_its_end() {
    let Some(mut m) = Mount::new("cut") else {
        return;
    };
    write_file(&m, "f", 0);
    m.unmount();
    let len = std::fs::metadata(m.b("f")).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.b("f"))
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    m.mount();
    // The last block is now short: it no longer authenticates.
    let f = File::open(m.p("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = f.read_at(&mut buf, 3 * 4096);
    assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    expect_prefix_ok(&m);
}

fn expect_prefix_ok(m: &Mount) {
    for i in 0..3 {
        assert!(read_block(m, "f", i).unwrap() == block(i, 0));
    }
}

#[test]
fn corrupt_header_is_eio_and_stat_still_works() {
    let Some(mut m) = Mount::new("header") else {
        return;
    };
    write_file(&m, "f", 0);
    m.unmount();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.b("f"))
        .unwrap();
    f.write_all_at(b"XXXXXX", 0).unwrap();
    m.mount();
    assert_eq!(std::fs::metadata(m.p("f")).unwrap().len(), BLOCKS * 4096);
    let e = File::open(m.p("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
}
