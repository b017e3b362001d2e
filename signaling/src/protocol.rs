//! The control protocol: one WebSocket per participant, JSON text frames, each a `ClientMessage` or a
//! `ServerMessage` tagged by `type`. Every variant is documented in `docs/protocol.md`; keep the two in step.

use serde::{Deserialize, Serialize};

/// Which of a participant's connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Leg {
    /// The client offers and sends its camera and microphone.
    Publish,
    /// The server offers and sends every other participant's tracks.
    Subscribe,
    /// The client offers and sends its screen share, on a connection of its own while it shares.
    Screen,
}

/// A trickled ICE candidate, shaped like the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

/// A track a participant publishes. `id` is also the track id (and the participant id the stream id) of the
/// copy the subscriber receives, so a client maps `ontrack` to a participant by `event.streams[0].id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: String,
    pub kind: TrackKind,
    /// The codec's MIME type, e.g. `video/VP8`.
    pub codec: String,
    /// What the track carries: `microphone`, `camera` or `screen` (a client marks a screen track by putting it
    /// in a MediaStream whose id starts with `screen`).
    pub source: TrackSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Microphone,
    Camera,
    Screen,
}

/// Who a participant is in a meeting; decides what it may do (enforced by the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Chủ trì: runs the meeting.
    Chair,
    /// Thư ký: roll call, absence reasons, may manage the speaking queue.
    Secretary,
    /// Điểm cầu: a commune hall.
    Endpoint,
    /// Dự thính / IT staff: watches, never publishes.
    Observer,
    /// Creates meetings and endpoints, sees everything; watches a meeting without publishing.
    Admin,
}

/// How a meeting decides who is heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingMode {
    /// Chỉ đạo / tập huấn: only the chair and the one holder of the floor are heard.
    Lecture,
    /// Thảo luận: everyone may speak.
    Discussion,
    /// Hội nghị: the chair lets several endpoints speak at once.
    Conference,
}

/// A holder of the floor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloorHolder {
    pub participant_id: String,
    pub name: String,
    /// Milliseconds left before the floor is taken back automatically, if granted with a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
}

/// A raised hand in the speaking queue, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaisedHand {
    pub participant_id: String,
    pub name: String,
    /// How long this hand has been up, in milliseconds.
    pub waiting_ms: u64,
}

/// The live state of a meeting as every participant sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingState {
    pub mode: MeetingMode,
    pub locked: bool,
    pub floor: Vec<FloorHolder>,
    pub queue: Vec<RaisedHand>,
    /// Who should be the main picture: the newest floor holder, else the chair (if present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_participant_id: Option<String>,
    /// Đang ghi: the meeting is being recorded (every participant is shown).
    #[serde(default)]
    pub recording: bool,
}

/// One invited endpoint on the roll call board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollCallEntry {
    pub endpoint_id: String,
    pub name: String,
    pub unit: String,
    pub status: Presence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// First join and last leave, RFC 3339 (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Có mặt: connected now.
    Present,
    /// Vắng.
    Absent,
    /// Vắng có lý do.
    AbsentWithReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub from_id: String,
    pub from_name: String,
    pub text: String,
    /// RFC 3339 (UTC).
    pub at: String,
}

/// A STUN/TURN server for the client's RTCPeerConnections, shaped like the browser's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    /// TURN REST API username: `<expiry unix time>:<participant id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `base64(HMAC-SHA1(turn.secret, username))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The meeting a participant joined, as told in `joined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingInfo {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub mic: bool,
    pub camera: bool,
    pub tracks: Vec<TrackInfo>,
}

/// The highest simulcast layer a participant receives (`set_layer_cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerCap {
    /// The smallest layer (q, a quarter of the camera's width).
    Low,
    /// Up to the middle layer (h).
    Medium,
    /// Up to the full layer (f): no cap.
    High,
}

impl LayerCap {
    /// The layer index the media plane uses (0 = the lowest).
    pub fn index(self) -> u8 {
        match self {
            LayerCap::Low => 0,
            LayerCap::Medium => 1,
            LayerCap::High => 2,
        }
    }
}

/// Messages from the browser (or a simulated endpoint) to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on a socket. With a `token` (a signed join link) the meeting, name and role come from it;
    /// without one, `room` and `name` join an open room (only where `auth.open_rooms` allows it).
    Join {
        #[serde(default)]
        room: Option<String>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        token: Option<String>,
    },
    /// Instead of `join`: a pre-meeting connection test (họp thử) with the meeting's join link. The participant
    /// is alone in a private room, receives its own tracks back (echo), and is neither in the meeting nor on its
    /// attendance. Then publish as after `join`, and send `test_result`.
    JoinTest { token: String },
    /// The client's offer for its publish connection; the server replies `publish_answer`.
    PublishOffer { sdp: String },
    /// The client's offer for its screen share connection (a connection of its own, opened when sharing
    /// starts); the server replies `screen_answer`. Every track on it is the screen share.
    ScreenOffer { sdp: String },
    /// The client stopped sharing its screen: the server closes the screen connection and unpublishes its tracks.
    StopScreen {},
    /// The client's answer to a `subscribe_offer`.
    SubscribeAnswer { sdp: String },
    /// A trickled ICE candidate of the client's, for one of its connections.
    Candidate { leg: Leg, candidate: IceCandidate },
    /// The client's microphone and camera switches, shown to everyone.
    MediaState { mic: bool, camera: bool },
    /// Ask for a keyframe of a track this client receives (the server throttles).
    RequestKeyframe { track_id: String },
    /// How large this client shows a received video, in device pixels (0 × 0: not shown); the server sends the
    /// simulcast layer that fits.
    VideoSize {
        track_id: String,
        width: u32,
        height: u32,
    },
    /// Cap the simulcast layer a participant receives (chair, admin); `max_layer` absent or null lifts the cap.
    SetLayerCap {
        participant_id: String,
        #[serde(default)]
        max_layer: Option<LayerCap>,
    },
    /// Leave the room; the server closes both connections.
    Leave {},
    /// Keep-alive; the server answers `pong`.
    Ping {},
    /// Giơ tay: ask for the floor (endpoints).
    RaiseHand {},
    /// Take one's hand down.
    LowerHand {},
    /// Cho phát biểu: give the floor, optionally for `seconds` (chair, secretary).
    GrantFloor {
        participant_id: String,
        #[serde(default)]
        seconds: Option<u32>,
    },
    /// Thu hồi quyền phát biểu (chair, secretary).
    RevokeFloor { participant_id: String },
    /// Switch the meeting mode (chair).
    SetMode { mode: MeetingMode },
    /// Stop forwarding one participant's microphone until it unmutes itself (chair).
    Mute { participant_id: String },
    /// Tắt tiếng tất cả: mute everyone but the chair (chair).
    MuteAll {},
    /// Ask a participant to unmute; it decides (chair).
    AskUnmute { participant_id: String },
    /// Remove a participant from the meeting; it cannot rejoin this meeting (chair).
    Remove { participant_id: String },
    /// Khóa cuộc họp: no new joins while locked (chair).
    Lock { locked: bool },
    /// Kết thúc: end the meeting for everyone (chair).
    EndMeeting {},
    /// Record why an invited endpoint is absent (secretary, chair).
    SetAbsenceReason { endpoint_id: String, reason: String },
    /// Trò chuyện: a chat line to the room.
    Chat { text: String },
    /// Ghi hình: start recording the meeting (chair).
    StartRecording {},
    /// Dừng ghi: stop recording (chair).
    StopRecording {},
    /// What a connection test measured in the browser; the server adds its own view, grades it against the
    /// `[health]` thresholds, stores it and replies `test_verdict` (connection tests only).
    TestResult { result: TestReport },
}

/// How a camera or microphone check went in the connection test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceCheck {
    /// Frames decode / the audio level moves.
    Ok,
    /// The device opened but gave no frames or no sound.
    NoSignal,
    /// The browser or the user refused access.
    Denied,
    /// No such device.
    Missing,
}

/// The browser's side of a connection test (`test_result`): figures over the measuring window, each optional
/// (not measured). Ranges are checked by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestReport {
    /// Round-trip time to the server (ICE candidate pair), ms.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Percent of the packets sent that the server reported lost (remote-inbound-rtp).
    #[serde(default)]
    pub loss_up_percent: Option<f64>,
    /// Percent of the echoed packets that did not arrive (inbound-rtp).
    #[serde(default)]
    pub loss_down_percent: Option<f64>,
    /// Jitter of the echoed streams, ms (inbound-rtp).
    #[serde(default)]
    pub jitter_ms: Option<f64>,
    /// What the browser sent, kbit/s (outbound-rtp bytes over time).
    #[serde(default)]
    pub up_kbps: Option<f64>,
    /// What the browser received back, kbit/s (inbound-rtp bytes over time).
    #[serde(default)]
    pub down_kbps: Option<f64>,
    pub camera: DeviceCheck,
    pub microphone: DeviceCheck,
}

/// One graded measure of a connection test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Rtt,
    LossUp,
    LossDown,
    Jitter,
    Upload,
    Download,
    Camera,
    Microphone,
}

/// A measure, its value (absent: not measured) and its grade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub measure: Measure,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub level: QualityLevel,
}

impl ClientMessage {
    /// The `type` tag, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::JoinTest { .. } => "join_test",
            ClientMessage::PublishOffer { .. } => "publish_offer",
            ClientMessage::ScreenOffer { .. } => "screen_offer",
            ClientMessage::StopScreen {} => "stop_screen",
            ClientMessage::SubscribeAnswer { .. } => "subscribe_answer",
            ClientMessage::Candidate { .. } => "candidate",
            ClientMessage::MediaState { .. } => "media_state",
            ClientMessage::RequestKeyframe { .. } => "request_keyframe",
            ClientMessage::VideoSize { .. } => "video_size",
            ClientMessage::SetLayerCap { .. } => "set_layer_cap",
            ClientMessage::Leave {} => "leave",
            ClientMessage::Ping {} => "ping",
            ClientMessage::RaiseHand {} => "raise_hand",
            ClientMessage::LowerHand {} => "lower_hand",
            ClientMessage::GrantFloor { .. } => "grant_floor",
            ClientMessage::RevokeFloor { .. } => "revoke_floor",
            ClientMessage::SetMode { .. } => "set_mode",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::MuteAll {} => "mute_all",
            ClientMessage::AskUnmute { .. } => "ask_unmute",
            ClientMessage::Remove { .. } => "remove",
            ClientMessage::Lock { .. } => "lock",
            ClientMessage::EndMeeting {} => "end_meeting",
            ClientMessage::SetAbsenceReason { .. } => "set_absence_reason",
            ClientMessage::Chat { .. } => "chat",
            ClientMessage::TestResult { .. } => "test_result",
            ClientMessage::StartRecording {} => "start_recording",
            ClientMessage::StopRecording {} => "stop_recording",
        }
    }
}

/// How good a participant's link is, as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityLevel {
    Good,
    Fair,
    Poor,
}

/// Messages from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Reply to `join`: who you are, your role, the meeting, who is already here (with their tracks), the
    /// meeting state and the chat so far.
    Joined {
        participant_id: String,
        room: String,
        role: Role,
        /// Whether this participant may publish (observers and admins may not).
        can_publish: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meeting: Option<MeetingInfo>,
        participants: Vec<ParticipantInfo>,
        state: MeetingState,
        #[serde(default)]
        chat: Vec<ChatMessage>,
        /// TURN servers with this participant's time-limited credentials (absent when none is configured):
        /// the client gives them to its RTCPeerConnections.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// Publish the camera in three simulcast layers (`media.simulcast`).
        #[serde(default)]
        simulcast: bool,
    },
    /// The server's answer to `publish_offer`.
    PublishAnswer {
        sdp: String,
    },
    /// The server's answer to `screen_offer`.
    ScreenAnswer {
        sdp: String,
    },
    /// The server's offer for the subscribe connection; the client replies `subscribe_answer`. Sent whenever the
    /// set of tracks the client receives changes; at most one is outstanding at a time.
    SubscribeOffer {
        sdp: String,
    },
    /// A server candidate for one of the connections (normally already in the SDP: the server is ICE-lite).
    Candidate {
        leg: Leg,
        candidate: IceCandidate,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
    },
    TrackPublished {
        participant_id: String,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant_id: String,
        track_id: String,
    },
    MediaState {
        participant_id: String,
        mic: bool,
        camera: bool,
    },
    /// State of one of this client's connections as the server sees it.
    ConnectionState {
        leg: Leg,
        state: String,
    },
    Pong,
    /// The meeting's mode, lock, floor and queue changed (sent to everyone).
    MeetingState {
        state: MeetingState,
    },
    /// The roll call board changed (sent to chair, secretary, admin).
    RollCall {
        entries: Vec<RollCallEntry>,
    },
    /// Your microphone was muted by the chair; unmuting yourself (media_state mic=true) lifts it.
    Muted {
        by: String,
    },
    /// The chair asks you to unmute; you decide.
    UnmuteRequested {
        by: String,
    },
    /// A chat line.
    Chat {
        message: ChatMessage,
    },
    /// Your connection quality as the server measures it (every 2 s while connected).
    ConnectionQuality {
        level: QualityLevel,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rtt_ms: Option<u32>,
        /// Percent of packets lost (the worse direction).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss_percent: Option<f32>,
        bitrate_in: u64,
        bitrate_out: u64,
    },
    /// The connection test's verdict: the worst grade, and every measure graded (the browser shows advice for
    /// each one that is not good). Stored and shown to IT on the board.
    TestVerdict {
        verdict: QualityLevel,
        findings: Vec<Finding>,
    },
    /// The active speaker changed: the loudest participant who is heard (audio level above −45 dBov, confirmed at
    /// two looks 500 ms apart). Silence keeps the last speaker.
    ActiveSpeaker {
        participant_id: String,
    },
    /// The recording stopped by itself (a write error such as a full disk); the meeting goes on. Sent to the
    /// chair and admins.
    RecordingAlert {
        reason: String,
    },
    /// Which simulcast layers (rids) of your track someone receives (`active`: send them) and which nobody
    /// receives (`paused`: stop sending them), by `RTCRtpSender.setParameters` with `encodings[i].active`. Only
    /// layers the server has seen are named; leave a rid in neither list as it is (its first packet may still be
    /// on its way).
    Layers {
        track_id: String,
        source: TrackSource,
        active: Vec<String>,
        paused: Vec<String>,
    },
    /// Your link cannot carry this video now: the server paused it (audio goes on) — or resumed it.
    VideoPaused {
        track_id: String,
        paused: bool,
    },
    /// Whose camera and microphone you receive: `only` lists them in a large meeting (the chair and whoever holds
    /// the floor or is heard; every screen share besides); `null`: everyone's.
    Receiving {
        only: Option<Vec<String>>,
    },
    /// A request was refused; `code` is stable for programs, `message` is for people. The socket stays open
    /// unless the error is fatal to the session (then `bye` follows).
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The server ends this session. `rejoin` says whether the client should come back by itself (media lost,
    /// server restarting) or not (left, removed, replaced by a newer session, meeting ended).
    Bye {
        reason: String,
        #[serde(default)]
        rejoin: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON, or not a known message shape.
    BadMessage,
    /// Larger than `limits.max_message_bytes`.
    TooLarge,
    /// Valid, but not allowed in the session's current state (e.g. an offer before `join`).
    WrongState,
    /// A field's value is not acceptable (empty room name, bad SDP, unknown track).
    InvalidField,
    /// The room already holds `limits.max_participants_per_room` participants.
    RoomFull,
    /// The media plane could not do what was asked.
    Media,
    /// The server is shutting down.
    ShuttingDown,
    /// The join token is missing, forged, expired or for another meeting.
    Unauthorized,
    /// The sender's role may not do this (in this mode).
    Forbidden,
    /// The meeting is locked: no new joins.
    MeetingLocked,
    /// The meeting has ended.
    MeetingEnded,
    /// The chair removed this participant from the meeting.
    Removed,
    /// No such participant, endpoint or meeting.
    NotFound,
    /// Too many messages or join attempts; slow down.
    RateLimited,
    /// A per-participant limit (`limits.max_tracks_per_participant`) would be exceeded.
    LimitExceeded,
    /// The server failed to do it (e.g. the database could not be written); try again.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::Media => "media",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::MeetingLocked => "meeting_locked",
            ErrorCode::MeetingEnded => "meeting_ended",
            ErrorCode::Removed => "removed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_round_trips_with_type_tag() {
        let json = r#"{"type":"join","room":"ubnd","name":"Xã A"}"#;
        let msg: ClientMessage = serde_json::from_str(json).expect("valid join");
        assert_eq!(
            msg,
            ClientMessage::Join {
                room: Some("ubnd".into()),
                name: Some("Xã A".into()),
                token: None
            }
        );
        let json = r#"{"type":"grant_floor","participant_id":"p1","seconds":60}"#;
        let msg: ClientMessage = serde_json::from_str(json).expect("valid grant");
        assert_eq!(
            msg,
            ClientMessage::GrantFloor {
                participant_id: "p1".into(),
                seconds: Some(60)
            }
        );
        let json = r#"{"type":"set_mode","mode":"conference"}"#;
        assert!(serde_json::from_str::<ClientMessage>(json).is_ok());
    }

    #[test]
    fn unknown_type_and_unknown_field_are_rejected() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"fly"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"leave","x":1}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"ping","x":1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"ping"}"#).expect("ping"),
            ClientMessage::Ping {}
        );
        assert_eq!(
            serde_json::to_string(&ClientMessage::RaiseHand {}).expect("serializable"),
            r#"{"type":"raise_hand"}"#
        );
    }

    #[test]
    fn candidate_uses_browser_field_names() {
        let json = r#"{"type":"candidate","leg":"publish","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#;
        let msg: ClientMessage = serde_json::from_str(json).expect("valid candidate");
        match msg {
            ClientMessage::Candidate { leg, candidate } => {
                assert_eq!(leg, Leg::Publish);
                assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
                assert_eq!(candidate.sdp_m_line_index, Some(0));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn error_code_names_match_the_wire() {
        for code in [
            ErrorCode::BadMessage,
            ErrorCode::TooLarge,
            ErrorCode::WrongState,
            ErrorCode::InvalidField,
            ErrorCode::RoomFull,
            ErrorCode::Media,
            ErrorCode::ShuttingDown,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::MeetingLocked,
            ErrorCode::MeetingEnded,
            ErrorCode::Removed,
            ErrorCode::NotFound,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
        ] {
            let wire = serde_json::to_value(code).expect("serializable");
            assert_eq!(wire.as_str(), Some(code.as_str()));
        }
    }

    #[test]
    fn server_error_serializes_code_in_snake_case() {
        let s = serde_json::to_string(&ServerMessage::error(ErrorCode::RoomFull, "đầy"))
            .expect("serializable");
        assert_eq!(s, r#"{"type":"error","code":"room_full","message":"đầy"}"#);
    }
}

/// `docs/protocol.md` stays in step with the enums: every message type and error code the code knows is documented.
#[cfg(test)]
mod doc_sync {
    use super::*;

    const DOC: &str = include_str!("../../docs/protocol.md");

    /// The names serde accepts for an enum, read from its "unknown variant" error (`expected one of ...`).
    fn names_of<T: serde::de::DeserializeOwned>(json: &str) -> Vec<String> {
        let err = match serde_json::from_str::<T>(json) {
            Ok(_) => panic!("`{json}` parsed"),
            Err(e) => e.to_string(),
        };
        let list = err
            .split("expected one of ")
            .nth(1)
            .unwrap_or_else(|| panic!("no list in: {err}"));
        list.split(',')
            .map(|s| s.trim().trim_matches(|c| c == '`' || c == ' ').to_owned())
            .map(|s| s.split('`').next().unwrap_or("").to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    fn documented(name: &str) -> bool {
        DOC.contains(&format!("| `{name}` |"))
    }

    #[test]
    fn every_client_and_server_message_type_is_documented() {
        let client = names_of::<ClientMessage>(r#"{"type":"no_such_type"}"#);
        let server = names_of::<ServerMessage>(r#"{"type":"no_such_type"}"#);
        assert!(
            client.len() >= 20 && server.len() >= 18,
            "{client:?} {server:?}"
        );
        for name in client.iter().chain(server.iter()) {
            assert!(
                documented(name),
                "message type `{name}` is not in docs/protocol.md"
            );
        }
    }

    #[test]
    fn every_error_code_is_documented() {
        let codes = names_of::<ErrorCode>(r#""no_such_code""#);
        assert!(codes.len() >= 14, "{codes:?}");
        for code in &codes {
            assert!(
                documented(code),
                "error code `{code}` is not in docs/protocol.md"
            );
        }
    }
}
