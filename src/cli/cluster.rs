//! `quorumkv cluster`: look at the layouts (`show`), see what a membership change would
//! move (`plan`), and make one (`add`, `remove`, `replace`); and `quorumkv status`, which
//! lists the nodes of the layouts in use and, during a move, what each still has to do.
//!
//! `plan` computes the next layout here, from the newest history the nodes know, and
//! changes nothing. A change is sent to the first node that answers (cluster.toml's
//! [[nodes]] first, then the other members), which checks it again and spreads it; the
//! nodes then move the data on their own (`cluster show` follows them). A change the
//! cluster refuses (below the replication factor, a move under way, an existing member)
//! exits with [`EXIT_REFUSED`]. Keys moved are estimates: the keys all nodes report,
//! divided by the replication factor, spread evenly over the partitions.

mod moves;
mod show;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use quorumkv_client::error::FailureReason;
use quorumkv_client::layout::{Change, LayoutHistory};
use quorumkv_client::wire::{ErrorKind, Member};
use quorumkv_client::{Client, ClientError};

use super::exit::{ChangeRefused, EXIT_CODES};
use super::{client_command, load};
use crate::config::{ClusterConfig, NodeConfig};

/// `quorumkv cluster ...`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    /// Path of the cluster configuration (its [[nodes]] are the seeds).
    #[arg(long, global = true, default_value = "cluster.toml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The layouts in use, the move between them and what each node has left to do.
    #[command(after_help = EXIT_CODES)]
    Show {
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// What a change would move, per node, without making it.
    #[command(subcommand, after_help = EXIT_CODES)]
    Plan(ChangeArgs),
    #[command(flatten)]
    Apply(ChangeArgs),
}

/// A membership change, as `cluster plan` and the commands that make it take it.
#[derive(Debug, Subcommand)]
enum ChangeArgs {
    /// Add node ID, listening at ADDR (start it first: `quorumkv node --id ID --addr ADDR`).
    #[command(after_help = EXIT_CODES)]
    Add {
        /// The new node's id.
        id: String,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// Remove node ID; its partitions move to the others.
    #[command(after_help = EXIT_CODES)]
    Remove {
        /// The node leaving.
        id: String,
        /// The node is dead and its data lost: the others do not wait to pull from it.
        #[arg(long)]
        gone: bool,
    },
    /// Node NEW (at ADDR) takes exactly the partitions of OLD, whose data is presumed lost.
    #[command(after_help = EXIT_CODES)]
    Replace {
        /// The node replaced.
        old: String,
        /// The node taking its place.
        new: String,
        /// Where the new node listens.
        addr: SocketAddr,
    },
    /// The move under way stops waiting for node ID, which died in it: its data is
    /// presumed lost and its part taken as done. Replace or remove it once the move is over.
    #[command(after_help = EXIT_CODES)]
    Skip {
        /// The dead node.
        id: String,
    },
}

impl ChangeArgs {
    fn change(&self) -> Change {
        match self {
            ChangeArgs::Add { id, addr } => Change::Add {
                id: id.clone(),
                addr: *addr,
            },
            ChangeArgs::Remove { id, gone } => Change::Remove {
                id: id.clone(),
                gone: *gone,
            },
            ChangeArgs::Replace { old, new, addr } => Change::Replace {
                old: old.clone(),
                new: new.clone(),
                addr: *addr,
            },
            ChangeArgs::Skip { id } => Change::Skip { id: id.clone() },
        }
    }
}

/// Runs a `cluster` subcommand.
pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let config = load(&args.config)?;
    let seeds = config.node_ids();
    client_command(&config, None, |client| async move {
        match args.command {
            ClusterCommand::Show { json } => {
                let report = show::collect(&client).await;
                match json {
                    true => println!("{}", serde_json::to_string(&report)?),
                    false => print!("{}", show::screen(&report)),
                }
                Ok(ExitCode::SUCCESS)
            }
            ClusterCommand::Plan(change) => plan(&client, &change.change()).await,
            ClusterCommand::Apply(change) => apply(&client, &seeds, change.change()).await,
        }
    })
}

/// Prints what `change` would move, from the newest history the nodes know.
async fn plan(client: &Client, change: &Change) -> anyhow::Result<ExitCode> {
    let history = moves::merged_history(client).await;
    let next = history.change(change).map_err(|e| ChangeRefused(e.to_string()))?;
    println!(
        "plan: {} (layout {} -> {}), nothing changed",
        describe(change),
        history.newest().version,
        next.newest().version
    );
    print!("{}", moves_table(client, &next).await?);
    Ok(ExitCode::SUCCESS)
}

/// Makes `change` through the first node that answers: `seeds` in order, then the other
/// members. A refusal stops there; a node that cannot be reached is skipped.
async fn apply(client: &Client, seeds: &[String], change: Change) -> anyhow::Result<ExitCode> {
    let members = moves::nodes_in_use(&client.layout()).into_iter().map(|m| m.id);
    let mut order: Vec<String> = seeds.to_vec();
    order.extend(members.filter(|id| !seeds.contains(id)));
    let mut failures = Vec::new();
    for node in &order {
        match client.change_layout(node, change.clone()).await {
            Ok(next) => {
                let version = next.newest().version;
                println!("layout {version} made through {node}: {}", describe(&change));
                print!("{}", moves_table(client, &next).await?);
                println!("follow the move with `quorumkv cluster show`");
                return Ok(ExitCode::SUCCESS);
            }
            Err(error) => match layout_refusal(&error) {
                Some(message) => return Err(ChangeRefused(message).into()),
                None => failures.push(format!("{node}: {error}")),
            },
        }
    }
    anyhow::bail!("no member made the change: {}", failures.join("; "))
}

/// The message of a node's refusal of a layout change, if that is what `error` is.
fn layout_refusal(error: &ClientError) -> Option<String> {
    let ClientError::Unavailable { failures, .. } = error else {
        return None;
    };
    failures.iter().find_map(|f| match &f.reason {
        FailureReason::Refused(reply) if reply.kind == ErrorKind::LayoutRefused => Some(reply.message.clone()),
        _ => None,
    })
}

/// "add n4 at 127.0.0.1:7004".
fn describe(change: &Change) -> String {
    match change {
        Change::Add { id, addr } => format!("add {id} at {addr}"),
        Change::Remove { id, gone: false } => format!("remove {id}"),
        Change::Remove { id, gone: true } => format!("remove {id} (gone: its data is not pulled)"),
        Change::Replace { old, new, addr } => format!("replace {old} by {new} at {addr}"),
        Change::Skip { id } => format!("stop waiting for {id} (gone: its data is not pulled)"),
    }
}

/// Per node, the partitions gained and lost from the oldest to the newest layout of
/// `next` and the keys that moves, and the total.
async fn moves_table(client: &Client, next: &LayoutHistory) -> anyhow::Result<String> {
    let per_partition = keys_per_partition(client, next).await;
    let estimate = |partitions: usize| match per_partition {
        Some(k) => format!("~{}", (partitions as f64 * k).round()),
        None => "?".to_string(),
    };
    let mut out = format!(
        "{:<8} {:>6} {:>6} {:>6} {:>10}\n",
        "node", "gains", "loses", "keeps", "keys in"
    );
    let mut total = 0;
    for m in next.moves()? {
        let gains = m.gains.len();
        total += gains;
        out.push_str(&format!(
            "{:<8} {gains:>6} {:>6} {:>6} {:>10}\n",
            m.id,
            m.loses.len(),
            m.keeps,
            estimate(gains)
        ));
    }
    out.push_str(&format!(
        "total: {total} partition copies move, {} keys\n",
        estimate(total)
    ));
    Ok(out)
}

/// Keys per partition, estimated from the summaries of the nodes of the oldest layout:
/// their keys, scaled up for those that did not answer, over the replication factor.
async fn keys_per_partition(client: &Client, history: &LayoutHistory) -> Option<f64> {
    let mut current = history.clone();
    current.layouts.truncate(1);
    let nodes = moves::nodes_in_use(&current);
    let asks = nodes.iter().map(|m| client.status_summary(&m.id, false));
    let keys: Vec<u64> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|s| s.ok().map(|s| s.keys))
        .collect();
    if keys.is_empty() {
        return None;
    }
    let total = keys.iter().sum::<u64>() as f64 * nodes.len() as f64 / keys.len() as f64;
    Some(total / history.replication_factor as f64 / f64::from(history.partitions))
}

/// `quorumkv status`: every node of the layouts in use, then, when a move is under way or
/// data is still to drop, a line per node with what it has left.
pub fn status(config: &ClusterConfig, json: bool, partitions: bool) -> anyhow::Result<ExitCode> {
    client_command(config, None, |client| async move {
        let history = moves::merged_history(&client).await;
        let nodes: Vec<NodeConfig> = moves::nodes_in_use(&history)
            .into_iter()
            .map(|m| NodeConfig {
                id: m.id,
                addr: m.addr,
                metrics_addr: None,
            })
            .collect();
        let report = crate::status::collect(&client, &nodes, partitions).await;
        crate::status::print(&report, json)?;
        if !json {
            // Nodes that did not answer are shown down above: not asked again.
            let answered = |m: &Member| report.iter().any(|r| r.id == m.id && r.status.is_ok());
            let nodes = moves::nodes_in_use(&history).into_iter().filter(answered).collect();
            let known = report
                .iter()
                .filter_map(|r| Some((r.id.clone(), r.status.as_ref().ok()?.clone())))
                .collect();
            let progress = moves::collect(&client, nodes, &known).await;
            let busy = |n: &moves::NodeMove| n.pull_left().0 + n.drop_left().0 > 0;
            if history.moving() || progress.iter().any(busy) {
                match (history.layouts.first(), history.moving()) {
                    (Some(old), true) => println!("move {} -> {}:", old.version, history.newest().version),
                    _ => println!("after the move to layout {}:", history.newest().version),
                }
                for node in &progress {
                    println!("{:<8} {}", node.id, moves::progress_line(node));
                }
            }
        }
        Ok(match report.iter().all(|r| r.status.is_ok()) {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        })
    })
}
