//! (d) A subscriber's keyframe request reaches the publisher: an RTCP PLI on the subscribe connection, and the
//! `request_keyframe` message, each make the publisher's PLI counter grow; the subscriber then gets a keyframe.
//! A joining subscriber costs the publisher one keyframe request (asked once its connection is up; its forwarder's
//! requests while it waits are served by the one in flight), and two joining together get theirs without a
//! request the publisher would ignore (Chromium acts on one per 300 ms; the simulated publisher does the same).
//! A subscriber joining within a second of the publisher's last keyframe is sent that keyframe and what followed it
//! from the SFU's cache, and costs no request at all.

mod common;

use std::time::Duration;

use common::{TestServer, metrics, wait_receiving, wait_until};
use giaoban_signaling::protocol::{ClientMessage, TrackKind};
use giaoban_tests::sim::MediaProfile;
use giaoban_tests::sim::SimEndpoint;

/// Wait until the publisher's PLI count has not changed for `quiet` (the server's own keyframe requests on
/// subscription, and its throttle window, are behind us); returns that count.
async fn quiet_plis(publisher: &SimEndpoint, quiet: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last = publisher.sent().plis;
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = publisher.sent().plis;
        if now != last {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publisher keeps getting PLIs ({now}) without a request"
        );
    }
}

/// Wait until `viewer` has received a keyframe of `publisher`'s video.
async fn wait_keyframe(viewer: &SimEndpoint, publisher: &SimEndpoint) {
    let pid = publisher.id();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = viewer.stats();
        let video = stats.track_from(&pid, TrackKind::Video);
        if video.is_some_and(|t| t.keyframes > 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no keyframe at {} within 10 s: its video {:?}, timeline {:?}, subscribe answers {} errors {}; \
             publisher {:?}",
            viewer.name(),
            video.map(|t| (t.packets, t.keyframes)),
            viewer.timeline(),
            stats.subscribe_answers,
            stats.subscribe_errors,
            publisher.sent()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_subscriber_costs_one_keyframe_request() {
    let server = TestServer::start().await;
    let room = "pli-join";
    let publisher = server.endpoint(room, "Chủ trì", true).await;
    // Nobody receives yet: nothing asks for a keyframe. (The wait also ages the publisher's first keyframe past
    // what the SFU replays from its cache: `sfu::replay::MAX_AGE`.)
    let old = giaoban_sfu::replay::MAX_AGE + Duration::from_millis(200);
    assert_eq!(quiet_plis(&publisher, old).await, 0);

    // One viewer: one PLI, sent when its subscribe connection is up (none for the answer before it, which the
    // connection could not have used), its forwarder's further requests served by the keyframe in flight.
    let first = server.endpoint(room, "Xã một", false).await;
    wait_keyframe(&first, &publisher).await;
    let after_first = quiet_plis(&publisher, old).await;
    assert_eq!(
        after_first,
        1,
        "PLIs for one joining viewer (publisher {:?})",
        publisher.sent()
    );

    // Two viewers joining together: each gets its keyframe; one PLI in flight serves both when they connect
    // before it is answered, else the second is asked for once the publisher would act on it again (never
    // sooner: that request would be lost and its viewer would wait another interval).
    let (second, third) = tokio::join!(
        server.endpoint(room, "Xã hai", false),
        server.endpoint(room, "Xã ba", false)
    );
    wait_keyframe(&second, &publisher).await;
    wait_keyframe(&third, &publisher).await;
    let after_pair = quiet_plis(&publisher, Duration::from_millis(1000)).await;
    let sent = publisher.sent();
    println!("publisher PLIs: {after_first} for one viewer, {after_pair} after two more; {sent:?}");
    assert!(
        (after_first + 1..=after_first + 2).contains(&after_pair),
        "PLIs for two viewers joining together: {} (publisher {sent:?})",
        after_pair - after_first
    );
    assert_eq!(
        sent.requests_ignored, 0,
        "the server sent keyframe requests sooner than a browser publisher acts on them: {sent:?}"
    );
    for ep in [&first, &second, &third, &publisher] {
        ep.close().await;
    }
    server.shutdown().await;
}

/// With a publisher of one layer at a commune hall's rate (100 kbit/s, 15 fps) that sends a keyframe every half
/// second, the SFU always holds a picture younger than a second and small enough to replay: each viewer that
/// joins gets its first picture from the cache, and the publisher is never asked for a keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_after_a_recent_keyframe_starts_from_the_cache() {
    let media = MediaProfile {
        video_bitrate_bps: 100_000,
        video_fps: 15,
        keyframe_every: Some(8),
        ..MediaProfile::default()
    };
    let (server, publisher, viewers, replays) = join_after_keyframes("pli-replay", media).await;
    let sent = publisher.sent();
    assert_eq!(
        sent.plis, 0,
        "the publisher was asked for keyframes although the SFU held a recent picture: {sent:?}"
    );
    // A viewer whose subscription is up just as a live keyframe arrives (within `replay::AFTER_CONNECTED`, about
    // one join in ten here) starts from that one instead.
    assert!(
        (2..=4).contains(&replays),
        "each viewer's first picture came from the cache, bar one started by a live keyframe: {replays} of 4"
    );
    for ep in viewers.iter().chain([&publisher]) {
        ep.close().await;
    }
    server.shutdown().await;
}

/// One layer at 1.5 Mbit/s (30 fps, a keyframe every half second): its picture — the keyframe and the frames
/// since — is tens of kilobytes, more than leaves in one burst, so it is replayed paced (`replay.rs`), and the
/// live stream follows the replay without a gap or a jump in sequence number, timestamp or PictureID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_picture_is_replayed_paced_and_the_live_stream_follows_it() {
    let media = MediaProfile {
        video_bitrate_bps: 1_500_000,
        video_fps: 30,
        keyframe_every: Some(15),
        ..MediaProfile::default()
    };
    let (server, publisher, viewers, replays) =
        join_after_keyframes("pli-replay-paced", media).await;
    assert!(
        (2..=4).contains(&replays),
        "each viewer's first picture came from the cache, bar one started by a live keyframe: {replays} of 4"
    );
    let sent = publisher.sent();
    assert_eq!(sent.plis, 0, "no keyframe asked of the publisher: {sent:?}");
    for ep in viewers.iter().chain([&publisher]) {
        ep.close().await;
    }
    server.shutdown().await;
}

/// The chair's three simulcast layers: the top layer's picture is too much to replay at once down a commune link
/// (`replay::MAX_BYTES`), so a joining viewer's first picture is replayed from a lower layer (the highest that
/// fits), and the viewer moves up to the top layer at its next keyframe — one continuous stream throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulcast_picture_is_replayed_from_a_lower_layer_then_moves_up() {
    let media = MediaProfile {
        simulcast: true,
        keyframe_every: Some(15),
        ..MediaProfile::default()
    };
    let (server, publisher, viewers, replays) =
        join_after_keyframes("pli-replay-simulcast", media).await;
    assert!(
        (2..=4).contains(&replays),
        "{replays} of 4 first pictures replayed"
    );
    let mut from_low = 0;
    for viewer in &viewers {
        let widths = wait_until(
            "the viewer to move up to the top layer",
            Duration::from_secs(10),
            || {
                let stats = viewer.stats();
                let video = stats.track_from(&publisher.id(), TrackKind::Video)?;
                (video.keyframe_widths.last() == Some(&960)).then(|| video.keyframe_widths.clone())
            },
        )
        .await;
        println!("{}: keyframe widths {widths:?}", viewer.name());
        from_low += usize::from(widths.first().is_some_and(|&w| w < 960));
    }
    assert!(
        from_low >= 2,
        "first pictures from a lower layer (less than 960 wide): {from_low} of 4"
    );
    for ep in viewers.iter().chain([&publisher]) {
        ep.close().await;
    }
    server.shutdown().await;
}

/// A publisher with `media`, then four viewers joining one after another, each waited for until it has a keyframe;
/// a second later, each viewer's stream must have started with a keyframe and run on without a gap or a jump in
/// sequence number, timestamp or PictureID. Returns the number of first pictures replayed from the cache.
async fn join_after_keyframes(
    room: &str,
    media: MediaProfile,
) -> (TestServer, SimEndpoint, Vec<SimEndpoint>, u64) {
    let server = TestServer::start().await;
    let mut opts = server.opts(room, "Chủ trì");
    opts.media = media;
    let publisher = SimEndpoint::connect(opts).await.expect("the chair joins");
    publisher.publish().await.expect("the chair publishes");
    let replayed = "giaoban_media_keyframes_replayed_total";
    assert_eq!(metrics(&server).await.get(replayed), Some(&0.0));
    let mut viewers = Vec::new();
    for name in ["Xã một", "Xã hai", "Xã ba", "Xã bốn"] {
        let viewer = server.endpoint(room, name, false).await;
        wait_keyframe(&viewer, &publisher).await;
        viewers.push(viewer);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut started_on_keyframe = 0;
    for viewer in &viewers {
        let stats = viewer.stats();
        let video = stats
            .track_from(&publisher.id(), TrackKind::Video)
            .expect("video from the chair");
        println!(
            "{}: {} packets, {} keyframes, widths {:?}",
            viewer.name(),
            video.packets,
            video.keyframes,
            video.keyframe_widths
        );
        assert!(video.packets > 10, "{video:?}");
        started_on_keyframe += usize::from(
            video.first_packet_at.is_some() && video.first_packet_at == video.first_keyframe_at,
        );
        assert_eq!(
            (
                video.seq_jumps,
                video.ts_jumps,
                video.picture_id_jumps,
                video.payload_errors
            ),
            (0, 0, 0, 0),
            "one continuous stream: {video:?}"
        );
    }
    // Each stream starts at a keyframe. A webrtc-rs client under load may still lose a picture replayed right
    // after its handshake (it keys SRTP late: `replay::AFTER_CONNECTED`) and start at the next packets; one such
    // viewer is let pass.
    assert!(
        started_on_keyframe >= viewers.len() - 1,
        "viewers whose first video packet was a keyframe's: {started_on_keyframe} of {}",
        viewers.len()
    );
    let replays = metrics(&server).await.get(replayed).copied().unwrap_or(0.0) as u64;
    println!(
        "first pictures replayed from the cache: {replays} of {}",
        viewers.len()
    );
    (server, publisher, viewers, replays)
}

async fn setup(server: &TestServer, room: &str) -> (SimEndpoint, SimEndpoint, String) {
    let publisher = server.endpoint(room, "Chủ trì", true).await;
    let viewer = server.endpoint(room, "Xã xem", false).await;
    let video = wait_receiving(
        &viewer,
        &publisher,
        TrackKind::Video,
        30,
        Duration::from_secs(15),
    )
    .await;
    (publisher, viewer, video.track_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_pli_from_subscriber_reaches_publisher() {
    let server = TestServer::start().await;
    let (publisher, viewer, track_id) = setup(&server, "pli-rtcp").await;
    let before = quiet_plis(&publisher, Duration::from_millis(1500)).await;
    let keyframes_before = viewer
        .track(&publisher.id(), &track_id)
        .expect("video track")
        .keyframes;

    viewer
        .send_pli(&publisher.id(), &track_id)
        .await
        .expect("PLI written");
    wait_until(
        "the publisher to receive the PLI",
        Duration::from_secs(3),
        || (publisher.sent().plis > before).then_some(()),
    )
    .await;
    wait_until(
        "a keyframe at the viewer after the PLI",
        Duration::from_secs(3),
        || (viewer.track(&publisher.id(), &track_id)?.keyframes > keyframes_before).then_some(()),
    )
    .await;
    println!(
        "publisher PLIs: {before} -> {}, keyframes sent {}",
        publisher.sent().plis,
        publisher.sent().keyframes
    );
    publisher.close().await;
    viewer.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_keyframe_message_reaches_publisher() {
    let server = TestServer::start().await;
    let (publisher, viewer, track_id) = setup(&server, "pli-msg").await;
    let before = quiet_plis(&publisher, Duration::from_millis(1500)).await;
    let from = viewer.log_len();

    viewer
        .send(&ClientMessage::RequestKeyframe {
            track_id: track_id.clone(),
        })
        .expect("sent");
    wait_until(
        "the publisher to receive a PLI",
        Duration::from_secs(3),
        || (publisher.sent().plis + publisher.sent().firs > before).then_some(()),
    )
    .await;
    assert!(
        common::messages_since(&viewer, from, |m| matches!(
            m,
            giaoban_signaling::protocol::ServerMessage::Error { .. }
        ))
        .is_empty(),
        "request_keyframe for a received track was refused"
    );

    // An unknown track is refused with invalid_field, and the session carries on.
    let from = viewer.log_len();
    viewer
        .send(&ClientMessage::RequestKeyframe {
            track_id: "khong-co".into(),
        })
        .expect("sent");
    let (code, message) = viewer
        .wait_error_since(from, Duration::from_secs(3))
        .await
        .expect("error for an unknown track");
    assert_eq!(
        code,
        giaoban_signaling::protocol::ErrorCode::InvalidField,
        "unknown track: {message}"
    );
    common::assert_still_flowing(&viewer, &publisher, 30).await;

    publisher.close().await;
    viewer.close().await;
    server.shutdown().await;
}
