//! TLS for `kmsfs kms serve --tls-cert F --tls-key F`: rustls on the aws-lc-rs
//! provider (the crates aws-sdk-kms's https client already builds), HTTP/1.1
//! only. The private key must be readable by its owner alone (the server's
//! user or root), as ssh requires of its keys: another local user who could
//! read it could answer in the server's name.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::ServerError;

/// Largest certificate chain or key file read (a chain of a few PEM
/// certificates is a few KiB).
const MAX_PEM: u64 = 1024 * 1024;

/// Reads `p` (not through a symlink) with its metadata taken from the open
/// file, so the mode checked is the mode of what was read.
#[allow(clippy::disallowed_methods)] // a file the operator named on the command line
fn read_file(p: &Path, what: &str) -> Result<(Zeroizing<Vec<u8>>, std::fs::Metadata), ServerError> {
    let shown = p.display();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| ServerError::Usage(format!("{what} {shown}: {e}")))?;
    let m = f
        .metadata()
        .map_err(|e| ServerError::Io(format!("{what} {shown}: {e}")))?;
    if !m.is_file() {
        return Err(ServerError::Usage(format!(
            "{what} {shown} is not a regular file"
        )));
    }
    let mut buf = Zeroizing::new(Vec::new());
    f.take(MAX_PEM + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ServerError::Io(format!("reading {what} {shown}: {e}")))?;
    if buf.len() as u64 > MAX_PEM {
        return Err(ServerError::Usage(format!(
            "{what} {shown} is larger than {MAX_PEM} bytes"
        )));
    }
    Ok((buf, m))
}

/// Refuses a private key file others than its owner may read, or that
/// belongs to someone else than `euid` (or root).
fn check_key_file(p: &Path, m: &std::fs::Metadata, euid: u32) -> Result<(), ServerError> {
    let mode = m.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ServerError::Usage(format!(
            "--tls-key {}: the private key is open to group or others (mode {mode:03o}); \
             hint: chmod 600 {} (as ssh requires of its keys: another user who can read it \
             can answer as this server)",
            p.display(),
            p.display()
        )));
    }
    if m.uid() != euid && m.uid() != 0 {
        return Err(ServerError::Usage(format!(
            "--tls-key {}: owned by uid {}, not by the server's user ({euid}) or root; \
             hint: chown it to the user that runs kmsfs kms serve",
            p.display(),
            m.uid()
        )));
    }
    Ok(())
}

/// The server's TLS configuration from a PEM certificate chain (leaf first)
/// and a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(super) fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let (cert_pem, _) = read_file(cert, "--tls-cert")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ServerError::Usage(format!(
                "--tls-cert {}: not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(ServerError::Usage(format!(
            "--tls-cert {}: no CERTIFICATE block (PEM) in it",
            cert.display()
        )));
    }
    let (key_pem, m) = read_file(key, "--tls-key")?;
    check_key_file(key, &m, crate::os::ids::effective_uid())?;
    // The parse error says nothing of the key's bytes.
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        ServerError::Usage(format!(
            "--tls-key {}: no PEM private key (PKCS#8, RSA or EC) in it",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut conf = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Usage(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            ServerError::Usage(format!(
                "--tls-cert {} and --tls-key {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    conf.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(conf)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_key_open_to_group_or_others_or_owned_by_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, b"x").unwrap();
        let euid = crate::os::ids::effective_uid();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let m = std::fs::metadata(&p).unwrap();
            let r = check_key_file(&p, &m, euid);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        if m.uid() == 0 {
            // root's file is accepted by any server user; another owner is not.
            assert!(check_key_file(&p, &m, 1234).is_ok());
        } else {
            assert!(check_key_file(&p, &m, m.uid() + 1).is_err());
        }
    }

    #[test]
    fn a_file_without_pem_blocks_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.pem");
        let k = dir.path().join("k.pem");
        std::fs::write(&c, b"not a certificate").unwrap();
        std::fs::write(&k, b"SECRET-KEY-BYTES").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = acceptor(&c, &k).err().unwrap().to_string();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&k, &link).unwrap();
        let e = acceptor(&link, &k).err().unwrap().to_string();
        assert!(e.contains("--tls-cert"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
    }
}
