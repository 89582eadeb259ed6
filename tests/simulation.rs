//! The deterministic simulation tier: whole clusters (real nodes, quinn and rustls, the
//! memory engine) on one paused current-thread runtime per run, with faults and a
//! workload drawn from a seed, checked against P1-P4 and the simulator's invariants.
//!
//! `SIM_SEEDS=N` runs seeds 1..=N (default [`DEFAULT_SEEDS`]) after the regression
//! seeds; `SIM_SEED=S` runs only seed S and prints its plan, outcome and trace hash.
//! A failing seed is printed with its plan, the violations, the simulator's events and
//! the network events before the end, and the command that replays it.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quorumkv::sim::cluster::SimCluster;
use quorumkv::sim::identity::SimIdentities;
use quorumkv::sim::plan::Plan;
use quorumkv::sim::run::{run, settings_with_grace, RunReport};
use quorumkv_client::{ReadOptions, WriteOptions};

/// Seeds run by default: about eight simulated hours, ~55 s on two cores in a debug build.
const DEFAULT_SEEDS: u64 = 300;
/// Seeds that once failed, run first every time: 35 (a wiped replica answered "not found"
/// for writes it had acknowledged; see `a_wiped_replica_never_answers_not_found_for_what_it_lost`),
/// 611 (a wiped node crashed half refilled came back serving its partial data: `--refill`
/// now holds on every start until the node has refilled),
/// 1220 and 2161 (a sloppy write counted a hint held by a node that also stored its own
/// copy, so w = 2 was one node, lost with its disk; see `tests/cluster.rs`,
/// `a_sloppy_write_counts_each_node_once`).
const REGRESSION_SEEDS: &[u64] = &[35, 611, 1220, 2161];

/// The certificates every run uses: one set per process, so runs compare exactly.
fn identities() -> Arc<SimIdentities> {
    static IDS: OnceLock<Arc<SimIdentities>> = OnceLock::new();
    IDS.get_or_init(|| {
        let ids = SimIdentities::generate(&["n1", "n2", "n3", "n4", "n5", "client"]).expect("simulated certificates");
        Arc::new(ids)
    })
    .clone()
}

/// Log lines stamped with simulated time (a replay's log follows the run, not the wall).
struct SimulatedTime(std::time::Instant);

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let now = tokio::time::Instant::now().into_std();
        write!(w, "{:>10.3?}", now.saturating_duration_since(self.0))
    }
}

/// A replay logs what the nodes did (`RUST_LOG`, default info), in simulated time.
fn log_replay(start: std::time::Instant) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(SimulatedTime(start))
        .with_test_writer()
        .try_init();
}

/// Runs seed `seed` on its own paused current-thread runtime.
fn run_seed(seed: u64) -> RunReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let replaying = std::env::var("SIM_SEED").is_ok();
    if replaying {
        runtime.block_on(async { log_replay(tokio::time::Instant::now().into_std()) });
    }
    let trace = replaying.then(|| std::env::temp_dir().join(format!("quorumkv-sim-{seed}.trace")));
    let report = runtime
        .block_on(run(Plan::draw(seed), identities(), trace.as_deref()))
        .unwrap_or_else(|e| panic!("seed {seed} could not run: {e:#}"));
    if let Some(path) = trace {
        eprintln!(
            "seed {seed}: the simulator's events and the network trace are in {}",
            path.display()
        );
    }
    report
}

/// Seeds from the environment: `SIM_SEED` alone, or the regression seeds then 1..=`SIM_SEEDS`.
fn seeds() -> Vec<u64> {
    let number = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
    };
    if let Some(seed) = number("SIM_SEED") {
        return vec![seed];
    }
    let count = number("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let mut seeds: Vec<u64> = REGRESSION_SEEDS.to_vec();
    seeds.extend((1..=count).filter(|s| !REGRESSION_SEEDS.contains(s)));
    seeds
}

fn describe(report: &RunReport) -> String {
    let faults: Vec<String> = report.faults.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
    format!(
        "seed {}: {:.1} simulated s, {} datagrams, faults [{}], {}; trace {}",
        report.plan.seed,
        report.simulated.as_secs_f64(),
        report.datagrams,
        faults.join(", "),
        report.summary,
        &report.trace_hash.to_hex()[..16]
    )
}

#[test]
fn every_seed_keeps_every_promise() {
    let seeds = seeds();
    let replaying = std::env::var("SIM_SEED").is_ok();
    let queue = Mutex::new(seeds.clone().into_iter());
    let reports = Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(seed) = next else { return };
                let report = run_seed(seed);
                reports.lock().unwrap_or_else(|e| e.into_inner()).push(report);
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_else(|e| e.into_inner());
    reports.sort_by_key(|r| r.plan.seed);
    let simulated: f64 = reports.iter().map(|r| r.simulated.as_secs_f64()).sum();
    let wall = started.elapsed().as_secs_f64();
    for report in &reports {
        eprintln!("{}", describe(report));
        if replaying {
            eprintln!("{}", report.plan);
        }
    }
    let mut faults = std::collections::BTreeMap::new();
    for (kind, n) in reports.iter().flat_map(|r| r.faults.iter()) {
        *faults.entry(*kind).or_insert(0) += n;
    }
    let ops: usize = reports.iter().map(|r| r.summary.ops).sum();
    eprintln!("faults injected: {faults:?}; {ops} operations checked");
    eprintln!(
        "{} seeds, {:.2} simulated hours in {wall:.1} s of wall time on {workers} threads ({:.0} s of wall per simulated hour per thread)",
        reports.len(),
        simulated / 3600.0,
        wall * workers as f64 / (simulated / 3600.0)
    );
    let failed: Vec<&RunReport> = reports.iter().filter(|r| !r.violations.is_empty()).collect();
    for report in &failed {
        eprintln!(
            "\nFAILED {}\n{}violations:\n  {}\n{}\nreplay: SIM_SEED={} cargo test --release --test simulation\n",
            describe(report),
            report.plan,
            report.violations.join("\n  "),
            report.evidence,
            report.plan.seed
        );
    }
    let failed: Vec<u64> = failed.iter().map(|r| r.plan.seed).collect();
    assert!(failed.is_empty(), "seeds {failed:?} broke a promise (details above)");
}

#[test]
fn a_seed_replays_exactly() {
    let first = run_seed(7);
    let again = run_seed(7);
    assert_eq!(
        first.trace_hash,
        again.trace_hash,
        "seed 7 ran differently twice:\n{}\n{}",
        describe(&first),
        describe(&again)
    );
    assert_eq!(first.summary, again.summary);
    assert_eq!(first.violations, again.violations);
    let other = run_seed(8);
    assert_ne!(first.trace_hash, other.trace_hash, "two seeds ran the same");
}

/// Found by seed 35: a replica whose disk was wiped answered quorum reads with "not found"
/// for a write it had acknowledged, so a read with r = 1 (w = 3) missed it. A replica that
/// started empty must answer through the other replicas until it has synced with them,
/// and refuse when it cannot reach them.
#[test]
fn a_wiped_replica_never_answers_not_found_for_what_it_lost() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut cluster = SimCluster::start(35, 3, &settings_with_grace(60_000), identities()).expect("a cluster");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let client = cluster.client(0, 1).await.expect("a client");
        let all = WriteOptions {
            n: Some(3),
            w: Some(3),
            ..WriteOptions::default()
        };
        client
            .put_with("k", "acknowledged by all three", &all)
            .await
            .expect("a write with w = 3");
        cluster.wipe(1);
        cluster.restart(1).expect("n2 restarts empty");
        // n2 can reach neither other replica, and the client reaches only n2.
        for other in [0, 2] {
            cluster.cut(1, other);
            cluster.cut(other, 1);
            cluster.net.cut(SimCluster::client_addr(0), cluster.addr(other));
            cluster.net.cut(cluster.addr(other), SimCluster::client_addr(0));
        }
        let one = ReadOptions {
            n: Some(3),
            r: Some(1),
            ..ReadOptions::default()
        };
        let read = client.get_with("k", &one).await;
        assert!(
            read.is_err(),
            "an empty replica that cannot reach the others must not answer: {read:?}"
        );
        assert_eq!(
            client.get_from("n2", "k").await.expect("n2 answers"),
            None,
            "n2's own copy is gone"
        );
        cluster.heal_cuts();
        let read = client.get_with("k", &one).await.expect("n2 reaches the others again");
        assert_eq!(
            read.map(|v| v.value),
            Some(bytes::Bytes::from("acknowledged by all three"))
        );
        let refilled = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.get_from("n2", "k").await.ok().flatten().is_none() {
            assert!(tokio::time::Instant::now() < refilled, "anti-entropy refills n2");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.shutdown().await.expect("a clean stop");
    });
}
