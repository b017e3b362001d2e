//! A joining subscriber's first picture, from the cache: instead of waiting for the publisher's next keyframe
//! (a keyframe request, the publisher's throttle — Chromium ignores requests within 300 ms of the last — and the
//! frame's encoding and sending), a consumer that has never had a picture is sent the layer's last keyframe and
//! every packet after it at once, from the layer's `PacketCache`.
//!
//! The replayed frames keep their order and sequence numbers, but their timestamps are squeezed together one tick
//! apart, ending at the newest frame's own timestamp: the subscriber decodes them all on arrival and shows the
//! newest, instead of playing them out at their original pace — which would put its picture as far behind the
//! meeting as the keyframe is old. The live packets then follow on with their own timestamps unchanged.
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
/// A picture of more payload than this is not replayed: the replay leaves at once, unpaced, and a commune link's
/// queue holds little more (about 50 ms of a 2 Mbit/s link). A simulcast producer's picture is replayed from the
/// highest layer up to the consumer's target that fits — usually its lowest, whose second of video is a few
/// kilobytes — and the consumer moves up at the target layer's next keyframe, as after any switch.
pub const MAX_BYTES: usize = 12_000;

/// The packets from a layer's last keyframe up to its newest packet, each with the timestamp to forward it with.
pub struct Picture<'a> {
    /// Payload bytes in all.
    pub bytes: usize,
    cache: &'a PacketCache,
    next: u16,
    remaining: usize,
    newest_timestamp: u32,
    /// Frames after the current one (timestamp changes still ahead).
    frames_after: u32,
    previous_timestamp: Option<u32>,
}

/// The picture from the keyframe that started at sequence number `keyframe.0` (arrived at `keyframe.1`) to
/// `newest`, if the cache still holds every packet of it, the keyframe is at most `MAX_AGE` old and the whole is at
/// most `MAX_BYTES`.
pub fn from_keyframe(
    cache: &PacketCache,
    keyframe: (u16, Instant),
    newest: u16,
    now: Instant,
) -> Option<Picture<'_>> {
    let (start, at) = keyframe;
    if now.saturating_duration_since(at) > MAX_AGE {
        return None;
    }
    let count = usize::from(newest.wrapping_sub(start)) + 1;
    if count > cache.capacity() {
        return None;
    }
    let mut frames_after = 0u32;
    let mut previous = None;
    let mut bytes = 0;
    for i in 0..count {
        let p = cache.get(start.wrapping_add(i as u16))?;
        if previous.is_some_and(|t| t != p.timestamp) {
            frames_after += 1;
        }
        previous = Some(p.timestamp);
        bytes += p.payload.len();
        if bytes > MAX_BYTES {
            return None;
        }
    }
    Some(Picture {
        bytes,
        cache,
        next: start,
        remaining: count,
        newest_timestamp: previous?,
        frames_after,
        previous_timestamp: None,
    })
}

impl<'a> Iterator for Picture<'a> {
    type Item = (&'a CachedPacket, u32);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let p = self.cache.get(self.next)?;
        if self.previous_timestamp.is_some_and(|t| t != p.timestamp) {
            self.frames_after = self.frames_after.saturating_sub(1);
        }
        self.previous_timestamp = Some(p.timestamp);
        self.next = self.next.wrapping_add(1);
        self.remaining -= 1;
        Some((p, self.newest_timestamp.wrapping_sub(self.frames_after)))
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

    #[test]
    fn yields_every_packet_from_the_keyframe_with_squeezed_timestamps() {
        let t0 = Instant::now();
        let cache = cache_with_frames(t0);
        let newest = 65534u16.wrapping_add(6);
        let got: Vec<(u16, u32, bool)> = from_keyframe(&cache, (65534, t0), newest, t0)
            .expect("the picture is whole")
            .map(|(p, ts)| (p.seq, ts, p.marker))
            .collect();
        assert_eq!(
            got,
            vec![
                (65534, 14_998, false),
                (65535, 14_998, false),
                (0, 14_998, true),
                (1, 14_999, false),
                (2, 14_999, true),
                (3, 15_000, false),
                (4, 15_000, true),
            ]
        );
    }

    #[test]
    fn a_missing_packet_or_an_old_keyframe_gives_nothing() {
        let t0 = Instant::now();
        let mut cache = cache_with_frames(t0);
        // Too old.
        assert!(
            from_keyframe(
                &cache,
                (65534, t0),
                4,
                t0 + MAX_AGE + Duration::from_millis(1)
            )
            .is_none()
        );
        // More than the cache holds.
        assert!(from_keyframe(&cache, (65534, t0), 100, t0).is_none());
        // More bytes than a commune link's queue.
        let mut big = PacketCache::new(64);
        for seq in 0..13u16 {
            big.store(seq, 9_000, false, &Bytes::from(vec![0u8; 1000]), t0);
        }
        assert_eq!(
            from_keyframe(&big, (0, t0), 11, t0).map(|p| p.bytes),
            Some(12_000)
        );
        assert!(from_keyframe(&big, (0, t0), 12, t0).is_none());
        // A hole: sequence number 2's slot now holds 66 (capacity 64).
        cache.store(66, 18_000, false, &Bytes::from_static(b"x"), t0);
        assert!(from_keyframe(&cache, (65534, t0), 4, t0).is_none());
        // From a later start the picture is whole again.
        assert_eq!(
            from_keyframe(&cache, (3, t0), 4, t0).map(|p| p.count()),
            Some(2)
        );
    }
}
