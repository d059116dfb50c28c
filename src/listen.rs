//! Where a local service of the binary (the key server, the console) listens:
//! a Unix socket or a TCP address, as its `--listen` option names it.

use std::net::SocketAddr;
use std::path::PathBuf;

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

#[cfg(test)]
mod tests {
    use super::Listen;

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
