//! `quorumkv up`: a local cluster, one `quorumkv node` process per member of the config,
//! started and stopped together.
//!
//! One process per node rather than one thread per node in this process: every line a
//! node logs then carries its id, fjall's own worker threads included, which a tracing
//! span on a node's thread cannot reach (see [`crate::logging`]); a node's fatal error
//! stays its own; and the local cluster runs exactly what `quorumkv node` runs on a real
//! machine, each node on its own current-thread runtime.
//!
//! The nodes write to this process's stdout and stderr. Each gets a pipe as stdin and
//! stops when the pipe closes ([`stop_when_parent_exits`]), so the nodes stop with `up`
//! however it ends, SIGKILL included. On Ctrl-C or SIGTERM, `up` sends SIGTERM to every
//! node and waits for them to drain, close and fsync; when one node exits by itself, the
//! others are stopped too rather than leaving the cluster half up.

use std::path::Path;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::select_all;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::pki;

/// Longest wait for a node to exit after SIGTERM: its drain (10 s) plus close and fsync.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Hidden `quorumkv node` flag that `up` passes: stop when stdin closes.
pub const STOP_WITH_PARENT_FLAG: &str = "--stop-with-parent";

/// One node process of `up`.
struct NodeProcess {
    /// Its node id.
    id: String,
    /// The process; killed if still running when dropped.
    child: Child,
    /// The write end of its stdin: the node stops when this closes (taken out of
    /// `child`, whose `wait` would close it).
    _stdin: Option<tokio::process::ChildStdin>,
}

/// Runs every node of the config at `config_path` as a child process until Ctrl-C or
/// SIGTERM, or until one of them exits.
pub fn up(config_path: &Path, config: &ClusterConfig) -> anyhow::Result<ExitCode> {
    // The first user of the development CA creates it; creating it here means the nodes
    // starting at once only read it.
    let (tls_dir, generate) = config.tls_dir();
    pki::identity(&tls_dir, quorumkv_client::tls::layout::CLIENT, generate)?;
    let exe = std::env::current_exe().context("finding the quorumkv executable")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(crate::cli::cancel_on_signal(stop.clone()));
        let mut nodes = Vec::new();
        for id in config.node_ids() {
            nodes.push(spawn(&exe, config_path, &id)?);
        }
        let first_exit = tokio::select! {
            _ = stop.cancelled() => None,
            (status, i, _) = select_all(nodes.iter_mut().map(|n| Box::pin(n.child.wait()))) => Some((i, status)),
        };
        let mut failed = false;
        if let Some((i, status)) = first_exit {
            let status = status.with_context(|| format!("waiting for node {}", nodes[i].id))?;
            tracing::error!("node {} exited ({status}): stopping the other nodes", nodes[i].id);
            failed = true;
        }
        // Signal every node first, so they drain at the same time.
        for node in &nodes {
            if let Some(pid) = node.child.id() {
                terminate(pid)?;
            }
        }
        for node in &mut nodes {
            failed |= !wait_for_exit(node).await?.success();
        }
        Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    })
}

fn spawn(exe: &Path, config_path: &Path, id: &str) -> anyhow::Result<NodeProcess> {
    let mut child = Command::new(exe)
        .args(["node", "--id", id, STOP_WITH_PARENT_FLAG, "--config"])
        .arg(config_path)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting node {id} ({})", exe.display()))?;
    Ok(NodeProcess {
        id: id.to_string(),
        _stdin: child.stdin.take(),
        child,
    })
}

/// Waits for a node that was sent SIGTERM, killing it after [`STOP_TIMEOUT`].
async fn wait_for_exit(node: &mut NodeProcess) -> anyhow::Result<ExitStatus> {
    match tokio::time::timeout(STOP_TIMEOUT, node.child.wait()).await {
        Ok(status) => Ok(status.with_context(|| format!("waiting for node {}", node.id))?),
        Err(_) => {
            tracing::error!("node {} did not stop within {STOP_TIMEOUT:?}: killing it", node.id);
            node.child.kill().await?;
            Ok(node.child.wait().await?)
        }
    }
}

/// Sends SIGTERM to `pid` (a node then drains, fsyncs and exits). A process that has
/// already exited is not an error: under a terminal's Ctrl-C the nodes get SIGINT too and
/// may be gone before `up` signals them.
pub fn terminate(pid: u32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).with_context(|| format!("process id {pid} out of range"))?;
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(error).with_context(|| format!("sending SIGTERM to process {pid}"))
}

/// Cancels `stop` when stdin reaches its end: under `up`, when the parent exits. A
/// thread of its own, since reading stdin blocks and must not hold up the runtime.
pub fn stop_when_parent_exits(stop: CancellationToken) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            if !stop.is_cancelled() {
                tracing::warn!("quorumkv up has exited: shutting down");
                stop.cancel();
            }
        })
        .context("starting the parent-watch thread")?;
    Ok(())
}
