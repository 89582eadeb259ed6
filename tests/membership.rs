//! Growing, shrinking and replacing nodes of a running cluster (real nodes on loopback),
//! under continuous writes and reads checked by the history checker, with a node
//! restarted in the middle of each move: nothing acknowledged is lost, no read or write
//! fails for lack of replicas, and afterwards every key lives exactly on its new
//! replicas.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Shape, TestCluster};
use quorumkv::history::{check_final, check_history, Op, Outcome, Recorder};
use quorumkv_client::layout::{Change, LayoutHistory};
use quorumkv_client::wire::{ErrorKind, Request, Response};
use quorumkv_client::{Client, ReadOptions, Record, RepairMode, WriteOptions};
use tokio::task::JoinHandle;

/// Fast pings and syncs, so that a move takes seconds.
const FAST: &str =
    "[convergence]\nping_interval_ms = 100\nanti_entropy_interval_ms = 500\nhint_delivery_interval_ms = 200";
/// Keys written before the move.
const PRELOADED: usize = 300;
/// Keys the workload writes and reads during the move.
const WORKLOAD_KEYS: usize = 30;
/// Clients of the workload.
const CLIENTS: usize = 2;
/// Longest a move may take here.
const MOVE_DEADLINE: Duration = Duration::from_secs(90);

/// Clients writing and reading `WORKLOAD_KEYS` keys until stopped, recording a history.
struct Workload {
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    async fn start(cluster: &TestCluster) -> Workload {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(cluster.client().await);
        }
        let recorder = Arc::new(Recorder::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(who, client)| {
                let (recorder, stop) = (recorder.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut step = who;
                    while !stop.load(Ordering::Relaxed) {
                        // Each client writes keys of its own (a write never loses to
                        // another's), and reads everyone's.
                        let key = format!("w{}", (step * 7) % WORKLOAD_KEYS);
                        let own = format!("w{}", (step * 7) % WORKLOAD_KEYS / CLIENTS * CLIENTS + who);
                        match step % 3 {
                            0 => recorder.put(&client, who, &own, &WriteOptions::default()).await,
                            1 => recorder.get(&client, who, &key, &ReadOptions::default()).await,
                            _ => {
                                let blocking = ReadOptions {
                                    repair: RepairMode::Blocking,
                                    ..ReadOptions::default()
                                };
                                recorder.get(&client, who, &key, &blocking).await
                            }
                        };
                        step += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Workload { recorder, stop, tasks }
    }

    /// Waits until `count` more operations completed.
    async fn run_ops(&self, count: usize) {
        let target = self.recorder.len() + count;
        wait_until("the workload runs", Duration::from_secs(60), || async {
            let done = self.recorder.len();
            (done >= target).then_some(()).ok_or(format!("{done} of {target}"))
        })
        .await;
    }

    async fn stop(mut self) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            task.await.expect("client task");
        }
        self.recorder.history()
    }
}

/// A cluster of `nodes` (three replicas) with fast convergence, `PRELOADED` keys written,
/// and a client.
async fn preloaded(nodes: usize) -> (TestCluster, Client) {
    let shape = Shape {
        nodes,
        ..Shape::three()
    };
    let cluster = TestCluster::start(shape.with(FAST)).await;
    let client = cluster.client().await;
    preload(&client).await;
    (cluster, client)
}

/// Preloads `PRELOADED` keys with every replica acknowledging.
async fn preload(client: &Client) {
    let all = WriteOptions {
        w: Some(3),
        ..WriteOptions::default()
    };
    for i in 0..PRELOADED {
        client
            .put_with(format!("p{i}"), format!("v{i}"), &all)
            .await
            .expect("preload");
    }
}

/// Waits until every running node of `ids` has one layout in use, version `version`,
/// and nothing left to drop.
async fn move_done(client: &Client, ids: &[String], version: u64) {
    wait_until("the move completes", MOVE_DEADLINE, || async {
        for id in ids {
            let history = client.fetch_layout(id).await.map_err(|e| format!("{id}: {e}"))?;
            if history.moving() || history.newest().version != version {
                let versions: Vec<u64> = history.layouts.iter().map(|l| l.version).collect();
                return Err(format!(
                    "{id} uses layouts {versions:?}, progress {:?}",
                    history.progress
                ));
            }
            let status = client.move_status(id).await.map_err(|e| format!("{id}: {e}"))?;
            if !status.dropping.is_empty() {
                return Err(format!("{id} still drops {} partitions", status.dropping.len()));
            }
        }
        Ok(())
    })
    .await;
}

/// Checks the history: no promise broken, no operation failed (for lack of replicas: no
/// two clients write one key), and every acknowledged write is in each key's final value
/// (read with r = n).
async fn check(client: &Client, history: &[Op]) {
    let violations = check_history(history);
    assert!(violations.is_empty(), "{violations:#?}");
    let failed: Vec<&Op> = history
        .iter()
        .filter(|op| matches!(&op.outcome, Outcome::Failed(_) | Outcome::Indeterminate(_)))
        .collect();
    assert!(failed.is_empty(), "operations failed during the move: {failed:#?}");
    let all = ReadOptions {
        r: Some(3),
        ..ReadOptions::default()
    };
    let mut finals = BTreeMap::new();
    for key in history.iter().map(|op| op.key.clone()).collect::<BTreeSet<_>>() {
        let found = client.get_with(key.clone(), &all).await.expect("final read");
        let record = found.map(|v| Record {
            version: v.version,
            value: Some(v.value),
        });
        finals.insert(key, record);
    }
    let violations = check_final(history, &finals);
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Every key of `keys` is held by exactly its replicas in `history`'s layout.
async fn placed_exactly(client: &Client, history: &LayoutHistory, ids: &[String], keys: &[String]) {
    let ring = history.ring_of(history.newest()).unwrap();
    for key in keys {
        let replicas: BTreeSet<String> = ring
            .replicas(ring.partition_of(key.as_bytes()))
            .iter()
            .map(|&r| ring.members()[r].clone())
            .collect();
        for id in ids {
            let copy = client.get_from(id, key.clone()).await.expect("own copy");
            assert_eq!(
                copy.is_some(),
                replicas.contains(id),
                "{key} on {id}: replicas are {replicas:?}"
            );
        }
    }
}

fn all_keys() -> Vec<String> {
    (0..PRELOADED).map(|i| format!("p{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_from_three_to_four_moves_a_share_and_loses_nothing() {
    let (mut cluster, client) = preloaded(3).await;
    let n4 = cluster.start_joining().await;
    let refused = cluster
        .ask(
            n4,
            Request::Get {
                epoch: client.epoch(),
                key: "p1".into(),
            },
        )
        .await;
    assert!(
        matches!(&refused, Response::Error(e) if e.kind == ErrorKind::UnknownNode),
        "a node no layout names serves nothing: {refused:?}"
    );

    let workload = Workload::start(&cluster).await;
    workload.run_ops(100).await;
    let added = Change::Add {
        id: cluster.id(n4),
        addr: cluster.member(n4).addr,
    };
    let history = client.change_layout("n1", added.clone()).await.expect("n4 is added");
    assert!(history.moving());
    assert_eq!(history.newest().version, 2);
    let again = client.change_layout("n1", added).await.unwrap_err().to_string();
    assert!(
        again.contains("already a member") || again.contains("under way"),
        "{again}"
    );
    // n2 stops before every member has acked the new layout: the move waits for it, and
    // resumes from its stored history when it is back.
    cluster.stop(1).await;
    workload.run_ops(50).await;
    cluster.restart(1).await;
    workload.run_ops(50).await;
    let ids: Vec<String> = (0..4).map(|i| cluster.id(i)).collect();
    move_done(&client, &ids, 2).await;
    workload.run_ops(100).await;
    let ops = workload.stop().await;
    check(&client, &ops).await;

    let history = client.fetch_layout("n1").await.unwrap();
    placed_exactly(&client, &history, &ids, &all_keys()).await;
    let n4_keys: u64 = client
        .partition_keys("n4", (0..256).collect())
        .await
        .unwrap()
        .iter()
        .map(|p| p.keys)
        .sum();
    let share = (PRELOADED + WORKLOAD_KEYS) as f64 * 3.0 / 4.0;
    assert!(
        (n4_keys as f64) > share * 0.6 && (n4_keys as f64) < share * 1.4,
        "n4 holds {n4_keys} keys, about {share} expected"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_four_to_five_then_shrinking_back_survives_restarts_of_the_coordinator_and_a_new_node() {
    let (mut cluster, client) = preloaded(4).await;
    let n5 = cluster.start_joining().await;
    let workload = Workload::start(&cluster).await;
    workload.run_ops(50).await;

    // Grow: n1 makes the change and stops before telling anyone; the move waits for it
    // and resumes from n1's stored history when it is back.
    let added = Change::Add {
        id: cluster.id(n5),
        addr: cluster.member(n5).addr,
    };
    client.change_layout("n1", added).await.expect("n5 is added");
    cluster.stop(0).await;
    workload.run_ops(50).await;
    cluster.restart(0).await;
    let ids: Vec<String> = (0..5).map(|i| cluster.id(i)).collect();
    move_done(&client, &ids, 2).await;
    workload.run_ops(50).await;

    // Shrink: n2 leaves; n5 restarts in the middle of the move.
    let removed = Change::Remove {
        id: "n2".into(),
        gone: false,
    };
    let history = client.change_layout("n3", removed).await.expect("n2 is removed");
    assert_eq!(history.newest().version, 3);
    workload.run_ops(30).await;
    cluster.stop(n5).await;
    workload.run_ops(50).await;
    cluster.restart(n5).await;
    move_done(&client, &ids, 3).await;
    workload.run_ops(50).await;
    let ops = workload.stop().await;
    check(&client, &ops).await;

    let history = client.fetch_layout("n1").await.unwrap();
    assert!(!history.members().contains(&1), "n2 owns nothing");
    placed_exactly(&client, &history, &ids, &all_keys()).await;
    let left_on_n2 = client.partition_keys("n2", (0..256).collect()).await.unwrap();
    assert!(left_on_n2.iter().all(|p| p.keys == 0), "n2 dropped everything");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_dead_node_refills_its_partitions_from_the_others() {
    let (mut cluster, client) = preloaded(4).await;
    // n3 dies with its disk.
    cluster.stop(2).await;
    cluster.wipe(2);
    let n5 = cluster.start_joining().await;
    let workload = Workload::start(&cluster).await;
    workload.run_ops(50).await;
    let replaced = Change::Replace {
        old: "n3".into(),
        new: cluster.id(n5),
        addr: cluster.member(n5).addr,
    };
    let history = client.change_layout("n1", replaced).await.expect("n3 is replaced");
    assert_eq!(history.newest().gone, vec!["n3".to_string()]);
    workload.run_ops(50).await;
    cluster.stop(n5).await;
    workload.run_ops(30).await;
    cluster.restart(n5).await;
    let ids: Vec<String> = [0, 1, 3, 4].iter().map(|&i| cluster.id(i)).collect();
    move_done(&client, &ids, 2).await;
    workload.run_ops(50).await;
    let ops = workload.stop().await;
    check(&client, &ops).await;

    let history = client.fetch_layout("n1").await.unwrap();
    placed_exactly(&client, &history, &ids, &all_keys()).await;
    // Every preloaded key is on all three of its replicas again, n5 included.
    let all = ReadOptions {
        r: Some(3),
        ..ReadOptions::default()
    };
    for key in all_keys() {
        assert!(client.get_with(key.clone(), &all).await.unwrap().is_some(), "{key}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_move_reads_stay_with_the_old_owners_and_writes_need_both_layouts() {
    // Pulls at 20 keys/s: n4 takes many seconds to fill.
    let slow = format!("{FAST}\nanti_entropy_keys_per_sec = 20");
    let mut cluster = TestCluster::start(Shape::three().with(&slow)).await;
    let client = cluster.client().await;
    preload(&client).await;
    let n4 = cluster.start_joining().await;
    let added = Change::Add {
        id: cluster.id(n4),
        addr: cluster.member(n4).addr,
    };
    client.change_layout("n1", added).await.expect("n4 is added");
    wait_until("n4 starts pulling", MOVE_DEADLINE, || async {
        let status = client.move_status("n4").await.map_err(|e| e.to_string())?;
        (!status.pulling.is_empty()).then_some(()).ok_or(format!("{status:?}"))
    })
    .await;
    // One answer is enough for these reads: were n4 (still nearly empty) asked, its "not
    // found" would often be the first.
    let one = ReadOptions {
        r: Some(1),
        ..ReadOptions::default()
    };
    for key in all_keys() {
        let found = client.get_with(key.clone(), &one).await.expect("a read");
        assert!(found.is_some(), "{key} not found in the middle of the move");
    }
    let status = client.move_status("n4").await.unwrap();
    assert!(!status.pulling.is_empty(), "the reads ran while n4 was still filling");

    // Writes need a quorum in the new layout too: with n4 cut off, a write with w = 3
    // fails for a key n4 now replicates, and succeeds for one it does not.
    let history = client.layout();
    assert!(history.moving());
    let new = history.ring_of(history.newest()).unwrap();
    let gains_n4 = |key: &String| new.replicas(new.partition_of(key.as_bytes())).contains(&n4);
    let keys = all_keys();
    let (to_n4, elsewhere) = (
        keys.iter().find(|k| gains_n4(k)).unwrap(),
        keys.iter().find(|k| !gains_n4(k)).unwrap(),
    );
    cluster.isolate(n4);
    let all = WriteOptions {
        w: Some(3),
        ..WriteOptions::default()
    };
    let refused = client.put_with(to_n4.clone(), "x", &all).await.unwrap_err().to_string();
    assert!(refused.contains("n4"), "{refused}");
    client
        .put_with(elsewhere.clone(), "x", &all)
        .await
        .expect("n4 is no replica of it");
    cluster.heal();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_that_does_not_answer_is_refused() {
    let cluster = TestCluster::start(Shape::three().with(FAST)).await;
    let client = cluster.client().await;
    let nobody = common::free_addrs(1)[0];
    let added = Change::Add {
        id: "n4".into(),
        addr: nobody,
    };
    let refused = client.change_layout("n1", added).await.unwrap_err().to_string();
    assert!(refused.contains("does not answer"), "{refused}");
    let history = client.fetch_layout("n1").await.unwrap();
    assert!(!history.moving() && history.newest().version == 1, "nothing changed");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dead_in_a_move_is_skipped_then_replaced() {
    let (mut cluster, client) = preloaded(4).await;
    // n3 dies for good; then n5 is added: the move waits for n3's acknowledgement.
    cluster.stop(2).await;
    let n5 = cluster.start_joining().await;
    let added = Change::Add {
        id: cluster.id(n5),
        addr: cluster.member(n5).addr,
    };
    client.change_layout("n1", added).await.expect("n5 is added");
    let alive: Vec<String> = [0, 1, 3, 4].iter().map(|&i| cluster.id(i)).collect();
    wait_until("every live member acks", MOVE_DEADLINE, || async {
        let history = client.fetch_layout("n1").await.map_err(|e| e.to_string())?;
        let acked = |id: &String| history.progress.get(id).is_some_and(|p| p.ack == 2);
        match alive.iter().all(acked) {
            true => Ok(history),
            false => Err(format!("{:?}", history.progress)),
        }
    })
    .await;
    assert!(
        client.fetch_layout("n1").await.unwrap().moving(),
        "the move waits for n3"
    );

    let history = client
        .change_layout("n2", Change::Skip { id: "n3".into() })
        .await
        .expect("n3 is skipped");
    assert_eq!(history.newest().gone, vec!["n3".to_string()]);
    move_done(&client, &alive, 2).await;

    let n6 = cluster.start_joining().await;
    let replaced = Change::Replace {
        old: "n3".into(),
        new: cluster.id(n6),
        addr: cluster.member(n6).addr,
    };
    client.change_layout("n1", replaced).await.expect("n3 is replaced");
    let ids: Vec<String> = [0, 1, 3, 4, 5].iter().map(|&i| cluster.id(i)).collect();
    move_done(&client, &ids, 3).await;
    let all = ReadOptions {
        r: Some(3),
        ..ReadOptions::default()
    };
    for key in all_keys() {
        assert!(client.get_with(key.clone(), &all).await.unwrap().is_some(), "{key}");
    }
    let history = client.fetch_layout("n1").await.unwrap();
    placed_exactly(&client, &history, &ids, &all_keys()).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_another_cluster_shape_refuses_to_start() {
    let mut cluster = TestCluster::start(Shape::three()).await;
    cluster.stop(0).await;
    let mut reshaped = cluster.config.clone();
    reshaped.partitions = 512;
    let parts = quorumkv::node::NodeParts::real(&reshaped, "n1", None).expect("parts");
    let refused = quorumkv::node::Node::start(&reshaped, "n1", parts)
        .err()
        .expect("refused");
    let message = format!("{refused:#}");
    assert!(message.contains("the shape of a cluster cannot change"), "{message}");
    cluster.shutdown().await;
}
