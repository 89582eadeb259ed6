//! The closed loop of `quorumkv bench`: `concurrency` workers each keep one request in
//! flight against the cluster until the phase's budget (operation count or duration) is
//! spent, recording into one shared [`Recorder`] (one per worker meant 128 latency
//! histograms of ~170 KiB each, and a cache miss on every record); a progress line on
//! stderr shows the operations so far and the current rate about once a second.
//!
//! Every worker shares the one [`Client`] (and so its connections): that is what an
//! application embedding the client does. `load` hands out key positions from a shared
//! counter so every key is written exactly once.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use quorumkv_client::{Client, ReadOptions, WriteOptions};
use tokio_util::sync::CancellationToken;

use super::report::{PhaseReport, Recorder};
use super::usage::{peak_rss_mib, CpuSnapshot};
use super::workload::{key_name, mix64, KeyChooser, Op, Permutation, SplitMix64, ValuePool, Workload};

/// How often the progress line is refreshed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// After this many operations (successful or not).
    Ops(u64),
    /// Once this much time has passed (requests in flight still complete).
    Time(Duration),
}

/// One phase of a bench run.
#[derive(Clone)]
pub struct Phase {
    /// What to run.
    pub workload: Workload,
    /// When to stop (`load` always writes each key once).
    pub budget: Budget,
    /// Requests in flight.
    pub concurrency: usize,
    /// Which keys reads and updates touch.
    pub chooser: Arc<KeyChooser>,
    /// Order of `load`'s inserts.
    pub load_order: Permutation,
    /// Size of every written value.
    pub value_size: usize,
    /// Quorum options of reads.
    pub read: ReadOptions,
    /// Quorum options of writes.
    pub write: WriteOptions,
    /// Seeds the workers' generators (worker i uses a mix of seed and i).
    pub seed: u64,
}

/// State the workers share.
struct Shared {
    /// Operations handed out so far (the `Ops` budget and `load`'s key positions).
    tickets: AtomicU64,
    /// Operations finished so far, for the progress line.
    done: AtomicU64,
    /// Failed operations so far, for the progress line.
    failed: AtomicU64,
    /// Every worker's measurements.
    recorder: Mutex<Recorder>,
}

/// Runs `phase` against `client` and reports what it measured.
/// `node_pids` are the processes whose CPU counts as the nodes' (none: not measured).
pub async fn run_phase(client: &Client, phase: &Phase, node_pids: &[u32]) -> anyhow::Result<PhaseReport> {
    let shared = Arc::new(Shared {
        tickets: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        recorder: Mutex::new(Recorder::new()?),
    });
    let cpu_before = CpuSnapshot::take(node_pids);
    let start = Instant::now();
    let deadline = match phase.budget {
        Budget::Time(d) => Some(start + d),
        Budget::Ops(_) => None,
    };
    let mut workers = Vec::with_capacity(phase.concurrency);
    for i in 0..phase.concurrency {
        let worker = Worker {
            client: client.clone(),
            phase: phase.clone(),
            shared: shared.clone(),
            deadline,
            rng: SplitMix64::new(mix64(phase.seed ^ mix64(i as u64))),
        };
        workers.push(tokio::spawn(worker.run()));
    }
    let stop_progress = CancellationToken::new();
    let progress = tokio::spawn(show_progress(phase.workload, shared.clone(), stop_progress.clone()));
    for worker in workers {
        worker.await.context("a bench worker panicked")?;
    }
    let total = std::mem::replace(&mut *lock(&shared.recorder), Recorder::new()?);
    let elapsed = start.elapsed();
    stop_progress.cancel();
    let _ = progress.await;
    let cpu_after = CpuSnapshot::take(node_pids);
    let ops = total.successes();
    let cpu = cpu_before.usage(&cpu_after, ops, elapsed);
    let mut report = PhaseReport::new(phase.workload, elapsed, total, cpu);
    report.nodes_peak_rss_mib = peak_rss_mib(node_pids);
    Ok(report)
}

/// One closed-loop worker: one request in flight at a time.
struct Worker {
    /// Shared with every other worker.
    client: Client,
    /// What to run.
    phase: Phase,
    /// Budget and progress counters.
    shared: Arc<Shared>,
    /// End of a timed phase.
    deadline: Option<Instant>,
    /// This worker's own generator (operation mix, keys, value offsets).
    rng: SplitMix64,
}

impl Worker {
    async fn run(mut self) {
        let values = ValuePool::new(self.phase.value_size, &mut self.rng);
        while let Some(ticket) = self.next_ticket() {
            let (op, key) = match self.phase.workload {
                Workload::Load => (Op::Write, self.phase.load_order.at(ticket)),
                mix => (mix.next_op(&mut self.rng), self.phase.chooser.next(&mut self.rng)),
            };
            let key = key_name(key);
            let started = Instant::now();
            let outcome = match op {
                Op::Read => self
                    .client
                    .get_with(key, &self.phase.read)
                    .await
                    .map(|found| found.is_some()),
                Op::Write => {
                    let value = values.next(&mut self.rng);
                    self.client.put_with(key, value, &self.phase.write).await.map(|_| true)
                }
            };
            let latency = started.elapsed();
            if outcome.is_err() {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
            lock(&self.shared.recorder).record(op, latency, outcome);
            self.shared.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The position of the next operation, or `None` once the budget is spent.
    fn next_ticket(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let ticket = self.shared.tickets.fetch_add(1, Ordering::Relaxed);
        match self.phase.budget {
            Budget::Ops(n) if ticket >= n => None,
            _ => Some(ticket),
        }
    }
}

/// The shared recorder; a worker that panicked while holding it left whole records.
fn lock(recorder: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    recorder.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prints `ops so far, current ops/s` to stderr every [`PROGRESS_INTERVAL`] until
/// `stop`: rewriting one line on a terminal, one line per update otherwise.
async fn show_progress(workload: Workload, shared: Arc<Shared>, stop: CancellationToken) {
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.tick().await;
    let (mut last_done, mut last_at) = (0u64, Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let (done, now) = (shared.done.load(Ordering::Relaxed), Instant::now());
        let rate = (done - last_done) as f64 / now.duration_since(last_at).as_secs_f64();
        let failed = shared.failed.load(Ordering::Relaxed);
        let line = format!(
            "[{:>5.1} s] {}: {done} ops, {rate:.0} ops/s, {failed} errors",
            started.elapsed().as_secs_f64(),
            workload.name()
        );
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
        (last_done, last_at) = (done, now);
    }
    if terminal {
        eprint!("\r\x1b[2K");
    }
}
