//! Deterministic simulation (issue 16): the parts that let a whole cluster run in one
//! process on a paused tokio clock, with real quinn and rustls, replayable from a seed.
//!
//! [`net`] is the in-memory datagram network (latency, jitter, loss, duplication,
//! one-way cuts, a hashed trace); [`quic`] puts quinn endpoints on it with every
//! randomness quinn and rustls let us inject drawn from the seed; [`identity`] makes
//! the certificates; [`rng`] is the seeded random source they all draw from.
//! The storage side is [`crate::storage`]'s memory engine.

pub mod identity;
pub mod net;
pub mod quic;
pub mod rng;
pub mod trace;
