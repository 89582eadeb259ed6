//! Versions: which copy of a key is newest.
//!
//! A [`Version`] is `(timestamp µs, writer id)` compared lexicographically, a total order
//! so every replica picks the same winner. The timestamp comes from a hybrid logical clock
//! ([`HybridClock`]) kept by the writer: `max(wall clock, last + 1)`, and advanced past
//! every version the writer reads, so a read-modify-write never goes back in time.
//! Pure code: the wall-clock reading is passed in.
//!
//! Two bounds keep one bad version from poisoning a writer. A version read that leads
//! the writer's wall clock by more than the cluster's clock-skew limit is not observed
//! (no node accepts a write that far ahead, so moving there, or to the limit, would only
//! get this writer's later writes to every key refused for skew; the key holding it stays
//! unwritable until time catches up, which the clock cannot change). And a clock at the
//! largest timestamp refuses to issue another version rather than wrap around.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The cluster's default clock-skew limit (cluster.toml `limits.max_clock_skew_ms`): how
/// far ahead of a node's clock a version may be, and how far ahead of its own clock a
/// client follows a version it reads.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

/// The clock already issued the largest timestamp there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this writer's clock reached the largest timestamp ({last} µs): it cannot issue a newer version; use a new writer"
)]
pub struct ClockExhausted {
    /// The last timestamp issued or observed.
    pub last: u64,
}

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

    /// The version for a new write, given the wall clock now; an error once the clock
    /// has issued `u64::MAX` (it never repeats a version).
    pub fn next(&mut self, wall_micros: u64) -> Result<Version, ClockExhausted> {
        let after_last = self.last.checked_add(1).ok_or(ClockExhausted { last: self.last })?;
        self.last = wall_micros.max(after_last);
        Ok(Version {
            micros: self.last,
            writer: self.writer,
        })
    }

    /// Moves the clock past a version read from a replica, unless that version leads the
    /// wall clock `wall_micros` by more than `max_lead_micros` (see the module doc).
    /// Returns whether the version was within that bound.
    pub fn observe(&mut self, seen: Version, wall_micros: u64, max_lead_micros: u64) -> bool {
        if seen.micros.saturating_sub(wall_micros) > max_lead_micros {
            return false;
        }
        self.last = self.last.max(seen.micros);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{ClockExhausted, HybridClock, Version};

    /// A clock-skew limit for the tests: 5 s in µs.
    const LIMIT: u64 = 5_000_000;

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
        assert_eq!(c.next(100), Ok(v(100, 7)));
        assert_eq!(c.next(100), Ok(v(101, 7)), "same wall reading still advances");
        assert_eq!(c.next(50), Ok(v(102, 7)), "wall clock going back does not");
        assert_eq!(c.next(500), Ok(v(500, 7)));
    }

    #[test]
    fn clock_moves_past_observed_versions() {
        let mut c = HybridClock::new(1);
        assert!(c.observe(v(1_000, 2), 10, LIMIT));
        assert_eq!(
            c.next(10),
            Ok(v(1_001, 1)),
            "a write after a read is newer than what was read"
        );
        assert!(c.observe(v(5, 3), 10, LIMIT));
        assert_eq!(c.next(10), Ok(v(1_002, 1)), "observing an old version changes nothing");
    }

    #[test]
    fn versions_beyond_the_skew_limit_are_not_followed() {
        let now = 1_700_000_000_000_000;
        let ten_years = 10 * 365 * 24 * 3600 * 1_000_000;
        let mut c = HybridClock::new(1);
        assert!(c.observe(v(now + LIMIT, 2), now, LIMIT), "at the limit: followed");
        assert_eq!(c.next(now), Ok(v(now + LIMIT + 1, 1)));
        let mut c = HybridClock::new(1);
        for far in [now + LIMIT + 1, now + ten_years, u64::MAX] {
            assert!(!c.observe(v(far, 2), now, LIMIT), "{far} is ignored");
        }
        assert_eq!(c.next(now), Ok(v(now, 1)), "the clock stays on wall time");
    }

    #[test]
    fn a_clock_at_the_largest_timestamp_refuses_instead_of_wrapping() {
        let mut c = HybridClock::new(1);
        assert_eq!(c.next(u64::MAX), Ok(v(u64::MAX, 1)));
        assert_eq!(c.next(u64::MAX), Err(ClockExhausted { last: u64::MAX }));
        assert_eq!(c.next(5), Err(ClockExhausted { last: u64::MAX }), "and stays refused");
        let mut c = HybridClock::new(1);
        assert!(c.observe(v(u64::MAX, 2), u64::MAX - 1, LIMIT));
        assert!(c.next(0).is_err(), "after observing the largest timestamp too");
    }
}
