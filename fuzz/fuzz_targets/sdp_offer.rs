//! SDP handling: a client's publish offer goes into a publish connection exactly as the worker does it
//! (`RTCSessionDescription::offer` → `set_remote_description` → `create_answer` → `set_local_description`), and
//! the answer gets the bitrate cap. Whatever the offer, this must return (an error is fine), never panic.
#![no_main]

use giaoban_sfu::Leg;
use giaoban_sfu::connection::{Endpoint, build, worker_certificate};
use libfuzzer_sys::fuzz_target;
use rtc::peer_connection::sdp::RTCSessionDescription;
use std::sync::LazyLock;
use std::time::Instant;

static ENDPOINT: LazyLock<Endpoint> = LazyLock::new(|| Endpoint {
    candidates: vec!["127.0.0.1:40000".parse().expect("address")],
    tcp_candidates: vec!["127.0.0.1:40000".parse().expect("address")],
    certificate: worker_certificate(),
});

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let now = Instant::now();
    let Ok(mut pc) = build(now, Leg::Publish, &ENDPOINT, "fuzzufrag", "fuzzpasswordfuzzpassword") else {
        return;
    };
    let Ok(offer) = RTCSessionDescription::offer(sdp.to_owned()) else {
        return;
    };
    if pc.set_remote_description(now, offer).is_err() {
        return;
    }
    if let Ok(answer) = pc.create_answer(None) {
        let capped = giaoban_signaling::session::cap_video_bitrate(&answer.sdp, 2000);
        assert!(capped.starts_with("v=0"));
        let _ = pc.set_local_description(now, answer);
    }
});
