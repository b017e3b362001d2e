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
/// subscriber reports in its receiver reports (the loss-based half of GCC; rtc 0.21's delay-based GCC is opt-in,
/// runs on the sending side and does not probe). Loss reports come in bursts, so they are smoothed (each new
/// sample weighs 40 %). A link is taken as unconstrained until it loses packets: once
/// loss stays above 10 % for a second (a single bad report, e.g. a CPU stall, does not count) the estimate becomes
/// what got through (delivered × (1 − loss)) less 10 %, is held for 2 s, and grows by 8 % a second (at least
/// 50 kbit/s a second) while loss stays under 2 % (the next layer up is then tried, and its loss tells).
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
}

pub const MIN_ESTIMATE: u64 = 30_000;
/// Unconstrained: every consumer gets what its tile and cap allow.
pub const MAX_ESTIMATE: u64 = 20_000_000;
const HIGH_LOSS: f64 = 0.10;
const LOW_LOSS: f64 = 0.02;
const GROWTH_PER_SECOND: f64 = 0.08;
const ADDITIVE_GROWTH_PER_SECOND: f64 = 50_000.0;
const HOLD_AFTER_CUT: Duration = Duration::from_secs(2);
/// Loss must stay high this long before the estimate is cut.
const SUSTAINED_LOSS: Duration = Duration::from_secs(1);

impl Default for Estimator {
    fn default() -> Self {
        Estimator {
            estimate: MAX_ESTIMATE,
            last: None,
            hold_until: None,
            high_since: None,
            loss: None,
        }
    }
}

impl Estimator {
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// The smoothed loss fraction it works from.
    pub fn loss(&self) -> Option<f64> {
        self.loss
    }

    /// New figures for the subscriber's leg: `loss` (fraction, from its latest receiver reports) and the bit rate
    /// the server sent it over the last window.
    pub fn update(&mut self, now: Instant, loss: Option<f64>, delivered: u64) {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(Duration::from_secs(2));
        self.last = Some(now);
        let Some(sample) = loss else {
            return;
        };
        let loss = self
            .loss
            .map_or(sample, |s| 0.6 * s + 0.4 * sample.clamp(0.0, 1.0));
        self.loss = Some(loss);
        if loss > HIGH_LOSS {
            let since = *self.high_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= SUSTAINED_LOSS {
                // Loss persisted: what got through, less 10 %; a further cut needs another second of it.
                self.high_since = Some(now);
                let through = if delivered > 0 {
                    (delivered.min(self.estimate) as f64 * (1.0 - loss.min(1.0)) * 0.9) as u64
                } else {
                    (self.estimate as f64 * (1.0 - 0.5 * loss.min(1.0))) as u64
                };
                self.estimate = through.min(self.estimate);
                self.hold_until = Some(now + HOLD_AFTER_CUT);
            }
        } else {
            self.high_since = None;
            if loss < LOW_LOSS && self.hold_until.is_none_or(|t| now >= t) {
                // 8 % a second, at least 50 kbit/s a second (a paused link comes back in seconds, not minutes).
                let secs = elapsed.as_secs_f64();
                let grow = (self.estimate as f64 * GROWTH_PER_SECOND * secs)
                    .max(ADDITIVE_GROWTH_PER_SECOND * secs);
                self.estimate = self.estimate.saturating_add(grow as u64);
            }
        }
        self.estimate = self.estimate.clamp(MIN_ESTIMATE, MAX_ESTIMATE);
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
    fn estimate_falls_on_loss_holds_then_grows_on_a_virtual_clock() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut e = Estimator::default();
        // Unconstrained until the link loses packets.
        e.update(t0, Some(0.0), 1_000_000);
        assert_eq!(e.estimate(), MAX_ESTIMATE);
        // One bad report is not enough (a CPU stall): smoothed, it fades before a second has passed.
        e.update(at(500), Some(0.50), 1_000_000);
        assert_eq!(e.estimate(), MAX_ESTIMATE);
        e.update(at(1000), Some(0.0), 1_000_000);
        e.update(at(1500), Some(0.0), 1_000_000);
        e.update(at(2000), Some(0.0), 1_000_000);
        assert!(e.loss().expect("loss") < 0.10);
        assert_eq!(e.estimate(), MAX_ESTIMATE);
        // Bursty loss (NACKs come in bursts) that lasts: cut after a second, to what got through less 10 %.
        for (i, sample) in [0.6, 0.0, 0.6, 0.0].into_iter().enumerate() {
            e.update(at(2500 + 500 * i as u64), Some(sample), 1_000_000);
        }
        let loss = e.loss().expect("loss");
        assert!(loss > 0.10, "smoothed {loss}");
        // Cut at 3.5 s, when the smoothed loss was about a third: 1M × 2/3 × 0.9 ≈ 600k; and again while it lasts.
        let first_cut = e.estimate();
        assert!(
            (550_000..650_000).contains(&first_cut),
            "cut to {first_cut}"
        );
        // The loss ends; while its smoothed value fades there is no growth.
        let mut t = 4000;
        let cut = loop {
            t += 500;
            let before = e.estimate();
            e.update(at(t), Some(0.0), 600_000);
            if e.loss().expect("loss") >= 0.02 {
                assert!(e.estimate() <= before, "no growth while loss fades");
            } else {
                break before;
            }
        };
        assert!(cut < first_cut);
        // Then 8 % a second (at least 50k) once the smoothed loss is under 2 %.
        assert!(e.estimate() > cut);
        let before = e.estimate();
        e.update(at(t + 1000), Some(0.0), 600_000);
        assert_eq!(
            e.estimate(),
            before + ((before as f64 * 0.08) as u64).max(50_000)
        );
        // No report: no change. Never below the floor.
        let before = e.estimate();
        e.update(at(t + 2000), None, 0);
        assert_eq!(e.estimate(), before);
        for i in 0..40 {
            e.update(at(t + 3000 + 1000 * i), Some(0.9), 10_000);
        }
        assert_eq!(e.estimate(), MIN_ESTIMATE);
        // Recovery: at least 50 kbit/s a second once the loss is gone and has faded.
        let mut t = t + 43_000;
        while e.loss().expect("loss") >= 0.02 || e.estimate() == MIN_ESTIMATE {
            t += 1000;
            e.update(at(t), Some(0.0), 40_000);
            assert!(t < 200_000, "never recovers");
        }
        let before = e.estimate();
        e.update(at(t + 1000), Some(0.0), 40_000);
        assert_eq!(e.estimate(), before + 50_000);
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
