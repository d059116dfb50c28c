//! Mounts whose CMK lives in a remote KMS spoken to over the AWS protocol
//! (`kmsfs mount --kms-endpoint URL --key-id K`): against `kmsfs kms serve`
//! (two daemons on one shared backing directory, a key disabled centrally,
//! the KMS going down) and against moto's KMS server from PyPI.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Seconds an unwrapped data key may be served from the cache in these
/// tests (`--kms-cache-seconds`).
const CACHE_SECONDS: u64 = 2;

fn aws_env<'a>(c: &'a mut Command, ak: &str, sk: &str) -> &'a mut Command {
    c.env("AWS_ACCESS_KEY_ID", ak)
        .env("AWS_SECRET_ACCESS_KEY", sk)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
}

fn remote_mount(
    backing: &Path,
    mnt: &Path,
    endpoint: &str,
    key: &str,
    creds: (&str, &str),
    log: &Path,
    extra: &[&str],
) -> Output {
    let mut c = kmsfs();
    c.arg("mount")
        .arg(backing)
        .arg(mnt)
        .args(["--kms-endpoint", endpoint, "--key-id", key])
        .args(["--kms-cache-seconds", &CACHE_SECONDS.to_string()])
        .arg("--log-file")
        .arg(log)
        // Plain names: these tests reach backing files by their names
        // (encrypted names under a remote KMS: tests/mount_names.rs runs
        // them against the local keystore, through the same KeyService).
        .args(["-o", "plaintextnames"])
        .args(extra);
    aws_env(&mut c, creds.0, creds.1);
    c.output().expect("run kmsfs mount")
}

fn mounted_ok(o: &Output, log: &Path) {
    assert!(
        o.status.success(),
        "kmsfs mount failed: {}{}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn read(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    std::fs::File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

/// Opens `p` until it fails with `want` or `limit` passes; the last result.
fn open_until(
    p: &Path,
    limit: Duration,
    want: &dyn Fn(&std::io::Error) -> bool,
) -> std::io::Result<Vec<u8>> {
    let t0 = Instant::now();
    loop {
        let r = read(p);
        match &r {
            Err(e) if want(e) => return r,
            _ if t0.elapsed() > limit => return r,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn assert_ciphertext(backing_file: &Path, plain: &[u8]) {
    let b = std::fs::read(backing_file).expect("backing file");
    assert!(b.len() > plain.len(), "the backing file holds no header");
    assert!(
        !b.windows(plain.len()).any(|w| w == plain),
        "the plaintext is in the backing file"
    );
}

#[test]
fn two_mounts_share_a_backing_directory_through_kmsfs_kms_serve() {
    let test = "two_mounts_share_a_backing_directory_through_kmsfs_kms_serve";
    if !fuse_available(test) || !require_root(test, "mounting") {
        return;
    }
    let ks = Ks::new();
    let key = ks.create_key();
    let (ak, sk) = access_key(&ks, 0);
    let mut server = Server::start(&ks, "127.0.0.1:0", &[]);
    let tmp = tempdir(test);
    let backing = tmp.path().join("backing");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&backing, &a, &b] {
        std::fs::create_dir(d).unwrap();
    }
    let (log_a, log_b) = (tmp.path().join("a.log"), tmp.path().join("b.log"));
    let ep = server.endpoint();
    let _ga = MountGuard(a.clone());
    let o = remote_mount(
        &backing,
        &a,
        &ep,
        &key,
        (&ak, &sk),
        &log_a,
        // No data keys generated ahead: the counts below are the creates'.
        &["-o", "sharedstorage,datakey_pool=0"],
    );
    mounted_ok(&o, &log_a);
    let _gb = MountGuard(b.clone());
    let o = remote_mount(
        &backing,
        &b,
        &ep,
        &key,
        (&ak, &sk),
        &log_b,
        &["-o", "sharedstorage,datakey_pool=0"],
    );
    mounted_ok(&o, &log_b);

    // Written through one daemon, ciphertext below, read through the other.
    let plain = b"secret through a remote KMS, secret through a remote KMS".to_vec();
    for name in ["x.txt", "y.txt", "z.txt"] {
        std::fs::File::create(a.join(name))
            .and_then(|mut f| f.write_all(&plain))
            .expect("write through mount a");
    }
    for name in ["x.txt", "y.txt", "z.txt"] {
        assert_ciphertext(&backing.join(name), &plain);
        assert_eq!(read(&b.join(name)).expect("read through mount b"), plain);
    }
    assert_eq!(read(&a.join("y.txt")).unwrap(), plain);
    // A file already open keeps working after the key is disabled.
    let mut held = std::fs::File::open(b.join("z.txt")).expect("open z");

    ks.ok(&["kms", "disable-key", "--key-id", &key]);
    let limit = Duration::from_secs(CACHE_SECONDS + 8);
    let denied = |e: &std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
    let r = open_until(&b.join("x.txt"), limit, &denied);
    assert!(
        matches!(&r, Err(e) if denied(e)),
        "mount b still opens x.txt: {r:?}"
    );
    let r = open_until(&a.join("y.txt"), limit, &denied);
    assert!(
        matches!(&r, Err(e) if denied(e)),
        "mount a still opens y.txt: {r:?}"
    );
    let mut v = Vec::new();
    held.read_to_end(&mut v).expect("read the file held open");
    assert_eq!(v, plain);
    assert!(
        std::fs::File::create(a.join("new.txt")).is_err(),
        "a file was created under a disabled key"
    );

    ks.ok(&["kms", "enable-key", "--key-id", &key]);
    assert_eq!(read(&b.join("x.txt")).expect("enabled again"), plain);

    // The KMS goes down: after the cache lifetime, opens fail with EIO and
    // the daemon says why; nothing hangs.
    let stats = server.stop();
    // Three files, and the create refused under the disabled key.
    assert!(stats.contains("GenerateDataKey=4"), "{stats}");
    std::thread::sleep(Duration::from_secs(CACHE_SECONDS + 1));
    let eio = |e: &std::io::Error| e.raw_os_error() == Some(libc_eio());
    let r = open_until(&a.join("y.txt"), Duration::from_secs(30), &eio);
    assert!(
        matches!(&r, Err(e) if eio(e)),
        "open with the KMS down: {r:?}"
    );
    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(log.contains("could not be reached"), "{log}");
    assert!(!log.contains(&sk), "the secret access key is in the log");
}

#[test]
fn a_throttling_kms_gives_eio_after_bounded_retries() {
    let test = "a_throttling_kms_gives_eio_after_bounded_retries";
    if !fuse_available(test) || !require_root(test, "mounting") {
        return;
    }
    let ks = Ks::new();
    let key = ks.create_key();
    let (ak, sk) = access_key(&ks, 0);
    // Debug builds only: the server answers these with ThrottlingException.
    let mut server = Server::start_env(
        &ks,
        "127.0.0.1:0",
        &[],
        &[("KMSFS_TEST_THROTTLE", "GenerateDataKey,Decrypt")],
    );
    let tmp = tempdir(test);
    let (backing, mnt) = (tmp.path().join("backing"), tmp.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("mount.log");
    let _g = MountGuard(mnt.clone());
    let o = remote_mount(
        &backing,
        &mnt,
        &server.endpoint(),
        &key,
        (&ak, &sk),
        &log,
        // No filler retrying beside the create: the count below is its own.
        &["-o", "datakey_pool=0"],
    );
    mounted_ok(&o, &log);
    let r = std::fs::write(mnt.join("t.txt"), b"never written");
    let e = r.expect_err("a file was written while the KMS throttles every data key");
    assert_eq!(e.raw_os_error(), Some(libc_eio()), "{e}");
    let stats = server.stop();
    // One create, three attempts (the SDK's standard retries, with backoff).
    assert!(stats.contains("GenerateDataKey=3 "), "{stats}");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("ThrottlingException"), "{log}");
}

fn libc_eio() -> i32 {
    5
}

/// moto's server on a free loopback port; killed on drop.
struct Moto(Child, String);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto(venv: &Path) -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(venv.join("bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto(child, url)
}

fn venv_aws(venv: &Path, endpoint: &str, args: &[&str]) -> String {
    let mut c = Command::new(venv.join("bin/aws"));
    c.arg("kms")
        .args(args)
        .args(["--endpoint-url", endpoint, "--output", "text"]);
    aws_env(&mut c, "testing", "testing");
    let o = c.output().expect("run aws");
    assert!(
        o.status.success(),
        "aws kms {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_mount_runs_against_motos_kms() {
    let test = "a_mount_runs_against_motos_kms";
    if !fuse_available(test) || !require_root(test, "mounting") {
        return;
    }
    let Some(venv) = venv(test) else { return };
    let moto = start_moto(&venv);
    let key = venv_aws(
        &venv,
        &moto.1,
        &["create-key", "--query", "KeyMetadata.KeyId"],
    );
    let tmp = tempdir(test);
    let backing: PathBuf = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("mount.log");
    let _g = MountGuard(mnt.clone());
    let o = remote_mount(
        &backing,
        &mnt,
        &moto.1,
        &key,
        ("testing", "testing"),
        &log,
        &[],
    );
    mounted_ok(&o, &log);
    let plain = b"kept under a key in moto's KMS, kept under a key in moto's KMS".to_vec();
    std::fs::write(mnt.join("m.txt"), &plain).expect("write");
    assert_ciphertext(&backing.join("m.txt"), &plain);
    // Unmount and mount again: the data key comes back from moto's Decrypt.
    let o = kmsfs().arg("unmount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = remote_mount(
        &backing,
        &mnt,
        &moto.1,
        &key,
        ("testing", "testing"),
        &log,
        &[],
    );
    mounted_ok(&o, &log);
    assert_eq!(read(&mnt.join("m.txt")).expect("read back"), plain);
    // `kmsfs kms ... --endpoint-url` against the same KMS.
    let mut c = kmsfs();
    c.args([
        "kms",
        "describe-key",
        "--key-id",
        &key,
        "--endpoint-url",
        &moto.1,
        "--output",
        "json",
    ]);
    aws_env(&mut c, "testing", "testing");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&key));
    // (moto's Decrypt ignores a disabled key, so the central refusal is
    // tested against `kmsfs kms serve` above, not here.)
}
