//! The `quorumkv` command line: run nodes, and read and write keys.
//!
//! Exit codes, for scripts ([`EXIT_CODES`], also at the end of `--help`):
//! - 0: success (and `--help`, `--version`);
//! - 1: failure, the message says why (no quorum, no node answered, a file that cannot
//!   be read or written, a broken cluster.toml);
//! - 2: `get`: the key does not exist (never written, or deleted);
//! - 3: `cluster add|remove|replace|plan`: the cluster refuses the change (the message
//!   says why); nothing changed;
//! - 64 (`EX_USAGE` of sysexits.h, as Unix tools use it): the command line is wrong and
//!   nothing was sent: an unknown or malformed argument (`--w abc`, non-UTF-8 input),
//!   options that cannot work together (`--w 4` with n = 3), a key or value over the
//!   cluster's limits. Retrying the same command cannot help.
//!
//! Values are bytes: `put KEY -` reads the value from stdin and `put KEY --value-file F`
//! from a file; `get` writes the raw bytes, to `--output F` or to stdout with a newline
//! after them only when stdout is a terminal (`values`).
//!
//! A client command is bounded by its request timeout (`--timeout-ms`, else cluster.toml's
//! `[defaults] timeout_ms`), applied to each of its two steps: finding the cluster asks
//! every seed at once within it, then the request gets it. The members the answering
//! seed sees down get no request (their writes go to a fallback as hints), and before
//! exiting the command waits for its remaining sends only for what is left of the
//! request's timeout.

mod cluster;
mod exit;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Parser, Subcommand};
use quorumkv_client::{Client, ClientConfig, ClientError, ReadOptions, Record, RepairMode, WriteOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::node::{Node, NodeParts};
use crate::pki;
use exit::UsageError;
pub use exit::{exit_code, parse_error, EXIT_CODES, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE};
use values::{write_value, ValueSource};

/// quorumkv: a Dynamo-style leaderless key-value store.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every node of the config in this process (a local cluster).
    Up(ConfigArg),
    /// Run one node of the config.
    Node {
        /// Id of the node to run, as listed in [[nodes]] (or a new one, with --addr).
        #[arg(long)]
        id: String,
        /// Where it listens: needed the first time for a node [[nodes]] does not list.
        #[arg(long)]
        addr: Option<SocketAddr>,
        #[command(flatten)]
        config: ConfigArg,
        /// Stop when stdin closes (`up` runs its nodes so, to stop them with it).
        #[arg(long, hide = true)]
        stop_with_parent: bool,
        /// The node's disk was lost or replaced: serve reads through the other replicas
        /// until each partition is synced with all of them (give it on every start until
        /// the log says `refilled`).
        #[arg(long)]
        refill: bool,
    },
    /// Store a value under KEY: VALUE, `-` (stdin) or --value-file.
    #[command(
        group(ArgGroup::new("source").required(true).args(["value", "value_file"])),
        override_usage = "quorumkv put [OPTIONS] <KEY> <VALUE | - | --value-file <PATH>>",
        after_help = EXIT_CODES
    )]
    Put {
        /// The key.
        key: String,
        /// The value; `-` reads it from stdin (any bytes).
        value: Option<String>,
        /// Read the value from this file (any bytes).
        #[arg(long, value_name = "PATH")]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        quorum: WriteArgs,
    },
    /// Print the value stored under KEY (exit code 2 if there is none).
    #[command(after_help = EXIT_CODES)]
    Get {
        /// The key.
        key: String,
        /// Write the value's bytes to this file instead of stdout.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
        #[command(flatten)]
        quorum: ReadArgs,
    },
    /// Delete KEY.
    #[command(after_help = EXIT_CODES)]
    Delete {
        /// The key.
        key: String,
        #[command(flatten)]
        quorum: WriteArgs,
    },
    /// Load generator: run workloads against the cluster and report latency percentiles.
    Bench(crate::bench::BenchArgs),
    /// Make a cluster CA and the certificates of its nodes and clients (for real machines).
    Certs(crate::certs::CertsArgs),
    /// Every node in one screen: up or down, keys, disk, hints, agreement, warnings.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON object per node instead of a summary.
        #[arg(long)]
        json: bool,
        /// Also list every partition's agreement with each other replica.
        #[arg(long)]
        partitions: bool,
    },
    /// Membership: show the layouts and moves, plan and make changes.
    Cluster(cluster::ClusterArgs),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Path of the cluster configuration.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct WriteArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Replicas to write to (default from cluster.toml).
    #[arg(long)]
    n: Option<usize>,
    /// Acknowledgements to wait for (default from cluster.toml).
    #[arg(long)]
    w: Option<usize>,
    /// Request timeout in milliseconds, also the limit for finding the cluster (default
    /// from cluster.toml).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// Let acknowledgements of hints held by fallback nodes count toward --w.
    #[arg(long)]
    sloppy: bool,
}

#[derive(Debug, Args)]
struct ReadArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Replicas to ask (default from cluster.toml).
    #[arg(long)]
    n: Option<usize>,
    /// Answers to wait for (default from cluster.toml).
    #[arg(long)]
    r: Option<usize>,
    /// Request timeout in milliseconds, also the limit for finding the cluster (default
    /// from cluster.toml).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// Read repair of stale replicas: after the read (background), before it (blocking), or off.
    #[arg(long, value_enum, default_value = "background")]
    repair: Repair,
    /// Read only this node's own copy, without a quorum (shows tombstones and versions).
    #[arg(long, value_name = "NODE_ID")]
    from: Option<String>,
}

/// `--repair` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Repair {
    Background,
    Blocking,
    Off,
}

impl WriteArgs {
    fn options(&self) -> WriteOptions {
        WriteOptions {
            n: self.n,
            w: self.w,
            timeout: self.timeout_ms.map(Duration::from_millis),
            sloppy: self.sloppy,
        }
    }
}

impl ReadArgs {
    fn options(&self) -> ReadOptions {
        ReadOptions {
            n: self.n,
            r: self.r,
            timeout: self.timeout_ms.map(Duration::from_millis),
            repair: match self.repair {
                Repair::Background => RepairMode::Background,
                Repair::Blocking => RepairMode::Blocking,
                Repair::Off => RepairMode::Off,
            },
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(arg) => crate::local::up(&arg.config, &load(&arg.config)?),
        Command::Status {
            config,
            json,
            partitions,
        } => cluster::status(&load(&config.config)?, json, partitions),
        Command::Cluster(args) => cluster::run(args),
        Command::Node {
            id,
            addr,
            config,
            stop_with_parent,
            refill,
        } => {
            let config = match addr {
                Some(addr) => load(&config.config)?.with_node_addr(&id, addr).map_err(UsageError)?,
                None => load(&config.config)?,
            };
            run_node(&config, &id, stop_with_parent, refill)
        }
        Command::Put {
            key,
            value,
            value_file,
            quorum,
        } => {
            let config = load(&quorum.config.config)?;
            let value = ValueSource::new(value, value_file).read(config.limits.max_value_bytes)?;
            let options = quorum.options();
            client_command(&config, quorum.timeout_ms, |client| async move {
                let version = client.put_with(key, value, &options).await?;
                println!("ok (version {version})");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Get { key, output, quorum } if quorum.from.is_some() => {
            let node = quorum.from.clone().unwrap_or_default();
            let config = load(&quorum.config.config)?;
            client_command(&config, quorum.timeout_ms, |client| async move {
                match client.get_from(&node, key.clone()).await? {
                    Some(Record {
                        version,
                        value: Some(value),
                    }) => {
                        write_value(&value, output.as_deref())?;
                        eprintln!("{key}: version {version} on {node}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Some(Record { version, value: None }) => {
                        eprintln!("{key}: deleted (tombstone version {version}) on {node}");
                        Ok(ExitCode::from(EXIT_NOT_FOUND))
                    }
                    None => {
                        eprintln!("{key}: not found on {node}");
                        Ok(ExitCode::from(EXIT_NOT_FOUND))
                    }
                }
            })
        }
        Command::Get { key, output, quorum } => {
            let options = quorum.options();
            let config = load(&quorum.config.config)?;
            client_command(&config, quorum.timeout_ms, |client| async move {
                match client.get_with(key.clone(), &options).await? {
                    Some(found) => {
                        write_value(&found.value, output.as_deref())?;
                        Ok(ExitCode::SUCCESS)
                    }
                    None => {
                        eprintln!("{key}: not found");
                        Ok(ExitCode::from(EXIT_NOT_FOUND))
                    }
                }
            })
        }
        Command::Delete { key, quorum } => {
            let options = quorum.options();
            let config = load(&quorum.config.config)?;
            client_command(&config, quorum.timeout_ms, |client| async move {
                let version = client.delete_with(key, &options).await?;
                println!("deleted (version {version})");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Bench(args) => crate::bench::run(args),
        Command::Certs(args) => crate::certs::run(args),
    }
}

fn load(path: &Path) -> anyhow::Result<ClusterConfig> {
    Ok(ClusterConfig::load(path)?)
}

/// Connects a client to the cluster of `config` and runs `action` with it, all within
/// the request timeout (`timeout_ms`, else the cluster's default): finding the cluster
/// gets that long, and the sends the request returned without get what is left of it.
fn client_command<F, Fut>(config: &ClusterConfig, timeout_ms: Option<u64>, action: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let timeout = Duration::from_millis(timeout_ms.unwrap_or(config.defaults.timeout_ms));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (tls_dir, generate) = config.tls_dir();
        let identity =
            pki::identity(&tls_dir, pki_client_name(), generate).context("loading the client certificate")?;
        let seeds = config.nodes.iter().map(|n| n.addr).collect();
        let mut client_config = client_config(config, seeds, identity);
        client_config.connect_timeout = timeout;
        let client = Client::connect(client_config).await.map_err(suggest_up)?;
        let started = Instant::now();
        let result = action(client.clone()).await;
        // Let the sends the request returned without (writes beyond w, hints) finish, but
        // only within the request's own timeout. Members known down get no sends at all:
        // their writes went to fallbacks as hints.
        client
            .finish_background(timeout.saturating_sub(started.elapsed()))
            .await;
        result
    })
}

/// When no node answered at all, says how to start the local cluster.
fn suggest_up(error: ClientError) -> anyhow::Error {
    match error.no_node_answered() {
        true => anyhow::anyhow!("{error} (`quorumkv up` starts the local one)"),
        false => error.into(),
    }
}

/// A client configuration for the cluster of `config`, with its clock-skew limit.
pub fn client_config(
    config: &ClusterConfig,
    seeds: Vec<std::net::SocketAddr>,
    identity: quorumkv_client::TlsIdentity,
) -> ClientConfig {
    let mut client = ClientConfig::new(seeds, identity);
    client.max_clock_skew = config.max_clock_skew();
    client
}

fn pki_client_name() -> &'static str {
    quorumkv_client::tls::layout::CLIENT
}

impl Cli {
    /// What starts every log line of this process: the node id for `node`, `up` for
    /// `up` (whose nodes are processes of their own), nothing for client commands.
    pub fn log_tag(&self) -> Option<&str> {
        match &self.command {
            Command::Node { id, .. } => Some(id),
            Command::Up(_) => Some("up"),
            _ => None,
        }
    }
}

/// Runs one node until Ctrl-C / SIGTERM (or a fatal storage error), or, with
/// `stop_with_parent`, until stdin closes. `refill`: see [`NodeParts::refill`].
fn run_node(config: &ClusterConfig, id: &str, stop_with_parent: bool, refill: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(cancel_on_signal(stop.clone()));
        if stop_with_parent {
            crate::local::stop_when_parent_exits(stop.clone())?;
        }
        serve_until(config, id, stop, refill).await
    })
}

async fn serve_until(
    config: &ClusterConfig,
    id: &str,
    stop: CancellationToken,
    refill: bool,
) -> anyhow::Result<ExitCode> {
    let mut parts = NodeParts::real(config, id, None).with_context(|| format!("starting node {id}"))?;
    parts.refill = refill;
    let node = Node::start(config, id, parts)?;
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = node.stopping() => {}
    }
    let failed = node.storage_failed();
    node.shutdown().await?;
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Cancels `stop` on Ctrl-C or SIGTERM.
pub(crate) async fn cancel_on_signal(stop: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received: shutting down");
    stop.cancel();
}
