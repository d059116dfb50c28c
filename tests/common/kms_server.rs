//! A running `kmsfs kms serve`, its access keys, and the venv of AWS clients
//! (boto3, the aws CLI, moto) that scripts/pyenv.sh makes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{Ks, kmsfs, skip};

/// The venv of scripts/pyenv.sh, or None after skipping (a failure under CI).
pub fn venv(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KMSFS_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kmsfs-py"));
    if dir.join("bin/python").exists() && dir.join("bin/aws").exists() {
        Some(dir)
    } else {
        skip(
            test,
            &format!(
                "no boto3/awscli venv at {} (run scripts/pyenv.sh)",
                dir.display()
            ),
        );
        None
    }
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/server")
        .join(name)
}

/// A running `kmsfs kms serve`; stopped with SIGTERM on drop.
pub struct Server {
    pub child: Child,
    /// `IP:PORT`, or `unix:PATH`.
    pub addr: String,
    /// What the server printed: `http://IP:PORT`, `https://IP:PORT`, `unix:PATH`.
    pub url: String,
    pub log: PathBuf,
}

impl Server {
    pub fn start(ks: &Ks, listen: &str, extra: &[&str]) -> Self {
        Self::start_env(ks, listen, extra, &[])
    }

    /// Like `start`, with extra environment (fault injection).
    pub fn start_env(ks: &Ks, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut c = kmsfs();
        c.envs(env.iter().copied());
        Self::start_with(c, ks, listen, extra)
    }

    /// Like `start`, in the network namespace `netns` (`ip netns add`):
    /// `nsenter --net` execs the server, so its pid is the server's.
    pub fn start_in_netns(netns: &str, ks: &Ks, listen: &str, extra: &[&str]) -> Self {
        let mut c = super::command("nsenter");
        c.arg(format!("--net=/run/netns/{netns}")).arg(super::BIN);
        Self::start_with(c, ks, listen, extra)
    }

    /// `c` (the kmsfs binary, maybe behind a wrapper that execs it) serving
    /// `ks` on `listen`.
    fn start_with(mut c: Command, ks: &Ks, listen: &str, extra: &[&str]) -> Self {
        let log = ks.file("serve.log");
        c.arg("--keystore")
            .arg(&ks.path)
            .args(["kms", "serve", "--listen", listen])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = c.spawn().expect("start kmsfs kms serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no address from the server: {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        let addr = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or(&url)
            .to_string();
        Server {
            child,
            addr,
            url,
            log,
        }
    }

    /// The URL clients are given (`--endpoint-url`).
    pub fn endpoint(&self) -> String {
        self.url.clone()
    }

    /// Stops the server; returns its log (with the summary line).
    pub fn stop(&mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// `kmsfs access-key create --uid UID`: (id, secret).
pub fn access_key(ks: &Ks, uid: u32) -> (String, String) {
    let out = ks.ok(&["access-key", "create", "--uid", &uid.to_string()]);
    let v: Value = serde_json::from_str(&out).expect("access key JSON");
    let k = &v["AccessKey"];
    (
        k["AccessKeyId"].as_str().expect("id").to_string(),
        k["SecretAccessKey"].as_str().expect("secret").to_string(),
    )
}
