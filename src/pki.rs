//! The development CA: certificates for local clusters, generated on first start.
//!
//! When cluster.toml names no certificates, nodes and the CLI use `data_dir/tls`, laid
//! out as [`quorumkv_client::tls::layout`] describes. The first process to need it creates
//! the CA, and each identity (a node id, or `client`) is created the first time it is
//! needed. Every directory is written under a temporary name and renamed into place, so
//! several nodes starting at once agree on one CA. The CA key sits next to it: this is
//! for development only; production clusters configure `[tls] dir` with their own CA.
//!
//! Node certificates carry the node id and `quorumkv.node` ([`SEED_SERVER_NAME`], the
//! node role marker the peer protocol requires); the client certificate carries only its
//! name. Earlier versions put `quorumkv.node` on the client certificate too, which let
//! every CLI user speak the peer protocol: such a development client certificate is
//! regenerated when it is next loaded (logged at WARN; the CA and the node certificates
//! stay, so nothing else changes and the cluster needs no restart).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use quorumkv_client::tls::{layout, TlsIdentity, SEED_SERVER_NAME};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use time::OffsetDateTime;

/// Common name of the development CA.
pub(crate) const CA_NAME: &str = "quorumkv development CA";

/// File mode of private keys: read and write for the owner only.
#[cfg(unix)]
const PRIVATE_MODE: u32 = 0o600;
/// File mode of certificates: anyone may read them.
#[cfg(unix)]
const PUBLIC_MODE: u32 = 0o644;

/// Why the development certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// The files exist but cannot be used.
    #[error(transparent)]
    Tls(#[from] quorumkv_client::tls::TlsError),
}

/// What a certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A node: serves clients and speaks the peer protocol.
    Node,
    /// A client: speaks only the client protocol.
    Client,
}

impl Role {
    /// The role of identity `name` in the development layout: its one client identity is
    /// [`layout::CLIENT`]; every other name is a node.
    pub fn of_name(name: &str) -> Role {
        if name == layout::CLIENT {
            Role::Client
        } else {
            Role::Node
        }
    }
}

/// Loads identity `name` from `dir`, first generating the development CA and the
/// identity (with the role [`Role::of_name`] gives it) if `generate` allows and they are
/// missing.
pub fn identity(dir: &Path, name: &str, generate: bool) -> Result<TlsIdentity, PkiError> {
    identity_as(dir, name, Role::of_name(name), generate)
}

/// Loads identity `name` from `dir`, first generating the development CA and a `role`
/// certificate for `name` if `generate` allows and they are missing. When generating, a
/// client certificate that carries the node role marker is replaced (see the module doc).
pub fn identity_as(dir: &Path, name: &str, role: Role, generate: bool) -> Result<TlsIdentity, PkiError> {
    if generate {
        ensure_ca(dir)?;
        ensure_identity(dir, name, role)?;
        let loaded = TlsIdentity::load(dir, name)?;
        if role == Role::Client && carries_node_marker(&loaded) {
            retire_identity(dir, name)?;
            ensure_identity(dir, name, role)?;
        } else {
            return Ok(loaded);
        }
    }
    Ok(TlsIdentity::load(dir, name)?)
}

/// Whether the certificate of `identity` is valid for the node role marker.
fn carries_node_marker(identity: &TlsIdentity) -> bool {
    let Some(leaf) = identity.chain.first() else {
        return false;
    };
    let Ok(name) = ServerName::try_from(SEED_SERVER_NAME) else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Moves identity `name` out of the way (then deletes it), so that it is generated again.
/// Several processes may do this at once: whoever renames it first wins, the others find
/// it gone, and all of them then agree on the one generated next.
fn retire_identity(dir: &Path, name: &str) -> Result<(), PkiError> {
    let target = dir.join(name);
    static RETIRED: AtomicU64 = AtomicU64::new(0);
    let attempt = RETIRED.fetch_add(1, Ordering::Relaxed);
    let retired = dir.join(format!(".{name}.retired-{}-{attempt}", std::process::id()));
    match std::fs::rename(&target, &retired) {
        Ok(()) => {
            tracing::warn!(
                "replacing the development certificate of {name} in {}: it carried the node name {SEED_SERVER_NAME}, \
                 which would let it speak the node-to-node protocol",
                target.display()
            );
            let _ = std::fs::remove_dir_all(&retired);
            Ok(())
        }
        Err(_) if !target.join(layout::CERT).exists() => Ok(()),
        Err(e) => Err(PkiError::Io { path: target, error: e }),
    }
}

fn ensure_ca(dir: &Path) -> Result<(), PkiError> {
    if dir.join(layout::CA_CERT).exists() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let key = KeyPair::generate()?;
    let cert = ca_params(CA_NAME)?.self_signed(&key)?;
    let files = [(layout::CA_CERT, cert.pem()), (layout::CA_KEY, key.serialize_pem())];
    if write_dir_atomically(dir, &files)? {
        tracing::warn!(
            "generated a development CA in {} (for local use only): nodes and clients whose certificates are \
             not in this directory have another CA and will refuse this one; for machines of their own, \
             run `quorumkv certs` and set [tls] dir",
            dir.display()
        );
    }
    Ok(())
}

fn ensure_identity(dir: &Path, name: &str, role: Role) -> Result<(), PkiError> {
    let target = dir.join(name);
    if target.join(layout::CERT).exists() {
        return Ok(());
    }
    let ca_key_path = dir.join(layout::CA_KEY);
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    // Re-creating the CA certificate from the same name and key yields an issuer that
    // verifies against the stored ca.pem.
    let ca = ca_params(CA_NAME)?.self_signed(&ca_key)?;
    let (cert, key) = leaf(&LeafSpec::new(name, role), &ca, &ca_key)?;
    if write_dir_atomically(&target, &[(layout::CERT, cert), (layout::KEY, key)])? {
        tracing::info!("generated development certificate for {name} in {}", target.display());
    }
    Ok(())
}

/// The parameters of a CA named `common_name`. Signing with a CA needs only its name and
/// key: a certificate re-created from both is an issuer that verifies against the stored
/// `ca.pem`.
pub(crate) fn ca_params(common_name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// What a leaf certificate says: whose it is, its role, and for how long.
pub struct LeafSpec<'a> {
    /// The identity's name (node id or client name): common name and first DNS name.
    pub name: &'a str,
    /// Node or client.
    pub role: Role,
    /// Further subject names (an IP address string becomes an IP name).
    pub extra_names: Vec<String>,
    /// Valid from, valid until; `None` keeps rcgen's default (1975 to 4096), which the
    /// development CA uses: its certificates never expire.
    pub validity: Option<(OffsetDateTime, OffsetDateTime)>,
}

impl<'a> LeafSpec<'a> {
    /// A development certificate: nodes also carry `localhost`.
    pub(crate) fn new(name: &'a str, role: Role) -> Self {
        let extra_names = match role {
            Role::Node => vec!["localhost".to_string()],
            Role::Client => Vec::new(),
        };
        LeafSpec {
            name,
            role,
            extra_names,
            validity: None,
        }
    }
}

/// A certificate and key (PEM) for `spec`. A node's is usable as server and client (nodes
/// dial each other too) and carries the node role marker; a client's only authenticates
/// a client.
pub(crate) fn leaf(spec: &LeafSpec<'_>, ca: &Certificate, ca_key: &KeyPair) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = leaf_signed(spec, &key, ca, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The certificate [`leaf`] makes for `spec`, for the given key.
pub(crate) fn leaf_signed(
    spec: &LeafSpec<'_>,
    key: &KeyPair,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Result<Certificate, rcgen::Error> {
    let (mut names, usages) = match spec.role {
        Role::Node => (
            vec![spec.name.to_string(), SEED_SERVER_NAME.to_string()],
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        ),
        Role::Client => (vec![spec.name.to_string()], vec![ExtendedKeyUsagePurpose::ClientAuth]),
    };
    names.extend(spec.extra_names.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, spec.name);
    params.extended_key_usages = usages;
    if let Some((not_before, not_after)) = spec.validity {
        params.not_before = not_before;
        params.not_after = not_after;
    }
    params.signed_by(key, ca, ca_key)
}

/// Writes `files` into a temporary sibling of `target` and renames it into place; private
/// keys ([`is_private_key`]) are readable by their owner only.
/// Returns false if another process created `target` first (its files are kept).
pub(crate) fn write_dir_atomically(target: &Path, files: &[(&str, String)]) -> Result<bool, PkiError> {
    let file_name = target.file_name().and_then(|n| n.to_str()).unwrap_or("tls");
    // Unique per process and per call: the nodes of `quorumkv up` race from one process.
    static ATTEMPT: AtomicU64 = AtomicU64::new(0);
    let attempt = ATTEMPT.fetch_add(1, Ordering::Relaxed);
    let temp = target.with_file_name(format!(".{file_name}.tmp-{}-{attempt}", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp).map_err(io(&temp))?;
    for (name, contents) in files {
        write_new_file(&temp.join(name), contents)?;
    }
    match std::fs::rename(&temp, target) {
        Ok(()) => Ok(true),
        Err(_) if target.exists() => {
            let _ = std::fs::remove_dir_all(&temp);
            Ok(false)
        }
        Err(e) => Err(PkiError::Io {
            path: target.into(),
            error: e,
        }),
    }
}

/// Whether the file `name` of a TLS directory holds a private key.
fn is_private_key(name: &str) -> bool {
    name == layout::KEY || name == layout::CA_KEY
}

/// Creates `path` with `contents`, never replacing an existing file; a private key gets
/// mode 0600 from its creation on (Unix).
pub(crate) fn write_new_file(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let private = path.file_name().and_then(|n| n.to_str()).is_some_and(is_private_key);
        options.mode(if private { PRIVATE_MODE } else { PUBLIC_MODE });
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(contents.as_bytes()).map_err(io(path))
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |error| PkiError::Io {
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_share_one_ca_and_survive_reloading() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let n1 = identity(&tls, "n1", true).unwrap();
        let client = identity(&tls, "client", true).unwrap();
        assert_eq!(n1.ca, client.ca, "one CA for every identity");
        let again = identity(&tls, "n1", true).unwrap();
        assert_eq!(again.chain, n1.chain, "existing certificates are reused");
        assert!(n1.server_config().is_ok() && client.client_config().is_ok());
    }

    #[test]
    fn threads_of_one_process_racing_on_a_fresh_directory_agree_on_one_ca() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let tls = dir.path().join("tls");
            let ids: Vec<TlsIdentity> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..8)
                    .map(|i| {
                        s.spawn({
                            let tls = tls.clone();
                            move || identity(&tls, &format!("n{}", i % 3), true)
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap().unwrap()).collect()
            });
            assert!(ids.iter().all(|id| id.ca == ids[0].ca), "one CA for every identity");
        }
    }

    #[test]
    fn only_node_certificates_carry_the_node_marker() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        assert!(carries_node_marker(&identity(&tls, "n1", true).unwrap()));
        assert!(carries_node_marker(&identity(&tls, "intruder", true).unwrap()));
        assert!(!carries_node_marker(&identity(&tls, "client", true).unwrap()));
        assert!(!carries_node_marker(
            &identity_as(&tls, "n2", Role::Client, true).unwrap()
        ));
    }

    #[test]
    fn a_client_certificate_with_the_node_marker_is_replaced_under_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        // What earlier versions generated: the node marker on the client certificate.
        let legacy = identity_as(&tls, "client", Role::Node, true).unwrap();
        assert!(carries_node_marker(&legacy));
        let replaced = identity(&tls, "client", true).unwrap();
        assert!(!carries_node_marker(&replaced), "the client certificate is regenerated");
        assert_eq!(replaced.ca, legacy.ca, "under the same CA");
        assert_eq!(identity(&tls, "client", true).unwrap().chain, replaced.chain, "once");
        let without_generation = identity(&tls, "client", false).unwrap();
        assert_eq!(without_generation.chain, replaced.chain);
    }

    #[test]
    fn without_generation_missing_files_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = identity(dir.path(), "n1", false).unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
    }
}
