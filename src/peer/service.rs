//! [`PeerService`]: answers other nodes' pings, anti-entropy steps and hint deliveries.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use quorumkv_client::clock::Clock;
use quorumkv_client::ring::Ring;

use super::{KeyedRecord, PeerRequest, PeerResponse, EXCHANGE_BYTES};
use crate::antientropy::Agreement;
use crate::merkle::Hash;
use crate::server::{AnswerSize, Handler};
use crate::storage::{Storage, StorageError};

/// Reads of pulled keys in flight at once.
const READ_CONCURRENCY: usize = 64;

/// Answers the peer protocol from this node's storage and trees.
pub struct PeerService {
    storage: Arc<dyn Storage>,
    agreement: Arc<Agreement>,
    clock: Arc<dyn Clock>,
    ring: Ring,
}

impl PeerService {
    /// A service over `storage`, recording agreements in `agreement`.
    pub fn new(storage: Arc<dyn Storage>, agreement: Arc<Agreement>, clock: Arc<dyn Clock>, ring: Ring) -> Self {
        PeerService {
            storage,
            agreement,
            clock,
            ring,
        }
    }

    fn roots(&self, from: &str, roots: Vec<(u32, Hash)>) -> PeerResponse {
        let forest = self.storage.forest();
        if !forest.is_ready() {
            return PeerResponse::NotReady;
        }
        let peer = self.ring.members().iter().position(|m| m == from);
        let now = self.clock.now_micros();
        let mut partitions = Vec::new();
        for (partition, theirs) in roots.into_iter().filter(|(p, _)| *p < self.ring.partitions()) {
            if forest.root(partition) != theirs {
                partitions.push((partition, forest.inner(partition).to_vec()));
            } else if let Some(peer) = peer {
                self.agreement.agreed(partition, peer, now);
            }
        }
        PeerResponse::Inner { partitions }
    }

    async fn leaves(&self, leaves: Vec<(u32, u32, Hash)>) -> Result<PeerResponse, StorageError> {
        let forest = self.storage.forest();
        let shape = forest.shape();
        let mut out = Vec::new();
        for (partition, leaf, theirs) in leaves {
            let valid = partition < self.ring.partitions() && (leaf as usize) < shape.leaves();
            if !valid || forest.leaf(partition, leaf as usize) == theirs {
                continue;
            }
            let (start, end) = shape.leaf_range(partition, leaf as usize);
            out.push((partition, leaf, self.storage.entries(start, end).await?));
        }
        Ok(PeerResponse::Entries { leaves: out })
    }

    async fn exchange(&self, push: Vec<KeyedRecord>, pull: Vec<Bytes>) -> Result<PeerResponse, StorageError> {
        let applies = push.into_iter().map(|r| self.storage.apply(r.key, r.record));
        let mut applied = Vec::new();
        for outcome in join_all(applies).await {
            applied.push(outcome?.applied);
        }
        let (records, unserved) = self.read_up_to(pull, EXCHANGE_BYTES).await?;
        Ok(PeerResponse::Exchanged {
            applied,
            records,
            unserved,
        })
    }

    /// The records of `keys` (absent keys left out) until they add up to `max_bytes`
    /// (plus at most one record); the keys not reached are returned for a later request.
    async fn read_up_to(
        &self,
        keys: Vec<Bytes>,
        max_bytes: usize,
    ) -> Result<(Vec<KeyedRecord>, Vec<Bytes>), StorageError> {
        let (mut records, mut unserved, mut bytes) = (Vec::new(), Vec::new(), 0);
        for chunk in keys.chunks(READ_CONCURRENCY) {
            if bytes >= max_bytes {
                unserved.extend_from_slice(chunk);
                continue;
            }
            let reads = chunk
                .iter()
                .map(|key| async move { (key.clone(), self.storage.get(key.clone()).await) });
            for (key, found) in join_all(reads).await {
                match found? {
                    Some(_) if bytes >= max_bytes => unserved.push(key),
                    Some(record) => {
                        let record = KeyedRecord { key, record };
                        bytes += record.size();
                        records.push(record);
                    }
                    None => {}
                }
            }
        }
        Ok((records, unserved))
    }
}

impl Handler for PeerService {
    type Request = PeerRequest;
    type Response = PeerResponse;

    async fn handle(self: Arc<Self>, request: PeerRequest) -> PeerResponse {
        let result = match request {
            PeerRequest::Ping => Ok(PeerResponse::Pong),
            PeerRequest::Roots { from, roots } => Ok(self.roots(&from, roots)),
            PeerRequest::Leaves { leaves } => self.leaves(leaves).await,
            PeerRequest::Exchange { push, pull } => self.exchange(push, pull).await,
        };
        result.unwrap_or_else(|e| PeerResponse::Error(e.to_string()))
    }

    /// A pong is small; anti-entropy and hint answers may fill a frame.
    fn answer_size(&self, request: &PeerRequest) -> AnswerSize {
        match request {
            PeerRequest::Ping => AnswerSize::Small,
            _ => AnswerSize::Large,
        }
    }

    fn malformed(&self, why: String) -> PeerResponse {
        PeerResponse::Error(format!("malformed frame: {why}"))
    }
}
