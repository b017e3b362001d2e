//! Simulcast through the real server: a simulated chair publishes its camera in three layers (rids q/h/f, each its
//! own SSRC, keyframes announcing 240/480/960 wide); a simulated hall receives it. The SFU's own link health shows
//! the three layers arriving; the chair's `set_layer_cap` and the hall's `video_size` move the hall between layers
//! (the keyframe widths it receives follow); the hall's stream stays continuous through every switch (one SSRC, no
//! sequence or PictureID jump); layers nobody receives are announced to the publisher with `layers`; bad input is
//! refused with a clear error and the session carries on.

mod common;

use std::time::Duration;

use common::{TestServer, assert_alive, create_meeting, expect_error, send, token};
use giaoban_signaling::protocol::{
    ClientMessage, ErrorCode, LayerCap, MeetingMode, Role, ServerMessage, TrackKind, TrackSource,
};
use giaoban_tests::sim::{SimEndpoint, SimOptions};

/// The SFU's view of the chair's camera producer: (rid, packets, paused) per layer.
async fn layers_at_sfu(server: &TestServer, chair: &str) -> Vec<(String, u64, bool)> {
    let links = server.hub().sfu.links().await.expect("links");
    links
        .iter()
        .find(|l| l.participant == chair)
        .and_then(|l| {
            l.producers
                .iter()
                .find(|p| p.kind == giaoban_sfu::MediaKind::Video)
        })
        .map(|p| {
            p.layers
                .iter()
                .map(|l| (l.rid.clone(), l.packets, l.paused))
                .collect()
        })
        .unwrap_or_default()
}

/// The layer the SFU forwards to `hall` now, and the one it switches to.
async fn chosen(server: &TestServer, hall: &str) -> Option<(Option<String>, Option<String>)> {
    let links = server.hub().sfu.links().await.expect("links");
    let l = links.iter().find(|l| l.participant == hall)?;
    let c = l.consumers.first()?;
    Some((c.layer.clone(), c.target.clone()))
}

/// Wait until the hall gets layer `rid` (SFU's choice) and a keyframe `width` wide has arrived since `from`.
async fn wait_layer(
    server: &TestServer,
    hall: &SimEndpoint,
    chair_id: &str,
    track_id: &str,
    rid: &str,
    width: u16,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = chosen(server, &hall.id()).await;
        let widths = hall
            .track(chair_id, track_id)
            .map(|t| t.keyframe_widths)
            .unwrap_or_default();
        if c == Some((Some(rid.into()), Some(rid.into()))) && widths.last() == Some(&width) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hall should get layer {rid} ({width} wide): SFU says {c:?}, keyframe widths {widths:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hall_is_moved_between_simulcast_layers_and_its_stream_stays_continuous() {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Giao ban simulcast",
        MeetingMode::Lecture,
        &["UBND xã Tân Phú"],
    );
    let mid = meeting.id.clone();
    let mut chair_opts = server.token_opts(
        &token(&hub, &mid, "chair", "Chủ trì", Role::Chair),
        "Chủ trì",
    );
    chair_opts.media.simulcast = true;
    // f 1 Mbit/s, h 250k, q 62k (the loopback link loses nothing: the downlink is not what limits).
    chair_opts.media.video_bitrate_bps = 1_000_000;
    chair_opts.media.video_fps = 20;
    let chair = SimEndpoint::connect(chair_opts).await.expect("chair joins");
    chair.publish().await.expect("chair publishes simulcast");
    let hall_opts: SimOptions = server.token_opts(
        &token(&hub, &mid, &eps[0].id, &eps[0].name, Role::Endpoint),
        "Xã Tân Phú",
    );
    let hall = SimEndpoint::connect(hall_opts).await.expect("hall joins");
    let chair_id = chair.id();
    let hall_id = hall.id();

    let video =
        common::wait_receiving(&hall, &chair, TrackKind::Video, 30, Duration::from_secs(15)).await;
    let track_id = video.track_id.clone();

    // Three layers arrive at the SFU, smallest first, each with packets.
    let layers = wait_until_layers(&server, &chair_id).await;
    println!("layers at the SFU: {layers:?}");
    assert_eq!(
        layers.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(),
        ["q", "h", "f"]
    );

    // No size reported, no cap, ample estimate: the full layer.
    wait_layer(&server, &hall, &chair_id, &track_id, "f", 960).await;

    // The chair caps the hall at low: q; the publisher hears that nobody receives h and f.
    let from = chair.log_len();
    send(
        &chair,
        ClientMessage::SetLayerCap {
            participant_id: hall_id.clone(),
            max_layer: Some(LayerCap::Low),
        },
    );
    wait_layer(&server, &hall, &chair_id, &track_id, "q", 240).await;
    let layers_msg = chair
        .wait_message_since(
            from,
            Duration::from_secs(5),
            |m| matches!(m, ServerMessage::Layers { active, .. } if active == &["q"]),
        )
        .await
        .expect("the chair is told to send only q");
    if let ServerMessage::Layers { source, .. } = &layers_msg {
        assert_eq!(*source, TrackSource::Camera);
    }
    let paused: Vec<bool> = layers_at_sfu(&server, &chair_id)
        .await
        .iter()
        .map(|l| l.2)
        .collect();
    assert_eq!(
        paused,
        [false, true, true],
        "h and f paused at the publisher"
    );

    // Medium: h.
    send(
        &chair,
        ClientMessage::SetLayerCap {
            participant_id: hall_id.clone(),
            max_layer: Some(LayerCap::Medium),
        },
    );
    wait_layer(&server, &hall, &chair_id, &track_id, "h", 480).await;

    // Cap lifted; the hall shows the video 200 px wide: q is enough. Then 2000 px: f.
    send(
        &chair,
        ClientMessage::SetLayerCap {
            participant_id: hall_id.clone(),
            max_layer: None,
        },
    );
    send(
        &hall,
        ClientMessage::VideoSize {
            track_id: track_id.clone(),
            width: 200,
            height: 112,
        },
    );
    wait_layer(&server, &hall, &chair_id, &track_id, "q", 240).await;
    send(
        &hall,
        ClientMessage::VideoSize {
            track_id: track_id.clone(),
            width: 2000,
            height: 1125,
        },
    );
    wait_layer(&server, &hall, &chair_id, &track_id, "f", 960).await;

    // Five switches, one continuous stream: the hall saw one SSRC, consecutive sequence numbers and PictureIDs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = hall.track(&chair_id, &track_id).expect("video track");
    println!(
        "hall: {} packets, keyframe widths {:?}, seq jumps {}, PictureID jumps {}, SSRC changes {}",
        t.packets, t.keyframe_widths, t.seq_jumps, t.picture_id_jumps, t.ssrc_changes
    );
    assert_eq!(t.keyframe_widths, [960, 240, 480, 240, 960]);
    assert_eq!(t.ssrc_changes, 0, "one SSRC through every switch");
    assert_eq!(
        t.seq_jumps, 0,
        "sequence numbers continue through every switch"
    );
    assert_eq!(
        t.picture_id_jumps, 0,
        "PictureIDs continue through every switch"
    );

    // Bad input: a hall may not cap; no such participant; no such track; too large. The session carries on.
    let (code, message) = expect_error(
        &hall,
        ClientMessage::SetLayerCap {
            participant_id: chair_id.clone(),
            max_layer: Some(LayerCap::Low),
        },
    )
    .await;
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    let (code, message) = expect_error(
        &chair,
        ClientMessage::SetLayerCap {
            participant_id: "p-khong-co".into(),
            max_layer: Some(LayerCap::Low),
        },
    )
    .await;
    assert_eq!(code, ErrorCode::NotFound, "{message}");
    assert!(message.contains("p-khong-co"), "{message}");
    let (code, message) = expect_error(
        &hall,
        ClientMessage::VideoSize {
            track_id: "khong-co".into(),
            width: 100,
            height: 100,
        },
    )
    .await;
    assert_eq!(code, ErrorCode::InvalidField, "{message}");
    let (code, message) = expect_error(
        &hall,
        ClientMessage::VideoSize {
            track_id: track_id.clone(),
            width: 100_000,
            height: 100,
        },
    )
    .await;
    assert_eq!(code, ErrorCode::InvalidField, "{message}");
    assert!(message.contains("16384"), "{message}");
    assert_alive(&hall).await;
    common::assert_still_flowing(&hall, &chair, 30).await;

    chair.close().await;
    hall.close().await;
    server.shutdown().await;
}

async fn wait_until_layers(server: &TestServer, chair: &str) -> Vec<(String, u64, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let layers = layers_at_sfu(server, chair).await;
        if layers.len() == 3 && layers.iter().all(|l| l.1 > 20) {
            return layers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "three layers with packets at the SFU: {layers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
