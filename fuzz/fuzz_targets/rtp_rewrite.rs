//! The RTP the SFU itself parses and rewrites after decryption: rtc's RTP parser, VP8 payload descriptor parsing
//! and rewriting (PictureID / TL0PICIDX), keyframe detection, and the Forwarder's sequence/timestamp continuity over
//! a stream of packets cut from the input (SSRC changes included). Invariant: what the forwarder lets out is
//! shifted by one fixed offset per source run, and a rewrite keeps the payload's length.
#![no_main]

use giaoban_sfu::codec::Codec;
use giaoban_sfu::forwarder::Forwarder;
use giaoban_sfu::vp8;
use libfuzzer_sys::fuzz_target;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::Unmarshal;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    // The whole input as one RTP packet, as rtc parses it.
    let mut whole: &[u8] = data;
    let _ = Packet::unmarshal(&mut whole);

    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let codec = match selector % 3 {
        0 => Codec::Vp8,
        1 => Codec::H264,
        _ => Codec::Opus,
    };
    let mut fwd = Forwarder::new(codec, if codec == Codec::Opus { 48_000 } else { 90_000 });
    let start = Instant::now();
    // (ssrc, output seq - input seq) of the last packet let out.
    let mut last: Option<(u32, u16)> = None;
    // Records: [ssrc_sel, seq_hi, seq_lo, ts(4), len, payload(len)].
    let mut input = rest;
    let mut i = 0u64;
    while input.len() >= 8 {
        let ssrc = 1000 + u32::from(input[0] % 3);
        let seq = u16::from_be_bytes([input[1], input[2]]);
        let ts = u32::from_be_bytes([input[3], input[4], input[5], input[6]]);
        let len = usize::from(input[7]).min(input.len() - 8);
        let payload = &input[8..8 + len];
        input = &input[8 + len..];
        i += 1;

        let _ = codec.is_keyframe_start(payload);
        let desc = vp8::parse(payload);
        if let Some(d) = &desc {
            let mut copy = payload.to_vec();
            vp8::rewrite(&mut copy, d, Some(0x1234), Some(7));
            assert_eq!(copy.len(), payload.len());
            assert!(vp8::parse(&copy).is_some(), "a rewritten descriptor still parses");
        }
        let now = start + Duration::from_millis(i * 10);
        if let Ok(rw) = fwd.forward_parsed(now, ssrc, seq, ts, payload, desc) {
            let offset = rw.seq.wrapping_sub(seq);
            if let Some((prev_ssrc, prev_offset)) = last
                && prev_ssrc == ssrc
            {
                // Within one source run the numbering is a fixed shift: no gaps or repeats are invented.
                assert_eq!(offset, prev_offset, "sequence shift changed within one source");
            }
            last = Some((ssrc, offset));
        }
    }
});
