//! What the fuzz targets share: the decode → encode → decode check every message decoder
//! is held to, and sample messages of every variant (the seed corpus is written from them
//! by `examples/write_seeds.rs`). The targets themselves live in `fuzz_targets/`.

pub mod samples;

use std::fmt::Debug;

use bytes::BytesMut;
use quorumkv_client::wire::{decode, frame_bytes, split_frame, LENGTH_PREFIX};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `body` as a `T` the way a receiver does; when that succeeds, the decoded value
/// must encode into one well-formed frame whose body decodes to an equal value (what a
/// node forwards or stores is what it received). Undecodable bytes are a normal event
/// (an error value, no panic), so they pass.
pub fn check_round_trip<T>(body: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(decoded) = decode::<T>(body) else {
        return;
    };
    let frame = frame_bytes(&decoded).expect("a decoded message encodes");
    let mut buf = BytesMut::from(&frame[..]);
    let body = split_frame(&mut buf, frame.len())
        .expect("an encoded frame announces its own length")
        .expect("an encoded frame is complete");
    assert_eq!(body.len() + LENGTH_PREFIX, frame.len(), "the prefix counts the body");
    assert!(buf.is_empty(), "one message encodes as exactly one frame");
    let again = decode::<T>(&body).expect("a re-encoded message decodes");
    assert_eq!(decoded, again, "decode -> encode -> decode changed the message");
}
