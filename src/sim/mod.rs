//! Deterministic simulation (issue 16): the parts that let a whole cluster run in one
//! process on a paused tokio clock, with real quinn and rustls, replayable from a seed.
//!
//! [`net`] is the in-memory datagram network (latency, jitter, loss, duplication,
//! one-way cuts, a hashed trace); [`quic`] puts quinn endpoints on it with every
//! randomness quinn and rustls let us inject drawn from the seed; [`identity`] makes
//! the certificates; [`rng`] is the seeded random source they all draw from.
//! The storage side is [`crate::storage`]'s memory engine. [`cluster`] runs real nodes
//! on these parts and holds the hands that break them; [`plan`] draws what a run does
//! from its seed, [`run`] does it and checks the outcome (history promises P1-P4 and
//! [`invariants`] seen in the nodes directly).

pub mod cluster;
pub mod identity;
pub mod invariants;
pub mod net;
pub mod plan;
pub mod quic;
pub mod rng;
pub mod run;
pub mod trace;

/// Wall-clock date simulated time zero stands for (2026-01-01T00:00:00Z), so clocks and
/// token timestamps repeat across runs.
pub const SIM_EPOCH_SECS: u64 = 1_767_225_600;
