//! Who is on the other end of a peer connection: only a node certificate naming a member
//! may speak the peer protocol.
//!
//! TLS has already checked that the certificate was signed by the cluster CA, but that CA
//! signs client certificates too, and every CLI user has one. A node certificate carries
//! the DNS name [`SEED_SERVER_NAME`] (`quorumkv.node`, the role marker; client
//! certificates must not carry it) and its node id. [`member_of`] requires both and
//! returns the member the certificate names, so that a request on the connection is known
//! to come from that member whatever it claims in its body.

use quinn::Connection;
use quorumkv_client::tls::SEED_SERVER_NAME;
use rustls::pki_types::{CertificateDer, ServerName};
use webpki::EndEntityCert;

/// Why a peer connection was refused; the text is also the connection's close reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    /// The connection carries no certificate (cannot happen with mutual TLS on).
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    /// The certificate lacks the node role marker: a client certificate, most likely.
    #[error("not a node certificate (no DNS name {SEED_SERVER_NAME}): only nodes speak the peer protocol")]
    NotANode,
    /// A node certificate, but for no member of this cluster.
    #[error("the node certificate names no member of this cluster")]
    NotAMember,
    /// A node certificate naming more than one member: which one is speaking is unclear.
    #[error("the node certificate names several members ({0}); a node certificate names one")]
    SeveralMembers(String),
}

/// The index in `members` of the member whose node certificate the connection presented.
pub fn authenticate(conn: &Connection, members: &[String]) -> Result<usize, PeerAuthError> {
    let identity = conn.peer_identity().ok_or(PeerAuthError::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| PeerAuthError::Unreadable("not an X.509 certificate chain".into()))?;
    member_of(&chain, members)
}

/// The index in `members` of the member named by the end-entity certificate of `chain`,
/// if it is a node certificate (carries [`SEED_SERVER_NAME`]) naming exactly one member.
pub fn member_of(chain: &[CertificateDer<'_>], members: &[String]) -> Result<usize, PeerAuthError> {
    let leaf = chain.first().ok_or(PeerAuthError::NoCertificate)?;
    let cert = EndEntityCert::try_from(leaf).map_err(|e| PeerAuthError::Unreadable(e.to_string()))?;
    if !names(&cert, SEED_SERVER_NAME) {
        return Err(PeerAuthError::NotANode);
    }
    let named: Vec<usize> = (0..members.len()).filter(|&i| names(&cert, &members[i])).collect();
    match named[..] {
        [member] => Ok(member),
        [] => Err(PeerAuthError::NotAMember),
        _ => {
            let ids: Vec<&str> = named.iter().map(|&i| members[i].as_str()).collect();
            Err(PeerAuthError::SeveralMembers(ids.join(", ")))
        }
    }
}

/// Whether `cert` is valid for the DNS name `name` (a name that is not a valid DNS name
/// is named by no certificate).
fn names(cert: &EndEntityCert<'_>, name: &str) -> bool {
    ServerName::try_from(name).is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{identity_as, Role};

    fn members() -> Vec<String> {
        ["n1", "n2", "n3"].map(String::from).to_vec()
    }

    fn chain(name: &str, role: Role) -> Vec<CertificateDer<'static>> {
        let dir = tempfile::tempdir().unwrap();
        identity_as(&dir.path().join("tls"), name, role, true).unwrap().chain
    }

    #[test]
    fn a_node_certificate_names_its_member() {
        assert_eq!(member_of(&chain("n2", Role::Node), &members()), Ok(1));
    }

    #[test]
    fn client_and_foreign_certificates_are_refused() {
        let cases = [
            (chain("client", Role::Client), PeerAuthError::NotANode),
            (chain("n1", Role::Client), PeerAuthError::NotANode),
            (chain("intruder", Role::Node), PeerAuthError::NotAMember),
            (Vec::new(), PeerAuthError::NoCertificate),
        ];
        for (chain, expected) in cases {
            assert_eq!(member_of(&chain, &members()), Err(expected));
        }
    }

    #[test]
    fn garbage_is_unreadable_not_a_panic() {
        let garbage = vec![CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02])];
        assert!(matches!(
            member_of(&garbage, &members()),
            Err(PeerAuthError::Unreadable(_))
        ));
    }
}
