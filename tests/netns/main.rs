//! The fault suite on real processes: `quorumkv node` processes, each in its own network
//! namespace on a bridge, concurrent clients in this process recording a history, faults
//! injected (kill -9 and restart, SIGSTOP/SIGCONT, one-way and partial partitions, a
//! wiped disk, clock skew, steady deletes with a short grace), then heal, convergence and
//! the history checker (`quorumkv::history`, promises P1-P4).
//!
//! Needs root, `ip` and `iptables` (and libfaketime for the clock scenario); without them
//! each scenario prints why and passes. Scenarios run one at a time (each wants the
//! machine's cores), each holds its faults for a number of client operations, and each
//! prints a report: operations checked, faults injected, time taken. `QKV_SEED` repeats a
//! run's choice of operations; `QKV_HISTORY_DIR` keeps each scenario's history there.

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod lab;
mod run;
mod workload;

use std::time::{Duration, Instant};

use quorumkv::history::{Outcome as OpOutcome, Rule};
use quorumkv_client::WriteOptions;

use cluster::libfaketime;
use common::wait_until;
use run::{shape, Run, FAST_CONVERGENCE, PHASE};
use workload::Mix;

/// How long the clock scenario tries for a w = 3 write to land or be refused (a loaded
/// machine may time a single attempt out).
const SKEW_DEADLINE: Duration = Duration::from_secs(10);
/// How soon a restarted node must take an existing client's writes again: well below
/// the 30 s QUIC idle timeout after which a client gives up a connection on its own.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_kill9_restart_and_sigstop() {
    let Some(mut run) = Run::begin("kill9-sigstop-3", shape(3, FAST_CONVERGENCE), vec![], Mix::DEFAULT).await else {
        return;
    };
    run.ops(PHASE).await;
    run.cluster.kill(1);
    run.fault("kill -9 n2");
    run.ops(PHASE).await;
    run.cluster.restart(1);
    run.fault("restart n2");
    run.ops(PHASE).await;
    run.cluster.pause(2);
    run.fault("SIGSTOP n3");
    run.ops(PHASE).await;
    run.cluster.resume(2);
    run.fault("SIGCONT n3");
    run.cluster.kill(0);
    run.fault("kill -9 n1");
    run.ops(PHASE).await;
    run.cluster.restart(0);
    run.fault("restart n1");
    run.ops(PHASE).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_way_isolating_and_partial_partitions() {
    let Some(mut run) = Run::begin("partitions-3", shape(3, FAST_CONVERGENCE), vec![], Mix::DEFAULT).await else {
        return;
    };
    run.ops(PHASE).await;
    run.cluster.lab.cut(0, &[1], false);
    run.fault("one-way cut: n1's packets to n2 dropped");
    run.ops(PHASE).await;
    run.cluster.lab.heal();
    run.fault("heal");
    run.ops(PHASE / 2).await;
    run.cluster.lab.isolate(2);
    run.fault("n3 isolated from nodes and clients");
    run.ops(PHASE).await;
    run.cluster.lab.heal();
    run.fault("heal");
    run.ops(PHASE / 2).await;
    run.cluster.lab.cut(0, &[2], true);
    run.fault("n1 cut from n3 only (both ways); n2 reaches both");
    run.ops(PHASE).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_partial_cuts_and_a_wiped_disk() {
    let Some(mut run) = Run::begin("five-nodes-5", shape(5, FAST_CONVERGENCE), vec![], Mix::DEFAULT).await else {
        return;
    };
    run.ops(PHASE).await;
    run.cluster.lab.cut(0, &[1, 2], true);
    run.fault("n1 cut from n2 and n3 only (both ways)");
    run.ops(PHASE).await;
    run.cluster.lab.heal();
    run.cluster.kill(3);
    run.cluster.wipe(3);
    run.cluster.restart(3);
    run.fault("heal; kill -9 n4, wipe its data dir, restart it empty");
    run.ops(PHASE).await;
    run.cluster.lab.cut(4, &[0, 1], false);
    run.fault("one-way cut: n5's packets to n1 and n2 dropped");
    run.ops(PHASE).await;
    run.finish().await;
}

/// A node whose clock lags by less than `max_clock_skew_ms` takes every write; one that
/// lags by more refuses writes (named in the client's error), the others still make the
/// quorum, and once its clock is right it converges like the others. A node whose clock
/// leads takes everything throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_within_and_beyond_the_limit() {
    if libfaketime().is_none() {
        println!("SKIPPED clock skew: libfaketime is not installed (apt-get install faketime)");
        return;
    }
    let extra = format!("{FAST_CONVERGENCE}\n[limits]\nmax_clock_skew_ms = 2000\n");
    let skew = vec![None, Some("+3s".to_string()), Some("-1s".to_string())];
    let Some(mut run) = Run::begin("clock-skew-3", shape(3, &extra), skew, Mix::DEFAULT).await else {
        return;
    };
    run.fault("n2 clock +3 s, n3 clock -1 s (limit 2 s)");
    run.ops(PHASE).await;
    let all_three = WriteOptions {
        w: Some(3),
        ..Default::default()
    };
    let client = run.cluster.client().await;
    // Keys of their own: a workload write racing them would make them stale, not refused.
    let recorder = run.workload.recorder.clone();
    wait_until("a w = 3 write with n3 1 s behind", SKEW_DEADLINE, || async {
        let op = recorder.put(&client, 100, "skew-within", &all_three).await;
        match &op.outcome {
            OpOutcome::Written(_) => Ok(()),
            _ => Err(op.to_string()),
        }
    })
    .await;

    run.cluster.kill(2);
    run.cluster.set_skew(2, Some("-5s"));
    run.cluster.restart(2);
    let client = run.cluster.client().await;
    run.cluster.wait_all_up(&client).await;
    run.fault("n3 restarted with its clock -5 s (beyond the 2 s limit)");
    run.ops(PHASE).await;
    wait_until("n3 refuses a w = 3 write for its clock", SKEW_DEADLINE, || async {
        let op = recorder.put(&client, 100, "skew-beyond", &all_three).await;
        match &op.outcome {
            OpOutcome::Written(_) => panic!("n3 took a write 3 s past its clock limit: {op}"),
            OpOutcome::Indeterminate(why)
                if why.contains("n3: refused") && why.contains("ahead of this node's clock") =>
            {
                Ok(())
            }
            // A slow answer under load is not the refusal we wait for: try again.
            _ => Err(op.to_string()),
        }
    })
    .await;

    run.cluster.kill(2);
    run.cluster.set_skew(2, None);
    run.cluster.restart(2);
    run.fault("n3 restarted with the right clock");
    run.ops(PHASE).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_deletes_with_a_short_grace() {
    let extra = format!("{FAST_CONVERGENCE}tombstone_grace_ms = 1000\n");
    let mix = Mix {
        keys: 16,
        puts: 40,
        deletes: 25,
        blocking_reads: 15,
    };
    let Some(mut run) = Run::begin("deletes-3", shape(3, &extra), vec![], mix).await else {
        return;
    };
    run.ops(PHASE).await;
    run.cluster.kill(2);
    run.fault("kill -9 n3 (tombstone grace 1 s)");
    run.ops(PHASE).await;
    run.cluster.restart(2);
    run.fault("restart n3");
    run.ops(2 * PHASE).await;
    run.finish().await;
}

/// A client that used a node before it was killed reaches it again soon after it
/// restarts (each of its writes needs all three replicas).
///
/// It used to take the 30 s QUIC idle timeout: each node process started with a random
/// stateless-reset key and connection-id key (quinn's defaults), so the restarted node
/// dropped the old connection's packets ("dropping packet with invalid CID", DEBUG)
/// instead of resetting it, and the client kept sending into the dead connection. Now the
/// reset key comes from the node's TLS key ([`quorumkv::endpoint_config`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_serves_existing_clients_again() {
    let Some(mut run) = Run::begin("restart-reach-3", shape(3, FAST_CONVERGENCE), vec![], Mix::DEFAULT).await else {
        return;
    };
    let client = run.cluster.client().await;
    let all_three = WriteOptions {
        w: Some(3),
        ..Default::default()
    };
    let first = run.workload.recorder.put(&client, 100, "reach", &all_three).await;
    assert!(matches!(first.outcome, OpOutcome::Written(_)), "{first}");
    run.cluster.kill(2);
    run.cluster.restart(2);
    run.fault("kill -9 n3, restart it");
    let restarted = Instant::now();
    wait_until("n3 takes this client's writes again", RECONNECT_DEADLINE, || async {
        let op = run.workload.recorder.put(&client, 100, "reach", &all_three).await;
        match op.outcome {
            OpOutcome::Written(_) => Ok(()),
            _ => Err(op.to_string()),
        }
    })
    .await;
    run.fault(&format!(
        "n3 took a w = 3 write {:.1} s after restart",
        restarted.elapsed().as_secs_f64()
    ));
    run.finish().await;
}

/// The suite catches real loss: writes acknowledged by n2 and n3 while n1 was cut off
/// are gone once both are wiped, and the checker must say so (P1, and P2 for the final
/// reads), naming the keys and the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiping_two_of_three_replicas_is_reported_as_lost_writes() {
    let Some(mut run) = Run::begin("two-wiped-3", shape(3, FAST_CONVERGENCE), vec![], Mix::DEFAULT).await else {
        return;
    };
    run.cluster.lab.isolate(0);
    run.fault("n1 isolated");
    run.ops(PHASE / 2).await;
    run.workload.stop().await;
    for i in [1, 2] {
        run.cluster.kill(i);
        run.cluster.wipe(i);
        run.cluster.restart(i);
    }
    run.fault("clients stopped; n2 and n3 killed, wiped and restarted; heal");
    let outcome = run.check().await;
    let lost: Vec<_> = outcome
        .violations
        .iter()
        .filter(|v| v.rule == Rule::P1LostWrite)
        .collect();
    assert!(!lost.is_empty(), "no lost write reported: {:#?}", outcome.violations);
    assert!(lost[0].detail.contains("acknowledged at"), "{}", lost[0]);
    println!("  caught: {} violations, e.g. {}", outcome.violations.len(), lost[0]);
}
