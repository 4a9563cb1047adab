#!/usr/bin/env python3
"""Fault injection: TREC runs with 3 local workers, each trial disturbed by one fault at a
random moment, checked against an undisturbed run of the same command.

Faults (drawn in turn, so 20 trials give 5 of each):
  worker-kill   kill -9 of a random worker
  coord-kill    kill -9 of the coordinator (or SIGTERM, every other time, whose latency to
                exit is measured), then `coordinator --resume`
  worker-stop   SIGSTOP of a worker past the heartbeat timeout, then SIGCONT
  ring-idle     an idle TCP connection to a worker's ring port, held through the run

A trial passes when the run completes, its final weights are within the tolerance of the
undisturbed run's, and its epoch_log trains every planned example of every epoch (the same
counts as the undisturbed run). Prints `N passed, M failed`, the worst weight difference and
the signal latencies.
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "coordinator")
KINDS = ["worker-kill", "coord-kill", "worker-stop", "ring-idle"]


def weights(path):
    """The float32 tensors of a safetensors file, by name."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", f"{name}: {t['dtype']}"
        a, b = t["data_offsets"]
        out[name] = array("f", body[a:b])
    return out


def max_diff(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(max(abs(x - y) for x, y in zip(wa[k], wb[k])) for k in wa)


class Run:
    """A coordinator process whose log is collected line by line."""

    def __init__(self, args):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [BIN] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def log(self):
        return "".join(self.lines)

    def worker_pids(self):
        return [int(p) for p in re.findall(r"joined: host \S+ pid (\d+),", self.log())]

    def ring_ports(self):
        return [int(p) for p in re.findall(r"joined: host .*, ring 127\.0\.0\.1:(\d+)", self.log())]

    def wait(self, timeout=900):
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code


def run_args(train, run_dir, epochs, heartbeat):
    return [
        "--workers", "3", "--threads", "1", "--data", train, "--epochs", str(epochs),
        "--seed", "5", "--heartbeat-timeout", str(heartbeat), "--run-dir", run_dir,
    ]


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def epoch_counts(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    return [(e["examples_planned"], e["examples_trained"]) for e in s["epoch_log"]]


def trial(kind, n, args, base_dir, base_seconds, rng, latencies):
    run_dir = os.path.join(args.work, f"trial{n:02d}-{kind}")
    cmd = run_args(args.data, run_dir, args.epochs, args.heartbeat)
    run = Run(cmd)
    if not wait_for(lambda: len(run.worker_pids()) == 3, 120):
        run.proc.kill()
        return False, "the workers never joined", None
    at = rng.uniform(0.15, 0.75) * base_seconds
    time.sleep(max(0.0, at - (time.monotonic() - run.started)))
    note = f"at {at:.1f} s"
    idle = []
    if kind == "worker-kill":
        victim = rng.choice(run.worker_pids())
        os.kill(victim, signal.SIGKILL)
        note += f", worker pid {victim}"
    elif kind == "worker-stop":
        victim = rng.choice(run.worker_pids())
        os.kill(victim, signal.SIGSTOP)
        time.sleep(args.heartbeat + 1.5)
        note += f", worker pid {victim} stopped {args.heartbeat + 1.5:.1f} s"
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            # The coordinator declared it lost and ended it: what a hung worker should get.
            note += " (ended by the coordinator as lost)"
    elif kind == "ring-idle":
        for port in run.ring_ports():
            s = socket.create_connection(("127.0.0.1", port))
            idle.append(s)
        note += f", {len(idle)} ring ports"
    elif kind == "coord-kill":
        term = (n // len(KINDS)) % 2 == 1
        sent = time.monotonic()
        os.kill(run.proc.pid, signal.SIGTERM if term else signal.SIGKILL)
        run.wait(60)
        if term:
            latencies.append(time.monotonic() - sent)
            note += f", SIGTERM, exit after {latencies[-1]:.2f} s"
        else:
            note += ", SIGKILL"
        run = Run(["--resume", run_dir])
    code = run.wait()
    for s in idle:
        s.close()
    if code != 0:
        return False, f"{note}: exit {code}\n{run.log()[-3000:]}", None
    diff = max_diff(
        os.path.join(run_dir, "model", "weights.safetensors"),
        os.path.join(base_dir, "model", "weights.safetensors"),
    )
    counts = epoch_counts(run_dir)
    if counts != epoch_counts(base_dir) or any(p != t for p, t in counts):
        return False, f"{note}: epoch_log {counts}", diff
    if diff > args.tolerance:
        return False, f"{note}: weights differ by {diff:.3g}", diff
    return True, note, diff


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--heartbeat", type=int, default=3, help="--heartbeat-timeout, seconds")
    p.add_argument("--tolerance", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", default=os.path.join(ROOT, "data", "trec", "train.tsv"))
    p.add_argument("--work", default=None, help="directory for the runs (default: a temporary one)")
    args = p.parse_args()
    if not os.access(BIN, os.X_OK):
        sys.exit(f"{BIN} is missing: cargo build --release -p coordinator -p worker")
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="chaos-")
        args.work = tmp.name
    rng = random.Random(args.seed)
    base_dir = os.path.join(args.work, "undisturbed")
    started = time.monotonic()
    base = Run(run_args(args.data, base_dir, args.epochs, args.heartbeat))
    if base.wait() != 0:
        sys.exit("the undisturbed run failed:\n" + base.log())
    base_seconds = time.monotonic() - started
    print(f"undisturbed run: {base_seconds:.1f} s", flush=True)
    passed, failed, worst, latencies = 0, 0, 0.0, []
    for n in range(args.trials):
        kind = KINDS[n % len(KINDS)]
        ok, note, diff = trial(kind, n, args, base_dir, base_seconds, rng, latencies)
        if diff is not None:
            worst = max(worst, diff)
        passed += ok
        failed += not ok
        shown = "" if diff is None else f", weights within {diff:.3g}"
        print(f"trial {n + 1:2d} {kind:12s} {'ok' if ok else 'FAILED'}: {note}{shown}", flush=True)
    lat = ", ".join(f"{x:.2f}" for x in latencies) or "none measured"
    print(f"{passed} passed, {failed} failed; worst weight difference {worst:.3g}; "
          f"SIGTERM latency (s): {lat}")
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
