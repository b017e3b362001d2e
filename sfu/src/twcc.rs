//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01) on a
//! subscriber's leg: the SFU numbers every packet it sends there (one counter per connection, in a header
//! extension), notes when it left and how large it was, and reads the subscriber's feedback of which arrived and
//! when. rtc's own TWCC sender and GCC cannot see these packets: forwarded RTP leaves through the SFU's own SRTP
//! path (`srtp.rs`), not rtc's write pipeline.
//!
//! What the feedback is used for:
//! - **loss by send time**: what the link lost of the packets sent outside probes ([`TransportCc::take_tally`]),
//!   for the downlink estimate (`layers.rs`) — not smeared over a report interval as receiver reports are, and
//!   with the packets of a probe left out;
//! - **probes**: while a probe is under way (`start_probe`/`end_probe`), every packet sent (media and padding) is
//!   marked; once the feedback has told of all of them, [`TransportCc::probe_outcome`] gives the rate they were
//!   sent at, the rate they arrived at and what was lost. A link that delivered the probe whole and at its pace
//!   can carry that rate.
//!
//! Per packet: one clock difference, one 16-byte ring entry and 8 header bytes. No allocation.

use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, SymbolTypeTcc, TransportLayerCc,
};
use std::time::{Duration, Instant};

/// The header extension's URI, as negotiated in SDP.
pub const URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Bytes the extension adds to a packet: the one-byte-header profile (4), the element (3), padding (1).
pub const EXTENSION_LEN: usize = 8;

/// Packets remembered: some seconds of a subscriber's traffic, longer than feedback takes to come back.
const RING: usize = 1024;

/// Packets sent this long after a probe ended may still meet its queue: they count neither for it nor as loss.
pub const PROBE_TAIL: Duration = Duration::from_millis(100);

/// The extension id a peer's SDP gave the transport-wide sequence number (`a=extmap:<id> <URI>`), if it did.
pub fn extension_id(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|line| {
        let rest = line.trim_end().strip_prefix("a=extmap:")?;
        let (id, rest) = rest.split_once(' ')?;
        let id = id.split('/').next()?.parse::<u8>().ok()?;
        let uri = rest.split_whitespace().next()?;
        (uri == URI && (1..=14).contains(&id)).then_some(id)
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    size: u16,
    seq: u16,
    valid: bool,
    /// Sent during a probe (`Some(probe number)`), or in its tail (`PROBE_TAIL_MARK`).
    probe: Option<u16>,
}

const PROBE_TAIL_MARK: u16 = u16::MAX;

/// What the feedback told of the packets sent outside probes since the last [`TransportCc::take_tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub reported: u32,
    pub lost: u32,
    /// Bytes of those that arrived, and the first and last arrival (µs, the feedback's clock).
    pub received_bytes: u64,
    pub arrivals: Option<(i64, i64)>,
}

impl Tally {
    /// The share lost, once enough packets were reported to mean something.
    pub fn loss(&self, at_least: u32) -> Option<f64> {
        (self.reported >= at_least.max(1)).then(|| f64::from(self.lost) / f64::from(self.reported))
    }

    /// The rate they arrived at (bit/s), over at least `span` of arrivals.
    pub fn received_bps(&self, span: Duration) -> Option<u64> {
        let (first, last) = self.arrivals?;
        let us = last - first;
        (us > 0 && us as u128 >= span.as_micros())
            .then(|| self.received_bytes * 8 * 1_000_000 / us as u64)
    }
}

/// What a probe's packets met.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeOutcome {
    /// The rate they left at (bit/s).
    pub sent_bps: u64,
    /// The rate they arrived at (bit/s; 0 if fewer than two arrived).
    pub received_bps: u64,
    /// The share of them that did not arrive.
    pub loss: f64,
    /// Packets it sent, and how many of them arrived.
    pub packets: u32,
    pub received: u32,
}

#[derive(Debug, Default)]
struct ProbeWatch {
    number: u16,
    sending: bool,
    ended_at_us: u64,
    sent: u32,
    sent_bytes: u64,
    first_sent_us: Option<u64>,
    last_sent_us: u64,
    last_size: u64,
    reported: u32,
    lost: u32,
    received_bytes: u64,
    first_arrival: Option<(i64, u64)>,
    last_arrival: i64,
}

/// One subscribe connection's transport-wide sequence numbers, what was sent under them, and what its feedback
/// said.
#[derive(Debug)]
pub struct TransportCc {
    id: u8,
    next: u16,
    epoch: Instant,
    /// The last `now` stamped and its microseconds since `epoch`: a worker turn stamps many packets with one
    /// `now`, and an `Instant` difference costs ~70 instructions.
    last_now: (Instant, u64),
    sent: Box<[Sent]>,
    tally: Tally,
    probe: Option<ProbeWatch>,
    probes: u16,
    /// Feedback packets read, and packets reported.
    pub feedbacks: u64,
    pub reported: u64,
}

impl TransportCc {
    pub fn new(id: u8, now: Instant) -> Self {
        TransportCc {
            id,
            next: 0,
            epoch: now,
            last_now: (now, 0),
            sent: vec![Sent::default(); RING].into_boxed_slice(),
            tally: Tally::default(),
            probe: None,
            probes: 0,
            feedbacks: 0,
            reported: 0,
        }
    }

    pub fn extension_id(&self) -> u8 {
        self.id
    }

    /// Number one outgoing packet of `size` bytes (as sent) leaving at `now`; writes the extension into `ext`
    /// (`EXTENSION_LEN` bytes right after the fixed RTP header; the caller sets the header's X bit).
    #[inline]
    pub fn stamp(&mut self, now: Instant, size: usize, ext: &mut [u8]) {
        let seq = self.next;
        self.next = seq.wrapping_add(1);
        let at_us = if now == self.last_now.0 {
            self.last_now.1
        } else {
            let us = now.saturating_duration_since(self.epoch).as_micros() as u64;
            self.last_now = (now, us);
            us
        };
        let probe = match &self.probe {
            Some(p) if p.sending => Some(p.number),
            Some(p) if at_us < p.ended_at_us + PROBE_TAIL.as_micros() as u64 => {
                Some(PROBE_TAIL_MARK)
            }
            _ => None,
        };
        if let Some(p) = self.probe.as_mut().filter(|p| p.sending) {
            p.sent += 1;
            p.sent_bytes += size as u64;
            p.first_sent_us.get_or_insert(at_us);
            p.last_sent_us = at_us;
            p.last_size = size as u64;
        }
        self.sent[usize::from(seq) % RING] = Sent {
            size: size.min(usize::from(u16::MAX)) as u16,
            seq,
            valid: true,
            probe,
        };
        let [hi, lo] = seq.to_be_bytes();
        ext[..EXTENSION_LEN].copy_from_slice(&[
            0xBE,
            0xDE,
            0x00,
            0x01,
            self.id << 4 | 1,
            hi,
            lo,
            0,
        ]);
    }

    /// Mark the packets sent from now on as a probe's.
    pub fn start_probe(&mut self) {
        self.probes = self.probes.wrapping_add(1) % PROBE_TAIL_MARK;
        self.probe = Some(ProbeWatch {
            number: self.probes,
            sending: true,
            ..Default::default()
        });
    }

    /// The probe's last packet has been sent.
    pub fn end_probe(&mut self, now: Instant) {
        if let Some(p) = &mut self.probe {
            p.sending = false;
            p.ended_at_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        }
    }

    /// The probe's outcome, once it has ended and the feedback has told of every packet it sent (then it is
    /// forgotten); `None` before.
    pub fn probe_outcome(&mut self) -> Option<ProbeOutcome> {
        let p = self.probe.as_ref()?;
        if p.sending || p.reported < p.sent {
            return None;
        }
        let p = self.probe.take()?;
        Some(outcome(&p))
    }

    /// Forget the probe under way (its feedback never came); what it measured so far.
    pub fn abandon_probe(&mut self) -> Option<ProbeOutcome> {
        self.probe.take().map(|p| outcome(&p))
    }

    #[cfg(test)]
    fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// What the feedback told of the packets sent outside probes since the last call.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// Read one feedback packet: each packet it reports, received (with its arrival time) or lost.
    pub fn on_feedback(&mut self, fb: &TransportLayerCc) {
        self.feedbacks += 1;
        let mut seq = fb.base_sequence_number;
        // Arrival times in microseconds from the feedback's reference time (64 ms units); only differences
        // between arrivals are used.
        let mut arrival = i64::from(fb.reference_time) * 64_000;
        let mut deltas = fb.recv_deltas.iter();
        let symbols = fb
            .packet_chunks
            .iter()
            .flat_map(|chunk| {
                let (run, vector) = match chunk {
                    PacketStatusChunk::RunLengthChunk(c) => {
                        (Some((c.packet_status_symbol, c.run_length)), &[][..])
                    }
                    PacketStatusChunk::StatusVectorChunk(c) => (None, &c.symbol_list[..]),
                };
                run.into_iter()
                    .flat_map(|(s, n)| std::iter::repeat_n(s, usize::from(n)))
                    .chain(vector.iter().copied())
            })
            .take(usize::from(fb.packet_status_count));
        for symbol in symbols {
            let received = match symbol {
                SymbolTypeTcc::PacketNotReceived => false,
                SymbolTypeTcc::PacketReceivedSmallDelta
                | SymbolTypeTcc::PacketReceivedLargeDelta => {
                    if let Some(d) = deltas.next() {
                        arrival += d.delta;
                    }
                    true
                }
                SymbolTypeTcc::PacketReceivedWithoutDelta => true,
            };
            self.reported_one(seq, received, arrival);
            seq = seq.wrapping_add(1);
        }
    }

    fn reported_one(&mut self, seq: u16, received: bool, arrival_us: i64) {
        let e = &mut self.sent[usize::from(seq) % RING];
        if !e.valid || e.seq != seq {
            return;
        }
        // Each packet is counted once (a late arrival reported again after a loss is left as it was).
        e.valid = false;
        self.reported += 1;
        match e.probe {
            None => {
                let t = &mut self.tally;
                t.reported += 1;
                t.lost += u32::from(!received);
                if received {
                    // Bytes count from the second arrival on: the first opens the span.
                    t.arrivals = Some(match t.arrivals {
                        None => (arrival_us, arrival_us),
                        Some((first, last)) => {
                            t.received_bytes += u64::from(e.size);
                            (first.min(arrival_us), last.max(arrival_us))
                        }
                    });
                }
            }
            Some(PROBE_TAIL_MARK) => {}
            Some(n) => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.number == n) {
                    p.reported += 1;
                    if received {
                        p.received_bytes += u64::from(e.size);
                        match p.first_arrival {
                            Some((first, _)) if first <= arrival_us => {}
                            _ => p.first_arrival = Some((arrival_us, u64::from(e.size))),
                        }
                        p.last_arrival = p.last_arrival.max(arrival_us);
                    } else {
                        p.lost += 1;
                    }
                }
            }
        }
    }
}

fn outcome(p: &ProbeWatch) -> ProbeOutcome {
    let rate = |bytes: u64, us: i64| {
        if us <= 0 {
            0
        } else {
            bytes * 8 * 1_000_000 / us as u64
        }
    };
    let sent_span = p
        .first_sent_us
        .map_or(0, |f| p.last_sent_us.saturating_sub(f)) as i64;
    // Rates over the span between the first and the last packet: the last one sent (or the first to arrive)
    // does not count, as its time is the span's end (start).
    let received_bps = p.first_arrival.map_or(0, |(first, size)| {
        rate(
            p.received_bytes.saturating_sub(size),
            p.last_arrival - first,
        )
    });
    ProbeOutcome {
        sent_bps: rate(p.sent_bytes.saturating_sub(p.last_size), sent_span),
        received_bps,
        loss: if p.sent == 0 {
            0.0
        } else {
            f64::from(p.lost) / f64::from(p.sent)
        },
        packets: p.sent,
        received: p.reported - p.lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
    };

    /// Feedback for packets from `base`: each `Some(delta_us)` arrived that long after the one before, `None`
    /// was lost. One status vector chunk of two-bit symbols per seven packets.
    fn feedback(base: u16, packets: &[Option<i64>]) -> TransportLayerCc {
        let symbols: Vec<SymbolTypeTcc> = packets
            .iter()
            .map(|p| match p {
                Some(d) if (0..=63_750).contains(d) => SymbolTypeTcc::PacketReceivedSmallDelta,
                Some(_) => SymbolTypeTcc::PacketReceivedLargeDelta,
                None => SymbolTypeTcc::PacketNotReceived,
            })
            .collect();
        TransportLayerCc {
            base_sequence_number: base,
            packet_status_count: packets.len() as u16,
            reference_time: 10,
            packet_chunks: symbols
                .chunks(7)
                .map(|c| {
                    PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                        type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                        symbol_size: SymbolSizeTypeTcc::TwoBit,
                        symbol_list: c.to_vec(),
                    })
                })
                .collect(),
            recv_deltas: packets
                .iter()
                .zip(&symbols)
                .filter_map(|(p, s)| {
                    p.map(|delta| RecvDelta {
                        type_tcc_packet: *s,
                        delta,
                    })
                })
                .collect(),
            ..Default::default()
        }
    }

    fn send(cc: &mut TransportCc, at: Instant, size: usize) -> u16 {
        let mut ext = [0u8; EXTENSION_LEN];
        cc.stamp(at, size, &mut ext);
        u16::from_be_bytes([ext[5], ext[6]])
    }

    #[test]
    fn the_extension_id_comes_from_the_extmap_line() {
        let sdp = "v=0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
                   a=extmap:5/sendrecv http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";
        assert_eq!(extension_id(sdp), Some(5));
        assert_eq!(
            extension_id("a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"),
            None
        );
        // Ids outside the one-byte header's 1..=14 are not used.
        assert_eq!(extension_id(&format!("a=extmap:15 {URI}\r\n")), None);
    }

    #[test]
    fn the_extension_carries_the_connections_running_number() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(3, t0);
        let mut ext = [0u8; EXTENSION_LEN];
        cc.stamp(t0, 100, &mut ext);
        assert_eq!(ext, [0xBE, 0xDE, 0, 1, 0x31, 0, 0, 0]);
        cc.stamp(t0, 100, &mut ext);
        assert_eq!(&ext[4..7], &[0x31, 0, 1]);
    }

    #[test]
    fn losses_are_counted_once_per_packet_across_a_wrap() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(3, t0);
        cc.next = 65_534;
        let first = send(&mut cc, t0, 1000);
        for _ in 0..5 {
            send(&mut cc, t0, 1000);
        }
        cc.on_feedback(&feedback(
            first,
            &[Some(0), None, Some(1000), None, Some(1000), Some(1000)],
        ));
        let t = cc.take_tally();
        assert_eq!((t.reported, t.lost), (6, 2));
        // Three packets of 1000 bytes after the first arrival, over 3 ms: 8 Mbit/s.
        assert_eq!(t.received_bps(Duration::from_millis(3)), Some(8_000_000));
        assert_eq!(
            t.received_bps(Duration::from_millis(4)),
            None,
            "too short a span"
        );
        // The same packets reported again (a repeated feedback) are not counted twice.
        cc.on_feedback(&feedback(first, &[Some(0); 6]));
        assert_eq!(cc.take_tally(), Tally::default());
        assert_eq!(cc.feedbacks, 2);
        assert_eq!(cc.reported, 6);
    }

    #[test]
    fn run_length_chunks_and_packets_never_sent_are_read() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(3, t0);
        for _ in 0..4 {
            send(&mut cc, t0, 500);
        }
        let fb = TransportLayerCc {
            base_sequence_number: 0,
            packet_status_count: 10,
            packet_chunks: vec![
                PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: SymbolTypeTcc::PacketNotReceived,
                    run_length: 2,
                }),
                PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                    run_length: 8,
                }),
            ],
            recv_deltas: vec![
                RecvDelta {
                    type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                    delta: 250,
                };
                8
            ],
            ..Default::default()
        };
        cc.on_feedback(&fb);
        // Packets 4..10 were never sent here: not counted.
        let t = cc.take_tally();
        assert_eq!((t.reported, t.lost), (4, 2));
    }

    #[test]
    fn a_probe_delivered_at_its_pace_shows_its_rate_and_is_left_out_of_the_loss() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(3, t0);
        let first = send(&mut cc, t0, 1000);
        cc.start_probe();
        // 100 packets of 1000 bytes, one per millisecond: 8 Mbit/s.
        for i in 1..=100 {
            send(&mut cc, t0 + Duration::from_millis(i), 1000);
        }
        cc.end_probe(t0 + Duration::from_millis(100));
        assert_eq!(cc.probe_outcome(), None, "no feedback yet");
        let mut packets = vec![Some(0)];
        packets.extend((0..100).map(|_| Some(1000)));
        cc.on_feedback(&feedback(first, &packets));
        let o = cc.probe_outcome().expect("every packet reported");
        assert_eq!((o.packets, o.received), (100, 100));
        assert_eq!(o.loss, 0.0);
        assert_eq!(o.sent_bps, 8_000_000);
        assert_eq!(o.received_bps, 8_000_000);
        let t = cc.take_tally();
        assert_eq!(
            (t.reported, t.lost),
            (1, 0),
            "only the packet before the probe"
        );
        assert!(!cc.probing());
    }

    #[test]
    fn a_probe_through_a_narrow_link_arrives_slower_and_loses() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(3, t0);
        cc.start_probe();
        let first = send(&mut cc, t0, 1000);
        for i in 1..50 {
            send(&mut cc, t0 + Duration::from_millis(i), 1000);
        }
        cc.end_probe(t0 + Duration::from_millis(50));
        // Packets sent in the tail are neither the probe's nor counted as loss.
        send(&mut cc, t0 + Duration::from_millis(60), 1000);
        // Every other packet lost; those that arrive come 4 ms apart (2 Mbit/s).
        let packets: Vec<Option<i64>> = (0..51)
            .map(|i| match i {
                0 => Some(0),
                50 => None,
                i if i % 2 == 0 => Some(4000),
                _ => None,
            })
            .collect();
        cc.on_feedback(&feedback(first, &packets));
        let o = cc.probe_outcome().expect("reported");
        assert_eq!(o.packets, 50);
        assert!(o.received < o.packets);
        assert!((o.loss - 0.5).abs() < 1e-9, "{o:?}");
        assert_eq!(o.sent_bps, 8_000_000);
        assert_eq!(o.received_bps, 2_000_000);
        assert_eq!(cc.take_tally(), Tally::default());
    }
}
