//! Writes the seed corpus under `fuzz/seeds/<target>/`: one file per message variant of
//! both protocols (struct-array form, as peers send them, and a few in the map form the
//! decoders also accept), framed streams for the splitter, and cluster.toml variants.
//! Run from the repository root after a protocol change:
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --example write_seeds`.

use std::fs;
use std::path::Path;

use quorumkv_client::wire::frame_bytes;
use quorumkv_fuzz::samples;
use serde::Serialize;

/// The splitter's input header: frame limit 4096 (little-endian), then chunk sizes.
const SPLITTER_HEADER: [u8; 6] = [0x00, 0x10, 1, 7, 64, 255];

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    write_messages(&root.join("client_request"), &samples::client_requests())?;
    write_messages(&root.join("client_response"), &samples::client_responses())?;
    write_messages(&root.join("peer_request"), &samples::peer_requests())?;
    write_messages(&root.join("peer_response"), &samples::peer_responses())?;
    write_splitter(&root.join("frame_splitter"))?;
    write_configs(&root.join("cluster_toml"))
}

/// One file per sample (the frame body, as a receiver decodes it), plus the first two in
/// map form.
fn write_messages<T: Serialize>(dir: &Path, samples: &[(&str, T)]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, message) in samples {
        fs::write(dir.join(name), body(message))?;
    }
    for (name, message) in samples.iter().take(2) {
        let named = rmp_serde::to_vec_named(message).expect("samples encode");
        fs::write(dir.join(format!("{name}_named")), named)?;
    }
    Ok(())
}

fn body<T: Serialize>(message: &T) -> Vec<u8> {
    frame_bytes(message).expect("samples encode")[quorumkv_client::wire::LENGTH_PREFIX..].to_vec()
}

/// Streams of whole frames, a truncated one and one over the limit.
fn write_splitter(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut stream = Vec::new();
    for (_, request) in samples::client_requests() {
        stream.extend_from_slice(&frame_bytes(&request).expect("samples encode"));
    }
    let seeds = [
        ("whole_frames", stream.clone()),
        ("truncated", stream[..stream.len() - 3].to_vec()),
        ("too_long", [&stream[..], &5000u32.to_le_bytes()[..]].concat()),
        ("empty_frames", vec![0; 12]),
    ];
    for (name, stream) in seeds {
        fs::write(dir.join(name), [&SPLITTER_HEADER[..], &stream[..]].concat())?;
    }
    Ok(())
}

/// The shipped cluster.toml and a few that exercise other sections.
fn write_configs(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let shipped = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml"))?;
    let nodes = "[[nodes]]\nid = \"a\"\naddr = \"[::1]:7001\"\n";
    let seeds = [
        ("shipped", shipped),
        (
            "minimal",
            format!("replication_factor = 1\n[defaults]\nn = 1\nw = 1\nr = 1\n{nodes}"),
        ),
        (
            "tuned",
            format!(
                "partitions = 1024\nreplication_factor = 1\n[defaults]\nn = 1\nw = 1\nr = 1\ntimeout_ms = 1\n\
                 [tls]\ndir = \"certs\"\n[durability]\nmode = \"periodic\"\ninterval_ms = 10\n\
                 [convergence]\nanti_entropy_interval_ms = 100\nanti_entropy_keys_per_sec = 1\n\
                 anti_entropy_bytes_per_sec = 1\nhinted_handoff = false\nmax_hints_per_node = 0\n\
                 hint_delivery_interval_ms = 1\ntombstone_grace_ms = 0\nping_interval_ms = 1\n\
                 down_after_missed_pings = 1\n[storage]\nblock_cache_mb = 1\nmemtable_mb = 1\n\
                 [limits]\nmax_key_bytes = 1\nmax_value_bytes = 0\nmax_clock_skew_ms = 0\n{nodes}"
            ),
        ),
        // Every bounded setting at its largest valid value, so that a mutation of one
        // number (+1, x2) crosses a bound: the fuzzer finds few such values by itself.
        (
            "at_limits",
            String::from(
                "partitions = 4\n[limits]\nmax_key_bytes = 65463\nmax_value_bytes = 67108864\n\
                 max_clock_skew_ms = 18446744073709551\n[convergence]\ntombstone_grace_ms = 18446744073709551\n\
                 [storage]\nblock_cache_mb = 17592186044415\nmemtable_mb = 17592186044415\n\
                 [[nodes]]\nid = \"n1\"\naddr = \"127.0.0.1:1\"\n[[nodes]]\nid = \"n2\"\naddr = \"127.0.0.1:2\"\n\
                 [[nodes]]\nid = \"n3\"\naddr = \"127.0.0.1:3\"\n",
            ),
        ),
    ];
    for (name, text) in seeds {
        fs::write(dir.join(name), text)?;
    }
    Ok(())
}
