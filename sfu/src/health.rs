//! Link health of each connection: counted on the way through the worker (packets and bytes, no allocation),
//! turned into rates once a second, and completed with what rtc's statistics know (loss, jitter, round-trip
//! time from RTCP reports). Reading rtc's statistics walks the whole connection, so the worker refreshes a few
//! connections per tick rather than all of them at once (a full sweep stalled forwarding at N = 150).

use rtc::peer_connection::RTCPeerConnection;
use rtc::statistics::StatsSelector;
use std::time::{Duration, Instant};

/// Traffic through one connection: totals, and bits per second over the last rate window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub bitrate_in: u64,
    pub bitrate_out: u64,
}

/// Counters of one connection, updated on the media path.
#[derive(Debug, Clone, Default)]
pub struct LinkCounters {
    pub traffic: Traffic,
    window_start: Option<(Instant, u64, u64)>,
}

/// How often rates are recomputed.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

impl LinkCounters {
    pub fn received(&mut self, bytes: usize) {
        self.traffic.packets_in += 1;
        self.traffic.bytes_in += bytes as u64;
    }

    pub fn sent(&mut self, bytes: usize) {
        self.traffic.packets_out += 1;
        self.traffic.bytes_out += bytes as u64;
    }

    /// Recompute the rates if a window has passed.
    pub fn update_rates(&mut self, now: Instant) {
        let t = &mut self.traffic;
        match self.window_start {
            None => self.window_start = Some((now, t.bytes_in, t.bytes_out)),
            Some((start, bin, bout)) => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= RATE_WINDOW {
                    let secs = elapsed.as_secs_f64();
                    t.bitrate_in = ((t.bytes_in - bin) as f64 * 8.0 / secs) as u64;
                    t.bitrate_out = ((t.bytes_out - bout) as f64 * 8.0 / secs) as u64;
                    self.window_start = Some((now, t.bytes_in, t.bytes_out));
                }
            }
        }
    }
}

/// A subscribe leg's transport-wide CC: feedback packets read, packets they reported, and the last padding probe.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TransportCcHealth {
    pub feedbacks: u64,
    pub reported: u64,
    pub last_probe: Option<ProbeHealth>,
}

/// What a padding probe of a downlink met: the rate it was sent at and arrived at (bit/s), the share lost, its
/// packets, and whether the link carried it (the layers it stood for were then chosen).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProbeHealth {
    pub sent_bps: u64,
    pub received_bps: u64,
    pub loss: f64,
    pub packets: u32,
    pub carried: bool,
}

/// What is known of one connection's link, for the API and the client's quality indicator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkHealth {
    pub state: String,
    pub traffic: Traffic,
    pub stats: RtcLinkStats,
    pub connected_for: Option<Duration>,
}

/// What rtc's statistics add to the counters (refreshed a few connections at a time).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RtcLinkStats {
    /// Fraction (0..1) of the peer's packets lost on the way to the server (publish leg).
    pub loss_in: Option<f64>,
    /// Fraction (0..1) of the server's packets the peer reports lost (subscribe leg): the worse of its receiver
    /// reports and its NACKs over the last loss window (retransmissions hide random loss from the reports).
    pub loss_out: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// Jitter of the audio the server receives (publish leg), ms: what voice suffers from. Video's inbound jitter
    /// is inflated by paced frames (a large frame leaves the sender over tens of ms under one timestamp), so the
    /// verdict grades audio only.
    pub audio_jitter_ms: Option<f64>,
    /// From rtc's statistics when it measures it (rtc 0.21 does not); the worker fills it from its own measurement
    /// (`rtt_from_report`) when it builds the link health.
    pub rtt_ms: Option<f64>,
    /// NACKs this connection's peer sent us about what we send it (a subscriber asking for retransmissions).
    pub nacks_received: u64,
    /// NACKs we sent the peer about what it sends us (asking a publisher for packets lost on the way in).
    pub nacks_sent: u64,
}

/// One simulcast layer (or the one stream of a producer without simulcast) as it arrives at the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerHealth {
    /// The rid (`q`, `h`, `f`), empty without simulcast.
    pub rid: String,
    pub ssrc: u32,
    pub packets: u64,
    pub bytes: u64,
    /// Bit/s over the last rate window.
    pub bitrate: u64,
    /// Whether the publisher was told to stop sending it (nobody receives it).
    pub paused: bool,
}

/// One producer of a participant with its layers, smallest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerHealth {
    pub track_id: String,
    pub kind: crate::api::MediaKind,
    /// Audio: the smoothed RFC 6464 level of what arrives, dBov (−127 silence … 0 loudest); `None` when the
    /// publisher does not send the extension (or before its first packet).
    pub audio_level: Option<i8>,
    pub layers: Vec<LayerHealth>,
}

/// One track a participant receives and, for video, the layer the server chose for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerHealth {
    pub track_id: String,
    pub kind: crate::api::MediaKind,
    /// RTP packets forwarded to it (retransmissions not counted).
    pub packets: u64,
    /// The rid being forwarded now (`None`: nothing yet, or paused).
    pub layer: Option<String>,
    /// The rid the server is switching to (equal to `layer` once switched).
    pub target: Option<String>,
    /// Paused because the link cannot carry even the lowest layer.
    pub paused: bool,
    /// The tile size the client reported (CSS pixels).
    pub tile: Option<(u32, u32)>,
    /// The cap set by the chair or IT (layer index).
    pub cap: Option<u8>,
}

/// Seconds between the NTP era (1900) and the Unix epoch.
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// A wall-clock time as a 64-bit NTP timestamp (seconds since 1900 in the high 32 bits, the fraction below), as
/// sender reports carry it.
pub fn ntp_now(now: std::time::SystemTime) -> u64 {
    let since_unix = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_unix.as_secs() + NTP_UNIX_OFFSET_SECS;
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The round trip from a receiver report about a stream we send (RFC 3550 §6.4.1): the report's `lsr` (middle 32
/// bits of the NTP time of our last sender report) and `dlsr` (delay since then at the receiver, 1/65536 s),
/// against the wall clock `now` at arrival. `None` without a sender report yet (`lsr == 0`) or if the result is
/// not a plausible round trip (clock step).
pub fn rtt_from_report(now: std::time::SystemTime, lsr: u32, dlsr: u32) -> Option<f64> {
    if lsr == 0 {
        return None;
    }
    let middle = (ntp_now(now) >> 16) as u32;
    let rtt = middle.wrapping_sub(lsr).wrapping_sub(dlsr);
    // More than a minute is a wrapped negative (the report arrived "before" it was sent: clocks moved).
    (rtt < 60 << 16).then(|| f64::from(rtt) * 1000.0 / 65536.0)
}

/// Read loss, jitter and RTT from rtc's statistics (never per packet).
pub fn read_rtc_stats(pc: &mut RTCPeerConnection, now: Instant) -> RtcLinkStats {
    let report = pc.get_stats(now, StatsSelector::None);
    let mut received = 0i64;
    let mut lost = 0i64;
    let mut jitter: Option<f64> = None;
    let mut audio_jitter: Option<f64> = None;
    for s in report.inbound_rtp_streams() {
        let r = &s.received_rtp_stream_stats;
        received += r.packets_received as i64;
        lost += r.packets_lost.max(0);
        jitter = Some(jitter.unwrap_or(0.0).max(jitter_ms(r)));
        if r.rtp_stream_stats.kind == rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio {
            audio_jitter = Some(audio_jitter.unwrap_or(0.0).max(jitter_ms(r)));
        }
    }
    let nacks_sent = report
        .inbound_rtp_streams()
        .map(|s| u64::from(s.nack_count))
        .sum();
    let nacks_received = report
        .outbound_rtp_streams()
        .map(|s| u64::from(s.nack_count))
        .sum();
    let mut fractions = Vec::new();
    let mut rtt: Option<f64> = None;
    for entry in report.iter() {
        if let rtc::statistics::report::RTCStatsReportEntry::RemoteInboundRtp(s) = entry {
            fractions.push(s.fraction_lost);
            if s.round_trip_time_measurements > 0 {
                rtt = Some(rtt.unwrap_or(0.0).max(s.round_trip_time * 1000.0));
            }
            jitter = Some(
                jitter
                    .unwrap_or(0.0)
                    .max(s.received_rtp_stream_stats.jitter * 1000.0),
            );
        }
    }
    RtcLinkStats {
        loss_in: (received + lost > 0).then(|| lost as f64 / (received + lost) as f64),
        loss_out: (!fractions.is_empty())
            .then(|| fractions.iter().sum::<f64>() / fractions.len() as f64),
        jitter_ms: jitter,
        audio_jitter_ms: audio_jitter,
        rtt_ms: rtt,
        nacks_received,
        nacks_sent,
    }
}

/// rtc 0.21 reports jitter as RTCP carries it, in RTP clock ticks: milliseconds by the stream's clock rate.
fn jitter_ms(r: &rtc::statistics::stats::rtp_stream::received::RTCReceivedRtpStreamStats) -> f64 {
    let clock_rate = match r.rtp_stream_stats.kind {
        rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio => 48_000.0,
        _ => 90_000.0,
    };
    r.jitter / clock_rate * 1000.0
}

/// Put a connection's counters and its last rtc statistics together.
pub fn link_health(
    counters: &LinkCounters,
    stats: &RtcLinkStats,
    state: String,
    connected_since: Option<Instant>,
    now: Instant,
) -> LinkHealth {
    LinkHealth {
        state,
        traffic: counters.traffic,
        stats: *stats,
        connected_for: connected_since.map(|t| now.saturating_duration_since(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_the_window_on_a_virtual_clock() {
        let t0 = Instant::now();
        let mut c = LinkCounters::default();
        c.update_rates(t0);
        for _ in 0..100 {
            c.received(1000);
            c.sent(500);
        }
        c.update_rates(t0 + Duration::from_millis(500));
        assert_eq!(c.traffic.bitrate_in, 0, "window not over yet");
        c.update_rates(t0 + Duration::from_secs(1));
        assert_eq!(c.traffic.bitrate_in, 800_000);
        assert_eq!(c.traffic.bitrate_out, 400_000);
        assert_eq!((c.traffic.packets_in, c.traffic.bytes_in), (100, 100_000));
        // A silent second brings the rate to zero.
        c.update_rates(t0 + Duration::from_secs(2));
        assert_eq!(c.traffic.bitrate_in, 0);
    }
}

#[cfg(test)]
mod rtt_tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// The middle 32 bits of the NTP time of `t`, as a sender report's timestamp gives them to LSR.
    fn middle(t: SystemTime) -> u32 {
        let d = t.duration_since(std::time::UNIX_EPOCH).expect("after 1970");
        let secs = d.as_secs() + NTP_UNIX_OFFSET_SECS;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        (((secs & 0xffff) << 16) | (frac >> 16)) as u32
    }

    #[test]
    fn round_trip_is_arrival_minus_send_minus_the_receivers_delay() {
        let sent = SystemTime::now();
        // Out 20 ms, held 500 ms at the receiver (DLSR), back 20 ms: 40 ms of round trip.
        let dlsr = (0.5 * 65536.0) as u32;
        let arrival = sent + Duration::from_millis(540);
        let rtt = rtt_from_report(arrival, middle(sent), dlsr).expect("a round trip");
        assert!((rtt - 40.0).abs() < 0.1, "{rtt}");
        assert_eq!(
            rtt_from_report(arrival, 0, dlsr),
            None,
            "no sender report yet"
        );
        // A report that claims a longer hold than the time since our report: a clock step, not a round trip.
        assert_eq!(
            rtt_from_report(sent + Duration::from_millis(100), middle(sent), dlsr),
            None
        );
    }
}
