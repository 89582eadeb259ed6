#!/usr/bin/env python3
"""Measures quorumkv against the null-quorum ceiling, in the same run, N times.

Each round runs, one after the other on the same machine:
  1. the ceiling: `limits quorum-null` (3 server processes that only ack, n=3 w=2,
     1 KiB, 64 in flight; the tool lives in the shared `limits` benchmark);
  2. writes: `quorumkv bench --spawn --workload w` (fresh 3-node cluster, sync durability);
  3. the ceiling again;
  4. reads: `quorumkv bench --spawn --workload load,c --keys 100000`;
  5. the ceiling again.
Each phase's ratio is to the mean of the ceilings right before and right after it.
It prints every round and the median of each figure and ratio over the rounds.

    cargo build --release
    scripts/perf_ratios.py --runs 3 --limits ../shared/limits/target/release/limits
"""

import argparse
import json
import re
import statistics
import subprocess
import sys


def ceiling(limits: str) -> dict:
    out = subprocess.run(
        [limits, "quorum-null", "--modes", "multi-process", "--framings", "mux", "--conc", "64",
         "--threads", "1", "--child-threads", "1"],
        check=True, capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if "ops_s=" in l][-1]
    fields = dict(re.findall(r"(\w+)=([\d.]+)", line))
    return {"ops_s": float(fields["ops_s"]), "p99_us": float(fields["p99_us"])}


def bench(exe: str, config: str, workload: str, secs: int, op: str) -> dict:
    out = subprocess.run(
        [exe, "bench", "--config", config, "--spawn", "--workload", workload, "--keys", "100000",
         "--duration", str(secs), "--json"],
        check=True, capture_output=True, text=True).stdout
    phase = json.loads(out)["phases"][-1]
    stats = phase["operations"][op]
    cpu = phase.get("cpu") or {}
    return {"ops_s": stats["ops_per_s"], "p99_us": stats["p99_us"],
            "client_us": cpu.get("client_us_per_op"), "nodes_us": cpu.get("nodes_us_per_op"),
            "rss_mib": phase.get("nodes_peak_rss_mib")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--secs", type=int, default=15, help="length of the w and c phases")
    p.add_argument("--limits", default="../shared/limits/target/release/limits")
    p.add_argument("--exe", default="target/release/quorumkv")
    p.add_argument("--config", default="cluster.toml")
    args = p.parse_args()

    rows = []
    for i in range(args.runs):
        # The ceiling is measured before and after each of our phases and averaged: the
        # VM's speed drifts within minutes, and a 4 s ceiling next to a 15 s phase
        # otherwise decides the ratio by which moment it caught.
        c0 = ceiling(args.limits)
        w = bench(args.exe, args.config, "w", args.secs, "write")
        c1 = ceiling(args.limits)
        r = bench(args.exe, args.config, "load,c", args.secs, "read")
        c2 = ceiling(args.limits)
        cw = {k: (c0[k] + c1[k]) / 2 for k in c0}
        cr = {k: (c1[k] + c2[k]) / 2 for k in c1}
        row = {
            "ceiling_ops": (cw["ops_s"] + cr["ops_s"]) / 2, "ceiling_p99_us": (cw["p99_us"] + cr["p99_us"]) / 2,
            "w_ops": w["ops_s"], "w_p99_us": w["p99_us"], "w_client_us": w["client_us"], "w_nodes_us": w["nodes_us"],
            "c_ops": r["ops_s"], "c_p99_us": r["p99_us"], "c_client_us": r["client_us"], "c_nodes_us": r["nodes_us"],
            "w_ratio": w["ops_s"] / cw["ops_s"], "c_ratio": r["ops_s"] / cr["ops_s"],
            "w_p99_ratio": w["p99_us"] / cw["p99_us"], "c_p99_ratio": r["p99_us"] / cr["p99_us"],
        }
        rows.append(row)
        print(f"run {i + 1}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if v is not None), flush=True)
    print("median of", len(rows), "runs:")
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            print(f"  {key:16} {statistics.median(values):>12.4g}   (min {min(values):.4g}, max {max(values):.4g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
