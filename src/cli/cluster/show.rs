//! `quorumkv cluster show`: the layouts in use, the stage of the move between them, and
//! each node's counters and what it still pulls and drops (gathered by [`super::moves`]).

use std::fmt::Write as _;

use quorumkv_client::layout::LayoutHistory;
use quorumkv_client::Client;
use serde::Serialize;

use super::moves::{self, NodeMove, Stage};

/// Partition lines printed per node before the rest is summed up (`--json` lists all).
const PARTITION_LINES: usize = 10;

/// Everything `cluster show` prints.
#[derive(Debug, Serialize)]
pub struct ShowReport {
    /// The layouts in use, oldest first.
    pub layouts: Vec<LayoutView>,
    /// Version of the layout reads use.
    pub read_version: u64,
    /// Where the move is (`done` when there is none).
    pub stage: Stage,
    /// Each node of a layout in use.
    pub nodes: Vec<NodeMove>,
}

/// One layout and who replicates how much of it.
#[derive(Debug, Serialize)]
pub struct LayoutView {
    /// Its version.
    pub version: u64,
    /// Each member with the partitions it replicates, in roster order.
    pub members: Vec<LayoutMember>,
    /// Nodes of the layout before whose data is gone.
    pub gone: Vec<String>,
}

/// One member of a layout.
#[derive(Debug, Serialize)]
pub struct LayoutMember {
    /// The node.
    pub id: String,
    /// Partitions it replicates in that layout.
    pub partitions: usize,
}

/// Layouts of `history` with their members' partition counts.
pub fn layout_views(history: &LayoutHistory) -> Vec<LayoutView> {
    history
        .layouts
        .iter()
        .map(|layout| {
            let mut counts = vec![0usize; history.roster.len()];
            if let Ok(ring) = history.ring_of(layout) {
                for partition in 0..ring.partitions() {
                    for &r in ring.replicas(partition) {
                        counts[r] += 1;
                    }
                }
            }
            let members = history
                .roster
                .iter()
                .zip(counts)
                .filter(|(_, c)| *c > 0)
                .map(|(m, c)| LayoutMember {
                    id: m.id.clone(),
                    partitions: c,
                })
                .collect();
            LayoutView {
                version: layout.version,
                members,
                gone: layout.gone.clone(),
            }
        })
        .collect()
}

/// Asks the nodes and builds the report.
pub async fn collect(client: &Client) -> ShowReport {
    let history = moves::merged_history(client).await;
    let nodes = moves::collect(client, moves::nodes_in_use(&history), &Default::default()).await;
    let node_moving = nodes.iter().any(|n| n.answer.as_ref().is_ok_and(|p| p.moving));
    let dropping = nodes.iter().any(|n| n.drop_left().0 > 0);
    ShowReport {
        layouts: layout_views(&history),
        read_version: history.read_version(),
        stage: moves::stage(&history, node_moving, dropping),
        nodes,
    }
}

/// The report for people.
pub fn screen(report: &ShowReport) -> String {
    let mut out = String::new();
    for layout in &report.layouts {
        let role = match layout.version == report.read_version {
            true => "reads and writes",
            false => "writes",
        };
        let members: Vec<String> = layout
            .members
            .iter()
            .map(|m| format!("{} {}", m.id, m.partitions))
            .collect();
        let _ = write!(out, "layout {} ({role}): {}", layout.version, members.join(", "));
        let _ = writeln!(out, " (partitions replicated)");
        if !layout.gone.is_empty() {
            let _ = writeln!(out, "  data gone: {}", layout.gone.join(", "));
        }
    }
    let (first, last) = match (report.layouts.first(), report.layouts.last()) {
        (Some(first), Some(last)) => (first.version, last.version),
        _ => (0, 0),
    };
    match first == last {
        true => {
            let _ = writeln!(out, "no move under way: {}", report.stage.describe());
        }
        false => {
            let _ = writeln!(out, "move {first} -> {last}: {}", report.stage.describe());
        }
    }
    let _ = writeln!(
        out,
        "{:<8} {:<21} {:>5} {:>5} {:>8}  left",
        "node", "address", "ack", "sync", "sync_ack"
    );
    for node in &report.nodes {
        out.push_str(&node_lines(node));
    }
    out
}

/// A node's counters and what it has left, then a line per partition it pulls.
fn node_lines(node: &NodeMove) -> String {
    let mut out = format!("{:<8} {:<21} ", node.id, node.addr.to_string());
    let Ok(p) = &node.answer else {
        let _ = writeln!(out, "{}", moves::progress_line(node));
        return out;
    };
    let c = p.progress;
    let _ = writeln!(
        out,
        "{:>5} {:>5} {:>8}  {}",
        c.ack,
        c.sync,
        c.sync_ack,
        moves::progress_line(node)
    );
    for pull in p.pulling.iter().take(PARTITION_LINES) {
        let left = match (pull.keys_left, pull.bytes_left) {
            (Some(k), Some(b)) => format!("~{k} keys (~{}) left", crate::status::human_bytes(b)),
            (Some(k), None) => format!("~{k} keys left"),
            _ => "left unknown (no source answered)".to_string(),
        };
        let from = pull.sources.join(", ");
        let _ = writeln!(out, "         partition {:>4} from {from}: {left}", pull.partition);
    }
    if p.pulling.len() > PARTITION_LINES {
        let more = p.pulling.len() - PARTITION_LINES;
        let _ = writeln!(out, "         ... and {more} more partitions (--json lists them all)");
    }
    out
}
