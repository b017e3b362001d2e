//! `loadtest`: one publisher (synthetic VP8 ~1.5 Mbit/s at 30 fps + Opus at 50 packets/s) → N subscribers, all
//! simulated endpoints on this machine, against a giaoban server on loopback. Reports delivery, added latency,
//! join → first packet, and (given the server's PID) the server's CPU per forwarded packet and its memory.
//!
//! The publisher joins and starts sending first; the subscribers then join (a few at a time), so "join → first
//! packet" is what a participant arriving in a running meeting sees. Counting happens in a measuring window that
//! starts once every subscriber receives media: packets sent and received, latency, server and client CPU are all
//! differences between the window's two ends.
//!
//! `--server janus` runs the same load against Janus 1.1.2's VideoRoom (the recipe in `/work/shared/peers/janus/`,
//! driven over its HTTP API: see `janus.rs`); `--compare` alternates giaoban and Janus runs (`--runs K` pairs) and
//! prints each pair's ratio of server µs per forwarded packet (Janus ÷ giaoban) and the median ratio. Janus runs in
//! the network namespace `sfu` (media on 127.0.0.2): run as root, and the load generator re-runs itself inside that
//! namespace (creating it if needed, deleting it afterwards if it created it); giaoban then runs there too, so both
//! servers see the same loopback.

mod churn;
mod janus;
mod progress;
mod province;
mod report;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, ValueEnum};
use giaoban_signaling::protocol::TrackKind;
use giaoban_tests::sim::{
    Interceptors, JoinTimeline, LatencyHistogram, SimEndpoint, SimOptions, SrtpProtectionProfile,
};
use progress::Progress;
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Server {
    /// Our server (`--url`, or started with `--spawn-server`).
    Giaoban,
    /// Janus 1.1.2 VideoRoom, started from the recipe (`--janus-recipe`) inside the namespace `sfu`.
    Janus,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Server::Giaoban => "giaoban",
            Server::Janus => "janus",
        })
    }
}

/// SRTP protection profiles the simulated endpoints offer in DTLS (both servers see the same offer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Srtp {
    /// Only SRTP_AEAD_AES_128_GCM.
    Gcm,
    /// Only SRTP_AES128_CM_HMAC_SHA1_80.
    AesCm,
    /// webrtc-rs's default list (GCM-128, GCM-256, AES-CM-80, AES-CM-32); the server picks.
    Any,
}

impl Srtp {
    fn profiles(self) -> Vec<SrtpProtectionProfile> {
        match self {
            Srtp::Gcm => vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            Srtp::AesCm => vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80],
            Srtp::Any => Vec::new(),
        }
    }
}

/// What load to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1 publisher → N subscribers (`--subscribers`), measured over `--duration` seconds (the headline).
    Fanout,
    /// The soak: 1 publisher while `--cycles` subscribers join, receive, and leave (or vanish), `--join-concurrency`
    /// at a time; checks that everything they held is released.
    Churn,
    /// A province-wide briefing (lecture meeting): a chair publishing simulcast video + audio to everyone,
    /// `--endpoints` halls each publishing a low single-layer video + audio, `--observers` watchers, the floor
    /// granted by the chair to one hall after another every `--floor-every` seconds.
    Province,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadtest",
    about = "One publisher → N subscribers against a giaoban server on loopback"
)]
struct Args {
    /// Which load to run.
    #[arg(long, value_enum, default_value_t = Scenario::Fanout)]
    scenario: Scenario,
    /// churn: join/leave cycles.
    #[arg(long, default_value_t = 1000)]
    cycles: usize,
    /// churn: how long each subscriber stays once it receives media, ms.
    #[arg(long, default_value_t = 500)]
    hold_ms: u64,
    /// churn: every K-th subscriber leaves by dropping its socket and connections without `leave`.
    #[arg(long, default_value_t = 4)]
    vanish_every: usize,
    /// Server base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Number of subscribing endpoints; a list (`10,30,50`) sweeps: each N is run `--runs` times.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    subscribers: Vec<usize>,
    /// Length of the measuring window, seconds (default: fanout 15, province 60).
    #[arg(long)]
    duration: Option<u64>,
    /// province: halls publishing a low video + audio (the chair receives them all).
    #[arg(long, default_value_t = 130)]
    endpoints: usize,
    /// province: observers (receive only).
    #[arg(long, default_value_t = 10)]
    observers: usize,
    /// province: seconds between floor moves (the chair grants the floor to the next hall).
    #[arg(long, default_value_t = 20)]
    floor_every: u64,
    /// province: each hall's video bitrate, kbit/s (one layer).
    #[arg(long, default_value_t = 100)]
    endpoint_video_kbps: u64,
    /// province: each hall's video frame rate.
    #[arg(long, default_value_t = 15)]
    endpoint_fps: u32,
    /// province against a server not spawned here: its `auth.secret` (to sign the admin and join tokens).
    #[arg(long)]
    auth_secret: Option<String>,
    /// Write `result.json` and a self-contained `report.html` (SVG charts) into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Pin the spawned server to these CPUs (`taskset -c` list, e.g. `0`).
    #[arg(long)]
    server_cpus: Option<String>,
    /// Pin the load generator itself to these CPUs (e.g. `1`), so server and client do not share a core.
    #[arg(long)]
    client_cpus: Option<String>,
    /// PID of the server process, for its CPU time and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start the server binary on free loopback ports, measure it, stop it afterwards.
    #[arg(long)]
    spawn_server: bool,
    /// Server binary for --spawn-server.
    #[arg(long, default_value = "target/release/giaoban")]
    server_bin: PathBuf,
    /// Write the JSON summary here (it is printed too).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Room name.
    #[arg(long, default_value = "loadtest")]
    room: String,
    /// Subscribers joining at the same time.
    #[arg(long, default_value_t = 10)]
    join_concurrency: usize,
    /// Subscribers reach the server over ICE-TCP only (with --spawn-server, the server gets a TCP port).
    #[arg(long)]
    ice_tcp: bool,
    /// Run webrtc-rs's default interceptors on the subscribers too (costs client CPU), as a browser does: NACKs,
    /// receiver reports and transport-wide CC feedback, so the server estimates each downlink and probes it
    /// (fanout, province: halls and observers). By default they run only on the publisher (the chair).
    #[arg(long)]
    full_interceptors: bool,
    /// Video bitrate, bit/s.
    #[arg(long, default_value_t = 1_500_000)]
    video_bitrate: u64,
    /// Video frame rate.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Longest wait for all subscribers to receive media before the window starts, seconds.
    #[arg(long, default_value_t = 60)]
    settle_timeout: u64,
    /// Which SFU to load (ignored with --compare).
    #[arg(long, value_enum, default_value_t = Server::Giaoban)]
    server: Server,
    /// Alternate giaoban and Janus runs (each started fresh) and compare µs per forwarded packet.
    #[arg(long)]
    compare: bool,
    /// Runs (pairs with --compare; default 3 with --compare, else 1).
    #[arg(long)]
    runs: Option<usize>,
    /// SRTP profiles the endpoints offer.
    #[arg(long, value_enum, default_value_t = Srtp::Gcm)]
    srtp: Srtp,
    /// Folder with Janus's recipe (start.sh and the .jcfg files).
    #[arg(long, default_value = "/work/shared/peers/janus")]
    janus_recipe: PathBuf,
    /// Janus's working folder (generated config, log, pid file).
    #[arg(long, default_value = "/tmp/giaoban-loadtest-janus")]
    janus_workdir: PathBuf,
    /// Loopback address the endpoints' media sockets bind to against Janus (its media is on 127.0.0.2).
    #[arg(long, default_value = "127.0.0.2")]
    janus_bind_ip: std::net::IpAddr,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        if !self.janus_bind_ip.is_loopback() {
            bail!("--janus-bind-ip must be a loopback address");
        }
        if self.scenario != Scenario::Fanout && self.needs_janus() {
            bail!(
                "--scenario churn and province run against giaoban only (no --server janus / --compare)"
            );
        }
        if self.subscribers.is_empty() || self.subscribers.contains(&0) {
            bail!("--subscribers takes counts of at least 1 (e.g. 50 or 10,30,50)");
        }
        if self.scenario != Scenario::Fanout && self.subscribers.len() > 1 {
            bail!("a --subscribers sweep is for --scenario fanout");
        }
        Ok(())
    }

    fn needs_janus(&self) -> bool {
        self.compare || self.server == Server::Janus
    }

    fn run_count(&self) -> usize {
        self.runs.unwrap_or(if self.compare { 3 } else { 1 }).max(1)
    }

    /// Subscribers of this run (the first of `--subscribers`; a sweep runs a copy per N).
    fn n(&self) -> usize {
        self.subscribers.first().copied().unwrap_or(10)
    }

    /// The largest N of the sweep.
    fn max_n(&self) -> usize {
        self.subscribers.iter().copied().max().unwrap_or(10)
    }

    /// Measuring window, seconds.
    fn duration(&self) -> u64 {
        self.duration.unwrap_or(match self.scenario {
            Scenario::Province => 60,
            _ => 15,
        })
    }

    /// Hard bound on one run: start + joins + settle + window + teardown.
    fn run_budget(&self) -> Duration {
        Duration::from_secs(self.settle_timeout + self.duration() + 90 + (self.max_n() as u64 / 2))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct CpuSample {
    /// utime + stime, seconds.
    cpu_s: f64,
}

/// CPUs online on the machine (not this process's affinity: the CPU % of the machine divides by all of them).
fn machine_cores() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// Pin this process (before its threads start) to `cpus` with `taskset`.
fn pin_self(cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (package util-linux)")?;
    if !status.success() {
        bail!("taskset -c {cpus} failed for the load generator ({status})");
    }
    Ok(())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process (`self` or a PID), in seconds.
fn cpu_of(pid: Option<u32>, ticks: f64) -> anyhow::Result<CpuSample> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: field 3 (state) is index 0, utime (14) index 11, stime (15) index 12.
    let utime: f64 = fields
        .get(11)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no utime in {path}"))?;
    let stime: f64 = fields
        .get(12)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no stime in {path}"))?;
    Ok(CpuSample {
        cpu_s: (utime + stime) / ticks,
    })
}

/// VmRSS and VmHWM of a process, in KiB.
fn rss_of(pid: Option<u32>) -> Option<(u64, u64)> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

fn check_loopback(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must be http://127.0.0.1:PORT (plain HTTP on loopback)"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| anyhow!("--url host must be a loopback IP with a port, got {hostport}"))?;
    if !addr.ip().is_loopback() {
        bail!(
            "loadtest only runs against loopback addresses, not {}",
            addr.ip()
        );
    }
    Ok(addr)
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct SpawnedServer {
    child: tokio::process::Child,
    url: String,
    pid: u32,
    log: PathBuf,
    /// The media UDP port (for its socket's receive drops).
    media_port: u16,
}

/// The server to load: started here from `spec` when `spawn` (said on stderr), else `--url` / `--server-pid`.
/// Returns its URL, its pid if known, and the spawned server to stop afterwards.
async fn server_to_load(
    args: &Args,
    spawn: bool,
    spec: ServerSpec<'_>,
) -> anyhow::Result<(String, Option<u32>, Option<SpawnedServer>)> {
    if !spawn {
        return Ok((args.url.clone(), args.server_pid, None));
    }
    let s = spawn_server(spec).await?;
    eprintln!(
        "started {} (pid {}) at {}; log {}",
        args.server_bin.display(),
        s.pid,
        s.url,
        s.log.display()
    );
    Ok((s.url.clone(), Some(s.pid), Some(s)))
}

/// Datagrams the kernel dropped on arrival at the UDP socket bound to `port` (its receive buffer was full: the
/// reader did not keep up), from `/proc/net/udp` and `udp6` of this network namespace; `None` if no such socket.
fn udp_drops(port: u16) -> Option<u64> {
    let tables: Vec<String> = ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect();
    tables
        .iter()
        .filter_map(|t| udp_drops_in(t, port))
        .reduce(|a, b| a + b)
}

/// The `drops` column summed over the sockets of a `/proc/net/udp` table bound to local `port`.
fn udp_drops_in(table: &str, port: u16) -> Option<u64> {
    let mut found = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = f
            .get(1)
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if local_port == Some(port)
            && let Some(d) = f.last().and_then(|d| d.parse::<u64>().ok())
        {
            *found.get_or_insert(0) += d;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn udp_drops_of_one_port() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1093: 0100007F:9485 00000000:0000 07 00000000:00001E40 00:00000000 00000000     0        0 1373750 2 0000000000000000 183690
 1234: 0100007F:E659 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1385750 2 0000000000000000 476
";
        assert_eq!(super::udp_drops_in(table, 38021), Some(183_690));
        assert_eq!(super::udp_drops_in(table, 0xE659), Some(476));
        assert_eq!(
            super::udp_drops_in(table, 9),
            None,
            "no socket on that port"
        );
    }
}

/// How to start the server: its binary, how many participants it must admit, the CPUs to pin it to, and the
/// join-link secret (province signs its tokens with it).
struct ServerSpec<'a> {
    bin: &'a PathBuf,
    participants: usize,
    cpus: Option<&'a str>,
    auth_secret: Option<&'a str>,
}

impl<'a> ServerSpec<'a> {
    fn of(args: &'a Args, participants: usize) -> Self {
        ServerSpec {
            bin: &args.server_bin,
            participants,
            cpus: args.server_cpus.as_deref(),
            auth_secret: None,
        }
    }
}

async fn spawn_server(spec: ServerSpec<'_>) -> anyhow::Result<SpawnedServer> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (bin, subscribers) = (spec.bin, spec.participants);
    let http_port = free_tcp_port()?;
    let udp_port = free_udp_port()?;
    let log = std::env::temp_dir().join(format!("giaoban-loadtest-server-{http_port}.log"));
    // `taskset -c LIST bin` execs the binary: the child's PID is the server's.
    let mut command = match spec.cpus {
        Some(cpus) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(cpus).arg(bin);
            c
        }
        None => tokio::process::Command::new(bin),
    };
    if let Some(secret) = spec.auth_secret {
        command.env("GIAOBAN_AUTH_SECRET", secret);
    }
    let mut child = command
        .env_remove(janus::NETNS_ENV)
        .env("GIAOBAN_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("GIAOBAN_MEDIA_UDP_PORT", udp_port.to_string())
        .env("GIAOBAN_MEDIA_TCP_PORT", free_tcp_port()?.to_string())
        .env("GIAOBAN_MEDIA_LISTEN_IP", "127.0.0.1")
        .env("GIAOBAN_TLS_SELF_SIGNED", "false")
        // The load joins an open room; its database goes to a fresh temp dir.
        .env("GIAOBAN_AUTH_OPEN_ROOMS", "true")
        // Every simulated endpoint comes from the same loopback address: lift the per-address limits
        // (connections, joins per minute) and the room size above the load.
        .env(
            "GIAOBAN_LIMITS_MAX_CONNECTIONS_PER_IP",
            (subscribers * 2 + 16).max(64).to_string(),
        )
        .env("GIAOBAN_LIMITS_JOINS_PER_MINUTE_PER_IP", "100000")
        .env(
            "GIAOBAN_LIMITS_MAX_PARTICIPANTS_PER_ROOM",
            (subscribers + 16).max(200).to_string(),
        )
        .env(
            "GIAOBAN_STORAGE_DATA_DIR",
            std::env::temp_dir().join(format!("giaoban-loadtest-data-{http_port}")),
        )
        .env(
            "GIAOBAN_LOG_LEVEL",
            std::env::var("GIAOBAN_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it: cargo build --release -p giaoban-signaling)",
                bin.display()
            )
        })?;
    let pid = child.id().ok_or_else(|| anyhow!("server exited at once"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let file = Arc::new(std::sync::Mutex::new(std::fs::File::create(&log)?));
    let f1 = Arc::clone(&file);
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("giaoban listening on")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(());
            }
            if let Ok(mut f) = f1.lock() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let f2 = Arc::clone(&file);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut f) = f2.lock() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(15), ready_rx)
        .await
        .map_err(|_| {
            anyhow!(
                "server did not print `giaoban listening on` within 15 s; see {}",
                log.display()
            )
        })?
        .map_err(|_| anyhow!("server exited before listening; see {}", log.display()))?;
    Ok(SpawnedServer {
        child,
        url: format!("http://127.0.0.1:{http_port}"),
        pid,
        log,
        media_port: udp_port,
    })
}

#[derive(Serialize, Debug)]
struct Summary {
    server: Server,
    url: String,
    /// SRTP profiles the endpoints offered (`--srtp`).
    srtp_offered: String,
    /// The profile DTLS negotiated on the publisher's connection (from webrtc-rs's transport stats).
    srtp_publish: Option<String>,
    /// Negotiated profile → subscribers using it (`none` = not up / unknown).
    srtp_subscribe: BTreeMap<String, usize>,
    subscribers_requested: usize,
    subscribers_joined: usize,
    subscribers_receiving: usize,
    window_s: f64,
    video_fps: u32,
    video_bitrate_bps: u64,
    sent_packets: u64,
    sent_payload_bytes: u64,
    received_packets: u64,
    received_payload_bytes: u64,
    /// received / (sent × subscribers joined), in %.
    delivered_pct: f64,
    /// Counter gaps inside the window over all subscribers (loss seen by sequence counter).
    missing_packets: u64,
    duplicate_packets: u64,
    out_of_order_packets: u64,
    corrupt_payloads: u64,
    latency_samples: u64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    join_to_first_packet_p50_ms: Option<f64>,
    join_to_first_packet_p95_ms: Option<f64>,
    join_to_first_keyframe_p50_ms: Option<f64>,
    join_to_first_keyframe_p95_ms: Option<f64>,
    /// Each step of a subscriber's join, ms after its `join` (p50, p95 over the subscribers), and the gaps that
    /// matter: connected → first keyframe (the keyframe wait), answer → connected (ICE + DTLS).
    join_steps: Vec<JoinStep>,
    in_pps: f64,
    in_payload_bytes_per_s: f64,
    out_pps: f64,
    out_payload_bytes_per_s: f64,
    server_pid: Option<u32>,
    server_cpu_s: Option<f64>,
    /// Server CPU as % of one core.
    server_cpu_pct: Option<f64>,
    /// Server CPU as % of the whole machine (utime + stime ÷ (wall time × cores)).
    server_cpu_pct_of_machine: Option<f64>,
    /// CPUs of the machine (online).
    cores: usize,
    /// Datagrams the kernel dropped at the server's media socket (receive buffer full) during the joins and
    /// settling, and during the window (a spawned giaoban only).
    server_socket_drops_joining: Option<u64>,
    server_socket_drops_window: Option<u64>,
    server_rss_kib_before: Option<u64>,
    server_rss_kib_after: Option<u64>,
    server_rss_kib_peak: Option<u64>,
    server_rss_kib_per_subscriber: Option<f64>,
    forwarded_packets_per_cpu_s: Option<f64>,
    server_us_per_forwarded_packet: Option<f64>,
    client_cpu_s: f64,
    client_cpu_pct: f64,
    client_rss_kib: Option<u64>,
    publisher_plis: u64,
    publisher_keyframes: u64,
    publisher_write_errors: u64,
    subscribe_answer_errors: u64,
    errors: Vec<String>,
}

impl Summary {
    fn new(server: Server, url: &str, args: &Args) -> Summary {
        Summary {
            server,
            url: url.to_string(),
            srtp_offered: format!("{:?}", args.srtp.profiles()),
            srtp_publish: None,
            srtp_subscribe: BTreeMap::new(),
            subscribers_requested: args.n(),
            subscribers_joined: 0,
            subscribers_receiving: 0,
            window_s: 0.0,
            video_fps: args.fps,
            video_bitrate_bps: args.video_bitrate,
            sent_packets: 0,
            sent_payload_bytes: 0,
            received_packets: 0,
            received_payload_bytes: 0,
            delivered_pct: 0.0,
            missing_packets: 0,
            duplicate_packets: 0,
            out_of_order_packets: 0,
            corrupt_payloads: 0,
            latency_samples: 0,
            latency_p50_ms: 0.0,
            latency_p99_ms: 0.0,
            latency_max_ms: 0.0,
            join_to_first_packet_p50_ms: None,
            join_to_first_packet_p95_ms: None,
            join_to_first_keyframe_p50_ms: None,
            join_to_first_keyframe_p95_ms: None,
            join_steps: Vec::new(),
            in_pps: 0.0,
            in_payload_bytes_per_s: 0.0,
            out_pps: 0.0,
            out_payload_bytes_per_s: 0.0,
            server_pid: None,
            server_cpu_s: None,
            server_cpu_pct: None,
            server_cpu_pct_of_machine: None,
            cores: machine_cores(),
            server_socket_drops_joining: None,
            server_socket_drops_window: None,
            server_rss_kib_before: None,
            server_rss_kib_after: None,
            server_rss_kib_peak: None,
            server_rss_kib_per_subscriber: None,
            forwarded_packets_per_cpu_s: None,
            server_us_per_forwarded_packet: None,
            client_cpu_s: 0.0,
            client_cpu_pct: 0.0,
            client_rss_kib: None,
            publisher_plis: 0,
            publisher_keyframes: 0,
            publisher_write_errors: 0,
            subscribe_answer_errors: 0,
            errors: Vec::new(),
        }
    }
}

/// One step of the join breakdown: its p50 and p95 in ms over the subscribers that reached it.
#[derive(Serialize, Debug)]
pub(crate) struct JoinStep {
    step: &'static str,
    n: usize,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
}

/// The join breakdown of the subscribers: each step's time after `join`, and two gaps between steps.
pub(crate) fn join_steps<'a>(
    subs: impl IntoIterator<Item = &'a SimEndpoint>,
    pub_f: Option<&str>,
) -> Vec<JoinStep> {
    type Pick = fn(&JoinTimeline, Option<Instant>, Option<Instant>) -> Option<(Instant, Instant)>;
    let steps: [(&'static str, Pick); 9] = [
        ("joined", |t, _, _| Some((t.join_sent?, t.joined?))),
        ("subscribe offer", |t, _, _| {
            Some((t.join_sent?, t.subscribe_offer?))
        }),
        ("answer sent", |t, _, _| {
            Some((t.join_sent?, t.subscribe_answer?))
        }),
        ("ICE connected", |t, _, _| {
            Some((t.join_sent?, t.ice_connected?))
        }),
        ("DTLS connected", |t, _, _| {
            Some((t.join_sent?, t.connected?))
        }),
        ("first packet", |t, p, _| Some((t.join_sent?, p?))),
        ("first keyframe", |t, _, k| Some((t.join_sent?, k?))),
        ("(answer → connected)", |t, _, _| {
            Some((t.subscribe_answer?, t.connected?))
        }),
        ("(connected → keyframe)", |t, _, k| {
            Some((t.connected?, k?))
        }),
    ];
    let timelines: Vec<_> = subs
        .into_iter()
        .map(|s| {
            let st = s.stats();
            let from_pub: Vec<_> = st
                .received
                .iter()
                .filter(|t| pub_f.is_none_or(|p| t.participant_id == p))
                .collect();
            let first_packet = from_pub.iter().filter_map(|t| t.first_packet_at).min();
            let first_key = from_pub
                .iter()
                .find(|t| t.kind == TrackKind::Video)
                .and_then(|v| v.first_keyframe_at);
            (s.timeline(), first_packet, first_key)
        })
        .collect();
    steps
        .iter()
        .map(|(step, pick)| {
            let mut ms: Vec<f64> = timelines
                .iter()
                .filter_map(|(t, p, k)| pick(t, *p, *k))
                .map(|(a, b)| b.saturating_duration_since(a).as_secs_f64() * 1000.0)
                .collect();
            ms.sort_by(|a, b| a.total_cmp(b));
            JoinStep {
                step,
                n: ms.len(),
                p50_ms: quantile_ms(&ms, 0.5),
                p95_ms: quantile_ms(&ms, 0.95),
            }
        })
        .collect()
}

fn quantile_ms(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

/// Per subscriber and track: (packets, bytes, distinct, missing, duplicates, out_of_order, corrupt, latency).
#[derive(Clone, Default)]
struct Counts {
    packets: u64,
    bytes: u64,
    missing: u64,
    duplicates: u64,
    out_of_order: u64,
    corrupt: u64,
    latency: LatencyHistogram,
}

/// What a subscriber received from the publisher (`None`: every received track — Janus names streams itself and
/// there is only one publisher).
fn counts_from(ep: &SimEndpoint, publisher_id: Option<&str>) -> Counts {
    let mut c = Counts::default();
    for t in ep
        .stats()
        .received
        .iter()
        .filter(|t| publisher_id.is_none_or(|p| t.participant_id == p))
    {
        c.packets += t.packets;
        c.bytes += t.bytes;
        c.missing += t.missing();
        c.duplicates += t.duplicates;
        c.out_of_order += t.out_of_order;
        c.corrupt += t.payload_errors;
        c.latency.merge(&t.latency);
    }
    c
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.check()?;
    if args.needs_janus() && std::env::var_os(janus::NETNS_ENV).is_none() {
        let code = run_in_netns(&args)?;
        std::process::exit(code);
    }
    if let Some(cpus) = &args.client_cpus {
        pin_self(cpus)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = match args.scenario {
        Scenario::Fanout => rt.block_on(run(args)),
        Scenario::Province => {
            let bound = province::bound(&args);
            rt.block_on(async {
                tokio::time::timeout(bound, province::run(&args))
                    .await
                    .map_err(|_| anyhow!("province exceeded its bound of {bound:?}"))?
            })
        }
        Scenario::Churn => {
            // Bounded: a generous 3 s per cycle per slot, plus start and drain.
            let bound = Duration::from_secs(
                180 + args.cycles as u64 * 3 / args.join_concurrency.max(1) as u64,
            );
            rt.block_on(async {
                tokio::time::timeout(bound, churn::run(&args))
                    .await
                    .map_err(|_| anyhow!("churn exceeded its bound of {bound:?}"))?
            })
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Janus needs the namespace: create it if missing, re-run this command inside it (bounded), delete it afterwards
/// if we created it. Returns the inner run's exit code.
fn run_in_netns(args: &Args) -> anyhow::Result<i32> {
    if !janus::is_root() {
        bail!(
            "--server janus / --compare need root (network namespace `{}` and Janus's start.sh)",
            janus::NETNS
        );
    }
    let created = if janus::netns_exists() {
        false
    } else {
        janus::netns_create()?;
        true
    };
    let exe = std::env::current_exe().context("current_exe")?;
    let bound = args.run_budget()
        * (args.run_count() as u32
            * args.subscribers.len().max(1) as u32
            * if args.compare { 2 } else { 1 })
        + Duration::from_secs(60);
    eprintln!(
        "running inside network namespace `{}` (created: {created}); bound {bound:?}",
        janus::NETNS
    );
    let result = (|| {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", janus::NETNS])
            .arg(&exe)
            .args(std::env::args_os().skip(1))
            .env(janus::NETNS_ENV, janus::NETNS)
            .spawn()
            .context("ip netns exec")?;
        let deadline = Instant::now() + bound;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st.code().unwrap_or(1));
            }
            if Instant::now() >= deadline {
                eprintln!("loadtest exceeded its bound of {bound:?}; stopping it");
                let _ = child.kill();
                let _ = child.wait();
                return Ok(1);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })();
    if created {
        janus::netns_delete();
    }
    result
}

#[derive(Serialize)]
struct Pair {
    subscribers: usize,
    pair: usize,
    giaoban_us_per_packet: Option<f64>,
    janus_us_per_packet: Option<f64>,
    /// Janus µs per forwarded packet ÷ giaoban's (how many times cheaper giaoban forwards).
    ratio_janus_over_giaoban: Option<f64>,
    giaoban_delivered_pct: f64,
    janus_delivered_pct: f64,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    /// The N of each sweep step.
    subscribers: Vec<usize>,
    duration_s: u64,
    runs_per_step: usize,
    runs: Vec<Summary>,
    /// Runs that failed outright (server did not start, nobody joined, time bound).
    failed_runs: Vec<String>,
    pairs: Vec<Pair>,
    /// Median of the pairs' ratios, per N.
    median_ratio_janus_over_giaoban: BTreeMap<usize, f64>,
    /// Per server and N: the median of each figure over its runs.
    medians: Vec<report::Group>,
}

/// The figures of a fanout run that get medians and charts: (name in the JSON, how to read it from a run).
type Figure = (&'static str, fn(&Summary) -> Option<f64>);

const FANOUT_FIGURES: &[Figure] = &[
    ("us_per_forwarded_packet", |s| {
        s.server_us_per_forwarded_packet
    }),
    ("forwarded_packets_per_cpu_s", |s| {
        s.forwarded_packets_per_cpu_s
    }),
    ("delivered_pct", |s| Some(s.delivered_pct)),
    ("latency_p50_ms", |s| Some(s.latency_p50_ms)),
    ("latency_p99_ms", |s| Some(s.latency_p99_ms)),
    ("join_to_first_packet_p50_ms", |s| {
        s.join_to_first_packet_p50_ms
    }),
    ("join_to_first_packet_p95_ms", |s| {
        s.join_to_first_packet_p95_ms
    }),
    ("join_to_first_keyframe_p50_ms", |s| {
        s.join_to_first_keyframe_p50_ms
    }),
    ("join_to_first_keyframe_p95_ms", |s| {
        s.join_to_first_keyframe_p95_ms
    }),
    ("server_cpu_s", |s| s.server_cpu_s),
    ("server_cpu_pct_of_machine", |s| s.server_cpu_pct_of_machine),
    ("server_rss_mib", |s| {
        s.server_rss_kib_after.map(|k| k as f64 / 1024.0)
    }),
    ("server_rss_kib_per_subscriber", |s| {
        s.server_rss_kib_per_subscriber
    }),
    ("in_pps", |s| Some(s.in_pps)),
    ("in_payload_kbytes_per_s", |s| {
        Some(s.in_payload_bytes_per_s / 1000.0)
    }),
    ("out_pps", |s| Some(s.out_pps)),
    ("out_payload_kbytes_per_s", |s| {
        Some(s.out_payload_bytes_per_s / 1000.0)
    }),
    ("client_cpu_pct", |s| Some(s.client_cpu_pct)),
    ("server_socket_drops_window", |s| {
        s.server_socket_drops_window.map(|d| d as f64)
    }),
];

async fn run(args: Args) -> anyhow::Result<()> {
    let ticks = clock_ticks();
    let servers: Vec<Server> = if args.compare {
        vec![Server::Giaoban, Server::Janus]
    } else {
        vec![args.server]
    };
    let total = args.subscribers.len() * args.run_count() * servers.len();
    eprintln!(
        "fanout: 1 publisher (VP8 ~{} kbit/s at {} fps + Opus 50 pps) → N = {:?} subscribers; window {} s; {} run(s) \
         per N of {}; SRTP offered {:?}; server CPUs {}, client CPUs {}",
        args.video_bitrate / 1000,
        args.fps,
        args.subscribers,
        args.duration(),
        args.run_count(),
        servers
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        args.srtp,
        args.server_cpus.as_deref().unwrap_or("any"),
        args.client_cpus.as_deref().unwrap_or("any"),
    );
    let mut runs: Vec<(usize, usize, Summary)> = Vec::new();
    let mut failed = Vec::new();
    let mut k = 0;
    for &n in &args.subscribers {
        let mut step = args.clone();
        step.subscribers = vec![n];
        for i in 0..args.run_count() {
            for &server in &servers {
                k += 1;
                eprintln!(
                    "=== run {k} of {total}: {server}, N = {n} (repeat {} of {}) ===",
                    i + 1,
                    args.run_count()
                );
                let budget = step.run_budget();
                match tokio::time::timeout(budget, run_one(&step, server, ticks)).await {
                    Ok(Ok(summary)) => {
                        print_summary(&summary);
                        runs.push((n, i, summary));
                    }
                    Ok(Err(e)) => {
                        eprintln!("run {k} ({server}, N = {n}) failed: {e:#}");
                        failed.push(format!("run {k} ({server}, N = {n}): {e:#}"));
                    }
                    Err(_) => {
                        eprintln!("run {k} ({server}, N = {n}) exceeded its bound of {budget:?}");
                        failed.push(format!(
                            "run {k} ({server}, N = {n}): exceeded its bound of {budget:?}"
                        ));
                    }
                }
                // Let the previous server's sockets and processes go before the next one starts.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let single = !args.compare && total == 1 && args.out.is_none();
    if single && runs.len() == 1 && failed.is_empty() {
        let summary = &runs[0].2;
        let json = serde_json::to_string_pretty(summary)?;
        println!("{json}");
        if let Some(path) = &args.json {
            std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("summary written to {}", path.display());
        }
        return Ok(());
    }
    let mut pairs = Vec::new();
    if args.compare {
        for &n in &args.subscribers {
            for i in 0..args.run_count() {
                let find = |srv: Server| {
                    runs.iter()
                        .find(|(rn, r, s)| *rn == n && *r == i && s.server == srv)
                };
                let (g, j) = (find(Server::Giaoban), find(Server::Janus));
                let gu = g.and_then(|(_, _, s)| s.server_us_per_forwarded_packet);
                let ju = j.and_then(|(_, _, s)| s.server_us_per_forwarded_packet);
                pairs.push(Pair {
                    subscribers: n,
                    pair: i + 1,
                    giaoban_us_per_packet: gu,
                    janus_us_per_packet: ju,
                    ratio_janus_over_giaoban: match (gu, ju) {
                        (Some(g), Some(j)) if g > 0.0 => Some(j / g),
                        _ => None,
                    },
                    giaoban_delivered_pct: g.map(|(_, _, s)| s.delivered_pct).unwrap_or(0.0),
                    janus_delivered_pct: j.map(|(_, _, s)| s.delivered_pct).unwrap_or(0.0),
                });
            }
        }
    }
    let mut median_ratio = BTreeMap::new();
    for &n in &args.subscribers {
        let ratios: Vec<f64> = pairs
            .iter()
            .filter(|p| p.subscribers == n)
            .filter_map(|p| p.ratio_janus_over_giaoban)
            .collect();
        if let Some(m) = report::median(&ratios) {
            median_ratio.insert(n, m);
        }
    }
    let medians = report::group_medians(
        &runs,
        |(n, _, s)| (s.server.to_string(), *n),
        &FANOUT_FIGURES
            .iter()
            .map(|(name, f)| (*name, move |r: &(usize, usize, Summary)| f(&r.2)))
            .collect::<Vec<_>>(),
    );
    let report = Report {
        scenario: "fanout",
        subscribers: args.subscribers.clone(),
        duration_s: args.duration(),
        runs_per_step: args.run_count(),
        runs: runs.into_iter().map(|(_, _, s)| s).collect(),
        failed_runs: failed,
        pairs,
        median_ratio_janus_over_giaoban: median_ratio,
        medians,
    };
    print_medians(&report);
    if args.compare {
        print_pairs(&report);
    }
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(dir) = &args.out {
        let html = report::fanout_html(
            &report.medians,
            &report.runs.iter().map(run_row).collect::<Vec<_>>(),
            &report.failed_runs,
            &format!(
                "1 publisher (VP8 ~{} kbit/s at {} fps + Opus 50 pps) → N subscribers; {} s windows; {} run(s) per \
                 server and N (medians shown); SRTP offered {:?}",
                args.video_bitrate / 1000,
                args.fps,
                args.duration(),
                args.run_count(),
                args.srtp
            ),
        );
        write_out(dir, &json, &html)?;
    }
    if !report.failed_runs.is_empty() && report.runs.is_empty() {
        bail!("every run failed: {:?}", report.failed_runs);
    }
    Ok(())
}

/// One run's row in the HTML report's table.
fn run_row(s: &Summary) -> report::RunRow {
    report::RunRow {
        server: s.server.to_string(),
        n: s.subscribers_requested,
        us_per_packet: s.server_us_per_forwarded_packet,
        delivered_pct: s.delivered_pct,
        latency_p50_ms: s.latency_p50_ms,
        latency_p99_ms: s.latency_p99_ms,
        srtp: format!(
            "{} / {}",
            s.srtp_publish.as_deref().unwrap_or("?"),
            s.srtp_subscribe
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join("+")
        ),
    }
}

/// `result.json` and `report.html` into `dir` (created if missing).
fn write_out(dir: &std::path::Path, json: &str, html: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (j, h) = (dir.join("result.json"), dir.join("report.html"));
    std::fs::write(&j, json).with_context(|| format!("writing {}", j.display()))?;
    std::fs::write(&h, html).with_context(|| format!("writing {}", h.display()))?;
    eprintln!("wrote {} and {}", j.display(), h.display());
    Ok(())
}

fn print_medians(r: &Report) {
    let get = |g: &report::Group, k: &str| {
        g.values
            .get(k)
            .copied()
            .flatten()
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "medians over {} run(s) per server and N ({} s windows):",
        r.runs_per_step, r.duration_s
    );
    println!(
        "  {:>8} {:>5} {:>4}  {:>9}  {:>10}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}",
        "server",
        "N",
        "runs",
        "µs/pkt",
        "pkt/CPU-s",
        "deliv %",
        "p50 ms",
        "p99 ms",
        "join p95",
        "CPU % mach"
    );
    for g in &r.medians {
        println!(
            "  {:>8} {:>5} {:>4}  {:>9}  {:>10}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}",
            g.server,
            g.n,
            g.runs,
            get(g, "us_per_forwarded_packet"),
            get(g, "forwarded_packets_per_cpu_s"),
            get(g, "delivered_pct"),
            get(g, "latency_p50_ms"),
            get(g, "latency_p99_ms"),
            get(g, "join_to_first_keyframe_p95_ms"),
            get(g, "server_cpu_pct_of_machine"),
        );
    }
    println!();
}

fn print_pairs(r: &Report) {
    let f = |v: Option<f64>, d: usize| {
        v.map(|v| format!("{v:.d$}"))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "compare: 1 publisher → N subscribers, {} s windows; µs of server CPU per forwarded packet",
        r.duration_s
    );
    println!(
        "  {:>5}  {:>4}  {:>12}  {:>10}  {:>12}  {:>10}  {:>13}",
        "N", "pair", "giaoban µs", "delivered", "janus µs", "delivered", "janus/giaoban"
    );
    for p in &r.pairs {
        println!(
            "  {:>5}  {:>4}  {:>12}  {:>9.2}%  {:>12}  {:>9.2}%  {:>13}",
            p.subscribers,
            p.pair,
            f(p.giaoban_us_per_packet, 2),
            p.giaoban_delivered_pct,
            f(p.janus_us_per_packet, 2),
            p.janus_delivered_pct,
            f(p.ratio_janus_over_giaoban, 2)
        );
    }
    for (n, m) in &r.median_ratio_janus_over_giaoban {
        println!("  N = {n}: median ratio janus/giaoban {m:.2}");
    }
    for e in &r.failed_runs {
        println!("  failed: {e}");
    }
    println!();
}

/// Where the endpoints' signalling goes.
enum Backend {
    Giaoban { url: String },
    Janus { api: SocketAddr },
}

/// One run against one server, started fresh (giaoban: with --spawn-server or --compare; Janus: always).
async fn run_one(args: &Args, server: Server, ticks: f64) -> anyhow::Result<Summary> {
    match server {
        Server::Giaoban => {
            let (url, server_pid, spawned) = server_to_load(
                args,
                args.spawn_server || args.compare,
                ServerSpec::of(args, args.n()),
            )
            .await?;
            check_loopback(&url)?;
            let outcome = measure(
                args,
                Server::Giaoban,
                Backend::Giaoban { url: url.clone() },
                &url,
                (server_pid, spawned.as_ref().map(|s| s.media_port)),
                ticks,
            )
            .await;
            if let Some(mut s) = spawned {
                let _ = s.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), s.child.wait()).await;
            }
            outcome
        }
        Server::Janus => {
            let mut j = janus::JanusProcess::start(&args.janus_recipe, &args.janus_workdir).await?;
            eprintln!(
                "started Janus (pid {}) with {}/start.sh; API http://{}/janus; log {}",
                j.pid,
                args.janus_recipe.display(),
                j.api,
                j.log.display()
            );
            let url = format!("http://{}/janus", j.api);
            let outcome = measure(
                args,
                Server::Janus,
                Backend::Janus { api: j.api },
                &url,
                (Some(j.pid), None),
                ticks,
            )
            .await;
            j.stop().await;
            outcome
        }
    }
}

fn sim_opts(args: &Args, url: &str, name: String, publisher: bool) -> SimOptions {
    let mut o = SimOptions::new(url, &args.room, name);
    o.verify_payload = false;
    o.srtp_profiles = args.srtp.profiles();
    if publisher {
        o.media.video_bitrate_bps = args.video_bitrate;
        o.media.video_fps = args.fps;
    } else {
        o.ice_tcp = args.ice_tcp;
        o.media.audio = false;
        o.media.video = false;
        o.interceptors = if args.full_interceptors {
            Interceptors::Default
        } else {
            Interceptors::Minimal
        };
    }
    o
}

/// The joined publisher and subscribers, and who the publisher is for the receivers.
struct Joined {
    publisher: SimEndpoint,
    subs: Vec<SimEndpoint>,
    /// Filter for received tracks (`None`: all).
    pub_filter: Option<String>,
    /// Keeps the Janus session (and its handles) open until teardown.
    janus: Option<(Arc<janus::JanusSession>, Vec<janus::JanusHandle>)>,
    errors: Vec<String>,
}

fn join_bar(n: usize) -> Progress {
    Progress::new(n as u64, "joining", "subscribers")
}

async fn join_giaoban(args: &Args, url: &str) -> anyhow::Result<Joined> {
    let publisher = SimEndpoint::connect(sim_opts(args, url, "publisher".into(), true))
        .await
        .context("publisher joins")?;
    publisher.publish().await.context("publisher publishes")?;
    let pub_id = publisher.id();
    eprintln!(
        "publisher {pub_id} sending ~{} kbit/s VP8 at {} fps + Opus 50 pps",
        args.video_bitrate / 1000,
        args.fps
    );
    let bar = join_bar(args.n());
    let sem = Arc::new(tokio::sync::Semaphore::new(args.join_concurrency.max(1)));
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..args.n() {
        let opts = sim_opts(args, url, format!("sub-{i:03}"), false);
        let sem = Arc::clone(&sem);
        joins.spawn(async move {
            let _permit = sem.acquire_owned().await;
            SimEndpoint::connect(opts).await
        });
    }
    let mut subs = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = joins.join_next().await {
        match r {
            Ok(Ok(ep)) => subs.push(ep),
            Ok(Err(e)) => errors.push(format!("join: {e:#}")),
            Err(e) => errors.push(format!("join task: {e}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Joined {
        publisher,
        subs,
        pub_filter: Some(pub_id),
        janus: None,
        errors,
    })
}

async fn join_janus(args: &Args, api: SocketAddr) -> anyhow::Result<Joined> {
    use janus::{JanusSession, ROOM, jsep_sdp};
    let step = Duration::from_secs(15);
    let session = Arc::new(JanusSession::create(api).await.context("Janus create")?);
    let url = format!("http://{api}/janus");
    let mut popts = sim_opts(args, &url, "publisher".into(), true);
    popts.bind_ip = args.janus_bind_ip;
    let publisher = SimEndpoint::detached(popts);
    let ph = session.attach().await.context("Janus attach (publisher)")?;
    let mut feed: Option<u64> = None;
    let (ph_ref, feed_ref) = (&ph, &mut feed);
    publisher
        .publish_with(move |offer| async move {
            let ph = ph_ref;
            ph.message(
                json!({"request": "joinandconfigure", "ptype": "publisher", "room": ROOM,
                       "display": "publisher"}),
                Some(json!({"type": "offer", "sdp": offer, "trickle": false})),
            )
            .await?;
            let ev = ph
                .wait_event("joined with JSEP answer", step, |e| e.get("jsep").is_some())
                .await?;
            *feed_ref = ev["plugindata"]["data"]["id"].as_u64();
            jsep_sdp(&ev, "answer")
        })
        .await
        .context("Janus publisher joinandconfigure")?;
    let feed = feed.ok_or_else(|| anyhow!("Janus `joined` without a numeric feed id"))?;
    ph.wait_event("webrtcup (publisher)", step, |e| e["janus"] == "webrtcup")
        .await?;
    eprintln!(
        "publisher (Janus feed {feed}) sending ~{} kbit/s VP8 at {} fps + Opus 50 pps",
        args.video_bitrate / 1000,
        args.fps
    );
    let bar = join_bar(args.n());
    let sem = Arc::new(tokio::sync::Semaphore::new(args.join_concurrency.max(1)));
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..args.n() {
        let mut opts = sim_opts(args, &url, format!("sub-{i:03}"), false);
        opts.bind_ip = args.janus_bind_ip;
        let sem = Arc::clone(&sem);
        let session = Arc::clone(&session);
        joins.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let h = session.attach().await.context("attach")?;
            let ep = SimEndpoint::detached(opts);
            ep.mark_join_sent();
            h.message(
                json!({"request": "join", "ptype": "subscriber", "room": ROOM,
                       "streams": [{"feed": feed}]}),
                None,
            )
            .await?;
            let ev = h
                .wait_event("attached with JSEP offer", step, |e| {
                    e.get("jsep").is_some()
                })
                .await?;
            let answer = ep.answer_offer(jsep_sdp(&ev, "offer")?).await?;
            h.message(
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": answer})),
            )
            .await?;
            h.wait_event("started", step, |e| {
                e["plugindata"]["data"]["started"] == "ok"
            })
            .await?;
            anyhow::Ok((ep, h))
        });
    }
    let mut subs = Vec::new();
    let mut handles = vec![ph];
    let mut errors = Vec::new();
    while let Some(r) = joins.join_next().await {
        match r {
            Ok(Ok((ep, h))) => {
                subs.push(ep);
                handles.push(h);
            }
            Ok(Err(e)) => errors.push(format!("join: {e:#}")),
            Err(e) => errors.push(format!("join task: {e}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Joined {
        publisher,
        subs,
        pub_filter: None,
        janus: Some((session, handles)),
        errors,
    })
}

fn receiving_media(s: &SimEndpoint, filter: Option<&str>) -> bool {
    let st = s.stats();
    [TrackKind::Audio, TrackKind::Video].iter().all(|k| {
        st.received
            .iter()
            .any(|t| t.kind == *k && t.packets > 0 && filter.is_none_or(|p| t.participant_id == p))
    })
}

async fn measure(
    args: &Args,
    server: Server,
    backend: Backend,
    url: &str,
    (server_pid, media_port): (Option<u32>, Option<u16>),
    ticks: f64,
) -> anyhow::Result<Summary> {
    let drops = || media_port.and_then(udp_drops);
    let drops0 = drops();
    let mut summary = Summary::new(server, url, args);
    summary.server_pid = server_pid;
    summary.server_rss_kib_before = server_pid.and_then(|p| rss_of(Some(p))).map(|r| r.0);

    let joined = match &backend {
        Backend::Giaoban { url } => join_giaoban(args, url).await?,
        Backend::Janus { api } => join_janus(args, *api).await?,
    };
    let Joined {
        publisher,
        subs,
        pub_filter,
        janus: janus_session,
        errors,
    } = joined;
    summary.errors.extend(errors);
    let pub_f = pub_filter.as_deref();
    summary.subscribers_joined = subs.len();
    eprintln!("{} of {} subscribers joined", subs.len(), args.n());
    if subs.is_empty() {
        bail!("no subscriber could join: {:?}", summary.errors);
    }

    // Settle: every subscriber receives audio and video.
    let settle_deadline = Instant::now() + Duration::from_secs(args.settle_timeout);
    let bar = Progress::new(subs.len() as u64, "settling", "receiving media");
    loop {
        let receiving = subs.iter().filter(|s| receiving_media(s, pub_f)).count();
        bar.set_position(receiving as u64);
        if receiving == subs.len() || Instant::now() >= settle_deadline {
            summary.subscribers_receiving = receiving;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    if summary.subscribers_receiving < subs.len() {
        summary.errors.push(format!(
            "only {} of {} subscribers received audio and video within {} s",
            summary.subscribers_receiving,
            subs.len(),
            args.settle_timeout
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Which SRTP profile DTLS negotiated, as each endpoint's transport stats say.
    summary.srtp_publish = publisher.srtp_ciphers().await.0;
    for s in &subs {
        let c = s.srtp_ciphers().await.1.unwrap_or_else(|| "none".into());
        *summary.srtp_subscribe.entry(c).or_default() += 1;
    }

    // Join → first packet / first keyframe: two steps of the join breakdown.
    let steps = join_steps(&subs, pub_f);
    let step = |name: &str| steps.iter().find(|s| s.step == name);
    summary.join_to_first_packet_p50_ms = step("first packet").and_then(|s| s.p50_ms);
    summary.join_to_first_packet_p95_ms = step("first packet").and_then(|s| s.p95_ms);
    summary.join_to_first_keyframe_p50_ms = step("first keyframe").and_then(|s| s.p50_ms);
    summary.join_to_first_keyframe_p95_ms = step("first keyframe").and_then(|s| s.p95_ms);
    summary.join_steps = steps;

    // Measuring window.
    let sent0 = publisher.sent();
    let recv0: Vec<Counts> = subs.iter().map(|s| counts_from(s, pub_f)).collect();
    let server_cpu0 = match server_pid {
        Some(p) => Some(cpu_of(Some(p), ticks)?),
        None => None,
    };
    let client_cpu0 = cpu_of(None, ticks)?;
    let drops1 = drops();
    let t0 = Instant::now();

    let window = Duration::from_secs(args.duration());
    let bar = Progress::new(window.as_secs(), "measuring", "s");
    let mut last_rx = recv0.iter().map(|c| c.packets).sum::<u64>();
    let mut last_at = t0;
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500).min(window.saturating_sub(t0.elapsed())))
            .await;
        let rx: u64 = subs.iter().map(|s| s.received_counts().0).sum();
        let sent = publisher.sent();
        let tx =
            (sent.audio_packets + sent.video_packets) - (sent0.audio_packets + sent0.video_packets);
        let rx_win = rx.saturating_sub(recv0.iter().map(|c| c.packets).sum::<u64>());
        let rate = (rx.saturating_sub(last_rx)) as f64 / last_at.elapsed().as_secs_f64().max(1e-3);
        last_rx = rx;
        last_at = Instant::now();
        let delivered = if tx > 0 {
            rx_win as f64 * 100.0 / (tx as f64 * subs.len() as f64)
        } else {
            0.0
        };
        let server_cpu = match (server_pid, server_cpu0) {
            (Some(p), Some(c0)) => cpu_of(Some(p), ticks)
                .map(|c| {
                    format!(
                        " server CPU {:.0} %",
                        (c.cpu_s - c0.cpu_s) * 100.0 / t0.elapsed().as_secs_f64()
                    )
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        bar.set_position(t0.elapsed().as_secs());
        bar.set_message(format!(
            "delivered {delivered:.2} %  out {rate:.0} pkt/s{server_cpu}"
        ));
    }
    bar.finish_and_clear();

    let elapsed = t0.elapsed().as_secs_f64();
    let sent1 = publisher.sent();
    let recv1: Vec<Counts> = subs.iter().map(|s| counts_from(s, pub_f)).collect();
    let server_cpu1 = match server_pid {
        Some(p) => Some(cpu_of(Some(p), ticks)?),
        None => None,
    };
    let client_cpu1 = cpu_of(None, ticks)?;
    let server_rss = server_pid.and_then(|p| rss_of(Some(p)));
    let drops2 = drops();
    if let (Some(a), Some(b), Some(c)) = (drops0, drops1, drops2) {
        summary.server_socket_drops_joining = Some(b.saturating_sub(a));
        summary.server_socket_drops_window = Some(c.saturating_sub(b));
    }

    let sent_packets =
        (sent1.audio_packets + sent1.video_packets) - (sent0.audio_packets + sent0.video_packets);
    let sent_bytes =
        (sent1.audio_bytes + sent1.video_bytes) - (sent0.audio_bytes + sent0.video_bytes);
    let mut lat = LatencyHistogram::default();
    for (a, b) in recv0.iter().zip(recv1.iter()) {
        summary.received_packets += b.packets - a.packets;
        summary.received_payload_bytes += b.bytes - a.bytes;
        summary.missing_packets += b.missing.saturating_sub(a.missing);
        summary.duplicate_packets += b.duplicates - a.duplicates;
        summary.out_of_order_packets += b.out_of_order - a.out_of_order;
        summary.corrupt_payloads += b.corrupt - a.corrupt;
        lat.merge(&b.latency.since(&a.latency));
    }
    summary.window_s = elapsed;
    summary.sent_packets = sent_packets;
    summary.sent_payload_bytes = sent_bytes;
    summary.delivered_pct = if sent_packets > 0 {
        summary.received_packets as f64 * 100.0 / (sent_packets as f64 * subs.len() as f64)
    } else {
        0.0
    };
    summary.latency_samples = lat.count();
    summary.latency_p50_ms = lat.quantile_us(0.5) as f64 / 1000.0;
    summary.latency_p99_ms = lat.quantile_us(0.99) as f64 / 1000.0;
    summary.latency_max_ms = lat.max_us() as f64 / 1000.0;
    summary.in_pps = sent_packets as f64 / elapsed;
    summary.in_payload_bytes_per_s = sent_bytes as f64 / elapsed;
    summary.out_pps = summary.received_packets as f64 / elapsed;
    summary.out_payload_bytes_per_s = summary.received_payload_bytes as f64 / elapsed;
    if let (Some(c0), Some(c1)) = (server_cpu0, server_cpu1) {
        let cpu = c1.cpu_s - c0.cpu_s;
        summary.server_cpu_s = Some(cpu);
        summary.server_cpu_pct = Some(cpu * 100.0 / elapsed);
        summary.server_cpu_pct_of_machine =
            Some(cpu * 100.0 / (elapsed * summary.cores.max(1) as f64));
        if cpu > 0.0 {
            summary.forwarded_packets_per_cpu_s = Some(summary.received_packets as f64 / cpu);
        }
        if summary.received_packets > 0 {
            summary.server_us_per_forwarded_packet =
                Some(cpu * 1e6 / summary.received_packets as f64);
        }
    }
    if let Some((rss, hwm)) = server_rss {
        summary.server_rss_kib_after = Some(rss);
        summary.server_rss_kib_peak = Some(hwm);
        if let Some(before) = summary.server_rss_kib_before {
            summary.server_rss_kib_per_subscriber =
                Some(rss.saturating_sub(before) as f64 / subs.len() as f64);
        }
    }
    summary.client_cpu_s = client_cpu1.cpu_s - client_cpu0.cpu_s;
    summary.client_cpu_pct = summary.client_cpu_s * 100.0 / elapsed;
    summary.client_rss_kib = rss_of(None).map(|r| r.0);
    summary.publisher_plis = sent1.plis;
    summary.publisher_keyframes = sent1.keyframes;
    summary.publisher_write_errors = sent1.write_errors;
    summary.subscribe_answer_errors = subs.iter().map(|s| s.stats().subscribe_errors).sum();

    // Teardown, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let mut set = tokio::task::JoinSet::new();
        for s in subs {
            set.spawn(async move { s.close().await });
        }
        while set.join_next().await.is_some() {}
        publisher.close().await;
        if let Some((session, handles)) = janus_session {
            session.destroy().await;
            drop(handles);
        }
    })
    .await;
    Ok(summary)
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{v:.1} {unit}"))
        .unwrap_or_else(|| "n/a".into())
}

fn print_summary(s: &Summary) {
    println!();
    println!(
        "server: {}  ({})\nloadtest: 1 publisher → {} subscribers ({} joined, {} receiving), window {:.1} s",
        s.server,
        s.url,
        s.subscribers_requested,
        s.subscribers_joined,
        s.subscribers_receiving,
        s.window_s
    );
    println!(
        "  delivered            {:.3} %  (received {} / (sent {} × {}))",
        s.delivered_pct, s.received_packets, s.sent_packets, s.subscribers_joined
    );
    println!(
        "  counter gaps         {} missing, {} duplicate, {} out of order, {} corrupt",
        s.missing_packets, s.duplicate_packets, s.out_of_order_packets, s.corrupt_payloads
    );
    println!(
        "  added latency        p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples; send → receive, includes both clients' stacks)",
        s.latency_p50_ms, s.latency_p99_ms, s.latency_max_ms, s.latency_samples
    );
    println!(
        "  join → first packet  p50 {}  p95 {}",
        opt(s.join_to_first_packet_p50_ms, "ms"),
        opt(s.join_to_first_packet_p95_ms, "ms")
    );
    println!(
        "  join → keyframe      p50 {}  p95 {}",
        opt(s.join_to_first_keyframe_p50_ms, "ms"),
        opt(s.join_to_first_keyframe_p95_ms, "ms")
    );
    for j in &s.join_steps {
        println!(
            "    {:<24} p50 {}  p95 {}  ({} subscribers)",
            j.step,
            opt(j.p50_ms, "ms"),
            opt(j.p95_ms, "ms"),
            j.n
        );
    }
    println!(
        "  SRTP (negotiated)    publish {}; subscribe {}  (offered {})",
        s.srtp_publish.as_deref().unwrap_or("unknown"),
        s.srtp_subscribe
            .iter()
            .map(|(k, n)| format!("{n}× {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        s.srtp_offered
    );
    println!(
        "  in                   {:.0} pkt/s  {:.0} kB/s payload",
        s.in_pps,
        s.in_payload_bytes_per_s / 1000.0
    );
    println!(
        "  out                  {:.0} pkt/s  {:.0} kB/s payload",
        s.out_pps,
        s.out_payload_bytes_per_s / 1000.0
    );
    match (s.server_cpu_s, s.server_cpu_pct) {
        (Some(cpu), Some(pct)) => {
            println!(
                "  server CPU           {cpu:.2} s ({pct:.1} % of one core, {} of the {}-core machine)",
                opt(s.server_cpu_pct_of_machine, "%"),
                s.cores
            );
            println!(
                "  per forwarded packet {}  ({} pkt per CPU-second)",
                opt(s.server_us_per_forwarded_packet, "µs"),
                s.forwarded_packets_per_cpu_s
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
        _ => println!("  server CPU           n/a (give --server-pid or --spawn-server)"),
    }
    if let Some(rss) = s.server_rss_kib_after {
        println!(
            "  server RSS           {:.1} MiB (before {:.1} MiB, peak {:.1} MiB; {} per subscriber)",
            rss as f64 / 1024.0,
            s.server_rss_kib_before.unwrap_or(0) as f64 / 1024.0,
            s.server_rss_kib_peak.unwrap_or(0) as f64 / 1024.0,
            opt(s.server_rss_kib_per_subscriber, "KiB")
        );
    }
    if let (Some(j), Some(w)) = (s.server_socket_drops_joining, s.server_socket_drops_window) {
        println!(
            "  server socket drops  {j} while joining, {w} in the window (its media socket's receive buffer overflowed)"
        );
    }
    println!(
        "  client CPU           {:.2} s ({:.1} % of one core) — if near 100 % × cores, the client is the bottleneck",
        s.client_cpu_s, s.client_cpu_pct
    );
    println!(
        "  publisher            {} PLIs received, {} keyframes sent, {} write errors; {} subscribe-answer errors",
        s.publisher_plis,
        s.publisher_keyframes,
        s.publisher_write_errors,
        s.subscribe_answer_errors
    );
    for e in &s.errors {
        println!("  error: {e}");
    }
    println!();
}
