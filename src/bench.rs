//! `quorumkv bench`: a closed-loop load generator with latency percentiles.
//!
//! This file owns the command line ([`BenchArgs`]) and the order of a run: spawn a
//! cluster or use the running one, connect, run each workload phase, report, stop the
//! spawned nodes. The workload mixes and key choice are in `workload`, the loop that
//! keeps requests in flight in [`run`], the measurements and their presentation in
//! `report`, and the node processes of `--spawn` in `spawn`.
//!
//! Reads want data: `--workload load,c` loads the key space and then reads it in one run.
//! A `--spawn` cluster starts empty, so when a read workload (`a`, `b`, `c`) comes before
//! any `load`, a `load` phase is put in front of it automatically (and said so on
//! stderr). Against a running cluster nothing is added: run `--workload load` once with
//! the same `--keys` first; reads of keys that are missing count as `not found`.

mod report;
mod run;
mod spawn;
mod usage;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use quorumkv_client::{Client, ReadOptions, WriteOptions};
use serde::Serialize;

use crate::config::ClusterConfig;
use report::PhaseReport;
use run::{run_phase, Budget, Phase};
use spawn::SpawnedCluster;
use workload::{Dist, KeyChooser, Permutation, Workload};

/// Length of a phase given neither `--ops` nor `--duration`.
const DEFAULT_DURATION_SECS: u64 = 10;

/// Options of `quorumkv bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads to run in order, comma-separated: load (insert every key once),
    /// a (50% read / 50% update), b (95/5), c (100% read), w (100% write).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "w")]
    workload: Vec<Workload>,
    /// Number of keys in the key space.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// How reads and updates pick keys.
    #[arg(long, value_enum, default_value = "uniform")]
    dist: Dist,
    /// Size of every written value, in bytes.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Length of each phase but `load`, in seconds [default: 10 unless --ops is given].
    #[arg(long, conflicts_with = "ops")]
    duration: Option<u64>,
    /// Operations of each phase but `load` (which writes each key once).
    #[arg(long)]
    ops: Option<u64>,
    /// Replicas per request (default from cluster.toml).
    #[arg(long)]
    n: Option<usize>,
    /// Write acknowledgements to wait for (default from cluster.toml).
    #[arg(long)]
    w: Option<usize>,
    /// Read answers to wait for (default from cluster.toml).
    #[arg(long)]
    r: Option<usize>,
    /// Request timeout in milliseconds (default from cluster.toml).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// With --spawn: the durability mode of the spawned nodes, replacing the config's.
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// Path of the cluster configuration.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Start the config's nodes as processes on temporary data, and stop them afterwards.
    #[arg(long)]
    spawn: bool,
    /// Tokio runtime of the load generator (current-thread measured faster on 2 cores).
    #[arg(long, value_enum, default_value = "current-thread")]
    client_runtime: ClientRuntime,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// `--durability`: the modes of `[durability] mode`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// fsync before acknowledging (group commit).
    Sync,
    /// fsync every `interval_ms`.
    Periodic,
}

impl DurabilityArg {
    fn as_str(self) -> &'static str {
        match self {
            DurabilityArg::Sync => "sync",
            DurabilityArg::Periodic => "periodic",
        }
    }
}

/// The tokio runtime the load generator's client runs on.
///
/// Measured with 3 spawned node processes on the 2-core development machine (64 in flight,
/// 1 KiB values, sync, median of 3 alternating runs of 10 s): current-thread 14,760
/// writes/s and 16,440 reads/s, multi-thread(2) 12,430 and 14,590. The client shares the
/// two cores with three nodes, so a second worker only adds cross-thread wake-ups; hence
/// current-thread is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum ClientRuntime {
    /// One thread runs the client and every worker.
    CurrentThread,
    /// A multi-threaded runtime with two workers.
    MultiThread,
}

/// Worker threads of [`ClientRuntime::MultiThread`]: one per core of the machine measured.
const MULTI_THREAD_WORKERS: usize = 2;

impl ClientRuntime {
    fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            ClientRuntime::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            ClientRuntime::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(MULTI_THREAD_WORKERS)
                .enable_all()
                .build(),
        }
    }
}

/// The settings of a run, echoed in the JSON report.
#[derive(Debug, Serialize)]
struct Settings {
    /// Phases in the order they ran (with an automatic `load` included).
    workloads: Vec<Workload>,
    /// Size of the key space.
    keys: u64,
    /// Key distribution.
    dist: Dist,
    /// Bytes per value.
    value_size: usize,
    /// Requests in flight.
    concurrency: u64,
    /// Quorum overrides (`None`: the cluster's defaults).
    n: Option<usize>,
    /// Write quorum override.
    w: Option<usize>,
    /// Read quorum override.
    r: Option<usize>,
    /// Whether the nodes were spawned for this run.
    spawn: bool,
    /// Durability override of the spawned nodes.
    durability: Option<&'static str>,
    /// The load generator's runtime.
    client_runtime: ClientRuntime,
}

/// The JSON report: settings and one entry per phase.
#[derive(Debug, Serialize)]
struct BenchReport {
    /// What ran.
    settings: Settings,
    /// What each phase measured.
    phases: Vec<PhaseReport>,
}

/// Longest wait for a run's background sends (writes beyond w, hints) at the end.
const BACKGROUND_LIMIT: Duration = Duration::from_secs(10);

/// Runs `quorumkv bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.durability.is_some() && !args.spawn {
        bail!("--durability only applies with --spawn: a running cluster keeps the mode of its own config");
    }
    let workloads = phase_order(&args.workload, args.spawn);
    if workloads.len() > args.workload.len() {
        eprintln!("bench: the spawned cluster starts empty, so a load phase runs first");
    }
    let runtime = args.client_runtime.build().context("starting the client runtime")?;
    let report = runtime.block_on(bench(&args, workloads))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for phase in &report.phases {
            print!("{}", phase.table());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The phases to run: `requested`, with a `load` in front when a spawned (empty) cluster
/// would otherwise be read before anything was loaded.
fn phase_order(requested: &[Workload], spawn: bool) -> Vec<Workload> {
    let first_read = requested.iter().position(|w| w.reads());
    let first_load = requested.iter().position(|&w| w == Workload::Load);
    let mut order = requested.to_vec();
    if spawn && first_read.is_some_and(|read| first_load.is_none_or(|load| load > read)) {
        order.insert(0, Workload::Load);
    }
    order
}

async fn bench(args: &BenchArgs, workloads: Vec<Workload>) -> anyhow::Result<BenchReport> {
    let durability = args.durability.map(DurabilityArg::as_str);
    let mut spawned = match args.spawn {
        true => Some(SpawnedCluster::start(&args.config, durability)?),
        false => None,
    };
    let result = async {
        let client = match &mut spawned {
            Some(cluster) => cluster.connect(client_identity(&cluster.config)?).await?,
            None => connect(&ClusterConfig::load(&args.config)?).await?,
        };
        let node_pids = spawned.as_ref().map(SpawnedCluster::pids).unwrap_or_default();
        let reports = run_phases(args, &client, &workloads, &node_pids).await;
        // Writes beyond w and hints finish before the cluster (or this process) goes away.
        client.finish_background(BACKGROUND_LIMIT).await;
        reports
    }
    .await;
    if let Some(cluster) = spawned {
        match (&result, cluster.stop().await) {
            (Ok(_), Err(e)) => return Err(e),
            (Err(_), Err(e)) => eprintln!("bench: {e:#}"),
            (_, Ok(())) => {}
        }
    }
    let phases = result?;
    let settings = Settings {
        workloads,
        keys: args.keys,
        dist: args.dist,
        value_size: args.value_size,
        concurrency: args.concurrency,
        n: args.n,
        w: args.w,
        r: args.r,
        spawn: args.spawn,
        durability,
        client_runtime: args.client_runtime,
    };
    Ok(BenchReport { settings, phases })
}

fn client_identity(config: &ClusterConfig) -> anyhow::Result<quorumkv_client::TlsIdentity> {
    let (tls_dir, generate) = config.tls_dir();
    crate::pki::identity(&tls_dir, quorumkv_client::tls::layout::CLIENT, generate)
        .context("loading the client certificate")
}

async fn connect(config: &ClusterConfig) -> anyhow::Result<Client> {
    let seeds = config.nodes.iter().map(|n| n.addr).collect();
    let client = Client::connect(crate::cli::client_config(config, seeds, client_identity(config)?)).await?;
    Ok(client)
}

async fn run_phases(
    args: &BenchArgs,
    client: &Client,
    workloads: &[Workload],
    node_pids: &[u32],
) -> anyhow::Result<Vec<PhaseReport>> {
    let max_value = client.cluster().max_value_bytes;
    if args.value_size > max_value {
        bail!(
            "--value-size {} exceeds the cluster's limit of {max_value} bytes",
            args.value_size
        );
    }
    let (read, write) = quorum_options(args);
    let cluster = client.cluster();
    read.plan(&cluster.defaults, cluster.replication_factor)?;
    write.plan(&cluster.defaults, cluster.replication_factor)?;
    let chooser = Arc::new(KeyChooser::new(args.keys, args.dist));
    let mut reports = Vec::new();
    for &workload in workloads {
        let budget = match (workload, args.ops, args.duration) {
            (Workload::Load, _, _) => Budget::Ops(args.keys),
            (_, Some(ops), _) => Budget::Ops(ops),
            (_, None, secs) => Budget::Time(Duration::from_secs(secs.unwrap_or(DEFAULT_DURATION_SECS))),
        };
        let phase = Phase {
            workload,
            budget,
            concurrency: usize::try_from(args.concurrency)?,
            chooser: chooser.clone(),
            load_order: Permutation::new(args.keys),
            value_size: args.value_size,
            read,
            write,
            seed: args.seed,
        };
        reports.push(run_phase(client, &phase, node_pids).await?);
    }
    Ok(reports)
}

/// The read and write options of `--n`, `--r`, `--w` and `--timeout-ms`; every other
/// option keeps its default (the struct update stays right as options are added).
#[allow(clippy::needless_update)]
fn quorum_options(args: &BenchArgs) -> (ReadOptions, WriteOptions) {
    let timeout = args.timeout_ms.map(Duration::from_millis);
    let read = ReadOptions {
        n: args.n,
        r: args.r,
        timeout,
        ..Default::default()
    };
    let write = WriteOptions {
        n: args.n,
        w: args.w,
        timeout,
        ..Default::default()
    };
    (read, write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Workload::{Load, A, C, W};

    #[test]
    fn spawned_reads_get_a_load_first() {
        let cases: [(&[Workload], bool, &[Workload]); 6] = [
            (&[C], true, &[Load, C]),
            (&[C], false, &[C]),
            (&[Load, C], true, &[Load, C]),
            (&[W, A], true, &[Load, W, A]),
            (&[W], true, &[W]),
            (&[C, Load], true, &[Load, C, Load]),
        ];
        for (requested, spawn, expected) in cases {
            assert_eq!(phase_order(requested, spawn), expected, "{requested:?} spawn={spawn}");
        }
    }
}
