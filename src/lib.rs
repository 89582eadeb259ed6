//! quorumkv: the node.
//!
//! A node serves one member of a cluster: it loads cluster.toml ([`config`]), keeps
//! records, hints and Merkle trees in fjall ([`storage`], [`merkle`]), answers client
//! requests as a replica ([`replica`]) and other nodes through the peer protocol
//! ([`peer`]) over one QUIC endpoint ([`server`]), and converges with its peers in the
//! background ([`antientropy`], [`hints`], [`tombstones`]); its layout history (who
//! replicates what, and moving data when that changes) is [`membership`]; every record it stores passes
//! [`admission`]. [`node`] wires it together
//! and shuts it down; [`context`] is the state its services share. The CLI lives in
//! [`cli`] (its log output in [`logging`], `quorumkv up`'s node processes in [`local`]),
//! certificates for real clusters in [`certs`],
//! the load generator in [`mod@bench`], fault injection for tests in [`faults`] and the
//! history checker of the fault suite in [`history`], the deterministic simulator's
//! network and QUIC endpoints in [`sim`].
//! Everything clients and nodes share (messages, ring, versions, TLS) is in the
//! `quorumkv-client` crate.

pub mod admission;
pub mod antientropy;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod config;
pub mod context;
pub mod endpoint_config;
pub mod faults;
pub mod hints;
pub mod history;
pub mod local;
pub mod logging;
pub mod membership;
pub mod merkle;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod pki;
pub mod refill;
pub mod replica;
pub mod server;
pub mod sim;
pub mod status;
pub mod storage;
pub mod tombstones;

pub use quorumkv_client::clock;
