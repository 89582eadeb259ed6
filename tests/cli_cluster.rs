//! Membership through the `quorumkv` binary as a user runs it: `cluster plan` changes
//! nothing, `cluster remove` below the replication factor and `cluster add` of a member
//! are refused (exit code 3), a new `quorumkv node --id n4 --addr ...` process joins with
//! `cluster add`, `cluster show` and `status` follow it, and what was written before is
//! still there. `node --addr` mistakes are usage errors.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{free_addrs, wait_until, Shape, TestCluster};
use quorumkv_client::WriteOptions;

/// Fast pings and syncs, so that the move takes seconds.
const FAST: &str = "[convergence]\nping_interval_ms = 100\nanti_entropy_interval_ms = 500";
/// Keys written before the change.
const KEYS: usize = 40;
/// Exit code of a refused change (`EXIT_REFUSED`).
const REFUSED: i32 = 3;

fn quorumkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(args)
        .output()
        .expect("run quorumkv")
}

/// Runs `quorumkv args --config config` on a blocking thread (the cluster runs on the
/// test's runtime).
async fn cli(config: &Path, args: &[&str]) -> Output {
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    full.extend(["--config".into(), config.to_str().unwrap().into()]);
    tokio::task::spawn_blocking(move || quorumkv(&full.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `quorumkv node` process for a node cluster.toml does not list; SIGKILLed when dropped.
struct Joiner(Child);

impl Joiner {
    fn start(config: &Path, id: &str, addr: &str) -> Joiner {
        Joiner::run(config, &["node", "--id", id, "--addr", addr])
    }

    /// `quorumkv node args --config config`, logging to `<id>.log` beside the config.
    fn run(config: &Path, args: &[&str]) -> Joiner {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_file_name("joiner.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn quorumkv node");
        Joiner(child)
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cluster add id addr` once the new node's process answers (until then the change is
/// refused: the node does not answer).
async fn add_once_up(config: &Path, id: &str, addr: &str) -> Output {
    wait_until("the new node answers and is added", Duration::from_secs(30), || async {
        let out = cli(config, &["cluster", "add", id, addr]).await;
        match out.status.success() {
            true => Ok(out),
            false => Err(text(&out.stderr)),
        }
    })
    .await
}

/// `cluster show --json`, parsed.
async fn show(config: &Path) -> serde_json::Value {
    let out = cli(config, &["cluster", "show", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("show --json is one JSON object")
}

/// Layout versions in use and their member ids.
fn layouts(show: &serde_json::Value) -> Vec<(u64, Vec<String>)> {
    let layouts = show["layouts"].as_array().expect("layouts");
    layouts
        .iter()
        .map(|l| {
            let members = l["members"].as_array().unwrap();
            let ids = members.iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
            (l["version"].as_u64().unwrap(), ids)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_through_the_cluster_commands() {
    let cluster = TestCluster::start(Shape::three().with(FAST)).await;
    let config = cluster.config_path.clone();
    let client = cluster.client().await;
    let all = WriteOptions {
        w: Some(3),
        ..WriteOptions::default()
    };
    for i in 0..KEYS {
        client.put_with(format!("k{i}"), format!("v{i}"), &all).await.unwrap();
    }
    let addr = free_addrs(1)[0].to_string();

    let plan = cli(&config, &["cluster", "plan", "add", "n4", &addr]).await;
    let planned = text(&plan.stdout);
    assert!(plan.status.success(), "{}{}", planned, text(&plan.stderr));
    let n4 = planned.lines().find(|l| l.starts_with("n4 ")).expect(&planned);
    let gains: usize = n4.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(gains > 100, "n4 gains about 3/4 of 256 partitions: {planned}");
    assert!(planned.contains("nothing changed"), "{planned}");
    assert_eq!(
        layouts(&show(&config).await),
        [(1, vec!["n1".into(), "n2".into(), "n3".into()])]
    );

    for args in [vec!["cluster", "remove", "n1"], vec!["cluster", "plan", "remove", "n1"]] {
        let out = cli(&config, &args).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(REFUSED), "{args:?}: {err}");
        assert!(err.contains("fewer than replication_factor = 3"), "{args:?}: {err}");
    }

    let _n4 = Joiner::start(&config, "n4", &addr);
    let added = add_once_up(&config, "n4", &addr).await;
    let said = text(&added.stdout);
    assert!(said.contains("layout 2 made through n1: add n4"), "{said}");
    assert!(said.contains("quorumkv cluster show"), "{said}");

    wait_until(
        "cluster show says the move is done",
        Duration::from_secs(90),
        || async {
            let report = show(&config).await;
            let ids = ["n1", "n2", "n3", "n4"].map(String::from).to_vec();
            match (layouts(&report) == [(2, ids)], report["stage"] == "done") {
                (true, true) => Ok(()),
                _ => Err(format!("{report}")),
            }
        },
    )
    .await;
    let again = cli(&config, &["cluster", "add", "n4", &addr]).await;
    assert_eq!(again.status.code(), Some(REFUSED), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("\"n4\" is already a member"),
        "{}",
        text(&again.stderr)
    );

    let status = cli(&config, &["status"]).await;
    let screen = text(&status.stdout);
    assert!(status.status.success(), "{screen}{}", text(&status.stderr));
    assert!(
        screen.lines().any(|l| l.starts_with("n4 ") && l.contains(&addr)),
        "{screen}"
    );
    let client = cluster.client().await;
    for i in 0..KEYS {
        let found = client.get(format!("k{i}")).await.unwrap();
        assert_eq!(found.map(|v| v.value), Some(format!("v{i}").into()), "k{i}");
    }
    cluster.shutdown().await;
}

#[test]
fn node_addr_mistakes_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    let addrs = free_addrs(3);
    std::fs::write(&path, common::config_text(&Shape::three(), &addrs)).unwrap();
    let n1 = addrs[0].to_string();
    let cases = [
        ("N4", "127.0.0.1:1", "--id \"N4\": use 1-63 lowercase letters"),
        ("n4", n1.as_str(), "is the address of n1 in cluster.toml"),
        ("n2", "127.0.0.1:1", "cluster.toml lists n2 at"),
    ];
    for (id, addr, message) in cases {
        let out = quorumkv(&["node", "--id", id, "--addr", addr, "--config", path.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{id} {addr}: {err}");
        assert!(err.contains(message), "{id} {addr}: {err}");
    }
    let unlisted = quorumkv(&["node", "--id", "n4", "--config", path.to_str().unwrap()]);
    assert!(
        text(&unlisted.stderr).contains("give its address with --addr"),
        "{}",
        text(&unlisted.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_killed_while_it_pulls_resumes_without_addr() {
    // Pulls at 50 keys/s: n4 is still filling when it is killed.
    let slow = format!("{FAST}\nanti_entropy_keys_per_sec = 50");
    let cluster = TestCluster::start(Shape::three().with(&slow)).await;
    let config = cluster.config_path.clone();
    let client = cluster.client().await;
    let all = WriteOptions {
        w: Some(3),
        ..WriteOptions::default()
    };
    let keys = 300;
    for i in 0..keys {
        client.put_with(format!("k{i}"), format!("v{i}"), &all).await.unwrap();
    }
    let addr = free_addrs(1)[0].to_string();
    let n4 = Joiner::start(&config, "n4", &addr);
    add_once_up(&config, "n4", &addr).await;
    wait_until("n4 pulls", Duration::from_secs(60), || async {
        let report = show(&config).await;
        (report["stage"] == "pulling").then_some(()).ok_or(format!("{report}"))
    })
    .await;
    drop(n4); // SIGKILL, in the middle of its pulls
    let _n4 = Joiner::run(&config, &["node", "--id", "n4"]);
    wait_until("the move is done", Duration::from_secs(120), || async {
        let report = show(&config).await;
        (report["stage"] == "done").then_some(()).ok_or(format!("{report}"))
    })
    .await;
    let every = quorumkv_client::ReadOptions {
        r: Some(3),
        ..Default::default()
    };
    let client = cluster.client().await;
    for i in 0..keys {
        let found = client.get_with(format!("k{i}"), &every).await.unwrap();
        assert_eq!(found.map(|v| v.value), Some(format!("v{i}").into()), "k{i}");
    }
    cluster.shutdown().await;
}
