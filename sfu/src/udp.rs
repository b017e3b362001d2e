//! The one media UDP socket of a worker, read and written in batches through quinn-udp (recvmmsg, GRO on
//! receive; GSO on send for runs of same-sized datagrams to one destination).

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

/// Receive buffer per datagram slot: large enough for a GRO-coalesced batch.
const RECV_SLOT: usize = 64 * 1024;
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

pub struct MediaSocket {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    pub local_addr: SocketAddr,
    recv_bufs: Vec<Vec<u8>>,
    recv_meta: Vec<RecvMeta>,
}

impl MediaSocket {
    /// Bind the socket (on any thread).
    pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        let std_socket = std::net::UdpSocket::bind(addr)?;
        std_socket.set_nonblocking(true)?;
        Ok(std_socket)
    }

    /// Take a bound socket into the current thread's tokio reactor.
    pub fn from_std(std_socket: std::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&std_socket).into())?;
        // Bigger kernel buffers absorb a burst of video fan-out; failure to grow them is not fatal.
        let _ = state.set_send_buffer_size((&std_socket).into(), SOCKET_BUFFER);
        let _ = state.set_recv_buffer_size((&std_socket).into(), SOCKET_BUFFER);
        let local_addr = std_socket.local_addr()?;
        let socket = tokio::net::UdpSocket::from_std(std_socket)?;
        let batch = quinn_udp::BATCH_SIZE.max(1);
        Ok(MediaSocket {
            socket,
            state,
            local_addr,
            recv_bufs: (0..batch).map(|_| vec![0u8; RECV_SLOT]).collect(),
            recv_meta: vec![RecvMeta::default(); batch],
        })
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Receive one batch without waiting. Calls `on_datagram(from, local_ip, bytes)` for each datagram (GRO
    /// batches split by stride). Returns how many datagrams were delivered; `WouldBlock` when none were ready.
    pub fn recv_batch(
        &mut self,
        mut on_datagram: impl FnMut(SocketAddr, Option<IpAddr>, &[u8]),
    ) -> io::Result<usize> {
        let MediaSocket {
            socket,
            state,
            recv_bufs,
            recv_meta,
            ..
        } = self;
        let n = socket.try_io(tokio::io::Interest::READABLE, || {
            let mut slices: Vec<IoSliceMut<'_>> =
                recv_bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            state.recv((&*socket).into(), &mut slices, recv_meta)
        })?;
        let mut delivered = 0;
        for (meta, buf) in recv_meta.iter().zip(recv_bufs.iter()).take(n) {
            let stride = meta.stride.max(1);
            // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6: the media plane uses plain IPv4.
            let from = crate::canonical(meta.addr);
            let dst_ip = meta.dst_ip.map(|ip| ip.to_canonical());
            for chunk in buf[..meta.len].chunks(stride) {
                on_datagram(from, dst_ip, chunk);
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    /// Where to send a datagram for `to`: an IPv4 peer of an IPv6 (dual-stack) socket is addressed as
    /// IPv4-mapped IPv6.
    pub fn destination(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.local_addr.is_ipv6() => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            other => other,
        }
    }

    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }

    /// Send one transmit now; a full socket buffer drops it (UDP semantics: nobody waits on a slow peer).
    pub fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.socket.try_io(tokio::io::Interest::WRITABLE, || {
            self.state.try_send((&self.socket).into(), transmit)
        })
    }
}

/// Datagrams queued during one turn of the loop, sent together at its end.
#[derive(Default)]
pub struct Outbox {
    data: Vec<u8>,
    items: Vec<Queued>,
    /// The regrouped copy of `data` (kept to reuse its allocation; not needed where `sendmmsg` gathers).
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    grouped: Vec<u8>,
    /// The kernel refused a GSO send (`EIO`: a device without checksum offload): one datagram per message since.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    gso_refused: bool,
}

#[derive(Clone, Copy)]
struct Queued {
    to: SocketAddr,
    src_ip: Option<IpAddr>,
    start: usize,
    len: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushResult {
    pub datagrams: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub syscalls: u64,
}

impl Outbox {
    pub fn push(&mut self, to: SocketAddr, src_ip: Option<IpAddr>, bytes: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.items.push(Queued {
            to,
            src_ip,
            start,
            len: bytes.len(),
        });
    }

    /// Queue a datagram of `len` bytes written in place by `write` (which returns false to take it back).
    pub fn push_with(
        &mut self,
        to: SocketAddr,
        src_ip: Option<IpAddr>,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> bool,
    ) -> bool {
        let start = self.data.len();
        self.data.resize(start + len, 0);
        if !write(&mut self.data[start..]) {
            self.data.truncate(start);
            return false;
        }
        self.items.push(Queued {
            to,
            src_ip,
            start,
            len,
        });
        true
    }

    /// Put each destination's datagrams next to each other, in the order they were queued: the forwarding loop
    /// queues packet by packet for every subscriber in turn, and GSO can send one destination's run of datagrams
    /// in one call only if they are adjacent. One copy of the turn's bytes and a stable sort of its items, against
    /// a system call saved per datagram. (Where `sendmmsg` gathers, only the items are sorted: `flush`.)
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    fn group_by_destination(&mut self) {
        let key = |q: &Queued| (q.to, q.src_ip);
        if self.items.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
            return;
        }
        self.items.sort_by_key(key);
        self.grouped.clear();
        for q in &mut self.items {
            let start = self.grouped.len();
            self.grouped
                .extend_from_slice(&self.data[q.start..q.start + q.len]);
            q.start = start;
        }
        std::mem::swap(&mut self.data, &mut self.grouped);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Send everything in one `sendmmsg` (`sendmmsg.rs`): each destination's datagrams in queue order, those of
    /// one size (the last of a run may be shorter) as one GSO message gathered from where they were queued.
    #[cfg(target_os = "linux")]
    pub fn flush(&mut self, socket: &MediaSocket) -> FlushResult {
        use crate::sendmmsg::{Message, send_all};
        /// The kernel's limit on one UDP send (GSO included), with room for headers.
        const MAX_GSO_BYTES: usize = 65_000;
        let mut result = FlushResult::default();
        if self.items.is_empty() {
            return result;
        }
        let max_segments = if self.gso_refused {
            1
        } else {
            socket.max_gso_segments().max(1)
        };
        let key = |q: &Queued| (q.to, q.src_ip);
        if max_segments > 1 && !self.items.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
            // Stable: each destination's datagrams keep their order.
            self.items.sort_by_key(key);
        }
        let mut parts = Vec::with_capacity(self.items.len());
        let mut messages: Vec<Message> = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            let first = self.items[i];
            let mut j = i + 1;
            let mut bytes = first.len;
            while j < self.items.len()
                && j - i < max_segments
                && key(&self.items[j]) == key(&first)
                && self.items[j].len <= first.len
                && self.items[j - 1].len == first.len
                && bytes + self.items[j].len <= MAX_GSO_BYTES
            {
                bytes += self.items[j].len;
                j += 1;
            }
            let start = parts.len();
            parts.extend(self.items[i..j].iter().map(|q| (q.start, q.len)));
            messages.push(Message {
                to: socket.destination(first.to),
                src_ip: first.src_ip,
                segment: (j - i > 1).then_some(first.len as u16),
                parts: start..parts.len(),
            });
            i = j;
        }
        let mut gso_refused = false;
        result.syscalls = send_all(socket.raw_fd(), &self.data, &parts, &messages, |m, r| {
            let run = &parts[messages[m].parts.clone()];
            let (datagrams, bytes) = (
                run.len() as u64,
                run.iter().map(|p| p.1 as u64).sum::<u64>(),
            );
            match r {
                Ok(()) => {
                    result.datagrams += datagrams;
                    result.bytes += bytes;
                }
                Err(e) => {
                    result.dropped += datagrams;
                    if e.raw_os_error() == Some(libc::EIO) && messages[m].segment.is_some() {
                        gso_refused = true;
                    }
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!(to = %messages[m].to, error = %e, "media send failed");
                    }
                }
            }
        });
        if gso_refused && !self.gso_refused {
            tracing::warn!("the kernel refused a GSO send: one datagram per message from now on");
            self.gso_refused = true;
        }
        self.data.clear();
        self.items.clear();
        result
    }

    /// Send everything: consecutive datagrams to the same destination with the same size (the last of a run
    /// may be shorter) go out as one GSO transmit.
    #[cfg(not(target_os = "linux"))]
    pub fn flush(&mut self, socket: &MediaSocket) -> FlushResult {
        let mut result = FlushResult::default();
        let max_segments = socket.max_gso_segments().max(1);
        if max_segments > 1 {
            self.group_by_destination();
        }
        let mut i = 0;
        while i < self.items.len() {
            let first = self.items[i];
            let mut j = i + 1;
            let mut end = first.start + first.len;
            while max_segments > 1
                && j < self.items.len()
                && j - i < max_segments
                && self.items[j].to == first.to
                && self.items[j].src_ip == first.src_ip
                && self.items[j].start == end
                && self.items[j].len <= first.len
                && self.items[j - 1].len == first.len
            {
                end += self.items[j].len;
                j += 1;
            }
            let segments = j - i;
            let transmit = Transmit {
                destination: socket.destination(first.to),
                ecn: None,
                contents: &self.data[first.start..end],
                segment_size: (segments > 1).then_some(first.len),
                src_ip: first.src_ip,
            };
            result.syscalls += 1;
            match socket.try_send(&transmit) {
                Ok(()) => {
                    result.datagrams += segments as u64;
                    result.bytes += (end - first.start) as u64;
                }
                Err(e) => {
                    result.dropped += segments as u64;
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!(to = %first.to, error = %e, "media send failed");
                    }
                }
            }
            i = j;
        }
        self.data.clear();
        self.items.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_destinations_are_grouped_in_queue_order() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap_or_else(|_| unreachable!());
        let b: SocketAddr = "127.0.0.1:4000".parse().unwrap_or_else(|_| unreachable!());
        let mut outbox = Outbox::default();
        // Packet by packet, each to both subscribers: a1 b1 a2 b2 a3.
        for (to, bytes) in [
            (a, &b"a1"[..]),
            (b, b"b1"),
            (a, b"a2"),
            (b, b"b2"),
            (a, b"a3x"),
        ] {
            outbox.push(to, None, bytes);
        }
        outbox.group_by_destination();
        let order: Vec<(SocketAddr, &[u8])> = outbox
            .items
            .iter()
            .map(|q| (q.to, &outbox.data[q.start..q.start + q.len]))
            .collect();
        assert_eq!(
            order,
            vec![
                (b, &b"b1"[..]),
                (b, b"b2"),
                (a, b"a1"),
                (a, b"a2"),
                (a, b"a3x"),
            ]
        );
        // Each destination's bytes are contiguous, as a GSO transmit needs.
        assert_eq!(&outbox.data[..], b"b1b2a1a2a3x");
    }
}
