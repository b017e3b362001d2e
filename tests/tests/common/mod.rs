//! Shared by the whole-system tests: the in-process server, polling with deadlines, media checks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use giaoban_signaling::auth::{Claims, now_secs};
use giaoban_signaling::hub::Hub;
use giaoban_signaling::protocol::{
    ClientMessage, ErrorCode, MeetingMode, MeetingState, Role, ServerMessage, TrackKind,
};
use giaoban_signaling::store::{Endpoint, Meeting, NewMeeting};
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
        // `TEST_LOG=giaoban_sfu=debug` (an env filter) prints the server's log to stderr.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
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
        self.endpoint_with(room, name, publish, |_| {}).await
    }

    /// [`endpoint`](Self::endpoint) with its options changed by `configure` first (media profile, address).
    pub async fn endpoint_with(
        &self,
        room: &str,
        name: &str,
        publish: bool,
        configure: impl FnOnce(&mut SimOptions),
    ) -> SimEndpoint {
        let mut opts = self.opts(room, name);
        configure(&mut opts);
        let ep = SimEndpoint::connect(opts)
            .await
            .unwrap_or_else(|e| panic!("{name} joins: {e:#}"));
        if publish {
            ep.publish()
                .await
                .unwrap_or_else(|e| panic!("{name} publishes: {e:#}"));
        }
        ep
    }

    /// `GET /api/rooms` with an admin token, parsed.
    pub async fn rooms(&self) -> serde_json::Value {
        let admin = giaoban_signaling::admin::admin_token(&self.hub());
        let (status, body) = http_get(self.http, &format!("/api/rooms?token={admin}"))
            .await
            .expect("GET /api/rooms");
        assert_eq!(status, 200, "GET /api/rooms: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/api/rooms is not JSON ({e}): {body}"))
    }

    /// The server's hub (store, auth, rooms), for tests that set up meetings and mint tokens.
    pub fn hub(&self) -> std::sync::Arc<giaoban_signaling::hub::Hub> {
        self.running.as_ref().expect("server running").hub.clone()
    }

    /// The demo meeting created on the first start with an empty data directory, if any.
    pub fn demo_meeting_id(&self) -> Option<String> {
        self.running
            .as_ref()
            .and_then(|r| r.demo.as_ref().map(|(m, _)| m.id.clone()))
    }

    /// Options to join with a signed token (`label` only names the endpoint in test output).
    pub fn token_opts(&self, token: &str, label: &str) -> SimOptions {
        let mut o = SimOptions::for_addr(self.http, "", label);
        o.token = Some(token.to_string());
        o
    }

    /// Join with `token` (and publish audio+video if `publish`).
    pub async fn join_token(&self, token: &str, label: &str, publish: bool) -> SimEndpoint {
        let ep = SimEndpoint::connect(self.token_opts(token, label))
            .await
            .unwrap_or_else(|e| panic!("{label} joins with its token: {e:#}"));
        if publish {
            ep.publish()
                .await
                .unwrap_or_else(|e| panic!("{label} publishes: {e:#}"));
        }
        ep
    }

    /// Open a socket, send `join`, and return the `error` the server answers with (panics on `joined`).
    pub async fn join_refused(&self, join: ClientMessage, label: &str) -> (ErrorCode, String) {
        let ep = SimEndpoint::open(SimOptions::for_addr(self.http, "", label))
            .await
            .unwrap_or_else(|e| panic!("{label}: websocket opens: {e:#}"));
        let from = ep.log_len();
        ep.send(&join).expect("join sent");
        let reply = ep
            .wait_message_since(from, Duration::from_secs(5), |m| {
                matches!(
                    m,
                    ServerMessage::Joined { .. } | ServerMessage::Error { .. }
                )
            })
            .await
            .unwrap_or_else(|e| panic!("{label}: no reply to join: {e:#}"));
        ep.shutdown().await;
        match reply {
            ServerMessage::Error { code, message, .. } => (code, message),
            other => panic!("{label}: join should be refused, got {}", short(&other)),
        }
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

// ---------------------------------------------------------------------------------------------------------------
// Meetings, tokens, meeting state, HTTP with headers
// ---------------------------------------------------------------------------------------------------------------

/// Create endpoints named `names` and a meeting in `mode` inviting all of them.
pub fn create_meeting(
    hub: &Hub,
    title: &str,
    mode: MeetingMode,
    names: &[&str],
) -> (Meeting, Vec<Endpoint>) {
    let endpoints: Vec<Endpoint> = names
        .iter()
        .map(|n| {
            hub.store
                .create_endpoint(n, "Xã/Phường")
                .unwrap_or_else(|e| panic!("endpoint {n}: {e}"))
        })
        .collect();
    let meeting = hub
        .store
        .create_meeting(&NewMeeting {
            title: title.into(),
            starts_at: giaoban_signaling::store::now_rfc3339(),
            mode,
            host_endpoint_id: None,
            invited_endpoint_ids: endpoints.iter().map(|e| e.id.clone()).collect(),
        })
        .unwrap_or_else(|e| panic!("meeting {title}: {e}"));
    (meeting, endpoints)
}

/// A join token for `meeting`, valid for an hour.
pub fn token(hub: &Hub, meeting: &str, sub: &str, name: &str, role: Role) -> String {
    hub.auth.issue(&Claims {
        mtg: meeting.into(),
        sub: sub.into(),
        name: name.into(),
        role,
        exp: now_secs() + 3600,
    })
}

/// Audio packets `sub` has received from `publisher_id` (0 if no such track).
pub fn audio_from(sub: &SimEndpoint, publisher_id: &str) -> u64 {
    kind_packets_from(sub, publisher_id, TrackKind::Audio)
}

/// Packets of `kind` `sub` has received from `publisher_id` over all its tracks so far (a participant that
/// resumed after its connection dropped has published new tracks under the same id).
fn kind_packets_from(sub: &SimEndpoint, publisher_id: &str, kind: TrackKind) -> u64 {
    sub.stats()
        .received
        .iter()
        .filter(|t| t.participant_id == publisher_id && t.kind == kind)
        .map(|t| t.packets)
        .sum()
}

/// Video packets `sub` has received from `publisher_id`, all its video tracks (0 if none).
pub fn video_from(sub: &SimEndpoint, publisher_id: &str) -> u64 {
    kind_packets_from(sub, publisher_id, TrackKind::Video)
}

/// Wait until `sub`'s audio count from `publisher` grows by `min` packets.
pub async fn wait_audio_flowing(
    sub: &SimEndpoint,
    publisher: &SimEndpoint,
    min: u64,
    timeout: Duration,
) {
    let pid = publisher.id();
    let before = audio_from(sub, &pid);
    wait_until(
        &format!(
            "{} to receive {min} more audio packets from {} (had {before}; publisher sent {:?})",
            sub.name(),
            publisher.name(),
            publisher.sent()
        ),
        timeout,
        || (audio_from(sub, &pid) >= before + min).then_some(()),
    )
    .await;
}

/// Assert no audio from `publisher` reaches any of `subs` over `window` while it keeps sending. First waits
/// (bounded) for what was in flight to drain: counts stable over 250 ms.
pub async fn assert_audio_silent(subs: &[&SimEndpoint], publisher: &SimEndpoint, window: Duration) {
    audio_silent(subs, publisher, window, true).await;
}

/// Like [`assert_audio_silent`], without requiring the publisher to keep sending (its connection may be gone).
pub async fn assert_audio_stops(subs: &[&SimEndpoint], publisher: &SimEndpoint, window: Duration) {
    audio_silent(subs, publisher, window, false).await;
}

async fn audio_silent(
    subs: &[&SimEndpoint],
    publisher: &SimEndpoint,
    window: Duration,
    check_sending: bool,
) {
    let pid = publisher.id();
    let counts =
        |subs: &[&SimEndpoint]| subs.iter().map(|s| audio_from(s, &pid)).collect::<Vec<_>>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut last = counts(subs);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = counts(subs);
        if now == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audio from {} keeps reaching {:?}: {last:?} -> {now:?}",
            publisher.name(),
            subs.iter().map(|s| s.name()).collect::<Vec<_>>()
        );
        last = now;
    }
    let sent_before = publisher.sent().audio_packets;
    tokio::time::sleep(window).await;
    let after = counts(subs);
    let sent_after = publisher.sent().audio_packets;
    assert!(
        !check_sending || sent_after >= sent_before + 10,
        "{} did not keep sending audio during the window ({sent_before} -> {sent_after})",
        publisher.name()
    );
    assert_eq!(
        after,
        last,
        "audio from {} reached {:?} while it should not be heard (it sent {} packets in the window)",
        publisher.name(),
        subs.iter().map(|s| s.name()).collect::<Vec<_>>(),
        sent_after - sent_before
    );
}

/// The newest meeting state `ep` knows (from `joined` or `meeting_state`).
pub fn latest_state(ep: &SimEndpoint) -> Option<MeetingState> {
    ep.messages().into_iter().rev().find_map(|m| match m {
        ServerMessage::MeetingState { state, .. } => Some(state),
        ServerMessage::Joined { state, .. } => Some(state),
        _ => None,
    })
}

/// Wait for a `meeting_state` at index `from` or later matching `pred`.
pub async fn wait_state(
    ep: &SimEndpoint,
    from: usize,
    what: &str,
    pred: impl Fn(&MeetingState) -> bool,
) -> MeetingState {
    let msg = ep
        .wait_message_since(
            from,
            Duration::from_secs(5),
            |m| matches!(m, ServerMessage::MeetingState { state, .. } if pred(state)),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: no meeting_state with {what}: {e:#}; latest state {:?}",
                ep.name(),
                latest_state(ep)
            )
        });
    match msg {
        ServerMessage::MeetingState { state, .. } => state,
        _ => unreachable!(),
    }
}

/// Floor holders' participant ids.
pub fn floor_ids(s: &MeetingState) -> Vec<String> {
    s.floor.iter().map(|f| f.participant_id.clone()).collect()
}

/// Queue participant ids, in order.
pub fn queue_ids(s: &MeetingState) -> Vec<String> {
    s.queue.iter().map(|f| f.participant_id.clone()).collect()
}

/// Send a message, panicking if the socket writer is gone.
pub fn send(ep: &SimEndpoint, msg: ClientMessage) {
    ep.send(&msg)
        .unwrap_or_else(|e| panic!("{} sends {msg:?}: {e:#}", ep.name()));
}

/// Send `msg` and return the `error` it provokes (within 5 s).
pub async fn expect_error(ep: &SimEndpoint, msg: ClientMessage) -> (ErrorCode, String) {
    let from = ep.log_len();
    let what = format!("{msg:?}");
    send(ep, msg);
    ep.wait_error_since(from, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{} sent {what}: expected an error: {e:#}", ep.name()))
}

/// Send `ping` and wait for `pong`: the session is alive.
pub async fn assert_alive(ep: &SimEndpoint) {
    let from = ep.log_len();
    send(ep, ClientMessage::Ping {});
    ep.wait_message_since(from, Duration::from_secs(5), |m| {
        matches!(m, ServerMessage::Pong)
    })
    .await
    .unwrap_or_else(|e| panic!("{} no longer answers ping: {e:#}", ep.name()));
}

/// An HTTP/1.0 request on loopback: status, response head, body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: response timed out"))
        .expect("read response");
    let text = String::from_utf8(out).unwrap_or_else(|e| panic!("{method} {path}: not UTF-8: {e}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: malformed response {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

// ---------------------------------------------------------------------------------------------------------------
// Tests that run themselves again inside a network namespace of their own (impaired links)
// ---------------------------------------------------------------------------------------------------------------

/// Set when a test binary runs inside the namespace its parent test made.
const NETNS_CHILD: &str = "TEST_IN_OWN_NETNS";

/// Whether this process is the copy of the test running inside its namespace.
pub fn in_netns_child() -> bool {
    std::env::var_os(NETNS_CHILD).is_some()
}

/// Runs `cmd args` (inside the current namespace); panics with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes the namespace when the parent test ends, whatever happens.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Make a namespace `<prefix>-<pid>` with loopback up, run the test `test` of this binary again inside it (where
/// `in_netns_child()` is true), and assert it passed; the namespace is removed afterwards.
pub async fn rerun_in_netns(prefix: &str, test: &str) {
    if let Err(failure) = try_rerun_in_netns(prefix, test).await {
        panic!("{failure}");
    }
}

/// `rerun_in_netns` up to `attempts` times, until one passes; each failure is printed, the last one fails the test.
/// For scenarios that are not yet reliable (the test says why, and the note on the issue says how often they miss).
#[allow(dead_code)]
pub async fn rerun_in_netns_attempts(prefix: &str, test: &str, attempts: usize) {
    for attempt in 1..=attempts {
        match try_rerun_in_netns(prefix, test).await {
            Ok(()) => return,
            Err(failure) if attempt < attempts => {
                println!("attempt {attempt} of {attempts} missed, trying again:\n{failure}");
            }
            Err(failure) => panic!("all {attempts} attempts missed; the last:\n{failure}"),
        }
    }
}

/// `rerun_in_netns`, returning the failure (the child's output) instead of panicking.
#[allow(dead_code)]
pub async fn try_rerun_in_netns(prefix: &str, test: &str) -> Result<(), String> {
    let ns = Netns(format!("{prefix}-{}", std::process::id()));
    run("ip", &["netns", "add", &ns.0]);
    run(
        "ip",
        &["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"],
    );
    let exe = std::env::current_exe().expect("test binary");
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args(["--exact", test, "--nocapture"])
        .env(NETNS_CHILD, "1")
        .output()
        .await
        .expect("run the test in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if out.status.success() && stdout.contains("1 passed") {
        Ok(())
    } else {
        Err(format!(
            "the test inside namespace {} failed:\n{stdout}\n{stderr}",
            ns.0
        ))
    }
}

#[allow(dead_code)]
/// Parse Prometheus text: sample name (with labels) → value; fails on any malformed line.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
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

/// `/metrics` of the server, parsed (`parse_prometheus`).
#[allow(dead_code)]
pub async fn metrics(server: &TestServer) -> HashMap<String, f64> {
    let (status, body) = http_get(server.http, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body)
}

/// Add (`-A`) or delete (`-D`) an iptables rule dropping `probability` (0..1) of what the server's media port on
/// 127.0.0.1 sends to `to`: a lossy downlink for the hall bound there (inside a test's own network namespace).
#[allow(dead_code)]
pub fn random_drop(op: &str, media_port: u16, to: &str, probability: f64) {
    let (port, p) = (media_port.to_string(), format!("{probability}"));
    let rule = [
        op,
        "OUTPUT",
        "-p",
        "udp",
        "-s",
        "127.0.0.1",
        "--sport",
        &port,
        "-d",
        to,
    ];
    let target = giaoban_tests::impair::random_drop_target(&p);
    run("iptables", &[&rule[..], &target].concat());
}
