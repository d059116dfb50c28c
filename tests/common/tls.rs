//! Certificates for `kmsfs kms serve --tls-cert/--tls-key`, made in the test
//! by Debian's `openssl`: a test CA, a server certificate it signs for the
//! given IP addresses, and a second CA that signed nothing of this server.

use std::path::{Path, PathBuf};

use super::{command, require_tool};

/// A CA, the server's certificate and key (mode 0600), and a CA that did not
/// sign it.
pub struct Certs {
    /// The CA that signed `cert` (PEM): what clients are given.
    pub ca: PathBuf,
    /// The server's certificate (PEM), for `ips` and localhost.
    pub cert: PathBuf,
    /// The server's private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Another CA (PEM): a client trusting only it must refuse the server.
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = command("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// Makes the certificates in `dir` for a server reached at `ips`; None
/// (test skipped, saying why) without openssl, a failure under CI.
pub fn make_certs(test: &str, dir: &Path, ips: &[&str]) -> Option<Certs> {
    use std::os::unix::fs::PermissionsExt;
    require_tool(test, "openssl")?;
    std::fs::create_dir_all(dir).expect("certs dir");
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kmsfs-kms",
        ],
    );
    let san: Vec<String> = ips
        .iter()
        .map(|ip| format!("IP:{ip}"))
        .chain(["DNS:localhost".to_string()])
        .collect();
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
            san.join(",")
        ),
    )
    .expect("extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    Some(Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key,
        other_ca: dir.join("other-ca.pem"),
    })
}

impl Certs {
    /// `--tls-cert F --tls-key F` for `Server::start`.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}
