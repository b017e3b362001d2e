//! (e) Bad input gets an `error` with the right code, the offending session carries on (`ping` → `pong`) and the
//! room keeps working: media still flows between the others.

mod common;

use std::time::Duration;

use common::{TestServer, assert_still_flowing, wait_all_flowing};
use giaoban_signaling::protocol::{ClientMessage, ErrorCode, ServerMessage};
use giaoban_tests::sim::SimEndpoint;

const T: Duration = Duration::from_secs(5);

/// Two publishers exchanging media, and a third participant `m` that will misbehave (joined if `join`).
async fn room(
    server: &TestServer,
    room: &str,
    join: bool,
) -> (SimEndpoint, SimEndpoint, SimEndpoint) {
    let a = server.endpoint(room, "Xã A", true).await;
    let b = server.endpoint(room, "Xã B", true).await;
    wait_all_flowing(&[&a, &b], &[&a, &b], Duration::from_secs(15)).await;
    let m = SimEndpoint::open(server.opts(room, "Xã lỗi"))
        .await
        .expect("connects");
    if join {
        m.join().await.expect("joins");
    }
    (a, b, m)
}

/// Send `text` raw and expect an `error` with `code`.
async fn expect_error(m: &SimEndpoint, text: String, code: ErrorCode, what: &str) {
    let from = m.log_len();
    m.send_raw(text).expect("sent");
    let (got, message) = m
        .wait_error_since(from, T)
        .await
        .unwrap_or_else(|e| panic!("{what}: no error reply: {e:#}"));
    println!("{what}: error {got:?}: {message}");
    assert_eq!(got, code, "{what}: wrong code (message: {message})");
}

/// The misbehaving session is still open and answers `ping`; A and B still exchange media.
async fn still_working(m: &SimEndpoint, a: &SimEndpoint, b: &SimEndpoint) {
    let from = m.log_len();
    m.send(&ClientMessage::Ping {}).expect("ping sent");
    m.wait_message_since(from, T, |msg| matches!(msg, ServerMessage::Pong))
        .await
        .expect("pong after the error: the session carries on");
    assert!(
        !m.is_closed(),
        "the server closed the socket after a refusable error"
    );
    assert_still_flowing(a, b, 50).await;
    assert_still_flowing(b, a, 50).await;
}

async fn finish(server: TestServer, eps: [SimEndpoint; 3]) {
    for ep in eps {
        ep.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_bad_message() {
    let server = TestServer::start().await;
    let (a, b, m) = room(&server, "loi-json", true).await;
    expect_error(
        &m,
        "{\"type\":\"join\",".into(),
        ErrorCode::BadMessage,
        "truncated JSON",
    )
    .await;
    expect_error(&m, "xin chào".into(), ErrorCode::BadMessage, "not JSON").await;
    expect_error(&m, "[1,2,3]".into(), ErrorCode::BadMessage, "JSON array").await;
    still_working(&m, &a, &b).await;
    finish(server, [a, b, m]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_type_and_fields_are_bad_message() {
    let server = TestServer::start().await;
    let (a, b, m) = room(&server, "loi-kieu", true).await;
    expect_error(
        &m,
        r#"{"type":"fly"}"#.into(),
        ErrorCode::BadMessage,
        "unknown type",
    )
    .await;
    expect_error(
        &m,
        r#"{"sdp":"v=0"}"#.into(),
        ErrorCode::BadMessage,
        "no type",
    )
    .await;
    expect_error(
        &m,
        r#"{"type":"media_state","mic":true,"camera":true,"x":1}"#.into(),
        ErrorCode::BadMessage,
        "unknown field on a message with fields",
    )
    .await;
    expect_error(
        &m,
        r#"{"type":"ping","x":1}"#.into(),
        ErrorCode::BadMessage,
        "unknown field on ping",
    )
    .await;
    expect_error(
        &m,
        r#"{"type":"publish_offer"}"#.into(),
        ErrorCode::BadMessage,
        "missing field",
    )
    .await;
    still_working(&m, &a, &b).await;
    finish(server, [a, b, m]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_too_large() {
    let config = giaoban_config::Config::for_tests();
    let limit = config.limits.max_message_bytes;
    let server = TestServer::start_with(config).await;
    let (a, b, m) = room(&server, "loi-lon", true).await;
    // A well-formed publish_offer, just too big: only the size is wrong.
    let sdp = format!("v=0\r\n{}", "a=x-padding\r\n".repeat(limit / 13 + 1));
    let text = serde_json::to_string(&ClientMessage::PublishOffer { sdp }).expect("json");
    assert!(text.len() > limit);
    expect_error(&m, text, ErrorCode::TooLarge, "oversized publish_offer").await;
    still_working(&m, &a, &b).await;
    finish(server, [a, b, m]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sdp_is_invalid_field_and_a_good_offer_still_works() {
    let server = TestServer::start().await;
    let (a, b, m) = room(&server, "loi-sdp", true).await;
    for (sdp, what) in [
        ("đây không phải SDP", "prose"),
        (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\nm=video",
            "truncated SDP",
        ),
        ("", "empty SDP"),
    ] {
        let text =
            serde_json::to_string(&ClientMessage::PublishOffer { sdp: sdp.into() }).expect("json");
        expect_error(&m, text, ErrorCode::InvalidField, what).await;
    }
    still_working(&m, &a, &b).await;
    // The same participant can still publish properly, and the others receive it.
    m.publish()
        .await
        .expect("a valid offer after malformed ones is answered");
    common::wait_receiving(
        &a,
        &m,
        giaoban_signaling::protocol::TrackKind::Video,
        30,
        Duration::from_secs(10),
    )
    .await;
    finish(server, [a, b, m]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_join_and_second_join_are_wrong_state() {
    let server = TestServer::start().await;
    let (a, b, m) = room(&server, "loi-trang-thai", false).await;
    let offer = serde_json::to_string(&ClientMessage::PublishOffer {
        sdp: "v=0\r\n".into(),
    })
    .expect("json");
    expect_error(
        &m,
        offer,
        ErrorCode::WrongState,
        "publish_offer before join",
    )
    .await;
    let leave = serde_json::to_string(&ClientMessage::MediaState {
        mic: false,
        camera: false,
    })
    .expect("json");
    expect_error(&m, leave, ErrorCode::WrongState, "media_state before join").await;
    // Joining afterwards works, and a second join is refused.
    m.join().await.expect("join after refused messages");
    let join = serde_json::to_string(&ClientMessage::Join {
        room: Some("loi-trang-thai".into()),
        name: Some("lần hai".into()),
        token: None,
    })
    .expect("json");
    expect_error(&m, join, ErrorCode::WrongState, "second join").await;
    still_working(&m, &a, &b).await;
    finish(server, [a, b, m]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_room_name_is_invalid_field() {
    let server = TestServer::start().await;
    let (a, b, m) = room(&server, "loi-ten", false).await;
    let join = serde_json::to_string(&ClientMessage::Join {
        room: Some(String::new()),
        name: Some("Xã".into()),
        token: None,
    })
    .expect("json");
    expect_error(&m, join, ErrorCode::InvalidField, "empty room name").await;
    m.join().await.expect("a proper join after the refused one");
    still_working(&m, &a, &b).await;
    finish(server, [a, b, m]).await;
}
