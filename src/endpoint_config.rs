//! The node's QUIC and TLS settings ([`QuicParts`]), and the endpoint settings that must
//! survive a restart: the stateless-reset key and how connection ids are made.
//!
//! A node that dies without closing its connections (kill -9, power cut) and comes back
//! on its address still receives packets of its old connections from peers and clients.
//! With quinn's defaults every process has a random reset key and hashed connection ids
//! validated against a random per-process key, so the new process drops those packets
//! silently and every sender waits for its 30 s idle timeout before dialling again. Here
//! the reset key is derived from the node's TLS private key (the same across restarts,
//! even of a wiped data directory, and secret like the key itself) and connection ids are
//! plain random ids that the endpoint does not validate: the new process answers an old
//! connection's packet with a stateless reset its sender can authenticate, and that sender
//! closes the connection at once and re-dials.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::{CryptoError, HmacKey};
use quinn::{ConnectionId, ConnectionIdGenerator, EndpointConfig};
use quorumkv_client::wire::PEER_ALPN;
use quorumkv_client::TlsIdentity;

/// Context string of the reset key's derivation (blake3 `derive_key`).
const RESET_KEY_CONTEXT: &str = "quorumkv 2026-12 QUIC stateless reset key";
/// Length of the connection ids the node issues (quinn's default).
const CID_LEN: usize = 8;

/// What a node's QUIC endpoint is made with: every place quinn and rustls draw
/// randomness from is in here, so a simulation can pass seeded ones.
pub struct QuicParts {
    /// Reset key, connection ids and the endpoint's random seed.
    pub endpoint: EndpointConfig,
    /// The server side: both protocols, a client certificate required.
    pub server: quinn::ServerConfig,
    /// How this node dials its peers (the node-to-node protocol).
    pub peer: quinn::ClientConfig,
}

impl QuicParts {
    /// The real settings for the node with TLS identity `identity`: randomness from the
    /// operating system, the reset key from the identity.
    pub fn real(identity: &TlsIdentity) -> anyhow::Result<QuicParts> {
        Ok(QuicParts {
            endpoint: node_endpoint_config(identity)?,
            server: identity.server_config()?,
            peer: identity.client_config_for(PEER_ALPN)?,
        })
    }
}

/// Endpoint settings for a node with TLS identity `identity`. Fails only if the operating
/// system cannot supply randomness for connection ids.
pub fn node_endpoint_config(identity: &TlsIdentity) -> anyhow::Result<EndpointConfig> {
    let mut seed = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut seed)
        .map_err(|e| anyhow::anyhow!("no randomness for connection ids: {e:?}"))?;
    Ok(endpoint_config_with(identity, seed, None))
}

/// Endpoint settings for a node with TLS identity `identity`, its connection ids drawn
/// from `cid_seed` and quinn's own randomness from `rng_seed` (the operating system's
/// when `None`). The simulator passes seeded ones; the reset key comes from the identity
/// either way, so a restarted simulated node resets old connections as a real one does.
pub fn endpoint_config_with(identity: &TlsIdentity, cid_seed: [u8; 32], rng_seed: Option<[u8; 32]>) -> EndpointConfig {
    let reset_key = ResetKey(blake3::derive_key(RESET_KEY_CONTEXT, identity.key.secret_der()));
    let mut config = EndpointConfig::new(Arc::new(reset_key));
    config.rng_seed(rng_seed);
    let instances = AtomicU64::new(0);
    config.cid_generator(move || {
        let instance = instances.fetch_add(1, Ordering::Relaxed);
        Box::new(RandomIds {
            seed: cid_seed,
            instance,
            next: 0,
        })
    });
    config
}

/// The stateless-reset HMAC: blake3 keyed with a key derived from the node's TLS key.
struct ResetKey([u8; 32]);

impl HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let len = signature_out.len().min(mac.as_bytes().len());
        signature_out[..len].copy_from_slice(&mac.as_bytes()[..len]);
    }

    fn signature_len(&self) -> usize {
        blake3::OUT_LEN
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let expected = blake3::keyed_hash(&self.0, data);
        // blake3::Hash compares in constant time.
        match <[u8; blake3::OUT_LEN]>::try_from(signature) {
            Ok(given) if expected == blake3::Hash::from(given) => Ok(()),
            _ => Err(CryptoError),
        }
    }
}

/// Connection ids from a keyed PRF of a counter: unpredictable without the per-process
/// seed (the run's seed in a simulation), never validated, so packets of a previous process's connections reach the reset
/// logic instead of being dropped as foreign.
struct RandomIds {
    /// Drawn from the OS once per process (from the seed in a simulation).
    seed: [u8; 32],
    /// Which generator of this process (one per endpoint).
    instance: u64,
    /// Ids issued so far by this generator.
    next: u64,
}

impl ConnectionIdGenerator for RandomIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut input = [0u8; 16];
        input[..8].copy_from_slice(&self.instance.to_le_bytes());
        input[8..].copy_from_slice(&self.next.to_le_bytes());
        self.next += 1;
        ConnectionId::new(&blake3::keyed_hash(&self.seed, &input).as_bytes()[..CID_LEN])
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_signatures_verify_only_with_the_same_key_and_data() {
        let key = ResetKey([7; 32]);
        let mut signature = vec![0; key.signature_len()];
        key.sign(b"connection id", &mut signature);
        assert!(key.verify(b"connection id", &signature).is_ok());
        assert!(key.verify(b"another id", &signature).is_err());
        assert!(ResetKey([8; 32]).verify(b"connection id", &signature).is_err());
        assert!(key.verify(b"connection id", &signature[..16]).is_err());
    }

    #[test]
    fn connection_ids_differ() {
        let mut ids = RandomIds {
            seed: [1; 32],
            instance: 0,
            next: 0,
        };
        let drawn: std::collections::HashSet<ConnectionId> = (0..1000).map(|_| ids.generate_cid()).collect();
        assert_eq!(drawn.len(), 1000);
        assert!(drawn.iter().all(|id| id.len() == CID_LEN));
    }
}
