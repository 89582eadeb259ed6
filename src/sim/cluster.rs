//! A whole cluster in one process: real nodes ([`Node`]) on the simulated network, each
//! with a memory engine for a disk and its own skewable clock, and clients on the same
//! network; the hands that crash, wipe, restart, freeze and cut them.
//!
//! Everything here runs on the caller's runtime (a current-thread runtime with a paused
//! clock, for determinism) and draws every random choice from the seed it was made with:
//! each incarnation of a node gets the next seed of the cluster's generator, so a run
//! that crashes and restarts the same nodes at the same moments repeats exactly.
//! What the simulator did is kept in an event log, printed with a failing run's trace.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use quorumkv_client::clock::Clock;
use quorumkv_client::wire::Record;
use quorumkv_client::{Client, ClientConfig, ClientError};
use tokio::time::Instant;

use super::identity::SimIdentities;
use super::net::{LinkConfig, SimNetwork};
use super::quic::{client_transport, node_quic};
use super::rng::SimRng;
use super::SIM_EPOCH_SECS;
use crate::config::ClusterConfig;
use crate::node::{store_options, Host, Node, NodeParts};
use crate::storage::{MemEngine, Storage, Store};

/// First port of the nodes' addresses (node `i` listens on this plus `i`).
const NODE_PORT: u16 = 7001;
/// Port of every client; client `c` is on 127.0.1.`c+1`.
const CLIENT_PORT: u16 = 9000;

/// A node's wall clock: simulated time since the epoch date, plus a skew that the
/// simulator sets (a node whose clock runs ahead or behind).
#[derive(Debug)]
pub struct SimClock {
    /// Simulated time zero.
    base: Instant,
    /// Microseconds this clock is ahead (negative: behind).
    skew_micros: AtomicI64,
}

impl SimClock {
    /// A clock reading simulated time, without skew.
    pub fn new() -> SimClock {
        SimClock {
            base: Instant::now(),
            skew_micros: AtomicI64::new(0),
        }
    }

    /// Sets how far this clock is ahead (negative: behind).
    pub fn set_skew(&self, micros: i64) {
        self.skew_micros.store(micros, Ordering::Relaxed);
    }
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock::new()
    }
}

impl Clock for SimClock {
    fn now_micros(&self) -> u64 {
        let since_base = i64::try_from(self.base.elapsed().as_micros()).unwrap_or(i64::MAX);
        let epoch = (SIM_EPOCH_SECS * 1_000_000) as i64;
        let now = epoch
            .saturating_add(since_base)
            .saturating_add(self.skew_micros.load(Ordering::Relaxed));
        u64::try_from(now).unwrap_or(0)
    }
}

/// One member: its disk and clock outlive its incarnations.
struct SimMember {
    /// Node id.
    id: String,
    /// Address on the simulated network.
    addr: SocketAddr,
    /// What survives a crash (a wipe replaces it).
    disk: MemEngine,
    /// Its wall clock.
    clock: Arc<SimClock>,
    /// The running incarnation, if any.
    node: Option<Node>,
    /// Its disk was wiped and it has not refilled since: the operator starts it with
    /// `--refill`, as the README says, until it logs `refilled`.
    refilling: bool,
    /// Its disk fails every commit and fsync.
    disk_failing: bool,
}

/// A simulated cluster.
pub struct SimCluster {
    /// The network everything runs on.
    pub net: SimNetwork,
    /// The cluster's configuration (as from a cluster.toml).
    pub config: ClusterConfig,
    /// Certificates of the nodes and the client.
    identities: Arc<SimIdentities>,
    /// The members, in config order.
    members: Vec<SimMember>,
    /// Seeds of node incarnations and clients, in the order they start.
    seeds: SimRng,
    /// Simulated time zero.
    start: Instant,
    /// What the simulator did, with simulated time.
    events: Vec<(Duration, String)>,
}

impl SimCluster {
    /// Starts `nodes` nodes n1..nN with cluster.toml settings `settings` (everything but
    /// `[[nodes]]`), every random choice from `seed`. `identities` must name n1..nN and
    /// `client`. Must run inside the simulation's runtime.
    pub fn start(
        seed: u64,
        nodes: usize,
        settings: &str,
        identities: Arc<SimIdentities>,
    ) -> anyhow::Result<SimCluster> {
        let mut rng = SimRng::new(seed);
        let net = SimNetwork::new(rng.next_u64());
        let addrs: Vec<SocketAddr> = (0..nodes).map(node_addr).collect::<anyhow::Result<_>>()?;
        let mut text = settings.to_string();
        for (i, addr) in addrs.iter().enumerate() {
            text.push_str(&format!("\n[[nodes]]\nid = \"n{}\"\naddr = \"{addr}\"\n", i + 1));
        }
        let config = ClusterConfig::parse(&text, std::path::PathBuf::from("/nonexistent-sim"))
            .map_err(|e| anyhow!("simulated cluster.toml: {e}"))?;
        let members = config
            .nodes
            .iter()
            .map(|n| SimMember {
                id: n.id.clone(),
                addr: n.addr,
                disk: MemEngine::new(),
                clock: Arc::new(SimClock::new()),
                node: None,
                refilling: false,
                disk_failing: false,
            })
            .collect();
        let mut cluster = SimCluster {
            net,
            config,
            identities,
            members,
            seeds: rng.fork(),
            start: Instant::now(),
            events: Vec::new(),
        };
        for i in 0..nodes {
            cluster.restart(i)?;
        }
        Ok(cluster)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Node `i`'s id.
    pub fn id(&self, i: usize) -> &str {
        &self.members[i].id
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.members[i].addr
    }

    /// Node `i`, if it runs.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.members[i].node.as_ref()
    }

    /// Node `i`'s clock.
    pub fn clock(&self, i: usize) -> &Arc<SimClock> {
        &self.members[i].clock
    }

    /// Simulated time since the cluster started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Logs what the simulator did now.
    pub fn note(&mut self, what: impl Into<String>) {
        let at = self.elapsed();
        let what = what.into();
        tracing::debug!("sim {at:?}: {what}");
        self.events.push((at, what));
    }

    /// What the simulator did, with simulated time.
    pub fn events(&self) -> &[(Duration, String)] {
        &self.events
    }

    /// Starts node `i` on its disk (it must not be running): a new incarnation with a new
    /// socket and the next seed.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.members[i].node.is_some() {
            return Err(anyhow!("node {} is already running", self.members[i].id));
        }
        let seed = self.seeds.next_u64();
        let member = &self.members[i];
        let identity = self
            .identities
            .get(&member.id)
            .ok_or_else(|| anyhow!("no simulated identity for {}", member.id))?;
        let clock: Arc<dyn Clock> = member.clock.clone();
        let store = Store::start(member.disk.clone(), store_options(&self.config), clock.clone())
            .map_err(|e| anyhow!("starting {}'s store: {e}", member.id))?;
        let storage: Arc<dyn Storage> = Arc::new(store);
        let parts = NodeParts {
            clock,
            socket: self.net.bind(member.addr)?,
            storage,
            quic: node_quic(seed, identity)?.into_node(),
            host: Host::Simulated,
            refill: member.refilling,
            layout_file: None,
        };
        let node = Node::start(&self.config, &member.id, parts).with_context(|| format!("starting {}", member.id))?;
        self.members[i].node = Some(node);
        let id = self.members[i].id.clone();
        self.note(format!("{id} started"));
        Ok(())
    }

    /// Cuts node `i`'s power: it stops at once, its socket goes dead, and its disk keeps
    /// only what was synced. No-op if it is not running.
    pub fn crash(&mut self, i: usize) {
        let Some(node) = self.members[i].node.take() else {
            return;
        };
        self.net.unplug(self.members[i].addr);
        if !node.context().refill.any() {
            self.members[i].refilling = false;
        }
        node.crash();
        // What a power cut leaves, on a disk that works (a failing one is replaced).
        self.members[i].disk = self.members[i].disk.crash();
        self.members[i].disk_failing = false;
        let id = self.members[i].id.clone();
        self.note(format!("{id} crashed"));
    }

    /// Makes node `i`'s disk fail every commit and fsync from now on: its store poisons at
    /// the next write and the node stops itself, as a real one exits on a failed fsync.
    pub fn fail_disk(&mut self, i: usize) {
        self.members[i].disk.fail_from_now(true);
        self.members[i].disk_failing = true;
        let id = self.members[i].id.clone();
        self.note(format!("{id}'s disk fails"));
    }

    /// Brings node `i` back to serving: a node whose disk fails (or failed) is
    /// power-cycled onto a disk that works again, as after replacing a controller (what
    /// it synced before is there); a node that is down is started.
    pub fn recover(&mut self, i: usize) -> anyhow::Result<()> {
        let failed = self.members[i].node.as_ref().is_some_and(Node::storage_failed);
        if self.members[i].disk_failing || failed {
            self.crash(i);
        }
        if self.members[i].disk_failing {
            self.members[i].disk.fail_from_now(false);
            self.members[i].disk_failing = false;
        }
        if self.members[i].node.is_none() {
            self.restart(i)?;
        }
        Ok(())
    }

    /// Crashes node `i` and gives it an empty disk (it must be restarted; it is, with
    /// `--refill`, as the README tells an operator to).
    pub fn wipe(&mut self, i: usize) {
        self.crash(i);
        self.members[i].disk = MemEngine::new();
        self.members[i].refilling = true;
        let id = self.members[i].id.clone();
        self.note(format!("{id} wiped"));
    }

    /// Stops node `i` from sending or reading anything (a stopped process).
    pub fn freeze(&mut self, i: usize) {
        self.net.freeze(self.members[i].addr);
        let id = self.members[i].id.clone();
        self.note(format!("{id} frozen"));
    }

    /// Lets a frozen node `i` run again.
    pub fn thaw(&mut self, i: usize) {
        self.net.thaw(self.members[i].addr);
        let id = self.members[i].id.clone();
        self.note(format!("{id} thawed"));
    }

    /// Drops everything node `from` sends to node `to` (one way).
    pub fn cut(&mut self, from: usize, to: usize) {
        self.net.cut(self.members[from].addr, self.members[to].addr);
        let (a, b) = (self.members[from].id.clone(), self.members[to].id.clone());
        self.note(format!("cut {a} -> {b}"));
    }

    /// Lifts every cut between nodes.
    pub fn heal_cuts(&mut self) {
        for from in &self.members {
            for to in &self.members {
                self.net.heal(from.addr, to.addr);
            }
        }
        self.note("cuts healed");
    }

    /// Sets how every link behaves.
    pub fn set_links(&mut self, link: LinkConfig) {
        self.net.set_default_link(link);
        self.note(format!("links now {link:?}"));
    }

    /// Sets node `i`'s clock ahead (negative: behind) by `micros`.
    pub fn skew(&mut self, i: usize, micros: i64) {
        self.members[i].clock.set_skew(micros);
        let id = self.members[i].id.clone();
        self.note(format!("{id}'s clock skewed {micros} µs"));
    }

    /// The address of client `index`.
    pub fn client_addr(index: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(127, 0, 1, index.saturating_add(1)), CLIENT_PORT))
    }

    /// A client on the network (at [`client_addr`](Self::client_addr)), bootstrapped
    /// from every node, with the given writer id and the seed's next randomness.
    pub async fn client(&mut self, index: u8, writer_id: u64) -> anyhow::Result<Client> {
        let identity = self
            .identities
            .get("client")
            .ok_or_else(|| anyhow!("no simulated client identity"))?;
        let addr = Self::client_addr(index);
        let transport = client_transport(&self.net, addr, self.seeds.next_u64(), identity)?;
        let mut config = ClientConfig::new(self.members.iter().map(|m| m.addr).collect(), identity.clone());
        config.writer_id = Some(writer_id);
        config.clock = Arc::new(SimClock::new());
        config.max_clock_skew = self.config.max_clock_skew();
        config.transport = Some(transport);
        Client::connect(config)
            .await
            .map_err(|e: ClientError| anyhow!("simulated client: {e}"))
    }

    /// The record each replica of `key` holds (node id, record), read from their
    /// storage directly; `None` for a replica that is not running.
    pub async fn copies(&self, key: &str) -> Vec<(String, Option<Option<Record>>)> {
        let Some(ring) = self
            .members
            .iter()
            .find_map(|m| m.node.as_ref())
            .map(|n| n.context().layout().read.clone())
        else {
            return Vec::new();
        };
        let mut copies = Vec::new();
        for &replica in ring.replicas(ring.partition_of(key.as_bytes())) {
            let member = &self.members[replica];
            let copy = match &member.node {
                Some(node) => node
                    .context()
                    .storage
                    .get(Bytes::copy_from_slice(key.as_bytes()))
                    .await
                    .ok(),
                None => None,
            };
            copies.push((member.id.clone(), copy));
        }
        copies
    }

    /// Stops every node in order (drains, fsyncs).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for member in &mut self.members {
            if let Some(node) = member.node.take() {
                node.shutdown().await?;
            }
        }
        Ok(())
    }
}

/// The address of node `i`.
fn node_addr(i: usize) -> anyhow::Result<SocketAddr> {
    let port = u16::try_from(i)
        .ok()
        .and_then(|i| NODE_PORT.checked_add(i))
        .ok_or_else(|| anyhow!("too many simulated nodes"))?;
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}
