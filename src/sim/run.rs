//! One simulated run of a [`Plan`]: start the cluster, run the clients' workload while
//! the faults happen, heal everything, wait for convergence; then a purge phase (clients
//! idle, tombstones come of age, short cuts), heal and converge again, then check.
//!
//! Checked after every run: the faults issue's promises P1-P4 over the recorded history
//! ([`crate::history`]), and what only the simulator can see directly: every replica's
//! Merkle trees equal a tree built from its data, no hint is left undelivered, and no
//! tombstone younger than `tombstone_grace_ms` is gone. Must run on a current-thread
//! tokio runtime with a paused clock; everything then follows from the seed, and the
//! network's trace hash is the run's fingerprint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use quorumkv_client::wire::Record;
use quorumkv_client::{Client, ReadOptions, RepairMode, WriteOptions};

use super::cluster::SimCluster;
use super::identity::SimIdentities;
use super::invariants;
use super::net::LinkConfig;
use super::plan::{Fault, Plan};
use super::rng::SimRng;
use super::trace::TraceKind;
use crate::history::{check_convergence, check_final, check_history, Micros, Op, Recorder, Summary, Violation};

/// Longest wait for replicas to agree after the heal (simulated): P3's bound here, a
/// few anti-entropy rounds.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(90);
/// Pause between convergence checks.
const CONVERGENCE_POLL: Duration = Duration::from_millis(500);
/// Simulated time the cluster gets to settle before clients start (pings, trees).
const WARM_UP: Duration = Duration::from_secs(2);
/// Network events shown for a failing run, at most.
const TRACE_SHOWN: usize = 200;

/// What a run did and found.
#[derive(Debug)]
pub struct RunReport {
    /// The plan it ran.
    pub plan: Plan,
    /// The network trace's hash: equal for runs that did the same.
    pub trace_hash: blake3::Hash,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Counts of the history.
    pub summary: Summary,
    /// Broken promises and invariants, described.
    pub violations: Vec<String>,
    /// For a failing run: what the simulator did and the network events around the first
    /// violation.
    pub evidence: String,
}

/// The cluster.toml settings of a run (its `[[nodes]]` are added by the cluster).
fn settings(plan: &Plan) -> String {
    settings_with_grace(plan.grace_ms)
}

/// The simulator's cluster.toml settings, with tombstone grace `grace_ms`: short
/// intervals so that a run of a minute sees many anti-entropy rounds and hint deliveries.
pub fn settings_with_grace(grace_ms: u64) -> String {
    format!(
        "data_dir = \"data\"\npartitions = 64\nreplication_factor = 3\n\n\
         [defaults]\nn = 3\nw = 2\nr = 2\ntimeout_ms = 2000\n\n\
         [durability]\nmode = \"sync\"\n\n\
         [convergence]\nanti_entropy_interval_ms = 3000\nhint_delivery_interval_ms = 500\n\
         tombstone_grace_ms = {}\nping_interval_ms = 500\ndown_after_missed_pings = 3\n",
        grace_ms
    )
}

/// Runs `plan` with nodes and clients certified by `identities`; writes the simulator's
/// events and the network trace (its last [`TRACE_KEPT`](super::trace::TRACE_KEPT) events)
/// to `trace_to`, if given.
pub async fn run(plan: Plan, identities: Arc<SimIdentities>, trace_to: Option<&Path>) -> anyhow::Result<RunReport> {
    let mut cluster = SimCluster::start(plan.seed, plan.nodes, &settings(&plan), identities)?;
    let recorder = Arc::new(Recorder::default());
    for (i, &skew) in plan.skews.iter().enumerate() {
        if skew != 0 {
            cluster.skew(i, skew);
        }
    }
    tokio::time::sleep(WARM_UP).await;
    let mut rng = SimRng::new(plan.seed ^ 0x5EED_C11E);
    let mut workers = Vec::new();
    for c in 0..plan.clients {
        let client = cluster.client(c as u8, c as u64 + 1).await?;
        let worker = Worker {
            who: c,
            client,
            recorder: recorder.clone(),
            rng: rng.fork(),
            keys: plan.keys,
            min_w: if plan.wipes { 2 } else { 1 },
            think: plan.think,
        };
        workers.push(tokio::spawn(worker.run(plan.fault_phase)));
    }
    let mut faults = BTreeMap::new();
    let began = tokio::time::Instant::now();
    for (at, fault) in &plan.faults {
        tokio::time::sleep_until(began + *at).await;
        if fault.is_injection() {
            *faults.entry(fault.kind()).or_insert(0) += 1;
        }
        apply(&mut cluster, fault)?;
    }
    for worker in workers {
        worker.await.map_err(|e| anyhow!("a simulated client panicked: {e}"))?;
    }
    heal(&mut cluster)?;
    let healed = tokio::time::Instant::now();
    let history = recorder.history();
    let keys: Vec<String> = (0..plan.keys).map(key_name).collect();
    let converged = converge(&cluster, &keys).await;
    let took = healed.elapsed();
    // The purge phase: clients done, the fault phase's tombstones come of age and are
    // purged while short cuts come and go; then everything must still hold.
    let purge_began = tokio::time::Instant::now();
    for (at, fault) in &plan.purge_faults {
        tokio::time::sleep_until(purge_began + *at).await;
        if fault.is_injection() {
            *faults.entry(fault.kind()).or_insert(0) += 1;
        }
        apply(&mut cluster, fault)?;
    }
    tokio::time::sleep_until(purge_began + plan.purge_phase).await;
    heal(&mut cluster)?;
    let healed_again = tokio::time::Instant::now();
    let copies = converge(&cluster, &keys).await;
    let took_again = healed_again.elapsed();
    let finals: BTreeMap<String, Option<Record>> = copies
        .iter()
        .map(|(key, replicas)| (key.clone(), replicas.first().and_then(|(_, copy)| copy.clone())))
        .collect();
    let mut broken = check_history(&history);
    broken.extend(check_final(&history, &finals));
    let window = window_of(&history, &broken);
    let mut violations: Vec<String> = broken.iter().map(ToString::to_string).collect();
    for (copies, took) in [(&converged, took), (&copies, took_again)] {
        let unconverged = check_convergence(copies, took, CONVERGENCE_BOUND);
        violations.extend(unconverged.iter().map(ToString::to_string));
    }
    violations.extend(invariants::trees_match_data(&cluster).await);
    violations.extend(invariants::hints_drained(&cluster));
    let grace = Duration::from_millis(plan.grace_ms);
    violations.extend(invariants::young_tombstones_kept(
        &history,
        &finals,
        recorder.now(),
        grace,
    ));
    let evidence = if violations.is_empty() {
        String::new()
    } else {
        evidence(&cluster, window)
    };
    let report = RunReport {
        trace_hash: cluster.net.trace_hash(),
        simulated: cluster.elapsed(),
        datagrams: cluster.net.count(TraceKind::Send),
        faults,
        summary: Summary::of(&history),
        violations,
        evidence,
        plan,
    };
    if let Some(path) = trace_to {
        write_trace(&cluster, path)?;
    }
    cluster.shutdown().await?;
    Ok(report)
}

/// Does `fault` to the cluster.
fn apply(cluster: &mut SimCluster, fault: &Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Links(link) => cluster.set_links(*link),
        Fault::CalmLinks => cluster.set_links(LinkConfig::default()),
        Fault::OneWay { from, to } => cluster.cut(*from, *to),
        Fault::Pair { a, b } => {
            cluster.cut(*a, *b);
            cluster.cut(*b, *a);
        }
        Fault::Split { side } => {
            for &a in side {
                for b in (0..cluster.len()).filter(|b| !side.contains(b)) {
                    cluster.cut(a, b);
                    cluster.cut(b, a);
                }
            }
        }
        Fault::HealCuts => cluster.heal_cuts(),
        Fault::Crash(i) => cluster.crash(*i),
        Fault::Wipe(i) => cluster.wipe(*i),
        Fault::DiskFails(i) => cluster.fail_disk(*i),
        Fault::Restart(i) => cluster.recover(*i)?,
        Fault::Freeze(i) => cluster.freeze(*i),
        Fault::Thaw(i) => cluster.thaw(*i),
    }
    Ok(())
}

/// Ends every fault: clean links, no cuts, every node thawed and running.
fn heal(cluster: &mut SimCluster) -> anyhow::Result<()> {
    cluster.set_links(LinkConfig::default());
    cluster.heal_cuts();
    for i in 0..cluster.len() {
        cluster.thaw(i);
        cluster.recover(i)?;
    }
    Ok(())
}

/// Each key's copies once every replica holds the same record and no hint is held, or
/// as they are at [`CONVERGENCE_BOUND`].
async fn converge(cluster: &SimCluster, keys: &[String]) -> BTreeMap<String, Vec<(String, Option<Record>)>> {
    let deadline = tokio::time::Instant::now() + CONVERGENCE_BOUND;
    loop {
        let mut copies = BTreeMap::new();
        for key in keys {
            let held = cluster.copies(key).await;
            copies.insert(
                key.clone(),
                held.into_iter()
                    .map(|(node, copy)| (node, copy.flatten()))
                    .collect::<Vec<_>>(),
            );
        }
        let agreed = copies
            .values()
            .all(|replicas: &Vec<(String, Option<Record>)>| replicas.windows(2).all(|pair| pair[0].1 == pair[1].1));
        if (agreed && invariants::hints_drained(cluster).is_empty()) || tokio::time::Instant::now() >= deadline {
            return copies;
        }
        tokio::time::sleep(CONVERGENCE_POLL).await;
    }
}

/// From the start of the first operation the violations name to the end of the last
/// (simulated time since the cluster started, as the recorder's and the trace's clocks).
fn window_of(history: &[Op], violations: &[Violation]) -> Option<(Duration, Duration)> {
    let ops = violations
        .iter()
        .flat_map(|v| v.ops.iter())
        .filter_map(|&id| history.get(id));
    let (start, end) = ops.fold((Micros::MAX, 0), |(s, e), op| (s.min(op.invoke), e.max(op.complete)));
    (start <= end).then(|| (Duration::from_micros(start), Duration::from_micros(end)))
}

/// A failing run's evidence: the simulator's events, and the network events during the
/// operations that broke a promise (the last [`TRACE_SHOWN`] of them; the run's last
/// ones when no operation is named).
fn evidence(cluster: &SimCluster, window: Option<(Duration, Duration)>) -> String {
    let mut out = String::from("simulator events:\n");
    for (at, what) in cluster.events() {
        let _ = writeln!(out, "  {at:>10.3?}  {what}");
    }
    let tail = cluster.net.trace_tail();
    let shown: Vec<_> = match window {
        Some((start, end)) => {
            let _ = writeln!(
                out,
                "network events from {start:?} to {end:?} (the operations involved):"
            );
            tail.iter().filter(|e| e.at >= start && e.at <= end).collect()
        }
        None => {
            let _ = writeln!(out, "the run's last network events:");
            tail.iter().collect()
        }
    };
    for event in shown.iter().rev().take(TRACE_SHOWN).rev() {
        let _ = writeln!(
            out,
            "  {:>10.3?}  {:?} {} -> {} ({} bytes)",
            event.at, event.kind, event.from, event.to, event.len
        );
    }
    out
}

/// Writes what the simulator did and the network trace to `path`, one event a line.
fn write_trace(cluster: &SimCluster, path: &Path) -> anyhow::Result<()> {
    let simulator = cluster.events().iter().map(|(at, what)| (*at, format!("SIM {what}")));
    let network = cluster.net.trace_tail().into_iter().map(|e| {
        let line = format!("{:?} {} -> {} ({} bytes)", e.kind, e.from, e.to, e.len);
        (e.at, line)
    });
    let mut events: Vec<(Duration, String)> = simulator.chain(network).collect();
    // Stable: at equal times the simulator's event (the cause) comes first.
    events.sort_by_key(|(at, _)| *at);
    let mut out = String::new();
    for (at, what) in events {
        let _ = writeln!(out, "{at:>12.6?}  {what}");
    }
    std::fs::write(path, out).map_err(|e| anyhow!("writing the trace to {}: {e}", path.display()))
}

/// The name of key `i`.
fn key_name(i: usize) -> String {
    format!("k{i}")
}

/// One client's workload: random operations on the shared keys until the fault phase
/// ends, each recorded.
struct Worker {
    /// Its number in the history.
    who: usize,
    /// Its connection to the cluster.
    client: Client,
    /// Where its operations go.
    recorder: Arc<Recorder>,
    /// Its choices.
    rng: SimRng,
    /// Keys to choose from.
    keys: usize,
    /// Smallest `w` it writes with.
    min_w: usize,
    /// Mean pause between operations.
    think: Duration,
}

impl Worker {
    async fn run(mut self, phase: Duration) {
        let until = tokio::time::Instant::now() + phase;
        while tokio::time::Instant::now() < until {
            let key = key_name(self.rng.up_to(self.keys as u64 - 1) as usize);
            let roll = self.rng.unit();
            if roll < 0.55 {
                let options = self.write_options();
                self.recorder.put(&self.client, self.who, &key, &options).await;
            } else if roll < 0.65 {
                let options = self.write_options();
                self.recorder.delete(&self.client, self.who, &key, &options).await;
            } else {
                let n = self.n();
                let options = ReadOptions {
                    n: Some(n),
                    r: Some(1 + self.rng.up_to(n as u64 - 1) as usize),
                    repair: match self.rng.up_to(2) {
                        0 => RepairMode::Blocking,
                        1 => RepairMode::Background,
                        _ => RepairMode::Off,
                    },
                    ..ReadOptions::default()
                };
                self.recorder.get(&self.client, self.who, &key, &options).await;
            }
            let pause = self.rng.up_to(2 * self.think.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(pause)).await;
        }
    }

    /// `n` of a request: mostly all three replicas, sometimes the first two.
    fn n(&mut self) -> usize {
        if self.rng.chance(0.25) {
            2
        } else {
            3
        }
    }

    /// An `n`, a `w` from `min_w` (at most `n`) to `n`, sometimes sloppy.
    fn write_options(&mut self) -> WriteOptions {
        let n = self.n();
        let least = self.min_w.min(n);
        let w = least + self.rng.up_to((n - least) as u64) as usize;
        WriteOptions {
            n: Some(n),
            w: Some(w),
            sloppy: self.rng.chance(0.2),
            ..WriteOptions::default()
        }
    }
}
