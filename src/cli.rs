//! The `quorumkv` command line: run nodes, and read and write keys.
//!
//! Exit codes: 0 success, 1 failure (the message says why), 2 key not found (`get`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use quorumkv_client::{Client, ClientConfig, ReadOptions, Record, RepairMode, WriteOptions};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::node::{Node, NodeParts};
use crate::pki;

/// Exit code of `get` when the key does not exist.
pub const EXIT_NOT_FOUND: u8 = 2;

/// quorumkv: a Dynamo-style leaderless key-value store.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
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
        /// Id of the node to run, as listed in [[nodes]].
        #[arg(long)]
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Stop when stdin closes (`up` runs its nodes so, to stop them with it).
        #[arg(long, hide = true)]
        stop_with_parent: bool,
    },
    /// Store VALUE under KEY.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        quorum: WriteArgs,
    },
    /// Print the value stored under KEY (exit code 2 if there is none).
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        quorum: ReadArgs,
    },
    /// Delete KEY.
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
    /// Request timeout in milliseconds (default from cluster.toml).
    #[arg(long)]
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
    /// Request timeout in milliseconds (default from cluster.toml).
    #[arg(long)]
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
        } => {
            let members = load(&config.config)?.nodes;
            client_command(&config.config, |client| async move {
                let report = crate::status::collect(&client, &members, partitions).await;
                crate::status::print(&report, json)?;
                Ok(if report.iter().all(|r| r.status.is_ok()) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            })
        }
        Command::Node {
            id,
            config,
            stop_with_parent,
        } => run_node(&load(&config.config)?, &id, stop_with_parent),
        Command::Put { key, value, quorum } => {
            let options = quorum.options();
            client_command(&quorum.config.config, |client| async move {
                let version = client.put_with(key, value, &options).await?;
                println!("ok (version {version})");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Get { key, quorum } if quorum.from.is_some() => {
            let node = quorum.from.clone().unwrap_or_default();
            client_command(&quorum.config.config, |client| async move {
                match client.get_from(&node, key.clone()).await? {
                    Some(Record {
                        version,
                        value: Some(value),
                    }) => {
                        println!("{}", String::from_utf8_lossy(&value));
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
        Command::Get { key, quorum } => {
            let options = quorum.options();
            client_command(&quorum.config.config, |client| async move {
                match client.get_with(key.clone(), &options).await? {
                    Some(found) => {
                        println!("{}", String::from_utf8_lossy(&found.value));
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
            client_command(&quorum.config.config, |client| async move {
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

/// Connects a client to the cluster of `config_path` and runs `action` with it.
fn client_command<F, Fut>(config_path: &Path, action: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let config = load(config_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (tls_dir, generate) = config.tls_dir();
        let identity =
            pki::identity(&tls_dir, pki_client_name(), generate).context("loading the client certificate")?;
        let seeds = config.nodes.iter().map(|n| n.addr).collect();
        let client = Client::connect(client_config(&config, seeds, identity)).await?;
        let result = action(client.clone()).await;
        // Let the sends the request returned without (writes beyond w, hints) finish.
        let limit = Duration::from_millis(config.defaults.timeout_ms);
        client.finish_background(limit).await;
        result
    })
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
/// `stop_with_parent`, until stdin closes.
fn run_node(config: &ClusterConfig, id: &str, stop_with_parent: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(cancel_on_signal(stop.clone()));
        if stop_with_parent {
            crate::local::stop_when_parent_exits(stop.clone())?;
        }
        serve_until(config, id, stop).await
    })
}

async fn serve_until(config: &ClusterConfig, id: &str, stop: CancellationToken) -> anyhow::Result<ExitCode> {
    let parts = NodeParts::real(config, id, None).with_context(|| format!("starting node {id}"))?;
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
