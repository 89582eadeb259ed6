//! What `quorumkv certs` prints: every file with its role, the `[tls]` lines for
//! cluster.toml, and which files go to which machine.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use quorumkv_client::tls::layout;

use super::ca::CaOutcome;
use super::{Issued, Leaf, LeafOutcome};
use crate::config::ClusterConfig;
use crate::pki::Role;

/// The report of `issued`, for the cluster of `config`.
pub fn render(issued: &Issued, config: &ClusterConfig) -> String {
    let mut out = String::new();
    let dir = issued.dir.display();
    let _ = match issued.ca {
        CaOutcome::Created => writeln!(out, "New cluster CA in {dir}, valid until {}:", issued.ca_until),
        CaOutcome::Reused => writeln!(out, "Reused the cluster CA in {dir}:"),
    };
    file_line(
        &mut out,
        &issued.dir.join(layout::CA_CERT),
        "CA certificate: every node and client needs it",
    );
    file_line(
        &mut out,
        &issued.dir.join(layout::CA_KEY),
        "CA private key (mode 0600): keep it offline, on no node; it signs new certificates",
    );
    for leaf in &issued.leaves {
        leaf_lines(&mut out, issued, leaf);
    }
    let _ = writeln!(
        out,
        "\nIn cluster.toml, the same on every machine (a relative dir is relative to cluster.toml):\n\n[tls]\ndir = {:?}\n",
        tls_dir_setting(&config.base_dir, &issued.dir)
    );
    let _ = writeln!(out, "Copy to each machine, into that dir, keeping the layout:");
    for leaf in &issued.leaves {
        let files = format!(
            "{}, {name}/{}, {name}/{}",
            layout::CA_CERT,
            layout::CERT,
            layout::KEY,
            name = leaf.name
        );
        let _ = match (leaf.role, config.node(&leaf.name)) {
            (Role::Node, Some(node)) => writeln!(out, "  node {} ({}): {files}", leaf.name, node.addr),
            _ if leaf.name == layout::CLIENT => {
                writeln!(out, "  a client (the CLI loads {}/): {files}", layout::CLIENT)
            }
            _ => writeln!(
                out,
                "  client {name}: {files} (for the CLI, as {}/)",
                layout::CLIENT,
                name = leaf.name
            ),
        };
    }
    let _ = writeln!(
        out,
        "{} stays here: run `quorumkv certs --out {dir}` again where it is to add a node or a client \
         (existing certificates are kept; delete one's directory to renew it).",
        layout::CA_KEY
    );
    out
}

fn leaf_lines(out: &mut String, issued: &Issued, leaf: &Leaf) {
    let dir = issued.dir.join(&leaf.name);
    let who = match leaf.role {
        Role::Node => format!("node {}", leaf.name),
        Role::Client if leaf.name == layout::CLIENT => "the CLI's client".to_string(),
        Role::Client => format!("client {}", leaf.name),
    };
    match &leaf.outcome {
        LeafOutcome::Created => {
            let role = format!(
                "{who} certificate ({}), valid until {}",
                leaf.subject_names.join(", "),
                issued.leaves_until
            );
            file_line(out, &dir.join(layout::CERT), &role);
            file_line(out, &dir.join(layout::KEY), &format!("{who} private key (mode 0600)"));
        }
        LeafOutcome::Kept { refused: None } => file_line(out, &dir, &format!("{who}: kept (already there)")),
        LeafOutcome::Kept { refused: Some(why) } => file_line(
            out,
            &dir,
            &format!("{who}: kept, but nodes would REFUSE it: {why}; delete the directory and run again"),
        ),
    }
}

fn file_line(out: &mut String, path: &Path, role: &str) {
    let _ = writeln!(out, "  {:<28} {role}", path.display());
}

/// The `[tls] dir` value naming `out` for a cluster.toml in `base_dir`: relative when
/// `out` lies under it, else absolute.
fn tls_dir_setting(base_dir: &Path, out: &Path) -> String {
    let absolute = |p: &Path| -> PathBuf {
        let p = if p.as_os_str().is_empty() { Path::new(".") } else { p };
        p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
    };
    let (base, out_abs) = (absolute(base_dir), absolute(out));
    match out_abs.strip_prefix(&base) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative.display().to_string(),
        Ok(_) => ".".into(),
        Err(_) => out_abs.display().to_string(),
    }
}
