//! Eight processes write overlapping and disjoint ranges of shared files,
//! with fsync and truncate mixed in, while readers read alongside: on the
//! mount and on a plain directory with the same seed. The final bytes must be
//! identical (and equal to a model), on the mount both before and after a
//! remount; the readers must never see an error (an authentication failure
//! would be EIO).
//!
//! Why the result is deterministic although the processes interleave freely:
//! the work runs in phases separated by barriers (the parent waits for every
//! worker to finish a phase). In each phase, for each file,
//! - every byte range of the file belongs either to one worker (only it
//!   writes there, in its own order) or to everyone (every worker writes the
//!   same value there: a function of seed, phase, file and offset);
//! - all writes lie below the phase's length L of that file, and one worker
//!   truncates the file to L at some point of its run. Writes below L and a
//!   truncate to L commute (growing fills zeros, shrinking cuts only bytes
//!   at L and beyond), and fsync changes no bytes.
//!
//! The ranges are a few hundred bytes to 20 KB, not aligned to blocks: one
//! 4 KiB block holds ranges of several workers, so the daemon's
//! read-modify-write of a block races with writes to the rest of it.
//!
//! Workers are this test binary run again (`concurrency_worker`, ignored in
//! normal runs); they read `phase K` lines and answer `@done K`.
//! KMSFS_CONCURRENCY_PHASES (default 6) and KMSFS_CONCURRENCY_SEED make the
//! longer variant: e.g. 300 phases run for minutes.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Mount, Rng};

const WORKERS: usize = 8;
const FILES: usize = 3;
/// Largest file length.
const MAX_LEN: u64 = 192 * 1024;
/// Operations per worker and phase.
const OPS: usize = 30;
/// How long a phase may take before the test calls it a hang.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

const ENV_WORKER: &str = "KMSFS_CONC_WORKER";
const ENV_DIR: &str = "KMSFS_CONC_DIR";
const ENV_SEED: &str = "KMSFS_CONC_SEED";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: a hash of a few numbers.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn rng_for(seed: u64, parts: &[u64]) -> Rng {
    Rng::new(parts.iter().fold(mix(seed), |h, p| mix(h ^ p)))
}

/// Who may write a range of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Worker(usize),
    Everyone,
}

/// A file's ranges, fixed for the whole run: segments of workers 0..7 and a
/// shared one, in turn, of random lengths.
fn layout(seed: u64, file: usize) -> Vec<(u64, u64, Owner)> {
    let mut rng = rng_for(seed, &[1, file as u64]);
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < MAX_LEN {
        let owner = match i % (WORKERS + 1) {
            w if w < WORKERS => Owner::Worker(w),
            _ => Owner::Everyone,
        };
        let len = match owner {
            Owner::Worker(_) => 200 + rng.below(5000),
            Owner::Everyone => 100 + rng.below(20_000),
        };
        let end = (at + len).min(MAX_LEN);
        out.push((at, end, owner));
        at = end;
        i += 1;
    }
    out
}

/// The length file `file` is truncated to in phase `phase`.
fn phase_len(seed: u64, phase: u64, file: usize) -> u64 {
    let mut rng = rng_for(seed, &[2, phase, file as u64]);
    MAX_LEN / 4 + rng.below(MAX_LEN * 3 / 4 + 1)
}

/// What every worker writes at `offset` in `phase`.
fn shared_byte(seed: u64, phase: u64, file: usize, offset: u64) -> u8 {
    (mix(seed ^ (phase << 40) ^ ((file as u64) << 36) ^ offset) >> 32) as u8
}

#[derive(Debug, Clone)]
enum Op {
    /// Write `data` at `offset`; through a fresh descriptor if `fresh`.
    Write {
        file: usize,
        offset: u64,
        data: Vec<u8>,
        fresh: bool,
    },
    Fsync {
        file: usize,
        data_only: bool,
    },
    /// Truncate to the phase's length; through a fresh descriptor if `fresh`.
    Truncate {
        file: usize,
        len: u64,
        fresh: bool,
    },
}

/// Worker `w`'s operations in `phase`, in its order.
fn ops(seed: u64, phase: u64, w: usize) -> Vec<Op> {
    let mut rng = rng_for(seed, &[3, phase, w as u64]);
    let mut out = Vec::new();
    for _ in 0..OPS {
        let file = rng.below(FILES as u64) as usize;
        let len = phase_len(seed, phase, file);
        let r = rng.below(100);
        if r >= 88 {
            out.push(Op::Fsync {
                file,
                data_only: r >= 94,
            });
            continue;
        }
        let want = if r < 55 {
            Owner::Worker(w)
        } else {
            Owner::Everyone
        };
        let segs: Vec<(u64, u64)> = layout(seed, file)
            .into_iter()
            .filter(|&(s, _, o)| o == want && s < len)
            .map(|(s, e, _)| (s, e.min(len)))
            .collect();
        if segs.is_empty() {
            continue;
        }
        let (s, e) = segs[rng.below(segs.len() as u64) as usize];
        let a = s + rng.below(e - s);
        let b = a + 1 + rng.below(e - a);
        let data = match want {
            Owner::Worker(_) => rng.bytes((b - a) as usize),
            Owner::Everyone => (a..b).map(|o| shared_byte(seed, phase, file, o)).collect(),
        };
        out.push(Op::Write {
            file,
            offset: a,
            data,
            fresh: rng.below(5) == 0,
        });
    }
    // The worker in charge of a file truncates it once, somewhere in its run.
    for file in 0..FILES {
        if (phase as usize + file) % WORKERS == w {
            let at = rng.below(out.len() as u64 + 1) as usize;
            let op = Op::Truncate {
                file,
                len: phase_len(seed, phase, file),
                fresh: rng.below(2) == 0,
            };
            out.insert(at, op);
        }
    }
    out
}

/// The final bytes of every file: the phases' operations applied in order.
fn model(seed: u64, phases: u64) -> Vec<Vec<u8>> {
    let mut files = vec![Vec::new(); FILES];
    for phase in 0..phases {
        for w in 0..WORKERS {
            for op in ops(seed, phase, w) {
                match op {
                    Op::Write {
                        file, offset, data, ..
                    } => {
                        let f: &mut Vec<u8> = &mut files[file];
                        let end = offset as usize + data.len();
                        if f.len() < end {
                            f.resize(end, 0);
                        }
                        f[offset as usize..end].copy_from_slice(&data);
                    }
                    Op::Truncate { file, len, .. } => files[file].resize(len as usize, 0),
                    Op::Fsync { .. } => {}
                }
            }
        }
    }
    files
}

fn file_name(i: usize) -> String {
    format!("shared{i}")
}

fn open_rw(dir: &Path, i: usize) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(file_name(i)))
}

fn apply(dir: &Path, held: &[File], op: &Op) -> std::io::Result<()> {
    match op {
        Op::Write {
            file,
            offset,
            data,
            fresh,
        } => {
            if *fresh {
                let f = open_rw(dir, *file)?;
                f.write_all_at(data, *offset)
                // Closing flushes it.
            } else {
                held[*file].write_all_at(data, *offset)
            }
        }
        Op::Fsync { file, data_only } => {
            if *data_only {
                held[*file].sync_data()
            } else {
                held[*file].sync_all()
            }
        }
        Op::Truncate { file, len, fresh } => {
            if *fresh {
                open_rw(dir, *file)?.set_len(*len)
            } else {
                held[*file].set_len(*len)
            }
        }
    }
}

/// The worker process: `phase K` lines in, `@done K` (or `@error K why`) out.
#[test]
#[ignore = "a worker process of eight_processes_write_shared_files_like_a_plain_directory, started by it"]
fn concurrency_worker() {
    let Ok(id) = std::env::var(ENV_WORKER) else {
        eprintln!("concurrency_worker runs only as a worker process of this file's test");
        return;
    };
    let w: usize = id.parse().expect("worker id");
    let dir = PathBuf::from(std::env::var(ENV_DIR).expect("worker dir"));
    let seed = env_u64(ENV_SEED, 0);
    let held: Vec<File> = (0..FILES)
        .map(|i| open_rw(&dir, i).expect("open shared file"))
        .collect();
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("read command");
        let Some(k) = line.strip_prefix("phase ") else {
            break;
        };
        let phase: u64 = k.parse().expect("phase number");
        let mut answer = format!("@done {phase}");
        for (n, op) in ops(seed, phase, w).iter().enumerate() {
            if let Err(e) = apply(&dir, &held, op) {
                answer = format!("@error {phase} worker {w} op {n} {op:?}: {e}")
                    .chars()
                    .take(300)
                    .collect();
                break;
            }
        }
        writeln!(out, "{answer}").expect("answer");
        out.flush().expect("flush");
    }
}

/// The worker processes of one run; killed on drop.
struct Workers {
    children: Vec<Child>,
    answers: mpsc::Receiver<(usize, String)>,
}

impl Workers {
    fn start(dir: &Path, seed: u64) -> Self {
        let exe = std::env::current_exe().expect("test binary");
        let (tx, answers) = mpsc::channel();
        let mut children = Vec::new();
        for w in 0..WORKERS {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "concurrency_worker",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                    "-q",
                ])
                .env(ENV_WORKER, w.to_string())
                .env(ENV_DIR, dir)
                .env(ENV_SEED, seed.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start worker");
            let stdout = child.stdout.take().expect("worker stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with('@') && tx.send((w, line)).is_err() {
                        break;
                    }
                }
                let _ = tx.send((w, "@exit".into()));
            });
            children.push(child);
        }
        Self { children, answers }
    }

    /// Runs one phase in every worker and waits for all of them.
    fn phase(&mut self, phase: u64) {
        for c in &mut self.children {
            let stdin = c.stdin.as_mut().expect("worker stdin");
            writeln!(stdin, "phase {phase}").expect("send phase");
            stdin.flush().expect("flush");
        }
        let want = format!("@done {phase}");
        let mut done = 0;
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while done < WORKERS {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok((_, a)) if a == want => done += 1,
                Ok((w, a)) => panic!("worker {w} in phase {phase}: {a}"),
                Err(_) => panic!("phase {phase} did not finish within {PHASE_TIMEOUT:?}: a hang"),
            }
        }
    }

    fn finish(mut self) {
        for c in &mut self.children {
            drop(c.stdin.take());
        }
        for c in &mut self.children {
            let st = c.wait().expect("wait for worker");
            assert!(st.success(), "a worker exited with {st}");
        }
        self.children.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Readers alongside the writers: open, read, fstat shared files until told
/// to stop; every error is kept.
struct Readers {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Readers {
    fn start(dir: &Path, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let threads = (0..2u64)
            .map(|r| {
                let (dir, stop, reads) = (dir.to_path_buf(), stop.clone(), reads.clone());
                std::thread::spawn(move || {
                    let mut rng = rng_for(seed, &[4, r]);
                    let mut errors = Vec::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    while !stop.load(Ordering::Relaxed) && errors.len() < 10 {
                        let i = rng.below(FILES as u64) as usize;
                        let f = match File::open(dir.join(file_name(i))) {
                            Ok(f) => f,
                            Err(e) => {
                                errors.push(format!("open {}: {e}", file_name(i)));
                                continue;
                            }
                        };
                        for _ in 0..8 {
                            let off = rng.below(MAX_LEN);
                            let len = 1 + rng.below(buf.len() as u64) as usize;
                            match f.read_at(&mut buf[..len], off).and_then(|_| f.metadata()) {
                                Ok(_) => {
                                    reads.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => errors.push(format!(
                                    "read {} at {off}+{len}: {e} (errno {:?})",
                                    file_name(i),
                                    e.raw_os_error()
                                )),
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Self {
            stop,
            reads,
            threads,
        }
    }

    /// Stops them; returns their reads and errors.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("reader thread"))
            .collect();
        (self.reads.load(Ordering::Relaxed), errors)
    }
}

/// Runs every phase in `dir`; returns the readers' count of reads.
fn run(dir: &Path, seed: u64, phases: u64, what: &str) -> u64 {
    for i in 0..FILES {
        File::create(dir.join(file_name(i))).expect("create shared file");
    }
    let readers = Readers::start(dir, seed);
    let mut workers = Workers::start(dir, seed);
    for phase in 0..phases {
        workers.phase(phase);
    }
    workers.finish();
    let (reads, errors) = readers.finish();
    assert!(
        errors.is_empty(),
        "readers on {what} saw errors while the writers ran: {errors:#?}"
    );
    reads
}

/// Panics, naming the first differing byte and who wrote there, unless
/// every file in `dir` holds exactly `want`.
fn compare(dir: &Path, want: &[Vec<u8>], seed: u64, what: &str) {
    for (i, w) in want.iter().enumerate() {
        let got = std::fs::read(dir.join(file_name(i))).expect("read shared file");
        if got == *w {
            continue;
        }
        let at = got.iter().zip(w).position(|(a, b)| a != b);
        let owner = at.and_then(|at| {
            layout(seed, i)
                .into_iter()
                .find(|&(s, e, _)| (s..e).contains(&(at as u64)))
        });
        panic!(
            "{what}: {} has {} bytes, expected {}; first difference at {at:?} in range {owner:?}",
            file_name(i),
            got.len(),
            w.len()
        );
    }
}

#[test]
fn eight_processes_write_shared_files_like_a_plain_directory() {
    let Some(mut m) = Mount::new("concurrency") else {
        return;
    };
    let seed = env_u64("KMSFS_CONCURRENCY_SEED", 0xc0c0_2024);
    let phases = env_u64("KMSFS_CONCURRENCY_PHASES", 6);
    let want = model(seed, phases);

    let plain = m.tmp.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir plain");
    let t0 = Instant::now();
    run(&plain, seed, phases, "the plain directory");
    let plain_time = t0.elapsed();
    // A failure here is a fault of this test's design, not of kmsfs.
    compare(&plain, &want, seed, "plain directory vs model");

    let t0 = Instant::now();
    let reads = run(&m.mnt, seed, phases, "the mount");
    let mount_time = t0.elapsed();
    compare(&m.mnt, &want, seed, "mount vs plain directory");
    m.remount();
    compare(
        &m.mnt,
        &want,
        seed,
        "mount after remount vs plain directory",
    );

    let written: usize = (0..phases)
        .flat_map(|p| (0..WORKERS).flat_map(move |w| ops(seed, p, w)))
        .map(|op| match op {
            Op::Write { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    eprintln!(
        "concurrency: seed {seed}, {phases} phases, {WORKERS} writer processes, {} ops, {:.1} MB \
         written; mount {mount_time:.2?} (plain {plain_time:.2?}); {reads} reads alongside, no error; \
         final files of {:?} bytes identical on the mount, after a remount and on the plain directory",
        phases as usize * WORKERS * OPS,
        written as f64 / 1e6,
        want.iter().map(Vec::len).collect::<Vec<_>>()
    );
}
