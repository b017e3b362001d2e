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
    let c = l
        .consumers
        .iter()
        .find(|c| c.kind == giaoban_sfu::MediaKind::Video)?;
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
    // The join's own switches come before the ones this test asks for. The hall's link is not known yet, so it
    // starts on q (the start estimate), and goes up once its probe carried: never down, as when its first layer
    // was chosen at an unconstrained estimate and the start estimate then cut it (f, then q, then f).
    let join_widths = hall
        .track(&chair_id, &track_id)
        .map(|t| t.keyframe_widths)
        .unwrap_or_default();
    println!("join: keyframe widths {join_widths:?}");
    assert_eq!(join_widths.first(), Some(&240), "a new link starts on q");
    assert!(
        join_widths.is_sorted(),
        "the join only switches up: {join_widths:?}"
    );
    let before_switches = join_widths.len();

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
    if let ServerMessage::Layers { source, paused, .. } = &layers_msg {
        assert_eq!(*source, TrackSource::Camera);
        assert_eq!(paused, &["h", "f"], "the layers to stop are named");
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
    // From the f the hall was on when the test began moving it.
    let widths = &t.keyframe_widths[before_switches.saturating_sub(1)..];
    assert_eq!(widths, [960, 240, 480, 240, 960], "{:?}", t.keyframe_widths);
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

// ---------------------------------------------------------------------------------------------------------------
// Audio first on a lossy downlink, in a network namespace of its own
// ---------------------------------------------------------------------------------------------------------------

/// Drop this fraction of what the server's media port sends to the hall (127.0.0.2); 0 removes the rule.
fn downlink_loss(media_port: u16, probability: f64) {
    common::run("iptables", &["-F", "OUTPUT"]);
    if probability > 0.0 {
        common::random_drop("-A", media_port, "127.0.0.2", probability);
    }
}

/// The hall's downlink loses more and more: the SFU moves it to a lower layer, then pauses its video (told with
/// `video_paused`) while audio is still forwarded, and resumes the video when the loss is gone. The loss is an
/// iptables rule in a network namespace made for this test (the test binary runs itself again inside it), so
/// nothing outside the test is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_downlink_drops_layers_then_pauses_video_keeping_audio_and_resumes() {
    if common::in_netns_child() {
        audio_first_in_namespace().await;
        return;
    }
    common::rerun_in_netns(
        "simul-loss",
        "a_lossy_downlink_drops_layers_then_pauses_video_keeping_audio_and_resumes",
    )
    .await;
}

async fn audio_first_in_namespace() {
    let server = TestServer::start().await;
    let media_port = server.media.port();
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Giao ban mạng yếu",
        MeetingMode::Lecture,
        &["UBND xã Vùng Cao"],
    );
    let mid = meeting.id.clone();
    let mut chair_opts = server.token_opts(
        &token(&hub, &mid, "chair", "Chủ trì", Role::Chair),
        "Chủ trì",
    );
    chair_opts.media.simulcast = true;
    chair_opts.media.video_bitrate_bps = 1_000_000;
    chair_opts.media.video_fps = 20;
    let chair = SimEndpoint::connect(chair_opts).await.expect("chair joins");
    chair.publish().await.expect("chair publishes simulcast");
    let mut hall_opts = server.token_opts(
        &token(&hub, &mid, &eps[0].id, &eps[0].name, Role::Endpoint),
        "Xã Vùng Cao",
    );
    // The hall's own loopback address: the loss rule matches only what goes to it.
    hall_opts.bind_ip = std::net::IpAddr::from([127, 0, 0, 2]);
    let hall = SimEndpoint::connect(hall_opts).await.expect("hall joins");
    let chair_id = chair.id();
    let hall_id = hall.id();
    let video =
        common::wait_receiving(&hall, &chair, TrackKind::Video, 30, Duration::from_secs(15)).await;
    let track_id = video.track_id.clone();
    wait_layer(&server, &hall, &chair_id, &track_id, "f", 960).await;

    // Half of the downlink lost: the estimate falls to what gets through, the hall moves below f.
    downlink_loss(media_port, 0.5);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let lower = loop {
        if let Some((_, Some(target))) = chosen(&server, &hall_id).await
            && target != "f"
        {
            break target;
        }
        if tokio::time::Instant::now() >= deadline {
            let links = server.hub().sfu.links().await.expect("links");
            let l = links
                .iter()
                .find(|l| l.participant == hall_id)
                .expect("hall");
            panic!(
                "with 50 % loss the hall should leave layer f: {:?}; estimate {:?}, subscribe leg {:?}",
                chosen(&server, &hall_id).await,
                l.estimate,
                l.subscribe
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("50 % downlink loss: the hall moves to layer {lower}");

    // Nearly everything lost: not even q fits; the video is paused and the hall told so; audio still goes out.
    let from = hall.log_len();
    downlink_loss(media_port, 0.95);
    hall.wait_message_since(
        from,
        Duration::from_secs(20),
        |m| matches!(m, ServerMessage::VideoPaused { track_id: t, paused: true } if *t == track_id),
    )
    .await
    .unwrap_or_else(|e| {
        let links = futures_now(&server);
        panic!("video_paused for the chair's video: {e:#}; links {links}")
    });
    let links = server.hub().sfu.links().await.expect("links");
    let hall_links = links
        .iter()
        .find(|l| l.participant == hall_id)
        .expect("hall");
    assert!(
        hall_links
            .consumers
            .iter()
            .any(|c| c.kind == giaoban_sfu::MediaKind::Video && c.paused),
        "the SFU shows the pause"
    );
    println!("estimate while paused: {:?}", hall_links.estimate);
    assert!(
        hall_links.estimate.is_some_and(|e| e < 200_000),
        "estimate {:?}",
        hall_links.estimate
    );
    // The server keeps forwarding the chair's audio to the hall, and no longer its video (its own counts).
    let before = forwarded_to(&server, &hall_id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = forwarded_to(&server, &hall_id).await;
    println!(
        "forwarded to the hall in 2 s with its video paused: audio {}, video {}",
        after.0 - before.0,
        after.1 - before.1
    );
    assert!(
        after.0 - before.0 >= 80,
        "audio goes on (50 packets a second): {before:?} -> {after:?}"
    );
    assert_eq!(after.1, before.1, "no video while paused");

    // The loss goes away: the video resumes (told with video_paused false) and video arrives again.
    let from = hall.log_len();
    downlink_loss(media_port, 0.0);
    hall.wait_message_since(from, Duration::from_secs(20), |m| {
        matches!(m, ServerMessage::VideoPaused { track_id: t, paused: false } if *t == track_id)
    })
    .await
    .expect("video_paused false once the link recovers");
    let before = hall.track(&chair_id, &track_id).map_or(0, |t| t.keyframes);
    wait_until_async_keyframe(&hall, &chair_id, &track_id, before).await;
    let t = hall.track(&chair_id, &track_id).expect("video");
    println!(
        "after the loss: keyframe widths {:?}, SSRC changes {}",
        t.keyframe_widths, t.ssrc_changes
    );
    assert_eq!(t.ssrc_changes, 0, "one SSRC through pause and resume");

    chair.close().await;
    hall.close().await;
    server.shutdown().await;
}

/// RTP packets the server has forwarded to the hall: (audio, video).
async fn forwarded_to(server: &TestServer, hall: &str) -> (u64, u64) {
    let links = server.hub().sfu.links().await.expect("links");
    let Some(l) = links.iter().find(|l| l.participant == hall) else {
        return (0, 0);
    };
    let sum = |kind| {
        l.consumers
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.packets)
            .sum()
    };
    (
        sum(giaoban_sfu::MediaKind::Audio),
        sum(giaoban_sfu::MediaKind::Video),
    )
}

async fn wait_until_async_keyframe(hall: &SimEndpoint, chair: &str, track: &str, before: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hall.track(chair, track).map_or(0, |t| t.keyframes) <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no keyframe after the video resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The SFU's link health, printed (for failure messages).
fn futures_now(server: &TestServer) -> String {
    let hub = server.hub();
    let links = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(hub.sfu.links())
        })
        .join()
    });
    format!("{links:?}")
}
