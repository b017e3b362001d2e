//! The Hub: rooms and participants of the control plane. Every operation here happens once per control
//! message, never per packet. Each participant's outgoing messages go through its own queue to its WebSocket.

use crate::protocol::{ErrorCode, ParticipantInfo, ServerMessage, TrackInfo, TrackKind};
use dashmap::DashMap;
use giaoban_config::Config;
use giaoban_sfu::{Command, Event, MediaKind, SfuHandle};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// What a session's writer task receives.
#[derive(Debug)]
pub enum Outgoing {
    Message(ServerMessage),
    /// Close the socket after what is queued.
    Close,
}

pub type Outbox = mpsc::UnboundedSender<Outgoing>;

struct Member {
    info: ParticipantInfo,
    outbox: Outbox,
}

#[derive(Default)]
struct Room {
    members: Vec<Member>,
}

/// Rooms as the API shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoomView {
    pub room: String,
    pub participants: Vec<ParticipantInfo>,
}

pub struct Hub {
    pub config: Arc<Config>,
    pub sfu: SfuHandle,
    rooms: DashMap<String, Room>,
    /// participant id → room name.
    rooms_of: DashMap<String, String>,
    shutting_down: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("room `{0}` is full")]
    RoomFull(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl JoinError {
    pub fn code(&self) -> ErrorCode {
        match self {
            JoinError::RoomFull(_) => ErrorCode::RoomFull,
            JoinError::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }
}

impl Hub {
    pub fn new(config: Arc<Config>, sfu: SfuHandle) -> Self {
        Hub {
            config,
            sfu,
            rooms: DashMap::new(),
            rooms_of: DashMap::new(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Add a participant; returns who was already there. Everyone else hears `participant_joined`.
    pub fn join(
        &self,
        room: &str,
        id: &str,
        name: &str,
        outbox: Outbox,
    ) -> Result<Vec<ParticipantInfo>, JoinError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(JoinError::ShuttingDown);
        }
        let info = ParticipantInfo {
            id: id.to_owned(),
            name: name.to_owned(),
            mic: true,
            camera: true,
            tracks: Vec::new(),
        };
        let others = {
            let mut r = self.rooms.entry(room.to_owned()).or_default();
            if r.members.len() >= self.config.limits.max_participants_per_room {
                return Err(JoinError::RoomFull(room.to_owned()));
            }
            let others: Vec<ParticipantInfo> = r.members.iter().map(|m| m.info.clone()).collect();
            for m in &r.members {
                let _ = m.outbox.send(Outgoing::Message(ServerMessage::ParticipantJoined {
                    participant: info.clone(),
                }));
            }
            r.members.push(Member { info, outbox });
            others
        };
        self.rooms_of.insert(id.to_owned(), room.to_owned());
        let _ = self.sfu.send(Command::Join {
            participant: id.to_owned(),
            room: room.to_owned(),
        });
        info!(%room, participant = %id, %name, "joined");
        Ok(others)
    }

    /// Remove a participant (idempotent). Everyone else hears `participant_left`.
    pub fn leave(&self, id: &str) {
        let Some((_, room)) = self.rooms_of.remove(id) else {
            return;
        };
        let _ = self.sfu.send(Command::Leave {
            participant: id.to_owned(),
        });
        let empty = {
            let Some(mut r) = self.rooms.get_mut(&room) else {
                return;
            };
            r.members.retain(|m| m.info.id != id);
            for m in &r.members {
                let _ = m.outbox.send(Outgoing::Message(ServerMessage::ParticipantLeft {
                    participant_id: id.to_owned(),
                }));
            }
            r.members.is_empty()
        };
        if empty {
            self.rooms.remove_if(&room, |_, r| r.members.is_empty());
        }
        info!(%room, participant = %id, "left");
    }

    /// Change a member's info and tell the others in its room.
    fn update_and_tell_others(
        &self,
        id: &str,
        update: impl FnOnce(&mut ParticipantInfo),
        message: impl Fn() -> ServerMessage,
    ) {
        let Some(room) = self.rooms_of.get(id).map(|r| r.clone()) else {
            return;
        };
        let Some(mut r) = self.rooms.get_mut(&room) else {
            return;
        };
        if let Some(m) = r.members.iter_mut().find(|m| m.info.id == id) {
            update(&mut m.info);
        }
        for m in r.members.iter().filter(|m| m.info.id != id) {
            let _ = m.outbox.send(Outgoing::Message(message()));
        }
    }

    pub fn set_media_state(&self, id: &str, mic: bool, camera: bool) {
        self.update_and_tell_others(
            id,
            |info| {
                info.mic = mic;
                info.camera = camera;
            },
            || ServerMessage::MediaState {
                participant_id: id.to_owned(),
                mic,
                camera,
            },
        );
    }

    /// Send to one participant.
    pub fn send_to(&self, id: &str, message: ServerMessage) {
        let Some(room) = self.rooms_of.get(id).map(|r| r.clone()) else {
            return;
        };
        if let Some(r) = self.rooms.get(&room)
            && let Some(m) = r.members.iter().find(|m| m.info.id == id)
        {
            let _ = m.outbox.send(Outgoing::Message(message));
        }
    }

    fn close(&self, id: &str, reason: &str) {
        self.send_to(
            id,
            ServerMessage::Bye {
                reason: reason.to_owned(),
            },
        );
        if let Some(room) = self.rooms_of.get(id).map(|r| r.clone())
            && let Some(r) = self.rooms.get(&room)
            && let Some(m) = r.members.iter().find(|m| m.info.id == id)
        {
            let _ = m.outbox.send(Outgoing::Close);
        }
    }

    /// What the media plane reports, turned into messages.
    pub fn on_media_event(&self, event: Event) {
        match event {
            Event::SubscribeOffer { participant, sdp } => {
                self.send_to(&participant, ServerMessage::SubscribeOffer { sdp });
            }
            Event::TrackPublished { participant, track } => {
                let info = TrackInfo {
                    id: track.id,
                    kind: match track.kind {
                        MediaKind::Audio => TrackKind::Audio,
                        MediaKind::Video => TrackKind::Video,
                    },
                    codec: track.mime_type,
                };
                let for_others = info.clone();
                self.update_and_tell_others(
                    &participant,
                    |p| p.tracks.push(info),
                    || ServerMessage::TrackPublished {
                        participant_id: participant.clone(),
                        track: for_others.clone(),
                    },
                );
            }
            Event::TrackUnpublished {
                participant,
                track_id,
            } => {
                self.update_and_tell_others(
                    &participant,
                    |p| p.tracks.retain(|t| t.id != track_id),
                    || ServerMessage::TrackUnpublished {
                        participant_id: participant.clone(),
                        track_id: track_id.clone(),
                    },
                );
            }
            Event::ConnectionState {
                participant,
                leg,
                state,
            } => {
                let leg = match leg {
                    giaoban_sfu::Leg::Publish => crate::protocol::Leg::Publish,
                    giaoban_sfu::Leg::Subscribe => crate::protocol::Leg::Subscribe,
                };
                self.send_to(&participant, ServerMessage::ConnectionState { leg, state });
            }
            Event::ParticipantFailed {
                participant,
                reason,
            } => {
                warn!(%participant, %reason, "media connection lost; removing participant");
                self.close(&participant, &format!("media connection lost: {reason}"));
                self.leave(&participant);
            }
        }
    }

    pub fn rooms(&self) -> Vec<RoomView> {
        let mut rooms: Vec<RoomView> = self
            .rooms
            .iter()
            .map(|r| RoomView {
                room: r.key().clone(),
                participants: r.members.iter().map(|m| m.info.clone()).collect(),
            })
            .collect();
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        rooms
    }

    pub fn participant_count(&self) -> usize {
        self.rooms_of.len()
    }

    /// Tell everyone the server is stopping and close their sockets; refuse new joins.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let ids: Vec<String> = self.rooms_of.iter().map(|e| e.key().clone()).collect();
        for id in ids {
            self.close(&id, "server shutting down");
            self.leave(&id);
        }
        let _ = self.sfu.send(Command::Shutdown);
    }
}
