//! Ogg Opus files (RFC 7845 over RFC 3533): an ID header page, a comment page, then audio pages each holding up
//! to a second of Opus packets. The granule position of a page is the 48 kHz sample count at the end of its last
//! packet, placed by RTP timestamp (so lost packets and silences keep their place in time), so players and
//! `ffprobe` report the real duration.

use std::io::Write;

/// Opus packets per page (about a second of 20 ms packets): bounds what a crash loses and the page overhead.
const PACKETS_PER_PAGE: usize = 50;

const HEADER_BOS: u8 = 0x02;
const HEADER_EOS: u8 = 0x04;

pub struct OggOpusWriter<W: Write> {
    out: W,
    serial: u32,
    page_no: u32,
    /// Packets of the page being filled, concatenated, and their lengths.
    data: Vec<u8>,
    lengths: Vec<usize>,
    /// Granule position at the end of the last packet added.
    granule: u64,
    pub packets: u64,
}

impl<W: Write> OggOpusWriter<W> {
    /// Write the two header pages. `channels` as negotiated (WebRTC Opus says 2).
    pub fn new(mut out: W, channels: u8, serial: u32) -> std::io::Result<Self> {
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(channels.clamp(1, 2));
        head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip: the stream is joined mid-way, nothing to skip
        head.extend_from_slice(&48_000u32.to_le_bytes()); // input sample rate (informational)
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono or stereo
        let mut tags = Vec::with_capacity(32);
        tags.extend_from_slice(b"OpusTags");
        let vendor = b"giaoban";
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        write_page(&mut out, serial, 0, HEADER_BOS, 0, &head, &[head.len()])?;
        write_page(&mut out, serial, 1, 0, 0, &tags, &[tags.len()])?;
        Ok(OggOpusWriter {
            out,
            serial,
            page_no: 2,
            data: Vec::with_capacity(8192),
            lengths: Vec::with_capacity(PACKETS_PER_PAGE),
            granule: 0,
            packets: 0,
        })
    }

    /// Add one Opus packet that ends at `end_granule` (48 kHz samples since the start of the file).
    pub fn write_packet(&mut self, packet: &[u8], end_granule: u64) -> std::io::Result<()> {
        // A page holds at most 255 lacing values; a packet needs len/255 + 1 of them.
        let lacing: usize = self.lengths.iter().map(|l| l / 255 + 1).sum();
        if self.lengths.len() >= PACKETS_PER_PAGE || lacing + packet.len() / 255 + 1 > 255 {
            self.flush_page(0)?;
        }
        self.data.extend_from_slice(packet);
        self.lengths.push(packet.len());
        self.granule = end_granule.max(self.granule);
        self.packets += 1;
        Ok(())
    }

    /// Write the page being filled (if any) and push it to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if !self.lengths.is_empty() {
            self.flush_page(0)?;
        }
        self.out.flush()
    }

    fn flush_page(&mut self, flags: u8) -> std::io::Result<()> {
        write_page(
            &mut self.out,
            self.serial,
            self.page_no,
            flags,
            self.granule,
            &self.data,
            &self.lengths,
        )?;
        self.page_no += 1;
        self.data.clear();
        self.lengths.clear();
        Ok(())
    }

    /// The last page, marked end of stream; returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.flush_page(HEADER_EOS)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Seconds of audio written (the last granule position).
    pub fn duration_ms(&self) -> u64 {
        self.granule / 48
    }
}

fn write_page<W: Write>(
    out: &mut W,
    serial: u32,
    page_no: u32,
    flags: u8,
    granule: u64,
    data: &[u8],
    lengths: &[usize],
) -> std::io::Result<()> {
    let mut page = Vec::with_capacity(27 + 255 + data.len());
    page.extend_from_slice(b"OggS");
    page.push(0); // version
    page.push(flags);
    page.extend_from_slice(&granule.to_le_bytes());
    page.extend_from_slice(&serial.to_le_bytes());
    page.extend_from_slice(&page_no.to_le_bytes());
    page.extend_from_slice(&[0; 4]); // CRC, filled below
    let segments_at = page.len();
    page.push(0);
    let mut segments = 0u8;
    for &len in lengths {
        page.extend(std::iter::repeat_n(255u8, len / 255));
        page.push((len % 255) as u8);
        segments += (len / 255 + 1) as u8;
    }
    page[segments_at] = segments;
    page.extend_from_slice(data);
    let crc = crc32(&page);
    page[22..26].copy_from_slice(&crc.to_le_bytes());
    out.write_all(&page)
}

/// Ogg's CRC-32: polynomial 0x04c11db7, initial value 0, no reflection, no final XOR.
fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, entry) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
            }
            *entry = r;
        }
        t
    });
    bytes.iter().fold(0u32, |crc, b| {
        (crc << 8) ^ table[(((crc >> 24) as u8) ^ b) as usize]
    })
}

/// Samples (at 48 kHz) in one Opus packet, from its TOC byte (RFC 6716 §3.1); `None` if it is malformed.
pub fn opus_samples(packet: &[u8]) -> Option<u64> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame length in units of 2.5 ms.
    let frame_units: u64 = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames: u64 = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3f),
    };
    Some(frames * frame_units * 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_a_known_ogg_page() {
        // The CRC of "OggS" followed by zeros is stable; check against a value computed bit by bit.
        let data = b"OggS\0\x02";
        let mut crc = 0u32;
        for &b in data {
            crc ^= u32::from(b) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04c1_1db7
                } else {
                    crc << 1
                };
            }
        }
        assert_eq!(crc32(data), crc);
    }

    #[test]
    fn pages_carry_packets_and_granule() {
        let mut w = OggOpusWriter::new(Vec::new(), 2, 7).expect("headers");
        for i in 0..120u64 {
            w.write_packet(&[0xfc; 80], (i + 1) * 960).expect("packet");
        }
        assert_eq!(w.packets, 120);
        assert_eq!(w.duration_ms(), 2400);
        let out = w.finish().expect("finish");
        // Pages: 2 headers + 50 + 50 + 20 packets.
        let pages: Vec<usize> = out
            .windows(4)
            .enumerate()
            .filter(|(_, w)| w == b"OggS")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(pages.len(), 5);
        let last = pages[4];
        assert_eq!(out[last + 5], HEADER_EOS);
        let granule = u64::from_le_bytes(out[last + 6..last + 14].try_into().expect("8 bytes"));
        assert_eq!(granule, 120 * 960);
        assert_eq!(out[last + 26], 20, "20 lacing values on the last page");
    }

    #[test]
    fn opus_toc_durations() {
        assert_eq!(opus_samples(&[0xfc]), Some(960)); // CELT FB 20 ms, 1 frame
        assert_eq!(opus_samples(&[0x08 | 0x01]), Some(1920)); // SILK NB 20 ms, 2 frames
        assert_eq!(opus_samples(&[0x03 | 0xf8, 3]), Some(2880)); // CELT 20 ms × 3
        assert_eq!(opus_samples(&[]), None);
    }
}
