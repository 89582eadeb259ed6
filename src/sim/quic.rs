//! Real quinn endpoints on the simulated network, with the randomness quinn and rustls
//! let us inject drawn from the run's seed.
//!
//! Seeded here: quinn's endpoint RNG (`EndpointConfig::rng_seed`: each connection's RNG,
//! hence packet-number skips, path challenges, QUIC-bit greasing), connection IDs (the
//! node's own generator, keyed from the seed instead of the OS), the handshake-token key, the server's token clock (simulated
//! time), and rustls's `SecureRandom` (client and server randoms, session ids and
//! tickets). Not seedable: the TLS key exchange (rustls's ring X25519 draws its
//! ephemeral key from the OS and ring's random trait is sealed) and ECDSA signatures
//! (same; simulated identities use Ed25519, see `sim::identity`). Both change payload
//! bytes only, never lengths or timing, which is why the trace hashes no payloads.
//! rustls checks certificate validity against the wall clock; simulated certificates
//! never expire, so that reading cannot change a run.
//!
//! Endpoints use quinn's `TokioRuntime`: its timers and `now()` are tokio's, so a
//! paused runtime drives them in simulated time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use quinn::crypto::HandshakeTokenKey;
use quinn::{Endpoint, EndpointConfig, TimeSource, TokioRuntime};
use quorumkv_client::tls::{TlsError, TlsIdentity};
use quorumkv_client::wire::{ALPN, PEER_ALPN};
use quorumkv_client::ClientTransport;
use ring::hkdf;
use rustls::crypto::{CryptoProvider, GetRandomFailed, SecureRandom};

use super::net::{SimNetError, SimNetwork};
use super::rng::SimRng;
use super::SIM_EPOCH_SECS;
use crate::endpoint_config::{endpoint_config_with, QuicParts};

/// Bytes of key material drawn for the token key (quinn draws 64).
const KEY_MATERIAL: usize = 64;

/// Why a simulated endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SimQuicError {
    /// The network refused the address.
    #[error(transparent)]
    Bind(#[from] SimNetError),
    /// The TLS identity did not make a configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// quinn refused the socket.
    #[error("cannot start a QUIC endpoint on the simulated network: {0}")]
    Endpoint(#[from] std::io::Error),
}

/// A quinn endpoint bound to `addr` on `net`, every injectable random draw from `seed`:
/// a server (accepting the node and client protocols) if `serve`, and always able to
/// dial with the client protocol.
pub fn endpoint(
    net: &SimNetwork,
    addr: SocketAddr,
    seed: u64,
    identity: &TlsIdentity,
    serve: bool,
) -> Result<Endpoint, SimQuicError> {
    let parts = node_quic(seed, identity)?;
    let mut endpoint = bind(net, addr, parts.endpoint, serve.then_some(parts.server))?;
    endpoint.set_default_client_config(parts.client);
    Ok(endpoint)
}

/// A quinn endpoint on `net` at `addr`.
fn bind(
    net: &SimNetwork,
    addr: SocketAddr,
    config: EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> Result<Endpoint, SimQuicError> {
    let socket = net.bind(addr)?;
    Ok(Endpoint::new_with_abstract_socket(
        config,
        server,
        socket,
        Arc::new(TokioRuntime),
    )?)
}

/// A node's QUIC settings with every injectable random draw from `seed` (the reset key
/// from the identity, as on a real node), plus a client-protocol configuration.
pub fn node_quic(seed: u64, identity: &TlsIdentity) -> Result<SimQuicParts, SimQuicError> {
    let mut rng = SimRng::new(seed);
    let provider = seeded_provider(rng.fork());
    let mut server = identity.server_config_with(provider.clone(), token_key(&mut rng))?;
    server.time_source(Arc::new(SimTime(tokio::time::Instant::now())));
    let mut cid_seed = [0u8; 32];
    rng.fill(&mut cid_seed);
    let mut rng_seed = [0u8; 32];
    rng.fill(&mut rng_seed);
    Ok(SimQuicParts {
        endpoint: endpoint_config_with(identity, cid_seed, Some(rng_seed)),
        server,
        peer: identity.client_config_with(PEER_ALPN, provider.clone())?,
        client: identity.client_config_with(ALPN, provider)?,
    })
}

/// A client's endpoint at `addr` on `net` and its TLS configuration, from `seed`.
pub fn client_transport(
    net: &SimNetwork,
    addr: SocketAddr,
    seed: u64,
    identity: &TlsIdentity,
) -> Result<ClientTransport, SimQuicError> {
    let parts = node_quic(seed, identity)?;
    Ok(ClientTransport {
        endpoint: bind(net, addr, parts.endpoint, None)?,
        tls: parts.client,
    })
}

/// Seeded QUIC settings: a node's parts and a client-protocol configuration.
pub struct SimQuicParts {
    /// Reset key, connection ids, quinn's RNG seed.
    pub endpoint: EndpointConfig,
    /// The server side, seeded tokens and TLS randomness.
    pub server: quinn::ServerConfig,
    /// Dialling with the node-to-node protocol.
    pub peer: quinn::ClientConfig,
    /// Dialling with the client protocol.
    pub client: quinn::ClientConfig,
}

impl SimQuicParts {
    /// What a node is made with.
    pub fn into_node(self) -> QuicParts {
        QuicParts {
            endpoint: self.endpoint,
            server: self.server,
            peer: self.peer,
        }
    }
}

/// The handshake-token key, as quinn derives it from random bytes.
fn token_key(rng: &mut SimRng) -> Arc<dyn HandshakeTokenKey> {
    let mut material = [0u8; KEY_MATERIAL];
    rng.fill(&mut material);
    Arc::new(hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&material))
}

/// rustls's ring provider with a seeded random source. rustls wants that source
/// `'static`, so each provider leaks one small generator: a few dozen bytes per
/// simulated endpoint.
fn seeded_provider(rng: SimRng) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.secure_random = Box::leak(Box::new(SeededRandom(Mutex::new(rng))));
    Arc::new(provider)
}

/// rustls's random source, from the seed.
#[derive(Debug)]
struct SeededRandom(Mutex<SimRng>);

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).fill(buf);
        Ok(())
    }
}

/// The wall clock quinn stamps tokens with, read from simulated time.
struct SimTime(tokio::time::Instant);

impl TimeSource for SimTime {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(SIM_EPOCH_SECS) + self.0.elapsed()
    }
}
