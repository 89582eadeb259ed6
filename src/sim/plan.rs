//! What one simulated run does, drawn from its seed: the cluster's shape and settings,
//! the workload's mix, and the faults with their times.
//!
//! A plan is data, made before anything runs, so a failing seed can be printed as what
//! it did. Faults come in pairs (start, end) within the fault phase; everything still
//! broken at its end is healed by the run. At most one disk is wiped per run, and runs
//! with a wipe write with `w >= 2`: a write acknowledged by one replica whose disk is
//! then wiped is lost in every Dynamo-style store, and no promise covers it.

use std::fmt;
use std::time::Duration;

use super::net::LinkConfig;
use super::rng::SimRng;

/// One thing the simulator does to the cluster at a moment of the fault phase.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Every link behaves like this (loss, duplication, delay and reordering).
    Links(LinkConfig),
    /// Every link back to a clean LAN.
    CalmLinks,
    /// Node `from` can no longer reach node `to` (one way).
    OneWay { from: usize, to: usize },
    /// Nodes `a` and `b` can no longer reach each other; both still reach the rest.
    Pair { a: usize, b: usize },
    /// The nodes in `side` and the rest can no longer reach each other.
    Split { side: Vec<usize> },
    /// Every cut between nodes lifted.
    HealCuts,
    /// Node `i` loses power (unsynced writes lost).
    Crash(usize),
    /// Node `i` loses power and its disk.
    Wipe(usize),
    /// Node `i`'s disk fails every commit and fsync: the node must stop itself.
    DiskFails(usize),
    /// Node `i` starts again on what its disk kept.
    Restart(usize),
    /// Node `i` stops sending and reading (a stopped process).
    Freeze(usize),
    /// Node `i` runs again.
    Thaw(usize),
}

impl Fault {
    /// A short name, for counting the faults a run injected.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Links(_) => "lossy links",
            Fault::CalmLinks => "calm links",
            Fault::OneWay { .. } => "one-way cut",
            Fault::Pair { .. } => "partial partition",
            Fault::Split { .. } => "partition",
            Fault::HealCuts => "heal cuts",
            Fault::Crash(_) => "crash",
            Fault::Wipe(_) => "disk wipe",
            Fault::DiskFails(_) => "failing disk",
            Fault::Restart(_) => "restart",
            Fault::Freeze(_) => "freeze",
            Fault::Thaw(_) => "thaw",
        }
    }

    /// Whether this starts a fault (rather than ending one).
    pub fn is_injection(&self) -> bool {
        !matches!(
            self,
            Fault::CalmLinks | Fault::HealCuts | Fault::Restart(_) | Fault::Thaw(_)
        )
    }
}

/// Everything a run does, from its seed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed it was drawn from.
    pub seed: u64,
    /// Nodes in the cluster (3 or 5; replication factor 3).
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the clients share (few, so operations collide).
    pub keys: usize,
    /// How long clients work while faults happen.
    pub fault_phase: Duration,
    /// `tombstone_grace_ms`: longer than the fault phase, so longer than any outage and
    /// hint backlog, as the README asks (a hint older than a tombstone purged everywhere
    /// brings its value back: the simulator found that with a shorter grace); short
    /// enough that the purge phase purges.
    pub grace_ms: u64,
    /// Each node's clock skew, µs (within and beyond the cluster's 5 s limit).
    pub skews: Vec<i64>,
    /// Faults by time from the start, in time order.
    pub faults: Vec<(Duration, Fault)>,
    /// How long the purge phase lasts (clients idle, tombstones come of age): the grace
    /// and a few anti-entropy rounds.
    pub purge_phase: Duration,
    /// Cuts during the purge phase, by time from its start, in time order: each shorter
    /// than the grace.
    pub purge_faults: Vec<(Duration, Fault)>,
    /// Whether a disk is wiped (writes then use `w >= 2`).
    pub wipes: bool,
    /// Mean pause between one client's operations.
    pub think: Duration,
}

/// Longest a fault lasts before its end is scheduled.
const MAX_FAULT: Duration = Duration::from_secs(12);
/// Longest cut of the purge phase.
const MAX_PURGE_CUT: Duration = Duration::from_secs(5);
/// The purge phase lasts the grace and this: a few anti-entropy rounds to confirm and purge.
const PURGE_ROUNDS: Duration = Duration::from_secs(10);
/// Largest clock skew drawn, µs: beyond the 5 s limit, so some nodes refuse writes.
const MAX_SKEW_MICROS: u64 = 7_000_000;

impl Plan {
    /// The plan of run `seed`.
    pub fn draw(seed: u64) -> Plan {
        let mut rng = SimRng::new(seed);
        let nodes = if rng.chance(0.3) { 5 } else { 3 };
        let fault_phase = Duration::from_secs(20 + rng.up_to(25));
        let mut skews = vec![0i64; nodes];
        for skew in skews.iter_mut() {
            if rng.chance(0.3) {
                let magnitude = rng.up_to(MAX_SKEW_MICROS) as i64;
                *skew = if rng.chance(0.5) { magnitude } else { -magnitude };
            }
        }
        let mut plan = Plan {
            seed,
            nodes,
            clients: 2 + rng.up_to(1) as usize,
            keys: 4 + rng.up_to(20) as usize,
            fault_phase,
            grace_ms: fault_phase.as_millis() as u64 + 5_000 + rng.up_to(20_000),
            skews,
            faults: Vec::new(),
            purge_phase: Duration::ZERO,
            purge_faults: Vec::new(),
            wipes: false,
            think: Duration::from_millis(20 + rng.up_to(180)),
        };
        let count = 2 + rng.up_to(6);
        for _ in 0..count {
            plan.add_fault(&mut rng);
        }
        plan.faults.sort_by_key(|(at, _)| *at);
        plan.purge_phase = Duration::from_millis(plan.grace_ms) + PURGE_ROUNDS;
        for _ in 0..rng.up_to(3) {
            plan.add_purge_cut(&mut rng);
        }
        plan.purge_faults.sort_by_key(|(at, _)| *at);
        plan
    }

    /// Draws one cut of the purge phase and its end (every cut there heals them all).
    fn add_purge_cut(&mut self, rng: &mut SimRng) {
        let at = Duration::from_millis(rng.up_to(self.purge_phase.as_millis() as u64));
        let end = (at + Duration::from_millis(500 + rng.up_to(MAX_PURGE_CUT.as_millis() as u64))).min(self.purge_phase);
        let a = rng.up_to(self.nodes as u64 - 1) as usize;
        let b = (a + 1 + rng.up_to(self.nodes as u64 - 2) as usize) % self.nodes;
        let cut = match rng.up_to(2) {
            0 => Fault::OneWay { from: a, to: b },
            1 => Fault::Pair { a, b },
            _ => Fault::Split { side: vec![a] },
        };
        self.purge_faults.push((at, cut));
        self.purge_faults.push((end, Fault::HealCuts));
    }

    /// Draws one fault and its end.
    fn add_fault(&mut self, rng: &mut SimRng) {
        let phase = self.fault_phase.as_millis() as u64;
        let at = Duration::from_millis(rng.up_to(phase.saturating_sub(1)));
        let lasts = Duration::from_millis(500 + rng.up_to(MAX_FAULT.as_millis() as u64));
        let end = (at + lasts).min(self.fault_phase);
        let node = |rng: &mut SimRng| rng.up_to(self.nodes as u64 - 1) as usize;
        let (start, stop) = match rng.up_to(7) {
            0 => {
                let link = LinkConfig {
                    latency: Duration::from_micros(200 + rng.up_to(20_000)),
                    jitter: Duration::from_micros(rng.up_to(30_000)),
                    loss: rng.unit() * 0.25,
                    duplicate: rng.unit() * 0.1,
                };
                (Fault::Links(link), Fault::CalmLinks)
            }
            1 => {
                let from = node(rng);
                let to = (from + 1 + rng.up_to(self.nodes as u64 - 2) as usize) % self.nodes;
                (Fault::OneWay { from, to }, Fault::HealCuts)
            }
            2 => {
                let a = node(rng);
                let b = (a + 1 + rng.up_to(self.nodes as u64 - 2) as usize) % self.nodes;
                (Fault::Pair { a, b }, Fault::HealCuts)
            }
            3 => {
                let first = node(rng);
                let size = 1 + rng.up_to((self.nodes as u64 - 1) / 2) as usize;
                let side = (0..size).map(|k| (first + k) % self.nodes).collect();
                (Fault::Split { side }, Fault::HealCuts)
            }
            4 | 5 => {
                let i = node(rng);
                if !self.wipes && rng.chance(0.25) {
                    self.wipes = true;
                    (Fault::Wipe(i), Fault::Restart(i))
                } else if rng.chance(0.15) {
                    (Fault::DiskFails(i), Fault::Restart(i))
                } else {
                    (Fault::Crash(i), Fault::Restart(i))
                }
            }
            _ => {
                let i = node(rng);
                (Fault::Freeze(i), Fault::Thaw(i))
            }
        };
        self.faults.push((at, start));
        self.faults.push((end, stop));
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} nodes, {} clients on {} keys for {:?}, grace {} ms, skews {:?} µs",
            self.seed, self.nodes, self.clients, self.keys, self.fault_phase, self.grace_ms, self.skews
        )?;
        for (at, fault) in &self.faults {
            writeln!(f, "  {at:>10.3?}  {fault:?}")?;
        }
        writeln!(f, "  then heal, converge, and a purge phase of {:?}:", self.purge_phase)?;
        for (at, fault) in &self.purge_faults {
            writeln!(f, "  {at:>10.3?}  {fault:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_plan_and_plans_vary() {
        assert_eq!(format!("{}", Plan::draw(42)), format!("{}", Plan::draw(42)));
        let kinds: std::collections::BTreeSet<&str> = (0..200)
            .flat_map(|seed| Plan::draw(seed).faults.into_iter().map(|(_, f)| f.kind()))
            .collect();
        assert_eq!(kinds.len(), 12, "every kind of fault is drawn by some seed: {kinds:?}");
        for plan in (0..200).map(Plan::draw) {
            assert!(
                plan.grace_ms > plan.fault_phase.as_millis() as u64,
                "grace outlasts every outage"
            );
            assert!(plan.purge_faults.iter().all(|(at, _)| *at <= plan.purge_phase));
        }
        assert!((0..200).any(|seed| Plan::draw(seed).nodes == 5));
        assert!((0..200).all(|seed| Plan::draw(seed)
            .faults
            .iter()
            .filter(|(_, f)| matches!(f, Fault::Wipe(_)))
            .count()
            <= 1));
    }
}
