//! One participant's WebSocket session: parse and check each message, act on it through the Hub and the media
//! plane, and answer. Bad input gets an `error` that names the problem; the session carries on.

use crate::hub::{Hub, Identity, JoinRequest, Outgoing};
use crate::protocol::{ClientMessage, ErrorCode, Leg, ServerMessage};
use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use giaoban_sfu::{Command, SfuError};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span};

/// Hard cap on a frame before it is even read as a message (the configured limit is checked after, so an
/// oversized message up to this size gets a polite `too_large` error rather than a closed socket).
pub fn frame_cap(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(4).max(1024 * 1024)
}

enum State {
    AwaitingJoin,
    Joined(Identity),
}

/// Serve one WebSocket from `ip`; `_slot` holds the address's connection count until the socket closes.
pub async fn run(
    socket: WebSocket,
    hub: Arc<Hub>,
    ip: std::net::IpAddr,
    user_agent: Option<String>,
    _slot: crate::limits::ConnectionSlot,
) {
    let rate = f64::from(hub.config.limits.messages_per_second);
    let mut bucket = crate::limits::TokenBucket::new(rate, rate * 4.0, std::time::Instant::now());
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer_hub = hub.clone();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Outgoing::Message(m) => {
                    if let ServerMessage::Error { code, .. } = &*m {
                        writer_hub.metrics.error(code.as_str());
                    }
                    let text = match serde_json::to_string(&m) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot serialize a server message");
                            continue;
                        }
                    };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Outgoing::Close => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            }
        }
    });

    let mut state = State::AwaitingJoin;
    // Live media sections of the last accepted offer of the publish connection and of the screen connection:
    // the track limit counts both.
    let mut published = [0usize; 2];
    let span = info_span!(
        "session",
        room = tracing::field::Empty,
        participant = tracing::field::Empty
    );
    async {
        while let Some(frame) = stream.next().await {
            let text = match frame {
                Ok(Message::Text(t)) => t.to_string(),
                Ok(Message::Binary(_)) => {
                    reply(
                        &tx,
                        ErrorCode::BadMessage,
                        "binary frames are not accepted; send JSON text",
                    );
                    continue;
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            if text.len() > hub.config.limits.max_message_bytes {
                reply(
                    &tx,
                    ErrorCode::TooLarge,
                    &format!(
                        "message of {} bytes is larger than the limit of {} bytes",
                        text.len(),
                        hub.config.limits.max_message_bytes
                    ),
                );
                continue;
            }
            if !bucket.try_take(std::time::Instant::now()) {
                reply(
                    &tx,
                    ErrorCode::RateLimited,
                    &format!(
                        "more than {} messages per second; this one was dropped",
                        hub.config.limits.messages_per_second
                    ),
                );
                continue;
            }
            let msg: ClientMessage = match serde_json::from_str(&text) {
                Ok(m) => m,
                Err(e) => {
                    reply(
                        &tx,
                        ErrorCode::BadMessage,
                        &format!("cannot read message: {e}"),
                    );
                    continue;
                }
            };
            hub.metrics.message(msg.kind());
            if matches!(
                msg,
                ClientMessage::Join { .. } | ClientMessage::JoinTest { .. }
            ) && matches!(state, State::AwaitingJoin)
                && !hub
                    .client_limits
                    .join_attempt(ip, std::time::Instant::now())
            {
                hub.audit(
                    None,
                    None,
                    "join",
                    &format!("too many join attempts from {ip}"),
                    "refused",
                );
                reply(
                    &tx,
                    ErrorCode::RateLimited,
                    "too many join attempts from your address; wait a minute",
                );
                continue;
            }
            if !handle(&hub, &tx, &mut state, &mut published, msg, &user_agent).await {
                break;
            }
        }
    }
    .instrument(span)
    .await;

    if let State::Joined(identity) = &state {
        // No `leave`: a meeting member may come back as itself within `RESUME_GRACE` (see `Hub::session_ended`).
        hub.session_ended(&identity.participant_id, &tx);
    }
    let _ = tx.send(Outgoing::Close);
    drop(tx);
    let _ = writer.await;
}

fn reply(tx: &mpsc::UnboundedSender<Outgoing>, code: ErrorCode, message: &str) {
    debug!(?code, message, "refused");
    let _ = tx.send(Outgoing::Message(Box::new(ServerMessage::error(
        code, message,
    ))));
}

fn send(tx: &mpsc::UnboundedSender<Outgoing>, message: ServerMessage) {
    let _ = tx.send(Outgoing::Message(Box::new(message)));
}

fn sfu_error_code(e: &SfuError) -> ErrorCode {
    match e {
        SfuError::InvalidSdp(_) | SfuError::UnknownTrack(_) => ErrorCode::InvalidField,
        SfuError::NoOfferOutstanding => ErrorCode::WrongState,
        SfuError::PublishNotAllowed => ErrorCode::Forbidden,
        SfuError::UnknownParticipant | SfuError::Negotiation(_) | SfuError::Stopped => {
            ErrorCode::Media
        }
    }
}

/// An offer of the publish connection (`screen: false`: camera and microphone) or of the screen share's own
/// connection (`screen: true`); answered with `publish_answer` / `screen_answer`. The track limit counts the
/// live sections of both connections.
async fn publish_offer(
    hub: &Arc<Hub>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    who: &Identity,
    published: &mut [usize; 2],
    screen: bool,
    sdp: String,
) {
    let what = if screen {
        "screen offer"
    } else {
        "publish offer"
    };
    if !crate::rules::can_publish(who.role) {
        let message = format!("role {:?} may not publish", who.role).to_lowercase();
        hub.audit(Some(who), None, "publish", &message, "refused");
        reply(tx, ErrorCode::Forbidden, &message);
        return;
    }
    if let Err(e) = check_sdp(&sdp) {
        reply(tx, ErrorCode::InvalidField, &e);
        return;
    }
    let limits = &hub.config.limits;
    let (this, other) = if screen { (1, 0) } else { (0, 1) };
    let tracks = live_media_sections(&sdp);
    if tracks + published[other] > limits.max_tracks_per_participant {
        let message = if published[other] > 0 {
            format!(
                "the {what} publishes {tracks} tracks beside the {} of the other connection; at most {} per \
                 participant",
                published[other], limits.max_tracks_per_participant
            )
        } else {
            format!(
                "the offer publishes {tracks} tracks; at most {} per participant",
                limits.max_tracks_per_participant
            )
        };
        hub.audit(Some(who), None, "publish", &message, "refused");
        reply(tx, ErrorCode::LimitExceeded, &message);
        return;
    }
    let participant = who.participant_id.clone();
    let answer = if screen {
        hub.sfu
            .call(|reply| Command::ScreenOffer {
                participant,
                sdp,
                reply,
            })
            .await
    } else {
        hub.sfu
            .call(|reply| Command::PublishOffer {
                participant,
                sdp,
                reply,
            })
            .await
    };
    match answer {
        Ok(sdp) => {
            published[this] = tracks;
            let sdp = cap_video_bitrate(&sdp, limits.max_publish_kbps);
            send(
                tx,
                if screen {
                    ServerMessage::ScreenAnswer { sdp }
                } else {
                    ServerMessage::PublishAnswer { sdp }
                },
            );
        }
        Err(e) => reply(tx, sfu_error_code(&e), &format!("{what} refused: {e}")),
    }
}

/// A room or display name: trimmed, 1..=max characters, no control characters.
pub fn check_name(what: &str, value: &str, max_chars: usize) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if v.chars().count() > max_chars {
        return Err(format!("{what} is longer than {max_chars} characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(v.to_owned())
}

fn check_sdp(sdp: &str) -> Result<(), String> {
    if !sdp.starts_with("v=0") {
        return Err("sdp is not a session description (it must start with `v=0`)".into());
    }
    Ok(())
}

/// Audio and video sections of an offer that can carry media: not rejected (port 0) and not `a=inactive`.
/// Browsers keep a stopped screen share's section with port 0, so stopping and restarting a share does not count
/// twice.
pub fn live_media_sections(sdp: &str) -> usize {
    let mut count = 0;
    let mut current: Option<bool> = None; // Some(live) while inside an audio/video section
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            if current == Some(true) {
                count += 1;
            }
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port = parts.next().unwrap_or("0");
            current = matches!(kind, "audio" | "video").then_some(port != "0");
        } else if line.trim_end() == "a=inactive" && current.is_some() {
            current = Some(false);
        }
    }
    count + usize::from(current == Some(true))
}

/// The answer with `b=TIAS` (bit/s) in every video section, so the browser's encoder keeps the publisher's video
/// under `kbps` in all (RFC 3890; Chrome applies it to the whole send side of that section, all simulcast layers).
/// An existing bandwidth line in a section is replaced.
pub fn cap_video_bitrate(sdp: &str, kbps: u32) -> String {
    let tias = format!("b=TIAS:{}", u64::from(kbps) * 1000);
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut in_video = false;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.starts_with("m=") {
            in_video = bare.starts_with("m=video ");
        } else if in_video && bare.starts_with("b=") {
            continue; // replaced below, after c=
        }
        out.push_str(line);
        if in_video && bare.starts_with("c=") {
            out.push_str(&tias);
            out.push_str("\r\n");
        }
    }
    out
}

/// Returns false when the session should end.
async fn handle(
    hub: &Arc<Hub>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    state: &mut State,
    published: &mut [usize; 2],
    msg: ClientMessage,
    user_agent: &Option<String>,
) -> bool {
    let who = match (&*state, msg) {
        (State::AwaitingJoin, ClientMessage::Join { room, name, token }) => {
            let request = JoinRequest {
                participant_id: new_participant_id(),
                room,
                name,
                token,
                user_agent: user_agent.clone(),
            };
            match hub.join(request, tx.clone()) {
                Ok(identity) => {
                    tracing::Span::current().record("room", identity.room.as_str());
                    tracing::Span::current()
                        .record("participant", identity.participant_id.as_str());
                    *state = State::Joined(identity);
                }
                Err(refusal) => reply(tx, refusal.code, &refusal.message),
            }
            return true;
        }
        (State::AwaitingJoin, ClientMessage::JoinTest { token }) => {
            match hub.join_test(new_participant_id(), &token, user_agent.clone(), tx.clone()) {
                Ok(identity) => {
                    tracing::Span::current().record("room", identity.room.as_str());
                    tracing::Span::current()
                        .record("participant", identity.participant_id.as_str());
                    *state = State::Joined(identity);
                }
                Err(refusal) => reply(tx, refusal.code, &refusal.message),
            }
            return true;
        }
        (State::AwaitingJoin, ClientMessage::Ping {}) => {
            send(tx, ServerMessage::Pong);
            return true;
        }
        (State::AwaitingJoin, _) => {
            reply(tx, ErrorCode::WrongState, "send `join` first");
            return true;
        }
        (State::Joined(_), ClientMessage::Join { .. } | ClientMessage::JoinTest { .. }) => {
            reply(
                tx,
                ErrorCode::WrongState,
                "already joined; open a new connection to join another room",
            );
            return true;
        }
        (State::Joined(who), msg) => (who.clone(), msg),
    };
    let (who, msg) = who;
    let id = who.participant_id.clone();
    if !hub.is_current(&id, tx) {
        // A newer session of the same identity took this participant over (or it is gone): this socket is done.
        return false;
    }

    match crate::moderation::handle(hub, &who, &msg) {
        Ok(true) => return true,
        Ok(false) => {}
        Err((code, message)) => {
            reply(tx, code, &message);
            return true;
        }
    }

    match msg {
        ClientMessage::PublishOffer { sdp } => {
            publish_offer(hub, tx, &who, published, false, sdp).await;
        }
        ClientMessage::ScreenOffer { sdp } => {
            publish_offer(hub, tx, &who, published, true, sdp).await;
        }
        ClientMessage::StopScreen {} => {
            published[1] = 0;
            let _ = hub.sfu.send(Command::CloseScreen {
                participant: id.clone(),
            });
        }
        ClientMessage::SubscribeAnswer { sdp } => {
            if let Err(e) = check_sdp(&sdp) {
                reply(tx, ErrorCode::InvalidField, &e);
                return true;
            }
            let participant = id.clone();
            if let Err(e) = hub
                .sfu
                .call(|reply| Command::SubscribeAnswer {
                    participant,
                    sdp,
                    reply,
                })
                .await
            {
                reply(
                    tx,
                    sfu_error_code(&e),
                    &format!("subscribe answer refused: {e}"),
                );
            }
        }
        ClientMessage::Candidate { leg, candidate } => {
            if candidate.candidate.len() > 1024 {
                reply(tx, ErrorCode::InvalidField, "candidate is too long");
                return true;
            }
            let _ = hub.sfu.send(Command::RemoteCandidate {
                participant: id.clone(),
                leg: match leg {
                    Leg::Publish => giaoban_sfu::Leg::Publish,
                    Leg::Subscribe => giaoban_sfu::Leg::Subscribe,
                    Leg::Screen => giaoban_sfu::Leg::Screen,
                },
                candidate: candidate.candidate,
                sdp_mid: candidate.sdp_mid,
                sdp_mline_index: candidate.sdp_m_line_index,
            });
        }
        ClientMessage::MediaState { mic, camera } => hub.set_media_state(&who, mic, camera),
        ClientMessage::RequestKeyframe { track_id } => {
            let participant = id.clone();
            if let Err(e) = hub
                .sfu
                .call(|reply| Command::RequestKeyframe {
                    participant,
                    track_id,
                    reply,
                })
                .await
            {
                reply(
                    tx,
                    sfu_error_code(&e),
                    &format!("keyframe request refused: {e}"),
                );
            }
        }
        ClientMessage::VideoSize {
            track_id,
            width,
            height,
        } => {
            const MAX_SIDE: u32 = 16_384;
            if width > MAX_SIDE || height > MAX_SIDE {
                reply(
                    tx,
                    ErrorCode::InvalidField,
                    &format!("video_size: width and height must be at most {MAX_SIDE} pixels"),
                );
                return true;
            }
            let participant = id.clone();
            if let Err(e) = hub
                .sfu
                .call(|reply| Command::SetVideoSize {
                    participant,
                    track_id,
                    width,
                    height,
                    reply,
                })
                .await
            {
                reply(tx, sfu_error_code(&e), &format!("video_size refused: {e}"));
            }
        }
        ClientMessage::Leave {} => {
            hub.leave(&id);
            *state = State::AwaitingJoin;
            send(
                tx,
                ServerMessage::Bye {
                    reason: "left".into(),
                    rejoin: false,
                },
            );
            return false;
        }
        ClientMessage::Ping {} => send(tx, ServerMessage::Pong),
        ClientMessage::TestResult { result } => match hub.test_result(&who, result).await {
            Ok(verdict) => send(tx, verdict),
            Err(refusal) => reply(tx, refusal.code, &refusal.message),
        },
        // Joins and meeting actions were handled above.
        _ => {}
    }
    true
}

fn new_participant_id() -> String {
    format!("p{:012x}", rand_u64() & 0xffff_ffff_ffff)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process and mixed per call with a counter.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\nb=AS:9000\r\na=sendonly\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=inactive\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=inactive\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n";

    #[test]
    fn live_sections_skip_rejected_inactive_and_data() {
        assert_eq!(live_media_sections(OFFER), 3);
        assert_eq!(live_media_sections("v=0\r\n"), 0);
        assert_eq!(live_media_sections("v=0\nm=audio 9 RTP/AVP 0\n"), 1);
    }

    #[test]
    fn every_video_section_gets_the_cap_and_loses_its_own() {
        let capped = cap_video_bitrate(OFFER, 2500);
        assert_eq!(capped.matches("b=TIAS:2500000\r\n").count(), 4, "{capped}");
        assert!(!capped.contains("b=AS:9000"), "{capped}");
        // Audio and data sections untouched; nothing else changed.
        let audio = capped.split("m=video").next().expect("head");
        assert!(!audio.contains("b=TIAS"), "{audio}");
        assert_eq!(
            capped.replace("b=TIAS:2500000\r\n", ""),
            OFFER.replace("b=AS:9000\r\n", "")
        );
    }

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(
            check_name("room", "  giao ban  ", 64),
            Ok("giao ban".to_string())
        );
        assert!(
            check_name("room", "   ", 64)
                .expect_err("empty")
                .contains("room")
        );
        assert!(
            check_name("name", &"x".repeat(65), 64)
                .expect_err("long")
                .contains("64")
        );
        assert!(check_name("name", "a\u{0007}b", 64).is_err());
        assert_eq!(
            check_name("name", "Xã Tân Phú", 10),
            Ok("Xã Tân Phú".to_string())
        );
    }

    #[test]
    fn sdp_must_look_like_sdp() {
        assert!(check_sdp("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n").is_ok());
        assert!(check_sdp("hello").is_err());
    }

    #[test]
    fn participant_ids_differ() {
        let a = new_participant_id();
        let b = new_participant_id();
        assert_ne!(a, b);
        assert!(a.starts_with('p') && a.len() == 13);
    }
}
