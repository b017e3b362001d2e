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

use bytes::{BufMut, Bytes};

pub const MIME_TYPE: &str = "audio/red";

/// The payload type the SFU gives RED on the legs it offers, and the Opus one its `111/111` format names.
pub const RED_PAYLOAD_TYPE: u8 = 63;
pub const RED_FMTP: &str = "111/111";

/// Where a well-formed RED payload's parts are: the primary's header byte (the block headers end there) and the
/// primary's data.
fn layout(payload: &[u8]) -> Option<(usize, usize)> {
    let mut pos = 0usize;
    let mut redundant = 0usize;
    loop {
        let b = *payload.get(pos)?;
        if b & 0x80 == 0 {
            let start = pos + 1 + redundant;
            return (start < payload.len()).then_some((pos, start));
        }
        let header = payload.get(pos..pos + 4)?;
        redundant += usize::from(header[2] & 0x03) << 8 | usize::from(header[3]);
        pos += 4;
    }
}

/// Where the primary encoding's data starts in a RED payload, and its payload type. `None` if the payload is
/// not well-formed RED (headers cut short, block lengths past the end) or carries no primary data.
pub fn primary(payload: &[u8]) -> Option<(usize, u8)> {
    layout(payload).map(|(header, start)| (start, payload[header] & 0x7f))
}

/// The primary alone, as plain Opus: a view of the same bytes (no copy).
pub fn primary_bytes(payload: &Bytes) -> Option<Bytes> {
    primary(payload).map(|(at, _)| payload.slice(at..))
}

/// Each redundant block of a well-formed RED payload, oldest first: `f(payload type, timestamp offset, data)`.
/// `false` (and nothing called) if the payload is not well-formed RED. The SFU forwards or strips RED and needs
/// none of this; a receiver rebuilding lost frames does (the simulated endpoints count what RED would rebuild).
pub fn for_each_redundant(payload: &[u8], mut f: impl FnMut(u8, u16, &[u8])) -> bool {
    let Some((headers_end, _)) = layout(payload) else {
        return false;
    };
    let mut data = headers_end + 1;
    for h in payload[..headers_end].chunks_exact(4) {
        let offset = (u16::from(h[1]) << 6) | u16::from(h[2] >> 2);
        let len = usize::from(h[2] & 0x03) << 8 | usize::from(h[3]);
        f(h[0] & 0x7f, offset, &payload[data..data + len]);
        data += len;
    }
    true
}

/// Writes a RED payload: the `(payload type, timestamp offset, data)` redundant blocks, oldest first, then the
/// primary. A sender's side (the simulated endpoints publish RED as Chromium does); data longer than 1023 bytes
/// does not fit a block.
pub fn write(out: &mut impl BufMut, blocks: &[(u8, u16, &[u8])], primary_pt: u8, primary: &[u8]) {
    for (pt, offset, data) in blocks {
        out.put_u8(0x80 | pt);
        let v = (u32::from(*offset) << 10) | data.len() as u32;
        out.put_slice(&v.to_be_bytes()[1..]);
    }
    out.put_u8(primary_pt);
    for (_, _, data) in blocks {
        out.put_slice(data);
    }
    out.put_slice(primary);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red(blocks: &[(u8, u16, &[u8])], primary_pt: u8, primary: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, blocks, primary_pt, primary);
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
