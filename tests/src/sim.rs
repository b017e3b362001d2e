//! The simulated endpoint: a participant driven by the async `webrtc` crate, used by the whole-system tests and by
//! `loadtest`.
//!
//! A [`SimEndpoint`] opens the WebSocket, joins a room, optionally publishes one Opus and one VP8 track of
//! synthetic RTP, answers every `subscribe_offer`, and records what it receives per (publishing participant,
//! track). Every payload carries a per-track packet counter and the send time, so a receiver can tell loss,
//! duplicates, reordering, corruption and added latency without decoding anything.
//!
//! Payload layout (after the codec's own bytes):
//! `counter: u64 BE | send time: u64 BE (µs since the UNIX epoch) | padding`, where padding byte `i` (counted
//! from the start of the padding) is `(counter as u8) ^ (i as u8)`.
//!
//! * audio (Opus, 48 kHz clock): an Opus TOC byte saying one CELT frame of the packet's duration (so a recorder or
//!   player computes real durations), then the 16 bytes and padding, `audio_bytes` long in all;
//! * video (VP8, 90 kHz clock): a VP8 payload descriptor (RFC 7741 §4.2: X=1, S=1 on the first packet of a frame,
//!   extension byte I=1, 15-bit PictureID with M=1, incremented per frame), on the S=1 packet a VP8 payload
//!   header (3-byte frame tag, P=0 on keyframes plus the 7 bytes of the key frame start code and size), then the
//!   16 bytes and padding. The RTP marker bit is set on the last packet of a frame.
//!
//! The receive path is one uncontended mutex lock per packet and no allocation beyond what the `webrtc` crate
//! already does (the seen-counter bitmap grows by doubling).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use giaoban_signaling::protocol::{
    ClientMessage, ErrorCode, Leg, ParticipantInfo, ServerMessage, TrackKind,
};
use rtc::interceptor::{Registry, Slot};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceConnectionState, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    SettingEngineBuilder,
};

/// The payload type we register for Opus; the negotiated one is read back from the sender.
const OPUS_PT: u8 = 111;
/// The payload type we register for VP8.
const VP8_PT: u8 = 96;
/// Times the NACK generator asks for one lost packet before giving up (Chromium's kMaxNackRetries).
const NACK_RETRIES: u16 = 10;
/// Bytes of counter + send time in every payload.
const STAMP_BYTES: usize = 16;
/// A publisher acts on at most one keyframe request per layer in this time (Chromium's
/// `kMinKeyframeSendIntervalMs`).
const KEYFRAME_REQUEST_FLOOR: Duration = Duration::from_millis(300);
/// Time between ICE connectivity checks (Chromium: 48 ms while no pair works).
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Which interceptors the endpoint's peer connections run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interceptors {
    /// webrtc-rs's default set (NACK generator/responder, RTCP reports, TWCC receiver), like a browser.
    Default,
    /// Only the keyframe-request forwarder: the least client CPU per packet (for `loadtest`).
    Minimal,
}

/// What a publishing endpoint sends.
#[derive(Debug, Clone, Copy)]
pub struct MediaProfile {
    pub audio: bool,
    pub video: bool,
    /// Audio packets per second (Opus: 50 = 20 ms frames).
    pub audio_pps: u32,
    /// Audio payload size in bytes.
    pub audio_bytes: usize,
    pub video_fps: u32,
    pub video_bitrate_bps: u64,
    /// Largest video payload per RTP packet.
    pub video_max_payload: usize,
    /// Send the video in three simulcast layers (rids q, h, f; keyframes announce 240, 480, 960 wide; a sixteenth,
    /// a quarter and all of `video_bitrate_bps`), as Chromium does.
    pub simulcast: bool,
    /// A misbehaving publisher: video packets carry random payloads of random length (0-1200 bytes: no valid VP8
    /// descriptor or keyframe), random marker bits, and sequence numbers and timestamps that jump at random.
    pub garbage_video: bool,
    /// The RFC 6464 audio level sent on every audio packet (0 loudest … 127 silence, i.e. −dBov), as browsers
    /// do; `None` sends no level.
    pub audio_level: Option<u8>,
    /// Also send a keyframe every this many frames (`None`: only the first, and on request, as browsers do).
    pub keyframe_every: Option<u32>,
    /// Negotiate RFC 2198 redundant audio (`audio/red`) ahead of Opus, as the web client does: publish each audio
    /// packet as RED (the previous frame, then the current one) and accept RED on the subscribe leg.
    pub red: bool,
    /// Simulcast: keyframe requests are answered on the lowest layer only (the upper ones send their first
    /// keyframe, then none), as Chromium short of CPU was seen to do.
    pub upper_layers_ignore_keyframe_requests: bool,
    /// As a browser's decoder does: a received video with no keyframe this long after its first packet (the
    /// keyframe's packets lost, their repair too) is asked for one with a PLI, again each such interval. `None`:
    /// never (the default: tests that count keyframe requests see only their own).
    pub pli_without_keyframe: Option<Duration>,
}

impl Default for MediaProfile {
    fn default() -> Self {
        MediaProfile {
            audio: true,
            video: true,
            audio_pps: 50,
            audio_bytes: 100,
            video_fps: 30,
            video_bitrate_bps: 1_500_000,
            video_max_payload: 1100,
            simulcast: false,
            garbage_video: false,
            audio_level: Some(30),
            keyframe_every: None,
            red: false,
            upper_layers_ignore_keyframe_requests: false,
            pli_without_keyframe: None,
        }
    }
}

impl MediaProfile {
    /// Bytes of one video frame at the configured bitrate and frame rate.
    pub fn video_frame_bytes(&self) -> usize {
        ((self.video_bitrate_bps / 8) / u64::from(self.video_fps.max(1))) as usize
    }

    /// RTP packets per video frame.
    pub fn video_packets_per_frame(&self) -> usize {
        self.video_frame_bytes()
            .div_ceil(self.video_max_payload.max(64))
            .max(1)
    }
}

/// How to reach the server and who to be.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Base URL of the server, `http://127.0.0.1:PORT` (the WebSocket is `ws://…/ws`).
    pub url: String,
    pub room: String,
    pub name: String,
    /// A join link's token; when set, `room` and `name` are not sent (the token names them).
    pub token: Option<String>,
    pub media: MediaProfile,
    pub interceptors: Interceptors,
    /// Check every received payload's padding bytes (cheap; on by default).
    pub verify_payload: bool,
    /// Deadline for each signalling step (join, answer, connect).
    pub step_timeout: Duration,
    /// Run the peer connections' drivers on webrtc-rs's dedicated reactor pool (one thread, process-wide). Only
    /// then does dropping a connection without `close()` stop it silently, which
    /// [`drop_media`](SimEndpoint::drop_media) needs.
    pub dedicated_reactor: bool,
    /// Local address the peer connections' UDP sockets bind to (loopback; `127.0.0.1` unless a peer SFU needs
    /// another loopback address).
    pub bind_ip: std::net::IpAddr,
    /// SRTP protection profiles offered in DTLS, in order of preference; empty = webrtc-rs's default list
    /// (AES-128-GCM, AES-256-GCM, AES-CM-HMAC-SHA1-80, -32).
    pub srtp_profiles: Vec<webrtc::peer_connection::SrtpProtectionProfile>,
    /// Reach the server over ICE-TCP only (an active TCP candidate, no UDP socket at all), as a hall whose
    /// firewall blocks UDP: the server's passive TCP candidates are dialled.
    pub ice_tcp: bool,
    /// Dial this address instead of the server's UDP candidates (each is rewritten in the server's SDP): a relay
    /// standing for the hall's weak link (`impair::ImpairedLink`), which the server sees as the hall's address,
    /// as with TURN.
    pub media_via: Option<SocketAddr>,
}

impl SimOptions {
    pub fn new(url: impl Into<String>, room: impl Into<String>, name: impl Into<String>) -> Self {
        SimOptions {
            url: url.into(),
            room: room.into(),
            name: name.into(),
            token: None,
            media: MediaProfile::default(),
            interceptors: Interceptors::Default,
            verify_payload: true,
            step_timeout: Duration::from_secs(10),
            dedicated_reactor: false,
            bind_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            srtp_profiles: Vec::new(),
            ice_tcp: false,
            media_via: None,
        }
    }

    /// Same options for a server at `addr` (an in-process test server's `http_addr`).
    pub fn for_addr(addr: SocketAddr, room: &str, name: &str) -> Self {
        SimOptions::new(format!("http://{addr}"), room, name)
    }

    pub fn ws_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_string()
        };
        format!("{base}/ws")
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Latency histogram
// ---------------------------------------------------------------------------------------------------------------

/// Log-linear histogram of microseconds: exact below 64 µs, then 32 buckets per power of two (≈3 % precision),
/// up to ~2 s (larger values land in the last bucket). Fixed size, no allocation per sample.
#[derive(Clone)]
pub struct LatencyHistogram {
    buckets: Box<[u32; HIST_BUCKETS]>,
    count: u64,
    sum_us: u64,
    max_us: u64,
    /// Samples whose send time was after the receive time (clock step): counted, not binned.
    negative: u64,
}

const HIST_BUCKETS: usize = 64 + 15 * 32 + 32;

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count)
            .field("p50_us", &self.quantile_us(0.5))
            .field("p99_us", &self.quantile_us(0.99))
            .field("max_us", &self.max_us)
            .finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: Box::new([0; HIST_BUCKETS]),
            count: 0,
            sum_us: 0,
            max_us: 0,
            negative: 0,
        }
    }
}

impl LatencyHistogram {
    fn bucket(v: u64) -> usize {
        if v < 64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // >= 6
        if e > 20 {
            return HIST_BUCKETS - 1;
        }
        let sub = ((v >> (e - 5)) & 31) as usize;
        64 + (e - 6) * 32 + sub
    }

    /// Lower bound of a bucket, in µs.
    fn bucket_value(i: usize) -> u64 {
        if i < 64 {
            return i as u64;
        }
        let e = (i - 64) / 32 + 6;
        let sub = ((i - 64) % 32) as u64;
        (32 + sub) << (e - 5)
    }

    pub fn record(&mut self, us: u64) {
        self.buckets[Self::bucket(us)] += 1;
        self.count += 1;
        self.sum_us += us;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += *b;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
        self.negative += other.negative;
    }

    /// The samples recorded after `earlier` (a snapshot of this same histogram taken before).
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut out = self.clone();
        for (a, b) in out.buckets.iter_mut().zip(earlier.buckets.iter()) {
            *a = a.saturating_sub(*b);
        }
        out.count = self.count.saturating_sub(earlier.count);
        out.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        out.negative = self.negative.saturating_sub(earlier.negative);
        out
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64
        }
    }

    /// The value below which a fraction `q` of samples lie (bucket lower bound), or 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += u64::from(*n);
            if seen >= target {
                return Self::bucket_value(i);
            }
        }
        self.max_us
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Per received track recording
// ---------------------------------------------------------------------------------------------------------------

/// Snapshot of one received track.
#[derive(Debug, Clone)]
pub struct TrackStats {
    /// The publishing participant (the remote track's stream id).
    pub participant_id: String,
    /// The published track id (the remote track's track id).
    pub track_id: String,
    pub kind: TrackKind,
    /// SSRC of the first packet received.
    pub ssrc: u32,
    /// Packets whose SSRC differed from the first packet's.
    pub ssrc_changes: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Counter of the first packet received.
    pub first_counter: Option<u64>,
    /// Highest counter received.
    pub max_counter: u64,
    /// Counter of the latest packet received (after a simulcast layer switch, the new layer's counters).
    pub last_counter: u64,
    /// Different counters received at or after `first_counter`.
    pub distinct: u64,
    /// Packets whose counter had already been received.
    pub duplicates: u64,
    /// Packets whose counter was lower than one received before them (not duplicates).
    pub out_of_order: u64,
    /// Times the RTP sequence number was not the previous one + 1.
    pub seq_jumps: u64,
    /// Video: times a frame's VP8 PictureID was not the previous frame's + 1.
    pub picture_id_jumps: u64,
    /// Times a packet ahead of every one before it (by sequence number) carried an RTP timestamp behind the
    /// previous such packet's, or more than 3 s of clock ahead of it: a broken timeline (the picture would freeze
    /// or jump). Retransmissions of older packets are not judged.
    pub ts_jumps: u64,
    /// Pauses of at least [`GAP_REPORTED`] between two packets: (when the packet ending it arrived, how long).
    pub gaps: Vec<(Instant, Duration)>,
    /// Video: the width each keyframe announced, consecutive repeats folded (a simulcast layer switch shows); a
    /// late retransmission of a keyframe older than the newest one seen does not count.
    pub keyframe_widths: Vec<u16>,
    /// Payloads too short, undecodable, or with wrong padding bytes.
    pub payload_errors: u64,
    /// Packets of RTP padding only (the server's probes of the downlink): their sequence numbers count, nothing
    /// else of them does.
    pub padding_packets: u64,
    /// Audio: packets that came as RED (the server's RED payload type); their primary is what is checked.
    pub red_packets: u64,
    /// Audio: frames lost on the way that a later RED packet's redundancy brought back first (they count as
    /// received; a NACK answer for them arriving later counts as a duplicate).
    pub red_recovered: u64,
    /// Video keyframes (S=1 packets with P=0).
    pub keyframes: u64,
    /// When the first keyframe packet arrived.
    pub first_keyframe_at: Option<Instant>,
    pub first_packet_at: Option<Instant>,
    pub last_packet_at: Option<Instant>,
    /// Times a remote track with this (participant, track) opened on the subscribe connection.
    pub opens: u64,
    /// The remote track ended (its event stream closed).
    pub ended: bool,
    pub latency: LatencyHistogram,
}

impl TrackStats {
    /// Counters expected from the first received to the highest received, inclusive.
    pub fn expected(&self) -> u64 {
        match self.first_counter {
            Some(first) => self.max_counter.saturating_sub(first) + 1,
            None => 0,
        }
    }

    /// Counters never received between the first and the highest received.
    pub fn missing(&self) -> u64 {
        self.expected().saturating_sub(self.distinct)
    }

    /// Fraction of the expected counters received (1.0 when nothing is expected).
    pub fn delivered_ratio(&self) -> f64 {
        let expected = self.expected();
        if expected == 0 {
            1.0
        } else {
            self.distinct as f64 / expected as f64
        }
    }
}

/// Pauses between packets at least this long are kept in [`TrackStats::gaps`].
pub const GAP_REPORTED: Duration = Duration::from_millis(250);

struct TrackState {
    kind: TrackKind,
    ssrc: Option<u32>,
    ssrc_changes: u64,
    packets: u64,
    bytes: u64,
    first_counter: Option<u64>,
    max_counter: u64,
    last_counter: u64,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    last_seq: Option<u16>,
    seq_jumps: u64,
    last_picture_id: Option<u16>,
    picture_id_jumps: u64,
    /// Sequence number and timestamp of the packet furthest ahead so far.
    head: Option<(u16, u32)>,
    ts_jumps: u64,
    /// Sequence number of the newest keyframe start seen.
    last_keyframe_seq: Option<u16>,
    gaps: Vec<(Instant, Duration)>,
    keyframe_widths: Vec<u16>,
    payload_errors: u64,
    padding_packets: u64,
    red_packets: u64,
    red_recovered: u64,
    keyframes: u64,
    first_keyframe_at: Option<Instant>,
    first_packet_at: Option<Instant>,
    last_packet_at: Option<Instant>,
    opens: u64,
    ended: bool,
    /// Bit `c - first_counter` set when counter `c` was received.
    seen: Vec<u64>,
    /// The same, for counters whose first arrival was at most [`IN_TIME`] after they were sent.
    in_time: Vec<u64>,
    latency: LatencyHistogram,
}

/// A frame that first arrives later than this after it was sent came by a NACK answer across a round trip (150 ms
/// in `impaired_links.rs`' weak link: the loss noticed at the next packet, the NACK, the resend): a receiver's
/// jitter buffer, tens of milliseconds, has played past it. RED's copy comes one packet (20 ms) after the original.
pub const IN_TIME: Duration = Duration::from_millis(150);

/// Whether bit `offset` of a bitset is set.
fn has_bit(bits: &[u64], offset: usize) -> bool {
    bits.get(offset / 64)
        .is_some_and(|w| w & (1u64 << (offset % 64)) != 0)
}

/// Set bit `offset` of a bitset, growing it.
fn set_bit(bits: &mut Vec<u64>, offset: usize) {
    let word = offset / 64;
    if word >= bits.len() {
        bits.resize((word + 1).max(bits.len() * 2), 0);
    }
    bits[word] |= 1u64 << (offset % 64);
}

/// Everything recorded about one received track, and the handle to send RTCP about it.
pub struct TrackRecorder {
    participant_id: String,
    track_id: String,
    verify_payload: bool,
    state: StdMutex<TrackState>,
    remote: StdMutex<Option<(Arc<dyn TrackRemote>, u32)>>,
}

impl TrackRecorder {
    fn new(
        participant_id: String,
        track_id: String,
        kind: TrackKind,
        verify_payload: bool,
    ) -> Self {
        TrackRecorder {
            participant_id,
            track_id,
            verify_payload,
            state: StdMutex::new(TrackState {
                kind,
                ssrc: None,
                ssrc_changes: 0,
                packets: 0,
                bytes: 0,
                first_counter: None,
                max_counter: 0,
                last_counter: 0,
                distinct: 0,
                duplicates: 0,
                out_of_order: 0,
                last_seq: None,
                seq_jumps: 0,
                last_picture_id: None,
                picture_id_jumps: 0,
                head: None,
                ts_jumps: 0,
                last_keyframe_seq: None,
                gaps: Vec::new(),
                keyframe_widths: Vec::new(),
                payload_errors: 0,
                padding_packets: 0,
                red_packets: 0,
                red_recovered: 0,
                keyframes: 0,
                first_keyframe_at: None,
                first_packet_at: None,
                last_packet_at: None,
                opens: 0,
                ended: false,
                in_time: Vec::new(),
                seen: Vec::with_capacity(256),
                latency: LatencyHistogram::default(),
            }),
            remote: StdMutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn on_packet(&self, pkt: &rtc::rtp::Packet) {
        if pkt.header.padding && pkt.payload.is_empty() {
            // A probe's padding: it takes a sequence number in the stream, and is neither media nor an error.
            let mut s = self.lock();
            s.padding_packets += 1;
            let seq = pkt.header.sequence_number;
            if let Some(last) = s.last_seq
                && seq != last.wrapping_add(1)
            {
                s.seq_jumps += 1;
            }
            s.last_seq = Some(seq);
            return;
        }
        let now = Instant::now();
        let now_us = unix_micros();
        let video = self.lock().kind == TrackKind::Video;
        let red = !video && pkt.header.payload_type == giaoban_sfu::red::RED_PAYLOAD_TYPE;
        let decoded = if red {
            giaoban_sfu::red::primary(&pkt.payload)
                .and_then(|(at, _)| decode_payload(&pkt.payload[at..], false, self.verify_payload))
        } else {
            decode_payload(&pkt.payload, video, self.verify_payload)
        };
        // What RED carries of earlier frames (at most two counters, decoded before the lock).
        let mut earlier = [None; 2];
        if red {
            let mut n = 0;
            giaoban_sfu::red::for_each_redundant(&pkt.payload, |_, _, block| {
                if n < earlier.len() {
                    earlier[n] = decode_payload(block, false, self.verify_payload)
                        .filter(|d| d.intact)
                        .map(|d| (d.counter, d.sent_us));
                    n += 1;
                }
            });
        }
        let mut s = self.lock();
        s.red_packets += u64::from(red);
        s.packets += 1;
        s.bytes += pkt.payload.len() as u64;
        if s.first_packet_at.is_none() {
            s.first_packet_at = Some(now);
        }
        if let Some(last) = s.last_packet_at
            && now.duration_since(last) >= GAP_REPORTED
        {
            s.gaps.push((now, now.duration_since(last)));
        }
        s.last_packet_at = Some(now);
        let (seq, ts) = (pkt.header.sequence_number, pkt.header.timestamp);
        match s.head {
            Some((hs, hts)) if (seq.wrapping_sub(hs) as i16) > 0 => {
                let clock: i64 = if s.kind == TrackKind::Video {
                    90_000
                } else {
                    48_000
                };
                let advance = i64::from(ts.wrapping_sub(hts) as i32);
                if !(0..=3 * clock).contains(&advance) {
                    s.ts_jumps += 1;
                }
                s.head = Some((seq, ts));
            }
            Some(_) => {}
            None => s.head = Some((seq, ts)),
        }
        match s.ssrc {
            None => s.ssrc = Some(pkt.header.ssrc),
            Some(first) if first != pkt.header.ssrc => s.ssrc_changes += 1,
            Some(_) => {}
        }
        let seq = pkt.header.sequence_number;
        if let Some(last) = s.last_seq
            && seq != last.wrapping_add(1)
        {
            s.seq_jumps += 1;
        }
        s.last_seq = Some(seq);
        if s.kind == TrackKind::Video
            && let Some((pid, width)) = vp8_frame_start(&pkt.payload)
        {
            if let Some(last) = s.last_picture_id
                && pid != (last + 1) & 0x7fff
            {
                s.picture_id_jumps += 1;
            }
            s.last_picture_id = Some(pid);
            // A keyframe older (by sequence number) than the last one seen is a late retransmission: the
            // layer it belongs to was already left.
            if let Some(w) = width
                && s.last_keyframe_seq
                    .is_none_or(|k| (seq.wrapping_sub(k) as i16) > 0)
            {
                s.last_keyframe_seq = Some(seq);
                if s.keyframe_widths.last() != Some(&w) {
                    s.keyframe_widths.push(w);
                }
            }
        }
        let Some(d) = decoded else {
            s.payload_errors += 1;
            return;
        };
        if d.keyframe {
            s.keyframes += 1;
            if s.first_keyframe_at.is_none() {
                s.first_keyframe_at = Some(now);
            }
        }
        if !d.intact {
            s.payload_errors += 1;
        }
        if now_us >= d.sent_us {
            s.latency.record(now_us - d.sent_us);
        } else {
            s.latency.negative += 1;
        }
        // A frame lost on the way that this packet's redundancy brings back (before any NACK answer does): a
        // receiver plays it from here. Counted as received, and as rebuilt from RED.
        for (c, sent_us) in earlier.into_iter().flatten() {
            if let Some(first) = s.first_counter
                && c >= first
                && c < d.counter
            {
                let off = (c - first) as usize;
                if let Some(w) = s.seen.get_mut(off / 64)
                    && *w & (1u64 << (off % 64)) == 0
                {
                    *w |= 1u64 << (off % 64);
                    s.distinct += 1;
                    s.red_recovered += 1;
                    if now_us.saturating_sub(sent_us) <= IN_TIME.as_micros() as u64 {
                        set_bit(&mut s.in_time, off);
                    }
                }
            }
        }
        s.last_counter = d.counter;
        let first = match s.first_counter {
            Some(first) => first,
            None => {
                s.first_counter = Some(d.counter);
                s.max_counter = d.counter;
                d.counter
            }
        };
        if d.counter < first {
            s.out_of_order += 1;
            return;
        }
        let offset = (d.counter - first) as usize;
        let word = offset / 64;
        if word >= s.seen.len() {
            if word > 1 << 24 {
                // A counter absurdly far ahead: corrupt, not loss.
                s.payload_errors += 1;
                return;
            }
            let new_len = (word + 1).max(s.seen.len() * 2);
            s.seen.resize(new_len, 0);
        }
        let bit = 1u64 << (offset % 64);
        if s.seen[word] & bit != 0 {
            s.duplicates += 1;
            return;
        }
        s.seen[word] |= bit;
        s.distinct += 1;
        if now_us.saturating_sub(d.sent_us) <= IN_TIME.as_micros() as u64 {
            set_bit(&mut s.in_time, offset);
        }
        if d.counter < s.max_counter {
            s.out_of_order += 1;
        } else {
            s.max_counter = d.counter;
        }
    }

    pub fn snapshot(&self) -> TrackStats {
        let s = self.lock();
        TrackStats {
            participant_id: self.participant_id.clone(),
            track_id: self.track_id.clone(),
            kind: s.kind,
            ssrc: s.ssrc.unwrap_or(0),
            ssrc_changes: s.ssrc_changes,
            packets: s.packets,
            bytes: s.bytes,
            first_counter: s.first_counter,
            max_counter: s.max_counter,
            last_counter: s.last_counter,
            distinct: s.distinct,
            duplicates: s.duplicates,
            out_of_order: s.out_of_order,
            seq_jumps: s.seq_jumps,
            picture_id_jumps: s.picture_id_jumps,
            ts_jumps: s.ts_jumps,
            gaps: s.gaps.clone(),
            keyframe_widths: s.keyframe_widths.clone(),
            payload_errors: s.payload_errors,
            padding_packets: s.padding_packets,
            red_packets: s.red_packets,
            red_recovered: s.red_recovered,
            keyframes: s.keyframes,
            first_keyframe_at: s.first_keyframe_at,
            first_packet_at: s.first_packet_at,
            last_packet_at: s.last_packet_at,
            opens: s.opens,
            ended: s.ended,
            latency: s.latency.clone(),
        }
    }

    /// Counters in `from..to` (the publisher's per-track packet counters) never received: what stayed lost after
    /// any repair. `None` when nothing from that range on was recorded (the bitmap starts at the first counter).
    pub fn missing_in(&self, from: u64, to: u64) -> Option<u64> {
        self.count_in(from, to, |s, off| !has_bit(&s.seen, off))
    }

    /// Counters in `from..to` that arrived, but first later than [`IN_TIME`] after they were sent; `None` if
    /// `from` is before the first counter received.
    pub fn late_in(&self, from: u64, to: u64) -> Option<u64> {
        self.count_in(from, to, |s, off| {
            has_bit(&s.seen, off) && !has_bit(&s.in_time, off)
        })
    }

    /// Counters in `from..to` for which `pick(state, counter - first counter)` holds; `None` if `from` is before
    /// the first counter received (the bitsets start there).
    fn count_in(
        &self,
        from: u64,
        to: u64,
        pick: impl Fn(&TrackState, usize) -> bool,
    ) -> Option<u64> {
        let s = self.lock();
        let first = s.first_counter?;
        if from < first {
            return None;
        }
        Some(
            (from..to)
                .filter(|c| pick(&s, (c - first) as usize))
                .count() as u64,
        )
    }

    /// Packets and bytes received so far (no histogram copy).
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.packets, s.bytes)
    }
}

struct Decoded {
    counter: u64,
    sent_us: u64,
    keyframe: bool,
    intact: bool,
}

/// Find the counter and send time in a payload, and check the padding.
/// The first packet of a frame in the simulated VP8 format (X, I with a 15-bit PictureID, no L/T/K): its
/// PictureID, and the width a keyframe announces.
fn vp8_frame_start(p: &[u8]) -> Option<(u16, Option<u16>)> {
    if p.len() < 7
        || p[0] & 0x10 == 0
        || p[0] & 0x07 != 0
        || p[1] & 0xf0 != 0x80
        || p[2] & 0x80 == 0
    {
        return None;
    }
    let pid = (u16::from(p[2] & 0x7f) << 8) | u16::from(p[3]);
    let width = (p[4] & 0x01 == 0 && p.get(7..10) == Some(&[0x9d, 0x01, 0x2a][..]))
        .then(|| {
            p.get(10..12)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) & 0x3fff)
        })
        .flatten();
    Some((pid, width))
}

fn decode_payload(payload: &[u8], video: bool, verify: bool) -> Option<Decoded> {
    // Audio: the Opus TOC byte comes first.
    let mut pos = usize::from(!video);
    let mut keyframe = false;
    if video {
        let b0 = *payload.first()?;
        let x = b0 & 0x80 != 0;
        let s = b0 & 0x10 != 0;
        let pid = b0 & 0x07;
        pos = 1;
        if x {
            let ext = *payload.get(pos)?;
            pos += 1;
            if ext & 0x80 != 0 {
                // I: PictureID, 1 or 2 bytes (M bit)
                let m = *payload.get(pos)? & 0x80 != 0;
                pos += if m { 2 } else { 1 };
            }
            if ext & 0x40 != 0 {
                pos += 1; // L: TL0PICIDX
            }
            if ext & 0x30 != 0 {
                pos += 1; // T/K
            }
        }
        if s && pid == 0 {
            let p = *payload.get(pos)? & 0x01;
            if p == 0 {
                keyframe = true;
                pos += 10;
            } else {
                pos += 3;
            }
        }
    }
    let stamp = payload.get(pos..pos + STAMP_BYTES)?;
    let counter = u64::from_be_bytes(stamp[0..8].try_into().ok()?);
    let sent_us = u64::from_be_bytes(stamp[8..16].try_into().ok()?);
    let mut intact = true;
    if verify {
        let c = counter as u8;
        for (i, b) in payload[pos + STAMP_BYTES..].iter().enumerate() {
            if *b != c ^ (i as u8) {
                intact = false;
                break;
            }
        }
    }
    Some(Decoded {
        counter,
        sent_us,
        keyframe,
        intact,
    })
}

fn put_stamp_and_padding(buf: &mut BytesMut, counter: u64, sent_us: u64, total_len: usize) {
    buf.put_u64(counter);
    buf.put_u64(sent_us);
    let c = counter as u8;
    let mut i = 0usize;
    while buf.len() < total_len {
        buf.put_u8(c ^ (i as u8));
        i += 1;
    }
}

/// `sdp` with every UDP candidate's address replaced by `relay` (unchanged without one).
fn via(sdp: &str, relay: Option<SocketAddr>) -> String {
    let Some(relay) = relay else {
        return sdp.to_string();
    };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let mut fields: Vec<&str> = body.split(' ').collect();
        if body.starts_with("a=candidate:")
            && fields.len() > 5
            && fields[2].eq_ignore_ascii_case("udp")
        {
            let (ip, port) = (relay.ip().to_string(), relay.port().to_string());
            fields[4] = &ip;
            fields[5] = &port;
            out.push_str(&fields.join(" "));
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Print an SDP to stderr when `GIAOBAN_SIM_DUMP_SDP` is set (debugging negotiation).
fn dump_sdp(name: &str, what: &str, sdp: &str) {
    if std::env::var_os("GIAOBAN_SIM_DUMP_SDP").is_some() {
        eprintln!("=== {name}: {what} ===\n{sdp}");
    }
}

/// Microseconds since the UNIX epoch.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------------
// Publishing side
// ---------------------------------------------------------------------------------------------------------------

/// Counters of what this endpoint sent and the feedback it got.
#[derive(Default)]
pub struct SendCounters {
    pub audio_packets: AtomicU64,
    pub audio_bytes: AtomicU64,
    pub video_packets: AtomicU64,
    pub video_bytes: AtomicU64,
    pub video_frames: AtomicU64,
    pub keyframes: AtomicU64,
    pub write_errors: AtomicU64,
    /// PLIs received on the publish connection (about any of our tracks).
    pub plis: AtomicU64,
    pub firs: AtomicU64,
    /// Keyframe requests (PLI/FIR) ignored as a Chromium sender does: within 300 ms of the last one acted on.
    pub requests_ignored: AtomicU64,
    keyframe_requested: AtomicBool,
}

/// Snapshot of [`SendCounters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SendStats {
    pub audio_packets: u64,
    pub audio_bytes: u64,
    pub video_packets: u64,
    pub video_bytes: u64,
    pub video_frames: u64,
    pub keyframes: u64,
    pub write_errors: u64,
    pub plis: u64,
    pub firs: u64,
    pub requests_ignored: u64,
}

impl SendCounters {
    fn snapshot(&self) -> SendStats {
        SendStats {
            audio_packets: self.audio_packets.load(Ordering::Relaxed),
            audio_bytes: self.audio_bytes.load(Ordering::Relaxed),
            video_packets: self.video_packets.load(Ordering::Relaxed),
            video_bytes: self.video_bytes.load(Ordering::Relaxed),
            video_frames: self.video_frames.load(Ordering::Relaxed),
            keyframes: self.keyframes.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            plis: self.plis.load(Ordering::Relaxed),
            firs: self.firs.load(Ordering::Relaxed),
            requests_ignored: self.requests_ignored.load(Ordering::Relaxed),
        }
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// Media engine with Opus (RED ahead of it if asked) and VP8 (with nack / nack pli / ccm fir feedback) and the interceptor registry.
fn media_setup(interceptors: Interceptors, red: bool) -> anyhow::Result<(MediaEngine, Registry)> {
    let mut me = MediaEngine::default();
    if red {
        // Registered first: offered ahead of Opus, which is what makes a browser send it.
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: giaoban_sfu::connection::red(),
                payload_type: giaoban_sfu::red::RED_PAYLOAD_TYPE,
            },
            RtpCodecKind::Audio,
        )?;
    }
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: vp8_codec(),
            payload_type: VP8_PT,
        },
        RtpCodecKind::Video,
    )?;
    let registry = match interceptors {
        Interceptors::Default => {
            // webrtc-rs's default set, with the NACK generator giving up on a packet after 10 requests as
            // Chromium does (kMaxNackRetries): webrtc-rs's default asks again every 100 ms without end, which on
            // a congested 300 kbit/s link made the server's retransmissions grow to 15 Mbit/s.
            // (`register_default_interceptors` with `configure_nack`'s generator built differently.)
            for parameter in ["", "pli"] {
                me.register_feedback(
                    RTCPFeedback {
                        typ: "nack".to_owned(),
                        parameter: parameter.to_owned(),
                    },
                    RtpCodecKind::Video,
                );
            }
            configure_simulcast_extension_headers(&mut me)?;
            let registry = Registry::new()
                .with(
                    Slot::NackResponder,
                    rtc::interceptor::NackResponderBuilder::new().build(),
                )
                .with(
                    Slot::NackGenerator,
                    rtc::interceptor::NackGeneratorBuilder::new()
                        .with_max_nacks_per_packet(NACK_RETRIES)
                        .build(),
                );
            configure_rtcp_reports(configure_twcc_receiver_only(registry, &mut me)?)
        }
        Interceptors::Minimal => {
            for (typ, parameter) in [("nack", ""), ("nack", "pli")] {
                me.register_feedback(
                    RTCPFeedback {
                        typ: typ.to_owned(),
                        parameter: parameter.to_owned(),
                    },
                    RtpCodecKind::Video,
                );
            }
            configure_simulcast_extension_headers(&mut me)?;
            Registry::new()
        }
    };
    me.register_feedback(
        RTCPFeedback {
            typ: "ccm".to_owned(),
            parameter: "fir".to_owned(),
        },
        RtpCodecKind::Video,
    );
    // NACK on audio too, as the SFU offers it on subscribe legs: a lossy hall's speech gets repaired.
    me.register_feedback(
        RTCPFeedback {
            typ: "nack".to_owned(),
            parameter: String::new(),
        },
        RtpCodecKind::Audio,
    );
    // Browsers offer the audio level extension on their microphone's m-line.
    me.register_header_extension(
        rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
            uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    // The server's own tap: inbound PLI/FIR reach the application (inbound RTCP otherwise stops at the end of the
    // interceptor chain), so the publisher can count them and answer with a keyframe.
    let registry = registry.with(
        Slot::from(giaoban_sfu::feedback::SLOT),
        giaoban_sfu::feedback::KeyframeRequestTap::default(),
    );
    Ok((me, registry))
}

// ---------------------------------------------------------------------------------------------------------------
// Peer connection event handling
// ---------------------------------------------------------------------------------------------------------------

struct PcHandler {
    leg: Leg,
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    inner: Weak<Inner>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PcHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        tracing::debug!(leg = ?self.leg, %state, "sim ICE connection state");
        if self.leg == Leg::Subscribe
            && state == RTCIceConnectionState::Connected
            && let Some(inner) = self.inner.upgrade()
        {
            inner.mark(|t| &mut t.ice_connected);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(leg = ?self.leg, %state, "sim peer connection state");
        if self.leg == Leg::Subscribe
            && state == RTCPeerConnectionState::Connected
            && let Some(inner) = self.inner.upgrade()
        {
            inner.mark(|t| &mut t.connected);
        }
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
            let participant_id = track.stream_id().await;
            let track_id = track.track_id().await;
            let kind = match track.kind().await {
                RtpCodecKind::Video => TrackKind::Video,
                _ => TrackKind::Audio,
            };
            let recorder = inner.recorder(&participant_id, &track_id, kind);
            {
                let mut remote = recorder.remote.lock().unwrap_or_else(|p| p.into_inner());
                *remote = Some((Arc::clone(&track), ssrc));
            }
            recorder.lock().opens += 1;
            recorder.lock().ended = false;
            let mut pli_after = inner
                .opts
                .media
                .pli_without_keyframe
                .filter(|_| kind == TrackKind::Video);
            drop(inner);
            let mut first_at = None;
            let mut last_pli: Option<std::time::Instant> = None;
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(pkt) => {
                        recorder.on_packet(&pkt);
                        if let Some(after) = pli_after {
                            let now = std::time::Instant::now();
                            let first = *first_at.get_or_insert(now);
                            if recorder.lock().keyframes > 0 {
                                // A picture came: nothing more to ask for.
                                pli_after = None;
                            } else if now.duration_since(first) >= after
                                && last_pli.is_none_or(|t| now.duration_since(t) >= after)
                            {
                                last_pli = Some(now);
                                let pli = PictureLossIndication {
                                    sender_ssrc: 0,
                                    media_ssrc: pkt.header.ssrc,
                                };
                                let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                            }
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
            recorder.lock().ended = true;
        });
    }
}

struct PcSlot {
    pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    gathered: watch::Receiver<bool>,
}

async fn build_pc(inner: &Arc<Inner>, leg: Leg) -> anyhow::Result<PcSlot> {
    let (me, registry) = media_setup(inner.opts.interceptors, inner.opts.media.red)?;
    let mut settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(true)
        // As Chromium and Firefox: answer `setup:active` (DTLS client). webrtc-rs would answer an ICE-lite offer
        // `passive`, making the SFU the DTLS client, which browsers never do.
        .with_answering_dtls_role(RTCDtlsRole::Client)
        // Connectivity checks paced like Chromium's (a check every ~50 ms until a pair works) rather than
        // webrtc-rs's 200 ms, with as many tries in all (1.4 s per pair). This also bounds a webrtc-rs quirk: its
        // DTLS client's first flight leaves only at the connection's next timer after ICE connects.
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(28));
    if !inner.opts.srtp_profiles.is_empty() {
        settings = settings.with_srtp_protection_profiles(inner.opts.srtp_profiles.clone());
    }
    if inner.opts.ice_tcp {
        settings = settings.with_network_types(vec![
            rtc::ice::network_type::NetworkType::Tcp4,
            rtc::ice::network_type::NetworkType::Tcp6,
        ]);
    }
    let settings = settings.build();
    let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
    let (gathered_tx, gathered_rx) = watch::channel(false);
    let handler = Arc::new(PcHandler {
        leg,
        state: state_tx,
        gathered: gathered_tx,
        inner: Arc::downgrade(inner),
    });
    let mut builder = PeerConnectionBuilder::new();
    if inner.opts.dedicated_reactor {
        builder = builder.with_dedicated_reactor_pool_size(1);
    }
    let local = vec![SocketAddr::new(inner.opts.bind_ip, 0)];
    let builder = if inner.opts.ice_tcp {
        builder.with_tcp_addrs(local).with_udp_addrs(Vec::new())
    } else {
        builder.with_udp_addrs(local)
    };
    let pc = builder
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .build()
        .await
        .context("building a peer connection")?;
    Ok(PcSlot {
        pc: Arc::new(pc),
        state: state_rx,
        gathered: gathered_rx,
    })
}

/// With ICE-TCP: hand the server's passive TCP candidates of `remote_sdp` to the connection, which dials them
/// (webrtc-rs connects only to passive candidates given through `add_ice_candidate`).
async fn dial_tcp_candidates(slot: &PcSlot, remote_sdp: &str) -> anyhow::Result<()> {
    // Each media section repeats the candidates: dial each once.
    let mut seen = std::collections::HashSet::new();
    for line in remote_sdp.lines() {
        let Some(candidate) = line.trim().strip_prefix("a=") else {
            continue;
        };
        // Component 1 only (the SDP also lists component 2, unused with rtcp-mux).
        let component = candidate.split_whitespace().nth(1);
        if candidate.starts_with("candidate:")
            && component == Some("1")
            && candidate.to_ascii_lowercase().contains(" tcp ")
            && candidate.contains("tcptype passive")
            && seen.insert(candidate.to_string())
        {
            slot.pc
                .add_ice_candidate(webrtc::peer_connection::RTCIceCandidateInit {
                    candidate: candidate.to_string(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                    ..Default::default()
                })
                .await
                .context("adding the server's TCP candidate")?;
        }
    }
    Ok(())
}

/// Wait (bounded) until ICE gathering is complete, then read the local description's SDP.
async fn local_sdp(slot: &PcSlot, timeout: Duration) -> anyhow::Result<String> {
    let mut gathered = slot.gathered.clone();
    let _ = tokio::time::timeout(timeout, gathered.wait_for(|g| *g)).await;
    let desc = slot
        .pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?;
    Ok(desc.sdp)
}

async fn wait_connected(
    mut state: watch::Receiver<RTCPeerConnectionState>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let result = tokio::time::timeout(
        timeout,
        state.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        }),
    )
    .await;
    match result {
        Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected => Ok(()),
        Ok(Ok(s)) => bail!("peer connection {}", *s),
        Ok(Err(_)) => bail!("peer connection handler gone"),
        Err(_) => bail!("peer connection not connected after {timeout:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The endpoint
// ---------------------------------------------------------------------------------------------------------------

/// When each step of an endpoint's join happened (the first time; `None` if it did not), for the join → first
/// frame breakdown.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinTimeline {
    /// `join` sent (or [`SimEndpoint::mark_join_sent`]).
    pub join_sent: Option<Instant>,
    /// `joined` arrived.
    pub joined: Option<Instant>,
    /// The first `subscribe_offer` arrived.
    pub subscribe_offer: Option<Instant>,
    /// Its answer left (after ICE gathering: no trickle).
    pub subscribe_answer: Option<Instant>,
    /// The subscribe connection's ICE is connected (a nominated pair).
    pub ice_connected: Option<Instant>,
    /// The subscribe connection is connected (DTLS done, SRTP keyed).
    pub connected: Option<Instant>,
}

/// One message the endpoint received, parsed or not.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a test-side message log; size does not matter
pub enum Received {
    Message(ServerMessage),
    /// A text frame that is not a `ServerMessage` (kept verbatim).
    Unparsed(String),
    /// The server closed the WebSocket (close frame or end of stream).
    Closed,
}

enum WsOut {
    Text(String),
    Close,
}

struct Inner {
    opts: SimOptions,
    participant_id: StdMutex<Option<String>>,
    out_tx: mpsc::UnboundedSender<WsOut>,
    log: StdMutex<Vec<Received>>,
    log_notify: Notify,
    closed: AtomicBool,
    publish: tokio::sync::Mutex<Option<PcSlot>>,
    subscribe: tokio::sync::Mutex<Option<PcSlot>>,
    recorders: StdMutex<HashMap<(String, String), Arc<TrackRecorder>>>,
    sent: Arc<SendCounters>,
    tasks: StdMutex<Vec<JoinHandle<()>>>,
    subscribe_answers: AtomicU64,
    subscribe_errors: AtomicU64,
    opened_at: Instant,
    timeline: StdMutex<JoinTimeline>,
}

impl Inner {
    /// The recorder of a track received, if it was.
    fn received(&self, participant_id: &str, track_id: &str) -> Option<Arc<TrackRecorder>> {
        self.recorders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(participant_id.to_string(), track_id.to_string()))
            .cloned()
    }

    fn recorder(
        &self,
        participant_id: &str,
        track_id: &str,
        kind: TrackKind,
    ) -> Arc<TrackRecorder> {
        let mut map = self.recorders.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            map.entry((participant_id.to_string(), track_id.to_string()))
                .or_insert_with(|| {
                    Arc::new(TrackRecorder::new(
                        participant_id.to_string(),
                        track_id.to_string(),
                        kind,
                        self.opts.verify_payload,
                    ))
                }),
        )
    }

    /// Note the first time a join step happened (later repeats keep the first).
    fn mark(&self, step: impl FnOnce(&mut JoinTimeline) -> &mut Option<Instant>) {
        let now = Instant::now();
        let mut t = self.timeline.lock().unwrap_or_else(|p| p.into_inner());
        step(&mut t).get_or_insert(now);
    }

    fn push(&self, r: Received) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        self.log_notify.notify_waiters();
    }

    fn send(&self, msg: &ClientMessage) -> anyhow::Result<()> {
        let text = serde_json::to_string(msg)?;
        self.send_text(text)
    }

    fn send_text(&self, text: String) -> anyhow::Result<()> {
        self.out_tx
            .send(WsOut::Text(text))
            .map_err(|_| anyhow!("websocket writer gone"))
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    async fn on_subscribe_offer(self: &Arc<Self>, sdp: String) -> anyhow::Result<()> {
        let sdp = self.answer_subscribe_offer(sdp).await?;
        self.send(&ClientMessage::SubscribeAnswer { sdp })?;
        self.mark(|t| &mut t.subscribe_answer);
        self.subscribe_answers.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Apply a subscribe offer on the subscribe connection (created on first use) and return the gathered answer.
    async fn answer_subscribe_offer(self: &Arc<Self>, sdp: String) -> anyhow::Result<String> {
        dump_sdp(&self.opts.name, "subscribe offer", &sdp);
        let mut guard = self.subscribe.lock().await;
        let first_offer = guard.is_none();
        if guard.is_none() {
            *guard = Some(build_pc(self, Leg::Subscribe).await?);
        }
        let slot = guard.as_ref().ok_or_else(|| anyhow!("no subscribe pc"))?;
        slot.pc
            .set_remote_description(RTCSessionDescription::offer(via(
                &sdp,
                self.opts.media_via,
            ))?)
            .await
            .context("subscribe: set_remote_description(offer)")?;
        if self.opts.ice_tcp && first_offer {
            dial_tcp_candidates(slot, &sdp).await?;
        }
        let answer = slot.pc.create_answer(None).await.context("create_answer")?;
        slot.pc
            .set_local_description(answer)
            .await
            .context("subscribe: set_local_description(answer)")?;
        let sdp = local_sdp(slot, self.opts.step_timeout).await?;
        dump_sdp(&self.opts.name, "subscribe answer", &sdp);
        Ok(sdp)
    }
}

/// Everything an endpoint has counted, cheap to take.
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub participant_id: Option<String>,
    pub sent: SendStats,
    pub received: Vec<TrackStats>,
    pub subscribe_answers: u64,
    pub subscribe_errors: u64,
}

impl EndpointStats {
    /// The received track published by `participant_id` with kind `kind`, if any.
    pub fn track_from(&self, participant_id: &str, kind: TrackKind) -> Option<&TrackStats> {
        self.received
            .iter()
            .find(|t| t.participant_id == participant_id && t.kind == kind)
    }
}

/// Counts of what one endpoint received from one publisher and kind, summed over its tracks
/// ([`SimEndpoint::received_by_publisher`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackCounts {
    pub packets: u64,
    pub bytes: u64,
    /// Different counters received (see [`TrackStats::distinct`]).
    pub distinct: u64,
    /// Counters from the first to the highest received (see [`TrackStats::expected`]).
    pub expected: u64,
}

/// A simulated participant. Cheap to clone (a handle).
#[derive(Clone)]
pub struct SimEndpoint {
    inner: Arc<Inner>,
}

impl SimEndpoint {
    /// Open the WebSocket without joining (for protocol tests).
    pub async fn open(opts: SimOptions) -> anyhow::Result<SimEndpoint> {
        let url = opts.ws_url();
        // TCP_NODELAY, as browsers set it.
        let (ws, _resp) = tokio::time::timeout(
            opts.step_timeout,
            tokio_tungstenite::connect_async_with_config(url.as_str(), None, true),
        )
        .await
        .map_err(|_| anyhow!("websocket connect to {url} timed out"))?
        .with_context(|| format!("websocket connect to {url}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<WsOut>();
        let inner = Arc::new(Inner {
            opts,
            participant_id: StdMutex::new(None),
            out_tx,
            log: StdMutex::new(Vec::new()),
            log_notify: Notify::new(),
            closed: AtomicBool::new(false),
            publish: tokio::sync::Mutex::new(None),
            subscribe: tokio::sync::Mutex::new(None),
            recorders: StdMutex::new(HashMap::new()),
            sent: Arc::new(SendCounters::default()),
            tasks: StdMutex::new(Vec::new()),
            subscribe_answers: AtomicU64::new(0),
            subscribe_errors: AtomicU64::new(0),
            opened_at: Instant::now(),
            timeline: StdMutex::new(JoinTimeline::default()),
        });

        inner.spawn(async move {
            while let Some(out) = out_rx.recv().await {
                match out {
                    WsOut::Text(t) => {
                        if sink.send(Message::Text(t.into())).await.is_err() {
                            break;
                        }
                    }
                    WsOut::Close => {
                        let _ = sink.send(Message::Close(None)).await;
                        let _ = sink.close().await;
                        break;
                    }
                }
            }
        });

        let weak = Arc::downgrade(&inner);
        inner.spawn(async move {
            while let Some(frame) = stream.next().await {
                let Some(inner) = weak.upgrade() else { break };
                match frame {
                    Ok(Message::Text(text)) => {
                        match serde_json::from_str::<ServerMessage>(text.as_str()) {
                            Ok(msg) => {
                                if let ServerMessage::Joined { .. } = &msg {
                                    inner.mark(|t| &mut t.joined);
                                }
                                if let ServerMessage::SubscribeOffer { sdp, .. } = &msg {
                                    inner.mark(|t| &mut t.subscribe_offer);
                                    let sdp = sdp.clone();
                                    inner.push(Received::Message(msg));
                                    if let Err(e) = inner.on_subscribe_offer(sdp).await {
                                        inner.subscribe_errors.fetch_add(1, Ordering::Relaxed);
                                        tracing::warn!(
                                            name = %inner.opts.name,
                                            "sim: answering subscribe_offer failed: {e:#}"
                                        );
                                    }
                                } else {
                                    inner.push(Received::Message(msg));
                                }
                            }
                            Err(_) => inner.push(Received::Unparsed(text.to_string())),
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if let Some(inner) = weak.upgrade() {
                inner.closed.store(true, Ordering::Relaxed);
                inner.push(Received::Closed);
            }
        });
        Ok(SimEndpoint { inner })
    }

    /// Open the WebSocket and join: returns once `joined` arrived (or fails with the server's `error`).
    pub async fn connect(opts: SimOptions) -> anyhow::Result<SimEndpoint> {
        let ep = SimEndpoint::open(opts).await?;
        ep.join().await?;
        Ok(ep)
    }

    /// Send `join` and wait for `joined`; returns the participants already in the room.
    pub async fn join(&self) -> anyhow::Result<Vec<ParticipantInfo>> {
        let from = self.log_len();
        self.inner
            .timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join_sent = Some(Instant::now());
        let opts = &self.inner.opts;
        self.inner.send(&match &opts.token {
            Some(token) => ClientMessage::Join {
                room: None,
                name: None,
                token: Some(token.clone()),
            },
            None => ClientMessage::Join {
                room: Some(opts.room.clone()),
                name: Some(opts.name.clone()),
                token: None,
            },
        })?;
        let reply = self
            .wait_message_since(from, self.inner.opts.step_timeout, |m| {
                matches!(
                    m,
                    ServerMessage::Joined { .. } | ServerMessage::Error { .. }
                )
            })
            .await
            .context("waiting for joined")?;
        match reply {
            ServerMessage::Joined {
                participant_id,
                participants,
                ..
            } => {
                *self
                    .inner
                    .participant_id
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(participant_id);
                Ok(participants)
            }
            ServerMessage::Error { code, message, .. } => {
                bail!("join refused: {code:?}: {message}")
            }
            other => bail!("unexpected reply to join: {other:?}"),
        }
    }

    /// The participant id the server gave us (after `joined`).
    pub fn id(&self) -> String {
        self.inner
            .participant_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        &self.inner.opts.name
    }

    /// When `join` was sent.
    pub fn join_sent_at(&self) -> Option<Instant> {
        self.timeline().join_sent
    }

    /// When each step of joining happened here (first subscribe offer, answer, ICE and DTLS of the subscribe
    /// connection); the first packet and keyframe of each track are in [`stats`](Self::stats).
    pub fn timeline(&self) -> JoinTimeline {
        *self
            .inner
            .timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn opened_at(&self) -> Instant {
        self.inner.opened_at
    }

    /// Create the publish connection with the configured tracks, exchange `publish_offer` / `publish_answer`,
    /// wait until it is connected and start sending.
    pub async fn publish(&self) -> anyhow::Result<()> {
        let me = self.clone();
        self.publish_with(move |sdp| async move {
            let inner = &me.inner;
            let from = me.log_len();
            inner.send(&ClientMessage::PublishOffer { sdp })?;
            let reply = me
                .wait_message_since(from, inner.opts.step_timeout, |m| {
                    matches!(
                        m,
                        ServerMessage::PublishAnswer { .. } | ServerMessage::Error { .. }
                    )
                })
                .await
                .context("waiting for publish_answer")?;
            match reply {
                ServerMessage::PublishAnswer { sdp, .. } => Ok(sdp),
                ServerMessage::Error { code, message, .. } => {
                    bail!("publish refused: {code:?}: {message}")
                }
                other => bail!("unexpected reply to publish_offer: {other:?}"),
            }
        })
        .await
    }

    /// [`publish`](Self::publish) with the offer/answer exchange done by `exchange` (the gathered offer SDP in,
    /// the answer SDP out): for endpoints driven by another signalling than ours (see [`detached`](Self::detached)).
    pub async fn publish_with<F, Fut>(&self, exchange: F) -> anyhow::Result<()>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<String>>,
    {
        let inner = &self.inner;
        let media = inner.opts.media;
        let slot = build_pc(inner, Leg::Publish).await?;
        // msid ids are tokens: no spaces (the display name may have some).
        let stream_id = format!("sim-{:016x}", rand::random::<u64>());
        // Each track with its encodings: (rid, SSRC); one with an empty rid without simulcast.
        type Published = (
            RtpCodecKind,
            Arc<TrackLocalStaticRTP>,
            Vec<(String, u32)>,
            Arc<dyn webrtc::rtp_transceiver::RtpTransceiver>,
        );
        let mut tracks: Vec<Published> = Vec::new();
        for (kind, enabled) in [
            (RtpCodecKind::Audio, media.audio),
            (RtpCodecKind::Video, media.video),
        ] {
            if !enabled {
                continue;
            }
            let ssrc: u32 = rand::random();
            let layers: Vec<(String, u32)> = if kind == RtpCodecKind::Video && media.simulcast {
                SIMULCAST_RIDS
                    .iter()
                    .map(|rid| (rid.to_string(), rand::random()))
                    .collect()
            } else {
                vec![(String::new(), ssrc)]
            };
            let codec = if kind == RtpCodecKind::Audio && media.red {
                giaoban_sfu::connection::red()
            } else if kind == RtpCodecKind::Audio {
                opus_codec()
            } else {
                vp8_codec()
            };
            let label = if kind == RtpCodecKind::Audio {
                "mic"
            } else {
                "camera"
            };
            let track = Arc::new(TrackLocalStaticRTP::new(
                rtc::media_stream::MediaStreamTrack::new(
                    stream_id.clone(),
                    format!("{label}-{ssrc:08x}"),
                    label.to_string(),
                    kind,
                    layers
                        .iter()
                        .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                            rtp_coding_parameters: RTCRtpCodingParameters {
                                rid: rid.clone(),
                                ssrc: Some(*ssrc),
                                ..Default::default()
                            },
                            active: true,
                            codec: codec.clone(),
                            ..Default::default()
                        })
                        .collect(),
                ),
            ));
            let transceiver = slot
                .pc
                .add_transceiver_from_track(
                    Arc::clone(&track) as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![stream_id.clone()],
                        send_encodings: vec![],
                    }),
                )
                .await
                .context("add_transceiver_from_track")?;
            tracks.push((kind, track, layers, transceiver));
        }
        let offer = slot.pc.create_offer(None).await.context("create_offer")?;
        slot.pc
            .set_local_description(offer)
            .await
            .context("publish: set_local_description(offer)")?;
        let sdp = local_sdp(&slot, inner.opts.step_timeout).await?;
        dump_sdp(&inner.opts.name, "publish offer", &sdp);
        let answer = exchange(sdp).await?;
        dump_sdp(&inner.opts.name, "publish answer", &answer);
        slot.pc
            .set_remote_description(RTCSessionDescription::answer(via(
                &answer,
                inner.opts.media_via,
            ))?)
            .await
            .context("publish: set_remote_description(answer)")?;
        if inner.opts.ice_tcp {
            dial_tcp_candidates(&slot, &answer).await?;
        }

        let state = slot.state.clone();
        *inner.publish.lock().await = Some(slot);
        wait_connected(state, inner.opts.step_timeout)
            .await
            .context("publish connection")?;

        for (kind, track, layers, transceiver) in tracks {
            let Some(sender) = transceiver.sender().await? else {
                bail!("transceiver without sender");
            };
            let params = sender.get_parameters().await?;
            let first = params.rtp_parameters.codecs.first();
            let red = first.is_some_and(|c| {
                c.rtp_codec
                    .mime_type
                    .eq_ignore_ascii_case(giaoban_sfu::red::MIME_TYPE)
            });
            let pt = first
                .map(|c| c.payload_type)
                .unwrap_or(if kind == RtpCodecKind::Audio {
                    OPUS_PT
                } else {
                    VP8_PT
                });
            // Simulcast layers carry the mid and their rid in header extensions (how the server tells them apart).
            let ext_id = |uri: &str| {
                params
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|e| e.uri == uri)
                    .map(|e| e.id as u8)
            };
            let mid = transceiver.mid().await?.unwrap_or_default();
            let mid_id = ext_id(rtc::sdp::extmap::SDES_MID_URI);
            let rid_id = ext_id(rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI);
            // Keyframe requests about this track, per layer (by the PLI's media SSRC).
            let flags: Vec<(u32, Arc<AtomicBool>)> = layers
                .iter()
                .map(|(_, ssrc)| (*ssrc, Arc::new(AtomicBool::new(false))))
                .collect();
            let sent = Arc::clone(&inner.sent);
            let rtcp_track = Arc::clone(&track);
            let rtcp_flags = flags.clone();
            inner.spawn(async move {
                // As Chromium's sender (`EncoderRtcpFeedback`): a request within 300 ms of the last one it acted
                // on (per layer) is ignored.
                let mut honoured: Vec<Option<Instant>> = vec![None; rtcp_flags.len()];
                let mut raise = |ssrc: Option<u32>| {
                    let now = Instant::now();
                    for (i, (s, flag)) in rtcp_flags.iter().enumerate() {
                        if ssrc.is_some_and(|x| x != *s) {
                            continue;
                        }
                        if honoured[i]
                            .is_none_or(|t| now.duration_since(t) >= KEYFRAME_REQUEST_FLOOR)
                        {
                            honoured[i] = Some(now);
                            flag.store(true, Ordering::Relaxed);
                        } else {
                            sent.requests_ignored.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                };
                while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = rtcp_track.poll().await {
                    for p in packets {
                        let any = p.as_any();
                        if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                            sent.plis.fetch_add(1, Ordering::Relaxed);
                            sent.keyframe_requested.store(true, Ordering::Relaxed);
                            raise(Some(pli.media_ssrc).filter(|s| *s != 0));
                        } else if any.is::<FullIntraRequest>() {
                            sent.firs.fetch_add(1, Ordering::Relaxed);
                            sent.keyframe_requested.store(true, Ordering::Relaxed);
                            raise(None);
                        }
                    }
                }
            });
            if kind == RtpCodecKind::Audio {
                let sent = Arc::clone(&inner.sent);
                let level = media
                    .audio_level
                    .and_then(|l| Some((ext_id(rtc::sdp::extmap::AUDIO_LEVEL_URI)?, l & 0x7f)));
                let red = red.then(|| {
                    params
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
                        .map_or(OPUS_PT, |c| c.payload_type)
                });
                inner.spawn(send_audio(track, layers[0].1, pt, red, media, level, sent));
                continue;
            }
            let n = layers.len();
            for (i, ((rid, ssrc), (_, flag))) in layers.into_iter().zip(flags).enumerate() {
                let mut extensions = Vec::new();
                if n > 1 {
                    let (Some(mid_id), Some(rid_id)) = (mid_id, rid_id) else {
                        bail!("simulcast: mid/rid header extensions not negotiated");
                    };
                    extensions.push((mid_id, Bytes::from(mid.clone())));
                    extensions.push((rid_id, Bytes::from(rid)));
                }
                // Layer i of n: width 960 >> (n-1-i), bitrate halved twice per step down (as Chromium's 4x fewer pixels).
                let down = (n - 1 - i) as u32;
                let layer = VideoLayer {
                    width: if n > 1 { (960u32 >> down) as u16 } else { 640 },
                    height: if n > 1 { (540u32 >> down) as u16 } else { 360 },
                    bitrate_bps: media.video_bitrate_bps >> (2 * down),
                    extensions,
                    keyframe_requested: flag,
                    honours_requests: i == 0 || !media.upper_layers_ignore_keyframe_requests,
                };
                let sent = Arc::clone(&inner.sent);
                inner.spawn(send_video(Arc::clone(&track), ssrc, pt, media, layer, sent));
            }
        }
        Ok(())
    }

    /// Number of messages received so far (a cursor for [`wait_message_since`](Self::wait_message_since)).
    pub fn log_len(&self) -> usize {
        self.inner
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Every server message received so far.
    pub fn messages(&self) -> Vec<ServerMessage> {
        self.inner
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|r| match r {
                Received::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    /// Everything received so far, including unparsed frames and the close.
    pub fn received(&self) -> Vec<Received> {
        self.inner
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the server closed the WebSocket.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
    }

    /// Wait until a message at index `from` or later matches `pred`; fails on timeout or when the socket closed.
    pub async fn wait_message_since(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> anyhow::Result<ServerMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.log_notify.notified();
            {
                let log = self.inner.log.lock().unwrap_or_else(|p| p.into_inner());
                for r in log.iter().skip(from) {
                    match r {
                        Received::Message(m) if pred(m) => return Ok(m.clone()),
                        Received::Closed => bail!(
                            "{}: websocket closed while waiting; received since: {:?}",
                            self.inner.opts.name,
                            &log[from.min(log.len())..]
                        ),
                        _ => {}
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let log = self.inner.log.lock().unwrap_or_else(|p| p.into_inner());
                bail!(
                    "{}: no matching message within {timeout:?}; received since: {:?}",
                    self.inner.opts.name,
                    &log[from.min(log.len())..]
                );
            }
        }
    }

    /// Wait for an `error` at index `from` or later and return its code and message.
    pub async fn wait_error_since(
        &self,
        from: usize,
        timeout: Duration,
    ) -> anyhow::Result<(ErrorCode, String)> {
        match self
            .wait_message_since(from, timeout, |m| matches!(m, ServerMessage::Error { .. }))
            .await?
        {
            ServerMessage::Error { code, message, .. } => Ok((code, message)),
            _ => unreachable!("predicate matched only errors"),
        }
    }

    /// Send a protocol message.
    pub fn send(&self, msg: &ClientMessage) -> anyhow::Result<()> {
        self.inner.send(msg)
    }

    /// Send a raw text frame (for malformed-input tests).
    pub fn send_raw(&self, text: impl Into<String>) -> anyhow::Result<()> {
        self.inner.send_text(text.into())
    }

    /// Snapshot of one received track.
    pub fn track(&self, participant_id: &str, track_id: &str) -> Option<TrackStats> {
        self.inner
            .received(participant_id, track_id)
            .map(|r| r.snapshot())
    }

    /// Of `participant_id`'s track `track_id`, the counters in `from..to` never received (see
    /// [`TrackRecorder::missing_in`]).
    pub fn missing_in(
        &self,
        participant_id: &str,
        track_id: &str,
        from: u64,
        to: u64,
    ) -> Option<u64> {
        self.inner
            .received(participant_id, track_id)
            .and_then(|r| r.missing_in(from, to))
    }

    /// Of a received track's counters in `from..to`, how many arrived later than [`IN_TIME`] after they were
    /// sent (`None` before its first counter).
    pub fn late_in(&self, participant_id: &str, track_id: &str, from: u64, to: u64) -> Option<u64> {
        self.inner
            .received(participant_id, track_id)
            .and_then(|r| r.late_in(from, to))
    }

    /// Snapshot of everything counted.
    pub fn stats(&self) -> EndpointStats {
        let recorders: Vec<Arc<TrackRecorder>> = self
            .inner
            .recorders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        EndpointStats {
            participant_id: self
                .inner
                .participant_id
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            sent: self.inner.sent.snapshot(),
            received: recorders.iter().map(|r| r.snapshot()).collect(),
            subscribe_answers: self.inner.subscribe_answers.load(Ordering::Relaxed),
            subscribe_errors: self.inner.subscribe_errors.load(Ordering::Relaxed),
        }
    }

    /// What this endpoint sent so far (atomics only).
    pub fn sent(&self) -> SendStats {
        self.inner.sent.snapshot()
    }

    /// Packets and bytes received over all tracks (no histogram copies).
    pub fn received_counts(&self) -> (u64, u64) {
        let map = self
            .inner
            .recorders
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.values().fold((0, 0), |(p, b), r| {
            let (rp, rb) = r.counts();
            (p + rp, b + rb)
        })
    }

    /// Per publishing participant and kind: what was received so far (no histogram copies; for `loadtest`, which
    /// reads it for every endpoint of a large room).
    pub fn received_by_publisher(&self) -> HashMap<(String, TrackKind), TrackCounts> {
        let recorders: Vec<Arc<TrackRecorder>> = self
            .inner
            .recorders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: HashMap<(String, TrackKind), TrackCounts> = HashMap::new();
        for r in recorders {
            let s = r.lock();
            let c = out.entry((r.participant_id.clone(), s.kind)).or_default();
            c.packets += s.packets;
            c.bytes += s.bytes;
            c.distinct += s.distinct;
            c.expected += match s.first_counter {
                Some(first) => s.max_counter.saturating_sub(first) + 1,
                None => 0,
            };
        }
        out
    }

    /// Send an RTCP PLI for a received track on the subscribe connection. Fails if the track was not received.
    pub async fn send_pli(&self, participant_id: &str, track_id: &str) -> anyhow::Result<()> {
        let recorder = self
            .inner
            .received(participant_id, track_id)
            .ok_or_else(|| anyhow!("no received track {participant_id}/{track_id}"))?;
        let remote = recorder
            .remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| anyhow!("track {participant_id}/{track_id} has no remote handle"))?;
        let (track, ssrc) = remote;
        let ssrc = if ssrc == 0 {
            recorder.snapshot().ssrc
        } else {
            ssrc
        };
        track
            .write_rtcp(vec![Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
            })])
            .await
            .context("write_rtcp(PLI)")?;
        Ok(())
    }

    /// Connection state of the publish / subscribe connection as this endpoint sees it.
    pub async fn pc_state(&self, leg: Leg) -> Option<RTCPeerConnectionState> {
        let guard = match leg {
            Leg::Publish => self.inner.publish.lock().await,
            Leg::Subscribe => self.inner.subscribe.lock().await,
            // The simulated endpoint shares no screen.
            Leg::Screen => return None,
        };
        guard.as_ref().map(|s| *s.state.borrow())
    }

    /// Drop both peer connections without closing them (no DTLS close_notify, no more STUN): to the server the
    /// media just stops, as when a cable is pulled. Needs [`SimOptions::dedicated_reactor`]; the WebSocket stays.
    pub async fn drop_media(&self) -> anyhow::Result<()> {
        if !self.inner.opts.dedicated_reactor {
            bail!("drop_media needs SimOptions::dedicated_reactor (else the drivers keep running)");
        }
        let publish = self.inner.publish.lock().await.take();
        let subscribe = self.inner.subscribe.lock().await.take();
        drop(publish);
        drop(subscribe);
        Ok(())
    }

    /// Send `leave`, close both connections and the socket.
    pub async fn close(&self) {
        let _ = self.inner.send(&ClientMessage::Leave {});
        self.shutdown().await;
    }

    /// Close connections and socket without sending `leave`.
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        // Stop the senders first, keep the writer running long enough to flush `leave`.
        let _ = self.inner.out_tx.send(WsOut::Close);
        if let Some(slot) = self.inner.publish.lock().await.take() {
            let _ = slot.pc.close().await;
        }
        if let Some(slot) = self.inner.subscribe.lock().await.take() {
            let _ = slot.pc.close().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for t in tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Driving an endpoint without our signalling (loadtest against a peer SFU)
// ---------------------------------------------------------------------------------------------------------------

/// The DTLS-SRTP profiles [`SimOptions::srtp_profiles`] takes.
pub use webrtc::peer_connection::SrtpProtectionProfile;

impl SimEndpoint {
    /// An endpoint with no WebSocket: its SDP goes wherever the caller sends it ([`publish_with`](Self::publish_with),
    /// [`answer_offer`](Self::answer_offer)); sending, receiving and counting work as for a joined endpoint.
    /// [`id`](Self::id) is `opts.name`; [`mark_join_sent`](Self::mark_join_sent) sets the join time.
    pub fn detached(opts: SimOptions) -> SimEndpoint {
        let (out_tx, _out_rx) = mpsc::unbounded_channel::<WsOut>();
        let name = opts.name.clone();
        SimEndpoint {
            inner: Arc::new(Inner {
                opts,
                participant_id: StdMutex::new(Some(name)),
                out_tx,
                log: StdMutex::new(Vec::new()),
                log_notify: Notify::new(),
                closed: AtomicBool::new(false),
                publish: tokio::sync::Mutex::new(None),
                subscribe: tokio::sync::Mutex::new(None),
                recorders: StdMutex::new(HashMap::new()),
                sent: Arc::new(SendCounters::default()),
                tasks: StdMutex::new(Vec::new()),
                subscribe_answers: AtomicU64::new(0),
                subscribe_errors: AtomicU64::new(0),
                opened_at: Instant::now(),
                timeline: StdMutex::new(JoinTimeline::default()),
            }),
        }
    }

    /// Record now as the time this endpoint asked to join (for join → first packet).
    pub fn mark_join_sent(&self) {
        self.inner
            .timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join_sent = Some(Instant::now());
    }

    /// Apply a server's offer on the subscribe connection and return the answer (ICE gathered, no trickle).
    pub async fn answer_offer(&self, offer_sdp: String) -> anyhow::Result<String> {
        self.inner.mark(|t| &mut t.subscribe_offer);
        match self.inner.answer_subscribe_offer(offer_sdp).await {
            Ok(sdp) => {
                self.inner.mark(|t| &mut t.subscribe_answer);
                self.inner.subscribe_answers.fetch_add(1, Ordering::Relaxed);
                Ok(sdp)
            }
            Err(e) => {
                self.inner.subscribe_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The SRTP profile DTLS negotiated on each connection (publish, subscribe), from the transport stats, as
    /// webrtc-rs names it (e.g. `SRTP_AEAD_AES_128_GCM`); `None` for a missing connection or before DTLS is up.
    pub async fn srtp_ciphers(&self) -> (Option<String>, Option<String>) {
        async fn of(slot: &tokio::sync::Mutex<Option<PcSlot>>) -> Option<String> {
            let pc = slot.lock().await.as_ref().map(|s| Arc::clone(&s.pc))?;
            let report = pc
                .get_stats(Instant::now(), webrtc::peer_connection::StatsSelector::None)
                .await;
            report
                .transport()
                .map(|t| t.srtp_cipher.clone())
                .filter(|c| !c.is_empty())
        }
        (
            of(&self.inner.publish).await,
            of(&self.inner.subscribe).await,
        )
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Media generators
// ---------------------------------------------------------------------------------------------------------------

fn rtp_packet(
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    marker: bool,
    payload: Bytes,
) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload,
    }
}

/// Every 7-bit audio level as a static byte (no allocation per packet).
static LEVEL_BYTES: [u8; 128] = {
    let mut b = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

/// `red`: send RED (RFC 2198) around the Opus of this payload type: the previous frame, then the current one.
async fn send_audio(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    pt: u8,
    red: Option<u8>,
    media: MediaProfile,
    level: Option<(u8, u8)>,
    sent: Arc<SendCounters>,
) {
    let pps = media.audio_pps.max(1);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / u64::from(pps)));
    let ts_step = 48_000 / pps;
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let size = media.audio_bytes.max(STAMP_BYTES + 1);
    let toc = opus_toc(ts_step);
    let mut buf = BytesMut::with_capacity(size * 64);
    let mut counter = 0u64;
    let mut previous: Option<Bytes> = None;
    loop {
        tick.tick().await;
        if buf.capacity() < size {
            buf.reserve(size * 64);
        }
        buf.put_u8(toc);
        put_stamp_and_padding(&mut buf, counter, unix_micros(), size);
        let mut payload = buf.split().freeze();
        if let Some(opus_pt) = red {
            let frame = payload;
            let mut out = BytesMut::with_capacity(5 + 2 * frame.len());
            let block = previous.as_ref().map(|p| (opus_pt, ts_step as u16, &p[..]));
            giaoban_sfu::red::write(&mut out, block.as_slice(), opus_pt, &frame);
            previous = Some(frame);
            payload = out.freeze();
        }
        let len = payload.len() as u64;
        let mut packet = rtp_packet(pt, seq, ts, ssrc, false, payload);
        if let Some((id, level)) = level {
            // RFC 6464: V=0 (no voice activity flag), then the level, −dBov.
            let _ = packet
                .header
                .set_extension(id, Bytes::from_static(&LEVEL_BYTES[level as usize..][..1]));
        }
        match track.write_rtp(packet).await {
            Ok(()) => {
                sent.audio_packets.fetch_add(1, Ordering::Relaxed);
                sent.audio_bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(_) => {
                sent.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        counter += 1;
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(ts_step);
    }
}

/// The Opus TOC byte (RFC 6716 §3.1) of one fullband CELT frame lasting `samples` at 48 kHz (20 ms if no CELT
/// frame size fits), code 0 (one frame per packet), mono.
fn opus_toc(samples: u32) -> u8 {
    let config: u8 = match samples {
        120 => 28,
        240 => 29,
        480 => 30,
        _ => 31,
    };
    config << 3
}

/// The simulcast rids a simulated endpoint sends, smallest first.
pub const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

/// One video stream a simulated endpoint sends: a simulcast layer, or the only one.
struct VideoLayer {
    width: u16,
    height: u16,
    bitrate_bps: u64,
    /// Header extensions on every packet (mid, rid): (negotiated id, value).
    extensions: Vec<(u8, Bytes)>,
    keyframe_requested: Arc<AtomicBool>,
    /// Whether a keyframe request is acted on (see `MediaProfile::upper_layers_ignore_keyframe_requests`).
    honours_requests: bool,
}

async fn send_video(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    pt: u8,
    media: MediaProfile,
    layer: VideoLayer,
    sent: Arc<SendCounters>,
) {
    let media = MediaProfile {
        video_bitrate_bps: layer.bitrate_bps.max(16_000),
        ..media
    };
    let fps = media.video_fps.max(1);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / u64::from(fps)));
    let ts_step = 90_000 / fps;
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let mut picture_id: u16 = rand::random::<u16>() & 0x7fff;
    let frame_bytes = media.video_frame_bytes().max(STAMP_BYTES + 16);
    let npk = media.video_packets_per_frame();
    let per_packet = frame_bytes.div_ceil(npk).max(STAMP_BYTES + 16);
    let mut buf = BytesMut::with_capacity(frame_bytes * 8);
    let mut counter = 0u64;
    let mut first_frame = true;
    let mut frames = 0u32;
    loop {
        tick.tick().await;
        let periodic = media
            .keyframe_every
            .is_some_and(|n| frames.is_multiple_of(n.max(1)));
        frames = frames.wrapping_add(1);
        let requested =
            layer.keyframe_requested.swap(false, Ordering::Relaxed) && layer.honours_requests;
        let keyframe = first_frame || periodic || requested;
        first_frame = false;
        if buf.capacity() < frame_bytes + npk * 16 {
            buf.reserve(frame_bytes * 8);
        }
        let now_us = unix_micros();
        for i in 0..npk {
            let start = i == 0;
            // VP8 payload descriptor: X, S (first packet), PID 0; I; M + 15-bit PictureID.
            buf.put_u8(0x80 | if start { 0x10 } else { 0 });
            buf.put_u8(0x80);
            buf.put_u8(0x80 | ((picture_id >> 8) as u8 & 0x7f));
            buf.put_u8(picture_id as u8);
            if start {
                // VP8 frame tag: P (bit 0) = 0 keyframe / 1 interframe, version 0, show_frame 1,
                // first partition size (19 bits) — small, it is synthetic.
                let first_part: u32 = 64;
                let tag: u32 = (if keyframe { 0 } else { 1 }) | (1 << 4) | (first_part << 5);
                buf.put_u8(tag as u8);
                buf.put_u8((tag >> 8) as u8);
                buf.put_u8((tag >> 16) as u8);
                if keyframe {
                    buf.put_slice(&[0x9d, 0x01, 0x2a]);
                    buf.put_u16_le(layer.width);
                    buf.put_u16_le(layer.height);
                }
            }
            let header_len = buf.len();
            put_stamp_and_padding(
                &mut buf,
                counter,
                now_us,
                header_len + per_packet.max(STAMP_BYTES),
            );
            let mut payload = buf.split().freeze();
            let mut last = i + 1 == npk;
            if media.garbage_video {
                let n = rand::random_range(0..=1200usize);
                payload = Bytes::from((0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
                last = rand::random();
                if rand::random_range(0..10) == 0 {
                    seq = seq.wrapping_add(rand::random_range(0..3000));
                    ts = ts.wrapping_add(rand::random::<u32>());
                }
            }
            let len = payload.len() as u64;
            let mut packet = rtp_packet(pt, seq, ts, ssrc, last, payload);
            for (id, value) in &layer.extensions {
                let _ = packet.header.set_extension(*id, value.clone());
            }
            match track.write_rtp(packet).await {
                Ok(()) => {
                    sent.video_packets.fetch_add(1, Ordering::Relaxed);
                    sent.video_bytes.fetch_add(len, Ordering::Relaxed);
                }
                Err(_) => {
                    sent.write_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            counter += 1;
            seq = seq.wrapping_add(1);
        }
        sent.video_frames.fetch_add(1, Ordering::Relaxed);
        if keyframe {
            sent.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        picture_id = (picture_id + 1) & 0x7fff;
        ts = ts.wrapping_add(ts_step);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Small HTTP client (HTTP/1.0, loopback only) for /api/rooms and /healthz
// ---------------------------------------------------------------------------------------------------------------

/// `GET path` on `addr`; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))??;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| anyhow!("GET {path}: response timed out"))??;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: malformed response: {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET {path}: no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_monotonic_and_precise() {
        let mut last = 0;
        for v in [
            0u64, 1, 63, 64, 65, 100, 1000, 5000, 20_000, 1_000_000, 2_000_000,
        ] {
            let b = LatencyHistogram::bucket(v);
            assert!(b >= last);
            last = b;
            let lower = LatencyHistogram::bucket_value(b);
            assert!(lower <= v || b == HIST_BUCKETS - 1, "{v} -> {b} -> {lower}");
            assert!(
                v - lower.min(v) <= v / 30 + 1 || b == HIST_BUCKETS - 1,
                "{v} -> {lower}"
            );
        }
        let mut h = LatencyHistogram::default();
        for v in 1..=100 {
            h.record(v * 100);
        }
        let p50 = h.quantile_us(0.5);
        assert!((4800..=5000).contains(&p50), "{p50}");
    }

    #[test]
    fn payloads_round_trip() {
        let mut buf = BytesMut::new();
        buf.put_u8(opus_toc(960));
        put_stamp_and_padding(&mut buf, 42, 1234, 100);
        let d = decode_payload(&buf, false, true).expect("decodes");
        assert_eq!(
            (d.counter, d.sent_us, d.intact, d.keyframe),
            (42, 1234, true, false)
        );
        let mut bad = buf.to_vec();
        bad[50] ^= 1;
        assert_eq!(opus_toc(960), 0xf8);
        assert!(!decode_payload(&bad, false, true).expect("decodes").intact);

        // VP8 keyframe start packet
        let mut v = BytesMut::new();
        v.put_slice(&[0x90, 0x80, 0x81, 0x23]);
        v.put_slice(&[0x10, 0x08, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        let hl = v.len();
        put_stamp_and_padding(&mut v, 7, 99, hl + 200);
        let d = decode_payload(&v, true, true).expect("decodes");
        assert_eq!(
            (d.counter, d.sent_us, d.intact, d.keyframe),
            (7, 99, true, true)
        );
        // continuation packet
        let mut c = BytesMut::new();
        c.put_slice(&[0x80, 0x80, 0x81, 0x23]);
        let hl = c.len();
        put_stamp_and_padding(&mut c, 8, 99, hl + 200);
        let d = decode_payload(&c, true, true).expect("decodes");
        assert_eq!((d.counter, d.keyframe, d.intact), (8, false, true));
    }
}
