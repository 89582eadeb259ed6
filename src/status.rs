//! `quorumkv status`: every node's view of the cluster, collected and printed in one
//! screen.
//!
//! Each node answers a [`NodeSummary`] (peers, hints, keys, disk bytes, its partitions'
//! agreement condensed); a node that does not answer is shown as down with the reason,
//! and the others are printed all the same. One line per node, plus a line of warnings
//! when there is something to look at: trees rebuilding, peers it sees down, partitions
//! not in agreement, hints refused. `--partitions` adds every partition row (asked of
//! the nodes only then: they are ~40 KB per node); `--json` prints one object per node.

use std::fmt::Write as _;
use std::net::SocketAddr;

use quorumkv_client::clock::{Clock, SystemClock};
use quorumkv_client::wire::{NodeSummary, PartitionStatus};
use quorumkv_client::Client;
use serde::Serialize;

use crate::config::NodeConfig;

/// One node's answer, or why there is none.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    /// The node asked.
    pub id: String,
    /// Its address from cluster.toml.
    pub addr: SocketAddr,
    /// Its summary, or the error that kept it from answering.
    #[serde(serialize_with = "summary_or_error")]
    pub status: Result<NodeSummary, String>,
}

/// Asks every member for its summary, all at once; with every partition row if
/// `partitions`.
pub async fn collect(client: &Client, members: &[NodeConfig], partitions: bool) -> Vec<NodeReport> {
    let asks = members.iter().map(|node| async move {
        let status = client.status_summary(&node.id, partitions).await;
        NodeReport {
            id: node.id.clone(),
            addr: node.addr,
            status: status.map_err(|e| e.to_string()),
        }
    });
    futures_util::future::join_all(asks).await
}

/// Prints the reports as a summary, or as JSON lines.
pub fn print(reports: &[NodeReport], json: bool) -> anyhow::Result<()> {
    if json {
        for report in reports {
            println!("{}", serde_json::to_string(report)?);
        }
        return Ok(());
    }
    print!("{}", screen(reports, SystemClock.now_micros()));
    Ok(())
}

/// The human summary of every report: a header, a line per node, its warnings and (if
/// they were asked for) its partition rows.
pub fn screen(reports: &[NodeReport], now_micros: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<5} {:<21} {:>10} {:>10} {:>6}  agreement",
        "node", "state", "address", "keys", "disk", "hints"
    );
    for report in reports {
        out.push_str(&node_lines(report, now_micros));
    }
    out
}

/// The lines of one node.
pub fn node_lines(report: &NodeReport, now_micros: u64) -> String {
    let (id, addr) = (&report.id, report.addr.to_string());
    let summary = match &report.status {
        Ok(summary) => summary,
        Err(e) => return format!("{id:<8} {:<5} {addr:<21} unreachable: {e}\n", "DOWN"),
    };
    let disk = summary.disk_bytes.map_or("?".to_string(), human_bytes);
    let hints: u64 = summary.status.hints_held.iter().map(|(_, n)| n).sum();
    let mut out = format!(
        "{id:<8} {:<5} {addr:<21} {:>10} {disk:>10} {hints:>6}  {}\n",
        "up",
        summary.keys,
        agreement(summary, now_micros)
    );
    let warnings = warnings(summary);
    if !warnings.is_empty() {
        let _ = writeln!(out, "         ! {}", warnings.join("; "));
    }
    for row in &summary.status.partitions {
        let _ = writeln!(out, "         {}", partition_row(row, now_micros));
    }
    out
}

/// "256/256 agreed, oldest 8.2 s ago": partitions in agreement with every other replica.
fn agreement(summary: &NodeSummary, now_micros: u64) -> String {
    let a = &summary.agreement;
    let oldest = a
        .oldest_agreed_micros
        .map(|t| format!(", oldest {} ago", age(now_micros, t)))
        .unwrap_or_default();
    format!("{}/{} agreed{oldest}", a.agreed, a.replicated)
}

/// What deserves a look on this node.
pub fn warnings(summary: &NodeSummary) -> Vec<String> {
    let status = &summary.status;
    let mut warnings = Vec::new();
    if !status.trees_ready {
        warnings.push("Merkle trees rebuilding (anti-entropy waits)".to_string());
    }
    let down: Vec<String> = status
        .peers
        .iter()
        .filter(|p| !p.up)
        .map(|p| format!("{} ({} pings missed)", p.id, p.missed_pings))
        .collect();
    if !down.is_empty() {
        warnings.push(format!("sees down: {}", down.join(", ")));
    }
    let behind = summary.agreement.not_agreed();
    if behind > 0 {
        warnings.push(format!("{behind} partitions not in agreement yet"));
    }
    if status.hints_refused > 0 {
        warnings.push(format!(
            "{} hints refused (hint store full; anti-entropy repairs those keys)",
            status.hints_refused
        ));
    }
    warnings
}

/// One partition's agreement with each other replica.
fn partition_row(row: &PartitionStatus, now_micros: u64) -> String {
    let replicas: Vec<String> = row
        .replicas
        .iter()
        .map(|r| match r.last_agreed_micros {
            Some(t) => format!("{} agreed {} ago", r.peer, age(now_micros, t)),
            None => format!("{} NOT in agreement", r.peer),
        })
        .collect();
    format!("partition {:>4}: {}", row.partition, replicas.join(", "))
}

/// How long ago `then_micros` was, e.g. "8.2 s".
fn age(now_micros: u64, then_micros: u64) -> String {
    format!("{:.1} s", now_micros.saturating_sub(then_micros) as f64 / 1e6)
}

/// `bytes` in the largest binary unit that keeps it at least 1, e.g. "3.4 MiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

fn summary_or_error<S: serde::Serializer>(status: &Result<NodeSummary, String>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Failed<'a> {
        error: &'a str,
    }
    match status {
        Ok(summary) => summary.serialize(s),
        Err(error) => Failed { error }.serialize(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 400 * 1024), "3.4 MiB");
        assert_eq!(human_bytes(5 << 40), "5.0 TiB");
    }
}
