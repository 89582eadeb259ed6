//! The client protocol's request decoder (`quorumkv/2` and `quorumkv/1`: version 1's
//! messages are a subset of version 2's with the same encoding, and a node decodes both
//! with this one decoder). Property: decode -> encode -> decode gives the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorumkv_client::wire::RequestFrame;
use quorumkv_fuzz::check_round_trip;

fuzz_target!(|body: &[u8]| check_round_trip::<RequestFrame>(body));
