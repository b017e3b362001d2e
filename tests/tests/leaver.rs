//! (c) When a participant leaves, the others get `participant_left` (and `track_unpublished` for its tracks)
//! and a new `subscribe_offer`, its packets stop, and `/api/rooms` no longer lists it.

mod common;

use std::time::Duration;

use common::{
    TestServer, json_strings, messages_since, packets_from, wait_all_flowing, wait_until_async,
};
use giaoban_signaling::protocol::ServerMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaver_tracks_go_away() {
    let server = TestServer::start().await;
    let room = "giao-ban-roi";
    let a = server.endpoint(room, "Xã A", true).await;
    let b = server.endpoint(room, "Xã B", true).await;
    let c = server.endpoint(room, "Xã C rời", true).await;
    let all = [&a, &b, &c];
    wait_all_flowing(&all, &all, Duration::from_secs(15)).await;

    // /api/rooms lists all three, with C's tracks.
    let c_id = c.id();
    let c_tracks: Vec<String> = a
        .stats()
        .received
        .iter()
        .filter(|t| t.participant_id == c_id)
        .map(|t| t.track_id.clone())
        .collect();
    assert_eq!(c_tracks.len(), 2, "A receives C's two tracks");
    let rooms = server.rooms().await;
    let strings = json_strings(&rooms);
    for ep in all {
        assert!(
            strings.contains(&ep.id()),
            "/api/rooms lacks {}: {rooms}",
            ep.id()
        );
    }
    for t in &c_tracks {
        assert!(
            strings.contains(t),
            "/api/rooms lacks C's track {t}: {rooms}"
        );
    }

    let marks = [a.log_len(), b.log_len()];
    c.close().await;

    for (ep, from) in [(&a, marks[0]), (&b, marks[1])] {
        let id = c_id.clone();
        ep.wait_message_since(from, Duration::from_secs(5), |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == id)
        })
        .await
        .expect("participant_left for the leaver");
        // Its tracks leave the subscribe connection: the server renegotiates.
        ep.wait_message_since(from, Duration::from_secs(5), |m| {
            matches!(m, ServerMessage::SubscribeOffer { .. })
        })
        .await
        .expect("a new subscribe_offer after the leave");
        let unpublished = messages_since(
            ep,
            from,
            |m| matches!(m, ServerMessage::TrackUnpublished { participant_id, .. } if *participant_id == c_id),
        );
        println!(
            "{} got {} track_unpublished for C",
            ep.name(),
            unpublished.len()
        );
        for m in &unpublished {
            if let ServerMessage::TrackUnpublished { track_id, .. } = m {
                assert!(
                    c_tracks.contains(track_id),
                    "track_unpublished names an unknown track {track_id}"
                );
            }
        }
    }

    // Packets from C stop (allow what was in flight to drain).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = [packets_from(&a, &c_id), packets_from(&b, &c_id)];
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        [packets_from(&a, &c_id), packets_from(&b, &c_id)],
        frozen,
        "packets from the leaver still arrive"
    );

    // /api/rooms reflects it.
    wait_until_async(
        "/api/rooms to drop the leaver",
        Duration::from_secs(5),
        || async {
            let rooms = server.rooms().await;
            let strings = json_strings(&rooms);
            let gone = !strings.contains(&c_id) && c_tracks.iter().all(|t| !strings.contains(t));
            let others = strings.contains(&a.id()) && strings.contains(&b.id());
            (gone && others).then_some(())
        },
    )
    .await;

    // The others still exchange media.
    common::assert_still_flowing(&a, &b, 50).await;
    common::assert_still_flowing(&b, &a, 50).await;

    for ep in [&a, &b] {
        ep.close().await;
    }
    server.shutdown().await;
}
