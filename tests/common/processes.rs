//! Real `quorumkv node` processes for tests that must kill a node with SIGKILL: started
//! from the test's cluster.toml, each logging to `<id>.log` beside it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quorumkv_client::{Client, ClientConfig};

use super::wait_until;

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
