//! The typed handle between the control plane and the media plane: commands in, events out. Nothing else
//! crosses the boundary (no shared locks).

use std::net::SocketAddr;
use tokio::sync::{mpsc, oneshot};

/// A participant as the media plane knows it (assigned by signaling).
pub type ParticipantId = String;
pub type RoomId = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The client's camera and microphone (the client offers).
    Publish,
    /// Everything the participant receives (the server offers).
    Subscribe,
    /// The client's screen share, on a publish connection of its own (the client offers): starting or stopping
    /// a share never renegotiates the camera's connection.
    Screen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

/// What a producer carries. A client marks a screen share by sending it in a MediaStream whose id starts
/// with `screen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaSource {
    Microphone,
    Camera,
    Screen,
}

/// A producer (an incoming track) as announced to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackDesc {
    pub id: String,
    pub kind: MediaKind,
    pub mime_type: String,
    pub source: MediaSource,
}

/// What the media plane forwards of one participant (the meeting rules decide; the media plane enforces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardPolicy {
    /// May publish at all (observers may not).
    pub can_publish: bool,
    /// Its microphone reaches the others.
    pub audio: bool,
    /// Its screen share reaches the others.
    pub screen: bool,
}

impl ForwardPolicy {
    /// Everything forwarded (open rooms).
    pub const OPEN: ForwardPolicy = ForwardPolicy {
        can_publish: true,
        audio: true,
        screen: true,
    };
}

/// Whose media a participant receives (the meeting rules decide; the media plane makes the consumers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReceivePolicy {
    /// Every other participant's tracks (the chair; every member of a small meeting).
    #[default]
    Everyone,
    /// Only the camera and microphone of these participants, and every screen share (a hall in a large meeting:
    /// the chair and whoever is heard).
    Only(Vec<ParticipantId>),
}

impl ReceivePolicy {
    /// Whether a producer of `owner` from `source` reaches this participant.
    pub fn receives(&self, owner: &str, source: MediaSource) -> bool {
        match self {
            ReceivePolicy::Everyone => true,
            ReceivePolicy::Only(from) => {
                source == MediaSource::Screen || from.iter().any(|p| p == owner)
            }
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SfuError {
    #[error("unknown participant")]
    UnknownParticipant,
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    #[error("negotiation failed: {0}")]
    Negotiation(String),
    #[error("no subscribe offer is outstanding")]
    NoOfferOutstanding,
    #[error("unknown track {0}")]
    UnknownTrack(String),
    #[error("the media plane has stopped")]
    Stopped,
    #[error("this participant may not publish")]
    PublishNotAllowed,
}

pub type Reply<T> = oneshot::Sender<Result<T, SfuError>>;

#[derive(Debug)]
pub enum Command {
    /// A participant joined a room (no media yet).
    Join {
        participant: ParticipantId,
        room: RoomId,
        policy: ForwardPolicy,
        /// Whose tracks it receives.
        receive: ReceivePolicy,
        /// Echo: the participant also receives its own tracks (the pre-meeting connection test, alone in a
        /// private room, measures real media both ways).
        echo: bool,
    },
    /// Change whose tracks a participant receives (the floor moved, the meeting grew past the size where every
    /// hall sees every hall): consumers are added and removed, and its subscribe connection renegotiated once.
    SetReceive {
        participant: ParticipantId,
        receive: ReceivePolicy,
    },
    /// Change what is forwarded of a participant (floor granted or taken back, muted, mode changed).
    SetPolicy {
        participant: ParticipantId,
        policy: ForwardPolicy,
    },
    /// The client's publish offer; the reply carries the answer SDP.
    PublishOffer {
        participant: ParticipantId,
        sdp: String,
        reply: Reply<String>,
    },
    /// The client's offer for its screen share connection (a second publish connection; every track on it is a
    /// `MediaSource::Screen` Producer); the reply carries the answer SDP.
    ScreenOffer {
        participant: ParticipantId,
        sdp: String,
        reply: Reply<String>,
    },
    /// The client stopped sharing: close its screen connection, remove its producers and their consumers.
    CloseScreen { participant: ParticipantId },
    /// The client's answer to the last subscribe offer.
    SubscribeAnswer {
        participant: ParticipantId,
        sdp: String,
        reply: Reply<()>,
    },
    /// A trickled client candidate.
    RemoteCandidate {
        participant: ParticipantId,
        leg: Leg,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    },
    /// A subscriber asks for a keyframe of a producer it receives.
    RequestKeyframe {
        participant: ParticipantId,
        track_id: String,
        reply: Reply<()>,
    },
    /// A subscriber shows a received video `width` × `height` CSS pixels large (0 × 0: not shown); its layer
    /// follows (simulcast).
    SetVideoSize {
        participant: ParticipantId,
        track_id: String,
        width: u32,
        height: u32,
        reply: Reply<()>,
    },
    /// The highest simulcast layer a subscriber receives (0 = the lowest; `None` = no cap), set by the chair or IT.
    SetLayerCap {
        participant: ParticipantId,
        max_layer: Option<u8>,
    },
    /// The participant left: close its connections, remove its producers and consumers.
    Leave { participant: ParticipantId },
    /// Counters for `/api` and the logs.
    Stats { reply: oneshot::Sender<WorkerStats> },
    /// Link health of every participant of this worker.
    Links {
        reply: oneshot::Sender<Vec<ParticipantLinks>>,
    },
    /// Start recording the room into `dir` (an existing, empty folder): every producer of the room, now and
    /// later, goes to its own file until `StopRecording`. The end is reported by `Event::RecordingEnded`.
    StartRecording {
        room: RoomId,
        dir: std::path::PathBuf,
    },
    /// Stop recording the room; the writer finishes its files and reports `Event::RecordingEnded`.
    StopRecording { room: RoomId },
    /// Close every connection and stop the worker.
    Shutdown,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// Send this offer to the participant's subscribe connection.
    SubscribeOffer {
        participant: ParticipantId,
        sdp: String,
    },
    TrackPublished {
        participant: ParticipantId,
        track: TrackDesc,
    },
    TrackUnpublished {
        participant: ParticipantId,
        track_id: String,
    },
    ConnectionState {
        participant: ParticipantId,
        leg: Leg,
        state: String,
    },
    /// Which simulcast layers (by rid) of a publisher's producer someone receives (`active`) and which nobody
    /// receives (`paused`: the publisher stops sending them). Only layers the SFU has seen are named: a rid whose
    /// first packet has not arrived yet is in neither list, and the publisher leaves it as it is.
    LayersWanted {
        participant: ParticipantId,
        track_id: String,
        source: MediaSource,
        active: Vec<String>,
        paused: Vec<String>,
    },
    /// A subscriber's video of `track_id` was paused because its link cannot carry it (audio goes on), or
    /// resumed.
    VideoPaused {
        participant: ParticipantId,
        track_id: String,
        paused: bool,
    },
    /// A publisher went over `SfuConfig::max_publish_bps` (its video is no longer forwarded, `over: true`) or came
    /// back under it (`over: false`, forwarded again). `bitrate` is what its publish connection carried, bit/s.
    PublishBitrate {
        participant: ParticipantId,
        over: bool,
        bitrate: u64,
        limit: u64,
    },
    /// The media plane took a participant's `Command::Join` (for one already known: its old connections are gone,
    /// it resumes). Every event about it after this one is about the connections of this join.
    Joined { participant: ParticipantId },
    /// A connection failed or closed on its own (ICE/DTLS timeout): the participant is suspended (its connections
    /// closed, its producers kept) until it is joined again or leaves.
    ParticipantFailed {
        participant: ParticipantId,
        reason: String,
    },
    /// A recording ended: stopped (`error: None`) or stopped by a write error (disk full). `dropped` counts
    /// packets the worker could not queue for the writer (its queue was full).
    RecordingEnded {
        room: RoomId,
        dir: std::path::PathBuf,
        files: Vec<RecordedFile>,
        dropped: u64,
        error: Option<String>,
    },
}

/// One producer's file of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFile {
    pub producer_id: String,
    pub participant: ParticipantId,
    pub kind: MediaKind,
    pub source: MediaSource,
    pub mime_type: String,
    /// File name in the recording's folder; `None` when nothing was written (see `note`).
    pub file: Option<String>,
    /// RTP packets the writer got for this producer.
    pub packets_received: u64,
    /// Audio packets or video frames in the file.
    pub packets_written: u64,
    /// Video frames in the file (0 for audio).
    pub frames: u64,
    /// Media duration in the file.
    pub duration_ms: u64,
    /// When the file's first packet arrived, after the recording started.
    pub offset_ms: Option<u64>,
    pub bytes: u64,
    /// Packets that came after they were given up as lost (or twice).
    pub late_packets: u64,
    /// Why nothing or not everything was written (codec not recorded, incomplete frames, write error).
    pub note: Option<String>,
}

/// The link health of one participant's connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantLinks {
    pub participant: ParticipantId,
    pub room: RoomId,
    pub publish: Option<crate::health::LinkHealth>,
    pub subscribe: Option<crate::health::LinkHealth>,
    /// The screen share connection, while the participant shares its screen.
    pub screen: Option<crate::health::LinkHealth>,
    /// The downlink estimate of the subscribe leg (bit/s) that layer choice uses; `None` while unconstrained (no
    /// loss seen yet, and no start estimate: see `layers::Estimator::start`).
    pub estimate: Option<u64>,
    /// The downlink's transport-wide CC (`None`: the subscriber did not accept it): feedback read, and the last
    /// padding probe's outcome.
    pub transport_cc: Option<crate::health::TransportCcHealth>,
    /// What arrives of each of the participant's producers, layer by layer.
    pub producers: Vec<crate::health::ProducerHealth>,
    /// What the participant receives: per consumer the layer chosen, and why.
    pub consumers: Vec<crate::health::ConsumerHealth>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub connections: usize,
    pub producers: usize,
    pub consumers: usize,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rtp_forwarded: u64,
    pub send_dropped: u64,
    pub unroutable: u64,
    pub plis_sent: u64,
    /// NACKs subscribers sent the server, and NACKs the server sent publishers (closed connections included).
    pub nacks_received: u64,
    pub nacks_sent: u64,
    /// Padding probes of subscribers' downlinks started, and those the link carried; padding packets sent.
    pub probes_started: u64,
    pub probes_carried: u64,
    pub padding_sent: u64,
    /// Transport-wide CC feedback packets read from subscribers.
    pub twcc_feedbacks: u64,
    /// Packets sent again to subscribers from the producers' caches, and NACKed packets too old to be.
    pub rtp_retransmitted: u64,
    pub nack_unrepaired: u64,
    /// NACKed packets not sent again because the consumer had switched to another layer since.
    pub nack_superseded: u64,
    /// RTP packets (forwarded or sent again) sealed by the SFU's own SRTP context rather than rtc's pipeline.
    pub rtp_sealed: u64,
    /// ICE-TCP streams open now.
    pub tcp_streams: usize,
    /// Times a consumer's forwarded simulcast layer changed (the switch happened, on the new layer's keyframe).
    pub layer_switches: u64,
    /// Consumers whose first picture was replayed from the producer's cache (the layer's last keyframe and what
    /// followed), instead of waiting for a fresh keyframe.
    pub keyframes_replayed: u64,
    /// Well-formed RED (RFC 2198) audio packets received from publishers (`red.rs`).
    pub red_received: u64,
    /// Time the worker loop spent working (commands, datagrams, timeouts, ticks), not waiting: one clock pair per
    /// loop turn.
    pub busy: std::time::Duration,
    /// ICE-TCP streams accepted, refused (too many unrouted), closed for garbage / no routing STUN in time /
    /// no write progress; packets dropped on a full stream buffer.
    pub tcp: crate::tcp::TcpStats,
}

/// The control plane's handle to the media plane. Commands for a participant go to the worker that holds its
/// room (chosen at `Join` by the room name); the map is touched once per command, never per packet.
#[derive(Clone, Debug)]
pub struct SfuHandle {
    workers: Vec<mpsc::UnboundedSender<Command>>,
    participant_worker: std::sync::Arc<dashmap::DashMap<ParticipantId, usize>>,
    /// Each worker's media socket address.
    pub media_addrs: Vec<SocketAddr>,
    /// Each worker's ICE-TCP listening address (empty: ICE-TCP off).
    pub tcp_addrs: Vec<SocketAddr>,
}

impl SfuHandle {
    pub(crate) fn new(
        workers: Vec<mpsc::UnboundedSender<Command>>,
        media_addrs: Vec<SocketAddr>,
    ) -> Self {
        SfuHandle {
            workers,
            participant_worker: Default::default(),
            media_addrs,
            tcp_addrs: Vec::new(),
        }
    }

    fn worker_for_room(&self, room: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        room.hash(&mut h);
        (h.finish() % self.workers.len() as u64) as usize
    }

    pub fn send(&self, command: Command) -> Result<(), SfuError> {
        let index = match &command {
            Command::Join {
                participant, room, ..
            } => {
                let w = self.worker_for_room(room);
                self.participant_worker.insert(participant.clone(), w);
                w
            }
            Command::Shutdown => {
                for w in &self.workers {
                    let _ = w.send(Command::Shutdown);
                }
                return Ok(());
            }
            Command::Stats { .. } | Command::Links { .. } => 0,
            Command::StartRecording { room, .. } | Command::StopRecording { room } => {
                self.worker_for_room(room)
            }
            Command::Leave { participant } => self
                .participant_worker
                .remove(participant)
                .map(|(_, w)| w)
                .ok_or(SfuError::UnknownParticipant)?,
            Command::PublishOffer { participant, .. }
            | Command::ScreenOffer { participant, .. }
            | Command::CloseScreen { participant }
            | Command::SubscribeAnswer { participant, .. }
            | Command::RemoteCandidate { participant, .. }
            | Command::SetPolicy { participant, .. }
            | Command::SetReceive { participant, .. }
            | Command::SetVideoSize { participant, .. }
            | Command::SetLayerCap { participant, .. }
            | Command::RequestKeyframe { participant, .. } => *self
                .participant_worker
                .get(participant)
                .ok_or(SfuError::UnknownParticipant)?,
        };
        self.workers[index]
            .send(command)
            .map_err(|_| SfuError::Stopped)
    }

    /// Send a command that carries a reply and wait for it.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SfuError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Link health of every participant, over all workers.
    pub async fn links(&self) -> Result<Vec<ParticipantLinks>, SfuError> {
        let mut all = Vec::new();
        for w in &self.workers {
            let (tx, rx) = oneshot::channel();
            w.send(Command::Links { reply: tx })
                .map_err(|_| SfuError::Stopped)?;
            all.extend(rx.await.map_err(|_| SfuError::Stopped)?);
        }
        Ok(all)
    }

    /// Counters summed over all workers.
    pub async fn stats(&self) -> Result<WorkerStats, SfuError> {
        let mut total = WorkerStats::default();
        for s in self.worker_stats().await? {
            total.add(&s);
        }
        Ok(total)
    }

    /// Counters of each worker, in worker order (index = the `worker` label of `/metrics`).
    pub async fn worker_stats(&self) -> Result<Vec<WorkerStats>, SfuError> {
        let mut all = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            let (tx, rx) = oneshot::channel();
            w.send(Command::Stats { reply: tx })
                .map_err(|_| SfuError::Stopped)?;
            all.push(rx.await.map_err(|_| SfuError::Stopped)?);
        }
        Ok(all)
    }
}

impl WorkerStats {
    fn add(&mut self, o: &WorkerStats) {
        self.connections += o.connections;
        self.producers += o.producers;
        self.consumers += o.consumers;
        self.datagrams_in += o.datagrams_in;
        self.datagrams_out += o.datagrams_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.rtp_forwarded += o.rtp_forwarded;
        self.send_dropped += o.send_dropped;
        self.unroutable += o.unroutable;
        self.plis_sent += o.plis_sent;
        self.nacks_received += o.nacks_received;
        self.nacks_sent += o.nacks_sent;
        self.rtp_retransmitted += o.rtp_retransmitted;
        self.probes_started += o.probes_started;
        self.probes_carried += o.probes_carried;
        self.padding_sent += o.padding_sent;
        self.twcc_feedbacks += o.twcc_feedbacks;
        self.nack_unrepaired += o.nack_unrepaired;
        self.nack_superseded += o.nack_superseded;
        self.rtp_sealed += o.rtp_sealed;
        self.tcp_streams += o.tcp_streams;
        self.layer_switches += o.layer_switches;
        self.keyframes_replayed += o.keyframes_replayed;
        self.red_received += o.red_received;
        self.busy += o.busy;
        self.tcp.accepted += o.tcp.accepted;
        self.tcp.refused += o.tcp.refused;
        self.tcp.closed_garbage += o.tcp.closed_garbage;
        self.tcp.closed_idle += o.tcp.closed_idle;
        self.tcp.closed_stuck += o.tcp.closed_stuck;
        self.tcp.send_dropped += o.tcp.send_dropped;
    }
}
