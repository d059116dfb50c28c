//! Serving a mount: the filesystem is built, mounted (by mount(2) as root,
//! else through fuser) and served until unmounted, while a signal thread
//! turns SIGINT/SIGTERM/SIGHUP into a clean unmount.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::control::{self, CountingService, MountState};
use super::options::{Options, parse_options};
use super::{MountError, Serving, TTL};
use crate::fs::{FsConfig, HandleLimits, KmsFs, MountFlag, Session};
use crate::logtext::escaped;
use crate::os;

/// Mounts and performs the FUSE handshake. As root we call mount(2) ourselves
/// (type `fuse.kmsfs`) and hand fuser the connection, so that fuser never
/// unmounts on its own: its drop-time unmount could hit a newer mount at the
/// same place. Otherwise (or with auto_unmount) fuser mounts via fusermount3.
#[allow(clippy::disallowed_methods)] // the mount point the user named, used as given
fn new_session(fs: KmsFs, req: &Serving, o: &Options) -> std::io::Result<Session> {
    let cfg = o.session_config(&req.backing);
    if !os::ids::is_root() || o.has(&MountFlag::AutoUnmount) {
        return Session::mount(fs, &req.mountpoint, &cfg);
    }
    let fd = os::mount::open_dev_fuse()?;
    let rootmode =
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&req.mountpoint)?) & libc::S_IFMT;
    let (flags, data, fstype) = o.kernel_mount_args(std::os::fd::AsRawFd::as_raw_fd(&fd), rootmode);
    os::mount::mount(
        &o.source_name(&req.backing),
        &req.mountpoint,
        &fstype,
        flags,
        &data,
    )?;
    Session::over_fd(fs, fd, &cfg).inspect_err(|_| {
        let _ = os::mount::umount2(&req.mountpoint, libc::MNT_DETACH);
    })
}

/// Mounts and serves until unmounted. `ready` is told once the mount is usable
/// (or why it failed).
pub(super) fn serve(
    req: &Serving,
    ready: &mut dyn FnMut(Result<(), String>),
) -> Result<(), MountError> {
    // A write to a closed pipe (a log, the parent's readiness pipe) fails
    // instead of ending the mount.
    os::process::sigpipe_kills(false);
    let o = mount_options(req)?;
    harden_process()?;
    let (fs, counting) = build_filesystem(req, &o)?;
    let state = mount_state(req, &o, &fs, counting);
    let session = match new_session(fs, req, &o) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("mounting {} failed: {e}", req.mountpoint.display());
            ready(Err(msg.clone()));
            return Err(MountError::Failed(msg));
        }
    };
    log::info!(
        "mounted {} on {} (daemon pid {}, key {}, {})",
        escaped(&req.backing),
        escaped(&req.mountpoint),
        std::process::id(),
        req.key_id,
        if o.read_only {
            "read-only"
        } else {
            "read-write"
        }
    );
    // The device of the mount just made (the top one on the mount point),
    // by which `kmsfs status` and remount find this daemon.
    if let Some(m) = super::mountinfo::mount_at(&req.mountpoint) {
        let _ = state.device.set(m.device);
    }
    let _control = control::start(state);
    // Before telling the parent: whoever uses the mount once `kmsfs mount`
    // returns reads with the raised window (fuser made the INIT handshake,
    // which could only have lowered it, when the session was made).
    super::readahead::raise(&req.mountpoint);
    ready(Ok(()));
    let mp = req.mountpoint.clone();
    std::thread::Builder::new()
        .name("kmsfs-signals".into())
        .spawn(move || stop_on_signal(&mp))
        .map_err(|e| MountError::io("signal thread", e))?;
    wait_for_unmount(session, req, &o)
}

/// The mount's options, read-only when the backing directory cannot be
/// written; options ignored are logged.
fn mount_options(req: &Serving) -> Result<Options, MountError> {
    let mut o = parse_options(&req.options)?;
    if req.backing_read_only && !o.read_only {
        log::warn!(
            "{} cannot be written: serving it read-only",
            escaped(&req.backing)
        );
        o.read_only = true;
        o.flags.push(MountFlag::ReadOnly);
    }
    for (opt, why) in &o.ignored {
        log::info!("mount option {opt} ignored: {why}");
    }
    Ok(o)
}

/// Keeps data keys out of core dumps and leaves the stop signals to the
/// signal thread.
fn harden_process() -> Result<(), MountError> {
    // Data keys and the unsealed keystore live in this process: no core dumps.
    if let Err(e) = os::process::forbid_core_dumps() {
        log::warn!("could not disable core dumps: {e}");
    }
    // Threads made from here on (fuser's) inherit the mask: only the signal
    // thread `serve` starts receives the stop signals.
    os::process::block_stop_signals().map_err(|e| MountError::io("signal setup", e))?;
    Ok(())
}

/// The filesystem over the backing directory, working inside it, and the
/// key service that counts its calls.
fn build_filesystem(
    req: &Serving,
    o: &Options,
) -> Result<(KmsFs, Arc<CountingService>), MountError> {
    let counting = Arc::new(CountingService::new(req.ks.clone()));
    // Every handle a user holds through the mount holds a descriptor here
    // (or shares one): as many as the hard limit allows.
    let fd_limit = match os::process::raise_fd_limit() {
        Ok(n) => n,
        Err((n, e)) => {
            log::warn!("could not raise the descriptor limit above {n}: {e}");
            n
        }
    };
    let handles = HandleLimits::for_fd_limit(fd_limit, o.max_user_handles);
    log::info!(
        "handles: {} per user, {} for all users but root together (descriptor limit {fd_limit})",
        handles.per_user,
        handles.all_users
    );
    // The binding file says whether names are encrypted (a tree without one
    // yet, e.g. a read-only one, has plain names).
    let names = name_key(req, &*counting)?;
    let dir_keys = dir_keys(req, o)?;
    let datakey_pool = datakey_pool(req, o, counting.clone());
    let mut fs = KmsFs::new(FsConfig {
        backing: req.backing.clone(),
        ks: counting.clone(),
        key_id: req.key_id.clone(),
        layout: req.layout,
        read_only: o.read_only,
        noatime: o.has(&MountFlag::NoAtime),
        // Shared storage: another writer may change anything at any time.
        ttl: if o.shared_storage {
            std::time::Duration::ZERO
        } else {
            TTL
        },
        writeback: !o.shared_storage && !o.no_writeback_cache,
        handles,
        names,
        dir_keys,
        datakey_pool,
    })
    .map_err(|e| MountError::io(format!("{}", req.backing.display()), e))?;
    fs.enter_backing()
        .map_err(|e| MountError::io(format!("{}", req.backing.display()), e))?;
    fs.first_name_key();
    Ok((fs, counting))
}

/// The pool of data keys generated ahead for new files: with a remote KMS
/// only, `-o datakey_pool=N` keys (default `fs::DEFAULT_POOL_SIZE`; 0: no
/// pool), none older than the data-key cache's lifetime (no cache, no
/// pool: the user asked that every use reach the KMS).
fn datakey_pool(
    req: &Serving,
    o: &Options,
    ks: Arc<CountingService>,
) -> Option<Arc<crate::fs::DataKeyPool>> {
    let max_age = req.remote_cache?;
    let size = o.datakey_pool.unwrap_or(crate::fs::DEFAULT_POOL_SIZE);
    if size == 0 || max_age.is_zero() {
        return None;
    }
    log::info!(
        "data-key pool: up to {size} keys under {} generated ahead, each used within {:?}",
        req.key_id,
        max_age
    );
    Some(Arc::new(crate::fs::DataKeyPool::new(
        ks,
        req.key_id.clone(),
        crate::fs::PoolConfig { size, max_age },
    )))
}

/// The tree's wrapped name key (None: plain names), from its binding
/// file; the first daemon to serve a tree made for encrypted names makes
/// the key (under the mount's CMK) and records it there.
fn name_key(req: &Serving, ks: &dyn crate::kms::KeyService) -> Result<Option<Vec<u8>>, MountError> {
    let Some(mut m) = super::read_marker(&req.backing)? else {
        return Ok(None);
    };
    if let Some(k) = m.wrapped_name_key()? {
        log::info!("names are encrypted");
        return Ok(Some(k));
    }
    if m.encrypted_names != Some(true) {
        return Ok(None);
    }
    // Nothing can have been written without the key: a tree that holds
    // anything now was not made by kmsfs.
    let s = super::survey(&req.backing);
    if s.entries > 0 {
        return Err(MountError::State(
            format!(
                "{} is marked for encrypted names but has no name key, and holds files",
                req.backing.display()
            ),
            "restore its binding file (.kmsfs.json) from a backup".into(),
        ));
    }
    let (uid, gid) = os::ids::ids();
    let me = crate::kms::Caller {
        uid,
        gid,
        pid: std::process::id(),
        access_key: None,
    };
    let rc = crate::kms::RequestContext::new(me, crate::kms::Origin::Mount);
    let (_, wrapped) = crate::envelope::names::NameKey::generate(ks, &rc, &req.key_id)
        .map_err(|e| MountError::Failed(format!("making the name key: {e}")))?;
    use base64::Engine;
    m.name_key = Some(base64::engine::general_purpose::STANDARD.encode(&wrapped));
    super::replace_marker(&req.backing, &m)?;
    if let Some(dir) = &req.keystore {
        super::binding::record_choices(dir, &req.backing);
    }
    log::info!("names are encrypted (a new name key under {})", req.key_id);
    Ok(Some(wrapped))
}

/// Keys per directory: the tree's wrapped MAC key of their records, the
/// keys it is trusted under (the binding file's default key and the
/// mount's), and how a MAC key made by the first `kmsfs set-key` is
/// recorded in the binding file (not on a read-only mount).
fn dir_keys(req: &Serving, o: &Options) -> Result<crate::fs::DirKeysConfig, MountError> {
    let m = super::read_marker(&req.backing)?;
    let wrapped = match &m {
        Some(m) => m.wrapped_dir_key_mac()?,
        None => None,
    };
    let mut trusted = vec![req.key_id.clone()];
    if let Some(m) = &m
        && m.default_key_id != req.key_id
    {
        trusted.push(m.default_key_id.clone());
    }
    let save: Option<crate::fs::SaveMacKey> = if o.read_only || req.backing_read_only {
        None
    } else {
        let backing = req.backing.clone();
        Some(Arc::new(move |wrapped: &[u8]| {
            use base64::Engine;
            let Some(mut m) = super::read_marker(&backing).map_err(|e| e.to_string())? else {
                return Err("the tree has no binding file".into());
            };
            if m.dir_key_mac.is_some() {
                return Err("the binding file holds a MAC key already".into());
            }
            m.dir_key_mac = Some(base64::engine::general_purpose::STANDARD.encode(wrapped));
            super::replace_marker(&backing, &m).map_err(|e| e.to_string())
        }))
    };
    // The keystore's list of the tree's directory keys (a remote KMS keeps
    // none): without it a removed record would pass for one never set.
    let list: Option<Arc<dyn crate::fs::DirKeyList>> = match &req.keystore {
        Some(dir) => Some(Arc::new(
            crate::tree::DirKeyList::open(dir, &req.backing).map_err(|e| {
                MountError::io(
                    format!(
                        "the list of directory keys of {} in {}",
                        req.backing.display(),
                        dir.display()
                    ),
                    e,
                )
            })?,
        )),
        None => None,
    };
    let backing = req.backing.clone();
    let load: crate::fs::LoadMacKey =
        Arc::new(
            move || match super::read_marker(&backing).map_err(|e| e.to_string())? {
                Some(m) => m.wrapped_dir_key_mac().map_err(|e| e.to_string()),
                None => Ok(None),
            },
        );
    Ok(crate::fs::DirKeysConfig {
        wrapped,
        trusted,
        save,
        load: Some(load),
        list,
        // Other daemons serve the tree too: their set-key must be seen.
        shared: o.shared_storage,
    })
}

/// What the control socket reports about this mount.
fn mount_state(
    req: &Serving,
    o: &Options,
    fs: &KmsFs,
    counting: Arc<CountingService>,
) -> Arc<MountState> {
    Arc::new(MountState {
        device: std::sync::OnceLock::new(),
        dir_keys: fs.dir_keys_seen(),
        backing: req.backing.clone(),
        mountpoint: req.mountpoint.clone(),
        keystore: req.keystore.clone(),
        key_id: req.key_id.clone(),
        log_file: req.log_file.clone(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        read_only: fs.read_only_switch(),
        backing_read_only: req.backing_read_only,
        shared_storage: o.shared_storage,
        ks: counting,
        datakey_pool: fs.datakey_pool(),
    })
}

/// Serves requests until the mount goes away.
fn wait_for_unmount(session: Session, req: &Serving, o: &Options) -> Result<(), MountError> {
    let r = session.run();
    let source = o.source_name(&req.backing);
    match r {
        Ok(()) => {}
        // The kernel aborts the connection when the mount goes away; a
        // serving thread that was taking a request off the queue just then
        // reads ECONNABORTED instead of ENODEV. The end of the mount either
        // way, unless our mount is still there (an abort through
        // /sys/fs/fuse/connections).
        Err(e)
            if e.raw_os_error() == Some(libc::ECONNABORTED)
                && (STOPPING.load(Ordering::SeqCst)
                    || super::mountinfo::mount_at(&req.mountpoint)
                        .is_none_or(|m| m.source != source)) =>
        {
            log::debug!("serving ended with {e} as the mount went away");
        }
        Err(e) => {
            return Err(MountError::io(
                format!("serving {}", req.mountpoint.display()),
                e,
            ));
        }
    }
    req.ks.flush_audit();
    log::info!("unmounted {}", escaped(&req.mountpoint));
    Ok(())
}

/// Set once a stop signal has been handled: the session's end is expected.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

fn stop_on_signal(mp: &Path) {
    loop {
        match os::process::wait_stop_signal() {
            Ok(sig) => {
                log::info!(
                    "signal {} ({sig}): unmounting {}",
                    signal_name(sig),
                    escaped(mp)
                );
                STOPPING.store(true, Ordering::SeqCst);
                // Unmounting writes back the kernel's dirty pages through us and
                // then ends the session; with files still open, detach lazily.
                if let Err(e) = os::mount::umount2(mp, 0) {
                    let open = crate::fs::counters().open_files;
                    if let Err(e2) = os::mount::umount2(mp, libc::MNT_DETACH) {
                        log::warn!("could not unmount {}: {e}; {e2}", escaped(mp));
                        STOPPING.store(false, Ordering::SeqCst);
                        continue;
                    }
                    log::warn!(
                        "{} was busy ({e}): detached lazily with {open} file{} still open; \
                         the daemon serves {} until {} closed, then exits",
                        escaped(mp),
                        if open == 1 { "" } else { "s" },
                        if open == 1 { "it" } else { "them" },
                        if open == 1 { "it is" } else { "they are" },
                    );
                }
                return;
            }
            Err(e) => {
                log::warn!("waiting for signals failed: {e}");
                return;
            }
        }
    }
}

/// The forked daemon: leaves the terminal's session, serves, and tells the
/// parent through `tx` once the mount is usable (or why it failed).
pub(super) fn daemon_main(req: &Serving, log: Option<&File>, mut tx: std::io::PipeWriter) -> i32 {
    if let Err(e) = os::process::setsid().and_then(|()| os::process::redirect_stdio(log)) {
        let _ = write!(tx, "ERR cannot start the mount daemon: {e}");
        return 1;
    }
    let mut tx = Some(tx);
    let mut ready = |r: Result<(), String>| {
        if let Some(mut t) = tx.take() {
            let _ = match r {
                Ok(()) => t.write_all(b"OK\n"),
                Err(m) => write!(t, "ERR {m}"),
            };
        }
    };
    match serve(req, &mut ready) {
        Ok(()) => 0,
        Err(e) => {
            ready(Err(e.to_string()));
            log::error!("{e}");
            1
        }
    }
}
