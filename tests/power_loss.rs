//! Power loss: a node's data directory on lazyfs (`tools/lazyfs`), a FUSE filesystem that
//! forgets every write not fsynced when the power is cut. The node (a real `quorumkv
//! node` process, the only member, so every acknowledged write is its own) is killed with
//! SIGKILL while writes are in flight, the power is cut, the filesystem remounted and the
//! node restarted on what was durable. In `sync` mode every acknowledged write is there;
//! in `periodic` mode (one fsync a minute) acknowledged writes are lost, which shows the
//! test fails when the fsync before the acknowledgement is missing. A SIGKILL alone
//! (tests/restart.rs) cannot show that: the page cache survives it.
//!
//! Needs FUSE: `/dev/fuse`, and root or `fusermount3` (Debian package fuse3); without it
//! the tests say why (`lazyfs --check`) and pass without running.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::processes::{connect, node_log, Processes};
use common::{config_text, free_addrs, wait_until, Shape};
use quorumkv_client::{ClientConfig, Version};

/// Concurrent writers, so group commits cover several writes each.
const WRITERS: usize = 8;

/// `periodic` mode's fsync interval: far longer than the test, so no periodic fsync runs.
const PERIODIC_INTERVAL_MS: u64 = 60_000;

/// How a run writes.
struct Scenario {
    /// `[durability] mode`.
    durability: &'static str,
    /// Extra cluster.toml text.
    extra: &'static str,
    /// Padding added to each value, to fill memtables sooner.
    value_padding: usize,
    /// Writes acknowledged before the node is killed (writers keep going until the kill).
    acked_before_kill: usize,
}

/// Small writes into one memtable and one journal: nothing is flushed.
const SMALL: Scenario = Scenario {
    durability: "sync",
    extra: "",
    value_padding: 0,
    acked_before_kill: 400,
};

/// 1 MiB memtables and 4 KiB values: the records memtable is sealed and flushed to a
/// table, with its journal, several times before the kill.
const FLUSHING: Scenario = Scenario {
    durability: "sync",
    extra: "[storage]\nmemtable_mb = 1",
    value_padding: 4096,
    acked_before_kill: 1500,
};

/// What survived a power cut.
#[derive(Debug)]
struct Outcome {
    /// Writes the node acknowledged before it was killed.
    acked: usize,
    /// Of those, the ones it served after the power cut and restart.
    found: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_keeps_every_acknowledged_write_through_a_power_cut() {
    let Some(outcome) = power_cut_after_writes(SMALL).await else {
        return;
    };
    assert_eq!(
        outcome.found, outcome.acked,
        "sync mode lost acknowledged writes in a power cut: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_keeps_every_acknowledged_write_through_flushes_and_a_power_cut() {
    let Some(outcome) = power_cut_after_writes(FLUSHING).await else {
        return;
    };
    assert_eq!(
        outcome.found, outcome.acked,
        "sync mode lost acknowledged writes in a power cut after flushes: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_mode_loses_acknowledged_writes_in_a_power_cut() {
    let Some(outcome) = power_cut_after_writes(Scenario {
        durability: "periodic",
        ..SMALL
    })
    .await
    else {
        return;
    };
    assert!(
        outcome.found < outcome.acked,
        "periodic mode kept every acknowledged write, so the power cut did not drop unsynced data: {outcome:?}"
    );
}

/// Writes to a one-node cluster whose data directory is on lazyfs, SIGKILLs the node, cuts
/// the power, remounts, restarts the node and counts the acknowledged writes it serves.
/// `None` when FUSE is not available here.
async fn power_cut_after_writes(scenario: Scenario) -> Option<Outcome> {
    let Scenario {
        durability,
        extra,
        value_padding,
        acked_before_kill,
    } = scenario;
    if let Some(reason) = fuse_unavailable() {
        // Straight to stderr: the test harness would swallow println! of a passing test.
        let _ = writeln!(std::io::stderr(), "power_loss test skipped: {reason}");
        return None;
    }
    common::init_tracing();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (backing, mountpoint) = (dir.path().join("backing"), dir.path().join("mnt"));
    for d in [&backing, &mountpoint, &dir.path().join("data")] {
        std::fs::create_dir(d).unwrap();
    }
    // Only the node's own directory is on lazyfs; the development CA beside it is not.
    std::os::unix::fs::symlink(&mountpoint, dir.path().join("data").join("n1")).unwrap();
    let config_path = dir.path().join("cluster.toml");
    let shape = Shape::single().with(&format!(
        "[durability]\nmode = \"{durability}\"\ninterval_ms = {PERIODIC_INTERVAL_MS}\n{extra}"
    ));
    std::fs::write(&config_path, config_text(&shape, &free_addrs(1))).unwrap();
    let config = quorumkv::config::ClusterConfig::load(&config_path).unwrap();
    let identity = quorumkv::pki::identity(&config.tls_dir().0, "client", true).unwrap();
    let client_config = ClientConfig::new(vec![config.nodes[0].addr], identity);
    let ids = config.node_ids();

    let mount = LazyFs::mount(&backing, &mountpoint).await;
    let mut node = Processes::start(&config_path, &ids);
    let acked = write_until_killed(&client_config, &mut node, value_padding, acked_before_kill).await;
    let cut = mount.cut_power();
    println!("{durability}: {cut}");

    let _mount = LazyFs::mount(&backing, &mountpoint).await;
    let _node = Processes::start(&config_path, &ids);
    let client = connect_or_show_log(&client_config, &config_path).await;
    let mut found = 0;
    for (key, version) in &acked {
        if let Some(copy) = client.get_from("n1", key.clone()).await.expect("n1 answers") {
            assert!(copy.version >= *version, "n1 holds an older version of {key}");
            assert_eq!(copy.value.unwrap(), value_of(key, value_padding));
            found += 1;
        }
    }
    let outcome = Outcome {
        acked: acked.len(),
        found,
    };
    println!(
        "{durability}: {} writes acknowledged, {} found after the power cut; {} ({:.1} s)",
        outcome.acked,
        outcome.found,
        count_files(&backing),
        started.elapsed().as_secs_f64()
    );
    Some(outcome)
}

/// Runs writers until `count` writes are acknowledged, then SIGKILLs the node
/// with writes still in flight. Returns every acknowledged write.
async fn write_until_killed(
    client_config: &ClientConfig,
    node: &mut Processes,
    padding: usize,
    count: usize,
) -> Vec<(String, Version)> {
    let client = connect(client_config).await;
    let acked: Arc<Mutex<Vec<(String, Version)>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (client, acked) = (client.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{writer}-k{i}");
                match client.put(key.clone(), value_of(&key, padding)).await {
                    Ok(version) => acked.lock().unwrap().push((key, version)),
                    Err(_) => return,
                }
            }
        }));
    }
    wait_until("writes acknowledged", Duration::from_secs(60), || async {
        let n = acked.lock().unwrap().len();
        if n >= count {
            Ok(())
        } else {
            Err(format!("{n} acknowledged"))
        }
    })
    .await;
    node.kill_all();
    for writer in writers {
        writer.abort();
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

/// The value written under `key`: it names the key, then `padding` bytes.
fn value_of(key: &str, padding: usize) -> String {
    format!("value of {key}{}", "-".repeat(padding))
}

/// How many journals and tables fjall left in `backing` (shows whether memtables were
/// flushed and journals rotated).
fn count_files(backing: &Path) -> String {
    let (mut journals, mut tables) = (0, 0);
    let mut dirs = vec![backing.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "jnl") {
                journals += 1;
            } else if dir.file_name().is_some_and(|n| n == "tables") {
                tables += 1;
            }
        }
    }
    format!("{journals} journals and {tables} tables on disk")
}

/// Connects once the restarted node serves; if it never does, the failure shows its log
/// (fjall failing to reopen what survived the cut would show there).
async fn connect_or_show_log(client_config: &ClientConfig, config_path: &Path) -> quorumkv_client::Client {
    let log = node_log(config_path, "n1");
    wait_until("n1 serves after the power cut", Duration::from_secs(30), || async {
        match quorumkv_client::Client::connect(client_config.clone()).await {
            Ok(client) => Ok(client),
            Err(e) => Err(format!(
                "{e}; n1 log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )),
        }
    })
    .await
}

/// Why FUSE cannot be mounted here, if it cannot (`lazyfs --check`).
fn fuse_unavailable() -> Option<String> {
    let check = Command::new(lazyfs_binary())
        .arg("--check")
        .output()
        .expect("run lazyfs --check");
    match check.status.success() {
        true => None,
        false => Some(String::from_utf8_lossy(&check.stdout).trim().to_string()),
    }
}

/// The lazyfs binary, built beside quorumkv by `cargo test --workspace`.
fn lazyfs_binary() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_quorumkv")).with_file_name("lazyfs");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p lazyfs` (`cargo test --workspace` builds it)",
        binary.display()
    );
    binary
}

/// A running `lazyfs BACKING MOUNTPOINT` process; dropping it cuts the power.
struct LazyFs {
    /// The lazyfs process.
    child: Child,
    /// Its stdout: `mounted ...`, then what the power cut dropped.
    out: PathBuf,
}

impl LazyFs {
    /// Mounts `backing` at `mountpoint` and waits until it serves.
    async fn mount(backing: &Path, mountpoint: &Path) -> LazyFs {
        let out = backing.with_file_name("lazyfs.out");
        let mut child = Command::new(lazyfs_binary())
            .args([backing, mountpoint])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lazyfs");
        wait_until("lazyfs mounted", Duration::from_secs(10), || {
            let exited = child.try_wait();
            let printed = std::fs::read_to_string(&out).unwrap_or_default();
            async move {
                match exited {
                    Ok(Some(status)) => panic!("lazyfs exited before mounting: {status}"),
                    _ if printed.contains("mounted") => Ok(()),
                    _ => Err(format!("lazyfs printed {printed:?}")),
                }
            }
        })
        .await;
        LazyFs { child, out }
    }

    /// Cuts the power (SIGTERM) and returns lazyfs's account of what it dropped.
    fn cut_power(mut self) -> String {
        self.stop();
        let out = std::fs::read_to_string(&self.out).unwrap();
        out.lines()
            .find(|l| l.starts_with("power cut"))
            .unwrap_or("no power cut reported")
            .to_string()
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let _ = self.child.wait();
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.stop();
    }
}
