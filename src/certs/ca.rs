//! The cluster CA of `quorumkv certs`: created once, then reused from its directory to
//! sign every later certificate, and used to check the certificates already there.
//!
//! Signing needs only the CA's name and key: a CA certificate re-created from both is an
//! issuer whose signatures verify against the stored `ca.pem`. The name is not read from
//! `ca.pem` (that would take an X.509 parser); instead each name quorumkv gives a CA (this
//! command's and the development CA's) is tried, and the one whose signature the stored
//! `ca.pem` accepts is used. A `ca.pem` made elsewhere is refused, never replaced.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quorumkv_client::tls::layout;
use rcgen::{Certificate, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use time::OffsetDateTime;

use super::CertsError;
use crate::pki::{self, LeafSpec, PkiError, Role};

/// Common name of a CA made by `quorumkv certs`.
pub const CLUSTER_CA_NAME: &str = "quorumkv cluster CA";

/// A CA able to sign, with the verifier of the certificates it signed.
pub struct ClusterCa {
    /// The issuer re-created from the CA's name and key.
    issuer: Certificate,
    /// The CA's private key.
    key: KeyPair,
    /// Checks a certificate the way nodes do: signed by this `ca.pem`, in its validity.
    verifier: Arc<dyn ClientCertVerifier>,
}

/// What happened to the CA of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOutcome {
    /// A new CA was made.
    Created,
    /// The CA already there was reused.
    Reused,
}

impl ClusterCa {
    /// The CA of `dir`, made (valid from `not_before` to `not_after`) if `dir` has none.
    /// Never replaces a CA key: a directory with only half a CA is an error.
    pub fn open_or_create(
        dir: &Path,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(ClusterCa, CaOutcome), CertsError> {
        let (cert_path, key_path) = (dir.join(layout::CA_CERT), dir.join(layout::CA_KEY));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((ClusterCa::open(dir)?, CaOutcome::Reused)),
            (true, false) => Err(CertsError::CaKeyMissing { dir: dir.into() }),
            (false, true) => Err(CertsError::CaCertMissing { dir: dir.into() }),
            (false, false) => {
                std::fs::create_dir_all(dir).map_err(pki::io(dir))?;
                let key = KeyPair::generate().map_err(PkiError::from)?;
                let mut params = pki::ca_params(CLUSTER_CA_NAME).map_err(PkiError::from)?;
                params.not_before = not_before;
                params.not_after = not_after;
                let cert = params.self_signed(&key).map_err(PkiError::from)?;
                // The key first, created exclusively: a racing run fails here rather than
                // pairing its certificate with another run's key.
                pki::write_new_file(&key_path, &key.serialize_pem())?;
                pki::write_new_file(&cert_path, &cert.pem())?;
                Ok((ClusterCa::open(dir)?, CaOutcome::Created))
            }
        }
    }

    /// The CA stored in `dir` (`ca.pem` and `ca.key`).
    pub fn open(dir: &Path) -> Result<ClusterCa, CertsError> {
        let cert_path = dir.join(layout::CA_CERT);
        let stored = CertificateDer::from_pem_file(&cert_path).map_err(|e| unreadable(&cert_path, e))?;
        let key_path = dir.join(layout::CA_KEY);
        let key_pem = std::fs::read_to_string(&key_path).map_err(pki::io(&key_path))?;
        let mut key = KeyPair::from_pem(&key_pem).map_err(|e| unreadable(&key_path, e))?;
        let verifier = verifier(stored)?;
        for name in [CLUSTER_CA_NAME, pki::CA_NAME] {
            let issuer = pki::ca_params(name)
                .and_then(|params| params.self_signed(&key))
                .map_err(PkiError::from)?;
            let ca = ClusterCa {
                issuer,
                key,
                verifier: verifier.clone(),
            };
            if ca.signs_for_stored_cert()? {
                return Ok(ca);
            }
            key = ca.key;
        }
        Err(CertsError::CaMismatch { dir: dir.into() })
    }

    /// Signs a certificate and key (PEM) for `spec`.
    pub fn sign(&self, spec: &LeafSpec<'_>) -> Result<(String, String), CertsError> {
        Ok(pki::leaf(spec, &self.issuer, &self.key).map_err(PkiError::from)?)
    }

    /// Why nodes would refuse the certificate in `cert_path` at `now`, if they would.
    pub fn check(&self, cert_path: &Path, now: UnixTime) -> Result<Option<String>, CertsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
            .and_then(|it| it.collect())
            .map_err(|e| unreadable(cert_path, e))?;
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Ok(Some("the file holds no certificate".into()));
        };
        Ok(self
            .verifier
            .verify_client_cert(leaf, intermediates, now)
            .err()
            .map(|e| e.to_string()))
    }

    /// Whether a certificate signed now verifies against the stored `ca.pem`.
    fn signs_for_stored_cert(&self) -> Result<bool, CertsError> {
        let probe = LeafSpec {
            name: "probe",
            role: Role::Client,
            extra_names: Vec::new(),
            validity: None,
        };
        let (pem, _) = self.sign(&probe)?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| unreadable(Path::new("probe"), e))?;
        Ok(self.verifier.verify_client_cert(&der, &[], UnixTime::now()).is_ok())
    }
}

/// The check nodes make of a client certificate, against `ca`.
fn verifier(ca: CertificateDer<'static>) -> Result<Arc<dyn ClientCertVerifier>, CertsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| CertsError::Unusable(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| CertsError::Unusable(e.to_string()))
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> CertsError {
    CertsError::Unreadable {
        path: PathBuf::from(path),
        reason: e.to_string(),
    }
}
