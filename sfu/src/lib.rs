//! giaoban's media plane.
//!
//! `start` binds the media socket(s) and spawns the media workers; the returned [`SfuHandle`] takes
//! [`Command`]s, and the [`Event`] receiver tells the control plane what happened. Inside a worker, packets
//! never cross a thread or a lock: see `worker.rs`.

pub mod api;
pub mod codec;
pub mod connection;
pub mod feedback;
pub mod forwarder;
pub mod health;
pub mod idmap;
pub mod keyframe;
pub mod layers;
pub mod recorder;
pub mod red;
pub mod replay;
pub mod retransmit;
pub mod router;
#[cfg(target_os = "linux")]
pub mod sendmmsg;
pub mod srtp;
pub mod tcp;
pub mod twcc;
pub mod udp;
pub mod vp8;
mod worker;

pub use api::{
    Command, Event, ForwardPolicy, Leg, MediaKind, MediaSource, ParticipantId, ParticipantLinks,
    ReceivePolicy, RecordedFile, RoomId, SfuError, SfuHandle, TrackDesc, WorkerStats,
};
pub use health::LinkHealth;

use std::net::{IpAddr, SocketAddr};
use tokio::sync::mpsc;

/// What the media plane needs from the configuration.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    pub listen_ip: IpAddr,
    /// Port of the first worker's socket; worker `i` uses `udp_port + i` (0 = any free port).
    pub udp_port: u16,
    pub announced_ips: Vec<IpAddr>,
    pub workers: usize,
    /// ICE-TCP port of the first worker (worker `i` uses `tcp_port + i`); `None` = ICE-TCP off, `Some(0)` = any
    /// free port (tests).
    pub tcp_port: Option<u16>,
    /// What one publisher may send, bit/s over its publish connection (0 = no limit). Beyond half again as much
    /// for 3 s its video stops being forwarded (its audio goes on) until it is back under; see `worker.rs`.
    pub max_publish_bps: u64,
}

/// The addresses to announce: configured ones, else the listen address if specific, else this machine's
/// non-loopback addresses (loopback if there are none). Listening on `::` (dual-stack) announces both the IPv4
/// and the IPv6 addresses; on `0.0.0.0` only the IPv4 ones.
pub fn announced_ips(config: &SfuConfig) -> Vec<IpAddr> {
    if !config.announced_ips.is_empty() {
        return config.announced_ips.clone();
    }
    if !config.listen_ip.is_unspecified() {
        return vec![config.listen_ip];
    }
    let want_v4 = config.listen_ip.is_ipv4();
    let dual_stack = !want_v4;
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && (dual_stack || ip.is_ipv4() == want_v4))
        .filter(|ip| match ip {
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            IpAddr::V4(v4) => !v4.is_link_local(),
        })
        .collect();
    // IPv4 first: browsers try the higher-priority candidates first, and the first is the default address.
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.dedup();
    if ips.is_empty() {
        ips.push(if want_v4 {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    ips
}

/// An address as the rest of the media plane sees it: an IPv4-mapped IPv6 address (an IPv4 peer of a
/// dual-stack `::` socket) becomes the plain IPv4 one, which is what the candidates carry.
pub fn canonical(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Bind the media sockets and start the workers (one thread each).
pub fn start(config: &SfuConfig) -> std::io::Result<(SfuHandle, mpsc::UnboundedReceiver<Event>)> {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let ips = announced_ips(config);
    let mut workers = Vec::new();
    let mut media_addrs = Vec::new();
    let mut tcp_addrs = Vec::new();
    for i in 0..config.workers.max(1) {
        let port = if config.udp_port == 0 {
            0
        } else {
            config.udp_port.saturating_add(i as u16)
        };
        let socket = udp::MediaSocket::bind(SocketAddr::new(config.listen_ip, port))?;
        let local = socket.local_addr()?;
        let tcp_listener = match config.tcp_port {
            None => None,
            Some(0) => Some(tcp::TcpMedia::bind(SocketAddr::new(config.listen_ip, 0))?),
            Some(p) => Some(tcp::TcpMedia::bind(SocketAddr::new(
                config.listen_ip,
                p.saturating_add(i as u16),
            ))?),
        };
        let tcp_local = tcp_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let endpoint = connection::Endpoint {
            candidates: ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, local.port()))
                .collect(),
            tcp_candidates: tcp_local
                .map(|t| {
                    ips.iter()
                        .map(|ip| SocketAddr::new(*ip, t.port()))
                        .collect()
                })
                .unwrap_or_default(),
            certificate: connection::worker_certificate(),
        };
        tracing::info!(worker = i, addr = %local, tcp = ?tcp_local, candidates = ?endpoint.candidates, tcp_candidates = ?endpoint.tcp_candidates, "media worker listening");
        let (tx, rx) = mpsc::unbounded_channel();
        let events = events_tx.clone();
        let max_publish_bps = config.max_publish_bps;
        std::thread::Builder::new()
            .name(format!("media-worker-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start media worker runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    // The socket is registered with this thread's reactor.
                    let tcp = match tcp_listener
                        .map(|l| tcp::TcpMedia::from_std(l, endpoint.tcp_candidates.clone()))
                        .transpose()
                    {
                        Ok(tcp) => tcp,
                        Err(e) => {
                            tracing::error!(error = %e, "media TCP listener unusable");
                            None
                        }
                    };
                    match udp::MediaSocket::from_std(socket) {
                        Ok(socket) => {
                            let mut worker = worker::Worker::new(socket, tcp, endpoint, events);
                            worker.max_publish_bps = max_publish_bps;
                            worker.run(rx).await
                        }
                        Err(e) => tracing::error!(error = %e, "media socket unusable"),
                    }
                });
            })?;
        workers.push(tx);
        media_addrs.push(local);
        tcp_addrs.extend(tcp_local);
    }
    let mut handle = SfuHandle::new(workers, media_addrs);
    handle.tcp_addrs = tcp_addrs;
    Ok((handle, events_rx))
}
