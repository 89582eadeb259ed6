//! Network namespaces for the fault suite: one per node, on a bridge the test made.
//!
//! A [`Lab`] makes a switch (a namespace holding a bridge), a veth from the test's own
//! namespace into it with the address `.1` of a private /24 (10.x.y.0/24, chosen from
//! the test's pid and a counter and checked to be unused, so two test binaries can run
//! at once), and for each node a namespace with a veth into the switch and the address
//! `.10 + i`. The bridge lives in its own namespace so that the host's firewall (a
//! FORWARD policy of DROP with br_netfilter, as on Docker hosts) never sees its traffic;
//! the test's namespace gets one veth and nothing else. Faults are iptables rules inside
//! a node's namespace: [`Lab::cut`] (one way or both), [`Lab::isolate`], [`Lab::heal`].
//! Everything is removed when the lab is dropped, panics included; namespaces left by a
//! test binary that was killed outright are removed by the next lab that starts.
//! Where namespaces cannot be made (not root, no `ip`, no `iptables`), [`Lab::create`]
//! says why, and the scenario skips.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace a lab makes: `qkv-<pid hex>-<lab>-n<i>`.
const NS_PREFIX: &str = "qkv-";
/// The bridge's name inside the lab's switch namespace.
const BRIDGE: &str = "br0";
/// Host part of node 0's address (node i gets `.NODE_HOST_BASE + i`; the test is `.1`).
const NODE_HOST_BASE: u8 = 10;
/// Labs made by this process, so concurrent scenarios get distinct names and subnets.
static LABS: AtomicU32 = AtomicU32::new(0);

/// Namespaces, veths and a bridge, removed on drop.
pub struct Lab {
    /// Unique within this machine: pid and lab counter.
    tag: String,
    /// The namespace holding the bridge (the lab's switch).
    switch: String,
    /// First three octets of the lab's /24.
    subnet: [u8; 3],
    /// One namespace per node.
    namespaces: Vec<String>,
}

impl Lab {
    /// Makes a lab for `nodes` nodes, or says why it cannot.
    pub fn create(nodes: usize) -> Result<Lab, String> {
        for tool in ["ip", "iptables"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Err(format!("`{tool}` is not installed"));
            }
        }
        remove_stale_labs();
        let seq = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{pid:x}-{seq:x}");
        let mut lab = Lab {
            switch: format!("{NS_PREFIX}{tag}-sw"),
            subnet: free_subnet(pid, seq)?,
            namespaces: Vec::new(),
            tag,
        };
        run("ip", &["netns", "add", &lab.switch])
            .map_err(|e| format!("cannot create a network namespace (root needed): {e}"))?;
        lab.in_switch(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        lab.in_switch(&["ip", "link", "set", BRIDGE, "up"])?;
        // The test's own leg into the switch, carrying the lab's `.1`.
        let (host, port) = (format!("qv{}h", lab.tag), format!("qv{}s", lab.tag));
        lab.link_to_switch(&port, &host)?;
        let cidr = format!("{}/24", lab.host_addr());
        run("ip", &["addr", "add", &cidr, "dev", &host])?;
        run("ip", &["link", "set", &host, "up"])?;
        for i in 0..nodes {
            lab.add_namespace(i)?;
        }
        Ok(lab)
    }

    /// A veth pair whose end `port` is plugged into the switch's bridge; `other` stays in
    /// the test's namespace.
    fn link_to_switch(&self, port: &str, other: &str) -> Result<(), String> {
        run("ip", &["link", "add", port, "type", "veth", "peer", "name", other])?;
        run("ip", &["link", "set", port, "netns", &self.switch])?;
        self.in_switch(&["ip", "link", "set", port, "master", BRIDGE, "up"])
    }

    fn in_switch(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["netns", "exec", self.switch.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn add_namespace(&mut self, i: usize) -> Result<(), String> {
        let ns = format!("{NS_PREFIX}{}-n{i}", self.tag);
        run("ip", &["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        let (port, inner) = (format!("qv{}o{i}", self.tag), format!("qv{}i{i}", self.tag));
        self.link_to_switch(&port, &inner)?;
        run("ip", &["link", "set", &inner, "netns", &ns])?;
        let cidr = format!("{}/24", self.addr(i));
        self.exec(i, &["ip", "addr", "add", &cidr, "dev", &inner])?;
        self.exec(i, &["ip", "link", "set", &inner, "up"])?;
        self.exec(i, &["ip", "link", "set", "lo", "up"])
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, NODE_HOST_BASE + i as u8)
    }

    /// The test's own address in the lab (where clients come from).
    pub fn host_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Node `i`'s namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// Runs a command inside node `i`'s namespace.
    pub fn exec(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["netns", "exec", self.namespace(i)];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Drops what node `i` sends to each node of `to`; with `both`, what it receives
    /// from them too. One way only: `to` still reaches `i`, but never hears back.
    pub fn cut(&self, i: usize, to: &[usize], both: bool) {
        for &j in to {
            let peer = self.addr(j).to_string();
            self.iptables(i, &["-A", "OUTPUT", "-d", &peer, "-j", "DROP"]);
            if both {
                self.iptables(i, &["-A", "INPUT", "-s", &peer, "-j", "DROP"]);
            }
        }
    }

    /// Cuts node `i` off from everyone: nodes and clients.
    pub fn isolate(&self, i: usize) {
        let subnet = format!("{}/24", self.host_addr());
        self.iptables(i, &["-A", "OUTPUT", "-d", &subnet, "-j", "DROP"]);
        self.iptables(i, &["-A", "INPUT", "-s", &subnet, "-j", "DROP"]);
    }

    /// Removes every rule in every namespace.
    pub fn heal(&self) {
        for i in 0..self.namespaces.len() {
            self.iptables(i, &["-F"]);
        }
    }

    /// A fault that cannot be injected is a broken test, not a skip.
    fn iptables(&self, i: usize, args: &[&str]) {
        let mut full = vec!["iptables", "-w"];
        full.extend_from_slice(args);
        if let Err(e) = self.exec(i, &full) {
            panic!("iptables in {}: {e}", self.namespace(i));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the pair.
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "delete", ns]);
        }
        // The test's own leg goes at once (a namespace's devices go in the background).
        let _ = run("ip", &["link", "delete", &format!("qv{}h", self.tag)]);
        let _ = run("ip", &["netns", "delete", &self.switch]);
    }
}

/// Runs a command; an error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// A 10.x.y.0/24 no interface here uses, starting from one derived from `pid` and `seq`.
fn free_subnet(pid: u32, seq: u32) -> Result<[u8; 3], String> {
    let used = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    let used = String::from_utf8_lossy(&used.stdout).into_owned();
    let start = pid.wrapping_mul(16).wrapping_add(seq);
    (0..256u32)
        .map(|k| {
            let n = start.wrapping_add(k * 7919) % (1 << 16);
            // 10.128.0.0/9 and up: well away from the 10.0.x.y networks people use.
            [10, 128 | (n >> 8) as u8 & 0x7f, n as u8]
        })
        .find(|[a, b, c]| !used.contains(&format!(" {a}.{b}.{c}.")))
        .ok_or_else(|| "no free 10.x.y.0/24 subnet".to_string())
}

/// Deletes the namespaces of labs whose test process no longer runs (it was killed
/// before its drop ran); the veths and the bridge go with them.
fn remove_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.strip_prefix(NS_PREFIX).is_some_and(owner_is_gone) {
            let _ = run("ip", &["netns", "delete", name]);
        }
    }
}

/// Whether the process whose hex pid starts `tag` (`<pid hex>-...`) has exited.
fn owner_is_gone(tag: &str) -> bool {
    let pid = tag.split('-').next().and_then(|hex| u32::from_str_radix(hex, 16).ok());
    pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}
