//! The peer protocol's response decoder (`quorumkv-peer/1`, what a node decodes from the
//! peer it asked). Property: decode -> encode -> decode gives the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorumkv::peer::PeerResponse;
use quorumkv_client::wire::Frame;
use quorumkv_fuzz::check_round_trip;

fuzz_target!(|body: &[u8]| check_round_trip::<Frame<PeerResponse>>(body));
