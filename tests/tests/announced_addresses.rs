//! Addresses the server announces (issue #7).
//! (a) Behind 1:1 NAT: the media socket binds the listen address, the candidates carry `media.announced_ips`
//! (the "public" address). A small NAT in the test forwards the public address (127.0.0.2, UDP and TCP) to
//! the real one; endpoints reach the server only through it, over UDP and over ICE-TCP, and media flows.
//! (b) IPv6: with `media.listen_ip = "::1"` the host candidates (UDP and TCP) are IPv6 and endpoints on ::1
//! exchange media over them.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, wait_all_flowing};
use giaoban_tests::sim::SimEndpoint;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

fn free_tcp_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

/// A 1:1 NAT for UDP: datagrams to `public` go on to `private` from one inside socket per outside client, and
/// the replies go back out from `public`. Returns the task and how many datagrams went through.
async fn udp_nat(
    public: SocketAddr,
    private: SocketAddr,
) -> (JoinHandle<()>, Arc<std::sync::atomic::AtomicU64>) {
    let outside = Arc::new(
        UdpSocket::bind(public)
            .await
            .expect("NAT binds the public UDP address"),
    );
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = count.clone();
    let task = tokio::spawn(async move {
        let mut inside: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, client)) = outside.recv_from(&mut buf).await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sock = match inside.get(&client) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(
                        UdpSocket::bind(SocketAddr::new(private.ip(), 0))
                            .await
                            .expect("inside socket"),
                    );
                    let (back, out) = (s.clone(), outside.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok((n, _)) = back.recv_from(&mut buf).await {
                            let _ = out.send_to(&buf[..n], client).await;
                        }
                    });
                    inside.insert(client, s.clone());
                    s
                }
            };
            let _ = sock.send_to(&buf[..n], private).await;
        }
    });
    (task, count)
}

/// The same NAT for TCP: each connection to `public` is joined to a new one to `private`.
async fn tcp_nat(public: SocketAddr, private: SocketAddr) -> JoinHandle<()> {
    let listener = TcpListener::bind(public)
        .await
        .expect("NAT binds the public TCP address");
    tokio::spawn(async move {
        while let Ok((mut outside, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut inside) = TcpStream::connect(private).await {
                    let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_one_to_one_nat_the_announced_address_is_offered_and_works() {
    let public_ip: IpAddr = "127.0.0.2".parse().expect("ip");
    let mut config = giaoban_config::Config::for_tests();
    config.media.announced_ips = vec![public_ip];
    config.media.tcp_port = free_tcp_port(config.media.listen_ip);
    let server = TestServer::start_with(config).await;
    let hub = server.hub();
    let (udp_private, tcp_private) = (server.media, hub.sfu.tcp_addrs[0]);
    assert_eq!(
        udp_private.ip(),
        IpAddr::from([127, 0, 0, 1]),
        "binds the listen address"
    );
    let (udp_task, through_nat) =
        udp_nat(SocketAddr::new(public_ip, udp_private.port()), udp_private).await;
    let tcp_task = tcp_nat(SocketAddr::new(public_ip, tcp_private.port()), tcp_private).await;

    let room = "giao-ban-nat";
    let udp = server.endpoint(room, "Xã qua NAT (UDP)", false).await;
    // Check the answer's candidates, then let the connection go on through the NAT.
    let answer = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = answer.clone();
    let ws = udp.clone();
    udp.publish_with(move |sdp| async move {
        let from = ws.log_len();
        ws.send(&giaoban_signaling::protocol::ClientMessage::PublishOffer { sdp })?;
        match ws
            .wait_message_since(from, Duration::from_secs(10), |m| {
                matches!(
                    m,
                    giaoban_signaling::protocol::ServerMessage::PublishAnswer { .. }
                )
            })
            .await?
        {
            giaoban_signaling::protocol::ServerMessage::PublishAnswer { sdp } => {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = sdp.clone();
                Ok(sdp)
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    })
    .await
    .expect("publishes through the NAT");
    let sdp = answer.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let candidates: Vec<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(
        candidates.iter().any(|c| c.contains(" udp ")
            && c.contains(&format!("127.0.0.2 {} typ host", udp_private.port()))),
        "a UDP host candidate on the announced address: {candidates:#?}"
    );
    assert!(
        candidates.iter().any(|c| c.contains(" tcp ")
            && c.contains(&format!(
                "127.0.0.2 {} typ host tcptype passive",
                tcp_private.port()
            ))),
        "a passive TCP candidate on the announced address: {candidates:#?}"
    );
    assert!(
        !candidates.iter().any(|c| c.contains("127.0.0.1")),
        "the bound address is not announced: {candidates:#?}"
    );

    let mut opts = server.opts(room, "Xã qua NAT (TCP)");
    opts.ice_tcp = true;
    let tcp = SimEndpoint::connect(opts).await.expect("TCP hall joins");
    tcp.publish()
        .await
        .expect("publishes over TCP through the NAT");
    wait_all_flowing(&[&udp, &tcp], &[&udp, &tcp], Duration::from_secs(15)).await;
    let stats = hub.sfu.stats().await.expect("stats");
    assert_eq!(
        stats.tcp_streams, 2,
        "the TCP hall's two connections came through the TCP NAT"
    );
    assert!(
        through_nat.load(std::sync::atomic::Ordering::Relaxed) > 100,
        "the UDP hall's media went through the NAT"
    );

    udp.close().await;
    tcp.close().await;
    udp_task.abort();
    tcp_task.abort();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_host_candidates_carry_media() {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    if std::net::UdpSocket::bind(SocketAddr::new(v6, 0)).is_err() {
        panic!("this machine has no IPv6 loopback (::1); the IPv6 test needs it");
    }
    let mut config = giaoban_config::Config::for_tests();
    config.media.listen_ip = v6;
    config.media.tcp_port = free_tcp_port(v6);
    let server = TestServer::start_with(config).await;
    assert_eq!(server.media.ip(), v6);
    let room = "giao-ban-ipv6";
    let mut opts = server.opts(room, "Xã IPv6 (UDP)");
    opts.bind_ip = v6;
    let udp = SimEndpoint::connect(opts).await.expect("joins");
    udp.publish().await.expect("publishes over IPv6 UDP");
    let mut opts = server.opts(room, "Xã IPv6 (TCP)");
    opts.bind_ip = v6;
    opts.ice_tcp = true;
    let tcp = SimEndpoint::connect(opts).await.expect("joins");
    tcp.publish().await.expect("publishes over IPv6 ICE-TCP");
    wait_all_flowing(&[&udp, &tcp], &[&udp, &tcp], Duration::from_secs(15)).await;
    let stats = server.hub().sfu.stats().await.expect("stats");
    assert_eq!(stats.tcp_streams, 2);
    udp.close().await;
    tcp.close().await;
    server.shutdown().await;
}
