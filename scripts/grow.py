#!/usr/bin/env python3
"""Measures growing a local cluster of real `quorumkv node` processes from 3 nodes to 4.

Steps: start n1..n3, load KEYS keys (w = 3), run workload a (50% reads, 50% updates)
for PHASE seconds as the baseline, start n4 with `--addr` and `quorumkv cluster add` it,
then run workload a in PHASE-second phases until `quorumkv cluster show` reports the move
done (every layout retired, every moved partition dropped). Reports the keys n4 holds
afterwards (what moved), the keys each old node dropped, the time each stage of the move
took, and the throughput and p99 of reads and writes before and during the move.

    cargo build --release
    scripts/grow.py --keys 1000000
"""
import argparse
import json
import os
import tempfile
import threading
import time

from localcluster import ROOT, Cluster, free_ports, wait_for


def write_config(path, ports):
    nodes = "".join(f'\n[[nodes]]\nid = "n{i + 1}"\naddr = "127.0.0.1:{p}"\n' for i, p in enumerate(ports))
    with open(path, "w") as f:
        f.write(f'data_dir = "data"\n{nodes}')


def show(cluster):
    out = cluster.cli("cluster", "show", "--json")
    return json.loads(out) if out.strip() else {}


def phase_figures(report):
    phase = report["phases"][0]
    ops = phase["operations"]
    return {
        "seconds": phase["elapsed_s"],
        "errors": phase["errors"],
        "errors_by_kind": {kind: e.get("count") for kind, e in phase.get("errors_by_kind", {}).items()},
        **{f"{op}_per_s": ops[op]["ops_per_s"] for op in ("read", "write") if op in ops},
        **{f"{op}_p99_ms": ops[op]["p99_us"] / 1000 for op in ("read", "write") if op in ops},
    }


class StageWatch(threading.Thread):
    """Polls `cluster show` and records when each stage of the move was first seen."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster, self.seen, self.done = cluster, {}, threading.Event()

    def run(self):
        start = time.time()
        while not self.done.is_set():
            stage = show(self.cluster).get("stage")
            if stage and stage not in self.seen:
                self.seen[stage] = round(time.time() - start, 1)
                print(f"  {self.seen[stage]:7.1f} s  {stage}", flush=True)
            if stage == "done":
                self.done.set()
            # Not faster: each poll makes every new owner count the keys it holds in
            # each partition it still pulls.
            time.sleep(5)


def keys_of(cluster):
    return {node: s.get("keys") for node, s in cluster.status().items() if isinstance(s, dict)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=100000)
    p.add_argument("--phase", type=int, default=15, help="seconds of each measured workload phase")
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--bin", default=os.path.join(ROOT, "target/release/quorumkv"))
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="qkv-grow-")
    config = os.path.join(work, "cluster.toml")
    ports = free_ports(4)
    write_config(config, ports[:3])
    cluster = Cluster(args.bin, config)
    size = ["--keys", str(args.keys), "--value-size", str(args.value_size)]
    results = {"keys": args.keys, "value_size": args.value_size}
    try:
        for node in ["n1", "n2", "n3"]:
            cluster.start(node)
        wait_for("3 nodes up", lambda: len([s for s in cluster.status().values() if "keys" in s]) == 3)
        load = cluster.bench("--workload", "load", "--w", "3", *size)
        print(f"loaded {args.keys} keys: {load['phases'][0]['ops_per_s']:.0f} writes/s", flush=True)
        results["before"] = phase_figures(cluster.bench("--workload", "a", "--duration", str(args.phase), *size))
        print(f"before: {results['before']}", flush=True)
        results["keys_before"] = keys_of(cluster)

        cluster.start("n4", "--addr", f"127.0.0.1:{ports[3]}")
        wait_for("n4 up", lambda: os.path.exists(os.path.join(work, "data", "n4")))
        print(cluster.cli("cluster", "add", "n4", f"127.0.0.1:{ports[3]}", check=True), flush=True)
        watch = StageWatch(cluster)
        watch.start()
        during = []
        while not watch.done.is_set():
            during.append(phase_figures(cluster.bench("--workload", "a", "--duration", str(args.phase), *size)))
            print(f"during: {during[-1]}", flush=True)
        results["move_seconds"] = watch.seen.get("done")
        results["stages_first_seen_s"] = watch.seen
        results["during"] = during
        results["keys_after"] = keys_of(cluster)
        moved = results["keys_after"].get("n4") or 0
        results["keys_moved"] = moved
        results["moved_share"] = round(moved / (3 * args.keys), 3)
        print(json.dumps(results, indent=2))
    finally:
        cluster.stop_all()


if __name__ == "__main__":
    main()
