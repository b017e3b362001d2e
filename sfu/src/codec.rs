//! What the SFU needs to know about the codecs it forwards: keyframe detection per MIME type.

use crate::vp8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Opus,
    /// Opus inside RFC 2198 redundancy (`red.rs`).
    Red,
    Vp8,
    H264,
    /// Forwarded as is; keyframes unknown (treated as always decodable).
    Other,
}

impl Codec {
    pub fn from_mime(mime: &str) -> Codec {
        if mime.eq_ignore_ascii_case("audio/opus") {
            Codec::Opus
        } else if mime.eq_ignore_ascii_case("audio/red") {
            Codec::Red
        } else if mime.eq_ignore_ascii_case("video/vp8") {
            Codec::Vp8
        } else if mime.eq_ignore_ascii_case("video/h264") {
            Codec::H264
        } else {
            Codec::Other
        }
    }

    pub fn is_video(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::H264)
    }

    /// Whether this packet starts a frame a decoder can begin with.
    pub fn is_keyframe_start(self, payload: &[u8]) -> bool {
        match self {
            Codec::Vp8 => vp8::parse(payload).is_some_and(|d| d.keyframe),
            Codec::H264 => h264_has_idr_or_sps(payload),
            Codec::Opus | Codec::Red | Codec::Other => true,
        }
    }
}

/// H.264 (RFC 6184): a single NAL, a STAP-A aggregate or the start of an FU-A carrying an SPS (7) or IDR (5).
fn h264_has_idr_or_sps(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let is_key = |nal: u8| matches!(nal & 0x1f, 5 | 7);
    match first & 0x1f {
        24 => {
            // STAP-A: [hdr] then (u16 size, NAL)*
            let mut pos = 1;
            while pos + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[pos], payload[pos + 1]]));
                if is_key(payload[pos + 2]) {
                    return true;
                }
                pos += 2 + size;
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(*fu)),
        _ => is_key(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_is_case_insensitive() {
        assert_eq!(Codec::from_mime("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_mime("VIDEO/h264"), Codec::H264);
        assert_eq!(Codec::from_mime("audio/opus"), Codec::Opus);
        assert_eq!(Codec::from_mime("audio/red"), Codec::Red);
        assert_eq!(Codec::from_mime("audio/PCMU"), Codec::Other);
    }

    #[test]
    fn h264_keyframes() {
        assert!(Codec::H264.is_keyframe_start(&[0x65, 0x00])); // IDR
        assert!(!Codec::H264.is_keyframe_start(&[0x41, 0x00])); // non-IDR slice
        assert!(Codec::H264.is_keyframe_start(&[0x78, 0x00, 0x02, 0x67, 0x00])); // STAP-A with SPS
        assert!(Codec::H264.is_keyframe_start(&[0x7c, 0x85])); // FU-A start of IDR
        assert!(!Codec::H264.is_keyframe_start(&[0x7c, 0x05])); // FU-A continuation
    }

    #[test]
    fn vp8_keyframe() {
        assert!(Codec::Vp8.is_keyframe_start(&[0x10, 0x00]));
        assert!(!Codec::Vp8.is_keyframe_start(&[0x10, 0x01]));
    }
}
