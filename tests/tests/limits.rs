//! Abuse limits: a flood of messages is refused with `rate_limited` while the session and the room carry on; an
//! address beyond its connection limit gets HTTP 429; join attempts beyond the per-minute limit are refused.

mod common;

use std::time::Duration;

use common::{TestServer, assert_alive, wait_all_flowing};
use giaoban_signaling::protocol::{ClientMessage, ErrorCode, ServerMessage, TrackKind};
use giaoban_tests::sim::SimEndpoint;

fn config() -> giaoban_config::Config {
    let mut c = giaoban_config::Config::for_tests();
    c.limits.messages_per_second = 20;
    c.limits.max_connections_per_ip = 6;
    c.limits.joins_per_minute_per_ip = 4;
    c
}

fn rate_limited_errors(ep: &SimEndpoint, from: usize) -> usize {
    ep.messages()
        .iter()
        .skip(from)
        .filter(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            )
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_flood_is_refused_and_the_room_carries_on() {
    let server = TestServer::start_with(config()).await;
    let a = server.endpoint("gioi-han", "Xã A", true).await;
    let b = server.endpoint("gioi-han", "Xã B", true).await;
    wait_all_flowing(&[&a, &b], &[&a, &b], Duration::from_secs(15)).await;

    let from = b.log_len();
    for _ in 0..300 {
        b.send(&ClientMessage::Ping {}).expect("sent");
    }
    // The refusals arrive as the server works through the burst: wait for most of them (a loaded machine takes
    // longer than the first one).
    let refused = common::wait_until("100 rate_limited errors", Duration::from_secs(10), || {
        let n = rate_limited_errors(&b, from);
        (n >= 100).then_some(n)
    })
    .await;
    let pongs = b
        .messages()
        .iter()
        .skip(from)
        .filter(|m| matches!(m, ServerMessage::Pong))
        .count();
    println!("300 pings: {pongs} pongs, {refused} refused so far");
    assert!(
        refused >= 100,
        "most of a 300-message burst is refused ({refused})"
    );
    // After a pause the session works again, and media between A and B never stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_alive(&b).await;
    common::assert_still_flowing(&a, &b, 10).await;
    common::assert_still_flowing(&b, &a, 10).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_joins_per_address_are_limited() {
    let server = TestServer::start_with(config()).await;
    // Join attempts: 4 per minute from 127.0.0.1, so the fifth (on a fresh socket) is refused.
    let mut joined = Vec::new();
    for i in 0..4 {
        joined.push(
            server
                .endpoint("gioi-han-2", &format!("Xã {i}"), false)
                .await,
        );
    }
    let extra = SimEndpoint::open(server.opts("gioi-han-2", "Xã thừa"))
        .await
        .expect("socket opens");
    let from = extra.log_len();
    extra
        .send(&ClientMessage::Join {
            room: Some("gioi-han-2".into()),
            name: Some("Xã thừa".into()),
            token: None,
        })
        .expect("sent");
    let err = extra
        .wait_error_since(from, Duration::from_secs(5))
        .await
        .expect("join refused");
    assert_eq!(err.0, ErrorCode::RateLimited, "{err:?}");

    // Connections: 6 per address; 5 are open now, so one more opens and the next gets 429.
    let url = format!("ws://{}/ws", server.http);
    let (sixth, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("sixth socket opens");
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429)
        }
        other => panic!("seventh socket from one address: expected HTTP 429, got {other:?}"),
    }
    // Closing one frees a slot.
    drop(sixth);
    common::wait_until_async("a freed slot", Duration::from_secs(5), || async {
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    for ep in &joined {
        assert_alive(ep).await;
    }
    server.shutdown().await;
}

/// An offer with three live media sections (audio, camera, a second video), one stopped (port 0) that must not count.
const THREE_TRACK_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n\
    m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=inactive\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:3\r\na=sendonly\r\n";

/// An offer with one live video section (a screen share).
const ONE_VIDEO_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_per_participant_are_limited_and_the_answer_caps_video_bitrate() {
    let mut c = giaoban_config::Config::for_tests();
    c.limits.max_tracks_per_participant = 2;
    c.limits.max_publish_kbps = 1200;
    let server = TestServer::start_with(c).await;
    let a = server.endpoint("gioi-han-3", "Xã A", true).await;
    let b = server.endpoint("gioi-han-3", "Xã B", true).await;
    wait_all_flowing(&[&a, &b], &[&a, &b], Duration::from_secs(15)).await;

    // Audio + video is within the limit, and the answer tells the encoder the video cap.
    let answer = a
        .messages()
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::PublishAnswer { sdp } => Some(sdp),
            _ => None,
        })
        .expect("A got a publish answer");
    let video = answer.split("m=video").nth(1).expect("a video section");
    assert!(
        video.contains("b=TIAS:1200000"),
        "video section without the cap: {video}"
    );

    // Three live tracks are one too many: refused by name, nothing else changes.
    let (code, message) = common::expect_error(
        &b,
        ClientMessage::PublishOffer {
            sdp: THREE_TRACK_OFFER.into(),
        },
    )
    .await;
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(
        message.contains("3 tracks") && message.contains("at most 2"),
        "{message}"
    );
    let refusals = server
        .hub()
        .store
        .audit_log(None, 100)
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "publish" && e.outcome == "refused")
        .count();
    assert_eq!(refusals, 1, "the refusal is audited once");
    // A screen share on its own connection counts with the camera's: B publishes two tracks already.
    let (code, message) = common::expect_error(
        &b,
        ClientMessage::ScreenOffer {
            sdp: ONE_VIDEO_OFFER.into(),
        },
    )
    .await;
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(
        message.contains("screen offer publishes 1 tracks beside the 2")
            && message.contains("at most 2"),
        "{message}"
    );
    assert_alive(&b).await;
    common::assert_still_flowing(&a, &b, 10).await;
    common::assert_still_flowing(&b, &a, 10).await;
    server.shutdown().await;
}

/// A publisher that ignores the answer's bitrate cap (the simulated endpoint sends 1.5 Mbit/s whatever the SDP
/// says) is told with `limit_exceeded` and its video is held back from the others while its audio goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_over_the_bitrate_limit_loses_video_not_audio() {
    let mut c = giaoban_config::Config::for_tests();
    c.limits.max_publish_kbps = 400;
    let server = TestServer::start_with(c).await;
    let a = server.endpoint("gioi-han-4", "Xã A", false).await;
    let b = server
        .endpoint("gioi-han-4", "Xã B (1.5 Mbit/s)", true)
        .await;
    common::wait_receiving(&a, &b, TrackKind::Video, 10, Duration::from_secs(15)).await;

    // 1.5 Mbit/s is more than half again 400 kbit/s: refused after three seconds over.
    let (code, message) = b
        .wait_error_since(0, Duration::from_secs(10))
        .await
        .expect("limit_exceeded arrives");
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(message.contains("limit of 400 kbit/s"), "{message}");
    // Drained: no more video from B reaches A, while B's audio still does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let video_before = common::video_from(&a, &b.id());
    common::wait_audio_flowing(&a, &b, 25, Duration::from_secs(5)).await;
    assert_eq!(
        common::video_from(&a, &b.id()),
        video_before,
        "B's video is held back"
    );
    let audited = server
        .hub()
        .store
        .audit_log(None, 100)
        .expect("audit")
        .into_iter()
        .any(|e| e.action == "publish bitrate" && e.outcome == "refused");
    assert!(audited, "the refusal is audited");
    assert_alive(&b).await;
    server.shutdown().await;
}

/// A room holds `limits.max_participants_per_room`: one more is refused with `room_full`, the others carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_one_more_and_carries_on() {
    let mut c = giaoban_config::Config::for_tests();
    c.limits.max_participants_per_room = 2;
    let server = TestServer::start_with(c).await;
    let a = server.endpoint("gioi-han-5", "Xã A", true).await;
    let b = server.endpoint("gioi-han-5", "Xã B", true).await;
    wait_all_flowing(&[&a, &b], &[&a, &b], Duration::from_secs(15)).await;
    let extra = SimEndpoint::open(server.opts("gioi-han-5", "Xã C"))
        .await
        .expect("socket opens");
    let from = extra.log_len();
    extra
        .send(&ClientMessage::Join {
            room: Some("gioi-han-5".into()),
            name: Some("Xã C".into()),
            token: None,
        })
        .expect("sent");
    let (code, message) = extra
        .wait_error_since(from, Duration::from_secs(5))
        .await
        .expect("join refused");
    assert_eq!(code, ErrorCode::RoomFull, "{message}");
    // Another room is not affected by this one being full.
    let elsewhere = server.endpoint("gioi-han-6", "Xã D", false).await;
    assert_alive(&elsewhere).await;
    common::assert_still_flowing(&a, &b, 10).await;
    common::assert_still_flowing(&b, &a, 10).await;
    server.shutdown().await;
}
