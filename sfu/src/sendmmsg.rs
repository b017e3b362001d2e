//! A turn's datagrams out in one `sendmmsg(2)` (Linux): every destination's run of datagrams is one message (GSO,
//! `UDP_SEGMENT`, when it has several of one size), its parts gathered from where they were queued by `iovec`s —
//! no copy to put a run together, and one system call for the whole turn instead of one per destination.
//!
//! Fan-out queues packet by packet for every subscriber in turn, so at N subscribers a turn is N short runs: the
//! calls, not the bytes, were the cost (`Outbox::flush`).
//!
//! The one module of the workspace that may use `unsafe` (the workspace denies it): building `msghdr`s for the
//! kernel. Each block says why it is sound; the test sends real datagrams through it.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::RawFd;

/// One message: the parts `parts` (indices into the part list) to `to`, from `src_ip` if set, cut into
/// `segment`-byte datagrams by the kernel when set (GSO).
#[derive(Debug, Clone)]
pub struct Message {
    pub to: SocketAddr,
    pub src_ip: Option<IpAddr>,
    pub segment: Option<u16>,
    pub parts: Range<usize>,
}

/// Room for the control messages of one datagram: `UDP_SEGMENT` (u16) and `IPV6_PKTINFO` (the larger pktinfo).
const CONTROL_LEN: usize = 64;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

/// Most messages per call (the kernel's `UIO_MAXIOV`).
const MAX_PER_CALL: usize = 1024;

/// Send `messages`, whose parts are `parts` (start, length) of `data`. `sent(i, result)` is called for each
/// message in order. Returns the number of system calls made.
pub fn send_all(
    fd: RawFd,
    data: &[u8],
    parts: &[(usize, usize)],
    messages: &[Message],
    mut sent: impl FnMut(usize, io::Result<()>),
) -> u64 {
    if messages.is_empty() {
        return 0;
    }
    // Every buffer the headers point into is allocated to its full size first and not touched after.
    let mut iovs: Vec<libc::iovec> = parts
        .iter()
        .map(|&(start, len)| libc::iovec {
            iov_base: data[start..start + len].as_ptr() as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) address.
    let mut names: Vec<libc::sockaddr_storage> =
        vec![unsafe { std::mem::zeroed() }; messages.len()];
    let mut controls = vec![Control([0; CONTROL_LEN]); messages.len()];
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let name_len = write_name(m.to, &mut names[i]);
        // SAFETY: msghdr is plain data; the pointers set below stay valid until the call returns (the vectors
        // above are not resized).
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = name_len;
        hdr.msg_iov = iovs[m.parts.start..m.parts.end].as_mut_ptr();
        hdr.msg_iovlen = m.parts.len() as _;
        write_control(&mut hdr, &mut controls[i], m.segment, m.src_ip);
        headers.push(libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        });
    }
    let mut calls = 0;
    let mut i = 0;
    while i < headers.len() {
        let count = (headers.len() - i).min(MAX_PER_CALL);
        // SAFETY: `headers[i..i + count]` are initialised headers whose pointers are valid (above).
        let n = unsafe { libc::sendmmsg(fd, headers[i..].as_mut_ptr(), count as u32, 0) };
        calls += 1;
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first message could not go (a full socket buffer, or a refused destination): drop it, go on.
            sent(i, Err(e));
            i += 1;
            continue;
        }
        let n = n as usize;
        for k in i..i + n {
            sent(k, Ok(()));
        }
        i += n;
        if n < count {
            // The kernel stopped at a message that failed and kept its error to itself (sendmmsg(2)): it is dropped
            // like any failed send, not tried again (a full buffer, or a firewall's drop, stays a loss).
            sent(i, Err(io::Error::other("not sent: sendmmsg stopped at it")));
            i += 1;
        }
    }
    calls
}

fn write_name(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any socket address.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The control messages: the GSO segment size, and the source address (as quinn-udp writes them).
fn write_control(
    hdr: &mut libc::msghdr,
    control: &mut Control,
    segment: Option<u16>,
    src_ip: Option<IpAddr>,
) {
    if segment.is_none() && src_ip.is_none() {
        return;
    }
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = CONTROL_LEN as _;
    let mut used = 0usize;
    // SAFETY: the control buffer is aligned, zeroed and CONTROL_LEN long, which fits both messages;
    // CMSG_FIRSTHDR/CMSG_NXTHDR stay within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        if let Some(size) = segment {
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
            used += libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
        match src_ip {
            Some(IpAddr::V4(v4)) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len =
                    libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
                used += libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
            }
            Some(IpAddr::V6(v6)) => {
                let info = libc::in6_pktinfo {
                    ipi6_ifindex: 0,
                    ipi6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                };
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len =
                    libc::CMSG_LEN(std::mem::size_of::<libc::in6_pktinfo>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
                used += libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as u32) as usize;
            }
            None => {}
        }
    }
    hdr.msg_controllen = used as _;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Three destinations, one of them a GSO run of three datagrams gathered from scattered parts: each receiver
    /// gets its datagrams whole and in order, in one call.
    #[test]
    fn one_call_sends_every_destination_its_datagrams() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let receivers: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        for r in &receivers {
            r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .expect("timeout");
        }
        // Queued interleaved, as fan-out does: a1 b1 c1 a2 b2 a3.
        let data = b"a1-xxb1c1a2-yyb2a3";
        let (a1, b1, c1, a2, b2, a3) = ((0, 5), (5, 2), (7, 2), (9, 5), (14, 2), (16, 2));
        let parts = [a1, a2, a3, b1, b2, c1];
        let to = |i: usize| receivers[i].local_addr().expect("addr");
        let src_ip = Some("127.0.0.1".parse().expect("ip"));
        let messages = [
            // a's three datagrams as one GSO message of 5-byte segments (the last shorter).
            Message {
                to: to(0),
                src_ip,
                segment: Some(5),
                parts: 0..3,
            },
            Message {
                to: to(1),
                src_ip,
                segment: None,
                parts: 3..4,
            },
            Message {
                to: to(1),
                src_ip: None,
                segment: None,
                parts: 4..5,
            },
            Message {
                to: to(2),
                src_ip,
                segment: None,
                parts: 5..6,
            },
        ];
        let mut results = Vec::new();
        let calls = send_all(sender.as_raw_fd(), data, &parts, &messages, |i, r| {
            results.push((i, r.is_ok()))
        });
        assert_eq!(calls, 1);
        assert_eq!(results, vec![(0, true), (1, true), (2, true), (3, true)]);
        let mut buf = [0u8; 64];
        let mut got = |r: &std::net::UdpSocket| {
            let (n, _) = r.recv_from(&mut buf).expect("a datagram");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        assert_eq!(
            [got(&receivers[0]), got(&receivers[0]), got(&receivers[0])],
            ["a1-xx", "a2-yy", "a3"]
        );
        assert_eq!([got(&receivers[1]), got(&receivers[1])], ["b1", "b2"]);
        assert_eq!(got(&receivers[2]), "c1");
    }
}
