//! Redundant audio (RFC 2198, `audio/red`): what the SFU needs to forward it.
//!
//! A browser that negotiated RED ahead of Opus sends every audio packet as RED: zero or more earlier Opus frames
//! (the redundancy) and then the current one (the primary). A subscriber that also negotiated RED gets the packet
//! as it came, and recovers a lost frame from the next packet without a retransmission. A subscriber that did
//! not (the simulated endpoints, other clients) gets the primary alone as plain Opus: the same RTP header
//! fields, the payload started further on (`Bytes::slice`, no copy).
//!
//! Layout: one 4-byte header per redundant block (F=1, block payload type, 14-bit timestamp offset, 10-bit
//! length), one byte for the primary (F=0, its payload type), then the redundant blocks' data in order, then the
//! primary's data to the end of the payload.

pub const MIME_TYPE: &str = "audio/red";

/// The payload type the SFU gives RED on the legs it offers, and the Opus one its `111/111` format names.
pub const RED_PAYLOAD_TYPE: u8 = 63;
pub const RED_FMTP: &str = "111/111";

/// Where the primary encoding's data starts in a RED payload, and its payload type. `None` if the payload is
/// not well-formed RED (headers cut short, block lengths past the end) or carries no primary data.
pub fn primary(payload: &[u8]) -> Option<(usize, u8)> {
    let mut pos = 0usize;
    let mut redundant = 0usize;
    loop {
        let b = *payload.get(pos)?;
        if b & 0x80 == 0 {
            pos += 1;
            let start = pos + redundant;
            return (start < payload.len()).then_some((start, b & 0x7f));
        }
        let header = payload.get(pos..pos + 4)?;
        redundant += usize::from(header[2] & 0x03) << 8 | usize::from(header[3]);
        pos += 4;
    }
}

/// Each redundant block of a well-formed RED payload, oldest first: `f(payload type, timestamp offset, data)`.
/// `false` (and nothing called) if the payload is not well-formed RED. The SFU forwards or strips RED and needs
/// none of this; a receiver rebuilding lost frames does (the simulated endpoints count what RED would rebuild).
pub fn for_each_redundant(payload: &[u8], mut f: impl FnMut(u8, u16, &[u8])) -> bool {
    let Some((primary_at, _)) = primary(payload) else {
        return false;
    };
    let block_len =
        |at: usize| usize::from(payload[at + 2] & 0x03) << 8 | usize::from(payload[at + 3]);
    // The headers end at the first byte with F=0; the blocks' data follows them.
    let mut headers_end = 0usize;
    while payload[headers_end] & 0x80 != 0 {
        headers_end += 4;
    }
    let mut data = headers_end + 1;
    let mut header = 0usize;
    while header < headers_end {
        let h = &payload[header..header + 4];
        let offset = (u16::from(h[1]) << 6) | u16::from(h[2] >> 2);
        let len = block_len(header);
        f(h[0] & 0x7f, offset, &payload[data..data + len]);
        data += len;
        header += 4;
    }
    debug_assert_eq!(data, primary_at);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RED payload: `(pt, ts_offset, data)` redundant blocks, then the primary.
    fn red(blocks: &[(u8, u16, &[u8])], primary_pt: u8, primary: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (pt, offset, data) in blocks {
            out.push(0x80 | pt);
            let v = (u32::from(*offset) << 10) | data.len() as u32;
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
        out.push(primary_pt);
        for (_, _, data) in blocks {
            out.extend_from_slice(data);
        }
        out.extend_from_slice(primary);
        out
    }

    #[test]
    fn the_primary_follows_the_redundant_blocks() {
        let p = red(&[(111, 1920, b"older"), (111, 960, b"old")], 111, b"now!");
        let (start, pt) = primary(&p).expect("well-formed RED");
        assert_eq!(&p[start..], b"now!");
        assert_eq!(pt, 111);
    }

    #[test]
    fn a_packet_without_redundancy_is_one_byte_then_the_primary() {
        let p = red(&[], 111, b"only");
        assert_eq!(primary(&p), Some((1, 111)));
    }

    #[test]
    fn long_blocks_use_all_ten_length_bits() {
        let big = vec![7u8; 700];
        let p = red(&[(111, 960, &big)], 111, b"x");
        let (start, _) = primary(&p).expect("well-formed RED");
        assert_eq!(start, 4 + 1 + 700);
        assert_eq!(&p[start..], b"x");
    }

    #[test]
    fn redundant_blocks_are_read_oldest_first() {
        let p = red(&[(111, 1920, b"older"), (111, 960, b"old")], 111, b"now!");
        let mut seen = Vec::new();
        assert!(for_each_redundant(&p, |pt, off, d| seen.push((
            pt,
            off,
            d.to_vec()
        ))));
        assert_eq!(
            seen,
            vec![(111, 1920, b"older".to_vec()), (111, 960, b"old".to_vec())]
        );
        assert!(!for_each_redundant(&[0x80 | 111, 0, 3], |_, _, _| panic!(
            "malformed"
        )));
    }

    #[test]
    fn malformed_payloads_are_refused() {
        // Empty; a header cut short; block lengths past the end; no primary data.
        assert_eq!(primary(&[]), None);
        assert_eq!(primary(&[0x80 | 111, 0, 3]), None);
        let mut p = red(&[(111, 960, b"abc")], 111, b"z");
        p.truncate(p.len() - 2);
        assert_eq!(primary(&p), None);
        assert_eq!(primary(&red(&[(111, 960, b"abc")], 111, b"")), None);
        // Headers only, F=1 to the end.
        assert_eq!(primary(&[0xff; 8]), None);
    }
}
