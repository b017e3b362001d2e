//! Loss repair toward subscribers: a subscriber's NACK is answered from the producer's own packet cache, once
//! per producer for all its consumers, instead of a copy of every forwarded packet per subscriber (what rtc's NACK
//! responder keeps).
//!
//! - `PacketCache` (per producer layer): the last packets that arrived, by source sequence number. One store per
//!   arriving packet: the payload `Bytes` is shared, nothing is copied or allocated.
//! - `SentLog` (per consumer): for each sequence number the subscriber saw, which source packet (layer SSRC, sequence number) it was
//!   and how it was rewritten (timestamp, VP8 PictureID / TL0PICIDX). One fixed-size entry written per forwarded
//!   packet into a ring allocated when the consumer is made.
//!
//! A NACKed sequence number is looked up in the consumer's log, then its source packet in the layer's cache, and
//! rewritten exactly as it was the first time (same sequence number, timestamp and payload bytes: SRTP then gives
//! the same ciphertext for the same index, and the subscriber's replay window takes it only if it never arrived).

use bytes::Bytes;
use std::time::{Duration, Instant};

/// Packets kept per video layer: at a high layer's ~150 packets a second, about 3 s — several round trips of
/// the worst commune link.
pub const VIDEO_CACHE: usize = 512;
/// Packets kept per audio stream (50 a second): about 2.5 s.
pub const AUDIO_CACHE: usize = 128;
/// A video packet is sent again at most this many times (a link that loses it three times over is better served
/// by a keyframe or a lower layer than by a NACK storm).
pub const MAX_RESENDS: u8 = 2;
/// An audio packet, more often: speech is what must get through, and it is small.
pub const MAX_AUDIO_RESENDS: u8 = 4;
/// Not again within this long of the last resend, whatever the round trip (a NACK repeated before the first
/// resend could arrive).
pub const MIN_RESEND_INTERVAL: Duration = Duration::from_millis(40);
/// A cached packet is let go after this long, whatever the capacity: a subscriber's jitter buffer has given up on
/// it (several round trips of the worst commune link), and a hall's low layer would otherwise hold half a minute
/// of video per producer (512 packets at 15 a second) — most of a province briefing's memory.
pub const MAX_AGE: Duration = Duration::from_millis(1500);

#[derive(Clone)]
pub struct CachedPacket {
    pub seq: u16,
    /// The source RTP timestamp (a joining subscriber's first picture is replayed from the cache: `replay.rs`).
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Bytes,
    stored: Instant,
}

/// The last packets of one layer, indexed by sequence number modulo the capacity, none older than `MAX_AGE`.
pub struct PacketCache {
    slots: Box<[Option<CachedPacket>]>,
    /// The oldest sequence number that may still be kept (where letting go by age resumes).
    oldest: u16,
}

impl PacketCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: (0..capacity.max(1)).map(|_| None).collect(),
            oldest: 0,
        }
    }

    /// Keep a packet (replacing the one `capacity` sequence numbers older), and let go of those older than
    /// `MAX_AGE` from the oldest on: amortised one slot looked at per store, nothing allocated.
    #[inline]
    pub fn store(&mut self, seq: u16, timestamp: u32, marker: bool, payload: &Bytes, now: Instant) {
        let len = self.slots.len();
        let i = usize::from(seq) % len;
        self.slots[i] = Some(CachedPacket {
            seq,
            timestamp,
            marker,
            payload: payload.clone(),
            stored: now,
        });
        // From the oldest towards `seq`, at most one ring's worth (a jump in sequence numbers starts afresh).
        let ahead = seq.wrapping_sub(self.oldest);
        if usize::from(ahead) >= len {
            self.oldest = seq.wrapping_sub(len as u16 - 1);
        }
        while self.oldest != seq {
            let slot = &mut self.slots[usize::from(self.oldest) % len];
            match slot {
                Some(p)
                    if p.seq == self.oldest
                        && now.saturating_duration_since(p.stored) < MAX_AGE =>
                {
                    break;
                }
                Some(p) if p.seq == self.oldest => *slot = None,
                _ => {}
            }
            self.oldest = self.oldest.wrapping_add(1);
        }
    }

    /// The packet with this sequence number, if it is still kept.
    pub fn get(&self, seq: u16) -> Option<&CachedPacket> {
        self.slots[usize::from(seq) % self.slots.len()]
            .as_ref()
            .filter(|p| p.seq == seq)
    }

    /// How many packets it can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

/// How one forwarded packet was rewritten for a subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// The sequence number the subscriber saw (the key).
    pub seq: u16,
    /// The source packet: its layer's SSRC (an index would move as simulcast layers open) and sequence number.
    pub source_ssrc: u32,
    pub source_seq: u16,
    pub timestamp: u32,
    pub picture_id: Option<u16>,
    pub tl0picidx: Option<u8>,
    /// Set once the entry is written.
    pub valid: bool,
    resends: u8,
    last_resend: Option<Instant>,
}

/// What the consumer's subscriber was sent, by its sequence number, in a ring.
pub struct SentLog {
    entries: Box<[Sent]>,
    max_resends: u8,
}

/// Why a NACKed packet was not sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotResent {
    /// Too old: no longer in the log or the cache (or never sent).
    Gone,
    /// Sent again recently or often enough already.
    Throttled,
}

impl SentLog {
    pub fn new(capacity: usize, max_resends: u8) -> Self {
        Self {
            entries: vec![Sent::default(); capacity.max(1)].into_boxed_slice(),
            max_resends,
        }
    }

    #[inline]
    pub fn record(
        &mut self,
        seq: u16,
        source_ssrc: u32,
        source_seq: u16,
        timestamp: u32,
        picture_id: Option<u16>,
        tl0picidx: Option<u8>,
    ) {
        let i = usize::from(seq) % self.entries.len();
        self.entries[i] = Sent {
            seq,
            source_ssrc,
            source_seq,
            timestamp,
            picture_id,
            tl0picidx,
            valid: true,
            resends: 0,
            last_resend: None,
        };
    }

    /// The entry for a NACKed sequence number, if it may be sent again now (and count the resend).
    /// `interval` is how long to wait before answering the same NACK again (about one round trip).
    pub fn take_resend(
        &mut self,
        seq: u16,
        now: Instant,
        interval: Duration,
    ) -> Result<Sent, NotResent> {
        let i = usize::from(seq) % self.entries.len();
        let e = &mut self.entries[i];
        if !e.valid || e.seq != seq {
            return Err(NotResent::Gone);
        }
        if e.resends >= self.max_resends
            || e.last_resend
                .is_some_and(|t| now.duration_since(t) < interval.max(MIN_RESEND_INTERVAL))
        {
            return Err(NotResent::Throttled);
        }
        e.resends += 1;
        e.last_resend = Some(now);
        Ok(*e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keeps_the_last_packets_and_forgets_older_ones() {
        let now = Instant::now();
        let mut cache = PacketCache::new(4);
        for seq in 65_534u16..=65_535 {
            cache.store(seq, 0, false, &Bytes::from(vec![seq as u8]), now);
        }
        for seq in 0u16..4 {
            cache.store(seq, 0, seq == 3, &Bytes::from(vec![seq as u8]), now);
        }
        // Across the wrap: 0..=3 are kept, 65534/65535 were replaced by 2 and 3.
        assert!(cache.get(65_534).is_none());
        assert!(cache.get(65_535).is_none());
        let p = cache.get(3).expect("kept");
        assert!(p.marker);
        assert_eq!(&p.payload[..], &[3]);
        assert_eq!(cache.get(0).map(|p| p.seq), Some(0));
        // The same slot, an older number: not confused with the newer packet.
        assert!(cache.get(65_532).is_none());
    }

    #[test]
    fn cached_payload_is_shared_not_copied() {
        let mut cache = PacketCache::new(8);
        let payload = Bytes::from(vec![1u8; 1000]);
        cache.store(7, 0, false, &payload, Instant::now());
        let kept = cache.get(7).expect("kept");
        assert_eq!(kept.payload.as_ptr(), payload.as_ptr());
    }

    #[test]
    fn cache_lets_go_of_packets_older_than_max_age() {
        // A low layer: 15 packets a second into a ring of 512, across a sequence number wrap, with a gap.
        let t0 = Instant::now();
        let mut cache = PacketCache::new(512);
        let payload = Bytes::from(vec![7u8; 800]);
        let mut seq = 65_500u16;
        for i in 0..150u32 {
            if i != 40 {
                cache.store(
                    seq,
                    0,
                    false,
                    &payload,
                    t0 + Duration::from_millis(u64::from(i) * 66),
                );
            }
            seq = seq.wrapping_add(1);
        }
        let now = t0 + Duration::from_millis(149 * 66);
        let kept: Vec<u16> = (0..150u16)
            .map(|i| 65_500u16.wrapping_add(i))
            .filter(|s| cache.get(*s).is_some())
            .collect();
        // What arrived within MAX_AGE of the last store is kept; everything older is gone (and its payload freed).
        let young = (0..150u64)
            .filter(|i| now.duration_since(t0 + Duration::from_millis(i * 66)) < MAX_AGE)
            .count();
        assert_eq!(kept.len(), young, "{kept:?}");
        assert_eq!(kept.last().copied(), Some(seq.wrapping_sub(1)));
        assert!(cache.get(65_500).is_none());
        let held = cache.slots.iter().filter(|s| s.is_some()).count();
        assert_eq!(held, young, "slots still holding a payload");
    }

    #[test]
    fn sent_log_answers_a_nack_once_per_interval_and_at_most_twice() {
        let t0 = Instant::now();
        let mut log = SentLog::new(16, MAX_RESENDS);
        log.record(100, 0xabc, 5000, 90_000, Some(77), Some(3));
        let rtt = Duration::from_millis(150);
        let e = log.take_resend(100, t0, rtt).expect("first resend");
        assert_eq!(
            (
                e.source_ssrc,
                e.source_seq,
                e.timestamp,
                e.picture_id,
                e.tl0picidx
            ),
            (0xabc, 5000, 90_000, Some(77), Some(3))
        );
        // The same NACK again before the resend can have arrived: not answered.
        assert_eq!(
            log.take_resend(100, t0 + Duration::from_millis(100), rtt),
            Err(NotResent::Throttled)
        );
        assert!(
            log.take_resend(100, t0 + Duration::from_millis(160), rtt)
                .is_ok()
        );
        // Twice is the limit.
        assert_eq!(
            log.take_resend(100, t0 + Duration::from_secs(1), rtt),
            Err(NotResent::Throttled)
        );
        // Never sent, or overwritten by a newer number in the same slot: gone.
        assert_eq!(log.take_resend(101, t0, rtt), Err(NotResent::Gone));
        log.record(116, 0, 1, 2, None, None);
        assert_eq!(log.take_resend(100, t0, rtt), Err(NotResent::Gone));
        // A recorded entry starts with a fresh resend budget.
        assert!(log.take_resend(116, t0, rtt).is_ok());
    }

    #[test]
    fn a_short_round_trip_still_waits_the_minimum_interval() {
        let t0 = Instant::now();
        let mut log = SentLog::new(4, MAX_RESENDS);
        log.record(1, 0, 1, 0, None, None);
        assert!(log.take_resend(1, t0, Duration::ZERO).is_ok());
        assert_eq!(
            log.take_resend(1, t0 + Duration::from_millis(10), Duration::ZERO),
            Err(NotResent::Throttled)
        );
        assert!(
            log.take_resend(1, t0 + MIN_RESEND_INTERVAL, Duration::ZERO)
                .is_ok()
        );
    }
}
