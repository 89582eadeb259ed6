#!/usr/bin/env python3
"""Measures convergence on a local 3-node cluster of real `quorumkv node` processes.

Steps: start n1..n3, stop n3, load KEYS keys with w=2 (n3 misses them all), restart n3
and time until `quorumkv status` on n3 shows every partition agreed with every other
replica after the restart. With --wipe, the keys are loaded on all three nodes first and
n3's data directory is removed before its restart (a replaced disk): n3 is refilled from
nothing. Optionally runs a read workload while n3 is being repaired
and again once in agreement, to show what repair costs foreground requests. Also reports
the anti-entropy bytes one node sends per round while replicas agree.

    cargo build --release
    scripts/converge.py --keys 100000 --hints off --foreground
    scripts/converge.py --keys 1000000 --wipe
"""
import argparse
import os
import shutil
import tempfile
import time

from localcluster import ROOT, Cluster, free_ports, wait_for


def write_config(path, ports, args):
    nodes = "".join(f'\n[[nodes]]\nid = "n{i + 1}"\naddr = "127.0.0.1:{p}"\n' for i, p in enumerate(ports))
    with open(path, "w") as f:
        f.write(f"""data_dir = "data"
[convergence]
anti_entropy_interval_ms = {args.interval_ms}
hinted_handoff = {"true" if args.hints == "on" else "false"}
ping_interval_ms = 200
hint_delivery_interval_ms = 200
{nodes}""")


def node_status(summary):
    """The node's own status inside what `status --json` reports for it."""
    return summary.get("status", {}) if isinstance(summary, dict) else {}


def agreed_since(summary, since_micros):
    status = node_status(summary)
    parts = status.get("partitions", [])
    return status.get("trees_ready") and parts and all(
        (r.get("last_agreed_micros") or 0) >= since_micros for p in parts for r in p["replicas"])


def totals(statuses):
    keys = ["records_pulled", "bytes_sent", "bytes_received", "rounds"]
    return {k: sum(node_status(s).get("anti_entropy", {}).get(k, 0) for s in statuses.values()) for k in keys}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--hints", choices=["on", "off"], default="off")
    p.add_argument("--interval-ms", type=int, default=1000)
    p.add_argument("--foreground", action="store_true", help="measure reads during and after repair")
    p.add_argument("--wipe", action="store_true", help="load on every node, then wipe n3 before its restart")
    p.add_argument("--bin", default=os.path.join(ROOT, "target/release/quorumkv"))
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="qkv-converge-")
    config = os.path.join(work, "cluster.toml")
    write_config(config, free_ports(3), args)
    cluster = Cluster(args.bin, config)
    try:
        for node in ["n1", "n2", "n3"]:
            cluster.start(node)
        wait_for("3 nodes up", lambda: len([s for s in cluster.status().values() if "keys" in s]) == 3)
        if args.wipe:
            load = cluster.bench("--workload", "load", "--keys", str(args.keys), "--w", "3")
            print(f"loaded {args.keys} keys on every node: {load['phases'][0]['ops_per_s']:.0f} writes/s")
            cluster.stop("n3")
            shutil.rmtree(os.path.join(work, "data", "n3"))
            print("n3 stopped and its data directory removed")
        else:
            cluster.stop("n3")
            load = cluster.bench("--workload", "load", "--keys", str(args.keys), "--w", "2")
            print(f"loaded {args.keys} keys with n3 down: {load['phases'][0]['ops_per_s']:.0f} writes/s")
            time.sleep(6)  # let the client-side background sends to n3 time out (not a test)
        before = totals(cluster.status())
        restarted = time.time()
        cluster.start("n3")
        since = int(restarted * 1e6)
        if args.foreground:
            during = cluster.bench("--workload", "c", "--keys", str(args.keys), "--duration", "10")
            print(f"reads while n3 is repaired: {during['phases'][0]['ops_per_s']:.0f} reads/s")
        wait_for("n3 agrees with every replica", lambda: agreed_since(cluster.status("--partitions").get("n3", {}), since))
        elapsed = time.time() - restarted
        after = totals(cluster.status())
        moved = {k: after[k] - before[k] for k in after}
        print(f"converged {args.keys} missed keys in {elapsed:.2f} s (hints {args.hints}, "
              f"interval {args.interval_ms} ms): anti-entropy moved {moved['records_pulled']} records, "
              f"{moved['bytes_sent'] / 1024:.0f} KiB sent")
        start = node_status(cluster.status()["n1"])["anti_entropy"]
        wait_for("5 rounds in agreement", lambda: node_status(cluster.status()["n1"])["anti_entropy"]["rounds"] >= start["rounds"] + 5,
                 every=0.5)
        end = node_status(cluster.status()["n1"])["anti_entropy"]
        rounds = end["rounds"] - start["rounds"]
        print(f"in agreement: n1 sent {(end['bytes_sent'] - start['bytes_sent']) / rounds:.0f} bytes per round "
              f"({rounds} rounds), {end['records_pulled'] - start['records_pulled']} records")
        if args.foreground:
            steady = cluster.bench("--workload", "c", "--keys", str(args.keys), "--duration", "10")
            print(f"reads once in agreement: {steady['phases'][0]['ops_per_s']:.0f} reads/s")
    finally:
        cluster.stop_all()


if __name__ == "__main__":
    main()
