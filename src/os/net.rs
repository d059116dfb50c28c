//! Sockets: which user owns the other end of a loopback TCP connection,
//! so that a local server can serve only some users, or count connections
//! per user rather than per address (every local user connects from
//! 127.0.0.1), as a Unix socket's peer credentials let it. Asked of the
//! kernel's sock_diag netlink interface for that one socket (what `ss -e`
//! shows), else read from `/proc/net/tcp` and `tcp6`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The uid owning the socket whose local address is `peer` and remote
/// address is `local`: the client's end of a connection accepted on
/// `local` from `peer`, when both ends are on this machine (loopback).
/// None when no such socket is known (the peer is remote, or gone).
pub(crate) fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    if let Ok(answer) = ask(&request(&peer, &local)) {
        return answer;
    }
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

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
/// `nlmsghdr` then `inet_diag_req_v2` (family, protocol, ext, pad, states,
/// `inet_diag_sockid` of 48 bytes).
const REQUEST_LEN: usize = 16 + 8 + 48;
/// Where `idiag_uid` sits in the answer: `nlmsghdr`, then in
/// `inet_diag_msg` four bytes, the sockid, expires, rqueue and wqueue.
const UID_AT: usize = 16 + 4 + 48 + 12;

/// The 16 address bytes of an `inet_diag_sockid` (network order).
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
    }
    b
}

/// The sock_diag request for the TCP socket whose local end is `src` and
/// remote end is `dst`.
fn request(src: &SocketAddr, dst: &SocketAddr) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    r[8..12].copy_from_slice(&1u32.to_ne_bytes());
    let family = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    r[16] = family as u8;
    r[17] = libc::IPPROTO_TCP as u8;
    r[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let id = 24;
    r[id..id + 2].copy_from_slice(&src.port().to_be_bytes());
    r[id + 2..id + 4].copy_from_slice(&dst.port().to_be_bytes());
    r[id + 4..id + 20].copy_from_slice(&addr_bytes(src.ip()));
    r[id + 20..id + 36].copy_from_slice(&addr_bytes(dst.ip()));
    // interface 0, cookie INET_DIAG_NOCOOKIE
    r[id + 40..id + 48].copy_from_slice(&[0xff; 8]);
    r
}

/// The uid in a sock_diag answer, None for an error answer.
fn uid_of(answer: &[u8]) -> Option<u32> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind == NLMSG_ERROR || kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    Some(u32::from_ne_bytes(
        answer.get(UID_AT..UID_AT + 4)?.try_into().ok()?,
    ))
}

fn ask(req: &[u8]) -> io::Result<Option<u32>> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `req` is a valid buffer of `req.len()` bytes for the call;
    // an unconnected netlink socket sends to the kernel.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: `buf` is writable for `buf.len()` bytes; the kernel answers
    // an exact sock_diag request at once (the socket or an error).
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(uid_of(&buf[..n as usize]))
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
        // Both ways of asking agree.
        assert_eq!(
            ask(&request(&peer, &l.local_addr().unwrap())).unwrap(),
            Some(me)
        );
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        assert_eq!(
            socket_owner(&table, l.local_addr().unwrap(), peer),
            Some(me)
        );
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
