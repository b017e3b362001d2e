//! Keyframe requests towards a publisher, throttled: at most one PLI per producer per interval; a request that
//! arrives inside the interval is remembered and sent when the interval ends.

use std::time::{Duration, Instant};

/// A quarter of a second: a join wave (many subscribers connecting at once) gets its first picture within about
/// that of connecting, while a publisher still gets at most four requests a second per layer.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
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
        }
    }

    /// Someone wants a keyframe. Returns true if a PLI should be sent now.
    pub fn request(&mut self, now: Instant) -> bool {
        if self
            .last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval)
        {
            self.last_sent = Some(now);
            self.pending = false;
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// Called on a tick: true if a deferred request is now due.
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

    #[test]
    fn at_most_one_per_interval_and_deferred_ones_are_sent_later() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        assert!(k.request(t0));
        assert!(!k.request(t0 + Duration::from_millis(100)));
        assert!(!k.request(t0 + Duration::from_millis(200)));
        assert!(!k.poll(t0 + Duration::from_millis(249)));
        assert_eq!(k.next_due(), Some(t0 + DEFAULT_INTERVAL));
        assert!(k.poll(t0 + Duration::from_millis(250)));
        // Nothing pending any more.
        assert!(!k.poll(t0 + Duration::from_millis(2000)));
        assert_eq!(k.next_due(), None);
        assert!(k.request(t0 + Duration::from_millis(2000)));
    }
}
