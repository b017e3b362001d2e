//! ICE-TCP: a worker's one TCP listening port (RFC 6544 passive candidates), shared by every peer like the UDP
//! port. Each accepted stream carries RFC 4571 frames (a 2-byte big-endian length, then one STUN, DTLS, RTP or
//! RTCP packet). The worker routes a stream to a connection by the ICE ufrag of its first frame, which must be a
//! STUN binding request; from then on every frame of the stream goes to that connection.
//!
//! Nothing here blocks the worker: streams are non-blocking, reads happen when a stream is readable, writes go
//! into a bounded buffer per stream that is flushed at the end of each loop turn (and when the socket becomes
//! writable again). A full buffer drops packets (as a full UDP socket buffer does); a stream that makes no write
//! progress for [`STUCK_AFTER`], sends garbage, or is not routed within [`UNROUTED_TIMEOUT`] is closed.

use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// An accepted stream's index in its worker.
pub type StreamId = u64;

/// At most this many accepted streams may wait for their first (routing) STUN request at once; more are refused.
pub const MAX_UNROUTED: usize = 32;
/// A stream that has not sent a STUN binding request for a known connection within this time is closed.
pub const UNROUTED_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes waiting to be written on one stream; beyond this, packets for it are dropped.
pub const MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// A stream with bytes waiting that has written nothing for this long is closed.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
/// Read at most this much from one stream per wake-up, so one busy stream cannot hold up the loop.
const MAX_READ_PER_WAKE: usize = 256 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// What woke a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Readable,
    Writable,
    Cancelled,
}

pub enum TcpEvent {
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    Wake(StreamId, Wake),
}

/// Why a stream was closed (counted in [`TcpStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed it, or reading or writing failed.
    Ended,
    /// A frame that is not a binding request for a known connection came first, or an empty frame.
    Garbage,
    /// A binding request for a connection already bound to another client address (its UDP pair was checked
    /// first): the normal end of the TCP pair of a browser whose UDP works.
    OtherPair,
    /// Not routed within [`UNROUTED_TIMEOUT`].
    Idle,
    /// No write progress for [`STUCK_AFTER`].
    Stuck,
    /// Its connection is gone.
    ConnectionGone,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpStats {
    pub accepted: u64,
    /// Refused at accept: too many unrouted streams.
    pub refused: u64,
    pub closed_garbage: u64,
    pub closed_idle: u64,
    pub closed_stuck: u64,
    /// Packets dropped because a stream's write buffer was full.
    pub send_dropped: u64,
}

struct Stream {
    io: Rc<TcpStream>,
    cancel: Arc<Notify>,
    peer: SocketAddr,
    /// The announced TCP candidate address this stream counts as arriving at (rtc's ICE matches it).
    local: SocketAddr,
    conn: Option<u64>,
    accepted_at: Instant,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// Bytes of `outbuf` already written.
    out_pos: usize,
    write_armed: bool,
    last_write_progress: Instant,
}

type WakeFuture = Pin<Box<dyn Future<Output = (StreamId, Wake)>>>;

/// A worker's TCP listener and its streams (used only from the worker's thread).
pub struct TcpMedia {
    listener: TcpListener,
    pub local_addr: SocketAddr,
    /// The TCP host candidates announced for this port.
    candidates: Vec<SocketAddr>,
    streams: HashMap<StreamId, Stream>,
    next_id: StreamId,
    wakes: FuturesUnordered<WakeFuture>,
    /// Streams with bytes to write (each at most once).
    pending_writes: Vec<StreamId>,
    scratch: Vec<u8>,
    /// After a failed accept (e.g. out of file descriptors), accepting pauses until this time instead of
    /// spinning the loop.
    accept_paused_until: Option<Instant>,
    pub stats: TcpStats,
}

/// A frame read from a stream.
pub struct Frame {
    pub stream: StreamId,
    pub bytes: BytesMut,
}

impl TcpMedia {
    /// Bind the listener (on any thread).
    pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Take a bound listener into the current thread's tokio reactor.
    pub fn from_std(
        listener: std::net::TcpListener,
        candidates: Vec<SocketAddr>,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        Ok(TcpMedia {
            listener: TcpListener::from_std(listener)?,
            local_addr,
            candidates,
            streams: HashMap::new(),
            next_id: 1,
            wakes: FuturesUnordered::new(),
            pending_writes: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            accept_paused_until: None,
            stats: TcpStats::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The next accepted stream or stream wake-up (cancel-safe).
    pub async fn next_event(&mut self) -> TcpEvent {
        let accepting = self.accept_paused_until.is_none_or(|t| Instant::now() >= t);
        tokio::select! {
            r = self.listener.accept(), if accepting => {
                self.accept_paused_until = r
                    .is_err()
                    .then(|| Instant::now() + Duration::from_millis(100));
                TcpEvent::Accepted(r)
            }
            Some((id, wake)) = self.wakes.next() => TcpEvent::Wake(id, wake),
        }
    }

    /// Take an accepted stream, unless too many are still waiting to be routed.
    pub fn add(&mut self, io: TcpStream, peer: SocketAddr, now: Instant) -> Option<StreamId> {
        let unrouted = self.streams.values().filter(|s| s.conn.is_none()).count();
        if unrouted >= MAX_UNROUTED {
            self.stats.refused += 1;
            return None;
        }
        let _ = io.set_nodelay(true);
        // IPv4 peers of a dual-stack (`::`) listener come as IPv4-mapped IPv6: use the plain IPv4 form.
        let peer = crate::canonical(peer);
        let arrived_at = io.local_addr().map(|a| a.ip().to_canonical()).ok();
        let local = self
            .candidates
            .iter()
            .find(|c| Some(c.ip()) == arrived_at)
            .or(self.candidates.first())
            .copied()
            .unwrap_or(self.local_addr);
        let id = self.next_id;
        self.next_id += 1;
        let stream = Stream {
            io: Rc::new(io),
            cancel: Arc::new(Notify::new()),
            peer,
            local,
            conn: None,
            accepted_at: now,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            out_pos: 0,
            write_armed: false,
            last_write_progress: now,
        };
        self.arm(id, &stream, Wake::Readable);
        self.streams.insert(id, stream);
        self.stats.accepted += 1;
        Some(id)
    }

    fn arm(&self, id: StreamId, stream: &Stream, wake: Wake) {
        let io = stream.io.clone();
        // Registered now, so a `close` before this future is first polled still cancels it.
        let cancel = stream.cancel.clone().notified_owned();
        self.wakes.push(Box::pin(async move {
            let ready = match wake {
                Wake::Writable => tokio::io::Interest::WRITABLE,
                _ => tokio::io::Interest::READABLE,
            };
            tokio::select! {
                _ = cancel => (id, Wake::Cancelled),
                r = io.ready(ready) => (id, if r.is_ok() { wake } else { Wake::Cancelled }),
            }
        }));
    }

    /// Where a stream comes from and which announced address it arrived at; its connection if routed.
    pub fn info(&self, id: StreamId) -> Option<(SocketAddr, SocketAddr, Option<u64>)> {
        self.streams.get(&id).map(|s| (s.peer, s.local, s.conn))
    }

    /// Route a stream to a connection (after its first binding request).
    pub fn bind_conn(&mut self, id: StreamId, conn: u64) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.conn = Some(conn);
        }
    }

    /// Read what a readable stream has and append its complete frames to `out`. Closes the stream on EOF, an
    /// error or an empty frame. Re-arms the read wake-up otherwise.
    pub fn read(&mut self, id: StreamId, out: &mut Vec<Frame>) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let mut total = 0;
        let mut end = None;
        while total < MAX_READ_PER_WAKE {
            match stream.io.try_read(&mut self.scratch) {
                Ok(0) => {
                    end = Some(CloseReason::Ended);
                    break;
                }
                Ok(n) => {
                    total += n;
                    stream.inbuf.extend_from_slice(&self.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    end = Some(CloseReason::Ended);
                    break;
                }
            }
        }
        let mut pos = 0;
        while stream.inbuf.len() - pos >= 2 {
            let len = usize::from(u16::from_be_bytes([
                stream.inbuf[pos],
                stream.inbuf[pos + 1],
            ]));
            if len == 0 {
                end = Some(CloseReason::Garbage);
                break;
            }
            if stream.inbuf.len() - pos - 2 < len {
                break;
            }
            out.push(Frame {
                stream: id,
                bytes: BytesMut::from(&stream.inbuf[pos + 2..pos + 2 + len]),
            });
            pos += 2 + len;
        }
        stream.inbuf.drain(..pos);
        match end {
            Some(reason) => self.close(id, reason),
            None => {
                let stream = &self.streams[&id];
                self.arm(id, stream, Wake::Readable);
            }
        }
    }

    /// Queue one packet for a stream, framed. Dropped (and counted) when the stream's buffer is full.
    pub fn queue(&mut self, id: StreamId, packet: &[u8]) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let Ok(len) = u16::try_from(packet.len()) else {
            self.stats.send_dropped += 1;
            return;
        };
        if stream.outbuf.len() - stream.out_pos + 2 + packet.len() > MAX_WRITE_BUFFER {
            self.stats.send_dropped += 1;
            return;
        }
        if stream.outbuf.len() == stream.out_pos {
            self.pending_writes.push(id);
            // The stuck clock starts when bytes start waiting, not at the last write of an idle stream.
            stream.last_write_progress = Instant::now();
        }
        stream.outbuf.extend_from_slice(&len.to_be_bytes());
        stream.outbuf.extend_from_slice(packet);
    }

    /// Write what is queued, as far as each socket takes it; the rest waits for the socket to become writable.
    pub fn flush(&mut self, now: Instant) {
        let pending = std::mem::take(&mut self.pending_writes);
        for id in &pending {
            self.write(*id, now);
        }
        self.pending_writes = pending;
        self.pending_writes.clear();
    }

    /// Write one stream's buffer; arm a writable wake-up if the socket is full.
    pub fn write(&mut self, id: StreamId, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let mut failed = false;
        while stream.out_pos < stream.outbuf.len() {
            match stream.io.try_write(&stream.outbuf[stream.out_pos..]) {
                Ok(n) => {
                    stream.out_pos += n;
                    stream.last_write_progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.close(id, CloseReason::Ended);
            return;
        }
        if stream.out_pos == stream.outbuf.len() {
            stream.outbuf.clear();
            stream.out_pos = 0;
        } else {
            // Keep the buffer from growing at the front.
            if stream.out_pos > MAX_WRITE_BUFFER / 2 {
                stream.outbuf.drain(..stream.out_pos);
                stream.out_pos = 0;
            }
            if !stream.write_armed {
                stream.write_armed = true;
                let stream = &self.streams[&id];
                self.arm(id, stream, Wake::Writable);
            }
        }
    }

    /// A writable wake-up: write what waits.
    pub fn on_writable(&mut self, id: StreamId, now: Instant) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.write_armed = false;
        }
        self.write(id, now);
    }

    pub fn close(&mut self, id: StreamId, reason: CloseReason) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        match reason {
            CloseReason::Garbage => self.stats.closed_garbage += 1,
            CloseReason::Idle => self.stats.closed_idle += 1,
            CloseReason::Stuck => self.stats.closed_stuck += 1,
            CloseReason::Ended | CloseReason::ConnectionGone | CloseReason::OtherPair => {}
        }
        tracing::debug!(peer = %stream.peer, ?reason, "ICE-TCP stream closed");
        // The pending wake-ups hold the socket; cancelling them lets it close.
        stream.cancel.notify_waiters();
    }

    /// Close the streams that were never routed in time, are stuck, or whose connection `alive` says is gone.
    pub fn sweep(&mut self, now: Instant, alive: impl Fn(u64) -> bool) {
        let mut doomed = Vec::new();
        for (id, s) in &self.streams {
            let reason = match s.conn {
                None if now.saturating_duration_since(s.accepted_at) >= UNROUTED_TIMEOUT => {
                    Some(CloseReason::Idle)
                }
                Some(conn) if !alive(conn) => Some(CloseReason::ConnectionGone),
                _ if s.out_pos < s.outbuf.len()
                    && now.saturating_duration_since(s.last_write_progress) >= STUCK_AFTER =>
                {
                    Some(CloseReason::Stuck)
                }
                _ => None,
            };
            if let Some(r) = reason {
                doomed.push((*id, r));
            }
        }
        for (id, r) in doomed {
            self.close(id, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Accept one stream and collect frames until `want` arrived or the stream closed.
    async fn frames_of(tcp: &mut TcpMedia, want: usize) -> (Vec<Vec<u8>>, bool) {
        let mut frames = Vec::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while frames.len() < want && Instant::now() < deadline {
            let ev = tokio::time::timeout(Duration::from_secs(5), tcp.next_event())
                .await
                .expect("an event");
            match ev {
                TcpEvent::Accepted(r) => {
                    let (io, peer) = r.expect("accepted");
                    tcp.add(io, peer, Instant::now()).expect("taken");
                }
                TcpEvent::Wake(id, Wake::Readable) => {
                    tcp.read(id, &mut out);
                    frames.extend(out.drain(..).map(|f| f.bytes.to_vec()));
                    if tcp.info(id).is_none() {
                        return (frames, true);
                    }
                }
                TcpEvent::Wake(..) => {}
            }
        }
        (frames, false)
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_reassembled_and_writes_are_framed() {
        let candidate: SocketAddr = "198.51.100.7:443".parse().expect("addr");
        let listener = TcpMedia::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let mut tcp = TcpMedia::from_std(listener, vec![candidate]).expect("listener");
        let mut client = TcpStream::connect(tcp.local_addr).await.expect("connect");
        // Two frames (5 and 3 bytes), sent in pieces that cut through both the header and the payload.
        let bytes = [0u8, 5, 1, 2, 3, 4, 5, 0, 3, 6, 7, 8];
        let writer = tokio::spawn(async move {
            for piece in [&bytes[..1], &bytes[1..4], &bytes[4..8], &bytes[8..]] {
                client.write_all(piece).await.expect("write");
                client.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let (frames, closed) = frames_of(&mut tcp, 2).await;
        assert_eq!(frames, vec![vec![1, 2, 3, 4, 5], vec![6, 7, 8]]);
        assert!(!closed);
        let mut client = writer.await.expect("writer");
        // The stream counts as arriving at the announced candidate; it is not routed yet.
        let id = tcp.streams.keys().copied().next().expect("one stream");
        let (_, local, conn) = tcp.info(id).expect("info");
        assert_eq!((local, conn), (candidate, None));
        // Outgoing packets get the 2-byte length.
        tcp.queue(id, &[9, 9, 9]);
        tcp.queue(id, &[]);
        tcp.flush(Instant::now());
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, [0, 3, 9, 9, 9, 0, 0]);
    }

    #[tokio::test]
    async fn an_empty_frame_closes_the_stream_and_a_full_buffer_drops() {
        let listener = TcpMedia::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let mut tcp = TcpMedia::from_std(listener, vec![]).expect("listener");
        let mut client = TcpStream::connect(tcp.local_addr).await.expect("connect");
        client.write_all(&[0, 0, 1]).await.expect("write");
        let (frames, closed) = frames_of(&mut tcp, 1).await;
        assert!(frames.is_empty() && closed);
        assert!(tcp.is_empty());
        assert_eq!(tcp.stats.closed_garbage, 1);

        // A peer that reads nothing: queueing beyond the buffer drops, never blocks.
        let _silent = TcpStream::connect(tcp.local_addr).await.expect("connect");
        let ev = tcp.next_event().await;
        let TcpEvent::Accepted(Ok((io, peer))) = ev else {
            panic!("accept expected");
        };
        let id = tcp.add(io, peer, Instant::now()).expect("taken");
        let packet = vec![7u8; 1200];
        // More than the kernel's loopback buffers (a few MB) and ours together.
        for _ in 0..(32 * MAX_WRITE_BUFFER / packet.len()) {
            tcp.queue(id, &packet);
            tcp.flush(Instant::now());
        }
        assert!(tcp.stats.send_dropped > 0, "{:?}", tcp.stats);
        // Routed, its connection alive, but no write progress for STUCK_AFTER: the sweep closes it.
        tcp.bind_conn(id, 1);
        tcp.sweep(Instant::now(), |_| true);
        assert_eq!(tcp.len(), 1, "not stuck yet");
        tcp.sweep(
            Instant::now() + STUCK_AFTER + Duration::from_secs(1),
            |_| true,
        );
        assert!(tcp.is_empty());
        assert_eq!(tcp.stats.closed_stuck, 1);
    }
}
