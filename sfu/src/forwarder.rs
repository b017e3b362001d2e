//! The Forwarder: inside a Consumer, decides whether a packet goes out and rewrites what the subscriber sees
//! (sequence number, timestamp, VP8 PictureID / TL0PICIDX), so the subscriber's stream stays continuous when its
//! source changes (a publisher's new SSRC after renegotiation, or another producer behind the same slot).
//!
//! Pure logic on a caller-given clock: no sockets, no time source of its own.

use crate::codec::Codec;
use crate::vp8;
use std::time::Instant;

/// What to write into the outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub seq: u16,
    pub timestamp: u32,
    /// New VP8 PictureID / TL0PICIDX; `None` = leave the payload untouched (no copy needed).
    pub picture_id: Option<u16>,
    pub tl0picidx: Option<u8>,
    /// This packet is the first of a new source that replaced another (a layer switch, or a new SSRC).
    pub switched: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Video from a new source (or after a request) waits for a keyframe; the caller should ask for one.
    WaitingForKeyframe,
    /// A late packet from a source this forwarder has switched away from.
    OldSource,
    /// A reordered packet from before the point this source was switched in.
    BeforeSwitch,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    first_seq: u16,
    seq_offset: u16,
    ts_offset: u32,
    pid_offset: u16,
    tl0_offset: u8,
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u16,
    timestamp: u32,
    picture_id: Option<u16>,
    tl0picidx: Option<u8>,
    at: Instant,
}

#[derive(Debug)]
pub struct Forwarder {
    codec: Codec,
    clock_rate: u32,
    source: Option<Source>,
    /// The source switched away from: its late packets are dropped, not mistaken for a new source.
    previous_ssrc: Option<u32>,
    last: Option<LastOut>,
    waiting_for_keyframe: bool,
}

impl Forwarder {
    pub fn new(codec: Codec, clock_rate: u32) -> Self {
        Forwarder {
            codec,
            clock_rate: clock_rate.max(1),
            source: None,
            previous_ssrc: None,
            last: None,
            waiting_for_keyframe: codec.is_video(),
        }
    }

    /// Whether video is held back until a keyframe.
    pub fn is_waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    /// The SSRC being forwarded now (a simulcast layer's), if any.
    pub fn current_ssrc(&self) -> Option<u32> {
        self.source.map(|s| s.ssrc)
    }

    /// A switch to `ssrc` is wanted (a simulcast layer chosen again after it was switched away from): its
    /// packets are no longer treated as late packets of an old source. The switch itself still waits for a
    /// keyframe of that layer; until then the current layer keeps flowing.
    pub fn allow_source(&mut self, ssrc: u32) {
        if self.previous_ssrc == Some(ssrc) {
            self.previous_ssrc = None;
        }
    }

    /// Decide about one incoming packet of the producer this consumer follows.
    pub fn forward(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<Rewrite, Drop> {
        let vp8 = if self.codec == Codec::Vp8 {
            vp8::parse(payload)
        } else {
            None
        };
        self.forward_parsed(now, ssrc, seq, timestamp, payload, vp8)
    }

    /// `forward` with the VP8 descriptor already parsed (once per packet by the caller, for all its consumers).
    pub fn forward_parsed(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
        vp8: Option<vp8::Vp8Descriptor>,
    ) -> Result<Rewrite, Drop> {
        if self.previous_ssrc == Some(ssrc) {
            return Err(Drop::OldSource);
        }
        let new_source = self.source.is_none_or(|s| s.ssrc != ssrc);
        let mut switched = false;
        if self.waiting_for_keyframe || new_source {
            let keyframe = match vp8 {
                Some(d) => d.keyframe,
                None => self.codec.is_keyframe_start(payload),
            };
            if self.codec.is_video() && !keyframe {
                // The current source (if any) keeps flowing until the new one can be decoded.
                return Err(Drop::WaitingForKeyframe);
            }
            if new_source {
                self.previous_ssrc = self.source.map(|s| s.ssrc);
                switched = self.previous_ssrc.is_some();
                self.switch_to(now, ssrc, seq, timestamp, vp8);
            }
            self.waiting_for_keyframe = false;
        }
        let Some(src) = self.source else {
            return Err(Drop::WaitingForKeyframe);
        };
        if src.ssrc != ssrc {
            return Err(Drop::OldSource);
        }
        if (seq.wrapping_sub(src.first_seq) as i16) < 0 {
            return Err(Drop::BeforeSwitch);
        }
        let out = Rewrite {
            seq: seq.wrapping_add(src.seq_offset),
            timestamp: timestamp.wrapping_add(src.ts_offset),
            picture_id: vp8.and_then(|d| d.picture_id).and_then(|p| {
                (src.pid_offset != 0).then(|| (p.value.wrapping_add(src.pid_offset)) % p.modulus())
            }),
            tl0picidx: vp8
                .and_then(|d| d.tl0picidx)
                .and_then(|(v, _)| (src.tl0_offset != 0).then(|| v.wrapping_add(src.tl0_offset))),
            switched,
        };
        let newest = self
            .last
            .is_none_or(|l| (out.seq.wrapping_sub(l.seq) as i16) > 0);
        if newest {
            let in_pid = vp8.and_then(|d| d.picture_id);
            self.last = Some(LastOut {
                seq: out.seq,
                timestamp: out.timestamp,
                picture_id: out
                    .picture_id
                    .or(in_pid.map(|p| p.value))
                    .or(self.last.and_then(|l| l.picture_id)),
                tl0picidx: out
                    .tl0picidx
                    .or(vp8.and_then(|d| d.tl0picidx).map(|(v, _)| v))
                    .or(self.last.and_then(|l| l.tl0picidx)),
                at: now,
            });
        }
        Ok(out)
    }

    /// Number a padding packet (a probe of the subscriber's downlink) after the last packet sent: returns its
    /// sequence number and the last packet's timestamp; the source's later packets are numbered one further.
    /// A source packet older than the padding (reordered on its way in) is dropped, as it would take a number
    /// already sent. `None` before the first packet.
    pub fn pad(&mut self) -> Option<(u16, u32)> {
        let last = self.last.as_mut()?;
        // Without a source (paused or held back) the next source starts after the last number sent anyway.
        if let Some(src) = self.source.as_mut() {
            // The newest source packet forwarded; anything up to it is now behind the padding.
            src.first_seq = last.seq.wrapping_sub(src.seq_offset).wrapping_add(1);
            src.seq_offset = src.seq_offset.wrapping_add(1);
        }
        last.seq = last.seq.wrapping_add(1);
        Some((last.seq, last.timestamp))
    }

    /// Whether anything was sent yet (padding can follow it).
    pub fn has_sent(&self) -> bool {
        self.last.is_some()
    }

    /// The producer was held back (not forwarded) and now resumes: continue the subscriber's sequence by one
    /// (no false loss), the timestamp by the wall time elapsed, and start video from a keyframe.
    pub fn resume(&mut self) {
        self.source = None;
        self.previous_ssrc = None;
        self.wait_for_keyframe();
    }

    /// Hold video back until the next keyframe (after a subscriber asked for one, or a layer change).
    pub fn wait_for_keyframe(&mut self) {
        if self.codec.is_video() {
            self.waiting_for_keyframe = true;
        }
    }

    fn switch_to(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        vp8: Option<vp8::Vp8Descriptor>,
    ) {
        let in_pid = vp8.and_then(|d| d.picture_id);
        let in_tl0 = vp8.and_then(|d| d.tl0picidx).map(|(v, _)| v);
        let source = match self.last {
            // The first source is passed through unchanged (offsets 0: no payload copies).
            None => Source {
                ssrc,
                first_seq: seq,
                seq_offset: 0,
                ts_offset: 0,
                pid_offset: 0,
                tl0_offset: 0,
            },
            Some(last) => {
                let elapsed = now.saturating_duration_since(last.at);
                let ticks = (elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000)
                    .clamp(1, u128::from(u32::MAX / 2)) as u32;
                let out_seq = last.seq.wrapping_add(1);
                let out_ts = last.timestamp.wrapping_add(ticks);
                let pid_offset = match (in_pid, last.picture_id) {
                    (Some(p), Some(prev)) => {
                        let m = p.modulus();
                        (prev.wrapping_add(1) % m).wrapping_sub(p.value) % m
                    }
                    _ => 0,
                };
                let tl0_offset = match (in_tl0, last.tl0picidx) {
                    (Some(t), Some(prev)) => prev.wrapping_add(1).wrapping_sub(t),
                    _ => 0,
                };
                Source {
                    ssrc,
                    first_seq: seq,
                    seq_offset: out_seq.wrapping_sub(seq),
                    ts_offset: out_ts.wrapping_sub(timestamp),
                    pid_offset,
                    tl0_offset,
                }
            }
        };
        self.source = Some(source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn vp8_packet(keyframe: bool, start: bool, pid: u16, tl0: u8) -> Vec<u8> {
        let b0 = if start { 0x90 } else { 0x80 };
        vec![
            b0,
            0xC0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            if keyframe { 0x00 } else { 0x01 },
            0xAA,
        ]
    }

    fn pid_of(payload: &[u8], r: &Rewrite) -> u16 {
        r.picture_id.unwrap_or_else(|| {
            vp8::parse(payload)
                .and_then(|d| d.picture_id)
                .map_or(0, |p| p.value)
        })
    }

    #[test]
    fn audio_passes_through_unchanged_at_first() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Opus, 48_000);
        for i in 0..5u16 {
            let r = f
                .forward(t0, 1, 100 + i, 960 * u32::from(i), &[1, 2, 3])
                .expect("audio forwarded");
            assert_eq!((r.seq, r.timestamp), (100 + i, 960 * u32::from(i)));
            assert_eq!(r.picture_id, None);
        }
    }

    #[test]
    fn padding_takes_the_next_number_and_the_stream_goes_on_after_it() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8, 90_000);
        assert_eq!(f.pad(), None, "nothing sent yet: nothing to follow");
        let key = vp8_packet(true, true, 11, 2);
        f.forward(t0, 1, 100, 3000, &key).expect("keyframe");
        // 101 is late (reordered on its way in); 102 came first.
        let delta = vp8_packet(false, true, 12, 2);
        assert_eq!(f.forward(t0, 1, 102, 6000, &delta).map(|r| r.seq), Ok(102));
        assert_eq!(f.pad(), Some((103, 6000)));
        assert_eq!(f.pad(), Some((104, 6000)));
        // After the padding, the source's numbers move up by two; the late 101 would take a number already
        // sent (101 + 2 = 103), so it is dropped.
        assert_eq!(f.forward(t0, 1, 101, 3000, &delta), Err(Drop::BeforeSwitch));
        assert_eq!(f.forward(t0, 1, 103, 9000, &delta).map(|r| r.seq), Ok(105));
        // Held back (paused) and resumed: padding still follows the last number, and so does the next source.
        f.resume();
        assert_eq!(f.pad(), Some((106, 9000)));
        let r = f
            .forward(t0, 2, 500, 1, &key)
            .expect("a keyframe of the new source");
        assert_eq!(r.seq, 107);
    }

    #[test]
    fn video_waits_for_a_keyframe() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8, 90_000);
        let delta = vp8_packet(false, true, 10, 1);
        assert_eq!(
            f.forward(t0, 1, 5, 0, &delta),
            Err(Drop::WaitingForKeyframe)
        );
        assert!(f.is_waiting_for_keyframe());
        let key = vp8_packet(true, true, 11, 2);
        assert!(f.forward(t0, 1, 6, 3000, &key).is_ok());
        assert!(
            f.forward(t0, 1, 7, 3000, &vp8_packet(false, false, 11, 2))
                .is_ok()
        );
        assert!(!f.is_waiting_for_keyframe());
    }

    #[test]
    fn source_switch_keeps_seq_ts_and_picture_id_continuous() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8, 90_000);
        // Source A: seq 1000.., ts 50_000.., pid 300.., tl0 9..
        let mut last = None;
        for i in 0..10u16 {
            let p = vp8_packet(i == 0, true, 300 + i, 9 + i as u8);
            let r = f
                .forward(
                    t0 + Duration::from_millis(33 * u64::from(i)),
                    0xA,
                    1000 + i,
                    50_000 + 3000 * u32::from(i),
                    &p,
                )
                .expect("A forwarded");
            last = Some((r, pid_of(&p, &r)));
        }
        let (last_a, last_pid) = last.expect("some");
        // Source B starts with a delta frame: held back, A's stream is still the current one.
        let t1 = t0 + Duration::from_millis(400);
        assert_eq!(
            f.forward(t1, 0xB, 7, 1_000_000, &vp8_packet(false, true, 20_000, 200)),
            Err(Drop::WaitingForKeyframe)
        );
        // B's keyframe switches: seq +1, ts advanced by wall time since A's last packet, pid +1, tl0 +1.
        let key = vp8_packet(true, true, 20_001, 201);
        let r = f
            .forward(t1, 0xB, 8, 1_003_000, &key)
            .expect("B keyframe forwarded");
        assert_eq!(r.seq, last_a.seq.wrapping_add(1));
        let ts_gap = r.timestamp.wrapping_sub(last_a.timestamp);
        assert_eq!(ts_gap, 90 * (400 - 33 * 9));
        assert_eq!(r.picture_id, Some((last_pid + 1) % (1 << 15)));
        assert_eq!(r.tl0picidx, Some(9 + 9 + 1));
        // Next B packet follows on, and a late A packet is dropped.
        let r2 = f
            .forward(
                t1,
                0xB,
                9,
                1_003_000,
                &vp8_packet(false, false, 20_001, 201),
            )
            .expect("B forwarded");
        assert_eq!(r2.seq, r.seq.wrapping_add(1));
        assert_eq!(r2.timestamp, r.timestamp);
        assert_eq!(
            f.forward(t1, 0xA, 1010, 80_000, &vp8_packet(false, true, 310, 19)),
            Err(Drop::OldSource)
        );
        // A reordered B packet from before the switch point is not sent.
        assert_eq!(
            f.forward(
                t1,
                0xB,
                7,
                1_000_000,
                &vp8_packet(false, false, 20_000, 200)
            ),
            Err(Drop::BeforeSwitch)
        );
    }

    #[test]
    fn resume_after_a_pause_continues_without_a_gap() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Opus, 48_000);
        let a = f.forward(t0, 7, 100, 0, &[0]).expect("ok");
        // 500 packets (10 s) are held back by the rules, then forwarding resumes.
        f.resume();
        let t1 = t0 + Duration::from_secs(10);
        let b = f.forward(t1, 7, 600, 480_000, &[0]).expect("ok");
        assert_eq!(b.seq, a.seq.wrapping_add(1));
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(480_000));
    }

    #[test]
    fn sequence_wraps_around() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Opus, 48_000);
        let a = f.forward(t0, 1, u16::MAX, 0, &[0]).expect("ok");
        let b = f.forward(t0, 1, 0, 960, &[0]).expect("ok");
        assert_eq!(b.seq, a.seq.wrapping_add(1));
        // Switch after the wrap still continues by one.
        let c = f
            .forward(t0 + Duration::from_millis(20), 2, 5000, 7, &[0])
            .expect("ok");
        assert_eq!(c.seq, b.seq.wrapping_add(1));
        assert_eq!(c.timestamp, b.timestamp.wrapping_add(960));
    }

    /// Simulcast: three layers (SSRCs 1, 2, 3) of one producer, each with its own sequence, timestamp and
    /// PictureID space. The consumer moves q → f → q → h; each switch happens on the target layer's keyframe,
    /// the current layer flows until then, and what the subscriber sees continues by one every time.
    #[test]
    fn layer_switches_up_and_down_keep_the_stream_continuous() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8, 90_000);
        // Per layer: (ssrc, seq base, ts base, pid base, tl0 base).
        let layers = [
            (1u32, 100u16, 10_000u32, 5u16, 1u8),
            (2, 30_000, 2_000_000, 7_000, 50),
            (3, 65_000, 4_000_000_000, 32_700, 250),
        ];
        let mut out: Vec<Rewrite> = Vec::new();
        let mut pids: Vec<u16> = Vec::new();
        // 40 frames; layer schedule by frame: q until 10, f wanted from 10, q from 20, h from 30.
        let mut wanted = 0usize;
        for frame in 0..40u16 {
            let target = match frame {
                0..10 => 0,
                10..20 => 2,
                20..30 => 0,
                _ => 1,
            };
            if target != wanted {
                wanted = target;
                f.allow_source(layers[wanted].0);
            }
            let now = t0 + Duration::from_millis(50 * u64::from(frame));
            // Keyframes on every layer every 4th frame, offset per layer, so each switch has to wait. The wanted
            // layer's packet of a frame comes first here; the current layer's copy of the frame is then late.
            let mut order = [0usize, 1, 2];
            order.sort_by_key(|&li| li != wanted);
            for li in order {
                let (ssrc, seq, ts, pid, tl0) = layers[li];
                let key = (frame + li as u16).is_multiple_of(4) || frame == 0;
                let p = vp8_packet(
                    key,
                    true,
                    (pid + frame) % (1 << 15),
                    tl0.wrapping_add(frame as u8),
                );
                let current = f.current_ssrc();
                if li != wanted && current != Some(ssrc) {
                    continue; // the worker's layer gate
                }
                if let Ok(r) = f.forward(
                    now,
                    ssrc,
                    seq.wrapping_add(frame),
                    ts.wrapping_add(4500 * u32::from(frame)),
                    &p,
                ) {
                    pids.push(pid_of(&p, &r));
                    out.push(r);
                }
            }
        }
        // One packet per frame went out (never two layers of one frame, never a frame missing in between).
        assert_eq!(out.len(), 40, "one packet per frame");
        for w in out.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "sequence continues");
            assert_eq!(
                w[1].timestamp.wrapping_sub(w[0].timestamp),
                4500,
                "timestamp by the frame time"
            );
        }
        for w in pids.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % (1 << 15), "PictureID continues");
        }
        // It ends on h.
        assert_eq!(f.current_ssrc(), Some(2));
        // Three switches (q → f → q → h), each flagged once, on its first packet; the first source is not one.
        assert_eq!(out.iter().filter(|r| r.switched).count(), 3);
        assert!(!out[0].switched);
    }

    #[test]
    fn wait_for_keyframe_on_request_holds_video_until_next_keyframe() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Codec::Vp8, 90_000);
        f.forward(t0, 1, 1, 0, &vp8_packet(true, true, 1, 0))
            .expect("key");
        f.wait_for_keyframe();
        assert_eq!(
            f.forward(t0, 1, 2, 3000, &vp8_packet(false, true, 2, 0)),
            Err(Drop::WaitingForKeyframe)
        );
        let r = f
            .forward(t0, 1, 3, 6000, &vp8_packet(true, true, 3, 0))
            .expect("key");
        // Same source: offsets unchanged, no rewrite of the payload.
        assert_eq!((r.seq, r.picture_id), (3, None));
    }
}
