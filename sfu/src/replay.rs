//! A joining subscriber's first picture, from the cache: instead of waiting for the publisher's next keyframe
//! (a keyframe request, the publisher's throttle — Chromium ignores requests within 300 ms of the last — and the
//! frame's encoding and sending), a consumer that has never had a picture is sent the layer's last keyframe and
//! every packet after it, from the layer's `PacketCache`, then the live stream.
//!
//! The replayed frames keep their order and sequence numbers, but their timestamps are squeezed together one tick
//! apart, ending at the newest frame's own timestamp when the replay began: the subscriber decodes them all on
//! arrival and shows the newest, instead of playing them out at their original pace — which would put its picture
//! as far behind the meeting as the keyframe is old. Packets that arrive during the replay follow with their own
//! timestamps.
//!
//! **Which layer.** The highest layer up to the consumer's target whose picture fits in [`BURST`] (it leaves at
//! once, as a live keyframe would); the consumer moves up at the target layer's next keyframe, as after any
//! switch. If none fits, the lowest layer's picture, paced.
//!
//! **Pacing.** The first [`BURST`] bytes leave at once (the keyframe, usually, or a good part of it); the rest is
//! paced at twice the layer's rate, catching up with the live stream in about as long as the keyframe is old. A
//! link that carries the layer thus queues at most about half that long once, where an unpaced replay of a
//! 1.5 Mbit/s picture (tens of kilobytes) would overflow a commune link's queue. A paced replay overruns a link
//! that carries the layer with less than that headroom: that is why a smaller layer's picture that fits in a
//! burst is preferred (measured: a hall at 2 Mbit/s replayed f at twice its 1.2 Mbit/s lost enough to be cut to h).
//! Until it has caught up, the consumer's live packets are not forwarded: the replay sends them from the cache,
//! in order.
//!
//! Pure logic over the cache: the worker feeds what it yields through the consumer's `Forwarder` and sends it.

use crate::retransmit::{CachedPacket, PacketCache};
use std::time::{Duration, Instant};

/// The replay waits this long after the subscriber's connection is up. Browsers take SRTP at once, but a client
/// on rtc (webrtc-rs, like our simulated endpoints) installs its SRTP keys only when it next polls for events,
/// after feeding every datagram of the burst it read with the DTLS handshake's end: a picture in that burst would
/// be lost whole, and the subscriber would wait for the next keyframe. Measured in `loadtest --scenario province`:
/// without the wait ~5 % of receivers lost their replay; with it, 0–3 % lost their first picture, as many as lose
/// a requested keyframe the same way without any replay (a loaded client still reads late).
pub const AFTER_CONNECTED: Duration = Duration::from_millis(50);

/// A keyframe older than this is not replayed; the publisher is asked for a new one instead.
pub const MAX_AGE: Duration = Duration::from_millis(1000);
/// What leaves at once: about 50 ms of a 2 Mbit/s commune link's queue.
pub const BURST: usize = 12_000;
/// The slowest a replay is paced (its layer's rate is known from its picture, so this is only a floor).
pub const MIN_RATE: u64 = 200_000;
/// A replay is paced at this many times the layer's rate.
pub const RATE_FACTOR: u64 = 2;
/// How often a paced replay sends.
pub const STEP: Duration = Duration::from_millis(5);
/// A replay that has not caught up after this long ends (the live stream goes on from where it is: the subscriber
/// sees a gap it can ask to have resent). It should take about as long as the keyframe was old.
pub const MAX_CATCH_UP: Duration = Duration::from_millis(2000);

/// A replay under way: where it stands in the layer's cache, and its pace.
#[derive(Debug)]
pub struct Replay {
    /// The layer replayed (index in the producer's layers) and its SSRC.
    pub layer: usize,
    pub ssrc: u32,
    /// Payload bytes of the picture.
    pub bytes: usize,
    /// The next packet to send.
    next: u16,
    /// Packets of the picture still to send (squeezed timestamps); after them, packets keep their own.
    picture_left: usize,
    newest_timestamp: u32,
    /// Frames of the picture after the current one (timestamp changes still ahead).
    frames_after: u32,
    previous_timestamp: Option<u32>,
    /// Bytes that may leave now, refilled at `rate` (bytes per second).
    credit: f64,
    rate: f64,
    last: Instant,
    started: Instant,
}

/// What the replay sends next.
pub enum Step<'a> {
    /// This packet, with this timestamp.
    Send(&'a CachedPacket, u32),
    /// Its pace allows nothing more for now.
    Wait,
    /// It has caught up with the layer's newest packet: the live stream goes on from here.
    Done,
    /// The cache no longer holds the next packet (the replay fell too far behind): it ends here.
    Lost,
}

impl Replay {
    /// A replay of the layer's picture from the keyframe that started at sequence number `keyframe.0` (arrived at
    /// `keyframe.1`) up to `newest`, if the cache still holds every packet of it and the keyframe is at most
    /// `MAX_AGE` old; paced at `RATE_FACTOR` × the layer's rate (at least `MIN_RATE`): `layer_bps`, or what the
    /// picture itself came at if that is more (a layer's measured rate lags, or is not known yet).
    pub fn start(
        cache: &PacketCache,
        keyframe: (u16, Instant),
        newest: u16,
        now: Instant,
        (layer, ssrc, layer_bps): (usize, u32, u64),
    ) -> Option<Replay> {
        let (start, at) = keyframe;
        if now.saturating_duration_since(at) > MAX_AGE {
            return None;
        }
        let count = usize::from(newest.wrapping_sub(start)) + 1;
        // Half the cache at most: the live packets during the replay must not push its next ones out.
        if count > cache.capacity() / 2 {
            return None;
        }
        let mut frames_after = 0u32;
        let mut previous = None;
        let mut bytes = 0u64;
        for i in 0..count {
            let p = cache.get(start.wrapping_add(i as u16))?;
            if previous.is_some_and(|t| t != p.timestamp) {
                frames_after += 1;
            }
            previous = Some(p.timestamp);
            bytes += p.payload.len() as u64;
        }
        // The picture's own rate, over at least 100 ms (a keyframe alone says little of the layer's rate).
        let age = now
            .saturating_duration_since(at)
            .max(Duration::from_millis(100));
        let picture_bps = (bytes * 8) as f64 / age.as_secs_f64();
        Some(Replay {
            layer,
            ssrc,
            bytes: bytes as usize,
            next: start,
            picture_left: count,
            newest_timestamp: previous?,
            frames_after,
            previous_timestamp: None,
            credit: BURST as f64,
            rate: ((layer_bps as f64).max(picture_bps) * RATE_FACTOR as f64).max(MIN_RATE as f64)
                / 8.0,
            last: now,
            started: now,
        })
    }

    /// Whether it has run `MAX_CATCH_UP` without catching up.
    pub fn overdue(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= MAX_CATCH_UP
    }

    /// Give the pace its due up to `now` (at most a burst's worth saved up).
    pub fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.credit = (self.credit + self.rate * dt).min(BURST as f64);
    }

    /// The next step, the layer's newest packet being `newest`. A packet returned is taken as sent.
    pub fn step<'a>(&mut self, cache: &'a PacketCache, newest: u16) -> Step<'a> {
        loop {
            // Past the newest (or ahead of it: a reordered packet made an older one the newest for a moment).
            let ahead = self.next.wrapping_sub(newest);
            if ahead != 0 && ahead < 0x8000 {
                return Step::Done;
            }
            if self.credit <= 0.0 {
                return Step::Wait;
            }
            let Some(p) = cache.get(self.next) else {
                if self.picture_left > 0 {
                    return Step::Lost;
                }
                // A live packet that never arrived: the subscriber sees the loss it would have seen anyway.
                self.next = self.next.wrapping_add(1);
                continue;
            };
            let timestamp = if self.picture_left > 0 {
                if self.previous_timestamp.is_some_and(|t| t != p.timestamp) {
                    self.frames_after = self.frames_after.saturating_sub(1);
                }
                self.previous_timestamp = Some(p.timestamp);
                self.picture_left -= 1;
                self.newest_timestamp.wrapping_sub(self.frames_after)
            } else {
                p.timestamp
            };
            self.next = self.next.wrapping_add(1);
            self.credit -= p.payload.len() as f64;
            return Step::Send(p, timestamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Three frames of 30 fps video from sequence number 65534 (wrapping): a keyframe of three packets, then two
    /// frames of two packets.
    fn cache_with_frames(t0: Instant) -> PacketCache {
        let mut cache = PacketCache::new(64);
        let frames = [(3u16, 9_000u32), (2, 12_000), (2, 15_000)];
        let mut seq = 65534u16;
        for (packets, ts) in frames {
            for i in 0..packets {
                cache.store(seq, ts, i + 1 == packets, &Bytes::from(vec![seq as u8]), t0);
                seq = seq.wrapping_add(1);
            }
        }
        cache
    }

    /// What the replay sends until it waits or ends: (seq, timestamp, marker), and how it stopped.
    fn drain(
        r: &mut Replay,
        cache: &PacketCache,
        newest: u16,
    ) -> (Vec<(u16, u32, bool)>, &'static str) {
        let mut got = Vec::new();
        loop {
            match r.step(cache, newest) {
                Step::Send(p, ts) => got.push((p.seq, ts, p.marker)),
                Step::Wait => return (got, "wait"),
                Step::Done => return (got, "done"),
                Step::Lost => return (got, "lost"),
            }
        }
    }

    fn start(
        cache: &PacketCache,
        keyframe: (u16, Instant),
        newest: u16,
        now: Instant,
    ) -> Option<Replay> {
        Replay::start(cache, keyframe, newest, now, (0, 1, 100_000))
    }

    #[test]
    fn yields_every_packet_from_the_keyframe_with_squeezed_timestamps_then_the_live_ones_as_they_are()
     {
        let t0 = Instant::now();
        let mut cache = cache_with_frames(t0);
        let newest = 65534u16.wrapping_add(6);
        let mut r = start(&cache, (65534, t0), newest, t0).expect("the picture is whole");
        assert_eq!(
            drain(&mut r, &cache, newest),
            (
                vec![
                    (65534, 14_998, false),
                    (65535, 14_998, false),
                    (0, 14_998, true),
                    (1, 14_999, false),
                    (2, 14_999, true),
                    (3, 15_000, false),
                    (4, 15_000, true),
                ],
                "done"
            )
        );
        // A live frame arrives, one of its packets lost on the way: sent as it is, the hole left to the NACKs.
        cache.store(5, 18_000, false, &Bytes::from_static(b"a"), t0);
        cache.store(7, 18_000, true, &Bytes::from_static(b"b"), t0);
        assert_eq!(
            drain(&mut r, &cache, 7),
            (vec![(5, 18_000, false), (7, 18_000, true)], "done")
        );
        // A reordered older packet made the newest go back: nothing to send, caught up.
        assert_eq!(drain(&mut r, &cache, 6), (vec![], "done"));
    }

    #[test]
    fn the_first_burst_leaves_at_once_the_rest_at_twice_the_layers_rate() {
        let t0 = Instant::now();
        let mut cache = PacketCache::new(512);
        // 60 packets of 1,000 bytes: a keyframe and what followed it over 400 ms (1.2 Mbit/s).
        for seq in 0..60u16 {
            cache.store(
                seq,
                9_000 + u32::from(seq / 5) * 3_000,
                seq % 5 == 4,
                &Bytes::from(vec![0u8; 1000]),
                t0,
            );
        }
        let now = t0 + Duration::from_millis(400);
        let mut r = Replay::start(&cache, (0, t0), 59, now, (0, 1, 1_500_000)).expect("whole");
        let (first, how) = drain(&mut r, &cache, 59);
        assert_eq!(
            (first.len(), how),
            (BURST / 1000, "wait"),
            "a burst at once"
        );
        // 3 Mbit/s: 375 bytes a millisecond; 8 ms later, three packets more.
        r.refill(now + Duration::from_millis(8));
        let (next, how) = drain(&mut r, &cache, 59);
        assert_eq!((next.len(), how), (3, "wait"));
        assert_eq!(next[0].0, 12, "in order");
        // However long it waited, no more than a burst leaves at once.
        r.refill(now + Duration::from_secs(5));
        assert_eq!(drain(&mut r, &cache, 59).0.len(), BURST / 1000);
        assert!(r.overdue(now + MAX_CATCH_UP));
        // A layer whose rate is not known yet is paced at twice what its picture came at (2.4 Mbit/s here) ...
        let unknown = Replay::start(&cache, (0, t0), 59, now, (0, 1, 0)).expect("whole");
        assert_eq!(unknown.rate, 2_400_000.0 / 8.0);
        // ... and a slow one at MIN_RATE at least.
        let small = cache_with_frames(t0);
        let slow = start(&small, (65534, t0), 4, t0).expect("whole");
        assert_eq!(slow.rate, MIN_RATE as f64 / 8.0);
    }

    #[test]
    fn a_missing_packet_an_old_keyframe_or_a_picture_too_long_gives_nothing() {
        let t0 = Instant::now();
        let mut cache = cache_with_frames(t0);
        assert!(
            start(
                &cache,
                (65534, t0),
                4,
                t0 + MAX_AGE + Duration::from_millis(1)
            )
            .is_none(),
            "too old"
        );
        assert!(
            start(&cache, (65534, t0), 100, t0).is_none(),
            "more than the cache holds"
        );
        assert!(
            start(&cache, (65534, t0), 31, t0).is_none(),
            "more than half the cache"
        );
        // A hole: sequence number 2's slot now holds 66 (capacity 64).
        cache.store(66, 18_000, false, &Bytes::from_static(b"x"), t0);
        assert!(start(&cache, (65534, t0), 4, t0).is_none());
        // From a later start the picture is whole again.
        let mut r = start(&cache, (3, t0), 4, t0).expect("whole");
        assert_eq!(drain(&mut r, &cache, 4).0.len(), 2);
    }

    #[test]
    fn a_picture_packet_pushed_out_of_the_cache_ends_the_replay() {
        let t0 = Instant::now();
        let mut cache = cache_with_frames(t0);
        let mut r = start(&cache, (65534, t0), 4, t0).expect("whole");
        // 65535's slot (63) taken by a packet 64 numbers later before the replay sent it.
        r.credit = 1.0;
        assert!(matches!(r.step(&cache, 4), Step::Send(..)));
        cache.store(63, 30_000, false, &Bytes::from_static(b"y"), t0);
        r.refill(t0 + Duration::from_millis(100));
        assert!(matches!(r.step(&cache, 4), Step::Lost));
    }
}
