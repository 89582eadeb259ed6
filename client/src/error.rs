//! Errors a client request can end with, shaped for callers to act on.

use std::fmt;
use std::net::SocketAddr;

use crate::tls::TlsError;
use crate::version::{ClockExhausted, Version};
use crate::wire::ErrorReply;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request's n/w/r/timeout cannot work; nothing was sent.
    #[error("invalid request options: {0}")]
    InvalidOptions(String),
    /// A key or value is over the cluster's limit; nothing was sent.
    #[error("{what} of {len} bytes exceeds the cluster limit of {max} bytes")]
    TooLarge {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit from cluster.toml.
        max: usize,
    },
    /// Fewer replicas answered than the request needed.
    #[error("quorum not reached: needed {needed} of {contacted} replicas, {acked} acked; {}", FailureList(.failures))]
    Unavailable {
        /// Acknowledgements (w) or answers (r) the request needed.
        needed: usize,
        /// How many did answer successfully.
        acked: usize,
        /// Replicas contacted (n).
        contacted: usize,
        /// Every replica that did not answer successfully, and why.
        failures: Vec<ReplicaFailure>,
    },
    /// No seed node gave the member list (within `ClientConfig::connect_timeout`), so the
    /// client does not know the cluster.
    #[error("{}", NoSeedMessage(self))]
    NoSeed {
        /// Every seed, with why it did not answer (empty: no seed was given).
        failures: Vec<SeedFailure>,
    },
    /// A seed answered with a member list this client cannot route with.
    #[error("the seed sent an unusable member list: {0}")]
    BadMemberList(String),
    /// The TLS identity could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local endpoint could not be created.
    #[error("cannot create the client endpoint: {0}")]
    Endpoint(#[from] std::io::Error),
    /// The operating system's random source failed, so no writer id could be drawn.
    #[error("cannot draw a random writer id from the OS random source: {0}; set ClientConfig::writer_id")]
    Randomness(String),
    /// This client's clock cannot issue a newer version; nothing was sent.
    #[error(transparent)]
    Clock(#[from] ClockExhausted),
}

impl ClientError {
    /// Whether this is a [`ClientError::NoSeed`] where no seed said anything at all (every
    /// one timed out): most likely the cluster is not running, or the seed addresses are
    /// wrong.
    pub fn no_node_answered(&self) -> bool {
        match self {
            ClientError::NoSeed { failures } => {
                !failures.is_empty() && failures.iter().all(|f| f.reason == SeedProblem::TimedOut)
            }
            _ => false,
        }
    }
}

/// One seed that did not give the member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFailure {
    /// The seed's address.
    pub seed: SocketAddr,
    /// What happened.
    pub reason: SeedProblem,
}

/// Why one seed did not give the member list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedProblem {
    /// No answer before the connect timeout: nothing listens there (a stopped node's port
    /// does not answer QUIC at all), or the network drops the packets.
    #[error("timed out")]
    TimedOut,
    /// The TLS handshake failed: the seed refused this client's certificate or this client
    /// the seed's (a certificate from another cluster's CA, say).
    #[error("TLS handshake refused: {0}")]
    TlsRefused(String),
    /// The connection could not be made or broke.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The seed answered something other than the member list.
    #[error("unexpected answer: {0}")]
    UnexpectedAnswer(String),
}

/// [`ClientError::NoSeed`]'s message: when every seed was silent, most likely nothing
/// runs there, so it asks; when some refused, the reasons say why.
struct NoSeedMessage<'a>(&'a ClientError);

impl fmt::Display for NoSeedMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ClientError::NoSeed { failures } = self.0 else {
            return Ok(());
        };
        match self.0.no_node_answered() {
            true => write!(f, "no node answered: {} — is the cluster running?", SeedList(failures)),
            false => write!(f, "no seed sent the member list: {}", SeedList(failures)),
        }
    }
}

struct SeedList<'a>(&'a [SeedFailure]);

impl fmt::Display for SeedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "no seed addresses given");
        }
        for (i, failure) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} ({})", failure.seed, failure.reason)?;
        }
        Ok(())
    }
}

/// One replica that did not acknowledge a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFailure {
    /// The replica's node id.
    pub node: String,
    /// What happened.
    pub reason: FailureReason,
}

/// Why one replica did not acknowledge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureReason {
    /// No answer within the request's timeout.
    #[error("timed out")]
    Timeout,
    /// The connection could not be made or broke.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The replica already holds a newer version, so this write lost.
    #[error("stale: replica holds newer version {current}")]
    Stale {
        /// The replica's version.
        current: Version,
    },
    /// The replica refused the request.
    #[error("refused: {0}")]
    Refused(ErrorReply),
}

struct FailureList<'a>(&'a [ReplicaFailure]);

impl fmt::Display for FailureList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{}: {}", failure.node, failure.reason)?;
        }
        Ok(())
    }
}
