//! How far a move is, node by node, for `quorumkv cluster show` and `status`.
//!
//! Each node in a layout in use is asked for its own history, its
//! [`MoveStatus`](quorumkv_client::layout::MoveStatus) and its summary (keys and disk
//! bytes). What a node still pulls is estimated against a source: keys left ≈ keys the
//! first old owner still to pull from holds in that partition − keys the node holds there
//! so far (never below 0), and bytes left ≈ keys left × that source's bytes per key. A
//! node that does not answer is reported as such; the others are reported all the same.
//! The stage of the move is a pure function of the merged history and what the nodes
//! answered ([`stage`]).

use std::collections::BTreeMap;

use quorumkv_client::layout::{LayoutHistory, PartitionKeys, Progress};
use quorumkv_client::wire::{Member, NodeSummary, MAX_COUNTED_PARTITIONS};
use quorumkv_client::Client;
use serde::Serialize;

/// Where a move is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Some member does not use the newest layout yet.
    WaitingForAcks,
    /// Members pull the partitions they gain.
    Pulling,
    /// Everyone pulled; nodes learn it and send reads to the new owners.
    SwitchingReads,
    /// The merged view retired the old layout; some node still holds it.
    RetiringOld,
    /// Nodes drop the partitions they lost.
    Dropping,
    /// Nothing left to do.
    Done,
}

impl Stage {
    /// The stage for people.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::WaitingForAcks => "waiting for every member to use the new layout",
            Stage::Pulling => "pulling the partitions that move",
            Stage::SwitchingReads => "switching reads to the new layout",
            Stage::RetiringOld => "retiring the old layout",
            Stage::Dropping => "dropping moved data",
            Stage::Done => "done",
        }
    }
}

/// The stage of the move `history` (every answer merged) describes; `node_moving`: some
/// node's own history still holds two layouts; `dropping`: some node still drops data.
pub fn stage(history: &LayoutHistory, node_moving: bool, dropping: bool) -> Stage {
    // Once every member has seen everyone synced, the old layout is pruned: a history
    // that still holds two after all synced is waiting for those acknowledgements.
    match () {
        _ if history.moving() && !history.all_acked() => Stage::WaitingForAcks,
        _ if history.moving() && !history.all_synced() => Stage::Pulling,
        _ if history.moving() => Stage::SwitchingReads,
        _ if node_moving => Stage::RetiringOld,
        _ if dropping => Stage::Dropping,
        _ => Stage::Done,
    }
}

/// One partition a node still pulls, and the estimate of what is left.
#[derive(Debug, Serialize)]
pub struct PullEstimate {
    /// The partition.
    pub partition: u32,
    /// Old owners the node has not completed a pull from.
    pub sources: Vec<String>,
    /// Keys the node holds in it so far.
    pub keys_here: u64,
    /// Keys left to pull; `None` if no source answered.
    pub keys_left: Option<u64>,
    /// Bytes left to pull, from the source's bytes per key; `None` if unknown.
    pub bytes_left: Option<u64>,
}

/// What one node answered.
#[derive(Debug, Serialize)]
pub struct NodeProgress {
    /// Its own history holds two layouts.
    pub moving: bool,
    /// Newest layout version it knows.
    pub version: u64,
    /// Its counters.
    pub progress: Progress,
    /// Partitions it holds keys of but no longer replicates, to drop.
    pub dropping: Vec<PartitionKeys>,
    /// Keys it stores (tombstones included).
    pub keys: u64,
    /// Bytes its store uses on disk, if it could tell.
    pub disk_bytes: Option<u64>,
    /// Its pulls, with what is left of each.
    pub pulling: Vec<PullEstimate>,
}

/// One node of a layout in use, and its answer or why there is none.
#[derive(Debug, Serialize)]
pub struct NodeMove {
    /// The node.
    pub id: String,
    /// Its address from the layout.
    pub addr: std::net::SocketAddr,
    /// What it answered, or the error that kept it from answering.
    #[serde(serialize_with = "progress_or_error")]
    pub answer: Result<NodeProgress, String>,
}

impl NodeMove {
    /// Keys left to pull over every partition (`None` if any is unknown) and partitions.
    pub fn pull_left(&self) -> (usize, Option<u64>, Option<u64>) {
        let Ok(p) = &self.answer else {
            return (0, None, None);
        };
        let keys = p.pulling.iter().map(|e| e.keys_left).sum();
        let bytes = p.pulling.iter().map(|e| e.bytes_left).sum();
        (p.pulling.len(), keys, bytes)
    }

    /// Partitions and keys waiting to be dropped.
    pub fn drop_left(&self) -> (usize, u64) {
        match &self.answer {
            Ok(p) => (p.dropping.len(), p.dropping.iter().map(|d| d.keys).sum()),
            Err(_) => (0, 0),
        }
    }
}

/// The roster members owning slots in any layout in use, in roster order.
pub fn nodes_in_use(history: &LayoutHistory) -> Vec<Member> {
    let roster = &history.roster;
    history
        .in_use()
        .into_iter()
        .filter_map(|i| roster.get(i).cloned())
        .collect()
}

/// The newest history the nodes of `client`'s layout know, every answer merged (the
/// client's own if none answers).
pub async fn merged_history(client: &Client) -> LayoutHistory {
    let mut history = client.layout();
    let asks = nodes_in_use(&history)
        .into_iter()
        .map(|m| async move { client.fetch_layout(&m.id).await });
    for answer in futures_util::future::join_all(asks).await.into_iter().flatten() {
        // A history of another shape is not this cluster's: leave it out.
        let _ = history.merge(&answer);
    }
    history
}

/// Asks each of `nodes` how far it is, all at once; `known`: summaries already asked
/// for (by `status`), by node id, which are not asked again.
pub async fn collect(client: &Client, nodes: Vec<Member>, known: &BTreeMap<String, NodeSummary>) -> Vec<NodeMove> {
    let asks = nodes.into_iter().map(|m| async move {
        let answer = ask_node(client, &m.id, known.get(&m.id)).await;
        NodeMove {
            id: m.id,
            addr: m.addr,
            answer,
        }
    });
    let mut nodes = futures_util::future::join_all(asks).await;
    estimate_pulls(client, &mut nodes).await;
    nodes
}

async fn ask_node(client: &Client, id: &str, known: Option<&NodeSummary>) -> Result<NodeProgress, String> {
    let fail = |e: quorumkv_client::ClientError| e.to_string();
    let own = client.fetch_layout(id).await.map_err(fail)?;
    let status = client.move_status(id).await.map_err(fail)?;
    let summary = match known {
        Some(summary) => summary.clone(),
        None => client.status_summary(id, false).await.map_err(fail)?,
    };
    let pulling = status.pulling.into_iter().map(|pull| PullEstimate {
        partition: pull.partition,
        sources: pull.sources,
        keys_here: pull.keys_here,
        keys_left: None,
        bytes_left: None,
    });
    Ok(NodeProgress {
        moving: own.moving(),
        version: status.version,
        progress: status.progress,
        dropping: status.dropping,
        keys: summary.keys,
        disk_bytes: summary.disk_bytes,
        pulling: pulling.collect(),
    })
}

/// Fills in every node's pull estimates: one `PartitionKeys` ask per source (per 1,024
/// partitions) for the partitions pulled from it first.
async fn estimate_pulls(client: &Client, nodes: &mut [NodeMove]) {
    let mut wanted: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for node in nodes.iter() {
        let Ok(p) = &node.answer else { continue };
        for pull in &p.pulling {
            if let Some(source) = pull.sources.first() {
                wanted.entry(source.clone()).or_default().push(pull.partition);
            }
        }
    }
    let mut held: BTreeMap<(String, u32), u64> = BTreeMap::new();
    for (source, mut partitions) in wanted {
        partitions.sort_unstable();
        partitions.dedup();
        for chunk in partitions.chunks(MAX_COUNTED_PARTITIONS) {
            let Ok(counts) = client.partition_keys(&source, chunk.to_vec()).await else {
                continue;
            };
            for PartitionKeys { partition, keys } in counts {
                held.insert((source.clone(), partition), keys);
            }
        }
    }
    let bytes_per_key: BTreeMap<String, f64> = nodes
        .iter()
        .filter_map(|n| {
            let p = n.answer.as_ref().ok()?;
            let bytes = p.disk_bytes? as f64;
            (p.keys > 0).then(|| (n.id.clone(), bytes / p.keys as f64))
        })
        .collect();
    for node in nodes.iter_mut() {
        let Ok(p) = &mut node.answer else { continue };
        for pull in &mut p.pulling {
            let Some(source) = pull.sources.first() else { continue };
            pull.keys_left = held
                .get(&(source.clone(), pull.partition))
                .map(|k| k.saturating_sub(pull.keys_here));
            let per_key = bytes_per_key.get(source);
            pull.bytes_left = pull.keys_left.zip(per_key).map(|(k, b)| (k as f64 * b) as u64);
        }
    }
}

/// One line of what `node` still pulls and drops ("pulls 12 partitions, ~300 keys
/// (~40.0 KiB) left; drops 0"), or why it did not answer.
pub fn progress_line(node: &NodeMove) -> String {
    if let Err(e) = &node.answer {
        return format!("did not answer: {e}");
    }
    let (pulls, keys, bytes) = node.pull_left();
    let (drops, drop_keys) = node.drop_left();
    let estimate = |v: Option<u64>, human: fn(u64) -> String| v.map_or("?".to_string(), |v| format!("~{}", human(v)));
    let pull = match pulls {
        0 => "pulls nothing".to_string(),
        _ => format!(
            "pulls {pulls} partitions, {} keys ({}) left",
            estimate(keys, |k| k.to_string()),
            estimate(bytes, crate::status::human_bytes)
        ),
    };
    let drop = match drops {
        0 => "drops nothing".to_string(),
        _ => format!("drops {drops} partitions ({drop_keys} keys)"),
    };
    format!("{pull}; {drop}")
}

/// A node's answer as itself, or `{"error": ...}`.
fn progress_or_error<S: serde::Serializer>(answer: &Result<NodeProgress, String>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Failed<'a> {
        error: &'a str,
    }
    match answer {
        Ok(progress) => progress.serialize(s),
        Err(error) => Failed { error }.serialize(s),
    }
}

#[cfg(test)]
mod tests;
