//! A misbehaving peer on the media port: thousands of datagrams of garbage, truncated RTP/RTCP, DTLS-looking
//! records and STUN requests naming unknown or malformed ufrags are dropped, counted as unroutable, and the
//! room's media carries on.

mod common;

use std::time::Duration;

use common::{TestServer, assert_alive, assert_still_flowing, wait_all_flowing};
use giaoban_tests::sim::http_get;

/// Deterministic junk (xorshift), so a failure can be replayed.
fn junk(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

fn stun_request(username: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[9; 12]);
    let mut attrs = vec![0x00, 0x06];
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username);
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    m[2..4].copy_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&attrs);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_media_port_harms_nobody() {
    let server = TestServer::start().await;
    let a = server.endpoint("rac", "Xã A", true).await;
    let b = server.endpoint("rac", "Xã B", true).await;
    wait_all_flowing(&[&a, &b], &[&a, &b], Duration::from_secs(15)).await;

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut sent = 0u32;
    for i in 0..3000usize {
        let len = 1 + (i * 37) % 1400;
        let mut d = junk(&mut seed, len);
        match i % 6 {
            0 => d[0] = 0x80 | (d[0] & 0x3f), // looks like RTP/RTCP
            1 => d[0] = 22,                   // looks like a DTLS handshake record
            2 => d = stun_request(b"nobody:x"),
            3 => d = stun_request(&junk(&mut seed, 40)), // not UTF-8 / no colon
            4 => d.truncate(3),
            _ => {}
        }
        if socket.send_to(&d, server.media).await.is_ok() {
            sent += 1;
        }
        if i % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(sent > 2000, "sent {sent} datagrams");

    // The room's media is still flowing both ways, sessions answer, and the server says it is healthy.
    assert_still_flowing(&a, &b, 20).await;
    assert_still_flowing(&b, &a, 20).await;
    assert_alive(&a).await;
    let (status, body) = http_get(server.http, "/healthz")
        .await
        .expect("GET /healthz");
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http_get(server.http, "/metrics")
        .await
        .expect("GET /metrics");
    let unroutable: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("giaoban_media_unroutable_total "))
        .and_then(|v| v.parse().ok())
        .expect("unroutable counter");
    assert!(
        unroutable >= 2000.0,
        "the junk was counted as unroutable ({unroutable})"
    );
    server.shutdown().await;
}
