//! Certificates for simulated clusters: the development CA's certificates (same names,
//! roles and checks as [`crate::pki`] writes), made in memory with Ed25519 keys.
//!
//! Ed25519 because its signatures are deterministic: ring signs ECDSA (the development
//! CA's key type) with randomness from the OS, and the length of a DER ECDSA signature
//! varies by a byte or two. Today quinn pads the handshake datagrams that carry them to
//! 1200 bytes, which hides that (a trial with ECDSA identities kept equal traces), but a
//! larger certificate chain spilling into unpadded packets would not: with Ed25519 every
//! handshake length repeats whatever the certificates.
//! The keys themselves still come from the OS (rcgen), so runs that must compare their
//! traces share one [`SimIdentities`].

use quorumkv_client::tls::TlsIdentity;
use rcgen::{KeyPair, PKCS_ED25519};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::pki::{self, LeafSpec, PkiError, Role};

/// A CA and identities it signed, in memory.
#[derive(Debug, Clone)]
pub struct SimIdentities {
    /// The identity of each name asked for, in that order.
    pub identities: Vec<(String, TlsIdentity)>,
}

impl SimIdentities {
    /// A fresh CA and one identity per name, with the role [`Role::of_name`] gives it
    /// (`client` is the client, every other name a node).
    pub fn generate(names: &[&str]) -> Result<SimIdentities, PkiError> {
        let ca_key = KeyPair::generate_for(&PKCS_ED25519)?;
        let ca = pki::ca_params(pki::CA_NAME)?.self_signed(&ca_key)?;
        let mut identities = Vec::with_capacity(names.len());
        for name in names {
            let key = KeyPair::generate_for(&PKCS_ED25519)?;
            let spec = LeafSpec::new(name, Role::of_name(name));
            let cert = pki::leaf_signed(&spec, &key, &ca, &ca_key)?;
            let identity = TlsIdentity {
                ca: ca.der().clone(),
                chain: vec![cert.der().clone()],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            };
            identities.push((name.to_string(), identity));
        }
        Ok(SimIdentities { identities })
    }

    /// The identity of `name`, if it was generated.
    pub fn get(&self, name: &str) -> Option<&TlsIdentity> {
        self.identities
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, identity)| identity)
    }
}
