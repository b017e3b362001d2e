//! A media Worker: one thread that owns its socket, its connections, rooms, producers and consumers outright
//! and forwards packets directly from its loop — no lock and no channel hop per packet.
//!
//! The loop: wait for (a command | the socket readable | the next connection deadline); feed what came in;
//! forward RTP from publishers to the consumers of that producer; then drain the connections that have output
//! and send everything queued this turn in batches.

use crate::api::{
    Command, Event, ForwardPolicy, Leg, MediaKind, MediaSource, ParticipantId, ParticipantLinks,
    ReceivePolicy, RoomId, SfuError, TrackDesc, WorkerStats,
};
use crate::codec::Codec;
use crate::connection::{self, Endpoint};
use crate::forwarder::{Drop as FwdDrop, Forwarder};
use crate::health::{
    ConsumerHealth, LayerHealth, LinkCounters, ProducerHealth, RtcLinkStats, link_health,
    read_rtc_stats,
};
use crate::idmap::IdMap;
use crate::keyframe::KeyframeThrottle;
use crate::layers::{self, Estimator, Want};
use crate::recorder::{Recording, Tap, TrackInfo};
use crate::retransmit::{self, NotResent, PacketCache, SentLog};
use crate::router::{ConnId, Router};
use crate::srtp::{KeyCapture, Sealer, StreamIndex};
use crate::tcp::{CloseReason, Frame, TcpEvent, TcpMedia, Wake};
use crate::udp::{MediaSocket, Outbox};
use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

mod estimate;
mod probe;

/// Sender reports for the SFU-sealed streams: once a second.
const SENDER_REPORT_EVERY_TICKS: u32 = 10;
/// Housekeeping cadence: deferred keyframe requests, stats.
/// The publish bitrate is checked every this many ticks (once a second).
const POLICE_EVERY_TICKS: u32 = 10;
/// Seconds over (or back under) the publish limit before video is held back (or forwarded again).
const OVER_LIMIT_SECS: u8 = 3;
const TICK: Duration = Duration::from_millis(100);
/// Transport-wide CC loss is read for the downlink estimate once this many packets were reported in its window
/// (else receiver reports and NACKs are).
const TWCC_MIN_REPORTED: u32 = 10;
/// At most this many receive batches per loop turn before commands and timers get a look in.
const MAX_RECV_BATCHES_PER_TURN: usize = 16;

type ProducerKey = u64;

struct Conn {
    pc: RTCPeerConnection,
    participant: ParticipantId,
    leg: Leg,
    /// The local address (announced candidate) the peer talks to, as rtc's ICE needs it.
    local_addr: SocketAddr,
    /// The real destination IP of the peer's packets, used as source IP when the socket is bound to 0.0.0.0.
    src_ip: Option<IpAddr>,
    /// The ICE-TCP stream this connection is bound to, if its client came over TCP.
    tcp_stream: Option<crate::tcp::StreamId>,
    next_timeout: Option<Instant>,
    dirty: bool,
    state: RTCPeerConnectionState,
    connected_since: Option<Instant>,
    link: LinkCounters,
    rtc_stats: RtcLinkStats,
    /// Publish leg: the remote track id → producer.
    producer_by_track: HashMap<String, ProducerKey>,
    /// Subscribe leg: the SSRC the subscriber sees → producer (for PLI/FIR from the subscriber).
    producer_by_ssrc: HashMap<u32, ProducerKey>,
    /// Subscribe leg: RTP packets forwarded to it, and packets its NACKs reported lost (before repair); with the
    /// values at the last estimate update.
    forwarded: u64,
    nacked: u64,
    loss_mark: (u64, u64, Instant),
    /// When the peer last sent RTCP (receiver reports, NACKs, keyframe requests): a subscriber silent for
    /// `OUTAGE` has lost its link altogether.
    last_feedback: Option<Instant>,
    /// The link is out (no feedback for `OUTAGE`), or came back less than `AFTER_OUTAGE` ago (until then): its
    /// reports tell of the outage — everything sent into it lost and NACKed — not of congestion.
    outage: Option<Option<Instant>>,
    /// Subscribe leg: the share of forwarded packets its NACKs said were lost, over the last loss window.
    nack_loss: Option<f64>,
    /// Subscribe leg: the newest sequence number NACKed per stream (a receiver NACKs a missing packet again and
    /// again; each is counted once).
    nack_newest: HashMap<u32, u16>,
    /// Subscribe leg: the round trip measured from its receiver reports (LSR/DLSR), smoothed, ms. rtc 0.21 leaves
    /// RTT unmeasured in its statistics.
    rtt_ms: Option<f64>,
    /// Subscribe leg: transceivers whose sender was removed, which the next `add_track` of that kind reuses.
    free_audio_transceivers: usize,
    free_video_transceivers: usize,
    /// Subscribe leg: where its outbound SRTP keys are noted during DTLS (`srtp.rs`).
    keys: Option<Arc<KeyCapture>>,
    /// Subscribe leg, once connected with AES-128-GCM: the SFU's own outbound SRTP context. Forwarded packets are
    /// sealed with it and queued straight for the socket, bypassing rtc's write pipeline.
    srtp_out: Option<Sealer>,
    /// Where rtc last sent this connection's packets (the ICE-selected peer address).
    peer_addr: Option<SocketAddr>,
    /// Subscribe leg: the loss its receiver reports gave last (fraction lost, worst stream).
    rr_loss: Option<f64>,
    /// Subscribe leg whose subscriber accepted transport-wide CC: the numbering of what the fast path sends it
    /// and what its feedback said (`twcc.rs`).
    twcc: Option<crate::twcc::TransportCc>,
    /// Subscribe leg: the padding probe of its downlink under way (`worker/probe.rs`), and what the last one met.
    probe: probe::ProbeState,
    last_probe: Option<crate::health::ProbeHealth>,
}

struct Consumer {
    subscriber: ParticipantId,
    conn: ConnId,
    sender: RTCRtpSenderId,
    ssrc: u32,
    /// The payload type negotiated on the subscriber's connection; `None` until its answer arrives.
    payload_type: Option<u8>,
    /// A RED producer's subscriber that did not accept RED: it gets each packet's primary as plain Opus.
    strip_red: bool,
    /// Its sender was in a subscribe offer made: the answer to it tells its payload type. (A consumer added while
    /// an offer is outstanding waits for the next one; the answer to the earlier offer says nothing of it.)
    in_offer: bool,
    forwarder: Forwarder,
    /// The producer's layer (index into `Producer::layers`) this consumer should get; `None` = its video is
    /// paused (the link cannot carry it). The layer being forwarded until the switch is the forwarder's source.
    target: Option<u8>,
    /// Paused for lack of bandwidth (the subscriber was told).
    paused: bool,
    /// How large the subscriber shows this video (device pixels), as it reported.
    tile: Option<(u32, u32)>,
    /// The layer chosen before availability (it may not flow yet: the publisher is asked to send it).
    target_desired: Option<u8>,
    /// RTP packets forwarded to it.
    packets: u64,
    /// How each packet it was sent was rewritten, for its subscriber's NACKs.
    sent: SentLog,
    /// Payload octets sent, and the RTP timestamp and time of the last packet: its sender reports (`srtp_out`
    /// connections; rtc makes them for packets it sends itself).
    octets: u64,
    last_sent: Option<(u32, Instant)>,
    /// The SRTP index (rollover counter) of its stream, on the fast path.
    srtp_index: StreamIndex,
    /// Its first picture being replayed from the cache (`replay.rs`): until it has caught up, its live packets
    /// are sent by the replay, in order, not as they come.
    replay: Option<crate::replay::Replay>,
}

/// One simulcast layer of a producer (or its only stream): its SSRC, what arrives of it, its keyframe requests.
struct Layer {
    /// Empty without simulcast.
    rid: String,
    ssrc: u32,
    packets: u64,
    bytes: u64,
    /// Bit/s over the last window; `measured` keeps the rate of the last window it flowed through whole (a
    /// paused layer's cost is still known).
    bitrate: u64,
    measured: u64,
    window: Option<(Instant, u64)>,
    /// The longest wait for a packet in the current window so far (from its start).
    window_gap: Duration,
    last_packet: Option<Instant>,
    /// The sequence number of its last packet.
    last_seq: Option<u16>,
    /// Frame width from its last VP8 keyframe (0 until seen).
    width: u32,
    /// The publisher was told to stop sending it (nobody receives it).
    paused: bool,
    keyframes: KeyframeThrottle,
    /// Its last packets, for subscribers' NACKs (`retransmit.rs`) and joining subscribers' first picture.
    cache: PacketCache,
    /// Where its last keyframe starts in the cache (sequence number) and when it arrived (`replay.rs`).
    last_keyframe: Option<(u16, Instant)>,
}

impl Layer {
    fn new(rid: String, ssrc: u32, kind: MediaKind) -> Self {
        Layer {
            rid,
            ssrc,
            packets: 0,
            bytes: 0,
            bitrate: 0,
            measured: 0,
            window: None,
            window_gap: Duration::ZERO,
            last_packet: None,
            last_seq: None,
            width: 0,
            paused: false,
            keyframes: KeyframeThrottle::default(),
            last_keyframe: None,
            cache: PacketCache::new(match kind {
                MediaKind::Audio => retransmit::AUDIO_CACHE,
                MediaKind::Video => retransmit::VIDEO_CACHE,
            }),
        }
    }

    /// A replay of its last keyframe and every packet since, from its cache, if they can be replayed
    /// (`replay.rs`); `index` is its place among the producer's layers.
    fn start_replay(&self, index: usize, now: Instant) -> Option<crate::replay::Replay> {
        crate::replay::Replay::start(
            &self.cache,
            self.last_keyframe?,
            self.last_seq?,
            now,
            (index, self.ssrc, self.cost(index)),
        )
    }

    /// A packet of it arrived: the longest wait in the rate's window grows if this one was longer.
    fn note_arrival(&mut self, now: Instant) {
        if let Some((start, _)) = self.window {
            let since = self.last_packet.map_or(start, |t| t.max(start));
            self.window_gap = self.window_gap.max(now.saturating_duration_since(since));
        }
        self.last_packet = Some(now);
    }

    /// Packets arrived recently (the publisher may drop a layer on its own when its uplink or CPU is short).
    fn is_flowing(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE_AFTER)
    }

    fn update_rate(&mut self, now: Instant) {
        match self.window {
            None => self.window = Some((now, self.bytes)),
            Some((start, bytes)) => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= crate::health::RATE_WINDOW {
                    self.bitrate =
                        ((self.bytes - bytes) as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
                    // What the layer costs is known only from a window it flowed through: one in which the
                    // publisher stopped or started it (paused because nobody received it) holds a fraction of
                    // it, and a layer that seemed to cost a few kbit/s would be chosen for a link that cannot
                    // carry it (seen with Chromium: f "cost" 30 kbit/s after its pause, on a 250 kbit/s link).
                    let gap = self.window_gap.max(
                        self.last_packet
                            .map_or(elapsed, |t| now.saturating_duration_since(t)),
                    );
                    if self.bitrate > 0 && gap < LAYER_GAP_IN_WINDOW {
                        self.measured = self.bitrate;
                    }
                    self.window = Some((now, self.bytes));
                    self.window_gap = Duration::ZERO;
                }
            }
        }
    }

    fn cost(&self, index: usize) -> u64 {
        if self.measured > 0 {
            self.measured
        } else {
            layers::nominal_bitrate(index)
        }
    }
}

impl Conn {
    /// Whether media can go out on it: connected, or connected before and only *disconnected* now. rtc's ICE
    /// calls a link disconnected when it has heard nothing it counts for 5 s; on a lossy commune line that
    /// happened for 0.8 s while the hall's feedback kept coming (`impaired_links.rs` scenario 1), and the SFU
    /// stopped forwarding: 39 of the hall's audio packets lost. The SRTP keys stay good, so the media goes on;
    /// a link that is really gone fails and leaves.
    fn sends_media(&self) -> bool {
        match self.state {
            RTCPeerConnectionState::Connected => true,
            RTCPeerConnectionState::Disconnected => self.connected_since.is_some(),
            _ => false,
        }
    }

    /// Count the packets a subscriber's NACK reports missing that no earlier NACK reported.
    fn count_nacked(&mut self, nack: &TransportLayerNack) {
        let newest = self.nack_newest.entry(nack.media_ssrc).or_insert_with(|| {
            nack.nacks
                .first()
                .map_or(0, |n| n.packet_id.wrapping_sub(1))
        });
        for pair in &nack.nacks {
            for seq in pair.packet_list() {
                if (seq.wrapping_sub(*newest) as i16) > 0 {
                    *newest = seq;
                    self.nacked += 1;
                }
            }
        }
    }
}

impl Producer {
    /// A simulcast layer opened (its first packet arrived): keep the layers ordered smallest first, and the
    /// consumers' targets pointing at the same layers as before.
    fn add_layer(&mut self, rid: String, ssrc: u32) {
        if let Some(l) = self.layers.iter_mut().find(|l| l.rid == rid) {
            l.ssrc = ssrc;
            return;
        }
        if self.layers.len() >= layers::MAX_LAYERS {
            warn!(producer = %self.id, %rid, "more simulcast layers than kept; ignored");
            return;
        }
        let targets: Vec<Option<u32>> = self
            .consumers
            .iter()
            .map(|c| {
                c.target
                    .and_then(|t| self.layers.get(usize::from(t)))
                    .map(|l| l.ssrc)
            })
            .collect();
        self.layers.push(Layer::new(rid, ssrc, self.kind));
        // Stable: rids of one rank keep the order they arrived in.
        self.layers.sort_by_key(|l| layers::rid_rank(&l.rid));
        for (c, ssrc) in self.consumers.iter_mut().zip(targets) {
            if let Some(ssrc) = ssrc {
                c.target = self
                    .layers
                    .iter()
                    .position(|l| l.ssrc == ssrc)
                    .map(|i| i as u8);
            }
        }
    }
}

/// A subscriber's loss is measured over at least this long.
const LOSS_WINDOW: Duration = Duration::from_millis(500);
/// A subscriber that sent no RTCP for this long has no link (browsers report every second or faster).
const OUTAGE: Duration = Duration::from_millis(2500);
/// After an outage, its reports and NACKs (of everything sent into the cut) are left out of the estimate this long.
const AFTER_OUTAGE: Duration = Duration::from_millis(1500);
/// A layer silent this long whose next packet skips sequence numbers: the publisher's link was out (see `forward`).
const SOURCE_OUTAGE: Duration = Duration::from_secs(1);
/// A layer with no packet for this long is not switched to.
const LAYER_STALE_AFTER: Duration = Duration::from_millis(1500);
/// A layer's rate window with a wait for packets this long did not see it flow throughout (a video layer sends
/// every frame, at least 5 a second): its rate is not taken as what the layer costs.
const LAYER_GAP_IN_WINDOW: Duration = Duration::from_millis(300);
/// Layer choice runs every this many ticks (and after anything that changes it).
const CHOOSE_EVERY_TICKS: u32 = 5;
/// How long a recording waits for a keyframe of a camera's top layer before it starts at any layer's.
const RECORD_TOP_WAIT: Duration = Duration::from_secs(1);

struct Producer {
    id: String,
    owner: ParticipantId,
    room: RoomId,
    conn: ConnId,
    kind: MediaKind,
    source: MediaSource,
    /// Whether the owner's policy lets this producer reach anyone (checked once per packet).
    forwarding: bool,
    codec: Codec,
    rtp_codec: RTCRtpCodec,
    receiver: RTCRtpReceiverId,
    /// Its streams, smallest first: one per simulcast rid, or one.
    layers: Vec<Layer>,
    simulcast: bool,
    consumers: Vec<Consumer>,
    /// While its room records: where each forwarded packet goes too (off the media path).
    record: Option<Tap>,
    /// The layer the recording writes, chosen at a keyframe (video) or the first packet (audio): the highest
    /// layer flowing (a browser short of CPU or uplink may never send its top layer), or after `RECORD_TOP_WAIT`
    /// whichever layer's keyframe comes first; kept for the whole file.
    record_ssrc: Option<u32>,
    /// When the recording's tap was set.
    record_since: Option<Instant>,
    /// Audio: the negotiated id of the RFC 6464 audio level header extension (`None`: not negotiated).
    audio_level_id: Option<u8>,
    /// Audio: the smoothed level of what arrives, dBov (−127 silence … 0 loudest); `None` before the first level.
    audio_level: Option<f32>,
}

impl Producer {
    /// Its tap into `rec`; its layer is chosen again (at the next keyframe, see `record_ssrc`).
    fn start_recording(&mut self, rec: &Recording, key: ProducerKey, now: Instant) {
        self.record = Some(rec.tap(key, self.track_info()));
        self.record_ssrc = None;
        self.record_since = Some(now);
    }

    fn track_info(&self) -> TrackInfo {
        TrackInfo {
            producer_id: self.id.clone(),
            participant: self.owner.clone(),
            kind: self.kind,
            source: self.source,
            mime_type: self.rtp_codec.mime_type.clone(),
            clock_rate: self.rtp_codec.clock_rate,
            channels: self.rtp_codec.channels,
        }
    }
}

struct Participant {
    room: RoomId,
    policy: ForwardPolicy,
    /// Whose tracks it receives.
    receive: ReceivePolicy,
    publish: Option<ConnId>,
    subscribe: Option<ConnId>,
    /// The screen share's own publish connection, while sharing.
    screen: Option<ConnId>,
    /// Its media connection failed: its connections are closed and nothing is forwarded to it, but its Producers
    /// stay (their subscribers' pictures freeze) until the control plane resumes it (`Join` again) or lets it go.
    suspended: bool,
    offer_outstanding: bool,
    /// When the outstanding offer was last sent (it is sent again if no answer comes).
    offer_sent_at: Option<Instant>,
    renegotiate: bool,
    next_track_no: u32,
    /// Receives its own producers too (connection test).
    echo: bool,
    /// Highest simulcast layer it receives, set by the chair or IT.
    cap: Option<u8>,
    /// Its downlink estimate (subscribe leg).
    estimator: Estimator,
    /// Sending beyond the publish limit: its video is not forwarded.
    over_limit: bool,
    /// Consecutive seconds over (counting up) or back under (counting down) the limit.
    over_secs: u8,
}

#[derive(Default)]
struct Room {
    participants: Vec<ParticipantId>,
    producers: Vec<ProducerKey>,
}

/// The weight of a new audio level sample in the producer's exponential average.
const AUDIO_LEVEL_SMOOTHING: f32 = 0.2;

/// What woke the worker loop.
enum Woke {
    Command(Option<Command>),
    Socket(std::io::Result<()>),
    Tcp(TcpEvent),
    Timer,
}

pub struct Worker {
    /// `SfuConfig::max_publish_bps` (0 = no limit).
    pub max_publish_bps: u64,
    socket: MediaSocket,
    /// ICE-TCP listener and streams (`None`: ICE-TCP off).
    tcp: Option<TcpMedia>,
    tcp_frames: Vec<Frame>,
    endpoint: Endpoint,
    outbox: Outbox,
    router: Router,
    conns: IdMap<ConnId, Conn>,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<RoomId, Room>,
    producers: IdMap<ProducerKey, Producer>,
    next_id: u64,
    events: mpsc::UnboundedSender<Event>,
    dirty: Vec<ConnId>,
    reads: Vec<TaggedRTCMessage>,
    stats: WorkerStats,
    /// Next connection whose rtc statistics are read (see `refresh_rtc_stats`).
    stats_cursor: ConnId,
    /// Rooms being recorded (kept while the room is empty, so a hall that rejoins is recorded again).
    recordings: HashMap<RoomId, Recording>,
    /// Something that decides layers changed: choose again at the next tick.
    layers_dirty: bool,
    /// The plaintext of the packet being sealed on the fast path (reused: no allocation per packet).
    scratch: Vec<u8>,
    ticks: u32,
    /// When the earliest deferred keyframe request falls due (the loop wakes for it rather than at the next tick:
    /// a subscriber that connected just after another's keyframe waits one throttle interval, no more).
    keyframe_due: Option<Instant>,
    /// When the next step of a padding probe is due (`worker/probe.rs`).
    probe_due: Option<Instant>,
    /// When the paced replays of first pictures send next (`replay.rs`); `None` while none is under way.
    replay_due: Option<Instant>,
}

impl Worker {
    pub fn new(
        socket: MediaSocket,
        tcp: Option<TcpMedia>,
        endpoint: Endpoint,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        Worker {
            max_publish_bps: 0,
            socket,
            tcp,
            tcp_frames: Vec::new(),
            endpoint,
            outbox: Outbox::default(),
            router: Router::default(),
            conns: IdMap::default(),
            participants: HashMap::new(),
            rooms: HashMap::new(),
            producers: IdMap::default(),
            next_id: 1,
            events,
            dirty: Vec::new(),
            reads: Vec::new(),
            stats: WorkerStats::default(),
            stats_cursor: 0,
            recordings: HashMap::new(),
            layers_dirty: false,
            scratch: Vec::with_capacity(1500),
            ticks: 0,
            keyframe_due: None,
            probe_due: None,
            replay_due: None,
        }
    }

    /// The loop. Returns when `Shutdown` arrives or the command channel closes.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let deadline = [
                self.next_deadline(),
                self.keyframe_due,
                self.probe_due,
                self.replay_due,
            ]
            .into_iter()
            .flatten()
            .fold(next_tick, Instant::min);
            let woke = tokio::select! {
                biased;
                cmd = commands.recv() => Woke::Command(cmd),
                ready = self.socket.readable() => Woke::Socket(ready),
                Some(ev) = next_tcp_event(&mut self.tcp) => Woke::Tcp(ev),
                _ = tokio::time::sleep_until(deadline.into()) => Woke::Timer,
            };
            // Busy time: one clock pair per loop turn (this one and the end of the turn), never per packet.
            let started = Instant::now();
            let socket_woke = matches!(woke, Woke::Socket(_));
            match woke {
                Woke::Command(cmd) => {
                    let Some(cmd) = cmd else { break };
                    if !self.handle_command(cmd) {
                        break;
                    }
                    while let Ok(cmd) = commands.try_recv() {
                        if !self.handle_command(cmd) {
                            self.shutdown();
                            return;
                        }
                    }
                }
                Woke::Socket(ready) => {
                    if let Err(e) = ready {
                        warn!(error = %e, "media socket failed");
                    }
                    self.receive();
                }
                Woke::Tcp(ev) => {
                    // UDP first: a browser checks its UDP and TCP candidates at once, and a connection binds to
                    // whichever check the worker reads first. UDP datagrams already waiting are read before
                    // the stream's frames (one non-blocking receive), so a hall whose UDP gets through uses it.
                    self.receive();
                    self.on_tcp_event(ev);
                }
                Woke::Timer => {}
            }
            // The socket branch comes first in the biased select: under a steady UDP load, serve the TCP
            // streams that are ready as well, every turn (UDP waiting first, as above).
            if self.tcp.is_some() && !socket_woke {
                self.receive();
            }
            self.serve_ready_tcp();
            let now = Instant::now();
            self.handle_timeouts(now);
            self.send_probes(now);
            self.pace_replays(now);
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            } else if self.keyframe_due.is_some_and(|d| d <= now) {
                self.poll_keyframes(now);
            }
            self.end_of_turn();
            self.stats.busy += started.elapsed();
        }
        self.shutdown();
    }

    fn end_of_turn(&mut self) {
        self.flush_dirty();
        self.send_offers();
        // Offers and closes may have produced output.
        self.flush_dirty();
        if !self.outbox.is_empty() {
            let sent = self.outbox.flush(&self.socket);
            self.stats.datagrams_out += sent.datagrams;
            self.stats.bytes_out += sent.bytes;
            self.stats.send_dropped += sent.dropped;
        }
        if let Some(tcp) = &mut self.tcp {
            tcp.flush(Instant::now());
        }
    }

    // ---------------------------------------------------------------- ICE-TCP

    fn serve_ready_tcp(&mut self) {
        use futures_util::FutureExt;
        const MAX_TCP_EVENTS_PER_TURN: usize = 64;
        for _ in 0..MAX_TCP_EVENTS_PER_TURN {
            match next_tcp_event(&mut self.tcp).now_or_never() {
                Some(Some(ev)) => self.on_tcp_event(ev),
                _ => break,
            }
        }
    }

    fn on_tcp_event(&mut self, ev: TcpEvent) {
        let now = Instant::now();
        let Some(tcp) = &mut self.tcp else { return };
        match ev {
            TcpEvent::Accepted(Ok((stream, peer))) => {
                if tcp.add(stream, peer, now).is_none() {
                    debug!(%peer, "ICE-TCP stream refused: too many waiting for their first request");
                }
            }
            TcpEvent::Accepted(Err(e)) => debug!(error = %e, "ICE-TCP accept failed"),
            TcpEvent::Wake(id, Wake::Readable) => {
                let mut frames = std::mem::take(&mut self.tcp_frames);
                tcp.read(id, &mut frames);
                for frame in frames.drain(..) {
                    self.on_tcp_frame(now, frame);
                }
                self.tcp_frames = frames;
            }
            TcpEvent::Wake(id, Wake::Writable) => tcp.on_writable(id, now),
            TcpEvent::Wake(_, Wake::Cancelled) => {}
        }
    }

    /// One RFC 4571 frame from a stream: the first routes the stream (a binding request for a known ufrag, else
    /// the stream is closed); every frame then goes to the connection, tagged as TCP.
    fn on_tcp_frame(&mut self, now: Instant, frame: Frame) {
        let Some(tcp) = &mut self.tcp else { return };
        let Some((peer, local, conn)) = tcp.info(frame.stream) else {
            return;
        };
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += frame.bytes.len() as u64;
        let conn_id = match conn {
            Some(c) => c,
            None => {
                let refused_before = self.router.other_pair_refused;
                let routed = self.router.route_tcp(peer, &frame.bytes);
                let other_pair = self.router.other_pair_refused != refused_before;
                match routed {
                    Some(c) if self.conns.contains_key(&c) => {
                        tcp.bind_conn(frame.stream, c);
                        if let Some(conn) = self.conns.get_mut(&c) {
                            conn.tcp_stream = Some(frame.stream);
                        }
                        debug!(%peer, conn = c, "ICE-TCP stream routed");
                        c
                    }
                    _ if other_pair => {
                        tcp.close(frame.stream, CloseReason::OtherPair);
                        return;
                    }
                    _ => {
                        self.stats.unroutable += 1;
                        tcp.close(frame.stream, CloseReason::Garbage);
                        return;
                    }
                }
            }
        };
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            tcp.close(frame.stream, CloseReason::ConnectionGone);
            return;
        };
        conn.link.received(frame.bytes.len());
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: peer,
                ecn: None,
                transport_protocol: TransportProtocol::TCP,
            },
            message: frame.bytes,
        };
        if let Err(e) = conn.pc.handle_read(msg) {
            debug!(participant = %conn.participant, leg = ?conn.leg, error = %e, "dropped TCP frame");
        }
        self.drain(conn_id, now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.next_timeout).min()
    }

    // ---------------------------------------------------------------- receive path

    fn receive(&mut self) {
        for _ in 0..MAX_RECV_BATCHES_PER_TURN {
            let mut batch: Vec<(SocketAddr, Option<IpAddr>, BytesMut)> = Vec::new();
            match self.socket.recv_batch(|from, dst_ip, bytes| {
                batch.push((from, dst_ip, BytesMut::from(bytes)));
            }) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "media receive error");
                    break;
                }
            }
            let now = Instant::now();
            for (from, dst_ip, bytes) in batch {
                self.on_datagram(now, from, dst_ip, bytes);
            }
        }
    }

    fn on_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        dst_ip: Option<IpAddr>,
        bytes: BytesMut,
    ) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let Some(conn_id) = self.router.route(from, &bytes) else {
            self.stats.unroutable += 1;
            return;
        };
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            self.stats.unroutable += 1;
            return;
        };
        conn.link.received(bytes.len());
        if dst_ip.is_some() {
            conn.src_ip = dst_ip.filter(|_| self.socket.local_addr.ip().is_unspecified());
            if let Some(ip) = dst_ip
                && let Some(c) = self.endpoint.candidates.iter().find(|c| c.ip() == ip)
            {
                conn.local_addr = *c;
            }
        }
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: conn.local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: bytes,
        };
        if let Err(e) = conn.pc.handle_read(msg) {
            debug!(participant = %conn.participant, leg = ?conn.leg, error = %e, "dropped datagram");
        }
        self.drain(conn_id, now);
    }

    /// After input to a connection: collect its output, events and messages, and act on them.
    fn drain(&mut self, conn_id: ConnId, now: Instant) {
        let mut events = Vec::new();
        {
            let Some(conn) = self.conns.get_mut(&conn_id) else {
                return;
            };
            while let Some(ev) = conn.pc.poll_event() {
                events.push(ev);
            }
            while let Some(m) = conn.pc.poll_read() {
                self.reads.push(m);
            }
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(conn_id);
            }
        }
        for ev in events {
            self.on_event(conn_id, ev, now);
        }
        let mut reads = std::mem::take(&mut self.reads);
        for m in reads.drain(..) {
            self.on_message(conn_id, m);
        }
        self.reads = reads;
    }

    fn on_message(&mut self, conn_id: ConnId, m: TaggedRTCMessage) {
        match m.message {
            RTCMessage::RtpPacket(track_id, packet) => {
                self.forward(conn_id, &track_id, packet, m.now)
            }
            RTCMessage::RtcpPacket(_track_id, packets) => {
                if let Some(conn) = self.conns.get_mut(&conn_id) {
                    conn.last_feedback = Some(m.now);
                }
                // Feedback from a subscriber about one of our forwarded streams: keyframe requests go upstream.
                for p in &packets {
                    let any = p.as_any();
                    if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                        let now = std::time::SystemTime::now();
                        if let Some(conn) = self.conns.get_mut(&conn_id) {
                            conn.rr_loss = rr
                                .reports
                                .iter()
                                .map(|r| f64::from(r.fraction_lost) / 256.0)
                                .reduce(f64::max)
                                .or(conn.rr_loss);
                            for r in &rr.reports {
                                if let Some(rtt) = crate::health::rtt_from_report(
                                    now,
                                    r.last_sender_report,
                                    r.delay,
                                ) {
                                    // A short exponential average: one late report does not make a bad link.
                                    conn.rtt_ms = Some(
                                        conn.rtt_ms.map_or(rtt, |old| old * 0.75 + rtt * 0.25),
                                    );
                                }
                            }
                        }
                        continue;
                    }
                    if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
                        if let Some(twcc) =
                            self.conns.get_mut(&conn_id).and_then(|c| c.twcc.as_mut())
                        {
                            twcc.on_feedback(cc);
                            self.stats.twcc_feedbacks += 1;
                        }
                        self.judge_probe(conn_id, m.now);
                        continue;
                    }
                    if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                        if let Some(conn) = self.conns.get_mut(&conn_id) {
                            // The downlink estimate chooses video layers from the video's losses; audio NACKs
                            // (small, repaired) do not count (a commune line's random loss on speech would read
                            // as congestion and pause video that fits).
                            let video = conn
                                .producer_by_ssrc
                                .get(&nack.media_ssrc)
                                .and_then(|k| self.producers.get(k))
                                .is_some_and(|p| p.kind == MediaKind::Video);
                            if video {
                                conn.count_nacked(nack);
                            }
                        }
                        self.retransmit(conn_id, nack, m.now);
                        continue;
                    }
                    let media_ssrc = if let Some(pli) = any.downcast_ref::<PictureLossIndication>()
                    {
                        Some(pli.media_ssrc)
                    } else {
                        any.downcast_ref::<FullIntraRequest>()
                            .and_then(|fir| fir.fir.first().map(|e| e.ssrc))
                    };
                    if let Some(ssrc) = media_ssrc {
                        let key = self
                            .conns
                            .get(&conn_id)
                            .and_then(|c| c.producer_by_ssrc.get(&ssrc).copied());
                        if let Some(key) = key {
                            self.request_keyframe(key, m.now);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The hot path: one RTP packet of a producer, out to each of its consumers.
    fn forward(&mut self, conn_id: ConnId, track_id: &str, packet: rtc::rtp::Packet, now: Instant) {
        let Some(key) = self
            .conns
            .get(&conn_id)
            .and_then(|c| c.producer_by_track.get(track_id).copied())
        else {
            return;
        };
        let Some(producer) = self.producers.get_mut(&key) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        // Which layer: at most three SSRC compares.
        let Some(li) = producer.layers.iter().position(|l| l.ssrc == ssrc) else {
            return;
        };
        // Parsed once per packet, not once per consumer.
        let vp8 = if producer.codec == Codec::Vp8 {
            crate::vp8::parse(&packet.payload)
        } else {
            None
        };
        let layer = &mut producer.layers[li];
        // The publisher's link was out (nothing for a second, then a jump in sequence numbers): what it sent into
        // the cut never arrived, and its subscribers must not see that gap — they would NACK all of it, which no
        // cache holds, and their downlink estimate would read it as their own loss and pause the video. Their
        // stream goes on from here instead (sequence by one, timestamp by the wall time), video from a keyframe.
        let seq = packet.header.sequence_number;
        let publisher_was_out = layer
            .last_packet
            .is_some_and(|t| now.saturating_duration_since(t) >= SOURCE_OUTAGE)
            && layer.last_seq.is_some_and(|last| {
                let gap = seq.wrapping_sub(last);
                gap > 1 && gap < 0x8000
            });
        layer.last_seq = Some(seq);
        layer.packets += 1;
        layer.bytes += packet.payload.len() as u64;
        layer.note_arrival(now);
        if let Some(d) = &vp8
            && d.keyframe
            && let Some((w, _)) = crate::vp8::keyframe_size(&packet.payload, d)
        {
            layer.width = u32::from(w);
        }
        // Where a keyframe starts: VP8's from the descriptor parsed above, H.264's from a few header bytes.
        let keyframe_start = match &vp8 {
            Some(d) => d.keyframe,
            None => {
                producer.codec == Codec::H264 && producer.codec.is_keyframe_start(&packet.payload)
            }
        };
        // The keyframe a PLI asked for (or any, while a request waits).
        if keyframe_start && layer.keyframes.wants_keyframe() {
            layer.keyframes.keyframe_arrived();
        }
        // RFC 6464 audio level: one extension lookup and one byte per packet per producer (measured even while
        // the rules hold the microphone back: IT sees that it works).
        if let Some(id) = producer.audio_level_id
            && let Some(&b) = packet
                .header
                .extensions
                .iter()
                .find(|e| e.id == id)
                .and_then(|e| e.payload.first())
        {
            let dbov = -f32::from(b & 0x7f);
            producer.audio_level = Some(match producer.audio_level {
                // 20 ms packets: about 100 ms to follow a change.
                Some(l) => l + (dbov - l) * AUDIO_LEVEL_SMOOTHING,
                None => dbov,
            });
        }
        if !producer.forwarding {
            // Enforced meeting rules: this microphone or screen is not to be heard or seen now.
            return;
        }
        // Kept once per producer for every consumer's NACKs and a joining subscriber's first picture (payload
        // shared, nothing allocated).
        let layer = &mut producer.layers[li];
        layer.cache.store(
            seq,
            packet.header.timestamp,
            packet.header.marker,
            &packet.payload,
            now,
        );
        if keyframe_start {
            layer.last_keyframe = Some((seq, now));
        }
        // The recording gets what the meeting hears and sees, the highest simulcast layer of a camera that flows:
        // one non-blocking queue push per packet per producer (payload shared, nothing allocated).
        if producer.record.is_some() && producer.record_ssrc.is_none() {
            let top = producer
                .layers
                .iter()
                .rposition(|l| l.is_flowing(now))
                .unwrap_or(li);
            // A video file starts at a keyframe of the layer it writes, so the layer is chosen at one. Chromium
            // short of CPU can send its upper layers for seconds without a keyframe on them however often they
            // are asked for (seen: PLIs on q, h and f, keyframes on q only): after a while any layer's will do.
            let waited = producer
                .record_since
                .is_none_or(|t| now.saturating_duration_since(t) >= RECORD_TOP_WAIT);
            let starts = !producer.codec.is_video() || keyframe_start;
            if starts && (li == top || waited) {
                producer.record_ssrc = Some(ssrc);
            }
        }
        if producer.record_ssrc == Some(ssrc)
            && let Some(tap) = &producer.record
            && !tap.packet(&packet, now)
        {
            producer.record = None;
        }
        if publisher_was_out {
            debug!(producer = %producer.id, ssrc, "the publisher's stream resumes after an outage");
            for c in producer
                .consumers
                .iter_mut()
                .filter(|c| c.forwarder.current_ssrc() == Some(ssrc))
            {
                c.forwarder.resume();
            }
        }
        let layers = &producer.layers;
        let li = li as u8;
        let simulcast = producer.simulcast;
        let mut sink = Sink {
            scratch: &mut self.scratch,
            outbox: &mut self.outbox,
            tcp: &mut self.tcp,
            dirty: &mut self.dirty,
            stats: &mut self.stats,
            replay_due: &mut self.replay_due,
        };
        // RED: the primary alone, for subscribers that did not accept RED (a view of the same bytes).
        let primary = match producer.codec {
            Codec::Red => {
                let primary = crate::red::primary_bytes(&packet.payload);
                sink.stats.red_received += u64::from(primary.is_some());
                primary
            }
            _ => None,
        };
        // Layers whose keyframe some consumer waits for (bit per layer).
        let mut want_keyframe = 0u8;
        for consumer in producer.consumers.iter_mut() {
            // Its first picture is being replayed: the replay sends this packet too, after the ones before it.
            if consumer.replay.is_some() {
                continue;
            }
            // Layer choice: the target layer, or the layer still flowing until the switch; nothing while paused.
            match consumer.target {
                None => continue,
                Some(t) if t != li && consumer.forwarder.current_ssrc() != Some(ssrc) => continue,
                _ => {}
            }
            let Some(pt) = consumer.payload_type else {
                continue;
            };
            let payload = match (consumer.strip_red, &primary) {
                (false, _) => &packet.payload,
                (true, Some(p)) => p,
                (true, None) => continue,
            };
            let Some(conn) = self.conns.get_mut(&consumer.conn) else {
                continue;
            };
            if !conn.sends_media() {
                // SRTP is not keyed yet (the stream starts from a keyframe once it is), or the link is gone.
                continue;
            }
            let rewrite = match consumer.forwarder.forward_parsed(
                now,
                packet.header.ssrc,
                seq,
                packet.header.timestamp,
                &packet.payload,
                vp8,
            ) {
                Ok(r) => r,
                Err(FwdDrop::WaitingForKeyframe) => {
                    // A subscriber that has never had a picture from this producer gets the last one from the
                    // cache (of this layer, or a lower one: `replay.rs`), a moment after its handshake; otherwise
                    // it waits for a fresh keyframe.
                    let settled = conn.connected_since.is_some_and(|t| {
                        now.saturating_duration_since(t) >= crate::replay::AFTER_CONNECTED
                    });
                    let first = consumer.forwarder.current_ssrc().is_none();
                    // Until the connection has settled, only whether a recent keyframe is cached (no walk
                    // through the cache per packet).
                    if first && !settled && recent_keyframe(layers, li, now) {
                        continue;
                    }
                    if first
                        && settled
                        && let Some(replay) = first_picture(layers, li, now)
                    {
                        let (ssrc, bytes) = (replay.ssrc, replay.bytes);
                        consumer.replay = Some(replay);
                        if pace_replay(consumer, conn, pt, producer.codec, layers, now, &mut sink) {
                            sink.stats.keyframes_replayed += 1;
                            debug!(
                                subscriber = %consumer.subscriber,
                                ssrc,
                                bytes,
                                paced = consumer.replay.is_some(),
                                "first picture replayed from the cache"
                            );
                            continue;
                        }
                    }
                    want_keyframe |= 1 << li;
                    continue;
                }
                Err(_) => continue,
            };
            if rewrite.switched && simulcast {
                sink.stats.layer_switches += 1;
                debug!(subscriber = %consumer.subscriber, ssrc, layer = li, "layer switched on a keyframe");
            }
            deliver(
                consumer,
                conn,
                pt,
                ssrc,
                seq,
                packet.header.marker,
                rewrite,
                payload,
                vp8.as_ref(),
                now,
                &mut sink,
            );
        }
        if want_keyframe != 0 {
            self.request_layer_keyframe(key, usize::from(li), now);
        }
    }

    /// A subscriber's NACK: each packet it names is sent again from the producer's cache, rewritten as it was
    /// the first time (`retransmit.rs`). Not per packet: only what a lossy link asks for.
    fn retransmit(&mut self, conn_id: ConnId, nack: &TransportLayerNack, now: Instant) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let Some(&key) = conn.producer_by_ssrc.get(&nack.media_ssrc) else {
            return;
        };
        let Some(producer) = self.producers.get_mut(&key) else {
            return;
        };
        let Some(consumer) = producer
            .consumers
            .iter_mut()
            .find(|c| c.conn == conn_id && c.ssrc == nack.media_ssrc)
        else {
            return;
        };
        let Some(pt) = consumer.payload_type else {
            return;
        };
        // Answer the same NACK again only after the first answer had time to arrive.
        let interval = Duration::from_millis(conn.rtt_ms.map_or(100, |r| r as u64));
        for pair in &nack.nacks {
            for seq in pair.into_iter() {
                let sent = match consumer.sent.take_resend(seq, now, interval) {
                    Ok(sent) => sent,
                    Err(NotResent::Gone) => {
                        self.stats.nack_unrepaired += 1;
                        continue;
                    }
                    Err(NotResent::Throttled) => continue,
                };
                // A packet of a layer the consumer has switched away from: the subscriber decodes from the new
                // layer's keyframe on, and after a switch down for congestion these answers would flood the link
                // that could not carry the old layer (burying the new layer's keyframe).
                if consumer
                    .forwarder
                    .current_ssrc()
                    .is_some_and(|current| current != sent.source_ssrc)
                {
                    self.stats.nack_superseded += 1;
                    continue;
                }
                let Some(cached) = producer
                    .layers
                    .iter()
                    .find(|l| l.ssrc == sent.source_ssrc)
                    .and_then(|l| l.cache.get(sent.source_seq))
                else {
                    self.stats.nack_unrepaired += 1;
                    continue;
                };
                // The same rewrite as the first time (the descriptor parsed again only if it changes anything).
                let ids = (sent.picture_id, sent.tl0picidx);
                let desc = (ids != (None, None))
                    .then(|| crate::vp8::parse(&cached.payload))
                    .flatten();
                let payload = if consumer.strip_red {
                    let Some(primary) = crate::red::primary_bytes(&cached.payload) else {
                        continue;
                    };
                    primary
                } else {
                    cached.payload.clone()
                };
                let out = outgoing(
                    pt,
                    consumer.ssrc,
                    cached.marker,
                    seq,
                    sent.timestamp,
                    &payload,
                    desc.as_ref(),
                    ids,
                );
                let written = write_rtp(
                    conn,
                    &mut consumer.srtp_index,
                    out,
                    now,
                    &mut self.scratch,
                    &mut self.outbox,
                    &mut self.tcp,
                );
                if written {
                    self.stats.rtp_retransmitted += 1;
                    self.stats.rtp_sealed += u64::from(conn.srtp_out.is_some());
                }
            }
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(conn_id);
        }
    }

    /// The paced replays of first pictures (`replay.rs`) send what is due. A replay whose consumer was paused or
    /// whose connection is no longer up ends; the consumer then starts from a keyframe as any other.
    fn pace_replays(&mut self, now: Instant) {
        if self.replay_due.is_none_or(|d| d > now) {
            return;
        }
        self.replay_due = None;
        let Worker {
            producers,
            conns,
            scratch,
            outbox,
            tcp,
            dirty,
            stats,
            replay_due,
            ..
        } = self;
        let mut sink = Sink {
            scratch,
            outbox,
            tcp,
            dirty,
            stats,
            replay_due,
        };
        for producer in producers.values_mut() {
            let layers = &producer.layers;
            for consumer in producer.consumers.iter_mut().filter(|c| c.replay.is_some()) {
                let conn = conns.get_mut(&consumer.conn).filter(|c| c.sends_media());
                match (conn, consumer.payload_type) {
                    (Some(conn), Some(pt)) if consumer.target.is_some() => {
                        pace_replay(consumer, conn, pt, producer.codec, layers, now, &mut sink);
                    }
                    _ => consumer.replay = None,
                }
            }
        }
    }

    /// A keyframe of every layer the producer sends (a subscriber lost its picture, forwarding resumed).
    fn request_keyframe(&mut self, key: ProducerKey, now: Instant) {
        let n = self.producers.get(&key).map_or(0, |p| p.layers.len());
        for li in 0..n {
            self.request_layer_keyframe(key, li, now);
        }
    }

    /// The consumers of a producer on one subscribe connection are to start (again): a keyframe of every layer,
    /// unless each of them has never had a picture and a layer up to its target holds a picture that can be
    /// replayed (`replay.rs`): that goes out at the target layer's next packet, and a keyframe of the target
    /// layer is asked for then if the replay was from a lower one.
    fn request_start_keyframe(&mut self, key: ProducerKey, conn_id: ConnId, now: Instant) {
        let cached = self.producers.get(&key).is_some_and(|p| {
            p.consumers.iter().filter(|c| c.conn == conn_id).all(|c| {
                c.forwarder.current_ssrc().is_none()
                    && c.target
                        .is_some_and(|t| first_picture(&p.layers, t, now).is_some())
            })
        });
        if !cached {
            self.request_keyframe(key, now);
        }
    }

    /// A keyframe of one layer (PLI on that layer's SSRC), throttled per layer.
    fn request_layer_keyframe(&mut self, key: ProducerKey, layer: usize, now: Instant) {
        let Some(producer) = self.producers.get_mut(&key) else {
            return;
        };
        if producer.kind != MediaKind::Video {
            return;
        }
        let Some(l) = producer.layers.get_mut(layer) else {
            return;
        };
        if l.paused {
            return;
        }
        if !l.keyframes.request(now) {
            if let Some(d) = l.keyframes.next_due() {
                self.keyframe_due = Some(self.keyframe_due.map_or(d, |e| e.min(d)));
            }
            return;
        }
        self.stats.plis_sent += 1;
        Self::send_pli(&mut self.conns, &mut self.dirty, producer, layer, now);
    }

    fn send_pli(
        conns: &mut IdMap<ConnId, Conn>,
        dirty: &mut Vec<ConnId>,
        producer: &Producer,
        layer: usize,
        now: Instant,
    ) {
        let Some(conn) = conns.get_mut(&producer.conn) else {
            return;
        };
        let Some(media_ssrc) = producer.layers.get(layer).map(|l| l.ssrc) else {
            return;
        };
        if let Some(mut receiver) = conn.pc.rtp_receiver(producer.receiver) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if let Err(e) = receiver.write_rtcp(now, vec![Box::new(pli)]) {
                debug!(producer = %producer.id, error = %e, "PLI not sent");
            }
        }
        if !conn.dirty {
            conn.dirty = true;
            dirty.push(producer.conn);
        }
    }

    // ---------------------------------------------------------------- events of a connection

    fn on_event(&mut self, conn_id: ConnId, ev: RTCPeerConnectionEvent, now: Instant) {
        match ev {
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.on_track_open(conn_id, init, now);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                let key = self
                    .conns
                    .get_mut(&conn_id)
                    .and_then(|c| c.producer_by_track.remove(&track_id));
                if let Some(key) = key {
                    self.remove_producer(key);
                }
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
                if let Some(conn) = self.conns.get(&conn_id) {
                    debug!(participant = %conn.participant, leg = ?conn.leg, %state, "ICE state");
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(conn) = self.conns.get_mut(&conn_id) else {
                    return;
                };
                conn.state = state;
                if state == RTCPeerConnectionState::Connected && conn.connected_since.is_none() {
                    conn.connected_since = Some(now);
                }
                let participant = conn.participant.clone();
                let leg = conn.leg;
                info!(%participant, ?leg, %state, "connection state");
                let _ = self.events.send(Event::ConnectionState {
                    participant: participant.clone(),
                    leg,
                    state: state.to_string(),
                });
                match state {
                    RTCPeerConnectionState::Connected if leg == Leg::Subscribe => {
                        if conn.srtp_out.is_none() {
                            conn.srtp_out = conn.keys.as_ref().and_then(|k| k.sealer());
                            debug!(
                                %participant,
                                fast_path = conn.srtp_out.is_some(),
                                "forwarded RTP sealed by the SFU's own SRTP context"
                            );
                        }
                        // Anything forwarded before the subscriber could decrypt it is lost: start each video
                        // stream again from a keyframe.
                        let keys: Vec<ProducerKey> =
                            conn.producer_by_ssrc.values().copied().collect();
                        for key in keys {
                            if let Some(p) = self.producers.get_mut(&key) {
                                for c in p.consumers.iter_mut().filter(|c| c.conn == conn_id) {
                                    c.forwarder.wait_for_keyframe();
                                }
                            }
                            self.request_start_keyframe(key, conn_id, now);
                        }
                        // The end of rtc's DTLS handshake (its Finished) goes out ahead of the first forwarded
                        // packet, which the SFU queues straight for the socket: a subscriber still waiting for it
                        // could not decrypt, and would lose, the first picture.
                        self.queue_rtc_output(conn_id);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                        if leg == Leg::Screen =>
                    {
                        // Only the screen share is lost; the camera's connection decides about the participant.
                        self.close_screen(&participant);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        let _ = self.events.send(Event::ParticipantFailed {
                            participant: participant.clone(),
                            reason: format!("{leg:?} connection {state}"),
                        });
                        self.suspend(&participant);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The first packet of a publisher's stream arrived: a new Producer, or another simulcast layer of one (the
    /// same track id with a rid), or a renegotiated track's new SSRC.
    fn on_track_open(&mut self, conn_id: ConnId, init: RTCTrackEventInit, now: Instant) {
        let screen = init
            .stream_ids
            .first()
            .is_some_and(|s| s.to_ascii_lowercase().starts_with("screen"));
        let RTCTrackEventInit {
            track_id,
            receiver_id,
            ssrc,
            rid,
            ..
        } = init;
        let rid = rid.filter(|r| !r.is_empty());
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if conn.leg == Leg::Subscribe {
            return;
        }
        // Every track of the screen connection is the screen share (video, and a shared tab's sound).
        let screen = screen || conn.leg == Leg::Screen;
        if let Some(old) = conn.producer_by_track.get(&track_id).copied() {
            if let Some(p) = self.producers.get_mut(&old) {
                p.receiver = receiver_id;
                match rid {
                    // Another simulcast layer of the track (or a known rid's new SSRC).
                    Some(rid) => p.add_layer(rid, ssrc),
                    // A stream already known, announced again after a renegotiation (the offer now declares its
                    // SSRC): nothing changes. Without a rid, a simulcast track's layer cannot be told: ignored.
                    None if p.simulcast || p.layers.iter().any(|l| l.ssrc == ssrc) => {}
                    // Same track, new SSRC (renegotiation): keep the producer, follow the new stream.
                    None => {
                        if let Some(l) = p.layers.first_mut() {
                            l.ssrc = ssrc;
                        }
                    }
                }
                info!(producer = %p.id, ssrc, layers = p.layers.len(), "producer stream opened");
            }
            self.layers_dirty = true;
            return;
        }
        let Some((kind, rtp_codec, audio_level_id)) =
            conn.pc.rtp_receiver(receiver_id).map(|mut r| {
                let kind = r.track().kind();
                let params = &r.get_parameters().rtp_parameters;
                let codec = params.codecs.first().map(|c| c.rtp_codec.clone());
                let audio_level_id = params
                    .header_extensions
                    .iter()
                    .find(|e| e.uri == connection::AUDIO_LEVEL_URI)
                    .and_then(|e| u8::try_from(e.id).ok());
                (kind, codec, audio_level_id)
            })
        else {
            return;
        };
        let Some(rtp_codec) = rtp_codec else {
            warn!(participant = %conn.participant, "track with no negotiated codec ignored");
            return;
        };
        let kind = match kind {
            RtpCodecKind::Audio => MediaKind::Audio,
            _ => MediaKind::Video,
        };
        let owner = conn.participant.clone();
        let Some(participant) = self.participants.get_mut(&owner) else {
            return;
        };
        let id = format!("{owner}-{}", participant.next_track_no);
        participant.next_track_no += 1;
        let room = participant.room.clone();
        let echo = participant.echo;
        let source = match (kind, screen) {
            (_, true) => MediaSource::Screen,
            (MediaKind::Audio, false) => MediaSource::Microphone,
            (MediaKind::Video, false) => MediaSource::Camera,
        };
        let forwarding = source_allowed(participant.policy, source)
            && !(participant.over_limit && kind == MediaKind::Video);
        let key = self.next_id;
        self.next_id += 1;
        conn.producer_by_track.insert(track_id, key);
        let codec = Codec::from_mime(&rtp_codec.mime_type);
        info!(participant = %owner, track = %id, mime = %rtp_codec.mime_type, ssrc, ?rid, "producer opened");
        let _ = self.events.send(Event::TrackPublished {
            participant: owner.clone(),
            track: TrackDesc {
                id: id.clone(),
                kind,
                mime_type: rtp_codec.mime_type.clone(),
                source,
            },
        });
        self.producers.insert(
            key,
            Producer {
                id,
                owner: owner.clone(),
                room: room.clone(),
                conn: conn_id,
                kind,
                source,
                forwarding,
                codec,
                rtp_codec,
                receiver: receiver_id,
                simulcast: rid.is_some(),
                layers: vec![Layer::new(rid.unwrap_or_default(), ssrc, kind)],
                consumers: Vec::new(),
                record: None,
                record_ssrc: None,
                record_since: None,
                audio_level_id: audio_level_id.filter(|_| kind == MediaKind::Audio),
                audio_level: None,
            },
        );
        if let Some(rec) = self.recordings.get(&room)
            && let Some(p) = self.producers.get_mut(&key)
        {
            p.start_recording(rec, key, Instant::now());
        }
        let subscribers: Vec<ParticipantId> = self
            .rooms
            .get(&room)
            .map(|r| {
                r.participants
                    .iter()
                    .filter(|p| echo || **p != owner)
                    .filter(|p| {
                        self.participants
                            .get(*p)
                            .is_some_and(|sub| sub.receive.receives(&owner, source))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Some(r) = self.rooms.get_mut(&room) {
            r.producers.push(key);
        }
        for sub in subscribers {
            self.add_consumer(key, &sub, now);
        }
    }

    // ---------------------------------------------------------------- consumers and the subscribe leg

    fn add_consumer(&mut self, key: ProducerKey, subscriber: &ParticipantId, now: Instant) {
        if self
            .participants
            .get(subscriber)
            .is_none_or(|p| p.suspended)
        {
            return;
        }
        let Some(conn_id) = self.ensure_subscribe_conn(subscriber, now) else {
            return;
        };
        let Some(producer) = self.producers.get_mut(&key) else {
            return;
        };
        if producer
            .consumers
            .iter()
            .any(|c| &c.subscriber == subscriber)
        {
            return;
        }
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let ssrc = rand::random::<u32>();
        let kind = match producer.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let track = MediaStreamTrack::new(
            producer.owner.clone(),
            producer.id.clone(),
            producer.id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                // A RED producer's consumer is offered Opus; rtc adds RED beside it (a repair codec to rtc), and
                // the answer says which the subscriber takes.
                codec: match producer.codec {
                    Codec::Red => connection::opus(),
                    _ => producer.rtp_codec.clone(),
                },
                ..Default::default()
            }],
        );
        let free = match kind {
            RtpCodecKind::Audio => &mut conn.free_audio_transceivers,
            _ => &mut conn.free_video_transceivers,
        };
        let added = if *free > 0 {
            // rtc reuses a stopped sender's transceiver of the same kind (its direction becomes sendonly).
            *free -= 1;
            conn.pc.add_track(track)
        } else {
            conn.pc
                .add_transceiver_from_track(
                    track,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .map(RTCRtpSenderId::from)
        };
        let sender = match added {
            Ok(s) => s,
            Err(e) => {
                warn!(%subscriber, producer = %producer.id, error = %e, "cannot add consumer");
                return;
            }
        };
        conn.producer_by_ssrc.insert(ssrc, key);
        producer.consumers.push(Consumer {
            subscriber: subscriber.clone(),
            conn: conn_id,
            sender,
            ssrc,
            payload_type: None,
            strip_red: false,
            in_offer: false,
            forwarder: Forwarder::new(producer.codec, producer.rtp_codec.clock_rate),
            // Start on the largest layer known; layer choice refines it at the next tick.
            target: Some(producer.layers.len().saturating_sub(1) as u8),
            paused: false,
            tile: None,
            target_desired: None,
            packets: 0,
            sent: match producer.kind {
                MediaKind::Audio => {
                    SentLog::new(retransmit::AUDIO_CACHE, retransmit::MAX_AUDIO_RESENDS)
                }
                MediaKind::Video => SentLog::new(retransmit::VIDEO_CACHE, retransmit::MAX_RESENDS),
            },
            octets: 0,
            last_sent: None,
            srtp_index: StreamIndex::default(),
            replay: None,
        });
        self.layers_dirty = true;
        if let Some(p) = self.participants.get_mut(subscriber) {
            p.renegotiate = true;
        }
    }

    fn ensure_subscribe_conn(
        &mut self,
        participant: &ParticipantId,
        now: Instant,
    ) -> Option<ConnId> {
        let p = self.participants.get(participant)?;
        if let Some(id) = p.subscribe {
            return Some(id);
        }
        let id = self.new_conn(participant, Leg::Subscribe, now).ok()?;
        if let Some(p) = self.participants.get_mut(participant) {
            p.subscribe = Some(id);
            // Its offer asks for transport-wide CC: the estimate starts modest before the consumers' first layer
            // choice, not at the answer after it (a weak hall's join would see f, then q, then f). An answer
            // without it undoes the start.
            p.estimator.start();
        }
        Some(id)
    }

    fn new_conn(
        &mut self,
        participant: &ParticipantId,
        leg: Leg,
        now: Instant,
    ) -> Result<ConnId, SfuError> {
        let ufrag = connection::random_ice_string(16);
        let pwd = connection::random_ice_string(32);
        let (pc, keys) = connection::build_keyed(now, leg, &self.endpoint, &ufrag, &pwd)
            .map_err(|e| SfuError::Negotiation(e.to_string()))?;
        let id = self.next_id;
        self.next_id += 1;
        self.router.add_ufrag(ufrag, id);
        let local_addr = self
            .endpoint
            .candidates
            .first()
            .copied()
            .unwrap_or(self.socket.local_addr);
        self.conns.insert(
            id,
            Conn {
                pc,
                participant: participant.clone(),
                leg,
                local_addr,
                src_ip: None,
                tcp_stream: None,
                next_timeout: None,
                dirty: false,
                state: RTCPeerConnectionState::New,
                connected_since: None,
                link: LinkCounters::default(),
                rtc_stats: RtcLinkStats::default(),
                producer_by_track: HashMap::new(),
                producer_by_ssrc: HashMap::new(),
                free_audio_transceivers: 0,
                free_video_transceivers: 0,
                forwarded: 0,
                nacked: 0,
                loss_mark: (0, 0, now),
                last_feedback: None,
                outage: None,
                nack_loss: None,
                nack_newest: HashMap::new(),
                rtt_ms: None,
                keys,
                srtp_out: None,
                peer_addr: None,
                rr_loss: None,
                twcc: None,
                probe: probe::ProbeState::Idle,
                last_probe: None,
            },
        );
        self.mark_dirty(id);
        Ok(id)
    }

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Offer to every subscriber whose set of tracks changed and who has no offer outstanding.
    fn send_offers(&mut self) {
        let due: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| p.renegotiate && !p.offer_outstanding && p.subscribe.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let now = Instant::now();
        for pid in due {
            let Some(p) = self.participants.get_mut(&pid) else {
                continue;
            };
            let Some(conn_id) = p.subscribe else { continue };
            p.renegotiate = false;
            let Some(conn) = self.conns.get_mut(&conn_id) else {
                continue;
            };
            let result = conn.pc.create_offer(None).and_then(|offer| {
                let sdp = offer.sdp.clone();
                conn.pc.set_local_description(now, offer).map(|_| sdp)
            });
            let keys: Vec<ProducerKey> = conn.producer_by_ssrc.values().copied().collect();
            match result {
                Ok(sdp) => {
                    p.offer_outstanding = true;
                    p.offer_sent_at = Some(now);
                    let _ = self.events.send(Event::SubscribeOffer {
                        participant: pid.clone(),
                        sdp,
                    });
                    for key in keys {
                        if let Some(producer) = self.producers.get_mut(&key) {
                            for c in producer.consumers.iter_mut().filter(|c| c.conn == conn_id) {
                                c.in_offer = true;
                            }
                        }
                    }
                }
                Err(e) => warn!(participant = %pid, error = %e, "subscribe offer failed"),
            }
            self.mark_dirty(conn_id);
        }
    }

    fn on_subscribe_answer(
        &mut self,
        participant: &ParticipantId,
        sdp: String,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(participant)
            .ok_or(SfuError::UnknownParticipant)?;
        let conn_id = p.subscribe.ok_or(SfuError::NoOfferOutstanding)?;
        if !p.offer_outstanding {
            return Err(SfuError::NoOfferOutstanding);
        }
        let conn = self
            .conns
            .get_mut(&conn_id)
            .ok_or(SfuError::UnknownParticipant)?;
        let twcc_id = crate::twcc::extension_id(&sdp);
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        conn.pc
            .set_remote_description(Instant::now(), answer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        p.offer_outstanding = false;
        // Transport-wide CC as the answer accepted it; a renegotiation that keeps its id keeps the numbering.
        if conn.twcc.as_ref().map(|t| t.extension_id()) != twcc_id {
            conn.twcc = twcc_id.map(|id| crate::twcc::TransportCc::new(id, Instant::now()));
        }
        // A link that padding can probe (its feedback tells what arrived) started at a modest estimate with its
        // offer, and is probed as soon as a video stream flows on it, before its first picture can overrun it.
        // One whose answer refused transport-wide CC cannot be probed: it starts unconstrained instead.
        if conn.twcc.is_none() && p.estimator.cancel_start() {
            self.layers_dirty = true;
        }
        // A keyframe is asked for only once the connection is up: one arriving before it is connected is not
        // forwarded, and would only start the throttle's interval (the `connected` event asks for every stream).
        let connected = conn.state == RTCPeerConnectionState::Connected;
        // Resolve each new consumer's payload type on this leg.
        let keys: Vec<ProducerKey> = conn.producer_by_ssrc.values().copied().collect();
        let now = Instant::now();
        let mut keyframes_wanted = Vec::new();
        for key in keys {
            let Some(producer) = self.producers.get_mut(&key) else {
                continue;
            };
            let mime = producer.rtp_codec.mime_type.clone();
            let red = producer.codec == Codec::Red;
            let mut need_keyframe = false;
            for c in producer
                .consumers
                .iter_mut()
                .filter(|c| c.conn == conn_id && c.payload_type.is_none() && c.in_offer)
            {
                if let Some(mut sender) = conn.pc.rtp_sender(c.sender) {
                    let codecs = &sender.get_parameters().rtp_parameters.codecs;
                    let pt_of = |mime: &str| {
                        codecs
                            .iter()
                            .find(|codec| codec.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
                            .map(|codec| codec.payload_type)
                    };
                    c.payload_type = pt_of(&mime);
                    // RED is only a wrapper: without it the subscriber gets the Opus inside.
                    if c.payload_type.is_none() && red {
                        c.payload_type = pt_of(MIME_TYPE_OPUS);
                        c.strip_red = c.payload_type.is_some();
                    }
                    if c.payload_type.is_none() {
                        warn!(%participant, producer = %producer.id, %mime, "subscriber did not accept the codec");
                    }
                    need_keyframe = true;
                }
            }
            if need_keyframe && connected {
                keyframes_wanted.push(key);
            }
        }
        for key in keyframes_wanted {
            self.request_start_keyframe(key, conn_id, now);
        }
        self.mark_dirty(conn_id);
        Ok(())
    }

    // ---------------------------------------------------------------- publish leg

    /// An offer of the publish connection (`Leg::Publish`: camera and microphone) or of the screen share's own
    /// connection (`Leg::Screen`).
    fn on_publish_offer(
        &mut self,
        participant: &ParticipantId,
        leg: Leg,
        sdp: String,
    ) -> Result<String, SfuError> {
        let now = Instant::now();
        let p = self
            .participants
            .get(participant)
            .ok_or(SfuError::UnknownParticipant)?;
        if !p.policy.can_publish {
            return Err(SfuError::PublishNotAllowed);
        }
        if p.suspended {
            return Err(SfuError::Negotiation(
                "the media connection was lost: join again".into(),
            ));
        }
        let existing = match leg {
            Leg::Screen => p.screen,
            _ => p.publish,
        };
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let set_slot = |p: &mut Participant, id: Option<ConnId>| match leg {
            Leg::Screen => p.screen = id,
            _ => p.publish = id,
        };
        let conn_id = match existing {
            Some(id) => id,
            None => {
                let id = self.new_conn(participant, leg, now)?;
                if let Some(p) = self.participants.get_mut(participant) {
                    set_slot(p, Some(id));
                }
                id
            }
        };
        let result = {
            let conn = self
                .conns
                .get_mut(&conn_id)
                .ok_or(SfuError::UnknownParticipant)?;
            conn.pc
                .set_remote_description(now, offer)
                .map_err(|e| SfuError::InvalidSdp(e.to_string()))
                .and_then(|_| {
                    let answer = conn
                        .pc
                        .create_answer(None)
                        .map_err(|e| SfuError::Negotiation(e.to_string()))?;
                    let sdp = answer.sdp.clone();
                    conn.pc
                        .set_local_description(now, answer)
                        .map_err(|e| SfuError::Negotiation(e.to_string()))?;
                    Ok(sdp)
                })
        };
        if result.is_err() && existing.is_none() {
            // A failed first offer leaves nothing behind.
            self.close_conn(conn_id);
            if let Some(p) = self.participants.get_mut(participant) {
                set_slot(p, None);
            }
        } else {
            if result.is_ok() && existing.is_some() {
                self.drop_stopped_producers(conn_id);
            }
            self.mark_dirty(conn_id);
        }
        result
    }

    /// The participant stopped sharing its screen (or its screen connection failed): the screen connection's
    /// producers leave every subscriber, and the connection closes. The camera's connection is not touched.
    fn close_screen(&mut self, participant: &ParticipantId) {
        let Some(conn_id) = self
            .participants
            .get_mut(participant)
            .and_then(|p| p.screen.take())
        else {
            return;
        };
        let owned: Vec<ProducerKey> = self
            .producers
            .iter()
            .filter(|(_, pr)| pr.conn == conn_id)
            .map(|(k, _)| *k)
            .collect();
        for key in owned {
            self.remove_producer(key);
        }
        self.close_conn(conn_id);
        info!(%participant, "screen connection closed");
    }

    /// After a renegotiation of a publish connection: producers whose transceiver no longer receives (the client
    /// stopped a screen share, or set the track inactive) leave the room.
    fn drop_stopped_producers(&mut self, conn_id: ConnId) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let ids: Vec<_> = conn.pc.get_transceivers().collect();
        let receiving: Vec<RTCRtpReceiverId> = ids
            .into_iter()
            .filter_map(|id| {
                let t = conn.pc.rtp_transceiver(id)?;
                let receiver = t.receiver()?;
                t.current_direction().has_recv().then_some(receiver)
            })
            .collect();
        let stopped: Vec<ProducerKey> = conn
            .producer_by_track
            .values()
            .copied()
            .filter(|key| {
                self.producers
                    .get(key)
                    .is_some_and(|p| !receiving.contains(&p.receiver))
            })
            .collect();
        for key in stopped {
            self.remove_producer(key);
        }
    }

    // ---------------------------------------------------------------- commands

    /// Returns false on shutdown.
    fn handle_command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Join {
                participant,
                room,
                policy,
                receive,
                echo,
            } => {
                let now = Instant::now();
                // The same participant joining again resumes it (a hall back after its link dropped): its old
                // connections, producers and consumers go; its track numbers go on, so no track id is reused.
                let resumed = self.participants.get(&participant).map(|p| p.next_track_no);
                let next_track_no = resumed.unwrap_or(0);
                if resumed.is_some() {
                    info!(%participant, "resumed");
                    self.leave(&participant);
                }
                let _ = self.events.send(Event::Joined {
                    participant: participant.clone(),
                });
                self.participants.insert(
                    participant.clone(),
                    Participant {
                        room: room.clone(),
                        policy,
                        receive,
                        publish: None,
                        subscribe: None,
                        screen: None,
                        suspended: false,
                        offer_outstanding: false,
                        offer_sent_at: None,
                        renegotiate: false,
                        next_track_no,
                        echo,
                        cap: None,
                        estimator: Estimator::default(),
                        over_limit: false,
                        over_secs: 0,
                    },
                );
                let r = self.rooms.entry(room).or_default();
                r.participants.push(participant.clone());
                let existing = r.producers.clone();
                for key in existing {
                    if self.should_consume(key, &participant) {
                        self.add_consumer(key, &participant, now);
                    }
                }
            }
            Command::SetReceive {
                participant,
                receive,
            } => self.set_receive(&participant, receive),
            Command::PublishOffer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.on_publish_offer(&participant, Leg::Publish, sdp));
            }
            Command::ScreenOffer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.on_publish_offer(&participant, Leg::Screen, sdp));
            }
            Command::CloseScreen { participant } => self.close_screen(&participant),
            Command::SubscribeAnswer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.on_subscribe_answer(&participant, sdp));
            }
            Command::RemoteCandidate {
                participant,
                leg,
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                let conn_id = self.participants.get(&participant).and_then(|p| match leg {
                    Leg::Publish => p.publish,
                    Leg::Subscribe => p.subscribe,
                    Leg::Screen => p.screen,
                });
                if let Some(conn) = conn_id.and_then(|id| self.conns.get_mut(&id)) {
                    let init = RTCIceCandidateInit {
                        candidate,
                        sdp_mid,
                        sdp_mline_index,
                        ..Default::default()
                    };
                    // An ICE-lite server learns the client's address from its checks; a candidate it cannot
                    // use is harmless.
                    if let Err(e) = conn.pc.add_remote_candidate(init) {
                        debug!(%participant, error = %e, "remote candidate ignored");
                    }
                }
            }
            Command::RequestKeyframe {
                participant,
                track_id,
                reply,
            } => {
                let key = self
                    .producers
                    .iter()
                    .find(|(_, p)| {
                        p.id == track_id && p.consumers.iter().any(|c| c.subscriber == participant)
                    })
                    .map(|(k, _)| *k);
                match key {
                    Some(key) => {
                        self.request_keyframe(key, Instant::now());
                        let _ = reply.send(Ok(()));
                    }
                    None => {
                        let _ = reply.send(Err(SfuError::UnknownTrack(track_id)));
                    }
                }
            }
            Command::SetVideoSize {
                participant,
                track_id,
                width,
                height,
                reply,
            } => {
                let consumer = self
                    .producers
                    .values_mut()
                    .filter(|p| p.id == track_id && p.kind == MediaKind::Video)
                    .flat_map(|p| p.consumers.iter_mut())
                    .find(|c| c.subscriber == participant);
                match consumer {
                    Some(c) => {
                        c.tile = Some((width, height));
                        self.layers_dirty = true;
                        let _ = reply.send(Ok(()));
                    }
                    None => {
                        let _ = reply.send(Err(SfuError::UnknownTrack(track_id)));
                    }
                }
            }
            Command::SetLayerCap {
                participant,
                max_layer,
            } => {
                if let Some(p) = self.participants.get_mut(&participant) {
                    p.cap = max_layer;
                    self.layers_dirty = true;
                }
            }
            Command::Leave { participant } => self.leave(&participant),
            Command::SetPolicy {
                participant,
                policy,
            } => self.set_policy(&participant, policy),
            Command::Stats { reply } => {
                let mut s = self.stats.clone();
                s.connections = self.conns.len();
                s.producers = self.producers.len();
                s.consumers = self.producers.values().map(|p| p.consumers.len()).sum();
                // Closed connections' NACKs are in `self.stats` already; add the live ones' last reading.
                for c in self.conns.values() {
                    s.nacks_received += c.rtc_stats.nacks_received;
                    s.nacks_sent += c.rtc_stats.nacks_sent;
                }
                if let Some(tcp) = &self.tcp {
                    s.tcp_streams = tcp.len();
                    s.tcp = tcp.stats;
                }
                let _ = reply.send(s);
            }
            Command::Links { reply } => {
                let _ = reply.send(self.links(Instant::now()));
            }
            Command::StartRecording { room, dir } => self.start_recording(room, dir),
            Command::StopRecording { room } => self.stop_recording(&room),
            Command::Shutdown => return false,
        }
        true
    }

    fn start_recording(&mut self, room: RoomId, dir: std::path::PathBuf) {
        if self.recordings.contains_key(&room) {
            warn!(%room, "already recording");
            return;
        }
        let rec = match Recording::start(room.clone(), dir.clone(), self.events.clone()) {
            Ok(r) => r,
            Err(e) => {
                let _ = self.events.send(Event::RecordingEnded {
                    room,
                    dir,
                    files: Vec::new(),
                    dropped: 0,
                    error: Some(format!("cannot start the recorder thread: {e}")),
                });
                return;
            }
        };
        let mut video = Vec::new();
        let now = Instant::now();
        for (key, p) in self.producers.iter_mut().filter(|(_, p)| p.room == room) {
            p.start_recording(&rec, *key, now);
            if p.kind == MediaKind::Video {
                video.push(*key);
            }
        }
        info!(%room, dir = %dir.display(), video_producers = video.len(), "recording started");
        self.recordings.insert(room, rec);
        // Each video file starts with a keyframe.
        for key in video {
            self.request_keyframe(key, now);
        }
    }

    fn stop_recording(&mut self, room: &RoomId) {
        // Dropping every sender ends the writer: it drains the queue, finishes the files and reports.
        self.recordings.remove(room);
        for p in self.producers.values_mut().filter(|p| &p.room == room) {
            p.record = None;
        }
    }

    fn links(&mut self, now: Instant) -> Vec<ParticipantLinks> {
        // Producers and consumers by participant, in one pass over the producers.
        let mut produced: HashMap<&str, Vec<ProducerHealth>> = HashMap::new();
        let mut consumed: HashMap<&str, Vec<ConsumerHealth>> = HashMap::new();
        for p in self.producers.values() {
            produced
                .entry(p.owner.as_str())
                .or_default()
                .push(ProducerHealth {
                    track_id: p.id.clone(),
                    kind: p.kind,
                    audio_level: p.audio_level.map(|l| l.round() as i8),
                    layers: p
                        .layers
                        .iter()
                        .map(|l| LayerHealth {
                            rid: l.rid.clone(),
                            ssrc: l.ssrc,
                            packets: l.packets,
                            bytes: l.bytes,
                            bitrate: l.bitrate,
                            paused: l.paused,
                        })
                        .collect(),
                });
            for c in &p.consumers {
                let rid_of = |ssrc: Option<u32>| {
                    p.layers
                        .iter()
                        .find(|l| Some(l.ssrc) == ssrc)
                        .map(|l| l.rid.clone())
                };
                let cap = self.participants.get(&c.subscriber).and_then(|s| s.cap);
                consumed
                    .entry(c.subscriber.as_str())
                    .or_default()
                    .push(ConsumerHealth {
                        track_id: p.id.clone(),
                        kind: p.kind,
                        packets: c.packets,
                        layer: if c.paused || p.kind == MediaKind::Audio {
                            None
                        } else {
                            rid_of(c.forwarder.current_ssrc())
                        },
                        target: c
                            .target
                            .filter(|_| p.kind == MediaKind::Video)
                            .and_then(|t| p.layers.get(usize::from(t)))
                            .map(|l| l.rid.clone()),
                        paused: c.paused,
                        tile: c.tile,
                        cap,
                    });
            }
        }
        let mut out = Vec::new();
        for (pid, p) in &self.participants {
            let health = |id: Option<ConnId>| {
                let conn = self.conns.get(&id?)?;
                let mut stats = conn.rtc_stats;
                if stats.rtt_ms.is_none() {
                    stats.rtt_ms = conn.rtt_ms;
                }
                Some(link_health(
                    &conn.link,
                    &stats,
                    conn.state.to_string(),
                    conn.connected_since,
                    now,
                ))
            };
            out.push(ParticipantLinks {
                participant: pid.clone(),
                room: p.room.clone(),
                publish: health(p.publish),
                subscribe: health(p.subscribe),
                screen: health(p.screen),
                estimate: p
                    .subscribe
                    .map(|_| p.estimator.estimate())
                    .filter(|e| *e < layers::MAX_ESTIMATE),
                transport_cc: p
                    .subscribe
                    .and_then(|id| self.conns.get(&id))
                    .and_then(|c| {
                        let cc = c.twcc.as_ref()?;
                        Some(crate::health::TransportCcHealth {
                            feedbacks: cc.feedbacks,
                            reported: cc.reported,
                            last_probe: c.last_probe,
                        })
                    }),
                producers: produced.remove(pid.as_str()).unwrap_or_default(),
                consumers: consumed.remove(pid.as_str()).unwrap_or_default(),
            });
        }
        out
    }

    fn set_policy(&mut self, participant: &ParticipantId, policy: ForwardPolicy) {
        let Some(p) = self.participants.get_mut(participant) else {
            return;
        };
        p.policy = policy;
        let over_limit = p.over_limit;
        let now = Instant::now();
        let mut resumed = Vec::new();
        for (key, producer) in self
            .producers
            .iter_mut()
            .filter(|(_, pr)| &pr.owner == participant)
        {
            let forwarding = source_allowed(policy, producer.source)
                && !(over_limit && producer.kind == MediaKind::Video);
            if forwarding && !producer.forwarding {
                // Resuming continues each subscriber's sequence; video starts from a keyframe.
                for c in producer.consumers.iter_mut() {
                    c.forwarder.resume();
                }
                if producer.kind == MediaKind::Video {
                    resumed.push(*key);
                }
            }
            producer.forwarding = forwarding;
        }
        for key in resumed {
            self.request_keyframe(key, now);
        }
    }

    // ---------------------------------------------------------------- leaving

    fn leave(&mut self, participant: &ParticipantId) {
        let Some(p) = self.participants.remove(participant) else {
            return;
        };
        // Its producers leave every subscriber.
        let owned: Vec<ProducerKey> = self
            .producers
            .iter()
            .filter(|(_, pr)| &pr.owner == participant)
            .map(|(k, _)| *k)
            .collect();
        for key in owned {
            self.remove_producer(key);
        }
        // Its consumers leave every producer.
        for producer in self.producers.values_mut() {
            producer.consumers.retain(|c| &c.subscriber != participant);
        }
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.participants.retain(|x| x != participant);
            if room.participants.is_empty() {
                self.rooms.remove(&p.room);
            }
        }
        for conn in [p.publish, p.subscribe, p.screen].into_iter().flatten() {
            self.close_conn(conn);
        }
        info!(%participant, "left the media plane");
    }

    /// A participant's media connection failed: close its connections (the screen share's too, whose producers
    /// go) and forward nothing more to it, but keep its camera and microphone Producers — no packets come, so its
    /// subscribers' pictures freeze — until the control plane resumes it (`Join` again) or removes it (`Leave`).
    fn suspend(&mut self, participant: &ParticipantId) {
        self.close_screen(participant);
        let Some(p) = self.participants.get_mut(participant) else {
            return;
        };
        p.suspended = true;
        p.offer_outstanding = false;
        p.offer_sent_at = None;
        p.renegotiate = false;
        let conns = [p.publish.take(), p.subscribe.take()];
        for producer in self.producers.values_mut() {
            producer.consumers.retain(|c| &c.subscriber != participant);
        }
        for conn in conns.into_iter().flatten() {
            self.close_conn(conn);
        }
        info!(%participant, "suspended: media connection lost");
    }

    fn remove_producer(&mut self, key: ProducerKey) {
        let Some(producer) = self.producers.remove(&key) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&producer.conn) {
            conn.producer_by_track.retain(|_, k| *k != key);
        }
        if let Some(room) = self.rooms.get_mut(&producer.room) {
            room.producers.retain(|k| *k != key);
        }
        for c in &producer.consumers {
            self.detach_consumer(c, producer.kind);
        }
        let _ = self.events.send(Event::TrackUnpublished {
            participant: producer.owner.clone(),
            track_id: producer.id.clone(),
        });
    }

    /// A consumer is gone from its producer: its sender leaves the subscribe connection (the transceiver is kept
    /// for the next track of its kind), and the subscriber is offered the change.
    fn detach_consumer(&mut self, c: &Consumer, kind: MediaKind) {
        if let Some(conn) = self.conns.get_mut(&c.conn) {
            conn.producer_by_ssrc.remove(&c.ssrc);
            match conn.pc.remove_track(c.sender) {
                Ok(()) => match kind {
                    MediaKind::Audio => conn.free_audio_transceivers += 1,
                    MediaKind::Video => conn.free_video_transceivers += 1,
                },
                Err(e) => debug!(error = %e, "remove_track failed"),
            }
        }
        if let Some(sub) = self.participants.get_mut(&c.subscriber) {
            sub.renegotiate = true;
        }
    }

    /// Whether `subscriber` is to consume the producer `key` (its receive policy; nobody consumes its own tracks
    /// but in the connection test).
    fn should_consume(&self, key: ProducerKey, subscriber: &ParticipantId) -> bool {
        let (Some(producer), Some(sub)) =
            (self.producers.get(&key), self.participants.get(subscriber))
        else {
            return false;
        };
        (sub.echo || &producer.owner != subscriber)
            && sub.receive.receives(&producer.owner, producer.source)
    }

    /// A new receive policy: the consumers it no longer wants go, the ones it now wants come; the subscribe
    /// connection is renegotiated once for both (at the end of the turn).
    fn set_receive(&mut self, participant: &ParticipantId, receive: ReceivePolicy) {
        let Some(p) = self.participants.get_mut(participant) else {
            return;
        };
        if p.receive == receive {
            return;
        }
        p.receive = receive;
        let room = p.room.clone();
        let keys = self
            .rooms
            .get(&room)
            .map(|r| r.producers.clone())
            .unwrap_or_default();
        let now = Instant::now();
        let (mut added, mut removed) = (0, 0);
        for key in keys {
            let wanted = self.should_consume(key, participant);
            let Some(producer) = self.producers.get_mut(&key) else {
                continue;
            };
            let kind = producer.kind;
            match producer
                .consumers
                .iter()
                .position(|c| &c.subscriber == participant)
            {
                Some(i) if !wanted => {
                    let c = producer.consumers.remove(i);
                    self.detach_consumer(&c, kind);
                    self.layers_dirty = true;
                    removed += 1;
                }
                None if wanted => {
                    self.add_consumer(key, participant, now);
                    added += 1;
                }
                _ => {}
            }
        }
        debug!(%participant, added, removed, "receive policy changed");
    }

    fn close_conn(&mut self, id: ConnId) {
        self.router.remove_conn(id);
        if let Some(mut conn) = self.conns.remove(&id) {
            self.stats.nacks_received += conn.rtc_stats.nacks_received;
            self.stats.nacks_sent += conn.rtc_stats.nacks_sent;
            let _ = conn.pc.close();
            queue_writes(&mut conn, &mut self.tcp, &mut self.outbox);
        }
    }

    // ---------------------------------------------------------------- time

    fn handle_timeouts(&mut self, now: Instant) {
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.next_timeout.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.next_timeout = None;
                let _ = conn.pc.handle_timeout(now);
            }
            self.drain(id, now);
        }
    }

    /// Deferred keyframe requests that are due are sent; `keyframe_due` becomes the next one.
    fn poll_keyframes(&mut self, now: Instant) {
        let Worker {
            producers,
            conns,
            dirty,
            ..
        } = self;
        let mut due: Option<Instant> = None;
        for producer in producers.values_mut() {
            for li in 0..producer.layers.len() {
                let layer = &mut producer.layers[li];
                if layer.keyframes.poll(now) && !layer.paused {
                    Self::send_pli(conns, dirty, producer, li, now);
                    self.stats.plis_sent += 1;
                }
                if let Some(d) = producer.layers[li].keyframes.next_due() {
                    due = Some(due.map_or(d, |e| e.min(d)));
                }
            }
        }
        self.keyframe_due = due;
    }

    fn tick(&mut self, now: Instant) {
        self.poll_keyframes(now);
        self.judge_overdue_probes(now);
        let Worker {
            producers, conns, ..
        } = self;
        for producer in producers.values_mut() {
            for layer in &mut producer.layers {
                layer.update_rate(now);
            }
        }
        for conn in conns.values_mut() {
            conn.link.update_rates(now);
        }
        // Video files of recordings that need a keyframe (throttled like any request), and cameras whose
        // recorded layer is still to be chosen once the top layer's keyframe is overdue (`RECORD_TOP_WAIT`): any
        // layer's keyframe starts the file now.
        let mut wanted: Vec<ProducerKey> = self
            .recordings
            .values()
            .flat_map(|r| r.keyframes_wanted())
            .collect();
        wanted.extend(
            self.producers
                .iter()
                .filter(|(_, p)| {
                    p.record.is_some()
                        && p.record_ssrc.is_none()
                        && p.codec.is_video()
                        && p.record_since
                            .is_some_and(|t| now.saturating_duration_since(t) >= RECORD_TOP_WAIT)
                })
                .map(|(k, _)| *k),
        );
        for key in wanted {
            self.request_keyframe(key, now);
        }
        if let Some(tcp) = &mut self.tcp {
            let conns = &self.conns;
            tcp.sweep(now, |c| conns.contains_key(&c));
        }
        self.refresh_rtc_stats(now);
        self.update_estimates(now);
        // After the estimates were updated: a probe one of them asked for starts at this tick.
        self.start_due_probes(now);
        self.resend_unanswered_offers(now);
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(SENDER_REPORT_EVERY_TICKS) {
            self.send_sender_reports(now);
        }
        if self.ticks.is_multiple_of(POLICE_EVERY_TICKS) {
            self.police_publish_bitrate();
        }
        if self.layers_dirty || self.ticks.is_multiple_of(CHOOSE_EVERY_TICKS) {
            self.layers_dirty = false;
            self.choose_layers(now);
        }
    }

    /// Sender reports for the streams the SFU seals itself (rtc reports only packets that went through it): the
    /// subscriber's lip sync maps RTP time to wall-clock time with them, and their LSR/DLSR echo gives the RTT.
    fn send_sender_reports(&mut self, now: Instant) {
        let ntp = crate::health::ntp_now(std::time::SystemTime::now());
        let Worker {
            producers,
            conns,
            dirty,
            ..
        } = self;
        for producer in producers.values() {
            let clock_rate = f64::from(producer.rtp_codec.clock_rate);
            for c in &producer.consumers {
                let Some((timestamp, at)) = c.last_sent else {
                    continue;
                };
                let Some(conn) = conns.get_mut(&c.conn) else {
                    continue;
                };
                if conn.srtp_out.is_none() {
                    continue;
                }
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                let sr = rtc::rtcp::sender_report::SenderReport {
                    ssrc: c.ssrc,
                    ntp_time: ntp,
                    rtp_time: timestamp.wrapping_add((elapsed * clock_rate) as u32),
                    packet_count: c.packets as u32,
                    octet_count: c.octets as u32,
                    ..Default::default()
                };
                let _ = conn.pc.handle_write(TaggedRTCMessage {
                    now,
                    message: RTCMessage::RtcpPacket(String::new(), vec![Box::new(sr)]),
                });
                if !conn.dirty {
                    conn.dirty = true;
                    dirty.push(c.conn);
                }
            }
        }
    }

    /// Once a second: a publisher whose publish connection carries more than half again `max_publish_bps` for
    /// `OVER_LIMIT_SECS` seconds (the browser was told the cap in its answer; this catches one that ignores it)
    /// has its video held back from everyone — audio goes on — until it has been back under 1.25× for as long.
    fn police_publish_bitrate(&mut self) {
        let limit = self.max_publish_bps;
        if limit == 0 {
            return;
        }
        let mut changed = Vec::new();
        for (id, p) in self.participants.iter_mut() {
            // Each publish connection (camera, screen share) gets the cap in its answer: the busier one counts.
            let Some(bitrate) = [p.publish, p.screen]
                .into_iter()
                .flatten()
                .filter_map(|c| self.conns.get(&c))
                .map(|c| c.link.traffic.bitrate_in)
                .max()
            else {
                continue;
            };
            if !p.over_limit {
                p.over_secs = if bitrate > limit + limit / 2 {
                    p.over_secs + 1
                } else {
                    0
                };
                if p.over_secs >= OVER_LIMIT_SECS {
                    p.over_limit = true;
                    p.over_secs = 0;
                    changed.push((id.clone(), p.policy, true, bitrate));
                }
            } else {
                p.over_secs = if bitrate < limit + limit / 4 {
                    p.over_secs + 1
                } else {
                    0
                };
                if p.over_secs >= OVER_LIMIT_SECS {
                    p.over_limit = false;
                    p.over_secs = 0;
                    changed.push((id.clone(), p.policy, false, bitrate));
                }
            }
        }
        for (participant, policy, over, bitrate) in changed {
            warn!(%participant, over, bitrate, limit, "publish bitrate limit");
            self.set_policy(&participant, policy);
            let _ = self.events.send(Event::PublishBitrate {
                participant,
                over,
                bitrate,
                limit,
            });
        }
    }

    /// Choose each video consumer's layer (see `layers.rs`): per subscriber, the tile size and the cap give each
    /// consumer a limit, the downlink estimate is shared out largest tile first, and a consumer that cannot get
    /// even the lowest layer is paused. Then each simulcast producer's publisher is told which layers anyone
    /// still receives. Runs on the tick, never per packet.
    fn choose_layers(&mut self, now: Instant) {
        // Each subscriber's consumers, in one pass (borrowed: no copies of ids).
        // Per subscriber: its audio consumers (counted) and its video consumers (producer, index).
        type Received = (usize, Vec<(ProducerKey, usize)>);
        let mut by_subscriber: HashMap<&str, Received> = HashMap::new();
        for (key, p) in &self.producers {
            for (i, c) in p.consumers.iter().enumerate() {
                let entry = by_subscriber.entry(c.subscriber.as_str()).or_default();
                match p.kind {
                    MediaKind::Audio => entry.0 += 1,
                    MediaKind::Video => entry.1.push((*key, i)),
                }
            }
        }
        // Decide with shared borrows, then apply.
        let mut decisions: Vec<(ProducerKey, usize, Option<usize>)> = Vec::new();
        // What each subscriber would take unconstrained (the most a probe of its downlink asks for).
        let mut wanted: Vec<(ParticipantId, [u64; 3], bool)> = Vec::new();
        for (sub, (audio, videos)) in &by_subscriber {
            if videos.is_empty() {
                continue;
            }
            let Some(participant) = self.participants.get(*sub) else {
                continue;
            };
            let cap = participant.cap.map(usize::from);
            let may_pause = participant.estimator.may_pause();
            let mut budget = participant
                .estimator
                .estimate()
                .saturating_sub(*audio as u64 * layers::AUDIO_BITRATE);
            let wants: Vec<Want> = videos
                .iter()
                .map(|&(key, i)| {
                    let p = &self.producers[&key];
                    let c = &p.consumers[i];
                    let n = p.layers.len().min(layers::MAX_LAYERS);
                    let mut measured = [0u32; layers::MAX_LAYERS];
                    for (m, l) in measured.iter_mut().zip(&p.layers) {
                        *m = l.width;
                    }
                    let widths = layers::layer_widths(&measured[..n]);
                    let by_tile = layers::layer_for_tile(c.tile.map(|t| t.0), &widths[..n]);
                    Want {
                        layers: n,
                        limit: by_tile.min(cap.unwrap_or(usize::MAX)).min(n - 1),
                        paused: c.paused,
                    }
                })
                .collect();
            let cost = |i: usize, layer: usize| {
                let (key, _) = videos[i];
                self.producers[&key].layers[layer].cost(layer)
            };
            let audio_bps = *audio as u64 * layers::AUDIO_BITRATE;
            let unconstrained: u64 = wants
                .iter()
                .enumerate()
                .map(|(i, w)| cost(i, w.limit))
                .sum();
            // The lowest layers with the headroom a paused one needs to resume.
            let lowest: u64 = (0..wants.len())
                .map(|i| (cost(i, 0) as f64 * layers::RESUME_HEADROOM) as u64)
                .sum();
            if !may_pause {
                // No loss has cut the estimate: it is a guess (the start) or a floor (a probe carried), and no
                // video is paused for it.
                budget = budget.max((0..wants.len()).map(|i| cost(i, 0)).sum());
            }
            let chosen = layers::allocate(budget, &wants, cost);
            let in_use: u64 = chosen
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.map(|l| cost(i, l)))
                .sum();
            let paused = chosen.iter().any(Option::is_none);
            wanted.push((
                (*sub).into(),
                [unconstrained, in_use, lowest].map(|b| b + audio_bps),
                paused,
            ));
            for (&(key, i), desired) in videos.iter().zip(chosen) {
                decisions.push((key, i, desired));
            }
        }
        drop(by_subscriber);
        for (sub, [want, in_use, lowest], paused) in wanted {
            if let Some(p) = self.participants.get_mut(&sub) {
                p.estimator.set_wanted(want, in_use, lowest);
                p.estimator.set_video_paused(paused);
            }
        }
        let mut events = Vec::new();
        let mut keyframes = Vec::new();
        {
            for (key, i, desired) in decisions {
                let Some(p) = self.producers.get_mut(&key) else {
                    continue;
                };
                // The desired layer if it flows, else the nearest lower one that does, else the lowest that does.
                let target = desired.map(|d| {
                    (0..=d)
                        .rev()
                        .find(|&l| p.layers[l].is_flowing(now))
                        .or_else(|| (d..p.layers.len()).find(|&l| p.layers[l].is_flowing(now)))
                        .unwrap_or(d) as u8
                });
                let c = &mut p.consumers[i];
                let sub = &c.subscriber;
                c.target_desired = desired.map(|d| d as u8);
                if target.is_none() && !c.paused {
                    c.paused = true;
                    c.target = None;
                    info!(subscriber = %sub, producer = %p.id, "video paused: the link cannot carry it");
                    events.push(Event::VideoPaused {
                        participant: sub.clone(),
                        track_id: p.id.clone(),
                        paused: true,
                    });
                } else if let Some(t) = target {
                    if c.paused {
                        // Resume from a keyframe with the stream continuing where it stopped.
                        c.paused = false;
                        c.forwarder.resume();
                        info!(subscriber = %sub, producer = %p.id, "video resumed");
                        events.push(Event::VideoPaused {
                            participant: sub.clone(),
                            track_id: p.id.clone(),
                            paused: false,
                        });
                        keyframes.push((key, usize::from(t)));
                    }
                    if c.target != Some(t) {
                        debug!(subscriber = %sub, producer = %p.id, layer = %p.layers[usize::from(t)].rid, "layer target");
                        c.target = Some(t);
                        c.forwarder.allow_source(p.layers[usize::from(t)].ssrc);
                    }
                }
            }
        }
        // Layers nobody receives are paused at the publisher (the lowest always flows: a new subscriber starts
        // at once, and the publisher's uplink stays measured).
        for p in self.producers.values_mut().filter(|p| p.simulcast) {
            let mut wanted = 1u8;
            // A recording keeps the layer it writes flowing (the top one until it has chosen).
            if p.record.is_some() && !p.layers.is_empty() {
                let recorded = p
                    .record_ssrc
                    .and_then(|s| p.layers.iter().position(|l| l.ssrc == s))
                    .unwrap_or(p.layers.len() - 1);
                wanted |= 1 << recorded;
            }
            for c in p.consumers.iter().filter(|c| !c.paused) {
                if let Some(t) = c.target_desired {
                    wanted |= 1 << t;
                }
                if let Some(t) = c.target {
                    wanted |= 1 << t;
                }
                if let Some(cur) = c.forwarder.current_ssrc()
                    && let Some(l) = p.layers.iter().position(|l| l.ssrc == cur)
                {
                    wanted |= 1 << l;
                }
            }
            let mut changed = false;
            for (i, l) in p.layers.iter_mut().enumerate() {
                let paused = wanted & (1 << i) == 0;
                if l.paused != paused {
                    l.paused = paused;
                    changed = true;
                }
            }
            if changed {
                let rids = |paused: bool| {
                    p.layers
                        .iter()
                        .filter(|l| l.paused == paused)
                        .map(|l| l.rid.clone())
                        .collect()
                };
                events.push(Event::LayersWanted {
                    participant: p.owner.clone(),
                    track_id: p.id.clone(),
                    source: p.source,
                    active: rids(false),
                    paused: rids(true),
                });
            }
        }
        for e in events {
            let _ = self.events.send(e);
        }
        for (key, layer) in keyframes {
            self.request_layer_keyframe(key, layer, now);
        }
    }

    /// A subscribe offer that got no answer (lost on its way, or the client restarted its handling) is sent
    /// again, so a participant never stays without its media because one message went missing.
    fn resend_unanswered_offers(&mut self, now: Instant) {
        const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);
        for (pid, p) in self.participants.iter_mut() {
            let due = p.offer_outstanding
                && p.offer_sent_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= ANSWER_TIMEOUT);
            if !due {
                continue;
            }
            let sdp = p
                .subscribe
                .and_then(|id| self.conns.get(&id))
                .and_then(|c| c.pc.local_description())
                .map(|d| d.sdp);
            if let Some(sdp) = sdp {
                debug!(participant = %pid, "subscribe offer unanswered; sending it again");
                p.offer_sent_at = Some(now);
                let _ = self.events.send(Event::SubscribeOffer {
                    participant: pid.clone(),
                    sdp,
                });
            }
        }
    }

    /// Read rtc's statistics of the next few connections (round robin): a full sweep at once would hold up
    /// forwarding for tens of milliseconds with a few hundred connections.
    fn refresh_rtc_stats(&mut self, now: Instant) {
        const PER_TICK: usize = 4;
        if self.conns.is_empty() {
            return;
        }
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        let start = ids.partition_point(|id| *id < self.stats_cursor);
        for id in ids.iter().cycle().skip(start).take(PER_TICK.min(ids.len())) {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.rtc_stats = read_rtc_stats(&mut conn.pc, now);
                if conn.rtc_stats.loss_out.is_none() {
                    // SFU-sealed streams: rtc keeps no statistics for them; the receiver reports we read do.
                    conn.rtc_stats.loss_out = conn.rr_loss;
                }
                // What the link health reports of a subscriber's link: the worse of that and its NACKs' loss
                // (receiver reports alone show ~0 on a link losing a fifth of its packets, once retransmissions
                // fill the gaps; `update_estimates` measures it).
                if conn.leg == Leg::Subscribe
                    && let Some(n) = conn.nack_loss
                {
                    conn.rtc_stats.loss_out = Some(conn.rtc_stats.loss_out.map_or(n, |r| r.max(n)));
                }
            }
            self.stats_cursor = id + 1;
        }
    }

    /// Send what the connections touched this turn have queued, and learn their next deadlines.
    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in &dirty {
            self.queue_rtc_output(*id);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Queue what rtc has to send on one connection (DTLS, RTCP, rtc-path RTP) for the socket, in order, and
    /// learn its next deadline.
    fn queue_rtc_output(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.dirty = false;
        queue_writes(conn, &mut self.tcp, &mut self.outbox);
        conn.next_timeout = conn.pc.poll_timeout();
    }

    fn shutdown(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close_conn(id);
        }
        let _ = self.outbox.flush(&self.socket);
        if let Some(tcp) = &mut self.tcp {
            tcp.flush(Instant::now());
        }
        info!("media worker stopped");
    }
}

/// The next ICE-TCP event, or never when ICE-TCP is off.
async fn next_tcp_event(tcp: &mut Option<TcpMedia>) -> Option<TcpEvent> {
    match tcp {
        Some(tcp) => Some(tcp.next_event().await),
        None => std::future::pending().await,
    }
}

/// Whether a producer of this source is forwarded under `policy`.
fn source_allowed(policy: ForwardPolicy, source: MediaSource) -> bool {
    match source {
        MediaSource::Microphone => policy.audio,
        MediaSource::Screen => policy.screen,
        MediaSource::Camera => true,
    }
}

/// Everything rtc has to send on a connection, in order: each datagram into the outbox, or framed into its ICE-TCP
/// stream's bounded buffer (full: dropped, as on a full UDP socket).
fn queue_writes(conn: &mut Conn, tcp: &mut Option<TcpMedia>, outbox: &mut Outbox) {
    while let Some(msg) = conn.pc.poll_write() {
        conn.link.sent(msg.message.len());
        conn.peer_addr = Some(msg.transport.peer_addr);
        if msg.transport.transport_protocol == TransportProtocol::TCP {
            if let (Some(tcp), Some(stream)) = (tcp.as_mut(), conn.tcp_stream) {
                tcp.queue(stream, &msg.message);
            }
        } else {
            outbox.push(msg.transport.peer_addr, conn.src_ip, &msg.message);
        }
    }
}

/// Whether a layer up to `target` holds a keyframe recent enough to replay (`replay::MAX_AGE`).
fn recent_keyframe(layers: &[Layer], target: u8, now: Instant) -> bool {
    layers.iter().take(usize::from(target) + 1).any(|l| {
        l.last_keyframe
            .is_some_and(|(_, at)| now.saturating_duration_since(at) <= crate::replay::MAX_AGE)
    })
}

/// A new consumer's first picture (`replay.rs`): from the highest layer up to its target whose cached picture
/// leaves in one burst, else the lowest layer's, paced.
fn first_picture(layers: &[Layer], target: u8, now: Instant) -> Option<crate::replay::Replay> {
    let top = usize::from(target).min(layers.len().checked_sub(1)?);
    let mut lowest = None;
    for i in (0..=top).rev() {
        if let Some(r) = layers[i].start_replay(i, now) {
            if r.bytes <= crate::replay::BURST {
                return Some(r);
            }
            lowest = Some(r);
        }
    }
    lowest
}

/// Where a forwarded packet goes once rewritten: the worker's send buffers and counters, borrowed apart from its
/// connections and producers.
struct Sink<'a> {
    scratch: &'a mut Vec<u8>,
    outbox: &'a mut Outbox,
    tcp: &'a mut Option<TcpMedia>,
    dirty: &'a mut Vec<ConnId>,
    stats: &'a mut WorkerStats,
    /// When a paced replay sends next (`replay.rs`).
    replay_due: &'a mut Option<Instant>,
}

/// Send one packet of the producer to a consumer, rewritten as its forwarder decided, and note it for the
/// subscriber's NACKs and sender reports.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn deliver(
    consumer: &mut Consumer,
    conn: &mut Conn,
    payload_type: u8,
    source_ssrc: u32,
    source_seq: u16,
    marker: bool,
    rewrite: crate::forwarder::Rewrite,
    payload: &Bytes,
    vp8: Option<&crate::vp8::Vp8Descriptor>,
    now: Instant,
    sink: &mut Sink,
) {
    let out = outgoing(
        payload_type,
        consumer.ssrc,
        marker,
        rewrite.seq,
        rewrite.timestamp,
        payload,
        vp8,
        (rewrite.picture_id, rewrite.tl0picidx),
    );
    let octets = out.payload.len() as u64;
    let timestamp = out.header.timestamp;
    let written = write_rtp(
        conn,
        &mut consumer.srtp_index,
        out,
        now,
        sink.scratch,
        sink.outbox,
        sink.tcp,
    );
    if conn.srtp_out.is_none() && !conn.dirty {
        conn.dirty = true;
        sink.dirty.push(consumer.conn);
    }
    if written {
        sink.stats.rtp_forwarded += 1;
        sink.stats.rtp_sealed += u64::from(conn.srtp_out.is_some());
        conn.forwarded += 1;
        consumer.packets += 1;
        consumer.octets += octets;
        consumer.last_sent = Some((timestamp, now));
        // One fixed-size entry in a ring made with the consumer.
        consumer.sent.record(
            rewrite.seq,
            source_ssrc,
            source_seq,
            rewrite.timestamp,
            rewrite.picture_id,
            rewrite.tl0picidx,
        );
    }
}

/// Send what the consumer's replay may send now (`replay.rs`), each packet through its forwarder and out; the
/// replay ends once it has caught up with the layer (or lost its place). `false` if the forwarder would not start
/// from its first packet (nothing went; the caller asks the publisher for a keyframe).
#[allow(clippy::too_many_arguments)]
fn pace_replay(
    consumer: &mut Consumer,
    conn: &mut Conn,
    payload_type: u8,
    codec: Codec,
    layers: &[Layer],
    now: Instant,
    sink: &mut Sink,
) -> bool {
    use crate::replay::Step;
    let Some(mut replay) = consumer.replay.take() else {
        return false;
    };
    let Some(layer) = layers.get(replay.layer) else {
        return false;
    };
    let Some(newest) = layer.last_seq else {
        return false;
    };
    replay.refill(now);
    let mut started = consumer.forwarder.current_ssrc().is_some();
    if replay.overdue(now) {
        debug!(subscriber = %consumer.subscriber, ssrc = replay.ssrc, "first picture's replay did not catch up");
        return started;
    }
    loop {
        match replay.step(&layer.cache, newest) {
            Step::Send(p, timestamp) => {
                let vp8 = if codec == Codec::Vp8 {
                    crate::vp8::parse(&p.payload)
                } else {
                    None
                };
                match consumer.forwarder.forward_parsed(
                    now,
                    replay.ssrc,
                    p.seq,
                    timestamp,
                    &p.payload,
                    vp8,
                ) {
                    Ok(rewrite) => {
                        started = true;
                        deliver(
                            consumer,
                            conn,
                            payload_type,
                            replay.ssrc,
                            p.seq,
                            p.marker,
                            rewrite,
                            &p.payload,
                            vp8.as_ref(),
                            now,
                            sink,
                        );
                    }
                    Err(_) if !started => return false,
                    Err(_) => {}
                }
            }
            Step::Wait => {
                consumer.replay = Some(replay);
                let next = now + crate::replay::STEP;
                *sink.replay_due = Some(sink.replay_due.map_or(next, |d| d.min(next)));
                return started;
            }
            end @ (Step::Done | Step::Lost) => {
                debug!(
                    subscriber = %consumer.subscriber,
                    ssrc = replay.ssrc,
                    caught_up = matches!(end, Step::Done),
                    "first picture's replay ended"
                );
                return started;
            }
        }
    }
}

/// The packet a consumer's subscriber gets: only the fixed header is carried over (the subscriber's leg negotiated
/// its own extension ids, so none are sent rather than wrong ones; empty Vecs do not allocate), and the payload is
/// shared unless the VP8 PictureID / TL0PICIDX must change (`ids`, after a source switch): then it is copied once
/// and rewritten. Used for the first send and for a resend, which must carry the same bytes.
#[allow(clippy::too_many_arguments)]
fn outgoing(
    payload_type: u8,
    ssrc: u32,
    marker: bool,
    sequence_number: u16,
    timestamp: u32,
    payload: &Bytes,
    vp8: Option<&crate::vp8::Vp8Descriptor>,
    ids: (Option<u16>, Option<u8>),
) -> rtc::rtp::Packet {
    let payload = match vp8 {
        Some(desc) if ids != (None, None) => {
            let mut copy = BytesMut::from(&payload[..]);
            crate::vp8::rewrite(&mut copy, desc, ids.0, ids.1);
            copy.freeze()
        }
        _ => payload.clone(),
    };
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            ..Default::default()
        },
        payload,
    }
}

/// Send one rewritten RTP packet to a subscriber: sealed by the SFU when the connection has a `Sealer` (the fast
/// path), else straight into rtc's write pipeline — not `RTCRtpSender::write_rtp`, which first rebuilds the
/// sender's parameters (codec and extension lists, several allocations) to check SSRC, payload type and
/// extensions, all of which the caller guarantees; rtc ignores the track id of a written packet (an empty one
/// allocates nothing). The caller marks an rtc-path connection dirty so `flush_dirty` drains it.
fn write_rtp(
    conn: &mut Conn,
    index: &mut StreamIndex,
    out: rtc::rtp::Packet,
    now: Instant,
    scratch: &mut Vec<u8>,
    outbox: &mut Outbox,
    tcp: &mut Option<TcpMedia>,
) -> bool {
    match &mut conn.srtp_out {
        Some(sealer) => seal_and_queue(
            sealer,
            index,
            &out,
            scratch,
            conn.peer_addr,
            conn.src_ip,
            conn.tcp_stream,
            outbox,
            tcp,
            &mut conn.link,
            conn.twcc.as_mut().map(|t| (t, now)),
        ),
        None => conn
            .pc
            .handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(String::new(), out),
            })
            .is_ok(),
    }
}

/// The fast path: seal a forwarded packet for the subscriber and queue it for the socket (or its ICE-TCP stream).
/// Per packet: the header marshalled and the payload copied straight into the outbox, one AES-GCM seal in place
/// there (`srtp::Sealer`), the rollover counter from the consumer's own `StreamIndex`. No allocation, no map
/// lookup. `false`: not sent (no peer address yet, or the cipher refused).
#[allow(clippy::too_many_arguments)]
fn seal_and_queue(
    sealer: &mut Sealer,
    index: &mut StreamIndex,
    packet: &rtc::rtp::Packet,
    scratch: &mut Vec<u8>,
    peer: Option<SocketAddr>,
    src_ip: Option<IpAddr>,
    tcp_stream: Option<crate::tcp::StreamId>,
    outbox: &mut Outbox,
    tcp: &mut Option<TcpMedia>,
    link: &mut LinkCounters,
    mut twcc: Option<(&mut crate::twcc::TransportCc, Instant)>,
) -> bool {
    use rtc::shared::marshal::MarshalSize;
    let Some(peer) = peer else {
        return false;
    };
    // The packet as rewritten has no extensions of its own (fixed header only); transport-wide CC adds one.
    let fixed = packet.header.marshal_size();
    let header_len = fixed + twcc.as_ref().map_or(0, |_| crate::twcc::EXTENSION_LEN);
    let tag_len = sealer.tag_len();
    let len = header_len + packet.payload.len() + tag_len;
    let seq = packet.header.sequence_number;
    let roc = index.roc_for(seq);
    let mut write = |buf: &mut [u8]| -> bool {
        use rtc::shared::marshal::Marshal;
        let (plain, tag) = buf.split_at_mut(len - tag_len);
        if packet.header.marshal_to(&mut plain[..fixed]).is_err() {
            return false;
        }
        if let Some((cc, now)) = twcc.as_mut() {
            plain[0] |= 0x10;
            cc.stamp(*now, len, &mut plain[fixed..header_len]);
        }
        plain[header_len..].copy_from_slice(&packet.payload);
        sealer
            .seal(packet.header.ssrc, seq, roc, plain, header_len, tag)
            .is_ok()
    };
    let sent = match (tcp_stream, tcp) {
        (Some(stream), Some(tcp)) => {
            scratch.clear();
            scratch.resize(len, 0);
            let ok = write(scratch);
            if ok {
                tcp.queue(stream, scratch);
            }
            ok
        }
        _ => outbox.push_with(peer, src_ip, len, write),
    };
    if sent {
        link.sent(len);
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer sending `bps` in 20 packets a second from `from` for `secs`, its rate windows kept as the tick does.
    fn flow(layer: &mut Layer, from: Instant, secs: f64, bps: u64) -> Instant {
        let step = Duration::from_millis(50);
        let mut t = from;
        while t < from + Duration::from_secs_f64(secs) {
            layer.bytes += bps / 8 / 20;
            layer.note_arrival(t);
            layer.update_rate(t);
            t += step;
        }
        t
    }

    #[test]
    fn a_layer_costs_what_it_sent_through_a_whole_window_not_the_part_before_a_pause() {
        let mut layer = Layer::new("f".into(), 1, MediaKind::Video);
        assert_eq!(
            layer.cost(2),
            layers::nominal_bitrate(2),
            "nothing measured yet"
        );
        let t = flow(&mut layer, Instant::now(), 3.0, 1_200_000);
        assert!(
            (1_100_000..=1_300_000).contains(&layer.cost(2)),
            "{}",
            layer.cost(2)
        );
        // Paused a fifth into a window: that window held a fifth of the rate, and it is not the layer's cost.
        let t = flow(&mut layer, t, 0.2, 1_200_000);
        for i in 1..=40 {
            layer.update_rate(t + Duration::from_millis(50 * i));
        }
        assert!(
            layer.bitrate < 400_000,
            "the window's rate: {}",
            layer.bitrate
        );
        assert!(
            (1_100_000..=1_300_000).contains(&layer.cost(2)),
            "cost after the pause: {}",
            layer.cost(2)
        );
        // Resumed, and ramping up: once it flows through a window, that is its cost.
        flow(&mut layer, t + Duration::from_secs(2), 2.5, 300_000);
        assert!(
            (250_000..=350_000).contains(&layer.cost(2)),
            "{}",
            layer.cost(2)
        );
    }
}
