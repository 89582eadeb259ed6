//! Real quinn endpoints on the simulated network, with the randomness quinn and rustls
//! let us inject drawn from the run's seed.
//!
//! Seeded here: quinn's endpoint RNG (`EndpointConfig::rng_seed`: each connection's RNG,
//! hence packet-number skips, path challenges, QUIC-bit greasing), connection IDs (a
//! seeded [`ConnectionIdGenerator`] in place of quinn's, which reads the OS), the
//! stateless-reset key, the handshake-token key, the server's token clock (simulated
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
use quinn::{ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig, TimeSource, TokioRuntime};
use quorumkv_client::tls::{TlsError, TlsIdentity};
use quorumkv_client::wire::ALPN;
use ring::{hkdf, hmac};
use rustls::crypto::{CryptoProvider, GetRandomFailed, SecureRandom};

use super::net::{SimNetError, SimNetwork};
use super::rng::SimRng;

/// Connection id length: quinn's default generator's.
const CID_LEN: usize = 8;
/// Bytes of key material drawn for the reset and token keys (quinn draws 64 for each).
const KEY_MATERIAL: usize = 64;
/// Wall-clock date simulated time zero stands for (2026-01-01T00:00:00Z), so token
/// timestamps repeat across runs.
const SIM_EPOCH_SECS: u64 = 1_767_225_600;

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
    let mut rng = SimRng::new(seed);
    let provider = seeded_provider(rng.fork());
    let server = if serve {
        let mut config = identity.server_config_with(provider.clone(), token_key(&mut rng))?;
        config.time_source(Arc::new(SimTime(tokio::time::Instant::now())));
        Some(config)
    } else {
        None
    };
    let socket = net.bind(addr)?;
    let mut endpoint =
        Endpoint::new_with_abstract_socket(endpoint_config(&mut rng), server, socket, Arc::new(TokioRuntime))?;
    endpoint.set_default_client_config(identity.client_config_with(ALPN, provider)?);
    Ok(endpoint)
}

/// quinn's endpoint configuration with a seeded RNG, reset key and connection ids.
fn endpoint_config(rng: &mut SimRng) -> EndpointConfig {
    let mut material = [0u8; KEY_MATERIAL];
    rng.fill(&mut material);
    let mut config = EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &material)));
    let mut seed = [0u8; 32];
    rng.fill(&mut seed);
    config.rng_seed(Some(seed));
    let cids = Arc::new(Mutex::new(rng.fork()));
    config.cid_generator(move || {
        let seed = cids.lock().unwrap_or_else(PoisonError::into_inner).next_u64();
        Box::new(SeededCids(SimRng::new(seed)))
    });
    config
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

/// Connection ids from the seed, shaped like quinn's random ones.
struct SeededCids(SimRng);

impl ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        self.0.fill(&mut bytes);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The wall clock quinn stamps tokens with, read from simulated time.
struct SimTime(tokio::time::Instant);

impl TimeSource for SimTime {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(SIM_EPOCH_SECS) + self.0.elapsed()
    }
}
