//! Whose media a hall receives in a large meeting (`media.every_hall_up_to`, `hub::receive_for`): with more halls
//! than that, a hall receives the chair and whoever holds the floor, not every other hall; the chair receives
//! every hall. When the floor moves, each hall's subscribe connection is renegotiated once (the old holder's
//! tracks out, the new holder's in) and stays the same connection. Back at or under the size, halls see each
//! other again. The SFU's own view (`SfuHandle::links`: each participant's consumers) is checked beside what the
//! simulated endpoints actually receive.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    TestServer, create_meeting, floor_ids, messages_since, send, token, video_from,
    wait_audio_flowing, wait_receiving, wait_state, wait_until,
};
use giaoban_signaling::protocol::{ClientMessage, MeetingMode, Role, ServerMessage, TrackKind};
use giaoban_tests::sim::SimEndpoint;
use webrtc::peer_connection::RTCPeerConnectionState;

/// The owners of the tracks the SFU forwards to `participant` (producer ids are `<owner>-<n>`).
async fn sources_of(server: &TestServer, participant: &str) -> BTreeSet<String> {
    let links = server.hub().sfu.links().await.expect("links");
    links
        .iter()
        .find(|l| l.participant == participant)
        .map(|l| {
            l.consumers
                .iter()
                .filter_map(|c| {
                    c.track_id
                        .rsplit_once('-')
                        .map(|(owner, _)| owner.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the SFU forwards `participant` exactly the tracks of `owners`.
async fn wait_sources(server: &TestServer, ep: &SimEndpoint, owners: &[&str], what: &str) {
    let want: BTreeSet<String> = owners.iter().map(|s| s.to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = sources_of(server, &ep.id()).await;
        if got == want {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out waiting for {what}: the SFU forwards {} the tracks of {got:?}, not {want:?}",
                ep.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `receiving` message of `ep`: `Some(None)` = everyone, `Some(Some(ids))` = only those.
fn last_receiving(ep: &SimEndpoint) -> Option<Option<Vec<String>>> {
    messages_since(ep, 0, |m| matches!(m, ServerMessage::Receiving { .. }))
        .into_iter()
        .last()
        .map(|m| match m {
            ServerMessage::Receiving { only } => only,
            _ => unreachable!(),
        })
}

fn subscribe_offers_since(ep: &SimEndpoint, from: usize) -> usize {
    messages_since(ep, from, |m| {
        matches!(m, ServerMessage::SubscribeOffer { .. })
    })
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halls_receive_the_chair_and_the_floor_in_a_large_meeting() {
    let mut config = giaoban_config::Config::for_tests();
    config.media.every_hall_up_to = 2;
    let server = TestServer::start_with(config).await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Giao ban tỉnh",
        MeetingMode::Lecture,
        &["UBND xã An Phú", "UBND xã Bình Minh", "UBND xã Cát Tiên"],
    );
    let chair_token = token(&hub, &meeting.id, "chair", "Chủ trì", Role::Chair);
    let hall_token = |i: usize| token(&hub, &meeting.id, &eps[i].id, &eps[i].name, Role::Endpoint);
    let chair = server.join_token(&chair_token, "Chủ trì", true).await;
    let a = server.join_token(&hall_token(0), "Xã A", true).await;
    let b = server.join_token(&hall_token(1), "Xã B", true).await;
    let c = server.join_token(&hall_token(2), "Xã C", true).await;
    let (cid, aid, bid, ccid) = (chair.id(), a.id(), b.id(), c.id());
    let t = Duration::from_secs(15);

    // Three halls, more than two: the chair receives every hall; each hall only the chair.
    for hall in [&a, &b, &c] {
        wait_receiving(&chair, hall, TrackKind::Video, 10, t).await;
        wait_receiving(hall, &chair, TrackKind::Video, 10, t).await;
        wait_receiving(hall, &chair, TrackKind::Audio, 10, t).await;
    }
    wait_sources(
        &server,
        &chair,
        &[&aid, &bid, &ccid],
        "the chair to receive every hall",
    )
    .await;
    for hall in [&a, &b, &c] {
        wait_sources(&server, hall, &[&cid], "a hall to receive only the chair").await;
    }
    // Each hall was told whom it receives (`receiving`), so its page shows those tiles only.
    for hall in [&a, &b, &c] {
        wait_until("a hall to be told it receives only the chair", t, || {
            (last_receiving(hall) == Some(Some(vec![cid.clone()]))).then_some(())
        })
        .await;
    }
    for (sub, other) in [(&a, &bid), (&a, &ccid), (&b, &aid), (&c, &aid)] {
        assert_eq!(
            video_from(sub, other),
            0,
            "{} received another hall's video",
            sub.name()
        );
    }

    // The floor to B: A and C receive B (video and, now that B is heard, audio) over the same connection.
    let (from_a, from_c) = (a.log_len(), c.log_len());
    send(
        &chair,
        ClientMessage::GrantFloor {
            participant_id: bid.clone(),
            seconds: None,
        },
    );
    wait_state(&a, from_a, "B holding the floor", |s| {
        floor_ids(s) == [bid.clone()]
    })
    .await;
    for hall in [&a, &c] {
        wait_receiving(hall, &b, TrackKind::Video, 10, t).await;
        wait_audio_flowing(hall, &b, 10, Duration::from_secs(5)).await;
    }
    wait_sources(&server, &a, &[&cid, &bid], "A to receive the chair and B").await;
    let mut chair_and_b = vec![cid.clone(), bid.clone()];
    chair_and_b.sort();
    assert_eq!(
        last_receiving(&a),
        Some(Some(chair_and_b)),
        "A told it receives the chair and B"
    );
    wait_sources(&server, &c, &[&cid, &bid], "C to receive the chair and B").await;
    // B itself still receives only the chair.
    wait_sources(&server, &b, &[&cid], "B to receive only the chair").await;
    assert_eq!(
        subscribe_offers_since(&a, from_a),
        1,
        "one renegotiation of A for the grant"
    );
    assert_eq!(
        subscribe_offers_since(&c, from_c),
        1,
        "one renegotiation of C for the grant"
    );

    // The floor moves to C (lecture: B loses it): A gets C instead of B in one renegotiation; B gets C.
    let from_a = a.log_len();
    send(
        &chair,
        ClientMessage::GrantFloor {
            participant_id: ccid.clone(),
            seconds: None,
        },
    );
    wait_state(&a, from_a, "C holding the floor", |s| {
        floor_ids(s) == [ccid.clone()]
    })
    .await;
    wait_receiving(&a, &c, TrackKind::Video, 10, t).await;
    wait_receiving(&b, &c, TrackKind::Video, 10, t).await;
    wait_sources(&server, &a, &[&cid, &ccid], "A to receive the chair and C").await;
    wait_sources(&server, &b, &[&cid, &ccid], "B to receive the chair and C").await;
    wait_sources(&server, &c, &[&cid], "C to receive only the chair").await;
    assert_eq!(
        subscribe_offers_since(&a, from_a),
        1,
        "one renegotiation of A for B out and C in"
    );
    // Nothing of B reaches A any more.
    let b_video = video_from(&a, &bid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        video_from(&a, &bid),
        b_video,
        "B's video still reaches A after the floor moved on"
    );
    // The chair received every hall all along, and the halls' subscribe connections stayed up.
    for hall in [&a, &b, &c] {
        common::assert_still_flowing(&chair, hall, 20).await;
        assert_eq!(
            hall.pc_state(giaoban_signaling::protocol::Leg::Subscribe)
                .await,
            Some(RTCPeerConnectionState::Connected),
            "{}'s subscribe connection",
            hall.name()
        );
    }

    // C leaves: two halls, within the size: A and B receive each other again.
    send(&c, ClientMessage::Leave {});
    c.shutdown().await;
    wait_sources(&server, &a, &[&cid, &bid], "A to receive everyone again").await;
    wait_sources(&server, &b, &[&cid, &aid], "B to receive everyone again").await;
    wait_receiving(&a, &b, TrackKind::Video, video_from(&a, &bid) + 10, t).await;
    assert_eq!(
        last_receiving(&a),
        Some(None),
        "A told it receives everyone again"
    );
    wait_until("B to receive A's video", t, || {
        (video_from(&b, &aid) > 10).then_some(())
    })
    .await;
}
