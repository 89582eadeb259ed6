//! [`PeerService`]: answers other nodes' pings, anti-entropy steps and hint deliveries.
//!
//! Only on authenticated connections: [`PeerService::authenticate`] turns a connection
//! whose node certificate names a member into a [`PeerSession`], the handler of that
//! connection, which knows the member every request on it comes from. A `Roots` request
//! claiming another sender is refused (agreement drives tombstone purging, so it must
//! not be spoofable), and every pushed record gets the checks a client write gets
//! ([`RecordLimits::check`]); refused records are answered as not applied and logged.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use quorumkv_client::clock::Clock;

use super::auth::{authenticate, PeerAuthError};
use super::{
    admit, log_refusals, KeyedRecord, LeafEntries, LeafProbe, PeerRequest, PeerResponse, ENTRIES_BYTES, EXCHANGE_BYTES,
};
use crate::admission::RecordLimits;
use crate::antientropy::Agreement;
use crate::membership::Membership;
use crate::merkle::Hash;
use crate::server::{AnswerSize, Handler};
use crate::storage::{Entry, Storage, StorageError};
use quorumkv_client::layout::LayoutHistory;

/// Reads of pulled keys in flight at once.
const READ_CONCURRENCY: usize = 64;

/// Answers the peer protocol from this node's storage and trees.
pub struct PeerService {
    storage: Arc<dyn Storage>,
    agreement: Arc<Agreement>,
    clock: Arc<dyn Clock>,
    /// The layout history: who the members are, merged with what peers' pings carry.
    membership: Arc<Membership>,
    /// The checks every pushed record must pass, as a client write would.
    limits: RecordLimits,
}

/// The handler of one authenticated peer connection: the service, and who is speaking.
pub struct PeerSession {
    service: Arc<PeerService>,
    /// Index of the member whose node certificate the connection presented.
    peer: usize,
    /// The connection's remote address, for logs.
    remote: SocketAddr,
}

impl PeerService {
    /// A service over `storage`, recording agreements in `agreement` and admitting
    /// pushed records under `limits`.
    pub fn new(
        storage: Arc<dyn Storage>,
        agreement: Arc<Agreement>,
        clock: Arc<dyn Clock>,
        membership: Arc<Membership>,
        limits: RecordLimits,
    ) -> Self {
        PeerService {
            storage,
            agreement,
            clock,
            membership,
            limits,
        }
    }

    /// The session of `conn` if it presented the node certificate of a member.
    pub fn authenticate(self: &Arc<Self>, conn: &quinn::Connection) -> Result<PeerSession, PeerAuthError> {
        let peer = authenticate(conn, &self.membership.get().ids())?;
        Ok(PeerSession {
            service: self.clone(),
            peer,
            remote: conn.remote_address(),
        })
    }

    fn roots(&self, session: &PeerSession, from: &str, roots: Vec<(u32, Hash)>) -> PeerResponse {
        let layout = self.membership.get();
        let peer_id = layout.id(session.peer);
        if from != peer_id {
            tracing::warn!(
                "peer {peer_id} ({}) sent anti-entropy roots claiming to be {from:?}: refused, no agreement recorded",
                session.remote
            );
            return PeerResponse::Error(format!(
                "roots claim to come from {from:?}, but this connection's certificate is {peer_id:?}'s"
            ));
        }
        let forest = self.storage.forest();
        if !forest.is_ready() {
            return PeerResponse::NotReady;
        }
        let now = self.clock.now_micros();
        let mut partitions = Vec::new();
        let partitions_count = layout.read.partitions();
        for (partition, theirs) in roots.into_iter().filter(|(p, _)| *p < partitions_count) {
            if forest.root(partition) != theirs {
                partitions.push((partition, forest.inner(partition).to_vec()));
                self.agreement.differed(partition, session.peer, now);
            } else {
                self.agreement.agreed(partition, session.peer, now);
            }
        }
        PeerResponse::Inner { partitions }
    }

    /// Answers leaf probes in order, with the entries of each leaf that differs, until
    /// the answer holds [`ENTRIES_BYTES`] of entries; the probes not reached (starting
    /// with the rest of a leaf cut short) go back as `unserved`.
    async fn leaves(&self, probes: Vec<LeafProbe>) -> Result<PeerResponse, StorageError> {
        let forest = self.storage.forest();
        let shape = forest.shape();
        let (mut leaves, mut unserved, mut bytes) = (Vec::new(), Vec::new(), 0);
        for (i, probe) in probes.iter().enumerate() {
            if bytes >= ENTRIES_BYTES {
                unserved.extend_from_slice(&probes[i..]);
                break;
            }
            let LeafProbe {
                partition,
                leaf,
                hash,
                from,
            } = *probe;
            if partition >= self.membership.get().read.partitions() || leaf as usize >= shape.leaves() {
                continue;
            }
            let (start, end) = shape.leaf_range(partition, leaf as usize);
            let whole_leaf_equal = from == start && forest.leaf(partition, leaf as usize) == hash;
            if whole_leaf_equal || !(start..=end).contains(&from) {
                continue;
            }
            let page = self.storage.entries(from, end, ENTRIES_BYTES - bytes).await?;
            bytes += page.entries.iter().map(Entry::size).sum::<usize>();
            let through = page.through;
            leaves.push(LeafEntries {
                partition,
                leaf,
                from,
                through,
                entries: page.entries,
            });
            if through < end {
                unserved.push(LeafProbe {
                    from: through + 1,
                    ..*probe
                });
                unserved.extend_from_slice(&probes[i + 1..]);
                break;
            }
        }
        Ok(PeerResponse::Entries { leaves, unserved })
    }

    /// Applies the admitted records of `push` (a refused one reads as not applied, like
    /// a stale one: the message layout is the peer protocol's version 1) and reads `pull`.
    async fn exchange(
        &self,
        session: &PeerSession,
        push: Vec<KeyedRecord>,
        pull: Vec<Bytes>,
    ) -> Result<PeerResponse, StorageError> {
        let pushed = push.len();
        let (admitted, refused) = admit(push, &self.limits, self.clock.now_micros());
        let from = format!(
            "pushed by {} ({})",
            self.membership.get().id(session.peer),
            session.remote
        );
        log_refusals(&refused, pushed, &from);
        let applies = admitted.into_iter().map(|r| async move {
            match r {
                Some(r) => self.storage.apply(r.key, r.record).await.map(|a| a.applied),
                None => Ok(false),
            }
        });
        let mut applied = Vec::new();
        for outcome in join_all(applies).await {
            applied.push(outcome?);
        }
        let (records, unserved) = self.read_up_to(pull, EXCHANGE_BYTES).await?;
        let stored = applied.iter().filter(|a| **a).count() as u64;
        self.agreement.exchanged(records.len() as u64, stored);
        Ok(PeerResponse::Exchanged {
            applied,
            records,
            unserved,
        })
    }

    /// Merges the history a ping carries, and answers with this node's digest (and its
    /// history if the pinger's digest differs).
    async fn ping(&self, session: &PeerSession, digest: u64, layout: Option<Box<LayoutHistory>>) -> PeerResponse {
        if let Some(theirs) = layout {
            if let Err(e) = self.membership.merge(&theirs).await {
                let layout = self.membership.get();
                tracing::warn!("ignoring the layout {} sent: {e}", layout.id(session.peer));
            }
        }
        let layout = self.membership.get();
        PeerResponse::Pong {
            digest: layout.digest,
            layout: (digest != layout.digest).then(|| Box::new(layout.history.clone())),
        }
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

impl Handler for PeerSession {
    type Request = PeerRequest;
    type Response = PeerResponse;

    async fn handle(self: Arc<Self>, request: PeerRequest) -> PeerResponse {
        let service = &self.service;
        let result = match request {
            PeerRequest::Ping { digest, layout } => Ok(service.ping(&self, digest, layout).await),
            PeerRequest::Roots { from, roots } => Ok(service.roots(&self, &from, roots)),
            PeerRequest::Leaves { leaves } => service.leaves(leaves).await,
            PeerRequest::Exchange { push, pull } => service.exchange(&self, push, pull).await,
        };
        result.unwrap_or_else(|e| PeerResponse::Error(e.to_string()))
    }

    /// Any answer may fill a frame: anti-entropy and hint answers, and a pong carrying a
    /// layout history.
    fn answer_size(&self, _: &PeerRequest) -> AnswerSize {
        AnswerSize::Large
    }

    fn malformed(&self, why: String) -> PeerResponse {
        PeerResponse::Error(format!("malformed frame: {why}"))
    }
}
