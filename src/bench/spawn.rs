//! `quorumkv bench --spawn`: the config's nodes as separate `quorumkv node` processes on
//! throwaway data, started before the run and stopped (SIGTERM) after it.
//!
//! The user's cluster.toml is rewritten into a fresh temporary directory (under
//! `$TMPDIR`: point it at a real disk, since on a tmpfs fsync costs nothing) with
//! `data_dir` inside it, so a benchmark never touches real data, and with the durability
//! override applied. The nodes' stderr goes to `<id>.log` there; when a node fails to
//! start or stop, the error quotes the end of its log. Everything is deleted afterwards.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use quorumkv_client::{Client, ClientConfig, TlsIdentity};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::config::{ClusterConfig, Durability};
use crate::local::{terminate, STOP_TIMEOUT};

/// Longest wait for every node to answer after the processes started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait for a connection or readiness probe. A node that is not listening yet never
/// sees the handshake, so attempts must give up and retry; giving up before quinn's first
/// retransmission (~1 s) also means no half-open connection is left on the node, which
/// would otherwise hold up its shutdown. Each failed attempt doubles the wait.
const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest wait for one attempt (a loaded machine may need long handshakes).
const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between readiness probes.
const READY_POLL: Duration = Duration::from_millis(50);
/// Lines of a node's log quoted when it failed.
const LOG_TAIL_LINES: usize = 15;
/// Key the readiness probe reads (its absence is the expected answer).
const PROBE_KEY: &str = "bench-ready-probe";

/// A cluster of node processes on temporary data.
pub struct SpawnedCluster {
    /// The rewritten config (addresses as the user's; data in the temporary directory).
    pub config: ClusterConfig,
    /// The node processes, in config order; killed (SIGKILL) if still running on drop.
    nodes: Vec<NodeProcess>,
    /// Holds the config, the data and the logs; deleted on drop. Declared last so the
    /// processes are dropped (killed) before their directory goes.
    dir: tempfile::TempDir,
}

/// One `quorumkv node` process.
struct NodeProcess {
    /// Its node id.
    id: String,
    /// The process.
    child: Child,
    /// Where its stderr goes.
    log: PathBuf,
}

impl SpawnedCluster {
    /// Starts every node of the config at `user_config` as a process, on fresh data,
    /// with `durability` (`"sync"` or `"periodic"`) replacing the configured mode.
    pub fn start(user_config: &Path, durability: Option<&str>) -> anyhow::Result<SpawnedCluster> {
        ClusterConfig::load(user_config)?;
        let text =
            std::fs::read_to_string(user_config).with_context(|| format!("reading {}", user_config.display()))?;
        let user_config_abs = std::path::absolute(user_config)?;
        let base_dir = user_config_abs.parent().unwrap_or(Path::new("/"));
        let dir = tempfile::Builder::new()
            .prefix("quorumkv-bench-")
            .tempdir()
            .context("creating a temporary directory for the cluster")?;
        let rewritten = rewrite_config(&text, base_dir, &dir.path().join("data"), durability)?;
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, rewritten).with_context(|| format!("writing {}", config_path.display()))?;
        let config = ClusterConfig::load(&config_path)?;
        // The first user of the development CA creates it; doing it here means the nodes
        // starting at once only read it.
        let (tls_dir, generate) = config.tls_dir();
        crate::pki::identity(&tls_dir, quorumkv_client::tls::layout::CLIENT, generate)?;
        let exe = std::env::current_exe().context("finding the quorumkv executable")?;
        let mut cluster = SpawnedCluster {
            config,
            nodes: Vec::new(),
            dir,
        };
        for id in cluster.config.node_ids() {
            let node = spawn_node(&exe, &config_path, cluster.dir.path(), &id)?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// Waits until every node answers a client, then returns that client.
    pub async fn connect(&mut self, identity: TlsIdentity) -> anyhow::Result<Client> {
        let seeds = self.config.nodes.iter().map(|n| n.addr).collect();
        let client_config = crate::cli::client_config(&self.config, seeds, identity);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut client = None;
        let mut patience = FIRST_ATTEMPT_TIMEOUT;
        loop {
            self.check_running()?;
            let last = match ready(&mut client, &client_config, &self.config.node_ids(), patience).await {
                Ok(ready) => return Ok(ready),
                Err(e) => e,
            };
            patience = (patience * 2).min(MAX_ATTEMPT_TIMEOUT);
            if Instant::now() >= deadline {
                bail!(
                    "the spawned nodes did not all answer within {READY_TIMEOUT:?}: {last}\n{}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Fails if a node process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if let Some(status) = node.child.try_wait()? {
                bail!("node {} exited early ({status}):\n{}", node.id, log_tail(&node.log));
            }
        }
        Ok(())
    }

    /// Process ids of the nodes still running.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|node| node.child.id()).collect()
    }

    /// Sends SIGTERM to every node and waits for them to exit; reports the ones that
    /// failed or had to be killed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for node in &self.nodes {
            if let Some(pid) = node.child.id() {
                terminate(pid)?;
            }
        }
        let mut problems = Vec::new();
        for node in &mut self.nodes {
            let problem = match tokio::time::timeout(STOP_TIMEOUT, node.child.wait()).await {
                Ok(Ok(status)) if status.success() => continue,
                Ok(Ok(status)) => format!("node {} exited with {status}", node.id),
                Ok(Err(e)) => format!("node {}: cannot wait for it: {e}", node.id),
                Err(_) => {
                    let _ = node.child.kill().await;
                    format!("node {} did not stop within {STOP_TIMEOUT:?} and was killed", node.id)
                }
            };
            problems.push(format!("{problem}:\n{}", log_tail(&node.log)));
        }
        if !problems.is_empty() {
            bail!("stopping the spawned cluster: {}", problems.join("\n"));
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        let tails = self
            .nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.id, log_tail(&n.log)));
        tails.collect::<Vec<_>>().join("\n")
    }
}

/// One readiness probe, each step bounded by `patience`: connect (once) and read a key
/// from every node's own copy.
async fn ready(
    client: &mut Option<Client>,
    config: &ClientConfig,
    ids: &[String],
    patience: Duration,
) -> Result<Client, String> {
    let connected = match client {
        Some(c) => c.clone(),
        None => {
            let attempt = tokio::time::timeout(patience, Client::connect(config.clone())).await;
            let c = attempt.map_err(|_| "no seed answered yet".to_string())?;
            client.insert(c.map_err(|e| e.to_string())?).clone()
        }
    };
    for id in ids {
        let probe = tokio::time::timeout(patience, connected.get_from(id, PROBE_KEY)).await;
        probe
            .map_err(|_| format!("{id} does not answer yet"))?
            .map_err(|e| format!("{id}: {e}"))?;
    }
    Ok(connected)
}

fn spawn_node(exe: &Path, config_path: &Path, dir: &Path, id: &str) -> anyhow::Result<NodeProcess> {
    let log = dir.join(format!("{id}.log"));
    let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(exe)
        .arg("node")
        .args(["--id", id])
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting node {id} ({})", exe.display()))?;
    Ok(NodeProcess {
        id: id.to_string(),
        child,
        log,
    })
}

/// The last lines of a node's log.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The user's cluster.toml text with `data_dir` replaced, a relative `[tls] dir` made
/// absolute against `base_dir` (the user's config directory), and `[durability] mode`
/// set to `durability` when given.
pub fn rewrite_config(
    text: &str,
    base_dir: &Path,
    data_dir: &Path,
    durability: Option<&str>,
) -> anyhow::Result<String> {
    use toml::{Table, Value};
    let mut table: Table = text.parse().context("parsing the cluster config")?;
    let path_value = |p: &Path| -> anyhow::Result<Value> {
        let s = p
            .to_str()
            .ok_or_else(|| anyhow!("{} is not valid UTF-8", p.display()))?;
        Ok(Value::String(s.to_string()))
    };
    table.insert("data_dir".into(), path_value(data_dir)?);
    if let Some(Value::Table(tls)) = table.get_mut("tls") {
        if let Some(Value::String(dir)) = tls.get("dir") {
            let absolute = base_dir.join(dir);
            tls.insert("dir".into(), path_value(&absolute)?);
        }
    }
    if let Some(mode) = durability {
        let section = table.entry("durability").or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(section) = section else {
            bail!("durability in the cluster config is not a table");
        };
        section.insert("mode".into(), Value::String(mode.into()));
        // The section's fields have no defaults of their own once it exists.
        let interval = i64::try_from(Durability::default().interval_ms)?;
        section.entry("interval_ms").or_insert(Value::Integer(interval));
    }
    Ok(toml::to_string(&table)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DurabilityMode;

    const USER: &str = r#"
        data_dir = "precious"
        [tls]
        dir = "certs"
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

    #[test]
    fn rewritten_config_points_at_temporary_data() {
        let text = rewrite_config(USER, Path::new("/etc/qkv"), Path::new("/tmp/b/data"), Some("periodic")).unwrap();
        let config = ClusterConfig::parse(&text, PathBuf::from("/tmp/b")).unwrap();
        assert_eq!(config.data_dir(), PathBuf::from("/tmp/b/data"));
        assert_eq!(config.tls_dir(), (PathBuf::from("/etc/qkv/certs"), false));
        assert_eq!(config.durability.mode, DurabilityMode::Periodic);
        assert_eq!(config.node_ids(), ["n1", "n2", "n3"]);
    }

    #[test]
    fn durability_is_kept_unless_overridden() {
        let user = format!("{USER}\n[durability]\nmode = \"periodic\"\ninterval_ms = 7\n");
        let kept = rewrite_config(&user, Path::new("/x"), Path::new("/d"), None).unwrap();
        let config = ClusterConfig::parse(&kept, PathBuf::new()).unwrap();
        assert_eq!(
            (config.durability.mode, config.durability.interval_ms),
            (DurabilityMode::Periodic, 7)
        );
        let changed = rewrite_config(&user, Path::new("/x"), Path::new("/d"), Some("sync")).unwrap();
        let config = ClusterConfig::parse(&changed, PathBuf::new()).unwrap();
        assert_eq!(
            (config.durability.mode, config.durability.interval_ms),
            (DurabilityMode::Sync, 7)
        );
        assert!(rewrite_config("[[nodes]", Path::new("/x"), Path::new("/d"), None).is_err());
    }
}
