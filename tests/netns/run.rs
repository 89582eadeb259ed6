//! One scenario's life: start a cluster and clients, log faults, then heal, converge,
//! check and report.
//!
//! Scenarios run one at a time ([`Run::begin`] takes a process-wide lock): each wants the
//! machine's cores. The report names the seed, time, operations checked, faults injected
//! and why operations failed; a scenario that breaks a promise panics with the
//! violations and keeps the nodes' data and logs.

use std::time::{Duration, Instant};

use quorumkv::history::{Op, Outcome as OpOutcome};

use crate::cluster::NetCluster;
use crate::common::Shape;
use crate::workload::{self, settle_and_check, Mix, Workload};

/// Concurrent clients per scenario.
const CLIENTS: usize = 4;
/// Operations the clients complete while one fault (or the healthy cluster) holds.
pub const PHASE: usize = 1500;
/// P3's bound: replicas agree this soon after heal (anti-entropy runs every second).
const CONVERGENCE_BOUND: Duration = Duration::from_secs(40);
/// Settings shared by the scenarios: quick failure detection and anti-entropy.
pub const FAST_CONVERGENCE: &str = "[convergence]\nanti_entropy_interval_ms = 1000\nping_interval_ms = 250\n";
/// Request timeout: short, so a dead node costs clients little.
const TIMEOUT_MS: u64 = 1_000;

/// One scenario is in progress at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn shape(nodes: usize, extra: &str) -> Shape {
    Shape {
        nodes,
        timeout_ms: TIMEOUT_MS,
        ..Shape::three()
    }
    .with(extra)
}

/// A running scenario: cluster, clients, and the faults injected so far.
pub struct Run {
    /// Names the scenario in its report.
    name: &'static str,
    /// When the clients started: fault times count from here.
    started: Instant,
    /// Seeds the clients' choice of operations (`QKV_SEED` repeats it).
    seed: u64,
    /// Faults injected so far, with their times.
    faults: Vec<String>,
    /// The node processes and their namespaces.
    pub cluster: NetCluster,
    /// The clients and their history.
    pub workload: Workload,
    /// Held for the whole scenario: one at a time.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Run {
    /// Starts the cluster and the clients, or prints why it cannot and returns `None`.
    pub async fn begin(name: &'static str, shape: Shape, skew: Vec<Option<String>>, mix: Mix) -> Option<Run> {
        let serial = SERIAL.lock().await;
        let cluster = match NetCluster::start(shape, skew).await {
            Ok(cluster) => cluster,
            Err(why) => {
                println!("SKIPPED {name}: network namespaces unavailable: {why}");
                return None;
            }
        };
        let seed = std::env::var("QKV_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.map_or(1, |d| d.as_nanos() as u64)
            });
        let first = cluster.client().await;
        cluster.wait_all_up(&first).await;
        let mut clients = vec![first];
        for _ in 1..CLIENTS {
            clients.push(cluster.client().await);
        }
        let workload = Workload::start(clients, mix, seed);
        Some(Run {
            name,
            started: Instant::now(),
            seed,
            faults: Vec::new(),
            cluster,
            workload,
            _serial: serial,
        })
    }

    /// Logs a fault (with the time since the start) after injecting it.
    pub fn fault(&mut self, what: &str) {
        let at = self.started.elapsed().as_secs_f64();
        self.faults.push(format!("{at:.1} s: {what}"));
    }

    pub async fn ops(&self, count: usize) {
        self.workload.run_ops(count).await;
    }

    /// Heals everything, stops the clients, converges, checks and reports.
    pub async fn check(&mut self) -> workload::Outcome {
        self.cluster.lab.heal();
        self.workload.stop().await;
        let keys = self.workload.mix.keys;
        let outcome = settle_and_check(&self.cluster, &self.workload.recorder, keys, CONVERGENCE_BOUND).await;
        println!(
            "SCENARIO {}: seed {}, {:.1} s, {} keys differed at heal, converged {:.1} s after heal\n  \
             history: {}\n  faults ({}):\n    {}",
            self.name,
            self.seed,
            self.started.elapsed().as_secs_f64(),
            outcome.differed_at_heal,
            outcome.converged_after.as_secs_f64(),
            outcome.summary,
            self.faults.len(),
            self.faults.join("\n    ")
        );
        if let Ok(dir) = std::env::var("QKV_HISTORY_DIR") {
            let lines: Vec<String> = outcome.history.iter().map(|op| op.to_string()).collect();
            let path = std::path::Path::new(&dir).join(format!("{}.history", self.name));
            std::fs::write(&path, lines.join("\n")).expect("write the history");
            println!("  history written to {}", path.display());
        }
        for (reason, count) in failure_reasons(&outcome.history) {
            println!("  {count} x {reason}");
        }
        outcome
    }

    /// [`Run::check`], then panics with the violations (and keeps the nodes' logs) if any
    /// promise was broken.
    pub async fn finish(mut self) {
        let outcome = self.check().await;
        if outcome.violations.is_empty() {
            return;
        }
        let shown: Vec<String> = outcome.violations.iter().take(20).map(|v| v.to_string()).collect();
        let logs: Vec<String> = (0..self.cluster.ids.len())
            .map(|i| format!("--- {} log:\n{}", self.cluster.ids[i], self.cluster.log_tail(i, 15)))
            .collect();
        let kept = self.cluster.keep_dir();
        panic!(
            "{}: {} violations (seed {}, data and logs kept in {}):\n{}\n{}",
            self.name,
            outcome.violations.len(),
            self.seed,
            kept.display(),
            shown.join("\n"),
            logs.join("\n")
        );
    }
}

/// Why operations failed or ended indeterminate, with digits masked, most common first.
fn failure_reasons(history: &[Op]) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for op in history {
        let why = match &op.outcome {
            OpOutcome::Failed(why) => format!("failed: {why}"),
            OpOutcome::Indeterminate(why) => format!("indeterminate: {why}"),
            _ => continue,
        };
        let masked: String = why.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
        *counts.entry(masked).or_insert(0) += 1;
    }
    let mut sorted: Vec<(String, usize)> = counts.into_iter().collect();
    sorted.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    sorted.truncate(6);
    sorted
}
