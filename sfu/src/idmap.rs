//! Maps keyed by ids the worker hands out itself (connection and producer numbers): looked up per packet (a
//! consumer's connection, per packet per subscriber), where the standard library's SipHash cost ~150 instructions
//! a lookup (`loadtest/callgrind.sh`). The keys are not chosen by peers, so a keyless multiplicative hash is safe
//! here; maps keyed by what arrives from the network (addresses, SSRCs) keep the keyed default.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by a worker-assigned integer id.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of an integer: the multiply spreads consecutive ids over the high bits hashbrown uses.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by integer keys; correct for anything else.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_differ_in_the_high_bits() {
        let top7 = |n: u64| {
            let mut h = IdHasher::default();
            h.write_u64(n);
            h.finish() >> 57
        };
        let distinct: std::collections::HashSet<u64> = (1..=64).map(top7).collect();
        assert!(distinct.len() > 40, "{} distinct of 64", distinct.len());
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        let mut m: IdMap<u64, u64> = IdMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert!((0..10_000).all(|i| m.get(&i) == Some(&(i * 2))));
        assert_eq!(m.get(&10_000), None);
    }
}
