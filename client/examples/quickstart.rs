//! A complete quorumkv client: connect, write, read with options, delete, and the errors
//! to expect. With a local cluster running (`quorumkv up` in the repository root):
//!
//!     cargo run -p quorumkv-client --example quickstart -- data/tls
//!
//! Arguments: the TLS directory (`ca.pem` and `client/cert.pem` + `key.pem`; `quorumkv up`
//! writes a development one to `data/tls`), then seed addresses (default: the nodes of
//! the shipped cluster.toml). tests/readme.rs runs this file against a test cluster.

use std::error::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use quorumkv_client::{Client, ClientConfig, ClientError, ReadOptions, RepairMode, TlsIdentity, WriteOptions};

/// The nodes of the shipped cluster.toml.
const DEFAULT_SEEDS: [&str; 3] = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let tls_dir = args.next().ok_or("usage: quickstart TLS_DIR [SEED_ADDR...]")?;
    let mut seeds: Vec<String> = args.collect();
    if seeds.is_empty() {
        seeds = DEFAULT_SEEDS.map(String::from).to_vec();
    }
    let seeds = seeds
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    run(Path::new(&tls_dir), seeds).await
}

/// Writes, reads and deletes `user:42`; fails if the cluster breaks a promise.
pub async fn run(tls_dir: &Path, seeds: Vec<SocketAddr>) -> Result<(), Box<dyn Error>> {
    // The client certificate and the cluster CA: tls_dir/ca.pem, tls_dir/client/*.pem.
    let identity = TlsIdentity::load(tls_dir, "client")?;
    // Asks the first seed that answers for the members; then talks to replicas directly.
    let client = Client::connect(ClientConfig::new(seeds, identity)).await?;

    // The cluster's default n and w (cluster.toml [defaults]: n = 3, w = 2).
    let version = client.put("user:42", "Ada").await?;
    println!("stored user:42 at version {version}");

    // Wait for all three replicas and repair any stale one before returning.
    let careful = ReadOptions {
        n: Some(3),
        r: Some(3),
        timeout: Some(Duration::from_secs(2)),
        repair: RepairMode::Blocking,
    };
    match client.get_with("user:42", &careful).await? {
        Some(found) => println!("user:42 = {}", String::from_utf8_lossy(&found.value)),
        None => return Err("user:42 missing right after an acknowledged write".into()),
    }

    // Every replica must acknowledge; a quorum error names the ones that did not.
    let all = WriteOptions {
        n: Some(3),
        w: Some(3),
        timeout: Some(Duration::from_secs(2)),
        sloppy: false,
    };
    match client.put_with("user:42", "Ada Lovelace", &all).await {
        Ok(version) => println!("every replica holds version {version}"),
        Err(ClientError::Unavailable { acked, failures, .. }) => {
            // The write may still be on the replicas that acked: retry it or read.
            println!("only {acked} replicas acked; failed: {failures:?}");
        }
        Err(e) => return Err(e.into()),
    }

    // Options that cannot work are refused before anything is sent.
    let impossible = WriteOptions {
        w: Some(4),
        ..Default::default()
    };
    match client.put_with("user:42", "x", &impossible).await {
        Err(ClientError::InvalidOptions(why)) => println!("refused: {why}"),
        other => return Err(format!("w = 4 of n = 3 was not refused: {other:?}").into()),
    }

    client.delete("user:42").await?;
    match client.get("user:42").await? {
        None => println!("user:42 deleted"),
        Some(found) => return Err(format!("user:42 still reads {:?}", found.value).into()),
    }

    // Sends beyond w finish in the background: let them finish before exiting.
    client.finish_background(Duration::from_secs(5)).await;
    Ok(())
}
