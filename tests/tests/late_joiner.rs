//! (b) A participant joining after others publish is told about their tracks in `joined` and receives them,
//! starting with a keyframe it can decode.

mod common;

use std::time::Duration;

use common::{TestServer, assert_intact, wait_all_flowing, wait_receiving, wait_until};
use giaoban_signaling::protocol::{ServerMessage, TrackKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_receives_existing_tracks() {
    let server = TestServer::start().await;
    let room = "giao-ban-tre";
    let a = server.endpoint(room, "Chủ trì", true).await;
    let b = server.endpoint(room, "Xã B", true).await;
    wait_all_flowing(&[&a, &b], &[&a, &b], Duration::from_secs(15)).await;
    // Both have been sending for a while before the late joiner arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let late = giaoban_tests::sim::SimEndpoint::open(server.opts(room, "Xã đến muộn"))
        .await
        .expect("late joiner connects");
    let participants = late.join().await.expect("late joiner joins");

    // `joined` lists both with their audio and video tracks.
    for ep in [&a, &b] {
        let p = participants
            .iter()
            .find(|p| p.id == ep.id())
            .unwrap_or_else(|| {
                panic!(
                    "joined does not list {} ({}): {participants:?}",
                    ep.name(),
                    ep.id()
                )
            });
        assert_eq!(p.name, ep.name());
        for kind in [TrackKind::Audio, TrackKind::Video] {
            assert!(
                p.tracks.iter().any(|t| t.kind == kind),
                "joined lists no {kind:?} track for {}: {p:?}",
                ep.name()
            );
        }
    }

    // It receives every listed track, under the listed ids (stream id = participant, track id = track).
    for ep in [&a, &b] {
        let audio = wait_receiving(&late, ep, TrackKind::Audio, 25, Duration::from_secs(10)).await;
        let video = wait_receiving(&late, ep, TrackKind::Video, 60, Duration::from_secs(10)).await;
        let listed = &participants
            .iter()
            .find(|p| p.id == ep.id())
            .expect("listed")
            .tracks;
        for got in [&audio, &video] {
            assert!(
                listed
                    .iter()
                    .any(|t| t.id == got.track_id && t.kind == got.kind),
                "received track id {} ({:?}) is not among those `joined` listed: {listed:?}",
                got.track_id,
                got.kind
            );
        }
        // A late subscriber needs a keyframe to start decoding: the server must get one from the publisher.
        wait_until(
            &format!("a keyframe from {} at the late joiner", ep.name()),
            Duration::from_secs(5),
            || {
                late.stats()
                    .track_from(&ep.id(), TrackKind::Video)
                    .filter(|t| t.keyframes > 0)
                    .map(|_| ())
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = late.stats();
    for ep in [&a, &b] {
        let sent = ep.sent();
        assert_intact(
            &late,
            ep,
            got.track_from(&ep.id(), TrackKind::Audio).expect("audio"),
            sent.audio_packets,
            15,
        );
        assert_intact(
            &late,
            ep,
            got.track_from(&ep.id(), TrackKind::Video).expect("video"),
            sent.video_packets,
            80,
        );
    }

    // The earlier participants were told about the late joiner.
    for ep in [&a, &b] {
        let late_id = late.id();
        ep.wait_message_since(0, Duration::from_secs(5), |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant, .. } if participant.id == late_id)
        })
        .await
        .expect("participant_joined for the late joiner");
    }

    for ep in [&a, &b, &late] {
        ep.close().await;
    }
    server.shutdown().await;
}
