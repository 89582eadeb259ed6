//! Helpers for convergence tests: fast convergence settings, writing many keys, waiting
//! until a node holds them.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use quorumkv_client::{Client, Version, WriteOptions};

use super::{wait_until, Shape};

/// How long a node may take to catch up in these tests.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Fast failure detection and delivery, for tests.
pub const FAST: &str =
    "[convergence]\nping_interval_ms = 100\ndown_after_missed_pings = 2\nhint_delivery_interval_ms = 100";
pub const AE_ON: &str = "anti_entropy_interval_ms = 300";
pub const AE_OFF: &str = "anti_entropy_interval_ms = 3600000";
pub const HINTS_ON: &str = "hinted_handoff = true";
pub const HINTS_OFF: &str = "hinted_handoff = false";

pub fn shape(settings: &[&str]) -> Shape {
    Shape::three().with(&[FAST].iter().chain(settings).copied().collect::<Vec<_>>().join("\n"))
}

pub fn w(w: usize) -> WriteOptions {
    WriteOptions {
        w: Some(w),
        ..Default::default()
    }
}

/// Writes `count` keys `{prefix}{i}` with `options`, 16 at a time; returns their versions.
pub async fn write_keys(client: &Client, prefix: &str, count: usize, options: WriteOptions) -> Vec<(String, Version)> {
    stream::iter(0..count)
        .map(|i| {
            let key = format!("{prefix}{i}");
            async move {
                let version = client.put_with(key.clone(), format!("value of {key}"), &options).await;
                (key.clone(), version.unwrap_or_else(|e| panic!("writing {key}: {e}")))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Waits until node `id` holds every key at (at least) its version.
pub async fn wait_until_node_holds(client: &Client, id: &str, keys: &[(String, Version)]) {
    let missing = std::sync::Mutex::new(keys.to_vec());
    let missing = &missing;
    wait_until(
        &format!("{id} holds all {} keys", keys.len()),
        DEADLINE,
        || async move {
            let check = std::mem::take(&mut *missing.lock().unwrap());
            {
                let still: Vec<(String, Version)> = stream::iter(check)
                    .map(|(key, version)| async move {
                        let held = client.get_from(id, key.clone()).await.ok().flatten();
                        let ok = held.is_some_and(|r| r.version >= version);
                        (!ok).then_some((key, version))
                    })
                    .buffer_unordered(32)
                    .filter_map(|x| async { x })
                    .collect()
                    .await;
                let result = match still.first() {
                    None => Ok(()),
                    Some((first, _)) => Err(format!("{} keys missing, e.g. {first}", still.len())),
                };
                *missing.lock().unwrap() = still;
                result
            }
        },
    )
    .await
}

/// Waits until every send of `client`, background ones included, has finished: then a
/// stopped replica has really missed the writes (a send still dialling it would otherwise
/// reach it once it restarts).
pub async fn settle(client: &Client) {
    assert!(client.finish_background(DEADLINE).await, "the client's sends finish");
}

pub fn keys_version(keys: &[(String, Version)], key: &str) -> Version {
    keys.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .expect("key was written")
}

/// `Ok` once every node of `ids` reports every partition in agreement with every other
/// replica (equal roots at their last comparison); else which node has how many apart.
pub async fn in_agreement(client: &Client, ids: &[impl AsRef<str>]) -> Result<(), String> {
    for id in ids.iter().map(AsRef::as_ref) {
        let status = client.status(id).await.map_err(|e| format!("{id}: {e}"))?;
        let apart = status
            .partitions
            .iter()
            .filter(|p| p.replicas.iter().any(|r| r.last_agreed_micros.is_none()))
            .count();
        if apart > 0 {
            return Err(format!(
                "{id}: {apart} of {} partitions not in agreement",
                status.partitions.len()
            ));
        }
    }
    Ok(())
}
