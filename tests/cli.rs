//! The `quorumkv` binary as a user runs it: client commands against a cluster, a broken
//! cluster.toml, and `--help`.

mod common;

use std::process::{Command, Output};

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

    let status = run(args(&["status", "--json"])).await.unwrap();
    assert_eq!(
        status.status.code(),
        Some(1),
        "one node is down, so status reports a failure"
    );
    let lines: Vec<serde_json::Value> = text(&status.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], "n1");
    assert!(
        lines[0]["status"]["partitions"].as_array().unwrap().len() > 100,
        "n1 replicates most partitions"
    );
    assert!(
        lines[2]["status"]["error"].is_string(),
        "n3 is unreachable: {}",
        lines[2]
    );

    let human = run(args(&["status"])).await.unwrap();
    let human = text(&human.stdout);
    assert!(human.contains("n1  up") && human.contains("n3  UNREACHABLE"), "{human}");
    cluster.shutdown().await;
}
