//! (d) A subscriber's keyframe request reaches the publisher: an RTCP PLI on the subscribe connection, and the
//! `request_keyframe` message, each make the publisher's PLI counter grow; the subscriber then gets a keyframe.
//! A joining subscriber costs the publisher one keyframe request (asked once its connection is up; its forwarder's
//! requests while it waits are served by the one in flight), and two joining together get theirs without a
//! request the publisher would ignore (Chromium acts on one per 300 ms; the simulated publisher does the same).

mod common;

use std::time::Duration;

use common::{TestServer, wait_receiving, wait_until};
use giaoban_signaling::protocol::{ClientMessage, TrackKind};
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
    // Nobody receives yet: nothing asks for a keyframe.
    assert_eq!(quiet_plis(&publisher, Duration::from_millis(500)).await, 0);

    // One viewer: one PLI, sent when its subscribe connection is up (none for the answer before it, which the
    // connection could not have used), its forwarder's further requests served by the keyframe in flight.
    let first = server.endpoint(room, "Xã một", false).await;
    wait_keyframe(&first, &publisher).await;
    let after_first = quiet_plis(&publisher, Duration::from_millis(1000)).await;
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
