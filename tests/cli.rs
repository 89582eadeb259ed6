//! The `quorumkv` binary as a user runs it: client commands against a cluster (one node
//! down, none running; another cluster's CA: tests/certs.rs), binary values through stdin
//! and files, exit codes, a broken cluster.toml, and `--help`.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Shape, TestCluster};
use quorumkv_client::transport::DIAL_TIMEOUT;

fn quorumkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(args)
        .output()
        .expect("run quorumkv")
}

/// Runs `quorumkv args` with `input` on its stdin.
fn quorumkv_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quorumkv");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // The command may stop reading early (a value over the limit): a broken pipe is fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().expect("wait for quorumkv")
}

/// Runs `quorumkv args --config config` on a blocking thread (the cluster under test
/// runs on the test's runtime); returns its output and how long it took.
async fn cli_timed(config: &std::path::Path, args: &[&str]) -> (Output, Duration) {
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    full.extend(["--config".into(), config.to_str().unwrap().into()]);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = quorumkv(&full.iter().map(String::as_str).collect::<Vec<_>>());
        (out, started.elapsed())
    })
    .await
    .unwrap()
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
    assert_eq!(text(&get.stdout), "blue", "the value's bytes, no newline when piped");

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
    assert_eq!(
        invalid.status.code(),
        Some(64),
        "options that cannot work are a usage error"
    );
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
    assert_eq!(text(&from.stdout), "v1");
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

/// A command must not wait for a node that is down: the seed's failure detector names it,
/// so its write goes to a fallback as a hint at once and reads do not ask it. Before, every
/// command waited for the dead node's dial (DIAL_TIMEOUT, 3 s) even after printing its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_costs_a_command_no_wait() {
    let mut cluster = TestCluster::start(Shape::three().with("[convergence]\nping_interval_ms = 100")).await;
    let client = cluster.client().await;
    cluster.stop(2).await;
    // Whichever seed answers first tells the client who is down: both must know.
    for seed in ["n1", "n2"] {
        common::wait_until(&format!("{seed} sees n3 down"), Duration::from_secs(30), || async {
            let status = client.status(seed).await.map_err(|e| e.to_string())?;
            match status.peers.iter().any(|p| p.id == "n3" && !p.up) {
                true => Ok(()),
                false => Err(format!("{:?}", status.peers)),
            }
        })
        .await;
    }
    // A long request timeout, so that waiting for the dead node would show.
    let slow = ["--timeout-ms", "20000"];
    let (put, took) = cli_timed(&cluster.config_path, &[&["put", "k", "v"][..], &slow].concat()).await;
    assert!(put.status.success(), "{}", text(&put.stderr));
    assert!(
        took < DIAL_TIMEOUT,
        "put took {took:?}, as long as a dial to the dead node"
    );
    let (get, took) = cli_timed(&cluster.config_path, &[&["get", "k"][..], &slow].concat()).await;
    assert_eq!(text(&get.stdout), "v", "{}", text(&get.stderr));
    assert!(
        took < DIAL_TIMEOUT,
        "get took {took:?}, as long as a dial to the dead node"
    );
    let (all, _) = cli_timed(
        &cluster.config_path,
        &[&["put", "k", "v2", "--w", "3"][..], &slow].concat(),
    )
    .await;
    assert_eq!(all.status.code(), Some(1), "w = 3 of 2 live replicas is a failure");
    assert!(text(&all.stderr).contains("n3"), "{}", text(&all.stderr));
    cluster.shutdown().await;
}

/// With no node running, a command fails within its timeout (all seeds are asked at once)
/// and says which seeds it tried and that the cluster may not be running. Before, it
/// asked the seeds one after another, 5 s each, whatever the timeout.
#[test]
fn no_cluster_running_fails_within_the_timeout_naming_every_seed() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = common::free_addrs(3);
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, common::config_text(&Shape::three(), &addrs)).unwrap();
    let config = config.to_str().unwrap();
    // The cluster's default timeout (Shape::three: 2 s), then a shorter one.
    for (timeout, extra) in [(2_000, vec![]), (500, vec!["--timeout-ms", "500"])] {
        let started = Instant::now();
        let out = quorumkv(&[&["get", "k", "--config", config][..], &extra].concat());
        let took = started.elapsed();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        // Margin: starting the process and loading its certificate.
        let bound = Duration::from_millis(timeout) + Duration::from_secs(2);
        assert!(took < bound, "took {took:?} with a {timeout} ms timeout");
        for addr in &addrs {
            assert!(err.contains(&format!("{addr} (timed out)")), "{addr} named: {err}");
        }
        assert!(
            err.contains("is the cluster running?") && err.contains("quorumkv up"),
            "{err}"
        );
    }
}

/// Binary values of any size up to the limit go in through a file or stdin and come out
/// byte for byte through `--output` or a pipe; one byte over the limit is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_round_trip_through_files_stdin_and_stdout() {
    const LIMIT: usize = 2 << 20;
    let cluster = TestCluster::start(Shape::three().with(&format!("[limits]\nmax_value_bytes = {LIMIT}"))).await;
    let config = cluster.config_path.to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let value: Vec<u8> = (0..1 << 20).map(|i| (i % 256) as u8).collect();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, &value).unwrap();
    let output = dir.path().join("out.bin");
    let (config_, input_, output_, value_) = (config.clone(), input.clone(), output.clone(), value.clone());
    tokio::task::spawn_blocking(move || {
        let (config, input, output, value) = (config_, input_, output_, value_);
        let c = ["--config", config.as_str()];
        let put = quorumkv(&[&["put", "file", "--value-file", input.to_str().unwrap()][..], &c].concat());
        assert!(put.status.success(), "{}", text(&put.stderr));
        let get = quorumkv(&[&["get", "file", "--output", output.to_str().unwrap()][..], &c].concat());
        assert!(get.status.success(), "{}", text(&get.stderr));
        assert!(get.stdout.is_empty(), "--output leaves stdout alone");
        assert!(
            std::fs::read(&output).unwrap() == value,
            "--output holds the exact bytes"
        );

        let put = quorumkv_with_stdin(&[&["put", "piped", "-"][..], &c].concat(), &value);
        assert!(put.status.success(), "{}", text(&put.stderr));
        let get = quorumkv(&[&["get", "piped"][..], &c].concat());
        assert!(get.status.success(), "{}", text(&get.stderr));
        assert!(get.stdout == value, "stdout holds the exact bytes, no newline");

        let over = vec![7u8; LIMIT + 1];
        let put = quorumkv_with_stdin(&[&["put", "big", "-"][..], &c].concat(), &over);
        assert_eq!(put.status.code(), Some(64), "{}", text(&put.stderr));
        assert!(
            text(&put.stderr).contains(&format!("limit of {LIMIT} bytes")),
            "{}",
            text(&put.stderr)
        );
        let both = quorumkv(&[&["put", "k", "v", "--value-file", input.to_str().unwrap()][..], &c].concat());
        assert_eq!(
            both.status.code(),
            Some(64),
            "a value and a file: {}",
            text(&both.stderr)
        );
    })
    .await
    .unwrap();
    let client = cluster.client().await;
    assert!(client.get("piped").await.unwrap().unwrap().value == value);
    assert!(
        client.get("big").await.unwrap().is_none(),
        "the oversized value was not sent"
    );
    cluster.shutdown().await;
}

/// Usage errors exit with 64, never with 2 (which means "not found").
#[test]
fn usage_errors_exit_with_64() {
    let bad_number = quorumkv(&["put", "k", "v", "--w", "abc"]);
    assert_eq!(bad_number.status.code(), Some(64), "{}", text(&bad_number.stderr));
    let no_value = quorumkv(&["put", "k"]);
    assert_eq!(no_value.status.code(), Some(64), "{}", text(&no_value.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let key = std::ffi::OsStr::from_bytes(b"k\xff");
        let out = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .arg("get")
            .arg(key)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("UTF-8"), "{}", text(&out.stderr));
    }
    let help = quorumkv(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(
        text(&help.stdout).contains("64  usage error"),
        "--help lists the exit codes"
    );
}

/// Most bytes `status --json` may print for three nodes without `--partitions` (it was
/// ~130 KB with the partition rows).
const MAX_SUMMARY_JSON: usize = 4096;

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}
