//! Where a local service of the binary (the key server, the console) listens:
//! a Unix socket or a TCP address, as its `--listen` option names it; binding
//! the socket, and the signals that stop the service.

use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Where a service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path; the peer's credentials say who calls.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a path, as in unix:/run/kmsfs/kms.sock".into());
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        s.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            format!("{s:?} is neither unix:PATH nor an address such as 127.0.0.1:4599")
        })
    }
}

/// Why a Unix socket could not be bound.
#[derive(Debug)]
pub enum BindError {
    /// Something else is at the path, or a running service holds it.
    Usage(String),
    /// A system error.
    Io(String),
}

/// Binds a Unix socket at `p` for `service` ("server", "console") and gives
/// it `mode`: a stale socket (nothing listening) is replaced, anything else
/// there is refused. The mode is set on the entry in `p`'s directory without
/// following a link, so a name swapped for a symlink between bind and chmod
/// (in a directory others can write) changes no other file's mode.
#[allow(clippy::disallowed_methods)] // a socket path the operator named; a link in its place is refused
pub fn bind_unix(
    p: &Path,
    mode: u32,
    service: &str,
) -> Result<tokio::net::UnixListener, BindError> {
    let shown = p.display();
    if let Ok(m) = std::fs::symlink_metadata(p) {
        if !m.file_type().is_socket() {
            return Err(BindError::Usage(format!(
                "{shown} exists and is not a socket; give another path"
            )));
        }
        if std::os::unix::net::UnixStream::connect(p).is_ok() {
            return Err(BindError::Usage(format!(
                "{shown} is in use by a running {service}"
            )));
        }
        std::fs::remove_file(p)
            .map_err(|e| BindError::Io(format!("removing stale socket {shown}: {e}")))?;
    }
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(BindError::Usage(format!("{shown} names no socket file")));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let dir = std::fs::File::open(dir)
        .map_err(|e| BindError::Io(format!("opening {}: {e}", dir.display())))?;
    let l = tokio::net::UnixListener::bind(p)
        .map_err(|e| BindError::Io(format!("binding {shown}: {e}")))?;
    crate::os::beneath::fchmodat_nofollow(&dir, name, mode)
        .map_err(|e| BindError::Io(format!("chmod {shown}: {e}")))?;
    Ok(l)
}

/// Resolves on SIGTERM or SIGINT (never, if they cannot be caught).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::Listen;

    #[test]
    fn the_socket_mode_is_set_on_the_socket_and_a_file_there_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _l = rt
            .block_on(async { super::bind_unix(&p, 0o600, "test") })
            .unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let e = rt.block_on(async { super::bind_unix(&f, 0o600, "test") });
        assert!(matches!(e, Err(super::BindError::Usage(_))));
    }

    #[test]
    fn parses_both_forms_and_refuses_the_rest() {
        assert_eq!(
            "unix:/run/k.sock".parse::<Listen>(),
            Ok(Listen::Unix("/run/k.sock".into()))
        );
        assert!(matches!(
            "127.0.0.1:0".parse::<Listen>(),
            Ok(Listen::Tcp(_))
        ));
        assert!("unix:".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
    }
}
