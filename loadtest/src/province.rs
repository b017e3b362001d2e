//! `--scenario province`: a province-wide briefing in a lecture meeting. The chair (host hall) publishes its camera
//! in three simulcast layers plus audio; `--endpoints` commune halls each publish one low video layer plus audio;
//! `--observers` only watch. The chair grants the floor to one hall after another every `--floor-every` seconds
//! over its WebSocket (`grant_floor`, as the rules allow a chair), so exactly one hall is heard at a time.
//!
//! The loadtest makes the meeting as an administrator would (`POST /api/admin/meetings` with an admin token) and
//! signs each participant's join link with the server's `auth.secret` (a random one it gives the server it spawns,
//! or `--auth-secret`). Per receiver it checks what the issue asks: every hall and observer receives the chair
//! (audio by packets sent, video by the payload counters) and the hall holding the floor (audio while it holds
//! it, from 2 s after the grant); the chair receives every hall's video. It also measures join → first frame, the
//! server's CPU (as a share of the whole machine and per forwarded packet), RSS, and packets and bytes in and out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::progress::Progress;
use anyhow::{Context, anyhow, bail};
use giaoban_signaling::auth::{ANY_MEETING, Auth, Claims, now_secs};
use giaoban_signaling::protocol::{ClientMessage, Role, ServerMessage, TrackKind};
use giaoban_tests::sim::{Interceptors, LatencyHistogram, SimEndpoint, SimOptions, TrackCounts};
use serde::Serialize;

use super::{
    Args, JoinStep, ServerSpec, check_loopback, clock_ticks, cpu_of, join_steps, machine_cores,
    quantile_ms, report, rss_of, server_to_load, udp_drops, write_out,
};

/// How long a floor grant is given to take effect before the holder's audio is counted.
const FLOOR_SETTLE: Duration = Duration::from_secs(2);

/// Upper bound on the whole scenario: joins (generous: 2 s per participant per join slot), settle, the window,
/// teardown.
pub fn bound(args: &Args) -> Duration {
    let people = (args.endpoints + args.observers + 1) as u64;
    Duration::from_secs(
        120 + people * 2 / args.join_concurrency.max(1) as u64
            + args.settle_timeout * 2
            + args.duration(),
    )
}

type Received = HashMap<(String, TrackKind), TrackCounts>;

fn get(r: &Received, who: &str, kind: TrackKind) -> TrackCounts {
    r.get(&(who.to_string(), kind)).copied().unwrap_or_default()
}

fn total(r: &Received) -> (u64, u64) {
    r.values()
        .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
}

/// Δ distinct ÷ Δ expected counters between two readings, in % (`None` when nothing was expected).
fn counter_pct(a: TrackCounts, b: TrackCounts) -> Option<f64> {
    let expected = b.expected.saturating_sub(a.expected);
    (expected > 0).then(|| b.distinct.saturating_sub(a.distinct) as f64 * 100.0 / expected as f64)
}

/// Δ packets received ÷ Δ packets sent, in % (`None` when nothing was sent).
fn sent_pct(received: u64, sent: u64) -> Option<f64> {
    (sent > 0).then(|| received as f64 * 100.0 / sent as f64)
}

/// Smallest, 5th percentile and median of a set of percentages.
#[derive(Debug, Default, Serialize)]
struct Spread {
    receivers: usize,
    min: Option<f64>,
    p5: Option<f64>,
    median: Option<f64>,
    /// Receivers at or above 99 %.
    at_least_99: usize,
}

fn spread(values: &[f64]) -> Spread {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    Spread {
        receivers: v.len(),
        min: v.first().copied(),
        p5: quantile_ms(&v, 0.05),
        median: report::median(&v),
        at_least_99: v.iter().filter(|x| **x >= 99.0).count(),
    }
}

/// One floor holding inside the window.
#[derive(Debug, Serialize)]
struct Holding {
    hall: String,
    participant_id: String,
    /// Seconds into the window when the grant was sent.
    granted_at_s: f64,
    counted_s: f64,
    /// Audio packets the hall sent while counted.
    sent_audio_packets: u64,
    /// Per receiver: its audio packets from the hall ÷ those sent, in %.
    audio_delivered: Spread,
    /// Per receiver: the hall's video by payload counters, in %.
    video_delivered: Spread,
}

#[derive(Debug, Serialize)]
struct ProvinceSummary {
    scenario: &'static str,
    url: String,
    meeting_id: String,
    endpoints_requested: usize,
    observers_requested: usize,
    endpoints_joined: usize,
    observers_joined: usize,
    floor_every_s: u64,
    host_video_bitrate_bps: u64,
    host_fps: u32,
    endpoint_video_bitrate_bps: u64,
    endpoint_fps: u32,
    srtp_offered: String,
    join_s: f64,
    settle_s: f64,
    /// Halls and observers receiving the chair's audio and video when the window started.
    receivers_with_host_at_start: usize,
    /// Halls whose video the chair received when the window started.
    halls_seen_by_host_at_start: usize,
    window_s: f64,
    /// Per receiver (halls and observers): the chair's audio (packets received ÷ sent) and video (counters).
    host_audio_delivered: Spread,
    host_video_delivered: Spread,
    /// Per hall: its video at the chair (counters); and how many halls' video reached the chair in the window.
    halls_at_host_video_delivered: Spread,
    halls_reaching_host: usize,
    floor: Vec<Holding>,
    /// Audio packets received from halls that did not hold the floor in the window (lecture: should be 0).
    unheard_audio_packets_received: u64,
    /// The layer of the chair's camera each hall and observer got at the end of the window (the server's view).
    host_video_layers: Option<HostLayers>,
    /// What the server's media counters (`/metrics`) rose by in the window.
    in_window: Option<MediaCounters>,
    /// Halls and observers: join → first keyframe of the chair's video.
    join_to_first_frame_p50_ms: Option<f64>,
    join_to_first_frame_p95_ms: Option<f64>,
    /// The chair: a hall's join → first keyframe of its video.
    hall_join_to_host_frame_p50_ms: Option<f64>,
    hall_join_to_host_frame_p95_ms: Option<f64>,
    /// Halls and observers: where their join → the chair's first frame went, step by step.
    join_steps: Vec<JoinStep>,
    latency_samples: u64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    in_pps: f64,
    in_payload_bytes_per_s: f64,
    out_pps: f64,
    out_payload_bytes_per_s: f64,
    /// Of `out_pps`: halls' video reaching other halls and observers (not the chair).
    hall_video_to_others_pps: f64,
    cores: usize,
    server_cpu_s: Option<f64>,
    server_cpu_pct_of_machine: Option<f64>,
    server_us_per_forwarded_packet: Option<f64>,
    forwarded_packets_per_cpu_s: Option<f64>,
    server_rss_kib_before: Option<u64>,
    server_rss_kib_after: Option<u64>,
    /// (after − before) ÷ participants.
    server_rss_kib_per_participant: Option<f64>,
    client_cpu_pct_of_machine: f64,
    server_panics: usize,
    /// Participants the server removed because their media connection failed (its log; spawned server only).
    server_removed_for_lost_media: usize,
    /// Datagrams the kernel dropped at the server's media socket (its receive buffer full: the media worker did
    /// not read in time) during the joins and settling, and during the window (spawned server only).
    server_socket_drops_joining: Option<u64>,
    server_socket_drops_window: Option<u64>,
    errors: Vec<String>,
}

/// `method path` with a bearer token and, for a POST, a JSON body (HTTP/1.0, loopback); returns the status and
/// the body.
async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))??;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| anyhow!("{method} {path}: response timed out"))??;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: malformed response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// What the server chose for the chair's camera at each receiver, from its link health (`GET /api/health`) at
/// the end of the window: how many receivers got which layer (or had it paused), and their downlink estimates.
#[derive(Debug, Default, Serialize)]
struct HostLayers {
    /// Receivers per rid forwarded ("paused": the server paused it for the link; "none": nothing forwarded).
    receivers_by_layer: std::collections::BTreeMap<String, usize>,
    /// Receivers whose downlink the server estimates (transport-wide CC: `--full-interceptors`), and the lowest
    /// and median of those estimates, kbit/s (unconstrained links are left out).
    estimated: usize,
    estimate_min_kbps: Option<u64>,
    estimate_median_kbps: Option<u64>,
    /// Receivers whose last padding probe carried, and whose did not.
    probes_carried: usize,
    probes_not_carried: usize,
    /// Receivers still joining: switching layers, or estimated and not probed yet (a new link starts on the lowest
    /// layer and is probed about a second after it connected).
    settling: usize,
}

/// The server's media counters that tell what its layer choice and loss repair did (`/metrics`).
#[derive(Debug, Default, Serialize)]
struct MediaCounters {
    layer_switches: u64,
    keyframe_requests: u64,
    probes: u64,
    probes_carried: u64,
    nacks_received: u64,
    rtp_retransmitted: u64,
}

impl MediaCounters {
    fn parse(text: &str) -> MediaCounters {
        let read = |name: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0) as u64
        };
        MediaCounters {
            layer_switches: read("giaoban_media_layer_switches_total"),
            keyframe_requests: read("giaoban_media_keyframe_requests_total"),
            probes: read("giaoban_media_probes_total"),
            probes_carried: read("giaoban_media_probes_carried_total"),
            nacks_received: read("giaoban_media_nacks_received_total"),
            rtp_retransmitted: read("giaoban_media_rtp_retransmitted_total"),
        }
    }

    fn since(&self, before: &MediaCounters) -> MediaCounters {
        MediaCounters {
            layer_switches: self.layer_switches.saturating_sub(before.layer_switches),
            keyframe_requests: self
                .keyframe_requests
                .saturating_sub(before.keyframe_requests),
            probes: self.probes.saturating_sub(before.probes),
            probes_carried: self.probes_carried.saturating_sub(before.probes_carried),
            nacks_received: self.nacks_received.saturating_sub(before.nacks_received),
            rtp_retransmitted: self
                .rtp_retransmitted
                .saturating_sub(before.rtp_retransmitted),
        }
    }
}

/// `host_layers` of the server's link health now.
async fn read_host_layers(
    http: SocketAddr,
    token: &str,
    chair_id: &str,
) -> anyhow::Result<HostLayers> {
    match http_json(http, "GET", "/api/health", token, None).await? {
        (200, body) => Ok(host_layers(
            &serde_json::from_str::<serde_json::Value>(&body)?,
            chair_id,
        )),
        (status, body) => bail!("HTTP {status}: {body}"),
    }
}

async fn media_counters(http: SocketAddr, token: &str) -> anyhow::Result<MediaCounters> {
    match http_json(http, "GET", "/metrics", token, None).await? {
        (200, body) => Ok(MediaCounters::parse(&body)),
        (status, body) => bail!("HTTP {status}: {body}"),
    }
}

/// Estimates at or above this are "unconstrained" (`layers::MAX_ESTIMATE`, never measured).
const UNCONSTRAINED_BPS: u64 = 1_000_000_000;

fn host_layers(health: &serde_json::Value, chair_id: &str) -> HostLayers {
    let participants = health["participants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let chair_video: Vec<&str> = participants
        .iter()
        .filter(|p| p["participant_id"] == chair_id)
        .flat_map(|p| p["producers"].as_array().into_iter().flatten())
        .filter(|t| t["kind"] == "video")
        .filter_map(|t| t["track_id"].as_str())
        .collect();
    let mut out = HostLayers::default();
    let mut estimates = Vec::new();
    for p in participants
        .iter()
        .filter(|p| p["participant_id"] != chair_id)
    {
        let Some(c) = p["receiving"].as_array().into_iter().flatten().find(|c| {
            c["track_id"]
                .as_str()
                .is_some_and(|t| chair_video.contains(&t))
        }) else {
            continue;
        };
        let layer = if c["paused"] == true {
            "paused".to_string()
        } else {
            c["layer"].as_str().unwrap_or("none").to_string()
        };
        *out.receivers_by_layer.entry(layer).or_default() += 1;
        let estimated = p["estimate"]
            .as_u64()
            .is_some_and(|e| e < UNCONSTRAINED_BPS);
        if estimated {
            estimates.push(p["estimate"].as_u64().unwrap_or_default() / 1000);
        }
        let probe = p["transport_cc"]["last_probe"]["carried"].as_bool();
        match probe {
            Some(true) => out.probes_carried += 1,
            Some(false) => out.probes_not_carried += 1,
            None => {}
        }
        if c["layer"] != c["target"] || (estimated && probe.is_none()) {
            out.settling += 1;
        }
    }
    estimates.sort_unstable();
    out.estimated = estimates.len();
    out.estimate_min_kbps = estimates.first().copied();
    out.estimate_median_kbps = estimates.get(estimates.len() / 2).copied();
    out
}

fn random_secret() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn bar(len: usize, what: &str, unit: &str) -> Progress {
    Progress::new(len as u64, what, unit)
}

struct People {
    chair: SimEndpoint,
    halls: Vec<SimEndpoint>,
    observers: Vec<SimEndpoint>,
}

impl People {
    /// Everyone who receives the chair: halls and observers.
    fn receivers(&self) -> impl Iterator<Item = &SimEndpoint> {
        self.halls.iter().chain(self.observers.iter())
    }
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    if args.endpoints == 0 {
        bail!("--endpoints must be at least 1");
    }
    let participants = args.endpoints + args.observers + 1;
    let secret = match &args.auth_secret {
        Some(s) => s.clone(),
        None if args.spawn_server => random_secret()?,
        None => bail!(
            "province signs join links: give --spawn-server, or the server's auth.secret with --auth-secret"
        ),
    };
    if secret.len() < 32 {
        bail!("--auth-secret must be at least 32 characters (as auth.secret)");
    }
    eprintln!(
        "province: chair (simulcast VP8 3 layers, top ~{} kbit/s at {} fps, + Opus) + {} halls (VP8 1 layer ~{} kbit/s \
         at {} fps + Opus) + {} observers; lecture meeting, the floor moves every {} s; window {} s; join {} at a \
         time; SRTP offered {:?}; server CPUs {}, client CPUs {}",
        args.video_bitrate / 1000,
        args.fps,
        args.endpoints,
        args.endpoint_video_kbps,
        args.endpoint_fps,
        args.observers,
        args.floor_every,
        args.duration(),
        args.join_concurrency,
        args.srtp,
        args.server_cpus.as_deref().unwrap_or("any"),
        args.client_cpus.as_deref().unwrap_or("any"),
    );
    let mut spec = ServerSpec::of(args, participants);
    spec.auth_secret = Some(&secret);
    let (url, pid, spawned) = server_to_load(args, args.spawn_server, spec).await?;
    let media_port = spawned.as_ref().map(|s| s.media_port);
    let outcome = drive(args, &url, (pid, media_port), &secret).await;
    let log = spawned
        .as_ref()
        .and_then(|s| std::fs::read_to_string(&s.log).ok())
        .unwrap_or_default();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let (server_panics, server_removed) = (count("panicked"), count("media connection lost"));
    if let Some(mut s) = spawned {
        let _ = s.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.child.wait()).await;
    }
    let mut summary = outcome?;
    summary.server_panics = server_panics;
    summary.server_removed_for_lost_media = server_removed;
    print(&summary);
    let json = serde_json::to_string_pretty(&summary)?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("summary written to {}", path.display());
    }
    if let Some(dir) = &args.out {
        write_out(dir, &json, &html(&summary))?;
    }
    Ok(())
}

async fn drive(
    args: &Args,
    url: &str,
    (pid, media_port): (Option<u32>, Option<u16>),
    secret: &str,
) -> anyhow::Result<ProvinceSummary> {
    let drops = || media_port.and_then(udp_drops);
    let drops0 = drops();
    let http = check_loopback(url)?;
    let ticks = clock_ticks();
    let cores = machine_cores();
    let auth = Auth::new(secret.as_bytes());
    let exp = now_secs() + 6 * 3600;
    let admin = auth.issue(&Claims {
        mtg: ANY_MEETING.into(),
        sub: "loadtest-admin".into(),
        name: "loadtest".into(),
        role: Role::Admin,
        exp,
    });
    let (status, body) = http_json(
        http,
        "POST",
        "/api/admin/meetings",
        &admin,
        Some(&serde_json::json!({
            "title": "Giao ban trực tuyến toàn tỉnh (loadtest)",
            "starts_at": "2026-01-05T08:00:00+07:00",
            "mode": "lecture",
        })),
    )
    .await?;
    if status != 201 {
        bail!("creating the meeting: HTTP {status}: {body}");
    }
    let meeting_id = serde_json::from_str::<serde_json::Value>(&body)?["id"]
        .as_str()
        .ok_or_else(|| anyhow!("the new meeting has no id: {body}"))?
        .to_string();
    let opts = |sub: &str, name: &str, role: Role| {
        let mut o = SimOptions::new(url, &meeting_id, name);
        o.token = Some(auth.issue(&Claims {
            mtg: meeting_id.clone(),
            sub: sub.into(),
            name: name.into(),
            role,
            exp,
        }));
        o.verify_payload = false;
        o.srtp_profiles = args.srtp.profiles();
        o.step_timeout = Duration::from_secs(30);
        o
    };
    let rss_before = pid.and_then(|p| rss_of(Some(p))).map(|r| r.0);
    let mut errors = Vec::new();

    // The chair first: the halls arrive in a running meeting.
    let join_started = Instant::now();
    let mut o = opts("chair", "Chủ trì (UBND tỉnh)", Role::Chair);
    o.media.simulcast = true;
    o.media.video_bitrate_bps = args.video_bitrate;
    o.media.video_fps = args.fps;
    o.interceptors = Interceptors::Default;
    let chair = SimEndpoint::connect(o).await.context("the chair joins")?;
    chair.publish().await.context("the chair publishes")?;
    let chair_id = chair.id();

    let b = bar(
        args.endpoints + args.observers,
        "joining",
        "halls and observers",
    );
    let sem = Arc::new(tokio::sync::Semaphore::new(args.join_concurrency.max(1)));
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..args.endpoints + args.observers {
        let hall = i < args.endpoints;
        let mut o = if hall {
            opts(
                &format!("xa-{:03}", i + 1),
                &format!("UBND xã {:03}", i + 1),
                Role::Endpoint,
            )
        } else {
            let k = i - args.endpoints + 1;
            opts(
                &format!("observer-{k:02}"),
                &format!("Dự thính {k:02}"),
                Role::Observer,
            )
        };
        o.interceptors = if args.full_interceptors {
            Interceptors::Default
        } else {
            Interceptors::Minimal
        };
        if hall {
            o.media.video_bitrate_bps = args.endpoint_video_kbps * 1000;
            o.media.video_fps = args.endpoint_fps;
        } else {
            o.media.audio = false;
            o.media.video = false;
        }
        let sem = Arc::clone(&sem);
        joins.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let ep = SimEndpoint::connect(o).await?;
            if hall {
                ep.publish().await.context("publish")?;
            }
            anyhow::Ok((i, ep))
        });
    }
    let mut joined: Vec<(usize, SimEndpoint)> = Vec::new();
    while let Some(r) = joins.join_next().await {
        match r {
            Ok(Ok(x)) => joined.push(x),
            Ok(Err(e)) => {
                if errors.len() < 20 {
                    errors.push(format!("join: {e:#}"));
                }
            }
            Err(e) => errors.push(format!("join task: {e}")),
        }
        b.inc(1);
        b.set_message(format!("{} failed", b.position() as usize - joined.len()));
    }
    b.finish_and_clear();
    joined.sort_by_key(|(i, _)| *i);
    let (halls, observers): (Vec<_>, Vec<_>) =
        joined.into_iter().partition(|(i, _)| *i < args.endpoints);
    let people = People {
        chair,
        halls: halls.into_iter().map(|(_, e)| e).collect(),
        observers: observers.into_iter().map(|(_, e)| e).collect(),
    };
    let join_s = join_started.elapsed().as_secs_f64();
    eprintln!(
        "{} of {} halls and {} of {} observers joined in {join_s:.0} s",
        people.halls.len(),
        args.endpoints,
        people.observers.len(),
        args.observers
    );
    if people.halls.is_empty() {
        bail!("no hall could join: {errors:?}");
    }
    let hall_ids: Vec<String> = people.halls.iter().map(|h| h.id()).collect();

    // Settle: every receiver gets the chair's audio and video, the chair every hall's video.
    let settle_started = Instant::now();
    let deadline = settle_started + Duration::from_secs(args.settle_timeout);
    let receivers_n = people.halls.len() + people.observers.len();
    let b = bar(
        receivers_n + hall_ids.len(),
        "settling",
        "(receivers with the chair + halls at the chair)",
    );
    let (mut with_host, mut seen_by_host);
    loop {
        with_host = people
            .receivers()
            .filter(|r| {
                let got = r.received_by_publisher();
                get(&got, &chair_id, TrackKind::Audio).packets > 0
                    && get(&got, &chair_id, TrackKind::Video).packets > 0
            })
            .count();
        let at_chair = people.chair.received_by_publisher();
        seen_by_host = hall_ids
            .iter()
            .filter(|h| get(&at_chair, h, TrackKind::Video).packets > 0)
            .count();
        b.set_position((with_host + seen_by_host) as u64);
        if (with_host == receivers_n && seen_by_host == hall_ids.len())
            || Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.finish_and_clear();
    // With transport-wide CC (`--full-interceptors`), each receiver's link starts at a modest estimate on the
    // chair's lowest layer and is probed about a second after it connected: the window starts once those joins
    // are over, so it measures the meeting, not the last joiners' switch up.
    loop {
        let settling = read_host_layers(http, &admin, &chair_id)
            .await
            .map_or(0, |l| l.settling);
        if settling == 0 || Instant::now() >= deadline {
            if settling > 0 {
                errors.push(format!(
                    "{settling} receivers were still switching the chair's camera layer when the window started"
                ));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settle_s = settle_started.elapsed().as_secs_f64();
    if with_host < receivers_n || seen_by_host < hall_ids.len() {
        errors.push(format!(
            "after {settle_s:.0} s of settling: {with_host} of {receivers_n} receivers had the chair's audio and \
             video, the chair had {seen_by_host} of {} halls' video",
            hall_ids.len()
        ));
    }
    eprintln!(
        "settled in {settle_s:.0} s: {with_host}/{receivers_n} receive the chair, the chair sees {seen_by_host}/{} halls",
        hall_ids.len()
    );

    // Join → first frame.
    let mut first_frame = Vec::new();
    for r in people.receivers() {
        let st = r.stats();
        if let (Some(j), Some(k)) = (
            r.join_sent_at(),
            st.track_from(&chair_id, TrackKind::Video)
                .and_then(|t| t.first_keyframe_at),
        ) {
            first_frame.push(k.saturating_duration_since(j).as_secs_f64() * 1000.0);
        }
    }
    first_frame.sort_by(|a, b| a.total_cmp(b));
    let mut hall_to_host = Vec::new();
    let chair_stats = people.chair.stats();
    for h in &people.halls {
        if let (Some(j), Some(k)) = (
            h.join_sent_at(),
            chair_stats
                .track_from(&h.id(), TrackKind::Video)
                .and_then(|t| t.first_keyframe_at),
        ) {
            hall_to_host.push(k.saturating_duration_since(j).as_secs_f64() * 1000.0);
        }
    }
    hall_to_host.sort_by(|a, b| a.total_cmp(b));

    // The window.
    let everyone: Vec<&SimEndpoint> = std::iter::once(&people.chair)
        .chain(people.receivers())
        .collect();
    let publishers: Vec<&SimEndpoint> = std::iter::once(&people.chair)
        .chain(people.halls.iter())
        .collect();
    let lat0: Vec<LatencyHistogram> = everyone.iter().map(|e| latency(e)).collect();
    let recv0: Vec<Received> = everyone.iter().map(|e| e.received_by_publisher()).collect();
    let sent0: Vec<(u64, u64, u64)> = publishers.iter().map(|p| sent(p)).collect();
    let cpu0 = pid.map(|p| cpu_of(Some(p), ticks)).transpose()?;
    let client0 = cpu_of(None, ticks)?;
    let drops1 = drops();
    let media0 = media_counters(http, &admin).await;
    let t0 = Instant::now();
    let window = Duration::from_secs(args.duration());
    let floor_every = Duration::from_secs(args.floor_every.max(1));
    let b = bar(window.as_secs() as usize, "measuring", "s");
    let mut floor = Vec::new();
    let mut held: Vec<usize> = Vec::new();
    let mut next_grant = t0;
    let mut current: Option<Current> = None;
    while t0.elapsed() < window {
        let now = Instant::now();
        if now >= next_grant {
            if let Some(h) = current.take() {
                floor.extend(close_holding(&people, &hall_ids, h, t0));
            }
            let idx = held.len() % hall_ids.len();
            held.push(idx);
            if let Err(e) = people.chair.send(&ClientMessage::GrantFloor {
                participant_id: hall_ids[idx].clone(),
                seconds: None,
            }) {
                errors.push(format!(
                    "{:.0} s into the window the chair could not grant the floor (its WebSocket is gone: the \
                     server removed it?): {e:#}",
                    t0.elapsed().as_secs_f64()
                ));
                break;
            }
            current = Some((idx, now, None));
            next_grant = now + floor_every;
        }
        if let Some((idx, granted, start @ None)) = &mut current
            && now >= *granted + FLOOR_SETTLE
        {
            *start = Some((now, snapshot_of(&people, &hall_ids[*idx], *idx)));
        }
        let cpu = match (pid, cpu0) {
            (Some(p), Some(c0)) => cpu_of(Some(p), ticks)
                .map(|c| {
                    format!(
                        " server {:.0} % of the machine",
                        (c.cpu_s - c0.cpu_s) * 100.0 / (t0.elapsed().as_secs_f64() * cores as f64)
                    )
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        b.set_position(t0.elapsed().as_secs());
        b.set_message(format!(
            "floor: {}{cpu}",
            current
                .as_ref()
                .map(|(i, _, _)| people.halls[*i].name().to_string())
                .unwrap_or_default()
        ));
        tokio::time::sleep(Duration::from_millis(250).min(window.saturating_sub(t0.elapsed())))
            .await;
    }
    if let Some(h) = current.take() {
        floor.extend(close_holding(&people, &hall_ids, h, t0));
    }
    b.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = pid.map(|p| cpu_of(Some(p), ticks)).transpose()?;
    let client1 = cpu_of(None, ticks)?;
    let recv1: Vec<Received> = everyone.iter().map(|e| e.received_by_publisher()).collect();
    let sent1: Vec<(u64, u64, u64)> = publishers.iter().map(|p| sent(p)).collect();
    let mut lat = LatencyHistogram::default();
    for (e, l0) in everyone.iter().zip(&lat0) {
        lat.merge(&latency(e).since(l0));
    }
    let rss_after = pid.and_then(|p| rss_of(Some(p))).map(|r| r.0);
    let in_window = match (media0, media_counters(http, &admin).await) {
        (Ok(a), Ok(b)) => Some(b.since(&a)),
        (Err(e), _) | (_, Err(e)) => {
            errors.push(format!("GET /metrics: {e}"));
            None
        }
    };
    let drops2 = drops();
    let since = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));

    // Chair → receivers (everyone[0] is the chair).
    let chair_sent_audio = sent1[0].0 - sent0[0].0;
    let (mut host_audio, mut host_video) = (Vec::new(), Vec::new());
    for (a, b) in recv0.iter().zip(&recv1).skip(1) {
        let ra = get(b, &chair_id, TrackKind::Audio).packets
            - get(a, &chair_id, TrackKind::Audio).packets;
        host_audio.extend(sent_pct(ra, chair_sent_audio));
        host_video.extend(counter_pct(
            get(a, &chair_id, TrackKind::Video),
            get(b, &chair_id, TrackKind::Video),
        ));
    }
    // Halls → chair.
    let mut at_host = Vec::new();
    let mut halls_reaching_host = 0;
    for h in &hall_ids {
        let (a, b) = (
            get(&recv0[0], h, TrackKind::Video),
            get(&recv1[0], h, TrackKind::Video),
        );
        if b.packets > a.packets {
            halls_reaching_host += 1;
        }
        at_host.push(counter_pct(a, b).unwrap_or(0.0));
    }
    // Audio from halls that never held the floor in the window.
    let unheard: u64 = hall_ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !held.contains(i))
        .map(|(_, h)| {
            recv0
                .iter()
                .zip(&recv1)
                .map(|(a, b)| {
                    get(b, h, TrackKind::Audio)
                        .packets
                        .saturating_sub(get(a, h, TrackKind::Audio).packets)
                })
                .sum::<u64>()
        })
        .sum();
    // Totals.
    let in_packets: u64 = sent0
        .iter()
        .zip(&sent1)
        .map(|(a, b)| b.0 + b.1 - a.0 - a.1)
        .sum();
    let in_bytes: u64 = sent0.iter().zip(&sent1).map(|(a, b)| b.2 - a.2).sum();
    let (mut out_packets, mut out_bytes) = (0u64, 0u64);
    for (a, b) in recv0.iter().zip(&recv1) {
        let (ta, tb) = (total(a), total(b));
        out_packets += tb.0 - ta.0;
        out_bytes += tb.1 - ta.1;
    }
    let hall_video_to_others: u64 = recv0
        .iter()
        .zip(&recv1)
        .skip(1)
        .map(|(a, b)| {
            hall_ids
                .iter()
                .map(|h| {
                    get(b, h, TrackKind::Video)
                        .packets
                        .saturating_sub(get(a, h, TrackKind::Video).packets)
                })
                .sum::<u64>()
        })
        .sum();
    let server_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
        _ => None,
    };

    // Refusals the server sent anyone (a message too large, an answer refused…): each is a defect of the run.
    let mut refused = 0usize;
    for e in std::iter::once(&people.chair)
        .chain(people.halls.iter())
        .chain(people.observers.iter())
    {
        for m in e.messages() {
            if let ServerMessage::Error { code, message } = m {
                refused += 1;
                if refused <= 5 {
                    errors.push(format!(
                        "the server refused {}: {code:?}: {message}",
                        e.name()
                    ));
                }
            }
        }
    }
    if refused > 5 {
        errors.push(format!("… {} more refusals", refused - 5));
    }

    // The layers the server chose for the chair's camera, from its link health as IT staff read it.
    let host_video_layers = match read_host_layers(http, &admin, &chair_id).await {
        Ok(l) => Some(l),
        Err(e) => {
            errors.push(format!("GET /api/health: {e}"));
            None
        }
    };

    // Teardown, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut set = tokio::task::JoinSet::new();
        for e in people.halls.iter().chain(people.observers.iter()) {
            let e = e.clone();
            set.spawn(async move { e.close().await });
        }
        while set.join_next().await.is_some() {}
        people.chair.close().await;
    })
    .await;

    Ok(ProvinceSummary {
        scenario: "province",
        url: url.to_string(),
        meeting_id,
        endpoints_requested: args.endpoints,
        observers_requested: args.observers,
        endpoints_joined: people.halls.len(),
        observers_joined: people.observers.len(),
        floor_every_s: args.floor_every,
        host_video_bitrate_bps: args.video_bitrate,
        host_fps: args.fps,
        endpoint_video_bitrate_bps: args.endpoint_video_kbps * 1000,
        endpoint_fps: args.endpoint_fps,
        srtp_offered: format!("{:?}", args.srtp),
        join_s,
        settle_s,
        receivers_with_host_at_start: with_host,
        halls_seen_by_host_at_start: seen_by_host,
        window_s: elapsed,
        host_audio_delivered: spread(&host_audio),
        host_video_delivered: spread(&host_video),
        halls_at_host_video_delivered: spread(&at_host),
        halls_reaching_host,
        floor,
        unheard_audio_packets_received: unheard,
        host_video_layers,
        in_window,
        join_to_first_frame_p50_ms: quantile_ms(&first_frame, 0.5),
        join_to_first_frame_p95_ms: quantile_ms(&first_frame, 0.95),
        hall_join_to_host_frame_p50_ms: quantile_ms(&hall_to_host, 0.5),
        hall_join_to_host_frame_p95_ms: quantile_ms(&hall_to_host, 0.95),
        join_steps: join_steps(people.receivers(), Some(&chair_id)),
        latency_samples: lat.count(),
        latency_p50_ms: lat.quantile_us(0.5) as f64 / 1000.0,
        latency_p99_ms: lat.quantile_us(0.99) as f64 / 1000.0,
        in_pps: in_packets as f64 / elapsed,
        in_payload_bytes_per_s: in_bytes as f64 / elapsed,
        out_pps: out_packets as f64 / elapsed,
        out_payload_bytes_per_s: out_bytes as f64 / elapsed,
        hall_video_to_others_pps: hall_video_to_others as f64 / elapsed,
        cores,
        server_cpu_s: server_cpu,
        server_cpu_pct_of_machine: server_cpu.map(|c| c * 100.0 / (elapsed * cores as f64)),
        server_us_per_forwarded_packet: server_cpu
            .filter(|_| out_packets > 0)
            .map(|c| c * 1e6 / out_packets as f64),
        forwarded_packets_per_cpu_s: server_cpu
            .filter(|c| *c > 0.0)
            .map(|c| out_packets as f64 / c),
        server_rss_kib_before: rss_before,
        server_rss_kib_after: rss_after,
        server_rss_kib_per_participant: match (rss_before, rss_after) {
            (Some(a), Some(b)) => Some(
                b.saturating_sub(a) as f64
                    / (1 + people.halls.len() + people.observers.len()) as f64,
            ),
            _ => None,
        },
        client_cpu_pct_of_machine: (client1.cpu_s - client0.cpu_s) * 100.0
            / (elapsed * cores as f64),
        server_panics: 0,
        server_removed_for_lost_media: 0,
        server_socket_drops_joining: since(drops0, drops1),
        server_socket_drops_window: since(drops1, drops2),
        errors,
    })
}

/// (audio packets, video packets, payload bytes) a publisher sent.
fn sent(p: &SimEndpoint) -> (u64, u64, u64) {
    let s = p.sent();
    (
        s.audio_packets,
        s.video_packets,
        s.audio_bytes + s.video_bytes,
    )
}

fn latency(e: &SimEndpoint) -> LatencyHistogram {
    let mut h = LatencyHistogram::default();
    for t in e.stats().received {
        h.merge(&t.latency);
    }
    h
}

/// At one moment of a floor holding: the holder's audio packets sent, and per receiver (everyone but the holder)
/// what it had of the holder's audio and video.
type Received2 = (u64, Vec<(TrackCounts, TrackCounts)>);

/// The holding under way: the hall's index, when it was granted, and (from `FLOOR_SETTLE` on) the first reading.
type Current = (usize, Instant, Option<(Instant, Received2)>);

fn holding_receivers(people: &People, holder_idx: usize) -> impl Iterator<Item = &SimEndpoint> {
    std::iter::once(&people.chair)
        .chain(
            people
                .halls
                .iter()
                .enumerate()
                .filter(move |(i, _)| *i != holder_idx)
                .map(|(_, h)| h),
        )
        .chain(people.observers.iter())
}

fn snapshot_of(people: &People, holder: &str, holder_idx: usize) -> Received2 {
    let sent_audio = people.halls[holder_idx].sent().audio_packets;
    let per = holding_receivers(people, holder_idx)
        .map(|r| {
            let got = r.received_by_publisher();
            (
                get(&got, holder, TrackKind::Audio),
                get(&got, holder, TrackKind::Video),
            )
        })
        .collect();
    (sent_audio, per)
}

fn close_holding(
    people: &People,
    hall_ids: &[String],
    (idx, granted, start): Current,
    t0: Instant,
) -> Option<Holding> {
    let holder = &hall_ids[idx];
    let mut h = Holding {
        hall: people.halls[idx].name().to_string(),
        participant_id: holder.clone(),
        granted_at_s: granted.saturating_duration_since(t0).as_secs_f64(),
        counted_s: 0.0,
        sent_audio_packets: 0,
        audio_delivered: Spread::default(),
        video_delivered: Spread::default(),
    };
    // A holding cut by the window's end before `FLOOR_SETTLE` is not counted.
    let (at, (sent0, per0)) = start?;
    let (sent1, per1) = snapshot_of(people, holder, idx);
    h.counted_s = at.elapsed().as_secs_f64();
    h.sent_audio_packets = sent1 - sent0;
    let (mut audio, mut video) = (Vec::new(), Vec::new());
    for ((a0, v0), (a1, v1)) in per0.iter().zip(&per1) {
        audio.extend(sent_pct(a1.packets - a0.packets, h.sent_audio_packets));
        video.extend(counter_pct(*v0, *v1));
    }
    h.audio_delivered = spread(&audio);
    h.video_delivered = spread(&video);
    Some(h)
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2} %"))
        .unwrap_or_else(|| "n/a".into())
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} ms"))
        .unwrap_or_else(|| "n/a".into())
}

fn spread_text(s: &Spread) -> String {
    format!(
        "min {}, p5 {}, median {}; {} of {} at ≥ 99 %",
        pct(s.min),
        pct(s.p5),
        pct(s.median),
        s.at_least_99,
        s.receivers
    )
}

/// The summary as (figure, value) lines, for the terminal and the HTML report.
fn rows(s: &ProvinceSummary) -> Vec<(String, String)> {
    let mut r = vec![
        (
            "participants".into(),
            format!(
                "chair + {} of {} halls + {} of {} observers (joined in {:.0} s, settled in {:.0} s)",
                s.endpoints_joined,
                s.endpoints_requested,
                s.observers_joined,
                s.observers_requested,
                s.join_s,
                s.settle_s
            ),
        ),
        (
            "window".into(),
            format!(
                "{:.1} s, the floor moving every {} s",
                s.window_s, s.floor_every_s
            ),
        ),
        (
            "chair's audio at halls and observers".into(),
            spread_text(&s.host_audio_delivered),
        ),
        (
            "chair's video at halls and observers".into(),
            spread_text(&s.host_video_delivered),
        ),
        (
            "halls' video at the chair".into(),
            format!(
                "{} of {} halls reach the chair; {}",
                s.halls_reaching_host,
                s.endpoints_joined,
                spread_text(&s.halls_at_host_video_delivered)
            ),
        ),
    ];
    if let Some(l) = &s.host_video_layers {
        let by_layer = l
            .receivers_by_layer
            .iter()
            .map(|(rid, n)| format!("{rid} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let kbps = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} kbit/s"));
        r.push((
            "chair's camera layer at the end (server)".into(),
            format!(
                "{by_layer}; {} downlinks estimated (lowest {}, median {}); last probe carried at {}, not at {}",
                l.estimated,
                kbps(l.estimate_min_kbps),
                kbps(l.estimate_median_kbps),
                l.probes_carried,
                l.probes_not_carried
            ),
        ));
    }
    if let Some(c) = &s.in_window {
        r.push((
            "server in the window".into(),
            format!(
                "{} layer switches, {} keyframe requests, {} probes ({} carried), {} NACKs received, {} \
                 retransmitted",
                c.layer_switches,
                c.keyframe_requests,
                c.probes,
                c.probes_carried,
                c.nacks_received,
                c.rtp_retransmitted
            ),
        ));
    }
    for h in &s.floor {
        r.push((
            format!("floor: {} from {:.0} s", h.hall, h.granted_at_s),
            format!(
                "audio ({} packets sent in {:.1} s counted): {}; video: {}",
                h.sent_audio_packets,
                h.counted_s,
                spread_text(&h.audio_delivered),
                spread_text(&h.video_delivered)
            ),
        ));
    }
    r.extend([
        (
            "audio from halls without the floor".into(),
            format!("{} packets received (lecture: 0 expected)", s.unheard_audio_packets_received),
        ),
        (
            "join → first frame of the chair".into(),
            format!(
                "p50 {}  p95 {}",
                ms(s.join_to_first_frame_p50_ms),
                ms(s.join_to_first_frame_p95_ms)
            ),
        ),
        (
            "hall joins → chair's first frame of it".into(),
            format!(
                "p50 {}  p95 {}",
                ms(s.hall_join_to_host_frame_p50_ms),
                ms(s.hall_join_to_host_frame_p95_ms)
            ),
        ),
        (
            "added latency".into(),
            format!(
                "p50 {:.2} ms  p99 {:.2} ms ({} samples)",
                s.latency_p50_ms, s.latency_p99_ms, s.latency_samples
            ),
        ),
        (
            "in (publishers → server)".into(),
            format!(
                "{:.0} pkt/s  {:.0} kB/s payload",
                s.in_pps,
                s.in_payload_bytes_per_s / 1000.0
            ),
        ),
        (
            "out (server → receivers)".into(),
            format!(
                "{:.0} pkt/s  {:.0} kB/s payload; of it halls' video to other halls and observers {:.0} pkt/s",
                s.out_pps,
                s.out_payload_bytes_per_s / 1000.0,
                s.hall_video_to_others_pps
            ),
        ),
        (
            "server CPU".into(),
            format!(
                "{} s = {} of the {}-core machine; {} per forwarded packet ({} packets per CPU-second)",
                s.server_cpu_s
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "n/a".into()),
                pct(s.server_cpu_pct_of_machine),
                s.cores,
                s.server_us_per_forwarded_packet
                    .map(|v| format!("{v:.2} µs"))
                    .unwrap_or_else(|| "n/a".into()),
                s.forwarded_packets_per_cpu_s
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "n/a".into())
            ),
        ),
        (
            "server RSS".into(),
            format!(
                "{:.1} MiB (before the joins {:.1} MiB; {} KiB per participant)",
                s.server_rss_kib_after.unwrap_or(0) as f64 / 1024.0,
                s.server_rss_kib_before.unwrap_or(0) as f64 / 1024.0,
                s.server_rss_kib_per_participant
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "n/a".into())
            ),
        ),
        (
            "load generator CPU".into(),
            format!(
                "{:.1} % of the machine ({})",
                s.client_cpu_pct_of_machine,
                if s.client_cpu_pct_of_machine + s.server_cpu_pct_of_machine.unwrap_or(0.0) > 90.0 {
                    "with the server's share the machine is full: the client may be the limit"
                } else {
                    "the machine had room: the client was not the limit"
                }
            ),
        ),
        ("panics in the server log".into(), s.server_panics.to_string()),
        (
            "server media socket drops".into(),
            format!(
                "{} while joining and settling, {} in the window (receive buffer full: the media worker did not \
                 read in time)",
                s.server_socket_drops_joining
                    .map_or_else(|| "n/a".into(), |d| d.to_string()),
                s.server_socket_drops_window
                    .map_or_else(|| "n/a".into(), |d| d.to_string())
            ),
        ),
        (
            "participants removed for lost media".into(),
            format!("{} (server log: ICE/DTLS failed)", s.server_removed_for_lost_media),
        ),
    ]);
    for e in &s.errors {
        r.push(("error".into(), e.clone()));
    }
    // The join breakdown under its total.
    if let Some(at) = r
        .iter()
        .position(|(k, _)| k == "join → first frame of the chair")
    {
        for (i, j) in s.join_steps.iter().enumerate() {
            let text = format!(
                "p50 {}  p95 {}  ({} receivers)",
                ms(j.p50_ms),
                ms(j.p95_ms),
                j.n
            );
            r.insert(at + 1 + i, (format!("  {}", j.step), text));
        }
    }
    r
}

fn print(s: &ProvinceSummary) {
    println!();
    println!("province ({})", s.url);
    for (k, v) in rows(s) {
        println!("  {k:<40} {v}");
    }
    println!();
}

fn html(s: &ProvinceSummary) -> String {
    let mut body = report::kv_table(&rows(s));
    // Floor holdings: each holder's audio delivery, min and median over receivers.
    let floor_series =
        |name: &str, color: &'static str, f: fn(&Holding) -> Option<f64>| report::Series {
            name: name.into(),
            color,
            dashed: false,
            points: s
                .floor
                .iter()
                .filter_map(|h| Some((h.granted_at_s, f(h)?)))
                .collect(),
        };
    body.push_str("<figure>");
    body.push_str(&report::line_chart(
        "Floor holder's audio at every other participant",
        "grant, seconds into the window",
        "% of packets sent",
        &[
            floor_series("median receiver", "#1f6feb", |h| h.audio_delivered.median),
            floor_series("worst receiver", "#d1242f", |h| h.audio_delivered.min),
        ],
        Some((
            s.floor
                .iter()
                .filter_map(|h| h.audio_delivered.min)
                .fold(100.0f64, f64::min)
                .min(99.0)
                .floor()
                .max(0.0),
            100.0,
        )),
    ));
    body.push_str("</figure>");
    report::page(
        "giaoban loadtest: province",
        &format!(
            "Lecture meeting: chair with simulcast video ({} kbit/s top layer at {} fps) + audio, {} halls with one {} \
             kbit/s layer at {} fps + audio, {} observers; the chair moves the floor every {} s.",
            s.host_video_bitrate_bps / 1000,
            s.host_fps,
            s.endpoints_joined,
            s.endpoint_video_bitrate_bps / 1000,
            s.endpoint_fps,
            s.observers_joined,
            s.floor_every_s
        ),
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_from_two_readings() {
        let a = TrackCounts {
            packets: 100,
            bytes: 0,
            distinct: 100,
            expected: 100,
        };
        let b = TrackCounts {
            packets: 290,
            bytes: 0,
            distinct: 290,
            expected: 300,
        };
        // 190 of the 200 counters expected in between arrived.
        assert_eq!(counter_pct(a, b), Some(95.0));
        assert_eq!(
            counter_pct(a, a),
            None,
            "nothing expected, nothing to grade"
        );
        assert_eq!(sent_pct(49, 50), Some(98.0));
        assert_eq!(sent_pct(0, 0), None);
    }

    #[test]
    fn the_chairs_camera_layers_from_the_link_health() {
        let health = serde_json::json!({"participants": [
            {"participant_id": "chair", "estimate": 1_000_000_000u64,
             "producers": [{"track_id": "cam", "kind": "video"}, {"track_id": "mic", "kind": "audio"}],
             "receiving": []},
            // On f after a carried probe.
            {"participant_id": "a", "estimate": 1_800_000,
             "transport_cc": {"last_probe": {"carried": true}},
             "receiving": [{"track_id": "mic", "layer": null, "target": null, "paused": false},
                           {"track_id": "cam", "layer": "f", "target": "f", "paused": false}]},
            // Joined a moment ago: on q, not probed yet.
            {"participant_id": "b", "estimate": 300_000, "transport_cc": {"last_probe": null},
             "receiving": [{"track_id": "cam", "layer": "q", "target": "q", "paused": false}]},
            // Paused for its link, after a probe that did not carry.
            {"participant_id": "c", "estimate": 90_000,
             "transport_cc": {"last_probe": {"carried": false}},
             "receiving": [{"track_id": "cam", "layer": null, "target": null, "paused": true}]},
            // No transport-wide CC: unconstrained, switching up.
            {"participant_id": "d", "estimate": 1_000_000_000u64,
             "receiving": [{"track_id": "cam", "layer": "h", "target": "f", "paused": false}]},
            // Receiving nothing of the chair's camera.
            {"participant_id": "e", "receiving": []}
        ]});
        let l = host_layers(&health, "chair");
        let by: Vec<(&str, usize)> = l
            .receivers_by_layer
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(by, [("f", 1), ("h", 1), ("paused", 1), ("q", 1)]);
        assert_eq!(l.estimated, 3);
        assert_eq!(l.estimate_min_kbps, Some(90));
        assert_eq!(l.estimate_median_kbps, Some(300));
        assert_eq!((l.probes_carried, l.probes_not_carried), (1, 1));
        assert_eq!(l.settling, 2, "b (not probed) and d (switching)");
    }

    #[test]
    fn media_counters_from_the_metrics_text() {
        let text = "# HELP giaoban_media_layer_switches_total Simulcast layer changes\n\
                    giaoban_media_layer_switches_total 12\n\
                    giaoban_media_probes_total 7\n\
                    giaoban_media_probes_carried_total 5\n\
                    giaoban_media_rtp_retransmitted_total 40\n";
        let before = MediaCounters::parse(text);
        assert_eq!(
            (
                before.layer_switches,
                before.probes,
                before.probes_carried,
                before.rtp_retransmitted
            ),
            (12, 7, 5, 40)
        );
        assert_eq!(
            before.nacks_received, 0,
            "a counter not in the text reads 0"
        );
        let after = MediaCounters::parse(&text.replace(" 12", " 15"));
        assert_eq!(after.since(&before).layer_switches, 3);
        assert_eq!(after.since(&before).probes, 0);
    }

    #[test]
    fn spread_of_receivers() {
        let s = spread(&[100.0, 98.0, f64::NAN, 99.5, 90.0]);
        assert_eq!(s.receivers, 4, "a receiver without a figure is not counted");
        assert_eq!(s.min, Some(90.0));
        assert_eq!(s.median, Some(98.75));
        assert_eq!(s.at_least_99, 2);
        let empty = spread(&[]);
        assert_eq!((empty.receivers, empty.min, empty.median), (0, None, None));
    }
}
