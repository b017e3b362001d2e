//! Keyframe requests towards a publisher, throttled: at most one PLI per producer layer per interval. A request
//! while a PLI is in flight (sent within the interval, its keyframe not yet arrived) is served by that keyframe:
//! nothing more is sent. A request after the keyframe arrived, inside the interval, is remembered and sent when
//! the interval ends (the worker wakes for it: [`KeyframeThrottle::next_due`]); a keyframe arriving meanwhile
//! serves it too.

use std::time::{Duration, Instant};

/// A browser acts on at most one keyframe request per layer in 300 ms and drops the others (Chromium's
/// `EncoderRtcpFeedback`, `kMinKeyframeSendIntervalMs`): a PLI sooner than that after the last one would be lost,
/// and whoever waited for it would wait another interval. 50 ms more for the network's jitter. A subscriber that
/// connects just after a keyframe came gets its own within about this (and the publisher's answer time).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(350);

#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
    /// A request came after the last keyframe and waits for the interval to end.
    pending: bool,
    /// The last PLI's keyframe has not arrived yet.
    in_flight: bool,
}

impl Default for KeyframeThrottle {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

impl KeyframeThrottle {
    pub fn new(interval: Duration) -> Self {
        KeyframeThrottle {
            interval,
            last_sent: None,
            pending: false,
            in_flight: false,
        }
    }

    /// Someone wants a keyframe that arrives from now on. Returns true if a PLI should be sent now.
    pub fn request(&mut self, now: Instant) -> bool {
        let in_window = self
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval);
        if !in_window {
            self.last_sent = Some(now);
            self.pending = false;
            self.in_flight = true;
            true
        } else {
            // A keyframe already asked for and not yet here serves this request as well; otherwise wait for the
            // interval to end. (A PLI the publisher ignored stops counting as in flight after one interval.)
            if !self.in_flight {
                self.pending = true;
            }
            false
        }
    }

    /// Whether a keyframe arriving now would serve someone (a PLI in flight or a request waiting): only then does
    /// the worker look at whether a packet starts one.
    pub fn wants_keyframe(&self) -> bool {
        self.in_flight || self.pending
    }

    /// A keyframe (its first packet) arrived from the publisher: every request made before it is served.
    pub fn keyframe_arrived(&mut self) {
        self.in_flight = false;
        self.pending = false;
    }

    /// Called when a deferred request may be due: true if it is, and a PLI should be sent now.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.pending && self.request(now)
    }

    /// When a deferred request becomes due, if one is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .then(|| self.last_sent.map_or(Instant::now(), |t| t + self.interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn at_most_one_per_interval_and_deferred_ones_are_sent_later() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        assert!(k.request(t0));
        k.keyframe_arrived();
        assert!(!k.request(t0 + ms(100)));
        assert!(!k.request(t0 + ms(200)));
        assert!(!k.poll(t0 + DEFAULT_INTERVAL - ms(1)));
        assert_eq!(k.next_due(), Some(t0 + DEFAULT_INTERVAL));
        assert!(k.poll(t0 + DEFAULT_INTERVAL));
        // Nothing pending any more.
        assert!(!k.poll(t0 + ms(2000)));
        assert_eq!(k.next_due(), None);
        assert!(k.request(t0 + ms(2000)));
    }

    #[test]
    fn requests_while_a_keyframe_is_in_flight_are_served_by_it() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        assert!(k.request(t0));
        // Others ask before the keyframe came: it serves them, nothing waits.
        assert!(!k.request(t0 + ms(10)));
        assert!(!k.request(t0 + ms(20)));
        assert_eq!(k.next_due(), None);
        assert!(k.wants_keyframe());
        k.keyframe_arrived();
        assert!(!k.wants_keyframe());
        assert!(!k.poll(t0 + DEFAULT_INTERVAL));
        // One asking after it came needs a new one, at the interval's end.
        assert!(!k.request(t0 + ms(40)));
        assert_eq!(k.next_due(), Some(t0 + DEFAULT_INTERVAL));
        assert!(k.poll(t0 + DEFAULT_INTERVAL));
    }

    #[test]
    fn a_keyframe_arriving_serves_a_waiting_request() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        assert!(k.request(t0));
        k.keyframe_arrived();
        assert!(!k.request(t0 + ms(50)));
        assert!(k.wants_keyframe());
        // The publisher sent one anyway (another request, its own schedule): nothing left to send.
        k.keyframe_arrived();
        assert_eq!(k.next_due(), None);
        assert!(!k.poll(t0 + DEFAULT_INTERVAL));
    }

    #[test]
    fn an_unanswered_request_is_sent_again_after_the_interval() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        assert!(k.request(t0));
        assert!(!k.request(t0 + DEFAULT_INTERVAL - ms(10)));
        // No keyframe came within the interval: the next request goes out.
        assert!(k.request(t0 + DEFAULT_INTERVAL + ms(10)));
    }
}
