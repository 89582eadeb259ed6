//! The frame splitter ([`split_frame`]), driven the way `transport::FrameReader` drives it:
//! bytes arrive in chunks of any size, the buffer is split after each chunk, and a stream
//! that ends with bytes left over is truncated.
//!
//! Input: 2 bytes little-endian frame limit, 4 bytes of chunk sizes (cycled; 0 reads as
//! 1), then the stream. Properties: the frames and the ending do not depend on how the
//! stream was chunked; no frame exceeds the limit; the frames, prefixed again, are exactly
//! the bytes consumed; and the ending is the right one for the bytes left over.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use quorumkv_client::wire::{split_frame, FrameError, LENGTH_PREFIX};

/// Bytes of the input before the stream: the limit (2) and the chunk sizes (4).
const HEADER: usize = 6;

/// How a stream ended for the reader.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// Finished between frames.
    Clean,
    /// Finished inside a frame (`ReadFrameError::Truncated`).
    Truncated,
    /// A prefix announced more than the limit (`FrameError::TooLong`).
    TooLong { len: usize },
}

/// Reads `stream` in chunks of `chunks` (cycled) like `FrameReader::next_frame` does.
fn read(stream: &[u8], chunks: &[usize], max: usize) -> (Vec<Bytes>, Ending) {
    let mut buf = BytesMut::new();
    let (mut frames, mut pos) = (Vec::new(), 0);
    let mut sizes = chunks.iter().cycle();
    loop {
        match split_frame(&mut buf, max) {
            Ok(Some(body)) => {
                frames.push(body);
                continue;
            }
            Ok(None) => {}
            Err(FrameError::TooLong { len, max: limit }) => {
                assert_eq!(limit, max, "the error names the limit");
                return (frames, Ending::TooLong { len });
            }
            Err(other) => panic!("splitting can only fail for length: {other}"),
        }
        if pos == stream.len() {
            let ending = if buf.is_empty() {
                Ending::Clean
            } else {
                Ending::Truncated
            };
            return (frames, ending);
        }
        let size = (*sizes.next().expect("chunk sizes are never empty")).min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + size]);
        pos += size;
    }
}

/// The length announced by the prefix at the start of `rest`.
fn announced(rest: &[u8]) -> Option<usize> {
    let prefix: [u8; LENGTH_PREFIX] = rest.get(..LENGTH_PREFIX)?.try_into().ok()?;
    Some(u32::from_le_bytes(prefix) as usize)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let max = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let chunks: Vec<usize> = data[2..HEADER].iter().map(|&b| usize::from(b.max(1))).collect();
    let stream = &data[HEADER..];

    let (frames, ending) = read(stream, &chunks, max);
    for other in [stream.len().max(1), 1] {
        let again = read(stream, &[other], max);
        assert_eq!(
            (&again.0, &again.1),
            (&frames, &ending),
            "chunks of {other} bytes read differently"
        );
    }

    let mut consumed = Vec::new();
    for body in &frames {
        assert!(
            body.len() <= max,
            "a frame of {} bytes passed the limit {max}",
            body.len()
        );
        consumed.extend_from_slice(&(body.len() as u32).to_le_bytes());
        consumed.extend_from_slice(body);
    }
    assert_eq!(
        &stream[..consumed.len()],
        &consumed[..],
        "frames are the stream's bytes, in order"
    );
    let rest = &stream[consumed.len()..];
    match ending {
        Ending::Clean => assert!(rest.is_empty()),
        Ending::TooLong { len } => assert!(announced(rest) == Some(len) && len > max),
        Ending::Truncated => match announced(rest) {
            None => assert!(!rest.is_empty()),
            Some(len) => assert!(len <= max && rest.len() < LENGTH_PREFIX + len),
        },
    }
});
