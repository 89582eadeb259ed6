//! quorumkv: the node.
//!
//! A node serves one member of a cluster: it loads cluster.toml ([`config`]), keeps
//! records in fjall ([`storage`]), answers client requests as a replica ([`replica`])
//! over a QUIC endpoint ([`server`]), and is wired together and shut down by [`node`].
//! The CLI lives in [`cli`]. Everything clients and nodes share (messages, ring,
//! versions, TLS) is in the `quorumkv-client` crate.

pub mod bench;
pub mod cli;
pub mod config;
pub mod node;
pub mod pki;
pub mod replica;
pub mod server;
pub mod storage;

pub use quorumkv_client::clock;
