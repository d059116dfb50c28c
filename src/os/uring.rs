//! FUSE over io_uring (Linux 6.14; Documentation/filesystems/fuse-io-uring.rst,
//! fs/fuse/dev_uring.c): the kernel hands requests to ring entries the daemon
//! registered, and takes each reply with the command that fetches the next
//! request, instead of a read(2) and a write(2) on /dev/fuse per request.
//!
//! The kernel keeps one queue per possible CPU and puts a request on the
//! queue of the CPU its caller runs on; the ring is used only once every
//! queue has an entry. Here each queue has `per_queue` threads, each with an
//! io_uring of its own (the kernel completes an entry in the task that
//! submitted it), pinned to the queue's CPU, and `ENTRIES` entries: one buffer per entry, the 288-byte
//! `fuse_uring_req_header` and the payload after it. FORGET, INTERRUPT and
//! notifications stay on /dev/fuse (fuser's threads).
//!
//! A request is dispatched from its entry's memory (the header moved in
//! front of the payload, as /dev/fuse would have given it); its reply,
//! written now or later from any thread, is kept aside and copied into the
//! entry by the entry's thread, which commits it with the next fetch.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// The reply function fuser's dispatch calls with the iovecs it would write
/// to /dev/fuse (`fuse_out_header` first).
pub(crate) type ReplyFn = Arc<dyn Fn(&[IoSlice<'_>]) -> io::Result<()> + Send + Sync>;
/// Dispatches one request (as read from /dev/fuse, 8-byte aligned) with the
/// function its reply goes to; false when it is not a request.
pub(crate) type DispatchFn = Arc<dyn Fn(&[u8], ReplyFn) -> bool + Send + Sync>;

const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: in_out[128], op_in[128], ring_ent_in_out[32].
const HEADER: usize = 288;
const OP_IN: usize = 128;
const ENT_COMMIT_ID: usize = 264;
const ENT_PAYLOAD_SZ: usize = 272;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// Entries per thread: a second one takes a request while the first waits
/// for a reply given on another thread.
const ENTRIES: usize = 2;
const EVENT: u64 = u64::MAX;

/// Requests served through the rings of this process.
static SERVED: AtomicU64 = AtomicU64::new(0);
/// Set once a registration was refused (logged once).
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Requests the rings have served so far.
pub(crate) fn served() -> u64 {
    SERVED.load(Ordering::Relaxed)
}

/// The kernel's queue count: one per possible CPU (`num_possible_cpus()`).
pub(crate) fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.parse()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?,
            b.parse()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?,
        );
        n += b.saturating_sub(a) + 1;
    }
    Ok(n.max(1))
}

/// The rings, made before the INIT reply asks the kernel for the transport
/// (so that a kernel or a sysctl that refuses io_uring is known while the
/// mount can still go without it).
pub(crate) struct Rings {
    rings: Vec<(usize, IoUring<squeue::Entry128, cqueue::Entry>)>,
    payload: usize,
}

impl Rings {
    /// `per_queue` rings for each of the kernel's queues, each entry with a
    /// payload buffer of `payload` bytes (at least the kernel's
    /// max(max_write, max_pages * PAGE_SIZE)).
    pub(crate) fn new(per_queue: usize, payload: usize) -> io::Result<Rings> {
        let queues = possible_cpus()?;
        let mut rings = Vec::with_capacity(queues * per_queue);
        for qid in 0..queues {
            for _ in 0..per_queue.max(1) {
                let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                    .build((ENTRIES as u32 + 1).next_power_of_two())?;
                rings.push((qid, ring));
            }
        }
        Ok(Rings { rings, payload })
    }

    /// Queues and threads, for the log.
    pub(crate) fn shape(&self) -> (usize, usize) {
        let queues = self.rings.iter().map(|r| r.0).max().map_or(0, |q| q + 1);
        (queues, self.rings.len())
    }

    /// Registers every entry with the connection of `dev` (a /dev/fuse
    /// descriptor whose INIT reply asked for FUSE_OVER_IO_URING) and serves
    /// them, a thread per ring, until the kernel ends them (unmount, abort).
    pub(crate) fn serve(self, dev: RawFd, dispatch: DispatchFn) -> io::Result<Vec<JoinHandle<()>>> {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller holds open;
        // the result, when not negative, is a new descriptor we own.
        let fd = unsafe { libc::fcntl(dev, libc::F_DUPFD_CLOEXEC, 0) };
        super::check(fd)?;
        // SAFETY: fd was just returned by fcntl and nothing else owns it.
        let dev = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut handles = Vec::with_capacity(self.rings.len());
        for (i, (qid, ring)) in self.rings.into_iter().enumerate() {
            let spawned = Queue::new(ring, qid, self.payload, dev.clone(), dispatch.clone())
                .and_then(|q| {
                    std::thread::Builder::new()
                        .name(format!("kmsfs-uring-{i}"))
                        .spawn(move || q.run())
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    refuse_transport(dev.as_raw_fd());
                    log::warn!("FUSE over io_uring: no thread for queue {qid}: {e}");
                    return Ok(handles);
                }
            }
        }
        Ok(handles)
    }
}

/// Runs the calling thread on CPU `cpu` only. The kernel gives a request to
/// the queue of the CPU its caller runs on (`fuse_uring_task_to_queue()`,
/// fs/fuse/dev_uring.c: `qid = task_cpu(current)`) and hands it to the
/// thread that submitted the queue's entry (`io_uring_cmd_complete_in_task`):
/// pinned, that thread serves it on the CPU where the caller waits, without
/// a wake-up across CPUs (libfuse pins its ring threads the same way).
fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data, valid when zeroed; CPU_SET writes
    // bit `cpu` within it (checked above against CPU_SETSIZE);
    // sched_setaffinity(0, ..) reads the set and applies it to the calling
    // thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    super::check(rc)
}

/// Makes the kernel give up the transport when a queue will have no entry
/// (the kernel would otherwise hold every request until each queue has
/// one): a REGISTER for a queue that does not exist fails with EINVAL, and
/// the kernel then clears `fc->io_uring` and serves through /dev/fuse
/// (fuse_uring_cmd(), fs/fuse/dev_uring.c).
fn refuse_transport(dev: RawFd) {
    let tried = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .build(2)
        .and_then(|mut ring| {
            let mut cmd = [0u8; 80];
            cmd[16..18].copy_from_slice(&u16::MAX.to_ne_bytes());
            let e = opcode::UringCmd80::new(types::Fd(dev), FUSE_IO_URING_CMD_REGISTER)
                .cmd(cmd)
                .build();
            // SAFETY: the entry points to no memory (addr 0: the kernel
            // refuses the queue id before it reads any iovec).
            unsafe { ring.submission().push(&e) }
                .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
            ring.submit_and_wait(1)
        });
    log::warn!("FUSE over io_uring given up: serving through /dev/fuse ({tried:?})");
}

/// One entry's memory: header then payload, 8-byte aligned.
struct Buffer {
    words: Vec<u64>,
    /// The two `struct iovec`s (base, length) the kernel reads at REGISTER.
    iov: Box<[usize; 4]>,
}

impl Buffer {
    fn new(payload: usize) -> Buffer {
        let mut words = vec![0u64; (HEADER + payload).div_ceil(8)];
        // A Vec's buffer stays where it is while the Vec lives unresized.
        let base = words.as_mut_ptr() as usize;
        let iov = Box::new([base, HEADER, base + HEADER, payload]);
        Buffer { words, iov }
    }

    fn bytes(&mut self) -> &mut [u8] {
        let len = self.words.len() * 8;
        // SAFETY: the Vec<u64> owns len bytes, any byte pattern is a valid
        // u8, and the borrow of self keeps them exclusive for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// What the entries of one thread share with the reply functions.
struct Shared {
    /// Replies given, by entry, waiting to be committed.
    done: Mutex<Vec<(usize, Vec<u8>)>>,
    /// Written when a reply is given on another thread.
    event: OwnedFd,
    owner: std::thread::ThreadId,
}

struct Queue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    qid: u16,
    dev: Arc<OwnedFd>,
    dispatch: DispatchFn,
    entries: Vec<Buffer>,
    /// The commit id of the request each entry holds.
    commit: Vec<u64>,
    alive: Vec<bool>,
    /// The REGISTER commands went to the kernel.
    registered: bool,
    shared: Option<Arc<Shared>>,
    payload: usize,
    event_buf: Box<u64>,
    scratch: Vec<u64>,
}

impl Queue {
    fn new(
        ring: IoUring<squeue::Entry128, cqueue::Entry>,
        qid: usize,
        payload: usize,
        dev: Arc<OwnedFd>,
        dispatch: DispatchFn,
    ) -> io::Result<Queue> {
        Ok(Queue {
            ring,
            qid: u16::try_from(qid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            dev,
            dispatch,
            entries: (0..ENTRIES).map(|_| Buffer::new(payload)).collect(),
            commit: vec![0; ENTRIES],
            alive: vec![true; ENTRIES],
            registered: false,
            shared: None,
            payload,
            event_buf: Box::new(0),
            scratch: Vec::new(),
        })
    }

    /// The 128-byte command: `struct fuse_uring_cmd_req` in the SQE's cmd
    /// area, the entry's iovecs in addr/len (len = 2 only matters, and is
    /// only read, for REGISTER).
    fn sqe(&self, i: usize, op: u32) -> squeue::Entry128 {
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&self.commit[i].to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let e = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), op)
            .cmd(cmd)
            .addr(Some(self.entries[i].iov.as_ptr() as u64))
            .build()
            .user_data(i as u64);
        // SAFETY: Entry128 is #[repr(C)] over the kernel's 128-byte
        // io_uring_sqe (size asserted by io-uring's own tests); bytes 24..28
        // are the sqe's `len` (u32), which UringCmd80 has no setter for.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: the same layout back; every byte pattern of an sqe is a
        // plain-data value for the type.
        unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
    }

    fn push(&mut self, e: squeue::Entry128) -> io::Result<()> {
        loop {
            // SAFETY: every buffer the entry points to (the iovecs and the
            // entry's memory, the eventfd's u64) lives in self until the
            // ring is dropped, after which the kernel no longer uses them.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_event(&mut self) -> io::Result<()> {
        let Some(sh) = &self.shared else {
            return Ok(());
        };
        let buf: *mut u64 = &mut *self.event_buf;
        let e = opcode::Read::new(types::Fd(sh.event.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(EVENT);
        self.push(squeue::Entry128::from(e))
    }

    fn run(mut self) {
        if let Err(e) = pin_to_cpu(usize::from(self.qid)) {
            // Another CPU than the queue's (an offline CPU, a cpuset that
            // leaves it out): served as before, with a cross-CPU wake-up.
            log::debug!(
                "FUSE over io_uring queue {}: not pinned to its CPU: {e}",
                self.qid
            );
        }
        if let Err(e) = self.serve() {
            log::warn!("FUSE over io_uring queue {} ended: {e}", self.qid);
            if !self.registered {
                refuse_transport(self.dev.as_raw_fd());
            } else if self.alive.iter().any(|a| *a) {
                // The kernel may still write requests into entries it has
                // not given back: their memory must outlive this thread.
                std::mem::forget(std::mem::take(&mut self.entries));
            }
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        // SAFETY: eventfd(2) with flags only; a non-negative result is a
        // new descriptor we own.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        super::check(efd)?;
        self.shared = Some(Arc::new(Shared {
            done: Mutex::new(Vec::new()),
            // SAFETY: efd was just returned by eventfd and nothing else owns it.
            event: unsafe { OwnedFd::from_raw_fd(efd) },
            owner: std::thread::current().id(),
        }));
        for i in 0..ENTRIES {
            let e = self.sqe(i, FUSE_IO_URING_CMD_REGISTER);
            self.push(e)?;
        }
        self.ring.submit()?;
        self.registered = true;
        self.arm_event()?;
        while self.alive.iter().any(|a| *a) {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            let cqes: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (ud, res) in cqes {
                if ud == EVENT {
                    self.arm_event()?;
                } else if let Ok(i) = usize::try_from(ud)
                    && i < ENTRIES
                {
                    if res < 0 {
                        self.alive[i] = false;
                        ended(self.qid, -res);
                    } else {
                        self.request(i);
                    }
                }
            }
            self.commit_done()?;
        }
        Ok(())
    }

    /// The request in entry `i`, dispatched from the entry's memory.
    fn request(&mut self, i: usize) {
        SERVED.fetch_add(1, Ordering::Relaxed);
        let Some(sh) = self.shared.clone() else {
            return;
        };
        let b = self.entries[i].bytes();
        let word = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let commit = word(ENT_COMMIT_ID);
        let payload = (word(ENT_PAYLOAD_SZ) & 0xffff_ffff) as usize;
        let total = u32::from_ne_bytes(b[0..4].try_into().unwrap_or([0; 4])) as usize;
        let unique = word(8);
        let op_len = total
            .checked_sub(IN_HEADER + payload)
            .filter(|n| *n <= OP_IN);
        self.commit[i] = commit;
        let reply = reply_fn(sh.clone(), i);
        let Some(op_len) = op_len.filter(|_| payload <= self.payload) else {
            log::warn!("FUSE over io_uring: malformed request (length {total}, payload {payload})");
            push_error(&sh, i, unique, libc::EIO);
            return;
        };
        let start = HEADER - op_len - IN_HEADER;
        let ok = if op_len % 8 == 0 {
            // The header and the operation's own header moved in front of
            // the payload: the request as /dev/fuse gives it, in place.
            b.copy_within(OP_IN..OP_IN + op_len, HEADER - op_len);
            b.copy_within(0..IN_HEADER, start);
            (self.dispatch)(&b[start..HEADER + payload], reply)
        } else {
            let words = total.div_ceil(8);
            self.scratch.clear();
            self.scratch.resize(words, 0);
            // SAFETY: scratch owns `words` u64s, at least total bytes.
            let s = unsafe {
                std::slice::from_raw_parts_mut(self.scratch.as_mut_ptr().cast::<u8>(), total)
            };
            s[..IN_HEADER].copy_from_slice(&b[..IN_HEADER]);
            s[IN_HEADER..IN_HEADER + op_len].copy_from_slice(&b[OP_IN..OP_IN + op_len]);
            s[IN_HEADER + op_len..].copy_from_slice(&b[HEADER..HEADER + payload]);
            (self.dispatch)(s, reply)
        };
        if !ok {
            push_error(&sh, i, unique, libc::EIO);
        }
    }

    /// Copies the replies given into their entries and commits them, each
    /// with the fetch of the entry's next request.
    fn commit_done(&mut self) -> io::Result<()> {
        let Some(sh) = self.shared.clone() else {
            return Ok(());
        };
        let done = std::mem::take(&mut *sh.done.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, r) in done {
            if !self.alive[i] || r.len() < OUT_HEADER {
                continue;
            }
            let cap = self.payload;
            let b = self.entries[i].bytes();
            let body = &r[OUT_HEADER..];
            b[..OUT_HEADER].copy_from_slice(&r[..OUT_HEADER]);
            let n = if body.len() > cap {
                // Cannot be: replies are bounded by the request's size.
                b[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
                0
            } else {
                b[HEADER..HEADER + body.len()].copy_from_slice(body);
                body.len()
            };
            b[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&(n as u32).to_ne_bytes());
            let e = self.sqe(i, FUSE_IO_URING_CMD_COMMIT_AND_FETCH);
            self.push(e)?;
        }
        Ok(())
    }
}

/// The end of an entry: the connection's end, or the kernel's refusal.
fn ended(qid: u16, errno: i32) {
    let err = io::Error::from_raw_os_error(errno);
    if matches!(errno, libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED) {
        log::debug!("FUSE over io_uring queue {qid}: {err}");
    } else if !REFUSED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "the kernel refused a FUSE io_uring entry (queue {qid}): {err} (errno {errno}); \
             serving through /dev/fuse"
        );
    }
}

/// The reply function of entry `i`: the reply is kept for the entry's
/// thread, woken through the eventfd when given on another thread.
fn reply_fn(sh: Arc<Shared>, i: usize) -> ReplyFn {
    Arc::new(move |bufs: &[IoSlice<'_>]| {
        let mut r = Vec::with_capacity(bufs.iter().map(|b| b.len()).sum());
        for b in bufs {
            r.extend_from_slice(b);
        }
        sh.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((i, r));
        if std::thread::current().id() != sh.owner {
            let one = 1u64.to_ne_bytes();
            // SAFETY: write(2) of 8 bytes from a live buffer to our eventfd.
            let rc = unsafe { libc::write(sh.event.as_raw_fd(), one.as_ptr().cast(), 8) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })
}

/// An error reply for entry `i`, for a request fuser could not take.
fn push_error(sh: &Shared, i: usize, unique: u64, errno: i32) {
    let mut r = Vec::with_capacity(OUT_HEADER);
    r.extend_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
    r.extend_from_slice(&(-errno).to_ne_bytes());
    r.extend_from_slice(&unique.to_ne_bytes());
    sh.done
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((i, r));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_kernel() {
        // struct fuse_uring_req_header: in_out[128], op_in[128], then
        // fuse_uring_ent_in_out { flags, commit_id, payload_sz, padding, reserved }.
        assert_eq!(HEADER, 128 + 128 + 32);
        assert_eq!(ENT_COMMIT_ID, 256 + 8);
        assert_eq!(ENT_PAYLOAD_SZ, 256 + 16);
        assert!(possible_cpus().is_ok_and(|n| n >= 1));
    }

    #[test]
    fn a_thread_pinned_to_cpu_0_runs_there_only() {
        let allowed = std::thread::spawn(|| {
            pin_to_cpu(0).unwrap();
            // SAFETY (test): reads the calling thread's mask into a zeroed set.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::cpu_set_t>();
            // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
            assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut set) }, 0);
            // SAFETY: CPU_COUNT and CPU_ISSET read the set.
            unsafe { (libc::CPU_COUNT(&set), libc::CPU_ISSET(0, &set)) }
        })
        .join()
        .unwrap();
        assert_eq!(allowed, (1, true));
        assert!(pin_to_cpu(libc::CPU_SETSIZE as usize).is_err());
    }
}
