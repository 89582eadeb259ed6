//! [`NodeCollector`]: the node's state as metrics, read at scrape time from what the
//! node keeps anyway (for `status` and for its own decisions), so nothing is counted
//! twice and nothing here costs the request path.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::ServiceCounters;
use crate::context::NodeContext;

/// Microseconds per second: agreement times are kept in µs and exported in seconds.
const MICROS_PER_SECOND: f64 = 1e6;

/// Encodes the node's state on every scrape.
#[derive(Debug)]
pub struct NodeCollector {
    ctx: Arc<NodeContext>,
}

impl NodeCollector {
    /// A collector of `ctx`'s state.
    pub fn new(ctx: Arc<NodeContext>) -> NodeCollector {
        NodeCollector { ctx }
    }

    /// The other members: (index, id).
    fn peers(&self) -> Vec<(usize, String)> {
        let layout = self.ctx.layout();
        let ids = layout.ids().into_iter().enumerate();
        ids.filter(|(i, _)| Some(*i) != layout.me).collect()
    }

    /// When every partition shared with `peer` had last agreed with it (µs): the least
    /// recent of their last agreements; `None` while one of them never has.
    fn last_agreement(&self, peer: usize) -> Option<u64> {
        let shared = self.ctx.layout().shared_with(peer).into_iter();
        shared
            .map(|p| self.ctx.agreement.pair(p, peer).last_agreed_micros)
            .try_fold(u64::MAX, |oldest, t| t.map(|t| oldest.min(t)))
            .filter(|t| *t != u64::MAX)
    }

    fn encode_peers(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let detector = self.ctx.peer_statuses(&self.ctx.layout());
        let help = "Whether the failure detector sees the peer answering pings (1) or not (0)";
        let mut up = encoder.encode_descriptor("peer_up", help, None, MetricType::Gauge)?;
        for peer in &detector {
            gauge(up.encode_family(&[("peer", peer.id.as_str())])?, i64::from(peer.up))?;
        }
        let help = "Unix time by which every partition shared with the peer had last agreed with it \
                    (absent until each has agreed once)";
        let mut agreed =
            encoder.encode_descriptor("anti_entropy_last_agreement_seconds", help, None, MetricType::Gauge)?;
        for (i, id) in self.peers() {
            let id = id.as_str();
            if let Some(t) = self.last_agreement(i) {
                let seconds = t as f64 / MICROS_PER_SECOND;
                ConstGauge::new(seconds).encode(agreed.encode_family(&[("peer", id)])?)?;
            }
        }
        Ok(())
    }

    fn encode_anti_entropy(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters: &ServiceCounters = &self.ctx.counters;
        let help = "Anti-entropy syncs this node started, by peer and outcome";
        let mut rounds = encoder.encode_descriptor("anti_entropy_rounds", help, None, MetricType::Counter)?;
        for (i, id) in self.peers() {
            let id = id.as_str();
            for (outcome, table) in [("ok", &counters.rounds_ok), ("failed", &counters.rounds_failed)] {
                let labels = [("peer", id), ("outcome", outcome)];
                counter(rounds.encode_family(&labels)?, ServiceCounters::load(table, i))?;
            }
        }
        let moved = self.ctx.agreement.records_moved();
        let help = "Records moved by anti-entropy: received (pulled by this node's syncs and \
                    applied) and sent (served to peers' syncs)";
        let mut records = encoder.encode_descriptor("anti_entropy_records", help, None, MetricType::Counter)?;
        for (direction, n) in [("sent", moved.served), ("received", moved.pulled)] {
            counter(records.encode_family(&[("direction", direction)])?, n)?;
        }
        let traffic = self.ctx.anti_entropy_peers.traffic();
        let help = "Bytes of anti-entropy frames on this node's own syncs, by direction";
        let mut bytes = encoder.encode_descriptor("anti_entropy_bytes", help, None, MetricType::Counter)?;
        for (direction, n) in [("sent", &traffic.sent), ("received", &traffic.received)] {
            counter(
                bytes.encode_family(&[("direction", direction)])?,
                n.load(Ordering::Relaxed),
            )?;
        }
        Ok(())
    }

    fn encode_hints(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let held = self.ctx.storage.hint_counts();
        let help = "Hints this node holds for an unreachable replica, by owner";
        let mut gauges = encoder.encode_descriptor("hints_held", help, None, MetricType::Gauge)?;
        for (_, id) in self.peers() {
            let id = id.as_str();
            let count = held.get(id).copied().unwrap_or(0);
            gauge(gauges.encode_family(&[("owner", id)])?, count_i64(count))?;
        }
        let help = "Hints this node delivered to their owner, by owner";
        let mut delivered = encoder.encode_descriptor("hints_delivered", help, None, MetricType::Counter)?;
        for (i, id) in self.peers() {
            let id = id.as_str();
            let n = ServiceCounters::load(&self.ctx.counters.hints_delivered, i);
            counter(delivered.encode_family(&[("owner", id)])?, n)?;
        }
        let help = "Records other nodes delivered here as hints that this node applied";
        let received = self.ctx.agreement.records_moved().pushed_in;
        counter(
            encoder.encode_descriptor("hints_received", help, None, MetricType::Counter)?,
            received,
        )?;
        let help = "Hints refused because this node held the most allowed for their owner";
        let refused = self.ctx.agreement.hints_refused.load(Ordering::Relaxed);
        counter(
            encoder.encode_descriptor("hints_refused", help, None, MetricType::Counter)?,
            refused,
        )
    }

    fn encode_storage(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let storage = &self.ctx.storage;
        let usage = storage.usage();
        let help = "Keys stored, tombstones not yet purged included (until the index has loaded \
                    after a start, only those seen so far)";
        gauge(
            encoder.encode_descriptor("keys", help, None, MetricType::Gauge)?,
            count_i64(usage.keys),
        )?;
        if let Some(bytes) = usage.disk_bytes {
            let help = "Bytes the store's files have allocated on disk (journal and tables, as du counts them)";
            let metric = encoder.encode_descriptor("storage_disk_bytes", help, None, MetricType::Gauge)?;
            gauge(metric, count_i64(bytes))?;
        }
        let ready = i64::from(storage.forest().is_ready());
        let help = "Whether the Merkle trees are built (anti-entropy waits for them after a start)";
        gauge(
            encoder.encode_descriptor("trees_ready", help, None, MetricType::Gauge)?,
            ready,
        )?;
        let commits = storage.commits();
        let help = "Operations (writes, hints, purges) committed together by one group commit";
        let metric = encoder.encode_descriptor("storage_commit_records", help, None, MetricType::Histogram)?;
        commits.records.encode(metric)?;
        let help = "Seconds per group commit: the batch write plus, in sync mode, its fdatasync";
        let metric = encoder.encode_descriptor("storage_commit_duration_seconds", help, None, MetricType::Histogram)?;
        commits.duration.encode(metric)
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_peers(&mut encoder)?;
        self.encode_anti_entropy(&mut encoder)?;
        self.encode_hints(&mut encoder)?;
        self.encode_storage(&mut encoder)
    }
}

fn counter(encoder: MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder)
}

fn gauge(encoder: MetricEncoder, value: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder)
}

/// A count as a gauge value (counts never come near `i64::MAX`; saturate if one did).
fn count_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
