//! Link health and metrics: `/api/health` reports every participant's links with traffic and a verdict (admin
//! token only), clients get `connection_quality`, and `/metrics` parses as Prometheus text with counters that move
//! with the traffic.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestServer, wait_all_flowing, wait_until_async};
use giaoban_signaling::protocol::{QualityLevel, ServerMessage};
use giaoban_tests::sim::http_get;

/// Parse Prometheus text: sample name (with labels) → value; fails on any malformed line.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(
                line.is_empty()
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line == "# EOF",
                "bad comment line: {line}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in line: {line}"));
        assert!(
            name.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_'),
            "bad metric name: {line}"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in `{line}`: {e}"));
        samples.insert(name.to_owned(), value);
    }
    samples
}

/// The server with jitter limits far above what a busy test machine adds on loopback: these tests are about the
/// figures reaching the API and the clients; the thresholds themselves have their own tests.
async fn server() -> TestServer {
    let mut c = giaoban_config::Config::for_tests();
    c.health.fair_jitter_ms = 500.0;
    c.health.poor_jitter_ms = 1000.0;
    TestServer::start_with(c).await
}

async fn metrics(server: &TestServer) -> HashMap<String, f64> {
    let (status, body) = http_get(server.http, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_api_and_metrics_follow_the_traffic() {
    let server = server().await;
    let room = "suc-khoe-duong-truyen";
    let a = server.endpoint(room, "Xã A", true).await;
    let b = server.endpoint(room, "Xã B", true).await;
    wait_all_flowing(&[&a, &b], &[&a, &b], Duration::from_secs(15)).await;

    let before = metrics(&server).await;
    let forwarded = "giaoban_media_rtp_forwarded_total";
    assert_eq!(before.get("giaoban_participants"), Some(&2.0));
    assert!(
        before.get(forwarded).is_some_and(|v| *v > 0.0),
        "{before:?}"
    );
    // Two participants with a publish and a subscribe connection each, all connected.
    assert_eq!(
        before.get("giaoban_media_connections_by_state{state=\"connected\"}"),
        Some(&4.0),
        "{before:?}"
    );
    for k in [
        "giaoban_media_nacks_received_total",
        "giaoban_media_nacks_sent_total",
        "giaoban_media_keyframe_requests_total",
    ] {
        assert!(before.contains_key(k), "{k} missing: {before:?}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = metrics(&server).await;
    assert!(
        after[forwarded] > before[forwarded],
        "forwarded counter moves"
    );
    assert!(
        after["giaoban_media_received_bytes_total"] > before["giaoban_media_received_bytes_total"]
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("giaoban_signaling_messages_total{type=\"join\"}")),
        "signaling messages counted by type: {after:?}"
    );

    // The health API needs an admin (or observer) token.
    let (status, _) = http_get(server.http, "/api/health").await.expect("GET");
    assert_eq!(status, 401);
    let admin = giaoban_signaling::admin::admin_token(&server.hub());
    let health = wait_until_async(
        "both links report bitrate",
        Duration::from_secs(10),
        || async {
            let (status, body) = http_get(server.http, &format!("/api/health?token={admin}"))
                .await
                .ok()?;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let ps = v["participants"].as_array()?.clone();
            let ready = ps.len() == 2
                && ps.iter().all(|p| {
                    p["publish"]["bitrate_in"].as_u64().unwrap_or(0) > 50_000
                        && p["subscribe"]["bitrate_out"].as_u64().unwrap_or(0) > 50_000
                });
            ready.then_some(ps)
        },
    )
    .await;
    for p in &health {
        assert_eq!(p["publish"]["state"], "connected", "{p}");
        assert_eq!(p["subscribe"]["state"], "connected", "{p}");
        assert_eq!(p["verdict"], "good", "loopback is a good link: {p}");
        assert!(
            p["name"].as_str().is_some_and(|n| n.starts_with("Xã")),
            "{p}"
        );
    }

    // Each client hears its own quality.
    for ep in [&a, &b] {
        let q = ep
            .wait_message_since(0, Duration::from_secs(6), |m| {
                matches!(m, ServerMessage::ConnectionQuality { .. })
            })
            .await
            .expect("connection_quality arrives");
        let ServerMessage::ConnectionQuality {
            level, bitrate_in, ..
        } = &q
        else {
            unreachable!("matched above")
        };
        assert_eq!(*level, QualityLevel::Good, "{q:?}");
        assert!(*bitrate_in > 0);
    }
    server.shutdown().await;
}

/// A receive-only observer (no publish connection) on a good link is reported good, like everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_only_observer_gets_a_good_verdict() {
    use giaoban_signaling::protocol::{MeetingMode, Role};
    let server = server().await;
    let hub = server.hub();
    let (meeting, _) = common::create_meeting(&hub, "Giám sát", MeetingMode::Lecture, &["Xã A"]);
    let chair = server
        .join_token(
            &common::token(&hub, &meeting.id, "chair", "Chủ trì", Role::Chair),
            "Chủ trì",
            true,
        )
        .await;
    let it = server
        .join_token(
            &common::token(&hub, &meeting.id, "observer", "Kỹ thuật", Role::Observer),
            "Kỹ thuật",
            false,
        )
        .await;
    common::wait_receiving(
        &it,
        &chair,
        giaoban_signaling::protocol::TrackKind::Video,
        30,
        Duration::from_secs(15),
    )
    .await;
    let from = it.log_len();
    let q = it
        .wait_message_since(from, Duration::from_secs(6), |m| {
            matches!(m, ServerMessage::ConnectionQuality { .. })
        })
        .await
        .expect("connection_quality arrives");
    let ServerMessage::ConnectionQuality { level, .. } = &q else {
        unreachable!("matched above")
    };
    assert_eq!(*level, QualityLevel::Good, "{q:?}");
    server.shutdown().await;
}
