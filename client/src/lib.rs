//! quorumkv-client: talk to a quorumkv cluster.
//!
//! This crate owns everything clients and nodes must agree on: the wire messages and
//! their framing ([`wire`], [`transport`]), the partition ring ([`ring`]), versions
//! ([`version`]) and TLS ([`tls`]). Applications use [`Client`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorumkv_client::ClientError> {
//! use quorumkv_client::{Client, ClientConfig, TlsIdentity, WriteOptions};
//! let identity = TlsIdentity::load("data/tls".as_ref(), "client")?;
//! let client = Client::connect(ClientConfig::new(vec!["127.0.0.1:7001".parse().unwrap()], identity)).await?;
//! client.put("greeting", "hello").await?;
//! let strict = WriteOptions { w: Some(3), ..Default::default() };
//! client.put_with("greeting", "hello again", &strict).await?;
//! if let Some(found) = client.get("greeting").await? {
//!     println!("{:?} at version {}", found.value, found.version);
//! }
//! client.delete("greeting").await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod client;
pub mod clock;
pub mod error;
pub mod layout;
pub mod net;
pub mod options;
pub mod quorum;
pub mod refusal;
pub mod ring;
pub mod summary;
pub mod tls;
pub mod transport;
pub mod version;
pub mod wire;

pub use client::{Client, ClientConfig, ClientStats, ClientTransport, Versioned};
pub use error::{ClientError, FailureReason, ReplicaFailure, SeedFailure, SeedProblem};
pub use options::{ReadOptions, RepairMode, WriteOptions};
pub use tls::TlsIdentity;
pub use version::Version;
pub use wire::Record;
