//! Recording a room for the minutes, off the media path.
//!
//! While a room records, each of its Producers holds a [`Tap`]: the worker hands every RTP packet it forwards
//! (already decrypted; once per packet per *producer*, never per subscriber) to the room's writer thread with a
//! `try_send` on a bounded channel. Nothing is allocated or copied for it (the payload `Bytes` is shared) and the
//! worker never waits: a full channel drops the packet for the recording and counts it.
//!
//! The writer thread (one per recording) puts packets back in sequence order (a short reorder buffer for NACK
//! retransmissions), and writes each producer to its own file in the recording's folder: Opus to Ogg Opus
//! (`<producer>.opus`; RED audio as its primary Opus), VP8 to IVF (`<producer>.ivf`); other codecs (H.264) are noted, not written. Files are
//! flushed every second. A write error (disk full) ends the recording: the thread closes what it can, reports
//! [`Event::RecordingEnded`] with the error, and exits; the worker's next `try_send` sees the channel closed and
//! drops its taps. Stopping drops the taps: the thread drains what is queued, finishes the files and reports.

pub mod ivf;
pub mod ogg;

use crate::api::{Event, MediaKind, MediaSource, ParticipantId, RecordedFile, RoomId};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Items queued per recording (a few seconds of a busy room's packets).
pub const QUEUE: usize = 8192;
/// How often the files are flushed to disk.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Packets held back waiting for a missing one before it is given up as lost.
const REORDER_AUDIO: usize = 10;
const REORDER_VIDEO: usize = 64;
/// How often a video file asks again for the keyframe it needs.
const KEYFRAME_RETRY: Duration = Duration::from_millis(700);

/// What the writer needs to know of a producer.
#[derive(Debug, Clone)]
pub struct TrackInfo {
    pub producer_id: String,
    pub participant: ParticipantId,
    pub kind: MediaKind,
    pub source: MediaSource,
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
}

pub(crate) enum Item {
    Track(u64, Box<TrackInfo>),
    Rtp {
        track: u64,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: Bytes,
        at: Instant,
    },
}

/// A room's recording, as its worker holds it.
pub struct Recording {
    tx: SyncSender<Item>,
    dropped: Arc<AtomicU64>,
    /// Producers whose video file needs a keyframe (the first one was incomplete, or a frame was lost).
    keyframes: Receiver<u64>,
}

/// One producer's handle on its room's recording (held by the Producer, used per packet).
#[derive(Clone)]
pub struct Tap {
    tx: SyncSender<Item>,
    track: u64,
    dropped: Arc<AtomicU64>,
}

impl Tap {
    /// Queue one packet for the writer; never blocks. Returns false when the recording has ended (the writer
    /// stopped on an error): the caller drops the tap.
    #[inline]
    pub fn packet(&self, packet: &rtc::rtp::Packet, at: Instant) -> bool {
        match self.tx.try_send(Item::Rtp {
            track: self.track,
            seq: packet.header.sequence_number,
            ts: packet.header.timestamp,
            marker: packet.header.marker,
            payload: packet.payload.clone(),
            at,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Recording {
    /// Start the writer thread for `room`, writing into `dir` (which must exist).
    pub fn start(
        room: RoomId,
        dir: PathBuf,
        events: UnboundedSender<Event>,
    ) -> std::io::Result<Recording> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (kf_tx, keyframes) = std::sync::mpsc::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                let mut writer = Writer::new(dir.clone(), kf_tx);
                let error = writer.run(&rx).err();
                drop(rx);
                let files = writer.finish();
                if let Some(e) = &error {
                    tracing::error!(%room, error = %e, "recording stopped by a write error");
                } else {
                    tracing::info!(%room, files = files.len(), "recording finished");
                }
                let _ = events.send(Event::RecordingEnded {
                    room,
                    dir,
                    files,
                    dropped: d.load(Ordering::Relaxed),
                    error,
                });
            })?;
        Ok(Recording {
            tx,
            dropped,
            keyframes,
        })
    }

    /// Producers the writer wants a keyframe of (polled by the worker's tick, not per packet).
    pub fn keyframes_wanted(&self) -> impl Iterator<Item = u64> + '_ {
        self.keyframes.try_iter()
    }

    /// A producer of the room: tell the writer what it is, and give it its tap.
    pub fn tap(&self, key: u64, info: TrackInfo) -> Tap {
        if self.tx.try_send(Item::Track(key, Box::new(info))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Tap {
            tx: self.tx.clone(),
            track: key,
            dropped: self.dropped.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The writer thread
// ---------------------------------------------------------------------------------------------------------------

struct Pkt {
    ts: u32,
    marker: bool,
    payload: Bytes,
    at: Instant,
}

/// Extends a wrapping RTP counter (sequence number or timestamp) to 64 bits.
#[derive(Default)]
struct Unwrap {
    last: Option<(u32, i64)>,
}

impl Unwrap {
    fn extend(&mut self, value: u32, bits: u32) -> i64 {
        let ext = match self.last {
            None => i64::from(value),
            Some((prev, prev_ext)) => {
                let diff = value.wrapping_sub(prev) << (32 - bits);
                prev_ext + i64::from((diff as i32) >> (32 - bits))
            }
        };
        if self.last.is_none_or(|(_, e)| ext > e) {
            self.last = Some((value, ext));
        }
        ext
    }
}

/// Puts packets back in sequence order; gives up on a missing packet once `hold` packets wait behind it.
struct Reorder {
    seq: Unwrap,
    next: Option<i64>,
    held: BTreeMap<i64, Pkt>,
    hold: usize,
    late: u64,
}

impl Reorder {
    fn new(hold: usize) -> Self {
        Reorder {
            seq: Unwrap::default(),
            next: None,
            held: BTreeMap::new(),
            hold,
            late: 0,
        }
    }

    /// Add a packet; `emit(packet, gap_before)` gets each packet that is due, in order.
    fn push(
        &mut self,
        seq: u16,
        pkt: Pkt,
        emit: &mut impl FnMut(Pkt, bool) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let s = self.seq.extend(u32::from(seq), 16);
        let next = *self.next.get_or_insert(s);
        if s < next || self.held.contains_key(&s) {
            self.late += 1;
            return Ok(());
        }
        self.held.insert(s, pkt);
        self.drain(emit, false)
    }

    fn drain(
        &mut self,
        emit: &mut impl FnMut(Pkt, bool) -> std::io::Result<()>,
        all: bool,
    ) -> std::io::Result<()> {
        while let Some((&first, _)) = self.held.first_key_value() {
            let next = self.next.unwrap_or(first);
            let gap = first != next;
            if gap && !all && self.held.len() <= self.hold {
                break;
            }
            if let Some((s, p)) = self.held.pop_first() {
                self.next = Some(s + 1);
                emit(p, gap)?;
            }
        }
        Ok(())
    }
}

enum Sink {
    /// Not opened yet (no packet so far).
    Pending,
    Opus {
        w: ogg::OggOpusWriter<BufWriter<File>>,
        ts: Unwrap,
        base: i64,
        /// The producer sends RED (`red.rs`): the file gets each packet's primary.
        red: bool,
    },
    Vp8 {
        w: ivf::IvfWriter<BufWriter<File>>,
        ts: Unwrap,
        base: Option<i64>,
        frame: Vec<u8>,
        frame_ts: i64,
        in_frame: bool,
        broken: bool,
        started: bool,
        incomplete: u64,
        /// A keyframe would help: the first was incomplete, a frame was lost, or none came yet.
        wants_keyframe: bool,
        /// When the first packet came (to ask again if no keyframe follows).
        waiting_since: Option<Instant>,
    },
    Skipped(String),
}

struct Track {
    info: TrackInfo,
    last_keyframe_request: Option<Instant>,
    file: Option<String>,
    reorder: Reorder,
    sink: Sink,
    first_at: Option<Instant>,
    packets_in: u64,
}

struct Writer {
    dir: PathBuf,
    keyframes: std::sync::mpsc::Sender<u64>,
    started: Instant,
    tracks: HashMap<u64, Track>,
    /// Order of first appearance, for the report.
    order: Vec<u64>,
    unknown: u64,
}

impl Writer {
    fn new(dir: PathBuf, keyframes: std::sync::mpsc::Sender<u64>) -> Self {
        Writer {
            dir,
            keyframes,
            started: Instant::now(),
            tracks: HashMap::new(),
            order: Vec::new(),
            unknown: 0,
        }
    }

    /// Until every sender is gone (stopped) or a write fails.
    fn run(&mut self, rx: &Receiver<Item>) -> Result<(), String> {
        let mut last_flush = Instant::now();
        loop {
            match rx.recv_timeout(FLUSH_EVERY) {
                Ok(Item::Track(key, info)) => {
                    let hold = match info.kind {
                        MediaKind::Audio => REORDER_AUDIO,
                        MediaKind::Video => REORDER_VIDEO,
                    };
                    self.order.push(key);
                    self.tracks.insert(
                        key,
                        Track {
                            info: *info,
                            last_keyframe_request: None,
                            file: None,
                            reorder: Reorder::new(hold),
                            sink: Sink::Pending,
                            first_at: None,
                            packets_in: 0,
                        },
                    );
                }
                Ok(Item::Rtp {
                    track,
                    seq,
                    ts,
                    marker,
                    payload,
                    at,
                }) => {
                    let Some(t) = self.tracks.get_mut(&track) else {
                        self.unknown += 1;
                        continue;
                    };
                    t.packets_in += 1;
                    let dir = &self.dir;
                    let Track {
                        info,
                        file,
                        reorder,
                        sink,
                        first_at,
                        ..
                    } = t;
                    let written = reorder.push(
                        seq,
                        Pkt {
                            ts,
                            marker,
                            payload,
                            at,
                        },
                        &mut |p, gap| write(dir, info, file, sink, first_at, p, gap),
                    );
                    if let Sink::Vp8 { wants_keyframe, .. } = &mut t.sink
                        && *wants_keyframe
                        && t.last_keyframe_request
                            .is_none_or(|l| at.saturating_duration_since(l) >= KEYFRAME_RETRY)
                    {
                        *wants_keyframe = false;
                        t.last_keyframe_request = Some(at);
                        let _ = self.keyframes.send(track);
                    }
                    written.map_err(|e| self.describe(track, e))?;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.flush(),
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                last_flush = Instant::now();
                self.flush()?;
            }
        }
    }

    fn describe(&self, key: u64, e: std::io::Error) -> String {
        match self.tracks.get(&key).and_then(|t| t.file.as_deref()) {
            Some(f) => format!("{}: {e}", self.dir.join(f).display()),
            None => format!("{}: {e}", self.dir.display()),
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        for (key, t) in self.tracks.iter_mut() {
            let r = match &mut t.sink {
                Sink::Opus { w, .. } => w.flush(),
                Sink::Vp8 { w, .. } => w.flush(),
                Sink::Pending | Sink::Skipped(_) => Ok(()),
            };
            if let Err(e) = r {
                let file = t.file.as_deref().unwrap_or("?");
                return Err(format!(
                    "{}: {e} (track {key})",
                    self.dir.join(file).display()
                ));
            }
        }
        Ok(())
    }

    /// Write what is still held back, close every file, and describe them.
    fn finish(mut self) -> Vec<RecordedFile> {
        let mut out = Vec::new();
        for key in &self.order {
            let Some(mut t) = self.tracks.remove(key) else {
                continue;
            };
            let dir = &self.dir;
            let Track {
                info,
                file,
                reorder,
                sink,
                first_at,
                packets_in,
                ..
            } = &mut t;
            let mut note = None;
            if let Err(e) = reorder.drain(
                &mut |p, gap| write(dir, info, file, sink, first_at, p, gap),
                true,
            ) {
                note = Some(format!("not finished: {e}"));
            }
            let sink = std::mem::replace(sink, Sink::Pending);
            let (packets, frames, duration_ms) = match sink {
                Sink::Pending => {
                    note.get_or_insert_with(|| "no media while recording".into());
                    (0, 0, 0)
                }
                Sink::Skipped(why) => {
                    note = Some(why);
                    (0, 0, 0)
                }
                Sink::Opus { w, .. } => {
                    let (p, d) = (w.packets, w.duration_ms());
                    if let Err(e) = w.finish() {
                        note = Some(format!("not finished: {e}"));
                    }
                    (p, 0, d)
                }
                Sink::Vp8 { w, incomplete, .. } => {
                    let (f, d) = (w.frames, w.duration_ms());
                    if incomplete > 0 {
                        note = Some(format!("{incomplete} incomplete frames left out"));
                    }
                    if let Err(e) = w.finish() {
                        note = Some(format!("not finished: {e}"));
                    }
                    (f, f, d)
                }
            };
            let bytes = file
                .as_ref()
                .and_then(|f| std::fs::metadata(dir.join(f)).ok())
                .map_or(0, |m| m.len());
            out.push(RecordedFile {
                producer_id: info.producer_id.clone(),
                participant: info.participant.clone(),
                kind: info.kind,
                source: info.source,
                // What the file holds: RED is written as the Opus inside it.
                mime_type: if info.mime_type.eq_ignore_ascii_case(crate::red::MIME_TYPE) {
                    "audio/opus".into()
                } else {
                    info.mime_type.clone()
                },
                file: file.clone(),
                packets_received: *packets_in,
                packets_written: packets,
                frames,
                duration_ms,
                offset_ms: first_at
                    .map(|a| a.saturating_duration_since(self.started).as_millis() as u64),
                bytes,
                late_packets: reorder.late,
                note,
            });
        }
        out
    }
}

fn create(dir: &Path, name: &str) -> std::io::Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(
        64 * 1024,
        File::create(dir.join(name))?,
    ))
}

/// Write one in-order packet of a track to its file (opening the file on the first one).
fn write(
    dir: &Path,
    info: &TrackInfo,
    file: &mut Option<String>,
    sink: &mut Sink,
    first_at: &mut Option<Instant>,
    p: Pkt,
    gap: bool,
) -> std::io::Result<()> {
    if let Sink::Pending = sink {
        let mime = info.mime_type.to_ascii_lowercase();
        let safe: String = info
            .producer_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        *sink = if mime == "audio/opus" || mime == crate::red::MIME_TYPE {
            let name = format!("{safe}.opus");
            let out = create(dir, &name)?;
            *file = Some(name);
            let serial = rand::random::<u32>();
            Sink::Opus {
                w: ogg::OggOpusWriter::new(out, info.channels.clamp(1, 2) as u8, serial)?,
                ts: Unwrap::default(),
                base: 0,
                red: mime == crate::red::MIME_TYPE,
            }
        } else if mime == "video/vp8" {
            let name = format!("{safe}.ivf");
            let out = create(dir, &name)?;
            *file = Some(name);
            Sink::Vp8 {
                w: ivf::IvfWriter::new(out)?,
                ts: Unwrap::default(),
                base: None,
                frame: Vec::with_capacity(64 * 1024),
                frame_ts: 0,
                in_frame: false,
                broken: false,
                started: false,
                incomplete: 0,
                wants_keyframe: false,
                waiting_since: None,
            }
        } else {
            Sink::Skipped(format!(
                "{} is not recorded (audio is recorded as Opus, video as VP8)",
                info.mime_type
            ))
        };
    }
    match sink {
        Sink::Pending | Sink::Skipped(_) => Ok(()),
        Sink::Opus { w, ts, base, red } => {
            let payload = if *red {
                match crate::red::primary(&p.payload) {
                    Some((at, _)) => &p.payload[at..],
                    None => return Ok(()),
                }
            } else {
                &p.payload[..]
            };
            let ext = ts.extend(p.ts, 32);
            if w.packets == 0 {
                *base = ext;
                first_at.get_or_insert(p.at);
            }
            if ext < *base {
                return Ok(());
            }
            let samples = ogg::opus_samples(payload).unwrap_or(960);
            let end = (ext - *base) as u64 * 48_000 / u64::from(info.clock_rate.max(1)) + samples;
            w.write_packet(payload, end)
        }
        Sink::Vp8 {
            w,
            ts,
            base,
            frame,
            frame_ts,
            in_frame,
            broken,
            started,
            incomplete,
            wants_keyframe,
            waiting_since,
        } => {
            let ext = ts.extend(p.ts, 32);
            if !*started {
                // No keyframe yet: the first request may have been lost; ask again now and then.
                let since = *waiting_since.get_or_insert(p.at);
                if p.at.saturating_duration_since(since) >= KEYFRAME_RETRY {
                    *wants_keyframe = true;
                }
            }
            let Some(desc) = crate::vp8::parse(&p.payload) else {
                *broken = true;
                return Ok(());
            };
            if gap {
                *broken = true;
            }
            if *in_frame && ext != *frame_ts {
                // The previous frame never got its last packet.
                *incomplete += 1;
                *in_frame = false;
                *wants_keyframe = true;
            }
            if desc.frame_start {
                if !*started && !desc.keyframe {
                    // The file starts with a keyframe (one is asked for when recording starts).
                    *in_frame = false;
                    return Ok(());
                }
                frame.clear();
                *in_frame = true;
                *broken = false;
                *frame_ts = ext;
            } else if !*in_frame {
                return Ok(());
            }
            frame.extend_from_slice(&p.payload[desc.header_len.min(p.payload.len())..]);
            if p.marker {
                *in_frame = false;
                if *broken {
                    // Left out; the frames after it refer to it, so the picture recovers at the next keyframe.
                    *incomplete += 1;
                    *wants_keyframe = true;
                    return Ok(());
                }
                let b = *base.get_or_insert(*frame_ts);
                if !*started {
                    first_at.get_or_insert(p.at);
                }
                *started = true;
                let pts = (*frame_ts - b).max(0) as u64 * 1000 / u64::from(info.clock_rate.max(1));
                w.write_frame(frame, pts)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp8_packet(seq: u16, ts: u32, start: bool, key: bool, marker: bool) -> rtc::rtp::Packet {
        let mut payload = vec![if start { 0x90 } else { 0x80 }, 0x80, 0x80, seq as u8];
        if start {
            payload.extend_from_slice(&[u8::from(!key), 0x02, 0x00]);
            if key {
                payload.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
            }
        }
        payload.extend_from_slice(&[0x55; 100]);
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                sequence_number: seq,
                timestamp: ts,
                marker,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        }
    }

    #[test]
    fn a_lost_keyframe_packet_asks_for_another_and_the_file_starts_at_a_whole_one() {
        let (dir, rec, mut ended) = start_in_temp("giaoban-rec-kf");
        let tap = rec.tap(7, track("p1-1", "video/VP8"));
        let now = Instant::now();
        // A keyframe of 3 packets whose middle one never comes (65 later packets give it up), then inter frames.
        let mut seq = 100u16;
        let mut ts = 9000u32;
        assert!(tap.packet(&vp8_packet(seq, ts, true, true, false), now));
        seq += 2;
        assert!(tap.packet(&vp8_packet(seq, ts, false, false, true), now));
        for _ in 0..70 {
            seq += 1;
            ts += 3000;
            assert!(tap.packet(&vp8_packet(seq, ts, true, false, true), now));
        }
        let asked = wait_for(|| rec.keyframes_wanted().next());
        assert_eq!(asked, Some(7), "the writer asks for a keyframe");
        // The keyframe comes whole, then two inter frames.
        for (start, key, marker) in [(true, true, false), (false, false, true)] {
            seq += 1;
            assert!(tap.packet(&vp8_packet(seq, ts + 3000, start, key, marker), now));
        }
        ts += 3000;
        for _ in 0..2 {
            seq += 1;
            ts += 3000;
            assert!(tap.packet(&vp8_packet(seq, ts, true, false, true), now));
        }
        drop(tap);
        drop(rec);
        let Some(Event::RecordingEnded { files, error, .. }) = ended.blocking_recv() else {
            panic!("no report");
        };
        assert_eq!(error, None);
        assert_eq!(files[0].frames, 3, "{files:?}");
        let bytes = std::fs::read(dir.join("p1-1.ivf")).expect("file");
        // The first frame in the file is the keyframe (P bit 0, start code).
        assert_eq!(
            &bytes[32 + 12..32 + 12 + 6],
            &[0x00, 0x02, 0x00, 0x9d, 0x01, 0x2a]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn red_audio_is_recorded_as_the_opus_inside_it() {
        let (dir, rec, mut ended) = start_in_temp("giaoban-rec-red");
        let tap = rec.tap(3, track("p1-0", "audio/red"));
        let now = Instant::now();
        // Ten packets: the previous frame (bytes 0x5_) as redundancy, then the current one (0xa_).
        let frame = |i: u8, fill: u8| {
            let mut f = vec![0xfc];
            f.extend_from_slice(&[fill + i; 40]);
            f
        };
        for i in 0..10u8 {
            let mut payload = Vec::new();
            let previous = (i > 0).then(|| frame(i - 1, 0x50));
            let blocks: Vec<(u8, u16, &[u8])> =
                previous.iter().map(|p| (111, 960, &p[..])).collect();
            crate::red::write(&mut payload, &blocks, 111, &frame(i, 0xa0));
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 63,
                    sequence_number: 500 + u16::from(i),
                    timestamp: 48_000 + 960 * u32::from(i),
                    ..Default::default()
                },
                payload: Bytes::from(payload),
            };
            assert!(tap.packet(&packet, now));
        }
        drop(tap);
        drop(rec);
        let Some(Event::RecordingEnded { files, error, .. }) = ended.blocking_recv() else {
            panic!("no report");
        };
        assert_eq!(error, None);
        assert_eq!(files[0].mime_type, "audio/opus", "{files:?}");
        assert_eq!(files[0].packets_written, 10, "{files:?}");
        assert_eq!(files[0].duration_ms, 200, "{files:?}");
        let bytes = std::fs::read(dir.join("p1-0.opus")).expect("file");
        let has = |run: &[u8]| bytes.windows(run.len()).any(|w| w == run);
        for i in 0..10u8 {
            assert!(has(&frame(i, 0xa0)), "primary {i} written");
            assert!(!has(&[0x50 + i; 40]), "redundant copy {i} left out");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
        for _ in 0..200 {
            if let Some(v) = f() {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The worker's added cost per packet while recording: `cargo test --release -p giaoban-sfu tap_cost --
    /// --ignored --nocapture`. Prints ns per `Tap::packet` with the writer keeping up (paced in bursts that fit
    /// the queue) and with the queue full (the drop path).
    #[test]
    #[ignore]
    fn tap_cost() {
        let (dir, rec, mut ended) = start_in_temp("giaoban-tap-cost");
        let tap = rec.tap(1, track("p1-0", "audio/opus"));
        let mut packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 111,
                ssrc: 1,
                ..Default::default()
            },
            payload: Bytes::from(vec![0xf8u8; 100]),
        };
        let now = Instant::now();
        let bursts = 200;
        let burst = QUEUE / 2;
        let mut spent = Duration::ZERO;
        for _ in 0..bursts {
            let t = Instant::now();
            for _ in 0..burst {
                packet.header.sequence_number = packet.header.sequence_number.wrapping_add(1);
                packet.header.timestamp = packet.header.timestamp.wrapping_add(960);
                assert!(tap.packet(&packet, now));
            }
            spent += t.elapsed();
            // Let the writer drain.
            while rec.dropped.load(Ordering::Relaxed) == 0 && !queue_empty(&rec) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let n = (bursts * burst) as f64;
        println!(
            "queued: {:.1} ns per packet over {n} packets ({} dropped)",
            spent.as_nanos() as f64 / n,
            rec.dropped.load(Ordering::Relaxed)
        );
        // Fill the queue, then time the drop path.
        while rec
            .tx
            .try_send(Item::Track(9, Box::new(track("x", "video/H264"))))
            .is_ok()
        {}
        let t = Instant::now();
        for _ in 0..1_000_000 {
            tap.packet(&packet, now);
        }
        println!(
            "queue full: {:.1} ns per packet",
            t.elapsed().as_nanos() as f64 / 1e6
        );
        drop(tap);
        drop(rec);
        let ended = ended.blocking_recv().expect("ended");
        if let Event::RecordingEnded { files, .. } = ended {
            println!("{files:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A recording started in a fresh folder under the temporary directory, and the receiver of its report.
    fn start_in_temp(
        tag: &str,
    ) -> (
        PathBuf,
        Recording,
        tokio::sync::mpsc::UnboundedReceiver<Event>,
    ) {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (events, ended) = tokio::sync::mpsc::unbounded_channel();
        let rec = Recording::start("r".into(), dir.clone(), events).expect("start");
        (dir, rec, ended)
    }

    /// Participant `p1`'s producer `producer_id` of `mime`: a camera at 90 kHz, or a stereo microphone at 48 kHz.
    fn track(producer_id: &str, mime: &str) -> TrackInfo {
        let video = mime.starts_with("video/");
        TrackInfo {
            producer_id: producer_id.into(),
            participant: "p1".into(),
            kind: if video {
                MediaKind::Video
            } else {
                MediaKind::Audio
            },
            source: if video {
                MediaSource::Camera
            } else {
                MediaSource::Microphone
            },
            mime_type: mime.into(),
            clock_rate: if video { 90_000 } else { 48_000 },
            channels: if video { 0 } else { 2 },
        }
    }

    /// Whether the writer has taken everything (probe: one Track item fits and is taken).
    fn queue_empty(rec: &Recording) -> bool {
        // A probe item for an unknown-to-packets track; the writer just registers it.
        rec.tx
            .try_send(Item::Track(8, Box::new(track("x", "video/H264"))))
            .is_ok()
            && {
                std::thread::sleep(Duration::from_millis(20));
                true
            }
    }

    #[test]
    fn unwrap_extends_across_wrap_and_back() {
        let mut u = Unwrap::default();
        assert_eq!(u.extend(65534, 16), 65534);
        assert_eq!(u.extend(1, 16), 65537);
        assert_eq!(u.extend(65535, 16), 65535);
        let mut t = Unwrap::default();
        assert_eq!(t.extend(u32::MAX - 959, 32), i64::from(u32::MAX - 959));
        assert_eq!(t.extend(0, 32), i64::from(u32::MAX) + 1);
    }

    fn pkt(ts: u32) -> Pkt {
        Pkt {
            ts,
            marker: false,
            payload: Bytes::new(),
            at: Instant::now(),
        }
    }

    #[test]
    fn reorder_restores_order_and_gives_up_on_loss() {
        let mut r = Reorder::new(3);
        let mut out = Vec::new();
        let mut emit = |p: Pkt, gap: bool| {
            out.push((p.ts, gap));
            Ok(())
        };
        for s in [10u16, 12, 11, 13] {
            r.push(s, pkt(u32::from(s)), &mut emit).expect("ok");
        }
        // 15..18 arrive, 14 never does: given up once more than 3 wait.
        for s in [15u16, 16, 17, 18] {
            r.push(s, pkt(u32::from(s)), &mut emit).expect("ok");
        }
        r.push(11, pkt(11), &mut emit).expect("late one ignored");
        assert_eq!(
            out,
            vec![
                (10, false),
                (11, false),
                (12, false),
                (13, false),
                (15, true),
                (16, false),
                (17, false),
                (18, false)
            ]
        );
        assert_eq!(r.late, 1);
    }
}
