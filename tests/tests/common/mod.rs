//! Shared by the whole-system tests: the in-process server, polling with deadlines, media checks.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use giaoban_signaling::protocol::{ServerMessage, TrackKind};
use giaoban_tests::sim::{Received, SimEndpoint, SimOptions, TrackStats, http_get};

/// The real server, started in-process on loopback with OS-picked ports.
pub struct TestServer {
    running: Option<giaoban_signaling::RunningServer>,
    pub http: SocketAddr,
    pub media: SocketAddr,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(giaoban_config::Config::for_tests()).await
    }

    pub async fn start_with(config: giaoban_config::Config) -> TestServer {
        let running = giaoban_signaling::start(config)
            .await
            .expect("server starts");
        TestServer {
            http: running.http_addr,
            media: running.media_addr,
            running: Some(running),
        }
    }

    pub fn opts(&self, room: &str, name: &str) -> SimOptions {
        SimOptions::for_addr(self.http, room, name)
    }

    /// Join `name` to `room` (and publish audio+video if `publish`).
    pub async fn endpoint(&self, room: &str, name: &str, publish: bool) -> SimEndpoint {
        let ep = SimEndpoint::connect(self.opts(room, name))
            .await
            .unwrap_or_else(|e| panic!("{name} joins: {e:#}"));
        if publish {
            ep.publish()
                .await
                .unwrap_or_else(|e| panic!("{name} publishes: {e:#}"));
        }
        ep
    }

    /// `GET /api/rooms`, parsed.
    pub async fn rooms(&self) -> serde_json::Value {
        let (status, body) = http_get(self.http, "/api/rooms")
            .await
            .expect("GET /api/rooms");
        assert_eq!(status, 200, "GET /api/rooms: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/api/rooms is not JSON ({e}): {body}"))
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(10), r.shutdown())
                .await
                .expect("server shuts down within 10 s");
        }
    }
}

/// Every string anywhere in a JSON value (to look for participant and track ids without depending on the
/// exact shape of `/api/rooms`).
pub fn json_strings(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Poll `f` every 50 ms until it returns `Some`, or panic after `timeout` naming `what`.
pub async fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Async variant of [`wait_until`].
pub async fn wait_until_async<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The track of `kind` that `sub` receives from `publisher`, once it has at least `min_packets` packets.
pub async fn wait_receiving(
    sub: &SimEndpoint,
    publisher: &SimEndpoint,
    kind: TrackKind,
    min_packets: u64,
    timeout: Duration,
) -> TrackStats {
    let pid = publisher.id();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let stats = sub.stats();
        if let Some(t) = stats
            .track_from(&pid, kind)
            .filter(|t| t.packets >= min_packets)
        {
            return t.clone();
        }
        if tokio::time::Instant::now() >= deadline {
            let brief: Vec<String> = stats
                .received
                .iter()
                .map(|t| {
                    format!(
                        "{}/{} {:?}: {} packets, {} keyframes",
                        t.participant_id, t.track_id, t.kind, t.packets, t.keyframes
                    )
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {} to receive {min_packets} {kind:?} packets from {} ({pid}); \
                 it receives {brief:?}; publisher sent {:?}; subscribe answers {}, errors {}; messages: {:?}",
                sub.name(),
                publisher.name(),
                publisher.sent(),
                stats.subscribe_answers,
                stats.subscribe_errors,
                sub.messages().iter().map(short).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `sub` receives audio and video from every one of `publishers`.
pub async fn wait_all_flowing(
    subs: &[&SimEndpoint],
    publishers: &[&SimEndpoint],
    timeout: Duration,
) {
    for sub in subs {
        for publisher in publishers {
            if sub.id() == publisher.id() {
                continue;
            }
            wait_receiving(sub, publisher, TrackKind::Audio, 10, timeout).await;
            wait_receiving(sub, publisher, TrackKind::Video, 10, timeout).await;
        }
    }
}

/// Assert that `sub` got `stats` (from `publisher`) intact: ≥ 99 % of the counters from its first packet up to
/// what the publisher had sent `slack` ago, no duplicates, no reordering, no corrupt payloads, one SSRC, and
/// continuous sequence numbers apart from lost packets.
pub fn assert_intact(
    sub: &SimEndpoint,
    publisher: &SimEndpoint,
    stats: &TrackStats,
    sent_total: u64,
    slack: u64,
) {
    let who = format!(
        "{} receiving {:?} {} from {}",
        sub.name(),
        stats.kind,
        stats.track_id,
        publisher.name()
    );
    let first = stats
        .first_counter
        .unwrap_or_else(|| panic!("{who}: nothing received"));
    // Counters sent from the first one received up to (sent_total - slack): those must have arrived.
    let expected = sent_total.saturating_sub(slack).saturating_sub(first);
    assert!(
        expected > 0,
        "{who}: too little sent to judge ({stats:?}, sent {sent_total})"
    );
    let ratio = stats.distinct as f64 / expected as f64;
    assert!(
        ratio >= 0.99,
        "{who}: received {} distinct of {expected} sent since its first packet ({:.2} %); {stats:?}",
        stats.distinct,
        ratio * 100.0
    );
    assert_eq!(stats.duplicates, 0, "{who}: duplicates; {stats:?}");
    assert_eq!(stats.out_of_order, 0, "{who}: out of order; {stats:?}");
    assert_eq!(
        stats.payload_errors, 0,
        "{who}: corrupt payloads; {stats:?}"
    );
    assert_eq!(stats.ssrc_changes, 0, "{who}: SSRC changed; {stats:?}");
    assert!(
        stats.seq_jumps <= stats.missing(),
        "{who}: {} sequence-number jumps but only {} packets missing; {stats:?}",
        stats.seq_jumps,
        stats.missing()
    );
}

/// Messages of `ep` from index `from` that match `pred`.
pub fn messages_since(
    ep: &SimEndpoint,
    from: usize,
    pred: impl Fn(&ServerMessage) -> bool,
) -> Vec<ServerMessage> {
    ep.received()
        .into_iter()
        .skip(from)
        .filter_map(|r| match r {
            Received::Message(m) if pred(&m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Packets (all tracks) `sub` has received from `publisher`.
pub fn packets_from(sub: &SimEndpoint, publisher_id: &str) -> u64 {
    sub.stats()
        .received
        .iter()
        .filter(|t| t.participant_id == publisher_id)
        .map(|t| t.packets)
        .sum()
}

/// Assert media from `publisher` still reaches `sub`: its packet count grows by at least `min` within 5 s.
pub async fn assert_still_flowing(sub: &SimEndpoint, publisher: &SimEndpoint, min: u64) {
    let pid = publisher.id();
    let before = packets_from(sub, &pid);
    wait_until(
        &format!("{} to keep receiving from {}", sub.name(), publisher.name()),
        Duration::from_secs(5),
        || (packets_from(sub, &pid) >= before + min).then_some(()),
    )
    .await;
}

/// A message without its SDP, for failure output.
pub fn short(m: &ServerMessage) -> String {
    match m {
        ServerMessage::PublishAnswer { sdp, .. } => format!("publish_answer({} bytes)", sdp.len()),
        ServerMessage::SubscribeOffer { sdp, .. } => {
            format!("subscribe_offer({} bytes)", sdp.len())
        }
        other => format!("{other:?}"),
    }
}
