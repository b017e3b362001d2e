//! Roles: what each role may not do is refused with `forbidden`, audited, and the meeting carries on; the
//! chair's mute is enforced by the media plane until the target unmutes itself; remove, lock and end meeting
//! do what the protocol says, including for later joins.

mod common;

use std::time::Duration;

use common::{
    TestServer, assert_alive, assert_audio_silent, create_meeting, expect_error, floor_ids, send,
    token, wait_audio_flowing, wait_receiving, wait_state, wait_until,
};
use giaoban_signaling::protocol::{
    ClientMessage, ErrorCode, MeetingMode, Role, ServerMessage, TrackKind,
};
use giaoban_tests::sim::SimEndpoint;

fn join_msg(token: &str) -> ClientMessage {
    ClientMessage::Join {
        room: None,
        name: None,
        token: Some(token.to_string()),
    }
}

/// Whether the audit log of `meeting` has an entry by `actor` for `action` with `outcome`.
fn audited(
    hub: &giaoban_signaling::hub::Hub,
    meeting: &str,
    actor: &str,
    action: &str,
    outcome: &str,
) -> bool {
    hub.store
        .audit_log(Some(meeting), 500)
        .expect("audit log")
        .iter()
        .any(|e| e.actor == actor && e.action == action && e.outcome == outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_actions_are_refused_audited_and_the_meeting_carries_on() {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Giao ban tuần",
        MeetingMode::Lecture,
        &["UBND xã Tân Phú"],
    );
    let mid = meeting.id.clone();
    let chair = server
        .join_token(
            &token(&hub, &mid, "chair", "Chủ trì", Role::Chair),
            "Chủ trì",
            false,
        )
        .await;
    let secretary = server
        .join_token(
            &token(&hub, &mid, "secretary", "Thư ký", Role::Secretary),
            "Thư ký",
            false,
        )
        .await;
    let endpoint = server
        .join_token(
            &token(&hub, &mid, &eps[0].id, &eps[0].name, Role::Endpoint),
            "Xã Tân Phú",
            false,
        )
        .await;
    let observer = server
        .join_token(
            &token(&hub, &mid, "observer", "Kỹ thuật", Role::Observer),
            "Kỹ thuật",
            false,
        )
        .await;
    let eid = endpoint.id();

    let refusals: Vec<(&SimEndpoint, &str, &str, ClientMessage)> = vec![
        (
            &endpoint,
            eps[0].id.as_str(),
            "grant_floor",
            ClientMessage::GrantFloor {
                participant_id: eid.clone(),
                seconds: None,
            },
        ),
        (
            &endpoint,
            eps[0].id.as_str(),
            "mute_all",
            ClientMessage::MuteAll {},
        ),
        (
            &endpoint,
            eps[0].id.as_str(),
            "set_mode",
            ClientMessage::SetMode {
                mode: MeetingMode::Discussion,
            },
        ),
        (
            &endpoint,
            eps[0].id.as_str(),
            "end_meeting",
            ClientMessage::EndMeeting {},
        ),
        (
            &secretary,
            "secretary",
            "mute_all",
            ClientMessage::MuteAll {},
        ),
        (
            &observer,
            "observer",
            "publish",
            ClientMessage::PublishOffer {
                sdp: "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".into(),
            },
        ),
        (
            &observer,
            "observer",
            "raise_hand",
            ClientMessage::RaiseHand {},
        ),
    ];
    for (ep, actor, action, msg) in refusals {
        let what = format!("{msg:?}");
        let (code, message) = expect_error(ep, msg).await;
        assert_eq!(
            code,
            ErrorCode::Forbidden,
            "{} sending {what}: {message}",
            ep.name()
        );
        assert_alive(ep).await;
        assert!(!ep.is_closed(), "{} was disconnected", ep.name());
        assert!(
            audited(&hub, &mid, actor, action, "refused"),
            "no `refused` audit entry for {actor} {action}: {:?}",
            hub.store.audit_log(Some(&mid), 50).expect("audit")
        );
    }

    // Nothing happened: still lecture mode, nobody holds the floor, nobody left, nobody muted.
    let state = common::latest_state(&chair).expect("chair knows the state");
    assert_eq!(state.mode, MeetingMode::Lecture);
    assert!(
        state.floor.is_empty() && state.queue.is_empty(),
        "{state:?}"
    );
    for ep in [&chair, &secretary, &endpoint, &observer] {
        assert!(!ep.is_closed(), "{} was disconnected", ep.name());
        assert!(
            !ep.messages()
                .iter()
                .any(|m| matches!(m, ServerMessage::Bye { .. } | ServerMessage::Muted { .. })),
            "{} got bye/muted: {:?}",
            ep.name(),
            ep.messages().iter().map(common::short).collect::<Vec<_>>()
        );
    }

    // The meeting carries on: the endpoint may raise its hand, the secretary may give it the floor.
    let from = chair.log_len();
    send(&endpoint, ClientMessage::RaiseHand {});
    wait_state(&chair, from, "the endpoint's hand", |s| {
        common::queue_ids(s) == [eid.clone()]
    })
    .await;
    send(
        &secretary,
        ClientMessage::GrantFloor {
            participant_id: eid.clone(),
            seconds: None,
        },
    );
    wait_state(&chair, from, "the endpoint holding the floor", |s| {
        floor_ids(s) == [eid.clone()]
    })
    .await;
    assert!(audited(&hub, &mid, "secretary", "grant_floor", "ok"));
    // Chat is everyone's.
    let from = chair.log_len();
    send(
        &observer,
        ClientMessage::Chat {
            text: "Đường truyền ổn định".into(),
        },
    );
    chair
        .wait_message_since(from, Duration::from_secs(5), |m| {
            matches!(m, ServerMessage::Chat { message, .. } if message.text == "Đường truyền ổn định")
        })
        .await
        .expect("the observer's chat line reaches the chair");

    for ep in [&chair, &secretary, &endpoint, &observer] {
        ep.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chair_mute_holds_until_the_target_unmutes_itself() {
    let server = TestServer::start().await;
    // Discussion mode: everyone is heard until muted.
    let hub = server.hub();
    let (mid, chair, a, b) = discussion_with_media(&server).await;
    wait_receiving(&chair, &b, TrackKind::Audio, 10, Duration::from_secs(15)).await;

    // The chair mutes A: A is told, and its audio stops at the server although A keeps sending.
    let from = a.log_len();
    send(
        &chair,
        ClientMessage::Mute {
            participant_id: a.id(),
        },
    );
    a.wait_message_since(from, Duration::from_secs(5), |m| {
        matches!(m, ServerMessage::Muted { .. })
    })
    .await
    .expect("A is told it was muted");
    assert_audio_silent(&[&b, &chair], &a, Duration::from_secs(1)).await;
    // B is still heard, A's video still flows.
    wait_audio_flowing(&chair, &b, 10, Duration::from_secs(5)).await;
    common::assert_still_flowing(&b, &a, 20).await;
    assert!(audited(&hub, &mid, "chair", "mute", "ok"));

    // A unmutes itself: heard again.
    send(
        &a,
        ClientMessage::MediaState {
            mic: true,
            camera: true,
        },
    );
    wait_audio_flowing(&b, &a, 10, Duration::from_secs(5)).await;
    wait_audio_flowing(&chair, &a, 10, Duration::from_secs(5)).await;

    // Mute all: both endpoints silenced, the chair still heard.
    let marks = (a.log_len(), b.log_len());
    send(&chair, ClientMessage::MuteAll {});
    for (ep, from) in [(&a, marks.0), (&b, marks.1)] {
        ep.wait_message_since(from, Duration::from_secs(5), |m| {
            matches!(m, ServerMessage::Muted { .. })
        })
        .await
        .unwrap_or_else(|e| panic!("{} is told it was muted: {e:#}", ep.name()));
    }
    assert_audio_silent(&[&chair, &b], &a, Duration::from_secs(1)).await;
    assert_audio_silent(&[&chair, &a], &b, Duration::from_millis(500)).await;
    wait_audio_flowing(&a, &chair, 10, Duration::from_secs(5)).await;

    for ep in [&a, &b, &chair] {
        ep.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_lock_and_end_meeting() {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Giao ban tháng",
        MeetingMode::Lecture,
        &["UBND xã An Phú", "UBND xã Bình Minh", "UBND xã Cát Tiên"],
    );
    let mid = meeting.id.clone();
    let tok = |i: usize| token(&hub, &mid, &eps[i].id, &eps[i].name, Role::Endpoint);
    let (a_tok, b_tok, c_tok) = (tok(0), tok(1), tok(2));
    let chair = server
        .join_token(
            &token(&hub, &mid, "chair", "Chủ trì", Role::Chair),
            "Chủ trì",
            false,
        )
        .await;
    let a = server.join_token(&a_tok, "Xã A", false).await;
    let b = server.join_token(&b_tok, "Xã B", false).await;
    let aid = a.id();

    // Remove A: it gets `removed` then `bye` and its socket closes; the others see it leave.
    let from_b = b.log_len();
    send(
        &chair,
        ClientMessage::Remove {
            participant_id: aid.clone(),
        },
    );
    wait_until("A's socket to close", Duration::from_secs(5), || {
        a.is_closed().then_some(())
    })
    .await;
    let msgs = a.messages();
    let removed_at = msgs
        .iter()
        .position(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::Removed,
                    ..
                }
            )
        })
        .unwrap_or_else(|| {
            panic!(
                "A got no `removed` error: {:?}",
                msgs.iter().map(common::short).collect::<Vec<_>>()
            )
        });
    let bye_at = msgs
        .iter()
        .position(|m| matches!(m, ServerMessage::Bye { .. }))
        .expect("A got `bye`");
    assert!(removed_at < bye_at, "`removed` comes before `bye`");
    // A's client answers the close as a browser does (the sim does not by itself); see the test below for a
    // client that does not.
    a.shutdown().await;
    b.wait_message_since(from_b, Duration::from_secs(5), |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == aid)
    })
    .await
    .expect("B sees A leave");
    assert!(audited(&hub, &mid, "chair", "remove", "ok"));
    // A rejoin with the same token is refused.
    let (code, message) = server.join_refused(join_msg(&a_tok), "Xã A again").await;
    assert_eq!(code, ErrorCode::Removed, "{message}");
    assert!(audited(&hub, &mid, &eps[0].id, "join", "refused"));

    // Lock: a new identity is refused, an identity already seen may come back.
    let from = chair.log_len();
    send(&chair, ClientMessage::Lock { locked: true });
    wait_state(&chair, from, "locked", |s| s.locked).await;
    let (code, message) = server.join_refused(join_msg(&c_tok), "Xã C").await;
    assert_eq!(code, ErrorCode::MeetingLocked, "{message}");
    assert!(audited(&hub, &mid, &eps[2].id, "join", "refused"));
    b.close().await;
    let b = server.join_token(&b_tok, "Xã B again", false).await;
    assert!(common::latest_state(&b).expect("state in joined").locked);
    assert_alive(&b).await;

    // End the meeting: everyone gets `bye`, a later join gets `meeting_ended`.
    let marks = (chair.log_len(), b.log_len());
    send(&chair, ClientMessage::EndMeeting {});
    for (ep, from) in [(&chair, marks.0), (&b, marks.1)] {
        wait_until(
            &format!("{} to get bye", ep.name()),
            Duration::from_secs(5),
            || {
                ep.received()
                    .iter()
                    .skip(from)
                    .any(|r| {
                        matches!(
                            r,
                            giaoban_tests::sim::Received::Message(ServerMessage::Bye { .. })
                        )
                    })
                    .then_some(())
            },
        )
        .await;
        wait_until(
            &format!("{}'s socket to close", ep.name()),
            Duration::from_secs(5),
            || ep.is_closed().then_some(()),
        )
        .await;
    }
    for (tok, label) in [
        (&b_tok, "Xã B after the end"),
        (&c_tok, "Xã C after the end"),
    ] {
        let (code, message) = server.join_refused(join_msg(tok), label).await;
        assert_eq!(code, ErrorCode::MeetingEnded, "{label}: {message}");
    }
    assert_eq!(hub.store.meeting(&mid).expect("meeting").status, "ended");
    assert!(audited(&hub, &mid, "chair", "end_meeting", "ok"));

    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// `remove` and `end_meeting` must not depend on the removed client's cooperation: a client that ignores the
// close frame (a hostile or hung one; the sim does not answer close frames) must still leave the room at once —
// gone from /api/rooms, its media no longer forwarded. (These failed before the hub dropped such members itself.)
// ---------------------------------------------------------------------------------------------------------------

/// Start a discussion meeting with a chair and two publishing endpoints whose audio flows.
async fn discussion_with_media(
    server: &TestServer,
) -> (String, SimEndpoint, SimEndpoint, SimEndpoint) {
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Thảo luận",
        MeetingMode::Discussion,
        &["UBND xã An Phú", "UBND xã Bình Minh"],
    );
    let mid = meeting.id.clone();
    let chair = server
        .join_token(
            &token(&hub, &mid, "chair", "Chủ trì", Role::Chair),
            "Chủ trì",
            true,
        )
        .await;
    let a = server
        .join_token(
            &token(&hub, &mid, &eps[0].id, &eps[0].name, Role::Endpoint),
            "Xã A",
            true,
        )
        .await;
    let b = server
        .join_token(
            &token(&hub, &mid, &eps[1].id, &eps[1].name, Role::Endpoint),
            "Xã B",
            true,
        )
        .await;
    let t = Duration::from_secs(15);
    wait_receiving(&b, &a, TrackKind::Audio, 10, t).await;
    wait_receiving(&chair, &a, TrackKind::Audio, 10, t).await;
    wait_receiving(&a, &b, TrackKind::Audio, 10, t).await;
    (mid, chair, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_participant_is_dropped_without_its_clients_help() {
    let server = TestServer::start().await;
    let (_mid, chair, a, b) = discussion_with_media(&server).await;
    let aid = a.id();
    let from_b = b.log_len();
    send(
        &chair,
        ClientMessage::Remove {
            participant_id: aid.clone(),
        },
    );
    wait_until("A's socket to close", Duration::from_secs(5), || {
        a.is_closed().then_some(())
    })
    .await;
    // A's client keeps its media running and never answers the close frame.
    b.wait_message_since(from_b, Duration::from_secs(3), |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == aid)
    })
    .await
    .unwrap_or_else(|e| {
        panic!("the removed participant is still in the room (no participant_left to B): {e:#}")
    });
    let rooms = server.rooms().await;
    assert!(
        !common::json_strings(&rooms).contains(&aid),
        "/api/rooms still lists the removed participant: {rooms}"
    );
    common::assert_audio_stops(&[&b, &chair], &a, Duration::from_secs(1)).await;
    for ep in [&a, &b, &chair] {
        ep.shutdown().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_meeting_stops_forwarding_without_the_clients_help() {
    let server = TestServer::start().await;
    let (mid, chair, a, b) = discussion_with_media(&server).await;
    send(&chair, ClientMessage::EndMeeting {});
    for ep in [&chair, &a, &b] {
        wait_until(
            &format!("{}'s socket to close", ep.name()),
            Duration::from_secs(5),
            || ep.is_closed().then_some(()),
        )
        .await;
    }
    // None of the clients answers the close; the meeting is over all the same.
    let ids = [a.id(), b.id(), chair.id()];
    common::wait_until_async(
        "the ended meeting's participants to be dropped from /api/rooms",
        Duration::from_secs(3),
        || async {
            let strings = common::json_strings(&server.rooms().await);
            (!ids.iter().any(|id| strings.contains(id))).then_some(())
        },
    )
    .await;
    common::assert_audio_stops(&[&b], &a, Duration::from_secs(1)).await;
    let _ = mid;
    for ep in [&a, &b, &chair] {
        ep.shutdown().await;
    }
    server.shutdown().await;
}
