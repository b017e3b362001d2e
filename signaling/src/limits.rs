//! Abuse limits of the control plane: connections per client address, join attempts per address per minute, and
//! messages per session per second. Exceeding one is refused with a clear error; nobody else is affected.

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token bucket on a caller-given clock: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Take one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-address state shared by all sessions.
pub struct ClientLimits {
    max_connections: usize,
    joins_per_minute: u32,
    connections: DashMap<IpAddr, usize>,
    joins: DashMap<IpAddr, TokenBucket>,
}

/// Held for as long as a WebSocket is open; frees its address's slot when dropped.
pub struct ConnectionSlot {
    limits: Arc<ClientLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let empty = self
            .limits
            .connections
            .get_mut(&self.ip)
            .map(|mut n| {
                *n = n.saturating_sub(1);
                *n == 0
            })
            .unwrap_or(false);
        if empty {
            self.limits.connections.remove_if(&self.ip, |_, n| *n == 0);
        }
    }
}

impl ClientLimits {
    pub fn new(max_connections: usize, joins_per_minute: u32) -> Arc<Self> {
        Arc::new(ClientLimits {
            max_connections,
            joins_per_minute,
            connections: DashMap::new(),
            joins: DashMap::new(),
        })
    }

    /// A new WebSocket from `ip`: a slot, or `None` if the address has its maximum open.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut n = self.connections.entry(ip).or_insert(0);
        if *n >= self.max_connections {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// A join attempt from `ip`: allowed, or over `joins_per_minute` (bursts of that many allowed).
    pub fn join_attempt(&self, ip: IpAddr, now: Instant) -> bool {
        let per_minute = f64::from(self.joins_per_minute.max(1));
        let mut bucket = self
            .joins
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(per_minute / 60.0, per_minute, now));
        bucket.try_take(now)
    }

    /// Forget join buckets that have been full for a while (called now and then).
    pub fn prune(&self, now: Instant) {
        self.joins
            .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(600));
    }

    pub fn open_connections(&self, ip: IpAddr) -> usize {
        self.connections.get(&ip).map_or(0, |n| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        assert!((0..5).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(160)));
        // Long idle refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 5);
    }

    #[test]
    fn connections_per_address_are_counted_and_freed() {
        let limits = ClientLimits::new(2, 60);
        let ip: IpAddr = "10.1.1.1".parse().expect("ip");
        let other: IpAddr = "10.1.1.2".parse().expect("ip");
        let a = limits.open(ip).expect("first");
        let _b = limits.open(ip).expect("second");
        assert!(limits.open(ip).is_none(), "third refused");
        assert!(limits.open(other).is_some(), "another address unaffected");
        drop(a);
        assert_eq!(limits.open_connections(ip), 1);
        assert!(limits.open(ip).is_some(), "a freed slot can be used");
    }

    #[test]
    fn join_attempts_per_minute() {
        let t0 = Instant::now();
        let limits = ClientLimits::new(10, 3);
        let ip: IpAddr = "10.1.1.1".parse().expect("ip");
        assert!((0..3).all(|_| limits.join_attempt(ip, t0)));
        assert!(!limits.join_attempt(ip, t0 + Duration::from_secs(1)));
        assert!(limits.join_attempt(ip, t0 + Duration::from_secs(21)));
        assert!(limits.join_attempt("10.9.9.9".parse().expect("ip"), t0));
    }
}
