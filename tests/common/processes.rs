//! Real `quorumkv node` processes for tests that must kill a node with SIGKILL: started
//! from the test's cluster.toml, each logging to `<id>.log` beside it; and `quorumkv up`
//! as a user runs it ([`Up`]), logging to `up.log`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use quorumkv::config::ClusterConfig;
use quorumkv_client::{Client, ClientConfig};

use super::{config_text, free_addrs, wait_until, Shape};

/// `quorumkv node` processes, killed with SIGKILL when dropped.
pub struct Processes {
    /// The cluster.toml they were started with.
    config: PathBuf,
    /// The running nodes.
    children: Vec<Child>,
}

impl Processes {
    /// Starts node `ids` of the cluster described by `config`.
    pub fn start(config: &Path, ids: &[String]) -> Processes {
        let mut p = Processes {
            config: config.to_path_buf(),
            children: Vec::new(),
        };
        for id in ids {
            p.children.push(spawn_node(&p.config, id));
        }
        p
    }

    /// SIGKILLs every node and reaps it.
    pub fn kill_all(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The log file of node `id` started with `config`.
pub fn node_log(config: &Path, id: &str) -> PathBuf {
    config.with_file_name(format!("{id}.log"))
}

fn spawn_node(config: &Path, id: &str) -> Child {
    let log = std::fs::File::create(node_log(config, id)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(["node", "--id", id, "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn quorumkv node")
}

/// A client of the cluster, once its nodes accept clients.
pub async fn connect(config: &ClientConfig) -> Client {
    wait_until("nodes accept clients", Duration::from_secs(30), || async {
        Client::connect(config.clone()).await.map_err(|e| e.to_string())
    })
    .await
}

/// `quorumkv up` on a fresh three-node config in `dir` (free loopback ports), its stderr
/// (a file, not a terminal) in `dir/up.log`; SIGKILLed if dropped while running.
pub struct Up {
    /// The cluster.toml it runs.
    pub config: ClusterConfig,
    /// Its stderr.
    pub log: PathBuf,
    /// The `up` process.
    child: Child,
}

impl Up {
    /// Starts `quorumkv up` with extra environment variables `env`.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Up {
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, config_text(&Shape::three(), &free_addrs(3))).unwrap();
        let config = ClusterConfig::load(&config_path).unwrap();
        let log = dir.join("up.log");
        let child = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args(["up", "--config", config_path.to_str().unwrap()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn quorumkv up");
        Up { config, log, child }
    }

    /// A client, once every node accepts clients.
    pub async fn client(&self) -> Client {
        let identity = quorumkv::pki::identity(&self.config.tls_dir().0, "client", true).unwrap();
        let seeds = self.config.nodes.iter().map(|n| n.addr).collect();
        let client = connect(&ClientConfig::new(seeds, identity)).await;
        for id in self.config.node_ids() {
            super::reachable(&client, &id).await;
        }
        client
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) to the `up` process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// Waits for `up` to exit (its nodes drain for up to 10 s).
    pub async fn exited(&mut self) -> ExitStatus {
        let child = &mut self.child;
        wait_until("quorumkv up exits", Duration::from_secs(30), || {
            let exited = child.try_wait();
            async move {
                match exited {
                    Ok(Some(status)) => Ok(status),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    }

    /// Everything `up` and its nodes wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
