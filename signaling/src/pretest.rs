//! The pre-meeting connection test (họp thử): a hall opens `/test?token=…` with its join link before the meeting.
//! The page sends `join_test` instead of `join`; the Hub puts the participant alone in a private room
//! (`test:<participant id>`) whose media plane echoes its own tracks back, so the browser measures real WebRTC
//! both ways (RTT, loss, jitter, bitrate up and down) and checks its camera and microphone. It sends the figures
//! in `test_result`; the server checks them, adds its own view of the same connection, grades everything against
//! the `[health]` thresholds (the same as the live board's), stores the result and answers `test_verdict`.
//! A test is not in the meeting: no attendance row, not in the room list, not seen by the chair.

use crate::links::{grade_above, grade_below};
use crate::protocol::{DeviceCheck, Finding, Measure, QualityLevel, TestReport};
use giaoban_config::HealthConfig;
use giaoban_sfu::ParticipantLinks;
use std::time::{Duration, Instant};

/// Room keys of connection tests start with this (meeting ids never do; open rooms may not).
pub const TEST_ROOM_PREFIX: &str = "test:";

/// Connection tests running at once (each sends and receives up to 2.5 Mbit/s); more are refused with
/// `rate_limited` so that tests cannot crowd out a meeting.
pub const MAX_CONCURRENT_TESTS: usize = 20;

/// Results one test connection may store (a page sends one; more is a loop or abuse).
pub const MAX_RESULTS_PER_TEST: u32 = 5;

/// How far back the server's own bitrate of a test looks: about the page's measuring window.
pub const SERVER_WINDOW: Duration = Duration::from_secs(9);

/// A connection test in progress (kept by the Hub per participant id).
#[derive(Debug, Clone)]
pub struct TestSession {
    pub meeting_id: String,
    pub results: u32,
    /// The connection's byte counters every few seconds (when, received from the page, sent to it), oldest first,
    /// so the server's bitrate covers the page's measuring window rather than the last second.
    pub samples: std::collections::VecDeque<(Instant, u64, u64)>,
}

impl TestSession {
    pub fn new(meeting_id: String) -> Self {
        TestSession {
            meeting_id,
            results: 0,
            samples: Default::default(),
        }
    }

    /// Remember the counters of the test connection (called every couple of seconds).
    pub fn note(&mut self, l: &ParticipantLinks, now: Instant) {
        let (bytes_in, bytes_out) = bytes(l);
        self.samples.push_back((now, bytes_in, bytes_out));
        while self.samples.len() > 8 {
            self.samples.pop_front();
        }
    }

    /// The oldest sample within `SERVER_WINDOW` that is at least 3 s old.
    pub fn window_start(&self, now: Instant) -> Option<(Instant, u64, u64)> {
        self.samples.iter().copied().find(|(at, _, _)| {
            let age = now.saturating_duration_since(*at);
            age <= SERVER_WINDOW && age >= Duration::from_secs(3)
        })
    }
}

fn bytes(l: &ParticipantLinks) -> (u64, u64) {
    (
        l.publish.as_ref().map_or(0, |h| h.traffic.bytes_in),
        l.subscribe.as_ref().map_or(0, |h| h.traffic.bytes_out),
    )
}

/// Whether a room key is a connection test's private room.
pub fn is_test_room(room: &str) -> bool {
    room.starts_with(TEST_ROOM_PREFIX)
}

/// The server's own measurements of a test connection when the result arrives (the page is still sending then):
/// bitrates over about the page's measuring window, loss and jitter from rtc's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerView {
    /// Received from the browser, kbit/s.
    pub up_kbps: Option<f64>,
    /// Sent to the browser, kbit/s.
    pub down_kbps: Option<f64>,
    /// Loss of what the browser sent, percent (from the server's inbound streams).
    pub loss_up_percent: Option<f64>,
    /// Jitter of the audio the browser sent, ms.
    pub jitter_ms: Option<f64>,
}

impl ServerView {
    /// The server's view now; bitrates over the window since `start` (a `TestSession` sample) when there is one,
    /// else the last second's.
    pub fn over(l: &ParticipantLinks, start: Option<(Instant, u64, u64)>, now: Instant) -> Self {
        let mut v = Self::of(l);
        if let Some((at, bytes_in, bytes_out)) = start {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            let (cur_in, cur_out) = bytes(l);
            if secs > 0.0 {
                let kbps = |d: u64| (d as f64 * 8.0 / secs / 100.0).round() / 10.0;
                v.up_kbps = Some(kbps(cur_in.saturating_sub(bytes_in)));
                v.down_kbps = Some(kbps(cur_out.saturating_sub(bytes_out)));
            }
        }
        v
    }

    pub fn of(l: &ParticipantLinks) -> Self {
        ServerView {
            up_kbps: l
                .publish
                .as_ref()
                .map(|h| h.traffic.bitrate_in as f64 / 1000.0),
            down_kbps: l
                .subscribe
                .as_ref()
                .map(|h| h.traffic.bitrate_out as f64 / 1000.0),
            loss_up_percent: l
                .publish
                .as_ref()
                .and_then(|h| h.stats.loss_in)
                .map(|f| f * 100.0),
            jitter_ms: l.publish.as_ref().and_then(|h| h.stats.audio_jitter_ms),
        }
    }
}

/// Check the browser's figures: each present figure a finite number in its range. The error names the field.
pub fn validate(r: &TestReport) -> Result<(), String> {
    let checks = [
        ("rtt_ms", r.rtt_ms, 60_000.0, "ms"),
        ("loss_up_percent", r.loss_up_percent, 100.0, "%"),
        ("loss_down_percent", r.loss_down_percent, 100.0, "%"),
        ("jitter_ms", r.jitter_ms, 60_000.0, "ms"),
        ("up_kbps", r.up_kbps, 1_000_000.0, "kbit/s"),
        ("down_kbps", r.down_kbps, 1_000_000.0, "kbit/s"),
    ];
    for (field, value, max, unit) in checks {
        if let Some(v) = value
            && (!v.is_finite() || !(0.0..=max).contains(&v))
        {
            return Err(format!(
                "test_result.result.{field} must be between 0 and {max} {unit}, not {v}"
            ));
        }
    }
    Ok(())
}

fn max_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Grade every measure and the whole: the worst grade. A figure that could not be measured is fair (RTT, loss,
/// jitter) or poor (bitrate: nothing went through); a camera or microphone that does not work is poor.
pub fn grade(
    r: &TestReport,
    server: &ServerView,
    h: &HealthConfig,
) -> (QualityLevel, Vec<Finding>) {
    let above = |measure, value: Option<f64>, fair, poor| Finding {
        measure,
        value,
        level: value.map_or(QualityLevel::Fair, |v| grade_above(v, fair, poor)),
    };
    let below = |measure, value: Option<f64>| Finding {
        measure,
        value,
        level: value.map_or(QualityLevel::Poor, |v| {
            grade_below(v, h.fair_bitrate_kbps, h.poor_bitrate_kbps)
        }),
    };
    let device = |measure, check: DeviceCheck| Finding {
        measure,
        value: None,
        level: if check == DeviceCheck::Ok {
            QualityLevel::Good
        } else {
            QualityLevel::Poor
        },
    };
    // Upload: what reached the server (its own count), else what the browser says it sent.
    let up = server.up_kbps.filter(|v| *v > 0.0).or(r.up_kbps);
    let findings = vec![
        above(Measure::Rtt, r.rtt_ms, h.fair_rtt_ms, h.poor_rtt_ms),
        above(
            Measure::LossUp,
            max_of(r.loss_up_percent, server.loss_up_percent),
            h.fair_loss_percent,
            h.poor_loss_percent,
        ),
        above(
            Measure::LossDown,
            r.loss_down_percent,
            h.fair_loss_percent,
            h.poor_loss_percent,
        ),
        above(
            Measure::Jitter,
            max_of(r.jitter_ms, server.jitter_ms),
            h.fair_jitter_ms,
            h.poor_jitter_ms,
        ),
        below(Measure::Upload, up),
        below(Measure::Download, r.down_kbps),
        device(Measure::Camera, r.camera),
        device(Measure::Microphone, r.microphone),
    ];
    let verdict = findings
        .iter()
        .map(|f| f.level)
        .max()
        .unwrap_or(QualityLevel::Good);
    (verdict, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> TestReport {
        TestReport {
            rtt_ms: Some(12.0),
            loss_up_percent: Some(0.0),
            loss_down_percent: Some(0.1),
            jitter_ms: Some(4.0),
            up_kbps: Some(2500.0),
            down_kbps: Some(2400.0),
            camera: DeviceCheck::Ok,
            microphone: DeviceCheck::Ok,
        }
    }

    fn level_of(findings: &[Finding], m: Measure) -> QualityLevel {
        findings
            .iter()
            .find(|f| f.measure == m)
            .map(|f| f.level)
            .expect("graded")
    }

    #[test]
    fn a_good_link_is_good() {
        let (v, f) = grade(&report(), &ServerView::default(), &HealthConfig::default());
        assert_eq!(v, QualityLevel::Good, "{f:?}");
        assert_eq!(f.len(), 8);
    }

    #[test]
    fn each_measure_is_graded_against_the_config() {
        let h = HealthConfig::default();
        let mut r = report();
        r.rtt_ms = Some(250.0);
        let (v, f) = grade(&r, &ServerView::default(), &h);
        assert_eq!(v, QualityLevel::Fair);
        assert_eq!(level_of(&f, Measure::Rtt), QualityLevel::Fair);

        // The server saw less arrive than the browser claims it sent: the server's figure counts.
        let server = ServerView {
            up_kbps: Some(200.0),
            loss_up_percent: Some(7.0),
            ..Default::default()
        };
        let (v, f) = grade(&report(), &server, &h);
        assert_eq!(v, QualityLevel::Poor);
        assert_eq!(level_of(&f, Measure::Upload), QualityLevel::Poor);
        assert_eq!(level_of(&f, Measure::LossUp), QualityLevel::Poor);
        assert_eq!(
            f.iter()
                .find(|x| x.measure == Measure::Upload)
                .and_then(|x| x.value),
            Some(200.0)
        );

        let mut r = report();
        r.down_kbps = Some(600.0);
        r.microphone = DeviceCheck::NoSignal;
        let (v, f) = grade(&r, &ServerView::default(), &h);
        assert_eq!(v, QualityLevel::Poor);
        assert_eq!(level_of(&f, Measure::Download), QualityLevel::Fair);
        assert_eq!(level_of(&f, Measure::Microphone), QualityLevel::Poor);
        assert_eq!(level_of(&f, Measure::Camera), QualityLevel::Good);

        // Stricter limits from config turn the same figures amber.
        let strict = HealthConfig {
            fair_rtt_ms: 10.0,
            poor_rtt_ms: 100.0,
            ..HealthConfig::default()
        };
        let (v, _) = grade(&report(), &ServerView::default(), &strict);
        assert_eq!(v, QualityLevel::Fair);
    }

    #[test]
    fn server_bitrate_covers_the_window() {
        use giaoban_sfu::LinkHealth;
        let links = |bytes_in: u64, rate_in: u64| ParticipantLinks {
            participant: "p".into(),
            room: "test:p".into(),
            publish: Some(LinkHealth {
                traffic: giaoban_sfu::health::Traffic {
                    bytes_in,
                    bitrate_in: rate_in,
                    ..Default::default()
                },
                ..Default::default()
            }),
            subscribe: None,
            screen: None,
            estimate: None,
            transport_cc: None,
            producers: Vec::new(),
            consumers: Vec::new(),
        };
        let t0 = Instant::now();
        let mut t = TestSession::new("m".into());
        t.note(&links(0, 0), t0);
        t.note(&links(1_000_000, 0), t0 + Duration::from_secs(4));
        t.note(&links(2_000_000, 0), t0 + Duration::from_secs(8));
        let now = t0 + Duration::from_secs(10);
        // 1.5 MB over the 6 s since the oldest sample within the window = 2000 kbit/s, whatever the last
        // second's rate (here 500 kbit/s).
        let start = t.window_start(now);
        assert_eq!(
            start.map(|s| s.0),
            Some(t0 + Duration::from_secs(4)),
            "oldest within 9 s"
        );
        let v = ServerView::over(&links(2_500_000, 500_000), start, now);
        assert_eq!(v.up_kbps, Some(1500.0 * 8.0 / 6.0));
        let v = ServerView::over(&links(2_500_000, 500_000), None, now);
        assert_eq!(v.up_kbps, Some(500.0));
    }

    #[test]
    fn unmeasured_figures() {
        let mut r = report();
        r.rtt_ms = None;
        r.down_kbps = None;
        let (v, f) = grade(&r, &ServerView::default(), &HealthConfig::default());
        assert_eq!(level_of(&f, Measure::Rtt), QualityLevel::Fair);
        assert_eq!(level_of(&f, Measure::Download), QualityLevel::Poor);
        assert_eq!(v, QualityLevel::Poor);
    }

    #[test]
    fn bad_figures_are_refused_by_name() {
        assert!(validate(&report()).is_ok());
        let mut r = report();
        r.loss_up_percent = Some(140.0);
        let e = validate(&r).expect_err("loss above 100");
        assert!(e.contains("loss_up_percent") && e.contains("140"), "{e}");
        let mut r = report();
        r.rtt_ms = Some(-3.0);
        assert!(validate(&r).expect_err("negative").contains("rtt_ms"));
        let mut r = report();
        r.up_kbps = Some(f64::INFINITY);
        assert!(validate(&r).expect_err("infinite").contains("up_kbps"));
    }

    #[test]
    fn report_shape_is_strict() {
        let ok = r#"{"type":"test_result","result":{"rtt_ms":3,"camera":"ok","microphone":"no_signal"}}"#;
        assert!(serde_json::from_str::<crate::protocol::ClientMessage>(ok).is_ok());
        let typo = r#"{"type":"test_result","result":{"rtt":3,"camera":"ok","microphone":"ok"}}"#;
        let e = serde_json::from_str::<crate::protocol::ClientMessage>(typo)
            .expect_err("unknown field");
        assert!(e.to_string().contains("rtt"), "{e}");
        let device = r#"{"type":"test_result","result":{"camera":"broken","microphone":"ok"}}"#;
        assert!(serde_json::from_str::<crate::protocol::ClientMessage>(device).is_err());
        let text =
            r#"{"type":"test_result","result":{"rtt_ms":"fast","camera":"ok","microphone":"ok"}}"#;
        assert!(serde_json::from_str::<crate::protocol::ClientMessage>(text).is_err());
    }
}
