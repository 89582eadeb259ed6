#!/usr/bin/env python3
"""Where a benchmark's CPU goes, per thread, per operation.

Runs `quorumkv bench --spawn` (3 node processes on throwaway data) and, inside the last
phase of `--workload`, reads /proc twice, `--secs` apart, after `--warmup` seconds of that
phase. For every thread of the load generator and of the nodes (grouped by thread name,
summed over the three nodes) it prints the CPU (user + system) per operation completed in
that window and the context switches per operation, then how the whole machine spent the
window (/proc/stat: user, system, softirq, idle, iowait). The window's operations come
from the bench's progress lines, so the figures are per operation of that window only.

    cargo build --release
    scripts/cpu_by_thread.py --workload w
    scripts/cpu_by_thread.py --workload load,c --keys 100000
    scripts/cpu_by_thread.py --exe /tmp/other-build --workload w -- --durability periodic

Linux only. Run nothing else meanwhile: the machine split counts every process.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import time

PROGRESS = re.compile(r"\[\s*([\d.]+) s\] (\w+): (\d+) ops")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def thread_counters(pid: int, role: str, into: dict) -> None:
    """Adds (cpu ticks, voluntary, involuntary switches) of every thread of `pid`."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                name = f.read().strip()
            with open(f"{base}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"{base}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        if tid == str(pid):
            name = "main (tokio runtime)"
        key = (role, name, pid, tid)
        into[key] = (ticks, int(status["voluntary_ctxt_switches"]), int(status["nonvoluntary_ctxt_switches"]))


def machine() -> list[int]:
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


def snapshot(bench: int) -> tuple[dict, list[int]]:
    threads: dict = {}
    thread_counters(bench, "client", threads)
    for node in children_of(bench):
        thread_counters(node, "node", threads)
    return threads, machine()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exe", default="target/release/quorumkv")
    p.add_argument("--workload", default="w", help="bench phases; the last one is measured")
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of the phase before the window")
    p.add_argument("--secs", type=float, default=5.0, help="length of the window")
    p.add_argument("extra", nargs="*", help="more bench arguments (after --)")
    args = p.parse_args()

    phase = args.workload.split(",")[-1]
    duration = int(args.warmup + args.secs + 3)
    cmd = [args.exe, "bench", "--spawn", "--workload", args.workload, "--keys", str(args.keys),
           "--duration", str(duration), *args.extra]
    bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    marks = []  # (ops, threads, machine) at the window's start and end
    assert bench.stderr is not None
    for line in bench.stderr:
        for at, name, ops in PROGRESS.findall(line):
            due = args.warmup if not marks else args.warmup + args.secs
            if name == phase and float(at) >= due and len(marks) < 2:
                marks.append((int(ops), time.monotonic(), *snapshot(bench.pid)))
    if bench.wait() != 0 or len(marks) < 2:
        print(f"bench failed or ended before the window closed: {' '.join(cmd)}", file=sys.stderr)
        return 1

    (ops0, t0, threads0, machine0), (ops1, t1, threads1, machine1) = marks
    ops = ops1 - ops0
    print(f"{phase}: {ops} operations in {t1 - t0:.1f} s = {ops / (t1 - t0):,.0f} ops/s")
    groups = collections.defaultdict(lambda: [0, 0, 0])
    for key, (ticks, vol, invol) in threads1.items():
        before = threads0.get(key, (0, 0, 0))
        group = groups[(key[0], key[1])]
        group[0] += ticks - before[0]
        group[1] += vol - before[1]
        group[2] += invol - before[2]
    total = sum(g[0] for g in groups.values())
    print(f"{'thread (summed over nodes)':32} {'CPU µs/op':>10} {'switches/op':>12} {'involuntary':>12}")
    for (role, name), (ticks, vol, invol) in sorted(groups.items(), key=lambda g: -g[1][0]):
        if ticks == 0 and vol == 0:
            continue
        us = ticks / ticks_per_s * 1e6 / ops
        print(f"{role + ': ' + name:32} {us:10.2f} {vol / ops:12.3f} {invol / ops:12.3f}")
    print(f"{'all of them':32} {total / ticks_per_s * 1e6 / ops:10.2f}")
    spent = [b - a for a, b in zip(machine0, machine1)]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    split = ", ".join(f"{n} {v * 100 / sum(spent):.1f}%" for n, v in zip(names, spent) if v)
    print(f"machine: {split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
