//! What arrives on the shared media port from anyone: the router's STUN parsing and routing (UDP datagrams and
//! the first frame of an ICE-TCP stream), then rtc's own
//! demultiplexing (STUN / DTLS / SRTP) in a live publish connection, as the worker feeds a routed datagram to
//! `handle_read`. Garbage must be dropped or refused, never panic, and never route to a connection it does not
//! name.
#![no_main]

use bytes::BytesMut;
use giaoban_sfu::Leg;
use giaoban_sfu::connection::{Endpoint, build, worker_certificate};
use giaoban_sfu::router::{Router, stun_local_ufrag};
use libfuzzer_sys::fuzz_target;
use rtc::peer_connection::RTCPeerConnection;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

const LOCAL: &str = "127.0.0.1:40000";
const PEER: &str = "127.0.0.1:50000";

thread_local! {
    static PC: RefCell<Option<RTCPeerConnection>> = RefCell::new(
        build(
            Instant::now(),
            Leg::Publish,
            &Endpoint {
                candidates: vec![LOCAL.parse().expect("address")],
                tcp_candidates: vec![LOCAL.parse().expect("address")],
                certificate: worker_certificate(),
            },
            "fuzzufrag",
            "fuzzpasswordfuzzpassword",
        )
        .ok(),
    );
}

fuzz_target!(|data: &[u8]| {
    let peer: SocketAddr = PEER.parse().expect("address");
    let mut router = Router::default();
    router.add_ufrag("fuzzufrag".into(), 7);
    let routed = router.route(peer, data);
    // The first frame of an ICE-TCP stream is routed the same way.
    let mut tcp_router = Router::default();
    tcp_router.add_ufrag("fuzzufrag".into(), 7);
    let routed_tcp = tcp_router.route_tcp(peer, data);
    match stun_local_ufrag(data) {
        Some("fuzzufrag") => {}
        // Anything that does not name our ufrag must not reach the connection.
        _ => {
            assert_eq!(routed, None);
            assert_eq!(routed_tcp, None);
        }
    }
    // Whatever rtc's RTCP parser makes of it (the feedback tap sees parsed RTCP).
    let mut buf: &[u8] = data;
    let _ = rtc::rtcp::packet::unmarshal(&mut buf);

    PC.with(|pc| {
        let mut pc = pc.borrow_mut();
        let Some(pc) = pc.as_mut() else { return };
        let now = Instant::now();
        let _ = pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: LOCAL.parse().expect("address"),
                peer_addr: peer,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        });
        while pc.poll_write().is_some() {}
        while pc.poll_event().is_some() {}
        while pc.poll_read().is_some() {}
    });
});
