//! The signaling message parser and the checks a session runs on what it parsed: any bytes a WebSocket delivers
//! either parse into a `ClientMessage` or are refused; parsed names and SDP go through the session's checks.
#![no_main]

use giaoban_signaling::protocol::{ClientMessage, ServerMessage};
use giaoban_signaling::session::{cap_video_bitrate, check_name, live_media_sections};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = serde_json::from_str::<ClientMessage>(text) else {
        return;
    };
    // What parsed serializes again and parses to the same message.
    let again = serde_json::to_string(&msg).expect("a parsed message serializes");
    let back: ClientMessage = serde_json::from_str(&again).expect("its own output parses");
    assert_eq!(format!("{msg:?}"), format!("{back:?}"));
    match &msg {
        ClientMessage::Join { room, name, .. } => {
            for v in [room, name].into_iter().flatten() {
                if let Ok(clean) = check_name("name", v, 64) {
                    assert!(!clean.is_empty() && clean.chars().count() <= 64);
                }
            }
        }
        ClientMessage::PublishOffer { sdp }
        | ClientMessage::ScreenOffer { sdp }
        | ClientMessage::SubscribeAnswer { sdp } => {
            let n = live_media_sections(sdp);
            assert!(n <= sdp.matches("m=").count());
            let capped = cap_video_bitrate(sdp, 1500);
            assert!(capped.len() >= sdp.len().saturating_sub(sdp.matches("b=").count() * 4096));
        }
        _ => {}
    }
    // An error reply naming the problem always serializes.
    let _ = serde_json::to_string(&ServerMessage::Pong).expect("serializes");
});
