//! Floor control enforced by the media plane, in a lecture-mode meeting (chair + two endpoints, all publishing):
//! an endpoint's audio reaches nobody until the chair grants it the floor (its video flows all along); a
//! revoke stops it again; a grant with `seconds` is taken back by the server's timer. `meeting_state` carries the
//! floor holder and the main picture, and raised hands queue in order.

mod common;

use std::time::{Duration, Instant};

use common::{
    TestServer, assert_audio_silent, create_meeting, floor_ids, queue_ids, send, token, video_from,
    wait_audio_flowing, wait_receiving, wait_state, wait_until,
};
use giaoban_signaling::protocol::{ClientMessage, MeetingMode, Role, TrackKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lecture_floor_decides_who_is_heard() {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Giao ban chỉ đạo",
        MeetingMode::Lecture,
        &["UBND xã An Phú", "UBND xã Bình Minh"],
    );
    let chair_token = token(&hub, &meeting.id, "chair", "Chủ trì", Role::Chair);
    let a_token = token(&hub, &meeting.id, &eps[0].id, &eps[0].name, Role::Endpoint);
    let b_token = token(&hub, &meeting.id, &eps[1].id, &eps[1].name, Role::Endpoint);

    let chair = server.join_token(&chair_token, "Chủ trì", true).await;
    let a = server.join_token(&a_token, "Xã A", true).await;
    let b = server.join_token(&b_token, "Xã B", true).await;
    let (aid, bid, cid) = (a.id(), b.id(), chair.id());

    // The media paths work: A's video reaches B and the chair, the chair is heard by both.
    let t = Duration::from_secs(15);
    wait_receiving(&b, &a, TrackKind::Video, 10, t).await;
    wait_receiving(&chair, &a, TrackKind::Video, 10, t).await;
    wait_receiving(&a, &chair, TrackKind::Audio, 10, t).await;
    wait_receiving(&b, &chair, TrackKind::Audio, 10, t).await;

    // Before any grant: A's audio reaches nobody while A sends; its video keeps flowing.
    let video_before = video_from(&b, &aid);
    assert_audio_silent(&[&b, &chair], &a, Duration::from_secs(1)).await;
    assert!(
        video_from(&b, &aid) > video_before,
        "A's video stopped reaching B"
    );
    assert_eq!(
        common::audio_from(&b, &aid),
        0,
        "B heard A before any grant"
    );
    assert_eq!(
        common::audio_from(&chair, &aid),
        0,
        "the chair heard A before any grant"
    );

    // Raised hands queue in order: A first, then B.
    let from = chair.log_len();
    send(&a, ClientMessage::RaiseHand {});
    wait_state(&chair, from, "A in the queue", |s| {
        queue_ids(s) == [aid.clone()]
    })
    .await;
    send(&b, ClientMessage::RaiseHand {});
    let s = wait_state(&chair, from, "A then B in the queue", |s| {
        queue_ids(s) == [aid.clone(), bid.clone()]
    })
    .await;
    assert_eq!(s.queue[0].name, eps[0].name);
    assert_eq!(s.queue[1].name, eps[1].name);
    assert_eq!(s.mode, MeetingMode::Lecture);

    // Grant the floor to A: A's audio reaches both; the state names A as holder and main picture; A's hand is down.
    let (from_chair, from_b) = (chair.log_len(), b.log_len());
    send(
        &chair,
        ClientMessage::GrantFloor {
            participant_id: aid.clone(),
            seconds: None,
        },
    );
    for (ep, from) in [(&chair, from_chair), (&b, from_b)] {
        let s = wait_state(ep, from, "A holding the floor", |s| {
            floor_ids(s) == [aid.clone()]
        })
        .await;
        assert_eq!(
            s.main_participant_id.as_deref(),
            Some(aid.as_str()),
            "{s:?}"
        );
        assert_eq!(s.floor[0].name, eps[0].name);
        assert_eq!(s.floor[0].remaining_ms, None, "no time limit: {s:?}");
        assert_eq!(
            queue_ids(&s),
            std::slice::from_ref(&bid),
            "A's hand came down: {s:?}"
        );
    }
    wait_audio_flowing(&b, &a, 10, Duration::from_secs(5)).await;
    wait_audio_flowing(&chair, &a, 10, Duration::from_secs(5)).await;
    // B, still only in the queue, is not heard.
    assert_eq!(
        common::audio_from(&a, &bid),
        0,
        "A heard B, who has no floor"
    );

    // Revoke: A's audio stops again, the main picture goes back to the chair.
    let from = chair.log_len();
    send(
        &chair,
        ClientMessage::RevokeFloor {
            participant_id: aid.clone(),
        },
    );
    let s = wait_state(&chair, from, "an empty floor", |s| s.floor.is_empty()).await;
    assert_eq!(
        s.main_participant_id.as_deref(),
        Some(cid.as_str()),
        "{s:?}"
    );
    assert_audio_silent(&[&b, &chair], &a, Duration::from_secs(1)).await;

    // A grant for 2 s: heard at once, then the server takes it back by itself.
    let from = chair.log_len();
    let granted_at = Instant::now();
    send(
        &chair,
        ClientMessage::GrantFloor {
            participant_id: aid.clone(),
            seconds: Some(2),
        },
    );
    let s = wait_state(&chair, from, "A holding a timed floor", |s| {
        floor_ids(s) == [aid.clone()]
    })
    .await;
    let remaining = s.floor[0]
        .remaining_ms
        .expect("a timed grant shows remaining_ms");
    assert!(
        remaining <= 2000 && remaining > 0,
        "remaining_ms {remaining}"
    );
    assert_eq!(s.main_participant_id.as_deref(), Some(aid.as_str()));
    wait_audio_flowing(&b, &a, 10, Duration::from_secs(5)).await;
    wait_audio_flowing(&chair, &a, 10, Duration::from_secs(5)).await;
    let s = wait_state(&chair, from, "the timed floor taken back", |s| {
        s.floor.is_empty()
    })
    .await;
    let held = granted_at.elapsed();
    println!("timed floor taken back after {held:?}");
    assert!(
        held >= Duration::from_millis(1900),
        "a 2 s floor was taken back after only {held:?}"
    );
    assert_eq!(s.main_participant_id.as_deref(), Some(cid.as_str()));
    assert_audio_silent(&[&b, &chair], &a, Duration::from_secs(1)).await;

    // The expiry is audited.
    let audit = hub
        .store
        .audit_log(Some(&meeting.id), 100)
        .expect("audit log");
    assert!(
        audit
            .iter()
            .any(|e| e.action == "floor_expired" && e.detail == eps[0].id),
        "no floor_expired audit entry: {audit:?}"
    );
    // The chair stayed audible throughout.
    wait_until("chair still heard by B", Duration::from_secs(5), || {
        (common::audio_from(&b, &cid) > 0).then_some(())
    })
    .await;
    common::assert_still_flowing(&b, &chair, 20).await;

    for ep in [&a, &b, &chair] {
        ep.close().await;
    }
    server.shutdown().await;
}
