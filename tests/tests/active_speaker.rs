//! Active speaker: from the halls' audio levels (RFC 6464), the loudest hall that is heard becomes the speaker and
//! everyone is told; a quiet hall below the speaking threshold never does; when the chair mutes the loud hall, the
//! next loudest heard one takes over.

mod common;

use std::time::Duration;

use common::{TestServer, create_meeting, send, token, wait_all_flowing};
use giaoban_signaling::protocol::{ClientMessage, MeetingMode, Role, ServerMessage};
use giaoban_tests::sim::SimEndpoint;

/// The `active_speaker` announcements `ep` got since `from`.
fn speakers_since(ep: &SimEndpoint, from: usize) -> Vec<String> {
    ep.messages()
        .into_iter()
        .skip(from)
        .filter_map(|m| match m {
            ServerMessage::ActiveSpeaker { participant_id } => Some(participant_id),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loudest_heard_hall_is_announced_as_speaker() {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Thảo luận",
        MeetingMode::Discussion,
        &["Xã To", "Xã Vừa", "Xã Nhỏ"],
    );
    let chair = server
        .join_token(
            &token(&hub, &meeting.id, "chair", "Chủ trì", Role::Chair),
            "Chủ trì",
            false,
        )
        .await;
    let mut halls = Vec::new();
    // RFC 6464 levels: 10 (−10 dBov), 30 (−30 dBov), 80 (−80 dBov: below the threshold).
    for (ep, level) in eps.iter().zip([10u8, 30, 80]) {
        let mut o = server.token_opts(
            &token(&hub, &meeting.id, &ep.id, &ep.name, Role::Endpoint),
            &ep.name,
        );
        o.media.audio_level = Some(level);
        let h = SimEndpoint::connect(o).await.expect("hall joins");
        h.publish().await.expect("hall publishes");
        halls.push(h);
    }
    let (loud, medium, quiet) = (&halls[0], &halls[1], &halls[2]);
    wait_all_flowing(&[&chair], &[loud, medium], Duration::from_secs(15)).await;

    let loud_id = loud.id();
    common::wait_until(
        "everyone told the loud hall speaks",
        Duration::from_secs(5),
        || {
            [&chair, loud, medium, quiet]
                .iter()
                .all(|ep| speakers_since(ep, 0).last() == Some(&loud_id))
                .then_some(())
        },
    )
    .await;

    let from = chair.log_len();
    send(
        &chair,
        ClientMessage::Mute {
            participant_id: loud.id(),
        },
    );
    let medium_id = medium.id();
    common::wait_until("the medium hall takes over", Duration::from_secs(5), || {
        (speakers_since(&chair, from).last() == Some(&medium_id)).then_some(())
    })
    .await;
    let all: Vec<String> = speakers_since(&chair, 0);
    assert!(
        !all.contains(&quiet.id()),
        "the quiet hall (−80 dBov) is never the speaker: {all:?}"
    );
    server.shutdown().await;
}
