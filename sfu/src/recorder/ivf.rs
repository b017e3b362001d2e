//! IVF files of VP8 frames: a 32-byte header (`DKIF`, `VP80`, size, time base 1/1000 s), then each frame as
//! `size: u32 LE | pts: u64 LE (ms) | frame`. At the end the header gets the picture size (from the first
//! keyframe) and, in the length field, the duration in time-base units as FFmpeg's own IVF muxer writes it, so
//! `ffprobe` and players report the real duration.

use std::io::{Seek, SeekFrom, Write};

pub struct IvfWriter<W: Write + Seek> {
    out: W,
    width: u16,
    height: u16,
    first_pts: Option<u64>,
    last_pts: u64,
    pub frames: u64,
}

impl<W: Write + Seek> IvfWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(&header(0, 0, 0))?;
        Ok(IvfWriter {
            out,
            width: 0,
            height: 0,
            first_pts: None,
            last_pts: 0,
            frames: 0,
        })
    }

    /// Write one whole VP8 frame (the concatenated partitions, descriptors stripped) shown at `pts_ms`. Times
    /// only go forward in the file: a frame not after the last one (two frames within a millisecond, or the
    /// recorded simulcast layer changing to one whose timestamps lag) is shown 1 ms after it, as players require.
    pub fn write_frame(&mut self, frame: &[u8], pts_ms: u64) -> std::io::Result<()> {
        let pts_ms = if self.frames > 0 && pts_ms <= self.last_pts {
            self.last_pts + 1
        } else {
            pts_ms
        };
        if self.width == 0
            && let Some((w, h)) = keyframe_size(frame)
        {
            self.width = w;
            self.height = h;
        }
        self.first_pts.get_or_insert(pts_ms);
        self.last_pts = pts_ms;
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(&pts_ms.to_le_bytes())?;
        self.out.write_all(frame)?;
        self.frames += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Duration in ms: first to last frame, plus one average frame interval (as FFmpeg's muxer counts it).
    pub fn duration_ms(&self) -> u64 {
        let span = self.last_pts - self.first_pts.unwrap_or(self.last_pts);
        match self.frames {
            0 => 0,
            1 => span,
            n => span * n / (n - 1),
        }
    }

    /// Patch the header (size, duration) and return the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        let duration = u32::try_from(self.duration_ms()).unwrap_or(u32::MAX);
        self.out.flush()?;
        let end = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out
            .write_all(&header(self.width, self.height, duration))?;
        self.out.seek(SeekFrom::Start(end))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn header(width: u16, height: u16, duration: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(b"DKIF");
    h[4..6].copy_from_slice(&0u16.to_le_bytes()); // version
    h[6..8].copy_from_slice(&32u16.to_le_bytes()); // header size
    h[8..12].copy_from_slice(b"VP80");
    h[12..14].copy_from_slice(&width.to_le_bytes());
    h[14..16].copy_from_slice(&height.to_le_bytes());
    h[16..20].copy_from_slice(&1000u32.to_le_bytes()); // time base denominator
    h[20..24].copy_from_slice(&1u32.to_le_bytes()); // time base numerator
    h[24..28].copy_from_slice(&duration.to_le_bytes());
    h
}

/// Width and height of a VP8 keyframe (RFC 6386 §9.1: 3-byte frame tag, start code 9d 01 2a, 14-bit sizes).
pub fn keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_only_go_forward() {
        let mut w = IvfWriter::new(std::io::Cursor::new(Vec::new())).expect("writer");
        for pts in [0u64, 33, 33, 20, 100] {
            w.write_frame(&[0u8; 10], pts).expect("frame");
        }
        let out = w.finish().expect("finish").into_inner();
        // Frames follow the 32-byte header: 4 bytes size, 8 bytes pts, 10 bytes frame each.
        let pts: Vec<u64> = (0..5)
            .map(|i| {
                let at = 32 + i * 22 + 4;
                u64::from_le_bytes(out[at..at + 8].try_into().expect("8 bytes"))
            })
            .collect();
        assert_eq!(pts, vec![0, 33, 34, 35, 100]);
    }

    #[test]
    fn header_and_frames() {
        let mut w = IvfWriter::new(std::io::Cursor::new(Vec::new())).expect("header");
        let key = [
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01, 0xaa,
        ];
        w.write_frame(&key, 1000).expect("frame");
        w.write_frame(&[0x11, 0, 0, 1, 2], 1033).expect("frame");
        w.write_frame(&[0x11, 0, 0, 1, 2], 1066).expect("frame");
        assert_eq!(w.duration_ms(), 99);
        let out = w.finish().expect("finish").into_inner();
        assert_eq!(&out[0..4], b"DKIF");
        assert_eq!(&out[8..12], b"VP80");
        assert_eq!(u16::from_le_bytes([out[12], out[13]]), 640);
        assert_eq!(u16::from_le_bytes([out[14], out[15]]), 360);
        assert_eq!(u32::from_le_bytes(out[24..28].try_into().expect("4")), 99);
        assert_eq!(u32::from_le_bytes(out[32..36].try_into().expect("4")), 11);
        assert_eq!(u64::from_le_bytes(out[36..44].try_into().expect("8")), 1000);
        assert_eq!(out.len(), 32 + 12 + 11 + 2 * (12 + 5));
    }
}
