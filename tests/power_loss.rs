//! Power loss: a node's data directory on lazyfs (`tools/lazyfs`), a FUSE filesystem that
//! forgets every write not fsynced when the power is cut. The node (a real `quorumkv
//! node` process, the only member, so every acknowledged write is its own) is killed with
//! SIGKILL while writes are in flight, the power is cut, the filesystem remounted and the
//! node restarted on what was durable. In `sync` mode every acknowledged write is there;
//! in `periodic` mode (one fsync a minute) acknowledged writes are lost, which shows the
//! test fails when the fsync before the acknowledgement is missing. A SIGKILL alone
//! (tests/restart.rs) cannot show that: the page cache survives it.
//!
//! Needs `/dev/fuse` and either root or `fusermount3` (Debian package fuse3); without them
//! the tests say why and pass without running.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::processes::{connect, node_log, Processes};
use common::{config_text, free_addrs, wait_until, Shape};
use quorumkv_client::{ClientConfig, Version};

/// Writes acknowledged before the node is killed (writers keep going until the kill).
const ACKED_BEFORE_KILL: usize = 400;

/// Concurrent writers, so group commits cover several writes each.
const WRITERS: usize = 8;

/// `periodic` mode's fsync interval: far longer than the test, so no periodic fsync runs.
const PERIODIC_INTERVAL_MS: u64 = 60_000;

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
    let Some(outcome) = power_cut_after_writes("sync").await else {
        return;
    };
    assert_eq!(
        outcome.found, outcome.acked,
        "sync mode lost acknowledged writes in a power cut: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_mode_loses_acknowledged_writes_in_a_power_cut() {
    let Some(outcome) = power_cut_after_writes("periodic").await else {
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
async fn power_cut_after_writes(durability: &str) -> Option<Outcome> {
    if let Some(reason) = fuse_unavailable() {
        println!("skipped: {reason}");
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
    let shape = Shape {
        nodes: 1,
        replication_factor: 1,
        n: 1,
        w: 1,
        r: 1,
        ..Shape::three()
    }
    .with(&format!(
        "[durability]\nmode = \"{durability}\"\ninterval_ms = {PERIODIC_INTERVAL_MS}"
    ));
    std::fs::write(&config_path, config_text(&shape, &free_addrs(1))).unwrap();
    let config = quorumkv::config::ClusterConfig::load(&config_path).unwrap();
    let identity = quorumkv::pki::identity(&config.tls_dir().0, "client", true).unwrap();
    let client_config = ClientConfig::new(vec![config.nodes[0].addr], identity);
    let ids = config.node_ids();

    let mount = LazyFs::mount(&backing, &mountpoint).await;
    let mut node = Processes::start(&config_path, &ids);
    let acked = write_until_killed(&client_config, &mut node).await;
    let cut = mount.cut_power();
    println!("{durability}: {cut}");

    let _mount = LazyFs::mount(&backing, &mountpoint).await;
    let _node = Processes::start(&config_path, &ids);
    let client = connect_or_show_log(&client_config, &config_path).await;
    let mut found = 0;
    for (key, version) in &acked {
        if let Some(copy) = client.get_from("n1", key.clone()).await.expect("n1 answers") {
            assert!(copy.version >= *version, "n1 holds an older version of {key}");
            assert_eq!(copy.value.unwrap(), format!("value of {key}"));
            found += 1;
        }
    }
    let outcome = Outcome {
        acked: acked.len(),
        found,
    };
    println!(
        "{durability}: {} writes acknowledged, {} found after the power cut ({:.1} s)",
        outcome.acked,
        outcome.found,
        started.elapsed().as_secs_f64()
    );
    Some(outcome)
}

/// Runs writers until [`ACKED_BEFORE_KILL`] writes are acknowledged, then SIGKILLs the node
/// with writes still in flight. Returns every acknowledged write.
async fn write_until_killed(client_config: &ClientConfig, node: &mut Processes) -> Vec<(String, Version)> {
    let client = connect(client_config).await;
    let acked: Arc<Mutex<Vec<(String, Version)>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (client, acked) = (client.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{writer}-k{i}");
                match client.put(key.clone(), format!("value of {key}")).await {
                    Ok(version) => acked.lock().unwrap().push((key, version)),
                    Err(_) => return,
                }
            }
        }));
    }
    wait_until("writes acknowledged", Duration::from_secs(60), || async {
        let n = acked.lock().unwrap().len();
        if n >= ACKED_BEFORE_KILL {
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

/// Why FUSE cannot be mounted here, if it cannot.
fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist (no FUSE in this kernel or container)".into());
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let fusermount = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("fusermount3").exists()));
    if !root && !fusermount {
        return Some("not root and no fusermount3 to mount FUSE with (Debian: apt-get install fuse3)".into());
    }
    None
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
        let binary = Path::new(env!("CARGO_BIN_EXE_quorumkv")).with_file_name("lazyfs");
        assert!(
            binary.exists(),
            "{} is missing: build it with `cargo build -p lazyfs` (`cargo test --workspace` builds it)",
            binary.display()
        );
        let out = backing.with_file_name("lazyfs.out");
        let mut child = Command::new(&binary)
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
