//! [`AtomicHistogram`]: a Prometheus histogram that an observation updates with two
//! atomic adds, no lock.
//!
//! prometheus-client's own `Histogram` takes a mutex per observation; the request path
//! and the storage writer observe on every request and every commit, so they use this
//! one. Values are integers in a base unit (nanoseconds, records) and are scaled to the
//! exported unit (seconds, records) only when scraped.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds of the latency buckets, in nanoseconds: 50 µs doubling up to ~6.6 s
/// (18 buckets), which covers a cached read on loopback up to a request timeout.
pub const LATENCY_BOUNDS_NANOS: [u64; 18] = {
    let mut bounds = [0u64; 18];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 50_000 << i;
        i += 1;
    }
    bounds
};

/// Upper bounds of the group commit size buckets, in records: 1 to 512 (the writer's
/// largest batch), doubling.
pub const COMMIT_SIZE_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// Nanoseconds per second: latency histograms count nanoseconds and export seconds.
pub const NANOS_PER_SECOND: f64 = 1e9;

/// A histogram with fixed bucket bounds, updated with atomics only.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Inclusive upper bound of each bucket, in base units, ascending.
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of all observations, in base units.
    sum: AtomicU64,
    /// Base units per exported unit (1e9 for nanoseconds exported as seconds).
    per_unit: f64,
}

impl AtomicHistogram {
    /// An empty histogram with buckets `bounds` (base units) exported divided by `per_unit`.
    pub fn new(bounds: &'static [u64], per_unit: f64) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            per_unit,
        }
    }

    /// A latency histogram: nanoseconds in, seconds out.
    pub fn latency() -> AtomicHistogram {
        AtomicHistogram::new(&LATENCY_BOUNDS_NANOS, NANOS_PER_SECOND)
    }

    /// Records one observation of `value` base units.
    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// `(upper bound, count)` per bucket in exported units, ending with `+Inf`; counts
    /// are per bucket, not cumulative (the encoder accumulates them).
    fn buckets(&self) -> Vec<(f64, u64)> {
        let bounds = self.bounds.iter().map(|b| *b as f64 / self.per_unit);
        bounds
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter())
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect()
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets = self.buckets();
        // The count from the same reads, so `_count` always equals the `+Inf` bucket.
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.per_unit;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = AtomicHistogram::new(&COMMIT_SIZE_BOUNDS, 1.0);
        for value in [1, 2, 3, 512, 513] {
            h.observe(value);
        }
        let buckets = h.buckets();
        assert_eq!(buckets[0], (1.0, 1), "1 <= 1");
        assert_eq!(buckets[1], (2.0, 1), "2 <= 2");
        assert_eq!(buckets[2], (4.0, 1), "3 <= 4");
        assert_eq!(buckets[9], (512.0, 1));
        assert_eq!(buckets[10], (f64::INFINITY, 1), "513 only in +Inf");
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn latency_is_exported_in_seconds() {
        let h = AtomicHistogram::latency();
        h.observe(1_500_000_000);
        let buckets = h.buckets();
        assert_eq!(buckets[0].0, 0.00005);
        let first_holding = buckets.iter().find(|(_, c)| *c == 1).unwrap();
        assert!(first_holding.0 >= 1.5 && first_holding.0 < 3.3, "{first_holding:?}");
    }
}
