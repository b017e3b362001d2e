//! ICE-TCP (issue #7): a hall whose firewall blocks UDP reaches the SFU over its one TCP port (RFC 4571 framing).
//! (a) an endpoint with no UDP socket at all publishes and receives media intact beside a UDP endpoint, over
//! TCP streams the server counts; (b) a stream that sends garbage is closed at once, one that sends nothing is
//! closed after a few seconds, and the room carries on.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{TestServer, assert_intact, wait_all_flowing};
use giaoban_signaling::protocol::TrackKind;
use giaoban_tests::sim::SimEndpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free TCP port on `ip` (bound and released; the server binds it right after).
fn free_tcp_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

async fn server_with_tcp() -> TestServer {
    let mut config = giaoban_config::Config::for_tests();
    config.media.tcp_port = free_tcp_port(config.media.listen_ip);
    TestServer::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_without_udp_exchanges_media_over_ice_tcp() {
    let server = server_with_tcp().await;
    let hub = server.hub();
    let tcp_addr = hub.sfu.tcp_addrs[0];
    let room = "giao-ban-tcp";
    let udp = server.endpoint(room, "Xã có UDP", true).await;
    let mut opts = server.opts(room, "Xã chặn UDP");
    opts.ice_tcp = true;
    let tcp = SimEndpoint::connect(opts).await.expect("TCP hall joins");
    tcp.publish()
        .await
        .expect("TCP hall publishes over ICE-TCP");
    let all = [&udp, &tcp];
    wait_all_flowing(&all, &all, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let received: Vec<_> = all.iter().map(|ep| ep.stats()).collect();
    let sent: Vec<_> = all.iter().map(|ep| ep.sent()).collect();
    for (si, sub) in all.iter().enumerate() {
        let pi = 1 - si;
        let publisher = all[pi];
        for kind in [TrackKind::Audio, TrackKind::Video] {
            let stats = received[si]
                .track_from(&publisher.id(), kind)
                .unwrap_or_else(|| {
                    panic!("{} has no {kind:?} from {}", sub.name(), publisher.name())
                });
            let (total, slack) = match kind {
                TrackKind::Audio => (sent[pi].audio_packets, 15),
                TrackKind::Video => (sent[pi].video_packets, 9 * 8 + 8),
            };
            println!(
                "{} <- {} {kind:?}: {} packets, {} missing, sent {total}, latency p50 {} µs",
                sub.name(),
                publisher.name(),
                stats.packets,
                stats.missing(),
                stats.latency.quantile_us(0.5)
            );
            assert_intact(sub, publisher, stats, total, slack);
        }
    }
    // The TCP hall's two connections (publish, subscribe) are two routed streams on the TCP port.
    let stats = hub.sfu.stats().await.expect("stats");
    println!(
        "server ICE-TCP: {:?}, {} streams open",
        stats.tcp, stats.tcp_streams
    );
    assert_eq!(
        stats.tcp_streams, 2,
        "one TCP stream per connection of the TCP hall"
    );
    assert!(stats.tcp.accepted >= 2);
    assert_eq!(stats.tcp.send_dropped, 0);
    assert_ne!(
        tcp_addr.port(),
        server.media.port(),
        "TCP port is its own setting"
    );
    // IT staff see it in /metrics.
    let (status, metrics) = giaoban_tests::sim::http_get(server.http, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l == "giaoban_media_tcp_streams 2"),
        "/metrics has the open ICE-TCP streams: {}",
        metrics
            .lines()
            .filter(|l| l.contains("tcp"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    for ep in all {
        ep.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silent_tcp_streams_are_dropped_and_the_room_carries_on() {
    let server = server_with_tcp().await;
    let hub = server.hub();
    let tcp_addr = hub.sfu.tcp_addrs[0];

    // Garbage: a frame that is not a STUN binding request for a known connection. Closed at once.
    let mut garbage = tokio::net::TcpStream::connect(tcp_addr)
        .await
        .expect("connect");
    garbage
        .write_all(&[0, 8, 0x80, 0x60, 0, 1, 0, 0, 0, 0])
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), garbage.read(&mut buf))
        .await
        .expect("garbage stream closed within 2 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing is answered to garbage");

    // Silence: closed after the unrouted timeout (5 s), not before.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(tcp_addr)
        .await
        .expect("connect");
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("silent stream closed within 10 s")
        .unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0);
    assert!(
        waited >= Duration::from_secs(4) && waited <= Duration::from_secs(7),
        "silent stream closed after {waited:?}, expected ~5 s"
    );

    // Too many streams waiting for their first request: the excess is refused at once.
    let mut waiting = Vec::new();
    for _ in 0..giaoban_sfu::tcp::MAX_UNROUTED {
        waiting.push(
            tokio::net::TcpStream::connect(tcp_addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut excess = tokio::net::TcpStream::connect(tcp_addr)
        .await
        .expect("connect");
    let n = tokio::time::timeout(Duration::from_secs(2), excess.read(&mut buf))
        .await
        .expect("excess stream refused within 2 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop(waiting);

    let stats = hub.sfu.stats().await.expect("stats");
    println!("server ICE-TCP: {:?}", stats.tcp);
    assert!(stats.tcp.closed_garbage >= 1, "{:?}", stats.tcp);
    assert!(stats.tcp.closed_idle >= 1, "{:?}", stats.tcp);
    assert!(stats.tcp.refused >= 1, "{:?}", stats.tcp);

    // The room carries on: two halls, one over TCP, still meet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let room = "giao-ban-sau-rac";
    let a = server.endpoint(room, "Xã A", true).await;
    let mut opts = server.opts(room, "Xã B (TCP)");
    opts.ice_tcp = true;
    let b = SimEndpoint::connect(opts).await.expect("joins");
    b.publish().await.expect("publishes over TCP");
    wait_all_flowing(&[&a, &b], &[&a, &b], Duration::from_secs(15)).await;
    a.close().await;
    b.close().await;
    server.shutdown().await;
}
