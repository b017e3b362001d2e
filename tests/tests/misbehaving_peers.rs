//! Misbehaving peers: a publisher whose video is garbage (random payloads and lengths, jumping sequence numbers and
//! timestamps) is contained — the others' media stays intact, its own audio still flows, the server carries on;
//! and a chair cannot reach into another meeting: moderation aimed at a participant of another room is refused and
//! that participant notices nothing.

mod common;

use std::time::Duration;

use common::{
    TestServer, assert_alive, assert_still_flowing, audio_from, create_meeting, expect_error,
    token, wait_all_flowing, wait_audio_flowing,
};
use giaoban_signaling::protocol::{ClientMessage, ErrorCode, MeetingMode, Role, ServerMessage};
use giaoban_tests::sim::{SimEndpoint, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_sending_garbage_video_harms_no_one() {
    let server = TestServer::start().await;
    let room = "rac-rtp";
    let a = server.endpoint(room, "Xã A", true).await;
    let c = server.endpoint(room, "Xã C", true).await;
    let mut opts = server.opts(room, "Xã B (rác)");
    opts.media.garbage_video = true;
    let b = SimEndpoint::connect(opts).await.expect("B joins");
    b.publish().await.expect("B publishes");
    wait_all_flowing(&[&a, &c], &[&a, &c], Duration::from_secs(15)).await;
    // B's audio is fine and reaches both.
    wait_audio_flowing(&a, &b, 20, Duration::from_secs(10)).await;
    wait_audio_flowing(&c, &b, 20, Duration::from_secs(10)).await;

    // Three more seconds of garbage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = b.sent();
    assert!(
        sent.video_packets > 200,
        "B really sent garbage video: {sent:?}"
    );

    // Everyone else's media is intact and still flowing; B's audio too; all sessions answer.
    for (sub, publisher) in [(&a, &c), (&c, &a)] {
        for t in sub
            .stats()
            .received
            .iter()
            .filter(|t| t.participant_id == publisher.id())
        {
            assert_eq!(
                t.payload_errors,
                0,
                "{} got corrupt payloads from {}: {t:?}",
                sub.name(),
                publisher.name()
            );
            assert!(t.packets > 0, "{t:?}");
        }
        assert_still_flowing(sub, publisher, 20).await;
    }
    let before = audio_from(&a, &b.id());
    wait_audio_flowing(&a, &b, 20, Duration::from_secs(5)).await;
    assert!(audio_from(&a, &b.id()) > before);
    for ep in [&a, &b, &c] {
        assert_alive(ep).await;
    }
    let (status, body) = http_get(server.http, "/healthz").await.expect("GET");
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chair_cannot_act_on_another_meeting() {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (x, _) = create_meeting(&hub, "Giao ban X", MeetingMode::Lecture, &["Xã X1"]);
    let (y, ys) = create_meeting(&hub, "Giao ban Y", MeetingMode::Discussion, &["Xã Y1"]);
    let chair_x = server
        .join_token(
            &token(&hub, &x.id, "chair-x", "Chủ trì X", Role::Chair),
            "Chủ trì X",
            true,
        )
        .await;
    let chair_y = server
        .join_token(
            &token(&hub, &y.id, "chair-y", "Chủ trì Y", Role::Chair),
            "Chủ trì Y",
            true,
        )
        .await;
    let y1 = server
        .join_token(
            &token(&hub, &y.id, &ys[0].id, &ys[0].name, Role::Endpoint),
            &ys[0].name,
            true,
        )
        .await;
    // Y is a discussion: Y1 is heard by Y's chair.
    wait_audio_flowing(&chair_y, &y1, 20, Duration::from_secs(15)).await;

    let target = y1.id();
    let y1_log = y1.log_len();
    for msg in [
        ClientMessage::Mute {
            participant_id: target.clone(),
        },
        ClientMessage::AskUnmute {
            participant_id: target.clone(),
        },
        ClientMessage::GrantFloor {
            participant_id: target.clone(),
            seconds: None,
        },
        ClientMessage::RevokeFloor {
            participant_id: target.clone(),
        },
        ClientMessage::Remove {
            participant_id: target.clone(),
        },
        ClientMessage::SetAbsenceReason {
            endpoint_id: ys[0].id.clone(),
            reason: "Mất điện".into(),
        },
    ] {
        let what = format!("{msg:?}");
        let (code, message) = expect_error(&chair_x, msg).await;
        assert!(
            matches!(code, ErrorCode::NotFound | ErrorCode::Forbidden),
            "{what}: {code:?} {message}"
        );
    }
    // Y1 noticed nothing: still in, still heard, no mute or removal addressed to it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let since: Vec<_> = y1.messages().into_iter().skip(y1_log).collect();
    assert!(
        !since.iter().any(|m| matches!(
            m,
            ServerMessage::Muted { .. }
                | ServerMessage::UnmuteRequested { .. }
                | ServerMessage::Bye { .. }
        )),
        "Y1 got a message from X's chair: {since:?}"
    );
    assert_alive(&y1).await;
    wait_audio_flowing(&chair_y, &y1, 20, Duration::from_secs(5)).await;
    // X's chair hears nothing of Y.
    assert_eq!(audio_from(&chair_x, &y1.id()), 0);
    assert_alive(&chair_x).await;
    server.shutdown().await;
}
