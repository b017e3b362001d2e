//! The Hub: rooms, their members and, for meetings, the live meeting (rules, roll call, chat). Every operation
//! here happens once per control message, never per packet. Each member's outgoing messages go through its own
//! queue to its WebSocket. The media plane learns what to forward through `ForwardPolicy` updates.

use crate::auth::{Auth, Claims};
use crate::protocol::{
    ChatMessage, ErrorCode, FloorHolder, MeetingInfo, MeetingMode, MeetingState, ParticipantInfo,
    Presence, RaisedHand, Role, RollCallEntry, ServerMessage, TrackInfo, TrackKind, TrackSource,
};
use crate::rules::{self, Floor};
use crate::store::{self, Store};
use dashmap::DashMap;
use giaoban_config::Config;
use giaoban_sfu::{
    Command, Event, ForwardPolicy, MediaKind, MediaSource, ReceivePolicy, SfuHandle,
};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// What a session's writer task receives.
#[derive(Debug)]
pub enum Outgoing {
    Message(Box<ServerMessage>),
    /// Close the socket after what is queued.
    Close,
}

pub type Outbox = mpsc::UnboundedSender<Outgoing>;

/// Who a session is, once joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub participant_id: String,
    /// The room key: the meeting id for meetings, the typed name for open rooms.
    pub room: String,
    pub meeting: Option<String>,
    /// The endpoint or person named by the token (for open rooms: the participant id).
    pub subject: String,
    pub name: String,
    pub role: Role,
}

pub(crate) struct Member {
    pub(crate) identity: Identity,
    pub(crate) info: ParticipantInfo,
    pub(crate) outbox: Outbox,
    pub(crate) policy: ForwardPolicy,
    /// Whose tracks it receives (`receive_for`).
    pub(crate) receive: ReceivePolicy,
    attendance_row: Option<i64>,
    /// Its socket closed or its media connection failed without a `leave`, this long ago: it stays in the room
    /// (the others' pictures of it freeze) for the resume grace (`limits.resume_grace_secs`), so the hall can come back as itself.
    away_since: Option<Instant>,
    /// Resumed by a new session; the media plane's events about its old connections may still come, until
    /// `Event::Joined`.
    resuming: bool,
}

/// A meeting in progress (rooms joined by token).
pub(crate) struct LiveMeeting {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) floor: Floor,
    /// The recording in progress, if any.
    pub(crate) recording: Option<crate::recording::Active>,
}

pub(crate) struct Room {
    pub(crate) members: Vec<Member>,
    pub(crate) meeting: Option<LiveMeeting>,
}

/// Rooms as the API shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoomView {
    pub room: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meeting: Option<MeetingInfo>,
    pub participants: Vec<ParticipantInfo>,
}

/// A refused join: the code for the client and the reason (also audited).
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// What `join` needs to know.
pub struct JoinRequest {
    pub participant_id: String,
    pub room: Option<String>,
    pub name: Option<String>,
    pub token: Option<String>,
    /// The browser's User-Agent (shown to IT on the board).
    pub user_agent: Option<String>,
}

/// What the board shows of a participant's client beyond its link: its browser, how long it has been here.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub user_agent: Option<String>,
    pub since: Instant,
}

pub struct Hub {
    pub config: Arc<Config>,
    pub sfu: SfuHandle,
    pub store: Arc<Store>,
    pub auth: Arc<Auth>,
    /// Base URL of join links, e.g. `https://10.0.0.5:8080`.
    pub public_url: String,
    pub metrics: crate::metrics::SignalingMetrics,
    pub client_limits: Arc<crate::limits::ClientLimits>,
    pub(crate) rooms: DashMap<String, Room>,
    /// participant id → room key.
    rooms_of: DashMap<String, String>,
    /// participant id → its client (browser, joined when).
    pub(crate) clients: DashMap<String, ClientInfo>,
    /// participant id → its connection test, for sessions that joined with `join_test`.
    pub(crate) tests: DashMap<String, crate::pretest::TestSession>,
    /// Each live participant's last link verdict, so a change to poor (and back) is logged once.
    pub(crate) link_levels: DashMap<String, crate::protocol::QualityLevel>,
    /// Each room's active speaker (see `speaker.rs`).
    pub(crate) speakers: DashMap<String, crate::speaker::Speaker>,
    shutting_down: AtomicBool,
    /// Stopped recordings whose files the media plane is still finishing, by folder.
    pub(crate) finishing_recordings:
        std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, crate::recording::Active>>,
}

/// What became of a member whose connection dropped.
enum Away {
    /// It stays in the room for the resume grace (`limits.resume_grace_secs`).
    Kept,
    /// It leaves now (it cannot come back as itself).
    Leave,
    /// No such member, or a newer session has taken it over.
    NotOurs,
}

/// How many chat lines a joiner gets.
const CHAT_HISTORY: usize = 200;

impl Hub {
    pub fn new(
        config: Arc<Config>,
        sfu: SfuHandle,
        store: Arc<Store>,
        auth: Arc<Auth>,
        public_url: String,
    ) -> Self {
        let client_limits = crate::limits::ClientLimits::new(
            config.limits.max_connections_per_ip,
            config.limits.joins_per_minute_per_ip,
        );
        Hub {
            config,
            sfu,
            store,
            auth,
            public_url,
            metrics: Default::default(),
            client_limits,
            rooms: DashMap::new(),
            rooms_of: DashMap::new(),
            clients: DashMap::new(),
            tests: DashMap::new(),
            link_levels: DashMap::new(),
            speakers: DashMap::new(),
            shutting_down: AtomicBool::new(false),
            finishing_recordings: Default::default(),
        }
    }

    /// Write an audit entry; a failing audit write is logged, never fatal.
    pub fn audit(
        &self,
        identity: Option<&Identity>,
        meeting: Option<&str>,
        action: &str,
        detail: &str,
        outcome: &str,
    ) {
        let actor = identity.map_or("anonymous", |i| i.subject.as_str());
        let meeting = meeting.or(identity.and_then(|i| i.meeting.as_deref()));
        if let Err(e) = self.store.audit(
            meeting,
            actor,
            identity.map(|i| i.role),
            action,
            detail,
            outcome,
        ) {
            warn!(error = %e, "audit write failed");
        }
    }

    /// Work out who is joining (token or open room) and admit them, or say why not.
    /// On success the participant's queue already holds `joined`.
    pub fn join(&self, req: JoinRequest, outbox: Outbox) -> Result<Identity, Refusal> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(Refusal::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
        let max = self.config.limits.max_name_chars;
        let (identity, meeting) = match &req.token {
            Some(token) => {
                let claims = self.verify_join_token(token, req.room.as_deref())?;
                let meeting_id = if claims.mtg == crate::auth::ANY_MEETING {
                    req.room.clone().ok_or_else(|| {
                        Refusal::new(
                            ErrorCode::InvalidField,
                            "an admin token needs `room` (the meeting id) to join",
                        )
                    })?
                } else {
                    claims.mtg.clone()
                };
                let meeting = self.store.meeting(&meeting_id).map_err(|_| {
                    let r = Refusal::new(
                        ErrorCode::NotFound,
                        format!("meeting {meeting_id} does not exist"),
                    );
                    self.audit(None, Some(&meeting_id), "join", &r.message, "refused");
                    r
                })?;
                let identity = Identity {
                    participant_id: req.participant_id.clone(),
                    room: meeting.id.clone(),
                    meeting: Some(meeting.id.clone()),
                    subject: claims.sub.clone(),
                    name: claims.name.chars().take(max).collect(),
                    role: claims.role,
                };
                (identity, Some(meeting))
            }
            None => {
                if !self.config.auth.open_rooms {
                    let r = Refusal::new(
                        ErrorCode::Unauthorized,
                        "this server needs a join link (token); open rooms are disabled",
                    );
                    self.audit(None, None, "join", &r.message, "refused");
                    return Err(r);
                }
                let room =
                    crate::session::check_name("room", req.room.as_deref().unwrap_or(""), max)
                        .map_err(|e| Refusal::new(ErrorCode::InvalidField, e))?;
                let name =
                    crate::session::check_name("name", req.name.as_deref().unwrap_or(""), max)
                        .map_err(|e| Refusal::new(ErrorCode::InvalidField, e))?;
                if crate::pretest::is_test_room(&room) {
                    return Err(Refusal::new(
                        ErrorCode::InvalidField,
                        format!(
                            "room names starting with `{}` are reserved for connection tests",
                            crate::pretest::TEST_ROOM_PREFIX
                        ),
                    ));
                }
                if self.store.meeting(&room).is_ok() {
                    return Err(Refusal::new(
                        ErrorCode::Unauthorized,
                        "this room is a meeting: join it with its link",
                    ));
                }
                let identity = Identity {
                    participant_id: req.participant_id.clone(),
                    room,
                    meeting: None,
                    subject: req.participant_id.clone(),
                    name,
                    role: Role::Endpoint,
                };
                (identity, None)
            }
        };
        let identity = self.admit(identity, meeting, outbox)?;
        // A resumed participant keeps the time it first joined.
        let since = self
            .clients
            .get(&identity.participant_id)
            .map_or_else(Instant::now, |c| c.since);
        self.clients.insert(
            identity.participant_id.clone(),
            ClientInfo {
                user_agent: req.user_agent,
                since,
            },
        );
        Ok(identity)
    }

    /// A connection test (`join_test`) with a meeting's join link: the participant is alone in a private room
    /// whose media is echoed back to it; it is not in the meeting, on its attendance or in the room list.
    pub fn join_test(
        &self,
        participant_id: String,
        token: &str,
        user_agent: Option<String>,
        outbox: Outbox,
    ) -> Result<Identity, Refusal> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(Refusal::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
        let claims = self.verify_join_token(token, None)?;
        if claims.mtg == crate::auth::ANY_MEETING || !rules::can_publish(claims.role) {
            let message = format!(
                "role {:?} sends no media, so it has nothing to test; use a hall's join link",
                claims.role
            )
            .to_lowercase();
            self.audit(
                None,
                Some(&claims.mtg),
                "connection test",
                &message,
                "refused",
            );
            return Err(Refusal::new(ErrorCode::Forbidden, message));
        }
        let meeting = self.store.meeting(&claims.mtg).map_err(|_| {
            Refusal::new(
                ErrorCode::NotFound,
                format!("meeting {} does not exist", claims.mtg),
            )
        })?;
        if meeting.status == "ended" {
            return Err(Refusal::new(
                ErrorCode::MeetingEnded,
                "the meeting has ended",
            ));
        }
        if self.tests.len() >= crate::pretest::MAX_CONCURRENT_TESTS {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "{} connection tests are running; try again in a minute",
                    crate::pretest::MAX_CONCURRENT_TESTS
                ),
            ));
        }
        let room_key = format!("{}{participant_id}", crate::pretest::TEST_ROOM_PREFIX);
        let identity = Identity {
            participant_id: participant_id.clone(),
            room: room_key.clone(),
            // Not in the meeting: no attendance, no meeting state, no roll call.
            meeting: None,
            subject: claims.sub.clone(),
            name: claims
                .name
                .chars()
                .take(self.config.limits.max_name_chars)
                .collect(),
            role: claims.role,
        };
        let policy = ForwardPolicy::OPEN;
        let mut room = Room {
            members: Vec::new(),
            meeting: None,
        };
        send(
            &outbox,
            ServerMessage::Joined {
                participant_id: participant_id.clone(),
                room: room_key.clone(),
                role: identity.role,
                can_publish: true,
                meeting: Some(MeetingInfo {
                    id: meeting.id.clone(),
                    title: meeting.title.clone(),
                }),
                participants: Vec::new(),
                state: meeting_state(&room, Instant::now()),
                chat: Vec::new(),
                // A hall behind a closed firewall tests through TURN as it would meet through it.
                ice_servers: crate::turn::ice_servers(
                    &self.config.turn,
                    &participant_id,
                    crate::turn::unix_now(),
                ),
                // The connection test measures the link, one layer is enough.
                simulcast: false,
            },
        );
        room.members.push(Member {
            identity: identity.clone(),
            info: ParticipantInfo {
                id: participant_id.clone(),
                name: identity.name.clone(),
                role: identity.role,
                mic: true,
                camera: true,
                tracks: Vec::new(),
            },
            outbox,
            policy,
            receive: ReceivePolicy::Everyone,
            attendance_row: None,
            away_since: None,
            resuming: false,
        });
        self.tests.insert(
            participant_id.clone(),
            crate::pretest::TestSession::new(meeting.id.clone()),
        );
        self.clients.insert(
            participant_id.clone(),
            ClientInfo {
                user_agent,
                since: Instant::now(),
            },
        );
        self.rooms.insert(room_key.clone(), room);
        self.rooms_of
            .insert(participant_id.clone(), room_key.clone());
        let _ = self.sfu.send(Command::Join {
            participant: participant_id.clone(),
            room: room_key,
            policy,
            receive: ReceivePolicy::Everyone,
            echo: true,
        });
        self.audit(
            Some(&identity),
            Some(&meeting.id),
            "connection test",
            "started",
            "ok",
        );
        info!(participant = %participant_id, name = %identity.name, meeting = %meeting.id, "connection test started");
        Ok(identity)
    }

    /// A connection test's result from the browser: checked, completed with the server's own view of the
    /// connection, graded against `[health]`, stored; the reply is `test_verdict`.
    pub async fn test_result(
        &self,
        who: &Identity,
        report: crate::protocol::TestReport,
    ) -> Result<ServerMessage, Refusal> {
        use crate::pretest;
        let meeting_id = {
            let Some(t) = self.tests.get(&who.participant_id) else {
                return Err(Refusal::new(
                    ErrorCode::WrongState,
                    "test_result belongs to a connection test (join_test), not to a meeting session",
                ));
            };
            if t.results >= pretest::MAX_RESULTS_PER_TEST {
                return Err(Refusal::new(
                    ErrorCode::RateLimited,
                    format!(
                        "a test connection stores at most {} results; start a new test",
                        pretest::MAX_RESULTS_PER_TEST
                    ),
                ));
            }
            t.meeting_id.clone()
        };
        pretest::validate(&report).map_err(|e| Refusal::new(ErrorCode::InvalidField, e))?;
        // Only results that will be stored count against the limit.
        if let Some(mut t) = self.tests.get_mut(&who.participant_id) {
            t.results += 1;
        }
        let server = self
            .sfu
            .links()
            .await
            .ok()
            .and_then(|all| {
                let now = Instant::now();
                let start = self
                    .tests
                    .get(&who.participant_id)
                    .and_then(|t| t.window_start(now));
                all.iter()
                    .find(|l| l.participant == who.participant_id)
                    .map(|l| pretest::ServerView::over(l, start, now))
            })
            .unwrap_or_default();
        let (verdict, findings) = pretest::grade(&report, &server, &self.config.health);
        let level = |l: crate::protocol::QualityLevel| {
            serde_json::to_value(l)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let device = |d: crate::protocol::DeviceCheck| {
            serde_json::to_value(d)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let row = store::ConnectionTest {
            meeting_id: meeting_id.clone(),
            meeting_title: String::new(),
            subject: who.subject.clone(),
            name: who.name.clone(),
            role: store::role_str(who.role).to_owned(),
            at: store::now_rfc3339(),
            verdict: level(verdict),
            rtt_ms: report.rtt_ms,
            loss_up_percent: report.loss_up_percent,
            loss_down_percent: report.loss_down_percent,
            jitter_ms: report.jitter_ms,
            up_kbps: report.up_kbps,
            down_kbps: report.down_kbps,
            server_up_kbps: server.up_kbps,
            server_down_kbps: server.down_kbps,
            server_loss_up_percent: server.loss_up_percent,
            camera: device(report.camera),
            microphone: device(report.microphone),
            browser: self
                .clients
                .get(&who.participant_id)
                .and_then(|c| c.user_agent.clone()),
            findings: serde_json::to_value(&findings).unwrap_or_default(),
        };
        if let Err(e) = self.store.add_connection_test(&row) {
            warn!(error = %e, "connection test result not stored");
            return Err(Refusal::new(
                ErrorCode::Internal,
                format!("the result could not be stored: {e}"),
            ));
        }
        self.audit(
            Some(who),
            Some(&meeting_id),
            "connection test",
            &format!("verdict {}", row.verdict),
            "ok",
        );
        Ok(ServerMessage::TestVerdict { verdict, findings })
    }

    fn verify_join_token(&self, token: &str, room: Option<&str>) -> Result<Claims, Refusal> {
        let result = match room {
            Some(room) => self.auth.verify_for(token, room),
            None => self.auth.verify(token),
        };
        result.map_err(|e| {
            let r = Refusal::new(ErrorCode::Unauthorized, format!("join refused: {e}"));
            self.audit(None, room, "join", &r.message, "refused");
            r
        })
    }

    fn admit(
        &self,
        mut identity: Identity,
        meeting: Option<store::Meeting>,
        outbox: Outbox,
    ) -> Result<Identity, Refusal> {
        let room_key = identity.room.clone();
        let mut replaced: Vec<Member> = Vec::new();
        {
            let mut room = self.rooms.entry(room_key.clone()).or_insert_with(|| Room {
                members: Vec::new(),
                meeting: meeting.as_ref().map(|m| LiveMeeting {
                    id: m.id.clone(),
                    title: m.title.clone(),
                    floor: Floor::new(m.mode),
                    recording: None,
                }),
            });
            if let Some(m) = &meeting
                && m.status == "ended"
            {
                drop(room);
                return Err(self.refuse_join(
                    &identity,
                    ErrorCode::MeetingEnded,
                    "the meeting has ended",
                ));
            }
            if let Some(live) = &room.meeting {
                let f = &live.floor;
                if f.ended {
                    drop(room);
                    return Err(self.refuse_join(
                        &identity,
                        ErrorCode::MeetingEnded,
                        "the meeting has ended",
                    ));
                }
                if f.is_removed(&identity.subject) {
                    drop(room);
                    return Err(self.refuse_join(
                        &identity,
                        ErrorCode::Removed,
                        "the chair removed you from this meeting",
                    ));
                }
                if f.locked
                    && f.role_of(&identity.subject).is_none()
                    && !matches!(identity.role, Role::Chair | Role::Admin)
                {
                    drop(room);
                    return Err(self.refuse_join(
                        &identity,
                        ErrorCode::MeetingLocked,
                        "the meeting is locked",
                    ));
                }
            }
            // A new session of the same identity replaces the old one (a hall reconnecting); observers and admins
            // may watch from several places at once.
            if identity.meeting.is_some() && !matches!(identity.role, Role::Observer | Role::Admin)
            {
                let (old, keep): (Vec<Member>, Vec<Member>) = std::mem::take(&mut room.members)
                    .into_iter()
                    .partition(|m| m.identity.subject == identity.subject);
                room.members = keep;
                replaced = old;
            }
            // The same identity comes back (its page reconnected after the link dropped, or a second tab): it
            // resumes the old participant — same id, same tile at the others, nobody sees it leave and join.
            let resumed = replaced.first().map(|old| {
                identity.participant_id = old.identity.participant_id.clone();
                old.attendance_row
            });
            if room.members.len() >= self.config.limits.max_participants_per_room {
                room.members.append(&mut replaced);
                let full = format!("room `{room_key}` is full");
                drop(room);
                return Err(self.refuse_join(&identity, ErrorCode::RoomFull, &full));
            }
            let room = &mut *room;
            if let Some(live) = room.meeting.as_mut() {
                live.floor.note_role(&identity.subject, identity.role);
                if resumed.is_none() {
                    crate::recording::note_join(live, &identity);
                }
            }
            let policy = policy_for(room.meeting.as_ref().map(|m| &m.floor), &identity);
            let info = ParticipantInfo {
                id: identity.participant_id.clone(),
                name: identity.name.clone(),
                role: identity.role,
                // Observers and admins publish nothing.
                mic: policy.can_publish,
                camera: policy.can_publish,
                tracks: Vec::new(),
            };
            let others: Vec<ParticipantInfo> =
                room.members.iter().map(|m| m.info.clone()).collect();
            if resumed.is_none() {
                for m in &room.members {
                    send(
                        &m.outbox,
                        ServerMessage::ParticipantJoined {
                            participant: info.clone(),
                        },
                    );
                }
            }
            let attendance_row = match resumed {
                Some(row) => row,
                None => identity.meeting.as_ref().and_then(|mid| {
                    self.store
                        .attendance_join(mid, &identity.subject, &identity.name, identity.role)
                        .map_err(|e| warn!(error = %e, "attendance not recorded"))
                        .ok()
                }),
            };
            let chat = identity
                .meeting
                .as_deref()
                .and_then(|mid| self.store.chat(mid, CHAT_HISTORY).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|c| ChatMessage {
                    from_id: c.from_subject,
                    from_name: c.from_name,
                    text: c.text,
                    at: c.at,
                })
                .collect();
            // `joined` goes first on the participant's queue, before anything the media plane will say to it
            // (its first `subscribe_offer` can follow within a millisecond of the `Join` command).
            send(
                &outbox,
                ServerMessage::Joined {
                    participant_id: identity.participant_id.clone(),
                    room: room_key.clone(),
                    role: identity.role,
                    can_publish: policy.can_publish,
                    meeting: room.meeting.as_ref().map(|m| MeetingInfo {
                        id: m.id.clone(),
                        title: m.title.clone(),
                    }),
                    participants: others,
                    state: meeting_state(room, Instant::now()),
                    chat,
                    ice_servers: crate::turn::ice_servers(
                        &self.config.turn,
                        &identity.participant_id,
                        crate::turn::unix_now(),
                    ),
                    simulcast: self.config.media.simulcast,
                },
            );
            self.rooms_of
                .insert(identity.participant_id.clone(), room_key.clone());
            room.members.push(Member {
                identity: identity.clone(),
                info,
                outbox,
                policy,
                receive: ReceivePolicy::Everyone,
                attendance_row,
                away_since: None,
                resuming: resumed.is_some(),
            });
            // Whose tracks it receives, with itself counted among the halls; the others' follow in `after_change`.
            let receive = receive_for(room, &identity, self.config.media.every_hall_up_to);
            if let Some(m) = room.members.last_mut() {
                if receive != ReceivePolicy::Everyone {
                    send(&m.outbox, receiving_message(&receive));
                }
                m.receive = receive.clone();
            }
            // For a resumed participant the media plane drops its old connections and producers (the others get
            // `track_unpublished`, then the new tracks).
            let _ = self.sfu.send(Command::Join {
                participant: identity.participant_id.clone(),
                room: room_key.clone(),
                policy,
                receive,
                echo: false,
            });
        }

        for (i, old) in replaced.into_iter().enumerate() {
            info!(participant = %old.identity.participant_id, "replaced by a new session of the same identity");
            send(
                &old.outbox,
                ServerMessage::Bye {
                    reason: "replaced by a new connection".into(),
                    rejoin: false,
                },
            );
            let _ = old.outbox.send(Outgoing::Close);
            if i == 0 {
                // Resumed: the new session is this participant now.
                continue;
            }
            self.rooms_of.remove(&old.identity.participant_id);
            self.forget_member(&room_key, old);
        }
        if let Some(mid) = &identity.meeting {
            if let Err(e) = self.store.set_meeting_status(mid, "live") {
                warn!(error = %e, "meeting status not saved");
            }
            self.audit(Some(&identity), None, "join", &identity.name, "ok");
        }
        info!(room = %room_key, participant = %identity.participant_id, name = %identity.name, role = ?identity.role, "joined");
        self.after_change(&room_key);
        Ok(identity)
    }

    fn refuse_join(&self, identity: &Identity, code: ErrorCode, message: &str) -> Refusal {
        self.audit(Some(identity), None, "join", message, "refused");
        Refusal::new(code, message)
    }

    /// A session's socket closed without `leave` (`outbox`: that session's queue). A meeting member (chair,
    /// secretary, endpoint) stays in the room for the resume grace (`limits.resume_grace_secs`) in case it comes back; anyone else leaves now.
    /// Nothing happens when a newer session of the same identity has taken the participant over.
    pub fn session_ended(&self, participant_id: &str, outbox: &Outbox) {
        match self.mark_away(participant_id, Some(outbox)) {
            Away::Kept => {
                info!(participant = %participant_id, "connection lost; waiting for it to come back")
            }
            Away::NotOurs => {}
            Away::Leave => self.leave(participant_id),
        }
    }

    /// Whether `outbox` is still the session of this participant (it was not taken over by a newer one).
    pub fn is_current(&self, participant_id: &str, outbox: &Outbox) -> bool {
        let Some(room_key) = self.rooms_of.get(participant_id).map(|r| r.clone()) else {
            return false;
        };
        self.rooms.get(&room_key).is_some_and(|room| {
            room.members.iter().any(|m| {
                m.identity.participant_id == participant_id && m.outbox.same_channel(outbox)
            })
        })
    }

    /// Mark a member away (its connection dropped), if it may come back as itself: a meeting member that is not
    /// an observer, admin or connection test. `outbox`: only if that is still its session.
    fn mark_away(&self, participant_id: &str, outbox: Option<&Outbox>) -> Away {
        let Some(room_key) = self.rooms_of.get(participant_id).map(|r| r.clone()) else {
            return Away::NotOurs;
        };
        let Some(mut room) = self.rooms.get_mut(&room_key) else {
            return Away::NotOurs;
        };
        let Some(m) = room
            .members
            .iter_mut()
            .find(|m| m.identity.participant_id == participant_id)
        else {
            return Away::NotOurs;
        };
        if outbox.is_some_and(|o| !m.outbox.same_channel(o)) {
            return Away::NotOurs;
        }
        let resumable = m.identity.meeting.is_some()
            && !matches!(m.identity.role, Role::Observer | Role::Admin)
            && !self.tests.contains_key(participant_id);
        if !resumable {
            return Away::Leave;
        }
        m.away_since.get_or_insert_with(Instant::now);
        Away::Kept
    }

    /// Members away for longer than the resume grace (`limits.resume_grace_secs`) leave (called on a timer).
    pub fn expire_away(&self) {
        let now = Instant::now();
        let grace = Duration::from_secs(self.config.limits.resume_grace_secs);
        let gone: Vec<String> = self
            .rooms
            .iter()
            .flat_map(|room| {
                room.members
                    .iter()
                    .filter(|m| m.away_since.is_some_and(|t| now.duration_since(t) >= grace))
                    .map(|m| m.identity.participant_id.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for id in gone {
            info!(participant = %id, "did not come back; removed");
            self.leave(&id);
        }
    }

    /// Remove a participant (idempotent). Everyone else hears `participant_left`.
    pub fn leave(&self, participant_id: &str) {
        let Some((_, room_key)) = self.rooms_of.remove(participant_id) else {
            return;
        };
        let member = {
            let Some(mut room) = self.rooms.get_mut(&room_key) else {
                return;
            };
            let Some(pos) = room
                .members
                .iter()
                .position(|m| m.identity.participant_id == participant_id)
            else {
                return;
            };
            let member = room.members.remove(pos);
            if let Some(live) = room.meeting.as_mut() {
                crate::recording::note_leave(live, &member.identity);
            }
            member
        };
        self.forget_member(&room_key, member);
        self.after_change(&room_key);
    }

    /// A member is out of its room: media plane, attendance, the others, an empty room.
    fn forget_member(&self, room_key: &str, member: Member) {
        let id = &member.identity.participant_id;
        self.tests.remove(id);
        self.clients.remove(id);
        let _ = self.sfu.send(Command::Leave {
            participant: id.clone(),
        });
        if let Some(row) = member.attendance_row
            && let Err(e) = self.store.attendance_leave(row)
        {
            warn!(error = %e, "attendance leave not recorded");
        }
        let empty = match self.rooms.get(room_key) {
            Some(room) => {
                for m in &room.members {
                    for t in &member.info.tracks {
                        send(
                            &m.outbox,
                            ServerMessage::TrackUnpublished {
                                participant_id: id.clone(),
                                track_id: t.id.clone(),
                            },
                        );
                    }
                    send(
                        &m.outbox,
                        ServerMessage::ParticipantLeft {
                            participant_id: id.clone(),
                        },
                    );
                }
                room.members.is_empty()
            }
            None => false,
        };
        if empty {
            // A meeting's live state (queue, floor, lock) outlives a moment with nobody connected only while
            // the server runs; an open room simply goes.
            self.rooms
                .remove_if(room_key, |_, r| r.members.is_empty() && r.meeting.is_none());
        }
        info!(room = %room_key, participant = %id, "left");
    }

    /// After anything that may change who is heard or the board: push policies, state and roll call.
    pub(crate) fn after_change(&self, room_key: &str) {
        let Some(mut room) = self.rooms.get_mut(room_key) else {
            return;
        };
        let room = &mut *room;
        if let Some(live) = room.meeting.as_mut() {
            crate::recording::note_floor(live, &room.members);
        }
        let Some(live) = room.meeting.as_ref() else {
            return;
        };
        let receives: Vec<ReceivePolicy> = room
            .members
            .iter()
            .map(|m| receive_for(room, &m.identity, self.config.media.every_hall_up_to))
            .collect();
        for (m, receive) in room.members.iter_mut().zip(receives) {
            let policy = policy_for(Some(&live.floor), &m.identity);
            if policy != m.policy {
                m.policy = policy;
                let _ = self.sfu.send(Command::SetPolicy {
                    participant: m.identity.participant_id.clone(),
                    policy,
                });
            }
            if receive != m.receive {
                send(&m.outbox, receiving_message(&receive));
                m.receive = receive.clone();
                let _ = self.sfu.send(Command::SetReceive {
                    participant: m.identity.participant_id.clone(),
                    receive,
                });
            }
        }
        let state = meeting_state(room, Instant::now());
        for m in &room.members {
            send(
                &m.outbox,
                ServerMessage::MeetingState {
                    state: state.clone(),
                },
            );
        }
        let entries = self.roll_call(room);
        for m in room
            .members
            .iter()
            .filter(|m| matches!(m.identity.role, Role::Chair | Role::Secretary | Role::Admin))
        {
            send(
                &m.outbox,
                ServerMessage::RollCall {
                    entries: entries.clone(),
                },
            );
        }
    }

    pub(crate) fn roll_call(&self, room: &Room) -> Vec<RollCallEntry> {
        let Some(live) = &room.meeting else {
            return Vec::new();
        };
        let invitations = self.store.invitations(&live.id).unwrap_or_default();
        invitations
            .into_iter()
            .map(|inv| {
                let present = room
                    .members
                    .iter()
                    .any(|m| m.identity.subject == inv.endpoint.id);
                let reason = inv.absence_reason.filter(|r| !r.is_empty());
                RollCallEntry {
                    status: if present {
                        Presence::Present
                    } else if reason.is_some() {
                        Presence::AbsentWithReason
                    } else {
                        Presence::Absent
                    },
                    endpoint_id: inv.endpoint.id,
                    name: inv.endpoint.name,
                    unit: inv.endpoint.unit,
                    reason,
                    joined_at: inv.first_joined_at,
                    left_at: if present { None } else { inv.last_left_at },
                }
            })
            .collect()
    }

    /// Apply `f` to a member's info and tell the others in its room.
    fn update_and_tell_others(
        &self,
        participant_id: &str,
        update: impl FnOnce(&mut ParticipantInfo),
        message: impl Fn() -> ServerMessage,
    ) {
        let Some(room_key) = self.rooms_of.get(participant_id).map(|r| r.clone()) else {
            return;
        };
        let Some(mut room) = self.rooms.get_mut(&room_key) else {
            return;
        };
        if let Some(m) = room
            .members
            .iter_mut()
            .find(|m| m.identity.participant_id == participant_id)
        {
            update(&mut m.info);
        }
        for m in room
            .members
            .iter()
            .filter(|m| m.identity.participant_id != participant_id)
        {
            send(&m.outbox, message());
        }
    }

    pub fn set_media_state(&self, identity: &Identity, mic: bool, camera: bool) {
        let id = identity.participant_id.clone();
        self.update_and_tell_others(
            &id,
            |info| {
                info.mic = mic;
                info.camera = camera;
            },
            || ServerMessage::MediaState {
                participant_id: id.clone(),
                mic,
                camera,
            },
        );
        // Unmuting oneself lifts the chair's mute.
        if mic {
            let lifted = self
                .rooms
                .get_mut(&identity.room)
                .and_then(|mut r| {
                    r.meeting.as_mut().map(|m| {
                        let was = m.floor.is_muted(&identity.subject);
                        m.floor.unmute(&identity.subject);
                        was
                    })
                })
                .unwrap_or(false);
            if lifted {
                self.after_change(&identity.room);
            }
        }
    }

    /// Run `f` on a participant's member entry, if it is in a room.
    fn with_member(&self, participant_id: &str, f: impl FnOnce(&Member)) {
        let Some(room_key) = self.rooms_of.get(participant_id).map(|r| r.clone()) else {
            return;
        };
        if let Some(room) = self.rooms.get(&room_key)
            && let Some(m) = room
                .members
                .iter()
                .find(|m| m.identity.participant_id == participant_id)
        {
            f(m);
        }
    }

    /// Send to one participant.
    pub fn send_to(&self, participant_id: &str, message: ServerMessage) {
        self.with_member(participant_id, |m| send(&m.outbox, message));
    }

    /// Say goodbye to a participant and close its socket (its session then leaves).
    pub fn close(&self, participant_id: &str, reason: &str, rejoin: bool) {
        self.with_member(participant_id, |m| {
            send(
                &m.outbox,
                ServerMessage::Bye {
                    reason: reason.to_owned(),
                    rejoin,
                },
            );
            let _ = m.outbox.send(Outgoing::Close);
        });
    }

    /// Whether `participant` was resumed by a new session and the media plane has not yet confirmed it: its events
    /// until then are about the old connections.
    fn resuming(&self, participant: &str) -> bool {
        let Some(room_key) = self.rooms_of.get(participant).map(|r| r.clone()) else {
            return false;
        };
        self.rooms.get(&room_key).is_some_and(|room| {
            room.members
                .iter()
                .any(|m| m.identity.participant_id == participant && m.resuming)
        })
    }

    /// What the media plane reports, turned into messages.
    pub fn on_media_event(&self, event: Event) {
        match &event {
            Event::SubscribeOffer { participant, .. }
            | Event::ConnectionState { participant, .. }
            | Event::LayersWanted { participant, .. }
            | Event::VideoPaused { participant, .. }
            | Event::PublishBitrate { participant, .. }
            | Event::ParticipantFailed { participant, .. }
                if self.resuming(participant) =>
            {
                // About the connections of the session it resumed from: the new session must not hear of them.
                tracing::debug!(%participant, "event of a resumed participant's old connections dropped");
                return;
            }
            _ => {}
        }
        match event {
            Event::Joined { participant } => {
                if let Some(room_key) = self.rooms_of.get(&participant).map(|r| r.clone())
                    && let Some(mut room) = self.rooms.get_mut(&room_key)
                    && let Some(m) = room
                        .members
                        .iter_mut()
                        .find(|m| m.identity.participant_id == participant)
                {
                    m.resuming = false;
                }
            }
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
                    source: match track.source {
                        MediaSource::Microphone => TrackSource::Microphone,
                        MediaSource::Camera => TrackSource::Camera,
                        MediaSource::Screen => TrackSource::Screen,
                    },
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
                    giaoban_sfu::Leg::Screen => crate::protocol::Leg::Screen,
                };
                self.send_to(&participant, ServerMessage::ConnectionState { leg, state });
            }
            Event::RecordingEnded {
                room,
                dir,
                files,
                dropped,
                error,
            } => crate::recording::on_ended(self, &room, &dir, files, dropped, error),
            Event::LayersWanted {
                participant,
                track_id,
                source,
                active,
                paused,
            } => {
                let source = match source {
                    MediaSource::Microphone => TrackSource::Microphone,
                    MediaSource::Camera => TrackSource::Camera,
                    MediaSource::Screen => TrackSource::Screen,
                };
                self.send_to(
                    &participant,
                    ServerMessage::Layers {
                        track_id,
                        source,
                        active,
                        paused,
                    },
                );
            }
            Event::VideoPaused {
                participant,
                track_id,
                paused,
            } => {
                self.send_to(
                    &participant,
                    ServerMessage::VideoPaused { track_id, paused },
                );
            }
            Event::PublishBitrate {
                participant,
                over,
                bitrate,
                limit,
            } => {
                let who = self
                    .rooms_of
                    .get(&participant)
                    .map(|r| r.clone())
                    .and_then(|room| self.identity(&room, &participant));
                let detail = format!(
                    "publishing {} kbit/s, limit {} kbit/s",
                    bitrate / 1000,
                    limit / 1000
                );
                if over {
                    self.audit(who.as_ref(), None, "publish bitrate", &detail, "refused");
                    self.send_to(
                        &participant,
                        ServerMessage::Error {
                            code: ErrorCode::LimitExceeded,
                            message: format!(
                                "you are sending {} kbit/s, over the limit of {} kbit/s: your video is paused for \
                                 the others until you send less (audio goes on)",
                                bitrate / 1000,
                                limit / 1000
                            ),
                        },
                    );
                } else {
                    self.audit(who.as_ref(), None, "publish bitrate", &detail, "resumed");
                }
            }
            Event::ParticipantFailed {
                participant,
                reason,
            } => {
                // The socket is closed with `rejoin`; a meeting member stays in the room for the resume grace (`limits.resume_grace_secs`)
                // (its media is suspended: the others' pictures of it freeze) so it can come back as itself.
                self.close(
                    &participant,
                    &format!("media connection lost: {reason}"),
                    true,
                );
                match self.mark_away(&participant, None) {
                    Away::Kept => {
                        warn!(%participant, %reason, "media connection lost; waiting for it to come back")
                    }
                    Away::NotOurs => {}
                    Away::Leave => {
                        warn!(%participant, %reason, "media connection lost; removing participant");
                        self.leave(&participant);
                    }
                }
            }
        }
    }

    /// Take back floor grants whose time is up (called on a timer).
    pub fn expire_floors(&self) {
        let now = Instant::now();
        let mut changed = Vec::new();
        for mut room in self.rooms.iter_mut() {
            let key = room.key().clone();
            if let Some(live) = room.meeting.as_mut() {
                let expired = live.floor.expire(now);
                if !expired.is_empty() {
                    changed.push((key, live.id.clone(), expired));
                }
            }
        }
        for (room, meeting, expired) in changed {
            for subject in expired {
                self.audit(None, Some(&meeting), "floor_expired", &subject, "ok");
            }
            self.after_change(&room);
        }
    }

    pub fn rooms(&self) -> Vec<RoomView> {
        let mut rooms: Vec<RoomView> = self
            .rooms
            .iter()
            // Connection tests are nobody's business but the tester's and IT's (the board).
            .filter(|r| !crate::pretest::is_test_room(r.key()))
            .map(|r| RoomView {
                room: r.key().clone(),
                meeting: r.meeting.as_ref().map(|m| MeetingInfo {
                    id: m.id.clone(),
                    title: m.title.clone(),
                }),
                participants: r.members.iter().map(|m| m.info.clone()).collect(),
            })
            .collect();
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        rooms
    }

    pub fn identity(&self, room: &str, participant_id: &str) -> Option<Identity> {
        self.rooms.get(room).and_then(|r| {
            r.members
                .iter()
                .find(|m| m.identity.participant_id == participant_id)
                .map(|m| m.identity.clone())
        })
    }

    pub fn participant_count(&self) -> usize {
        self.rooms_of.len()
    }

    /// Tell everyone the server is stopping and close their sockets; refuse new joins.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        // Recordings end first: the media plane finishes their files as it stops.
        let recording: Vec<String> = self
            .rooms
            .iter()
            .filter(|r| r.meeting.as_ref().is_some_and(|m| m.recording.is_some()))
            .map(|r| r.key().clone())
            .collect();
        for room in recording {
            let _ = crate::recording::stop(self, &room, "server shutdown");
        }
        let ids: Vec<String> = self.rooms_of.iter().map(|e| e.key().clone()).collect();
        for id in ids {
            self.close(&id, "server shutting down", true);
            self.leave(&id);
        }
        let _ = self.sfu.send(Command::Shutdown);
    }
}

/// Send to every member of a room whose subject `pick` accepts.
pub(crate) fn send_to_subjects(room: &Room, pick: impl Fn(&str) -> bool, message: &ServerMessage) {
    for m in room.members.iter().filter(|m| pick(&m.identity.subject)) {
        send(&m.outbox, message.clone());
    }
}

pub(crate) fn send(outbox: &Outbox, message: ServerMessage) {
    let _ = outbox.send(Outgoing::Message(Box::new(message)));
}

/// What the media plane may forward of this member under the meeting's rules (open rooms: everything).
pub(crate) fn policy_for(floor: Option<&Floor>, identity: &Identity) -> ForwardPolicy {
    match floor {
        None => ForwardPolicy::OPEN,
        Some(f) => ForwardPolicy {
            can_publish: rules::can_publish(identity.role),
            audio: f.is_heard(&identity.subject),
            screen: f.may_share_screen(&identity.subject),
        },
    }
}

/// Whose tracks a member receives. In an open room, and in a meeting of at most `every_hall_up_to` halls, everyone's;
/// the chair, the secretary and an admin always everyone's (the chair sees every hall). Otherwise a hall or an
/// observer receives the chair, whoever holds the floor or is heard, and screen shares: what a commune link can
/// carry, and the server's work grows with the halls rather than with their square.
pub(crate) fn receive_for(
    room: &Room,
    identity: &Identity,
    every_hall_up_to: usize,
) -> ReceivePolicy {
    let Some(live) = &room.meeting else {
        return ReceivePolicy::Everyone;
    };
    if matches!(identity.role, Role::Chair | Role::Secretary | Role::Admin) {
        return ReceivePolicy::Everyone;
    }
    let halls = room
        .members
        .iter()
        .filter(|m| m.identity.role == Role::Endpoint)
        .count();
    if halls <= every_hall_up_to {
        return ReceivePolicy::Everyone;
    }
    let f = &live.floor;
    let mut from: Vec<String> = room
        .members
        .iter()
        .filter(|m| m.identity.participant_id != identity.participant_id)
        .filter(|m| {
            let subject = &m.identity.subject;
            m.identity.role == Role::Chair || f.holds_floor(subject) || f.is_heard(subject)
        })
        .map(|m| m.identity.participant_id.clone())
        .collect();
    from.sort();
    from.dedup();
    ReceivePolicy::Only(from)
}

/// `receiving`: whose camera and microphone a member receives.
fn receiving_message(receive: &ReceivePolicy) -> ServerMessage {
    ServerMessage::Receiving {
        only: match receive {
            ReceivePolicy::Everyone => None,
            ReceivePolicy::Only(from) => Some(from.clone()),
        },
    }
}

/// The meeting state every member sees (open rooms: discussion, nobody holds the floor).
pub(crate) fn meeting_state(room: &Room, now: Instant) -> MeetingState {
    let Some(live) = &room.meeting else {
        return MeetingState {
            mode: MeetingMode::Discussion,
            locked: false,
            floor: Vec::new(),
            queue: Vec::new(),
            main_participant_id: None,
            recording: false,
        };
    };
    let member_of = |subject: &str| room.members.iter().find(|m| m.identity.subject == subject);
    let name_of = |subject: &str| {
        member_of(subject).map_or_else(|| subject.to_owned(), |m| m.identity.name.clone())
    };
    let id_of = |subject: &str| {
        member_of(subject).map_or_else(String::new, |m| m.identity.participant_id.clone())
    };
    let f = &live.floor;
    MeetingState {
        mode: f.mode,
        locked: f.locked,
        floor: f
            .holders()
            .iter()
            .map(|g| FloorHolder {
                participant_id: id_of(&g.subject),
                name: name_of(&g.subject),
                remaining_ms: g
                    .until
                    .map(|u| u.saturating_duration_since(now).as_millis() as u64),
            })
            .collect(),
        queue: f
            .queue()
            .map(|(s, at)| RaisedHand {
                participant_id: id_of(s),
                name: name_of(s),
                waiting_ms: now.saturating_duration_since(at).as_millis() as u64,
            })
            .collect(),
        main_participant_id: f
            .main_subject()
            .and_then(member_of)
            .map(|m| m.identity.participant_id.clone()),
        recording: live.recording.is_some(),
    }
}
