//! Direct I/O (O_DIRECT, synchronous and through io_submit) mixed with
//! buffered reads and writes of the same file: no read may return bytes
//! older than the last write that completed before it began. The kernel
//! drops its cached pages of a range after a synchronous direct write, but
//! not after an asynchronous one; a reader that filled a page while such a
//! write was in flight kept the old bytes, and FOPEN_KEEP_CACHE carried
//! them across later opens.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use common::Mount;

const BLOCK: usize = 4096;
const BLOCKS: usize = 64;
const LEN: usize = BLOCK * BLOCKS;

/// A buffer aligned for O_DIRECT.
struct Aligned {
    raw: Vec<u8>,
    at: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + BLOCK];
        let at = raw.as_ptr().align_offset(BLOCK);
        Aligned { raw, at }
    }

    fn buf(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + LEN]
    }
}

/// The kernel's `struct iocb` (little-endian field order).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// The kernel's `struct io_event`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const IOCB_CMD_PWRITE: u16 = 1;

/// A native AIO context (io_setup), destroyed on drop.
struct Aio(u64);

impl Aio {
    fn new() -> Self {
        let mut ctx = 0u64;
        // SAFETY: io_setup writes the new context to `ctx`, which lives
        // across the call.
        let r = unsafe { libc::syscall(libc::SYS_io_setup, 4i64, &mut ctx as *mut u64) };
        assert_eq!(r, 0, "io_setup: {}", std::io::Error::last_os_error());
        Aio(ctx)
    }

    /// Submits one write of `buf` at `offset` and waits for its completion;
    /// the bytes written.
    fn pwrite(&self, f: &File, buf: &[u8], offset: u64) -> i64 {
        let mut cb = Iocb {
            opcode: IOCB_CMD_PWRITE,
            fildes: f.as_raw_fd() as u32,
            buf: buf.as_ptr() as u64,
            nbytes: buf.len() as u64,
            offset: offset as i64,
            ..Iocb::default()
        };
        let mut list = [&mut cb as *mut Iocb];
        // SAFETY: one valid iocb whose buffer outlives the wait below.
        let r = unsafe { libc::syscall(libc::SYS_io_submit, self.0, 1i64, list.as_mut_ptr()) };
        assert_eq!(r, 1, "io_submit: {}", std::io::Error::last_os_error());
        let mut ev = [IoEvent::default()];
        loop {
            // SAFETY: room for one event; no timeout.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.0,
                    1i64,
                    1i64,
                    ev.as_mut_ptr(),
                    std::ptr::null_mut::<libc::timespec>(),
                )
            };
            if r == 1 {
                return ev[0].res;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "io_getevents: {e}");
        }
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        // SAFETY: destroys the context this value owns.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.0) };
    }
}

/// Every byte of `got` must be of generation `floor` or later. (A read
/// that overlaps a write may see some of it: bytes of two generations in
/// one read are fine, as on any file system.)
fn stale(got: &[u8], floor: u64, who: &str) -> Option<String> {
    if got.len() != LEN {
        return Some(format!("{who}: read {} bytes", got.len()));
    }
    let (at, &old) = got
        .iter()
        .enumerate()
        .find(|&(_, &b)| u64::from(b) < floor)?;
    Some(format!(
        "{who}: byte {at} is of generation {old} after generation {floor} completed"
    ))
}

#[test]
fn no_read_returns_bytes_older_than_a_completed_direct_write() {
    let Some(m) = Mount::new("direct") else {
        return;
    };
    let path = m.p("f");
    std::fs::write(&path, vec![0u8; LEN]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    // Reads made by both readers, so that the writer lets at least one
    // happen after each write whatever the machine's load.
    let reads_made = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    // One reader opens, reads and closes in a loop (each open may be told
    // to keep the cache), one keeps its handle open and reads through it
    // (the kernel's pages outlive every other handle's close).
    for keep_open in [false, true] {
        let (path, done, completed) = (path.clone(), done.clone(), completed.clone());
        let reads_made = reads_made.clone();
        readers.push(thread::spawn(move || {
            let held = File::open(&path).unwrap();
            let mut reads = 0u64;
            while !done.load(Ordering::SeqCst) {
                let floor = completed.load(Ordering::SeqCst);
                let mut got = vec![0u8; LEN];
                let n = if keep_open {
                    held.read_at(&mut got, 0).unwrap()
                } else {
                    File::open(&path).unwrap().read_at(&mut got, 0).unwrap()
                };
                got.truncate(n);
                reads += 1;
                reads_made.fetch_add(1, Ordering::SeqCst);
                let who = if keep_open {
                    "held reader"
                } else {
                    "reopening reader"
                };
                if let Some(e) = stale(&got, floor, who) {
                    return Err(e);
                }
            }
            Ok(reads)
        }));
    }
    let aio = Aio::new();
    let mut buf = Aligned::new(LEN);
    let direct = |_: ()| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap()
    };
    let mut dio = direct(());
    for g in 1..=240u8 {
        buf.buf().fill(g);
        match g % 6 {
            // Mostly asynchronous direct writes (the case the kernel leaves
            // to the daemon), some synchronous, some buffered.
            0 => dio.write_all_at(buf.buf(), 0).unwrap(),
            3 => OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .write_all_at(buf.buf(), 0)
                .unwrap(),
            _ => assert_eq!(aio.pwrite(&dio, buf.buf(), 0), LEN as i64),
        }
        completed.store(u64::from(g), Ordering::SeqCst);
        // A read after this write before the next one (bounded: a reader
        // that failed has stopped reading, and its error is reported below).
        let seen = reads_made.load(Ordering::SeqCst);
        let waited = std::time::Instant::now();
        while reads_made.load(Ordering::SeqCst) <= seen
            && waited.elapsed() < std::time::Duration::from_secs(5)
        {
            thread::sleep(std::time::Duration::from_millis(1));
        }
        if g % 40 == 0 {
            // A release of the direct handle while the readers go on.
            dio = direct(());
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut total = 0;
    for r in readers {
        match r.join().unwrap() {
            Ok(n) => total += n,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(total > 50, "only {total} reads alongside the writes");
    drop(dio);
    // And after every handle is closed, a fresh open reads the last write.
    let got = std::fs::read(&path).unwrap();
    assert_eq!(stale(&got, 240, "last read"), None);
}

/// Four writers of one file, each rewriting its own 256 KiB with O_DIRECT
/// (the kernel sends their WRITEs one at a time, under the inode's lock),
/// while two readers read the whole file with O_DIRECT (every READ reaches
/// the daemon, beside the WRITEs): no read fails (a block written half-way
/// would not authenticate: EIO) and every block read is whole, of one
/// generation of its writer; after a remount each region holds its writer's
/// last generation.
#[test]
fn parallel_direct_writers_of_one_file_never_tear_a_block() {
    const WRITERS: usize = 4;
    const GENERATIONS: u8 = 40;
    let Some(mut m) = Mount::new("direct-parallel") else {
        return;
    };
    let path = m.p("shared");
    let region = LEN;
    std::fs::write(&path, vec![0u8; WRITERS * region]).unwrap();
    // Block b of writer w in generation g: every byte is tag(w, g).
    let tag = |w: usize, g: u8| (w as u8) << 6 | g;
    let open = |path: &std::path::Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap()
    };
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, done) = (path.clone(), done.clone());
            thread::spawn(move || {
                let f = open(&path);
                let mut buf = Aligned::new(LEN);
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    for w in 0..WRITERS {
                        let n = f
                            .read_at(buf.buf(), (w * LEN) as u64)
                            .map_err(|e| format!("read of region {w}: {e}"))?;
                        assert_eq!(n, LEN);
                        for (b, block) in buf.buf().chunks(BLOCK).enumerate() {
                            let first = block[0];
                            let whole = block.iter().all(|&x| x == first);
                            let own = first == 0 || usize::from(first >> 6) == w;
                            if !whole || !own {
                                return Err(format!("region {w} block {b}: torn or foreign"));
                            }
                        }
                        reads += 1;
                    }
                }
                Ok(reads)
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let path = path.clone();
            thread::spawn(move || {
                let f = open(&path);
                let mut buf = Aligned::new(LEN);
                for g in 1..=GENERATIONS {
                    buf.buf().fill(tag(w, g));
                    f.write_all_at(buf.buf(), (w * LEN) as u64).unwrap();
                }
            })
        })
        .collect();
    for h in writers {
        h.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        match r.join().unwrap() {
            Ok(n) => assert!(n > 0, "a reader read nothing"),
            Err(e) => panic!("{e}"),
        }
    }
    m.unmount();
    m.mount();
    let got = std::fs::read(&path).unwrap();
    for w in 0..WRITERS {
        let want = tag(w, GENERATIONS);
        assert!(
            got[w * LEN..(w + 1) * LEN].iter().all(|&x| x == want),
            "region {w} after a remount"
        );
    }
}
