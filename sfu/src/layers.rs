//! Simulcast layer choice, as pure logic on a caller-given clock: the order of a producer's layers, a
//! subscriber's downlink estimate, and which layer each of its video consumers gets.
//!
//! A consumer's layer is the lowest of three limits: what its tile needs (the client reports how large it shows
//! the video), the cap set by the chair or IT for that subscriber, and its share of the subscriber's estimated
//! downlink. Below the lowest layer's need the consumer's video is paused (audio first) and resumes when the
//! estimate recovers. The worker applies the outcome; switching itself happens in the forwarder on a keyframe.

use std::time::{Duration, Instant};

/// Most layers a producer keeps (Chromium sends at most three: q, h, f).
pub const MAX_LAYERS: usize = 3;

/// Where a rid sits among the layers: lower is smaller. Chromium's q/h/f and common spellings are known; an
/// unknown rid sorts after the known ones in the order it arrived.
pub fn rid_rank(rid: &str) -> u8 {
    match rid.to_ascii_lowercase().as_str() {
        "q" | "l" | "low" | "lo" | "0" => 0,
        "h" | "m" | "mid" | "medium" | "1" => 1,
        "f" | "high" | "hi" | "2" => 2,
        _ => 3,
    }
}

/// What one layer costs when nothing has been measured yet (bit/s), by position. The web client asks for about
/// these (maxBitrate 150k / 500k / 1.2M).
pub fn nominal_bitrate(index: usize) -> u64 {
    match index {
        0 => 150_000,
        1 => 500_000,
        _ => 1_200_000,
    }
}

/// Width of the full (largest) layer assumed until a keyframe tells (the web client captures 960 × 540).
pub const NOMINAL_FULL_WIDTH: u32 = 960;

/// Each layer's width: measured (from keyframes) where known, else derived from the largest known one, or the
/// nominal capture, as Chromium scales (by 4, 2, 1 for three layers).
pub fn layer_widths(measured: &[u32]) -> [u32; MAX_LAYERS] {
    let n = measured.len().min(MAX_LAYERS);
    let mut out = [0; MAX_LAYERS];
    let full = (0..n)
        .rev()
        .find(|&i| measured[i] > 0)
        .map_or(NOMINAL_FULL_WIDTH, |i| measured[i] << (n - 1 - i));
    for i in 0..n {
        out[i] = if measured[i] > 0 {
            measured[i]
        } else {
            full >> (n - 1 - i)
        };
    }
    out
}

/// The layer a tile of `tile_width` pixels needs: the smallest layer at least that wide (the largest if none
/// is). `None` (no size reported yet) needs the largest; a hidden tile (width 0) the smallest.
pub fn layer_for_tile(tile_width: Option<u32>, widths: &[u32]) -> usize {
    let top = widths.len().saturating_sub(1);
    let Some(w) = tile_width else {
        return top;
    };
    widths.iter().position(|&lw| lw >= w).unwrap_or(top)
}

/// A subscriber's downlink estimate from what the server sees: the rate it delivered and the loss the
/// subscriber reports (receiver reports and NACKs; the loss-based half of GCC — rtc 0.21's delay-based GCC is
/// opt-in, runs on the sending side and does not probe). Loss reports come in bursts, so they are smoothed (each
/// new sample weighs 40 %). A link is taken as unconstrained until it loses packets — except a link padding can
/// probe ([`start`](Estimator::start)): it starts at `START_ESTIMATE` (300 kbit/s, libwebrtc's start rate) and is
/// probed at once for what its consumers want, so a commune hall's 300 kbit/s line gets q at join instead of f and
/// an overrun. Either way no video is paused before loss has cut the estimate
/// ([`may_pause`](Estimator::may_pause)).
///
/// Down: on heavy loss (a report of 25 % or more: the link is overrun), or loss that stays high (two reports in a
/// row above 10 %, or the smoothed loss above 10 % for a second — one moderately bad report, e.g. a CPU stall,
/// does not count), the estimate becomes what was being sent less half the loss (GCC's rule:
/// rate × (1 − loss / 2)), and is held for 2 s. "What was being sent" is the cost of the layers in use
/// ([`set_wanted`](Estimator::set_wanted)), not the bytes that left: those include retransmissions, which grow
/// many times over on an overrun link. Reports within 0.4 s of a cut do not cut again (they tell of the old
/// layers); a cut within 2 s of another keeps the lowest layers (the retransmissions of an overrun take seconds
/// to drain; the video pauses only if even the lowest layers keep losing after that). Moderate loss (under 25 %)
/// while what arrived covers what the chosen layers cost keeps the lowest layers too: that is random loss, not an
/// overrun.
///
/// Up: it grows by 8 % a second (at least 50 kbit/s a second) while loss stays under 2 % and the link is *steady*:
/// none of its last 12 reports lost 1 % or more, leaving out the second after a cut or a failed probe and reports
/// while retransmissions drain (more than three times the chosen layers' cost sent). A link that keeps losing at
/// random neither grows nor probes, as its loss would end each attempt at the audio's cost (a paused video grows
/// back without that condition, and with padding probes is probed without it). Growth alone would take tens of
/// seconds to climb from a commune link's 250 kbit/s back to a 1.2 Mbit/s layer. So it also *probes*: once a
/// steady link has been clean (every report under 1 % loss) for 0.7 s, and what the subscriber's consumers want
/// ([`set_wanted`](Estimator::set_wanted)) is more than the estimate, the estimate jumps to that want and a fifth more (a paused video: to its lowest layers) — the
/// consumers are switched up tentatively (the layers already reach the server, so the probe is real traffic).
/// A report of 5 % loss or more while probing falls back at once to the estimate before the probe (the next 1.5 s
/// of reports are the probe's aftermath), and the next probe waits 1 s, then 2 s after further failures; a probe
/// that loses nothing for 2 s is kept. A failed probe overruns the link for about a second, and the
/// retransmissions of what it lost for a few more: that, not the wait, is what bounds how soon an upgrade follows
/// a recovered link (see `tests/tests/impaired_links.rs`).
#[derive(Debug, Clone)]
pub struct Estimator {
    estimate: u64,
    last: Option<Instant>,
    /// No growth until then (after a cut).
    hold_until: Option<Instant>,
    /// Since when loss has been above `HIGH_LOSS` without a cut.
    high_since: Option<Instant>,
    /// Smoothed loss fraction.
    loss: Option<f64>,
    /// Whether the latest report was above `HIGH_LOSS`.
    last_high: bool,
    /// What the subscriber's consumers would take with no limit from the link (bit/s); 0 = unknown.
    wanted: u64,
    /// What the layers chosen for it cost (bit/s); 0 = unknown.
    in_use: u64,
    /// What its consumers' lowest layers need (bit/s, with the headroom a paused video needs to resume): below
    /// it, video pauses or stays paused.
    lowest: u64,
    /// Since when every report has been under `CLEAN_LOSS`.
    clean_since: Option<Instant>,
    /// The probe under way: when it started and the estimate before it.
    probe: Option<(Instant, u64)>,
    /// No probe before then (after a failed one).
    next_probe: Option<Instant>,
    /// Probes that failed in a row.
    failed_probes: u32,
    /// After a failed probe, reports until then still tell of the probe's own packets: no cut for them.
    grace_until: Option<Instant>,
    /// When the estimate was last cut: the reports right after it still tell of the layers before.
    cut_at: Option<Instant>,
    /// The reports away from cuts and probes, newest in bit 0: 1 = it lost `CLEAN_LOSS` or more; and how many
    /// (up to `HISTORY`) there are.
    history: u16,
    history_len: u8,
    /// Reports until then are the aftermath of a cut or a failed probe (retransmissions draining), not background.
    quiet_until: Option<Instant>,
    /// The subscriber's link can be probed with padding (transport-wide CC feedback tells what arrived): a probe
    /// is then padding sent beside the media at the rate wanted, and only a probe the link carried switches
    /// layers up.
    padding_probes: bool,
    /// A padding probe asked for (the total rate it should reach, bit/s), not yet taken by the worker.
    probe_request: Option<u64>,
    /// The padding probe under way: the rate it stands for.
    padding_probe: Option<u64>,
    /// The rate the subscriber's feedback says its packets arrived at over the last window (bit/s; transport-wide
    /// CC), for the next update: a cut goes to just under it.
    acked: Option<u64>,
    /// The link is not known yet ([`start`](Estimator::start)): the estimate is `START_ESTIMATE`, no video is
    /// paused for it, and the first padding probe goes out without waiting for a clean history.
    starting: bool,
    /// A video of the subscriber's is paused for the link ([`set_video_paused`](Estimator::set_video_paused)).
    video_paused: bool,
}

pub const MIN_ESTIMATE: u64 = 30_000;
/// A new subscriber's estimate until its first padding probe tells what its link carries: libwebrtc's start
/// bit rate. A commune hall's 300 kbit/s link is not given the top layer (and an overrun) at join.
pub const START_ESTIMATE: u64 = 300_000;
/// Unconstrained: every consumer gets what its tile and cap allow.
pub const MAX_ESTIMATE: u64 = 20_000_000;
const HIGH_LOSS: f64 = 0.10;
/// A single report this bad cuts at once.
const HEAVY_LOSS: f64 = 0.25;
const LOW_LOSS: f64 = 0.02;
const GROWTH_PER_SECOND: f64 = 0.08;
const ADDITIVE_GROWTH_PER_SECOND: f64 = 50_000.0;
const HOLD_AFTER_CUT: Duration = Duration::from_secs(2);
/// Smoothed loss must stay high this long before the estimate is cut (two high reports in a row cut at once).
const SUSTAINED_LOSS: Duration = Duration::from_secs(1);
/// Reports this soon after a cut do not cut again (they tell of the layers before it).
const AFTER_CUT: Duration = Duration::from_millis(400);
/// This soon after a cut, a further cut keeps the lowest layers.
const SETTLE: Duration = Duration::from_millis(2000);
/// After a cut or a failed probe, reports are not taken into the link's history for this long.
const AFTERMATH: Duration = Duration::from_millis(1000);
/// Reports the history keeps (half a second each).
const HISTORY: u8 = 12;
/// Reports in the history needed before the link counts as steady.
const STEADY_REPORTS: u8 = HISTORY;
/// A report under this loss is clean.
const CLEAN_LOSS: f64 = 0.01;
/// The link must have been clean this long before a probe.
pub const PROBE_AFTER_CLEAN: Duration = Duration::from_millis(700);
/// A report of this much loss during a probe ends it.
const PROBE_FAIL_LOSS: f64 = 0.05;
/// After a failed probe, reports are ignored this long (they tell of the probe's packets still in flight).
const PROBE_GRACE: Duration = Duration::from_millis(1500);
/// A probe asks for what the consumers want and this much more (their layers' bit rates wander).
const PROBE_HEADROOM: f64 = 1.2;
/// A probe that has lost nothing for this long is kept.
pub const PROBE_CONFIRM: Duration = Duration::from_secs(2);
/// The wait after a failed probe, doubled after each further failure up to the maximum.
pub const PROBE_BACKOFF: Duration = Duration::from_secs(1);
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The wait after a failed padding probe (each costs the link ~0.1 s of overrun, and a link that comes back must
/// be found within a second or so) ...
pub const PADDING_PROBE_BACKOFF: Duration = Duration::from_millis(600);
/// ... for this many failures in a row; then `PROBE_BACKOFF_MAX`.
pub const PADDING_PROBES_BEFORE_BACKOFF: u32 = 12;
/// Reports in the history needed before a link with padding probes counts as steady.
const PADDING_STEADY_REPORTS: u8 = 4;
/// A cut from what arrived leaves this share of it.
const ACKED_SHARE: f64 = 0.9;
/// A failed padding probe raises the estimate to this share of the rate it arrived at (a token bucket in the way
/// lets its first few kilobytes through at once, which the rate over a tenth of a second overstates).
const PROBE_RECEIVED_SHARE: f64 = 0.85;

impl Default for Estimator {
    fn default() -> Self {
        Estimator {
            estimate: MAX_ESTIMATE,
            last: None,
            hold_until: None,
            high_since: None,
            loss: None,
            last_high: false,
            wanted: 0,
            in_use: 0,
            lowest: 0,
            clean_since: None,
            probe: None,
            next_probe: None,
            failed_probes: 0,
            grace_until: None,
            cut_at: None,
            history: 0,
            history_len: 0,
            quiet_until: None,
            padding_probes: false,
            probe_request: None,
            padding_probe: None,
            acked: None,
            starting: false,
            video_paused: false,
        }
    }
}

impl Estimator {
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// A new subscriber whose link can be probed with padding (transport-wide CC, the SFU's own SRTP): start at
    /// `START_ESTIMATE` rather than unconstrained, and probe for what its consumers want as soon as a video
    /// stream can carry the padding. The probe's outcome ends the start: carried, the layers switch up (about
    /// a second after the connection is up); not carried, the link is treated as any other. A link already
    /// measured is left as it is (a reconnect).
    pub fn start(&mut self) {
        if self.last.is_none() && self.estimate == MAX_ESTIMATE && self.padding_probe.is_none() {
            self.estimate = START_ESTIMATE;
            self.starting = true;
        }
    }

    /// Undo [`start`](Self::start) before anything was measured (the subscriber refused transport-wide CC, so
    /// padding cannot probe its link): the estimate is unconstrained again. Whether it did.
    pub fn cancel_start(&mut self) -> bool {
        let undo = self.starting && self.last.is_none() && self.padding_probe.is_none();
        if undo {
            self.estimate = MAX_ESTIMATE;
            self.starting = false;
        }
        undo
    }

    /// Whether the link is not known yet (no probe judged).
    pub fn starting(&self) -> bool {
        self.starting
    }

    /// Whether a video may be paused for the estimate: only once loss has cut it. The start estimate is a guess,
    /// and a probe carried at what the consumers were thought to want (their layers' costs not measured yet, a
    /// joiner's first seconds) is not a limit either: pausing a video needs evidence that the link cannot carry
    /// it.
    pub fn may_pause(&self) -> bool {
        self.cut_at.is_some()
    }

    /// The smoothed loss fraction it works from.
    pub fn loss(&self) -> Option<f64> {
        self.loss
    }

    /// Whether the link's recent history (away from cuts and probes) is free of loss. With padding probes, which
    /// cost a link little when they fail, a shorter history will do.
    fn steady(&self) -> bool {
        let reports = if self.padding_probes {
            PADDING_STEADY_REPORTS
        } else {
            STEADY_REPORTS
        };
        self.history_len >= reports && self.history & ((1 << reports) - 1) == 0
    }

    /// The rate the subscriber's packets arrived at over the last window (transport-wide CC), for the next
    /// [`update`](Self::update).
    pub fn set_acked(&mut self, bps: Option<u64>) {
        self.acked = bps;
    }

    /// Whether a probe is under way (layers switched up tentatively).
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Whether the link can be probed with padding (see [`Estimator`]); without, a probe switches layers up
    /// tentatively. A padding probe under way is forgotten when they stop being possible.
    pub fn set_padding_probes(&mut self, possible: bool) {
        self.padding_probes = possible;
        if !possible {
            self.probe_request = None;
            self.padding_probe = None;
        }
    }

    /// Whether padding probes are possible on the link (as last set).
    pub fn padding_probes_possible(&self) -> bool {
        self.padding_probes
    }

    /// The padding probe to send now, if one was decided: the total rate (media and padding) it should reach.
    pub fn take_probe_request(&mut self) -> Option<u64> {
        self.probe_request.take()
    }

    /// Whether a padding probe is under way (asked for, its outcome not yet known).
    pub fn padding_probe(&self) -> Option<u64> {
        self.padding_probe
    }

    /// What became of the padding probe: `carried` if the link delivered it whole and at its pace. Then the
    /// estimate becomes the probe's rate and the layers are switched up, still tentatively (a switch that then
    /// loses falls back as any probe does); else the next probe waits `PADDING_PROBE_BACKOFF`, and what arrived
    /// of it (`received_bps`: an overrun link delivers at its capacity) raises the estimate to a little under
    /// that if it was lower. A failed padding probe costs the link a tenth of a second of overrun, and its packets
    /// are left out of the loss the estimate reads (`twcc.rs`), so it needs none of a failed layer probe's grace.
    /// Returns whether the estimate stepped.
    pub fn padding_probe_result(
        &mut self,
        now: Instant,
        carried: bool,
        received_bps: Option<u64>,
    ) -> bool {
        let Some(rate) = self.padding_probe.take() else {
            return false;
        };
        let first = std::mem::take(&mut self.starting);
        if !carried {
            if first {
                self.grace_until = Some(now + PROBE_GRACE);
            }
            self.failed_probes += 1;
            let wait = if self.failed_probes > PADDING_PROBES_BEFORE_BACKOFF {
                PROBE_BACKOFF_MAX
            } else {
                PADDING_PROBE_BACKOFF
            };
            self.next_probe = Some(now + wait);
            let measured = received_bps.map_or(0, |r| (r as f64 * PROBE_RECEIVED_SHARE) as u64);
            if measured > self.estimate {
                self.estimate = measured.min(MAX_ESTIMATE);
                return true;
            }
            return false;
        }
        if rate <= self.estimate {
            return false;
        }
        self.probe = Some((now, self.estimate));
        // The link carried at least the rate asked for, and the rate it delivered the probe at if more (media
        // sent meanwhile, such as a joiner's first picture, made it more).
        self.estimate = rate.max(received_bps.unwrap_or(0)).min(MAX_ESTIMATE);
        self.next_probe = None;
        true
    }

    /// What the subscriber's consumers would take if the link allowed it (`wanted`: the most a probe asks of the
    /// link), what the layers chosen for them cost (`in_use`), and what their lowest layers cost (`lowest`: below
    /// it their video pauses), audio included, bit/s.
    pub fn set_wanted(&mut self, wanted: u64, in_use: u64, lowest: u64) {
        self.wanted = wanted;
        self.in_use = in_use;
        self.lowest = lowest;
    }

    /// Whether one of the subscriber's videos is paused because the link cannot carry it (the layer choice
    /// just made).
    pub fn set_video_paused(&mut self, paused: bool) {
        self.video_paused = paused;
    }

    /// New figures for the subscriber's leg: `loss` (fraction, from its latest receiver reports and NACKs) and
    /// the bit rate the server sent it over the last window. Returns whether the estimate stepped (a cut, a
    /// probe begun or abandoned): the layers should be chosen again now rather than at the next round.
    pub fn update(&mut self, now: Instant, loss: Option<f64>, delivered: u64) -> bool {
        let acked = self.acked.take();
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(Duration::from_secs(2));
        self.last = Some(now);
        let Some(sample) = loss.map(|l| l.clamp(0.0, 1.0)) else {
            return false;
        };
        if self.grace_until.is_some_and(|t| now < t) {
            // The tail of a failed probe (its packets' NACKs and reports): neither a cut nor clean.
            self.clean_since = None;
            return false;
        }
        // More than three times what the chosen layers cost left for it (headers and RTCP add a tenth or so):
        // retransmissions of what an overrun lost are still draining. Such a report tells of the past overrun,
        // not of the link now.
        let draining = self.in_use > 0 && delivered > 3 * self.in_use;
        if sample < CLEAN_LOSS && !draining {
            self.clean_since.get_or_insert(now);
        } else {
            self.clean_since = None;
        }
        let high = sample > HIGH_LOSS;
        let twice_high = high && self.last_high;
        self.last_high = high;

        if let Some((since, prior)) = self.probe {
            if sample >= PROBE_FAIL_LOSS {
                // The link cannot carry it: back at once; the loss was the probe's, not a reason to cut further.
                self.probe = None;
                self.estimate = prior;
                self.failed_probes += 1;
                let wait = PROBE_BACKOFF
                    .saturating_mul(1 << (self.failed_probes - 1).min(8))
                    .min(PROBE_BACKOFF_MAX);
                self.next_probe = Some(now + wait);
                self.grace_until = Some(now + PROBE_GRACE);
                self.quiet_until = Some(now + AFTERMATH);
                self.loss = Some(0.0);
                self.high_since = None;
                self.last_high = false;
                return true;
            }
            if now.saturating_duration_since(since) >= PROBE_CONFIRM {
                self.probe = None;
                self.failed_probes = 0;
            }
            self.loss = Some(sample);
            return false;
        }

        let loss = self.loss.map_or(sample, |s| 0.6 * s + 0.4 * sample);
        self.loss = Some(loss);
        let mut stepped = false;
        let heavy = sample >= HEAVY_LOSS;
        let since_cut = self.cut_at.map(|t| now.saturating_duration_since(t));
        let settling = since_cut.is_some_and(|d| d < AFTER_CUT);
        // Retransmissions of what the old layers lost keep the link overrun for a while after a cut: then a
        // further cut keeps the lowest layers (the video pauses only if even they keep losing after that).
        // Nor is the video paused for moderate loss (under `HEAVY_LOSS`) while what arrived (transport-wide CC)
        // covers what the chosen layers cost: the link carried them through the loss, which is then random (a
        // commune line's few percent, unlucky in a small window) rather than an overrun. Audio first means pausing
        // video the link cannot carry, not video it has just delivered. (Heavy loss is an overrun: a link cut to
        // 250 kbit/s under 1.2 Mbit/s arrives at its capacity, which covers q, yet its video is better paused
        // until a probe finds it again: `impaired_links.rs` scenario 2 switched back up late with this floor.)
        let delivered_lowest = !heavy && self.in_use > 0 && acked.is_some_and(|a| a >= self.in_use);
        let floor = if since_cut.is_some_and(|d| d < SETTLE) || delivered_lowest {
            self.lowest.min(self.estimate)
        } else {
            0
        };
        if settling {
            // Loss reported right after a cut is the old layers' (and their retransmissions'): no second cut.
        } else if loss > HIGH_LOSS || twice_high || heavy {
            let since = *self.high_since.get_or_insert(now);
            if heavy || twice_high || now.saturating_duration_since(since) >= SUSTAINED_LOSS {
                // Loss persisted, or the link is overrun: what was being sent less half the loss; a further cut
                // needs more of it.
                self.high_since = None;
                self.last_high = false;
                let lost = loss.max(sample);
                let sending = [self.in_use, delivered]
                    .into_iter()
                    .find(|&r| r > 0)
                    .map_or(self.estimate, |r| r.min(self.estimate));
                // What arrived, when the feedback tells it, is what the link carries now (a tenth is left for
                // the queue to drain); else GCC's rule on what was being sent.
                let cut = match acked {
                    Some(a) => (a as f64 * ACKED_SHARE) as u64,
                    None => (sending as f64 * (1.0 - 0.5 * lost)) as u64,
                }
                .min(sending)
                .max(floor);
                self.starting = false;
                if cut < self.estimate {
                    stepped = true;
                    self.estimate = cut;
                    self.hold_until = Some(now + HOLD_AFTER_CUT);
                    self.cut_at = Some(now);
                    self.quiet_until = Some(now + AFTERMATH);
                }
                // The loss so far was the old layers' (or, with nothing left to cut, acted on already): what the
                // new ones lose starts afresh, and a stale average does not cut again once reports are clean.
                self.loss = None;
            }
        } else {
            self.high_since = None;
            // A link that keeps losing at random (background loss) does not grow either: its loss would end up
            // cutting again, each time at the cost of the audio.
            // With padding probes the estimate rises only by what a probe showed the link carries: growth would
            // switch layers up on a guess, and a guess too high overruns the link with a keyframe.
            if loss < LOW_LOSS
                && !self.padding_probes
                && (self.estimate < self.lowest || self.steady())
                && self.hold_until.is_none_or(|t| now >= t)
            {
                // 8 % a second, at least 50 kbit/s a second (a paused link comes back in seconds, not minutes).
                let secs = elapsed.as_secs_f64();
                let grow = (self.estimate as f64 * GROWTH_PER_SECOND * secs)
                    .max(ADDITIVE_GROWTH_PER_SECOND * secs);
                self.estimate = self.estimate.saturating_add(grow as u64);
            }
        }
        self.estimate = self.estimate.clamp(MIN_ESTIMATE, MAX_ESTIMATE);

        if !settling && !draining && self.quiet_until.is_none_or(|t| now >= t) {
            self.history =
                ((self.history << 1) | u16::from(sample >= CLEAN_LOSS)) & ((1 << HISTORY) - 1);
            self.history_len = (self.history_len + 1).min(HISTORY);
        }
        if !stepped {
            stepped = self.consider_probe(now);
        }
        stepped
    }

    /// Between updates (the worker's tick), with padding probes: the probe to send now, if one is due — a link
    /// that came back is found as soon as the wait after the last failed probe is over, not at the next update.
    pub fn poll_padding_probe(&mut self, now: Instant) -> Option<u64> {
        if self.padding_probes && self.probe.is_none() {
            self.consider_probe(now);
        }
        self.take_probe_request()
    }

    /// Probe: the link has been clean for a while, loses (next to) nothing at random, and the consumers want more
    /// than the estimate gives. A link with random loss is not probed: its loss would end every probe, and each
    /// probe costs it more. Returns whether the estimate stepped (a tentative layer probe).
    fn consider_probe(&mut self, now: Instant) -> bool {
        // A new link has no history to be clean: its first padding probe goes out at once. Nor need a link whose
        // video is paused be steady: without a probe its video would never come back on a line that keeps losing
        // a little, and even a failed probe tells what the link carries (the video resumes from that).
        let clean = self.padding_probes && (self.starting || self.video_paused)
            || self
                .clean_since
                .is_some_and(|t| now.saturating_duration_since(t) >= PROBE_AFTER_CLEAN)
                && self.steady();
        let mut stepped = false;
        // Nothing to gain where the chosen layers are already all that is wanted (a single layer flowing: the
        // fanout's viewers), however low the estimate.
        if clean
            && self.wanted > self.estimate
            && self.wanted > self.in_use
            && self.hold_until.is_none_or(|t| now >= t)
            && self.next_probe.is_none_or(|t| now >= t)
        {
            // A paused video is first brought back at its lowest layers; a flowing one tries all it wants. A
            // padding probe always asks for all of it: one that fails still tells what the link carries (a
            // paused video resumes from that), and a small one carried would hold the next back for the
            // tentative switch's confirmation.
            let target = if self.estimate < self.lowest && !self.padding_probes {
                self.lowest.min(self.wanted)
            } else {
                // Layer bit rates wander (a few percent from second to second): with no headroom the consumers
                // would drop a layer again at the next measurement.
                (self.wanted as f64 * PROBE_HEADROOM) as u64
            }
            .min(MAX_ESTIMATE);
            if self.padding_probes {
                if self.padding_probe.is_none() {
                    self.padding_probe = Some(target);
                    self.probe_request = Some(target);
                }
            } else {
                self.probe = Some((now, self.estimate));
                self.estimate = target;
                self.next_probe = None;
                stepped = true;
            }
        }
        stepped
    }
}

/// What the chooser needs to know of one video consumer of a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// Layers the producer has (1 without simulcast).
    pub layers: usize,
    /// Highest layer the tile size and the cap allow.
    pub limit: usize,
    /// Whether the consumer's video is paused now (it resumes only with headroom: no flapping).
    pub paused: bool,
}

/// Headroom the estimate needs over the lowest layer before a paused video resumes.
pub const RESUME_HEADROOM: f64 = 1.3;
/// What one audio stream is reckoned to take from the budget (Opus with overhead).
pub const AUDIO_BITRATE: u64 = 50_000;

/// Share the subscriber's budget among its video consumers, largest need first: each gets the highest layer up
/// to its limit whose bit rate still fits what is left; one that cannot fit even its lowest layer is paused
/// (`None`). `bitrate(i, layer)` is what layer `layer` of consumer `i` costs.
pub fn allocate(
    budget: u64,
    wants: &[Want],
    bitrate: impl Fn(usize, usize) -> u64,
) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..wants.len()).collect();
    // Larger tiles first: the main picture keeps its quality longest.
    order.sort_by_key(|&i| std::cmp::Reverse(wants[i].limit));
    let mut left = budget;
    let mut out = vec![None; wants.len()];
    for i in order {
        let w = wants[i];
        let lowest = bitrate(i, 0);
        let need_lowest = if w.paused {
            (lowest as f64 * RESUME_HEADROOM) as u64
        } else {
            lowest
        };
        if need_lowest > left {
            continue;
        }
        let mut chosen = 0;
        for layer in (0..=w.limit.min(w.layers.saturating_sub(1))).rev() {
            if bitrate(i, layer) <= left {
                chosen = layer;
                break;
            }
        }
        left -= bitrate(i, chosen);
        out[i] = Some(chosen);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rids_order_small_to_large() {
        let mut rids = vec!["f", "q", "h"];
        rids.sort_by_key(|r| rid_rank(r));
        assert_eq!(rids, ["q", "h", "f"]);
        assert_eq!(rid_rank("unknown"), 3);
    }

    #[test]
    fn tile_size_picks_the_smallest_layer_wide_enough() {
        // Nothing measured: 960 wide in three layers: 240, 480, 960.
        let w = layer_widths(&[0, 0, 0]);
        assert_eq!(w, [240, 480, 960]);
        assert_eq!(layer_for_tile(Some(200), &w), 0);
        assert_eq!(layer_for_tile(Some(240), &w), 0);
        assert_eq!(layer_for_tile(Some(300), &w), 1);
        assert_eq!(layer_for_tile(Some(900), &w), 2);
        assert_eq!(layer_for_tile(Some(4000), &w), 2);
        assert_eq!(layer_for_tile(Some(0), &w), 0);
        assert_eq!(layer_for_tile(None, &w), 2);
        // Measured widths win; a missing one is derived from the largest known.
        assert_eq!(layer_widths(&[320, 0, 1280]), [320, 640, 1280]);
        assert_eq!(layer_widths(&[0, 640]), [320, 640, 0]);
        assert_eq!(layer_for_tile(Some(100), &layer_widths(&[640])[..1]), 0);
    }

    #[test]
    fn estimate_cuts_on_heavy_or_lasting_loss_holds_then_grows_on_a_virtual_clock() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut e = Estimator::default();
        // Unconstrained until the link loses packets.
        e.update(t0, Some(0.0), 1_000_000);
        assert_eq!(e.estimate(), MAX_ESTIMATE);
        // One moderately bad report is not enough (a CPU stall): smoothed, it fades.
        assert!(!e.update(at(500), Some(0.15), 1_000_000));
        for ms in [1000, 1500, 2000] {
            e.update(at(ms), Some(0.0), 1_000_000);
        }
        assert_eq!(e.estimate(), MAX_ESTIMATE);
        // A heavy report (the link is overrun) cuts at once: what was in use (not the bytes sent, which count
        // retransmissions) less half the loss.
        e.set_wanted(1_300_000, 1_300_000, 150_000);
        assert!(e.update(at(2500), Some(0.4), 9_000_000));
        assert_eq!(e.estimate(), 1_040_000);
        // Right after a cut the reports still tell of the old layers: no second cut.
        assert!(!e.update(at(2800), Some(0.6), 9_000_000));
        assert_eq!(e.estimate(), 1_040_000);
        // Then the lower layers in use lose too: cut again.
        e.set_wanted(1_300_000, 400_000, 150_000);
        assert!(e.update(at(3300), Some(0.3), 400_000));
        // Half the smoothed loss (0.6 × 0.6 + 0.4 × 0.3 = 0.48, the report right after the first cut counts
        // there): 400k × 0.76.
        assert_eq!(e.estimate(), 304_000);
        // Two reports in a row above 10 % cut as well.
        e.set_wanted(1_300_000, 304_000, 150_000);
        assert!(!e.update(at(4100), Some(0.12), 304_000));
        assert!(e.update(at(4600), Some(0.12), 304_000));
        let cut = e.estimate();
        assert_eq!(cut, (304_000.0 * (1.0 - 0.06)) as u64);
        // Held for 2 s after the cut. (Nothing more wanted: no probe.)
        e.set_wanted(0, 0, 0);
        e.update(at(5600), Some(0.0), 300_000);
        assert_eq!(e.estimate(), cut, "held");
        // The link lost at random not long ago (the 15 % report): its video keeps what it has.
        e.update(at(6700), Some(0.0), 300_000);
        assert_eq!(e.estimate(), cut, "no growth on an unsteady link");
        // A paused video (the estimate below its lowest layers) grows back all the same: 8 % a second, at least
        // 50k.
        e.set_wanted(0, 0, 1_000_000);
        let before = e.estimate();
        e.update(at(7700), Some(0.0), 300_000);
        assert_eq!(
            e.estimate(),
            before + ((before as f64 * 0.08) as u64).max(50_000)
        );
        // No report: no change. Never below the floor.
        let before = e.estimate();
        assert!(!e.update(at(8300), None, 0));
        assert_eq!(e.estimate(), before);
        e.set_wanted(0, 0, 0);
        for i in 0..40 {
            e.update(at(9000 + 1000 * i), Some(0.9), 10_000);
        }
        assert_eq!(e.estimate(), MIN_ESTIMATE);
    }

    /// A seeded lossy, delaying link on a virtual clock: the subscriber wants the full layer of one simulcast
    /// camera (q 75k, h 300k, f 1.2M) and one audio stream; each half-second report carries the loss of what was
    /// sent one report earlier (the round trip) plus `random` loss drawn from a fixed seed. Returns the layer
    /// chosen at each 100 ms step (`None` = paused) and how many probes started.
    ///
    /// With `padding`, the subscriber's transport-wide CC feedback too: each report also carries the rate what was
    /// sent arrived at, and probes are padding — one asked for at rate `r` is judged 300 ms later (its 100 ms and
    /// the feedback's way back): carried if the link's capacity when it was sent was at least `r`, else it arrived
    /// at the capacity and a quarter more (a token bucket lets its first bytes through at once). Probes counted
    /// are then padding probes.
    fn simulate(
        capacity: impl Fn(u64) -> u64,
        random: f64,
        until_ms: u64,
        padding: bool,
    ) -> (Vec<(u64, Option<usize>)>, u32) {
        let costs = [75_000u64, 300_000, 1_200_000];
        let want = Want {
            layers: 3,
            limit: 2,
            paused: false,
        };
        let t0 = Instant::now();
        let mut e = Estimator::default();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut chosen = Some(2usize);
        let mut sent_before = costs[2] + AUDIO_BITRATE;
        let mut out = Vec::new();
        let mut probes = 0;
        // A padding probe sent: when its outcome is known, its rate, and the capacity it met.
        let mut pending: Option<(u64, u64, u64)> = None;
        e.set_padding_probes(padding);
        for step in 0..until_ms / 100 {
            let ms = step * 100;
            let now = t0 + Duration::from_millis(ms);
            let in_use = chosen.map_or(0, |l| costs[l]) + AUDIO_BITRATE;
            if let Some((due, rate, cap)) = pending
                && ms >= due
            {
                pending = None;
                let received = if rate <= cap { rate } else { cap + cap / 4 };
                e.padding_probe_result(now, rate <= cap, Some(received));
            }
            if ms % 500 == 0 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let noise = if (seed % 10_000) as f64 / 10_000.0 < random * 10.0 {
                    0.1 * (seed % 7) as f64 / 7.0
                } else {
                    0.0
                };
                let cap = capacity(ms);
                let overrun = if sent_before > cap {
                    1.0 - cap as f64 / sent_before as f64
                } else {
                    0.0
                };
                e.set_wanted(costs[2] + AUDIO_BITRATE, in_use, costs[0] + AUDIO_BITRATE);
                if padding {
                    e.set_acked(Some(sent_before.min(cap)));
                }
                let was_probing = e.probing();
                e.update(now, Some((overrun + noise).min(1.0)), in_use);
                if e.probing() && !was_probing && !padding {
                    probes += 1;
                }
                sent_before = in_use;
            }
            if padding && let Some(rate) = e.poll_padding_probe(now) {
                assert!(pending.is_none(), "one padding probe at a time");
                pending = Some((ms + 300, rate, capacity(ms)));
                probes += 1;
            }
            let budget = e.estimate().saturating_sub(AUDIO_BITRATE);
            let paused = chosen.is_none();
            chosen = allocate(budget, &[Want { paused, ..want }], |_, l| costs[l])[0];
            out.push((ms, chosen));
        }
        (out, probes)
    }

    /// The first time at or after `from` ms that the chosen layer is `layer` (ms after `from`).
    fn reached(trace: &[(u64, Option<usize>)], from: u64, layer: Option<usize>) -> Option<u64> {
        trace
            .iter()
            .find(|(ms, l)| *ms >= from && *l == layer)
            .map(|(ms, _)| ms - from)
    }

    /// The drop-and-return link: 2 Mbit/s, 250 kbit/s from 5 s, 2 Mbit/s again from `back`, for each `back`
    /// from 13 to 16 s in `step` ms (probes come and go in between). Each run goes down to q within 2 s, is never
    /// paused (q fits 250 kbit/s with the audio), and once back on f stays there; with padding probes nothing
    /// above q is tried while the link is at 250 kbit/s. Returns the worst up-switch (ms after the return).
    fn drop_and_return(step: usize, padding: bool) -> u64 {
        let mut worst_up = 0;
        for back in (13_000..16_000).step_by(step) {
            let capacity = |ms: u64| {
                if (5_000..back).contains(&ms) {
                    250_000
                } else {
                    2_000_000
                }
            };
            let (trace, probes) = simulate(capacity, 0.0, back + 8_000, padding);
            let down = reached(&trace, 5_000, Some(0)).expect("down to q");
            let up = reached(&trace, back, Some(2)).expect("back to f");
            worst_up = worst_up.max(up);
            assert!(down <= 2_000, "down after {down} ms");
            assert!(
                trace.iter().all(|(_, l)| l.is_some()),
                "never paused: {trace:?}"
            );
            if padding {
                // Only a carried probe raises the layers.
                assert!(
                    trace
                        .iter()
                        .filter(|(ms, _)| (5_000 + down..back).contains(ms))
                        .all(|(_, l)| *l == Some(0)),
                    "{trace:?}"
                );
            }
            // Once up, it stays there.
            assert!(
                trace
                    .iter()
                    .filter(|(ms, _)| *ms >= back + up)
                    .all(|(_, l)| *l == Some(2)),
                "{trace:?}"
            );
            println!("back at {back} ms: down after {down} ms, up after {up} ms, {probes} probes");
        }
        worst_up
    }

    #[test]
    fn on_a_virtual_link_the_layer_follows_a_drop_to_250k_and_the_return_to_2m() {
        let worst_up = drop_and_return(250, false);
        // Up: at the latest one probe period after the return (backoff, the failed probe's grace, clean time).
        let bound =
            (PROBE_BACKOFF_MAX + PROBE_GRACE + PROBE_AFTER_CLEAN + Duration::from_millis(500))
                .as_millis() as u64;
        println!("worst up-switch {worst_up} ms (bound {bound} ms; the issue asks 2000 ms)");
        assert!(
            worst_up <= bound,
            "up after {worst_up} ms (bound {bound} ms)"
        );
    }

    #[test]
    fn on_a_virtual_link_padding_probes_find_the_return_to_2m_within_2_s_and_never_guess_up() {
        let worst_up = drop_and_return(100, true);
        // At the latest: a probe that failed just before the return is judged (0.3 s), the next waits the backoff
        // and is judged in turn (0.3 s), plus a step.
        let bound = (PADDING_PROBE_BACKOFF + Duration::from_millis(700)).as_millis() as u64;
        println!("worst up-switch {worst_up} ms (bound {bound} ms; the issue asks 2000 ms)");
        assert!(
            worst_up <= bound,
            "up after {worst_up} ms (bound {bound} ms)"
        );
    }

    /// 300 kbit/s with about 5 % random loss (drawn from a fixed seed): settled on q within 2 s and kept there
    /// from 5 s on.
    fn random_loss_keeps_q(padding: bool) {
        let (trace, probes) = simulate(|_| 300_000, 0.05, 30_000, padding);
        let settled = reached(&trace, 0, Some(0)).expect("q");
        println!("settled on q after {settled} ms; {probes} probes (padding: {padding})");
        assert!(settled <= 2_000);
        assert!(
            trace
                .iter()
                .filter(|(ms, _)| *ms >= 5_000)
                .all(|(_, l)| *l == Some(0)),
            "{trace:?}"
        );
    }

    #[test]
    fn padding_probes_are_left_alone_on_a_link_with_random_loss() {
        random_loss_keeps_q(true);
    }

    #[test]
    fn a_failed_padding_probe_raises_the_estimate_to_what_arrived_and_waits() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut e = Estimator::default();
        e.set_padding_probes(true);
        e.set_wanted(1_500_000, 200_000, 200_000);
        // A cut to 200k, then clean reports: after the hold, a padding probe is asked for instead of a switch.
        e.set_acked(Some(222_223));
        assert!(e.update(at(0), Some(0.5), 200_000));
        assert_eq!(e.estimate(), 200_000);
        let mut asked = None;
        for ms in (500..6_000).step_by(500) {
            e.update(at(ms), Some(0.0), 200_000);
            assert_eq!(e.estimate(), 200_000, "no growth with padding probes");
            if let Some(rate) = e.take_probe_request() {
                asked = Some((ms, rate));
                break;
            }
        }
        let (ms, rate) = asked.expect("a padding probe");
        assert_eq!(rate, 1_800_000, "what is wanted and a fifth more");
        assert!(!e.probing(), "no layer switched up on a guess");
        assert_eq!(e.poll_padding_probe(at(ms + 100)), None, "one at a time");
        // It arrived at 400k: not carried; the estimate rises to 85 % of that.
        assert!(e.padding_probe_result(at(ms + 300), false, Some(400_000)));
        assert_eq!(e.estimate(), 340_000);
        assert_eq!(e.poll_padding_probe(at(ms + 800)), None, "the backoff");
        assert_eq!(e.poll_padding_probe(at(ms + 900)), Some(1_800_000));
        // Carried: the layers switch up, tentatively.
        assert!(e.padding_probe_result(at(ms + 1_200), true, Some(1_800_000)));
        assert_eq!(e.estimate(), 1_800_000);
        assert!(e.probing());
    }

    #[test]
    fn random_loss_on_a_link_that_delivers_the_lowest_layers_does_not_pause_them() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // q and audio cost 125k (147k with the headroom to resume); the link was taken for 300k.
        let fresh = || {
            let mut e = Estimator::default();
            e.set_padding_probes(true);
            e.start();
            e.set_wanted(1_300_000, 125_000, 147_000);
            e
        };
        // Two windows of 11 % loss with `acked` arriving: the second cuts.
        let two_lossy_windows = |e: &mut Estimator, acked: u64| {
            e.set_acked(Some(acked));
            e.update(at(0), Some(0.11), 140_000);
            e.set_acked(Some(acked));
            assert!(e.update(at(500), Some(0.11), 140_000));
        };
        // 170k arrived: random loss, not an overrun; the lowest layers stay.
        let mut e = fresh();
        two_lossy_windows(&mut e, 170_000);
        assert_eq!(e.estimate(), 147_000);
        // Only 100k arrived: the link cannot carry even q; the video may pause.
        let mut e = fresh();
        two_lossy_windows(&mut e, 100_000);
        assert_eq!(e.estimate(), 90_000);
        // Paused on a line that keeps losing a little: it is probed all the same, and what arrived of the probe
        // brings the video back.
        e.set_video_paused(true);
        for ms in (1_000..2_500).step_by(500) {
            e.update(at(ms), Some(0.04), 60_000);
        }
        let rate = (2_500..6_000)
            .step_by(100)
            .find_map(|ms| e.poll_padding_probe(at(ms)))
            .expect("a paused video's link is probed");
        assert_eq!(rate, 1_560_000);
        assert!(e.padding_probe_result(at(6_000), false, Some(260_000)));
        assert_eq!(e.estimate(), 221_000);
    }

    #[test]
    fn a_new_link_starts_modest_and_is_probed_at_once() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A strong link: the first probe carries and the layers switch up.
        let mut e = Estimator::default();
        e.start();
        assert_eq!(e.estimate(), START_ESTIMATE);
        assert!(e.starting());
        e.set_wanted(1_300_000, 125_000, 160_000);
        assert_eq!(
            e.poll_padding_probe(at(0)),
            None,
            "no stream to carry padding yet"
        );
        e.set_padding_probes(true);
        assert_eq!(
            e.poll_padding_probe(at(100)),
            Some(1_560_000),
            "no clean history needed for the first probe"
        );
        assert!(!e.may_pause(), "nothing paused for a guess");
        assert!(e.padding_probe_result(at(400), true, Some(1_500_000)));
        assert_eq!(e.estimate(), 1_560_000);
        assert!(!e.starting());
        assert!(!e.may_pause(), "nor for a probe carried");

        // A commune hall's 300 kbit/s link: the probe arrives at its capacity and is not carried; the estimate
        // stays where it started and the next probe waits as after any failed one.
        let mut e = Estimator::default();
        e.start();
        e.set_wanted(1_300_000, 125_000, 160_000);
        e.set_padding_probes(true);
        assert_eq!(e.poll_padding_probe(at(100)), Some(1_560_000));
        assert!(!e.padding_probe_result(at(400), false, Some(290_000)));
        assert_eq!(e.estimate(), START_ESTIMATE);
        assert!(!e.starting());
        assert_eq!(e.poll_padding_probe(at(600)), None, "no clean history yet");

        // A single layer flowing (the fanout's viewers): nothing to choose, so no probe, and nothing paused.
        let mut e = Estimator::default();
        e.start();
        e.set_wanted(1_550_000, 1_550_000, 2_000_000);
        e.set_padding_probes(true);
        assert_eq!(e.poll_padding_probe(at(100)), None);
        assert!(!e.may_pause());

        // A link already measured is not started again (a reconnect), nor unconstrained by an answer.
        let mut e = Estimator::default();
        e.update(at(0), Some(0.0), 1_000_000);
        e.start();
        assert_eq!(e.estimate(), MAX_ESTIMATE);
        assert!(!e.starting());
        e.update(at(500), Some(0.3), 1_000_000);
        let cut = e.estimate();
        assert!(cut < MAX_ESTIMATE);
        assert!(!e.cancel_start());
        assert_eq!(e.estimate(), cut);

        // Started with the offer, undone by an answer that refused transport-wide CC: unconstrained again.
        let mut e = Estimator::default();
        e.start();
        assert!(e.cancel_start());
        assert_eq!(e.estimate(), MAX_ESTIMATE);
        assert!(!e.starting());
        assert!(!e.cancel_start(), "once");
    }

    #[test]
    fn a_link_with_random_loss_is_not_probed_and_keeps_the_layer_that_fits() {
        random_loss_keeps_q(false);
    }

    fn bitrates(_: usize, layer: usize) -> u64 {
        nominal_bitrate(layer)
    }

    #[test]
    fn allocation_gives_the_big_tile_its_layer_first_and_pauses_below_the_lowest() {
        let main = Want {
            layers: 3,
            limit: 2,
            paused: false,
        };
        let thumb = Want {
            layers: 3,
            limit: 0,
            paused: false,
        };
        // Plenty: each gets its limit.
        assert_eq!(
            allocate(5_000_000, &[thumb, main], bitrates),
            [Some(0), Some(2)]
        );
        // 1.3 Mbit/s: the main picture f (1.2M), the thumbnail does not fit (needs 150k) and pauses.
        assert_eq!(
            allocate(1_300_000, &[thumb, main], bitrates),
            [None, Some(2)]
        );
        // 700k: main gets h (500k), thumbnail q (150k).
        assert_eq!(
            allocate(700_000, &[thumb, main], bitrates),
            [Some(0), Some(1)]
        );
        // 100k: nothing fits: both paused (audio only).
        assert_eq!(allocate(100_000, &[thumb, main], bitrates), [None, None]);
        // A paused consumer resumes only with headroom: 160k fits q (150k) but not 1.3 × 150k.
        let paused = Want {
            paused: true,
            ..main
        };
        assert_eq!(allocate(160_000, &[paused], bitrates), [None]);
        assert_eq!(allocate(200_000, &[paused], bitrates), [Some(0)]);
        // The cap (limit) holds even with bandwidth to spare; one layer only: layer 0.
        let capped = Want { limit: 1, ..main };
        assert_eq!(allocate(5_000_000, &[capped], bitrates), [Some(1)]);
        let single = Want {
            layers: 1,
            limit: 2,
            paused: false,
        };
        assert_eq!(allocate(5_000_000, &[single], bitrates), [Some(0)]);
    }
}
