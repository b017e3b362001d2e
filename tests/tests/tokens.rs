//! Join tokens: forged, expired, wrong-meeting and garbage tokens, and a tokenless join where open rooms are off,
//! are refused with `unauthorized` and audited; a valid token joins with the token's name and role. The floor and
//! the queue belong to the token's identity: a hall that drops and rejoins keeps them (and, within the resume grace,
//! its participant id); a hall that drops and does not come back leaves after the grace.

mod common;

use std::time::Duration;

use common::{
    TestServer, create_meeting, floor_ids, queue_ids, send, token, wait_audio_flowing,
    wait_receiving, wait_state,
};
use giaoban_signaling::auth::{Auth, Claims, now_secs};
use giaoban_signaling::protocol::{
    ClientMessage, ErrorCode, MeetingMode, ParticipantInfo, Role, ServerMessage, TrackKind,
};
use giaoban_tests::sim::SimEndpoint;

fn join_token(token: &str, room: Option<&str>) -> ClientMessage {
    ClientMessage::Join {
        room: room.map(str::to_string),
        name: None,
        token: Some(token.to_string()),
    }
}

/// Refused joins in the audit log (any meeting).
fn refused_joins(hub: &giaoban_signaling::hub::Hub) -> Vec<giaoban_signaling::store::AuditEntry> {
    hub.store
        .audit_log(None, 1000)
        .expect("audit log")
        .into_iter()
        .filter(|e| e.action == "join" && e.outcome == "refused")
        .collect()
}

/// The `joined` message an endpoint got.
fn joined(ep: &SimEndpoint) -> ServerMessage {
    ep.messages()
        .into_iter()
        .find(|m| matches!(m, ServerMessage::Joined { .. }))
        .expect("joined")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_audited_good_ones_carry_name_and_role() {
    let mut config = giaoban_config::Config::for_tests();
    config.auth.open_rooms = false;
    let server = TestServer::start_with(config).await;
    let hub = server.hub();
    let (x, eps) = create_meeting(
        &hub,
        "Giao ban X",
        MeetingMode::Lecture,
        &["UBND xã Tân Phú"],
    );
    let (y, _) = create_meeting(
        &hub,
        "Giao ban Y",
        MeetingMode::Lecture,
        &["UBND xã Hòa Bình"],
    );
    let claims = Claims {
        mtg: x.id.clone(),
        sub: eps[0].id.clone(),
        name: eps[0].name.clone(),
        role: Role::Endpoint,
        exp: now_secs() + 3600,
    };
    let forged = Auth::new(b"another-secret-another-secret-xx").issue(&claims);
    let expired = hub.auth.issue(&Claims {
        exp: now_secs() - 10,
        ..claims.clone()
    });
    let valid_x = hub.auth.issue(&claims);

    let attempts: Vec<(&str, ClientMessage)> = vec![
        ("forged", join_token(&forged, None)),
        ("expired", join_token(&expired, None)),
        (
            "meeting X's token for room Y",
            join_token(&valid_x, Some(&y.id)),
        ),
        ("garbage", join_token("not.a.token", None)),
        ("garbage without dots", join_token("xin-chao", None)),
        (
            "tokenless, open rooms off",
            ClientMessage::Join {
                room: Some("giao-ban-mo".into()),
                name: Some("UBND xã Tân Phú".into()),
                token: None,
            },
        ),
    ];
    for (what, join) in attempts {
        let before = refused_joins(&hub).len();
        let (code, message) = server.join_refused(join, what).await;
        println!("{what}: {code:?}: {message}");
        assert_eq!(code, ErrorCode::Unauthorized, "{what}: {message}");
        let after = refused_joins(&hub);
        assert_eq!(
            after.len(),
            before + 1,
            "{what}: expected one more refused join in the audit log: {after:?}"
        );
        if what.contains("room Y") {
            assert_eq!(
                after[0].meeting_id.as_deref(),
                Some(y.id.as_str()),
                "{after:?}"
            );
        }
    }
    // Nobody got in.
    assert_eq!(hub.participant_count(), 0);
    assert!(hub.store.attendance(&x.id).expect("attendance").is_empty());

    // Valid tokens: name and role come from the token.
    let chair = server
        .join_token(
            &token(&hub, &x.id, "chair", "Đồng chí Chủ tịch", Role::Chair),
            "chair",
            false,
        )
        .await;
    let from = chair.log_len();
    let ep = server.join_token(&valid_x, "endpoint", false).await;
    match joined(&ep) {
        ServerMessage::Joined {
            role,
            can_publish,
            meeting,
            participants,
            room,
            ..
        } => {
            assert_eq!(role, Role::Endpoint);
            assert!(can_publish);
            let meeting = meeting.expect("joined names the meeting");
            assert_eq!(
                (meeting.id.as_str(), meeting.title.as_str()),
                (x.id.as_str(), "Giao ban X")
            );
            assert_eq!(room, x.id);
            let chair_info = participants
                .iter()
                .find(|p| p.id == chair.id())
                .expect("the chair is listed");
            assert_eq!(chair_info.name, "Đồng chí Chủ tịch");
            assert_eq!(chair_info.role, Role::Chair);
        }
        _ => unreachable!(),
    }
    let eid = ep.id();
    let seen = chair
        .wait_message_since(from, Duration::from_secs(5), |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant, .. } if participant.id == eid)
        })
        .await
        .expect("the chair sees the endpoint join");
    if let ServerMessage::ParticipantJoined { participant, .. } = seen {
        assert_eq!(participant.name, "UBND xã Tân Phú");
        assert_eq!(participant.role, Role::Endpoint);
    }
    let observer = server
        .join_token(
            &token(&hub, &x.id, "observer", "Kỹ thuật", Role::Observer),
            "observer",
            false,
        )
        .await;
    match joined(&observer) {
        ServerMessage::Joined {
            role, can_publish, ..
        } => {
            assert_eq!(role, Role::Observer);
            assert!(!can_publish, "observers do not publish");
        }
        _ => unreachable!(),
    }
    // The right token with its own meeting as `room` is fine too.
    let sec_token = token(&hub, &x.id, "secretary", "Thư ký", Role::Secretary);
    let sec = SimEndpoint::open(server.token_opts(&sec_token, "secretary"))
        .await
        .expect("open");
    let from = sec.log_len();
    send(&sec, join_token(&sec_token, Some(&x.id)));
    match sec
        .wait_message_since(from, Duration::from_secs(5), |m| {
            matches!(
                m,
                ServerMessage::Joined { .. } | ServerMessage::Error { .. }
            )
        })
        .await
        .expect("reply to join")
    {
        ServerMessage::Joined { role, .. } => assert_eq!(role, Role::Secretary),
        other => panic!(
            "secretary with room = its meeting: {}",
            common::short(&other)
        ),
    }
    sec.close().await;

    for e in [&chair, &ep, &observer] {
        e.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hall_that_reconnects_keeps_its_floor_and_its_place_in_the_queue() {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (m, eps) = create_meeting(
        &hub,
        "Giao ban",
        MeetingMode::Lecture,
        &["UBND xã An Phú", "UBND xã Bình Minh", "UBND xã Cát Tiên"],
    );
    let tok = |i: usize| token(&hub, &m.id, &eps[i].id, &eps[i].name, Role::Endpoint);
    let (a_tok, b_tok, c_tok) = (tok(0), tok(1), tok(2));
    let chair = server
        .join_token(
            &token(&hub, &m.id, "chair", "Chủ trì", Role::Chair),
            "Chủ trì",
            false,
        )
        .await;
    let a = server.join_token(&a_tok, "Xã A", true).await;
    let b = server.join_token(&b_tok, "Xã B", false).await;
    let c = server.join_token(&c_tok, "Xã C", false).await;
    let (aid, bid, cid) = (a.id(), b.id(), c.id());

    let from = chair.log_len();
    send(&b, ClientMessage::RaiseHand {});
    wait_state(&chair, from, "B queued", |s| queue_ids(s) == [bid.clone()]).await;
    send(&c, ClientMessage::RaiseHand {});
    wait_state(&chair, from, "B, C queued", |s| {
        queue_ids(s) == [bid.clone(), cid.clone()]
    })
    .await;
    send(
        &chair,
        ClientMessage::GrantFloor {
            participant_id: aid.clone(),
            seconds: None,
        },
    );
    wait_state(&chair, from, "A holding the floor", |s| {
        floor_ids(s) == [aid.clone()]
    })
    .await;
    wait_receiving(&chair, &a, TrackKind::Audio, 10, Duration::from_secs(15)).await;

    // A's connection drops (no `leave`): it stays in the meeting (`limits.resume_grace_secs`) and
    // comes back with the same token as the same participant; the chair never sees it leave.
    let from = chair.log_len();
    a.shutdown().await;
    let left = chair
        .wait_message_since(from, Duration::from_secs(3), |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == aid)
        })
        .await;
    assert!(left.is_err(), "A left instead of waiting to come back");
    let a2 = server.join_token(&a_tok, "Xã A (lại)", true).await;
    let a2id = a2.id();
    assert_eq!(a2id, aid, "A resumed as the same participant");
    assert!(
        !chair.messages()[from..].iter().any(|m| matches!(m,
            ServerMessage::ParticipantLeft { participant_id, .. } | ServerMessage::ParticipantJoined { participant: ParticipantInfo { id: participant_id, .. } }
            if *participant_id == aid)),
        "the chair saw A leave or join"
    );
    let own = common::latest_state(&a2).expect("state in joined");
    assert_eq!(
        floor_ids(&own),
        std::slice::from_ref(&a2id),
        "A's joined state: {own:?}"
    );
    let s = wait_state(&chair, from, "the rejoined A holding the floor", |s| {
        floor_ids(s) == std::slice::from_ref(&a2id)
    })
    .await;
    assert_eq!(
        s.main_participant_id.as_deref(),
        Some(a2id.as_str()),
        "{s:?}"
    );
    assert_eq!(s.floor[0].name, eps[0].name);
    wait_receiving(&chair, &a2, TrackKind::Audio, 10, Duration::from_secs(15)).await;
    wait_audio_flowing(&chair, &a2, 10, Duration::from_secs(5)).await;

    // B, first in the queue, drops and rejoins: still first.
    let from = chair.log_len();
    b.shutdown().await;
    let b2 = server.join_token(&b_tok, "Xã B (lại)", false).await;
    let b2id = b2.id();
    assert_eq!(b2id, bid, "B resumed as the same participant");
    let s = wait_state(&chair, from, "the rejoined B first in the queue", |s| {
        queue_ids(s) == [b2id.clone(), cid.clone()]
    })
    .await;
    assert_eq!(s.queue[0].name, eps[1].name);
    assert_eq!(
        floor_ids(&s),
        std::slice::from_ref(&a2id),
        "A still holds the floor: {s:?}"
    );

    for e in [&chair, &a2, &b2, &c] {
        e.close().await;
    }
    server.shutdown().await;
}

/// A hall whose connection drops (no `leave`) and that does not come back stays in the meeting for the resume grace
/// (its tile freezes at the others), then leaves: the chair gets `participant_left`, `/api/rooms` drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hall_that_does_not_come_back_leaves_after_the_grace() {
    // A shorter grace than the default 30 s (the setting is what is tested, not its value).
    const RESUME_GRACE: Duration = Duration::from_secs(8);
    let mut config = giaoban_config::Config::for_tests();
    config.limits.resume_grace_secs = RESUME_GRACE.as_secs();
    let server = TestServer::start_with(config).await;
    let hub = server.hub();
    let (m, eps) = create_meeting(
        &hub,
        "Giao ban",
        MeetingMode::Discussion,
        &["UBND xã An Phú"],
    );
    let chair = server
        .join_token(
            &token(&hub, &m.id, "chair", "Chủ trì", Role::Chair),
            "Chủ trì",
            false,
        )
        .await;
    let a = server
        .join_token(
            &token(&hub, &m.id, &eps[0].id, &eps[0].name, Role::Endpoint),
            "Xã A",
            true,
        )
        .await;
    let aid = a.id();
    wait_receiving(&chair, &a, TrackKind::Audio, 10, Duration::from_secs(15)).await;

    let from = chair.log_len();
    let t0 = std::time::Instant::now();
    a.shutdown().await;
    let left = |m: &ServerMessage| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == aid);
    let early = chair
        .wait_message_since(from, RESUME_GRACE - Duration::from_secs(3), left)
        .await;
    assert!(early.is_err(), "A left before the grace was over");
    assert!(
        common::json_strings(&server.rooms().await).contains(&aid),
        "A is still in the room during the grace"
    );
    chair
        .wait_message_since(from, Duration::from_secs(10), left)
        .await
        .expect("participant_left once the grace is over");
    let after = t0.elapsed();
    println!("a hall that did not come back left after {after:?}");
    assert!(after >= RESUME_GRACE, "left after {after:?}");
    common::wait_until_async("/api/rooms to drop A", Duration::from_secs(5), || async {
        (!common::json_strings(&server.rooms().await).contains(&aid)).then_some(())
    })
    .await;
    chair.close().await;
    server.shutdown().await;
}
