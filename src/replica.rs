//! The replica: what one node does with one client request.
//!
//! One exhaustive `match` hands each request to a short function: reads return the
//! node's own record, writes go through storage's compare-and-write (a stale write is
//! answered with the newer version it lost to), and `Members` describes the cluster.
//! Requests are checked against the cluster's limits and the ring epoch first.

use std::sync::Arc;

use bytes::Bytes;
use quorumkv_client::clock::Clock;
use quorumkv_client::ring::Ring;
use quorumkv_client::wire::{ClusterInfo, ErrorKind, ErrorReply, Record, Request, Response};

use crate::config::ClusterConfig;
use crate::storage::{Storage, StorageError};

/// Answers client requests from this node's storage.
pub struct Replica {
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    /// The answer to `Members`, computed once.
    info: ClusterInfo,
    /// Epoch of this node's ring; requests routed with another are refused.
    epoch: u64,
    /// Largest lead of a write's version over our clock, in microseconds.
    max_skew_micros: u64,
}

impl Replica {
    /// A replica for `config`, storing into `storage`.
    pub fn new(config: &ClusterConfig, ring: &Ring, storage: Arc<dyn Storage>, clock: Arc<dyn Clock>) -> Replica {
        Replica {
            storage,
            clock,
            info: config.cluster_info(),
            epoch: ring.epoch(),
            max_skew_micros: config.max_clock_skew().as_micros() as u64,
        }
    }

    /// Answers one request.
    pub async fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Get { epoch, key } => self.get(epoch, key).await,
            Request::Put { epoch, key, record } => self.put(epoch, key, record).await,
            Request::Members => Ok(Response::Members(self.info.clone())),
        };
        result.unwrap_or_else(Response::Error)
    }

    async fn get(&self, epoch: u64, key: Bytes) -> Result<Response, ErrorReply> {
        self.check_epoch(epoch)?;
        self.check_len("key", key.len(), self.info.max_key_bytes)?;
        let record = self.storage.get(key).await.map_err(storage_error)?;
        Ok(Response::Record(record))
    }

    async fn put(&self, epoch: u64, key: Bytes, record: Record) -> Result<Response, ErrorReply> {
        self.check_epoch(epoch)?;
        self.check_len("key", key.len(), self.info.max_key_bytes)?;
        let value_len = record.value.as_ref().map_or(0, Bytes::len);
        self.check_len("value", value_len, self.info.max_value_bytes)?;
        self.check_clock(&record)?;
        let applied = self.storage.apply(key, record).await.map_err(storage_error)?;
        Ok(Response::Put {
            applied: applied.applied,
            current: applied.current,
        })
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), ErrorReply> {
        if epoch != self.epoch {
            return Err(reply(
                ErrorKind::StaleEpoch,
                format!(
                    "request routed with ring epoch {epoch:016x}, this node has {:016x}: refresh the member list",
                    self.epoch
                ),
            ));
        }
        Ok(())
    }

    fn check_len(&self, what: &str, len: usize, max: usize) -> Result<(), ErrorReply> {
        if len > max {
            return Err(reply(
                ErrorKind::TooLarge,
                format!("{what} of {len} bytes exceeds the limit of {max} bytes"),
            ));
        }
        Ok(())
    }

    fn check_clock(&self, record: &Record) -> Result<(), ErrorReply> {
        let now = self.clock.now_micros();
        let lead = record.version.micros.saturating_sub(now);
        if lead > self.max_skew_micros {
            return Err(reply(
                ErrorKind::ClockSkew,
                format!(
                    "version {} is {} ms ahead of this node's clock (limit {} ms): check the writer's clock",
                    record.version,
                    lead / 1000,
                    self.max_skew_micros / 1000
                ),
            ));
        }
        Ok(())
    }
}

fn storage_error(e: StorageError) -> ErrorReply {
    reply(ErrorKind::Storage, e.to_string())
}

fn reply(kind: ErrorKind, message: String) -> ErrorReply {
    ErrorReply { kind, message }
}
