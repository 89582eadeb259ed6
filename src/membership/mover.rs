//! The task that moves this node's part of a layout change forward, one step per change
//! of the history or per ping interval:
//!
//! 1. **ack**: the newest layout is installed (requests routed without it are refused
//!    from then on); once the store has applied every write accepted before, publish it.
//! 2. **sync**: once every member acked, pull each partition this node gains from each of
//!    its old owners (anti-entropy runs the pulls, [`super::Membership::synced`] counts
//!    them); when none is left, publish it.
//! 3. **sync_ack**: once every member synced, reads use the new layout; publish that this
//!    node knows it. Once every member has, the old layout retires (in the history's merge).
//! 4. **drop**: with one layout in use, hand off and drop the partitions this node no
//!    longer replicates ([`super::handoff`]), one at a time.
//!
//! Each published counter spreads with the history at the next pings. A node restarted
//! mid-move reloads its history and redoes the step it was at (pulls start over; those
//! already done find nothing to pull).

use std::sync::Arc;
use std::time::Duration;

use quorumkv_client::layout::Progress;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handoff::{drop_partition, lost_partitions};
use crate::antientropy::AntiEntropy;
use crate::context::NodeContext;

/// How often a long hand-over logs how far it is.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Moves this node's part of every layout change forward until `shutdown`.
pub async fn run(ctx: Arc<NodeContext>, shutdown: CancellationToken) {
    let tick = Duration::from_millis(ctx.convergence.ping_interval_ms);
    let pusher = AntiEntropy::new(ctx.clone());
    let mut last_log = Instant::now();
    // When nothing was left to drop, and for which layout epoch: then the store is scanned
    // again only once the layout changes, or an anti-entropy interval later (a hint for
    // an old owner can still land in a partition it dropped).
    let rescan = Duration::from_millis(ctx.convergence.anti_entropy_interval_ms);
    let mut nothing_to_drop: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = ctx.membership.changed() => {}
            _ = tokio::time::sleep(tick) => {}
        }
        if let Err(e) = step(&ctx).await {
            tracing::warn!("layout change: {e}");
        }
        if last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            if let Some((version, left, total)) = ctx.membership.pulls_left().filter(|p| p.1 > 0) {
                tracing::info!("layout {version}: {left} of {total} partition pulls left");
                last_log = Instant::now();
            }
        }
        let epoch = ctx.layout().epoch;
        if nothing_to_drop.is_some_and(|(at, when)| at == epoch && when.elapsed() < rescan) {
            continue;
        }
        let lost = match lost_partitions(&ctx).await {
            Ok(lost) => lost,
            Err(e) => {
                tracing::warn!("listing partitions to drop failed: {e}");
                continue;
            }
        };
        if lost.is_empty() && !ctx.layout().history.moving() {
            nothing_to_drop = Some((epoch, Instant::now()));
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = drop_all(&ctx, &pusher, &lost) => {}
        }
    }
}

/// Hands off and drops `lost` one partition after the other (each paced by the
/// anti-entropy budget); stops at the first that cannot go yet (a replica down), to try
/// again at the next step.
async fn drop_all(ctx: &Arc<NodeContext>, pusher: &AntiEntropy, lost: &[u32]) {
    for (done, &partition) in lost.iter().enumerate() {
        match drop_partition(ctx, pusher, partition).await {
            Ok(keys) => tracing::info!(
                "partition {partition} handed off and dropped ({keys} keys); {} left to drop",
                lost.len() - done - 1
            ),
            Err(e) => {
                tracing::info!("not dropping yet: {e}");
                return;
            }
        }
    }
}

/// One step of the move (see the module doc); publishes at most one counter.
async fn step(ctx: &NodeContext) -> anyhow::Result<()> {
    let membership = &ctx.membership;
    let layout = membership.get();
    let Some(me) = layout.me else { return Ok(()) };
    if ctx.refill.any() {
        let shared: Vec<Vec<usize>> = (0..layout.read.partitions()).map(|p| layout.replicas(p)).collect();
        ctx.refill.keep_shared(|partition, peer| {
            shared
                .get(partition as usize)
                .is_some_and(|r| r.contains(&me) && r.contains(&peer))
        });
    }
    let history = &layout.history;
    let version = history.newest().version;
    let mine = layout.my_progress(membership.id());
    if mine.ack < version {
        // Every write accepted under an older layout is applied before the node says so:
        // a request's layout check and its queueing on the store happen in one poll (the
        // node runs one current-thread runtime), so the flush queued here comes after
        // every write checked against the old layout.
        ctx.storage.flush().await?;
        membership.advance(Progress { ack: version, ..mine }).await?;
        tracing::info!("layout {version}: in use here");
        return Ok(());
    }
    if history.all_acked() && mine.sync < version {
        let gone: Vec<usize> = history
            .newest()
            .gone
            .iter()
            .filter_map(|g| history.index_of(g))
            .collect();
        let left = match membership.pulls_left() {
            Some((pulling, _, _)) if pulling == version => membership.forget_sources(&gone),
            _ => {
                let pulls = history.pulls_for(me)?;
                let partitions = pulls.iter().map(|p| p.0).collect::<std::collections::BTreeSet<_>>();
                let total = membership.start_pulls(version, pulls);
                if total > 0 {
                    tracing::info!(
                        "layout {version}: every member uses it; pulling {} partitions ({total} partition-source pairs)",
                        partitions.len()
                    );
                }
                total
            }
        };
        if left == 0 {
            membership.advance(Progress { sync: version, ..mine }).await?;
            tracing::info!("layout {version}: everything this node gains is here");
        }
        return Ok(());
    }
    if history.all_synced() && mine.sync_ack < version {
        membership.advance(Progress::done(version)).await?;
        tracing::info!("layout {version}: every member synced; reads use it");
    }
    Ok(())
}
