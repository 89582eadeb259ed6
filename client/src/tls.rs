//! TLS identities and the QUIC configuration both sides agree on.
//!
//! TLS is always on and always mutual: a cluster CA signs every node certificate (with
//! the node id as its DNS name, which is the server name clients dial) and every client
//! certificate. Nodes require a client certificate from the CA; clients (and nodes
//! dialling each other) verify the node against the CA and require a node certificate.
//! The ALPN carries the protocol version.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::wire::{ALPN, ALPN_V1, PEER_ALPN};

/// Keep-alive well below the idle timeout so quiet connections stay open.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A connection with no traffic (not even keep-alives) for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent bidirectional streams a peer may open: the lanes plus one stream per large
/// value in flight. Each open stream may hold a partly received small frame on the node
/// (up to 16 KiB), so this also bounds that memory per connection; more large values in
/// flight than this wait for a stream, as they would wait for the node's frame budget.
pub const MAX_BIDI_STREAMS: u32 = 256;
/// Per-stream flow-control window: room for one maximum-size value without stalls.
const STREAM_WINDOW: u32 = 8 << 20;
/// Per-connection flow-control window: the most received data quinn buffers for a
/// connection before the application reads it, whatever the number of streams.
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Bytes quinn keeps per connection of what was written and not yet acknowledged
/// (quinn's default, named because it is part of the memory bound per connection).
pub const SEND_WINDOW: u64 = 10_000_000;

/// A certificate chain with its private key, and the CA that the peer must be signed by.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The cluster CA certificate: peers must present a certificate it signed.
    pub ca: CertificateDer<'static>,
    /// This side's certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// This side's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// File names inside a TLS directory (the layout the development CA writes).
pub mod layout {
    /// The CA certificate.
    pub const CA_CERT: &str = "ca.pem";
    /// The CA private key (only present for a development CA).
    pub const CA_KEY: &str = "ca.key";
    /// Certificate file inside an identity's directory.
    pub const CERT: &str = "cert.pem";
    /// Key file inside an identity's directory.
    pub const KEY: &str = "key.pem";
    /// Name of the client identity's directory.
    pub const CLIENT: &str = "client";
}

impl TlsIdentity {
    /// Loads `dir/ca.pem`, `dir/<name>/cert.pem` and `dir/<name>/key.pem`.
    pub fn load(dir: &Path, name: &str) -> Result<TlsIdentity, TlsError> {
        let ca_path = dir.join(layout::CA_CERT);
        let ca = CertificateDer::from_pem_file(&ca_path).map_err(|e| file_error(&ca_path, e))?;
        let cert_path = dir.join(name).join(layout::CERT);
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file_error(&cert_path, e))?;
        let key_path = dir.join(name).join(layout::KEY);
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_error(&key_path, e))?;
        Ok(TlsIdentity { ca, chain, key })
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(config_error)?;
        Ok(roots)
    }

    /// QUIC client configuration for the client protocol: verify the node against the CA
    /// (a node certificate: `NodeCertVerifier`), present our certificate.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        self.client_config_for(ALPN)
    }

    /// QUIC client configuration speaking the protocol named by `alpn`.
    pub fn client_config_for(&self, alpn: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
        self.client_config_with(alpn, provider())
    }

    /// QUIC client configuration speaking `alpn`, its cryptography (and randomness) from
    /// `provider`: the simulator passes one whose random source is seeded.
    pub fn client_config_with(
        &self,
        alpn: &[u8],
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()
                .map_err(config_error)?;
        let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NodeCertVerifier { webpki }))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        crypto.alpn_protocols = vec![alpn.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(config_error)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport_config());
        Ok(config)
    }

    /// QUIC server configuration: require a client certificate signed by the CA; speak
    /// the client and the node-to-node protocols.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let mut config = quinn::ServerConfig::with_crypto(self.server_crypto(provider())?);
        config.transport_config(transport_config());
        Ok(config)
    }

    /// [`server_config`](Self::server_config) with its cryptography from `provider` and
    /// the given handshake-token key (quinn draws one from the OS otherwise): the
    /// simulator passes seeded ones.
    pub fn server_config_with(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
        token_key: Arc<dyn quinn::crypto::HandshakeTokenKey>,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let mut config = quinn::ServerConfig::new(self.server_crypto(provider)?, token_key);
        config.transport_config(transport_config());
        Ok(config)
    }

    fn server_crypto(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, TlsError> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()
                .map_err(config_error)?;
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        crypto.alpn_protocols = vec![ALPN.to_vec(), ALPN_V1.to_vec(), PEER_ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(config_error)?;
        Ok(Arc::new(quic))
    }
}

/// Checks the certificate of a node being dialled: signed by the CA and valid for the
/// name dialled (webpki's checks, unchanged), and a node certificate, i.e. also valid for
/// [`SEED_SERVER_NAME`], the node role marker. Without the second check a certificate of
/// the cluster CA that is not a node's but names a member (a client certificate with
/// server use, from a CA other than `quorumkv certs`) could pass for that member.
#[derive(Debug)]
struct NodeCertVerifier {
    /// rustls's verifier against the cluster CA.
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let marker = ServerName::try_from(SEED_SERVER_NAME).map_err(|e| rustls::Error::General(e.to_string()))?;
        if *server_name != marker {
            self.webpki
                .verify_server_cert(end_entity, intermediates, &marker, ocsp_response, now)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_BIDI_STREAMS));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(SEND_WINDOW);
    // No unreliable datagrams in either protocol: none may be buffered unread.
    t.datagram_receive_buffer_size(None);
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // IDLE_TIMEOUT is far below the VarInt limit, so the conversion cannot fail.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    Arc::new(t)
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// Server name a client uses to dial a seed whose node id it does not know yet; every
/// node certificate carries it as a DNS name besides the node id.
pub const SEED_SERVER_NAME: &str = "quorumkv.node";
