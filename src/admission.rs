//! Which records a node accepts: the one check every path that stores a record uses.
//!
//! A record reaches storage through a client write (`Put`), a hint held for another
//! replica (`PutHint`), a read repair (a `Put` from the reading client), a record pushed
//! by a peer (hint delivery, `Exchange`) or one pulled by this node's anti-entropy. Each
//! of them calls [`RecordLimits::check`] before storing: the key and the value must fit
//! the cluster's limits, and the version may lead this node's clock by at most
//! `max_clock_skew_ms`. A record from a peer is therefore held to the same rules as one
//! from a client: a far-future version could otherwise win against every later write of
//! its key until the clock catches up with it. Pure code: the clock reading is passed in.

use quorumkv_client::wire::{ErrorKind, Record};
use quorumkv_client::Version;

use crate::config::ClusterConfig;

/// Microseconds per millisecond, for messages in milliseconds.
const MICROS_PER_MILLI: u64 = 1_000;

/// The cluster's limits on a stored record (from cluster.toml's `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// Largest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Largest lead of a record's version over this node's clock, in microseconds.
    pub max_skew_micros: u64,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The key or the value is over its limit.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The version is further ahead of this node's clock than the limit allows.
    #[error(
        "version {version} is {} ms ahead of this node's clock (limit {} ms): check the writer's clock",
        .lead_micros / MICROS_PER_MILLI,
        .limit_micros / MICROS_PER_MILLI
    )]
    ClockSkew {
        /// The refused version.
        version: Version,
        /// How far it leads this node's clock.
        lead_micros: u64,
        /// The limit.
        limit_micros: u64,
    },
}

impl Refusal {
    /// The kind a client sees in its error reply.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Refusal::TooLarge { .. } => ErrorKind::TooLarge,
            Refusal::ClockSkew { .. } => ErrorKind::ClockSkew,
        }
    }
}

impl RecordLimits {
    /// The limits of `config`.
    pub fn of(config: &ClusterConfig) -> RecordLimits {
        RecordLimits {
            max_key_bytes: config.limits.max_key_bytes,
            max_value_bytes: config.limits.max_value_bytes,
            max_skew_micros: config.max_clock_skew().as_micros() as u64,
        }
    }

    /// Whether a key of this size may be read or written.
    pub fn check_key(&self, key: &[u8]) -> Result<(), Refusal> {
        check_len("key", key.len(), self.max_key_bytes)
    }

    /// Whether `record` may be stored under `key` when this node's clock reads
    /// `now_micros`: key size, value size, then clock skew.
    pub fn check(&self, key: &[u8], record: &Record, now_micros: u64) -> Result<(), Refusal> {
        self.check_key(key)?;
        let value_len = record.value.as_ref().map_or(0, |v| v.len());
        check_len("value", value_len, self.max_value_bytes)?;
        let lead_micros = record.version.micros.saturating_sub(now_micros);
        if lead_micros > self.max_skew_micros {
            return Err(Refusal::ClockSkew {
                version: record.version,
                lead_micros,
                limit_micros: self.max_skew_micros,
            });
        }
        Ok(())
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), Refusal> {
    if len > max {
        return Err(Refusal::TooLarge { what, len, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn limits() -> RecordLimits {
        RecordLimits {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_skew_micros: 5_000,
        }
    }

    fn record(micros: u64, value: Option<&'static [u8]>) -> Record {
        Record {
            version: Version { micros, writer: 1 },
            value: value.map(Bytes::from_static),
        }
    }

    #[test]
    fn records_within_every_limit_pass() {
        let cases = [
            (&b"k"[..], record(NOW, Some(b"v"))),
            (b"four", record(NOW + 5_000, Some(b"eight..."))),
            (b"k", record(0, None)),
            (b"", record(NOW - 1, Some(b""))),
        ];
        for (key, record) in cases {
            assert_eq!(limits().check(key, &record, NOW), Ok(()), "{key:?} {record:?}");
        }
    }

    #[test]
    fn each_limit_refuses_with_its_own_kind() {
        let cases = [
            (&b"fives"[..], record(NOW, Some(b"v")), ErrorKind::TooLarge),
            (b"k", record(NOW, Some(b"nine....!")), ErrorKind::TooLarge),
            (b"k", record(NOW + 5_001, Some(b"v")), ErrorKind::ClockSkew),
            (b"k", record(u64::MAX, None), ErrorKind::ClockSkew),
        ];
        for (key, record, kind) in cases {
            let refusal = limits().check(key, &record, NOW).unwrap_err();
            assert_eq!(refusal.kind(), kind, "{refusal}");
        }
    }

    #[test]
    fn a_skew_refusal_says_how_far_ahead_in_milliseconds() {
        let ten_seconds = 10_000_000;
        let refusal = limits().check(b"k", &record(NOW + ten_seconds, None), NOW).unwrap_err();
        let message = refusal.to_string();
        assert!(
            message.contains("10000 ms ahead") && message.contains("limit 5 ms"),
            "{message}"
        );
    }
}
