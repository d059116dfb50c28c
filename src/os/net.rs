//! Sockets as /proc sees them: which user owns the other end of a loopback
//! TCP connection (`/proc/net/tcp` and `tcp6`), so that a local server can
//! serve only some users, as a Unix socket's peer credentials let it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uid owning the socket whose local address is `peer` and remote
/// address is `local`: the client's end of a connection accepted on
/// `local` from `peer`, when both ends are on this machine (loopback).
/// None when no such socket is listed (the peer is remote, or gone).
pub(crate) fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let file = match peer.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(file).ok()?;
    socket_owner(&text, local, peer)
}

/// The uid on the line of `table` (the text of /proc/net/tcp or tcp6)
/// whose local address is `peer` and remote address `local`.
fn socket_owner(table: &str, local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:tm retrnsmt uid ...
        if f.len() < 8 {
            continue;
        }
        if parse_addr(f[1]) == Some(peer) && parse_addr(f[2]) == Some(local) {
            return f[7].parse().ok();
        }
    }
    None
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address
/// as the kernel prints it, each 32-bit word in the machine's byte order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_client_end_of_a_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        let me = crate::os::ids::effective_uid();
        assert_eq!(tcp_peer_uid(l.local_addr().unwrap(), peer), Some(me));
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tcp_peer_uid(l.local_addr().unwrap(), nobody), None);
    }

    #[test]
    fn addresses_as_the_kernel_prints_them() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_addr("0100007F:1F90"),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(
                parse_addr("00000000000000000000000001000000:0050"),
                Some("[::1]:80".parse().unwrap())
            );
        }
        assert_eq!(parse_addr("zz:1"), None);
    }
}
