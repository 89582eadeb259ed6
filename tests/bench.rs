//! `quorumkv bench --spawn` through the real binary: it starts the config's nodes as
//! processes on temporary data, runs the workloads, stops the nodes, and prints a JSON
//! report whose counts and percentiles add up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{config_text, free_addrs, Shape};
use serde_json::Value;

/// A cluster.toml with three free loopback ports, in a fresh directory.
fn cluster_toml() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, config_text(&Shape::three(), &free_addrs(3))).unwrap();
    (dir, path)
}

/// Runs `quorumkv bench --spawn --json --concurrency 8` in `cwd` with `args` and returns
/// the parsed report.
fn bench(cwd: &Path, config: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .current_dir(cwd)
        .arg("bench")
        .args(args)
        .args(["--spawn", "--json", "--concurrency", "8", "--config"])
        .arg(config)
        .output()
        .expect("run quorumkv bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Checks one operation type's statistics: `count` successes, no errors, ordered
/// percentiles.
fn assert_sane(stats: &Value, count: u64) {
    let field = |name: &str| stats[name].as_u64().unwrap_or_else(|| panic!("{name} in {stats}"));
    assert_eq!(field("count"), count, "{stats}");
    assert_eq!(field("errors"), 0, "{stats}");
    let (p50, p99, max) = (field("p50_us"), field("p99_us"), field("max_us"));
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "percentiles out of order: {stats}");
    assert!(stats["ops_per_s"].as_f64().unwrap() > 0.0, "{stats}");
}

#[test]
fn write_workload_counts_every_operation() {
    let (dir, config) = cluster_toml();
    let report = bench(dir.path(), &config, &["--workload", "w", "--ops", "300"]);
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 1, "{report}");
    let w = &phases[0];
    assert_eq!(
        (w["workload"].as_str(), w["ops"].as_u64()),
        (Some("w"), Some(300)),
        "{w}"
    );
    assert_eq!(w["errors"], 0, "{w}");
    assert_sane(&w["operations"]["write"], 300);
    assert!(w["operations"]["read"].is_null(), "no reads in workload w: {w}");
    // How the phase used the machine: per operation for client and nodes, and the share
    // of the machine left idle or waiting on disk (absent only when no clock tick passed
    // during the phase, which a fast disk could manage in 300 writes).
    let cpu = &w["cpu"];
    for field in ["client_us_per_op", "nodes_us_per_op"] {
        assert!(cpu[field].as_f64().is_some_and(|us| us >= 0.0), "{field} in {cpu}");
    }
    for field in ["machine_idle_pct", "machine_iowait_pct"] {
        let pct = &cpu[field];
        let sane = pct.is_null() || pct.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p));
        assert!(sane, "{field} in {cpu}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "the spawned cluster must not touch the config's data_dir"
    );
}

#[test]
fn load_then_read_finds_every_key() {
    let (dir, _) = cluster_toml();
    let args = ["--workload", "load,c", "--keys", "200", "--ops", "300"];
    // A bare file name, as in the default `--config cluster.toml`.
    let report = bench(dir.path(), Path::new("cluster.toml"), &args);
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<_> = phases.iter().map(|p| p["workload"].as_str().unwrap()).collect();
    assert_eq!(names, ["load", "c"], "{report}");
    assert_sane(&phases[0]["operations"]["write"], 200);
    let reads = &phases[1]["operations"]["read"];
    assert_sane(reads, 300);
    assert_eq!(reads["not_found"], 0, "every read finds a loaded key: {reads}");
    assert_eq!(report["settings"]["keys"], 200);
}
