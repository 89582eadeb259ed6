//! Versions: which copy of a key is newest.
//!
//! A [`Version`] is `(timestamp µs, writer id)` compared lexicographically, a total order
//! so every replica picks the same winner. The timestamp comes from a hybrid logical clock
//! ([`HybridClock`]) kept by the writer: `max(wall clock, last + 1)`, and advanced past
//! every version the writer reads, so a read-modify-write never goes back in time.
//! Pure code: the wall-clock reading is passed in.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The version of a record. Larger is newer; equal versions are the same write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Hybrid logical clock reading of the writer, in microseconds since the Unix epoch.
    pub micros: u64,
    /// Identifies the writer, so two writers with the same timestamp still order.
    pub writer: u64,
}

impl Version {
    /// Encoded size of [`Version::to_bytes`].
    pub const ENCODED_LEN: usize = 16;

    /// Big-endian bytes whose byte order is the version order.
    pub fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.micros.to_be_bytes());
        out[8..].copy_from_slice(&self.writer.to_be_bytes());
        out
    }

    /// Inverse of [`Version::to_bytes`].
    pub fn from_bytes(bytes: [u8; Self::ENCODED_LEN]) -> Version {
        let mut micros = [0u8; 8];
        let mut writer = [0u8; 8];
        micros.copy_from_slice(&bytes[..8]);
        writer.copy_from_slice(&bytes[8..]);
        Version {
            micros: u64::from_be_bytes(micros),
            writer: u64::from_be_bytes(writer),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{:016x}", self.micros, self.writer)
    }
}

/// A hybrid logical clock: never repeats, never goes backwards, stays close to wall time.
#[derive(Debug, Clone)]
pub struct HybridClock {
    /// Identifies this writer in every version it issues.
    writer: u64,
    /// The largest timestamp issued or observed so far.
    last: u64,
}

impl HybridClock {
    /// A clock for the writer `writer`.
    pub fn new(writer: u64) -> HybridClock {
        HybridClock { writer, last: 0 }
    }

    /// The version for a new write, given the wall clock now.
    pub fn next(&mut self, wall_micros: u64) -> Version {
        self.last = wall_micros.max(self.last + 1);
        Version {
            micros: self.last,
            writer: self.writer,
        }
    }

    /// Moves the clock past a version read from a replica.
    pub fn observe(&mut self, seen: Version) {
        self.last = self.last.max(seen.micros);
    }
}

#[cfg(test)]
mod tests {
    use super::{HybridClock, Version};

    fn v(micros: u64, writer: u64) -> Version {
        Version { micros, writer }
    }

    #[test]
    fn order_is_timestamp_then_writer() {
        let cases = [(v(1, 9), v(2, 0)), (v(5, 1), v(5, 2)), (v(0, u64::MAX), v(1, 0))];
        for (older, newer) in cases {
            assert!(older < newer, "{older} < {newer}");
            assert!(older.to_bytes() < newer.to_bytes(), "byte order matches for {older}");
        }
    }

    #[test]
    fn bytes_round_trip() {
        let x = v(0x0102_0304_0506_0708, 0xdead_beef);
        assert_eq!(Version::from_bytes(x.to_bytes()), x);
    }

    #[test]
    fn clock_follows_wall_time_and_never_repeats() {
        let mut c = HybridClock::new(7);
        assert_eq!(c.next(100), v(100, 7));
        assert_eq!(c.next(100), v(101, 7), "same wall reading still advances");
        assert_eq!(c.next(50), v(102, 7), "wall clock going back does not");
        assert_eq!(c.next(500), v(500, 7));
    }

    #[test]
    fn clock_moves_past_observed_versions() {
        let mut c = HybridClock::new(1);
        c.observe(v(1_000, 2));
        assert_eq!(
            c.next(10),
            v(1_001, 1),
            "a write after a read is newer than what was read"
        );
        c.observe(v(5, 3));
        assert_eq!(c.next(10), v(1_002, 1), "observing an old version changes nothing");
    }
}
