//! The tombstone rule through the real path: replicas that lack a key whose tombstone
//! expired elsewhere (wiped, or never told) let the others purge it, every partition comes
//! back into agreement, and nothing deleted comes back.

mod common;

use std::time::Duration;

use common::converge::{in_agreement, shape, w, write_keys, AE_ON, HINTS_OFF};
use common::{copies, wait_until, TestCluster};
use futures_util::stream::{self, StreamExt};
use quorumkv_client::clock::system_clock;
use quorumkv_client::{Client, ReadOptions};

const GRACE_MS: u64 = 1_500;
const DEADLINE: Duration = Duration::from_secs(45);

/// Deletes every key of `keys` with w = 2 (the stopped node misses them).
async fn delete_all(client: &Client, keys: &[String]) {
    stream::iter(keys)
        .for_each_concurrent(16, |key| async move {
            client.delete_with(key.clone(), &w(2)).await.expect("delete");
        })
        .await;
}

/// Waits until the grace period has passed since now.
async fn wait_out_the_grace() {
    let over = system_clock().now_micros() + GRACE_MS * 1_000;
    wait_until("the tombstone grace passes", DEADLINE, || async {
        match system_clock().now_micros() > over {
            true => Ok(()),
            false => Err("within the grace".to_string()),
        }
    })
    .await;
}

/// Deletes 200 keys while n3 is down, waits out the grace, brings n3 back (wiped, or
/// not) and checks that the tombstones go everywhere, the partitions agree again, and
/// no deleted key reads back.
async fn deletes_missed_by_n3(wipe: bool) {
    let settings = [AE_ON, HINTS_OFF, &format!("tombstone_grace_ms = {GRACE_MS}")];
    let mut cluster = TestCluster::start(shape(&settings)).await;
    let client = cluster.client().await;
    let ids: Vec<String> = (0..3).map(|i| cluster.id(i)).collect();
    let keys: Vec<String> = write_keys(&client, "gone", 200, w(3))
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    cluster.stop(2).await;
    delete_all(&client, &keys).await;
    assert!(client.finish_background(DEADLINE).await);
    wait_out_the_grace().await;
    if wipe {
        cluster.wipe(2);
    }
    cluster.restart(2).await;

    wait_until("no replica holds any of the keys", DEADLINE, || async {
        for key in &keys {
            let held = copies(&client, &ids, key).await?;
            if held.iter().any(Option::is_some) {
                return Err(format!("{key}: {held:?}"));
            }
        }
        Ok(())
    })
    .await;
    wait_until("every partition in agreement", DEADLINE, || in_agreement(&client, &ids)).await;
    let all = ReadOptions {
        r: Some(3),
        ..Default::default()
    };
    for key in &keys {
        assert_eq!(
            client.get_with(key.clone(), &all).await.unwrap(),
            None,
            "{key} came back"
        );
    }
    cluster.shutdown().await;
}

/// Before: the two replicas holding the tombstones waited for their roots to equal the
/// wiped replica's, which never happens (it lacks them and does not pull expired ones), so
/// they kept the tombstones, and their partitions stayed apart, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_wiped_after_the_grace_lets_the_others_purge_and_agree() {
    deletes_missed_by_n3(true).await;
}

/// A replica that was down during the deletes comes back with the old values: it must
/// get the tombstones (they beat its older values, expired or not) before anyone purges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_with_old_values_after_the_grace_gets_the_deletes() {
    deletes_missed_by_n3(false).await;
}

/// Scale check (issue 14 items 4 and 5), outside the default run:
/// `cargo test --release --test tombstones -- --ignored --nocapture`. 12,000 deletes,
/// then steady deletes of other keys at `STEADY_RATE` per second (default 4,000) for
/// `STEADY_SECS` (default 60): the 12,000 expired tombstones (checked on a sample of
/// 1,000 keys, every replica's own copy) must all be purged while the deletes still run,
/// and once they stop every partition must come back into agreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale check: minutes of steady deletes"]
async fn steady_deletes_do_not_starve_purging_or_keep_partitions_apart() {
    let setting = |name: &str, default: u64| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let steady = Duration::from_secs(setting("STEADY_SECS", 60));
    let period = Duration::from_secs(1) / setting("STEADY_RATE", 4_000).max(1) as u32;
    let settings = [AE_ON, HINTS_OFF, "tombstone_grace_ms = 5000"];
    let cluster = TestCluster::start(shape(&settings)).await;
    let client = cluster.client().await;
    let ids: Vec<String> = (0..3).map(|i| cluster.id(i)).collect();
    let old: Vec<String> = (0..12_000).map(|i| format!("old{i}")).collect();
    stream::iter(&old)
        .for_each_concurrent(64, |key| async {
            client.delete_with(key.clone(), &w(3)).await.expect("delete");
        })
        .await;
    let started = std::time::Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let steady_deletes = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let deleted = std::sync::atomic::AtomicU64::new(0);
            let paced = stream::unfold((tokio::time::interval(period), 0u64), |(mut every, i)| async move {
                every.tick().await;
                Some((i, (every, i + 1)))
            });
            paced
                .take_until(stop.cancelled())
                .for_each_concurrent(64, |i| {
                    let (client, deleted) = (&client, &deleted);
                    async move {
                        if client.delete(format!("new{i}")).await.is_ok() {
                            deleted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
                .await;
            deleted.into_inner()
        })
    };
    let mut purged_at = None;
    let mut held: Vec<&String> = old.iter().step_by(12).collect();
    while started.elapsed() < steady {
        let mut still = Vec::new();
        for key in held {
            let copies = copies(&client, &ids, key)
                .await
                .map_or(3, |c| c.iter().flatten().count());
            if copies > 0 {
                still.push(key);
            }
        }
        held = still;
        println!(
            "{:>4} s: {} of 1,000 sampled old keys still held as tombstones",
            started.elapsed().as_secs(),
            held.len()
        );
        if held.is_empty() && purged_at.is_none() {
            purged_at = Some(started.elapsed());
        }
        if purged_at.is_some() {
            // The deletes go on for the whole STEADY_SECS: what counts next is agreement
            // once they stop.
            tokio::time::sleep_until((started + steady).into()).await;
        }
    }
    stop.cancel();
    let deleted = steady_deletes.await.expect("steady deletes");
    println!("steady deletes: {deleted} in {:?}", started.elapsed());
    let purged_at = purged_at.expect("every old tombstone purged while the deletes ran");
    println!("old tombstones all purged after {purged_at:?}");
    let calm = std::time::Instant::now();
    wait_until("every partition in agreement", Duration::from_secs(180), || {
        in_agreement(&client, &ids)
    })
    .await;
    println!(
        "every partition in agreement {:?} after the deletes stopped",
        calm.elapsed()
    );
    cluster.shutdown().await;
}
