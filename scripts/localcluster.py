"""A local cluster of real `quorumkv node` processes for the measuring scripts
(converge.py, grow.py): free ports, starting and stopping nodes, CLI calls."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, binary, config):
        self.binary, self.config, self.procs = binary, config, {}

    def start(self, node, *extra):
        log = open(os.path.join(os.path.dirname(self.config), f"{node}.log"), "a")
        self.procs[node] = subprocess.Popen(
            [self.binary, "node", "--id", node, "--config", self.config, *extra], stdout=log, stderr=log)

    def stop(self, node):
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    def stop_all(self):
        for node in list(self.procs):
            self.stop(node)

    def cli(self, *args, check=False):
        out = subprocess.run([self.binary, *args, "--config", self.config], capture_output=True, text=True)
        if check and out.returncode != 0:
            sys.exit(f"quorumkv {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def status(self, *extra):
        lines = self.cli("status", "--json", *extra).splitlines()
        return {s["id"]: s["status"] for s in map(json.loads, lines)}

    def bench(self, *args):
        return json.loads(self.cli("bench", "--json", *args))


def wait_for(what, check, timeout=600, every=0.1):
    start = time.time()
    while time.time() - start < timeout:
        value = check()
        if value:
            return value
        time.sleep(every)
    sys.exit(f"timed out waiting for {what}")
