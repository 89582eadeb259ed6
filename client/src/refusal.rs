//! Why a TLS handshake failed, in words a user can act on.
//!
//! TLS refuses a certificate with an alert (RFC 8446, section 6.2) that both ends learn:
//! the side that refused it closes the connection with QUIC crypto error `0x100 + alert`.
//! quinn hands that side a local `TransportError` and the other side a `ConnectionClosed`,
//! both with the alert's code and the refuser's reason text (rustls's, e.g.
//! `invalid peer certificate: UnknownIssuer`). [`Refusal::of`] reads either, and its
//! `dialled`/`accepted` methods say it from the dialling or the accepting side.

use std::fmt;
use std::net::SocketAddr;

use crate::tls::SEED_SERVER_NAME;

/// First QUIC transport error code of the crypto range: `0x100 + TLS alert`.
const CRYPTO_ERROR_BASE: u64 = 0x100;
/// Last code of that range.
const CRYPTO_ERROR_LAST: u64 = 0x1ff;

/// TLS alert codes (RFC 8446, section 6) that speak of certificates.
mod alert {
    pub const BAD_CERTIFICATE: u8 = 42;
    pub const UNSUPPORTED_CERTIFICATE: u8 = 43;
    pub const CERTIFICATE_EXPIRED: u8 = 45;
    pub const UNKNOWN_CA: u8 = 48;
    pub const DECRYPT_ERROR: u8 = 51;
    pub const CERTIFICATE_REQUIRED: u8 = 116;
}

/// What was wrong with the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Not signed by the CA the refusing side trusts (alert unknown_ca; or decrypt_error,
    /// which rustls sends for a certificate whose issuer has the CA's name but another
    /// key, as every development CA has the same name).
    NotOurCa,
    /// Past its end of validity (alert certificate_expired).
    Expired,
    /// Before its start of validity: a clock is wrong (certificate_expired too).
    NotValidYet,
    /// Signed by the CA but not for the name it was used for (bad_certificate).
    WrongName,
    /// Signed by the CA but not for this use: a client certificate presented by a
    /// server, for instance (unsupported_certificate).
    WrongRole,
    /// A certificate without the node role marker where a node's is required (the
    /// name check of bad_certificate, for [`SEED_SERVER_NAME`]).
    NotANode,
    /// No certificate was presented where one is required (certificate_required).
    Missing,
    /// Another TLS alert, by its code.
    Other(u8),
}

/// Which end of the connection refused the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuser {
    /// This side refused the other's certificate.
    Us,
    /// The other side refused this side's certificate.
    Them,
}

/// A handshake that failed over a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Who refused.
    pub by: Refuser,
    /// Why.
    pub problem: Problem,
    /// The refusing TLS library's own words, when it sent them (may be empty).
    pub detail: String,
}

impl Refusal {
    /// The certificate refusal that ended a connection, if that is what ended it.
    pub fn of(error: &quinn::ConnectionError) -> Option<Refusal> {
        let (by, code, detail) = match error {
            quinn::ConnectionError::TransportError(e) => (Refuser::Us, u64::from(e.code), e.reason.clone()),
            quinn::ConnectionError::ConnectionClosed(close) => (
                Refuser::Them,
                u64::from(close.error_code),
                String::from_utf8_lossy(&close.reason).into_owned(),
            ),
            _ => return None,
        };
        if !(CRYPTO_ERROR_BASE..=CRYPTO_ERROR_LAST).contains(&code) {
            return None;
        }
        let alert = (code - CRYPTO_ERROR_BASE) as u8;
        Problem::of_alert(alert, &detail).map(|problem| Refusal { by, problem, detail })
    }

    /// In words, from the side that dialled the node at `addr`.
    pub fn dialled(&self, addr: SocketAddr) -> String {
        self.say(&format!("node {addr}"), "our", "the node's")
    }

    /// In words, from the node that accepted a connection from `remote`.
    pub fn accepted(&self, remote: SocketAddr) -> String {
        self.say(&remote.to_string(), "this node's", "its")
    }

    /// A sentence about the `other` end, where `ours` and `theirs` say whose a CA file is.
    fn say(&self, other: &str, ours: &str, theirs: &str) -> String {
        let detail = Detail(&self.detail);
        match self.by {
            Refuser::Us => {
                let what = self.problem.what(&format!("{ours} ca.pem"));
                format!("{other} presented a certificate that {what}{detail}")
            }
            Refuser::Them => {
                let what = self.problem.what(&format!("{theirs} ca.pem"));
                format!("{other} refused {ours} certificate: it {what}{detail}")
            }
        }
    }
}

/// Words for a failed handshake with the node at `addr`: the refusal if it was one,
/// quinn's own message otherwise.
pub fn dial_error(error: &quinn::ConnectionError, addr: SocketAddr) -> String {
    match Refusal::of(error) {
        Some(refusal) => refusal.dialled(addr),
        None => format!("{addr}: {error}"),
    }
}

impl Problem {
    /// The problem a TLS alert names; `detail` tells expired from not yet valid. `None`
    /// for alerts that are not about certificates.
    fn of_alert(code: u8, detail: &str) -> Option<Problem> {
        Some(match code {
            alert::UNKNOWN_CA | alert::DECRYPT_ERROR => Problem::NotOurCa,
            alert::CERTIFICATE_EXPIRED if detail.contains("not valid yet") || detail.contains("NotValidYet") => {
                Problem::NotValidYet
            }
            alert::CERTIFICATE_EXPIRED => Problem::Expired,
            alert::BAD_CERTIFICATE if detail.contains(SEED_SERVER_NAME) => Problem::NotANode,
            alert::BAD_CERTIFICATE => Problem::WrongName,
            alert::UNSUPPORTED_CERTIFICATE => Problem::WrongRole,
            alert::CERTIFICATE_REQUIRED => Problem::Missing,
            other if (40..=49).contains(&other) => Problem::Other(other),
            _ => return None,
        })
    }

    /// What is wrong with the certificate, as the end of a sentence about it; `ca` names
    /// the CA file of the side that checked it.
    fn what(self, ca: &str) -> String {
        match self {
            Problem::NotOurCa => format!(
                "is not signed by the CA in {ca}: was it made by another `quorumkv certs` run or a different development CA?"
            ),
            Problem::Expired => "has expired: make a new one with `quorumkv certs` (same CA)".into(),
            Problem::NotValidYet => "is not valid yet: is a clock wrong?".into(),
            Problem::WrongName => "is not valid for the name it was used for".into(),
            Problem::WrongRole => {
                "is not valid for this role (a client certificate where a node certificate is needed?)".into()
            }
            Problem::NotANode => format!("is not a node certificate (it does not carry the name {SEED_SERVER_NAME})"),
            Problem::Missing => "is missing: a certificate signed by the cluster CA is required".into(),
            Problem::Other(code) => format!("was refused (TLS alert {code})"),
        }
    }
}

/// The TLS library's words in brackets, if any.
struct Detail<'a>(&'a str);

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " [{}]", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(alert: u8, reason: &str) -> quinn::ConnectionError {
        quinn::ConnectionError::TransportError(quinn_proto::TransportError {
            code: quinn::TransportErrorCode::crypto(alert),
            frame: None,
            reason: reason.into(),
        })
    }

    #[test]
    fn alerts_name_the_problem() {
        let cases = [
            (48, "invalid peer certificate: UnknownIssuer", Problem::NotOurCa),
            (51, "invalid peer certificate: BadSignature", Problem::NotOurCa),
            (
                45,
                "invalid peer certificate: certificate expired: ...",
                Problem::Expired,
            ),
            (
                45,
                "invalid peer certificate: certificate not valid yet: ...",
                Problem::NotValidYet,
            ),
            (43, "invalid peer certificate: InvalidPurpose", Problem::WrongRole),
            (
                42,
                "invalid peer certificate: certificate not valid for name \"n1\"",
                Problem::WrongName,
            ),
            (
                42,
                "certificate not valid for name \"quorumkv.node\"; ...",
                Problem::NotANode,
            ),
            (116, "peer sent no certificates", Problem::Missing),
        ];
        for (code, reason, problem) in cases {
            let refusal = Refusal::of(&local(code, reason)).unwrap();
            assert_eq!((refusal.by, refusal.problem), (Refuser::Us, problem), "{reason}");
        }
    }

    #[test]
    fn other_errors_are_not_refusals() {
        assert_eq!(Refusal::of(&quinn::ConnectionError::TimedOut), None);
        // no_application_protocol is not about certificates.
        assert_eq!(Refusal::of(&local(120, "no ALPN")), None);
    }

    #[test]
    fn a_foreign_ca_is_named_on_both_sides() {
        let refusal = Refusal::of(&local(48, "invalid peer certificate: UnknownIssuer")).unwrap();
        let addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let words = refusal.dialled(addr);
        assert!(
            words.starts_with("node 127.0.0.1:7001 presented a certificate that is not signed by the CA in our ca.pem"),
            "{words}"
        );
        assert!(words.ends_with("[invalid peer certificate: UnknownIssuer]"), "{words}");
        let theirs = Refusal {
            by: Refuser::Them,
            ..refusal
        };
        assert!(theirs.accepted(addr).contains("refused this node's certificate"));
    }
}
