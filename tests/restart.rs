//! Durability through the real binary: nodes killed with SIGKILL while writes are in
//! flight keep every write they acknowledged (sync mode), and serve it after restart.
//! The page cache survives a SIGKILL, so this cannot show a missing fsync; the power-loss
//! test (tests/power_loss.rs) can. And `quorumkv up`: it stops its nodes cleanly on
//! SIGTERM, and they stop with it when it is killed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::processes::{connect, Processes, Up};
use common::{config_text, free_addrs, wait_until, Shape};
use quorumkv_client::net::bind_udp;
use quorumkv_client::{ClientConfig, Version, WriteOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("cluster.toml");
    let shape = Shape::three();
    std::fs::write(&config_path, config_text(&shape, &free_addrs(3))).unwrap();
    let config = quorumkv::config::ClusterConfig::load(&config_path).unwrap();
    let ids = config.node_ids();
    let (tls_dir, _) = config.tls_dir();
    // As the CLI does: the first user of the development CA creates it.
    let identity = quorumkv::pki::identity(&tls_dir, "client", true).unwrap();
    let mut nodes = Processes::start(&config_path, &ids);
    let client_config = ClientConfig::new(config.nodes.iter().map(|n| n.addr).collect(), identity);
    let client = connect(&client_config).await;

    // Writers keep going while the nodes are killed; only what was acknowledged counts.
    let acked: Arc<Mutex<Vec<(String, Version)>>> = Arc::default();
    let all_three = WriteOptions {
        w: Some(3),
        ..Default::default()
    };
    let mut writers = Vec::new();
    for writer in 0..16 {
        let (client, acked) = (client.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{writer}-k{i}");
                match client
                    .put_with(key.clone(), format!("value of {key}"), &all_three)
                    .await
                {
                    Ok(version) => acked.lock().unwrap().push((key, version)),
                    Err(_) => return,
                }
            }
        }));
    }
    wait_until("400 writes acknowledged", Duration::from_secs(60), || async {
        let n = acked.lock().unwrap().len();
        if n >= 400 {
            Ok(())
        } else {
            Err(format!("{n} acknowledged"))
        }
    })
    .await;
    nodes.kill_all();
    let acked: Vec<(String, Version)> = acked.lock().unwrap().clone();
    for writer in writers {
        writer.abort();
    }

    let _nodes = Processes::start(&config_path, &ids);
    let client = connect(&client_config).await;
    for (key, version) in &acked {
        for id in &ids {
            let copy = client.get_from(id, key.clone()).await.expect("node answers");
            let copy = copy.unwrap_or_else(|| panic!("{id} lost acknowledged write {key}"));
            assert!(copy.version >= *version, "{id} holds an older version of {key}");
            assert_eq!(copy.value.unwrap(), format!("value of {key}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_local_cluster_cleanly() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &[]);
    let client = up.client().await;
    client.put("survives", "shutdown").await.unwrap();

    up.signal("TERM");
    let status = up.exited().await;
    let log = up.log_text();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    for id in ["n1", "n2", "n3"] {
        assert!(
            log.contains(&format!("node {id} stopped")),
            "{id} shut down in order; log:\n{log}"
        );
    }

    let config_path = dir.path().join("cluster.toml");
    let _nodes = Processes::start(&config_path, &up.config.node_ids());
    let client = up.client().await;
    assert_eq!(client.get("survives").await.unwrap().unwrap().value, "shutdown");
}

/// `up` runs its nodes as processes of their own: they must not outlive it, however it
/// ends, or they would hold the cluster's ports (and data) after the user thinks it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_of_up_stop_when_it_is_killed() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &[]);
    up.client().await.put("k", "v").await.unwrap();

    up.signal("KILL");
    up.exited().await;
    for node in &up.config.nodes {
        // A node's port is free again once its process has exited.
        let what = format!("node {} releases {}", node.id, node.addr);
        wait_until(&what, Duration::from_secs(30), || async {
            bind_udp(node.addr).map(drop).map_err(|e| e.to_string())
        })
        .await;
    }
    let log = up.log_text();
    for id in up.config.node_ids() {
        assert!(
            log.contains(&format!("node {id} stopped")),
            "{id} shut down; log:\n{log}"
        );
    }
}
