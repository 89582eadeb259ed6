//! `quorumkv status`: every node's view of the cluster, collected and printed.
//!
//! Each node reports its failure detector, per-partition agreement with the other
//! replicas, anti-entropy totals and the hints it holds ([`NodeStatus`]). The summary
//! condenses partitions into "in agreement with every replica" counts and the oldest
//! agreement; `--json` prints everything, one object per line.

use std::fmt::Write as _;

use quorumkv_client::clock::{Clock, SystemClock};
use quorumkv_client::wire::NodeStatus;
use quorumkv_client::Client;
use serde::Serialize;

/// One node's answer, or why there is none.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    /// The node asked.
    pub id: String,
    /// Its status, or the error that kept it from answering.
    #[serde(serialize_with = "status_or_error")]
    pub status: Result<NodeStatus, String>,
}

/// Asks every node in `ids` for its status, all at once.
pub async fn collect(client: &Client, ids: &[String]) -> Vec<NodeReport> {
    let asks = ids.iter().map(|id| async move {
        let status = client.status(id).await.map_err(|e| e.to_string());
        NodeReport { id: id.clone(), status }
    });
    futures_util::future::join_all(asks).await
}

/// Prints the reports as a summary, or as JSON lines.
pub fn print(reports: &[NodeReport], json: bool) -> anyhow::Result<()> {
    let now = SystemClock.now_micros();
    for report in reports {
        if json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            print!("{}", summary(report, now));
        }
    }
    Ok(())
}

/// A human summary of one report.
pub fn summary(report: &NodeReport, now_micros: u64) -> String {
    let status = match &report.status {
        Ok(status) => status,
        Err(e) => return format!("{}  UNREACHABLE: {e}\n", report.id),
    };
    let mut out = String::new();
    let trees = if status.trees_ready {
        "trees ready"
    } else {
        "trees rebuilding"
    };
    let peers: Vec<String> = status
        .peers
        .iter()
        .map(|p| match p.up {
            true => format!("{} up", p.id),
            false => format!("{} DOWN ({} pings missed)", p.id, p.missed_pings),
        })
        .collect();
    let _ = writeln!(out, "{}  up, {trees}; sees {}", status.id, peers.join(", "));
    let _ = writeln!(out, "    {}", partitions_line(status, now_micros));
    let ae = &status.anti_entropy;
    let _ = writeln!(
        out,
        "    anti-entropy: {} rounds, {} records pulled, {} KiB sent, {} KiB received",
        ae.rounds,
        ae.records_pulled,
        ae.bytes_sent / 1024,
        ae.bytes_received / 1024
    );
    let hints: Vec<String> = status
        .hints_held
        .iter()
        .map(|(owner, n)| format!("{n} for {owner}"))
        .collect();
    let hints = if hints.is_empty() {
        "none".to_string()
    } else {
        hints.join(", ")
    };
    let _ = writeln!(
        out,
        "    hints held: {hints}; refused (store full): {}",
        status.hints_refused
    );
    out
}

fn partitions_line(status: &NodeStatus, now_micros: u64) -> String {
    let total = status.partitions.len();
    let agreed_times: Vec<Option<u64>> = status
        .partitions
        .iter()
        .map(|p| p.replicas.iter().map(|r| r.last_agreed_micros).min().flatten())
        .collect();
    let agreed = agreed_times.iter().filter(|t| t.is_some()).count();
    let repaired: u64 = status
        .partitions
        .iter()
        .flat_map(|p| &p.replicas)
        .map(|r| r.keys_repaired)
        .sum();
    let oldest = agreed_times
        .iter()
        .flatten()
        .min()
        .map(|t| now_micros.saturating_sub(*t) as f64 / 1e6);
    let oldest = oldest
        .map(|s| format!(", oldest agreement {s:.1} s ago"))
        .unwrap_or_default();
    format!(
        "partitions: {total} replicated, {agreed} agreed with every other replica{oldest}, {} not yet; {repaired} keys repaired",
        total - agreed
    )
}

fn status_or_error<S: serde::Serializer>(status: &Result<NodeStatus, String>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Failed<'a> {
        error: &'a str,
    }
    match status {
        Ok(status) => status.serialize(s),
        Err(error) => Failed { error }.serialize(s),
    }
}
