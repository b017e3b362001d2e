//! The VP8 RTP payload descriptor (RFC 7741 §4.2): just enough to find keyframes and to rewrite PictureID and
//! TL0PICIDX in place, so a subscriber's stream stays continuous when its source changes.

/// Where the rewritable fields of one packet's descriptor are, and their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// Start of a VP8 partition (S bit) with partition index 0: the first packet of a frame.
    pub frame_start: bool,
    /// The frame is a keyframe (only known on the first packet of a frame).
    pub keyframe: bool,
    /// PictureID and whether it is the 15-bit form; with its byte offset in the payload.
    pub picture_id: Option<PictureId>,
    /// TL0PICIDX and its byte offset in the payload.
    pub tl0picidx: Option<(u8, usize)>,
    /// Length of the descriptor; the VP8 payload starts here.
    pub header_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    pub value: u16,
    pub wide: bool,
    pub offset: usize,
}

impl PictureId {
    /// The modulus of this field's value space (2^15 or 2^7).
    pub fn modulus(&self) -> u16 {
        if self.wide { 1 << 15 } else { 1 << 7 }
    }
}

/// The frame size a VP8 keyframe announces (RFC 6386 §9.1: 3-byte frame tag, start code 9d 01 2a, then 14-bit
/// width and height, little-endian). Only the first packet of a keyframe carries it.
pub fn keyframe_size(payload: &[u8], desc: &Vp8Descriptor) -> Option<(u16, u16)> {
    if !desc.keyframe {
        return None;
    }
    let b = payload.get(desc.header_len..desc.header_len + 10)?;
    if b[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([b[6], b[7]]) & 0x3fff;
    let h = u16::from_le_bytes([b[8], b[9]]) & 0x3fff;
    Some((w, h))
}

/// Parse a VP8 payload descriptor. `None` if the payload is too short to hold what its flags announce.
pub fn parse(payload: &[u8]) -> Option<Vp8Descriptor> {
    let first = *payload.first()?;
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x07;
    let mut pos = 1;
    let mut picture_id = None;
    let mut tl0picidx = None;
    if extended {
        let ext = *payload.get(pos)?;
        pos += 1;
        let has_pid = ext & 0x80 != 0;
        let has_tl0 = ext & 0x40 != 0;
        let has_tid = ext & 0x20 != 0;
        let has_key_idx = ext & 0x10 != 0;
        if has_pid {
            let b = *payload.get(pos)?;
            if b & 0x80 != 0 {
                let b2 = *payload.get(pos + 1)?;
                picture_id = Some(PictureId {
                    value: (u16::from(b & 0x7f) << 8) | u16::from(b2),
                    wide: true,
                    offset: pos,
                });
                pos += 2;
            } else {
                picture_id = Some(PictureId {
                    value: u16::from(b),
                    wide: false,
                    offset: pos,
                });
                pos += 1;
            }
        }
        if has_tl0 {
            tl0picidx = Some((*payload.get(pos)?, pos));
            pos += 1;
        }
        if has_tid || has_key_idx {
            payload.get(pos)?;
            pos += 1;
        }
    }
    let frame_start = start && partition == 0;
    // VP8 payload header (RFC 6386 §9.1): the P bit (lowest bit of the first byte) is 0 on keyframes.
    let keyframe = frame_start && payload.get(pos).is_some_and(|b| b & 0x01 == 0);
    Some(Vp8Descriptor {
        frame_start,
        keyframe,
        picture_id,
        tl0picidx,
        header_len: pos,
    })
}

/// Write a PictureID (same width as the original) and TL0PICIDX into a copy of the payload.
pub fn rewrite(payload: &mut [u8], desc: &Vp8Descriptor, picture_id: Option<u16>, tl0: Option<u8>) {
    if let (Some(pid), Some(value)) = (desc.picture_id, picture_id) {
        if pid.wide {
            payload[pid.offset] = 0x80 | ((value >> 8) as u8 & 0x7f);
            payload[pid.offset + 1] = value as u8;
        } else {
            payload[pid.offset] = value as u8 & 0x7f;
        }
    }
    if let (Some((_, offset)), Some(value)) = (desc.tl0picidx, tl0) {
        payload[offset] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_size_is_read_from_the_frame_header() {
        // Descriptor: X, S, PID (15 bit); then a keyframe tag, start code, 960 x 540.
        let mut p = vec![0x90, 0x80, 0x80, 0x01, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a];
        p.extend_from_slice(&960u16.to_le_bytes());
        p.extend_from_slice(&540u16.to_le_bytes());
        let d = parse(&p).expect("descriptor");
        assert!(d.keyframe);
        assert_eq!(keyframe_size(&p, &d), Some((960, 540)));
        p[4] = 0x01; // a delta frame carries no size
        let d = parse(&p).expect("descriptor");
        assert_eq!(keyframe_size(&p, &d), None);
    }

    /// X=1 S=1 PID(15-bit)=0x1234 TL0=7, then a keyframe payload header byte.
    const KEYFRAME_START: [u8; 6] = [0x90, 0xC0, 0x80 | 0x12, 0x34, 7, 0x10];

    #[test]
    fn parses_wide_picture_id_tl0_and_keyframe() {
        let d = parse(&KEYFRAME_START).expect("valid");
        assert!(d.frame_start && d.keyframe);
        assert_eq!(
            d.picture_id,
            Some(PictureId {
                value: 0x1234,
                wide: true,
                offset: 2
            })
        );
        assert_eq!(d.tl0picidx, Some((7, 4)));
        assert_eq!(d.header_len, 5);
    }

    #[test]
    fn interframe_and_continuation_are_not_keyframes() {
        let mut inter = KEYFRAME_START;
        inter[5] = 0x11;
        assert!(!parse(&inter).expect("valid").keyframe);
        let mut cont = KEYFRAME_START;
        cont[0] = 0x80; // S=0
        let d = parse(&cont).expect("valid");
        assert!(!d.frame_start && !d.keyframe);
    }

    #[test]
    fn short_picture_id_and_no_extension() {
        let d = parse(&[0x90, 0x80, 0x05, 0x00]).expect("valid");
        assert_eq!(d.picture_id.map(|p| (p.value, p.wide)), Some((5, false)));
        let d = parse(&[0x10, 0x00]).expect("valid");
        assert_eq!(d.picture_id, None);
        assert!(d.keyframe);
    }

    #[test]
    fn truncated_descriptor_is_none() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x90]), None);
        assert_eq!(parse(&[0x90, 0x80, 0x80]), None);
    }

    #[test]
    fn rewrite_keeps_width() {
        let mut p = KEYFRAME_START;
        let d = parse(&p).expect("valid");
        rewrite(&mut p, &d, Some(0x7fff), Some(200));
        let d2 = parse(&p).expect("valid");
        assert_eq!(d2.picture_id.map(|x| x.value), Some(0x7fff));
        assert_eq!(d2.tl0picidx.map(|x| x.0), Some(200));
        assert!(d2.keyframe);
    }
}
