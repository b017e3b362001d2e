//! The control protocol: one WebSocket per participant, JSON text frames, each a `ClientMessage` or a
//! `ServerMessage` tagged by `type`. Every variant is documented in `docs/protocol.md`; keep the two in step.

use serde::{Deserialize, Serialize};

/// Which of a participant's two connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Leg {
    /// The client offers and sends its camera and microphone.
    Publish,
    /// The server offers and sends every other participant's tracks.
    Subscribe,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
    pub mic: bool,
    pub camera: bool,
    pub tracks: Vec<TrackInfo>,
}

/// Messages from the browser (or a simulated endpoint) to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on a socket. `token` is accepted and ignored until meetings require it.
    Join {
        room: String,
        name: String,
        #[serde(default)]
        token: Option<String>,
    },
    /// The client's offer for its publish connection; the server replies `publish_answer`.
    PublishOffer { sdp: String },
    /// The client's answer to a `subscribe_offer`.
    SubscribeAnswer { sdp: String },
    /// A trickled ICE candidate of the client's, for one of its connections.
    Candidate { leg: Leg, candidate: IceCandidate },
    /// The client's microphone and camera switches, shown to everyone.
    MediaState { mic: bool, camera: bool },
    /// Ask for a keyframe of a track this client receives (the server throttles).
    RequestKeyframe { track_id: String },
    /// Leave the room; the server closes both connections.
    Leave,
    /// Keep-alive; the server answers `pong`.
    Ping,
}

/// Messages from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Reply to `join`: who you are and who is already here (with their tracks).
    Joined {
        participant_id: String,
        room: String,
        participants: Vec<ParticipantInfo>,
    },
    /// The server's answer to `publish_offer`.
    PublishAnswer { sdp: String },
    /// The server's offer for the subscribe connection; the client replies `subscribe_answer`. Sent whenever the
    /// set of tracks the client receives changes; at most one is outstanding at a time.
    SubscribeOffer { sdp: String },
    /// A server candidate for one of the connections (normally already in the SDP: the server is ICE-lite).
    Candidate { leg: Leg, candidate: IceCandidate },
    ParticipantJoined { participant: ParticipantInfo },
    ParticipantLeft { participant_id: String },
    TrackPublished { participant_id: String, track: TrackInfo },
    TrackUnpublished { participant_id: String, track_id: String },
    MediaState { participant_id: String, mic: bool, camera: bool },
    /// State of one of this client's connections as the server sees it.
    ConnectionState { leg: Leg, state: String },
    Pong,
    /// A request was refused; `code` is stable for programs, `message` is for people. The socket stays open
    /// unless the error is fatal to the session (then `bye` follows).
    Error { code: ErrorCode, message: String },
    /// The server ends this session (shutdown, removed, room closed).
    Bye { reason: String },
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
                room: "ubnd".into(),
                name: "Xã A".into(),
                token: None
            }
        );
    }

    #[test]
    fn unknown_type_and_unknown_field_are_rejected() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"fly"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"leave","x":1}"#).is_err());
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
    fn server_error_serializes_code_in_snake_case() {
        let s = serde_json::to_string(&ServerMessage::error(ErrorCode::RoomFull, "đầy"))
            .expect("serializable");
        assert_eq!(s, r#"{"type":"error","code":"room_full","message":"đầy"}"#);
    }
}
