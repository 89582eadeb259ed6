//! cluster.toml: the cluster's members and settings, loaded and validated once.
//!
//! Every field has a `///` comment and, where sensible, a default. [`ClusterConfig::load`]
//! rejects unknown fields and [`ClusterConfig::validate`] returns every problem at once,
//! each naming the field and the fix. Relative paths are relative to the file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quorumkv_client::tls::layout;
use quorumkv_client::version::DEFAULT_MAX_CLOCK_SKEW;
use quorumkv_client::wire::{ClusterInfo, Member, QuorumDefaults};
use serde::{Deserialize, Serialize};

/// The whole cluster.toml. (`Serialize` lets a test check that the shipped cluster.toml
/// lists every setting at its default; members are not serialized.)
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where nodes keep their data: one sub-directory per node id, plus `tls/` for the
    /// development CA. Relative to the config file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Partitions of the hash space: a power of two, fixed for the life of the cluster.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Replicas of every partition.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: usize,
    /// Request defaults.
    #[serde(default)]
    pub defaults: Defaults,
    /// Size and clock limits.
    #[serde(default)]
    pub limits: Limits,
    /// When writes reach the disk.
    #[serde(default)]
    pub durability: Durability,
    /// Read repair, anti-entropy, hinted handoff, failure detection and tombstones.
    #[serde(default)]
    pub convergence: Convergence,
    /// The storage engine's memory.
    #[serde(default)]
    pub storage: StorageSettings,
    /// Certificates; when absent, a development CA is generated under `data_dir/tls`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The members, in join order: append new nodes at the end, never reorder.
    #[serde(default, skip_serializing)]
    pub nodes: Vec<NodeConfig>,
    /// Directory of the file this was loaded from; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Nodes this process runs that `[[nodes]]` does not list (`quorumkv node --id ID
    /// --addr ADDR`): they join once a layout names them, and are not part of the
    /// version-1 layout cluster.toml seeds.
    #[serde(skip)]
    pub joining: Vec<NodeConfig>,
}

/// Default n/w/r and timeout of requests that do not choose their own.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Replicas contacted.
    pub n: usize,
    /// Write acknowledgements waited for.
    pub w: usize,
    /// Read answers waited for.
    pub r: usize,
    /// Request timeout in milliseconds.
    pub timeout_ms: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            n: 3,
            w: 2,
            r: 2,
            timeout_ms: 5_000,
        }
    }
}

/// Size and clock limits.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest key, in bytes: 1 to [`MAX_KEY_LIMIT`].
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// A write whose version is further than this ahead of the node's clock is refused.
    /// At most [`MAX_MICROS_MS`].
    pub max_clock_skew_ms: u64,
    /// A request frame must arrive whole within this long from its first byte, or its
    /// stream is closed (a client that stalls mid-frame must not pin the node's memory).
    /// Time the node itself makes a large frame wait for memory is not counted. The
    /// default, like QUIC's idle timeout, is 30 s: a 4 MiB value then needs a link of at
    /// least ~140 KB/s.
    pub frame_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 4 << 20,
            max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW.as_millis() as u64,
            frame_timeout_ms: 30_000,
        }
    }
}

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Durability {
    /// `sync`: fsync before acknowledging (group commit); `periodic`: fsync every interval.
    pub mode: DurabilityMode,
    /// fsync interval of `periodic` mode, in milliseconds.
    pub interval_ms: u64,
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            mode: DurabilityMode::Sync,
            interval_ms: 100,
        }
    }
}

/// The storage engine's memory.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// fjall's block cache per node, in MiB. fjall's own default (32 MiB) is smaller than
    /// the index and hot data of a node holding a few hundred MB. 1 to [`MAX_MB`].
    pub block_cache_mb: u64,
    /// Size of the in-memory write buffer (memtable) of the records, in MiB. Every read
    /// and write searches it first, a skiplist whose cost grows with its size (cache
    /// misses per level); a smaller one is flushed to disk more often. Applies to stores
    /// created with it: fjall keeps a keyspace's setting from its creation. 1 to [`MAX_MB`].
    pub memtable_mb: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            block_cache_mb: 256,
            memtable_mb: 64,
        }
    }
}

/// How replicas come back into agreement after faults.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Convergence {
    /// Pause between anti-entropy rounds (each round compares every shared partition with
    /// every peer that is up); a random jitter of up to a quarter is added.
    pub anti_entropy_interval_ms: u64,
    /// Most records one node pulls per second through anti-entropy.
    pub anti_entropy_keys_per_sec: u64,
    /// Most record bytes one node pulls per second through anti-entropy.
    pub anti_entropy_bytes_per_sec: u64,
    /// Whether clients hand writes for unreachable replicas to a fallback node.
    pub hinted_handoff: bool,
    /// Most hints a node holds for one other node; beyond it anti-entropy repairs.
    pub max_hints_per_node: u64,
    /// How often a node delivers the hints it holds to owners that are up.
    pub hint_delivery_interval_ms: u64,
    /// A tombstone is purged once every replica is known to hold it and it is this old.
    /// At most [`MAX_MICROS_MS`].
    pub tombstone_grace_ms: u64,
    /// Interval of the pings between nodes.
    pub ping_interval_ms: u64,
    /// A peer that misses this many pings in a row is marked down.
    pub down_after_missed_pings: u32,
}

impl Default for Convergence {
    fn default() -> Self {
        Convergence {
            anti_entropy_interval_ms: 10_000,
            anti_entropy_keys_per_sec: 20_000,
            anti_entropy_bytes_per_sec: 32 << 20,
            hinted_handoff: true,
            max_hints_per_node: 1_000_000,
            hint_delivery_interval_ms: 1_000,
            tombstone_grace_ms: 86_400_000,
            ping_interval_ms: 1_000,
            down_after_missed_pings: 3,
        }
    }
}

/// See [`Durability::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge only after fsync; concurrent writes share one fsync.
    Sync,
    /// Acknowledge after the write reached the OS; fsync every `interval_ms`.
    Periodic,
}

/// Certificates from your own CA, as a directory laid out like the development one:
/// `ca.pem`, `<node id>/cert.pem`, `<node id>/key.pem`, `client/cert.pem`, `client/key.pem`
/// (`quorumkv certs` writes one). A node reads `ca.pem` and its own directory, the CLI
/// `ca.pem` and `client/`. Node certificates must name the node id and `quorumkv.node` as
/// DNS names.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The directory. Relative to the config file.
    pub dir: PathBuf,
}

/// One member.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique id: lowercase letters, digits and `-`; also the node's TLS name.
    pub id: String,
    /// Address the node's QUIC endpoint listens on and others dial.
    pub addr: SocketAddr,
    /// Where the node serves Prometheus metrics over HTTP (`GET /metrics`); none unless
    /// set. Port 0 takes any free port (tests).
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_partitions() -> u32 {
    256
}
fn default_replication_factor() -> usize {
    3
}

/// A cluster.toml that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the field.
        message: String,
    },
    /// Values that parse but do not make a working cluster.
    #[error("{path}: invalid configuration:\n  - {}", .problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One line per problem, naming the field and the fix.
        problems: Vec<String>,
    },
}

/// Largest partition count (the ring stores preference lists per partition).
const MAX_PARTITIONS: u32 = 65_536;

impl ClusterConfig {
    /// Reads, parses and validates a cluster.toml.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.into(),
            error,
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        ClusterConfig::parse(&text, base_dir).map_err(|e| e.with_path(path))
    }

    /// Parses and validates cluster.toml text; relative paths resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: PathBuf) -> Result<ClusterConfig, ConfigError> {
        let mut config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.base_dir = base_dir;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: PathBuf::new(),
                problems,
            });
        }
        Ok(config)
    }

    /// Every problem with the values, each naming the field and the fix.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        self.validate_ring(&mut problems);
        self.validate_defaults(&mut problems);
        self.validate_limits(&mut problems);
        self.validate_ranges(&mut problems);
        self.validate_nodes(&mut problems);
        problems
    }

    fn validate_ring(&self, problems: &mut Vec<String>) {
        let p = self.partitions;
        if !p.is_power_of_two() || p > MAX_PARTITIONS {
            problems.push(format!(
                "partitions = {p}: must be a power of two between 1 and {MAX_PARTITIONS}, e.g. 256"
            ));
        }
        if self.replication_factor == 0 {
            problems.push("replication_factor = 0: must be at least 1 (3 is usual)".into());
        }
        if self.nodes.len() as u64 > u64::from(p) {
            problems.push(format!(
                "partitions = {p} is fewer than the {} nodes listed: every node needs a partition, raise it",
                self.nodes.len()
            ));
        }
        if !self.nodes.is_empty() && self.replication_factor > self.nodes.len() {
            problems.push(format!(
                "replication_factor = {} exceeds the {} nodes listed: add nodes or lower it",
                self.replication_factor,
                self.nodes.len()
            ));
        }
    }

    fn validate_defaults(&self, problems: &mut Vec<String>) {
        let d = self.defaults;
        if d.n == 0 || d.n > self.replication_factor {
            problems.push(format!(
                "defaults.n = {}: must be between 1 and replication_factor = {}",
                d.n, self.replication_factor
            ));
        }
        for (name, value) in [("w", d.w), ("r", d.r)] {
            if value == 0 || value > d.n {
                problems.push(format!(
                    "defaults.{name} = {value}: must be between 1 and defaults.n = {}",
                    d.n
                ));
            }
        }
        if d.timeout_ms == 0 {
            problems.push("defaults.timeout_ms = 0: must be positive, e.g. 5000".into());
        }
    }

    fn validate_limits(&self, problems: &mut Vec<String>) {
        let l = self.limits;
        if l.max_key_bytes == 0 {
            problems.push("limits.max_key_bytes = 0: must be at least 1, e.g. 1024".into());
        }
        if l.max_value_bytes > MAX_VALUE_LIMIT {
            problems.push(format!(
                "limits.max_value_bytes = {}: at most {MAX_VALUE_LIMIT} (64 MiB) is supported",
                l.max_value_bytes
            ));
        }
        if l.frame_timeout_ms == 0 {
            problems.push("limits.frame_timeout_ms = 0: must be positive, e.g. 30000".into());
        }
        if self.durability.mode == DurabilityMode::Periodic && self.durability.interval_ms == 0 {
            problems.push("durability.interval_ms = 0: periodic mode needs a positive interval, e.g. 100".into());
        }
        let c = self.convergence;
        let positive = [
            ("anti_entropy_interval_ms", c.anti_entropy_interval_ms, "10000"),
            ("anti_entropy_keys_per_sec", c.anti_entropy_keys_per_sec, "20000"),
            ("anti_entropy_bytes_per_sec", c.anti_entropy_bytes_per_sec, "33554432"),
            ("hint_delivery_interval_ms", c.hint_delivery_interval_ms, "1000"),
            ("ping_interval_ms", c.ping_interval_ms, "1000"),
            ("storage.block_cache_mb", self.storage.block_cache_mb, "256"),
            ("storage.memtable_mb", self.storage.memtable_mb, "64"),
            ("down_after_missed_pings", c.down_after_missed_pings as u64, "3"),
        ];
        for (name, value, example) in positive {
            if value == 0 {
                let field = if name.contains('.') {
                    name.to_string()
                } else {
                    format!("convergence.{name}")
                };
                problems.push(format!("{field} = 0: must be positive, e.g. {example}"));
            }
        }
    }

    /// Upper bounds found by fuzzing: beyond them a setting parsed, then broke the node
    /// (fjall refused the key and the storage writer stopped) or silently wrapped when
    /// the node converted it to µs or bytes.
    fn validate_ranges(&self, problems: &mut Vec<String>) {
        let key = self.limits.max_key_bytes;
        if key > MAX_KEY_LIMIT {
            problems.push(format!(
                "limits.max_key_bytes = {key}: at most {MAX_KEY_LIMIT} is supported (storage keys are under 64 KiB)"
            ));
        }
        let millis = [
            ("limits.max_clock_skew_ms", self.limits.max_clock_skew_ms),
            ("convergence.tombstone_grace_ms", self.convergence.tombstone_grace_ms),
        ];
        for (name, value) in millis.into_iter().filter(|(_, ms)| *ms > MAX_MICROS_MS) {
            problems.push(format!("{name} = {value}: at most {MAX_MICROS_MS} is supported"));
        }
        let megabytes = [
            ("storage.block_cache_mb", self.storage.block_cache_mb),
            ("storage.memtable_mb", self.storage.memtable_mb),
        ];
        for (name, value) in megabytes.into_iter().filter(|(_, mb)| *mb > MAX_MB) {
            problems.push(format!("{name} = {value}: at most {MAX_MB} is supported"));
        }
    }

    fn validate_nodes(&self, problems: &mut Vec<String>) {
        if self.nodes.is_empty() {
            problems.push("nodes: none listed; add [[nodes]] entries with id and addr".into());
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !valid_node_id(&node.id) {
                problems.push(format!(
                    "nodes[{i}].id = {:?}: use 1-63 lowercase letters, digits or '-', starting with a letter",
                    node.id
                ));
            }
            if node.id == layout::CLIENT {
                problems.push(format!(
                    "nodes[{i}].id = {:?}: reserved for the client certificate (tls/{}); choose another id",
                    node.id,
                    layout::CLIENT
                ));
            }
            if !ids.insert(node.id.as_str()) {
                problems.push(format!(
                    "nodes[{i}].id = {:?}: duplicate node id; every id must be unique",
                    node.id
                ));
            }
            if !addrs.insert(node.addr) {
                problems.push(format!(
                    "nodes[{i}].addr = {}: duplicate address; every node needs its own",
                    node.addr
                ));
            }
            if node.addr.port() == 0 {
                problems.push(format!("nodes[{i}].addr = {}: give a fixed port", node.addr));
            }
        }
        self.validate_metrics_addrs(problems);
    }

    /// Every `metrics_addr` is its own and no node's QUIC address (port 0, any free
    /// port, may repeat).
    fn validate_metrics_addrs(&self, problems: &mut Vec<String>) {
        let node_addrs: HashSet<SocketAddr> = self.nodes.iter().map(|n| n.addr).collect();
        let mut seen = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(addr) = node.metrics_addr else { continue };
            if node_addrs.contains(&addr) {
                problems.push(format!(
                    "nodes[{i}].metrics_addr = {addr}: a node's addr; give metrics a port of their own"
                ));
            } else if addr.port() != 0 && !seen.insert(addr) {
                problems.push(format!(
                    "nodes[{i}].metrics_addr = {addr}: duplicate metrics address; every node needs its own"
                ));
            }
        }
    }

    /// The data directory, resolved against the config file's directory.
    pub fn data_dir(&self) -> PathBuf {
        self.base_dir.join(&self.data_dir)
    }

    /// The node's own data directory.
    pub fn node_dir(&self, id: &str) -> PathBuf {
        self.data_dir().join(id)
    }

    /// The TLS directory and whether a development CA may be generated there.
    pub fn tls_dir(&self) -> (PathBuf, bool) {
        match &self.tls {
            Some(files) => (self.base_dir.join(&files.dir), false),
            None => (self.data_dir().join("tls"), true),
        }
    }

    /// The node with this id: listed in `[[nodes]]`, or joining.
    pub fn node(&self, id: &str) -> Option<&NodeConfig> {
        self.nodes.iter().chain(&self.joining).find(|n| n.id == id)
    }

    /// Runs node `id` at `addr`: for a node `[[nodes]]` does not list (a node joining the
    /// cluster), or to check that a listed one listens there.
    pub fn with_node_addr(mut self, id: &str, addr: SocketAddr) -> Result<ClusterConfig, String> {
        if !valid_node_id(id) {
            return Err(format!(
                "--id {id:?}: use 1-63 lowercase letters, digits or '-', starting with a letter"
            ));
        }
        match self.nodes.iter().find(|n| n.id == id) {
            Some(listed) if listed.addr != addr => Err(format!(
                "--addr {addr}: cluster.toml lists {id} at {}; drop --addr or fix cluster.toml",
                listed.addr
            )),
            Some(_) => Ok(self),
            None => {
                if let Some(other) = self.nodes.iter().find(|n| n.addr == addr) {
                    return Err(format!("--addr {addr} is the address of {} in cluster.toml", other.id));
                }
                self.joining.push(NodeConfig {
                    id: id.to_string(),
                    addr,
                    metrics_addr: None,
                });
                Ok(self)
            }
        }
    }

    /// Node ids in join order.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// Longest time a write version may lead the node's clock.
    pub fn max_clock_skew(&self) -> Duration {
        Duration::from_millis(self.limits.max_clock_skew_ms)
    }

    /// What a client needs to route requests (the answer to `Members`, whose `down` the
    /// answering node fills in from its failure detector).
    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            members: self
                .nodes
                .iter()
                .map(|n| Member {
                    id: n.id.clone(),
                    addr: n.addr,
                })
                .collect(),
            layout: None,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            defaults: QuorumDefaults {
                n: self.defaults.n,
                w: self.defaults.w,
                r: self.defaults.r,
                timeout_ms: self.defaults.timeout_ms,
            },
            max_key_bytes: self.limits.max_key_bytes,
            max_value_bytes: self.limits.max_value_bytes,
            hinted_handoff: self.convergence.hinted_handoff,
            down: Vec::new(),
        }
    }
}

/// Largest configurable value size: frames must stay well inside QUIC flow-control windows.
const MAX_VALUE_LIMIT: usize = 64 << 20;

/// Longest node id (also a DNS name label in its certificate).
pub const MAX_NODE_ID_LEN: usize = 63;

/// Largest configurable key size. fjall stores keys of at most `u16::MAX` bytes, and the
/// longest key storage writes is a hint's: owner id, a separator byte, the 8-byte key
/// hash, then the key.
pub const MAX_KEY_LIMIT: usize = u16::MAX as usize - MAX_NODE_ID_LEN - 1 - 8;

/// Largest millisecond setting the node converts to µs in a `u64`.
pub const MAX_MICROS_MS: u64 = u64::MAX / 1_000;

/// Largest MiB setting the node converts to bytes in a `u64`.
pub const MAX_MB: u64 = u64::MAX >> 20;

pub(crate) fn valid_node_id(id: &str) -> bool {
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let starts_with_letter = id.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    ok_chars && starts_with_letter && id.len() <= MAX_NODE_ID_LEN
}

impl ConfigError {
    fn with_path(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: file.into(),
                message,
            },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                path: file.into(),
                problems,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        data_dir = "data"
        [[nodes]]
        id = "n1"
        addr = "127.0.0.1:7001"
        [[nodes]]
        id = "n2"
        addr = "127.0.0.1:7002"
        [[nodes]]
        id = "n3"
        addr = "127.0.0.1:7003"
    "#;

    fn error_of(text: &str) -> String {
        ClusterConfig::parse(text, PathBuf::new()).unwrap_err().to_string()
    }

    #[test]
    fn defaults_fill_in() {
        let c = ClusterConfig::parse(GOOD, PathBuf::from("/etc/qkv")).unwrap();
        assert_eq!((c.partitions, c.replication_factor), (256, 3));
        assert_eq!((c.defaults.n, c.defaults.w, c.defaults.r), (3, 2, 2));
        assert_eq!(c.durability.mode, DurabilityMode::Sync);
        assert_eq!(c.node_dir("n2"), PathBuf::from("/etc/qkv/data/n2"));
        assert_eq!(c.limits.max_value_bytes, 4 << 20);
    }

    #[test]
    fn shipped_cluster_toml_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
        let c = ClusterConfig::load(&path).unwrap();
        assert_eq!(c.node_ids(), ["n1", "n2", "n3"]);
    }

    #[test]
    fn every_error_names_the_field() {
        let cases = [
            (
                format!("{GOOD}\n[defaults]\nn = 3\nw = 4\nr = 2\ntimeout_ms = 10"),
                "defaults.w = 4",
            ),
            (format!("partitions = 100\n{GOOD}"), "partitions = 100"),
            (format!("replication_factor = 5\n{GOOD}"), "replication_factor = 5"),
            (format!("colour = 1\n{GOOD}"), "unknown field `colour`"),
            (GOOD.replace("\"n2\"", "\"n1\""), "duplicate node id"),
            (GOOD.replace("7002", "7001"), "duplicate address"),
            (GOOD.replace("\"n3\"", "\"N 3\""), "nodes[2].id"),
            (
                GOOD.replace("\"n3\"", "\"client\""),
                "reserved for the client certificate",
            ),
            (GOOD.replace("127.0.0.1:7003", "nowhere"), "addr"),
            ("data_dir = \"x\"".to_string(), "nodes: none listed"),
            (
                format!("{GOOD}\n[durability]\nmode = \"sometimes\"\ninterval_ms = 1"),
                "unknown variant",
            ),
            ("[[nodes]\n".to_string(), "TOML"),
            (
                GOOD.replace("7001\"", "7001\"\nmetrics_addr = \"127.0.0.1:7002\""),
                "nodes[0].metrics_addr = 127.0.0.1:7002: a node's addr",
            ),
            (
                GOOD.replace("7001\"", "7001\"\nmetrics_addr = \"127.0.0.1:9101\"")
                    .replace("7002\"", "7002\"\nmetrics_addr = \"127.0.0.1:9101\""),
                "nodes[1].metrics_addr = 127.0.0.1:9101: duplicate metrics address",
            ),
        ];
        for (text, expected) in cases {
            let err = error_of(&text);
            assert!(err.contains(expected), "expected {expected:?} in: {err}");
        }
    }

    /// Inputs the cluster_toml fuzz target (fuzz/) found: each validated, then the node
    /// failed to build its ring, its storage writer died on the first long key
    /// (`Keys can be up to 65535 bytes long`), or the value wrapped when converted.
    #[test]
    fn settings_found_by_fuzzing_are_refused() {
        let cases = [
            ("partitions = 1", "partitions = 1 is fewer than the 3 nodes"),
            (
                "[limits]\nmax_key_bytes = 65464",
                "limits.max_key_bytes = 65464: at most 65463",
            ),
            (
                "[limits]\nmax_clock_skew_ms = 18446744073709552",
                "limits.max_clock_skew_ms = 18446744073709552: at most",
            ),
            (
                "[convergence]\ntombstone_grace_ms = 18446744073709552",
                "convergence.tombstone_grace_ms = 18446744073709552: at most",
            ),
            (
                "[storage]\nmemtable_mb = 17592186044416",
                "storage.memtable_mb = 17592186044416: at most",
            ),
            (
                "[storage]\nblock_cache_mb = 17592186044416",
                "storage.block_cache_mb = 17592186044416: at most",
            ),
        ];
        for (setting, expected) in cases {
            let text = match setting.starts_with('[') {
                true => format!("{GOOD}\n{setting}"),
                false => format!("{setting}\n{GOOD}"),
            };
            let err = error_of(&text);
            assert!(err.contains(expected), "expected {expected:?} in: {err}");
        }
        let at_limits = format!(
            "partitions = 4\n{GOOD}\n[limits]\nmax_key_bytes = {MAX_KEY_LIMIT}\nmax_clock_skew_ms = {MAX_MICROS_MS}\n\
             [storage]\nmemtable_mb = {MAX_MB}"
        );
        ClusterConfig::parse(&at_limits, PathBuf::new()).unwrap();
    }

    #[test]
    fn sections_may_name_only_some_fields() {
        let c = ClusterConfig::parse(&format!("{GOOD}\n[durability]\nmode = \"periodic\""), PathBuf::new()).unwrap();
        assert_eq!(
            (c.durability.mode, c.durability.interval_ms),
            (DurabilityMode::Periodic, 100)
        );
        let c = ClusterConfig::parse(&format!("{GOOD}\n[defaults]\nr = 3"), PathBuf::new()).unwrap();
        assert_eq!((c.defaults.n, c.defaults.w, c.defaults.r), (3, 2, 3));
    }

    #[test]
    fn all_problems_are_reported_together() {
        let text = format!("partitions = 3\nreplication_factor = 0\n{GOOD}");
        let err = error_of(&text);
        assert!(
            err.contains("partitions = 3") && err.contains("replication_factor = 0"),
            "{err}"
        );
    }
}
