//! The `quorumkv` binary as a user runs it: client commands against a cluster, a broken
//! cluster.toml, and `--help`.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{Shape, TestCluster};

fn quorumkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(args)
        .output()
        .expect("run quorumkv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_from_the_command_line() {
    let cluster = TestCluster::start(Shape::three()).await;
    let config = cluster.config_path.to_str().unwrap().to_string();
    let cli = move |args: Vec<&str>| {
        let config = config.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let mut full: Vec<&str> = args.iter().map(String::as_str).collect();
            full.extend(["--config", &config]);
            quorumkv(&full)
        })
    };
    let put = cli(vec!["put", "colour", "blue", "--w", "3"]).await.unwrap();
    assert!(put.status.success(), "{}", text(&put.stderr));
    assert!(text(&put.stdout).starts_with("ok (version "), "{}", text(&put.stdout));

    let get = cli(vec!["get", "colour", "--r", "3"]).await.unwrap();
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert_eq!(text(&get.stdout), "blue\n");

    let client = cluster.client().await;
    assert_eq!(
        client.get("colour").await.unwrap().unwrap().value,
        "blue",
        "the client sees the CLI's write"
    );

    let delete = cli(vec!["delete", "colour"]).await.unwrap();
    assert!(delete.status.success(), "{}", text(&delete.stderr));
    let missing = cli(vec!["get", "colour"]).await.unwrap();
    assert_eq!(missing.status.code(), Some(2), "not found exits with 2");
    assert!(text(&missing.stderr).contains("colour: not found"));

    let invalid = cli(vec!["put", "k", "v", "--n", "2", "--w", "3"]).await.unwrap();
    assert_eq!(invalid.status.code(), Some(1));
    assert!(
        text(&invalid.stderr).contains("w = 3 exceeds n = 2"),
        "{}",
        text(&invalid.stderr)
    );
    cluster.shutdown().await;
}

#[test]
fn a_broken_cluster_toml_is_named_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    let broken = common::config_text(&Shape::three(), &["127.0.0.1:7001".parse().unwrap(); 3]);
    let broken = broken.replace("w = 2", "w = 5");
    std::fs::write(&path, broken).unwrap();
    for args in [vec!["node", "--id", "n1"], vec!["up"], vec!["get", "k"]] {
        let mut full = args.clone();
        full.extend(["--config", path.to_str().unwrap()]);
        let out = quorumkv(&full);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("defaults.w = 5"), "{args:?}: {err}");
        assert!(err.contains("duplicate address"), "{args:?}: {err}");
    }
    let missing = quorumkv(&["up", "--config", "/nonexistent/cluster.toml"]);
    assert!(text(&missing.stderr).contains("cannot read /nonexistent/cluster.toml"));
}

#[test]
fn every_command_has_help() {
    for command in ["up", "node", "put", "get", "delete"] {
        let out = quorumkv(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help");
        assert!(
            text(&out.stdout).contains("--config"),
            "{command} --help mentions --config"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_get_from_show_each_nodes_own_view() {
    let mut cluster = TestCluster::start(Shape::three().with("[convergence]\nping_interval_ms = 100")).await;
    let config = cluster.config_path.to_str().unwrap().to_string();
    let client = cluster.client().await;
    client.put("k", "v1").await.unwrap();
    cluster.stop(2).await;
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || quorumkv(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let args = |list: &[&str]| {
        list.iter()
            .map(|s| s.to_string())
            .chain(["--config".into(), config.clone()])
            .collect::<Vec<_>>()
    };

    let from = run(args(&["get", "k", "--from", "n1"])).await.unwrap();
    assert!(from.status.success(), "{}", text(&from.stderr));
    assert_eq!(text(&from.stdout), "v1\n");
    assert!(text(&from.stderr).contains("version"), "{}", text(&from.stderr));

    common::wait_until("n1 and n2 see n3 down", Duration::from_secs(20), || async {
        for id in ["n1", "n2"] {
            let summary = client.status_summary(id, false).await.map_err(|e| e.to_string())?;
            if summary.status.peers.iter().any(|p| p.id == "n3" && p.up) {
                return Err(format!("{id} still sees n3 up"));
            }
        }
        Ok(())
    })
    .await;
    let status = run(args(&["status", "--json"])).await.unwrap();
    assert_eq!(
        status.status.code(),
        Some(1),
        "one node is down, so status reports a failure"
    );
    let json = text(&status.stdout);
    assert!(
        json.len() < MAX_SUMMARY_JSON,
        "without --partitions the JSON stays small: {} bytes",
        json.len()
    );
    let lines = json_lines(&json);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], "n1");
    let n1 = &lines[0]["status"];
    assert_eq!(n1["status"]["partitions"].as_array().unwrap().len(), 0, "{n1}");
    assert!(
        n1["agreement"]["replicated"].as_u64().unwrap() > 100,
        "n1 replicates most partitions: {n1}"
    );
    assert_eq!(n1["keys"], 1, "{n1}");
    assert!(n1["disk_bytes"].as_u64().unwrap() > 0, "{n1}");
    assert!(
        lines[2]["status"]["error"].is_string(),
        "n3 is unreachable: {}",
        lines[2]
    );

    let full = run(args(&["status", "--json", "--partitions"])).await.unwrap();
    let full = json_lines(&text(&full.stdout));
    let rows = full[0]["status"]["status"]["partitions"].as_array().unwrap();
    assert!(rows.len() > 100, "--partitions lists every partition n1 replicates");

    let human = run(args(&["status"])).await.unwrap();
    let human = text(&human.stdout);
    let line_of = |id: &str| {
        human
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_default()
            .to_string()
    };
    let n1 = line_of("n1");
    assert!(
        n1.split_whitespace().nth(1) == Some("up") && n1.contains(" 1 "),
        "n1 up with 1 key: {human}"
    );
    assert!(line_of("n2").split_whitespace().nth(1) == Some("up"), "{human}");
    let n3 = line_of("n3");
    assert!(n3.contains("DOWN") && n3.contains("unreachable"), "{human}");
    assert!(
        human.contains("sees down: n3"),
        "n1 and n2 warn that they see n3 down: {human}"
    );
    assert!(
        human.lines().count() <= 7,
        "a header and at most two lines per node: {human}"
    );
    let partitions = text(&run(args(&["status", "--partitions"])).await.unwrap().stdout);
    let rows = partitions
        .lines()
        .filter(|l| l.trim_start().starts_with("partition "))
        .count();
    assert!(rows > 200, "n1's and n2's partition rows: {partitions}");
    cluster.shutdown().await;
}

/// Most bytes `status --json` may print for three nodes without `--partitions` (it was
/// ~130 KB with the partition rows).
const MAX_SUMMARY_JSON: usize = 4096;

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}
