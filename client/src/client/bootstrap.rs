//! Getting started: the client's endpoint, its writer id, and the member list from a seed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ClientError;
use crate::net::bind_udp;
use crate::transport::{dial, Destination, MuxConnection, TransportError};
use crate::wire::{ClusterInfo, Request, Response};

/// How long to wait for a seed node's member list.
const SEED_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted before the cluster's limits are known (the member list).
const BOOTSTRAP_MAX_FRAME: usize = 1 << 20;

/// Asks each seed in turn for the member list.
pub async fn fetch_cluster(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    seeds: &[SocketAddr],
) -> Result<ClusterInfo, ClientError> {
    let mut reasons = Vec::new();
    for &seed in seeds {
        let attempt = async {
            let conn = dial_any_node(endpoint, tls, seed).await?;
            let response = conn.call(Request::Members).await;
            conn.connection().close(0u32.into(), b"bootstrap done");
            response
        };
        match tokio::time::timeout(SEED_TIMEOUT, attempt).await {
            Ok(Ok(Response::Members(info))) => return Ok(info),
            Ok(Ok(other)) => reasons.push(format!("{seed}: unexpected answer {other:?}")),
            Ok(Err(e)) => reasons.push(format!("{seed}: {e}")),
            Err(_) => reasons.push(format!("{seed}: no answer within {SEED_TIMEOUT:?}")),
        }
    }
    if seeds.is_empty() {
        reasons.push("no seed addresses given".into());
    }
    Err(ClientError::NoSeed(reasons.join("; ")))
}

/// Dials a seed whose node id is unknown: the server name is the fixed seed name every
/// node certificate also carries.
async fn dial_any_node(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    seed: SocketAddr,
) -> Result<Arc<MuxConnection<Request, Response>>, TransportError> {
    let destination = Destination {
        addr: seed,
        server_name: crate::tls::SEED_SERVER_NAME.into(),
    };
    dial(endpoint, tls, &destination, BOOTSTRAP_MAX_FRAME, Arc::default()).await
}

/// A client endpoint on the loopback or wildcard address of the seeds' family.
pub fn client_endpoint(seeds: &[SocketAddr]) -> Result<quinn::Endpoint, ClientError> {
    let loopback = seeds.first().map(|s| s.ip().is_loopback()).unwrap_or(true);
    let v6 = seeds.first().map(|s| s.is_ipv6()).unwrap_or(false);
    let bind: SocketAddr = match (v6, loopback) {
        (false, true) => "127.0.0.1:0",
        (false, false) => "0.0.0.0:0",
        (true, true) => "[::1]:0",
        (true, false) => "[::]:0",
    }
    .parse()
    .map_err(|_| std::io::Error::other("bad bind address"))?;
    let socket = bind_udp(bind)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        runtime,
    )?)
}

/// A writer id from the OS random source (through the TLS crypto provider's), so two
/// clients collide only by chance (one in 2^64 per pair), never because they started in
/// the same microsecond with the same pid.
pub fn random_writer_id() -> Result<u64, ClientError> {
    let mut bytes = [0u8; 8];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|e| ClientError::Randomness(format!("{e:?}")))?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::random_writer_id;

    #[test]
    fn writer_ids_drawn_at_once_differ() {
        let ids: std::collections::HashSet<u64> = (0..64).map(|_| random_writer_id().unwrap()).collect();
        assert_eq!(ids.len(), 64, "64 draws, 64 distinct ids");
    }
}
