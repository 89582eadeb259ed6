//! Convergence through the real path: hinted handoff, anti-entropy, read repair and
//! tombstones, with nodes stopped, wiped, restarted and cut off on loopback.

mod common;

use bytes::Bytes;
use common::converge::{
    keys_version, settle, shape, w, wait_until_node_holds, write_keys, AE_OFF, AE_ON, DEADLINE, HINTS_OFF, HINTS_ON,
};
use common::{copies, reachable, wait_until, TestCluster};
use quorumkv_client::wire::{ErrorKind, Request, Response};
use quorumkv_client::{Client, ReadOptions, RepairMode, Version};

async fn catch_up_after_outage(settings: &[&str]) -> (TestCluster, Client) {
    let mut cluster = TestCluster::start(shape(settings)).await;
    let client = cluster.client().await;
    cluster.stop(2).await;
    let keys = write_keys(&client, "k", 1000, w(2)).await;
    settle(&client).await;
    assert_eq!(
        client.get_from("n1", "k0").await.unwrap().map(|r| r.version),
        Some(keys_version(&keys, "k0"))
    );
    cluster.restart(2).await;
    wait_until_node_holds(&client, "n3", &keys).await;
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_through_hints_alone() {
    let (cluster, client) = catch_up_after_outage(&[AE_OFF, HINTS_ON]).await;
    assert!(
        client.stats().hints_sent() > 0,
        "writes for n3 went to fallbacks as hints"
    );
    let status = client.status("n3").await.unwrap();
    assert_eq!(status.anti_entropy.records_pulled, 0, "not anti-entropy");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_through_anti_entropy_alone() {
    let (cluster, client) = catch_up_after_outage(&[AE_ON, HINTS_OFF]).await;
    assert_eq!(client.stats().hints_sent(), 0);
    let mut repaired = 0;
    for id in ["n1", "n2", "n3"] {
        let status = client.status(id).await.unwrap();
        repaired += status.anti_entropy.records_pulled;
    }
    assert!(repaired >= 1000, "anti-entropy moved the missed keys ({repaired})");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_refilled_by_anti_entropy() {
    let mut cluster = TestCluster::start(shape(&[AE_ON, HINTS_OFF])).await;
    let client = cluster.client().await;
    let keys = write_keys(&client, "w", 500, w(3)).await;
    cluster.stop(1).await;
    cluster.wipe(1);
    cluster.restart(1).await;
    assert_eq!(client.get_from("n2", "w0").await.unwrap(), None, "the wipe emptied n2");
    wait_until_node_holds(&client, "n2", &keys).await;
    cluster.shutdown().await;
}

/// A node restarted with `--refill` on a lost disk never answers "not found" for what it
/// lost: cut off from the other replicas it refuses reads, and reached again it answers
/// with their copies until anti-entropy has refilled it. (Without `--refill`, n1 would
/// answer the read below with its empty store's "not found".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refilling_a_lost_disk_never_answers_not_found_for_what_it_lost() {
    let mut cluster = TestCluster::start(shape(&[AE_ON, HINTS_OFF])).await;
    let client = cluster.client().await;
    let written = client.put_with("lost", "acknowledged by all", &w(3)).await.unwrap();
    cluster.stop(0).await;
    cluster.wipe(0);
    cluster.cut(0, &[1, 2]);
    cluster.restart_with(0, true).await;
    let get = || Request::Get {
        epoch: client.epoch(),
        key: Bytes::from_static(b"lost"),
    };
    match cluster.ask(0, get()).await {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::Refilling, "{e:?}"),
        other => panic!("n1 cut off from the other replicas answered {other:?}"),
    }
    assert_eq!(
        client.get_from("n1", "lost").await.unwrap(),
        None,
        "n1's own copy is gone"
    );
    cluster.heal();
    wait_until("n1 answers through the other replicas", DEADLINE, || async {
        match cluster.ask(0, get()).await {
            Response::Record(Some(record)) if record.version == written => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_until_node_holds(&client, "n1", &[("lost".to_string(), written)]).await;
    cluster.shutdown().await;
}

/// Leaves n1 holding an older version of `key` than n2 and n3.
async fn make_n1_stale(cluster: &mut TestCluster, client: &Client, key: &'static str) -> Version {
    client.put_with(key, "old", &w(3)).await.unwrap();
    cluster.stop(0).await;
    let new = client.put_with(key, "new", &w(2)).await.unwrap();
    settle(client).await;
    cluster.restart(0).await;
    reachable(client, "n1").await;
    let held = client.get_from("n1", key).await.unwrap().unwrap();
    assert!(held.version < new, "n1 missed the second write");
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_repair_fixes_stale_replicas() {
    let mut cluster = TestCluster::start(shape(&[AE_OFF, HINTS_OFF])).await;
    let client = cluster.client().await;

    let new = make_n1_stale(&mut cluster, &client, "background").await;
    let read = client
        .get_with(
            "background",
            &ReadOptions {
                r: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(read.unwrap().version, new);
    wait_until("background read repair reaches n1", DEADLINE, || async {
        let held = client.get_from("n1", "background").await.map_err(|e| e.to_string())?;
        match held.map(|r| r.version) {
            Some(v) if v == new => Ok(()),
            other => Err(format!("n1 holds {other:?}")),
        }
    })
    .await;

    let new = make_n1_stale(&mut cluster, &client, "blocking").await;
    let blocking = ReadOptions {
        r: Some(3),
        repair: RepairMode::Blocking,
        ..Default::default()
    };
    let read = client.get_with("blocking", &blocking).await.unwrap();
    assert_eq!(read.unwrap().version, new);
    let held = client.get_from("n1", "blocking").await.unwrap().unwrap();
    assert_eq!(held.version, new, "blocking repair finished before the read returned");
    assert_eq!(held.value, Some(Bytes::from("new")));
    assert!(client.stats().read_repairs() >= 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_converges_after_the_partition_heals() {
    let cluster = TestCluster::start(shape(&[AE_ON, HINTS_ON])).await;
    let client = cluster.client().await;
    cluster.isolate(2);
    let keys = write_keys(&client, "p", 200, w(2)).await;
    assert_eq!(
        client
            .get_with("p0", &ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .version,
        keys_version(&keys, "p0")
    );
    cluster.heal();
    wait_until_node_holds(&client, "n3", &keys).await;
    for id in ["n1", "n2"] {
        wait_until_node_holds(&client, id, &keys).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_in_agreement_exchange_only_tree_hashes() {
    let cluster = TestCluster::start(shape(&["anti_entropy_interval_ms = 200", HINTS_OFF])).await;
    let client = cluster.client().await;
    write_keys(&client, "a", 300, w(3)).await;
    let rounds_of = |client: Client| async move {
        let status = client.status("n1").await.map_err(|e| e.to_string())?;
        Ok::<_, String>(status.anti_entropy)
    };
    let before = wait_until("n1 finishes an anti-entropy round", DEADLINE, || async {
        let counters = rounds_of(client.clone()).await?;
        if counters.rounds >= 1 {
            Ok(counters)
        } else {
            Err(format!("{counters:?}"))
        }
    })
    .await;
    let after = wait_until("n1 runs three more rounds", DEADLINE, || async {
        let counters = rounds_of(client.clone()).await?;
        if counters.rounds >= before.rounds + 3 {
            Ok(counters)
        } else {
            Err(format!("{counters:?}"))
        }
    })
    .await;
    assert_eq!(
        after.records_pulled, before.records_pulled,
        "no records pulled while in agreement"
    );
    let rounds = after.rounds - before.rounds;
    let per_round = (after.bytes_sent - before.bytes_sent) / rounds;
    // Roots of 256 partitions to two peers: a few KiB. Records (300 × ~30 B) would add more.
    assert!(per_round < 8 * 1024, "{per_round} bytes sent per round in agreement");
    assert!(per_round > 0, "rounds did exchange roots");
    let status = client.status("n1").await.unwrap();
    assert!(status
        .partitions
        .iter()
        .all(|p| p.replicas.iter().all(|r| r.last_agreed_micros.is_some())));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_during_an_outage_stays_deleted() {
    let settings = [AE_ON, HINTS_OFF, "tombstone_grace_ms = 1000"];
    let mut cluster = TestCluster::start(shape(&settings)).await;
    let client = cluster.client().await;
    let ids: Vec<String> = (0..3).map(|i| cluster.id(i)).collect();
    client.put_with("doomed", "value", &w(3)).await.unwrap();
    cluster.stop(2).await;
    client.delete_with("doomed", &w(2)).await.unwrap();
    settle(&client).await;
    cluster.restart(2).await;
    // Anti-entropy spreads the tombstone; after the grace period every replica purges it.
    wait_until("every replica forgets the key", DEADLINE, || async {
        let held = copies(&client, &ids, "doomed").await?;
        if held.iter().all(Option::is_none) {
            Ok(())
        } else {
            Err(format!("{held:?}"))
        }
    })
    .await;
    for _ in 0..5 {
        let read = client
            .get_with(
                "doomed",
                &ReadOptions {
                    r: Some(3),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(read, None, "the deleted value did not come back");
    }
    let mut moved = 0;
    for id in &ids {
        let counters = client.status(id).await.unwrap().anti_entropy;
        moved += counters.records_pulled;
    }
    assert!(moved >= 1, "anti-entropy carried the tombstone to n3");
    cluster.shutdown().await;
}
