//! Meeting actions from a joined participant: raise hand, floor, mode, mutes, remove, lock, end, absence
//! reasons, chat. Each is checked against the sender's role (`rules::allowed`) and its meeting; refusals and
//! moderator actions go to the audit log.

use crate::hub::{Hub, Identity, Outgoing, send, send_to_subjects};
use crate::protocol::{ChatMessage, ClientMessage, ErrorCode, Role, ServerMessage};
use crate::rules::{Action, FloorError, allowed};
use crate::store::now_rfc3339;
use std::time::{Duration, Instant};

/// Longest chat line, in characters.
pub const MAX_CHAT_CHARS: usize = 1000;
/// Longest floor grant with a time limit.
pub const MAX_FLOOR_SECONDS: u32 = 4 * 3600;

/// A refused action: code and message for the sender.
pub type Refused = (ErrorCode, String);

fn action_of(msg: &ClientMessage) -> Option<(Action, &'static str)> {
    Some(match msg {
        ClientMessage::RaiseHand {} | ClientMessage::LowerHand {} => {
            (Action::RaiseHand, "raise_hand")
        }
        ClientMessage::GrantFloor { .. } => (Action::GrantFloor, "grant_floor"),
        ClientMessage::RevokeFloor { .. } => (Action::RevokeFloor, "revoke_floor"),
        ClientMessage::SetMode { .. } => (Action::SetMode, "set_mode"),
        ClientMessage::Mute { .. } => (Action::Mute, "mute"),
        ClientMessage::MuteAll {} => (Action::MuteAll, "mute_all"),
        ClientMessage::AskUnmute { .. } => (Action::AskUnmute, "ask_unmute"),
        ClientMessage::Remove { .. } => (Action::Remove, "remove"),
        ClientMessage::Lock { .. } => (Action::Lock, "lock"),
        ClientMessage::EndMeeting {} => (Action::EndMeeting, "end_meeting"),
        ClientMessage::SetAbsenceReason { .. } => (Action::SetAbsenceReason, "set_absence_reason"),
        ClientMessage::Chat { .. } => (Action::Chat, "chat"),
        ClientMessage::StartRecording {} => (Action::Record, "start_recording"),
        ClientMessage::StopRecording {} => (Action::Record, "stop_recording"),
        ClientMessage::SetLayerCap { .. } => (Action::SetLayerCap, "set_layer_cap"),
        _ => return None,
    })
}

/// Handle a meeting action. `Ok(true)` when handled, `Ok(false)` when `msg` is not a meeting action.
pub fn handle(hub: &Hub, who: &Identity, msg: &ClientMessage) -> Result<bool, Refused> {
    let Some((action, name)) = action_of(msg) else {
        return Ok(false);
    };
    if !allowed(who.role, action) {
        let message =
            format!("a participant with role {:?} may not {name}", who.role).to_lowercase();
        hub.audit(Some(who), None, name, &message, "refused");
        return Err((ErrorCode::Forbidden, message));
    }
    if action == Action::Chat {
        let ClientMessage::Chat { text } = msg else {
            return Ok(true);
        };
        return chat(hub, who, text).map(|_| true);
    }
    if let ClientMessage::SetLayerCap {
        participant_id,
        max_layer,
    } = msg
    {
        // A media setting, not a meeting rule: allowed in open rooms too, no meeting state to send.
        let result = set_layer_cap(hub, who, participant_id, *max_layer);
        let outcome = match &result {
            Ok(()) => "ok".to_string(),
            Err((code, _)) => format!("{code:?}"),
        };
        hub.audit(Some(who), None, name, &format!("{msg:?}"), &outcome);
        return result.map(|_| true);
    }
    if who.meeting.is_none() {
        return Err((
            ErrorCode::Forbidden,
            format!("{name} needs a meeting; this is an open room"),
        ));
    }
    let result = match msg {
        ClientMessage::StartRecording {} => {
            crate::recording::start(hub, &who.room, &who.name).map(|()| Vec::new())
        }
        ClientMessage::StopRecording {} => {
            crate::recording::stop(hub, &who.room, &who.name).map(|()| Vec::new())
        }
        _ => apply(hub, who, msg),
    };
    if matches!(msg, ClientMessage::EndMeeting {}) && result.is_ok() {
        // The recording ends with the meeting (if there is one).
        let _ = crate::recording::stop(hub, &who.room, &who.name);
    }
    let detail = format!("{msg:?}");
    // Participants the action put out of the meeting leave now, whatever their clients do.
    let result = result.map(|gone| {
        for id in gone {
            hub.leave(&id);
        }
    });
    match &result {
        Ok(()) => hub.audit(Some(who), None, name, &detail, "ok"),
        Err((code, m)) => hub.audit(
            Some(who),
            None,
            name,
            &format!("{detail}: {m}"),
            &format!("{code:?}"),
        ),
    }
    if result.is_ok() {
        hub.after_change(&who.room);
    }
    result.map(|_| true)
}

/// Cap what `participant_id` (in the sender's room) receives.
fn set_layer_cap(
    hub: &Hub,
    who: &Identity,
    participant_id: &str,
    max_layer: Option<crate::protocol::LayerCap>,
) -> Result<(), Refused> {
    let in_room = hub.rooms.get(&who.room).is_some_and(|room| {
        room.members
            .iter()
            .any(|m| m.identity.participant_id == participant_id)
    });
    if !in_room {
        return Err((
            ErrorCode::NotFound,
            format!("no participant {participant_id} in this room"),
        ));
    }
    hub.sfu
        .send(giaoban_sfu::Command::SetLayerCap {
            participant: participant_id.to_string(),
            max_layer: max_layer.map(|c| c.index()),
        })
        .map_err(|e| (ErrorCode::Media, e.to_string()))
}

/// Find the subject of a participant id in the sender's room.
fn subject_of(hub: &Hub, who: &Identity, participant_id: &str) -> Result<(String, Role), Refused> {
    let room = hub
        .rooms
        .get(&who.room)
        .ok_or((ErrorCode::NotFound, "no such room".to_string()))?;
    room.members
        .iter()
        .find(|m| m.identity.participant_id == participant_id)
        .map(|m| (m.identity.subject.clone(), m.identity.role))
        .ok_or((
            ErrorCode::NotFound,
            format!("no participant {participant_id} in this meeting"),
        ))
}

/// Apply an allowed action; returns the participant ids it puts out of the meeting (removed, meeting ended).
fn apply(hub: &Hub, who: &Identity, msg: &ClientMessage) -> Result<Vec<String>, Refused> {
    let mut gone = Vec::new();
    let now = Instant::now();
    // Resolve targets before taking the room for writing.
    let target = match msg {
        ClientMessage::GrantFloor { participant_id, .. }
        | ClientMessage::RevokeFloor { participant_id }
        | ClientMessage::Mute { participant_id }
        | ClientMessage::AskUnmute { participant_id }
        | ClientMessage::Remove { participant_id } => Some(subject_of(hub, who, participant_id)?),
        _ => None,
    };
    let mut room = hub
        .rooms
        .get_mut(&who.room)
        .ok_or((ErrorCode::NotFound, "no such room".to_string()))?;
    let room = &mut *room;
    let live = room.meeting.as_mut().ok_or((
        ErrorCode::Forbidden,
        "this room is not a meeting".to_string(),
    ))?;
    let floor = &mut live.floor;
    match msg {
        ClientMessage::RaiseHand {} => {
            floor.raise_hand(&who.subject, now);
        }
        ClientMessage::LowerHand {} => {
            floor.lower_hand(&who.subject);
        }
        ClientMessage::GrantFloor { seconds, .. } => {
            let (subject, _) = target.ok_or((ErrorCode::NotFound, "no target".to_string()))?;
            let limit = match seconds {
                Some(0) => {
                    return Err((ErrorCode::InvalidField, "seconds must be at least 1".into()));
                }
                Some(s) if *s > MAX_FLOOR_SECONDS => {
                    return Err((
                        ErrorCode::InvalidField,
                        format!("seconds must be at most {MAX_FLOOR_SECONDS}"),
                    ));
                }
                Some(s) => Some(Duration::from_secs(u64::from(*s))),
                None => None,
            };
            floor.grant(&subject, limit, now).map_err(|e| match e {
                FloorError::CannotHoldFloor => (
                    ErrorCode::Forbidden,
                    "observers and admins cannot hold the floor".to_string(),
                ),
                other => (ErrorCode::InvalidField, format!("{other:?}")),
            })?;
        }
        ClientMessage::RevokeFloor { .. } => {
            let (subject, _) = target.ok_or((ErrorCode::NotFound, "no target".to_string()))?;
            floor.revoke(&subject).map_err(|_| {
                (
                    ErrorCode::InvalidField,
                    "that participant does not hold the floor".to_string(),
                )
            })?;
        }
        ClientMessage::SetMode { mode } => {
            floor.set_mode(*mode);
        }
        ClientMessage::Mute { .. } => {
            let (subject, _) = target.ok_or((ErrorCode::NotFound, "no target".to_string()))?;
            floor.mute(&subject);
            send_to_subjects(
                room,
                |s| s == subject,
                &ServerMessage::Muted {
                    by: who.name.clone(),
                },
            );
        }
        ClientMessage::MuteAll {} => {
            let targets: Vec<String> = room
                .members
                .iter()
                .filter(|m| !matches!(m.identity.role, Role::Chair | Role::Observer | Role::Admin))
                .map(|m| m.identity.subject.clone())
                .collect();
            for s in &targets {
                floor.mute(s);
            }
            send_to_subjects(
                room,
                |s| targets.iter().any(|t| t == s),
                &ServerMessage::Muted {
                    by: who.name.clone(),
                },
            );
        }
        ClientMessage::AskUnmute { .. } => {
            let (subject, _) = target.ok_or((ErrorCode::NotFound, "no target".to_string()))?;
            send_to_subjects(
                room,
                |s| s == subject,
                &ServerMessage::UnmuteRequested {
                    by: who.name.clone(),
                },
            );
        }
        ClientMessage::Remove { .. } => {
            let (subject, role) = target.ok_or((ErrorCode::NotFound, "no target".to_string()))?;
            if matches!(role, Role::Chair | Role::Admin) || subject == who.subject {
                return Err((ErrorCode::Forbidden, "the chair cannot be removed".into()));
            }
            floor.remove(&subject);
            for m in room
                .members
                .iter()
                .filter(|m| m.identity.subject == subject)
            {
                send(
                    &m.outbox,
                    ServerMessage::error(
                        ErrorCode::Removed,
                        "the chair removed you from this meeting",
                    ),
                );
                send(
                    &m.outbox,
                    ServerMessage::Bye {
                        reason: "removed by the chair".into(),
                        rejoin: false,
                    },
                );
                let _ = m.outbox.send(Outgoing::Close);
                gone.push(m.identity.participant_id.clone());
            }
        }
        ClientMessage::Lock { locked } => floor.locked = *locked,
        ClientMessage::EndMeeting {} => {
            floor.ended = true;
            let id = live.id.clone();
            for m in &room.members {
                send(
                    &m.outbox,
                    ServerMessage::Bye {
                        reason: "the meeting has ended".into(),
                        rejoin: false,
                    },
                );
                let _ = m.outbox.send(Outgoing::Close);
                gone.push(m.identity.participant_id.clone());
            }
            if let Err(e) = hub.store.set_meeting_status(&id, "ended") {
                tracing::warn!(error = %e, "meeting status not saved");
            }
        }
        ClientMessage::SetAbsenceReason {
            endpoint_id,
            reason,
        } => {
            if reason.chars().count() > 500 {
                return Err((
                    ErrorCode::InvalidField,
                    "reason is longer than 500 characters".into(),
                ));
            }
            hub.store
                .set_absence_reason(&live.id, endpoint_id, reason)
                .map_err(|e| (ErrorCode::NotFound, e.to_string()))?;
        }
        _ => {}
    }
    Ok(gone)
}

fn chat(hub: &Hub, who: &Identity, text: &str) -> Result<(), Refused> {
    let text = text.trim();
    if text.is_empty() {
        return Err((
            ErrorCode::InvalidField,
            "chat text must not be empty".into(),
        ));
    }
    if text.chars().count() > MAX_CHAT_CHARS {
        return Err((
            ErrorCode::InvalidField,
            format!("chat text is longer than {MAX_CHAT_CHARS} characters"),
        ));
    }
    let message = ChatMessage {
        from_id: who.participant_id.clone(),
        from_name: who.name.clone(),
        text: text.to_owned(),
        at: now_rfc3339(),
    };
    if let Some(mid) = &who.meeting
        && let Err(e) = hub
            .store
            .add_chat(mid, &who.subject, &who.name, text, &message.at)
    {
        tracing::warn!(error = %e, "chat not stored");
    }
    if let Some(room) = hub.rooms.get(&who.room) {
        for m in &room.members {
            send(
                &m.outbox,
                ServerMessage::Chat {
                    message: message.clone(),
                },
            );
        }
    }
    Ok(())
}
