//! What `quorumkv bench` measured and how it is shown: a phase's [`Recorder`] (latency
//! histograms, error counts by kind, shared by its workers) becomes a [`PhaseReport`],
//! printed as a table or serialised as one JSON object.
//!
//! Latencies are recorded in microseconds in hdrhistogram with 3 significant digits.
//! Only successful operations enter the histograms; failed ones are counted per
//! operation and per error kind (see [`error_kind`]), with one example message per kind.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use quorumkv_client::{ClientError, FailureReason};
use serde::Serialize;

use super::usage::CpuUse;
use super::workload::{Op, Workload};

/// Longest latency a histogram holds exactly, in µs; longer ones are clamped to it.
const MAX_LATENCY_US: u64 = 600_000_000;
/// Significant decimal digits of the histograms.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A phase's measurements, recorded by all of its workers.
pub struct Recorder {
    /// Reads.
    read: OpRecorder,
    /// Writes.
    write: OpRecorder,
    /// Failed operations by [`error_kind`].
    errors: BTreeMap<String, ErrorSummary>,
}

/// Measurements of one operation type.
struct OpRecorder {
    /// Latencies of successful operations, µs.
    latency: Histogram<u64>,
    /// Failed operations.
    errors: u64,
    /// Reads that found no value (the key was not loaded).
    not_found: u64,
}

/// Failures of one kind.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorSummary {
    /// How many operations failed this way.
    pub count: u64,
    /// The first such error's message, to show what it was.
    pub example: String,
}

impl OpRecorder {
    fn new() -> anyhow::Result<OpRecorder> {
        Ok(OpRecorder {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)?,
            errors: 0,
            not_found: 0,
        })
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> anyhow::Result<Recorder> {
        Ok(Recorder {
            read: OpRecorder::new()?,
            write: OpRecorder::new()?,
            errors: BTreeMap::new(),
        })
    }

    /// Records one operation: `Ok(found)` (writes always "found") or its error.
    pub fn record(&mut self, op: Op, latency: Duration, outcome: Result<bool, ClientError>) {
        let slot = match op {
            Op::Read => &mut self.read,
            Op::Write => &mut self.write,
        };
        match outcome {
            Ok(found) => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                slot.latency.saturating_record(micros.max(1));
                slot.not_found += u64::from(!found);
            }
            Err(e) => {
                slot.errors += 1;
                let summary = self.errors.entry(error_kind(&e)).or_insert_with(|| ErrorSummary {
                    count: 0,
                    example: e.to_string(),
                });
                summary.count += 1;
            }
        }
    }

    /// Successful operations of every type.
    pub fn successes(&self) -> u64 {
        self.read.latency.len() + self.write.latency.len()
    }
}

/// A short, stable name for what went wrong, for counting errors by kind. A quorum
/// failure is named after its first replica failure.
pub fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::InvalidOptions(_) => "invalid_options".into(),
        ClientError::TooLarge { .. } => "too_large".into(),
        ClientError::NoSeed { .. } => "no_seed".into(),
        ClientError::BadMemberList(_) => "bad_member_list".into(),
        ClientError::Tls(_) => "tls".into(),
        ClientError::Endpoint(_) => "endpoint".into(),
        ClientError::Randomness(_) => "randomness".into(),
        ClientError::Clock(_) => "clock_exhausted".into(),
        ClientError::Unavailable { failures, .. } => match failures.first() {
            Some(failure) => reason_kind(&failure.reason),
            None => "unavailable".into(),
        },
    }
}

fn reason_kind(reason: &FailureReason) -> String {
    match reason {
        FailureReason::Timeout => "timeout".into(),
        FailureReason::Unreachable(_) => "unreachable".into(),
        FailureReason::Stale { .. } => "stale".into(),
        // Named after the variant, so kinds added to the protocol need no change here.
        FailureReason::Refused(reply) => format!("refused_{}", snake_case(&format!("{:?}", reply.kind))),
    }
}

/// `StaleEpoch` -> `stale_epoch`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Results of one workload phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Which workload ran.
    pub workload: Workload,
    /// Wall time from the first request to the last answer, seconds.
    pub elapsed_s: f64,
    /// Successful operations of every type.
    pub ops: u64,
    /// `ops / elapsed_s`.
    pub ops_per_s: f64,
    /// Failed operations of every type.
    pub errors: u64,
    /// Per operation type (`read`, `write`) that ran at least once.
    pub operations: BTreeMap<&'static str, OpStats>,
    /// Failed operations by kind.
    pub errors_by_kind: BTreeMap<String, ErrorSummary>,
    /// CPU per operation, when it could be measured.
    pub cpu: Option<CpuUse>,
    /// Largest peak resident memory of a spawned node so far, MiB (`--spawn` only).
    pub nodes_peak_rss_mib: Option<u64>,
}

/// Throughput and latency of one operation type.
#[derive(Debug, Clone, Serialize)]
pub struct OpStats {
    /// Successful operations.
    pub count: u64,
    /// Failed operations.
    pub errors: u64,
    /// Reads that found nothing (counted as successes); always 0 for writes.
    pub not_found: u64,
    /// Successful operations per second of the phase.
    pub ops_per_s: f64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Slowest successful operation, µs.
    pub max_us: u64,
}

impl OpStats {
    fn of(rec: &OpRecorder, elapsed_s: f64) -> OpStats {
        let h = &rec.latency;
        OpStats {
            count: h.len(),
            errors: rec.errors,
            not_found: rec.not_found,
            ops_per_s: h.len() as f64 / elapsed_s,
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl PhaseReport {
    /// The report of a phase that took `elapsed` and measured `rec`.
    pub fn new(workload: Workload, elapsed: Duration, rec: Recorder, cpu: Option<CpuUse>) -> PhaseReport {
        // Guards the rates against a zero-length phase (e.g. `--ops 0`).
        let elapsed_s = elapsed.as_secs_f64().max(1e-9);
        let mut operations = BTreeMap::new();
        for (name, slot) in [("read", &rec.read), ("write", &rec.write)] {
            if slot.latency.len() + slot.errors > 0 {
                operations.insert(name, OpStats::of(slot, elapsed_s));
            }
        }
        let ops = rec.successes();
        PhaseReport {
            workload,
            elapsed_s,
            ops,
            ops_per_s: ops as f64 / elapsed_s,
            errors: rec.read.errors + rec.write.errors,
            operations,
            errors_by_kind: rec.errors,
            cpu,
            nodes_peak_rss_mib: None,
        }
    }

    /// The phase as a human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "workload {}: {} ops in {:.1} s = {:.0} ops/s, {} errors",
            self.workload.name(),
            self.ops,
            self.elapsed_s,
            self.ops_per_s,
            self.errors
        );
        let _ = writeln!(
            out,
            "  {:<6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
            "op", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "not found"
        );
        for (name, s) in &self.operations {
            let ms = |us: u64| us as f64 / 1000.0;
            let _ = writeln!(
                out,
                "  {name:<6} {:>10} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>9}",
                s.count,
                s.ops_per_s,
                ms(s.p50_us),
                ms(s.p90_us),
                ms(s.p99_us),
                ms(s.p999_us),
                ms(s.max_us),
                s.errors,
                s.not_found
            );
        }
        if let Some(cpu) = &self.cpu {
            let nodes = cpu
                .nodes_us_per_op
                .map(|us| format!(", nodes {us:.1} µs/op"))
                .unwrap_or_default();
            let rss = self
                .nodes_peak_rss_mib
                .map(|mib| format!("; node peak memory {mib} MiB"))
                .unwrap_or_default();
            let machine = cpu
                .machine_idle_pct
                .zip(cpu.machine_iowait_pct)
                .map(|(idle, iowait)| format!(" (machine {idle:.0}% idle, {iowait:.0}% waiting on disk)"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  cpu: client {:.1} µs/op{nodes}, {:.2} cores busy{machine}{rss}",
                cpu.client_us_per_op, cpu.cores
            );
        }
        for (kind, e) in &self.errors_by_kind {
            let _ = writeln!(out, "  error {kind}: {} (e.g. {})", e.count, e.example);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_client::wire::{ErrorKind, ErrorReply};
    use quorumkv_client::{ReplicaFailure, Version};

    fn unavailable(reasons: &[FailureReason]) -> ClientError {
        ClientError::Unavailable {
            needed: 2,
            acked: 0,
            contacted: 3,
            failures: reasons
                .iter()
                .map(|r| ReplicaFailure {
                    node: "n1".into(),
                    reason: r.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn errors_get_short_kinds() {
        let storage = FailureReason::Refused(ErrorReply {
            kind: ErrorKind::Storage,
            message: "disk".into(),
        });
        let epoch = FailureReason::Refused(ErrorReply {
            kind: ErrorKind::StaleEpoch,
            message: "moved".into(),
        });
        let stale = FailureReason::Stale {
            current: Version { micros: 1, writer: 1 },
        };
        let cases = [
            (ClientError::InvalidOptions("w".into()), "invalid_options"),
            (unavailable(&[FailureReason::Timeout]), "timeout"),
            (unavailable(&[FailureReason::Unreachable("x".into())]), "unreachable"),
            (unavailable(&[stale]), "stale"),
            (unavailable(&[storage]), "refused_storage"),
            (unavailable(&[epoch]), "refused_stale_epoch"),
            (unavailable(&[]), "unavailable"),
        ];
        for (error, kind) in cases {
            assert_eq!(error_kind(&error), kind, "{error}");
        }
    }

    #[test]
    fn recorders_report_counts_and_percentiles() {
        let mut total = Recorder::new().unwrap();
        for worker in 0..2u64 {
            for i in 1..=100u64 {
                total.record(Op::Write, Duration::from_micros(i * 10 + worker), Ok(true));
            }
            total.record(Op::Read, Duration::from_micros(50), Ok(false));
            total.record(Op::Read, Duration::ZERO, Err(unavailable(&[FailureReason::Timeout])));
        }
        let report = PhaseReport::new(Workload::A, Duration::from_secs(2), total, None);
        assert_eq!((report.ops, report.errors), (202, 2));
        let write = &report.operations["write"];
        assert_eq!(write.count, 200);
        assert!(write.p50_us <= write.p99_us && write.p99_us <= write.max_us);
        assert!((495..=505).contains(&write.p50_us), "{}", write.p50_us);
        assert_eq!(report.operations["read"].not_found, 2);
        assert_eq!(report.errors_by_kind["timeout"].count, 2);
        let table = report.table();
        assert!(table.contains("workload a: 202 ops"), "{table}");
        assert!(table.contains("error timeout: 2"), "{table}");
    }
}
