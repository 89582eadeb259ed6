//! `quorumkv node` processes, each in its own namespace of a [`Lab`].
//!
//! Verbs for faults on processes: [`NetCluster::kill`] (SIGKILL), [`NetCluster::restart`],
//! [`NetCluster::pause`] / [`NetCluster::resume`] (SIGSTOP / SIGCONT),
//! [`NetCluster::wipe`], and clock skew through libfaketime ([`NetCluster::set_skew`],
//! applied at the next start). Network faults are the lab's ([`NetCluster::lab`]).
//! Every process is killed on drop, before the lab's namespaces are removed; with
//! `QKV_KEEP` set, the data directories and node logs are kept and their path printed.

use std::fs::OpenOptions;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quorumkv::config::ClusterConfig;
use quorumkv_client::{Client, ClientConfig, TlsIdentity};

use crate::common::{config_text, wait_until, Shape};
use crate::lab::Lab;

/// Port every node listens on, each at its own address.
const NODE_PORT: u16 = 7000;
/// How long nodes get to start answering clients (a loaded CI machine is slow).
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Where Debian's `libfaketime` package puts the library (`QKV_LIBFAKETIME` overrides).
const LIBFAKETIME_PATHS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
];

/// Node processes in namespaces, killed on drop.
pub struct NetCluster {
    /// Config, data directories and node logs.
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: ClusterConfig,
    /// Node ids in member order.
    pub ids: Vec<String>,
    /// The running process of each node.
    children: Vec<Option<Child>>,
    /// Each node's libfaketime offset (e.g. `-5s`), used when it next starts.
    skew: Vec<Option<String>>,
    /// Dropped after the processes: a namespace with a process in it outlives `ip netns delete`.
    pub lab: Lab,
}

impl NetCluster {
    /// Starts `shape.nodes` nodes, or says why namespaces cannot be made here.
    pub async fn start(shape: Shape, skew: Vec<Option<String>>) -> Result<NetCluster, String> {
        crate::common::init_tracing();
        let lab = Lab::create(shape.nodes)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let addrs: Vec<SocketAddr> = (0..shape.nodes)
            .map(|i| SocketAddrV4::new(lab.addr(i), NODE_PORT).into())
            .collect();
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, config_text(&shape, &addrs)).map_err(|e| e.to_string())?;
        let config = ClusterConfig::load(&config_path).map_err(|e| e.to_string())?;
        // The first user of the development CA creates it, before the nodes race to.
        quorumkv::pki::identity(&config.tls_dir().0, "client", true).map_err(|e| e.to_string())?;
        let mut skew = skew;
        skew.resize(shape.nodes, None);
        let mut cluster = NetCluster {
            ids: config.node_ids(),
            children: (0..shape.nodes).map(|_| None).collect(),
            dir,
            config_path,
            config,
            skew,
            lab,
        };
        for i in 0..shape.nodes {
            cluster.restart(i);
        }
        Ok(cluster)
    }

    /// Starts node `i` (again) in its namespace, on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {i} is running");
        let log_path = self.log_path(i);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("node log");
        let bin = env!("CARGO_BIN_EXE_quorumkv");
        let config = self.config_path.to_str().expect("utf-8 temp path");
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                self.lab.namespace(i),
                bin,
                "node",
                "--id",
                &self.ids[i],
            ])
            .args(["--config", config])
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(offset) = &self.skew[i] {
            // `ip netns exec` runs the node in its own process (no fork), so signals reach it.
            command
                .env(
                    "LD_PRELOAD",
                    libfaketime().expect("libfaketime present (checked by the scenario)"),
                )
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        self.children[i] = Some(command.spawn().expect("spawn quorumkv node"));
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.children[i].take().expect("node is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Freezes node `i` (SIGSTOP): its sockets stay open, it answers nothing.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.children[i].as_ref().expect("node is running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Deletes node `i`'s data directory (it must be killed first).
    pub fn wipe(&self, i: usize) {
        assert!(self.children[i].is_none(), "kill node {i} before wiping it");
        std::fs::remove_dir_all(self.config.node_dir(&self.ids[i])).expect("wipe data dir");
    }

    /// Node `i`'s clock offset from its next start (`None`: the real clock).
    pub fn set_skew(&mut self, i: usize, offset: Option<&str>) {
        self.skew[i] = offset.map(str::to_string);
    }

    /// A client in the test's namespace, once a seed answers.
    pub async fn client(&self) -> Client {
        let identity = self.client_identity();
        let seeds: Vec<SocketAddr> = self.config.nodes.iter().map(|n| n.addr).collect();
        let config = ClientConfig::new(seeds, identity);
        wait_until("a seed answers", START_DEADLINE, || async {
            Client::connect(config.clone()).await.map_err(|e| e.to_string())
        })
        .await
    }

    fn client_identity(&self) -> TlsIdentity {
        quorumkv::pki::identity(&self.config.tls_dir().0, "client", false).expect("client identity")
    }

    /// Waits until every running node answers `client`.
    pub async fn wait_all_up(&self, client: &Client) {
        for (i, id) in self.ids.iter().enumerate() {
            if self.children[i].is_some() {
                wait_until(&format!("{id} answers"), START_DEADLINE, || async {
                    client.status(id).await.map(|_| ()).map_err(|e| e.to_string())
                })
                .await;
            }
        }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.ids[i]))
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Keeps the data directory and logs after the test (for a failed scenario).
    pub fn keep_dir(&mut self) -> PathBuf {
        let kept = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, kept).keep()
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("QKV_KEEP").is_some() {
            println!("data and logs kept in {}", self.keep_dir().display());
        }
    }
}

/// The libfaketime library to preload, if installed.
pub fn libfaketime() -> Option<String> {
    if let Ok(path) = std::env::var("QKV_LIBFAKETIME") {
        return Some(path);
    }
    LIBFAKETIME_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
}
