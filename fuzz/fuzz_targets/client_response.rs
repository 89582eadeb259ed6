//! The client protocol's response decoder (`quorumkv/2` and `quorumkv/1`: version 1's
//! messages are a subset of version 2's with the same encoding, and a client decodes both
//! with this one decoder), and what a client derives from a seed's member list.
//! Properties: decode -> encode -> decode gives the same frame; a `Members` answer
//! either builds the client's ring and frame limit or is refused, without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorumkv_client::ring::Ring;
use quorumkv_client::wire::{decode, Response, ResponseFrame};
use quorumkv_fuzz::check_round_trip;

fuzz_target!(|body: &[u8]| {
    check_round_trip::<ResponseFrame>(body);
    if let Ok(ResponseFrame {
        body: Response::Members(info),
        ..
    }) = decode::<ResponseFrame>(body)
    {
        let ids: Vec<String> = info.members.iter().map(|m| m.id.clone()).collect();
        let _ = Ring::new(&ids, info.partitions, info.replication_factor);
        let _ = info.max_frame();
    }
});
