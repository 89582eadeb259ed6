//! `quorumkv certs`: a cluster CA and the certificates of its nodes and clients, for a
//! cluster on real machines (one node per machine).
//!
//! The directory it writes is laid out like the development CA's
//! ([`quorumkv_client::tls::layout`]): `ca.pem`, `ca.key`, and `<name>/cert.pem` +
//! `<name>/key.pem` per identity, so nodes and the CLI load it unchanged once cluster.toml
//! says `[tls] dir = "..."`. Node certificates carry the node id, `quorumkv.node` (the
//! node role marker) and the IP address of the node's `addr`; client certificates carry
//! only their name. Private keys are written with mode 0600.
//!
//! Running it again into the same directory reuses the CA (its key is never replaced) and
//! keeps every certificate already there, so adding a node to cluster.toml or a
//! `--client` later signs just the new ones with the same CA; certificates kept are
//! checked against the CA and a problem (expired, another CA) is printed. To renew a
//! certificate, delete its directory and run the command again.
//!
//! Validity (a decision; the issue leaves it open): the CA for ten years, node and client
//! certificates for two years unless `--days` says otherwise. Dynamo-style clusters run
//! for years and are rarely re-keyed, and a CA change means touching every machine, so the
//! CA outlives many leaf renewals; two years keeps a stolen leaf key useful for a bounded
//! time, with renewal a file copy and a node restart.

pub mod ca;
mod report;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use quorumkv_client::tls::{layout, SEED_SERVER_NAME};
use rustls::pki_types::UnixTime;
use time::{Date, Duration, OffsetDateTime};

use crate::config::{valid_node_id, ClusterConfig};
use crate::pki::{self, LeafSpec, PkiError, Role};
use ca::{CaOutcome, ClusterCa};

/// Days a new cluster CA is valid: ten years (see the module doc).
pub const CA_DAYS: u32 = 3650;
/// Days new node and client certificates are valid unless `--days` says otherwise: two
/// years (see the module doc).
pub const DEFAULT_LEAF_DAYS: u32 = 730;
/// New certificates are valid from this long before they are made, so that a machine
/// whose clock is somewhat behind accepts them at once.
const BACKDATE: Duration = Duration::hours(1);

/// Arguments of `quorumkv certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Path of the cluster configuration: one node certificate per [[nodes]] entry.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// Directory to write into; a CA already there is reused, certificates already there are kept.
    #[arg(long)]
    out: PathBuf,
    /// Make a client certificate NAME (repeat for more); without any, one named `client`,
    /// the certificate the CLI loads.
    #[arg(long = "client", value_name = "NAME")]
    clients: Vec<String>,
    /// Also make the certificate of a node cluster.toml does not list, one joining the
    /// cluster later (`quorumkv cluster add`): ID=ADDR, repeat for more.
    #[arg(long = "node", value_name = "ID=ADDR", value_parser = parse_node)]
    nodes: Vec<(String, std::net::SocketAddr)>,
    /// Days new node and client certificates stay valid (the CA: ten years).
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(CA_DAYS)))]
    days: u32,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A `--client` name that cannot be a client certificate's.
    #[error("--client {name:?}: {why}")]
    BadClientName {
        /// The name given.
        name: String,
        /// Why it is refused.
        why: String,
    },
    /// The directory has a CA certificate without its key.
    #[error(
        "{}: ca.pem is there but ca.key is not, so nothing can be signed with this CA; run `quorumkv certs` \
         where ca.key is kept, or choose another --out for a new CA",
        dir.display()
    )]
    CaKeyMissing {
        /// The directory.
        dir: PathBuf,
    },
    /// The directory has a CA key without its certificate.
    #[error(
        "{}: ca.key is there but ca.pem is not; refusing to replace a CA key: restore ca.pem, \
         or choose another --out for a new CA",
        dir.display()
    )]
    CaCertMissing {
        /// The directory.
        dir: PathBuf,
    },
    /// ca.key does not sign for ca.pem.
    #[error(
        "{}: ca.key does not sign certificates that ca.pem accepts (a pair from different runs, a CA \
         quorumkv did not make, or an expired CA); choose another --out for a new CA",
        dir.display()
    )]
    CaMismatch {
        /// The directory.
        dir: PathBuf,
    },
    /// A file could not be parsed.
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA certificate cannot be used to check certificates.
    #[error("the CA certificate cannot be used: {0}")]
    Unusable(String),
    /// Writing or generating failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// What one run did.
#[derive(Debug)]
pub struct Issued {
    /// The directory written.
    pub dir: PathBuf,
    /// Whether the CA was made or reused.
    pub ca: CaOutcome,
    /// When a CA made by this run expires.
    pub ca_until: Date,
    /// When the certificates made by this run expire.
    pub leaves_until: Date,
    /// Every node's and client's certificate, in the order of the config and `--client`.
    pub leaves: Vec<Leaf>,
}

/// One identity's certificate.
#[derive(Debug)]
pub struct Leaf {
    /// Node id or client name (also its directory's name).
    pub name: String,
    /// Node or client.
    pub role: Role,
    /// The names the certificate carries (when made by this run).
    pub subject_names: Vec<String>,
    /// Made now, or kept from an earlier run.
    pub outcome: LeafOutcome,
}

/// Whether a certificate was made or kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafOutcome {
    /// Made by this run.
    Created,
    /// Already there and kept; `refused` says why nodes would refuse it now, if they would.
    Kept {
        /// The verifier's reason (expired, not signed by this CA...).
        refused: Option<String>,
    },
}

/// Runs `quorumkv certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    let mut config = ClusterConfig::load(&args.config)?;
    for (id, addr) in &args.nodes {
        config = config
            .with_node_addr(id, *addr)
            .map_err(|why| anyhow::anyhow!("--node {id}={addr}: {why}"))?;
    }
    let issued = issue(&config, &args.out, &args.clients, args.days, OffsetDateTime::now_utc())?;
    print!("{}", report::render(&issued, &config));
    Ok(ExitCode::SUCCESS)
}

/// Makes (or reuses) the CA in `out`, and a certificate for every node of `config` and
/// every client in `clients` (`client` if none) that `out` does not hold yet, valid for
/// `days` from `now`.
pub fn issue(
    config: &ClusterConfig,
    out: &Path,
    clients: &[String],
    days: u32,
    now: OffsetDateTime,
) -> Result<Issued, CertsError> {
    let clients = client_names(config, clients)?;
    let not_before = now - BACKDATE;
    let ca_until = now + Duration::days(i64::from(CA_DAYS));
    let leaves_until = now + Duration::days(i64::from(days));
    let (ca, ca_outcome) = ClusterCa::open_or_create(out, not_before, ca_until)?;
    let check_time = unix_time(now);
    let mut leaves = Vec::new();
    let nodes = config
        .nodes
        .iter()
        .chain(&config.joining)
        .map(|n| (n.id.as_str(), Role::Node, ip_name(n.addr.ip())));
    let clients = clients.iter().map(|c| (c.as_str(), Role::Client, None));
    for (name, role, ip) in nodes.chain(clients) {
        let spec = LeafSpec {
            name,
            role,
            extra_names: ip.into_iter().collect(),
            validity: Some((not_before, leaves_until)),
        };
        let outcome = write_leaf(&ca, out, &spec, check_time)?;
        let mut subject_names = vec![name.to_string()];
        if role == Role::Node {
            subject_names.push(SEED_SERVER_NAME.to_string());
        }
        subject_names.extend(spec.extra_names);
        leaves.push(Leaf {
            name: name.to_string(),
            role,
            subject_names,
            outcome,
        });
    }
    Ok(Issued {
        dir: out.to_path_buf(),
        ca: ca_outcome,
        ca_until: ca_until.date(),
        leaves_until: leaves_until.date(),
        leaves,
    })
}

/// Writes the certificate of `spec` unless `out` already has one (then checks that one).
fn write_leaf(ca: &ClusterCa, out: &Path, spec: &LeafSpec<'_>, now: UnixTime) -> Result<LeafOutcome, CertsError> {
    let target = out.join(spec.name);
    let cert_path = target.join(layout::CERT);
    if !cert_path.exists() {
        let (cert, key) = ca.sign(spec)?;
        if pki::write_dir_atomically(&target, &[(layout::CERT, cert), (layout::KEY, key)])? {
            return Ok(LeafOutcome::Created);
        }
    }
    Ok(LeafOutcome::Kept {
        refused: ca.check(&cert_path, now)?,
    })
}

/// `ID=ADDR` of `--node`.
fn parse_node(text: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected ID=ADDR, e.g. n4=10.0.0.14:7001"))?;
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok((id.to_string(), addr))
}

/// The client names to make, checked: each a valid name, none a member's id or the node
/// role marker (either would let it pass for a node). Without any, [`layout::CLIENT`].
fn client_names(config: &ClusterConfig, given: &[String]) -> Result<Vec<String>, CertsError> {
    if given.is_empty() {
        return Ok(vec![layout::CLIENT.to_string()]);
    }
    let mut names: Vec<String> = Vec::new();
    for name in given {
        let why = if name == SEED_SERVER_NAME {
            Some("that is the node role name, which a client certificate must not carry".to_string())
        } else if config.node(name).is_some() {
            Some(format!(
                "that is the id of member {name}; a client certificate must not name a node"
            ))
        } else if !valid_node_id(name) {
            Some("use 1-63 lowercase letters, digits or '-', starting with a letter".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(CertsError::BadClientName {
                name: name.clone(),
                why,
            });
        }
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(names)
}

/// The IP name a node certificate carries for `ip`: none for a wildcard address.
fn ip_name(ip: IpAddr) -> Option<String> {
    (!ip.is_unspecified()).then(|| ip.to_string())
}

fn unix_time(at: OffsetDateTime) -> UnixTime {
    let seconds = u64::try_from(at.unix_timestamp()).unwrap_or(0);
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests;
