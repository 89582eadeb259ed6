//! Getting started: the client's endpoint, its writer id, and the member list from a seed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::error::{ClientError, SeedFailure, SeedProblem};
use crate::net::bind_udp;
use crate::transport::{dial, Destination, MuxConnection, TransportError};
use crate::wire::{ClusterInfo, Request, Response};

/// How long [`crate::Client::connect`] waits for a seed's member list unless
/// [`crate::ClientConfig::connect_timeout`] says otherwise: the cluster's default request
/// timeout, since the seeds' answer is one more request.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted before the cluster's limits are known (the member list).
const BOOTSTRAP_MAX_FRAME: usize = 1 << 20;

/// Asks every seed at once for the member list and takes the first answer; the other
/// attempts are dropped, which abandons their handshakes. Gives up after `timeout`,
/// naming every seed with why it gave no member list (a seed still silent then: timed
/// out).
pub async fn fetch_cluster(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    seeds: &[SocketAddr],
    timeout: Duration,
) -> Result<ClusterInfo, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut attempts: FuturesUnordered<_> = seeds
        .iter()
        .enumerate()
        .map(|(i, &seed)| async move { (i, ask_seed(endpoint, tls, seed).await) })
        .collect();
    let mut problems: Vec<Option<SeedProblem>> = vec![None; seeds.len()];
    while let Ok(Some((i, answer))) = tokio::time::timeout_at(deadline, attempts.next()).await {
        match answer {
            Ok(info) => return Ok(info),
            Err(problem) => problems[i] = Some(problem),
        }
    }
    let failures = seeds
        .iter()
        .zip(problems)
        .map(|(&seed, problem)| SeedFailure {
            seed,
            reason: problem.unwrap_or(SeedProblem::TimedOut),
        })
        .collect();
    Err(ClientError::NoSeed { failures })
}

/// One seed's member list.
async fn ask_seed(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    seed: SocketAddr,
) -> Result<ClusterInfo, SeedProblem> {
    let conn = dial_any_node(endpoint, tls, seed).await.map_err(|e| match e {
        TransportError::Tls { reason, .. } => SeedProblem::TlsRefused(reason),
        other => SeedProblem::Unreachable(other.to_string()),
    })?;
    let response = conn.call(Request::Members).await;
    conn.connection().close(0u32.into(), b"bootstrap done");
    match response {
        Ok(Response::Members(info)) => Ok(info),
        Ok(other) => Err(SeedProblem::UnexpectedAnswer(format!("{other:?}"))),
        Err(e) => Err(SeedProblem::Unreachable(e.to_string())),
    }
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
    dial(
        endpoint,
        tls,
        &destination,
        BOOTSTRAP_MAX_FRAME,
        Arc::default(),
        Arc::default(),
    )
    .await
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
