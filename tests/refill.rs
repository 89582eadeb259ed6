//! Refilling and finding peers again after faults, through the real path: a wiped node
//! refilled from more data than one peer message can carry, a peer that stops answering
//! without delaying the others, and a node restarted on its address seen up at once.

mod common;

use std::time::Duration;

use common::converge::{in_agreement, shape, w, wait_until_node_holds, write_keys, AE_ON, HINTS_OFF};
use common::{wait_until, Shape, TestCluster};
use quorumkv_client::clock::system_clock;
use quorumkv_client::Client;

/// Keys of ~1,000 bytes, so that a few thousand of them outgrow one peer message.
fn long_prefix() -> String {
    format!("{}-", "k".repeat(990))
}

/// With values limited to 4 KiB a peer frame holds ~4.2 MB; 5,000 keys of ~1,000 bytes
/// make ~5 MB of key/version entries, more than one answer could carry before answers
/// were paged (the wiped node then never got a single key back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_refilled_when_its_entries_outgrow_one_message() {
    let settings = [AE_ON, HINTS_OFF, "[limits]\nmax_value_bytes = 4096"];
    let mut cluster = TestCluster::start(shape(&settings)).await;
    let client = cluster.client().await;
    let keys = write_keys(&client, &long_prefix(), 5_000, w(3)).await;
    cluster.stop(2).await;
    cluster.wipe(2);
    cluster.restart(2).await;
    wait_until_node_holds(&client, "n3", &keys).await;
    wait_until(
        "n3 agrees with both peers on every partition",
        Duration::from_secs(60),
        || in_agreement(&client, &["n3"]),
    )
    .await;
    cluster.shutdown().await;
}

/// Micros since the epoch at which every partition `id` shares with `peer` last agreed
/// (the oldest of them), if all have.
async fn oldest_agreement(client: &Client, id: &str, peer: &str) -> Result<u64, String> {
    let status = client.status(id).await.map_err(|e| e.to_string())?;
    let times = status
        .partitions
        .iter()
        .flat_map(|p| p.replicas.iter().filter(|r| r.peer == peer));
    times
        .map(|r| r.last_agreed_micros.ok_or(format!("{id} not in agreement with {peer}")))
        .try_fold(u64::MAX, |oldest, t| Ok(oldest.min(t?)))
}

/// A peer that stops answering but is not marked down yet (here: never, so it stays
/// "up") used to hold each round of its peers for the 30 s timeout of its sync, so the
/// healthy pair agreed once every 30 s at best.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_does_not_delay_anti_entropy_between_the_others() {
    let never_down =
        "[convergence]\nanti_entropy_interval_ms = 300\nhinted_handoff = false\ndown_after_missed_pings = 1000000";
    let cluster = TestCluster::start(Shape::three().with(never_down)).await;
    let client = cluster.client().await;
    write_keys(&client, "k", 100, w(3)).await;
    // Connections to n1 are up and carrying syncs before it goes silent: each of n2 and
    // n3 has agreed with it and started a dozen syncs of its own (so it dialled n1 itself).
    for (id, peer) in [("n2", "n1"), ("n3", "n1")] {
        wait_until(&format!("{id} agrees with {peer}"), Duration::from_secs(20), || {
            oldest_agreement(&client, id, peer)
        })
        .await;
        wait_until(
            &format!("{id} syncs a dozen times"),
            Duration::from_secs(20),
            || async {
                let rounds = client.status(id).await.map_err(|e| e.to_string())?.anti_entropy.rounds;
                match rounds >= 12 {
                    true => Ok(()),
                    false => Err(format!("{rounds} syncs")),
                }
            },
        )
        .await;
    }
    cluster.isolate(0);
    // Two seconds past the cut: a sync that was under way when it happened cannot count.
    let after = system_clock().now_micros() + 2_000_000;
    wait_until(
        "n2 and n3 agree again after n1 went silent",
        Duration::from_secs(20),
        || async {
            let oldest = oldest_agreement(&client, "n2", "n3").await?;
            match oldest > after {
                true => Ok(()),
                false => Err(format!(
                    "oldest agreement {} ms before the mark",
                    (after - oldest) / 1000
                )),
            }
        },
    )
    .await;
    cluster.heal();
    cluster.shutdown().await;
}

/// A node that vanished without closing its connections (a kill, a power cut) and came
/// back on the same address: its peers' old connections never hear from it again, and
/// used to carry the pings until their 30 s idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_on_its_address_after_vanishing_is_seen_up_at_once() {
    let mut cluster = TestCluster::start(shape(&[HINTS_OFF])).await;
    let client = cluster.client().await;
    let n3_is = |up: bool| {
        let client = &client;
        move || async move {
            let status = client.status("n1").await.map_err(|e| e.to_string())?;
            let n3 = status.peers.iter().find(|p| p.id == "n3").ok_or("n3 not listed")?;
            match n3.up == up {
                true => Ok(()),
                false => Err(format!("n3: {n3:?}")),
            }
        }
    };
    wait_until("n1 sees n3 up", Duration::from_secs(10), n3_is(true)).await;
    // Its goodbye is lost: to its peers n3 just stops answering.
    cluster.isolate(2);
    cluster.stop(2).await;
    wait_until("n1 marks n3 down", Duration::from_secs(10), n3_is(false)).await;
    cluster.heal();
    cluster.restart(2).await;
    wait_until("n1 sees the restarted n3 up", Duration::from_secs(15), n3_is(true)).await;
    cluster.shutdown().await;
}
