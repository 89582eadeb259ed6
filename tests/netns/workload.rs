//! Concurrent clients recording a history, and the end of a scenario: heal, converge,
//! read everything with r = n, check P1-P4.
//!
//! Each client task owns its [`Client`] (its own writer id and clock) and loops over a
//! seeded random mix of puts, deletes and reads (some with blocking repair) on a small
//! key set, paced so a history stays a few thousand operations. Scenarios hold each fault
//! for a number of completed operations ([`Workload::run_ops`]), not for a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumkv::history::{check_convergence, check_final, check_history, Op, Recorder, Summary, Violation};
use quorumkv_client::{Client, ReadOptions, Record, RepairMode, WriteOptions};
use tokio::task::JoinHandle;

use crate::cluster::NetCluster;
use crate::common::wait_until;

/// Pause between two operations of one client: ~100 ops/s per client at most.
const PACE: Duration = Duration::from_millis(10);
/// Longest a phase may take to complete its operations (timeouts slow clients down).
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// How often convergence is polled after heal.
const CONVERGENCE_POLL: Duration = Duration::from_millis(250);
/// Convergence slower than this prints the keys still differing, to show where it hangs.
const SLOW_CONVERGENCE: Duration = Duration::from_secs(5);
/// How many of them.
const SLOW_KEYS_SHOWN: usize = 5;
/// Client id of the final r = n reads in the history.
const FINAL_READER: usize = 1_000;

/// What the clients do, in percent of operations (the rest are plain quorum reads).
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Keys `key-0` .. `key-{keys-1}`.
    pub keys: usize,
    pub puts: u64,
    pub deletes: u64,
    /// Quorum reads with blocking repair (P4).
    pub blocking_reads: u64,
}

impl Mix {
    /// Mostly writes and reads, some deletes.
    pub const DEFAULT: Mix = Mix {
        keys: 24,
        puts: 45,
        deletes: 5,
        blocking_reads: 20,
    };
}

/// Client tasks running a [`Mix`] until stopped.
pub struct Workload {
    pub recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    pub mix: Mix,
}

impl Workload {
    /// Starts one task per client; `seed` makes each client's choice of operations and
    /// keys repeatable (the interleaving with faults is not).
    pub fn start(clients: Vec<Client>, mix: Mix, seed: u64) -> Workload {
        let recorder = Arc::new(Recorder::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(who, client)| {
                let (recorder, stop) = (recorder.clone(), stop.clone());
                let rng = Rng::new(seed ^ (who as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                tokio::spawn(run_client(client, who, mix, rng, recorder, stop))
            })
            .collect();
        Workload {
            recorder,
            stop,
            tasks,
            mix,
        }
    }

    /// Waits until the clients completed `count` more operations.
    pub async fn run_ops(&self, count: usize) {
        let target = self.recorder.len() + count;
        wait_until("clients complete a phase", PHASE_DEADLINE, || async {
            let done = self.recorder.len();
            if done >= target {
                Ok(())
            } else {
                Err(format!("{done} of {target} operations"))
            }
        })
        .await;
    }

    /// Stops the clients after their current operation (again: nothing to do).
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            task.await.expect("client task");
        }
    }
}

async fn run_client(
    client: Client,
    who: usize,
    mix: Mix,
    mut rng: Rng,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let key = format!("key-{}", rng.below(mix.keys as u64));
        let roll = rng.below(100);
        let write = WriteOptions::default();
        if roll < mix.puts {
            recorder.put(&client, who, &key, &write).await;
        } else if roll < mix.puts + mix.deletes {
            recorder.delete(&client, who, &key, &write).await;
        } else {
            let repair = if roll < mix.puts + mix.deletes + mix.blocking_reads {
                RepairMode::Blocking
            } else {
                RepairMode::Background
            };
            let read = ReadOptions {
                repair,
                ..Default::default()
            };
            recorder.get(&client, who, &key, &read).await;
        }
    }
}

/// What a scenario found, for its report.
pub struct Outcome {
    pub summary: Summary,
    pub violations: Vec<Violation>,
    /// From heal until every replica held the same copy of every key.
    pub converged_after: Duration,
    /// Keys whose replicas differed when the clients had stopped after heal.
    pub differed_at_heal: usize,
    /// The checked history.
    pub history: Vec<Op>,
}

/// After heal: waits (up to `bound`) until replicas agree on every key, reads every key
/// with r = n, and checks the history against P1-P4.
pub async fn settle_and_check(cluster: &NetCluster, recorder: &Recorder, keys: usize, bound: Duration) -> Outcome {
    let client = cluster.client().await;
    cluster.wait_all_up(&client).await;
    let healed = Instant::now();
    // The mix's keys, and any other key a scenario wrote.
    let mut keys: Vec<String> = (0..keys).map(|k| format!("key-{k}")).collect();
    keys.extend(recorder.history().into_iter().map(|op| op.key));
    keys.sort();
    keys.dedup();
    let mut copies = all_copies(&client, &keys).await;
    let differed_at_heal = differing(&copies);
    let mut shown_slow = false;
    while differing(&copies) > 0 && healed.elapsed() < bound {
        tokio::time::sleep(CONVERGENCE_POLL).await;
        copies = all_copies(&client, &keys).await;
        if !shown_slow && healed.elapsed() > SLOW_CONVERGENCE {
            shown_slow = true;
            let late = check_convergence(&copies, healed.elapsed(), bound);
            for violation in late.iter().take(SLOW_KEYS_SHOWN) {
                println!("  still differing: {violation}");
            }
        }
    }
    let converged_after = healed.elapsed();
    let all = ReadOptions {
        r: Some(client.cluster().defaults.n),
        ..Default::default()
    };
    for key in &keys {
        recorder.get(&client, FINAL_READER, key, &all).await;
    }
    let history: Vec<Op> = recorder.history();
    let finals: BTreeMap<String, Option<Record>> =
        copies.iter().map(|(key, held)| (key.clone(), newest(held))).collect();
    let mut violations = check_history(&history);
    violations.extend(check_final(&history, &finals));
    violations.extend(check_convergence(&copies, converged_after, bound));
    Outcome {
        summary: Summary::of(&history),
        violations,
        converged_after,
        differed_at_heal,
        history,
    }
}

/// Every replica's copy of every key (a replica that does not answer shows as absent:
/// after heal every node must answer, so that reads as "not converged").
async fn all_copies(client: &Client, keys: &[String]) -> BTreeMap<String, Vec<(String, Option<Record>)>> {
    let mut out = BTreeMap::new();
    for key in keys {
        let ring = client.ring();
        let replicas = ring.replicas(ring.partition_of(key.as_bytes()));
        let mut held = Vec::new();
        for &node in replicas {
            let id = client.cluster().members[node].id.clone();
            let copy = client.get_from(&id, key.clone()).await.ok().flatten();
            held.push((id, copy));
        }
        out.insert(key.clone(), held);
    }
    out
}

/// Keys whose replicas hold different copies.
fn differing(copies: &BTreeMap<String, Vec<(String, Option<Record>)>>) -> usize {
    copies
        .values()
        .filter(|held| held.windows(2).any(|pair| pair[0].1 != pair[1].1))
        .count()
}

fn newest(held: &[(String, Option<Record>)]) -> Option<Record> {
    held.iter()
        .filter_map(|(_, copy)| copy.clone())
        .max_by_key(|r| r.version)
}

/// A small seeded generator (xorshift64*): repeatable operation choices per seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}
